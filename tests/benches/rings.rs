//! `cargo bench -p ring-tests --bench rings`: the C rings against ours on
//! the same memory with the same harness, then the headline rows of
//! `ring bench` again with allocations counted.
//!
//! - libxenvchan (Debian `libxen-dev`, linked statically through
//!   `c/xen_peer.c`) writer and reader vs ring-core's vchan, both over one
//!   memfd laid out as `FlatLayout`;
//! - DPDK's VMBus ring (`librte_bus_vmbus.a` through `c/dpdk_peer.c`)
//!   sender and receiver vs ring-core's VMBus rings over one ring buffer.
//!
//! Both sides busy-poll and kick the peer's eventfd whenever their
//! protocol says the peer asked (libxenvchan does that inside its write
//! and read; ours does it on `Transfer::notify`). Pass `--markdown` for
//! tables, `--quick` for a short run, `--only TEXT` to run only the groups
//! whose title contains TEXT.

use ring_cli::bench::work::{Job, Kind, Link, Sample, SideStats, Wire};
use ring_cli::bench::{
    self, render, suite, sys, Bench, Check, Config, Contender, Group, Metric, Place,
};
use ring_core::vchan::{self, FlatLayout, Orders, ServerOptions};
use ring_core::vmbus::{self, IncomingRing, OutgoingPacket, OutgoingRing};
use ring_tests::dpdk::{Ring, EAGAIN};
use ring_tests::xen::{kick_fd, take_events, CPeer, Shm, Wires};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::os::fd::AsFd;
use std::sync::Barrier;
use std::time::{Duration, Instant};

thread_local! {
    /// Allocations made by this thread (each side of a pair meters its own).
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

/// Counts allocations per thread for the "0 allocations per operation"
/// rows.
struct Counting;

// SAFETY: every method forwards its arguments unchanged to `System`, so
// `System`'s guarantees hold; the counter is an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: forwarded as received; `ptr` came from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.try_with(Cell::get).unwrap_or(0)
}

/// Runs `a` here and `b` on the other core; both do their set-up, meet
/// at the barrier, and run. The time from the barrier until both are done.
fn pair<A, B>(a: A, b: B) -> Result<Duration, String>
where
    A: FnOnce(&Barrier) -> Result<Instant, String>,
    B: FnOnce(&Barrier) -> Result<(), String> + Send,
{
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            sys::pin_to(1);
            b(&barrier)
        });
        let t0 = a(&barrier);
        let rb = h.join().map_err(|_| "peer thread panicked".to_string())?;
        rb?;
        Ok(t0?.elapsed())
    })
}

fn stream_sample(ops: u64, chunk: usize, elapsed: Duration) -> Sample {
    Sample {
        ops,
        bytes: ops * chunk as u64,
        elapsed,
        ..Sample::default()
    }
}

/// Kicks both sides sent during a sample: each kick adds one to an
/// eventfd counter nobody reads while we poll, so the counters are exact.
fn kicks(wires: &Wires) -> Result<u64, String> {
    let a = take_events(wires.rust_wake.as_fd()).map_err(|e| e.to_string())?;
    let b = take_events(wires.c_wake.as_fd()).map_err(|e| e.to_string())?;
    Ok(a + b)
}

/// libxenvchan writer and reader over `shm` (order `order` each way).
fn xen_stream(shm: &Shm, order: u8, chunk: usize, ops: u64) -> Result<Sample, String> {
    let wires = Wires::new().map_err(|e| e.to_string())?;
    let total = ops as usize * chunk;
    let server = CPeer::server(
        shm.fd(),
        order,
        order,
        0,
        wires.c_wake.as_fd(),
        wires.rust_wake.as_fd(),
    )
    .ok_or("libxenvchan server set-up failed")?;
    let elapsed = pair(
        |barrier| {
            let mut server = server;
            let buf = vec![0x5au8; chunk];
            barrier.wait();
            let t0 = Instant::now();
            let mut sent = 0;
            while sent < total {
                let n = (total - sent).min(chunk);
                match server.write(buf.get(..n).unwrap_or_default()) {
                    r if r > 0 => sent += r as usize,
                    0 => std::hint::spin_loop(),
                    r => return Err(format!("libxenvchan_write: {r}")),
                }
            }
            // Keep the server open until the reader is done: closing
            // would end the stream early.
            barrier.wait();
            Ok(t0)
        },
        |barrier| {
            let mut client = CPeer::client(shm.fd(), wires.rust_wake.as_fd(), wires.c_wake.as_fd())
                .ok_or("libxenvchan client set-up failed")?;
            let mut buf = vec![0u8; chunk];
            barrier.wait();
            let mut got = 0;
            while got < total {
                let n = (total - got).min(chunk);
                match client.read(buf.get_mut(..n).unwrap_or_default()) {
                    r if r > 0 => got += r as usize,
                    0 => std::hint::spin_loop(),
                    r => return Err(format!("libxenvchan_read: {r}")),
                }
            }
            barrier.wait();
            Ok(())
        },
    )?;
    let mut s = stream_sample(ops, chunk, elapsed);
    s.a.kicks = kicks(&wires)?;
    Ok(s)
}

/// ring-core's vchan over the same memory, polling the same way and
/// kicking when the peer asked, as libxenvchan does.
fn our_vchan_stream(shm: &Shm, order: u8, chunk: usize, ops: u64) -> Result<Sample, String> {
    let wires = Wires::new().map_err(|e| e.to_string())?;
    let total = ops as usize * chunk;
    let orders = Orders::new(order, order).map_err(|e| e.to_string())?;
    let mem = shm.mem();
    let server =
        vchan::serve_flat(mem, orders, ServerOptions::default()).map_err(|e| e.to_string())?;
    let elapsed = pair(
        |barrier| {
            let mut ep = server;
            let buf = vec![0x5au8; chunk];
            barrier.wait();
            let t0 = Instant::now();
            let mut sent = 0;
            while sent < total {
                let n = (total - sent).min(chunk);
                match ep.write(buf.get(..n).unwrap_or_default()) {
                    Ok(t) => {
                        sent += t.len;
                        if t.notify {
                            kick_fd(wires.c_wake.as_fd()).map_err(|e| e.to_string())?;
                        }
                    }
                    Err(vchan::Error::WouldBlock) => std::hint::spin_loop(),
                    Err(e) => return Err(e.to_string()),
                }
            }
            barrier.wait();
            Ok(t0)
        },
        |barrier| {
            let mut ep = vchan::connect_flat(mem).map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; chunk];
            barrier.wait();
            let mut got = 0;
            while got < total {
                let n = (total - got).min(chunk);
                match ep.read(buf.get_mut(..n).unwrap_or_default()) {
                    Ok(t) => {
                        got += t.len;
                        if t.notify {
                            kick_fd(wires.rust_wake.as_fd()).map_err(|e| e.to_string())?;
                        }
                    }
                    Err(vchan::Error::WouldBlock) => std::hint::spin_loop(),
                    Err(e) => return Err(e.to_string()),
                }
            }
            barrier.wait();
            Ok(())
        },
    )?;
    let mut s = stream_sample(ops, chunk, elapsed);
    s.a.kicks = kicks(&wires)?;
    Ok(s)
}

/// Custom job id of the cross-process libxenvchan stream.
const XEN_STREAM: u32 = 1;

/// libxenvchan's server (writer) here and its client (reader) in the peer
/// process, on the harness's shared memfd (flat layout at offset 0).
fn xen_stream_process(
    wire: &Wire,
    link: Option<&mut dyn Link>,
    order: u8,
    chunk: usize,
    ops: u64,
) -> Result<Sample, String> {
    let link = link.ok_or("no peer process")?;
    let e = |e: std::io::Error| e.to_string();
    take_events(wire.ev[0].as_fd()).map_err(e)?;
    take_events(wire.ev[1].as_fd()).map_err(e)?;
    let mut server = CPeer::server(
        wire.mem.as_fd(),
        order,
        order,
        0,
        wire.ev[0].as_fd(),
        wire.ev[1].as_fd(),
    )
    .ok_or("libxenvchan server set-up failed")?;
    let job = Job {
        ops,
        ..Job::new(Kind::Custom, chunk as u32, XEN_STREAM)
    };
    let buf = vec![0x5au8; chunk];
    let total = ops as usize * chunk;
    link.start(&job)?;
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < total {
        let n = (total - sent).min(chunk);
        match server.write(buf.get(..n).unwrap_or_default()) {
            r if r > 0 => sent += r as usize,
            0 => std::hint::spin_loop(),
            r => return Err(format!("libxenvchan_write: {r}")),
        }
    }
    let b = link.finish()?;
    let elapsed = t0.elapsed();
    drop(server);
    let mut s = stream_sample(ops, chunk, elapsed);
    s.b = b;
    s.a.kicks =
        take_events(wire.ev[0].as_fd()).map_err(e)? + take_events(wire.ev[1].as_fd()).map_err(e)?;
    Ok(s)
}

/// Custom job id of the cross-process DPDK stream.
const DPDK_STREAM: u32 = 2;

/// Data bytes of the cross-process VMBus ring (the harness's A→B ring).
const DPDK_DATA: usize = 1 << 18;

/// Maps the harness memfd and opens a DPDK handle on its A→B VMBus ring.
fn dpdk_on_wire(wire: &Wire) -> Result<(Shm, ring_tests::dpdk::Dpdk<'static>), String> {
    let fd = wire
        .mem
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| e.to_string())?;
    let shm = Shm::from_fd(fd).map_err(|e| e.to_string())?;
    let total = 4096 + DPDK_DATA;
    if shm.len() < bench::work::VMBUS_AT + total {
        return Err("shared memory too small for the VMBus ring".into());
    }
    // SAFETY: VMBUS_AT + total is within the mapping (checked above).
    let ring = unsafe { shm.as_ptr().add(bench::work::VMBUS_AT) };
    // SAFETY: the ring lies within `shm`'s mapping, which the caller keeps
    // (it is returned alongside, and dropped after the handle).
    let dpdk = unsafe { ring_tests::dpdk::Dpdk::from_raw(ring, total as u32) };
    Ok((shm, dpdk))
}

/// DPDK's sender here and its receiver in the peer process, on the
/// harness's shared memfd (the ring our VMBus process rows use).
fn dpdk_stream_process(
    wire: &Wire,
    link: Option<&mut dyn Link>,
    payload: usize,
    ops: u64,
) -> Result<Sample, String> {
    let link = link.ok_or("no peer process")?;
    let layout = vmbus::RingLayout::new(4096, DPDK_DATA).map_err(|e| e.to_string())?;
    let window =
        ring_hosted::window::Window::new(&*wire.mem, bench::work::VMBUS_AT, layout.total_size())
            .ok_or("VMBus ring outside memory")?;
    vmbus::initialize_ring(&window, layout).map_err(|e| e.to_string())?;
    let (shm, mut tx) = dpdk_on_wire(wire)?;
    let job = Job {
        ops,
        ..Job::new(Kind::Custom, payload as u32, DPDK_STREAM)
    };
    let buf = vec![0x5au8; payload];
    link.start(&job)?;
    let t0 = Instant::now();
    let mut i = 0;
    while i < ops {
        match tx.send(6, 0, i, &buf) {
            Ok(_) => i += 1,
            Err(EAGAIN) => std::hint::spin_loop(),
            Err(e) => return Err(format!("DPDK send: {e}")),
        }
    }
    let b = link.finish()?;
    let elapsed = t0.elapsed();
    drop(tx);
    drop(shm);
    let mut s = stream_sample(ops, payload, elapsed);
    s.b = b;
    Ok(s)
}

/// The peer process's half of the custom jobs.
fn peer_side(
    job: &Job,
    wire: &Wire,
    ready: &mut dyn FnMut() -> Result<(), String>,
) -> Result<SideStats, String> {
    match job.ring {
        XEN_STREAM => xen_client_side(job, wire, ready),
        DPDK_STREAM => {
            let (shm, mut rx) = dpdk_on_wire(wire)?;
            let mut buf = vec![0u8; (job.chunk as usize).next_multiple_of(8) + 64];
            ready()?;
            let mut got = 0;
            while got < job.ops {
                match rx.recv(&mut buf) {
                    Ok(_) => got += 1,
                    Err(EAGAIN) => std::hint::spin_loop(),
                    Err(e) => return Err(format!("DPDK recv: {e}")),
                }
            }
            drop(rx);
            drop(shm);
            Ok(SideStats::default())
        }
        other => Err(format!("unknown custom job {other}")),
    }
}

/// The peer process's half of [`xen_stream_process`]: a libxenvchan client
/// reading everything.
fn xen_client_side(
    job: &Job,
    wire: &Wire,
    ready: &mut dyn FnMut() -> Result<(), String>,
) -> Result<SideStats, String> {
    let mut client = CPeer::client(wire.mem.as_fd(), wire.ev[1].as_fd(), wire.ev[0].as_fd())
        .ok_or("libxenvchan client set-up failed")?;
    let chunk = job.chunk.max(1) as usize;
    let total = job.ops as usize * chunk;
    let mut buf = vec![0u8; chunk];
    ready()?;
    let mut got = 0;
    while got < total {
        let n = (total - got).min(chunk);
        match client.read(buf.get_mut(..n).unwrap_or_default()) {
            r if r > 0 => got += r as usize,
            0 => std::hint::spin_loop(),
            r => return Err(format!("libxenvchan_read: {r}")),
        }
    }
    Ok(SideStats::default())
}

/// DPDK's sender and receiver on one ring, one packet per send.
fn dpdk_stream(ring: &Ring, payload: usize, ops: u64) -> Result<Sample, String> {
    vmbus::initialize_ring(&ring.mem(), ring.layout).map_err(|e| e.to_string())?;
    let elapsed = pair(
        |barrier| {
            let mut tx = ring.dpdk();
            let buf = vec![0x5au8; payload];
            barrier.wait();
            let t0 = Instant::now();
            let mut i = 0;
            while i < ops {
                match tx.send(6, 0, i, &buf) {
                    Ok(_) => i += 1,
                    Err(EAGAIN) => std::hint::spin_loop(),
                    Err(e) => return Err(format!("DPDK send: {e}")),
                }
            }
            Ok(t0)
        },
        |barrier| {
            let mut rx = ring.dpdk();
            let mut buf = vec![0u8; payload.next_multiple_of(8) + 64];
            barrier.wait();
            let mut got = 0;
            while got < ops {
                match rx.recv(&mut buf) {
                    Ok(_) => got += 1,
                    Err(EAGAIN) => std::hint::spin_loop(),
                    Err(e) => return Err(format!("DPDK recv: {e}")),
                }
            }
            Ok(())
        },
    )?;
    Ok(stream_sample(ops, payload, elapsed))
}

/// ring-core's VMBus rings on the same ring buffer, one packet per commit
/// (as DPDK's send publishes each packet), the reader committing each.
fn our_vmbus_stream(ring: &Ring, payload: usize, ops: u64) -> Result<Sample, String> {
    let mem = ring.mem();
    vmbus::initialize_ring(&mem, ring.layout).map_err(|e| e.to_string())?;
    let tx = OutgoingRing::new(mem, ring.layout).map_err(|e| e.to_string())?;
    let mut rx = IncomingRing::new(mem, ring.layout).map_err(|e| e.to_string())?;
    rx.set_interrupts(false);
    let elapsed = pair(
        |barrier| {
            let mut tx = tx;
            let buf = vec![0x5au8; payload];
            let pieces: [&[u8]; 1] = [&buf];
            barrier.wait();
            let t0 = Instant::now();
            let mut i = 0;
            while i < ops {
                match tx.send(&OutgoingPacket::in_band(i, &pieces)) {
                    Ok(_) => i += 1,
                    Err(vmbus::Error::Full { .. }) => std::hint::spin_loop(),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(t0)
        },
        |barrier| {
            let mut buf = vec![0u8; payload];
            barrier.wait();
            let mut got = 0;
            while got < ops {
                match rx.read_packet() {
                    Ok(p) => {
                        p.read_payload(0, &mut buf).map_err(|e| e.to_string())?;
                        // Nobody sleeps: the signal decision is not acted on
                        // (DPDK's sender reports need_sig and we drop it too).
                        let _ = rx.commit().map_err(|e| e.to_string())?;
                        got += 1;
                    }
                    Err(vmbus::Error::Empty) => std::hint::spin_loop(),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        },
    )?;
    Ok(stream_sample(ops, payload, elapsed))
}

fn c_groups<'a>(xen_mem: &'a Shm, dpdk_ring: &'a Ring, quick: bool) -> Vec<Group<'a>> {
    let mut gs = Vec::new();
    let chunks: &[usize] = if quick { &[4096] } else { &[64, 4096] };
    for &chunk in chunks {
        let order = 18;
        let mut g = Group::new(
            format!(
                "{chunk}-byte chunks, libxenvchan vs ours, same memfd, cross-thread, 256 KiB rings"
            ),
            Metric::Throughput,
        );
        let c = g.add(Contender::custom(
            "libxenvchan (C)",
            Box::new(move |_, _, ops| xen_stream(xen_mem, order, chunk, ops)),
        ));
        let r = g.add(Contender::custom(
            "ring-core vchan",
            Box::new(move |_, _, ops| our_vchan_stream(xen_mem, order, chunk, ops)),
        ));
        g.checks.push(Check::Ratio {
            a: r,
            b: c,
            bound: 1.2,
        });
        gs.push(g);
    }
    let mut g = Group::new(
        "4096-byte chunks, libxenvchan vs ours, same memfd, cross-process, 256 KiB rings",
        Metric::Throughput,
    );
    let c = g.add(Contender::custom(
        "libxenvchan (C), re-trying, kicks when asked",
        Box::new(|wire, link, ops| xen_stream_process(wire, link, 18, 4096, ops)),
    ));
    let r = g.add(Contender::job(
        "ring-core vchan, re-trying, kicks when asked",
        Job::new(Kind::VchanStream, 4096, 18).retry_kick(),
        Place::Process,
    ));
    g.add(Contender::job(
        "ring-core vchan, eventfd (spin, then sleep)",
        Job::new(Kind::VchanStream, 4096, 18).event(suite::STREAM_SPIN),
        Place::Process,
    ));
    g.checks.push(Check::Ratio {
        a: r,
        b: c,
        bound: 1.2,
    });
    gs.push(g);
    let mut g = Group::new(
        "4096-byte in-band packets, DPDK vs ours, same memfd, cross-process, 256 KiB ring",
        Metric::Throughput,
    );
    let c = g.add(Contender::custom(
        "DPDK vmbus_br (C), busy-polled",
        Box::new(|wire, link, ops| dpdk_stream_process(wire, link, 4096, ops)),
    ));
    let r = g.add(Contender::job(
        "ring-core VMBus, unbatched, busy-polled",
        Job::new(Kind::VmbusStream, 4096, DPDK_DATA as u32),
        Place::Process,
    ));
    g.checks.push(Check::Ratio {
        a: r,
        b: c,
        bound: 1.2,
    });
    gs.push(g);
    let payloads: &[usize] = if quick { &[4096] } else { &[64, 4096] };
    for &payload in payloads {
        let mut g = Group::new(
            format!("{payload}-byte in-band packets, DPDK vs ours, same ring, cross-thread, 256 KiB ring"),
            Metric::Throughput,
        );
        let c = g.add(Contender::custom(
            "DPDK vmbus_br (C)",
            Box::new(move |_, _, ops| dpdk_stream(dpdk_ring, payload, ops)),
        ));
        let r = g.add(Contender::custom(
            "ring-core VMBus",
            Box::new(move |_, _, ops| our_vmbus_stream(dpdk_ring, payload, ops)),
        ));
        g.checks.push(Check::Ratio {
            a: r,
            b: c,
            bound: 1.2,
        });
        gs.push(g);
    }
    gs
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--bench-peer") {
        let Some(socket) = args.get(i + 1) else {
            return std::process::ExitCode::FAILURE;
        };
        let path = std::path::Path::new(socket);
        return match bench::link::peer_main_with(path, &mut peer_side) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rings bench peer: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let markdown = args.iter().any(|a| a == "--markdown");
    let quick = args.iter().any(|a| a == "--quick");
    sys::set_allocation_counter(allocations);
    let exe = std::env::current_exe().expect("own path");
    let cfg = Config {
        rounds: if quick { 3 } else { 7 },
        sample: Duration::from_millis(if quick { 10 } else { 30 }),
        peer_command: Some((exe, vec!["--bench-peer".to_string()])),
    };
    let load_before = bench::load_average();
    let started = Instant::now();
    let mut harness = match Bench::new(cfg) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("rings: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!(
        "# cargo bench --bench rings: C rings vs ours on the same memory, then the headline rows"
    );
    println!("# machine: {}", bench::machine_line());
    let xen_mem =
        Shm::new(FlatLayout::new(Orders::new(18, 18).expect("valid orders")).size).expect("memfd");
    let dpdk_ring = Ring::new(1 << 18, 0);
    let mut groups = c_groups(&xen_mem, &dpdk_ring, quick);
    groups.extend(suite::groups(suite::Selection {
        sweeps: false,
        process: true,
    }));
    // `--only TEXT` (repeatable): only groups whose title contains TEXT.
    let only: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "--only")
        .map(|w| w[1].as_str())
        .collect();
    let wanted = |t: &str| only.is_empty() || only.iter().any(|o| t.contains(o));
    for g in groups.into_iter().filter(|g| wanted(&g.title)) {
        let r = harness.run(g);
        print!("{}", render(std::slice::from_ref(r), markdown));
    }
    println!(
        "\n# load average before: {load_before}; after: {}; took {:.0} s",
        bench::load_average(),
        started.elapsed().as_secs_f64()
    );
    std::process::ExitCode::SUCCESS
}
