//! Writing and reading in place through `std::io`: a reservation waits for
//! exactly the room it asked for, a failed serializer publishes nothing,
//! and a failed parser gives nothing back. Every wait has a deadline (the
//! signals' timeouts), so a lost wake-up fails the test.

use ring_core::loan::Drained;
use std::io::{ErrorKind, Read, Write};
use std::time::Duration;

const DEADLINE: Option<Duration> = Some(Duration::from_secs(10));

/// This thread's `/proc/self/task/TID` directory.
fn this_thread() -> std::path::PathBuf {
    let link = std::fs::read_link("/proc/thread-self").unwrap();
    std::path::Path::new("/proc").join(link)
}

/// Waits (at most 10 s) until `thread` sleeps in a futex wait, as our
/// in-process signal's waits do: the event to wait for before freeing
/// room, so that the writer's wait is what the test runs (a fixed sleep
/// would let a loaded machine free the room first).
fn wait_until_asleep(thread: &std::path::Path) {
    #[cfg(target_arch = "x86_64")]
    const FUTEX: &str = "202";
    #[cfg(target_arch = "aarch64")]
    const FUTEX: &str = "98";
    let start = std::time::Instant::now();
    loop {
        let now = std::fs::read_to_string(thread.join("syscall")).unwrap_or_default();
        if now.split_whitespace().next() == Some(FUTEX) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never asleep: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn vchan_reservation_waits_for_its_room_and_failures_publish_nothing() {
    let (mut a, mut b) = ring_std::vchan::pair(4096, 4096).unwrap();
    a.blocking().signal_mut().set_timeout(DEADLINE);
    b.blocking().signal_mut().set_timeout(DEADLINE);

    // A serializer that fails half-way: nothing reaches the peer.
    let err = a
        .write_in_place(100, |w| {
            w.write_all(b"half a record")?;
            Err(std::io::Error::other("serializer gave up"))
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "serializer gave up");
    assert_eq!(a.blocking().endpoint().unread_by_peer().unwrap(), 0);

    // Fill all but 10 bytes; a 1000-byte reservation must wait for the
    // reader, then get exactly 1000 bytes of room.
    a.write_all(&[7u8; 4086]).unwrap();
    let writer = this_thread();
    let reader = std::thread::spawn(move || {
        wait_until_asleep(&writer);
        let mut sink = vec![0u8; 4086];
        b.read_exact(&mut sink).unwrap();
        assert!(sink.iter().all(|&x| x == 7));
        let mut rec = vec![0u8; 1000];
        b.read_exact(&mut rec).unwrap();
        rec
    });
    let n = a
        .write_in_place(1000, |w| {
            assert_eq!(w.capacity(), 1000, "offered exactly the reservation");
            for i in 0..1000u32 {
                w.write_all(&[(i % 251) as u8])?;
            }
            assert_eq!(w.write(b"x")?, 0, "a full loan takes nothing");
            Ok(())
        })
        .unwrap();
    assert_eq!(n, 1000);
    let rec = reader.join().unwrap();
    assert!(rec.iter().enumerate().all(|(i, &x)| x == (i % 251) as u8));
}

#[test]
fn vchan_failed_parser_gives_nothing_back() {
    let (mut a, mut b) = ring_std::vchan::pair(4096, 4096).unwrap();
    a.blocking().signal_mut().set_timeout(DEADLINE);
    b.blocking().signal_mut().set_timeout(DEADLINE);
    a.write_all(b"0123456789").unwrap();
    let err = b
        .read_in_place(10, |r| {
            let mut four = [0u8; 4];
            r.read_exact(&mut four)?;
            Err(std::io::Error::new(ErrorKind::InvalidData, "bad record"))
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    // The bytes are all still there, from the start.
    let mut got = String::new();
    let d = b
        .read_in_place(10, |r| r.read_to_string(&mut got).map(drop))
        .unwrap();
    assert_eq!(d, Drained::Took(10));
    assert_eq!(got, "0123456789");
    a.close().unwrap();
    assert_eq!(b.read_in_place(10, |_| Ok(())).unwrap(), Drained::End);
}

#[test]
fn vmbus_reservation_is_one_packet_and_failures_commit_nothing() {
    let (mut a, mut b) = ring_std::vmbus::pipe_pair(4 * 4096).unwrap();
    a.blocking().signal_mut().set_timeout(DEADLINE);
    b.blocking().signal_mut().set_timeout(DEADLINE);

    let err = a
        .write_in_place(100, |w| {
            w.write_all(b"part")?;
            Err(std::io::Error::other("no"))
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "no");
    assert_eq!(a.blocking().writer().ring().unread_by_peer().unwrap(), 0);

    // Leave less room than a 3000-byte packet needs; the reservation
    // waits for the reader and then gets the whole data area at once.
    let filler = vec![3u8; 14_000];
    a.write_all(&filler).unwrap();
    let writer = this_thread();
    let reader = std::thread::spawn(move || {
        wait_until_asleep(&writer);
        let mut sink = vec![0u8; 14_000];
        b.read_exact(&mut sink).unwrap();
        assert!(sink.iter().all(|&x| x == 3));
        let mut rec = vec![0u8; 3000];
        b.read_exact(&mut rec).unwrap();
        rec
    });
    let n = a
        .write_in_place(3000, |w| {
            assert_eq!(w.capacity(), 3000, "offered exactly the reservation");
            w.write_all(&[9u8; 3000])
        })
        .unwrap();
    assert_eq!(n, 3000);
    assert_eq!(reader.join().unwrap(), vec![9u8; 3000]);
}
