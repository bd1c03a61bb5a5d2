//! `ring ivshmem` keeps serving: clients that leave during the welcome or
//! before joining the ring are dropped and the next QEMU is served; while
//! one guest is served, others are refused at once. A stand-in for QEMU
//! speaks the ivshmem server protocol and plays the guest's vchan client
//! on the memory it is given.

mod common;

use common::{ring, wait_for_path, TempSock};
use ring_hosted::eventfd::{EventFd, EventSignal};
use ring_hosted::memfd::MemFd;
use ring_hosted::stream::VchanStream;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use std::io::{IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One message from the server: a little-endian `i64` and the fd sent
/// with it, if any; `None` at end of stream.
fn recv_msg(sock: &UnixStream) -> Option<(i64, Option<OwnedFd>)> {
    let mut raw = [0u8; 8];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(&mut raw)];
    let got = rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
        .expect("recvmsg from the ivshmem server");
    let mut fd = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut rights) = m {
            fd = rights.next();
        }
    }
    match got.bytes {
        0 => None,
        8 => Some((i64::from_le_bytes(raw), fd)),
        n => panic!("a {n}-byte message"),
    }
}

/// What QEMU learns from the welcome of a one-vector server with no other
/// guest: its id, the memory, the host's eventfd and its own.
struct Welcome {
    sock: UnixStream,
    id: i64,
    mem: OwnedFd,
    host: OwnedFd,
    own: OwnedFd,
}

fn welcome(sock: UnixStream) -> Welcome {
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let next = |what: &str| recv_msg(&sock).unwrap_or_else(|| panic!("no {what}"));
    assert_eq!(next("version").0, 0, "protocol version");
    let id = next("id").0;
    let (minus_one, mem) = next("memory");
    assert_eq!(minus_one, -1);
    let (host_id, host) = next("host vector");
    assert_eq!(host_id, 0, "the host is peer 0");
    let (own_id, own) = next("own vector");
    assert_eq!(own_id, id);
    Welcome {
        sock,
        id,
        mem: mem.expect("the memory fd"),
        host: host.expect("the host's eventfd"),
        own: own.expect("our eventfd"),
    }
}

/// Whether the peer closes `sock` within `limit` without sending anything.
fn closed_at_once(mut sock: UnixStream, limit: Duration) -> bool {
    sock.set_read_timeout(Some(limit)).unwrap();
    matches!(sock.read(&mut [0u8; 8]), Ok(0))
}

#[test]
fn a_server_outlives_clients_that_leave_and_refuses_a_second_guest() {
    let sock = TempSock::new("ivshmem");
    let mut host = ring()
        .arg("ivshmem")
        .arg(&sock.path)
        .args(["--accept-timeout", "60", "--timeout", "60"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_path(&sock.path);
    // A client that connects and leaves at once.
    drop(UnixStream::connect(&sock.path).unwrap());
    // A QEMU that takes the whole welcome and leaves before its guest
    // joins the ring.
    let early = welcome(UnixStream::connect(&sock.path).unwrap());
    drop(early);
    // The guest that joins.
    let w = welcome(UnixStream::connect(&sock.path).unwrap());
    assert!(w.id >= 2, "ids are not reused: {}", w.id);
    let mem = Arc::new(MemFd::from_fd(w.mem, 4096).unwrap());
    let ep = ring_core::vchan::connect_flat(mem).unwrap();
    let mut signal = EventSignal::new(
        EventFd::from_fd(w.host).unwrap(),
        EventFd::from_fd(w.own).unwrap(),
    );
    signal.set_timeout(Some(Duration::from_secs(30)));
    let mut guest = VchanStream::new(ep, signal);
    // Meanwhile a second guest's QEMU is refused at once.
    let start = Instant::now();
    let second = UnixStream::connect(&sock.path).unwrap();
    assert!(
        closed_at_once(second, Duration::from_secs(10)),
        "a second guest was not refused"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    // Data both ways.
    let mut stdin = host.stdin.take().unwrap();
    stdin.write_all(b"from the host").unwrap();
    drop(stdin);
    let mut got = [0u8; 13];
    guest.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"from the host");
    guest.write_all(b"from the guest").unwrap();
    guest.close().unwrap();
    let out = host.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(out.stdout, b"from the guest", "{err}");
    assert!(err.contains("left before joining the ring"), "{err}");
    assert!(err.contains("1 other guests refused"), "{err}");
    drop(w.sock);
}
