//! Model tests of the VMBus rings: random packet kinds and sizes, batch
//! boundaries, reverts, masking and waiting, checked step by step against a
//! queue of packets and a model of who owes whom a signal.

use core::sync::atomic::AtomicU64;
use proptest::prelude::*;
use ring_core::mem::{RawMem, SharedMem};
use ring_core::vmbus::layout::{PENDING_SEND_SIZE, READ_INDEX, WRITE_INDEX};
use ring_core::vmbus::{
    initialize_ring, Commit, Error, GpaRange, IncomingRing, OutgoingPacket, OutgoingRing,
    PacketType, RingLayout, TransferRange,
};
use ring_model_tests::Deadline;
use std::collections::VecDeque;
use std::time::Duration;

#[derive(Clone, Debug)]
enum Kind {
    InBand,
    Completion,
    /// (byte_offset, byte_count) per range.
    Gpa(Vec<(u32, u32)>),
    Transfer(u16, Vec<(u32, u32)>),
}

#[derive(Clone, Debug)]
struct Pkt {
    kind: Kind,
    xid: u64,
    completion: bool,
    len: usize,
}

impl Pkt {
    fn payload(&self) -> Vec<u8> {
        (0..self.len)
            .map(|i| (self.xid as usize).wrapping_mul(131).wrapping_add(i) as u8)
            .collect()
    }

    fn pfns(&self, range: usize, count: usize) -> Vec<u64> {
        (0..count as u64)
            .map(|p| self.xid << 20 | (range as u64) << 10 | p)
            .collect()
    }

    fn header_len(&self) -> usize {
        match &self.kind {
            Kind::InBand | Kind::Completion => 16,
            Kind::Gpa(ranges) => {
                24 + ranges
                    .iter()
                    .map(|&(o, c)| 8 + 8 * (o as usize + c as usize).div_ceil(4096))
                    .sum::<usize>()
            }
            Kind::Transfer(_, ranges) => 24 + 8 * ranges.len(),
        }
    }

    /// Bytes in the ring with the trailer.
    fn total(&self) -> usize {
        self.header_len() + self.len.next_multiple_of(8) + 8
    }

    fn ty(&self) -> PacketType {
        match self.kind {
            Kind::InBand => PacketType::InBand,
            Kind::Completion => PacketType::Completion,
            Kind::Gpa(_) => PacketType::GpaDirect,
            Kind::Transfer(..) => PacketType::TransferPages,
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Write(Pkt),
    CommitWrite,
    RevertWrite,
    Read,
    CommitRead,
    RevertRead,
    Mask,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => Just(Kind::InBand),
        1 => Just(Kind::Completion),
        1 => prop::collection::vec((0u32..4096, 0u32..20_000), 1..4).prop_map(Kind::Gpa),
        1 => (any::<u16>(), prop::collection::vec((any::<u32>(), any::<u32>()), 0..4))
            .prop_map(|(id, r)| Kind::Transfer(id, r)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let len = prop_oneof![
        6 => 0usize..300,
        3 => 300usize..2000,
        1 => 2000usize..4200,
    ];
    prop_oneof![
        8 => (kind(), any::<u64>(), any::<bool>(), len)
            .prop_map(|(kind, xid, completion, len)| Op::Write(Pkt { kind, xid, completion, len })),
        3 => Just(Op::CommitWrite),
        1 => Just(Op::RevertWrite),
        8 => Just(Op::Read),
        3 => Just(Op::CommitRead),
        1 => Just(Op::RevertRead),
        1 => Just(Op::Mask),
    ]
}

/// The ring as the model sees it, and the two sides' wait states.
struct Model {
    size: usize,
    /// Published packets not yet released by a committed read.
    published: VecDeque<Pkt>,
    /// How many of them the reader has read but not committed.
    read: usize,
    /// Written, not yet committed.
    batch: Vec<Pkt>,
    mask: bool,
    /// The reader cleared the mask on running dry; the next packet it
    /// finds sets it again (it is draining).
    unmasked: bool,
    pending: u32,
    /// The reader ran dry (mask cleared, nothing uncommitted) and sleeps
    /// until signalled.
    reader_sleeps: bool,
    /// The writer did not fit (nothing uncommitted) and sleeps until
    /// signalled; it needs this many free bytes (more than).
    writer_sleeps: Option<usize>,
}

impl Model {
    fn used(&self) -> usize {
        self.published.iter().map(Pkt::total).sum()
    }
    fn batch_len(&self) -> usize {
        self.batch.iter().map(Pkt::total).sum()
    }
    fn max_len(&self) -> usize {
        (self.size - 16).min(524_280)
    }
}

fn send(tx: &mut OutgoingRing<RawMem<'_>>, p: &Pkt) -> Result<(), Error> {
    let payload = p.payload();
    let pieces: Vec<&[u8]> = payload.chunks(97).collect();
    let pfns: Vec<Vec<u64>> = match &p.kind {
        Kind::Gpa(r) => r
            .iter()
            .enumerate()
            .map(|(i, &(o, c))| p.pfns(i, (o as usize + c as usize).div_ceil(4096)))
            .collect(),
        _ => Vec::new(),
    };
    let gpa: Vec<GpaRange<'_>> = match &p.kind {
        Kind::Gpa(r) => r
            .iter()
            .zip(&pfns)
            .map(|(&(o, c), pfns)| GpaRange {
                byte_count: c,
                byte_offset: o,
                pfns,
            })
            .collect(),
        _ => Vec::new(),
    };
    let tr: Vec<TransferRange> = match &p.kind {
        Kind::Transfer(_, r) => r
            .iter()
            .map(|&(c, o)| TransferRange {
                byte_count: c,
                byte_offset: o,
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut packet = match &p.kind {
        Kind::InBand => OutgoingPacket::in_band(p.xid, &pieces),
        Kind::Completion => OutgoingPacket::completion(p.xid, &pieces),
        Kind::Gpa(_) => OutgoingPacket::gpa_direct(p.xid, &gpa, &pieces),
        Kind::Transfer(id, _) => OutgoingPacket::transfer_pages(p.xid, *id, &tr, &pieces),
    };
    if p.completion {
        packet = packet.with_completion_requested();
    }
    tx.write(&packet)
}

fn check_packet(rx: &mut IncomingRing<RawMem<'_>>, want: &Pkt) {
    let p = rx.read_packet().expect("a packet");
    assert_eq!(p.packet_type(), want.ty());
    assert_eq!(p.transaction_id(), want.xid);
    let completion = want.completion || matches!(want.kind, Kind::Gpa(_));
    assert_eq!(p.completion_requested(), completion);
    assert_eq!(p.payload_len(), want.len.next_multiple_of(8));
    let mut got = vec![0u8; want.len];
    p.read_payload(0, &mut got).unwrap();
    assert_eq!(got, want.payload());
    match &want.kind {
        Kind::Gpa(r) => {
            let ranges: Vec<_> = p.gpa_ranges().map(Result::unwrap).collect();
            assert_eq!(ranges.len(), r.len());
            for (i, (got, &(o, c))) in ranges.iter().zip(r).enumerate() {
                assert_eq!((got.byte_offset, got.byte_count), (o, c));
                let pfns: Vec<u64> = got.pfns().map(Result::unwrap).collect();
                assert_eq!(pfns, want.pfns(i, (o as usize + c as usize).div_ceil(4096)));
            }
        }
        Kind::Transfer(id, r) => {
            assert_eq!(p.transfer_page_set_id(), Some(*id));
            let got: Vec<(u32, u32)> = p
                .transfer_ranges()
                .map(|r| r.map(|r| (r.byte_count, r.byte_offset)).unwrap())
                .collect();
            assert_eq!(&got, r);
        }
        _ => assert_eq!(p.gpa_ranges().count() + p.transfer_ranges().count(), 0),
    }
}

fn run(data_size: usize, start: u32, ops: Vec<Op>) {
    let layout = RingLayout::new(4096, data_size).unwrap();
    let words: Vec<AtomicU64> = (0..layout.total_size() / 8)
        .map(|_| AtomicU64::new(0))
        .collect();
    let mem = RawMem::from_atomics(&words);
    initialize_ring(&mem, layout).unwrap();
    let start = (start % data_size as u32) & !7;
    mem.store_u32(WRITE_INDEX, start).unwrap();
    mem.store_u32(READ_INDEX, start).unwrap();
    let mut tx = OutgoingRing::new(mem, layout).unwrap();
    let mut rx = IncomingRing::new(mem, layout).unwrap();
    let mut m = Model {
        size: data_size,
        published: VecDeque::new(),
        read: 0,
        batch: Vec::new(),
        mask: false,
        unmasked: false,
        pending: 0,
        reader_sleeps: false,
        writer_sleeps: None,
    };
    for op in ops {
        match op {
            Op::Write(p) => {
                if m.writer_sleeps.is_some() {
                    continue;
                }
                let r = send(&mut tx, &p);
                let wire = p.total() - 8;
                if wire > m.max_len() {
                    assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");
                } else if m.size - m.used() - m.batch_len() > p.total() {
                    assert_eq!(r, Ok(()));
                    m.pending = 0;
                    m.batch.push(p);
                } else {
                    let available = m.size - m.used() - m.batch_len() - 8;
                    assert_eq!(
                        r,
                        Err(Error::Full {
                            needed: p.total(),
                            available
                        })
                    );
                    // The packet and the batch the reader cannot see yet,
                    // but never more than a drained ring frees.
                    m.pending = (p.total() + m.batch_len()).min(m.size - 1) as u32;
                    if m.batch.is_empty() {
                        m.writer_sleeps = Some(p.total());
                    }
                }
                assert_eq!(mem.load_u32(PENDING_SEND_SIZE).unwrap(), m.pending);
            }
            Op::CommitWrite => {
                if m.writer_sleeps.is_some() {
                    continue;
                }
                let t = tx.commit().unwrap();
                let len = m.batch_len();
                let notify = len > 0 && !m.mask && m.used() == 0;
                assert_eq!(
                    t,
                    Commit {
                        ring_bytes: len,
                        notify
                    }
                );
                m.published.extend(m.batch.drain(..));
                if notify {
                    m.reader_sleeps = false;
                }
            }
            Op::RevertWrite => {
                if m.writer_sleeps.is_none() {
                    tx.revert();
                    m.batch.clear();
                }
            }
            Op::Read => {
                if m.reader_sleeps {
                    continue;
                }
                match m.published.get(m.read).cloned() {
                    Some(want) => {
                        check_packet(&mut rx, &want);
                        m.read += 1;
                        if m.unmasked {
                            m.mask = true;
                            m.unmasked = false;
                        }
                    }
                    None => {
                        assert!(matches!(rx.read_packet(), Err(Error::Empty)));
                        m.mask = false;
                        m.unmasked = true;
                        if m.read == 0 {
                            m.reader_sleeps = true;
                        }
                    }
                }
            }
            Op::CommitRead => {
                if m.reader_sleeps {
                    continue;
                }
                let t = rx.commit().unwrap();
                let len: usize = m.published.iter().take(m.read).map(Pkt::total).sum();
                let free_before = m.size - m.used();
                let free_after = free_before + len;
                let p = m.pending as usize;
                let notify = len > 0 && p != 0 && free_before <= p && p < free_after;
                assert_eq!(
                    t,
                    Commit {
                        ring_bytes: len,
                        notify
                    }
                );
                m.published.drain(..m.read);
                m.read = 0;
                if notify {
                    m.writer_sleeps = None;
                }
            }
            Op::RevertRead => {
                if !m.reader_sleeps {
                    rx.revert();
                    m.read = 0;
                }
            }
            Op::Mask => {
                if !m.reader_sleeps {
                    rx.mask_interrupts().unwrap();
                    m.mask = true;
                    m.unmasked = false;
                }
            }
        }
        // Nobody sleeps while the other side owes them a signal.
        assert!(
            !m.reader_sleeps || m.published.is_empty(),
            "reader asleep with data published and no signal"
        );
        if let Some(need) = m.writer_sleeps {
            assert!(
                m.size - m.used() <= need,
                "writer asleep with room for its packet and no signal"
            );
        }
        assert_eq!(tx.uncommitted(), m.batch_len());
    }
}

proptest! {
    #![proptest_config(ring_model_tests::proptest_config("vmbus_model", 256))]

    #[test]
    fn rings_follow_the_model(
        data_size in prop_oneof![Just(4096usize), Just(8192), Just(12288)],
        start in any::<u32>(),
        ops in prop::collection::vec(op(), 1..300),
    ) {
        let _deadline = Deadline::new("vmbus_model::rings_follow_the_model", Duration::from_secs(300));
        run(data_size, start, ops);
    }
}

/// A long deterministic run that wraps the indices many times.
#[test]
fn long_run_wraps() {
    let _deadline = Deadline::new("vmbus_model::long_run_wraps", Duration::from_secs(300));
    let mut ops = Vec::new();
    for i in 0..3000u64 {
        ops.push(Op::Write(Pkt {
            kind: Kind::InBand,
            xid: i,
            completion: false,
            len: (i as usize * 53) % 1500,
        }));
        if i % 3 == 0 {
            ops.push(Op::CommitWrite);
        }
        if i % 5 == 0 {
            ops.extend([Op::Read, Op::Read, Op::CommitRead]);
        }
        if i % 7 == 0 {
            ops.extend([
                Op::Read,
                Op::Read,
                Op::Read,
                Op::Read,
                Op::CommitRead,
                Op::Mask,
            ]);
        }
    }
    run(8192, 8192 - 8, ops);
}
