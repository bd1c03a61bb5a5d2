//! One thread writes and reads back 64-byte chunks through a ring (over a
//! memfd, the memory the benchmarks and the `ring` command use), for
//! counting instructions per operation under callgrind (deterministic,
//! unlike timings on a shared machine):
//!
//! ```text
//! cargo build --release -p ring-cli --example ops_profile
//! valgrind --tool=callgrind target/release/examples/ops_profile vchan 100000
//! ```
//!
//! Run it with two counts and divide the difference in `Ir` by the
//! difference in counts: that is instructions per write + read.

use ring_core::vchan::{self, Orders, ServerOptions};
use ring_core::vmbus::{self, IncomingRing, OutgoingPacket, OutgoingRing, RingLayout};
use ring_hosted::memfd::MemFd;
use std::sync::Arc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("vchan");
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let chunk: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    let src = vec![0x5au8; chunk];
    let mut dst = vec![0u8; chunk];
    let t0 = std::time::Instant::now();
    match what {
        "vchan" => {
            let orders = Orders::new(16, 16).unwrap();
            let mem =
                Arc::new(MemFd::create("profile", vchan::FlatLayout::new(orders).size).unwrap());
            let mut s = vchan::serve_flat(mem.clone(), orders, ServerOptions::default()).unwrap();
            let mut c = vchan::connect_flat(mem).unwrap();
            for _ in 0..n {
                let t = s.write(&src).unwrap();
                assert_eq!(t.len, chunk);
                let t = c.read(&mut dst).unwrap();
                assert_eq!(t.len, chunk);
            }
        }
        "vmbus" => {
            let layout = RingLayout::new(4096, 1 << 16).unwrap();
            let mem = Arc::new(MemFd::create("profile", layout.total_size()).unwrap());
            vmbus::initialize_ring(&mem, layout).unwrap();
            let mut out = OutgoingRing::new(mem.clone(), layout).unwrap();
            let mut inc = IncomingRing::new(mem, layout).unwrap();
            inc.set_interrupts(false);
            let pieces: [&[u8]; 1] = [&src];
            for i in 0..n {
                let _ = out.send(&OutgoingPacket::in_band(i, &pieces)).unwrap();
                let p = inc.read_packet().unwrap();
                p.read_payload(0, &mut dst).unwrap();
                let _ = inc.commit().unwrap();
            }
        }
        "rtrb" => {
            let (mut tx, mut rx) = rtrb::RingBuffer::<u8>::new(1 << 16);
            for _ in 0..n {
                let c = tx.write_chunk_uninit(chunk).unwrap();
                assert_eq!(c.fill_from_iter(src.iter().copied()), chunk);
                let c = rx.read_chunk(chunk).unwrap();
                let (a, b) = c.as_slices();
                let (da, db) = dst.split_at_mut(a.len());
                da.copy_from_slice(a);
                db.copy_from_slice(b);
                c.commit_all();
            }
        }
        other => panic!("unknown ring {other} (vchan, vmbus, rtrb)"),
    }
    std::hint::black_box(&dst);
    let ns = t0.elapsed().as_nanos() as f64 / n as f64;
    println!("{what}: {ns:.1} ns per {chunk}-byte write + read, one thread");
}
