//! Hostile-peer stress: millions of random mutations of the shared state,
//! each followed by one operation of ours, and a count of every outcome.
//!
//! ```sh
//! cargo run --release -p ring-tests --example hostile_stress -- [MUTATIONS]
//! ```
//!
//! A poisoned endpoint is replaced by a fresh pair over freshly set-up
//! memory, so the run keeps probing healthy states. Any outcome outside
//! the contract (an unexpected error kind, a transfer longer than its
//! buffer) stops the run with a non-zero exit; a panic would too.

use ring_core::mem::{RawMem, SharedMem};
use ring_core::vchan::{self, Endpoint, Error, Orders, ServerOptions};
use ring_core::vmbus::{self, IncomingRing, OutgoingPacket, OutgoingRing, RingLayout};
use std::sync::atomic::AtomicU64;
use std::time::Instant;

/// xorshift64*: fast, deterministic, good enough to pick offsets and values.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[derive(Default, Debug)]
struct Outcomes {
    ok: u64,
    would_block: u64,
    closed: u64,
    too_large: u64,
    corrupt: u64,
    fresh_pairs: u64,
}

fn vchan_stress(mutations: u64, seed: u64) -> Result<Outcomes, String> {
    let orders = Orders::new(12, 11).map_err(|e| e.to_string())?;
    let layout = vchan::FlatLayout::new(orders);
    let words: Vec<AtomicU64> = (0..layout.size / 8).map(|_| AtomicU64::new(0)).collect();
    let mem = RawMem::from_atomics(&words);
    let fresh = || -> Result<(Endpoint<RawMem<'_>>, Endpoint<RawMem<'_>>), String> {
        let s =
            vchan::serve_flat(mem, orders, ServerOptions::default()).map_err(|e| e.to_string())?;
        let c = vchan::connect_flat(mem).map_err(|e| e.to_string())?;
        Ok((s, c))
    };
    let (mut server, mut client) = fresh()?;
    let mut rng = Rng(seed | 1);
    let mut out = Outcomes {
        fresh_pairs: 1,
        ..Outcomes::default()
    };
    let mut buf = vec![0u8; 8192];
    for _ in 0..mutations {
        let r = rng.next();
        // The peer's move: one word of the header, a live or notify byte,
        // or a plausible index (small offsets from the current value).
        let offset = (r as usize % 6) * 4;
        let value = match (r >> 8) % 4 {
            0 => (r >> 32) as u32,
            1 => mem
                .load_u32(offset)
                .unwrap_or(0)
                .wrapping_add((r >> 40) as u32 % 64),
            2 => mem
                .load_u32(offset)
                .unwrap_or(0)
                .wrapping_sub((r >> 40) as u32 % 64),
            _ => mem.load_u32(offset).unwrap_or(0) ^ (1 << ((r >> 40) % 32)),
        };
        mem.store_u32(offset, value).map_err(|e| e.to_string())?;
        let ep = if (r >> 16) & 1 == 0 {
            &mut server
        } else {
            &mut client
        };
        let n = (r >> 20) as usize % buf.len();
        let result = match (r >> 33) % 4 {
            0 => ep.read(&mut buf[..n]),
            1 => ep.write(&buf[..n]),
            2 => ep.recv(&mut buf[..n]),
            _ => ep.send(&buf[..n]),
        };
        match result {
            Ok(t) if t.len <= n => out.ok += 1,
            Ok(t) => {
                return Err(format!(
                    "transfer of {} bytes into a {n}-byte buffer",
                    t.len
                ))
            }
            Err(Error::WouldBlock) => out.would_block += 1,
            Err(Error::Closed) => out.closed += 1,
            Err(Error::TooLarge { len, capacity }) if len > capacity => out.too_large += 1,
            Err(Error::Corrupt(_)) => out.corrupt += 1,
            Err(e) => return Err(format!("outcome outside the contract: {e:?}")),
        }
        if server.poisoned().is_some()
            || client.poisoned().is_some()
            || matches!(result, Err(Error::Closed))
        {
            (server, client) = fresh()?;
            out.fresh_pairs += 1;
        }
    }
    Ok(out)
}

fn vmbus_stress(mutations: u64, seed: u64) -> Result<Outcomes, String> {
    use vmbus::layout::READ_INDEX;
    let layout = RingLayout::new(4096, 8192).map_err(|e| e.to_string())?;
    let words: Vec<AtomicU64> = (0..layout.total_size() / 8)
        .map(|_| AtomicU64::new(0))
        .collect();
    let mem = RawMem::from_atomics(&words);
    let fresh = || -> Result<(OutgoingRing<RawMem<'_>>, IncomingRing<RawMem<'_>>), String> {
        vmbus::initialize_ring(&mem, layout).map_err(|e| e.to_string())?;
        let tx = OutgoingRing::new(mem, layout).map_err(|e| e.to_string())?;
        let rx = IncomingRing::new(mem, layout).map_err(|e| e.to_string())?;
        Ok((tx, rx))
    };
    let (mut tx, mut rx) = fresh()?;
    let mut rng = Rng(seed | 1);
    let mut out = Outcomes {
        fresh_pairs: 1,
        ..Outcomes::default()
    };
    let payload = vec![0u8; 9000];
    let mut buf = vec![0u8; 8192];
    for _ in 0..mutations {
        let r = rng.next();
        // The peer's move: a control word (indices, mask, pending send
        // size, feature bits) or a word of the packet the reader is at.
        let offset = match r % 6 {
            0 => 0x00,
            1 => 0x04,
            2 => 0x08,
            3 => 0x0C,
            4 => 0x40,
            _ => {
                let read = mem.load_u32(READ_INDEX).unwrap_or(0) as usize;
                let word = (r >> 3) as usize % 4;
                layout.data_offset() + ((read & !7) + 4 * word) % 8192
            }
        };
        let old = mem.load_u32(offset).unwrap_or(0);
        let value = match (r >> 8) % 4 {
            0 => (r >> 32) as u32,
            1 => old.wrapping_add(8 * ((r >> 40) as u32 % 16)),
            2 => old.wrapping_sub(8 * ((r >> 40) as u32 % 16)),
            _ => old ^ (1 << ((r >> 40) % 32)),
        };
        mem.store_u32(offset, value).map_err(|e| e.to_string())?;
        let n = (r >> 20) as usize % payload.len();
        let result = match (r >> 33) % 4 {
            0 => tx
                .write(&OutgoingPacket::in_band(r, &[&payload[..n]]))
                .map(|()| 0),
            1 => tx.commit().map(|t| t.ring_bytes),
            2 => rx.read_packet().and_then(|p| {
                let len = p.payload_len();
                p.read_payload(0, &mut buf[..len]).map(|()| len)
            }),
            _ => rx.commit().map(|t| t.ring_bytes),
        };
        match result {
            Ok(_) => out.ok += 1,
            Err(vmbus::Error::Empty | vmbus::Error::Full { .. }) => out.would_block += 1,
            Err(vmbus::Error::TooLarge { len, max }) if len > max => out.too_large += 1,
            Err(vmbus::Error::Corrupt(_)) => out.corrupt += 1,
            Err(e) => return Err(format!("outcome outside the contract: {e:?}")),
        }
        if tx.poisoned().is_some() || rx.poisoned().is_some() {
            (tx, rx) = fresh()?;
            out.fresh_pairs += 1;
        }
    }
    Ok(out)
}

fn main() {
    let mutations: u64 = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 10_000_000,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("usage: hostile_stress [MUTATIONS]");
            std::process::exit(2);
        }
    };
    println!("| protocol | mutations | Ok | WouldBlock | Closed | TooLarge | Corrupt | fresh pairs | seconds |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let started = Instant::now();
    match vchan_stress(mutations, 0x5eed_1234_abcd_0001) {
        Ok(o) => {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "| vchan | {mutations} | {} | {} | {} | {} | {} | {} | {secs:.1} |",
                o.ok, o.would_block, o.closed, o.too_large, o.corrupt, o.fresh_pairs
            );
        }
        Err(e) => {
            eprintln!("hostile_stress: vchan: {e}");
            std::process::exit(1);
        }
    }
    // VMBus: "WouldBlock" counts Empty and Full; it has no Closed.
    let started = Instant::now();
    match vmbus_stress(mutations, 0x5eed_1234_abcd_0002) {
        Ok(o) => {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "| vmbus | {mutations} | {} | {} | – | {} | {} | {} | {secs:.1} |",
                o.ok, o.would_block, o.too_large, o.corrupt, o.fresh_pairs
            );
        }
        Err(e) => {
            eprintln!("hostile_stress: vmbus: {e}");
            std::process::exit(1);
        }
    }
}
