//! Vchan and VMBus transfers between this test process and a `ring peer` process,
//! over memfd + eventfds set up by the rendezvous, in both roles.

mod common;

use common::{spawn_peer, wait_for_path, TempSock};
use ring_cli::check::{duplex, Pattern};
use ring_hosted::rendezvous::{self, Listener, Proto, ServerConfig, Session};
use ring_hosted::stream::VchanStream;
use ring_hosted::vmbus::VmbusPipe;
use std::io::Read;
use std::process::Child;
use std::time::Duration;

/// Connects to (or accepts) a vchan peer started with `args`.
fn session(
    sock: &TempSock,
    peer_listens: bool,
    ring: usize,
    args: &[&str],
) -> (VchanStream, Child) {
    let (s, child) = any_session(sock, Proto::Vchan, peer_listens, ring, args);
    (s.into_vchan().unwrap(), child)
}

/// Connects to (or accepts) a peer of `proto` started with `args`.
fn any_session(
    sock: &TempSock,
    proto: Proto,
    peer_listens: bool,
    ring: usize,
    args: &[&str],
) -> (Session, Child) {
    if peer_listens {
        let size = ring.to_string();
        let mut all = vec!["--listen", "--ring-size", &size, "--proto", proto.name()];
        all.extend_from_slice(args);
        let child = spawn_peer(&sock.path, &all);
        wait_for_path(&sock.path);
        // The peer binds before it listens; retry until it accepts.
        let mut tries = 0;
        let s = loop {
            match rendezvous::connect(&sock.path, proto) {
                Ok(s) => break s,
                Err(e) if tries < 500 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("cannot connect to peer: {e}"),
            }
        };
        (s, child)
    } else {
        let l =
            Listener::bind(&sock.path, ServerConfig::new(proto).ring_sizes(ring, ring)).unwrap();
        let mut all = vec!["--proto", proto.name()];
        all.extend_from_slice(args);
        let child = spawn_peer(&sock.path, &all);
        let s = l.accept_timeout(Duration::from_secs(20)).unwrap();
        (s, child)
    }
}

fn vmbus(s: Session) -> VmbusPipe {
    s.into_vmbus().unwrap()
}

#[test]
fn both_directions_at_once_with_checksums_in_both_roles_and_sizes() {
    for (peer_listens, ring, bytes) in [
        (false, 1 << 20, 24 << 20),
        (true, 1 << 20, 24 << 20),
        (false, 1024, 1 << 20),
        (true, 4096, 2 << 20),
        (false, 64 << 10, (8 << 20) + 13),
    ] {
        let sock = TempSock::new("duplex");
        let (mut s, mut child) = session(&sock, peer_listens, ring, &["--mode", "echo"]);
        assert_eq!(
            s.role(),
            if peer_listens {
                ring_core::vchan::Role::Client
            } else {
                ring_core::vchan::Role::Server
            }
        );
        let got = duplex(&mut s, 42, bytes, bytes, |_, _| {}).unwrap();
        assert_eq!(got.sent.len(), bytes);
        assert_eq!(got.received.len(), bytes);
        assert_eq!(
            got.sent.finish(),
            got.received.finish(),
            "echoed bytes differ (peer listens: {peer_listens}, ring {ring})"
        );
        s.close().unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "peer failed: {status}");
    }
}

#[test]
fn stream_from_a_peer_ends_cleanly_with_every_byte() {
    for peer_listens in [false, true] {
        let sock = TempSock::new("source");
        let n: u64 = (3 << 20) + 17;
        let (mut s, mut child) = session(
            &sock,
            peer_listens,
            16 << 10,
            &["--mode", "source", "--bytes", &n.to_string(), "--seed", "9"],
        );
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        assert_eq!(all.len() as u64, n);
        assert_eq!(Pattern::new(9).first_mismatch(&all), None);
        assert!(child.wait().unwrap().success());
        // A clean close is end of stream, again and again.
        let mut b = [0u8; 8];
        assert_eq!(s.read(&mut b).unwrap(), 0);
    }
}

#[test]
fn vmbus_pipe_both_directions_at_once_in_both_roles() {
    for (peer_listens, ring, bytes) in [
        (false, 1 << 20, 16 << 20),
        (true, 64 << 10, (4 << 20) + 5),
        (false, 4096, 1 << 20),
    ] {
        let sock = TempSock::new("vmbus-duplex");
        let (s, mut child) =
            any_session(&sock, Proto::Vmbus, peer_listens, ring, &["--mode", "echo"]);
        let mut s = vmbus(s);
        let got = duplex(&mut s, 77, bytes, bytes, |_, _| {}).unwrap();
        assert_eq!(got.received.len(), bytes);
        assert_eq!(got.sent.finish(), got.received.finish());
        ring_hosted::stream::PollStream::close(&mut s).unwrap();
        assert!(child.wait().unwrap().success());
    }
}

#[test]
fn vmbus_stream_from_a_peer_ends_cleanly() {
    for peer_listens in [false, true] {
        let sock = TempSock::new("vmbus-source");
        let n: u64 = (2 << 20) + 3;
        let (s, mut child) = any_session(
            &sock,
            Proto::Vmbus,
            peer_listens,
            8192,
            &["--mode", "source", "--bytes", &n.to_string(), "--seed", "5"],
        );
        let mut s = vmbus(s);
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        assert_eq!(all.len() as u64, n);
        assert_eq!(Pattern::new(5).first_mismatch(&all), None);
        assert!(child.wait().unwrap().success());
    }
}
