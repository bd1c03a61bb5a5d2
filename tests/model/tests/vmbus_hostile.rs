//! Hostile-peer tests of the VMBus rings: the shared indices, mask, pending
//! send size, feature bits and packet bytes are scribbled on between
//! operations and, from another thread, during them. Every call must return,
//! with progress, "empty"/"full", or a corruption error: never a panic, an
//! access outside the ring or another kind of error.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use proptest::prelude::*;
use ring_core::mem::{RawMem, SharedMem};
use ring_core::vmbus::layout::{
    FEATURE_BITS, INTERRUPT_MASK, PENDING_SEND_SIZE, READ_INDEX, WRITE_INDEX,
};
use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
use ring_core::vmbus::{
    initialize_ring, Error, GpaRange, IncomingRing, OutgoingPacket, OutgoingRing, RingLayout,
    TransferRange,
};
use ring_model_tests::Deadline;
use std::time::Duration;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a call may return under attack.
#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    empty_or_full: usize,
    corrupt: usize,
}

impl Tally {
    fn note<T>(&mut self, what: &str, r: &Result<T, Error>) {
        match r {
            Ok(_) => self.ok += 1,
            Err(Error::Empty | Error::Full { .. }) => self.empty_or_full += 1,
            Err(Error::Corrupt(_)) => self.corrupt += 1,
            Err(e) => panic!("{what}: unexpected error {e:?}"),
        }
    }
}

/// Scribbles one random thing into the ring.
fn scribble(mem: &RawMem<'_>, layout: RingLayout, rng: &mut Rng) {
    let size = layout.data_size() as u64;
    let value = match rng.below(3) {
        0 => rng.next() as u32,
        1 => (rng.below(size) & !7) as u32,
        _ => rng.below(64) as u32,
    };
    match rng.below(8) {
        0 => mem.store_u32(WRITE_INDEX, value).unwrap(),
        1 => mem.store_u32(READ_INDEX, value).unwrap(),
        2 => mem.store_u32(INTERRUPT_MASK, value).unwrap(),
        3 => mem.store_u32(PENDING_SEND_SIZE, value).unwrap(),
        4 => mem.store_u32(FEATURE_BITS, value).unwrap(),
        _ => {
            // Bytes in the data area, biased to where descriptors live.
            let at = if rng.below(2) == 0 {
                u64::from(mem.load_u32(READ_INDEX).unwrap_or(0)) % size
            } else {
                rng.below(size)
            };
            let len = 1 + rng.below(24);
            let at = (at.min(size - len)) as usize + layout.data_offset();
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            mem.write(at, &bytes).unwrap();
        }
    }
}

fn random_send<M: SharedMem>(tx: &mut OutgoingRing<M>, rng: &mut Rng) -> Result<(), Error> {
    let payload: Vec<u8> = (0..rng.below(700)).map(|i| i as u8).collect();
    let pfns = [1u64, 2, 3];
    let gpa = [GpaRange {
        byte_count: 5000,
        byte_offset: 100,
        pfns: &pfns[..2],
    }];
    let tr = [TransferRange {
        byte_count: 10,
        byte_offset: 20,
    }];
    let pieces: [&[u8]; 1] = [&payload];
    let packet = match rng.below(4) {
        0 => OutgoingPacket::gpa_direct(rng.next(), &gpa, &pieces),
        1 => OutgoingPacket::transfer_pages(rng.next(), 3, &tr, &pieces),
        2 => OutgoingPacket::completion(rng.next(), &pieces),
        _ => OutgoingPacket::in_band(rng.next(), &pieces),
    };
    tx.write(&packet)
}

/// Reads one packet and everything in it, as a consumer would.
fn consume(rx: &mut IncomingRing<RawMem<'_>>, tally: &mut Tally) {
    let r = rx.read_packet();
    let Ok(p) = r else {
        tally.note("read_packet", &r.map(drop));
        return;
    };
    let mut buf = vec![0u8; p.payload_len()];
    tally.note("read_payload", &p.read_payload(0, &mut buf));
    for range in p.gpa_ranges() {
        match range {
            Ok(range) => {
                for pfn in range.pfns() {
                    tally.note("pfn", &pfn);
                }
            }
            Err(e) => tally.note("gpa range", &Err::<(), _>(e)),
        }
    }
    for range in p.transfer_ranges() {
        tally.note("transfer range", &range);
    }
}

/// Makes fresh rings over `mem` (after a poisoning), re-initialising until
/// the (possibly concurrent) attacker lets set-up through.
fn fresh<'a>(
    mem: RawMem<'a>,
    layout: RingLayout,
) -> (OutgoingRing<RawMem<'a>>, IncomingRing<RawMem<'a>>) {
    for _ in 0..10_000 {
        initialize_ring(&mem, layout).unwrap();
        if let (Ok(tx), Ok(rx)) = (
            OutgoingRing::new(mem, layout),
            IncomingRing::new(mem, layout),
        ) {
            return (tx, rx);
        }
    }
    panic!("could not set up a ring in 10 000 attempts");
}

fn attack_between_operations(seed: u64, steps: usize) -> Tally {
    let layout = RingLayout::new(4096, 8192).unwrap();
    let words: Vec<AtomicU64> = (0..layout.total_size() / 8)
        .map(|_| AtomicU64::new(0))
        .collect();
    let mem = RawMem::from_atomics(&words);
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    let (mut tx, mut rx) = fresh(mem, layout);
    let mut pipe = None;
    for _ in 0..steps {
        if rng.below(4) == 0 {
            scribble(&mem, layout, &mut rng);
        }
        match rng.below(7) {
            0 | 1 => {
                let r = random_send(&mut tx, &mut rng);
                tally.note("write", &r);
            }
            2 => tally.note("commit write", &tx.commit()),
            3 | 4 => consume(&mut rx, &mut tally),
            5 => tally.note("commit read", &rx.commit()),
            _ => {
                // Pipe traffic over the same (attacked) ring.
                let (w, r) = pipe.get_or_insert_with(|| {
                    let (tx, rx) = fresh(mem, layout);
                    (PipeWriter::new(tx), PipeReader::new(rx))
                });
                let data = vec![7u8; rng.below(5000) as usize];
                tally.note("pipe write", &w.write_bytes(&data));
                let mut buf = vec![0u8; rng.below(3000) as usize + 1];
                tally.note("pipe read", &r.read_bytes(&mut buf));
                let mut buf = vec![0u8; 20_000];
                tally.note("pipe message", &r.read_message(&mut buf));
                if w.ring().poisoned().is_some() || r.ring().poisoned().is_some() {
                    pipe = None;
                }
            }
        }
        if tx.poisoned().is_some() || rx.poisoned().is_some() {
            (tx, rx) = fresh(mem, layout);
        }
    }
    tally
}

proptest! {
    #![proptest_config(ring_model_tests::proptest_config("vmbus_hostile", 64))]

    #[test]
    fn corruption_between_operations(seed in any::<u64>()) {
        let _deadline = Deadline::new("vmbus_hostile::corruption_between_operations", Duration::from_secs(300));
        attack_between_operations(seed, 400);
    }
}

#[test]
fn attacks_reach_every_outcome() {
    let _deadline = Deadline::new(
        "vmbus_hostile::attacks_reach_every_outcome",
        Duration::from_secs(300),
    );
    let t = attack_between_operations(0x5EED, 20_000);
    assert!(
        t.ok > 1000 && t.empty_or_full > 100 && t.corrupt > 100,
        "{t:?}"
    );
}

#[test]
fn corruption_from_a_concurrent_thread() {
    let _deadline = Deadline::new(
        "vmbus_hostile::corruption_from_a_concurrent_thread",
        Duration::from_secs(300),
    );
    let layout = RingLayout::new(4096, 8192).unwrap();
    let words: Vec<AtomicU64> = (0..layout.total_size() / 8)
        .map(|_| AtomicU64::new(0))
        .collect();
    let mem = RawMem::from_atomics(&words);
    let stop = AtomicBool::new(false);
    let scribbles = AtomicU64::new(0);
    let tally = std::thread::scope(|s| {
        s.spawn(|| {
            let mut rng = Rng(99);
            while !stop.load(Ordering::Relaxed) {
                scribble(&mem, layout, &mut rng);
                scribbles.fetch_add(1, Ordering::Relaxed);
                if rng.below(16) == 0 {
                    std::thread::yield_now();
                }
            }
        });
        let mut rng = Rng(7);
        let mut tally = Tally::default();
        let (mut tx, mut rx) = fresh(mem, layout);
        // Run until the attacker has really been at work alongside us (a
        // fast release build could otherwise finish before it starts), with
        // a cap so the test always ends.
        for ops in 0..2_000_000u64 {
            if ops >= 20_000 && scribbles.load(Ordering::Relaxed) >= 20_000 && tally.corrupt > 10 {
                break;
            }
            match rng.below(4) {
                0 => {
                    let r = random_send(&mut tx, &mut rng);
                    tally.note("write", &r);
                    tally.note("commit write", &tx.commit());
                }
                1 | 2 => consume(&mut rx, &mut tally),
                _ => tally.note("commit read", &rx.commit()),
            }
            if tx.poisoned().is_some() || rx.poisoned().is_some() {
                (tx, rx) = fresh(mem, layout);
            }
        }
        stop.store(true, Ordering::Relaxed);
        tally
    });
    assert!(tally.corrupt > 0 && tally.ok > 0, "{tally:?}");
}

/// Builds a ring holding a few honest packets of every kind (some wrapping),
/// for a scripted attacker to rewrite while we read it.
fn honest_ring(words: &[AtomicU64], layout: RingLayout, start: u32) {
    let mem = RawMem::from_atomics(words);
    initialize_ring(&mem, layout).unwrap();
    mem.store_u32(WRITE_INDEX, start).unwrap();
    mem.store_u32(READ_INDEX, start).unwrap();
    let mut tx = OutgoingRing::new(mem, layout).unwrap();
    let mut rng = Rng(u64::from(start));
    for _ in 0..6 {
        let _ = random_send(&mut tx, &mut rng);
    }
    let _ = tx.commit().unwrap();
}

fn scribbles() -> impl Strategy<Value = Vec<ring_std::hostile::Scribble>> {
    let value = prop_oneof![
        any::<u32>(),
        (0u32..1024).prop_map(|v| v * 8),
        0u32..64,
        Just(u32::MAX),
    ];
    prop::collection::vec(
        (0u32..12, any::<u32>(), value).prop_map(|(after, offset, value)| {
            ring_std::hostile::Scribble {
                after,
                offset,
                value,
            }
        }),
        1..24,
    )
}

proptest! {
    #![proptest_config(ring_model_tests::proptest_config("vmbus_toctou", 128))]

    /// A peer that rewrites the control words or the packet bytes between
    /// any two of the reader's memory accesses.
    #[test]
    fn reader_survives_a_scripted_peer(
        start in (0u32..1024).prop_map(|s| s * 8),
        control in any::<bool>(),
        steps in scribbles(),
    ) {
        let _deadline = Deadline::new("vmbus_hostile::reader_survives_a_scripted_peer", Duration::from_secs(300));
        let layout = RingLayout::new(4096, 8192).unwrap();
        let words: Vec<AtomicU64> =
            (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
        honest_ring(&words, layout, start);
        let (at, len) = if control { (0, 0x44) } else { (4096, 8192) };
        let mem = ring_std::hostile::HostileMem::new(RawMem::from_atomics(&words), at, len, steps);
        // Set-up may meet a scribbled index: a refusal, not a failure.
        let Ok(mut rx) = IncomingRing::new(&mem, layout) else {
            return Ok(());
        };
        let mut tally = Tally::default();
        for _ in 0..10 {
            let r = rx.read_packet();
            let Ok(p) = r else {
                tally.note("read_packet", &r.map(drop));
                continue;
            };
            let mut buf = vec![0u8; p.payload_len()];
            tally.note("read_payload", &p.read_payload(0, &mut buf));
            for range in p.gpa_ranges() {
                match range {
                    Ok(range) => range.pfns().for_each(|pfn| tally.note("pfn", &pfn)),
                    Err(e) => tally.note("gpa range", &Err::<(), _>(e)),
                }
            }
            p.transfer_ranges().for_each(|r| tally.note("transfer range", &r));
            tally.note("commit read", &rx.commit());
        }
    }

    /// A peer that rewrites the control words between any two of the
    /// writer's memory accesses.
    #[test]
    fn writer_survives_a_scripted_peer(
        start in (0u32..1024).prop_map(|s| s * 8),
        steps in scribbles(),
    ) {
        let _deadline = Deadline::new("vmbus_hostile::writer_survives_a_scripted_peer", Duration::from_secs(300));
        let layout = RingLayout::new(4096, 8192).unwrap();
        let words: Vec<AtomicU64> =
            (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
        honest_ring(&words, layout, start);
        let mem = ring_std::hostile::HostileMem::new(RawMem::from_atomics(&words), 0, 0x44, steps);
        let Ok(mut tx) = OutgoingRing::new(&mem, layout) else {
            return Ok(());
        };
        let mut rng = Rng(u64::from(start) + 1);
        let mut tally = Tally::default();
        for _ in 0..10 {
            let payload = vec![1u8; rng.below(3000) as usize];
            let r = tx.write(&OutgoingPacket::in_band(1, &[&payload]));
            tally.note("write", &r);
            tally.note("commit write", &tx.commit());
            let r = tx.wait_for_space(rng.below(4000) as usize);
            tally.note("wait for space", &r);
        }
    }
}
