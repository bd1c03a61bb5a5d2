//! A hostile peer scribbles on the vchan header between the individual
//! memory accesses of our calls while we read, write, send and receive,
//! plain, held or gathered. Only `Ok`, `WouldBlock`, `Closed`, `TooLarge`,
//! `Held` or `Corrupt` may come back, a transfer never exceeds its buffer,
//! and corruption latches. Held bytes are accounted exactly: held reads
//! add what they return, anything that completes a read or write (or a
//! release, or close) gives them all back, `Held` is returned only by a
//! call that would arm, with the count held, and changes nothing; and
//! held calls never arm, so never say `WouldBlock`.
#![no_main]

mod common;

use common::Input;
use libfuzzer_sys::fuzz_target;
use ring_core::vchan::{self, Error, Orders, ServerOptions, Transfer};
use ring_std::hostile::HostileMem;
use ring_std::HeapMem;

/// Cuts `data` into pieces at points the input picks (empty pieces
/// included); they always add up to all of `data`.
fn pieces<'a>(input: &mut Input<'_>, data: &'a [u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    for _ in 0..input.u8() % 6 {
        let (piece, tail) = rest.split_at(usize::from(input.u16()) % (rest.len() + 1));
        out.push(piece);
        rest = tail;
    }
    out.push(rest);
    out
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let (left, right) = (10 + input.u8() % 4, 10 + input.u8() % 4);
    let Ok(orders) = Orders::new(left, right) else {
        return;
    };
    let as_server = input.u8() & 1 == 0;
    let start = input.u32();
    let script = input.script(24);
    let heap = HeapMem::new(vchan::FlatLayout::new(orders).size);
    let hostile = HostileMem::new(&heap, 0, 24, script);
    let options = ServerOptions {
        initial_index: start,
    };
    let (Ok(server), Ok(client)) = (
        vchan::serve_flat(&hostile, orders, options),
        vchan::connect_flat(&hostile),
    ) else {
        return;
    };
    let mut ep = if as_server { server } else { client };
    let mut buf = vec![0u8; 1 << 15];
    let mut latched = None;
    while !input.is_empty() {
        let op = input.u8() % 11;
        let n = usize::from(input.u16()) % buf.len();
        let held = ep.held();
        let r = match op {
            0 => ep.read(&mut buf[..n]),
            1 => ep.write(&buf[..n]),
            2 => ep.recv(&mut buf[..n]),
            3 => ep.send(&buf[..n]),
            4 => ep.close(),
            5 => ep
                .data_ready()
                .and_then(|_| ep.buffer_space())
                .map(|_| Transfer::NOTHING),
            6 => ep
                .read_held(&mut buf[..n])
                .map(|len| Transfer { len, notify: false }),
            7 => ep.recv_held(&mut buf[..n]).map(|whole| Transfer {
                len: if whole { n } else { 0 },
                notify: false,
            }),
            8 => ep.release(),
            9 => ep.write_vectored(&pieces(&mut input, &buf[..n])),
            _ => ep.send_vectored(&pieces(&mut input, &buf[..n])),
        };
        let gives_back = matches!(op, 0..=3 | 9 | 10);
        match r {
            Ok(t) => {
                assert!(t.len <= n || op == 8);
                match op {
                    // Held reads add exactly what they took.
                    6 | 7 => assert_eq!(ep.held(), held + t.len),
                    8 => {
                        assert_eq!(t.len, held, "release gives back all that was held");
                        assert_eq!(ep.held(), 0);
                    }
                    4 => assert_eq!(ep.held(), 0, "close gives held bytes back"),
                    _ if gives_back && t.len > 0 => {
                        assert_eq!(ep.held(), 0, "a completing call gives held bytes back")
                    }
                    _ => assert_eq!(ep.held(), held),
                }
            }
            Err(Error::Held { len }) => {
                assert!(
                    gives_back,
                    "only a call that would arm refuses for held bytes"
                );
                assert!(
                    len > 0 && len == held,
                    "Held {{ len: {len} }} with {held} held"
                );
                assert_eq!(ep.held(), held);
            }
            Err(Error::WouldBlock) => {
                assert!(!matches!(op, 6..=8), "held calls and release never arm");
                assert_eq!(held, 0, "armed while holding bytes");
            }
            Err(Error::Closed | Error::Corrupt(_)) => {}
            Err(Error::TooLarge { len, capacity }) => assert!(len > capacity),
            Err(e) => panic!("unexpected error {e:?}"),
        }
        assert!(ep.held() <= ep.read_capacity());
        if let Some(p) = latched {
            assert_eq!(ep.poisoned(), Some(p), "corruption must latch");
        }
        latched = ep.poisoned();
    }
});
