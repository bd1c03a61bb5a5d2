//! `ring`: run, pipe through and inspect shared-memory rings between
//! processes. See `ring --help`.

#![deny(unsafe_code)]

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use ring_hosted::attach::{self, MemSource, VchanLayout, VmbusRing, Wakeup};
use ring_hosted::check::{duplex, Checksum, Pattern};
use ring_hosted::eventfd::{Notice, DEFAULT_SPIN, MAX_SPIN};
use ring_hosted::inspect;
use ring_hosted::rendezvous::{
    self, ClientConfig, Listener, PeerPolicy, Proto, ServerConfig, Session,
};
use ring_hosted::stream::{PollStream, VchanStream};
use ring_hosted::vmbus::VmbusPipe;
use ring_hosted::Error;
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The largest `--spin-us`.
const MAX_SPIN_US: u64 = MAX_SPIN.as_micros() as u64;

/// Exit status of `listen`, `connect` and `attach`: 0 every byte went
/// through both ways and the peer ended cleanly; 1 set-up or I/O failed;
/// 2 usage; 3 the peer broke the ring protocol; 4 the peer closed before
/// taking all our bytes; 5 the peer died or hung up first; 6 timed out;
/// 7 our stdout closed first.
const EXIT_CODES: &str = "Exit status of listen, connect and attach: 0 every byte went through \
both ways and the peer ended cleanly; 1 set-up or I/O failed; 2 usage; 3 the peer broke the \
ring protocol; 4 the peer closed before taking all our bytes; 5 the peer died or hung up \
first; 6 timed out; 7 our stdout closed first. See docs/hosted.md.";

/// Shared-memory rings between two processes: memfd + eventfds, wire
/// compatible with Xen vchan and Hyper-V VMBus.
#[derive(Parser, Debug)]
#[command(name = "ring", version, propagate_version = true, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// Ring protocols the command speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum CliProto {
    /// Xen vchan byte stream (two rings, one control page).
    Vchan,
    /// Hyper-V VMBus rings, used as a pipe (in-band packets).
    Vmbus,
}

impl From<CliProto> for Proto {
    fn from(p: CliProto) -> Proto {
        match p {
            CliProto::Vchan => Proto::Vchan,
            CliProto::Vmbus => Proto::Vmbus,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// For each protocol, run a transfer between this process and a peer
    /// process it starts, verify checksums both ways, and print throughput
    /// and latency.
    Demo {
        /// Bytes to send each way (suffixes K, M, G: powers of 1024).
        #[arg(long, default_value = "1G", value_parser = parse_size)]
        bytes: u64,
        /// 64-byte ping-pong round trips to time.
        #[arg(long, default_value_t = 20_000)]
        rounds: u32,
        /// Size of each ring, 1..1M (rounded up: vchan to a power of two of
        /// at least 1K, vmbus to whole 4 KiB pages).
        #[arg(long, default_value = "1M", value_parser = parse_ring_size)]
        ring_size: u64,
        /// Spin before sleeping, in microseconds (0: never spin; at most
        /// 1000000). A spin ends early when the peer hangs up or closes.
        #[arg(long, default_value_t = DEFAULT_SPIN.as_micros() as u64,
              value_parser = clap::value_parser!(u64).range(0..=MAX_SPIN_US))]
        spin_us: u64,
        /// Protocols to run (repeat or comma-separate; default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        proto: Vec<CliProto>,
    },
    /// Serve one peer on a Unix socket and pipe stdin/stdout through the
    /// ring, both directions (like socat).
    Listen {
        /// Socket path to bind.
        socket: PathBuf,
        /// Ring protocol.
        #[arg(long, value_enum, default_value = "vchan")]
        proto: CliProto,
        /// Size of each ring.
        #[arg(long, default_value = "64K", value_parser = parse_ring_size)]
        ring_size: u64,
        /// Accept peers of any uid (default: only our own).
        #[arg(long)]
        any_uid: bool,
        /// Give up (exit 6) once the peer has been silent this long with the
        /// stream unfinished (seconds; default: wait while it lives).
        #[arg(long, value_parser = parse_secs)]
        timeout: Option<Duration>,
        /// Serve one session after another until stopped (stdin goes to the
        /// first; a failed session is reported and the next is served).
        #[arg(long)]
        keep: bool,
    },
    /// Connect to a `ring listen` socket and pipe stdin/stdout through the
    /// ring, both directions.
    Connect {
        /// Socket path to connect to.
        socket: PathBuf,
        /// Ring protocol.
        #[arg(long, value_enum, default_value = "vchan")]
        proto: CliProto,
        /// Give up (exit 6) once the peer has been silent this long with the
        /// stream unfinished (seconds; default: wait while it lives).
        #[arg(long, value_parser = parse_secs)]
        timeout: Option<Duration>,
    },
    /// Decode the control state of the rings in a shm or memfd-backed file
    /// (e.g. /proc/PID/fd/N): indices, used/free, who owes whom a signal,
    /// and orders, live and notify bytes (vchan) or interrupt masks and
    /// pending send sizes (vmbus).
    Inspect {
        /// The file holding the ring(s) at offset 0.
        #[arg(required_unless_present = "pid")]
        file: Option<PathBuf>,
        /// Instead of a file: inspect every ring memfd this process holds
        /// (the `ring-*` memfds in /proc/PID/fd; the protocol is read from
        /// the memfd's name).
        #[arg(long, conflicts_with = "file")]
        pid: Option<u32>,
        /// Ring protocol of the file.
        #[arg(long, value_enum, default_value = "vchan")]
        proto: CliProto,
        /// vmbus: data bytes of the first (client->server) ring; the second
        /// ring takes the rest. Default: two rings of equal size.
        #[arg(long, value_parser = parse_size)]
        data_size: Option<u64>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Join rings a foreign program set up itself (memory, layout and
    /// eventfds given explicitly) and pipe stdin/stdout through them, both
    /// directions. Offsets are bytes from the start of the memory; the vchan
    /// ring offsets default to the flat layout after --ctrl-offset. VMBus
    /// ring sizes include each ring's control page. Unsealed memory must
    /// not be shrunk by its maker (that would kill us with SIGBUS).
    Attach(Box<AttachArgs>),
    /// Benchmark the rings against pipe, Unix socket, eventfd and rtrb
    /// (ratios measured interleaved; the C rings are in `cargo bench`).
    Bench(ring_hosted::bench::suite::BenchArgs),
    /// The peer side of `ring demo` and of the tests.
    #[command(hide = true)]
    Peer {
        /// Socket to connect to (or bind, with --listen).
        #[arg(long)]
        socket: PathBuf,
        /// What to do once connected.
        #[arg(long, value_enum)]
        mode: PeerMode,
        /// Ring protocol.
        #[arg(long, value_enum, default_value = "vchan")]
        proto: CliProto,
        /// Bind and serve instead of connecting.
        #[arg(long)]
        listen: bool,
        /// Bytes to move (0 in source mode: for ever).
        #[arg(long, default_value = "0", value_parser = parse_size)]
        bytes: u64,
        /// Ping-pong rounds (demo mode).
        #[arg(long, default_value_t = 0)]
        rounds: u32,
        /// Pattern seed (source and sink modes).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Spin budget in microseconds.
        #[arg(long, default_value_t = DEFAULT_SPIN.as_micros() as u64,
              value_parser = clap::value_parser!(u64).range(0..=MAX_SPIN_US))]
        spin_us: u64,
        /// Ring size when listening.
        #[arg(long, default_value = "64K", value_parser = parse_ring_size)]
        ring_size: u64,
    },
}

/// Which end of a vchan `ring attach` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum CliRole {
    /// Write the control page and wait for the client.
    Server,
    /// Join a control page a server wrote.
    Client,
}

/// Arguments of `ring attach`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("memory").required(true).args(["file", "fd"])))]
struct AttachArgs {
    /// The shared memory: a shm or memfd-backed file, opened read-write.
    #[arg(long)]
    file: Option<PathBuf>,
    /// The shared memory: an inherited fd number, open read-write.
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    fd: Option<i32>,
    /// Ring protocol.
    #[arg(long, value_enum)]
    proto: CliProto,
    /// vchan: which end we are.
    #[arg(long, value_enum)]
    role: Option<CliRole>,
    /// vchan: byte offset of the 4 KiB control page [default: 0].
    #[arg(long, value_parser = parse_size)]
    ctrl_offset: Option<u64>,
    /// vchan: byte offset (from the start of the memory) of the left
    /// (client->server) ring's data [default: the flat layout after the
    /// control page, i.e. --ctrl-offset + 4096].
    #[arg(long, value_parser = parse_size)]
    left_offset: Option<u64>,
    /// vchan: byte offset (from the start of the memory) of the right
    /// (server->client) ring's data [default: the flat layout, after the
    /// left ring].
    #[arg(long, value_parser = parse_size)]
    right_offset: Option<u64>,
    /// vchan server: minimum size of the ring we read (left) [default: 64K].
    #[arg(long, value_parser = parse_size)]
    read_min: Option<u64>,
    /// vchan server: minimum size of the ring we write (right) [default: 64K].
    #[arg(long, value_parser = parse_size)]
    write_min: Option<u64>,
    /// vmbus: byte offset of the ring we write (the peer reads it).
    #[arg(long, value_parser = parse_size)]
    tx_offset: Option<u64>,
    /// vmbus: bytes of the ring we write, its control page included.
    #[arg(long, value_parser = parse_size)]
    tx_size: Option<u64>,
    /// vmbus: byte offset of the ring we read (the peer writes it).
    #[arg(long, value_parser = parse_size)]
    rx_offset: Option<u64>,
    /// vmbus: bytes of the ring we read, its control page included.
    #[arg(long, value_parser = parse_size)]
    rx_size: Option<u64>,
    /// vmbus: offset of the data inside each ring [default: 4096].
    #[arg(long, value_parser = parse_size)]
    data_offset: Option<u64>,
    /// Eventfd we write to kick the peer (the one the peer waits on).
    #[arg(long, requires = "wait_fd", value_parser = clap::value_parser!(i32).range(0..))]
    notify_fd: Option<i32>,
    /// Eventfd we read to be woken by the peer (the one the peer writes).
    /// Must differ from --notify-fd: with one eventfd each side can
    /// swallow its own kick.
    #[arg(long, requires = "notify_fd", value_parser = clap::value_parser!(i32).range(0..))]
    wait_fd: Option<i32>,
    /// No eventfds: we never kick, and look at the ring every 200 us. The
    /// peer must poll too: it is never woken.
    #[arg(long, conflicts_with_all = ["notify_fd", "wait_fd"])]
    poll: bool,
    /// The peer's process id: its death is noticed at once (through a
    /// pidfd) and ends the pipe with exit 5.
    #[arg(long)]
    peer_pid: Option<u32>,
    /// A foreign peer cannot say "no more from me" without closing both
    /// ways: once stdin has ended and the peer has read all of it, keep
    /// copying the peer's bytes until it has been quiet this long (counted
    /// only once it has connected), then close (milliseconds).
    #[arg(long, default_value_t = 500)]
    linger_ms: u64,
    /// Give up (exit 6) once the peer has been silent this long with the
    /// stream unfinished (seconds; counted only once it has connected).
    #[arg(long, value_parser = parse_secs)]
    timeout: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PeerMode {
    /// The client side of `ring demo`.
    Demo,
    /// Write back everything read, until the other side closes.
    Echo,
    /// Write the seed's pattern (`--bytes`, or for ever), then close.
    Source,
}

/// Parses a positive number of seconds (fractions allowed).
fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if v > 0.0 && v <= 1e9 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!("timeout {s} is outside (0, 1e9] seconds"))
    }
}

/// Parses a ring size: 1 byte to 1 MiB (vchan's largest ring).
fn parse_ring_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if (1..=1 << 20).contains(&n) {
        Ok(n)
    } else {
        Err(format!("ring size {n} is outside 1..=1M"))
    }
}

/// Parses `123`, `64K`, `1M`, `2G` (binary multiples; `KiB` etc. too).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (try 4096, 64K, 1M, 1G)"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        _ => return Err(format!("unknown size unit `{unit}` (use K, M or G)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Demo {
            bytes,
            rounds,
            ring_size,
            spin_us,
            proto,
        } => demo(bytes, rounds, ring_size, spin_us, &proto),
        Cmd::Listen {
            socket,
            proto,
            ring_size,
            any_uid,
            timeout,
            keep,
        } => listen(&socket, proto.into(), ring_size, any_uid, timeout, keep),
        Cmd::Connect {
            socket,
            proto,
            timeout,
        } => connect(&socket, proto.into(), timeout),
        Cmd::Inspect {
            file,
            pid,
            proto,
            data_size,
            json,
        } => match (file, pid) {
            (_, _) if data_size.is_some() && proto != CliProto::Vmbus => {
                usage("--data-size only applies to --proto vmbus".into())
            }
            (Some(file), _) => inspect_file(&file, proto.into(), data_size, json),
            (None, Some(pid)) => inspect_pid(pid, json),
            (None, None) => Err(Failure::from("nothing to inspect")),
        },
        Cmd::Attach(args) => attach_cmd(*args),
        Cmd::Bench(args) => ring_hosted::bench::suite::run(args).map_err(Failure::from),
        Cmd::Peer {
            socket,
            mode,
            proto,
            listen,
            bytes,
            rounds,
            seed,
            spin_us,
            ring_size,
        } => peer(
            &socket,
            proto.into(),
            mode,
            listen,
            bytes,
            rounds,
            seed,
            Duration::from_micros(spin_us),
            ring_size,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("ring: {}", f.reason);
            ExitCode::from(f.code)
        }
    }
}

/// Exit status of a piping subcommand (`listen`, `connect`, `attach`):
/// 0 only when every byte went through both ways and the peer ended
/// cleanly. The table is in docs/hosted.md and `ring --help`.
mod exit {
    /// Set-up or I/O failed (bind, connect, memory, stdin).
    pub const FAILED: u8 = 1;
    /// The peer broke the ring protocol (and, for `inspect`, an image that
    /// does not validate).
    pub const CORRUPT: u8 = 3;
    /// The peer closed, or ended its stream, before it took every byte we
    /// had for it (or said it took a different count).
    pub const UNDELIVERED: u8 = 4;
    /// The peer died or hung up before the stream ended cleanly.
    pub const PEER_GONE: u8 = 5;
    /// The timeout passed with the stream unfinished.
    pub const TIMED_OUT: u8 = 6;
    /// Our stdout closed before the peer's stream ended.
    pub const STDOUT_CLOSED: u8 = 7;
}

/// Why a subcommand failed: its exit code and one line.
#[derive(Debug)]
struct Failure {
    code: u8,
    reason: String,
}

impl From<String> for Failure {
    fn from(reason: String) -> Self {
        Failure {
            code: exit::FAILED,
            reason,
        }
    }
}

impl From<&str> for Failure {
    fn from(reason: &str) -> Self {
        reason.to_string().into()
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Ring(ring_core::vchan::Error::Corrupt(_))
            | Error::Vmbus(ring_core::vmbus::Error::Corrupt(_)) => exit::CORRUPT,
            Error::Closed => exit::UNDELIVERED,
            Error::PeerGone => exit::PEER_GONE,
            Error::TimedOut => exit::TIMED_OUT,
            _ => exit::FAILED,
        };
        Failure {
            code,
            reason: e.to_string(),
        }
    }
}

type Outcome = Result<(), Failure>;

fn ring_bytes(size: u64) -> Result<usize, String> {
    usize::try_from(size).map_err(|_| format!("ring size {size} is too large"))
}

// ---------------------------------------------------------------- demo

/// One protocol's row of the demo table.
struct Row {
    proto: &'static str,
    bytes: u64,
    gbps: f64,
    p50: Duration,
    p99: Duration,
    kicks_per_mib: f64,
    ok: bool,
    note: String,
}

fn demo(bytes: u64, rounds: u32, ring_size: u64, spin_us: u64, protos: &[CliProto]) -> Outcome {
    let protos = if protos.is_empty() {
        vec![CliProto::Vchan, CliProto::Vmbus]
    } else {
        protos.to_vec()
    };
    let ring = ring_bytes(ring_size)?;
    let mut rows = Vec::new();
    for p in protos {
        rows.push(demo_one(p.into(), bytes, rounds, ring, spin_us)?);
    }
    println!(
        "{:<8} {:>14} {:>12} {:>10} {:>10} {:>10}  checksums",
        "protocol", "bytes each way", "GB/s each way", "rtt p50", "rtt p99", "kicks/MiB"
    );
    for r in &rows {
        println!(
            "{:<8} {:>14} {:>13.2} {:>10} {:>10} {:>10.3}  {}",
            r.proto,
            r.bytes,
            r.gbps,
            fmt_dur(r.p50),
            fmt_dur(r.p99),
            r.kicks_per_mib,
            r.note
        );
    }
    if rows.iter().all(|r| r.ok) {
        Ok(())
    } else {
        Err(Failure::from("checksum mismatch: see the table"))
    }
}

fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} us")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// The summary each side sends after the stream: checksums of what it
/// sent and received, and its kick count.
fn summary(sent: &Checksum, received: &Checksum, kicks: u64) -> [u8; 40] {
    let mut b = [0u8; 40];
    for (i, v) in [
        sent.finish(),
        sent.len(),
        received.finish(),
        received.len(),
        kicks,
    ]
    .into_iter()
    .enumerate()
    {
        b[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
    }
    b
}

fn unsummary(b: &[u8]) -> [u64; 5] {
    let mut out = [0u64; 5];
    for (i, v) in out.iter_mut().enumerate() {
        let mut w = [0u8; 8];
        w.copy_from_slice(b.get(8 * i..8 * i + 8).unwrap_or(&[0; 8]));
        *v = u64::from_le_bytes(w);
    }
    out
}

const SERVER_SEED: u64 = 0x5e57_e5ee_d000_0001;
const CLIENT_SEED: u64 = 0xc11e_47ee_d000_0002;

/// Compares our checksums with the peer's summary; returns
/// (peer→us ok, us→peer ok).
fn compare(ours_sent: &Checksum, ours_recv: &Checksum, theirs: [u64; 5]) -> (bool, bool) {
    let [t_sent, t_sent_len, t_recv, t_recv_len, _] = theirs;
    let inbound = t_sent == ours_recv.finish() && t_sent_len == ours_recv.len();
    let outbound = t_recv == ours_sent.finish() && t_recv_len == ours_sent.len();
    (inbound, outbound)
}

fn demo_one(
    proto: Proto,
    bytes: u64,
    rounds: u32,
    ring: usize,
    spin_us: u64,
) -> Result<Row, Failure> {
    let path = std::env::temp_dir().join(format!(
        "ring-demo-{}-{}.sock",
        std::process::id(),
        proto.name()
    ));
    let mut config = ServerConfig::new(proto).ring_sizes(ring, ring);
    config.spin = Duration::from_micros(spin_us);
    let listener = Listener::bind(&path, config)?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let mut child = Command::new(exe)
        .arg("peer")
        .arg("--socket")
        .arg(&path)
        .args(["--mode", "demo", "--proto", proto.name()])
        .args(["--bytes", &bytes.to_string()])
        .args(["--rounds", &rounds.to_string()])
        .args(["--spin-us", &spin_us.to_string()])
        .env(
            ring_hosted::parent::PARENT_ENV,
            ring_hosted::parent::own_pid(),
        )
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the peer process: {e}"))?;
    // Wait for the peer, but not for one that has already died.
    let start = Instant::now();
    let session = loop {
        match listener.accept_timeout(Duration::from_millis(100)) {
            Err(Error::TimedOut) if start.elapsed() < Duration::from_secs(20) => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("peer exited ({status}) before connecting").into());
                }
            }
            other => break other,
        }
    };
    drop(listener);
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("peer did not connect: {e}").into());
        }
    };
    let result = match session {
        Session::Vchan(mut s) => demo_server(&mut s, bytes, rounds),
        Session::Vmbus(mut s) => demo_server(&mut s, bytes, rounds),
        other => Err(format!("no demo for protocol {}", other.proto().name())),
    };
    if result.is_err() {
        // Our half failed: the peer may be waiting for us for ever.
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the peer: {e}"))?;
    let mut row = result?;
    if !status.success() {
        row.ok = false;
        row.note = format!("{} (peer exited with {status})", row.note);
    }
    Ok(row)
}

fn progress_printer(label: &'static str, total: u64) -> impl FnMut(u64, u64) {
    let tty = std::io::stderr().is_terminal();
    let mut last = Instant::now();
    move |sent, recv| {
        if !tty {
            return;
        }
        let done = sent >= total && recv >= total;
        if done || last.elapsed() >= Duration::from_millis(100) {
            last = Instant::now();
            eprint!(
                "\r{label}: sent {} / {} MiB, received {} / {} MiB{}",
                sent >> 20,
                total >> 20,
                recv >> 20,
                total >> 20,
                if done { "\r\x1b[K" } else { "" }
            );
        }
    }
}

/// What the demo and the peer need from a ring besides [`PollStream`]:
/// blocking bytes, messages and 64-byte pings, per protocol.
trait Link: PollStream {
    /// The protocol's name for the table.
    const NAME: &'static str;
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, Error>;
    fn write_every(&mut self, buf: &[u8]) -> Result<(), Error>;
    fn msg_send(&mut self, msg: &[u8]) -> Result<(), Error>;
    fn msg_recv(&mut self, buf: &mut [u8]) -> Result<usize, Error>;
    fn ping_send(&mut self, ping: &[u8; 64]) -> Result<(), Error>;
    fn ping_recv(&mut self, ping: &mut [u8; 64]) -> Result<(), Error>;
}

impl Link for VchanStream {
    const NAME: &'static str = "vchan";
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.read(buf)
    }
    fn write_every(&mut self, buf: &[u8]) -> Result<(), Error> {
        self.write_all(buf)
    }
    fn msg_send(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.send_msg(msg)
    }
    fn msg_recv(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.recv_msg(buf)
    }
    // vchan packets: exactly 64 bytes, all or nothing.
    fn ping_send(&mut self, ping: &[u8; 64]) -> Result<(), Error> {
        self.send_packet(ping)
    }
    fn ping_recv(&mut self, ping: &mut [u8; 64]) -> Result<(), Error> {
        self.recv_packet(ping)
    }
}

impl Link for VmbusPipe {
    const NAME: &'static str = "vmbus";
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.read(buf)
    }
    fn write_every(&mut self, buf: &[u8]) -> Result<(), Error> {
        self.write_all(buf)
    }
    fn msg_send(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.send_msg(msg)
    }
    fn msg_recv(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.recv_msg(buf)
    }
    // VMBus: one in-band pipe packet per ping.
    fn ping_send(&mut self, ping: &[u8; 64]) -> Result<(), Error> {
        self.send_msg(ping)
    }
    fn ping_recv(&mut self, ping: &mut [u8; 64]) -> Result<(), Error> {
        match self.recv_msg(ping)? {
            64 => Ok(()),
            n => Err(Error::Os {
                op: "ping",
                source: std::io::Error::other(format!("ping of {n} bytes, expected 64")),
            }),
        }
    }
}

fn demo_server<L: Link>(s: &mut L, bytes: u64, rounds: u32) -> Result<Row, String> {
    let e = |e: Error| format!("{} demo: {e}", L::NAME);
    let kicks0 = s.signal().kicks();
    let start = Instant::now();
    let got = duplex(
        s,
        SERVER_SEED,
        bytes,
        bytes,
        progress_printer(L::NAME, bytes),
    )
    .map_err(e)?;
    let elapsed = start.elapsed();
    let our_kicks = s.signal().kicks() - kicks0;
    s.msg_send(&summary(&got.sent, &got.received, our_kicks))
        .map_err(e)?;
    let mut buf = [0u8; 40];
    let n = s.msg_recv(&mut buf).map_err(e)?;
    let theirs = unsummary(buf.get(..n).unwrap_or(&[]));
    let (inbound, outbound) = compare(&got.sent, &got.received, theirs);
    // Ping-pong: we send 64 bytes, the peer echoes them.
    let mut rtts = Vec::with_capacity(rounds as usize);
    let mut msg = [0u8; 64];
    let mut back = [0u8; 64];
    let mut echo_ok = true;
    let mut pat = Pattern::new(7);
    for _ in 0..rounds {
        pat.fill(&mut msg);
        let t = Instant::now();
        s.ping_send(&msg).map_err(e)?;
        s.ping_recv(&mut back).map_err(e)?;
        rtts.push(t.elapsed());
        echo_ok &= back == msg;
    }
    s.close().map_err(e)?;
    rtts.sort();
    let pct = |p: usize| {
        rtts.get((rtts.len() * p / 100).min(rtts.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let total_kicks = our_kicks + theirs[4];
    let mib = (2 * bytes) as f64 / f64::from(1u32 << 20);
    let ok = inbound && outbound && echo_ok;
    let note = match (inbound, outbound, echo_ok) {
        (true, true, true) => "ok both ways".to_string(),
        _ => format!(
            "MISMATCH (client->server {}, server->client {}, ping-pong {})",
            if inbound { "ok" } else { "bad" },
            if outbound { "ok" } else { "bad" },
            if echo_ok { "ok" } else { "bad" }
        ),
    };
    Ok(Row {
        proto: L::NAME,
        bytes,
        gbps: bytes as f64 / elapsed.as_secs_f64() / 1e9,
        p50: pct(50),
        p99: pct(99),
        kicks_per_mib: if mib > 0.0 {
            total_kicks as f64 / mib
        } else {
            0.0
        },
        ok,
        note,
    })
}

fn demo_client<L: Link>(s: &mut L, bytes: u64, rounds: u32) -> Result<(), String> {
    let e = |e: Error| format!("demo peer: {e}");
    let kicks0 = s.signal().kicks();
    let got = duplex(s, CLIENT_SEED, bytes, bytes, |_, _| {}).map_err(e)?;
    let our_kicks = s.signal().kicks() - kicks0;
    s.msg_send(&summary(&got.sent, &got.received, our_kicks))
        .map_err(e)?;
    let mut buf = [0u8; 40];
    let n = s.msg_recv(&mut buf).map_err(e)?;
    let (inbound, outbound) = compare(
        &got.sent,
        &got.received,
        unsummary(buf.get(..n).unwrap_or(&[])),
    );
    let mut msg = [0u8; 64];
    for _ in 0..rounds {
        s.ping_recv(&mut msg).map_err(e)?;
        s.ping_send(&msg).map_err(e)?;
    }
    // Wait for the server to close.
    let mut tail = [0u8; 1];
    match s.read_some(&mut tail) {
        Ok(0) | Err(Error::Closed | Error::PeerGone) => {}
        Ok(_) => return Err("demo peer: unexpected bytes after the ping-pong".into()),
        Err(x) => return Err(e(x)),
    }
    if inbound && outbound {
        Ok(())
    } else {
        Err(format!(
            "demo peer: checksum mismatch (server->client {}, client->server {})",
            if inbound { "ok" } else { "bad" },
            if outbound { "ok" } else { "bad" }
        ))
    }
}

// ---------------------------------------------------------------- peer

#[allow(clippy::too_many_arguments)] // One per command-line option.
fn peer(
    socket: &Path,
    proto: Proto,
    mode: PeerMode,
    listen: bool,
    bytes: u64,
    rounds: u32,
    seed: u64,
    spin: Duration,
    ring_size: u64,
) -> Outcome {
    ring_hosted::parent::die_with_parent()?;
    let session = if listen {
        let mut config =
            ServerConfig::new(proto).ring_sizes(ring_bytes(ring_size)?, ring_bytes(ring_size)?);
        config.spin = spin;
        let l = Listener::bind(socket, config)?;
        l.accept()
    } else {
        let mut config = ClientConfig::new(proto);
        config.spin = spin;
        rendezvous::connect_with(socket, config)
    }?;
    match session {
        Session::Vchan(mut s) => peer_run(&mut s, mode, bytes, rounds, seed),
        Session::Vmbus(mut s) => peer_run(&mut s, mode, bytes, rounds, seed),
        other => Err(format!("peer: protocol {} unsupported", other.proto().name()).into()),
    }
}

fn peer_run<L: Link>(s: &mut L, mode: PeerMode, bytes: u64, rounds: u32, seed: u64) -> Outcome {
    let e = |e: Error| Failure::from(format!("peer: {e}"));
    match mode {
        PeerMode::Demo => demo_client(s, bytes, rounds).map_err(Failure::from),
        PeerMode::Echo => {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match s.read_some(&mut buf) {
                    Ok(0) | Err(Error::Closed | Error::PeerGone) => return Ok(()),
                    Ok(n) => match s.write_every(buf.get(..n).unwrap_or(&[])) {
                        Ok(()) => {}
                        Err(Error::Closed | Error::PeerGone) => return Ok(()),
                        Err(x) => return Err(e(x)),
                    },
                    Err(x) => return Err(e(x)),
                }
            }
        }
        PeerMode::Source => {
            let mut p = Pattern::new(seed);
            let mut buf = vec![0u8; 16 << 10];
            while bytes == 0 || p.position() < bytes {
                let n = if bytes == 0 {
                    buf.len()
                } else {
                    (bytes - p.position()).min(buf.len() as u64) as usize
                };
                let chunk = buf.get_mut(..n).unwrap_or(&mut []);
                p.fill(chunk);
                match s.write_every(chunk) {
                    Ok(()) => {}
                    Err(Error::Closed | Error::PeerGone) => return Ok(()),
                    Err(x) => return Err(e(x)),
                }
            }
            s.close().map_err(e)
        }
    }
}

// ---------------------------------------------------------------- pipe

fn listen(
    socket: &Path,
    proto: Proto,
    ring_size: u64,
    any_uid: bool,
    timeout: Option<Duration>,
    keep: bool,
) -> Outcome {
    let size = ring_bytes(ring_size)?;
    let mut config = ServerConfig::new(proto).ring_sizes(size, size);
    if any_uid {
        config.peer = PeerPolicy::AnyUid;
    }
    let listener = Listener::bind(socket, config)?;
    let refused = |e: &Error| eprintln!("ring: refused a client: {e}");
    if !keep {
        let session = listener.accept_with(refused)?;
        // One peer only: unlink the socket so later clients fail at once.
        drop(listener);
        return pipe_session(session, timeout);
    }
    loop {
        let session = listener.accept_with(refused)?;
        if let Err(f) = pipe_session(session, timeout) {
            eprintln!("ring: session ended badly (exit {}): {}", f.code, f.reason);
        }
    }
}

fn connect(socket: &Path, proto: Proto, timeout: Option<Duration>) -> Outcome {
    let session = rendezvous::connect(socket, proto)?;
    pipe_session(session, timeout)
}

/// A session with one of our own processes: both sides half-close over
/// the rendezvous socket (or the VMBus end-of-stream packet) and tell each
/// other what they received before either exits 0.
fn pipe_session(session: Session, timeout: Option<Duration>) -> Outcome {
    let end = PipeEnd {
        linger: None,
        timeout,
        confirm: true,
    };
    match session {
        Session::Vchan(mut s) => pipe_stream(&mut s, end),
        Session::Vmbus(mut s) => pipe_stream(&mut s, end),
        other => Err(format!("no pipe for protocol {}", other.proto().name()).into()),
    }
}

/// How a pipe may end.
#[derive(Clone, Copy, Debug)]
struct PipeEnd {
    /// A foreign peer that cannot half-close: once our stdin is through
    /// and read, end after it has been quiet this long.
    linger: Option<Duration>,
    /// Fail once the peer has been silent this long, mid-stream.
    timeout: Option<Duration>,
    /// Our own peer: exchange [`Notice::Done`] before exiting 0.
    confirm: bool,
}

/// Where a pipe stands, for the one line a failure prints.
#[derive(Debug, Default)]
struct Tally {
    stdin: u64,
    stdout: u64,
    stdin_ended: bool,
}

impl Tally {
    fn fail(&self, s: &impl PollStream, e: Error) -> Failure {
        let mut f = Failure::from(e);
        f.reason = format!(
            "{}: {} bytes read from stdin{}, {} written into the ring; {} bytes received",
            f.reason,
            self.stdin,
            if self.stdin_ended {
                " (all of it)"
            } else {
                " so far"
            },
            s.bytes_written(),
            self.stdout,
        );
        f
    }
}

/// Copies stdin into the ring and the ring to stdout, both directions at
/// once, and ends as docs/hosted.md's stream-end table says: exit 0 only
/// when both directions ended cleanly and the peer took every byte.
fn pipe_stream(s: &mut impl PollStream, end: PipeEnd) -> Outcome {
    let mut tally = Tally::default();
    match pipe_loop(s, end, &mut tally) {
        Ok(()) => Ok(()),
        Err(Stop::Ring(e)) => {
            // Whatever the reason, hand on what the peer left in the ring
            // before saying so (stdout stays a prefix of what it sent).
            if !matches!(e, Error::Ring(_) | Error::Vmbus(_)) {
                let _ = drain_rest(s, &mut tally);
            }
            let _ = s.close();
            Err(tally.fail(s, e))
        }
        Err(Stop::Failed(f)) => {
            let _ = s.close();
            Err(f)
        }
    }
}

/// Why [`pipe_loop`] stopped early.
enum Stop {
    /// The ring or the peer: classified by [`Failure::from`].
    Ring(Error),
    /// Our side (stdin, stdout) with its own code.
    Failed(Failure),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Ring(e)
    }
}

/// Writes `data` to stdout; `Err` with [`exit::STDOUT_CLOSED`] once its
/// reader has gone.
fn emit(out: &mut std::io::StdoutLock<'_>, data: &[u8], tally: &mut Tally) -> Result<(), Stop> {
    match out.write_all(data).and_then(|()| out.flush()) {
        Ok(()) => {
            tally.stdout += data.len() as u64;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Stop::Failed(Failure {
            code: exit::STDOUT_CLOSED,
            reason: format!(
                "stdout closed after {} bytes, before the peer's stream ended",
                tally.stdout
            ),
        })),
        Err(source) => Err(Stop::Failed(
            Error::Os {
                op: "write stdout",
                source,
            }
            .into(),
        )),
    }
}

/// After a failure: copies what the peer left in the ring to stdout, until
/// its stream ends or nothing more can come.
fn drain_rest(s: &mut impl PollStream, tally: &mut Tally) -> Result<(), Stop> {
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match s.try_read(&mut buf)? {
            Some(0) => return Ok(()),
            Some(n) => emit(&mut out, buf.get(..n).unwrap_or(&[]), tally)?,
            // The peer is alive and its ring empty: it has nothing in
            // flight for us now.
            None => return Ok(()),
        }
    }
}

fn pipe_loop(s: &mut impl PollStream, end: PipeEnd, tally: &mut Tally) -> Result<(), Stop> {
    let stdin = std::io::stdin();
    let stdin_fd = stdin.as_fd();
    let mut stdout = std::io::stdout().lock();
    let mut inbuf = vec![0u8; 64 << 10];
    let mut outbuf = vec![0u8; 64 << 10];
    let (mut off, mut len) = (0usize, 0usize);
    // Our direction ended (end mark sent, or none possible); the peer's
    // direction ended; the peer has read all of our stdin.
    let (mut out_done, mut in_done, mut delivered) = (false, false, false);
    let mut half_close = true;
    let mut heard = Instant::now();
    loop {
        let mut moved = false;
        while !in_done {
            match s.try_read(&mut outbuf)? {
                Some(0) => in_done = true,
                Some(n) => {
                    emit(&mut stdout, outbuf.get(..n).unwrap_or(&[]), tally)?;
                    moved = true;
                }
                None => break,
            }
        }
        while off < len {
            match s.try_write(inbuf.get(off..len).unwrap_or(&[]))? {
                Some(n) => {
                    off += n;
                    moved = true;
                }
                None => break,
            }
        }
        // Our end mark goes out once the peer has read every byte before
        // it: a peer need never read the mark itself for us to know.
        if tally.stdin_ended && off == len && !delivered {
            delivered = s.try_delivered()?.is_some();
        }
        if delivered && !out_done {
            match s.try_shutdown_write()? {
                Some(true) => out_done = true,
                Some(false) => (out_done, half_close) = (true, false),
                None => {}
            }
        }
        if in_done && out_done {
            break;
        }
        if moved {
            heard = Instant::now();
            continue;
        }
        let connected = s.peer_connected();
        if !connected {
            heard = Instant::now();
        }
        // A foreign peer that cannot half-close: our bytes are through and
        // read, and it has been quiet for the linger.
        let linger_end = match (end.linger, half_close) {
            (Some(l), false) if delivered => Some(heard + l),
            _ => None,
        };
        if linger_end.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        let idle_end = end.timeout.filter(|_| connected).map(|t| heard + t);
        let deadline = match (linger_end, idle_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let want_stdin = !tally.stdin_ended && off == len;
        let woken = match s.wait_event(want_stdin.then_some(stdin_fd), deadline) {
            Ok(w) => w,
            Err(Error::TimedOut) if linger_end.is_some_and(|t| Instant::now() >= t) => break,
            // It ended its stream cleanly, then left before taking the
            // rest of ours: a close with our bytes undelivered.
            Err(Error::PeerGone) if in_done => return Err(Error::Closed.into()),
            Err(e) => return Err(e.into()),
        };
        if woken.kicked {
            heard = Instant::now();
        }
        if woken.extra {
            match rustix::io::read(stdin_fd, &mut inbuf) {
                Ok(0) => tally.stdin_ended = true,
                Ok(n) => {
                    (off, len) = (0, n);
                    tally.stdin += n as u64;
                }
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(e) => {
                    return Err(Stop::Failed(
                        Error::Os {
                            op: "read stdin",
                            source: e.into(),
                        }
                        .into(),
                    ))
                }
            }
        }
    }
    if end.confirm {
        confirm(s, end.timeout, tally)?;
    }
    s.close()?;
    Ok(())
}

/// The last step with one of our own peers: say how much we received (all
/// of it is on our stdout by now), hear how much it received, and compare.
fn confirm(s: &mut impl PollStream, timeout: Option<Duration>, tally: &Tally) -> Result<(), Stop> {
    s.signal().send_notice(Notice::Done(s.bytes_read()))?;
    let mut heard = Instant::now();
    loop {
        // Gone is looked at first: the hang-up read that finds the peer
        // gone also takes a Done it sent just before.
        let gone = s.signal().peer_gone();
        if let Some(got) = s.signal().peer_done() {
            if got == s.bytes_written() {
                return Ok(());
            }
            return Err(Stop::Failed(Failure {
                code: exit::UNDELIVERED,
                reason: format!(
                    "the peer received {got} bytes, we wrote {} ({} read from stdin)",
                    s.bytes_written(),
                    tally.stdin
                ),
            }));
        }
        if gone {
            return Err(Error::PeerGone.into());
        }
        let w = s.wait_event(None, timeout.map(|t| heard + t))?;
        if w.kicked {
            heard = Instant::now();
        }
    }
}

// ---------------------------------------------------------------- attach

/// Exits with status 2 and a one-line reason, like clap's own errors.
fn usage(reason: String) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, reason)
        .exit()
}

fn offset(v: u64, flag: &str) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("{flag} {v} is too large"))
}

#[allow(unsafe_code)]
fn attach_cmd(a: AttachArgs) -> Outcome {
    let given = |flags: &[(&str, bool)]| -> Vec<String> {
        flags
            .iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| format!("--{name}"))
            .collect()
    };
    let vchan_only = given(&[
        ("role", a.role.is_some()),
        ("ctrl-offset", a.ctrl_offset.is_some()),
        ("left-offset", a.left_offset.is_some()),
        ("right-offset", a.right_offset.is_some()),
        ("read-min", a.read_min.is_some()),
        ("write-min", a.write_min.is_some()),
    ]);
    let vmbus_only = given(&[
        ("tx-offset", a.tx_offset.is_some()),
        ("tx-size", a.tx_size.is_some()),
        ("rx-offset", a.rx_offset.is_some()),
        ("rx-size", a.rx_size.is_some()),
        ("data-offset", a.data_offset.is_some()),
    ]);
    match a.proto {
        CliProto::Vchan if !vmbus_only.is_empty() => usage(format!(
            "{} only apply to --proto vmbus",
            vmbus_only.join(", ")
        )),
        CliProto::Vmbus if !vchan_only.is_empty() => usage(format!(
            "{} only apply to --proto vchan",
            vchan_only.join(", ")
        )),
        _ => {}
    }
    let wakeup = match (a.notify_fd, a.wait_fd, a.poll) {
        (Some(notify), Some(wait), false) if notify == wait => usage(format!(
            "--notify-fd and --wait-fd are both {notify}: with one eventfd each side can \
             swallow its own kick; give the peer's and ours, or use --poll"
        )),
        (Some(notify), Some(wait), false) => Wakeup::Fds { notify, wait },
        (None, None, true) => Wakeup::Poll,
        _ => usage("give --notify-fd and --wait-fd, or --poll".into()),
    };
    if let (Some(m), Wakeup::Fds { notify, wait }) = (a.fd, wakeup) {
        if m == notify || m == wait {
            usage(format!("--fd {m} is also an eventfd number"));
        }
    }
    let source = match (&a.file, a.fd) {
        (Some(path), _) => MemSource::Path(path.clone()),
        (None, Some(n)) => MemSource::Fd(n),
        (None, None) => usage("give --file or --fd".into()),
    };
    let role = match (a.proto, a.role) {
        (CliProto::Vchan, None) => usage("--proto vchan needs --role server|client".into()),
        (_, r) => r,
    };
    if role == Some(CliRole::Client) && (a.read_min.is_some() || a.write_min.is_some()) {
        usage("--read-min and --write-min are for a server; a client reads the sizes from the control page".into());
    }
    let vmbus_rings = match (a.proto, a.tx_offset, a.tx_size, a.rx_offset, a.rx_size) {
        (CliProto::Vmbus, Some(to), Some(ts), Some(ro), Some(rs)) => Some([to, ts, ro, rs]),
        (CliProto::Vmbus, ..) => {
            usage("--proto vmbus needs --tx-offset, --tx-size, --rx-offset and --rx-size".into())
        }
        _ => None,
    };
    let end = PipeEnd {
        linger: Some(Duration::from_millis(a.linger_ms)),
        timeout: a.timeout,
        confirm: false,
    };
    // The user vouches that the peer does not shrink the memory (see `ring
    // attach --help` and docs/hosted.md).
    // SAFETY: the inherited fd numbers are owned by nothing else in this
    // program and each is taken once (memory fd != eventfds, checked above).
    let mem = unsafe { attach::open_memory(&source) }?;
    let sealed = mem.is_sealed();
    // Said once the rings are set up, so a set-up error stays one line.
    let warn = || {
        if !sealed {
            eprintln!(
                "ring: warning: the memory is not sealed against shrinking; if its maker \
                 truncates it, ring dies with SIGBUS"
            );
        }
    };
    // SAFETY: as above; `open_signal` takes each eventfd number once.
    let mut signal = unsafe { attach::open_signal(wakeup) }?;
    if let Some(pid) = a.peer_pid {
        attach::watch_peer(&mut signal, pid)?;
    }
    if let Some([to, ts, ro, rs]) = vmbus_rings {
        let data_offset = offset(a.data_offset.unwrap_or(4096), "--data-offset")?;
        let tx = VmbusRing {
            offset: offset(to, "--tx-offset")?,
            size: offset(ts, "--tx-size")?,
            data_offset,
        };
        let rx = VmbusRing {
            offset: offset(ro, "--rx-offset")?,
            size: offset(rs, "--rx-size")?,
            data_offset,
        };
        let mut s = attach::vmbus(mem, tx, rx, signal)?;
        warn();
        return pipe_stream(&mut s, end);
    }
    let orders = match role {
        Some(CliRole::Server) => {
            let read = offset(a.read_min.unwrap_or(64 << 10), "--read-min")?;
            let write = offset(a.write_min.unwrap_or(64 << 10), "--write-min")?;
            Some(
                ring_core::vchan::Orders::for_sizes(read, write)
                    .map_err(|err| format!("ring sizes: {err}"))?,
            )
        }
        _ => None,
    };
    let layout = VchanLayout {
        role: match role {
            Some(CliRole::Server) => ring_core::vchan::Role::Server,
            _ => ring_core::vchan::Role::Client,
        },
        ctrl: offset(a.ctrl_offset.unwrap_or(0), "--ctrl-offset")?,
        left: a
            .left_offset
            .map(|v| offset(v, "--left-offset"))
            .transpose()?,
        right: a
            .right_offset
            .map(|v| offset(v, "--right-offset"))
            .transpose()?,
        orders,
    };
    let mut s = attach::vchan(mem, layout, signal)?;
    warn();
    pipe_stream(&mut s, end)
}

// ---------------------------------------------------------------- inspect

/// Inspects the ring memfds of process `pid`: the fds whose link names a
/// memfd this crate made (`/memfd:ring-vchan`, `/memfd:ring-vmbus`). What
/// cannot be read is listed and skipped; the exit status is the worst
/// found (3 corrupt over 1 unreadable over 0).
fn inspect_pid(pid: u32, json: bool) -> Outcome {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let entries =
        std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut found: Vec<(u32, PathBuf, Proto)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let link = std::fs::read_link(e.path()).ok()?;
            let link = link.to_string_lossy();
            let proto = if link.starts_with("/memfd:ring-vmbus") {
                Proto::Vmbus
            } else if link.starts_with("/memfd:ring-") {
                Proto::Vchan
            } else {
                return None;
            };
            Some((e.file_name().to_str()?.parse().ok()?, e.path(), proto))
        })
        .collect();
    found.sort_by_key(|f| f.0);
    if found.is_empty() {
        return Err(format!("process {pid} holds no ring memory").into());
    }
    let (mut shown, mut worst) = (0, None::<Failure>);
    for (fd, path, proto) in found {
        if !json {
            println!("== {} (fd {fd}, {})", path.display(), proto.name());
        }
        match inspect_file(&path, proto, None, json) {
            Ok(()) => shown += 1,
            // The fd was closed between listing and reading: skip it.
            Err(_) if std::fs::symlink_metadata(&path).is_err() => {}
            Err(e) => {
                eprintln!("ring: fd {fd}: {}", e.reason);
                if worst.as_ref().is_none_or(|w| e.code > w.code) {
                    worst = Some(e);
                }
            }
        }
    }
    match worst {
        Some(w) => Err(w),
        None if shown == 0 => Err(format!("process {pid} holds no ring memory").into()),
        None => Ok(()),
    }
}

fn show(text: String, json: String, as_json: bool) {
    if as_json {
        println!("{json}");
    } else {
        print!("{text}");
    }
}

/// Prints what validation found (in the table, or as a `findings` array
/// in the JSON object) and turns any finding into exit 3.
fn report(
    text: String,
    json: String,
    as_json: bool,
    findings: &[inspect::validate::Finding],
) -> Outcome {
    let json = match json.strip_suffix('}') {
        Some(head) => {
            let list: Vec<String> = findings.iter().map(|f| f.to_json()).collect();
            format!("{head},\"findings\":[{}]}}", list.join(","))
        }
        None => json,
    };
    let mut text = text;
    for f in findings {
        text.push_str(&format!("INVALID {f}\n"));
    }
    show(text, json, as_json);
    match findings.first() {
        None => Ok(()),
        Some(first) => Err(Failure {
            code: exit::CORRUPT,
            reason: format!("{} finding(s); the first {first}", findings.len()),
        }),
    }
}

fn inspect_file(file: &Path, proto: Proto, data_size: Option<u64>, json: bool) -> Outcome {
    let image = inspect::validate::read_image(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    match proto {
        Proto::Vchan => {
            let header = image.get(..inspect::HEADER_LEN).ok_or_else(|| {
                format!(
                    "{} ({} bytes) is shorter than a vchan control header",
                    file.display(),
                    image.len()
                )
            })?;
            let state = inspect::decode_vchan(header)?;
            let findings = inspect::validate::vchan(&image, &state);
            report(state.to_string(), state.to_json(), json, &findings)
        }
        Proto::Vmbus => {
            const PAGE: u64 = 4096;
            let len = image.len() as u64;
            let first = match data_size {
                Some(d) => Some(d),
                None => (len / 2).checked_sub(PAGE),
            };
            let second = first.and_then(|f| len.checked_sub(2 * PAGE)?.checked_sub(f));
            let fits = |d: Option<u64>| {
                d.filter(|&d| d > 0 && d.is_multiple_of(PAGE) && d <= u64::from(u32::MAX))
            };
            let (Some(first), Some(second)) = (fits(first), fits(second)) else {
                return Err(format!(
                    "{} ({len} bytes) is not two VMBus rings of whole pages{} (give --data-size)",
                    file.display(),
                    data_size.map_or(String::new(), |d| format!(" with {d} data bytes first")),
                )
                .into());
            };
            let page = PAGE as usize;
            let header = |at: usize| {
                image
                    .get(at..at + inspect::VMBUS_HEADER_LEN)
                    .ok_or_else(|| format!("{} is too short for its rings", file.display()))
            };
            let a = header(0)?;
            let b = header(page + first as usize)?;
            let state = inspect::decode_vmbus(a, first as u32, b, second as u32)?;
            let findings = inspect::validate::vmbus(&image, first as u32, second as u32, &state);
            report(state.to_string(), state.to_json(), json, &findings)
        }
        other => Err(format!("cannot inspect protocol {}", other.name()).into()),
    }
}
