//! The VMBus pipe's in-place calls against its copying ones: random mixes
//! of `write_bytes`/`write_with` and `read_bytes`/`read_with` over small
//! rings at random starting offsets must carry one stream intact, with
//! every byte offered only inside the ring's data area, "full" only when
//! not even a short packet fits, "empty" only when every written byte has
//! been read, and the end of stream after the last byte.

use proptest::prelude::*;
use ring_core::loan::{total, Span};
use ring_core::mem::{RawMem, SharedMem};
use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
use ring_core::vmbus::{initialize_ring, Error, IncomingRing, OutgoingRing, RingLayout};
use ring_model_tests::{proptest_config, stream_byte, Deadline};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Smallest packet a pipe writes for `n` ≥ 1 data bytes, trailer included:
/// descriptor, pipe header, 8 data bytes, trailer.
const SHORT_PACKET: usize = 16 + 8 + 8 + 8;

#[derive(Clone, Debug)]
enum Op {
    Write(usize),
    /// Offered up to `.0` bytes, the closure fills `.1` of them.
    WriteWith(usize, usize),
    Read(usize),
    /// Offered up to `.0` bytes, the closure takes `.1` of them.
    ReadWith(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let len = prop_oneof![1usize..64, 1usize..9000, Just(usize::MAX)];
    let moved = prop_oneof![Just(0usize), 0usize..64, 0usize..40_000, Just(usize::MAX)];
    (len, moved, 0..4u8).prop_map(|(n, k, which)| match which {
        0 => Op::Write(n.min(40_000)),
        1 => Op::WriteWith(n, k),
        2 => Op::Read(n.min(40_000)),
        _ => Op::ReadWith(n, k),
    })
}

/// Copies the spans out of `mem`, checking each lies in the data area.
fn span_bytes(mem: &RawMem<'_>, layout: RingLayout, spans: &[Span]) -> Vec<u8> {
    let data = layout.data_offset()..layout.data_offset() + layout.data_size() as usize;
    let mut out = Vec::new();
    for s in spans {
        assert!(s.len > 0, "empty span offered");
        assert!(
            data.contains(&s.offset) && s.offset + s.len <= data.end,
            "span {s:?} outside the data area {data:?}"
        );
        let mut piece = vec![0u8; s.len];
        mem.read(s.offset, &mut piece).unwrap();
        out.extend(piece);
    }
    out
}

struct Stream {
    seed: u64,
    written: u64,
    read: u64,
}

impl Stream {
    fn next(&self, n: usize) -> Vec<u8> {
        (0..n as u64)
            .map(|i| stream_byte(self.seed, self.written + i))
            .collect()
    }

    fn check(&mut self, got: &[u8]) -> Result<(), TestCaseError> {
        for (i, &b) in got.iter().enumerate() {
            let at = self.read + i as u64;
            prop_assert_eq!(b, stream_byte(self.seed, at), "byte {} of the stream", at);
        }
        self.read += got.len() as u64;
        prop_assert!(self.read <= self.written, "read more than was written");
        Ok(())
    }
}

fn run(data_size: usize, start: u32, seed: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let layout = RingLayout::new(4096, data_size).unwrap();
    let words: Vec<AtomicU64> = (0..layout.total_size() / 8)
        .map(|_| AtomicU64::new(0))
        .collect();
    let mem = RawMem::from_atomics(&words);
    initialize_ring(&mem, layout).unwrap();
    // Start both indices part-way round the ring, so packets wrap early.
    let start = (start as usize % data_size) & !7;
    mem.store_u32(0, start as u32).unwrap();
    mem.store_u32(4, start as u32).unwrap();
    let mut w = PipeWriter::new(OutgoingRing::new(mem, layout).unwrap());
    let mut r = PipeReader::new(IncomingRing::new(mem, layout).unwrap());
    let mut stream = Stream {
        seed,
        written: 0,
        read: 0,
    };

    let full = |w: &mut PipeWriter<RawMem<'_>>| -> Result<(), TestCaseError> {
        let avail = w.ring().available().unwrap();
        prop_assert!(avail < SHORT_PACKET, "full with {avail} bytes available");
        Ok(())
    };
    for op in ops {
        match *op {
            Op::Write(n) => match w.write_bytes(&stream.next(n)) {
                Ok(t) => {
                    prop_assert!(t.len > 0);
                    stream.written += t.len as u64;
                }
                Err(Error::Full { .. }) => full(&mut w)?,
                Err(e) => prop_assert!(false, "write_bytes: {e:?}"),
            },
            Op::WriteWith(max, fill) => {
                let data = stream.next(max.min(1 << 17));
                let mut called = false;
                let got = w.write_with(max, |m, spans| {
                    called = true;
                    let offered = total(spans);
                    assert!(offered <= max, "offered {offered} of at most {max}");
                    let _ = span_bytes(m, layout, spans);
                    let k = fill.min(offered);
                    let mut rest = &data[..k];
                    for s in spans {
                        let (piece, tail) = rest.split_at(s.len.min(rest.len()));
                        m.write(s.offset, piece).unwrap();
                        rest = tail;
                    }
                    // Claiming more than offered (usize::MAX) is clamped.
                    fill.max(k)
                });
                match got {
                    Ok(t) => {
                        prop_assert!(called);
                        stream.written += t.len as u64;
                    }
                    Err(Error::Full { .. }) => {
                        prop_assert!(!called, "fill called, then full");
                        full(&mut w)?;
                    }
                    Err(e) => prop_assert!(false, "write_with: {e:?}"),
                }
            }
            Op::Read(n) => {
                let mut buf = vec![0u8; n];
                match r.read_bytes(&mut buf) {
                    Ok(t) => {
                        prop_assert!(t.len > 0, "end of stream before its mark");
                        stream.check(&buf[..t.len])?;
                    }
                    Err(Error::Empty) => prop_assert_eq!(stream.read, stream.written),
                    Err(e) => prop_assert!(false, "read_bytes: {e:?}"),
                }
            }
            Op::ReadWith(max, take) => {
                let mut seen = Vec::new();
                let got = r.read_with(max, |m, spans| {
                    let bytes = span_bytes(m, layout, spans);
                    assert!(bytes.len() <= max);
                    let k = take.min(bytes.len());
                    seen.extend_from_slice(&bytes[..k]);
                    take.max(k)
                });
                match got {
                    Ok(Some(t)) => {
                        prop_assert_eq!(t.len, seen.len());
                        stream.check(&seen)?;
                    }
                    Ok(None) => prop_assert!(false, "end of stream before its mark"),
                    Err(Error::Empty) => {
                        prop_assert!(seen.is_empty());
                        prop_assert_eq!(stream.read, stream.written);
                    }
                    Err(e) => prop_assert!(false, "read_with: {e:?}"),
                }
            }
        }
    }

    // End the stream and read the rest, alternating the two read calls.
    let mut buf = vec![0u8; 3000];
    let mut ended = false;
    for round in 0.. {
        prop_assert!(round < 100_000, "the rest of the stream never came");
        if !ended {
            match w.write_eof() {
                Ok(_) => ended = true,
                Err(Error::Full { .. }) => {}
                Err(e) => prop_assert!(false, "write_eof: {e:?}"),
            }
        }
        let got = if round % 2 == 0 {
            r.read_bytes(&mut buf).map(|t| {
                let n = t.len;
                (n, buf[..n].to_vec())
            })
        } else {
            let mut seen = Vec::new();
            r.read_with(usize::MAX, |m, spans| {
                seen = span_bytes(m, layout, spans);
                seen.len()
            })
            .map(|t| {
                let n = t.map_or(0, |t| t.len);
                (n, seen)
            })
        };
        match got {
            Ok((0, _)) if ended => break,
            Ok((0, _)) => prop_assert!(false, "end before the mark was written"),
            Ok((_, bytes)) => stream.check(&bytes)?,
            Err(Error::Empty) => prop_assert!(!ended, "empty after the end mark"),
            Err(e) => prop_assert!(false, "draining: {e:?}"),
        }
    }
    prop_assert_eq!(stream.read, stream.written, "bytes lost");
    prop_assert!(r.is_eof());
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config("vmbus_in_place", 256))]

    #[test]
    fn in_place_and_copying_calls_carry_one_stream(
        pages in 1usize..=16,
        start in any::<u32>(),
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let _deadline = Deadline::new("vmbus_in_place::in_place_and_copying_calls_carry_one_stream", Duration::from_secs(300));
        run(pages * 4096, start, seed, &ops)?;
    }
}

#[test]
fn a_reader_taking_one_byte_at_a_time_walks_many_packets() {
    let _deadline = Deadline::new(
        "vmbus_in_place::a_reader_taking_one_byte_at_a_time_walks_many_packets",
        Duration::from_secs(300),
    );
    let ops: Vec<Op> = std::iter::once(Op::WriteWith(usize::MAX, usize::MAX))
        .chain((0..5000).map(|_| Op::ReadWith(usize::MAX, 1)))
        .collect();
    run(8192, 4000, 7, &ops).unwrap();
}

#[test]
fn a_serializer_writes_straight_into_pipe_packets_and_a_parser_reads_them() {
    let _deadline = Deadline::new(
        "vmbus_in_place::a_serializer_writes_straight_into_pipe_packets_and_a_parser_reads_them",
        Duration::from_secs(300),
    );
    use embedded_io::{Read, Write};
    use ring_core::loan::{SpanReader, SpanWriter};
    let layout = RingLayout::new(4096, 65536).unwrap();
    let words: Vec<AtomicU64> = (0..layout.total_size() / 8)
        .map(|_| AtomicU64::new(0))
        .collect();
    let mem = RawMem::from_atomics(&words);
    initialize_ring(&mem, layout).unwrap();
    let mut w = PipeWriter::new(OutgoingRing::new(mem, layout).unwrap());
    let mut r = PipeReader::new(IncomingRing::new(mem, layout).unwrap());
    // 3 000 records of text, written in place across several packets (the
    // writer offers up to 32 packets' data areas as one run of spans).
    let mut expect = Vec::new();
    let t = w
        .write_with(40_000, |m, spans| {
            let mut out = SpanWriter::new(m, spans);
            for i in 0..3000 {
                if write!(out, "{i:04};").is_err() {
                    break;
                }
                expect.extend_from_slice(format!("{i:04};").as_bytes());
            }
            out.len()
        })
        .unwrap();
    assert_eq!(t.len, expect.len());
    assert!(t.len > 4096 * 2, "several packets: {}", t.len);
    let mut got = vec![0u8; expect.len()];
    let t = r
        .read_with(usize::MAX, |m, spans| {
            let mut input = SpanReader::new(m, spans);
            let n = input.read(&mut got).unwrap();
            assert_eq!(input.read(&mut [0u8; 1]).unwrap(), 0);
            n
        })
        .unwrap()
        .unwrap();
    assert_eq!(t.len, expect.len());
    assert!(got == expect);
}
