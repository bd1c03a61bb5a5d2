//! A listener no client can stop: bad clients of every kind are refused
//! and the next good client is served; a second listener on the same path
//! leaves the live one alone.

mod common;

use common::{ring, wait_for_path, TempSock};
use ring_hosted::rendezvous::{self, Listener, Proto, ServerConfig};
use ring_hosted::Error;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

/// A listener with a short handshake deadline, serving in a thread: it
/// accepts until a good client arrives, collecting the refusals, then
/// reads that client's bytes to the end.
fn serve_one(
    path: &std::path::Path,
    timeout: Duration,
) -> thread::JoinHandle<(Vec<String>, Vec<u8>)> {
    let mut config = ServerConfig::new(Proto::Vchan);
    config.handshake_timeout = timeout;
    let listener = Listener::bind(path, config).unwrap();
    thread::spawn(move || {
        let mut refused = Vec::new();
        let session = listener
            .accept_with(|e| refused.push(e.to_string()))
            .unwrap();
        let mut s = session.into_vchan().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        // Collect the refusals still in their deadline.
        let more = listener.accept_timeout_with(timeout * 2, |e| refused.push(e.to_string()));
        assert!(matches!(more, Err(Error::TimedOut)));
        (refused, got)
    })
}

fn good_client(path: &std::path::Path, msg: &[u8]) {
    let mut c = rendezvous::connect(path, Proto::Vchan)
        .unwrap()
        .into_vchan()
        .unwrap();
    c.write_all(msg).unwrap();
    c.close().unwrap();
}

#[test]
fn garbage_silence_early_close_and_a_slow_hello_are_refused_and_the_next_client_served() {
    let sock = TempSock::new("bad");
    // The handshake deadline; every bound below is stated against it, with
    // room for a loaded machine.
    let deadline = Duration::from_secs(3);
    let server = serve_one(&sock.path, deadline);
    // Garbage.
    let mut g = UnixStream::connect(&sock.path).unwrap();
    g.write_all(&[0xAB; 40]).unwrap();
    // An early close, half a hello.
    let mut e = UnixStream::connect(&sock.path).unwrap();
    e.write_all(b"RNGr").unwrap();
    drop(e);
    // Silence, held open for longer than the deadline.
    let silent = UnixStream::connect(&sock.path).unwrap();
    // A slow hello: one byte every 300 ms would take 4.8 s; the whole
    // handshake has 3 s.
    let slow_path = sock.path.clone();
    let slow = thread::spawn(move || {
        let mut s = UnixStream::connect(&slow_path).unwrap();
        let start = Instant::now();
        for b in *b"RNGr\x01\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00" {
            if s.write_all(&[b]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(300));
        }
        let mut answer = [0u8; 32];
        let _ = s.read(&mut answer);
        start.elapsed()
    });
    // The good client is served at once, whatever the others do.
    let start = Instant::now();
    good_client(&sock.path, b"the good one");
    let served_in = start.elapsed();
    let (refused, got) = server.join().unwrap();
    assert_eq!(got, b"the good one");
    // Not held behind the silent client's deadline.
    assert!(served_in < deadline, "served after {served_in:?}");
    let slow_took = slow.join().unwrap();
    // Cut off at its deadline, not served to the end of its 4.8 s.
    assert!(
        slow_took < deadline + Duration::from_millis(1500),
        "slow hello held {slow_took:?}"
    );
    drop((g, silent));
    // Each bad client was refused, each for its own reason.
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert!(
        refused.iter().any(|r| r.contains("not a ring handshake")),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|r| r.contains("sent 4 of 16")),
        "{refused:?}"
    );
    assert!(
        refused
            .iter()
            .any(|r| r.contains("timed out") && r.contains(" 0 of 16")),
        "{refused:?}"
    );
    assert!(
        refused
            .iter()
            .any(|r| r.contains("timed out") && !r.contains(" 0 of 16")),
        "{refused:?}"
    );
}

#[test]
fn a_client_of_the_wrong_uid_is_refused_with_a_reason() {
    let sock = TempSock::new("uid");
    let mut config = ServerConfig::new(Proto::Vchan);
    // Accept only a uid nobody here has, then a second listener for us.
    config.peer = rendezvous::PeerPolicy::Uid(rustix::process::geteuid().as_raw() + 4242);
    let listener = Listener::bind(&sock.path, config).unwrap();
    let t = thread::spawn(move || {
        let r = rendezvous::connect(&sock.path, Proto::Vchan);
        (sock, r)
    });
    let r = listener.accept_timeout(Duration::from_secs(2));
    assert!(
        matches!(r, Err(Error::TimedOut)),
        "the foreign client was accepted"
    );
    let (_sock, client) = t.join().unwrap();
    let e = client.unwrap_err().to_string();
    assert!(e.contains("refused"), "{e}");
}

#[test]
fn a_second_listener_on_the_same_path_leaves_the_first_serving() {
    let sock = TempSock::new("two");
    let path = sock.path.to_str().unwrap().to_string();
    let mut first = ring()
        .args(["listen", &path])
        .env("RING_LIVENESS_MS", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_path(&sock.path);
    let second = ring()
        .args(["listen", &path])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another ring listen is serving"), "{err}");
    assert!(
        sock.path.exists(),
        "the second listener removed the live socket"
    );
    // The first still serves, and the data arrives intact.
    let mut stdin = first.stdin.take().unwrap();
    stdin.write_all(b"still here").unwrap();
    drop(stdin);
    let c = ring()
        .args(["connect", &path])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let f = first.wait_with_output().unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    assert_eq!(c.stdout, b"still here");
    assert!(f.status.success(), "{}", String::from_utf8_lossy(&f.stderr));
}

#[test]
fn other_files_at_the_path_get_a_clear_message() {
    let sock = TempSock::new("file");
    std::fs::write(&sock.path, b"not a socket").unwrap();
    let path = sock.path.to_str().unwrap();
    let l = ring()
        .args(["listen", path])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(l.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&l.stderr).contains("is not a socket"));
    let c = ring()
        .args(["connect", path])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(c.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&c.stderr).contains("is not a socket"));
    assert_eq!(std::fs::read(&sock.path).unwrap(), b"not a socket");
}

#[test]
fn a_server_that_never_answers_is_reported_as_a_timeout() {
    let sock = TempSock::new("mute");
    let _mute = std::os::unix::net::UnixListener::bind(&sock.path).unwrap();
    let mut config = rendezvous::ClientConfig::new(Proto::Vchan);
    config.handshake_timeout = Duration::from_millis(300);
    let e = rendezvous::connect_with(&sock.path, config)
        .unwrap_err()
        .to_string();
    assert!(e.contains("timed out"), "{e}");
}

#[test]
fn server_refuses_a_real_other_user_when_we_can_be_one() {
    use std::os::unix::process::CommandExt;
    // Only root can start a process as another user; elsewhere the
    // policy test above covers the check.
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let sock = TempSock::new("nobody");
    let l = Listener::bind(&sock.path, ServerConfig::new(Proto::Vchan)).unwrap();
    // Let the other user reach the socket (the directory and file).
    use std::os::unix::fs::PermissionsExt;
    let dir = sock.path.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&sock.path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let child = ring()
        .args(["connect"])
        .arg(&sock.path)
        .uid(65534)
        .gid(65534)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reason = None;
    let r = l.accept_timeout_with(Duration::from_secs(10), |e| {
        reason.get_or_insert_with(|| e.to_string());
    });
    assert!(
        matches!(r, Err(Error::TimedOut)),
        "the other user was accepted"
    );
    let reason = reason.expect("the other user was not refused");
    assert!(reason.contains("uid 65534"), "{reason}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not accept our uid"), "{err}");
}

/// `--keep` serves one session after another: three clients in turn, each
/// with its own bytes, and a bad one between them changes nothing.
#[test]
fn keep_serves_one_session_after_another() {
    let sock = TempSock::new("keep");
    let path = sock.path.to_str().unwrap().to_string();
    let mut server = ring()
        .args(["listen", "--keep", &path])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_path(&sock.path);
    let mut out = server.stdout.take().unwrap();
    for i in 0..3u8 {
        if i == 1 {
            let mut g = UnixStream::connect(&sock.path).unwrap();
            g.write_all(&[0xEE; 16]).unwrap();
        }
        let mut c = ring()
            .args(["connect", &path])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(&[b'a' + i; 1000])
            .unwrap();
        assert!(c.wait().unwrap().success(), "client {i}");
        let mut got = [0u8; 1000];
        out.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|&b| b == b'a' + i), "session {i}");
    }
    assert!(
        server.try_wait().unwrap().is_none(),
        "--keep stopped serving"
    );
    server.kill().unwrap();
    server.wait().unwrap();
}

/// Idle connections cannot starve the listener: with 300 of them open
/// (far more than the handshakes that run at once), a good client that
/// says its hello at once is served well before the 5 s handshake
/// deadline it would otherwise wait out behind them (about 0.1 s on a
/// quiet machine; the 3 s bound holds at load 17 on two cores), and the
/// idle ones are refused as they are cut off.
#[test]
fn a_good_client_behind_300_idle_connections_is_served_at_once() {
    let sock = TempSock::new("idle");
    let server = serve_one(&sock.path, Duration::from_secs(5));
    let idle: Vec<UnixStream> = (0..300)
        .map(|_| UnixStream::connect(&sock.path).unwrap())
        .collect();
    let start = Instant::now();
    good_client(&sock.path, b"behind the crowd");
    let served_in = start.elapsed();
    assert!(
        served_in < Duration::from_secs(3),
        "served after {served_in:?}"
    );
    drop(idle);
    let (refused, got) = server.join().unwrap();
    assert_eq!(got, b"behind the crowd");
    assert!(
        refused.len() >= 300 - rendezvous::MAX_HANDSHAKES,
        "{} refused",
        refused.len()
    );
}

/// A path the listener refuses gets no lock file beside it.
#[test]
fn a_refused_path_leaves_no_lock_file() {
    let sock = TempSock::new("nolock");
    std::fs::write(&sock.path, b"a file").unwrap();
    let e = Listener::bind(&sock.path, ServerConfig::new(Proto::Vchan)).unwrap_err();
    assert!(e.to_string().contains("is not a socket"), "{e}");
    let mut lock = sock.path.as_os_str().to_owned();
    lock.push(".lock");
    assert!(
        !std::path::Path::new(&lock).exists(),
        "a lock file was left"
    );
}

/// A listener stopped by SIGTERM, SIGINT or SIGHUP while it waits removes
/// its socket and lock file, says so in one line and exits 128 + the
/// signal; a path it refuses gets no lock file.
#[test]
fn a_signalled_listener_leaves_no_socket_or_lock_behind() {
    use rustix::process::Signal;
    for (sig, code, keep) in [
        (Signal::TERM, 143, false),
        (Signal::INT, 130, true),
        (Signal::HUP, 129, false),
    ] {
        let sock = TempSock::new("signalled");
        let mut cmd = ring();
        cmd.arg("listen").arg(&sock.path);
        if keep {
            cmd.arg("--keep");
        }
        let mut l = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_path(&sock.path);
        let pid = rustix::process::Pid::from_raw(l.id() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
        let (got, err) = common::exit_within(&mut l, Duration::from_secs(10), "listen");
        assert_eq!(got, code, "{sig:?}: {err}");
        assert!(err.contains("stopped by SIG"), "{sig:?}: {err}");
        assert!(!sock.path.exists(), "{sig:?}: the socket was left");
        let mut lock = sock.path.as_os_str().to_owned();
        lock.push(".lock");
        assert!(
            !std::path::Path::new(&lock).exists(),
            "{sig:?}: the lock was left"
        );
    }
    let refused = ring()
        .args(["listen", "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(!std::path::Path::new("/dev/null.lock").exists());
}
