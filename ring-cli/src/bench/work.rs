//! The workloads: what each side of a pair does, over one set of shared
//! resources ([`Wire`]) that works between threads and between processes.
//!
//! Side A (the driver, timed) produces or pings; side B (the peer) consumes
//! or echoes. Every ring workload kicks the peer's eventfd exactly when the
//! ring says the peer asked (`Transfer::notify`), except in
//! [`Mode::Poll`], where nobody ever sleeps and so nobody is kicked.

use super::sys;
use ring_core::mem::SharedMem;
use ring_core::vchan::{self, Orders, ServerOptions};
use ring_core::vmbus::{self, IncomingRing, OutgoingPacket, OutgoingRing, RingLayout};
use ring_hosted::memfd::MemFd;
use ring_hosted::window::Window;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the vchan rings live in the shared memory (flat layout, orders up
/// to 20 each way).
pub const VCHAN_AT: usize = 0;
/// Data bytes of the largest VMBus ring we set up, each direction.
pub const VMBUS_MAX_DATA: usize = 1 << 20;
/// Where the two VMBus rings (A→B, then B→A) start.
pub const VMBUS_AT: usize = 4 << 20;
/// Where the two cache lines of the ping-pong baseline are.
pub const LINE_AT: usize = 8 << 20;
/// Size of the shared memory.
pub const MEM_SIZE: usize = LINE_AT + 4096;

/// How a ring side waits when the ring is empty or full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Spin on a readiness check that arms nothing (`data_ready`,
    /// `buffer_space`, `available`) for ever; `notify` results are ignored.
    Poll,
    /// Spin by re-trying the ring operation itself, which arms a wake-up
    /// request on every miss (what a naive polling loop over the
    /// non-blocking API does); `notify` results are ignored.
    Retry,
    /// As [`Retry`](Self::Retry), but kick the peer whenever the ring says
    /// it asked, as libxenvchan's non-blocking read and write do.
    RetryKick,
    /// Re-try `spin` times, then sleep in `read` on the eventfd; kick the
    /// peer whenever the ring says it asked.
    Event {
        /// Re-tries before sleeping.
        spin: u32,
    },
}

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A copies `chunk` bytes between two private buffers (no peer).
    Memcpy,
    /// A writes `ops` chunks into a pipe, B reads them.
    PipeStream,
    /// As `PipeStream`, over a Unix stream socket pair.
    SockStream,
    /// As `PipeStream`, through an rtrb ring of `ring` bytes (threads only).
    RtrbStream,
    /// As `PipeStream`, through a vchan ring of order `ring`.
    VchanStream,
    /// `ops` in-band packets of `chunk` payload bytes through a VMBus ring
    /// of `ring` data bytes, committed every `batch` packets.
    VmbusStream,
    /// Two cache lines bounced through the shared memory.
    LinePing,
    /// Two eventfds: A kicks B, B kicks A.
    EventfdPing,
    /// 64-byte-style messages through two pipes.
    PipePing,
    /// Messages through a Unix socket pair.
    SockPing,
    /// Messages through the two rings of a vchan of order `ring`.
    VchanPing,
    /// Messages as in-band packets through two VMBus rings.
    VmbusPing,
    /// Messages through two rtrb rings (threads only): what a ring with
    /// its indices on their own cache lines costs per round trip.
    RtrbPing,
    /// A workload the benchmark binary defines (its peer half runs in the
    /// hook given to [`peer_main_with`](super::link::peer_main_with));
    /// `ring` tells which.
    Custom,
}

impl Kind {
    const ALL: [Kind; 14] = [
        Kind::Memcpy,
        Kind::PipeStream,
        Kind::SockStream,
        Kind::RtrbStream,
        Kind::VchanStream,
        Kind::VmbusStream,
        Kind::LinePing,
        Kind::EventfdPing,
        Kind::PipePing,
        Kind::SockPing,
        Kind::VchanPing,
        Kind::VmbusPing,
        Kind::Custom,
        Kind::RtrbPing,
    ];

    /// Round trips (latency) rather than streaming (throughput).
    pub fn is_ping(self) -> bool {
        matches!(
            self,
            Kind::LinePing
                | Kind::EventfdPing
                | Kind::PipePing
                | Kind::SockPing
                | Kind::VchanPing
                | Kind::VmbusPing
                | Kind::RtrbPing
        )
    }
}

/// One measurement's parameters (fits a 32-byte message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Job {
    /// The workload.
    pub kind: Kind,
    /// Bytes per write, message or packet payload.
    pub chunk: u32,
    /// vchan order, VMBus data bytes, or rtrb capacity.
    pub ring: u32,
    /// Packets per commit (VMBus); for vchan streams, chunks gathered per
    /// write and reads held per release; for vchan round trips, > 1 holds
    /// each request until its reply gives it back.
    pub batch: u32,
    /// The reader's own batch (packets per read commit, reads held per
    /// release) when it differs from `batch`; 0: the same.
    pub read_batch: u32,
    /// How ring sides wait.
    pub mode: Mode,
    /// Chunks, packets or round trips.
    pub ops: u64,
}

impl Job {
    /// A job with `ops` set to 0 (the harness calibrates it).
    pub fn new(kind: Kind, chunk: u32, ring: u32) -> Job {
        Job {
            kind,
            chunk,
            ring,
            batch: 1,
            read_batch: 0,
            mode: Mode::Poll,
            ops: 0,
        }
    }

    /// The same job waiting with eventfds, spinning `spin` times first.
    pub fn event(mut self, spin: u32) -> Job {
        self.mode = Mode::Event { spin };
        self
    }

    /// The same job polling by re-trying the arming operation.
    pub fn retry(mut self) -> Job {
        self.mode = Mode::Retry;
        self
    }

    /// The same job polling by re-trying, and kicking when asked.
    pub fn retry_kick(mut self) -> Job {
        self.mode = Mode::RetryKick;
        self
    }

    /// The same job committing every `batch` packets.
    pub fn batched(mut self, batch: u32) -> Job {
        self.batch = batch.max(1);
        self
    }

    /// The same job with the reader batching `batch` (the writer as
    /// before).
    pub fn reader_batched(mut self, batch: u32) -> Job {
        self.read_batch = batch.max(1);
        self
    }

    /// The reader's batch.
    pub fn read_batch(&self) -> u32 {
        match self.read_batch {
            0 => self.batch,
            n => n,
        }
    }

    /// Encodes the job for the process link.
    pub fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        let kind = Kind::ALL.iter().position(|k| *k == self.kind).unwrap_or(0) as u32;
        let (mode, spin) = match self.mode {
            Mode::Poll => (0u32, 0u32),
            Mode::Event { spin } => (1, spin),
            Mode::Retry => (2, 0),
            Mode::RetryKick => (3, 0),
        };
        // The mode takes two bits; the reader's batch rides above it.
        let mode = mode | (self.read_batch.min(0xffff) << 16);
        let words = [kind, self.chunk, self.ring, self.batch, mode, spin];
        for (slot, w) in b.chunks_exact_mut(4).zip(words) {
            slot.copy_from_slice(&w.to_le_bytes());
        }
        if let Some(slot) = b.get_mut(24..32) {
            slot.copy_from_slice(&self.ops.to_le_bytes());
        }
        b
    }

    /// Decodes [`encode`](Self::encode)'s bytes.
    pub fn decode(b: &[u8; 32]) -> Option<Job> {
        let w = |i: usize| -> u32 {
            let mut x = [0u8; 4];
            x.copy_from_slice(b.get(4 * i..4 * i + 4).unwrap_or(&[0; 4]));
            u32::from_le_bytes(x)
        };
        let mut ops = [0u8; 8];
        ops.copy_from_slice(b.get(24..32)?);
        Some(Job {
            kind: *Kind::ALL.get(w(0) as usize)?,
            chunk: w(1),
            ring: w(2),
            batch: w(3),
            read_batch: w(4) >> 16,
            mode: match w(4) & 0xffff {
                0 => Mode::Poll,
                1 => Mode::Event { spin: w(5) },
                2 => Mode::Retry,
                _ => Mode::RetryKick,
            },
            ops: u64::from_le_bytes(ops),
        })
    }
}

/// Counts one side reports about its run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SideStats {
    /// Eventfd writes (kicks) made.
    pub kicks: u64,
    /// Sleeps in the eventfd (`read`s that blocked or took a kick).
    pub sleeps: u64,
    /// Read/write-class syscalls over the timed loop (`/proc`), if known.
    pub syscalls: Option<u64>,
    /// Allocations over the timed loop, if counted.
    pub allocs: Option<u64>,
}

impl SideStats {
    /// Encodes for the process link.
    pub fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        let enc = |v: Option<u64>| v.unwrap_or(u64::MAX);
        let words = [
            self.kicks,
            self.sleeps,
            enc(self.syscalls),
            enc(self.allocs),
        ];
        for (slot, w) in b.chunks_exact_mut(8).zip(words) {
            slot.copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    /// Decodes [`encode`](Self::encode)'s bytes.
    pub fn decode(b: &[u8; 32]) -> SideStats {
        let w = |i: usize| -> u64 {
            let mut x = [0u8; 8];
            x.copy_from_slice(b.get(8 * i..8 * i + 8).unwrap_or(&[0; 8]));
            u64::from_le_bytes(x)
        };
        let dec = |v: u64| (v != u64::MAX).then_some(v);
        SideStats {
            kicks: w(0),
            sleeps: w(1),
            syscalls: dec(w(2)),
            allocs: dec(w(3)),
        }
    }
}

/// One timed run as side A saw it.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Operations done.
    pub ops: u64,
    /// Payload bytes moved one way.
    pub bytes: u64,
    /// From the peer's "ready" to its "done".
    pub elapsed: Duration,
    /// Each round trip, in nanoseconds (ping workloads only).
    pub rtt: Vec<u64>,
    /// Side A's counts.
    pub a: SideStats,
    /// Side B's counts (none for single-sided workloads).
    pub b: SideStats,
}

/// Everything both sides share: memory, eventfds, pipes, a socket pair.
#[derive(Debug)]
pub struct Wire {
    /// The shared memory ([`MEM_SIZE`] bytes).
    pub mem: Arc<MemFd>,
    /// `ev[0]`: A sleeps on it (B kicks); `ev[1]`: B sleeps on it.
    pub ev: [OwnedFd; 2],
    /// `pipe[0]`: A→B (read end, write end); `pipe[1]`: B→A.
    pub pipe: [[OwnedFd; 2]; 2],
    /// A's end, B's end.
    pub sock: [OwnedFd; 2],
}

impl Wire {
    /// Fresh resources.
    ///
    /// # Errors
    ///
    /// The first OS error.
    pub fn new() -> Result<Wire, String> {
        let e = |e: std::io::Error| e.to_string();
        let mem = MemFd::create("ring-bench", MEM_SIZE).map_err(|e| e.to_string())?;
        let pipe = || -> Result<[OwnedFd; 2], String> {
            let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| e.to_string())?;
            Ok([r, w])
        };
        let (s0, s1) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| e.to_string())?;
        Ok(Wire {
            mem: Arc::new(mem),
            ev: [sys::eventfd().map_err(e)?, sys::eventfd().map_err(e)?],
            pipe: [pipe()?, pipe()?],
            sock: [s0, s1],
        })
    }

    /// The fds in the order [`from_fds`](Self::from_fds) takes them.
    pub fn fds(&self) -> [std::os::fd::BorrowedFd<'_>; 9] {
        use std::os::fd::AsFd;
        let [p0, p1] = &self.pipe;
        [
            self.mem.as_fd(),
            self.ev[0].as_fd(),
            self.ev[1].as_fd(),
            p0[0].as_fd(),
            p0[1].as_fd(),
            p1[0].as_fd(),
            p1[1].as_fd(),
            self.sock[0].as_fd(),
            self.sock[1].as_fd(),
        ]
    }

    /// Rebuilds a wire from fds a peer sent.
    ///
    /// # Errors
    ///
    /// If there are not nine fds or the memory is refused.
    pub fn from_fds(fds: Vec<OwnedFd>) -> Result<Wire, String> {
        let [mem, e0, e1, p0r, p0w, p1r, p1w, s0, s1]: [OwnedFd; 9] = fds
            .try_into()
            .map_err(|v: Vec<OwnedFd>| format!("expected 9 fds, got {}", v.len()))?;
        let mem = MemFd::from_fd(mem, MEM_SIZE).map_err(|e| e.to_string())?;
        Ok(Wire {
            mem: Arc::new(mem),
            ev: [e0, e1],
            pipe: [[p0r, p0w], [p1r, p1w]],
            sock: [s0, s1],
        })
    }
}

/// How side A starts and ends the peer's half of a job.
pub trait Link {
    /// Starts the peer on `job` and returns once it is ready.
    ///
    /// # Errors
    ///
    /// If the peer cannot be started.
    fn start(&mut self, job: &Job) -> Result<(), String>;
    /// Waits for the peer to finish; its counts.
    ///
    /// # Errors
    ///
    /// If the peer failed.
    fn finish(&mut self) -> Result<SideStats, String>;
}

type Shared = Arc<MemFd>;

fn vmbus_rings(
    mem: &Shared,
    data: u32,
) -> Result<(Window<Shared>, Window<Shared>, RingLayout), String> {
    let layout = RingLayout::new(4096, data as usize).map_err(|e| e.to_string())?;
    let span = 4096 + VMBUS_MAX_DATA;
    let ring = |at: usize| {
        Window::new(mem.clone(), at, layout.total_size()).ok_or("VMBus ring outside memory")
    };
    Ok((ring(VMBUS_AT)?, ring(VMBUS_AT + span)?, layout))
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// How long a polling side waits for its peer before giving up.
const POLL_STALL: std::time::Duration = std::time::Duration::from_secs(10);

/// A side's waiting and kicking, with counts.
///
/// In [`Mode::Event`] a side first spins on a readiness check that arms
/// nothing ([`spin_until`](Self::spin_until)), and only then runs the ring
/// operation that arms a wake-up request, sleeping if that still blocks.
/// So the peer is asked for a kick only by a side about to sleep, not by
/// one that is merely polling.
struct Waiter<'a> {
    mode: Mode,
    sleep_on: &'a OwnedFd,
    kick_to: &'a OwnedFd,
    stats: SideStats,
}

impl<'a> Waiter<'a> {
    fn new(mode: Mode, sleep_on: &'a OwnedFd, kick_to: &'a OwnedFd) -> Self {
        Waiter {
            mode,
            sleep_on,
            kick_to,
            stats: SideStats::default(),
        }
    }

    /// Spins on `ready`, a check that arms nothing: until it says so (poll
    /// mode), or up to the spin budget (event mode). Re-trying modes do not
    /// check: they go straight to the ring operation. Returns the last
    /// answer (true when not checked).
    ///
    /// # Errors
    ///
    /// `ready`'s errors; in poll mode, a peer that shows no progress for
    /// [`POLL_STALL`] (so a dead peer ends the run instead of hanging it).
    fn spin_until(
        &mut self,
        mut ready: impl FnMut() -> Result<bool, String>,
    ) -> Result<bool, String> {
        match self.mode {
            Mode::Retry | Mode::RetryKick => Ok(true),
            Mode::Event { spin } => {
                for _ in 0..spin {
                    if ready()? {
                        return Ok(true);
                    }
                    std::hint::spin_loop();
                }
                ready()
            }
            Mode::Poll => {
                let mut since: Option<Instant> = None;
                for round in 0u64.. {
                    if ready()? {
                        return Ok(true);
                    }
                    std::hint::spin_loop();
                    if round % 65_536 == 65_535 {
                        let start = *since.get_or_insert_with(Instant::now);
                        if start.elapsed() > POLL_STALL {
                            return Err("peer made no progress while polled".into());
                        }
                    }
                }
                Ok(false)
            }
        }
    }

    /// The ring operation would block (its request is armed and the ring
    /// re-checked): spin once (poll mode) or sleep until kicked.
    fn blocked(&mut self) -> Result<(), String> {
        match self.mode {
            Mode::Poll | Mode::Retry | Mode::RetryKick => std::hint::spin_loop(),
            Mode::Event { .. } => {
                self.stats.sleeps += 1;
                sys::wait(self.sleep_on).map_err(err)?;
            }
        }
        Ok(())
    }

    /// The ring moved; kick the peer if it asked (and anybody sleeps).
    fn moved(&mut self, notify: bool) -> Result<(), String> {
        if notify && matches!(self.mode, Mode::Event { .. } | Mode::RetryKick) {
            self.stats.kicks += 1;
            sys::kick(self.kick_to).map_err(err)?;
        }
        Ok(())
    }
}

/// Counters around a timed loop.
struct Meter {
    syscalls: Option<u64>,
    allocs: Option<u64>,
}

impl Meter {
    /// Reads the syscall count first (reading /proc allocates), then the
    /// allocation count, so neither reading is counted by the other.
    fn start() -> Meter {
        let syscalls = sys::rw_syscalls();
        Meter {
            syscalls,
            allocs: sys::allocations(),
        }
    }

    /// The counts since [`start`](Self::start), less what reading them
    /// costs (measured once per thread).
    fn stop(self, mut stats: SideStats) -> SideStats {
        let allocs = sys::allocations();
        stats.syscalls = match (self.syscalls, sys::rw_syscalls()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).saturating_sub(sys::meter_cost())),
            _ => None,
        };
        stats.allocs = match (self.allocs, allocs) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        stats
    }
}

/// Side A: sets up, starts the peer through `link`, runs and times `job`.
///
/// # Errors
///
/// Any ring, OS or peer error, as text.
pub fn drive(job: &Job, wire: &Wire, link: &mut dyn Link) -> Result<Sample, String> {
    let chunk = job.chunk.max(1) as usize;
    let bytes = job.ops * chunk as u64;
    let mut sample = Sample {
        ops: job.ops,
        bytes,
        ..Sample::default()
    };
    if job.kind.is_ping() {
        sample.rtt = Vec::with_capacity(job.ops as usize);
    }
    let mut buf = vec![0x5au8; chunk];
    let mut back = vec![0u8; chunk];
    sys::drain(&wire.ev[0]).map_err(err)?;
    let mut w = Waiter::new(job.mode, &wire.ev[0], &wire.ev[1]);
    let mem = &wire.mem;
    // Ring set-up happens before the peer starts, so it attaches to a
    // ready ring.
    let mut vchan_ep = None;
    let mut vmbus_pair = None;
    match job.kind {
        Kind::VchanStream | Kind::VchanPing => {
            // The server writes the right ring. Two in-page rings of one
            // order would share a slot, so below order 12 the (idle) left
            // ring gets order 12.
            let order = job.ring as u8;
            let orders = Orders::new(order.max(12), order).map_err(err)?;
            vchan_ep = Some(
                vchan::serve_flat(mem.clone(), orders, ServerOptions::default()).map_err(err)?,
            );
        }
        Kind::VmbusStream | Kind::VmbusPing => {
            let (ab, ba, layout) = vmbus_rings(mem, job.ring)?;
            vmbus::initialize_ring(&ab, layout).map_err(err)?;
            vmbus::initialize_ring(&ba, layout).map_err(err)?;
            let out = OutgoingRing::new(ab, layout).map_err(err)?;
            let mut inc = IncomingRing::new(ba, layout).map_err(err)?;
            inc.set_interrupts(!matches!(job.mode, Mode::Poll));
            if job.mode == Mode::Poll {
                // A reader that never sleeps wants no signals: with the
                // mask set, the writer's commit skips its signal check.
                inc.mask_interrupts().map_err(err)?;
            }
            vmbus_pair = Some((inc, out));
        }
        Kind::LinePing => {
            mem.store_u32(LINE_AT, 0).map_err(err)?;
            mem.store_u32(LINE_AT + 128, 0).map_err(err)?;
        }
        _ => {}
    }
    if job.kind == Kind::Memcpy {
        let meter = Meter::start();
        let t0 = Instant::now();
        for i in 0..job.ops {
            back.copy_from_slice(&buf);
            if let Some(b) = buf.first_mut() {
                *b = i as u8;
            }
            std::hint::black_box(&mut back);
        }
        sample.elapsed = t0.elapsed();
        sample.a = meter.stop(SideStats::default());
        return Ok(sample);
    }
    if job.kind == Kind::RtrbStream {
        return rtrb_stream(job, link, sample, &buf);
    }
    if job.kind == Kind::Custom {
        return Err("custom jobs are driven by the binary that defines them".into());
    }
    // vchan streams with batch > 1 gather that many chunks per write
    // (allocated here, outside the timed loop).
    let parts = vec![&buf[..]; job.batch.max(1) as usize];
    if job.kind == Kind::RtrbPing {
        return rtrb_ping(job, link, sample, &buf);
    }
    link.start(job)?;
    let meter = Meter::start();
    let t0 = Instant::now();
    match job.kind {
        Kind::PipeStream | Kind::SockStream => {
            let fd = if job.kind == Kind::PipeStream {
                &wire.pipe[0][1]
            } else {
                &wire.sock[0]
            };
            for _ in 0..job.ops {
                sys::write_all(fd, &buf).map_err(err)?;
            }
        }
        Kind::VchanStream => {
            let ep = vchan_ep.as_mut().ok_or("no endpoint")?;
            let mut left = bytes;
            // Free bytes as last seen, less what we wrote since: when it
            // runs out, spin on the (non-arming) space check first.
            let mut room = 0usize;
            while left > 0 {
                let n = left.min(chunk as u64) as usize;
                if room < n {
                    w.spin_until(|| {
                        room = ep.buffer_space().map_err(err)?;
                        Ok(room >= n)
                    })?;
                }
                let sent = if parts.len() > 1 {
                    let k = (left.div_ceil(chunk as u64) as usize).min(parts.len());
                    ep.write_vectored(parts.get(..k).unwrap_or_default())
                } else {
                    ep.write(buf.get(..n).unwrap_or_default())
                };
                match sent {
                    Ok(t) => {
                        left -= t.len as u64;
                        room = room.saturating_sub(t.len);
                        w.moved(t.notify)?;
                    }
                    Err(vchan::Error::WouldBlock) => w.blocked()?,
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        Kind::VmbusStream => {
            let (_, out) = vmbus_pair.as_mut().ok_or("no rings")?;
            let payload: [&[u8]; 1] = [&buf];
            let mut pending = 0u32;
            let mut i = 0u64;
            // Ring bytes one packet takes (descriptor, padded payload,
            // trailer), and the room last seen less what we wrote since.
            let need = 16 + chunk.next_multiple_of(8) + 8;
            let mut room = 0usize;
            while i < job.ops {
                if room < need {
                    w.spin_until(|| {
                        room = out.available().map_err(err)?;
                        Ok(room >= need)
                    })?;
                }
                match out.write(&OutgoingPacket::in_band(i, &payload)) {
                    Ok(()) => {
                        i += 1;
                        room = room.saturating_sub(need);
                        pending += 1;
                        if pending >= job.batch || i == job.ops {
                            let t = out.commit().map_err(err)?;
                            pending = 0;
                            w.moved(t.notify)?;
                        }
                    }
                    Err(vmbus::Error::Full { .. }) => {
                        // Publish what we have before waiting for space.
                        let t = out.commit().map_err(err)?;
                        pending = 0;
                        if t.ring_bytes > 0 {
                            w.moved(t.notify)?;
                        } else {
                            w.blocked()?;
                        }
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        Kind::LinePing => {
            for i in 1..=job.ops {
                let s = Instant::now();
                let v = i as u32;
                mem.store_u32(LINE_AT, v).map_err(err)?;
                while mem.load_u32(LINE_AT + 128).map_err(err)? != v {
                    std::hint::spin_loop();
                }
                sample.rtt.push(s.elapsed().as_nanos() as u64);
            }
        }
        Kind::EventfdPing => {
            for _ in 0..job.ops {
                let s = Instant::now();
                sys::kick(&wire.ev[1]).map_err(err)?;
                sys::wait(&wire.ev[0]).map_err(err)?;
                sample.rtt.push(s.elapsed().as_nanos() as u64);
            }
        }
        Kind::PipePing | Kind::SockPing => {
            let (tx, rx) = if job.kind == Kind::PipePing {
                (&wire.pipe[0][1], &wire.pipe[1][0])
            } else {
                (&wire.sock[0], &wire.sock[0])
            };
            for _ in 0..job.ops {
                let s = Instant::now();
                sys::write_all(tx, &buf).map_err(err)?;
                sys::read_exact(rx, &mut back).map_err(err)?;
                sample.rtt.push(s.elapsed().as_nanos() as u64);
            }
        }
        Kind::VchanPing => {
            let ep = vchan_ep.as_mut().ok_or("no endpoint")?;
            let hold = job.batch > 1;
            for _ in 0..job.ops {
                let s = Instant::now();
                vchan_send(ep, &buf, &mut w)?;
                w.spin_until(|| Ok(ep.data_ready().map_err(err)? >= chunk))?;
                vchan_recv(ep, &mut back, hold, &mut w)?;
                sample.rtt.push(s.elapsed().as_nanos() as u64);
            }
            let t = ep.release().map_err(err)?;
            w.moved(t.notify)?;
        }
        Kind::VmbusPing => {
            let (inc, out) = vmbus_pair.as_mut().ok_or("no rings")?;
            let payload: [&[u8]; 1] = [&buf];
            // batch > 1: publish reads after the next send, once `batch`
            // - 1 are pending, as the echo does.
            let deferred = job.batch > 1;
            let mut pending = 0u32;
            for i in 0..job.ops {
                let s = Instant::now();
                vmbus_send(out, &OutgoingPacket::in_band(i, &payload), &mut w)?;
                if deferred && pending + 1 >= job.batch {
                    let t = inc.commit().map_err(err)?;
                    pending = 0;
                    w.moved(t.notify)?;
                }
                vmbus_recv(inc, &mut back, &mut w, !deferred)?;
                pending += 1;
                sample.rtt.push(s.elapsed().as_nanos() as u64);
            }
            let t = inc.commit().map_err(err)?;
            w.moved(t.notify)?;
        }
        Kind::Memcpy | Kind::RtrbStream | Kind::Custom | Kind::RtrbPing => {}
    }
    let a = meter.stop(w.stats);
    sample.b = link.finish()?;
    sample.elapsed = t0.elapsed();
    sample.a = a;
    Ok(sample)
}

/// Sends one message; a send that finds the ring full while reads are
/// held gives them back first.
fn vchan_send<M: SharedMem>(
    ep: &mut vchan::Endpoint<M>,
    buf: &[u8],
    w: &mut Waiter<'_>,
) -> Result<(), String> {
    loop {
        match ep.send(buf) {
            Ok(t) => return w.moved(t.notify),
            Err(vchan::Error::WouldBlock) => w.blocked()?,
            Err(vchan::Error::Held { .. }) => {
                let t = ep.release().map_err(err)?;
                w.moved(t.notify)?;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Receives one message, holding its space when `hold` (the next send
/// gives it back).
fn vchan_recv<M: SharedMem>(
    ep: &mut vchan::Endpoint<M>,
    buf: &mut [u8],
    hold: bool,
    w: &mut Waiter<'_>,
) -> Result<(), String> {
    loop {
        if hold {
            if ep.recv_held(buf).map_err(err)? {
                return Ok(());
            }
            // Not all there: give the space back, then wait as usual.
            let t = ep.release().map_err(err)?;
            w.moved(t.notify)?;
        }
        match ep.recv(buf) {
            Ok(t) => return w.moved(t.notify),
            Err(vchan::Error::WouldBlock) => w.blocked()?,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Reads `bytes` in reads of up to `chunk`, holding the space and giving
/// it back once `batch` chunks are held or the ring runs dry (before any
/// wait, as the endpoint requires).
fn vchan_read_held<M: SharedMem>(
    ep: &mut vchan::Endpoint<M>,
    bytes: u64,
    chunk: usize,
    batch: u32,
    buf: &mut [u8],
    w: &mut Waiter<'_>,
) -> Result<(), String> {
    let keep = chunk.saturating_mul(batch as usize);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk as u64) as usize;
        let got = ep
            .read_held(buf.get_mut(..n).unwrap_or_default())
            .map_err(err)?;
        if got > 0 {
            left -= got as u64;
            if ep.held() >= keep {
                let t = ep.release().map_err(err)?;
                w.moved(t.notify)?;
            }
            continue;
        }
        let t = ep.release().map_err(err)?;
        w.moved(t.notify)?;
        if !w.spin_until(|| Ok(ep.data_ready().map_err(err)? > 0))?
            && ep.arm_readable(1).map_err(err)? == vchan::Readiness::Armed
        {
            w.blocked()?;
        }
    }
    let t = ep.release().map_err(err)?;
    w.moved(t.notify)
}

fn vmbus_send<M: SharedMem>(
    out: &mut OutgoingRing<M>,
    packet: &OutgoingPacket<'_>,
    w: &mut Waiter<'_>,
) -> Result<(), String> {
    loop {
        match out.send(packet) {
            Ok(t) => return w.moved(t.notify),
            Err(vmbus::Error::Full { .. }) => w.blocked()?,
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn vmbus_recv<M: SharedMem>(
    inc: &mut IncomingRing<M>,
    buf: &mut [u8],
    w: &mut Waiter<'_>,
    commit: bool,
) -> Result<(), String> {
    w.spin_until(|| Ok(inc.available().map_err(err)? > 0))?;
    loop {
        match inc.read_packet() {
            Ok(p) => {
                p.read_payload(0, buf).map_err(err)?;
                if !commit {
                    return Ok(());
                }
                let t = inc.commit().map_err(err)?;
                return w.moved(t.notify);
            }
            Err(vmbus::Error::Empty) => w.blocked()?,
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn rtrb_stream(
    job: &Job,
    link: &mut dyn Link,
    mut sample: Sample,
    buf: &[u8],
) -> Result<Sample, String> {
    // rtrb lives in one address space: the peer thread takes the consumer
    // through the in-process slot.
    let (mut tx, rx) = rtrb::RingBuffer::<u8>::new(job.ring as usize);
    super::RTRB_SLOT.lock().map_err(err)?.replace(rx);
    link.start(job)?;
    let meter = Meter::start();
    let t0 = Instant::now();
    let total = sample.bytes as usize;
    let mut sent = 0usize;
    // batch > 1: up to that many chunks per commit.
    let most = buf.len().saturating_mul(job.batch as usize);
    while sent < total {
        let want = (total - sent).min(most).min(tx.slots());
        if want == 0 {
            std::hint::spin_loop();
            continue;
        }
        let chunk = tx.write_chunk_uninit(want).map_err(err)?;
        sent += if want <= buf.len() {
            chunk.fill_from_iter(buf.iter().copied())
        } else {
            chunk.fill_from_iter(buf.iter().copied().cycle())
        };
    }
    let a = meter.stop(SideStats::default());
    sample.b = link.finish()?;
    sample.elapsed = t0.elapsed();
    sample.a = a;
    Ok(sample)
}

fn rtrb_ping(
    job: &Job,
    link: &mut dyn Link,
    mut sample: Sample,
    buf: &[u8],
) -> Result<Sample, String> {
    let cap = (job.ring as usize).max(buf.len());
    let (mut tx, rx_b) = rtrb::RingBuffer::<u8>::new(cap);
    let (tx_b, mut rx) = rtrb::RingBuffer::<u8>::new(cap);
    super::RTRB_SLOT.lock().map_err(err)?.replace(rx_b);
    super::RTRB_BACK.lock().map_err(err)?.replace(tx_b);
    let mut back = vec![0u8; buf.len()];
    link.start(job)?;
    let meter = Meter::start();
    let t0 = Instant::now();
    for _ in 0..job.ops {
        let s = Instant::now();
        rtrb_send(&mut tx, buf)?;
        rtrb_recv(&mut rx, &mut back)?;
        sample.rtt.push(s.elapsed().as_nanos() as u64);
    }
    let a = meter.stop(SideStats::default());
    sample.b = link.finish()?;
    sample.elapsed = t0.elapsed();
    sample.a = a;
    Ok(sample)
}

fn rtrb_send(tx: &mut rtrb::Producer<u8>, buf: &[u8]) -> Result<(), String> {
    while tx.slots() < buf.len() {
        std::hint::spin_loop();
    }
    let chunk = tx.write_chunk_uninit(buf.len()).map_err(err)?;
    chunk.fill_from_iter(buf.iter().copied());
    Ok(())
}

fn rtrb_recv(rx: &mut rtrb::Consumer<u8>, buf: &mut [u8]) -> Result<(), String> {
    while rx.slots() < buf.len() {
        std::hint::spin_loop();
    }
    let c = rx.read_chunk(buf.len()).map_err(err)?;
    let (x, y) = c.as_slices();
    let (bx, by) = buf.split_at_mut(x.len());
    bx.copy_from_slice(x);
    by.copy_from_slice(y);
    c.commit_all();
    Ok(())
}

/// Side B: attaches, says `ready`, and runs its half of `job`.
///
/// # Errors
///
/// Any ring or OS error, as text.
pub fn serve(
    job: &Job,
    wire: &Wire,
    ready: &mut dyn FnMut() -> Result<(), String>,
) -> Result<SideStats, String> {
    let chunk = job.chunk.max(1) as usize;
    let bytes = job.ops * chunk as u64;
    let mut buf = vec![0u8; chunk];
    sys::drain(&wire.ev[1]).map_err(err)?;
    let mut w = Waiter::new(job.mode, &wire.ev[1], &wire.ev[0]);
    let mem = &wire.mem;
    let mut vchan_ep = None;
    let mut vmbus_pair = None;
    let mut rtrb_rx = None;
    let mut rtrb_tx = None;
    match job.kind {
        Kind::VchanStream | Kind::VchanPing => {
            vchan_ep = Some(vchan::connect_flat(mem.clone()).map_err(err)?);
            // A client kicks the server once after connecting (the
            // protocol's rule); harmless when nobody sleeps yet.
            if matches!(job.mode, Mode::Event { .. }) {
                sys::kick(&wire.ev[0]).map_err(err)?;
            }
        }
        Kind::VmbusStream | Kind::VmbusPing => {
            let (ab, ba, layout) = vmbus_rings(mem, job.ring)?;
            let mut inc = IncomingRing::new(ab, layout).map_err(err)?;
            inc.set_interrupts(!matches!(job.mode, Mode::Poll));
            if job.mode == Mode::Poll {
                // A reader that never sleeps wants no signals: with the
                // mask set, the writer's commit skips its signal check.
                inc.mask_interrupts().map_err(err)?;
            }
            let out = OutgoingRing::new(ba, layout).map_err(err)?;
            vmbus_pair = Some((inc, out));
        }
        Kind::RtrbStream => {
            rtrb_rx = super::RTRB_SLOT.lock().map_err(err)?.take();
        }
        Kind::RtrbPing => {
            rtrb_rx = super::RTRB_SLOT.lock().map_err(err)?.take();
            rtrb_tx = super::RTRB_BACK.lock().map_err(err)?.take();
        }
        _ => {}
    }
    ready()?;
    let meter = Meter::start();
    match job.kind {
        Kind::Memcpy => {}
        Kind::Custom => return Err("custom jobs need the binary's peer hook".into()),
        Kind::RtrbPing => {
            let rx = rtrb_rx.as_mut().ok_or("no rtrb consumer")?;
            let tx = rtrb_tx.as_mut().ok_or("no rtrb producer")?;
            for _ in 0..job.ops {
                rtrb_recv(rx, &mut buf)?;
                rtrb_send(tx, &buf)?;
            }
        }
        Kind::PipeStream | Kind::SockStream => {
            let fd = if job.kind == Kind::PipeStream {
                &wire.pipe[0][0]
            } else {
                &wire.sock[1]
            };
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk as u64) as usize;
                let got =
                    rustix::io::read(fd, buf.get_mut(..n).unwrap_or_default()).map_err(err)?;
                if got == 0 {
                    return Err("stream ended early".into());
                }
                left -= got as u64;
            }
        }
        Kind::RtrbStream if job.batch > 1 => {
            // Up to `batch` chunks per commit, copied out chunk by chunk
            // (the same work as `batch` reads).
            let rx = rtrb_rx.as_mut().ok_or("no rtrb consumer")?;
            let mut left = bytes as usize;
            let most = chunk.saturating_mul(job.batch as usize);
            while left > 0 {
                let n = left.min(most).min(rx.slots());
                if n == 0 {
                    std::hint::spin_loop();
                    continue;
                }
                let c = rx.read_chunk(n).map_err(err)?;
                let (x, y) = c.as_slices();
                for piece in x.chunks(chunk).chain(y.chunks(chunk)) {
                    if let Some(dst) = buf.get_mut(..piece.len()) {
                        dst.copy_from_slice(piece);
                    }
                }
                c.commit_all();
                left -= n;
            }
        }
        Kind::RtrbStream => {
            let rx = rtrb_rx.as_mut().ok_or("no rtrb consumer")?;
            let mut left = bytes as usize;
            while left > 0 {
                let n = left.min(chunk).min(rx.slots());
                if n == 0 {
                    std::hint::spin_loop();
                    continue;
                }
                let c = rx.read_chunk(n).map_err(err)?;
                let (x, y) = c.as_slices();
                let (bx, by) = buf.split_at_mut(x.len().min(chunk));
                bx.copy_from_slice(x);
                if let Some(dst) = by.get_mut(..y.len()) {
                    dst.copy_from_slice(y);
                }
                c.commit_all();
                left -= n;
            }
        }
        Kind::VchanStream if job.read_batch() > 1 => {
            let ep = vchan_ep.as_mut().ok_or("no endpoint")?;
            vchan_read_held(ep, bytes, chunk, job.read_batch(), &mut buf, &mut w)?;
        }
        Kind::VchanStream => {
            let ep = vchan_ep.as_mut().ok_or("no endpoint")?;
            let mut left = bytes;
            // Bytes readable as last seen, less what we read since.
            let mut ready = 0usize;
            while left > 0 {
                let n = left.min(chunk as u64) as usize;
                if ready == 0 {
                    w.spin_until(|| {
                        ready = ep.data_ready().map_err(err)?;
                        Ok(ready > 0)
                    })?;
                }
                match ep.read(buf.get_mut(..n).unwrap_or_default()) {
                    Ok(t) if t.len == 0 => return Err("vchan closed early".into()),
                    Ok(t) => {
                        left -= t.len as u64;
                        ready = ready.saturating_sub(t.len);
                        w.moved(t.notify)?;
                    }
                    Err(vchan::Error::WouldBlock) => w.blocked()?,
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        Kind::VmbusStream => {
            let (inc, _) = vmbus_pair.as_mut().ok_or("no rings")?;
            // The VMBus reader's pattern: mask interrupts while draining,
            // unmask (and re-check) only before sleeping.
            let event = matches!(job.mode, Mode::Event { .. });
            inc.set_interrupts(matches!(job.mode, Mode::Retry | Mode::RetryKick));
            if event || job.mode == Mode::Poll {
                inc.mask_interrupts().map_err(err)?;
            }
            let mut got = 0u64;
            let mut pending = 0u32;
            while got < job.ops {
                match inc.read_packet() {
                    Ok(p) => {
                        p.read_payload(0, &mut buf).map_err(err)?;
                        got += 1;
                        pending += 1;
                        if pending >= job.read_batch() {
                            let t = inc.commit().map_err(err)?;
                            pending = 0;
                            w.moved(t.notify)?;
                        }
                    }
                    Err(vmbus::Error::Empty) => {
                        // Publish our reads before waiting (the writer
                        // may be waiting for that space).
                        let t = inc.commit().map_err(err)?;
                        pending = 0;
                        w.moved(t.notify)?;
                        if !event {
                            if !w.spin_until(|| Ok(inc.available().map_err(err)? > 0))? {
                                w.blocked()?;
                            }
                            continue;
                        }
                        if w.spin_until(|| Ok(inc.available().map_err(err)? > 0))? {
                            continue;
                        }
                        if !inc.unmask_and_recheck().map_err(err)? {
                            w.blocked()?;
                        }
                        inc.mask_interrupts().map_err(err)?;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            let t = inc.commit().map_err(err)?;
            w.moved(t.notify)?;
        }
        Kind::LinePing => {
            for i in 1..=job.ops {
                let v = i as u32;
                while mem.load_u32(LINE_AT).map_err(err)? != v {
                    std::hint::spin_loop();
                }
                mem.store_u32(LINE_AT + 128, v).map_err(err)?;
            }
        }
        Kind::EventfdPing => {
            for _ in 0..job.ops {
                sys::wait(&wire.ev[1]).map_err(err)?;
                sys::kick(&wire.ev[0]).map_err(err)?;
            }
        }
        Kind::PipePing | Kind::SockPing => {
            let (rx, tx) = if job.kind == Kind::PipePing {
                (&wire.pipe[0][0], &wire.pipe[1][1])
            } else {
                (&wire.sock[1], &wire.sock[1])
            };
            for _ in 0..job.ops {
                sys::read_exact(rx, &mut buf).map_err(err)?;
                sys::write_all(tx, &buf).map_err(err)?;
            }
        }
        Kind::VchanPing => {
            let ep = vchan_ep.as_mut().ok_or("no endpoint")?;
            // batch > 1: hold the request and let the reply give it back,
            // under the reply's fence.
            let hold = job.batch > 1;
            for _ in 0..job.ops {
                w.spin_until(|| Ok(ep.data_ready().map_err(err)? >= chunk))?;
                vchan_recv(ep, &mut buf, hold, &mut w)?;
                vchan_send(ep, &buf, &mut w)?;
            }
            let t = ep.release().map_err(err)?;
            w.moved(t.notify)?;
        }
        Kind::VmbusPing => {
            let (inc, out) = vmbus_pair.as_mut().ok_or("no rings")?;
            // batch > 1: reply first, then publish the reads once `batch`
            // - 1 are pending (takes the read-index store and its fence
            // off the round trip, and the index's line out of the
            // writer's way).
            let deferred = job.batch > 1;
            let mut pending = 0u32;
            for i in 0..job.ops {
                vmbus_recv(inc, &mut buf, &mut w, !deferred)?;
                pending += 1;
                let payload: [&[u8]; 1] = [&buf];
                vmbus_send(out, &OutgoingPacket::in_band(i, &payload), &mut w)?;
                if deferred && pending + 1 >= job.batch {
                    let t = inc.commit().map_err(err)?;
                    pending = 0;
                    w.moved(t.notify)?;
                }
            }
            let t = inc.commit().map_err(err)?;
            w.moved(t.notify)?;
        }
    }
    Ok(meter.stop(w.stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_round_trips_through_bytes() {
        let job = Job {
            ops: 12345,
            ..Job::new(Kind::VmbusStream, 64, 65536).event(7).batched(16)
        };
        assert_eq!(Job::decode(&job.encode()), Some(job));
        let job = Job {
            ops: 9,
            ..Job::new(Kind::VchanStream, 64, 16)
                .retry_kick()
                .reader_batched(16)
        };
        assert_eq!(Job::decode(&job.encode()), Some(job));
        assert_eq!((job.batch, job.read_batch()), (1, 16));
        let s = SideStats {
            kicks: 3,
            sleeps: 4,
            syscalls: None,
            allocs: Some(0),
        };
        assert_eq!(SideStats::decode(&s.encode()), s);
    }
}
