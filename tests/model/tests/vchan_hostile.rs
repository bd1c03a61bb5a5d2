//! Hostile-peer tests: the peer scribbles on the shared page between our
//! operations and while they run. Only `Ok`, `WouldBlock`, `Closed` or
//! `Corrupt` may come back; nothing panics, nothing reaches outside the
//! region (the memory door would report it), and every call returns.

use proptest::prelude::*;
use ring_core::mem::{RawMem, SharedMem};
use ring_core::vchan::{self, Endpoint, Error, Orders, ServerOptions};
use ring_model_tests::{proptest_config, Deadline};
use ring_std::hostile::{HostileMem, Scribble};
use ring_std::HeapMem;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The result of one call must be one the contract allows, and a
/// successful transfer never claims more than the buffer.
fn allowed(r: Result<vchan::Transfer, Error>, buf_len: usize) -> Result<(), TestCaseError> {
    match r {
        Ok(t) => prop_assert!(t.len <= buf_len),
        Err(Error::WouldBlock | Error::Closed | Error::Corrupt(_)) => {}
        Err(Error::TooLarge { len, capacity }) => prop_assert!(len > capacity),
        Err(e) => prop_assert!(false, "unexpected error {e:?}"),
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Step {
    /// The peer writes `value` (little-endian, `width` bytes) at `offset`
    /// of the control header, or anywhere in the page.
    Scribble {
        offset: usize,
        value: u32,
        width: usize,
    },
    Read(usize),
    Write(usize),
    Send(usize),
    Recv(usize),
    Probe,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (
            0usize..24,
            any::<u32>(),
            prop_oneof![Just(1usize), Just(2), Just(4)]
        )
            .prop_map(|(o, v, w)| Step::Scribble {
                offset: o - o % w,
                value: v,
                width: w
            }),
        (0usize..4096, any::<u32>()).prop_map(|(o, v)| Step::Scribble {
            offset: o & !3,
            value: v,
            width: 4
        }),
        (0usize..5000).prop_map(Step::Read),
        (0usize..5000).prop_map(Step::Write),
        (0usize..5000).prop_map(Step::Send),
        (0usize..5000).prop_map(Step::Recv),
        Just(Step::Probe),
    ]
}

fn exercise<M: SharedMem>(
    ep: &mut Endpoint<M>,
    step: &Step,
    mem: RawMem<'_>,
) -> Result<(), TestCaseError> {
    match *step {
        Step::Scribble {
            offset,
            value,
            width,
        } => {
            let bytes = value.to_le_bytes();
            mem.write(offset, &bytes[..width]).unwrap();
        }
        Step::Read(n) => {
            let mut buf = vec![0u8; n];
            allowed(ep.read(&mut buf), n)?;
        }
        Step::Recv(n) => {
            let mut buf = vec![0u8; n];
            allowed(ep.recv(&mut buf), n)?;
        }
        Step::Write(n) => allowed(ep.write(&vec![0x5a; n]), n)?,
        Step::Send(n) => allowed(ep.send(&vec![0x5a; n]), n)?,
        Step::Probe => {
            for r in [ep.data_ready(), ep.buffer_space()] {
                match r {
                    Ok(n) => prop_assert!(n <= ep.read_capacity().max(ep.write_capacity())),
                    Err(Error::Closed | Error::Corrupt(_)) => {}
                    Err(e) => prop_assert!(false, "unexpected {e:?}"),
                }
            }
            let _ = ep.arm_readable(100);
            let _ = ep.arm_writable(100);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config("vchan_hostile", 512))]

    /// The peer corrupts the page between our operations; we are the
    /// server or the client.
    #[test]
    fn corruption_between_operations(
        left in 10u8..=13, right in 10u8..=13, as_server in any::<bool>(),
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        let _deadline = Deadline::new("vchan_hostile::corruption_between_operations", Duration::from_secs(300));
        let Ok(orders) = Orders::new(left, right) else { return Ok(()) };
        let layout = vchan::FlatLayout::new(orders);
        let words: Vec<AtomicU64> = (0..layout.size / 8).map(|_| AtomicU64::new(0)).collect();
        let mem = RawMem::from_atomics(&words);
        let server = vchan::serve_flat(mem, orders, ServerOptions::default()).unwrap();
        let client = vchan::connect_flat(mem).unwrap();
        let mut ep = if as_server { server } else { client };
        let mut poisoned = None;
        for s in &steps {
            exercise(&mut ep, s, mem)?;
            // Once poisoned, always poisoned with the same error.
            if let Some(p) = poisoned {
                prop_assert_eq!(ep.poisoned(), Some(p));
            }
            poisoned = ep.poisoned();
        }
    }

    /// A hostile page at connect time: set-up either fails cleanly or
    /// yields an endpoint that obeys the contract.
    #[test]
    fn hostile_page_at_connect(
        header in proptest::collection::vec(any::<u8>(), 24),
        steps in proptest::collection::vec(step(), 0..20),
    ) {
        let _deadline = Deadline::new("vchan_hostile::hostile_page_at_connect", Duration::from_secs(300));
        let words: Vec<AtomicU64> = (0..(64 * 1024 + 4096) / 8).map(|_| AtomicU64::new(0)).collect();
        let mem = RawMem::from_atomics(&words);
        mem.write(0, &header).unwrap();
        if let Ok(mut ep) = vchan::connect_flat(mem) {
            for s in &steps {
                exercise(&mut ep, s, mem)?;
            }
        }
    }
}

fn scribble() -> impl Strategy<Value = Scribble> {
    (0u32..12, 0u32..24, any::<u32>(), any::<bool>()).prop_map(|(after, offset, value, small)| {
        Scribble {
            after,
            offset,
            // Small values make plausible-but-wrong indices; any value the rest.
            value: if small { value % 5000 } else { value },
        }
    })
}

proptest! {
    #![proptest_config(proptest_config("vchan_hostile_interleaved", 512))]

    /// The peer scribbles on the header *between the individual memory
    /// accesses* of our calls (deterministically, so failures replay): the
    /// time-of-check/time-of-use window of every operation.
    #[test]
    fn corruption_inside_operations(
        left in 10u8..=12, right in 10u8..=12, as_server in any::<bool>(),
        script in proptest::collection::vec(scribble(), 0..40),
        steps in proptest::collection::vec(step(), 1..60),
    ) {
        let _deadline = Deadline::new("vchan_hostile::corruption_inside_operations", Duration::from_secs(300));
        let Ok(orders) = Orders::new(left, right) else { return Ok(()) };
        let layout = vchan::FlatLayout::new(orders);
        let heap = HeapMem::new(layout.size);
        let hostile = HostileMem::new(&heap, 0, 24, script);
        let server = vchan::serve_flat(&hostile, orders, ServerOptions::default());
        let client = vchan::connect_flat(&hostile);
        let (Ok(server), Ok(client)) = (server, client) else { return Ok(()) };
        let mut ep = if as_server { server } else { client };
        for s in &steps {
            exercise(&mut ep, s, heap.view())?;
        }
    }
}

/// A peer thread rewrites the header as fast as it can while we stream.
#[test]
fn corruption_during_operations() {
    let _deadline = Deadline::new(
        "vchan_hostile::corruption_during_operations",
        Duration::from_secs(300),
    );
    for (left, right, as_server) in [
        (10, 11, true),
        (12, 13, false),
        (11, 10, false),
        (14, 12, true),
    ] {
        let orders = Orders::new(left, right).unwrap();
        let layout = vchan::FlatLayout::new(orders);
        let words: Arc<Vec<AtomicU64>> =
            Arc::new((0..layout.size / 8).map(|_| AtomicU64::new(0)).collect());
        let mem = RawMem::from_atomics(&words);
        let server = vchan::serve_flat(mem, orders, ServerOptions::default()).unwrap();
        let client = vchan::connect_flat(mem).unwrap();
        let mut ep = if as_server { server } else { client };
        let stop = Arc::new(AtomicBool::new(false));
        let hostile = {
            let words = words.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mem = RawMem::from_atomics(&words);
                let mut x = 0x1234_5678_9abc_def0u64;
                let mut writes = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let offset = (x as usize % 6) * 4;
                    mem.store_u32(offset, (x >> 32) as u32).unwrap();
                    writes += 1;
                }
                writes
            })
        };
        let mut outcomes = [0u32; 4];
        for i in 0..200_000usize {
            let n = 1 + i % 3000;
            let r = match i % 4 {
                0 => ep.write(&vec![1; n]),
                1 => ep.read(&mut vec![0; n]),
                2 => ep.send(&vec![1; n % 1024]),
                _ => ep.recv(&mut vec![0; n % 1024]),
            };
            match r {
                Ok(t) => {
                    assert!(t.len <= n);
                    outcomes[0] += 1;
                }
                Err(Error::WouldBlock) => outcomes[1] += 1,
                Err(Error::Closed) => outcomes[2] += 1,
                Err(Error::Corrupt(_)) => {
                    outcomes[3] += 1;
                    break;
                }
                Err(e) => panic!("unexpected error {e:?}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let writes = hostile.join().unwrap();
        assert!(writes > 0);
        // Random indices cannot stay consistent for long: the endpoint must
        // have noticed and latched the corruption, or seen a close.
        assert!(outcomes[3] + outcomes[2] > 0, "outcomes {outcomes:?}");
    }
}
