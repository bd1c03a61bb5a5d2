//! Loom models of the VMBus signalling protocol: the writer's
//! publish-then-check-mask against the reader's unmask-then-recheck, and the
//! reader's commit-then-check-pending-send-size against the writer's
//! arm-then-recheck.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p ring-core --release --test loom_vmbus`.
//! Loom explores the interleavings of the two threads (within a preemption
//! bound) under the C11 memory model. The control words are loom atomics
//! and each 1 KiB of the data area is one loom `UnsafeCell`; every packet in
//! these models is exactly 1 KiB with its trailer, so each occupies one cell
//! and a packet copy that is not ordered by the index publication is
//! reported as a race. A lost wake-up leaves a thread blocked for ever,
//! which loom reports as a deadlock.
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{fence, AtomicU32, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;
use ring_core::mem::{MemError, SharedMem};
use ring_core::signal::Signal;
use ring_core::vmbus::{Blocking, IncomingRing, OutgoingPacket, OutgoingRing, RingLayout};

const CONTROL: usize = 4096;
/// Bytes of the control page that are defined (and modelled as atomics).
const HEADER: usize = 0x44;
const DATA: usize = 4096;
const CHUNK: usize = 1024;
/// Payload of a packet that fills exactly one chunk: 16 + 1000 + 8.
const PAYLOAD: usize = CHUNK - 16 - 8;

struct LoomMem {
    words: Vec<AtomicU32>,
    chunks: Vec<UnsafeCell<[u8; CHUNK]>>,
}

impl LoomMem {
    fn new() -> Self {
        LoomMem {
            words: (0..HEADER / 4).map(|_| AtomicU32::new(0)).collect(),
            chunks: (0..DATA / CHUNK)
                .map(|_| UnsafeCell::new([0; CHUNK]))
                .collect(),
        }
    }

    fn word(&self, offset: usize) -> Result<Option<&AtomicU32>, MemError> {
        if offset % 4 != 0 {
            return Err(MemError::Misaligned { offset });
        }
        if offset >= CONTROL {
            return Err(MemError::OutOfBounds {
                offset,
                len: 4,
                size: CONTROL,
            });
        }
        // The reserved rest of the control page is not modelled.
        Ok(self.words.get(offset / 4))
    }

    /// Visits the data chunks under `[offset, offset + len)`.
    fn chunks(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(&UnsafeCell<[u8; CHUNK]>, usize, usize, usize),
    ) -> Result<(), MemError> {
        let end = offset + len;
        if offset < CONTROL || end > CONTROL + DATA {
            // Only the data area is copied in bulk in these models (set-up
            // that zeroes the control page is not used).
            return Err(MemError::OutOfBounds {
                offset,
                len,
                size: CONTROL + DATA,
            });
        }
        let mut at = offset - CONTROL;
        let end = end - CONTROL;
        while at < end {
            let chunk = at / CHUNK;
            let n = ((chunk + 1) * CHUNK).min(end) - at;
            f(&self.chunks[chunk], at % CHUNK, at + CONTROL - offset, n);
            at += n;
        }
        Ok(())
    }
}

impl SharedMem for LoomMem {
    fn size(&self) -> usize {
        CONTROL + DATA
    }
    fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
        Ok(self.word(offset)?.map_or(0, |w| w.load(Ordering::Acquire)))
    }
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        if let Some(w) = self.word(offset)? {
            w.store(value, Ordering::Release);
        }
        Ok(())
    }
    fn load_u8(&self, offset: usize) -> Result<u8, MemError> {
        Err(MemError::Misaligned { offset })
    }
    fn store_u8(&self, offset: usize, _: u8) -> Result<(), MemError> {
        Err(MemError::Misaligned { offset })
    }
    fn fetch_or_u8(&self, offset: usize, _: u8) -> Result<u8, MemError> {
        Err(MemError::Misaligned { offset })
    }
    fn fetch_and_u8(&self, offset: usize, _: u8) -> Result<u8, MemError> {
        Err(MemError::Misaligned { offset })
    }
    fn fence(&self) {
        fence(Ordering::SeqCst);
    }
    fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemError> {
        self.chunks(offset, dst.len(), |cell, from, to, n| {
            cell.with(|p| {
                // SAFETY: loom checks that no write to this cell races with us.
                let bytes = unsafe { &*p };
                dst[to..to + n].copy_from_slice(&bytes[from..from + n]);
            })
        })
    }
    fn write(&self, offset: usize, src: &[u8]) -> Result<(), MemError> {
        self.chunks(offset, src.len(), |cell, to, from, n| {
            cell.with_mut(|p| {
                // SAFETY: loom checks that no other access races with us.
                let bytes = unsafe { &mut *p };
                bytes[to..to + n].copy_from_slice(&src[from..from + n]);
            })
        })
    }
}

#[derive(Clone)]
struct Mem(Arc<LoomMem>);

impl SharedMem for Mem {
    fn size(&self) -> usize {
        self.0.size()
    }
    fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
        self.0.load_u32(offset)
    }
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        self.0.store_u32(offset, value)
    }
    fn load_u8(&self, offset: usize) -> Result<u8, MemError> {
        self.0.load_u8(offset)
    }
    fn store_u8(&self, offset: usize, value: u8) -> Result<(), MemError> {
        self.0.store_u8(offset, value)
    }
    fn fetch_or_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        self.0.fetch_or_u8(offset, bits)
    }
    fn fetch_and_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        self.0.fetch_and_u8(offset, bits)
    }
    fn fence(&self) {
        self.0.fence()
    }
    fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemError> {
        self.0.read(offset, dst)
    }
    fn write(&self, offset: usize, src: &[u8]) -> Result<(), MemError> {
        self.0.write(offset, src)
    }
}

#[derive(Default)]
struct Event {
    pending: Mutex<bool>,
    ready: Condvar,
}

/// The channel's one event, as a pair of loom events.
struct LoomSignal {
    own: Arc<Event>,
    peer: Arc<Event>,
}

impl LoomSignal {
    fn pair() -> (Self, Self) {
        let a = Arc::new(Event::default());
        let b = Arc::new(Event::default());
        (
            LoomSignal {
                own: a.clone(),
                peer: b.clone(),
            },
            LoomSignal { own: b, peer: a },
        )
    }
}

impl Signal for LoomSignal {
    type Error = ();
    fn notify(&self) -> Result<(), ()> {
        *self.peer.pending.lock().unwrap() = true;
        self.peer.ready.notify_one();
        Ok(())
    }
    fn wait(&self) -> Result<(), ()> {
        let mut pending = self.own.pending.lock().unwrap();
        while !*pending {
            pending = self.own.ready.wait(pending).unwrap();
        }
        *pending = false;
        Ok(())
    }
}

/// A channel whose `a → b` ring is the one under test; the `b → a` ring
/// stays idle.
fn setup() -> (Blocking<Mem, LoomSignal>, Blocking<Mem, LoomSignal>) {
    let layout = RingLayout::new(CONTROL, DATA).unwrap();
    let a_to_b = Mem(Arc::new(LoomMem::new()));
    let b_to_a = Mem(Arc::new(LoomMem::new()));
    let (sa, sb) = LoomSignal::pair();
    let a = Blocking::new(
        IncomingRing::new(b_to_a.clone(), layout).unwrap(),
        OutgoingRing::new(a_to_b.clone(), layout).unwrap(),
        sa,
    );
    let b = Blocking::new(
        IncomingRing::new(a_to_b, layout).unwrap(),
        OutgoingRing::new(b_to_a, layout).unwrap(),
        sb,
    );
    (a, b)
}

fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let runs = std::sync::Arc::new(AtomicU64::new(0));
    let counter = runs.clone();
    let mut builder = loom::model::Builder::new();
    // LOOM_MAX_PREEMPTIONS overrides the bound for longer runs.
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.max_branches = 100_000;
    builder.check(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        f();
    });
    println!(
        "loom {name}: {} interleavings explored",
        runs.load(Ordering::Relaxed)
    );
}

fn send_all(a: &mut Blocking<Mem, LoomSignal>, count: u64) {
    let payload = [0x5Au8; PAYLOAD];
    for xid in 0..count {
        a.send(&OutgoingPacket::in_band(xid, &[&payload])).unwrap();
    }
}

/// Receives `count` packets: the first alone (`recv_with`, mask left
/// clear), the rest in drains that set the mask while they run.
fn receive_all(b: &mut Blocking<Mem, LoomSignal>, count: u64) {
    let mut got = Vec::new();
    let mut check = |p: &ring_core::vmbus::IncomingPacket<'_, Mem>| {
        let mut byte = [0u8];
        p.read_payload(PAYLOAD - 1, &mut byte).unwrap();
        (p.transaction_id(), byte[0])
    };
    got.push(b.recv_with(&mut check).unwrap());
    while (got.len() as u64) < count {
        let left = count as usize - got.len();
        b.drain_with(left, |p| got.push(check(p))).unwrap();
    }
    let want: Vec<(u64, u8)> = (0..count).map(|xid| (xid, 0x5A)).collect();
    assert_eq!(got, want);
}

/// A reader blocked on an empty ring is woken by the writer's one signal:
/// the writer checks the mask after publishing, the reader re-checks the
/// ring after unmasking.
#[test]
fn blocked_reader_is_woken_for_data() {
    model("blocked_reader_is_woken_for_data", || {
        let (mut a, mut b) = setup();
        let writer = thread::spawn(move || send_all(&mut a, 2));
        receive_all(&mut b, 2);
        writer.join().unwrap();
    });
}

/// A writer blocked on a full ring (three 1 KiB packets fill 4 KiB: the
/// fourth would leave no byte free) is woken by the reader's one signal:
/// the reader checks `pending_send_size` after publishing its index, the
/// writer re-checks the ring after arming it.
#[test]
fn blocked_writer_is_woken_for_space() {
    model("blocked_writer_is_woken_for_space", || {
        let (mut a, mut b) = setup();
        let writer = thread::spawn(move || send_all(&mut a, 4));
        receive_all(&mut b, 4);
        writer.join().unwrap();
    });
}

/// The reader starts with its mask set by someone else (uio_hv_generic's
/// interrupt handler leaves it at 1) and nothing to read: running dry must
/// clear the mask, fence and re-check before sleeping, or the writer (which
/// sees the mask) never signals.
#[test]
fn reader_masked_by_the_kernel_is_still_woken() {
    model("reader_masked_by_the_kernel_is_still_woken", || {
        let (mut a, mut b) = setup();
        b.incoming().mask_interrupts().unwrap();
        let writer = thread::spawn(move || send_all(&mut a, 1));
        receive_all(&mut b, 1);
        writer.join().unwrap();
    });
}
