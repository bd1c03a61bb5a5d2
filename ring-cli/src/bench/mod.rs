//! The benchmark harness behind `ring bench` and the `rings` cargo bench.
//!
//! Contenders of one [`Group`] run interleaved (A B C, B C A, ... for
//! [`Config::rounds`] rounds, each sample about [`Config::sample`] long),
//! and every result is reported as a ratio against the group's first
//! contender, measured in the same rounds. Absolute numbers on a shared
//! machine move by 2× between runs; ratios of interleaved medians move far
//! less, so the targets are ratios.
//!
//! Both sides of a pair are pinned to different cores, between threads
//! ([`Place::Thread`]) or between processes ([`Place::Process`], a child
//! started with `--bench-peer` that got the shared memory, eventfds, pipes
//! and socket pair once over a Unix socket).
//!
//! A [`Check`] turns a ratio or a count into PASS or MISS; the harness
//! prints, it never fails.

pub mod link;
pub mod suite;
pub mod sys;
pub mod work;

use link::{ProcessLink, ThreadLink};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use work::{Job, Kind, Sample, Wire};

/// Hands an rtrb consumer from side A to side B (threads only).
pub(crate) static RTRB_SLOT: Mutex<Option<rtrb::Consumer<u8>>> = Mutex::new(None);
/// Hands side B the producer of the return ring of an rtrb ping-pong.
pub(crate) static RTRB_BACK: Mutex<Option<rtrb::Producer<u8>>> = Mutex::new(None);

/// Where side B runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Another thread of this process.
    Thread,
    /// A child process.
    Process,
}

/// A measurement function of its own (the C contenders use this): run
/// `ops` operations and report. It gets the shared resources and, if a
/// peer process runs, the link to it (for [`work::Kind::Custom`] jobs).
pub type CustomRun<'a> =
    Box<dyn FnMut(&Wire, Option<&mut dyn work::Link>, u64) -> Result<Sample, String> + 'a>;

enum How<'a> {
    Job(Job, Place),
    Custom(CustomRun<'a>),
}

/// One contender of a group.
pub struct Contender<'a> {
    name: String,
    how: How<'a>,
}

impl<'a> Contender<'a> {
    /// A built-in workload.
    pub fn job(name: impl Into<String>, job: Job, place: Place) -> Self {
        Contender {
            name: name.into(),
            how: How::Job(job, place),
        }
    }

    /// A measurement of the caller's own.
    pub fn custom(name: impl Into<String>, run: CustomRun<'a>) -> Self {
        Contender {
            name: name.into(),
            how: How::Custom(run),
        }
    }

    /// The contender's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn is_ping(&self) -> bool {
        matches!(&self.how, How::Job(j, _) if j.kind.is_ping())
    }
}

/// What a group measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Time per operation of a stream: ratios are speed-ups (higher is
    /// better).
    Throughput,
    /// Round-trip time, p50 and p99: ratios are slow-downs (lower is better).
    Latency,
}

/// A target on a group's results.
#[derive(Clone, Debug)]
pub enum Check {
    /// Contender `a` at least `min`× as fast as `b` (throughput), or at most
    /// `max`× as slow (latency p50).
    Ratio {
        /// The contender judged.
        a: usize,
        /// Its baseline.
        b: usize,
        /// The bound: ≥ for throughput, ≤ for latency.
        bound: f64,
    },
    /// At most `max` kicks per 64 KiB moved by contender `a`.
    KicksPer64K {
        /// The contender.
        a: usize,
        /// The bound.
        max: f64,
    },
    /// No allocations and no read/write syscalls per operation on either
    /// side (where counted).
    QuietDataPath {
        /// The contender.
        a: usize,
    },
}

/// Contenders measured together, and the targets on them.
pub struct Group<'a> {
    /// Title (a table heading).
    pub title: String,
    /// Throughput or latency.
    pub metric: Metric,
    /// The first one is the baseline the ratio column refers to.
    pub contenders: Vec<Contender<'a>>,
    /// Targets.
    pub checks: Vec<Check>,
}

impl<'a> Group<'a> {
    /// An empty group.
    pub fn new(title: impl Into<String>, metric: Metric) -> Self {
        Group {
            title: title.into(),
            metric,
            contenders: Vec::new(),
            checks: Vec::new(),
        }
    }

    /// Adds a contender; returns its index (for checks).
    pub fn add(&mut self, c: Contender<'a>) -> usize {
        self.contenders.push(c);
        self.contenders.len() - 1
    }
}

/// Harness settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Interleaved rounds per group.
    pub rounds: usize,
    /// Target length of one sample.
    pub sample: Duration,
    /// How to start a peer process: program and leading arguments (the
    /// socket path is appended). `None`: process rows are skipped.
    pub peer_command: Option<(PathBuf, Vec<String>)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rounds: 5,
            sample: Duration::from_millis(25),
            peer_command: None,
        }
    }
}

/// One contender's results.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Its name.
    pub name: String,
    /// Median over rounds of nanoseconds per operation (throughput), or the
    /// p50 round trip (latency).
    pub ns: f64,
    /// p99 round trip (latency only).
    pub p99: f64,
    /// Bytes per operation (throughput), for MB/s.
    pub bytes_per_op: f64,
    /// Kicks (both sides) per 64 KiB moved.
    pub kicks_per_64k: f64,
    /// Allocations per operation, where counted.
    pub allocs_per_op: Option<f64>,
    /// Read/write syscalls per operation (both sides), where counted.
    pub syscalls_per_op: Option<f64>,
    /// Why it could not run, if it could not.
    pub error: Option<String>,
}

/// A group's results.
#[derive(Clone, Debug)]
pub struct GroupResult {
    /// The group's title.
    pub title: String,
    /// Its metric.
    pub metric: Metric,
    /// One per contender, in order.
    pub outcomes: Vec<Outcome>,
    /// Checks with their verdicts: (text, measured, pass).
    pub verdicts: Vec<(String, String, bool)>,
}

/// The harness: shared resources, an optional peer process, settings.
pub struct Bench {
    cfg: Config,
    wire: Wire,
    process: Option<ProcessLink>,
    /// Groups run so far.
    pub results: Vec<GroupResult>,
}

impl Bench {
    /// Creates the shared resources, pins this thread to core 0 and, if
    /// configured, starts the peer process.
    ///
    /// # Errors
    ///
    /// If resources cannot be created or the peer cannot be started.
    pub fn new(cfg: Config) -> Result<Bench, String> {
        sys::pin_to(link::CORES.0);
        let wire = Wire::new()?;
        let process = match &cfg.peer_command {
            Some((program, args)) => {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                Some(ProcessLink::spawn(program, &args, &wire)?)
            }
            None => None,
        };
        Ok(Bench {
            cfg,
            wire,
            process,
            results: Vec::new(),
        })
    }

    /// The shared resources (for custom contenders).
    pub fn wire(&self) -> &Wire {
        &self.wire
    }

    fn sample(&mut self, c: &mut Contender<'_>, ops: u64) -> Result<Sample, String> {
        match &mut c.how {
            How::Custom(run) => {
                let link = self.process.as_mut().map(|l| l as &mut dyn work::Link);
                run(&self.wire, link, ops)
            }
            How::Job(job, place) => {
                let job = Job { ops, ..*job };
                match place {
                    Place::Thread => {
                        let wire = &self.wire;
                        std::thread::scope(|s| {
                            let mut link = ThreadLink::new(s, wire);
                            work::drive(&job, wire, &mut link)
                        })
                    }
                    Place::Process => {
                        let link = self.process.as_mut().ok_or("no peer process")?;
                        work::drive(&job, &self.wire, link)
                    }
                }
            }
        }
    }

    /// Finds an operation count whose sample lasts about `cfg.sample`
    /// (this also warms up).
    fn calibrate(&mut self, c: &mut Contender<'_>) -> Result<u64, String> {
        let mut ops = if c.is_ping() { 64 } else { 256 };
        loop {
            let s = self.sample(c, ops)?;
            let t = s.elapsed.max(Duration::from_micros(1));
            if t >= self.cfg.sample / 8 || ops >= 1 << 30 {
                let scale = self.cfg.sample.as_secs_f64() / t.as_secs_f64();
                return Ok(((ops as f64 * scale) as u64).clamp(16, 1 << 32));
            }
            ops *= 8;
        }
    }

    /// Runs a group interleaved and records (and returns) its results.
    pub fn run(&mut self, mut group: Group<'_>) -> &GroupResult {
        let n = group.contenders.len();
        let mut ops = vec![0u64; n];
        let mut errors: Vec<Option<String>> = vec![None; n];
        for (i, c) in group.contenders.iter_mut().enumerate() {
            match self.calibrate(c) {
                Ok(o) => ops[i] = o,
                Err(e) => errors[i] = Some(e),
            }
        }
        let mut per_op: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut rtts: Vec<Vec<u64>> = vec![Vec::new(); n];
        let mut totals: Vec<Totals> = vec![(0, 0, 0, Some(0), Some(0)); n];
        for round in 0..self.cfg.rounds.max(1) {
            for k in 0..n {
                let i = (k + round) % n;
                if errors[i].is_some() {
                    continue;
                }
                let Some(c) = group.contenders.get_mut(i) else {
                    continue;
                };
                match self.sample(c, ops[i]) {
                    Ok(s) => {
                        per_op[i].push(s.elapsed.as_nanos() as f64 / s.ops.max(1) as f64);
                        rtts[i].extend_from_slice(&s.rtt);
                        let t = &mut totals[i];
                        t.0 += s.ops;
                        t.1 += s.bytes;
                        t.2 += s.a.kicks + s.b.kicks;
                        let add = |x: Option<u64>, a: Option<u64>, b: Option<u64>| match (a, b) {
                            (Some(a), Some(b)) => x.map(|x| x + a + b),
                            (Some(a), None) => x.map(|x| x + a),
                            _ => None,
                        };
                        t.3 = add(t.3, s.a.syscalls, s.b.syscalls);
                        t.4 = add(t.4, s.a.allocs, s.b.allocs);
                    }
                    Err(e) => errors[i] = Some(e),
                }
            }
        }
        let outcomes: Vec<Outcome> = (0..n)
            .map(|i| {
                let name = group
                    .contenders
                    .get(i)
                    .map(|c| c.name.clone())
                    .unwrap_or_default();
                let (ops_total, bytes, kicks, sys, allocs) = totals[i];
                let opsf = ops_total.max(1) as f64;
                let (ns, p99) = if group.metric == Metric::Latency && !rtts[i].is_empty() {
                    (
                        percentile(&mut rtts[i], 0.50),
                        percentile(&mut rtts[i], 0.99),
                    )
                } else {
                    (median(&mut per_op[i]), 0.0)
                };
                Outcome {
                    name,
                    ns,
                    p99,
                    bytes_per_op: bytes as f64 / opsf,
                    kicks_per_64k: if bytes > 0 {
                        kicks as f64 * 65536.0 / bytes as f64
                    } else {
                        0.0
                    },
                    allocs_per_op: allocs.map(|a| a as f64 / opsf),
                    syscalls_per_op: sys.map(|s| s as f64 / opsf),
                    error: errors[i].take(),
                }
            })
            .collect();
        let verdicts = group
            .checks
            .iter()
            .map(|c| judge(c, group.metric, &outcomes))
            .collect();
        self.results.push(GroupResult {
            title: group.title,
            metric: group.metric,
            outcomes,
            verdicts,
        });
        self.results.last().unwrap_or_else(|| unreachable!())
    }
}

/// Ops, bytes, kicks, syscalls and allocations summed over samples.
type Totals = (u64, u64, u64, Option<u64>, Option<u64>);

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &mut [u64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let at = ((v.len() - 1) as f64 * q).round() as usize;
    v.get(at).copied().unwrap_or(0) as f64
}

fn name_of(outcomes: &[Outcome], i: usize) -> &str {
    outcomes.get(i).map(|o| o.name.as_str()).unwrap_or("?")
}

fn judge(c: &Check, metric: Metric, o: &[Outcome]) -> (String, String, bool) {
    let ns = |i: usize| o.get(i).map(|x| x.ns).unwrap_or(f64::NAN);
    match *c {
        Check::Ratio { a, b, bound } => {
            if metric == Metric::Throughput {
                let r = ns(b) / ns(a);
                (
                    format!("{} ≥ {bound}× {}", name_of(o, a), name_of(o, b)),
                    format!("{r:.2}×"),
                    r >= bound,
                )
            } else {
                let r = ns(a) / ns(b);
                (
                    format!("{} p50 ≤ {bound}× {}", name_of(o, a), name_of(o, b)),
                    format!("{r:.2}×"),
                    r <= bound,
                )
            }
        }
        Check::KicksPer64K { a, max } => {
            let k = o.get(a).map(|x| x.kicks_per_64k).unwrap_or(f64::NAN);
            (
                format!("{}: ≤ {max} kick per 64 KiB", name_of(o, a)),
                format!("{k:.3}"),
                k <= max,
            )
        }
        Check::QuietDataPath { a } => {
            let x = o.get(a);
            let al = x.and_then(|x| x.allocs_per_op);
            let sc = x.and_then(|x| x.syscalls_per_op);
            let fmt = |v: Option<f64>| v.map_or("not counted".to_string(), |v| format!("{v:.6}"));
            (
                format!("{}: 0 allocations and 0 syscalls per op", name_of(o, a)),
                format!("allocs {}, syscalls {}", fmt(al), fmt(sc)),
                al.is_none_or(|v| v == 0.0) && sc.is_none_or(|v| v < 0.001),
            )
        }
    }
}

fn si_rate(bytes_per_s: f64) -> String {
    if bytes_per_s >= 1e9 {
        format!("{:.2} GB/s", bytes_per_s / 1e9)
    } else {
        format!("{:.0} MB/s", bytes_per_s / 1e6)
    }
}

/// Formats results as plain text (`markdown` false) or Markdown tables.
pub fn render(results: &[GroupResult], markdown: bool) -> String {
    let mut out = String::new();
    for g in results {
        if markdown {
            let _ = writeln!(out, "\n### {}\n", g.title);
            match g.metric {
                Metric::Throughput => {
                    let _ = writeln!(out, "| contender | ns/op | rate | vs first | kicks/64K | syscalls/op | allocs/op |");
                    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
                }
                Metric::Latency => {
                    let _ = writeln!(
                        out,
                        "| contender | p50 ns | p99 ns | p50 vs first | syscalls/op | allocs/op |"
                    );
                    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
                }
            }
        } else {
            let _ = writeln!(out, "\n== {}", g.title);
        }
        let base = g.outcomes.first().map(|o| o.ns).unwrap_or(f64::NAN);
        for o in &g.outcomes {
            let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
            if let Some(e) = &o.error {
                let _ = if markdown {
                    writeln!(out, "| {} | error: {e} |", o.name)
                } else {
                    writeln!(out, "  {:<34} error: {e}", o.name)
                };
                continue;
            }
            match g.metric {
                Metric::Throughput => {
                    let rate = si_rate(o.bytes_per_op * 1e9 / o.ns);
                    let vs = base / o.ns;
                    let _ = if markdown {
                        writeln!(
                            out,
                            "| {} | {:.1} | {rate} | {vs:.2}× | {:.3} | {} | {} |",
                            o.name,
                            o.ns,
                            o.kicks_per_64k,
                            opt(o.syscalls_per_op),
                            opt(o.allocs_per_op)
                        )
                    } else {
                        writeln!(
                            out,
                            "  {:<34} {:>10.1} ns/op {:>12} {vs:>6.2}×  kicks/64K {:.3}  sys/op {}  alloc/op {}",
                            o.name,
                            o.ns,
                            rate,
                            o.kicks_per_64k,
                            opt(o.syscalls_per_op),
                            opt(o.allocs_per_op)
                        )
                    };
                }
                Metric::Latency => {
                    let vs = o.ns / base;
                    let _ = if markdown {
                        writeln!(
                            out,
                            "| {} | {:.0} | {:.0} | {vs:.2}× | {} | {} |",
                            o.name,
                            o.ns,
                            o.p99,
                            opt(o.syscalls_per_op),
                            opt(o.allocs_per_op)
                        )
                    } else {
                        writeln!(
                            out,
                            "  {:<34} p50 {:>8.0} ns  p99 {:>8.0} ns {vs:>6.2}×  sys/op {}  alloc/op {}",
                            o.name,
                            o.ns,
                            o.p99,
                            opt(o.syscalls_per_op),
                            opt(o.allocs_per_op)
                        )
                    };
                }
            }
        }
        if !g.verdicts.is_empty() && markdown {
            let _ = writeln!(out);
        }
        for (what, got, pass) in &g.verdicts {
            let v = if *pass { "PASS" } else { "MISS" };
            let _ = if markdown {
                writeln!(out, "- **{v}** {what}: {got}")
            } else {
                writeln!(out, "  {v}  {what}: {got}")
            };
        }
    }
    out
}

/// A summary of every check: (group, check, measured, pass).
pub fn verdicts(results: &[GroupResult]) -> Vec<(String, String, String, bool)> {
    results
        .iter()
        .flat_map(|g| {
            g.verdicts
                .iter()
                .map(|(w, m, p)| (g.title.clone(), w.clone(), m.clone(), *p))
        })
        .collect()
}

/// The machine line: cores, CPU model, kernel, load.
pub fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!(
        "{} usable cores, {cpu}, Linux {kernel}, load average {}",
        sys::usable_cores(),
        load_average()
    )
}

/// The 1-, 5- and 15-minute load averages as `/proc/loadavg` shows them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs one sample of a job between threads, outside any group (for
/// quick checks and tests).
///
/// # Errors
///
/// As the workload.
pub fn once(wire: &Wire, job: Job) -> Result<Sample, String> {
    std::thread::scope(|s| {
        let mut link = ThreadLink::new(s, wire);
        work::drive(&job, wire, &mut link)
    })
}

/// The kinds that only make sense between threads.
pub fn thread_only(kind: Kind) -> bool {
    matches!(kind, Kind::Memcpy | Kind::RtrbStream | Kind::RtrbPing)
}

/// Measures how long `f` takes, for custom contenders.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t0 = Instant::now();
    let r = f();
    (r, t0.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One tiny row of each kind, a few milliseconds each: the harness
    /// runs, every contender produces a number, and the output has its
    /// shape (tables, ratios, PASS/MISS lines).
    #[test]
    fn smoke_every_kind_between_threads() {
        let cfg = Config {
            rounds: 2,
            sample: Duration::from_millis(2),
            peer_command: None,
        };
        let mut bench = Bench::new(cfg).unwrap();
        let t = Place::Thread;
        let mut stream = Group::new("stream", Metric::Throughput);
        let rtrb = stream.add(Contender::job(
            "rtrb",
            Job::new(Kind::RtrbStream, 64, 4096),
            t,
        ));
        let v = stream.add(Contender::job(
            "vchan",
            Job::new(Kind::VchanStream, 64, 12),
            t,
        ));
        stream.add(Contender::job(
            "vchan ev",
            Job::new(Kind::VchanStream, 1024, 10).event(100),
            t,
        ));
        let m = stream.add(Contender::job(
            "vmbus",
            Job::new(Kind::VmbusStream, 64, 8192).batched(4),
            t,
        ));
        stream.add(Contender::job(
            "vmbus ev",
            Job::new(Kind::VmbusStream, 256, 8192).event(100),
            t,
        ));
        stream.add(Contender::job("memcpy", Job::new(Kind::Memcpy, 64, 0), t));
        stream.add(Contender::job("pipe", Job::new(Kind::PipeStream, 64, 0), t));
        stream.add(Contender::job("sock", Job::new(Kind::SockStream, 64, 0), t));
        stream.checks.push(Check::Ratio {
            a: v,
            b: rtrb,
            bound: 1.0,
        });
        stream.checks.push(Check::KicksPer64K { a: m, max: 1.0 });
        stream.checks.push(Check::QuietDataPath { a: v });
        let mut ping = Group::new("ping", Metric::Latency);
        let line = ping.add(Contender::job("line", Job::new(Kind::LinePing, 64, 0), t));
        let vp = ping.add(Contender::job(
            "vchan",
            Job::new(Kind::VchanPing, 64, 12),
            t,
        ));
        ping.add(Contender::job(
            "vchan ev",
            Job::new(Kind::VchanPing, 64, 12).event(0),
            t,
        ));
        ping.add(Contender::job(
            "vmbus",
            Job::new(Kind::VmbusPing, 64, 8192),
            t,
        ));
        ping.add(Contender::job(
            "vmbus ev",
            Job::new(Kind::VmbusPing, 64, 8192).event(0),
            t,
        ));
        ping.add(Contender::job(
            "eventfd",
            Job::new(Kind::EventfdPing, 8, 0),
            t,
        ));
        ping.add(Contender::job("pipe", Job::new(Kind::PipePing, 64, 0), t));
        ping.add(Contender::job("sock", Job::new(Kind::SockPing, 64, 0), t));
        ping.add(Contender::job(
            "rtrb",
            Job::new(Kind::RtrbPing, 64, 4096),
            t,
        ));
        ping.checks.push(Check::Ratio {
            a: vp,
            b: line,
            bound: 2.0,
        });
        for g in [stream, ping] {
            let r = bench.run(g);
            for o in &r.outcomes {
                assert!(o.error.is_none(), "{}: {:?}", o.name, o.error);
                assert!(o.ns.is_finite() && o.ns > 0.0, "{}: {}", o.name, o.ns);
            }
        }
        let text = render(&bench.results, false);
        let md = render(&bench.results, true);
        assert!(text.contains("== stream") && text.contains("== ping"));
        assert!(md.contains("| contender |") && md.contains("### ping"));
        let v = verdicts(&bench.results);
        assert_eq!(v.len(), 4);
        assert!(text.matches("PASS").count() + text.matches("MISS").count() == 4);
    }

    #[test]
    fn the_default_suite_is_well_formed() {
        let gs = suite::groups(suite::Selection {
            sweeps: true,
            process: true,
        });
        assert!(gs.len() > 10);
        for g in &gs {
            for c in &g.checks {
                let ok = |i: usize| i < g.contenders.len();
                match *c {
                    Check::Ratio { a, b, .. } => assert!(ok(a) && ok(b), "{}", g.title),
                    Check::KicksPer64K { a, .. } | Check::QuietDataPath { a } => {
                        assert!(ok(a), "{}", g.title)
                    }
                }
            }
        }
    }
}
