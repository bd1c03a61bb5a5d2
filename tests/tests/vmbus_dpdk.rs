//! Interop with DPDK's VMBus ring code (Debian `libdpdk-dev`,
//! `librte_bus_vmbus.a`), linked through our harness `c/dpdk_peer.c`.
//!
//! The same ring memory is driven by DPDK on one side and by
//! `ring_core::vmbus` on the other: DPDK writes and we read, we write and
//! DPDK reads, in-band and GPA-direct packets, every size from empty to the
//! largest the ring takes, indices wrapping many times, and both directions
//! at once from several threads.

// The harness and DPDK's archive are bundled into the `ring_tests` library;
// naming it makes the linker see them.
use ring_tests::dpdk::{dpdk_set_page_size, Gpa, Ring, EAGAIN};

use ring_core::mem::SharedMem;
use ring_core::vmbus::layout::{INTERRUPT_MASK, WRITE_INDEX};
use ring_core::vmbus::{
    Error, GpaRange, IncomingRing, OutgoingPacket, OutgoingRing, PacketFlags, PacketType,
    RangeInfo, TransferRange,
};

/// Every test here waits on another thread or process: past this, the
/// run fails instead of hanging.
const TEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// A small deterministic generator for sizes and contents.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) >> 3) as u8)
        .collect()
}

fn read_payload<M: SharedMem>(p: &ring_core::vmbus::IncomingPacket<'_, M>, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    p.read_payload(0, &mut v).unwrap();
    v
}

#[test]
fn harness_sees_the_same_layout() {
    let _deadline = ring_tests::Deadline::new("harness_sees_the_same_layout", TEST_DEADLINE);
    let ring = Ring::new(8192, 0);
    let dpdk = ring.dpdk();
    assert_eq!(dpdk.data_size(), 8192);
}

#[test]
fn dpdk_writes_in_band_we_read_every_size() {
    let _deadline =
        ring_tests::Deadline::new("dpdk_writes_in_band_we_read_every_size", TEST_DEADLINE);
    let ring = Ring::new(8192, 8192 - 8);
    let mut dpdk = ring.dpdk();
    let mut rx = IncomingRing::new(ring.mem(), ring.layout).unwrap();
    let max_payload = 8192 - 16 - 16;
    let mut sizes: Vec<usize> = (0..=300).collect();
    sizes.extend([1000, 4000, 4095, 4096, 4097, max_payload - 1, max_payload]);
    for (n, &len) in sizes.iter().enumerate() {
        let xid = 0x1000 + n as u64;
        let data = pattern(xid, len);
        let flags = (n % 2) as u16;
        let need_sig = dpdk.send(6, flags, xid, &data).unwrap();
        assert!(need_sig, "the ring was empty and we are not masked");
        let p = rx.read_packet().unwrap();
        assert_eq!(p.packet_type(), PacketType::InBand);
        assert_eq!(p.transaction_id(), xid);
        assert_eq!(p.flags().bits(), flags);
        assert_eq!(p.payload_len(), len.next_multiple_of(8));
        assert_eq!(read_payload(&p, len), data, "size {len}");
        // DPDK zero-pads.
        let mut pad = vec![0xFFu8; p.payload_len() - len];
        p.read_payload(len, &mut pad).unwrap();
        assert!(pad.iter().all(|&b| b == 0));
        // Its trailer holds the packet's start offset in the upper half.
        let at = (p.offset() as usize + 16 + p.payload_len()) % 8192;
        let mut trailer = [0u8; 8];
        ring.mem().read(4096 + at, &mut trailer).unwrap();
        assert_eq!(u64::from_le_bytes(trailer), u64::from(p.offset()) << 32);
        let t = rx.commit().unwrap();
        assert!(!t.notify, "DPDK never arms pending_send_size");
    }
    // One byte too many for DPDK's own never-full rule.
    assert_eq!(dpdk.send(6, 0, 0, &vec![0; max_payload + 8]), Err(EAGAIN));
}

#[test]
fn dpdk_bursts_signal_once_and_wrap() {
    let _deadline = ring_tests::Deadline::new("dpdk_bursts_signal_once_and_wrap", TEST_DEADLINE);
    let ring = Ring::new(16384, 0);
    let mut dpdk = ring.dpdk();
    let mut rx = IncomingRing::new(ring.mem(), ring.layout).unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut next_xid = 0u64;
    let mut expect = std::collections::VecDeque::new();
    let mut wrapped = 0;
    let mut last_windex = 0;
    for _round in 0..400 {
        // A burst: only its first packet finds the ring empty.
        let burst = 1 + rng.below(6);
        let mut first = true;
        for _ in 0..burst {
            let len = rng.below(1500) as usize;
            let data = pattern(next_xid, len);
            match dpdk.send(6, 0, next_xid, &data) {
                Ok(sig) => {
                    assert_eq!(sig, first, "signal only on empty → non-empty");
                    first = false;
                    expect.push_back((next_xid, data));
                    next_xid += 1;
                }
                Err(EAGAIN) => break,
                Err(e) => panic!("dpdk send failed: {e}"),
            }
        }
        let windex = ring.mem().load_u32(WRITE_INDEX).unwrap();
        if windex < last_windex {
            wrapped += 1;
        }
        last_windex = windex;
        // Drain everything in one batch and commit once.
        loop {
            match rx.read_packet() {
                Ok(p) => {
                    let (xid, data) = expect.pop_front().unwrap();
                    assert_eq!(p.transaction_id(), xid);
                    assert_eq!(read_payload(&p, data.len()), data);
                }
                Err(Error::Empty) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let _ = rx.commit().unwrap();
        assert!(expect.is_empty());
    }
    assert!(wrapped > 20, "the index wrapped {wrapped} times");
}

#[test]
fn dpdk_masked_reader_gets_no_signal() {
    let _deadline = ring_tests::Deadline::new("dpdk_masked_reader_gets_no_signal", TEST_DEADLINE);
    let ring = Ring::new(8192, 0);
    let mut dpdk = ring.dpdk();
    let mut rx = IncomingRing::new(ring.mem(), ring.layout).unwrap();
    rx.mask_interrupts().unwrap();
    assert!(!dpdk.send(6, 0, 1, b"quiet").unwrap());
    let _ = rx.read_packet().unwrap();
    let _ = rx.commit().unwrap();
    assert!(matches!(rx.read_packet(), Err(Error::Empty)));
    assert_eq!(ring.mem().load_u32(INTERRUPT_MASK).unwrap(), 0);
    assert!(dpdk.send(6, 0, 2, b"loud").unwrap());
}

#[test]
fn dpdk_sglist_we_parse_gpa_direct() {
    let _deadline = ring_tests::Deadline::new("dpdk_sglist_we_parse_gpa_direct", TEST_DEADLINE);
    let ring = Ring::new(16384, 16384 - 16);
    let mut dpdk = ring.dpdk();
    let mut rx = IncomingRing::new(ring.mem(), ring.layout).unwrap();
    for n in 1..=20u32 {
        let sg: Vec<Gpa> = (0..n)
            .map(|i| Gpa {
                len: 100 + i * 37,
                // DPDK sends one page per entry: keep each inside its page.
                ofs: (i * 211) % (4096 - (100 + i * 37)),
                page: 0x10_0000 + u64::from(i),
            })
            .collect();
        let data = pattern(u64::from(n), (n as usize * 13) % 97);
        let sig = dpdk.send_sglist(0xABC0 + u64::from(n), &sg, &data).unwrap();
        assert!(sig);
        let p = rx.read_packet().unwrap();
        assert_eq!(p.packet_type(), PacketType::GpaDirect);
        assert!(p.flags().contains(PacketFlags::COMPLETION_REQUESTED));
        assert_eq!(p.info().ranges, RangeInfo::Gpa { count: n });
        assert_eq!(read_payload(&p, data.len()), data);
        let mut count = 0;
        for (r, want) in p.gpa_ranges().zip(&sg) {
            let r = r.unwrap();
            assert_eq!((r.byte_count, r.byte_offset), (want.len, want.ofs));
            let pfns: Vec<u64> = r.pfns().map(Result::unwrap).collect();
            assert_eq!(pfns, vec![want.page]);
            count += 1;
        }
        assert_eq!(count, n);
        let _ = rx.commit().unwrap();
    }
}

/// Parses a raw packet DPDK read back into its descriptor fields.
fn desc_of(raw: &[u8]) -> (u16, u16, u16, u16, u64) {
    let u16_at = |i: usize| u16::from_le_bytes([raw[i], raw[i + 1]]);
    (
        u16_at(0),
        u16_at(2),
        u16_at(4),
        u16_at(6),
        u64::from_le_bytes(raw[8..16].try_into().unwrap()),
    )
}

#[test]
fn we_write_in_band_dpdk_reads_every_size() {
    let _deadline =
        ring_tests::Deadline::new("we_write_in_band_dpdk_reads_every_size", TEST_DEADLINE);
    let ring = Ring::new(8192, 8192 - 8);
    let mut tx = OutgoingRing::new(ring.mem(), ring.layout).unwrap();
    let mut dpdk = ring.dpdk();
    let max = tx.max_packet_len() - 16;
    let mut sizes: Vec<usize> = (0..=300).collect();
    sizes.extend([1000, 4000, 4095, 4096, 4097, max - 1, max]);
    for (n, &len) in sizes.iter().enumerate() {
        let xid = 0x5000 + n as u64;
        let data = pattern(xid, len);
        let (a, b) = data.split_at(len / 3);
        let t = tx
            .send(&OutgoingPacket::in_band(xid, &[a, b]).with_completion_requested())
            .unwrap();
        assert!(t.notify);
        let raw = dpdk.recv_raw().unwrap();
        let padded = len.next_multiple_of(8);
        assert_eq!(raw.len(), 16 + padded);
        assert_eq!(desc_of(&raw), (6, 2, ((16 + padded) / 8) as u16, 1, xid));
        assert_eq!(&raw[16..16 + len], &data[..]);
        assert!(raw[16 + len..].iter().all(|&b| b == 0), "zero padding");
    }
    assert_eq!(dpdk.recv_raw(), Err(EAGAIN));
}

#[test]
fn we_write_batches_dpdk_reads_and_indices_wrap() {
    let _deadline = ring_tests::Deadline::new(
        "we_write_batches_dpdk_reads_and_indices_wrap",
        TEST_DEADLINE,
    );
    let ring = Ring::new(16384, 0);
    let mut tx = OutgoingRing::new(ring.mem(), ring.layout).unwrap();
    let mut dpdk = ring.dpdk();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut xid = 0u64;
    let mut expect = std::collections::VecDeque::new();
    let mut buf = vec![0u8; 64 * 1024];
    for _round in 0..400 {
        let burst = 1 + rng.below(8);
        for _ in 0..burst {
            let len = rng.below(2000) as usize;
            let data = pattern(xid, len);
            match tx.write(&OutgoingPacket::in_band(xid, &[&data])) {
                Ok(()) => {
                    expect.push_back((xid, data));
                    xid += 1;
                }
                Err(Error::Full { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let t = tx.commit().unwrap();
        assert_eq!(t.notify, t.ring_bytes > 0, "DPDK drained everything before");
        loop {
            match dpdk.recv(&mut buf) {
                Ok((d, _)) => {
                    let (x, data) = expect.pop_front().unwrap();
                    assert_eq!((d.ty, d.hlen8, d.xid), (6, 2, x));
                    assert_eq!(&buf[..data.len()], &data[..]);
                }
                Err(EAGAIN) => break,
                Err(e) => panic!("dpdk recv: {e}"),
            }
        }
        assert!(expect.is_empty());
    }
    assert!(xid > 1000);
}

#[test]
fn we_write_gpa_direct_transfer_pages_and_completions_dpdk_reads() {
    let _deadline = ring_tests::Deadline::new(
        "we_write_gpa_direct_transfer_pages_and_completions_dpdk_reads",
        TEST_DEADLINE,
    );
    let ring = Ring::new(16384, 16384 - 24);
    let mut tx = OutgoingRing::new(ring.mem(), ring.layout).unwrap();
    let mut dpdk = ring.dpdk();
    let pfns: Vec<u64> = (0..40).map(|i| 0x8000_0000 + i).collect();
    let ranges = [
        GpaRange {
            byte_count: 3 * 4096 + 2,
            byte_offset: 0xFFF,
            pfns: &pfns[..5],
        },
        GpaRange {
            byte_count: 10,
            byte_offset: 0,
            pfns: &pfns[5..6],
        },
        GpaRange {
            byte_count: 34 * 4096,
            byte_offset: 0,
            pfns: &pfns[6..40],
        },
    ];
    let payload = pattern(9, 21);
    let _ = tx
        .send(&OutgoingPacket::gpa_direct(77, &ranges, &[&payload]))
        .unwrap();
    let raw = dpdk.recv_raw().unwrap();
    let hlen = 24 + (8 + 5 * 8) + (8 + 8) + (8 + 34 * 8);
    assert_eq!(
        desc_of(&raw),
        (9, (hlen / 8) as u16, ((hlen + 24) / 8) as u16, 1, 77)
    );
    let u32_at = |i: usize| u32::from_le_bytes(raw[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(raw[i..i + 8].try_into().unwrap());
    assert_eq!(u32_at(20), 3);
    assert_eq!((u32_at(24), u32_at(28)), (3 * 4096 + 2, 0xFFF));
    assert_eq!(u64_at(32), pfns[0]);
    assert_eq!(u64_at(64), pfns[4]);
    assert_eq!((u32_at(72), u32_at(76)), (10, 0));
    assert_eq!(u64_at(80), pfns[5]);
    assert_eq!((u32_at(88), u32_at(92)), (34 * 4096, 0));
    assert_eq!(u64_at(96), pfns[6]);
    assert_eq!(&raw[hlen..hlen + 21], &payload[..]);

    let tr = [
        TransferRange {
            byte_count: 1514,
            byte_offset: 0,
        },
        TransferRange {
            byte_count: 64,
            byte_offset: 6144,
        },
    ];
    let _ = tx
        .send(&OutgoingPacket::transfer_pages(78, 0xCAFE, &tr, &[b"nvsp"]))
        .unwrap();
    let raw = dpdk.recv_raw().unwrap();
    assert_eq!(desc_of(&raw), (7, 5, 6, 0, 78));
    assert_eq!(u16::from_le_bytes([raw[16], raw[17]]), 0xCAFE);
    assert_eq!(u32_at_vec(&raw, 20), 2);
    assert_eq!((u32_at_vec(&raw, 24), u32_at_vec(&raw, 28)), (1514, 0));
    assert_eq!((u32_at_vec(&raw, 32), u32_at_vec(&raw, 36)), (64, 6144));
    assert_eq!(&raw[40..44], b"nvsp");

    let _ = tx
        .send(&OutgoingPacket::completion(77, &[&[1, 2, 3]]))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let (d, len) = dpdk.recv(&mut buf).unwrap();
    assert_eq!((d.ty, d.xid, d.flags), (0xB, 77, 0));
    assert_eq!(&buf[..len], [1, 2, 3, 0, 0, 0, 0, 0]);
}

fn u32_at_vec(raw: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(raw[i..i + 4].try_into().unwrap())
}

/// Both directions at once: a DPDK writer and our reader on one ring, our
/// writer and a DPDK reader on the other, four threads, random sizes.
#[test]
fn both_directions_concurrently() {
    let _deadline = ring_tests::Deadline::new("both_directions_concurrently", TEST_DEADLINE);
    const COUNT: u64 = 20_000;
    let to_us = Ring::new(16384, 16384 - 8);
    let to_dpdk = Ring::new(8192, 4096);
    std::thread::scope(|s| {
        let mut dpdk_tx = to_us.dpdk();
        s.spawn(move || {
            let mut rng = Rng(11);
            for xid in 0..COUNT {
                let data = pattern(xid, rng.below(700) as usize);
                while let Err(e) = dpdk_tx.send(6, 0, xid, &data) {
                    assert_eq!(e, EAGAIN);
                    std::thread::yield_now();
                }
            }
        });
        s.spawn(|| {
            let mut rx = IncomingRing::new(to_us.mem(), to_us.layout).unwrap();
            let mut rng = Rng(11);
            let mut xid = 0;
            while xid < COUNT {
                match rx.read_packet() {
                    Ok(p) => {
                        let len = rng.below(700) as usize;
                        assert_eq!(p.transaction_id(), xid);
                        assert_eq!(read_payload(&p, len), pattern(xid, len));
                        xid += 1;
                        if xid % 4 == 0 {
                            let _ = rx.commit().unwrap();
                        }
                    }
                    Err(Error::Empty) => {
                        let _ = rx.commit().unwrap();
                        std::thread::yield_now();
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            let _ = rx.commit().unwrap();
        });
        s.spawn(|| {
            let mut tx = OutgoingRing::new(to_dpdk.mem(), to_dpdk.layout).unwrap();
            let mut rng = Rng(23);
            for xid in 0..COUNT {
                let data = pattern(xid, rng.below(900) as usize);
                loop {
                    match tx.send(&OutgoingPacket::in_band(xid, &[&data])) {
                        Ok(_) => break,
                        Err(Error::Full { .. }) => std::thread::yield_now(),
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        });
        let mut dpdk_rx = to_dpdk.dpdk();
        s.spawn(move || {
            let mut rng = Rng(23);
            let mut buf = vec![0u8; 64 * 1024];
            let mut xid = 0;
            while xid < COUNT {
                match dpdk_rx.recv(&mut buf) {
                    Ok((d, _)) => {
                        let len = rng.below(900) as usize;
                        assert_eq!(d.xid, xid);
                        assert_eq!(&buf[..len], &pattern(xid, len)[..]);
                        xid += 1;
                    }
                    Err(EAGAIN) => std::thread::yield_now(),
                    Err(e) => panic!("dpdk recv: {e}"),
                }
            }
        });
    });
}

/// Writes a raw packet image at the write index and publishes it, as a
/// hostile writer would.
fn inject(ring: &Ring, bytes: &[u8]) {
    let mem = ring.mem();
    let size = ring.layout.data_size() as usize;
    let at = mem.load_u32(WRITE_INDEX).unwrap() as usize;
    let region = ring_core::mem::WrapRegion::new(ring.layout.data_offset(), size);
    region.write(&mem, at, bytes).unwrap();
    mem.store_u32(WRITE_INDEX, ((at + bytes.len()) % size) as u32)
        .unwrap();
}

fn raw_packet(ty: u16, off8: u16, len8: u16, flags: u16, published: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [ty, off8, len8, flags] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(&99u64.to_le_bytes());
    v.resize(published, 0);
    v
}

/// Where DPDK's reader is lax and ours refuses (spec §3): the same crafted
/// ring image is offered to both.
#[test]
fn findings_dpdk_accepts_what_we_reject() {
    let _deadline =
        ring_tests::Deadline::new("findings_dpdk_accepts_what_we_reject", TEST_DEADLINE);
    let cases: [(&str, Vec<u8>, Result<(), i32>); 4] = [
        // Unknown type: DPDK hands it over.
        ("type", raw_packet(0x42, 2, 2, 0, 24), Ok(())),
        // Undefined flag bit: DPDK hands it over.
        ("flags", raw_packet(6, 2, 2, 0x80, 24), Ok(())),
        // GPA direct with only a 16-byte header: DPDK hands it over.
        ("24-byte header", raw_packet(9, 2, 2, 1, 24), Ok(())),
        // A length beyond what was published: DPDK says "try again" for
        // ever (the channel stalls); we call it corruption.
        (
            "longer than the published",
            raw_packet(6, 2, 64, 0, 24),
            Err(EAGAIN),
        ),
    ];
    for (what, image, dpdk_says) in cases {
        let ring = Ring::new(8192, 8192 - 8);
        inject(&ring, &image);
        let mut dpdk = ring.dpdk();
        assert_eq!(dpdk.recv_raw().map(drop), dpdk_says, "DPDK on {what}");
        let ring = Ring::new(8192, 8192 - 8);
        inject(&ring, &image);
        let mut rx = IncomingRing::new(ring.mem(), ring.layout).unwrap();
        match rx.read_packet().map(drop) {
            Err(Error::Corrupt(c)) => assert!(c.what.contains(what), "{what}: {}", c.what),
            other => panic!("{what}: we returned {other:?}"),
        }
    }
}

/// DPDK's writer applies the never-full rule exactly as we do: both refuse
/// a packet that would leave fewer than 8 bytes free, and take one that
/// leaves exactly 8.
#[test]
fn findings_never_full_rule_matches() {
    let _deadline = ring_tests::Deadline::new("findings_never_full_rule_matches", TEST_DEADLINE);
    for fill in [0usize, 8, 1000, 4000] {
        let ring = Ring::new(8192, 0);
        let mut dpdk = ring.dpdk();
        let ours_ring = Ring::new(8192, 0);
        let mut ours = OutgoingRing::new(ours_ring.mem(), ours_ring.layout).unwrap();
        if fill > 0 {
            dpdk.send(6, 0, 0, &vec![0; fill]).unwrap();
            let _ = ours
                .send(&OutgoingPacket::in_band(0, &[&vec![0; fill]]))
                .unwrap();
        }
        let used = 16 + fill.next_multiple_of(8) + 8;
        let used = if fill > 0 { used } else { 0 };
        // Largest payload that fits: free − 8 − 16 (descriptor) − 8 (trailer).
        let largest = 8192 - used - 8 - 16 - 8;
        assert_eq!(dpdk.send(6, 0, 1, &vec![0; largest + 8]), Err(EAGAIN));
        assert!(matches!(
            ours.write(&OutgoingPacket::in_band(1, &[&vec![0; largest + 8]])),
            Err(Error::Full { .. } | Error::TooLarge { .. })
        ));
        assert!(dpdk.send(6, 0, 1, &vec![0; largest]).is_ok());
        assert!(ours
            .write(&OutgoingPacket::in_band(1, &[&vec![0; largest]]))
            .is_ok());
        let _ = ours.commit().unwrap();
        let ring_w = ring.mem().load_u32(WRITE_INDEX).unwrap();
        let ours_w = ours_ring.mem().load_u32(WRITE_INDEX).unwrap();
        assert_eq!(ring_w, ours_w);
    }
}

/// A 64 KiB-page guest's layout: the data area starts at the system page
/// size (65536), not 4096. DPDK takes it from `rte_mem_page_size` (Debian's
/// 22.11 build carries the 2025 fix), we from `RingLayout`.
#[test]
fn data_offset_of_a_64k_page_guest() {
    let _deadline = ring_tests::Deadline::new("data_offset_of_a_64k_page_guest", TEST_DEADLINE);
    // SAFETY: sets a thread-local in the harness; DPDK calls below run on
    // this thread.
    unsafe { dpdk_set_page_size(65536) };
    let to_us = Ring::with_offset(65536, 8192, 8192 - 8);
    let to_dpdk = Ring::with_offset(65536, 8192, 8192 - 16);
    let mut dpdk_tx = to_us.dpdk();
    let mut dpdk_rx = to_dpdk.dpdk();
    assert_eq!(dpdk_tx.data_size(), 8192);
    let mut rx = IncomingRing::new(to_us.mem(), to_us.layout).unwrap();
    let mut tx = OutgoingRing::new(to_dpdk.mem(), to_dpdk.layout).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    for (n, len) in (0..3000).step_by(37).enumerate() {
        let xid = n as u64;
        let data = pattern(xid, len);
        dpdk_tx.send(6, 0, xid, &data).unwrap();
        let p = rx.read_packet().unwrap();
        assert_eq!(
            (p.transaction_id(), read_payload(&p, len)),
            (xid, data.clone())
        );
        let _ = rx.commit().unwrap();
        let _ = tx.send(&OutgoingPacket::in_band(xid, &[&data])).unwrap();
        let (d, got) = dpdk_rx.recv(&mut buf).unwrap();
        assert_eq!((d.xid, got), (xid, len.next_multiple_of(8)));
        assert_eq!(&buf[..len], &data[..]);
    }
    // Nothing landed in the first 64 KiB beyond the control header.
    let mut page = vec![0u8; 65536 - 0x44];
    to_us.mem().read(0x44, &mut page).unwrap();
    assert!(page.iter().all(|&b| b == 0));
    // SAFETY: as above.
    unsafe { dpdk_set_page_size(4096) };
}

/// One read-side case: a ring at `start` holding packets of `sizes`, of
/// which the reader takes `take` and commits once, with the writer waiting
/// for `pending` bytes (`feature`: it advertises pending_send_size).
/// Returns (our commit's notify, DPDK's decision on the same page).
fn read_side(
    data: usize,
    start: u32,
    sizes: &[usize],
    take: usize,
    pending: impl Fn(u32, u32) -> u32,
    feature: bool,
) -> (bool, bool) {
    use ring_core::vmbus::layout::{FEATURE_BITS, PENDING_SEND_SIZE, READ_INDEX};
    let ring = Ring::new(data, start);
    let mem = ring.mem();
    mem.store_u32(FEATURE_BITS, u32::from(feature)).unwrap();
    let mut tx = OutgoingRing::new(mem, ring.layout).unwrap();
    let mut written = 0;
    for &len in sizes {
        match tx.write(&OutgoingPacket::in_band(0, &[&vec![0u8; len]])) {
            Ok(()) => written += 1,
            Err(Error::Full { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let _ = tx.commit().unwrap();
    let mut rx = IncomingRing::new(mem, ring.layout).unwrap();
    for _ in 0..take.min(written) {
        rx.read_packet().unwrap();
    }
    let size = ring.layout.data_size();
    let before = mem.load_u32(READ_INDEX).unwrap();
    let write = mem.load_u32(WRITE_INDEX).unwrap();
    let used = (write + size - before) % size;
    let free_before = size - used;
    let moved = rx.uncommitted() as u32;
    mem.store_u32(PENDING_SEND_SIZE, pending(free_before, free_before + moved))
        .unwrap();
    let ours = rx.commit().unwrap().notify;
    let after = mem.load_u32(READ_INDEX).unwrap();
    let bytes_read = (after + size - before) % size;
    assert_eq!(bytes_read, moved);
    (ours, ring.dpdk_read_signal(bytes_read))
}

/// DPDK's read-side signal decision (`rte_vmbus_chan_signal_read`, linked
/// as it is) against ours (`IncomingRing::commit`'s `notify`) over ring
/// sizes, starting offsets that make the indices wrap, batches of random
/// packets, reads of part or all of them, and pending_send_size values on
/// and around the crossing the rule is about.
#[test]
fn read_side_signal_decisions_match_dpdk() {
    let _deadline =
        ring_tests::Deadline::new("read_side_signal_decisions_match_dpdk", TEST_DEADLINE);
    // The harness's view of DPDK's channel layout holds: a signal where one
    // is certainly due (the writer waits for one byte more than was free
    // before), none where the writer waits for nothing.
    let due = read_side(4096, 0, &[1000, 1000, 1000], 2, |before, _| before, true);
    let none = read_side(4096, 0, &[1000, 1000, 1000], 2, |_, _| 0, true);
    assert!(
        due == (true, true) && none == (false, false),
        "calibration: (ours, DPDK) = {due:?} where a signal is due, {none:?} where none is: \
         the harness's struct vmbus_channel offsets do not fit this DPDK build"
    );
    let mut rng = Rng(5);
    let (mut signalled, mut cases) = (0, 0);
    for _ in 0..3000 {
        let data = [4096usize, 8192, 16384][rng.below(3) as usize];
        let start = (rng.below(data as u64) as u32) & !7;
        let sizes: Vec<usize> = (0..1 + rng.below(24))
            .map(|_| rng.below(900) as usize)
            .collect();
        let take = rng.below(sizes.len() as u64 + 1) as usize;
        let feature = rng.below(8) != 0;
        let regime = rng.below(5);
        let jitter = rng.below(17) as u32;
        let pending = move |before: u32, after: u32| match regime {
            0 => 0,
            1 => (before + jitter).saturating_sub(8),
            2 => (after + jitter).saturating_sub(8),
            3 => before + (after - before) / 2,
            _ => jitter * 512,
        };
        let (ours, dpdk) = read_side(data, start, &sizes, take, pending, feature);
        assert_eq!(
            ours, dpdk,
            "data {data}, start {start}, sizes {sizes:?}, take {take}, feature {feature}, \
             regime {regime}, jitter {jitter}: ours {ours}, DPDK {dpdk}"
        );
        cases += 1;
        signalled += usize::from(ours);
    }
    // Both answers came up often enough to mean something.
    assert!(
        signalled > cases / 10 && signalled < cases * 9 / 10,
        "{signalled} of {cases} cases signalled"
    );
}
