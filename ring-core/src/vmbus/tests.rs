//! Unit tests of the VMBus rings over in-process memory.

extern crate std;

use super::layout::*;
use super::pipe::{PipeReader, PipeWriter, MAX_PIPE_PAYLOAD};
use super::*;
use crate::mem::{MemError, RawMem};
use crate::race::{At, Peer, Race};
use core::cell::Cell;
use core::sync::atomic::AtomicU64;
use std::vec;
use std::vec::Vec;

fn words(layout: RingLayout) -> Vec<AtomicU64> {
    (0..layout.total_size() / 8)
        .map(|_| AtomicU64::new(0))
        .collect()
}

fn layout(data: usize) -> RingLayout {
    RingLayout::new(4096, data).unwrap()
}

/// A fresh ring with both indices at `start`.
fn pair(
    mem: RawMem<'_>,
    l: RingLayout,
    start: u32,
) -> (OutgoingRing<RawMem<'_>>, IncomingRing<RawMem<'_>>) {
    initialize_ring(&mem, l).unwrap();
    mem.store_u32(WRITE_INDEX, start).unwrap();
    mem.store_u32(READ_INDEX, start).unwrap();
    (
        OutgoingRing::new(mem, l).unwrap(),
        IncomingRing::new(mem, l).unwrap(),
    )
}

fn payload_of<M: SharedMem>(p: &IncomingPacket<'_, M>, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    p.read_payload(0, &mut v).unwrap();
    v
}

fn data_byte(mem: &RawMem<'_>, l: RingLayout, pos: usize) -> u8 {
    let mut b = [0u8];
    mem.read(l.data_offset() + pos, &mut b).unwrap();
    b[0]
}

fn corrupt_what(e: Error) -> &'static str {
    match e {
        Error::Corrupt(c) => c.what,
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn in_band_round_trip_with_padding_and_trailer() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    // Stale bytes in the data area: the padding must still come out zero.
    mem.fill(l.data_offset(), 4096, 0xEE).unwrap();
    let (mut tx, mut rx) = pair(mem, l, 0);
    assert_eq!(mem.load_u32(FEATURE_BITS).unwrap(), 1);
    let t = tx
        .send(&OutgoingPacket::in_band(0x1122, &[b"ab", b"c"]).with_completion_requested())
        .unwrap();
    assert_eq!(
        t,
        Commit {
            ring_bytes: 32,
            notify: true
        }
    );
    assert_eq!(mem.load_u32(WRITE_INDEX).unwrap(), 32);
    let mut raw = [0u8; 32];
    mem.read(l.data_offset(), &mut raw).unwrap();
    assert_eq!(&raw[..8], &[6, 0, 2, 0, 3, 0, 1, 0]);
    assert_eq!(&raw[8..16], &0x1122u64.to_le_bytes());
    assert_eq!(&raw[16..24], &[b'a', b'b', b'c', 0, 0, 0, 0, 0]);
    assert_eq!(&raw[24..32], &0u64.to_le_bytes()); // trailer: start 0 << 32
    let p = rx.read_packet().unwrap();
    assert_eq!(p.packet_type(), PacketType::InBand);
    assert!(p.completion_requested());
    assert_eq!(p.transaction_id(), 0x1122);
    assert_eq!(p.payload_len(), 8);
    assert_eq!(payload_of(&p, 3), b"abc");
    assert!(matches!(
        p.read_payload(4, &mut [0; 5]),
        Err(Error::OutOfRange {
            needed: 9,
            available: 8
        })
    ));
    assert!(matches!(rx.read_packet(), Err(Error::Empty)));
    assert_eq!(
        rx.commit().unwrap(),
        Commit {
            ring_bytes: 32,
            notify: false
        }
    );
    assert_eq!(mem.load_u32(READ_INDEX).unwrap(), 32);
}

#[test]
fn inspect_decodes_the_control_page() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, mut rx) = pair(mem, l, 64);
    rx.mask_interrupts().unwrap();
    let _ = tx.send(&OutgoingPacket::in_band(1, &[])).unwrap();
    let h = inspect(&mem).unwrap();
    assert_eq!(h.write_index.get(), 64 + 24);
    assert_eq!(h.read_index.get(), 64);
    assert_eq!(h.interrupt_mask.get(), 1);
    assert_eq!(h.pending_send_size.get(), 0);
    assert_eq!(h.feature_bits.get(), 1);
    assert!(!tx.reader_needs_signal().unwrap(), "masked");
    mem.store_u32(INTERRUPT_MASK, 0).unwrap();
    assert!(tx.reader_needs_signal().unwrap(), "unread data, unmasked");
}

#[test]
fn trailer_holds_the_start_offset() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, _rx) = pair(mem, l, 0x100);
    let _ = tx
        .send(&OutgoingPacket::completion(1, &[&[9; 12]]))
        .unwrap();
    // 16 + 16 bytes of packet, then the trailer.
    let mut t = [0u8; 8];
    mem.read(l.data_offset() + 0x100 + 32, &mut t).unwrap();
    assert_eq!(u64::from_le_bytes(t), 0x100u64 << 32);
}

#[test]
fn never_full_boundary_on_an_empty_ring() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, mut rx) = pair(mem, l, 0);
    // Largest packet: 4096 − 8 (trailer) − 8 (always unused) = 4080.
    assert_eq!(tx.max_packet_len(), 4080);
    let exact = vec![7u8; 4080 - 16];
    assert_eq!(
        tx.send(&OutgoingPacket::in_band(1, &[&exact]))
            .unwrap()
            .ring_bytes,
        4088
    );
    let over = vec![7u8; 4088 - 16];
    assert!(matches!(
        tx.write(&OutgoingPacket::in_band(1, &[&over])),
        Err(Error::TooLarge {
            len: 4088,
            max: 4080
        })
    ));
    let p = rx.read_packet().unwrap();
    assert_eq!(payload_of(&p, exact.len()), exact);
    let _ = rx.commit().unwrap();
}

#[test]
fn never_full_boundary_on_a_used_ring() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, mut rx) = pair(mem, l, 0);
    let _ = tx.send(&OutgoingPacket::in_band(1, &[&[0; 1000]])).unwrap(); // 1024 bytes
                                                                          // 3072 free: a packet may take 3064 bytes with its trailer, not 3072.
    assert_eq!(tx.available().unwrap(), 3064);
    let too_big = vec![1u8; 3072 - 8 - 16];
    let e = tx
        .write(&OutgoingPacket::in_band(2, &[&too_big]))
        .unwrap_err();
    assert_eq!(
        e,
        Error::Full {
            needed: 3072,
            available: 3064
        }
    );
    assert_eq!(mem.load_u32(PENDING_SEND_SIZE).unwrap(), 3072);
    let fits = vec![1u8; 3064 - 8 - 16];
    tx.write(&OutgoingPacket::in_band(3, &[&fits])).unwrap();
    // Writing cleared the pending request.
    assert_eq!(mem.load_u32(PENDING_SEND_SIZE).unwrap(), 0);
    let t = tx.commit().unwrap();
    assert!(!t.notify, "the ring was not empty");
    assert_eq!(mem.load_u32(WRITE_INDEX).unwrap(), 4088);
    assert!(matches!(
        tx.write(&OutgoingPacket::in_band(4, &[])),
        Err(Error::Full {
            needed: 24,
            available: 0
        })
    ));
    let _ = rx.read_packet().unwrap();
    let _ = rx.read_packet().unwrap();
    let t = rx.commit().unwrap();
    assert!(t.notify, "the writer waits for 24 bytes and now has 4096");
}

#[test]
fn wrap_in_the_middle_of_a_descriptor() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, mut rx) = pair(mem, l, 4096 - 8);
    let payload: Vec<u8> = (0..100u8).collect();
    let t = tx
        .send(&OutgoingPacket::in_band(0xAABB_CCDD_EEFF_0011, &[&payload]))
        .unwrap();
    assert_eq!(t.ring_bytes, 16 + 104 + 8);
    // The descriptor's first 8 bytes at the end, the id at the start.
    assert_eq!(data_byte(&mem, l, 4088), 6);
    assert_eq!(data_byte(&mem, l, 0), 0x11);
    assert_eq!(mem.load_u32(WRITE_INDEX).unwrap(), 128 - 8);
    let p = rx.read_packet().unwrap();
    assert_eq!(p.transaction_id(), 0xAABB_CCDD_EEFF_0011);
    assert_eq!(payload_of(&p, 100), payload);
    let mut part = [0u8; 10];
    p.read_payload(95, &mut part[..5]).unwrap();
    assert_eq!(&part[..5], &[95, 96, 97, 98, 99]);
    let _ = rx.commit().unwrap();
}

#[test]
fn wrap_inside_the_payload_and_trailer() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    for start in (4096 - 64..4096).step_by(8) {
        let (mut tx, mut rx) = pair(mem, l, start);
        let payload: Vec<u8> = (0..37u8).collect();
        let _ = tx
            .send(&OutgoingPacket::in_band(
                5,
                &[&payload[..10], &payload[10..]],
            ))
            .unwrap();
        let p = rx.read_packet().unwrap();
        assert_eq!(payload_of(&p, 37), payload);
        assert_eq!(p.offset(), start);
        let _ = rx.commit().unwrap();
        assert_eq!(
            mem.load_u32(READ_INDEX).unwrap(),
            (start + 16 + 40 + 8) % 4096
        );
    }
}

#[test]
fn the_524280_byte_cap() {
    let l = layout(1 << 20);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, mut rx) = pair(mem, l, 0);
    assert_eq!(tx.max_packet_len(), MAX_PACKET_LEN);
    let max = vec![0x5A; MAX_PACKET_LEN - 16];
    let t = tx.send(&OutgoingPacket::in_band(1, &[&max])).unwrap();
    assert_eq!(t.ring_bytes, MAX_PACKET_LEN + 8);
    let mut raw = [0u8; 6];
    mem.read(l.data_offset(), &mut raw).unwrap();
    assert_eq!(u16::from_le_bytes([raw[4], raw[5]]), u16::MAX);
    let over = vec![0x5A; MAX_PACKET_LEN - 16 + 1];
    assert_eq!(
        tx.write(&OutgoingPacket::in_band(2, &[&over])),
        Err(Error::TooLarge {
            len: MAX_PACKET_LEN + 8,
            max: MAX_PACKET_LEN
        })
    );
    let p = rx.read_packet().unwrap();
    assert_eq!(p.payload_len(), MAX_PACKET_LEN - 16);
    let mut tail = [0u8; 4];
    p.read_payload(MAX_PACKET_LEN - 20, &mut tail).unwrap();
    assert_eq!(tail, [0x5A; 4]);
    let _ = rx.commit().unwrap();
}

#[test]
fn batches_publish_once_and_signal_once() {
    let l = layout(8192);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, mut rx) = pair(mem, l, 0);
    for i in 0..3u64 {
        tx.write(&OutgoingPacket::in_band(i, &[&[i as u8; 8]]))
            .unwrap();
        assert_eq!(mem.load_u32(WRITE_INDEX).unwrap(), 0, "not yet published");
    }
    assert_eq!(tx.uncommitted(), 96);
    assert!(matches!(rx.read_packet(), Err(Error::Empty)));
    let t = tx.commit().unwrap();
    assert_eq!(
        t,
        Commit {
            ring_bytes: 96,
            notify: true
        }
    );
    // A second batch while the first is unread: no signal.
    tx.write(&OutgoingPacket::in_band(9, &[])).unwrap();
    assert!(!tx.commit().unwrap().notify);
    // Reverted writes never appear.
    tx.write(&OutgoingPacket::in_band(10, &[])).unwrap();
    tx.revert();
    assert_eq!(tx.commit().unwrap(), Commit::default());
    for i in 0..3u64 {
        let p = rx.read_packet().unwrap();
        assert_eq!(p.transaction_id(), i);
    }
    assert_eq!(mem.load_u32(READ_INDEX).unwrap(), 0, "not yet committed");
    let mark = rx.mark();
    assert_eq!(rx.read_packet().unwrap().transaction_id(), 9);
    rx.rewind(mark);
    assert_eq!(rx.read_packet().unwrap().transaction_id(), 9);
    assert!(matches!(rx.read_packet(), Err(Error::Empty)));
    assert_eq!(rx.commit().unwrap().ring_bytes, 120);
    assert_eq!(rx.commit().unwrap(), Commit::default());
    // Empty again: the next batch signals.
    assert!(tx.send(&OutgoingPacket::in_band(11, &[])).unwrap().notify);
}

#[test]
fn writer_does_not_signal_a_masked_reader() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, mut rx) = pair(mem, l, 0);
    rx.mask_interrupts().unwrap();
    assert!(!tx.send(&OutgoingPacket::in_band(1, &[])).unwrap().notify);
    let _ = rx.read_packet().unwrap();
    let _ = rx.commit().unwrap();
    // Running dry clears the mask (and re-checks) before reporting empty.
    assert_eq!(mem.load_u32(INTERRUPT_MASK).unwrap(), 1);
    assert!(matches!(rx.read_packet(), Err(Error::Empty)));
    assert_eq!(mem.load_u32(INTERRUPT_MASK).unwrap(), 0);
    assert!(tx.send(&OutgoingPacket::in_band(2, &[])).unwrap().notify);
    // A polling reader keeps its mask.
    let _ = rx.read_packet().unwrap();
    let _ = rx.commit().unwrap();
    rx.set_interrupts(false);
    rx.mask_interrupts().unwrap();
    assert!(matches!(rx.read_packet(), Err(Error::Empty)));
    assert_eq!(mem.load_u32(INTERRUPT_MASK).unwrap(), 1);
}

#[test]
fn unmask_then_recheck_sees_late_data() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, mut rx) = pair(mem, l, 0);
    rx.mask_interrupts().unwrap();
    assert!(!rx.unmask_and_recheck().unwrap());
    rx.mask_interrupts().unwrap();
    // The writer publishes while we are masked: it does not signal...
    assert!(!tx.send(&OutgoingPacket::in_band(1, &[])).unwrap().notify);
    // ...so our re-check after unmasking must find the packet.
    assert!(rx.unmask_and_recheck().unwrap());
}

#[test]
fn pending_send_size_crossing() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, mut rx) = pair(mem, l, 0);
    // Fill with four 1000-byte packets (1024 each with trailer); 4096
    // would be full, so the fourth does not fit.
    for i in 0..3 {
        let _ = tx.send(&OutgoingPacket::in_band(i, &[&[0; 1000]])).unwrap();
    }
    assert!(matches!(
        tx.write(&OutgoingPacket::in_band(3, &[&[0; 1000]])),
        Err(Error::Full {
            needed: 1024,
            available: 1016
        })
    ));
    assert_eq!(mem.load_u32(PENDING_SEND_SIZE).unwrap(), 1024);
    assert!(!rx.writer_needs_signal().unwrap());
    // Free goes 1024 → 2048: it crosses 1024 (free must exceed the need).
    let _ = rx.read_packet().unwrap();
    let t = rx.commit().unwrap();
    assert!(t.notify);
    // Already crossed: no second signal.
    let _ = rx.read_packet().unwrap();
    assert!(!rx.commit().unwrap().notify);
    tx.write(&OutgoingPacket::in_band(3, &[&[0; 1000]]))
        .unwrap();
    assert_eq!(mem.load_u32(PENDING_SEND_SIZE).unwrap(), 0);
    let _ = tx.commit().unwrap();

    // Without the feature bit the reader does not signal (as Linux).
    mem.store_u32(PENDING_SEND_SIZE, 4000).unwrap();
    mem.store_u32(FEATURE_BITS, 0).unwrap();
    let _ = rx.read_packet().unwrap();
    assert!(!rx.commit().unwrap().notify);
    mem.store_u32(FEATURE_BITS, 1).unwrap();
    let _ = rx.read_packet().unwrap();
    assert!(rx.commit().unwrap().notify, "free 3072 → 4096 crosses 4000");
}

#[test]
fn pending_send_size_counts_the_uncommitted_batch() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, mut rx) = pair(mem, l, 0);
    let _ = tx.send(&OutgoingPacket::in_band(0, &[&[0; 2000]])).unwrap(); // 2024
    tx.write(&OutgoingPacket::in_band(1, &[&[0; 1000]]))
        .unwrap(); // 1024, uncommitted
                   // 3048 used, 1048 free: 1128 bytes do not fit.
    assert!(matches!(
        tx.write(&OutgoingPacket::in_band(2, &[&[0; 1100]])),
        Err(Error::Full {
            needed: 1128,
            available: 1040
        })
    ));
    // The reader cannot see the uncommitted 1024 bytes: ask for them too.
    assert_eq!(mem.load_u32(PENDING_SEND_SIZE).unwrap(), 1128 + 1024);
    let _ = tx.commit().unwrap();
    let _ = rx.read_packet().unwrap();
    // Free goes 1048 → 3072, crossing 2152.
    assert!(rx.commit().unwrap().notify);
    assert!(tx.wait_for_space(16 + 1104).unwrap());
}

/// A batch that fills the ring, then a packet that does not fit: the
/// request is capped at a drained ring, so the writer that commits the
/// batch and waits (as `write` allows) is woken by the reader's last
/// commit instead of never.
#[test]
fn a_batch_that_fills_the_ring_still_gets_its_wake_up() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, mut rx) = pair(mem, l, 0);
    for i in 0..3 {
        tx.write(&OutgoingPacket::in_band(i, &[&[0; 1000]]))
            .unwrap();
    }
    assert!(matches!(
        tx.write(&OutgoingPacket::in_band(3, &[&[0; 1000]])),
        Err(Error::Full { needed: 1024, .. })
    ));
    // 1024 + the 3072-byte batch would be 4096, more than ever frees.
    assert_eq!(mem.load_u32(PENDING_SEND_SIZE).unwrap(), 4095);
    assert!(tx.commit().unwrap().notify);
    let mut notified = 0;
    for _ in 0..3 {
        let _ = rx.read_packet().unwrap();
        notified += usize::from(rx.commit().unwrap().notify);
    }
    assert_eq!(notified, 1, "the draining commit signals the writer once");
    tx.write(&OutgoingPacket::in_band(3, &[&[0; 1000]]))
        .unwrap();
    assert_eq!(mem.load_u32(PENDING_SEND_SIZE).unwrap(), 0);
}

#[test]
fn wait_for_space_arms_and_rechecks() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, mut rx) = pair(mem, l, 0);
    let _ = tx.send(&OutgoingPacket::in_band(0, &[&[0; 3000]])).unwrap();
    assert!(!tx.wait_for_space(2000).unwrap());
    assert_eq!(mem.load_u32(PENDING_SEND_SIZE).unwrap(), 2008);
    let _ = rx.read_packet().unwrap();
    assert!(rx.commit().unwrap().notify);
    assert!(tx.wait_for_space(2000).unwrap());
    assert_eq!(mem.load_u32(PENDING_SEND_SIZE).unwrap(), 0);
    assert!(matches!(
        tx.wait_for_space(5000),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn gpa_direct_round_trip() {
    let l = layout(8192);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, mut rx) = pair(mem, l, 4096 - 16);
    let ranges = [
        GpaRange {
            byte_count: 4096,
            byte_offset: 0x10,
            pfns: &[100, 101],
        },
        GpaRange {
            byte_count: 1,
            byte_offset: 0xFFF,
            pfns: &[7],
        },
        GpaRange {
            byte_count: 0,
            byte_offset: 0,
            pfns: &[],
        },
    ];
    let packet = OutgoingPacket::gpa_direct(42, &ranges, &[b"rndis"]);
    assert_eq!(packet.header_len().unwrap(), 24 + 24 + 16 + 8);
    let _ = tx.send(&packet).unwrap();
    let p = rx.read_packet().unwrap();
    assert_eq!(p.packet_type(), PacketType::GpaDirect);
    assert!(p.completion_requested());
    assert_eq!(p.info().ranges, RangeInfo::Gpa { count: 3 });
    assert_eq!(payload_of(&p, 5), b"rndis");
    let got: Vec<(u32, u32, Vec<u64>)> = p
        .gpa_ranges()
        .map(|r| {
            let r = r.unwrap();
            (
                r.byte_count,
                r.byte_offset,
                r.pfns().map(Result::unwrap).collect(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (4096, 0x10, vec![100, 101]),
            (1, 0xFFF, vec![7]),
            (0, 0, vec![])
        ]
    );
    assert_eq!(p.transfer_ranges().count(), 0);
}

#[test]
fn gpa_direct_send_checks() {
    let bad_count = [GpaRange {
        byte_count: 4097,
        byte_offset: 0,
        pfns: &[1],
    }];
    let bad_offset = [GpaRange {
        byte_count: 1,
        byte_offset: 0x1000,
        pfns: &[1],
    }];
    for ranges in [&bad_count[..], &bad_offset[..], &[][..]] {
        assert!(matches!(
            OutgoingPacket::gpa_direct(1, ranges, &[]).wire_len(),
            Err(Error::InvalidPacket { .. })
        ));
    }
}

#[test]
fn transfer_pages_and_completion_round_trip() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, mut rx) = pair(mem, l, 0);
    let ranges = [
        TransferRange {
            byte_count: 1514,
            byte_offset: 0,
        },
        TransferRange {
            byte_count: 60,
            byte_offset: 4096,
        },
    ];
    tx.write(&OutgoingPacket::transfer_pages(
        5,
        0xCAFE,
        &ranges,
        &[&[1, 2, 3, 4, 5, 6, 7, 8]],
    ))
    .unwrap();
    tx.write(&OutgoingPacket::completion(5, &[&[0xAB; 4]]))
        .unwrap();
    let _ = tx.commit().unwrap();
    let p = rx.read_packet().unwrap();
    assert_eq!(p.packet_type(), PacketType::TransferPages);
    assert_eq!(p.transfer_page_set_id(), Some(0xCAFE));
    let got: Vec<TransferRange> = p.transfer_ranges().map(Result::unwrap).collect();
    assert_eq!(got, ranges);
    assert_eq!(payload_of(&p, 8), [1, 2, 3, 4, 5, 6, 7, 8]);
    let p = rx.read_packet().unwrap();
    assert_eq!(p.packet_type(), PacketType::Completion);
    assert_eq!(p.transaction_id(), 5);
    assert!(!p.completion_requested());
    assert_eq!(payload_of(&p, 4), [0xAB; 4]);
}

/// Writes a raw packet image at the writer's position and publishes it.
fn inject(mem: &RawMem<'_>, l: RingLayout, at: u32, bytes: &[u8]) {
    let region = crate::mem::WrapRegion::new(l.data_offset(), l.data_size() as usize);
    region.write(mem, at as usize, bytes).unwrap();
    let end = (at as usize + bytes.len()) % l.data_size() as usize;
    mem.store_u32(WRITE_INDEX, end as u32).unwrap();
}

fn descriptor(ty: u16, off8: u16, len8: u16, flags: u16) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [ty, off8, len8, flags] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(&7u64.to_le_bytes());
    v
}

fn packet_image(mut head: Vec<u8>, total: usize) -> Vec<u8> {
    head.resize(total, 0);
    head
}

#[test]
fn reader_rejects_every_listed_violation() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let gpa = |count: u32, ranges: &[(u32, u32, usize)], off8: u16, len8: u16| {
        let mut v = descriptor(9, off8, len8, 1);
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&count.to_le_bytes());
        for &(bc, bo, pfns) in ranges {
            v.extend_from_slice(&bc.to_le_bytes());
            v.extend_from_slice(&bo.to_le_bytes());
            for _ in 0..pfns {
                v.extend_from_slice(&1u64.to_le_bytes());
            }
        }
        packet_image(v, len8 as usize * 8 + 8)
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (packet_image(descriptor(6, 1, 2, 0), 24), "offset"),
        (packet_image(descriptor(6, 3, 2, 0), 24), "offset"),
        // A packet over the cap, its length in 8-byte units wrapped to 0.
        (packet_image(descriptor(6, 2, 0, 0), 24), "524 280-byte"),
        (
            packet_image(descriptor(6, 2, 9, 0), 24),
            "longer than the published",
        ),
        (packet_image(descriptor(6, 2, 2, 2), 24), "flags"),
        (packet_image(descriptor(0x42, 2, 2, 0), 24), "type"),
        (packet_image(descriptor(8, 2, 2, 0), 24), "type"),
        (packet_image(descriptor(9, 2, 2, 1), 24), "24-byte header"),
        (packet_image(descriptor(7, 2, 2, 0), 24), "24-byte header"),
        (gpa(0, &[], 3, 3), "without ranges"),
        (gpa(1, &[(1, 0x1000, 1)], 5, 5), "offset beyond"),
        (gpa(1, &[(4097, 0, 1)], 5, 5), "page list runs past"),
        (gpa(2, &[(1, 0, 1)], 5, 5), "ranges run past"),
        (gpa(u32::MAX, &[(1, 0, 1)], 5, 5), "ranges run past"),
        (gpa(1, &[(u32::MAX, 0xFFF, 0)], 4, 4), "page list runs past"),
        (
            {
                let mut v = descriptor(7, 3, 3, 0);
                v.extend_from_slice(&[0, 0, 0, 0]);
                v.extend_from_slice(&2u32.to_le_bytes());
                packet_image(v, 32)
            },
            "transfer page ranges",
        ),
        (vec![0u8; 16], "shorter than a packet"),
    ];
    for (image, what) in cases {
        let (_tx, mut rx) = pair(mem, l, 4096 - 8);
        inject(&mem, l, 4096 - 8, &image);
        let e = rx.read_packet().unwrap_err();
        assert!(corrupt_what(e).contains(what), "{what}: got {e:?}");
        // Poisoned: the same error for ever, whatever the ring says.
        assert_eq!(rx.read_packet().unwrap_err(), e);
        assert_eq!(rx.commit().unwrap_err(), e);
        assert_eq!(rx.poisoned().map(Error::Corrupt), Some(e));
    }
}

/// The bound on a peer-written packet length, at the edge: a packet that
/// ends exactly at the published write index is read; the same bytes
/// published with a length 8 bytes longer are corruption.
#[test]
fn packet_length_is_checked_exactly_at_the_published_end() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    for at in [0u32, 4096 - 8, 2048] {
        for len8 in [2u16, 3, 64] {
            let total = len8 as usize * 8 + 8;
            let (_tx, mut rx) = pair(mem, l, at);
            inject(&mem, l, at, &packet_image(descriptor(6, 2, len8, 0), total));
            assert_eq!(rx.read_packet().unwrap().transaction_id(), 7);
            let (_tx, mut rx) = pair(mem, l, at);
            inject(
                &mem,
                l,
                at,
                &packet_image(descriptor(6, 2, len8 + 1, 0), total),
            );
            let e = rx.read_packet().unwrap_err();
            assert!(
                corrupt_what(e).contains("longer than the published"),
                "at {at}, {len8}: {e:?}"
            );
        }
    }
}

#[test]
fn reader_rejects_bad_write_indices() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    for (bad, what) in [
        (12, "misaligned"),
        (4096, "out of range"),
        (u32::MAX, "misaligned"),
    ] {
        let (_tx, mut rx) = pair(mem, l, 0);
        mem.store_u32(WRITE_INDEX, bad).unwrap();
        assert!(corrupt_what(rx.read_packet().unwrap_err()).contains(what));
    }
    // An index that runs backwards past data we already saw.
    let (mut tx, mut rx) = pair(mem, l, 0);
    let _ = tx.send(&OutgoingPacket::in_band(1, &[])).unwrap();
    let _ = tx.send(&OutgoingPacket::in_band(2, &[])).unwrap();
    let _ = rx.read_packet().unwrap();
    mem.store_u32(WRITE_INDEX, 24).unwrap();
    assert!(corrupt_what(rx.available().unwrap_err()).contains("backwards"));
    assert!(IncomingRing::new(mem, l).is_ok());
    mem.store_u32(READ_INDEX, 3).unwrap();
    assert!(matches!(
        IncomingRing::new(mem, l),
        Err(Error::Setup(SetupError::BadIndex { index: 3 }))
    ));
}

#[test]
fn writer_rejects_bad_read_indices() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, _rx) = pair(mem, l, 0);
    let _ = tx.send(&OutgoingPacket::in_band(1, &[])).unwrap();
    // Past the write index.
    mem.store_u32(READ_INDEX, 64).unwrap();
    assert!(corrupt_what(tx.available().unwrap_err()).contains("past the write index"));
    assert!(matches!(
        tx.send(&OutgoingPacket::in_band(1, &[])),
        Err(Error::Corrupt(_))
    ));
    let (mut tx, _rx) = pair(mem, l, 0);
    mem.store_u32(READ_INDEX, 4).unwrap();
    assert!(corrupt_what(tx.available().unwrap_err()).contains("misaligned"));
}

#[test]
fn setup_checks() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let small = RawMem::from_atomics(&w[..600]);
    assert!(matches!(
        OutgoingRing::new(small, l),
        Err(Error::Setup(SetupError::MemoryTooSmall {
            needed: 8192,
            available: 4800
        }))
    ));
    initialize_ring(&mem, l).unwrap();
    mem.store_u32(WRITE_INDEX, 4096).unwrap();
    assert!(matches!(
        OutgoingRing::new(mem, l),
        Err(Error::Setup(SetupError::BadIndex { index: 4096 }))
    ));
    // 64 KiB-page guests: the data area at the page size.
    let big = RingLayout::new(65536, 4096).unwrap();
    let w2: Vec<AtomicU64> = (0..big.total_size() / 8)
        .map(|_| AtomicU64::new(0))
        .collect();
    let m2 = RawMem::from_atomics(&w2);
    let (mut tx, mut rx) = pair(m2, big, 0);
    let _ = tx.send(&OutgoingPacket::in_band(3, &[b"x"])).unwrap();
    let mut b = [0u8; 1];
    m2.read(65536, &mut b).unwrap();
    assert_eq!(b[0], 6);
    assert_eq!(payload_of(&rx.read_packet().unwrap(), 1), b"x");
}

/// Counts loads of the peer's index, to check the caches.
struct Counting<'a> {
    inner: RawMem<'a>,
    index_loads: Cell<usize>,
}

impl SharedMem for Counting<'_> {
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
        if offset == WRITE_INDEX || offset == READ_INDEX {
            self.index_loads.set(self.index_loads.get() + 1);
        }
        self.inner.load_u32(offset)
    }
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        self.inner.store_u32(offset, value)
    }
    fn load_u8(&self, offset: usize) -> Result<u8, MemError> {
        self.inner.load_u8(offset)
    }
    fn store_u8(&self, offset: usize, value: u8) -> Result<(), MemError> {
        self.inner.store_u8(offset, value)
    }
    fn fetch_or_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        self.inner.fetch_or_u8(offset, bits)
    }
    fn fetch_and_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        self.inner.fetch_and_u8(offset, bits)
    }
    fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemError> {
        self.inner.read(offset, dst)
    }
    fn write(&self, offset: usize, src: &[u8]) -> Result<(), MemError> {
        self.inner.write(offset, src)
    }
}

#[test]
fn cached_indices_spare_the_shared_ones() {
    let l = layout(16384);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, _) = pair(mem, l, 0);
    let counting = Counting {
        inner: mem,
        index_loads: Cell::new(0),
    };
    let mut rx = IncomingRing::new(&counting, l).unwrap();
    rx.set_interrupts(false);
    for i in 0..50 {
        tx.write(&OutgoingPacket::in_band(i, &[&[0; 40]])).unwrap();
    }
    let _ = tx.commit().unwrap();
    counting.index_loads.set(0);
    for _ in 0..50 {
        let _ = rx.read_packet().unwrap();
    }
    assert_eq!(
        counting.index_loads.get(),
        1,
        "one load of the write index for 50 packets"
    );
    let _ = rx.commit().unwrap();

    let mut tx = OutgoingRing::new(&counting, l).unwrap();
    counting.index_loads.set(0);
    for i in 0..50 {
        tx.write(&OutgoingPacket::in_band(i, &[&[0; 40]])).unwrap();
    }
    assert_eq!(
        counting.index_loads.get(),
        0,
        "the cached read index showed room"
    );
    let _ = tx.commit().unwrap();
}

#[test]
fn byte_pipe_partial_reads_and_eof() {
    let l = layout(8192);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (tx, rx) = pair(mem, l, 0);
    let mut writer = PipeWriter::new(tx);
    let mut reader = PipeReader::new(rx);
    let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    let t = writer.write_bytes(&data).unwrap();
    assert_eq!(t.len, 5000);
    assert!(t.notify);
    let _ = writer.write_eof().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 333];
    loop {
        let t = reader.read_bytes(&mut buf).unwrap();
        if t.len == 0 {
            break;
        }
        got.extend_from_slice(&buf[..t.len]);
    }
    assert_eq!(got, data);
    assert!(reader.is_eof());
    assert_eq!(reader.read_bytes(&mut buf).unwrap().len, 0);
}

#[test]
fn byte_pipe_writes_what_fits() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (tx, rx) = pair(mem, l, 0);
    let mut writer = PipeWriter::new(tx);
    let mut reader = PipeReader::new(rx);
    let data = vec![3u8; 10000];
    let first = writer.write_bytes(&data).unwrap().len;
    assert!(first > 0 && first < 4096);
    assert!(matches!(writer.write_bytes(&data), Err(Error::Full { .. })));
    let mut buf = vec![0u8; 10000];
    let t = reader.read_bytes(&mut buf).unwrap();
    assert_eq!(t.len, first);
    assert!(t.notify, "the blocked writer is owed a signal");
    assert!(writer.write_bytes(&data).unwrap().len > 0);
}

#[test]
fn message_pipe() {
    let l = layout(65536);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (tx, rx) = pair(mem, l, 0);
    let mut writer = PipeWriter::new(tx);
    let mut reader = PipeReader::new(rx);
    let _ = writer.write_message(b"one").unwrap();
    let _ = writer.write_message(&[9; MAX_PIPE_PAYLOAD]).unwrap();
    assert!(matches!(
        writer.write_message(b""),
        Err(Error::InvalidPacket { .. })
    ));
    let _ = writer.write_eof().unwrap();
    assert!(matches!(
        writer.write_message(&[0; MAX_PIPE_PAYLOAD + 1]),
        Err(Error::TooLarge { .. })
    ));
    let mut small = [0u8; 2];
    assert_eq!(
        reader.read_message(&mut small),
        Err(Error::OutOfRange {
            needed: 3,
            available: 2
        })
    );
    let mut buf = vec![0u8; MAX_PIPE_PAYLOAD];
    assert_eq!(reader.read_message(&mut buf).unwrap().len, 3);
    assert_eq!(&buf[..3], b"one");
    assert_eq!(reader.read_message(&mut buf).unwrap().len, MAX_PIPE_PAYLOAD);
    // End of stream, for good: no packet is read after it.
    assert_eq!(reader.read_message(&mut buf).unwrap().len, 0);
    assert!(reader.is_eof());
    assert_eq!(reader.read_message(&mut buf).unwrap().len, 0);
}

#[test]
fn pipe_rejects_bad_headers() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let bodies: [(&[u8], &str); 4] = [
        (&[1, 0, 0, 0, 9, 0, 0, 0], "exceeds"),
        (&[2, 0, 0, 0, 0, 0, 0, 0], "other than data"),
        (&[], "lacks its header"),
        (
            &[1, 0, 0, 0, 0, 0x41, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            "exceeds",
        ),
    ];
    for (body, what) in bodies {
        let (mut tx, rx) = pair(mem, l, 0);
        let _ = tx.send(&OutgoingPacket::in_band(0, &[body])).unwrap();
        let mut reader = PipeReader::new(rx);
        let e = reader.read_bytes(&mut [0; 64]).unwrap_err();
        assert!(corrupt_what(e).contains(what), "{what}: {e:?}");
    }
    let (mut tx, rx) = pair(mem, l, 0);
    let _ = tx
        .send(&OutgoingPacket::completion(0, &[&[1, 0, 0, 0, 0, 0, 0, 0]]))
        .unwrap();
    assert!(matches!(
        PipeReader::new(rx).read_message(&mut [0; 8]),
        Err(Error::Corrupt(_))
    ));
}

#[test]
fn undefined_flags_never_reach_the_wire() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, mut rx) = pair(mem, l, 0);
    let mut packet = OutgoingPacket::in_band(1, &[]);
    packet.flags = PacketFlags::from_bits_retain(0xFFFF);
    let _ = tx.send(&packet).unwrap();
    let p = rx.read_packet().unwrap();
    assert_eq!(p.flags(), PacketFlags::COMPLETION_REQUESTED);
}

#[test]
fn blocking_drain_masks_while_draining_and_never_leaves_the_mask_set() {
    let l = layout(8192);
    let (wa, wb) = (words(l), words(l));
    let (ma, mb) = (RawMem::from_atomics(&wa), RawMem::from_atomics(&wb));
    let (tx_a, rx_b) = pair(ma, l, 0);
    let (tx_b, rx_a) = pair(mb, l, 0);
    let mut a = Blocking::new(rx_a, tx_a, crate::signal::NoSignal);
    let mut b = Blocking::new(rx_b, tx_b, crate::signal::NoSignal);
    for id in 0..5 {
        a.send(&OutgoingPacket::in_band(id, &[b"abc"])).unwrap();
    }
    let mut ids = Vec::new();
    let n = b.drain_with(3, |p| ids.push(p.transaction_id())).unwrap();
    assert_eq!((n, ids.as_slice()), (3, &[0, 1, 2][..]));
    assert_eq!(
        ma.load_u32(INTERRUPT_MASK).unwrap(),
        0,
        "stopped early: unmasked"
    );
    let n = b.drain_with(10, |p| ids.push(p.transaction_id())).unwrap();
    assert_eq!((n, ids.as_slice()), (2, &[0, 1, 2, 3, 4][..]));
    assert_eq!(ma.load_u32(INTERRUPT_MASK).unwrap(), 0, "ran dry: unmasked");
    // One packet back the other way, copied out.
    b.send(&OutgoingPacket::completion(4, &[b"done"])).unwrap();
    let mut buf = [0u8; 8];
    let (info, len) = a.recv(&mut buf).unwrap();
    assert_eq!(
        (info.packet_type, info.transaction_id, len),
        (PacketType::Completion, 4, 8)
    );
    assert_eq!(&buf[..4], b"done");
    let mut small = [0u8; 4];
    b.send(&OutgoingPacket::in_band(5, &[b"too long"])).unwrap();
    assert!(matches!(
        a.recv(&mut small),
        Err(BlockingError::Ring(Error::OutOfRange {
            needed: 8,
            available: 4
        }))
    ));
    assert_eq!(
        a.recv_with(|p| p.transaction_id()).unwrap(),
        5,
        "left unread"
    );
}

#[test]
fn reserve_then_write() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, mut rx) = pair(mem, l, 0);
    let packet = OutgoingPacket::in_band(1, &[&[0; 2040]]);
    let len = packet.wire_len().unwrap();
    assert_eq!(len, 2056);
    tx.reserve(len).unwrap();
    let _ = tx.send(&packet).unwrap();
    // 2032 bytes free: a 2064-byte packet (with trailer) does not fit.
    assert_eq!(
        tx.reserve(len),
        Err(Error::Full {
            needed: 2064,
            available: 2024
        })
    );
    assert_eq!(mem.load_u32(PENDING_SEND_SIZE).unwrap(), 2064);
    let _ = rx.read_packet().unwrap();
    assert!(rx.commit().unwrap().notify);
    tx.reserve(len).unwrap();
    assert_eq!(mem.load_u32(PENDING_SEND_SIZE).unwrap(), 0);
    assert!(matches!(
        tx.reserve(4081),
        Err(Error::TooLarge {
            len: 4081,
            max: 4080
        })
    ));
}

#[test]
fn a_reader_running_dry_finds_what_was_published_as_it_unmasked() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    initialize_ring(&mem, l).unwrap();
    // The writer publishes at the instant the reader clears its mask.
    let writer: Peer<'_> = std::rc::Rc::default();
    let race = Race {
        mem,
        at: At::Store {
            offset: INTERRUPT_MASK,
            value: 0,
        },
        peer: writer.clone(),
    };
    let mut rx = IncomingRing::new(race, l).unwrap();
    let tx = std::rc::Rc::new(core::cell::RefCell::new(OutgoingRing::new(mem, l).unwrap()));
    rx.mask_interrupts().unwrap();
    let sender = tx.clone();
    *writer.borrow_mut() = Some(std::boxed::Box::new(move || {
        let _ = sender
            .borrow_mut()
            .send(&OutgoingPacket::in_band(42, &[b"late"]))
            .unwrap();
    }));
    let p = rx
        .read_packet()
        .expect("the packet published as we unmasked");
    assert_eq!(p.transaction_id(), 42);
    assert!(writer.borrow().is_none(), "the writer never moved");
}

/// The reader masks the writer's signals only once it has run dry and
/// found data again (never on a ring it has not drained, and never when
/// it polls).
#[test]
fn the_reader_masks_only_after_running_dry() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, mut rx) = pair(mem, l, 0);
    for id in [1, 2] {
        let _ = tx.send(&OutgoingPacket::in_band(id, &[b"x"])).unwrap();
    }
    assert_eq!(rx.read_packet().unwrap().transaction_id(), 1);
    assert_eq!(mem.load_u32(INTERRUPT_MASK).unwrap(), 0, "not dry yet");
    assert_eq!(rx.read_packet().unwrap().transaction_id(), 2);
    assert_eq!(rx.read_packet().unwrap_err(), Error::Empty);
    assert_eq!(mem.load_u32(INTERRUPT_MASK).unwrap(), 0, "unmasked, dry");
    let _ = tx.send(&OutgoingPacket::in_band(3, &[b"x"])).unwrap();
    assert_eq!(rx.read_packet().unwrap().transaction_id(), 3);
    assert_eq!(mem.load_u32(INTERRUPT_MASK).unwrap(), 1, "draining again");
    // Polling: the mask is not ours to touch.
    rx.set_interrupts(false);
    mem.store_u32(INTERRUPT_MASK, 0).unwrap();
    assert_eq!(rx.read_packet().unwrap_err(), Error::Empty);
    let _ = tx.send(&OutgoingPacket::in_band(4, &[b"x"])).unwrap();
    assert_eq!(rx.read_packet().unwrap().transaction_id(), 4);
    assert_eq!(mem.load_u32(INTERRUPT_MASK).unwrap(), 0, "polling");
}

/// The reader's signal decisions at their edges: a commit notifies only
/// when the free space goes from at most the writer's pending size to
/// more than it (equal is not enough); `writer_needs_signal` says what the
/// page alone says (pending, the feature, and more free than pending).
#[test]
fn signal_decisions_hold_at_their_edges() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    // 64 packets of 32 bytes: 2048 used, 2048 free; each read frees 32.
    let filled = || {
        let (mut tx, rx) = pair(mem, l, 0);
        for id in 0..64 {
            let _ = tx.send(&OutgoingPacket::in_band(id, &[&[0u8; 8]])).unwrap();
        }
        assert_eq!(mem.load_u32(WRITE_INDEX).unwrap(), 2048);
        mem.store_u32(FEATURE_BITS, 1).unwrap();
        rx
    };
    // (pending, notify on the first commit: free 2048 -> 2080)
    for (pending, notify) in [(2047, false), (2048, true), (2079, true), (2080, false)] {
        let mut rx = filled();
        mem.store_u32(PENDING_SEND_SIZE, pending).unwrap();
        assert_eq!(
            rx.writer_needs_signal().unwrap(),
            pending < 2048,
            "pending {pending}"
        );
        let _ = rx.read_packet().unwrap();
        assert_eq!(rx.uncommitted(), 32);
        let c = rx.commit().unwrap();
        assert_eq!(rx.uncommitted(), 0);
        assert_eq!(c.ring_bytes, 32);
        assert_eq!(c.notify, notify, "pending {pending}");
        assert_eq!(
            rx.writer_needs_signal().unwrap(),
            pending < 2080,
            "pending {pending}"
        );
    }
    // Without the feature, or with nothing pending: never.
    let mut rx = filled();
    mem.store_u32(PENDING_SEND_SIZE, 2048).unwrap();
    mem.store_u32(FEATURE_BITS, 0).unwrap();
    let _ = rx.read_packet().unwrap();
    assert!(!rx.commit().unwrap().notify);
    assert!(!rx.writer_needs_signal().unwrap(), "no feature");
    mem.store_u32(FEATURE_BITS, 1).unwrap();
    mem.store_u32(PENDING_SEND_SIZE, 0).unwrap();
    assert!(!rx.writer_needs_signal().unwrap(), "nothing pending");
}

/// Transfer-page ranges against the header that holds them, at the edge:
/// two 8-byte ranges fill a 40-byte header exactly; three run past it.
#[test]
fn transfer_page_ranges_are_bounded_by_their_header_exactly() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    for (count, fits) in [(2u32, true), (3, false)] {
        let mut v = descriptor(7, 5, 5, 0);
        v.extend_from_slice(&[0, 0, 0, 0]);
        v.extend_from_slice(&count.to_le_bytes());
        let (_tx, mut rx) = pair(mem, l, 0);
        inject(&mem, l, 0, &packet_image(v, 48));
        match rx.read_packet() {
            Ok(p) => assert!(fits, "{count} ranges read: {p:?}"),
            Err(e) => {
                assert!(!fits, "{count} ranges refused: {e:?}");
                assert!(corrupt_what(e).contains("transfer page ranges"), "{e:?}");
            }
        }
    }
}

/// A poisoned writer stays poisoned: once the reader's index was bad,
/// every later call fails with that corruption even after the index looks
/// right again, and `poisoned` names it.
#[test]
fn a_poisoned_writer_stays_poisoned() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, _rx) = pair(mem, l, 0);
    assert_eq!(tx.poisoned(), None);
    mem.store_u32(READ_INDEX, 4).unwrap();
    let what = corrupt_what(tx.available().unwrap_err());
    assert!(what.contains("misaligned"), "{what}");
    mem.store_u32(READ_INDEX, 0).unwrap();
    assert_eq!(tx.poisoned().map(|c| c.what), Some(what));
    assert_eq!(corrupt_what(tx.available().unwrap_err()), what);
    assert_eq!(corrupt_what(tx.unread_by_peer().unwrap_err()), what);
    assert_eq!(corrupt_what(tx.arm_drained().unwrap_err()), what);
    assert_eq!(
        corrupt_what(tx.send(&OutgoingPacket::in_band(1, &[])).unwrap_err()),
        what
    );
    assert_eq!(mem.load_u32(WRITE_INDEX).unwrap(), 0, "nothing written");
}

/// Delivery accounting: `unread_by_peer` counts exactly the committed
/// bytes the reader has not consumed, and `arm_drained` asks for the
/// reader's signal (`pending_send_size` = size − 1, the only value a
/// drained ring exceeds) only while something is unread, withdrawing the
/// request once all of it is.
#[test]
fn delivery_is_counted_exactly_and_armed_only_while_unread() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, mut rx) = pair(mem, l, 0);
    mem.store_u32(FEATURE_BITS, 1).unwrap();
    assert_eq!(tx.unread_by_peer().unwrap(), 0);
    assert!(tx.arm_drained().unwrap(), "nothing to deliver");
    assert_eq!(mem.load_u32(PENDING_SEND_SIZE).unwrap(), 0);
    // 16-byte descriptor + 8 bytes + 8-byte trailer: 32 bytes a packet.
    for id in [1, 2] {
        let _ = tx.send(&OutgoingPacket::in_band(id, &[&[0u8; 8]])).unwrap();
    }
    assert_eq!(tx.unread_by_peer().unwrap(), 64);
    assert!(!tx.arm_drained().unwrap());
    assert_eq!(mem.load_u32(PENDING_SEND_SIZE).unwrap(), 4095);
    let _ = rx.read_packet().unwrap();
    assert!(!rx.commit().unwrap().notify, "half read: not yet");
    assert_eq!(tx.unread_by_peer().unwrap(), 32);
    assert!(!tx.arm_drained().unwrap());
    let _ = rx.read_packet().unwrap();
    assert!(rx.commit().unwrap().notify, "drained: the writer's signal");
    assert_eq!(tx.unread_by_peer().unwrap(), 0);
    assert!(tx.arm_drained().unwrap());
    assert_eq!(mem.load_u32(PENDING_SEND_SIZE).unwrap(), 0, "withdrawn");
}

/// The reader drains the ring at the instant `arm_drained` stores its
/// request, so it sends no signal: the re-check after the store must see
/// the ring drained and say so (and withdraw the request).
#[test]
fn arming_for_delivery_rechecks_what_the_reader_did_as_it_landed() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    initialize_ring(&mem, l).unwrap();
    let reader: Peer<'_> = std::rc::Rc::default();
    let race = Race {
        mem,
        at: At::Store {
            offset: PENDING_SEND_SIZE,
            value: 4095,
        },
        peer: reader.clone(),
    };
    let mut tx = OutgoingRing::new(race, l).unwrap();
    let mut rx = IncomingRing::new(mem, l).unwrap();
    let _ = tx.send(&OutgoingPacket::in_band(7, &[b"data"])).unwrap();
    *reader.borrow_mut() = Some(std::boxed::Box::new(move || {
        assert_eq!(rx.read_packet().unwrap().transaction_id(), 7);
        let _ = rx.commit().unwrap();
    }));
    assert!(tx.arm_drained().unwrap(), "drained as the request landed");
    assert!(reader.borrow().is_none(), "the reader never moved");
    assert_eq!(mem.load_u32(PENDING_SEND_SIZE).unwrap(), 0, "withdrawn");
}

/// Copies `data` into the spans an in-place call offers, in order; returns
/// how many bytes it wrote and how many it was offered.
fn fill_spans(mem: &RawMem<'_>, spans: &[crate::loan::Span], data: &[u8]) -> (usize, usize) {
    let offered = spans.iter().map(|s| s.len).sum();
    let mut done = 0;
    for s in spans {
        let n = s.len.min(data.len() - done);
        mem.write(s.offset, &data[done..done + n]).unwrap();
        done += n;
    }
    (done, offered)
}

/// In place, the byte pipe lays out exactly what `write_bytes` does: the
/// same packets, byte for byte, at every chunk size, across the wrap (up
/// to the packets one call may lay out); and a `fill` that stops short
/// leaves exactly the packets of what it wrote.
#[test]
fn in_place_writes_are_the_packets_write_bytes_makes() {
    let l = layout(8192);
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 1) as u8).collect();
    for chunk in [8, 13, 64, 1000, 8192] {
        for start in [0u32, 7936] {
            for (len, cut) in [
                (1, 1),
                (7, 7),
                (8, 8),
                (100, 100),
                (3000, 3000),
                (3000, 1234),
            ] {
                let (wa, wb) = (words(l), words(l));
                let (a, b) = (RawMem::from_atomics(&wa), RawMem::from_atomics(&wb));
                let (ta, _ra) = pair(a, l, start);
                let (tb, _rb) = pair(b, l, start);
                let mut by_copy = PipeWriter::new(ta);
                let mut in_place = PipeWriter::new(tb);
                by_copy.set_chunk(chunk);
                in_place.set_chunk(chunk);
                // One in-place call lays out at most MAX_SPANS / 2 packets.
                let n = cut.min(crate::loan::MAX_SPANS / 2 * chunk);
                let sent = by_copy.write_bytes(&data[..n]).unwrap();
                let placed = in_place
                    .write_with(len, |m, spans| fill_spans(m, spans, &data[..cut]).0)
                    .unwrap();
                let case = std::format!("chunk {chunk} start {start} len {len} cut {cut}");
                assert_eq!(
                    (placed.len, placed.notify),
                    (sent.len, sent.notify),
                    "{case}"
                );
                let image = |m: &RawMem<'_>| {
                    let mut v = vec![0u8; l.total_size()];
                    m.read(0, &mut v).unwrap();
                    v
                };
                assert!(image(&a) == image(&b), "{case}: the rings differ");
            }
        }
    }
}

/// In place, the pipe offers exactly the room there is: on a ring with
/// `free` bytes free, one packet of (free − 8 kept free − 32 of
/// descriptor, pipe header and trailer) rounded down to 8, never more;
/// and the reader gets exactly what was written.
#[test]
fn in_place_writes_offer_exactly_the_room_there_is() {
    let l = layout(4096);
    for used in [0usize, 40, 1000, 4000, 4040, 4056] {
        let w = words(l);
        let mem = RawMem::from_atomics(&w);
        let (tx, rx) = pair(mem, l, 0);
        let mut writer = PipeWriter::new(tx);
        let mut reader = PipeReader::new(rx);
        writer.set_chunk(usize::MAX);
        if used > 0 {
            // A packet of `used` ring bytes: 32 of overhead + the data.
            let t = writer.write_bytes(&vec![9u8; used - 32]).unwrap();
            assert_eq!(t.len, used - 32);
        }
        let free = 4096 - used;
        let expected = (free - 8 - 32) & !7;
        let data = vec![5u8; 5000];
        let mut offered = 0;
        let t = writer.write_with(5000, |m, spans| {
            let (done, o) = fill_spans(m, spans, &data);
            offered = o;
            done
        });
        if expected < 8 {
            assert!(matches!(t, Err(Error::Full { .. })), "used {used}: {t:?}");
            continue;
        }
        assert_eq!(t.unwrap().len, expected, "used {used}");
        assert_eq!(offered, expected, "used {used}");
        let mut buf = vec![0u8; 8192];
        let got = reader.read_bytes(&mut buf).unwrap().len;
        let before = used.saturating_sub(32);
        assert_eq!(got, before + expected, "used {used}");
        assert!(buf[..before].iter().all(|&b| b == 9));
        assert!(buf[before..got].iter().all(|&b| b == 5));
    }
}

/// In place, as in `write`, the reader's index is loaded afresh only when
/// the cached one shows too little room for what the call could lay out
/// (its packets' overhead and padding counted, up to the packets one call
/// may lay out), and then it is.
#[test]
fn in_place_writes_load_the_read_index_only_when_the_cache_shows_too_little() {
    let l = layout(4096);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (_tx, mut rx) = pair(mem, l, 0);
    let counting = Counting {
        inner: mem,
        index_loads: Cell::new(0),
    };
    let mut writer = PipeWriter::new(OutgoingRing::new(&counting, l).unwrap());
    writer.set_chunk(usize::MAX);
    let data = vec![1u8; 4096];
    let fill = |m: &&Counting<'_>, spans: &[crate::loan::Span]| {
        let mut done = 0;
        for s in spans {
            m.write(s.offset, &data[done..done + s.len]).unwrap();
            done += s.len;
        }
        done
    };
    // 2 488 bytes of ring used: 1 608 free as cached, 1 600 usable. Forty
    // 8-byte packets would need 1 920; the 32 one call lays out need
    // exactly the 1 600 the cache shows.
    assert_eq!(writer.write_bytes(&data[..2456]).unwrap().len, 2456);
    writer.set_chunk(8);
    counting.index_loads.set(0);
    assert_eq!(writer.write_with(320, fill).unwrap().len, 256);
    // The commit's load (is the reader still at our old write index?)
    // is the only one.
    assert_eq!(counting.index_loads.get(), 1, "the cache showed room");
    // Used up to 128 usable bytes, then drained by the reader unseen:
    // 101 bytes need 141 with their padding, more than the cache shows,
    // so the index is loaded and all 101 are offered.
    writer.set_chunk(usize::MAX);
    let used = 2488 + 32 * 40;
    let pad = 4096 - 136 - used - 32;
    assert_eq!(writer.write_bytes(&data[..pad]).unwrap().len, pad);
    while rx.read_packet().is_ok() {}
    let _ = rx.commit().unwrap();
    counting.index_loads.set(0);
    assert_eq!(writer.write_with(101, fill).unwrap().len, 101);
    assert_eq!(
        counting.index_loads.get(),
        2,
        "the stale cache was refreshed"
    );
}

/// `reserve` takes a packet of exactly the largest length on a drained
/// ring, and refuses one 8 bytes longer as too large (never as full).
#[test]
fn reserve_takes_exactly_the_largest_packet() {
    for data in [4096, 8192] {
        let l = layout(data);
        let w = words(l);
        let mem = RawMem::from_atomics(&w);
        let (mut tx, _rx) = pair(mem, l, 0);
        let max = tx.max_packet_len();
        assert_eq!(max, data - 16);
        tx.reserve(max).unwrap();
        assert!(tx.wait_for_space(max).unwrap());
        assert_eq!(
            tx.reserve(max + 8),
            Err(Error::TooLarge { len: max + 8, max })
        );
        // The largest packet itself: a descriptor and max − 16 bytes.
        let payload = vec![1u8; max - 16];
        tx.write(&OutgoingPacket::in_band(1, &[&payload])).unwrap();
        assert_eq!(tx.uncommitted(), data - 8);
    }
}

/// A transfer-page packet's header may be exactly the largest packet
/// (24 bytes and 65 532 ranges: 524 280), never 8 bytes more.
#[test]
fn transfer_page_headers_are_bounded_exactly_by_the_packet_limit() {
    let zero = super::packet::TransferRange {
        byte_count: 0,
        byte_offset: 0,
    };
    let ranges = vec![zero; 65533];
    let header = |n: usize| OutgoingPacket::transfer_pages(1, 0, &ranges[..n], &[]).header_len();
    assert_eq!(header(65532), Ok(MAX_PACKET_LEN));
    assert_eq!(
        header(65533),
        Err(Error::TooLarge {
            len: MAX_PACKET_LEN + 8,
            max: MAX_PACKET_LEN
        })
    );
}

/// The range iterators bound exactly what is left (ranges, page numbers)
/// at every step; none promises a lower bound (a bad record ends it).
#[test]
fn range_iterators_bound_exactly_what_is_left() {
    let l = layout(8192);
    let w = words(l);
    let mem = RawMem::from_atomics(&w);
    let (mut tx, mut rx) = pair(mem, l, 0);
    let gpa = [
        GpaRange {
            byte_count: 8192,
            byte_offset: 0,
            pfns: &[1, 2],
        },
        GpaRange {
            byte_count: 1,
            byte_offset: 0,
            pfns: &[3],
        },
    ];
    let _ = tx.send(&OutgoingPacket::gpa_direct(1, &gpa, &[])).unwrap();
    let transfer = [TransferRange {
        byte_count: 1,
        byte_offset: 0,
    }; 3];
    let _ = tx
        .send(&OutgoingPacket::transfer_pages(2, 0, &transfer, &[]))
        .unwrap();
    let p = rx.read_packet().unwrap();
    let mut ranges = p.gpa_ranges();
    for (left, pfns) in [(2usize, 2usize), (1, 1)] {
        assert_eq!(ranges.size_hint(), (0, Some(left)));
        let r = ranges.next().unwrap().unwrap();
        let mut numbers = r.pfns();
        for n in (1..=pfns).rev() {
            assert_eq!(numbers.size_hint(), (0, Some(n)));
            let _ = numbers.next().unwrap().unwrap();
        }
        assert_eq!(numbers.size_hint(), (0, Some(0)));
        assert!(numbers.next().is_none());
    }
    assert_eq!(ranges.size_hint(), (0, Some(0)));
    drop(p);
    let p = rx.read_packet().unwrap();
    let mut ranges = p.transfer_ranges();
    for left in (1..=3usize).rev() {
        assert_eq!(ranges.size_hint(), (0, Some(left)));
        let _ = ranges.next().unwrap().unwrap();
    }
    assert_eq!(ranges.size_hint(), (0, Some(0)));
}

/// Reading a packet in place: `payload_spans` gives the payload bytes as
/// one span, or two across the wrap, up to exactly the padded payload's
/// end and not a byte past it; `read_raw` copies the packet from its
/// descriptor up to exactly its end.
#[test]
fn payload_spans_and_raw_reads_end_exactly_at_the_packet() {
    let l = layout(4096);
    let payload: Vec<u8> = (1..=40u8).collect();
    // At 0 the payload is in one piece; at 4096 - 32 it wraps after 16.
    for (start, pieces) in [(0u32, 1usize), (4096 - 32, 2)] {
        let w = words(l);
        let mem = RawMem::from_atomics(&w);
        let (mut tx, mut rx) = pair(mem, l, start);
        let _ = tx.send(&OutgoingPacket::in_band(9, &[&payload])).unwrap();
        let p = rx.read_packet().unwrap();
        assert_eq!(p.payload_len(), 40);
        let mut spans = crate::loan::SpanList::new();
        p.payload_spans(0, 40, &mut spans).unwrap();
        assert_eq!(spans.len(), pieces, "start {start}");
        let mut got = Vec::new();
        for s in &spans {
            let mut b = vec![0u8; s.len];
            mem.read(s.offset, &mut b).unwrap();
            got.extend_from_slice(&b);
        }
        assert_eq!(got, payload);
        let mut spans = crate::loan::SpanList::new();
        p.payload_spans(39, 1, &mut spans).unwrap();
        assert_eq!(spans.len(), 1);
        assert_eq!(data_byte(&mem, l, spans[0].offset - l.data_offset()), 40);
        for (offset, len) in [(40, 1), (0, 41), (1, 40), (usize::MAX, 2)] {
            assert!(
                matches!(
                    p.payload_spans(offset, len, &mut spans),
                    Err(Error::OutOfRange { .. })
                ),
                "{offset}+{len}"
            );
        }
        p.payload_spans(40, 0, &mut spans).unwrap();
        assert_eq!(spans.len(), 1, "nothing added for no bytes");
        // The whole packet: descriptor (16), payload (40), nothing more.
        let mut raw = [0u8; 56];
        p.read_raw(0, &mut raw).unwrap();
        assert_eq!(&raw[16..], &payload[..]);
        assert_eq!(u16::from_le_bytes([raw[4], raw[5]]) as usize, 56 / 8);
        let mut last = [0u8; 1];
        p.read_raw(55, &mut last).unwrap();
        assert_eq!(last[0], 40);
        assert!(matches!(
            p.read_raw(56, &mut last),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            p.read_raw(1, &mut raw),
            Err(Error::OutOfRange { .. })
        ));
    }
}
