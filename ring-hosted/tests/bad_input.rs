//! Every kind of bad input at the rendezvous gets its own clear error:
//! garbage or wrong-version handshakes, undersized or unsealed memory, fds
//! of the wrong kind, foreign uids.

mod common;

use common::TempSock;
use ring_hosted::eventfd::EventFd;
use ring_hosted::memfd::MemFd;
use ring_hosted::rendezvous::{
    self, send_with_fds, Hello, Listener, PeerPolicy, Proto, Refusal, ServerConfig, Welcome,
    HELLO_LEN, VERSION, WELCOME_LEN,
};
use ring_hosted::{Error, FdProblem, HandshakeProblem};
use rustix::fs::MemfdFlags;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread;

// ------------------------------------------------ a bad client, our server

/// Runs our server on one connection while `client` misbehaves; returns
/// the server's error and the status byte of the welcome it sent back.
fn serve_bad_client(
    config: ServerConfig,
    client: impl FnOnce(&mut UnixStream) + Send + 'static,
) -> (Error, u8) {
    let sock = TempSock::new("badclient");
    let l = Listener::bind(&sock.path, config).unwrap();
    let path = sock.path.clone();
    let t = thread::spawn(move || {
        let mut s = UnixStream::connect(&path).unwrap();
        client(&mut s);
        let mut w = [0u8; WELCOME_LEN];
        s.read_exact(&mut w).unwrap();
        w[7]
    });
    let err = refusal(&l);
    let status = t.join().unwrap();
    (err, status)
}

/// The reason the listener gives for the next client it turns away; the
/// listener itself goes on waiting (and accepts nobody here).
fn refusal(l: &Listener) -> Error {
    let mut first = None;
    let start = std::time::Instant::now();
    while first.is_none() && start.elapsed() < std::time::Duration::from_secs(10) {
        let r = l.accept_timeout_with(std::time::Duration::from_millis(100), |e| {
            first.get_or_insert_with(|| clone_reason(e));
        });
        assert!(
            matches!(r, Err(Error::TimedOut)),
            "a bad client was accepted: {r:?}"
        );
    }
    first.expect("server must refuse")
}

/// What the tests compare of a refusal: the variant with its fields.
fn clone_reason(e: &Error) -> Error {
    match e {
        Error::ForeignPeer { uid, expected } => Error::ForeignPeer {
            uid: *uid,
            expected: *expected,
        },
        Error::Handshake(p) => Error::Handshake(p.clone()),
        other => Error::Os {
            op: "refused",
            source: std::io::Error::other(other.to_string()),
        },
    }
}

fn hello(version: u16, proto: u8) -> [u8; HELLO_LEN] {
    Hello { version, proto }.encode()
}

#[test]
fn server_refuses_garbage_hello() {
    let (err, status) = serve_bad_client(ServerConfig::new(Proto::Vchan), |s| {
        s.write_all(b"GET / HTTP/1.0\r\n").unwrap();
    });
    assert!(
        matches!(err, Error::Handshake(HandshakeProblem::BadMagic { got }) if &got == b"GET "),
        "{err}"
    );
    assert_eq!(status, Refusal::BadHello as u8);
    assert!(err.to_string().contains("not a ring handshake"));
}

#[test]
fn server_refuses_wrong_version_and_protocol() {
    let (err, status) = serve_bad_client(ServerConfig::new(Proto::Vchan), |s| {
        s.write_all(&hello(VERSION + 1, 1)).unwrap();
    });
    assert!(
        matches!(err, Error::Handshake(HandshakeProblem::Version { got }) if got == VERSION + 1)
    );
    assert_eq!(status, Refusal::Version as u8);
    let (err, status) = serve_bad_client(ServerConfig::new(Proto::Vchan), |s| {
        s.write_all(&hello(VERSION, 77)).unwrap();
    });
    assert!(matches!(
        err,
        Error::Handshake(HandshakeProblem::Proto { got: 77, want: 1 })
    ));
    assert_eq!(status, Refusal::Proto as u8);
}

#[test]
fn server_refuses_truncated_hello() {
    let (err, status) = serve_bad_client(ServerConfig::new(Proto::Vchan), |s| {
        s.write_all(b"RNGr\x01").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
    });
    assert!(matches!(
        err,
        Error::Handshake(HandshakeProblem::Truncated { got: 5, want: 16 })
    ));
    assert_eq!(status, Refusal::BadHello as u8);
}

#[test]
fn server_refuses_foreign_uid_and_client_hears_why() {
    let me = rustix::process::geteuid().as_raw();
    let sock = TempSock::new("uid");
    let mut config = ServerConfig::new(Proto::Vchan);
    config.peer = PeerPolicy::Uid(me.wrapping_add(1));
    let l = Listener::bind(&sock.path, config).unwrap();
    let path = sock.path.clone();
    let t = thread::spawn(move || rendezvous::connect(&path, Proto::Vchan).map(drop));
    match refusal(&l) {
        Error::ForeignPeer { uid, expected } => {
            assert_eq!(uid, me);
            assert_eq!(expected, me.wrapping_add(1));
        }
        other => panic!("expected ForeignPeer, got {other:?}"),
    }
    match t.join().unwrap() {
        Err(Error::Handshake(HandshakeProblem::Refused {
            code: 4,
            reason: Some(Refusal::NotPermitted),
        })) => {}
        other => panic!("client should hear the refusal, got {other:?}"),
    }
}

// ------------------------------------------------ our client, a bad server

/// Runs our client against a fake server that answers with `answer`.
fn connect_to_fake(answer: impl FnOnce(&mut UnixStream) + Send + 'static) -> Error {
    connect_to_fake_as(Proto::Vchan, answer)
}

/// As [`connect_to_fake`], asking for `proto`.
fn connect_to_fake_as(
    proto: Proto,
    answer: impl FnOnce(&mut UnixStream) + Send + 'static,
) -> Error {
    let sock = TempSock::new("fakeserver");
    let l = UnixListener::bind(&sock.path).unwrap();
    let t = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut h = [0u8; HELLO_LEN];
        s.read_exact(&mut h).unwrap();
        answer(&mut s);
        // Keep the socket open until the client has judged the answer.
        let _ = s.read(&mut [0u8; 1]);
    });
    let err = rendezvous::connect(&sock.path, proto)
        .map(drop)
        .expect_err("client must refuse");
    t.join().unwrap();
    err
}

fn ok_welcome(mem_size: u64, left: u32, right: u32) -> Welcome {
    Welcome {
        version: VERSION,
        proto: Proto::Vchan.code(),
        status: 0,
        mem_size,
        left_size: left,
        right_size: right,
    }
}

/// 4096 + 4096 + 8192: the flat layout of 4 KiB left / 8 KiB right rings.
const GOOD_SIZE: u64 = 16384;

fn send(s: &UnixStream, w: Welcome, fds: &[BorrowedFd<'_>]) {
    send_with_fds(s, &w.encode(), fds).unwrap();
}

fn bad_fd(e: Error) -> FdProblem {
    match e {
        Error::BadFd(p) => p,
        other => panic!("expected a bad fd, got {other:?}"),
    }
}

#[test]
fn client_refuses_garbage_and_wrong_version_welcomes() {
    let e = connect_to_fake(|s| s.write_all(&[0x42; WELCOME_LEN]).unwrap());
    assert!(matches!(
        e,
        Error::Handshake(HandshakeProblem::BadMagic {
            got: [0x42, 0x42, 0x42, 0x42]
        })
    ));
    let e = connect_to_fake(|s| {
        let mut w = ok_welcome(GOOD_SIZE, 4096, 8192);
        w.version = 3;
        s.write_all(&w.encode()).unwrap();
    });
    assert!(matches!(
        e,
        Error::Handshake(HandshakeProblem::Version { got: 3 })
    ));
    let e = connect_to_fake(|s| {
        s.write_all(b"RN").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
    });
    assert!(
        matches!(
            e,
            Error::Handshake(HandshakeProblem::Truncated { got: 2, .. })
        ),
        "{e:?}"
    );
    let e = connect_to_fake(|s| s.shutdown(std::net::Shutdown::Write).unwrap());
    assert!(
        matches!(
            e,
            Error::Handshake(HandshakeProblem::Truncated { got: 0, .. })
        ),
        "{e:?}"
    );
}

#[test]
fn client_refuses_wrong_fd_counts_and_sizes() {
    let e = connect_to_fake(|s| {
        let m = MemFd::create("t", GOOD_SIZE as usize).unwrap();
        let ev = EventFd::new().unwrap();
        send(
            s,
            ok_welcome(GOOD_SIZE, 4096, 8192),
            &[m.as_fd(), ev.as_fd()],
        );
    });
    assert!(matches!(
        e,
        Error::Handshake(HandshakeProblem::FdCount { got: 2 })
    ));
    let e = connect_to_fake(|s| {
        let m = MemFd::create("t", GOOD_SIZE as usize).unwrap();
        let (a, b) = (EventFd::new().unwrap(), EventFd::new().unwrap());
        send(
            s,
            ok_welcome(GOOD_SIZE, 3000, 8192),
            &[m.as_fd(), a.as_fd(), b.as_fd()],
        );
    });
    assert!(
        matches!(
            e,
            Error::Handshake(HandshakeProblem::BadSizes { left: 3000, .. })
        ),
        "{e:?}"
    );
}

#[test]
fn client_refuses_undersized_or_misannounced_memory() {
    let e = connect_to_fake(|s| {
        let m = MemFd::create("small", 4096).unwrap();
        let (a, b) = (EventFd::new().unwrap(), EventFd::new().unwrap());
        send(
            s,
            ok_welcome(GOOD_SIZE, 4096, 8192),
            &[m.as_fd(), a.as_fd(), b.as_fd()],
        );
    });
    assert_eq!(
        bad_fd(e),
        FdProblem::TooSmall {
            size: 4096,
            needed: GOOD_SIZE
        }
    );
    let e = connect_to_fake(|s| {
        let m = MemFd::create("big", 2 * GOOD_SIZE as usize).unwrap();
        let (a, b) = (EventFd::new().unwrap(), EventFd::new().unwrap());
        send(
            s,
            ok_welcome(GOOD_SIZE, 4096, 8192),
            &[m.as_fd(), a.as_fd(), b.as_fd()],
        );
    });
    assert_eq!(
        bad_fd(e),
        FdProblem::SizeMismatch {
            size: 2 * GOOD_SIZE,
            announced: GOOD_SIZE
        }
    );
}

#[test]
fn client_refuses_unsealed_memory() {
    let e = connect_to_fake(|s| {
        let fd: OwnedFd =
            rustix::fs::memfd_create("unsealed", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
                .unwrap();
        rustix::fs::ftruncate(&fd, GOOD_SIZE).unwrap();
        let (a, b) = (EventFd::new().unwrap(), EventFd::new().unwrap());
        send(
            s,
            ok_welcome(GOOD_SIZE, 4096, 8192),
            &[fd.as_fd(), a.as_fd(), b.as_fd()],
        );
    });
    let p = bad_fd(e);
    assert!(matches!(p, FdProblem::MissingSeals { .. }), "{p:?}");
    assert!(p.to_string().contains("truncate"));
}

#[test]
fn client_refuses_fds_of_the_wrong_kind() {
    // A pipe where the memory should be.
    let e = connect_to_fake(|s| {
        let (r, _w) = rustix::pipe::pipe().unwrap();
        let (a, b) = (EventFd::new().unwrap(), EventFd::new().unwrap());
        send(
            s,
            ok_welcome(GOOD_SIZE, 4096, 8192),
            &[r.as_fd(), a.as_fd(), b.as_fd()],
        );
    });
    assert_eq!(bad_fd(e), FdProblem::NotRegularFile { kind: "pipe" });
    // A memfd where an eventfd should be.
    let e = connect_to_fake(|s| {
        let m = MemFd::create("t", GOOD_SIZE as usize).unwrap();
        let other = MemFd::create("not-an-event", 4096).unwrap();
        let a = EventFd::new().unwrap();
        send(
            s,
            ok_welcome(GOOD_SIZE, 4096, 8192),
            &[m.as_fd(), a.as_fd(), other.as_fd()],
        );
    });
    match bad_fd(e) {
        FdProblem::NotEventfd { found } => assert!(found.contains("memfd:"), "{found}"),
        other => panic!("expected NotEventfd, got {other:?}"),
    }
}

#[test]
fn client_refuses_memory_without_a_live_server() {
    // Well-formed fds, but nobody set up the control page (all zeros).
    let e = connect_to_fake(|s| {
        let m = MemFd::create("t", GOOD_SIZE as usize).unwrap();
        let (a, b) = (EventFd::new().unwrap(), EventFd::new().unwrap());
        send(
            s,
            ok_welcome(GOOD_SIZE, 4096, 8192),
            &[m.as_fd(), a.as_fd(), b.as_fd()],
        );
    });
    assert!(matches!(e, Error::Vchan(_)), "{e:?}");
}

#[test]
fn bind_replaces_a_stale_socket_but_nothing_else() {
    let sock = TempSock::new("stale");
    // A stale socket: bound, then its listener gone without unlinking.
    drop(UnixListener::bind(&sock.path).unwrap());
    assert!(sock.path.exists());
    let l = Listener::bind(&sock.path, ServerConfig::new(Proto::Vchan)).unwrap();
    // A live one is refused, and stays.
    assert!(matches!(
        Listener::bind(&sock.path, ServerConfig::new(Proto::Vchan)),
        Err(Error::InUse { .. })
    ));
    assert!(sock.path.exists());
    drop(l);
    assert!(!sock.path.exists(), "the listener removes its socket");
    // A regular file is never removed.
    std::fs::write(&sock.path, b"precious").unwrap();
    assert!(Listener::bind(&sock.path, ServerConfig::new(Proto::Vchan)).is_err());
    assert_eq!(std::fs::read(&sock.path).unwrap(), b"precious");
}

#[test]
fn vmbus_client_checks_sizes_memory_and_protocol() {
    let vmbus_welcome = |left, right, mem| Welcome {
        proto: Proto::Vmbus.code(),
        ..ok_welcome(mem, left, right)
    };
    // Data areas must be whole pages.
    let e = connect_to_fake_as(Proto::Vmbus, move |s| {
        let m = MemFd::create("t", 32768).unwrap();
        let (a, b) = (EventFd::new().unwrap(), EventFd::new().unwrap());
        send(
            s,
            vmbus_welcome(5000, 8192, 32768),
            &[m.as_fd(), a.as_fd(), b.as_fd()],
        );
    });
    assert!(
        matches!(
            e,
            Error::Handshake(HandshakeProblem::BadSizes { left: 5000, .. })
        ),
        "{e:?}"
    );
    // Two rings of 8 KiB data need 2 * (4 KiB + 8 KiB).
    let e = connect_to_fake_as(Proto::Vmbus, move |s| {
        let m = MemFd::create("t", 16384).unwrap();
        let (a, b) = (EventFd::new().unwrap(), EventFd::new().unwrap());
        send(
            s,
            vmbus_welcome(8192, 8192, 16384),
            &[m.as_fd(), a.as_fd(), b.as_fd()],
        );
    });
    assert_eq!(
        bad_fd(e),
        FdProblem::TooSmall {
            size: 16384,
            needed: 24576
        }
    );
    // A vchan welcome to a vmbus client.
    let e = connect_to_fake_as(Proto::Vmbus, |s| {
        s.write_all(&ok_welcome(GOOD_SIZE, 4096, 8192).encode())
            .unwrap();
    });
    assert!(matches!(
        e,
        Error::Handshake(HandshakeProblem::Proto { got: 1, want: 2 })
    ));
    // And a vmbus server refuses a vchan client.
    let mut config = ServerConfig::new(Proto::Vmbus);
    config.read_size = 4096;
    let (err, status) = serve_bad_client(config, |s| {
        s.write_all(&hello(VERSION, Proto::Vchan.code())).unwrap();
    });
    assert!(matches!(
        err,
        Error::Handshake(HandshakeProblem::Proto { got: 1, want: 2 })
    ));
    assert_eq!(status, Refusal::Proto as u8);
}
