//! Cross-process benchmark of iceoryx2's publish-subscribe against our
//! rings (ring-hosted's vchan stream and VMBus pipe).
//!
//! One binary, two processes: the parent (pinned to CPU 0) starts itself
//! again as `--peer` (pinned to CPU 1), which dies with it
//! (`PR_SET_PDEATHSIG`). The two talk over a control socket (one line per
//! job) and move the data over the contender under test: iceoryx2
//! services, or a vchan / VMBus ring set up through ring-hosted's
//! rendezvous. Each group's contenders run interleaved, round after round
//! (the order rotated each round), and every row reports the median over
//! rounds and its ratio to the iceoryx2 row of the same run.
//!
//! Every byte is checked: readers compare what they got with the pattern
//! the writer was to send (`pattern`), a ping's reply with the ping; a
//! missing or wrong byte or sample ends the run with a non-zero exit.
//! Every wait has a deadline (`sys::DEADLINE`).

mod ice;
mod pattern;
mod rings;
mod sys;

use pattern::{CHUNK, PING};
use ring_hosted::rendezvous::{self, ClientConfig, Listener, Proto, ServerConfig};
use ring_hosted::stream::VchanStream;
use ring_hosted::vmbus::VmbusPipe;
use rings::{Api, Link};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use sys::DEADLINE;

/// What a reader measured: `bytes` moved in `ns`, from its first chunk
/// to its last (the first chunk's bytes are not counted).
#[derive(Clone, Copy, Debug, Default)]
pub struct Timing {
    ns: u64,
    bytes: u64,
}

impl Timing {
    /// `bytes` read since `first`.
    pub fn since(first: Option<Instant>, bytes: u64) -> Timing {
        Timing {
            ns: first.map_or(0, |t| t.elapsed().as_nanos() as u64),
            bytes,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Group {
    Rtt,
    Copy,
    InPlace,
}

impl Group {
    const ALL: [Group; 3] = [Group::Rtt, Group::Copy, Group::InPlace];

    fn key(self) -> &'static str {
        match self {
            Group::Rtt => "rtt",
            Group::Copy => "copy",
            Group::InPlace => "inplace",
        }
    }

    fn from_key(k: &str) -> Option<Group> {
        Group::ALL.into_iter().find(|g| g.key() == k)
    }

    fn title(self) -> String {
        match self {
            Group::Rtt => "64-byte round trip, busy-polled, cross-process".to_owned(),
            Group::Copy => format!(
                "4 KiB throughput, cross-process, copy in and copy out \
                 ({} KiB rings; iceoryx2 subscriber buffer {} samples)",
                rings::RING >> 10,
                ice::BULK_DEPTH
            ),
            Group::InPlace => format!(
                "4 KiB throughput, cross-process, in place \
                 ({} KiB rings; iceoryx2 subscriber buffer {} samples)",
                rings::RING >> 10,
                ice::BULK_DEPTH
            ),
        }
    }
}

/// A contender: iceoryx2, or one of our rings driven through one API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Ice,
    Vchan(Api),
    Vmbus(Api),
}

impl Who {
    const ALL: [Who; 9] = [
        Who::Ice,
        Who::Vchan(Api::Stream),
        Who::Vchan(Api::Packet),
        Who::Vchan(Api::Try),
        Who::Vchan(Api::Reserve),
        Who::Vmbus(Api::Stream),
        Who::Vmbus(Api::Packet),
        Who::Vmbus(Api::Try),
        Who::Vmbus(Api::Reserve),
    ];

    /// A group's rows, iceoryx2 first.
    fn rows(g: Group) -> &'static [Who] {
        match g {
            Group::Rtt => &[Who::Ice, Who::Vchan(Api::Packet), Who::Vmbus(Api::Packet)],
            Group::Copy => &[
                Who::Ice,
                Who::Vchan(Api::Stream),
                Who::Vchan(Api::Packet),
                Who::Vmbus(Api::Stream),
                Who::Vmbus(Api::Packet),
            ],
            Group::InPlace => &[
                Who::Ice,
                Who::Vchan(Api::Try),
                Who::Vchan(Api::Reserve),
                Who::Vmbus(Api::Try),
                Who::Vmbus(Api::Reserve),
            ],
        }
    }

    fn key(self) -> &'static str {
        match self {
            Who::Ice => "ice",
            Who::Vchan(Api::Stream) => "vchan-stream",
            Who::Vchan(Api::Packet) => "vchan-packet",
            Who::Vchan(Api::Try) => "vchan-try",
            Who::Vchan(Api::Reserve) => "vchan-reserve",
            Who::Vmbus(Api::Stream) => "vmbus-stream",
            Who::Vmbus(Api::Packet) => "vmbus-msg",
            Who::Vmbus(Api::Try) => "vmbus-try",
            Who::Vmbus(Api::Reserve) => "vmbus-reserve",
        }
    }

    fn from_key(k: &str) -> Option<Who> {
        Who::ALL.into_iter().find(|w| w.key() == k)
    }

    fn row(self, g: Group) -> &'static str {
        match (g, self) {
            (Group::Rtt, Who::Ice) => {
                "iceoryx2 pub/sub ping-pong (`[u8]` slices, busy `receive()`)"
            }
            (Group::Rtt, Who::Vchan(_)) => "vchan packets (`send`/`recv`)",
            (Group::Rtt, Who::Vmbus(_)) => "VMBus pipe messages (`send_msg`/`recv_msg`)",
            (Group::Copy, Who::Ice) => {
                "iceoryx2 (`loan_slice_uninit` + `write_from_slice`; subscriber copies out)"
            }
            (_, Who::Vchan(Api::Stream)) => "vchan stream (`write_all` / `read` into a buffer)",
            (_, Who::Vchan(Api::Packet)) => {
                "vchan packets (`send` / `recv` into a buffer)"
            }
            (_, Who::Vmbus(Api::Stream)) => "VMBus pipe (`write_all` / `read` into a buffer)",
            (_, Who::Vmbus(Api::Packet)) => {
                "VMBus pipe messages (`send_msg` / `recv_msg` into a buffer)"
            }
            (_, Who::Ice) => {
                "iceoryx2 (`write_from_fn` into the loan; checks `payload()` in place)"
            }
            (_, Who::Vchan(Api::Try)) => {
                "vchan `try_write_with`/`try_read_with` (any room, ≤ 4 KiB per call)"
            }
            (_, Who::Vchan(Api::Reserve)) => {
                "vchan `write_with`/`read_with` (whole 4 KiB reservations)"
            }
            (_, Who::Vmbus(Api::Try)) => {
                "VMBus pipe `try_write_with`/`try_read_with` (any room, ≤ 4 KiB per call)"
            }
            (_, Who::Vmbus(Api::Reserve)) => {
                "VMBus pipe `write_with`/`read_with` (whole 4 KiB packets)"
            }
        }
    }
}

struct Opts {
    rounds: usize,
    sample: Duration,
    only: Option<Group>,
    stage: usize,
}

const USAGE: &str = "usage: ring-iceoryx2-bench [--rounds N] [--sample-ms MS] [--quick] [--only GROUP] [--stage BYTES]

Cross-process benchmark: iceoryx2 publish-subscribe against ring-hosted's
vchan stream and VMBus pipe, the parent on CPU 0, its peer process on CPU 1.
  --rounds N      interleaved rounds per group (default 15; --quick: 3)
  --sample-ms MS  length of one contender's sample in a round (default 60;
                  --quick: 30)
  --quick         a short run
  --only GROUP    one group: rtt, copy or inplace
  --stage BYTES   the in-place rows of our rings stage the pattern through a
                  buffer of this size (default 256, at most 4096)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    iceoryx2::prelude::set_log_level(iceoryx2::prelude::LogLevel::Error);
    let r = if args.first().map(String::as_str) == Some("--peer") {
        peer_main(&args)
    } else {
        parse(&args).and_then(|o| match o {
            Some(o) => parent_main(&o),
            None => {
                println!("{USAGE}");
                Ok(())
            }
        })
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ring-iceoryx2-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse(args: &[String]) -> Result<Option<Opts>, String> {
    let mut rounds = None;
    let mut sample_ms = None;
    let mut quick = false;
    let mut only = None;
    let mut stage = rings::STAGE;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|&v| v > 0)
                .ok_or_else(|| format!("{name} needs a positive number\n{USAGE}"))
        };
        match a.as_str() {
            "--rounds" => rounds = Some(value("--rounds")? as usize),
            "--sample-ms" => sample_ms = Some(value("--sample-ms")?),
            "--quick" => quick = true,
            "--stage" => stage = (value("--stage")? as usize).clamp(8, CHUNK),
            "--only" => {
                only = Some(
                    it.next()
                        .and_then(|g| Group::from_key(g))
                        .ok_or_else(|| format!("--only needs rtt, copy or inplace\n{USAGE}"))?,
                )
            }
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(Some(Opts {
        rounds: rounds.unwrap_or(if quick { 3 } else { 15 }),
        sample: Duration::from_millis(sample_ms.unwrap_or(if quick { 30 } else { 60 })),
        only,
        stage,
    }))
}

/// One line per message over the control socket, every read with a
/// deadline.
struct Ctl {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Ctl {
    fn new(s: UnixStream) -> Result<Ctl, String> {
        s.set_read_timeout(Some(DEADLINE))
            .map_err(|e| format!("control socket: {e}"))?;
        let w = s.try_clone().map_err(|e| format!("control socket: {e}"))?;
        Ok(Ctl {
            r: BufReader::new(s),
            w,
        })
    }

    fn send(&mut self, line: &str) -> Result<(), String> {
        writeln!(self.w, "{line}").map_err(|e| format!("control socket: write: {e}"))
    }

    fn recv(&mut self) -> Result<String, String> {
        let mut l = String::new();
        match self.r.read_line(&mut l) {
            Ok(0) => Err("control socket: the peer hung up".to_owned()),
            Ok(_) => Ok(l.trim_end().to_owned()),
            Err(e) => Err(format!("control socket: read: {e}")),
        }
    }

    fn set_timeout(&mut self, t: Duration) {
        let _ = self.r.get_ref().set_read_timeout(Some(t));
    }
}

/// The peer process: killed and reaped when dropped, unless it has been
/// waited for.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for a clean exit, at most [`DEADLINE`].
    fn finish(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                self.0 = None;
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("the peer process exited with {status}"))
                };
            }
            if start.elapsed() > DEADLINE {
                return Err("the peer process did not exit".to_owned());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn server_config(proto: Proto) -> ServerConfig {
    let mut c = ServerConfig::new(proto).ring_sizes(rings::RING, rings::RING);
    c.spin = rings::SPIN;
    c
}

fn client_config(proto: Proto) -> ClientConfig {
    let mut c = ClientConfig::new(proto);
    c.spin = rings::SPIN;
    c
}

/// Accepts the peer on `l`, failing early if it has exited.
fn accept(l: &Listener, child: &mut ChildGuard) -> Result<rendezvous::Session, String> {
    let start = Instant::now();
    loop {
        match l.accept_timeout(Duration::from_millis(100)) {
            Err(ring_hosted::Error::TimedOut) if start.elapsed() < DEADLINE => {
                if let Some(status) = child.exited() {
                    return Err(format!("the peer exited ({status}) before connecting"));
                }
            }
            Err(e) => return Err(format!("rendezvous accept: {e}")),
            Ok(s) => return Ok(s),
        }
    }
}

/// The parent's half: both rings, the iceoryx2 ports, the peer.
struct Parent {
    ctl: Ctl,
    vchan: VchanStream,
    vmbus: VmbusPipe,
    ice: ice::IceParent,
    next_job: u64,
    verified: (u64, u64),
    stage: usize,
    // Dropped after the rings and ports: kills the peer if still running.
    child: ChildGuard,
}

/// What one job gave: the parent's round-trip times, the reader's
/// timing, kicks on both sides.
struct Outcome {
    rtts: Vec<u64>,
    timing: Timing,
    kicks: u64,
}

fn parent_main(o: &Opts) -> Result<(), String> {
    sys::pin_to(0)?;
    let load_before = sys::load_average();
    let pid = std::process::id();
    let dir = Scratch(std::env::temp_dir().join(format!("ring-iceoryx2-bench-{pid}")));
    std::fs::create_dir_all(&dir.0).map_err(|e| format!("{}: {e}", dir.0.display()))?;
    let ctl_path = dir.0.join("ctl.sock");
    let ctl_l = UnixListener::bind(&ctl_path).map_err(|e| format!("control socket: {e}"))?;
    let vchan_l = Listener::bind(&dir.0.join("vchan.sock"), server_config(Proto::Vchan))
        .map_err(|e| format!("vchan rendezvous: {e}"))?;
    let vmbus_l = Listener::bind(&dir.0.join("vmbus.sock"), server_config(Proto::Vmbus))
        .map_err(|e| format!("VMBus rendezvous: {e}"))?;
    let base = format!("ring-iceoryx2-bench/{pid}");
    let services = ice::IceServices::create(&base)?;

    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut child = ChildGuard(Some(
        Command::new(exe)
            .arg("--peer")
            .arg(&dir.0)
            .arg(&base)
            .env(
                ring_hosted::parent::PARENT_ENV,
                ring_hosted::parent::own_pid(),
            )
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the peer process: {e}"))?,
    ));

    ctl_l
        .set_nonblocking(true)
        .map_err(|e| format!("control socket: {e}"))?;
    let start = Instant::now();
    let ctl = loop {
        match ctl_l.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(status) = child.exited() {
                    return Err(format!("the peer exited ({status}) before connecting"));
                }
                if start.elapsed() > DEADLINE {
                    return Err("the peer did not connect".to_owned());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(format!("control socket accept: {e}")),
        }
    };
    ctl.set_nonblocking(false)
        .map_err(|e| format!("control socket: {e}"))?;
    let mut ctl = Ctl::new(ctl)?;
    let mut vchan = accept(&vchan_l, &mut child)?
        .into_vchan()
        .ok_or("the vchan rendezvous gave another protocol")?;
    let mut vmbus = accept(&vmbus_l, &mut child)?
        .into_vmbus()
        .ok_or("the VMBus rendezvous gave another protocol")?;
    drop((vchan_l, vmbus_l));
    vchan.signal_mut().set_timeout(Some(DEADLINE));
    vmbus.signal_mut().set_timeout(Some(DEADLINE));
    rings::poll_vmbus(&mut vmbus)?;
    let ice = services.parent_ports(child.pid())?;
    match ctl.recv()?.as_str() {
        "hello" => {}
        other => return Err(format!("the peer said {other:?}")),
    }
    // iceoryx2 connections: parent, peer, parent (see IceChild::connect).
    ice.connect()?;
    ctl.send("connect")?;
    match ctl.recv()?.as_str() {
        "connected" => {}
        other => return Err(format!("the peer said {other:?}")),
    }
    ice.connect()?;
    let mut p = Parent {
        ctl,
        vchan,
        vmbus,
        ice,
        next_job: 0,
        verified: (0, 0),
        stage: o.stage,
        child,
    };

    let command = std::env::var("ICEORYX2_BENCH_COMMAND").unwrap_or_else(|_| {
        std::iter::once("ring-iceoryx2-bench".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" ")
    });
    println!(
        "### iceoryx2 {} against our rings, cross-process",
        env!("ICEORYX2_VERSION")
    );
    println!();
    println!(
        "CPU: {} ({} online); parent pinned to CPU 0 (on {}), peer process to CPU 1 \
         (sched_setaffinity); load average before: {load_before}",
        sys::cpu_model(),
        sys::online_cpus(),
        sys::current_cpu(),
    );
    println!();
    println!(
        "Command: `{command}`; {} rounds of ~{} ms per contender, contenders interleaved \
         (order rotated each round); medians over rounds.",
        o.rounds,
        o.sample.as_millis()
    );
    for g in Group::ALL {
        if o.only.is_some_and(|only| only != g) {
            continue;
        }
        println!();
        p.group(g, o)?;
    }
    p.ctl.send("quit")?;
    let Parent {
        ctl,
        vchan,
        vmbus,
        ice,
        verified,
        mut child,
        ..
    } = p;
    drop((ctl, vchan, vmbus, ice));
    child.finish()?;
    println!();
    println!(
        "Verified: {} samples / messages and {:.2} GiB, every byte checked on the receiving side; \
         load average after: {}",
        verified.0,
        verified.1 as f64 / f64::from(1u32 << 30),
        sys::load_average()
    );
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn percentile(sorted: &[u64], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)] as f64
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

impl Parent {
    fn kicks(&self, who: Who) -> u64 {
        kicks_of(&self.vchan, &self.vmbus, who)
    }

    /// Runs one job on both sides.
    fn job(&mut self, g: Group, who: Who, count: u64) -> Result<Outcome, String> {
        self.next_job += 1;
        let id = self.next_job;
        self.ctl.send(&format!(
            "job {} {} {count} {id} {}",
            g.key(),
            who.key(),
            self.stage
        ))?;
        let k0 = self.kicks(who);
        let mut rtts = Vec::with_capacity(if g == Group::Rtt { count as usize } else { 0 });
        let mine = match who {
            Who::Ice => match g {
                Group::Rtt => self.ice.ping(id, count, &mut rtts),
                Group::Copy => self.ice.send_copy(id, count),
                Group::InPlace => self.ice.send_in_place(id, count),
            },
            Who::Vchan(api) => {
                parent_ring(&mut self.vchan, g, api, (id, count, self.stage), &mut rtts)
            }
            Who::Vmbus(api) => {
                parent_ring(&mut self.vmbus, g, api, (id, count, self.stage), &mut rtts)
            }
        };
        let kicks = self.kicks(who) - k0;
        if let Err(e) = mine {
            // What did the peer see? Ask briefly, then give up on it.
            self.ctl.set_timeout(Duration::from_secs(2));
            let peer = self.ctl.recv().unwrap_or_default();
            let peer = peer
                .strip_prefix("fail ")
                .map(|m| format!("; the peer: {m}"));
            return Err(format!(
                "{} / {}: {e}{}",
                g.key(),
                who.key(),
                peer.unwrap_or_default()
            ));
        }
        let reply = self.ctl.recv()?;
        let fields: Vec<&str> = reply.split(' ').collect();
        match fields.as_slice() {
            ["done", ns, bytes, peer_kicks] => {
                let num = |s: &str| s.parse::<u64>().map_err(|_| format!("bad reply {reply:?}"));
                let timing = Timing {
                    ns: num(ns)?,
                    bytes: num(bytes)?,
                };
                let per = if g == Group::Rtt { PING } else { CHUNK } as u64;
                self.verified.0 += count;
                self.verified.1 += count * per * if g == Group::Rtt { 2 } else { 1 };
                Ok(Outcome {
                    rtts,
                    timing,
                    kicks: kicks + num(peer_kicks)?,
                })
            }
            _ => Err(format!(
                "{} / {}: the peer: {}",
                g.key(),
                who.key(),
                reply.strip_prefix("fail ").unwrap_or(&reply)
            )),
        }
    }

    /// Calibrates, runs and prints one group.
    fn group(&mut self, g: Group, o: &Opts) -> Result<(), String> {
        // Warm-up and calibration: one job per contender, then counts that
        // make each sample last about `o.sample`.
        let rows = Who::rows(g);
        let n = rows.len();
        let mut counts = vec![0u64; n];
        for (k, &who) in rows.iter().enumerate() {
            let cal = if g == Group::Rtt { 5_000 } else { 4_096 };
            let out = self.job(g, who, cal)?;
            let per_op_ns = if g == Group::Rtt {
                let mut r = out.rtts;
                r.sort_unstable();
                percentile(&r, 50)
            } else {
                out.timing.ns as f64 / (out.timing.bytes as f64 / CHUNK as f64).max(1.0)
            };
            let want = o.sample.as_nanos() as f64 / per_op_ns.max(1.0);
            counts[k] = (want as u64).clamp(1_000, 2_000_000);
        }
        // Per row, per round: (p50, p99) or (ns per chunk, GB/s).
        let mut vals: Vec<Vec<(f64, f64)>> = vec![Vec::new(); n];
        let mut kicks = vec![0u64; n];
        for r in 0..o.rounds {
            for k in 0..n {
                let i = (r + k) % n;
                let out = self.job(g, rows[i], counts[i])?;
                kicks[i] += out.kicks;
                vals[i].push(if g == Group::Rtt {
                    let mut t = out.rtts;
                    t.sort_unstable();
                    (percentile(&t, 50), percentile(&t, 99))
                } else {
                    let t = out.timing;
                    let chunks = (t.bytes / CHUNK as u64).max(1) as f64;
                    (t.ns as f64 / chunks, t.bytes as f64 / t.ns.max(1) as f64)
                });
            }
        }
        println!("#### {}", g.title());
        println!();
        let first = |i: usize| -> Vec<f64> { vals[i].iter().map(|v| v.0).collect() };
        let second = |i: usize| -> Vec<f64> { vals[i].iter().map(|v| v.1).collect() };
        let ice_a = median(&first(0));
        let ice_b = median(&second(0));
        if g == Group::Rtt {
            println!(
                "| contender | p50 ns | p99 ns | p50 vs iceoryx2 | p99 vs iceoryx2 \
                 | p50 vs iceoryx2, per round | kicks |"
            );
            println!("|---|---:|---:|---:|---:|---:|---:|");
        } else {
            println!(
                "| contender | ns per 4 KiB | GB/s | vs iceoryx2 | vs iceoryx2, per round | kicks |"
            );
            println!("|---|---:|---:|---:|---:|---:|");
        }
        for (i, &who) in rows.iter().enumerate() {
            let a = median(&first(i));
            let b = median(&second(i));
            // Latency: ours / iceoryx2 (lower is better). Throughput: our
            // rate / iceoryx2's (higher is better). Per round: the ratio
            // to the iceoryx2 sample of the same round.
            let per_round: Vec<f64> = (0..o.rounds)
                .map(|r| {
                    if g == Group::Rtt {
                        vals[i][r].0 / vals[0][r].0
                    } else {
                        vals[i][r].1 / vals[0][r].1
                    }
                })
                .collect();
            let (lo, hi) = min_max(&per_round);
            let kick = if who == Who::Ice {
                "-".to_owned()
            } else {
                kicks[i].to_string()
            };
            if g == Group::Rtt {
                println!(
                    "| {} | {a:.0} | {b:.0} | {:.2}× | {:.2}× | {lo:.2}–{hi:.2}× | {kick} |",
                    who.row(g),
                    a / ice_a,
                    b / ice_b
                );
            } else {
                println!(
                    "| {} | {a:.1} | {b:.2} | {:.2}× | {lo:.2}–{hi:.2}× | {kick} |",
                    who.row(g),
                    b / ice_b
                );
            }
        }
        println!();
        let per_sample: Vec<String> = rows
            .iter()
            .zip(counts)
            .map(|(w, c)| format!("{} {c}", w.key()))
            .collect();
        let counts = per_sample.join(", ");
        match g {
            Group::Rtt => println!(
                "Round-trip times from the pinger (parent), each timed with `Instant::now()` \
                 around send + receive + compare; the ponger checks each ping against the \
                 pattern and sends its bytes back; the pinger compares the reply with what it \
                 sent. p50/p99 per round, then the median over rounds. \"vs iceoryx2\" = ours / \
                 iceoryx2's (lower is faster). Round trips per sample: {counts}. Kicks: eventfd \
                 writes by both sides over all rounds (0: nobody was ever woken; the VMBus \
                 readers keep their interrupt mask set)."
            ),
            Group::Copy => println!(
                "Writers fill a private 4 KiB buffer with the pattern for each chunk, then copy \
                 it in; readers copy each chunk out into a private 4 KiB buffer and check all \
                 512 words. Rates from the reader (peer process), first chunk to last; \
                 \"vs iceoryx2\" = our rate / iceoryx2's (higher is faster). Chunks per sample: \
                 {counts}. Kicks: eventfd writes by both sides over all rounds."
            ),
            Group::InPlace => println!(
                "iceoryx2: the publisher stores each word straight into the loaned sample \
                 (`write_from_fn`), the subscriber checks `payload()` where it lies. Ours: the \
                 writer generates the pattern {stage} bytes at a time into a scratch buffer \
                 (allocated once per job) and writes it into the loaned ring spans through \
                 `SpanWriter` (`embedded_io::Write::write_all`); the reader reads the spans \
                 through `SpanReader` (`embedded_io::Read::read_exact`) {stage} bytes at a \
                 time into a scratch buffer and checks them there: the span cursors can only \
                 copy from or into a slice. Rates from the reader, first chunk to last; \
                 \"vs iceoryx2\" = our rate / iceoryx2's. Chunks per sample: {counts}. Kicks: \
                 eventfd writes by both sides over all rounds.",
                stage = self.stage
            ),
        }
        Ok(())
    }
}

/// The peer process: `--peer DIR BASE`.
fn peer_main(args: &[String]) -> Result<(), String> {
    let [_, dir, base] = args else {
        return Err("usage: --peer DIR SERVICE-BASE".to_owned());
    };
    ring_hosted::parent::die_with_parent().map_err(|e| format!("peer: {e}"))?;
    sys::pin_to(1)?;
    let dir = Path::new(dir);
    let ctl = UnixStream::connect(dir.join("ctl.sock"))
        .map_err(|e| format!("peer: control socket: {e}"))?;
    let mut ctl = Ctl::new(ctl)?;
    let mut vchan = rendezvous::connect_with(&dir.join("vchan.sock"), client_config(Proto::Vchan))
        .map_err(|e| format!("peer: vchan rendezvous: {e}"))?
        .into_vchan()
        .ok_or("peer: the vchan rendezvous gave another protocol")?;
    let mut vmbus = rendezvous::connect_with(&dir.join("vmbus.sock"), client_config(Proto::Vmbus))
        .map_err(|e| format!("peer: VMBus rendezvous: {e}"))?
        .into_vmbus()
        .ok_or("peer: the VMBus rendezvous gave another protocol")?;
    vchan.signal_mut().set_timeout(Some(DEADLINE));
    vmbus.signal_mut().set_timeout(Some(DEADLINE));
    rings::poll_vmbus(&mut vmbus)?;
    let mut ice = ice::IceChild::open(base)?;
    ctl.send("hello")?;
    loop {
        let line = ctl.recv()?;
        let f: Vec<&str> = line.split(' ').collect();
        let (g, who, count, id, stage) = match f.as_slice() {
            ["quit"] => return Ok(()),
            ["connect"] => {
                ice.connect()?;
                ctl.send("connected")?;
                continue;
            }
            ["job", g, w, count, id, stage] => (
                Group::from_key(g),
                Who::from_key(w),
                count.parse::<u64>().ok(),
                id.parse::<u64>().ok(),
                stage.parse::<usize>().ok(),
            ),
            _ => (None, None, None, None, None),
        };
        let (Some(g), Some(who), Some(count), Some(id), Some(stage)) = (g, who, count, id, stage)
        else {
            return Err(format!("peer: bad command {line:?}"));
        };
        let k0 = kicks_of(&vchan, &vmbus, who);
        let r = match who {
            Who::Ice => match g {
                Group::Rtt => ice.pong(id, count).map(|()| Timing::default()),
                Group::Copy => ice.receive(id, count, false),
                Group::InPlace => ice.receive(id, count, true),
            },
            Who::Vchan(api) => child_ring(&mut vchan, g, api, (id, count, stage)),
            Who::Vmbus(api) => child_ring(&mut vmbus, g, api, (id, count, stage)),
        };
        match r {
            Ok(t) => {
                let k = kicks_of(&vchan, &vmbus, who) - k0;
                ctl.send(&format!("done {} {} {k}", t.ns, t.bytes))?;
            }
            Err(e) => {
                let msg = e.replace('\n', " ");
                let _ = ctl.send(&format!("fail {msg}"));
                return Err(format!("peer: {} / {}: {msg}", g.key(), who.key()));
            }
        }
    }
}

fn kicks_of(vchan: &VchanStream, vmbus: &VmbusPipe, who: Who) -> u64 {
    match who {
        Who::Ice => 0,
        Who::Vchan(_) => vchan.kicks(),
        Who::Vmbus(_) => vmbus.kicks(),
    }
}

/// The parent's (writer's, pinger's) half of a job on one of our rings:
/// job id, count and stage size in `job`.
fn parent_ring<L: Link>(
    l: &mut L,
    g: Group,
    api: Api,
    (id, count, stage): (u64, u64, usize),
    rtts: &mut Vec<u64>,
) -> Result<(), String> {
    match g {
        Group::Rtt => rings::ping(l, id, count, rtts),
        Group::Copy => rings::write_copy(l, api, id, count),
        Group::InPlace => rings::write_in_place(l, api, id, count, stage),
    }
}

/// The peer's (reader's, ponger's) half of a job on one of our rings.
fn child_ring<L: Link>(
    l: &mut L,
    g: Group,
    api: Api,
    (id, count, stage): (u64, u64, usize),
) -> Result<Timing, String> {
    match g {
        Group::Rtt => rings::pong(l, id, count).map(|()| Timing::default()),
        Group::Copy => rings::read_copy(l, api, id, count),
        Group::InPlace => rings::read_in_place(l, api, id, count, stage),
    }
}
