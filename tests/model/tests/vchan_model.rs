//! Model tests: the vchan endpoints against two `VecDeque` rings and a
//! model of who owes whom a kick, over random orders, starting indices and
//! operation sequences; and a checksummed two-thread stream.
//!
//! The model covers held reads too: bytes a side reads with `read_held` or
//! `recv_held` leave its queue but stay counted as used (the writer's free
//! space does not grow) until that side releases them, reads or writes
//! with a completing call, or closes; and while any are held, a call that
//! would arm a wake-up must fail with `Held` and arm nothing. After every
//! operation the shared page itself is compared with the model: both
//! rings' indices and both notify bytes.

use proptest::prelude::*;
use ring_core::loan::Span;
use ring_core::mem::{RawMem, SharedMem};
use ring_core::vchan::layout::{
    CLI_NOTIFY, LEFT_CONS, LEFT_PROD, RIGHT_CONS, RIGHT_PROD, SRV_NOTIFY,
};
use ring_core::vchan::{self, Endpoint, Error, NotifyBits, Orders, ServerOptions, Transfer};
use ring_model_tests::{proptest_config, stream_byte, Deadline};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

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
    ReadHeld(Side, usize),
    RecvHeld(Side, usize),
    Release(Side),
    /// A gathered stream write of buffers of these sizes.
    WriteVectored(Side, Vec<usize>),
    /// A gathered packet of buffers of these sizes.
    SendVectored(Side, Vec<usize>),
    /// An in-place write offered up to `.1` bytes that fills `.2` of them.
    WriteWith(Side, usize, usize),
    /// An in-place read offered up to `.1` bytes that takes `.2` of them.
    ReadWith(Side, usize, usize),
}

impl Op {
    fn side(&self) -> Side {
        match *self {
            Op::Write(s, _)
            | Op::Read(s, _)
            | Op::Send(s, _)
            | Op::Recv(s, _)
            | Op::ReadHeld(s, _)
            | Op::RecvHeld(s, _)
            | Op::Release(s)
            | Op::WriteVectored(s, _)
            | Op::SendVectored(s, _)
            | Op::WriteWith(s, _, _)
            | Op::ReadWith(s, _, _) => s,
        }
    }
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Server), Just(Side::Client)]
}

fn op() -> impl Strategy<Value = Op> {
    let len = prop_oneof![0usize..64, 0usize..5000, Just(1024), Just(2048), Just(4096)];
    // Reads and writes twice as likely as a release or either gathered
    // write. Two arms rather than one per operation: generating the ops
    // is most of this test's time, and a union of nine strategies costs
    // twice as much.
    let simple = (side(), len, 0..13u8).prop_map(|(s, n, k)| match k {
        0 | 1 => Op::Write(s, n),
        2 | 3 => Op::Read(s, n),
        4 | 5 => Op::Send(s, n),
        6 | 7 => Op::Recv(s, n),
        8 | 9 => Op::ReadHeld(s, n),
        10 | 11 => Op::RecvHeld(s, n),
        _ => Op::Release(s),
    });
    // Empty buffers among them, and totals both under and over a ring.
    let sizes =
        proptest::collection::vec(prop_oneof![Just(0usize), 0usize..64, 0usize..2500], 0..5);
    let gathered = (side(), sizes, any::<bool>()).prop_map(|(s, v, packet)| {
        if packet {
            Op::SendVectored(s, v)
        } else {
            Op::WriteVectored(s, v)
        }
    });
    // In place: the closure moves all, some or none of what it is offered.
    let moved = prop_oneof![Just(0usize), 0usize..64, 0usize..5000, Just(usize::MAX)];
    let in_place = (side(), len_in_place(), moved, any::<bool>()).prop_map(|(s, n, k, w)| {
        if w {
            Op::WriteWith(s, n, k)
        } else {
            Op::ReadWith(s, n, k)
        }
    });
    prop_oneof![13 => simple, 2 => gathered, 3 => in_place]
}

fn len_in_place() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..64, 0usize..5000, Just(usize::MAX)]
}

/// Copies what `spans` of `mem` hold, checking they lie inside it and
/// cover `offered` bytes in at most two pieces.
fn span_bytes(mem: &RawMem<'_>, spans: &[Span]) -> Vec<u8> {
    assert!(spans.len() <= 2, "a vchan ring offers at most two spans");
    let mut out = Vec::new();
    for span in spans {
        assert!(span.len > 0, "empty span offered");
        assert!(
            span.offset + span.len <= mem.size(),
            "span outside the memory"
        );
        let mut piece = vec![0u8; span.len];
        mem.read(span.offset, &mut piece).unwrap();
        out.extend(piece);
    }
    out
}

fn orders() -> impl Strategy<Value = Orders> {
    (10u8..=15, 10u8..=15).prop_filter_map("valid pair", |(l, r)| Orders::new(l, r).ok())
}

/// One direction of the model: the bytes in flight, the bytes the reader
/// holds, whether the reader asked to be kicked on the next write (WRITE)
/// and the writer on the next read (READ), and the totals the two indices
/// in the page must show.
struct ModelRing {
    bytes: VecDeque<u8>,
    /// Read by the reader but not given back: still used space.
    held: usize,
    capacity: usize,
    reader_wants_write: bool,
    writer_wants_read: bool,
    /// Bytes published by the writer (wrapping, like the producer index).
    produced: u32,
    /// Bytes given back by the reader (wrapping, like the consumer index).
    released: u32,
}

impl ModelRing {
    /// Space the writer can see.
    fn free(&self) -> usize {
        self.capacity - self.bytes.len() - self.held
    }

    /// The reader publishes its index, giving every held byte back.
    fn give_back(&mut self) {
        self.released = self.released.wrapping_add(self.held as u32);
        self.held = 0;
    }
}

struct Model {
    /// Index 0: left (client → server); 1: right (server → client).
    rings: [ModelRing; 2],
    next: u8,
}

/// (the ring a side writes, the ring it reads) as indices into `rings`.
fn tx_rx(s: Side) -> (usize, usize) {
    match s {
        Side::Client => (0, 1),
        Side::Server => (1, 0),
    }
}

impl Model {
    /// `n` fresh bytes of the test's stream.
    fn data(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.next = self.next.wrapping_add(1);
                self.next
            })
            .collect()
    }

    /// The error a call that would have to arm a wake-up must return:
    /// `Held` if the side holds bytes (nothing is armed then), else
    /// `WouldBlock`.
    fn blocked(&self, s: Side) -> Error {
        match self.rings[tx_rx(s).1].held {
            0 => Error::WouldBlock,
            len => Error::Held { len },
        }
    }

    /// A write of `data` by `s`, stream or packet (`exact`).
    fn write(
        &mut self,
        s: Side,
        data: &[u8],
        exact: bool,
        got: Result<Transfer, Error>,
    ) -> Result<(), TestCaseError> {
        let (t, r) = tx_rx(s);
        let n = data.len();
        let free = self.rings[t].free();
        let capacity = self.rings[t].capacity;
        let want = if exact {
            if n > capacity {
                Err(Error::TooLarge { len: n, capacity })
            } else if n == 0 {
                Ok(0)
            } else if n <= free {
                Ok(n)
            } else {
                Err(self.blocked(s))
            }
        } else if n == 0 {
            Ok(0)
        } else if free == 0 {
            Err(self.blocked(s))
        } else {
            Ok(n.min(free))
        };
        match (got, want) {
            (Ok(Transfer { len, notify }), Ok(w)) => {
                prop_assert_eq!(len, w);
                if w == 0 {
                    // Nothing moved: nothing published, held bytes stay.
                    prop_assert!(!notify, "empty write kick");
                    return Ok(());
                }
                // One publish of both indices, one check of both asks:
                // the reader of our ring for WRITE, and (only if held
                // bytes went back) the writer of the ring we read for READ.
                let holding = self.rings[r].held > 0;
                let owed = self.rings[t].reader_wants_write
                    || (holding && self.rings[r].writer_wants_read);
                prop_assert_eq!(notify, owed, "write kick");
                self.rings[t].reader_wants_write = false;
                if holding {
                    self.rings[r].writer_wants_read = false;
                    self.rings[r].give_back();
                }
                let ring = &mut self.rings[t];
                ring.bytes.extend(&data[..w]);
                ring.produced = ring.produced.wrapping_add(w as u32);
            }
            (Err(g), Err(w)) => {
                prop_assert_eq!(g, w);
                if g == Error::WouldBlock {
                    self.rings[t].writer_wants_read = true;
                }
            }
            (g, w) => prop_assert!(false, "got {g:?}, model says {w:?}"),
        }
        Ok(())
    }

    /// The bytes a read of `n` takes off the front of `s`'s ring, which
    /// must be the ones it returned.
    fn take(&mut self, s: Side, got: &[u8]) -> Result<(), TestCaseError> {
        let ring = &mut self.rings[tx_rx(s).1];
        let expect: Vec<u8> = ring.bytes.drain(..got.len()).collect();
        prop_assert_eq!(got, &expect[..]);
        Ok(())
    }

    /// A read (stream or packet) that gives space back when it completes.
    fn read(
        &mut self,
        s: Side,
        buf: &[u8],
        exact: bool,
        got: Result<Transfer, Error>,
    ) -> Result<(), TestCaseError> {
        let r = tx_rx(s).1;
        let n = buf.len();
        let ring = &self.rings[r];
        let (avail, capacity) = (ring.bytes.len(), ring.capacity);
        let want = if exact {
            if n > capacity {
                Err(Error::TooLarge { len: n, capacity })
            } else if n == 0 {
                Ok(0)
            } else if n <= avail {
                Ok(n)
            } else {
                Err(self.blocked(s))
            }
        } else if n == 0 {
            Ok(0)
        } else if avail == 0 {
            Err(self.blocked(s))
        } else {
            Ok(n.min(avail).min(capacity))
        };
        match (got, want) {
            (Ok(Transfer { len, notify }), Ok(w)) => {
                prop_assert_eq!(len, w);
                if w == 0 {
                    prop_assert!(!notify, "empty read kick");
                    return Ok(());
                }
                // Gives back these bytes and everything held before.
                let ring = &mut self.rings[r];
                prop_assert_eq!(notify, ring.writer_wants_read, "read kick");
                ring.writer_wants_read = false;
                ring.held += w;
                ring.give_back();
                self.take(s, &buf[..w])?;
            }
            (Err(g), Err(w)) => {
                prop_assert_eq!(g, w);
                if g == Error::WouldBlock {
                    self.rings[r].reader_wants_write = true;
                }
            }
            (g, w) => prop_assert!(false, "got {g:?}, model says {w:?}"),
        }
        Ok(())
    }

    /// Checks the page against the model: both rings' indices (the
    /// consumer index moves only when held bytes are given back) and both
    /// notify bytes (nothing armed but by a `WouldBlock`), and each side's
    /// count of held bytes.
    fn check(&self, mem: RawMem<'_>, start: u32, held: [usize; 2]) -> Result<(), TestCaseError> {
        let [left, right] = &self.rings;
        let index = |at| mem.load_u32(at).unwrap().wrapping_sub(start);
        prop_assert_eq!(index(LEFT_PROD), left.produced, "left prod");
        prop_assert_eq!(index(LEFT_CONS), left.released, "left cons");
        prop_assert_eq!(index(RIGHT_PROD), right.produced, "right prod");
        prop_assert_eq!(index(RIGHT_CONS), right.released, "right cons");
        let byte = |write: bool, read: bool| {
            let mut b = NotifyBits::empty();
            b.set(NotifyBits::WRITE, write);
            b.set(NotifyBits::READ, read);
            b.bits()
        };
        // Each side's byte holds what the other asked of it: WRITE from
        // the reader of the ring it writes, READ from the writer of the
        // ring it reads.
        let srv = byte(right.reader_wants_write, left.writer_wants_read);
        let cli = byte(left.reader_wants_write, right.writer_wants_read);
        prop_assert_eq!(
            mem.load_u8(SRV_NOTIFY).unwrap(),
            srv,
            "server's notify byte"
        );
        prop_assert_eq!(
            mem.load_u8(CLI_NOTIFY).unwrap(),
            cli,
            "client's notify byte"
        );
        // Server reads left, client reads right.
        prop_assert_eq!(held, [left.held, right.held], "held (server, client)");
        Ok(())
    }
}

/// Runs one operation on its side's endpoint and checks it against the
/// model.
fn step(model: &mut Model, ep: &mut Endpoint<RawMem<'_>>, op: &Op) -> Result<(), TestCaseError> {
    let s = op.side();
    let r = tx_rx(s).1;
    match *op {
        Op::Write(_, n) | Op::Send(_, n) => {
            let exact = matches!(op, Op::Send(..));
            let data = model.data(n);
            let got = if exact {
                ep.send(&data)
            } else {
                ep.write(&data)
            };
            model.write(s, &data, exact, got)?;
        }
        Op::WriteVectored(_, ref sizes) | Op::SendVectored(_, ref sizes) => {
            let exact = matches!(op, Op::SendVectored(..));
            let data = model.data(sizes.iter().sum());
            let mut rest = &data[..];
            let bufs: Vec<&[u8]> = sizes
                .iter()
                .map(|&k| {
                    let (piece, tail) = rest.split_at(k);
                    rest = tail;
                    piece
                })
                .collect();
            let got = if exact {
                ep.send_vectored(&bufs)
            } else {
                ep.write_vectored(&bufs)
            };
            // Gathered, the buffers are one write of their concatenation.
            model.write(s, &data, exact, got)?;
        }
        Op::Read(_, n) | Op::Recv(_, n) => {
            let exact = matches!(op, Op::Recv(..));
            let mut buf = vec![0u8; n];
            let got = if exact {
                ep.recv(&mut buf)
            } else {
                ep.read(&mut buf)
            };
            model.read(s, &buf, exact, got)?;
        }
        Op::WriteWith(_, max, fill) => {
            let data = model.data(max.min(1 << 16));
            let mut called = None;
            let got = ep.write_with(max, |mem, spans| {
                let offered = ring_core::loan::total(spans);
                let k = fill.min(offered);
                let mut rest = &data[..k.min(data.len())];
                for span in spans {
                    let (piece, tail) = rest.split_at(span.len.min(rest.len()));
                    mem.write(span.offset, piece).unwrap();
                    rest = tail;
                }
                let _ = span_bytes(mem, spans);
                called = Some((offered, k));
                // A closure claiming more than it was offered (usize::MAX)
                // is held to what it was offered.
                fill.max(k)
            });
            let free = model.rings[tx_rx(s).0].free();
            // Filled or not, an in-place write is a stream write of what
            // was filled: none offered when the ring is full.
            let sent = match called {
                Some((offered, k)) => {
                    prop_assert_eq!(offered, max.min(free), "bytes offered");
                    &data[..k]
                }
                None => &data[..],
            };
            model.write(s, sent, false, got)?;
        }
        Op::ReadWith(_, max, take) => {
            let mut seen = None;
            let got = ep.read_with(max, |mem, spans| {
                let bytes = span_bytes(mem, spans);
                let k = take.min(bytes.len());
                seen = Some((bytes.len(), bytes[..k].to_vec()));
                take.max(k)
            });
            let avail = model.rings[r].bytes.len();
            let Ok(got) = got.map(|t| t.expect("no end of stream while both are open")) else {
                let e = got.unwrap_err();
                prop_assert!(seen.is_none(), "drain called before {e:?}");
                return model.read(s, &vec![0u8; max.min(1 << 16)], false, Err(e));
            };
            let buf = match seen {
                Some((offered, taken)) => {
                    prop_assert_eq!(offered, max.min(avail), "bytes offered");
                    taken
                }
                None => Vec::new(),
            };
            model.read(s, &buf, false, Ok(got))?;
        }
        Op::ReadHeld(_, n) => {
            // Never arms: nothing there now is `Ok(0)`.
            let mut buf = vec![0u8; n];
            let got = ep.read_held(&mut buf);
            let w = n.min(model.rings[r].bytes.len());
            prop_assert_eq!(got, Ok(w));
            model.rings[r].held += w;
            model.take(s, &buf[..w])?;
        }
        Op::RecvHeld(_, n) => {
            // Never arms: too few bytes now is `Ok(false)`.
            let mut buf = vec![0u8; n];
            let got = ep.recv_held(&mut buf);
            let ring = &model.rings[r];
            let capacity = ring.capacity;
            if n > capacity {
                prop_assert_eq!(got, Err(Error::TooLarge { len: n, capacity }));
            } else if n > ring.bytes.len() {
                prop_assert_eq!(got, Ok(false));
            } else {
                prop_assert_eq!(got, Ok(true));
                model.rings[r].held += n;
                model.take(s, &buf)?;
            }
        }
        Op::Release(_) => {
            let ring = &mut model.rings[r];
            let want = match ring.held {
                0 => Transfer::NOTHING,
                len => Transfer {
                    len,
                    notify: ring.writer_wants_read,
                },
            };
            prop_assert_eq!(ep.release(), Ok(want), "release");
            if ring.held > 0 {
                ring.writer_wants_read = false;
                ring.give_back();
            }
        }
    }
    Ok(())
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
        held: 0,
        capacity: 1 << order,
        // The server's set-up asks for the client's first write, the
        // client's connect for the server's.
        reader_wants_write: true,
        writer_wants_read: false,
        produced: 0,
        released: 0,
    };
    let mut model = Model {
        rings: [ring(orders.left()), ring(orders.right())],
        next: 0,
    };

    for op in &ops {
        let ep = match op.side() {
            Side::Server => &mut server,
            Side::Client => &mut client,
        };
        step(&mut model, ep, op)
            .and_then(|()| model.check(mem, start, [server.held(), client.held()]))
            .map_err(|e| match e {
                // Name the operation that went wrong.
                TestCaseError::Fail(why) => TestCaseError::fail(format!("{op:?}: {why}")),
                other => other,
            })?;
    }
    // The server gives back what it holds; the client's close gives back
    // what it holds.
    step(&mut model, &mut server, &Op::Release(Side::Server))?;
    let left: Vec<u8> = model.rings[0].bytes.iter().copied().collect();
    prop_assert_eq!(
        client.close(),
        Ok(Transfer {
            len: 0,
            notify: true
        })
    );
    model.rings[1].give_back();
    model.check(mem, start, [server.held(), 0])?;
    // Close and drain: the server reads what is left, then EOF.
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
        let _deadline = Deadline::new("vchan_model::endpoints_match_the_model", Duration::from_secs(300));
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
        let _deadline = Deadline::new("vchan_model::two_threads_stream_checksummed", Duration::from_secs(300));
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
