//! One thread writes a message and reads it back, `N` times, through the
//! core's non-blocking calls: the data path without any waiting, so an
//! instruction counter (callgrind) gives a deterministic cost per
//! operation. `scripts/op-cost` runs it at two counts and prints the
//! difference per message.
//!
//! ```text
//! cargo run --release -p ring-model-tests --example op_cost -- vchan 64 10000
//! ```

use ring_core::loan::{SpanReader, SpanWriter};
use ring_core::vchan::{self, Orders, ServerOptions};
use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(kind), Some(size), Some(n)) = (
        args.first(),
        args.get(1).and_then(|s| s.parse::<usize>().ok()),
        args.get(2).and_then(|s| s.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: op_cost vchan|vchan-in-place|vmbus|vmbus-in-place SIZE COUNT");
        return ExitCode::from(2);
    };
    match run(kind, size, n) {
        Ok(sum) => {
            // The checksum keeps the copies from being optimised away.
            println!("{kind} {size} x {n}: checksum {sum:#x}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("op_cost: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(kind: &str, size: usize, n: u64) -> Result<u64, String> {
    let msg: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
    let mut back = vec![0u8; size];
    let mut sum = 0u64;
    let e = |e: &dyn std::fmt::Display| e.to_string();
    // Every write and read must move the whole message.
    let whole = |wrote: usize, read: Option<usize>| match read {
        Some(r) if wrote == size && r == size => Ok(()),
        _ => Err(format!("moved {wrote} and {read:?} of {size} bytes")),
    };
    match kind {
        "vchan" | "vchan-in-place" => {
            let orders = Orders::for_sizes(64 << 10, 64 << 10).map_err(|x| e(&x))?;
            let mem = Arc::new(ring_std::HeapMem::new(vchan::FlatLayout::new(orders).size));
            let mut a = vchan::serve_flat(mem.clone(), orders, ServerOptions::default())
                .map_err(|x| e(&x))?;
            let mut b = vchan::connect_flat(mem).map_err(|x| e(&x))?;
            let in_place = kind == "vchan-in-place";
            for _ in 0..n {
                if in_place {
                    let t = a
                        .write_with(size, |m, s| {
                            let mut w = SpanWriter::new(m, s);
                            w.write_at(0, &msg).map_or(0, |()| w.len())
                        })
                        .map_err(|x| e(&x))?;
                    let u = b
                        .read_with(size, |m, s| {
                            let r = SpanReader::new(m, s);
                            r.read_at(0, &mut back).map_or(0, |()| size)
                        })
                        .map_err(|x| e(&x))?;
                    whole(t.len, u.map(|u| u.len))?;
                } else {
                    let t = a.write(&msg).map_err(|x| e(&x))?;
                    let u = b.read(&mut back).map_err(|x| e(&x))?;
                    whole(t.len, Some(u.len))?;
                }
                sum = sum.wrapping_add(u64::from(back[size / 2]));
            }
        }
        "vmbus" | "vmbus-in-place" => {
            let ((_, a_out), (b_in, _)) =
                ring_std::vmbus::ring_pairs(64 << 10).map_err(|x| e(&x))?;
            let mut w = PipeWriter::new(a_out);
            let mut r = PipeReader::new(b_in);
            let in_place = kind == "vmbus-in-place";
            for _ in 0..n {
                if in_place {
                    let t = w
                        .write_with(size, |m, s| {
                            let mut sw = SpanWriter::new(m, s);
                            sw.write_at(0, &msg).map_or(0, |()| sw.len())
                        })
                        .map_err(|x| e(&x))?;
                    let u = r
                        .read_with(size, |m, s| {
                            let sr = SpanReader::new(m, s);
                            sr.read_at(0, &mut back).map_or(0, |()| size)
                        })
                        .map_err(|x| e(&x))?;
                    whole(t.len, u.map(|u| u.len))?;
                } else {
                    // A message goes whole or not at all.
                    let _sent = w.write_message(&msg).map_err(|x| e(&x))?;
                    let u = r.read_message(&mut back).map_err(|x| e(&x))?;
                    whole(size, Some(u.len))?;
                }
                sum = sum.wrapping_add(u64::from(back[size / 2]));
            }
        }
        other => return Err(format!("unknown kind {other}")),
    }
    if back != msg {
        return Err("the message came back changed".into());
    }
    Ok(sum)
}
