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

mod loom_support;

use loom::thread;
use loom_support::{model, LoomSignal, Mem, Shape};
use ring_core::vmbus::{Blocking, IncomingRing, OutgoingPacket, OutgoingRing, RingLayout};

const CONTROL: usize = 4096;
/// Bytes of the control page that are defined (and modelled as atomics).
const HEADER: usize = 0x44;
const DATA: usize = 4096;
const CHUNK: usize = 1024;
/// Payload of a packet that fills exactly one chunk: 16 + 1000 + 8.
const PAYLOAD: usize = CHUNK - 16 - 8;

/// A channel whose `a → b` ring is the one under test; the `b → a` ring
/// stays idle.
fn setup() -> (Blocking<Mem, LoomSignal>, Blocking<Mem, LoomSignal>) {
    let layout = RingLayout::new(CONTROL, DATA).unwrap();
    // The defined header words are atomics, the reserved rest of the
    // control page is not modelled, and each packet fills one data cell.
    let shape = Shape {
        atomic: HEADER,
        data: CONTROL,
        data_len: DATA,
        chunk: CHUNK,
    };
    let a_to_b = Mem::new(shape);
    let b_to_a = Mem::new(shape);
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
    let check = |p: &ring_core::vmbus::IncomingPacket<'_, Mem>| {
        let mut byte = [0u8];
        p.read_payload(PAYLOAD - 1, &mut byte).unwrap();
        (p.transaction_id(), byte[0])
    };
    got.push(b.recv_with(check).unwrap());
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

// Negative control: without the fence in `commit`, the model above must
// fail (ring-core's `mutation` module, compiled in only under loom).

#[test]
fn a_missing_commit_fence_is_caught() {
    loom_support::must_fail(
        ring_core::mutation::Mutation::NoPublishFence,
        "blocked_reader_is_woken_for_data",
    );
}
