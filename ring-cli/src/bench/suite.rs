//! The rows `ring bench` runs (the Rust contenders and the OS baselines),
//! and its command-line arguments.

use super::work::{Job, Kind};
use super::{render, Bench, Check, Config, Contender, Group, Metric, Place};
use std::path::PathBuf;
use std::time::Duration;

/// Spin re-tries before an event-mode side sleeps while streaming.
pub const STREAM_SPIN: u32 = 2000;

/// `ring bench` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Print Markdown tables (for docs/benchmarks.md).
    #[arg(long)]
    pub markdown: bool,
    /// Interleaved rounds per group.
    #[arg(long, default_value_t = 9)]
    pub rounds: usize,
    /// Length of one sample, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub sample_ms: u64,
    /// Only the headline groups (the targets), not the sweeps.
    #[arg(long)]
    pub quick: bool,
    /// Skip the cross-process rows.
    #[arg(long)]
    pub no_process: bool,
    /// Only groups whose title contains this text (repeatable).
    #[arg(long, value_name = "TEXT")]
    pub only: Vec<String>,
    /// Run as the peer process of a benchmark (internal).
    #[arg(long, hide = true, value_name = "SOCKET")]
    pub bench_peer: Option<PathBuf>,
}

/// Which groups to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selection {
    /// The chunk, order and payload sweeps too.
    pub sweeps: bool,
    /// Cross-process groups.
    pub process: bool,
}

fn job(kind: Kind, chunk: u32, ring: u32) -> Job {
    Job::new(kind, chunk, ring)
}

/// The groups of `ring bench`, in order.
pub fn groups(sel: Selection) -> Vec<Group<'static>> {
    use Kind::*;
    let t = Place::Thread;
    let p = Place::Process;
    let mut gs = Vec::new();

    // Headline: 64-byte messages across cores.
    let mut g = Group::new(
        "64-byte chunks, cross-thread, busy-polled (64 KiB rings)",
        Metric::Throughput,
    );
    let rtrb = g.add(Contender::job("rtrb", job(RtrbStream, 64, 65536), t));
    let vchan = g.add(Contender::job("vchan stream", job(VchanStream, 64, 16), t));
    let vmbus = g.add(Contender::job(
        "VMBus in-band, unbatched",
        job(VmbusStream, 64, 65536),
        t,
    ));
    let vmbus_drain = g.add(Contender::job(
        "VMBus in-band, unbatched, reader commits per drain (≤ 16)",
        job(VmbusStream, 64, 65536).reader_batched(16),
        t,
    ));
    g.add(Contender::job(
        "VMBus in-band, batch 16",
        job(VmbusStream, 64, 65536).batched(16),
        t,
    ));
    g.add(Contender::job(
        "rtrb, 16 chunks per commit",
        job(RtrbStream, 64, 65536).batched(16),
        t,
    ));
    let reader_held = g.add(Contender::job(
        "vchan stream, reader holds up to 16 reads",
        job(VchanStream, 64, 16).reader_batched(16),
        t,
    ));
    let held = g.add(Contender::job(
        "vchan stream, 16 per publish (write_vectored, read_held)",
        job(VchanStream, 64, 16).batched(16),
        t,
    ));
    g.add(Contender::job(
        "vchan stream, polling by re-trying read/write",
        job(VchanStream, 64, 16).retry(),
        t,
    ));
    g.add(Contender::job(
        "memcpy 64 B (one core)",
        job(Memcpy, 64, 0),
        t,
    ));
    g.add(Contender::job("Unix socket", job(SockStream, 64, 0), t));
    g.add(Contender::job("pipe", job(PipeStream, 64, 0), t));
    g.checks.push(Check::Ratio {
        a: vchan,
        b: rtrb,
        bound: 1.0,
    });
    g.checks.push(Check::Ratio {
        a: reader_held,
        b: rtrb,
        bound: 1.0,
    });
    g.checks.push(Check::Ratio {
        a: held,
        b: rtrb,
        bound: 1.0,
    });
    g.checks.push(Check::Ratio {
        a: vmbus,
        b: rtrb,
        bound: 0.8,
    });
    g.checks.push(Check::Ratio {
        a: vmbus_drain,
        b: rtrb,
        bound: 0.8,
    });
    g.checks.push(Check::QuietDataPath { a: vchan });
    g.checks.push(Check::QuietDataPath { a: vmbus });
    gs.push(g);

    if sel.process {
        let mut g = Group::new(
            "4 KiB chunks, cross-process (256 KiB rings)",
            Metric::Throughput,
        );
        let sock = g.add(Contender::job("Unix socket", job(SockStream, 4096, 0), p));
        let pipe = g.add(Contender::job("pipe", job(PipeStream, 4096, 0), p));
        let vchan = g.add(Contender::job(
            "vchan stream, eventfd",
            job(VchanStream, 4096, 18).event(STREAM_SPIN),
            p,
        ));
        let vpoll = g.add(Contender::job(
            "vchan stream, busy-polled",
            job(VchanStream, 4096, 18),
            p,
        ));
        let vmbus = g.add(Contender::job(
            "VMBus in-band, batch 16, eventfd",
            job(VmbusStream, 4096, 1 << 18)
                .batched(16)
                .event(STREAM_SPIN),
            p,
        ));
        g.add(Contender::job(
            "VMBus in-band, unbatched, eventfd",
            job(VmbusStream, 4096, 1 << 18).event(STREAM_SPIN),
            p,
        ));
        g.checks.push(Check::Ratio {
            a: vchan,
            b: sock,
            bound: 1.0,
        });
        g.checks.push(Check::Ratio {
            a: vchan,
            b: pipe,
            bound: 3.0,
        });
        g.checks.push(Check::KicksPer64K { a: vchan, max: 1.0 });
        g.checks.push(Check::KicksPer64K { a: vmbus, max: 1.0 });
        g.checks.push(Check::QuietDataPath { a: vpoll });
        gs.push(g);
    }

    // Streaming with real signals between threads: kicks per 64 KiB.
    let mut g = Group::new(
        "Streaming with eventfd signals, cross-thread (64 KiB rings)",
        Metric::Throughput,
    );
    g.add(Contender::job(
        "rtrb 4 KiB (no signals)",
        job(RtrbStream, 4096, 65536),
        t,
    ));
    let v4 = g.add(Contender::job(
        "vchan 4 KiB, eventfd",
        job(VchanStream, 4096, 16).event(STREAM_SPIN),
        t,
    ));
    let v64 = g.add(Contender::job(
        "vchan 64 B, eventfd",
        job(VchanStream, 64, 16).event(STREAM_SPIN),
        t,
    ));
    let m4 = g.add(Contender::job(
        "VMBus 4 KiB batch 4, eventfd",
        job(VmbusStream, 4096, 65536).batched(4).event(STREAM_SPIN),
        t,
    ));
    let m64 = g.add(Contender::job(
        "VMBus 64 B batch 16, eventfd",
        job(VmbusStream, 64, 65536).batched(16).event(STREAM_SPIN),
        t,
    ));
    for a in [v4, v64, m4, m64] {
        g.checks.push(Check::KicksPer64K { a, max: 1.0 });
    }
    gs.push(g);

    // Round trips.
    for (place, label) in [(t, "cross-thread"), (p, "cross-process")] {
        if place == p && !sel.process {
            continue;
        }
        let mut g = Group::new(
            format!("64-byte round trip, busy-polled, {label}"),
            Metric::Latency,
        );
        let line = g.add(Contender::job(
            "cache-line ping-pong",
            job(LinePing, 64, 0),
            place,
        ));
        let v = g.add(Contender::job("vchan", job(VchanPing, 64, 12), place));
        let m = g.add(Contender::job("VMBus", job(VmbusPing, 64, 65536), place));
        let vh = g.add(Contender::job(
            "vchan, the reply gives the request back (recv_held)",
            job(VchanPing, 64, 12).batched(2),
            place,
        ));
        g.add(Contender::job(
            "vchan, polling by re-trying recv",
            job(VchanPing, 64, 12).retry(),
            place,
        ));
        g.add(Contender::job(
            "VMBus, reads committed after the next send (both sides)",
            job(VmbusPing, 64, 65536).batched(2),
            place,
        ));
        let m16 = g.add(Contender::job(
            "VMBus, reads committed every 16 (both sides)",
            job(VmbusPing, 64, 65536).batched(16),
            place,
        ));
        if place == t {
            g.add(Contender::job(
                "rtrb (indices on their own lines)",
                job(RtrbPing, 64, 65536),
                t,
            ));
        }
        g.checks.push(Check::Ratio {
            a: v,
            b: line,
            bound: 2.0,
        });
        g.checks.push(Check::Ratio {
            a: vh,
            b: line,
            bound: 2.0,
        });
        g.checks.push(Check::Ratio {
            a: m,
            b: line,
            bound: 2.0,
        });
        g.checks.push(Check::Ratio {
            a: m16,
            b: line,
            bound: 2.0,
        });
        g.checks.push(Check::QuietDataPath { a: v });
        g.checks.push(Check::QuietDataPath { a: vh });
        gs.push(g);

        let mut g = Group::new(
            format!("64-byte round trip, eventfd-blocking, {label}"),
            Metric::Latency,
        );
        let ev = g.add(Contender::job(
            "eventfd ping-pong",
            job(EventfdPing, 8, 0),
            place,
        ));
        let v = g.add(Contender::job(
            "vchan",
            job(VchanPing, 64, 12).event(0),
            place,
        ));
        let m = g.add(Contender::job(
            "VMBus",
            job(VmbusPing, 64, 65536).event(0),
            place,
        ));
        g.add(Contender::job("pipe", job(PipePing, 64, 0), place));
        g.add(Contender::job("Unix socket", job(SockPing, 64, 0), place));
        g.checks.push(Check::Ratio {
            a: v,
            b: ev,
            bound: 1.1,
        });
        g.checks.push(Check::Ratio {
            a: m,
            b: ev,
            bound: 1.1,
        });
        gs.push(g);
    }

    if sel.sweeps {
        for chunk in [64u32, 256, 1024, 4096, 16384, 65536] {
            let mut g = Group::new(
                format!("vchan {chunk}-byte chunks, cross-thread, 256 KiB rings"),
                Metric::Throughput,
            );
            g.add(Contender::job("rtrb", job(RtrbStream, chunk, 1 << 18), t));
            g.add(Contender::job(
                "vchan, busy-polled",
                job(VchanStream, chunk, 18),
                t,
            ));
            g.add(Contender::job(
                "vchan, eventfd",
                job(VchanStream, chunk, 18).event(STREAM_SPIN),
                t,
            ));
            g.add(Contender::job(
                "memcpy (one core)",
                job(Memcpy, chunk, 0),
                t,
            ));
            if sel.process {
                g.add(Contender::job(
                    "vchan, eventfd, cross-process",
                    job(VchanStream, chunk, 18).event(STREAM_SPIN),
                    p,
                ));
            }
            gs.push(g);
        }
        let mut g = Group::new(
            "vchan 4 KiB chunks by ring order, cross-thread, busy-polled",
            Metric::Throughput,
        );
        g.add(Contender::job(
            "rtrb 64 KiB",
            job(RtrbStream, 4096, 1 << 16),
            t,
        ));
        for order in [10u32, 12, 14, 16, 18, 20] {
            g.add(Contender::job(
                format!("vchan order {order}"),
                job(VchanStream, 4096, order),
                t,
            ));
        }
        gs.push(g);
        for payload in [64u32, 256, 1024, 4096] {
            let mut g = Group::new(
                format!("VMBus {payload}-byte in-band packets, 256 KiB rings"),
                Metric::Throughput,
            );
            g.add(Contender::job(
                "rtrb, same chunk",
                job(RtrbStream, payload, 1 << 18),
                t,
            ));
            g.add(Contender::job(
                "VMBus unbatched, thread",
                job(VmbusStream, payload, 1 << 18),
                t,
            ));
            g.add(Contender::job(
                "VMBus batch 16, thread",
                job(VmbusStream, payload, 1 << 18).batched(16),
                t,
            ));
            if sel.process {
                g.add(Contender::job(
                    "VMBus unbatched, process, eventfd",
                    job(VmbusStream, payload, 1 << 18).event(STREAM_SPIN),
                    p,
                ));
                g.add(Contender::job(
                    "VMBus batch 16, process, eventfd",
                    job(VmbusStream, payload, 1 << 18)
                        .batched(16)
                        .event(STREAM_SPIN),
                    p,
                ));
            }
            gs.push(g);
        }
    }
    gs
}

/// `ring bench`: runs the groups and prints them.
///
/// # Errors
///
/// If the harness cannot start.
pub fn run(args: BenchArgs) -> Result<(), String> {
    if let Some(socket) = &args.bench_peer {
        crate::parent::die_with_parent().map_err(|e| e.to_string())?;
        return super::link::peer_main(socket);
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let cfg = Config {
        rounds: args.rounds,
        sample: Duration::from_millis(args.sample_ms),
        peer_command: (!args.no_process)
            .then(|| (exe, vec!["bench".to_string(), "--bench-peer".to_string()])),
    };
    let sel = Selection {
        sweeps: !args.quick,
        process: !args.no_process,
    };
    let started = std::time::Instant::now();
    let load_before = super::load_average();
    let mut bench = Bench::new(cfg)?;
    println!("# ring bench: Rust contenders and OS baselines (the C rings run in `cargo bench -p ring-tests --bench rings`)");
    println!("# machine: {}", super::machine_line());
    let wanted =
        |title: &str| args.only.is_empty() || args.only.iter().any(|o| title.contains(o.as_str()));
    for g in groups(sel).into_iter().filter(|g| wanted(&g.title)) {
        let r = bench.run(g);
        print!("{}", render(std::slice::from_ref(r), args.markdown));
    }
    println!(
        "\n# load average before: {load_before}; after: {}; took {:.0} s",
        super::load_average(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
