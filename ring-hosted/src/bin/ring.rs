//! `ring`: run, pipe through and inspect shared-memory rings between
//! processes. See `ring --help`.

#![deny(unsafe_code)]

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use ring_hosted::attach::{self, MemSource, VchanLayout, VmbusRing, Wakeup};
use ring_hosted::check::{duplex, Checksum, Pattern};
use ring_hosted::eventfd::DEFAULT_SPIN;
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

/// Shared-memory rings between two processes: memfd + eventfds, wire
/// compatible with Xen vchan and Hyper-V VMBus.
#[derive(Parser, Debug)]
#[command(name = "ring", version, propagate_version = true)]
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
        /// Spin before sleeping, in microseconds (0: never spin).
        #[arg(long, default_value_t = DEFAULT_SPIN.as_micros() as u64)]
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
        /// After stdin ends, keep copying the peer's bytes until it has been
        /// quiet this long, then close (milliseconds).
        #[arg(long, default_value_t = 500)]
        linger_ms: u64,
    },
    /// Connect to a `ring listen` socket and pipe stdin/stdout through the
    /// ring, both directions.
    Connect {
        /// Socket path to connect to.
        socket: PathBuf,
        /// Ring protocol.
        #[arg(long, value_enum, default_value = "vchan")]
        proto: CliProto,
        /// After stdin ends, keep copying the peer's bytes until it has been
        /// quiet this long, then close (milliseconds).
        #[arg(long, default_value_t = 500)]
        linger_ms: u64,
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
    /// directions. The memory need not be sealed: its maker must not
    /// shrink it (that would kill us with SIGBUS).
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
        #[arg(long, default_value_t = DEFAULT_SPIN.as_micros() as u64)]
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
    /// vchan: byte offset of the 4 KiB control page.
    #[arg(long, value_parser = parse_size)]
    ctrl_offset: Option<u64>,
    /// vchan: byte offset of the left (client->server) ring's data
    /// (default: the flat layout after the control page).
    #[arg(long, value_parser = parse_size)]
    left_offset: Option<u64>,
    /// vchan: byte offset of the right (server->client) ring's data
    /// (default: the flat layout).
    #[arg(long, value_parser = parse_size)]
    right_offset: Option<u64>,
    /// vchan server: minimum size of the ring we read (left) [default: 64K].
    #[arg(long, value_parser = parse_size)]
    read_min: Option<u64>,
    /// vchan server: minimum size of the ring we write (right) [default: 64K].
    #[arg(long, value_parser = parse_size)]
    write_min: Option<u64>,
    /// vmbus: byte offset of the ring we write.
    #[arg(long, value_parser = parse_size)]
    tx_offset: Option<u64>,
    /// vmbus: bytes of the ring we write (control page + data).
    #[arg(long, value_parser = parse_size)]
    tx_size: Option<u64>,
    /// vmbus: byte offset of the ring we read.
    #[arg(long, value_parser = parse_size)]
    rx_offset: Option<u64>,
    /// vmbus: bytes of the ring we read (control page + data).
    #[arg(long, value_parser = parse_size)]
    rx_size: Option<u64>,
    /// vmbus: offset of the data inside each ring [default: 4096].
    #[arg(long, value_parser = parse_size)]
    data_offset: Option<u64>,
    /// Eventfd we write to kick the peer.
    #[arg(long, requires = "wait_fd", value_parser = clap::value_parser!(i32).range(0..))]
    notify_fd: Option<i32>,
    /// Eventfd we read to be woken by the peer (may equal --notify-fd).
    #[arg(long, requires = "notify_fd", value_parser = clap::value_parser!(i32).range(0..))]
    wait_fd: Option<i32>,
    /// No eventfds: poll the ring (sleeping 200 us between looks).
    #[arg(long, conflicts_with_all = ["notify_fd", "wait_fd"])]
    poll: bool,
    /// After stdin ends, keep copying the peer's bytes until it has been
    /// quiet this long, then close (milliseconds).
    #[arg(long, default_value_t = 500)]
    linger_ms: u64,
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
            linger_ms,
        } => listen(&socket, proto.into(), ring_size, any_uid, linger_ms),
        Cmd::Connect {
            socket,
            proto,
            linger_ms,
        } => connect(&socket, proto.into(), linger_ms),
        Cmd::Inspect {
            file,
            pid,
            proto,
            data_size,
            json,
        } => match (file, pid) {
            (Some(file), _) => inspect_file(&file, proto.into(), data_size, json),
            (None, Some(pid)) => inspect_pid(pid, json),
            (None, None) => Err("nothing to inspect".into()),
        },
        Cmd::Attach(args) => attach_cmd(*args),
        Cmd::Bench(args) => ring_hosted::bench::suite::run(args),
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
        Err(reason) => {
            eprintln!("ring: {reason}");
            ExitCode::from(1)
        }
    }
}

type Outcome = Result<(), String>;

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
        Err("checksum mismatch: see the table".into())
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
) -> Result<Row, String> {
    let path = std::env::temp_dir().join(format!(
        "ring-demo-{}-{}.sock",
        std::process::id(),
        proto.name()
    ));
    let mut config = ServerConfig::new(proto).ring_sizes(ring, ring);
    config.spin = Duration::from_micros(spin_us);
    let listener = Listener::bind(&path, config).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let mut child = Command::new(exe)
        .arg("peer")
        .arg("--socket")
        .arg(&path)
        .args(["--mode", "demo", "--proto", proto.name()])
        .args(["--bytes", &bytes.to_string()])
        .args(["--rounds", &rounds.to_string()])
        .args(["--spin-us", &spin_us.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the peer process: {e}"))?;
    // Wait for the peer, but not for one that has already died.
    let start = Instant::now();
    let session = loop {
        match listener.accept_timeout(Duration::from_millis(100)) {
            Err(Error::TimedOut) if start.elapsed() < Duration::from_secs(20) => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("peer exited ({status}) before connecting"));
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
            return Err(format!("peer did not connect: {e}"));
        }
    };
    let result = match session {
        Session::Vchan(mut s) => demo_server(&mut s, bytes, rounds),
        Session::Vmbus(mut s) => demo_server(&mut s, bytes, rounds),
        other => Err(format!("no demo for protocol {}", other.proto().name())),
    };
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

fn demo_client<L: Link>(s: &mut L, bytes: u64, rounds: u32) -> Outcome {
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
        Ok(0) | Err(Error::Closed) => {}
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
    let session = if listen {
        let mut config =
            ServerConfig::new(proto).ring_sizes(ring_bytes(ring_size)?, ring_bytes(ring_size)?);
        config.spin = spin;
        let l = Listener::bind(socket, config).map_err(|e| e.to_string())?;
        l.accept()
    } else {
        let mut config = ClientConfig::new(proto);
        config.spin = spin;
        rendezvous::connect_with(socket, config)
    }
    .map_err(|e| e.to_string())?;
    match session {
        Session::Vchan(mut s) => peer_run(&mut s, mode, bytes, rounds, seed),
        Session::Vmbus(mut s) => peer_run(&mut s, mode, bytes, rounds, seed),
        other => Err(format!(
            "peer: protocol {} unsupported",
            other.proto().name()
        )),
    }
}

fn peer_run<L: Link>(s: &mut L, mode: PeerMode, bytes: u64, rounds: u32, seed: u64) -> Outcome {
    let e = |e: Error| format!("peer: {e}");
    match mode {
        PeerMode::Demo => demo_client(s, bytes, rounds),
        PeerMode::Echo => {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match s.read_some(&mut buf) {
                    Ok(0) | Err(Error::Closed) => return Ok(()),
                    Ok(n) => match s.write_every(buf.get(..n).unwrap_or(&[])) {
                        Ok(()) => {}
                        Err(Error::Closed) => return Ok(()),
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
                    Err(Error::Closed) => return Ok(()),
                    Err(x) => return Err(e(x)),
                }
            }
            s.close().map_err(e)
        }
    }
}

// ---------------------------------------------------------------- pipe

fn listen(socket: &Path, proto: Proto, ring_size: u64, any_uid: bool, linger_ms: u64) -> Outcome {
    let size = ring_bytes(ring_size)?;
    let mut config = ServerConfig::new(proto).ring_sizes(size, size);
    if any_uid {
        config.peer = PeerPolicy::AnyUid;
    }
    let listener = Listener::bind(socket, config).map_err(|e| e.to_string())?;
    let session = listener.accept().map_err(|e| e.to_string())?;
    // One peer only: unlink the socket so later clients fail at once.
    drop(listener);
    pipe_session(session, Duration::from_millis(linger_ms))
}

fn connect(socket: &Path, proto: Proto, linger_ms: u64) -> Outcome {
    let session = rendezvous::connect(socket, proto).map_err(|e| e.to_string())?;
    pipe_session(session, Duration::from_millis(linger_ms))
}

fn pipe_session(session: Session, linger: Duration) -> Outcome {
    match session {
        Session::Vchan(mut s) => pipe_stream(&mut s, linger).map_err(|e| e.to_string()),
        Session::Vmbus(mut s) => pipe_stream(&mut s, linger).map_err(|e| e.to_string()),
        other => Err(format!("no pipe for protocol {}", other.proto().name())),
    }
}

/// Copies stdin into the ring and the ring to stdout until the peer closes,
/// or stdin ends and the peer has been quiet for `linger`.
fn pipe_stream(s: &mut impl PollStream, linger: Duration) -> Result<(), Error> {
    let stdin = std::io::stdin();
    let stdin_fd = stdin.as_fd();
    let mut stdout = std::io::stdout().lock();
    // Writes to stdout; false once its reader has gone (like `| head`),
    // which ends the pipe quietly.
    let mut emit = |data: &[u8]| match stdout.write_all(data).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(source) => Err(Error::Os {
            op: "write stdout",
            source,
        }),
    };
    let mut inbuf = vec![0u8; 64 << 10];
    let mut outbuf = vec![0u8; 64 << 10];
    let (mut off, mut len) = (0usize, 0usize);
    let mut stdin_done = false;
    let mut idle_since = Instant::now();
    loop {
        let mut moved = false;
        loop {
            match s.try_read(&mut outbuf) {
                Ok(Some(0)) | Err(Error::Closed) => return Ok(()),
                Ok(Some(n)) => {
                    if !emit(outbuf.get(..n).unwrap_or(&[]))? {
                        return s.close();
                    }
                    moved = true;
                }
                Ok(None) => break,
                Err(e) => return Err(e),
            }
        }
        while off < len {
            match s.try_write(inbuf.get(off..len).unwrap_or(&[])) {
                Ok(Some(n)) => {
                    off += n;
                    moved = true;
                }
                Ok(None) => break,
                Err(Error::Closed) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if moved {
            idle_since = Instant::now();
            continue;
        }
        let want_stdin = !stdin_done && off == len;
        let deadline = (stdin_done && off == len).then(|| idle_since + linger);
        let woken = match s.wait_event(want_stdin.then_some(stdin_fd), deadline) {
            Ok(w) => w,
            Err(Error::TimedOut) => return s.close(),
            Err(e) => return Err(e),
        };
        if woken.extra {
            match rustix::io::read(stdin_fd, &mut inbuf) {
                Ok(0) => stdin_done = true,
                Ok(n) => (off, len) = (0, n),
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(e) => {
                    return Err(Error::Os {
                        op: "read stdin",
                        source: e.into(),
                    })
                }
            }
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
    let linger = Duration::from_millis(a.linger_ms);
    let poll = wakeup == Wakeup::Poll;
    // The user vouches that the peer does not shrink the memory (see `ring
    // attach --help` and docs/hosted.md).
    // SAFETY: the inherited fd numbers are owned by nothing else in this
    // program and each is taken once (memory fd != eventfds, checked above).
    let mem = unsafe { attach::open_memory(&source) }.map_err(|e| e.to_string())?;
    // SAFETY: as above; `open_signal` takes a shared notify/wait number once.
    let signal = unsafe { attach::open_signal(wakeup) }.map_err(|e| e.to_string())?;
    let e = |e: Error| e.to_string();
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
        let mut s = attach::vmbus(mem, tx, rx, signal, poll).map_err(e)?;
        return pipe_stream(&mut s, linger).map_err(e);
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
    let mut s = attach::vchan(mem, layout, signal, poll).map_err(e)?;
    pipe_stream(&mut s, linger).map_err(e)
}

// ---------------------------------------------------------------- inspect

/// Inspects the ring memfds of process `pid`: the fds whose link names a
/// memfd this crate made (`/memfd:ring-vchan`, `/memfd:ring-vmbus`).
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
        return Err(format!("process {pid} holds no ring memory"));
    }
    let mut shown = 0;
    for (fd, path, proto) in found {
        if !json {
            println!("== {} (fd {fd}, {})", path.display(), proto.name());
        }
        match inspect_file(&path, proto, None, json) {
            Ok(()) => shown += 1,
            // The fd was closed between listing and reading: skip it.
            Err(_) if std::fs::symlink_metadata(&path).is_err() => {}
            Err(e) => return Err(e),
        }
    }
    if shown == 0 {
        return Err(format!("process {pid} holds no ring memory"));
    }
    Ok(())
}

fn show(text: String, json: String, as_json: bool) {
    if as_json {
        println!("{json}");
    } else {
        print!("{text}");
    }
}

fn inspect_file(file: &Path, proto: Proto, data_size: Option<u64>, json: bool) -> Outcome {
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", file.display());
    match proto {
        Proto::Vchan => {
            let header = inspect::read_header(file).map_err(cannot)?;
            let state = inspect::decode_vchan(&header)?;
            show(state.to_string(), state.to_json(), json);
            Ok(())
        }
        Proto::Vmbus => {
            const PAGE: u64 = 4096;
            let len = std::fs::metadata(file).map_err(cannot)?.len();
            let first = match data_size {
                Some(d) => d,
                None => (len / 2).saturating_sub(PAGE),
            };
            let second = len.saturating_sub(2 * PAGE + first);
            let fits = |d: u64| d > 0 && d.is_multiple_of(PAGE) && d <= u64::from(u32::MAX);
            if !fits(first) || !fits(second) {
                return Err(format!(
                    "{} ({len} bytes) is not two VMBus rings of {first} and {second} data bytes \
                     (give --data-size)",
                    file.display()
                ));
            }
            let a = inspect::read_at::<{ inspect::VMBUS_HEADER_LEN }>(file, 0).map_err(cannot)?;
            let b = inspect::read_at::<{ inspect::VMBUS_HEADER_LEN }>(file, PAGE + first)
                .map_err(cannot)?;
            let state = inspect::decode_vmbus(&a, first as u32, &b, second as u32)?;
            show(state.to_string(), state.to_json(), json);
            Ok(())
        }
        other => Err(format!("cannot inspect protocol {}", other.name())),
    }
}
