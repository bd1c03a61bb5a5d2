//! A peer process killed with SIGKILL at random points: the survivor must
//! get `PeerGone` in bounded time, after reading everything the peer left in
//! the ring, and every byte it received must be intact.

mod common;

use common::{spawn_peer, wait_for_path, Lcg, TempSock};
use ring_cli::check::Pattern;
use ring_hosted::rendezvous::{self, Listener, Proto, ServerConfig, Session};
use ring_hosted::stream::PollStream;
use ring_hosted::Error;
use rustix::process::{kill_process, Pid, Signal};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ITERATIONS: u64 = 60;

fn connect_retry(path: &std::path::Path, proto: Proto) -> Session {
    for _ in 0..2000 {
        if let Ok(s) = rendezvous::connect(path, proto) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("peer never accepted");
}

/// Kills `child` after `delay`, on another thread; the receiver gets the
/// instant of the kill.
fn kill_later(child: &Child, delay: Duration) -> mpsc::Receiver<Instant> {
    let pid = Pid::from_child(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        kill_process(pid, Signal::KILL).unwrap();
        tx.send(Instant::now()).unwrap();
    });
    rx
}

/// Echo peer: we stream the pattern out and check every echoed byte
/// against it until the ring reports the peer gone. Returns bytes echoed.
fn survive_echo(s: &mut impl PollStream, seed: u64) -> u64 {
    let mut out = Pattern::new(seed);
    let mut check = Pattern::new(seed);
    let mut obuf = vec![0u8; 8192];
    let (mut off, mut len) = (0, 0);
    let mut ibuf = vec![0u8; 8192];
    let mut write_closed = false;
    loop {
        let mut moved = false;
        if !write_closed {
            if off == len {
                out.fill(&mut obuf);
                (off, len) = (0, obuf.len());
            }
            match s.try_write(&obuf[off..len]) {
                Ok(Some(n)) => {
                    off += n;
                    moved = true;
                }
                Ok(None) => {}
                Err(Error::PeerGone) => write_closed = true,
                Err(e) => panic!("write failed with {e}, not PeerGone"),
            }
        }
        match s.try_read(&mut ibuf) {
            Ok(Some(0)) => panic!("a killed peer cannot close cleanly"),
            Ok(Some(n)) => {
                assert_eq!(
                    check.first_mismatch(&ibuf[..n]),
                    None,
                    "echoed byte corrupted"
                );
                moved = true;
            }
            Ok(None) => {}
            Err(Error::PeerGone) => {
                assert!(check.position() <= out.position() - (len - off) as u64);
                return check.position();
            }
            Err(e) => panic!("read failed with {e}, not PeerGone"),
        }
        if !moved {
            s.wait_event(None, Some(Instant::now() + Duration::from_secs(5)))
                .expect("wait must end by kick or hang-up");
        }
    }
}

/// Source peer: we read until PeerGone, checking every byte.
fn survive_source(s: &mut impl PollStream, seed: u64) -> u64 {
    let mut check = Pattern::new(seed);
    let mut buf = vec![0u8; 4096];
    loop {
        match s.try_read(&mut buf) {
            Ok(Some(0)) => panic!("a killed peer cannot close cleanly"),
            Ok(Some(n)) => assert_eq!(check.first_mismatch(&buf[..n]), None, "byte corrupted"),
            Ok(None) => {
                s.wait_event(None, Some(Instant::now() + Duration::from_secs(5)))
                    .expect("wait must end by kick or hang-up");
            }
            Err(Error::PeerGone) => return check.position(),
            Err(e) => panic!("read failed with {e}, not PeerGone"),
        }
    }
}

/// After `PeerGone`: nothing left unread, and it stays closed both ways.
fn assert_drained_and_closed(s: &mut impl PollStream, unread: usize, i: u64) {
    assert_eq!(unread, 0, "iteration {i}: bytes left in the ring");
    assert!(matches!(s.try_read(&mut [0u8; 4]), Err(Error::PeerGone)));
    assert!(matches!(s.try_write(b"x"), Err(Error::PeerGone)));
}

#[test]
fn sigkilled_peer_yields_closed_in_bounded_time_with_intact_data() {
    let mut rng = Lcg(0x5eed);
    let mut latencies = Vec::new();
    let mut moved_total = 0u64;
    for i in 0..ITERATIONS {
        let sock = TempSock::new("fault");
        let peer_listens = i % 2 == 1;
        let source = i % 3 == 0;
        let proto = if (i / 2) % 2 == 0 {
            Proto::Vchan
        } else {
            Proto::Vmbus
        };
        let seed = 1000 + i;
        let seed_s = seed.to_string();
        let mut args = vec!["--mode", if source { "source" } else { "echo" }];
        args.extend_from_slice(&["--seed", &seed_s, "--ring-size", "16K"]);
        args.extend_from_slice(&["--proto", proto.name()]);
        let (mut session, mut child) = if peer_listens {
            args.push("--listen");
            let child = spawn_peer(&sock.path, &args);
            wait_for_path(&sock.path);
            (connect_retry(&sock.path, proto), child)
        } else {
            let l = Listener::bind(
                &sock.path,
                ServerConfig::new(proto).ring_sizes(16 << 10, 16 << 10),
            )
            .unwrap();
            let child = spawn_peer(&sock.path, &args);
            (l.accept_timeout(Duration::from_secs(20)).unwrap(), child)
        };
        // The survivor never waits longer than this for anything.
        session
            .signal_mut()
            .set_timeout(Some(Duration::from_secs(5)));
        let delay = Duration::from_micros(rng.below(20_000));
        let killed = kill_later(&child, delay);
        let (moved, noticed) = match &mut session {
            Session::Vchan(s) => {
                let moved = if source {
                    survive_source(s, seed)
                } else {
                    survive_echo(s, seed)
                };
                let noticed = Instant::now();
                let unread = s.endpoint().data_ready().unwrap();
                assert!(s.peer_gone());
                assert_drained_and_closed(s, unread, i);
                (moved, noticed)
            }
            Session::Vmbus(s) => {
                let moved = if source {
                    survive_source(s, seed)
                } else {
                    survive_echo(s, seed)
                };
                let noticed = Instant::now();
                let unread = s.unread().unwrap();
                assert!(s.peer_gone());
                assert_drained_and_closed(s, unread, i);
                (moved, noticed)
            }
            _ => unreachable!("only vchan and vmbus are set up here"),
        };
        let killed_at = killed.recv().unwrap();
        latencies.push(noticed.saturating_duration_since(killed_at));
        moved_total += moved;
        let status = child.wait().unwrap();
        assert!(!status.success(), "peer was meant to be killed");
    }
    latencies.sort();
    let p95 = latencies[latencies.len() * 95 / 100];
    let max = *latencies.last().unwrap();
    eprintln!(
        "{ITERATIONS} kills: {moved_total} bytes verified, kill-to-PeerGone p50 {:?} p95 {p95:?} max {max:?}",
        latencies[latencies.len() / 2]
    );
    assert!(moved_total > 0, "the peers never got to move data");
    assert!(p95 <= Duration::from_millis(100), "p95 {p95:?}");
    assert!(max <= Duration::from_secs(1), "max {max:?}");
}
