//! Model tests: the vchan endpoints against two `VecDeque` rings and a
//! model of who owes whom a kick, over random orders, starting indices and
//! operation sequences; and a checksummed two-thread stream.

use proptest::prelude::*;
use ring_core::mem::RawMem;
use ring_core::vchan::{self, Endpoint, Error, Orders, ServerOptions, Transfer};
use ring_tests::{proptest_config, stream_byte};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::atomic::AtomicU64;

#[derive(Clone, Copy, Debug)]
enum Side {
    Server,
    Client,
}

#[derive(Clone, Debug)]
enum Op {
    Write(Side, usize),
    Read(Side, usize),
    Send(Side, usize),
    Recv(Side, usize),
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Server), Just(Side::Client)]
}

fn op() -> impl Strategy<Value = Op> {
    let len = prop_oneof![0usize..64, 0usize..5000, Just(1024), Just(2048), Just(4096)];
    (side(), len, 0..4u8).prop_map(|(s, n, k)| match k {
        0 => Op::Write(s, n),
        1 => Op::Read(s, n),
        2 => Op::Send(s, n),
        _ => Op::Recv(s, n),
    })
}

fn orders() -> impl Strategy<Value = Orders> {
    (10u8..=15, 10u8..=15).prop_filter_map("valid pair", |(l, r)| Orders::new(l, r).ok())
}

/// One direction of the model: the bytes in flight and whether the reader
/// asked to be kicked on the next write (WRITE) and the writer on the next
/// read (READ).
struct ModelRing {
    bytes: VecDeque<u8>,
    capacity: usize,
    reader_wants_write: bool,
    writer_wants_read: bool,
}

struct Model {
    /// Index 0: left (client → server); 1: right (server → client).
    rings: [ModelRing; 2],
    next: u8,
}

impl Model {
    fn tx(&mut self, s: Side) -> &mut ModelRing {
        match s {
            Side::Client => &mut self.rings[0],
            Side::Server => &mut self.rings[1],
        }
    }
    fn rx(&mut self, s: Side) -> &mut ModelRing {
        match s {
            Side::Server => &mut self.rings[0],
            Side::Client => &mut self.rings[1],
        }
    }
}

fn run(orders: Orders, start: u32, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let layout = vchan::FlatLayout::new(orders);
    let words: Vec<AtomicU64> = (0..layout.size / 8).map(|_| AtomicU64::new(0)).collect();
    let mem = RawMem::from_atomics(&words);
    let mut server = vchan::serve_flat(
        mem,
        orders,
        ServerOptions {
            initial_index: start,
        },
    )
    .unwrap();
    let mut client = vchan::connect_flat(mem).unwrap();
    let ring = |order: u8| ModelRing {
        bytes: VecDeque::new(),
        capacity: 1 << order,
        // The server's set-up asks for the client's first write, the
        // client's connect for the server's.
        reader_wants_write: true,
        writer_wants_read: false,
    };
    let mut model = Model {
        rings: [ring(orders.left()), ring(orders.right())],
        next: 0,
    };

    for op in ops {
        let ep: &mut Endpoint<RawMem<'_>> = match op {
            Op::Write(Side::Server, _)
            | Op::Read(Side::Server, _)
            | Op::Send(Side::Server, _)
            | Op::Recv(Side::Server, _) => &mut server,
            _ => &mut client,
        };
        match op {
            Op::Write(s, n) | Op::Send(s, n) => {
                let exact = matches!(op, Op::Send(..));
                let data: Vec<u8> = (0..n)
                    .map(|_| {
                        model.next = model.next.wrapping_add(1);
                        model.next
                    })
                    .collect();
                let got = if exact {
                    ep.send(&data)
                } else {
                    ep.write(&data)
                };
                let ring = model.tx(s);
                let free = ring.capacity - ring.bytes.len();
                let want = if exact {
                    if n > ring.capacity {
                        Err(Error::TooLarge {
                            len: n,
                            capacity: ring.capacity,
                        })
                    } else if n == 0 {
                        Ok(0)
                    } else if n <= free {
                        Ok(n)
                    } else {
                        Err(Error::WouldBlock)
                    }
                } else if n == 0 {
                    Ok(0)
                } else if free == 0 {
                    Err(Error::WouldBlock)
                } else {
                    Ok(n.min(free))
                };
                match (got, want) {
                    (Ok(Transfer { len, notify }), Ok(w)) => {
                        prop_assert_eq!(len, w);
                        let owed = w > 0 && ring.reader_wants_write;
                        prop_assert_eq!(notify, owed, "write kick");
                        if w > 0 {
                            ring.reader_wants_write = false;
                        }
                        ring.bytes.extend(&data[..w]);
                    }
                    (Err(g), Err(w)) => {
                        prop_assert_eq!(g, w);
                        if g == Error::WouldBlock {
                            ring.writer_wants_read = true;
                        }
                    }
                    (g, w) => prop_assert!(false, "{op:?}: got {g:?}, model says {w:?}"),
                }
            }
            Op::Read(s, n) | Op::Recv(s, n) => {
                let exact = matches!(op, Op::Recv(..));
                let mut buf = vec![0u8; n];
                let got = if exact {
                    ep.recv(&mut buf)
                } else {
                    ep.read(&mut buf)
                };
                let ring = model.rx(s);
                let avail = ring.bytes.len();
                let want = if exact {
                    if n > ring.capacity {
                        Err(Error::TooLarge {
                            len: n,
                            capacity: ring.capacity,
                        })
                    } else if n == 0 {
                        Ok(0)
                    } else if n <= avail {
                        Ok(n)
                    } else {
                        Err(Error::WouldBlock)
                    }
                } else if n == 0 {
                    Ok(0)
                } else if avail == 0 {
                    Err(Error::WouldBlock)
                } else {
                    Ok(n.min(avail).min(ring.capacity))
                };
                match (got, want) {
                    (Ok(Transfer { len, notify }), Ok(w)) => {
                        prop_assert_eq!(len, w);
                        let owed = w > 0 && ring.writer_wants_read;
                        prop_assert_eq!(notify, owed, "read kick");
                        if w > 0 {
                            ring.writer_wants_read = false;
                        }
                        let expect: Vec<u8> = ring.bytes.drain(..w).collect();
                        prop_assert_eq!(&buf[..w], &expect[..]);
                    }
                    (Err(g), Err(w)) => {
                        prop_assert_eq!(g, w);
                        if g == Error::WouldBlock {
                            ring.reader_wants_write = true;
                        }
                    }
                    (g, w) => prop_assert!(false, "{op:?}: got {g:?}, model says {w:?}"),
                }
            }
        }
    }
    // Close and drain: each side reads what is left, then EOF.
    let left: Vec<u8> = model.rings[0].bytes.iter().copied().collect();
    let _ = client.close().unwrap();
    let mut got = Vec::new();
    loop {
        let mut buf = [0u8; 777];
        let t = server.read(&mut buf).unwrap();
        if t.len == 0 {
            break;
        }
        got.extend_from_slice(&buf[..t.len]);
    }
    prop_assert_eq!(got, left);
    prop_assert_eq!(server.write(b"x"), Err(Error::Closed));
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config("vchan_model", 256))]

    #[test]
    fn endpoints_match_the_model(
        orders in orders(),
        start in prop_oneof![Just(0u32), Just(0xffff_ff00), any::<u32>()],
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        run(orders, start, ops)?;
    }
}

proptest! {
    #![proptest_config(proptest_config("vchan_threads", 24))]

    #[test]
    fn two_threads_stream_checksummed(
        orders in orders(),
        start in any::<u32>(),
        total in 1usize..300_000,
        chunk in 1usize..9000,
        seed in any::<u64>(),
    ) {
        let (mut server, mut client) =
            ring_std::vchan::pair_with(orders, ServerOptions { initial_index: start }).unwrap();
        // A lost wake-up must fail the test, not hang it.
        server.set_timeout(Some(std::time::Duration::from_secs(20)));
        client.set_timeout(Some(std::time::Duration::from_secs(20)));
        let writer = std::thread::spawn(move || {
            let data: Vec<u8> = (0..total as u64).map(|i| stream_byte(seed, i)).collect();
            for piece in data.chunks(chunk) {
                client.write_all(piece).unwrap();
            }
            client.close().unwrap();
        });
        let mut got = Vec::with_capacity(total);
        let mut buf = vec![0u8; chunk.div_ceil(2) + 1];
        loop {
            let n = server.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        writer.join().unwrap();
        prop_assert_eq!(got.len(), total);
        prop_assert!(got.iter().enumerate().all(|(i, &b)| b == stream_byte(seed, i as u64)));
    }
}
