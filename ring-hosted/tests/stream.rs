//! The blocking stream and message API, in one process over a real memfd
//! and eventfds.

mod common;

use common::Pattern;
use ring_core::vchan::{self, Blocking, Orders, ServerOptions};
use ring_hosted::eventfd;
use ring_hosted::memfd::MemFd;
use ring_hosted::stream::{pair, MSG_HEADER};
use ring_hosted::Error;
use std::io::{Read, Write};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn io_read_write_across_threads_with_wrapping_small_rings() {
    let (mut server, mut client) = pair(1024, 2048).unwrap();
    let n = 300_001usize;
    let t = thread::spawn(move || {
        let mut data = vec![0u8; n];
        Pattern::new(5).fill(&mut data);
        for piece in data.chunks(777) {
            client.write_all(piece).unwrap();
        }
        client.flush().unwrap();
        client.close().unwrap();
    });
    let mut got = Vec::new();
    server.read_to_end(&mut got).unwrap();
    t.join().unwrap();
    assert_eq!(got.len(), n);
    assert_eq!(Pattern::new(5).first_mismatch(&got), None);
    assert!(
        server.signal().wakeups() > 0,
        "a 1 KiB ring must have blocked"
    );
}

#[test]
fn gathered_writes_cross_threads_in_order() {
    let (mut server, mut client) = pair(1024, 2048).unwrap();
    let n = 200_000usize;
    let t = thread::spawn(move || {
        let mut data = vec![0u8; n];
        Pattern::new(9).fill(&mut data);
        // Three pieces per call, one of them empty, through a 1 KiB ring.
        for piece in data.chunks(600) {
            let (a, b) = piece.split_at(piece.len() / 3);
            let mut bufs = [
                std::io::IoSlice::new(a),
                std::io::IoSlice::new(&[]),
                std::io::IoSlice::new(b),
            ];
            let mut bufs = &mut bufs[..];
            while !bufs.is_empty() {
                let n = client.write_vectored(bufs).unwrap();
                std::io::IoSlice::advance_slices(&mut bufs, n);
            }
        }
        client.close().unwrap();
    });
    let mut got = Vec::new();
    server.read_to_end(&mut got).unwrap();
    t.join().unwrap();
    assert_eq!(got.len(), n);
    assert_eq!(Pattern::new(9).first_mismatch(&got), None);
}

#[test]
fn messages_keep_their_boundaries() {
    let (mut server, mut client) = pair(8192, 8192).unwrap();
    let msgs: Vec<Vec<u8>> = (0..200).map(|i| vec![i as u8; (i * 37) % 3000]).collect();
    let sent = msgs.clone();
    let t = thread::spawn(move || {
        for m in &sent {
            client.send_msg(m).unwrap();
        }
        client
    });
    let mut buf = vec![0u8; 4096];
    for m in &msgs {
        let n = server.recv_msg(&mut buf).unwrap();
        assert_eq!(&buf[..n], &m[..]);
    }
    let mut client = t.join().unwrap();
    // Too large for the ring: refused whole, nothing sent.
    let big = vec![0u8; client.max_msg() + 1];
    assert!(matches!(
        client.send_msg(&big),
        Err(Error::Vchan(vchan::Error::TooLarge { .. }))
    ));
    assert_eq!(server.endpoint().data_ready().unwrap(), 0);
    // A buffer too small for the message is our mistake: a usage error
    // (the class the VMBus pipe gives), nothing consumed, and the retry
    // with room receives it whole.
    client.send_msg(&[1u8; 100]).unwrap();
    client.send_msg(b"after").unwrap();
    let mut small = [0u8; 10];
    for _ in 0..2 {
        match server.recv_msg(&mut small) {
            Err(Error::Vchan(
                e @ vchan::Error::TooLarge {
                    len: 100,
                    capacity: 10,
                },
            )) => {
                assert_eq!(e.class(), ring_core::error::ErrorClass::Usage)
            }
            other => panic!("a 10-byte buffer for 100 bytes gave {other:?}"),
        }
    }
    let mut exact = [0u8; 100];
    assert_eq!(server.recv_msg(&mut exact).unwrap(), 100);
    assert_eq!(exact, [1u8; 100]);
    assert_eq!(server.recv_msg(&mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"after");
    // A length no message of the ring can have is the peer's error: the
    // stream is out of step for good. Exactly the largest message passes.
    let max = server.endpoint().read_capacity() - MSG_HEADER;
    client.send(&(max as u32).to_le_bytes()).unwrap();
    client.send(&vec![3u8; max]).unwrap();
    let mut whole = vec![0u8; max];
    assert_eq!(server.recv_msg(&mut whole).unwrap(), max);
    client.send(&(max as u32 + 1).to_le_bytes()).unwrap();
    for _ in 0..2 {
        match server.recv_msg(&mut whole) {
            Err(Error::Vchan(e @ vchan::Error::Corrupt(_))) => {
                assert_eq!(e.class(), ring_core::error::ErrorClass::Corrupt)
            }
            other => panic!("a length past the ring gave {other:?}"),
        }
    }
    assert_eq!(MSG_HEADER, 4);
}

#[test]
fn clean_close_delivers_the_rest_then_end_of_stream() {
    let (mut server, mut client) = pair(4096, 4096).unwrap();
    client.write_all(&[9u8; 1000]).unwrap();
    client.close().unwrap();
    let mut buf = [0u8; 4096];
    assert_eq!(server.read(&mut buf).unwrap(), 1000);
    assert_eq!(server.read(&mut buf).unwrap(), 0);
    assert!(matches!(server.write(b"late"), Err(Error::Closed)));
    assert!(matches!(server.recv(&mut buf[..1]), Err(Error::Closed)));
}

#[test]
fn a_close_wakes_a_blocked_reader() {
    let (mut server, mut client) = pair(4096, 4096).unwrap();
    let reader = rustix::thread::gettid();
    let t = thread::spawn(move || {
        common::wait_until_polling(reader);
        drop(client.close());
        client
    });
    let start = Instant::now();
    assert_eq!(server.read(&mut [0u8; 8]).unwrap(), 0);
    assert!(start.elapsed() < Duration::from_secs(2));
    drop(t.join().unwrap());
}

#[test]
fn timeouts_end_blocking_calls() {
    let (mut server, _client) = pair(4096, 4096).unwrap();
    server
        .signal_mut()
        .set_timeout(Some(Duration::from_millis(30)));
    let start = Instant::now();
    assert!(matches!(server.read(&mut [0u8; 8]), Err(Error::TimedOut)));
    assert!(start.elapsed() >= Duration::from_millis(25));
    let e: std::io::Error = Error::TimedOut.into();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
}

#[test]
fn spinning_round_trips_still_work() {
    let (mut server, mut client) = pair(4096, 4096).unwrap();
    server.signal_mut().set_spin(Duration::from_micros(50));
    client.signal_mut().set_spin(Duration::from_micros(50));
    let t = thread::spawn(move || {
        let mut b = [0u8; 64];
        for _ in 0..2000 {
            client.recv(&mut b).unwrap();
            client.send(&b).unwrap();
        }
    });
    let mut b = [0u8; 64];
    for i in 0..2000u32 {
        b[..4].copy_from_slice(&i.to_le_bytes());
        server.send(&b).unwrap();
        server.recv(&mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b[..4].try_into().unwrap()), i);
    }
    t.join().unwrap();
}

#[test]
fn event_signal_drives_ring_cores_blocking_wrapper() {
    // The eventfd signal through the core's generic `Signal` trait.
    let orders = Orders::new(10, 11).unwrap();
    let mem = Arc::new(MemFd::create("blocking", 4096).unwrap());
    let server = vchan::serve_flat(mem.clone(), orders, ServerOptions::default()).unwrap();
    let client = vchan::connect_flat(mem).unwrap();
    let (s_sig, c_sig) = eventfd::pair().unwrap();
    let mut server = Blocking::new(server, s_sig);
    let mut client = Blocking::new(client, c_sig);
    let t = thread::spawn(move || {
        let mut data = vec![0u8; 50_000];
        Pattern::new(3).fill(&mut data);
        client.write_all(&data).unwrap();
        client.close().unwrap();
        client.signal().kicks()
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 700];
    loop {
        let n = server.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let kicks = t.join().unwrap();
    assert_eq!(Pattern::new(3).first_mismatch(&got), None);
    assert_eq!(got.len(), 50_000);
    assert!(kicks > 0);
}

#[test]
fn live_byte_cleared_without_a_kick_still_wakes_blocked_calls() {
    use ring_core::mem::SharedMem;
    use ring_core::vchan::layout::CLI_LIVE;
    use ring_hosted::stream::LIVENESS_POLL;
    // A blocked reader.
    // Noticed by the liveness re-check (a lapse, not a kick); the bound is
    // loose so a loaded machine passes, the lapse count is what shows the
    // path.
    let (mut server, client) = pair(4096, 4096).unwrap();
    let mem = server.memory().clone();
    let reader = rustix::thread::gettid();
    let t = thread::spawn(move || {
        common::wait_until_polling(reader);
        // The client "dies" politely but never kicks.
        mem.store_u8(CLI_LIVE, 0).unwrap();
        Instant::now()
    });
    assert_eq!(server.read(&mut [0u8; 8]).unwrap(), 0);
    let noticed = Instant::now();
    let cleared = t.join().unwrap();
    assert!(noticed.duration_since(cleared) <= LIVENESS_POLL + Duration::from_secs(5));
    let counts = server.signal().wake_counts();
    assert!(counts.lapses > 0 && counts.kicks == 0, "{counts:?}");
    drop(client); // only now: its close would have kicked

    // A blocked writer (ring full).
    let (mut server, client) = pair(4096, 4096).unwrap();
    server.write_all(&[1u8; 4096]).unwrap();
    let mem = server.memory().clone();
    let writer = rustix::thread::gettid();
    let t = thread::spawn(move || {
        common::wait_until_polling(writer);
        mem.store_u8(CLI_LIVE, 0).unwrap();
        Instant::now()
    });
    assert!(matches!(server.write(b"more"), Err(Error::Closed)));
    let noticed = Instant::now();
    assert!(server.signal().wake_counts().lapses > 0);
    assert!(noticed.duration_since(t.join().unwrap()) <= LIVENESS_POLL + Duration::from_secs(5));
    drop(client);
}

/// With the liveness re-check off, a blocked reader is woken by the
/// writer's kick and nothing else: every wake-up is counted by its cause,
/// and none was a lapse. Withhold that kick and the same read times out —
/// the control that shows this test fails when a kick goes missing.
#[test]
fn every_wake_up_of_a_blocked_reader_comes_from_a_kick() {
    let (mut server, mut client) = pair(4096, 4096).unwrap();
    server.signal_mut().set_liveness(None);
    server.signal_mut().set_spin(Duration::ZERO);
    server
        .signal_mut()
        .set_timeout(Some(Duration::from_secs(10)));
    let t = thread::spawn(move || {
        for round in 0..200u32 {
            thread::sleep(Duration::from_micros(200));
            client.write_all(&round.to_le_bytes()).unwrap();
        }
        client
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < 800 {
        let n = server.read(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    let client = t.join().unwrap();
    for (i, w) in got.chunks(4).enumerate() {
        assert_eq!(w, (i as u32).to_le_bytes());
    }
    let counts = server.signal().wake_counts();
    assert_eq!(counts.lapses, 0, "{counts:?}");
    assert_eq!(counts.timeouts, 0, "{counts:?}");
    assert!(counts.kicks > 0, "{counts:?}");
    assert!(counts.kicks <= client.signal().kicks(), "{counts:?}");
    drop(client);
}

#[test]
fn a_withheld_kick_leaves_a_reader_without_liveness_asleep() {
    use ring_core::mem::SharedMem;
    use ring_core::vchan::layout::LEFT_PROD;
    let (mut server, client) = pair(4096, 4096).unwrap();
    server.signal_mut().set_liveness(None);
    server
        .signal_mut()
        .set_timeout(Some(Duration::from_millis(300)));
    let mem = server.memory().clone();
    let left = ring_core::vchan::FlatLayout::new(Orders::for_sizes(4096, 4096).unwrap()).left;
    let reader = rustix::thread::gettid();
    let t = thread::spawn(move || {
        // Once the reader sleeps (its re-check done), a peer publishes 3
        // bytes but "forgets" to kick.
        common::wait_until_polling(reader);
        mem.write(left, b"abc").unwrap();
        mem.store_u32(LEFT_PROD, 3).unwrap();
    });
    let mut buf = [0u8; 8];
    assert!(matches!(server.read(&mut buf), Err(Error::TimedOut)));
    t.join().unwrap();
    // The bytes were there all along; only the kick was missing.
    assert_eq!(server.try_read(&mut buf).unwrap(), Some(3));
    // The unconditional kick reaches the other side.
    server.kick().unwrap();
    assert_eq!(client.signal().wakeups(), 0);
    client
        .signal()
        .wait_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    assert_eq!(client.signal().wakeups(), 1);
}

/// A peer that fills the eventfd we kick to one short of overflow cannot
/// make our kicks fail: a saturated counter is already readable, so the
/// kick counts as delivered, and the transfer completes.
#[test]
fn a_saturated_eventfd_does_not_break_our_kicks() {
    let (mut server, mut client) = pair(4096, 4096).unwrap();
    client.signal_mut().set_liveness(None);
    client
        .signal_mut()
        .set_timeout(Some(Duration::from_secs(10)));
    rustix::io::write(
        client.signal().wake_fd(),
        &0xffff_ffff_ffff_fffe_u64.to_ne_bytes(),
    )
    .unwrap();
    // The next write of 1 would overflow: the kernel says EAGAIN.
    assert!(rustix::io::write(client.signal().wake_fd(), &1u64.to_ne_bytes()).is_err());
    server.kick().unwrap();
    let t = thread::spawn(move || {
        let mut data = vec![0u8; 200_000];
        Pattern::new(9).fill(&mut data);
        server.write_all(&data).unwrap();
        server.close().unwrap();
    });
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    t.join().unwrap();
    assert_eq!(got.len(), 200_000);
    assert_eq!(Pattern::new(9).first_mismatch(&got), None);
}
