//! `ring inspect` validates like a reader: exit 0 for a clean image, 3
//! for corruption with the offset of the first fault, 1 for what it cannot
//! read, 2 for flags of the other protocol; it never blocks.

mod common;

use common::{ring, TempSock};
use ring_core::mem::RawMem;
use ring_core::vchan::{self, Orders, ServerOptions};
use ring_core::vmbus::{self, IncomingRing, OutgoingPacket, OutgoingRing, RingLayout};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn inspect(args: &[&str]) -> Output {
    ring()
        .arg("inspect")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn bytes(words: &[AtomicU64]) -> Vec<u8> {
    words
        .iter()
        .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
        .collect()
}

fn words(n: usize) -> Vec<AtomicU64> {
    (0..n / 8).map(|_| AtomicU64::new(0)).collect()
}

/// A flat vchan image with external rings (orders 12 and 13) and some
/// bytes in flight.
fn vchan_image() -> Vec<u8> {
    let orders = Orders::new(12, 13).unwrap();
    let w = words(vchan::FlatLayout::new(orders).size);
    let mem = RawMem::from_atomics(&w);
    let mut server = vchan::serve_flat(mem, orders, ServerOptions::default()).unwrap();
    let mut client = vchan::connect_flat(mem).unwrap();
    let _ = client.write(b"request").unwrap();
    let _ = server.write(&[7u8; 3000]).unwrap();
    bytes(&w)
}

/// A VMBus channel of two 16 KiB rings with ten packets in the first.
fn vmbus_image() -> Vec<u8> {
    let layout = RingLayout::new(4096, 16384).unwrap();
    let w = words(2 * layout.total_size());
    let first = RawMem::from_atomics(&w[..layout.total_size() / 8]);
    let second = RawMem::from_atomics(&w[layout.total_size() / 8..]);
    for m in [&first, &second] {
        vmbus::initialize_ring(m, layout).unwrap();
    }
    let mut tx = OutgoingRing::new(first, layout).unwrap();
    let _rx = IncomingRing::new(first, layout).unwrap();
    let _ = OutgoingRing::new(second, layout).unwrap();
    for i in 0..10u8 {
        let payload = [i; 100];
        let pieces: [&[u8]; 1] = [&payload];
        let _ = tx
            .send(&OutgoingPacket::in_band(u64::from(i), &pieces))
            .unwrap();
    }
    bytes(&w)
}

fn write(dir: &TempSock, name: &str, image: &[u8]) -> String {
    let p = dir.path.with_file_name(name);
    std::fs::write(&p, image).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn clean_images_exit_0() {
    let dir = TempSock::new("clean");
    let f = write(&dir, "vchan", &vchan_image());
    let o = inspect(&[&f]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let f = write(&dir, "vmbus", &vmbus_image());
    let o = inspect(&["--proto", "vmbus", &f]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = inspect(&["--proto", "vmbus", "--json", &f]);
    assert!(text(&o).contains("\"findings\":[]"), "{}", text(&o));
}

#[test]
fn a_grant_ref_outside_the_file_is_exit_3() {
    let dir = TempSock::new("grant");
    let mut image = vchan_image();
    // Left (order 12) has one grant ref at byte 24; the right ring's first
    // is at byte 28: point it far past the file.
    image[24 + 4..24 + 8].copy_from_slice(&9999u32.to_le_bytes());
    let f = write(&dir, "vchan", &image);
    let o = inspect(&[&f]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("grant ref 9999 is past"), "{}", text(&o));
    assert!(text(&o).contains("at byte 28"), "{}", text(&o));
    // A grant ref that names the control page.
    image[24..28].copy_from_slice(&0u32.to_le_bytes());
    let f = write(&dir, "vchan0", &image);
    let o = inspect(&["--json", &f]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("\"offset\":24"), "{}", text(&o));
}

#[test]
fn a_producer_past_its_ring_and_a_bad_live_byte_are_exit_3() {
    let dir = TempSock::new("prod");
    let mut image = vchan_image();
    // Left producer 100 000 bytes ahead of a 4 KiB ring.
    image[4..8].copy_from_slice(&100_000u32.to_le_bytes());
    image[21] = 9; // server live byte
    let f = write(&dir, "vchan", &image);
    let o = inspect(&[&f]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("more than its 4096"), "{t}");
    assert!(t.contains("server live byte holds 9"), "{t}");
}

#[test]
fn a_bad_packet_deep_in_the_used_region_is_found_with_its_offset() {
    let dir = TempSock::new("packet");
    let mut image = vmbus_image();
    // Packets of 16 + 104 + 8 = 128 bytes: the seventh starts at data
    // offset 768, file offset 4096 + 768. Give its descriptor a length
    // that runs past the write index.
    let at = 4096 + 6 * 128;
    image[at + 4..at + 6].copy_from_slice(&0x7fffu16.to_le_bytes());
    let f = write(&dir, "vmbus", &image);
    let o = inspect(&["--proto", "vmbus", &f]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains(&format!("at byte {at}")), "{t}");
    assert!(t.contains("data offset 768"), "{t}");
}

#[test]
fn a_fifo_is_refused_at_once() {
    let dir = TempSock::new("fifo");
    let p = dir.path.with_file_name("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let start = Instant::now();
    let o = inspect(&[p.to_str().unwrap()]);
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("FIFO"), "{}", text(&o));
}

#[test]
fn flags_of_the_other_protocol_and_absurd_sizes() {
    let dir = TempSock::new("flags");
    let f = write(&dir, "vmbus", &vmbus_image());
    let o = inspect(&["--proto", "vchan", "--data-size", "16K", &f]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = inspect(&[
        "--proto",
        "vmbus",
        "--data-size",
        "18446744073709551615",
        &f,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("is not two VMBus rings"), "{}", text(&o));
}

/// Snapshots of a busy session's rings, taken while both sides stream,
/// are never reported as corruption: each is a consistent copy (exit 0)
/// or, if the rings never held still, "busy" (exit 9).
#[test]
fn snapshots_of_busy_sessions_are_never_corrupt() {
    use common::wait_for_path;
    use std::io::Write;
    for proto in ["vmbus", "vchan"] {
        let sock = TempSock::new("busy");
        // Both sides stream for as long as the test feeds them.
        let streaming = |cmd| {
            common::side(cmd, &sock.path, proto, &[])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut listen = streaming("listen");
        wait_for_path(&sock.path);
        let mut connect = streaming("connect");
        let feeders: Vec<_> = [listen.stdin.take().unwrap(), connect.stdin.take().unwrap()]
            .into_iter()
            .map(|mut input| {
                std::thread::spawn(move || {
                    let chunk = vec![0x5au8; 1 << 16];
                    while input.write_all(&chunk).is_ok() {}
                })
            })
            .collect();
        let pid = listen.id().to_string();
        // The session is up once the listener holds its ring memory.
        let start = Instant::now();
        while !std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .any(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:ring-"))
            })
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{proto}: no session"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let (mut clean, mut busy) = (0, 0);
        for _ in 0..200 {
            let o = inspect(&["--pid", &pid]);
            match o.status.code() {
                Some(0) => clean += 1,
                Some(9) => busy += 1,
                other => panic!("{proto}: inspect exited {other:?}: {}", text(&o)),
            }
        }
        println!("{proto}: {clean} consistent snapshots, {busy} busy");
        for c in [&mut listen, &mut connect] {
            let _ = c.kill();
            let _ = c.wait();
        }
        for f in feeders {
            f.join().unwrap();
        }
    }
}
