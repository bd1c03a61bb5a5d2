//! `ring`: run, pipe through and inspect shared-memory rings between
//! processes. See `ring --help`.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand, ValueEnum};
use ring_hosted::check::{duplex, Checksum, Pattern};
use ring_hosted::eventfd::DEFAULT_SPIN;
use ring_hosted::inspect;
use ring_hosted::rendezvous::{
    self, ClientConfig, Listener, PeerPolicy, Proto, ServerConfig, Session,
};
use ring_hosted::stream::{PollStream, VchanStream};
use ring_hosted::Error;
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Shared-memory rings between two processes: memfd + eventfds, wire
/// compatible with Xen vchan.
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
}

impl From<CliProto> for Proto {
    fn from(p: CliProto) -> Proto {
        match p {
            CliProto::Vchan => Proto::Vchan,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a transfer between this process and a peer process it starts,
    /// verify checksums both ways and print throughput and latency.
    Demo {
        /// Bytes to send each way (suffixes K, M, G: powers of 1024).
        #[arg(long, default_value = "1G", value_parser = parse_size)]
        bytes: u64,
        /// 64-byte ping-pong round trips to time.
        #[arg(long, default_value_t = 20_000)]
        rounds: u32,
        /// Size of each ring (rounded up to a power of two, 1K..1M).
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
    /// Decode the control state of a ring in a shm or memfd-backed file
    /// (e.g. /proc/PID/fd/N): indices, used/free, orders, live and notify
    /// bits, and who owes whom a signal.
    Inspect {
        /// The file holding the control page at offset 0.
        #[arg(required_unless_present = "pid")]
        file: Option<PathBuf>,
        /// Instead of a file: inspect every ring memfd this process holds
        /// (the `ring-*` memfds in /proc/PID/fd).
        #[arg(long, conflicts_with = "file")]
        pid: Option<u32>,
        /// Ring protocol of the file.
        #[arg(long, value_enum, default_value = "vchan")]
        proto: CliProto,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
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
            json,
        } => match (file, pid) {
            (Some(file), _) => inspect_file(&file, proto.into(), json),
            (None, Some(pid)) => inspect_pid(pid, proto.into(), json),
            (None, None) => Err("nothing to inspect".into()),
        },
        Cmd::Bench(args) => ring_hosted::bench::suite::run(args),
        Cmd::Peer {
            socket,
            mode,
            listen,
            bytes,
            rounds,
            seed,
            spin_us,
            ring_size,
        } => peer(
            &socket,
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
        vec![CliProto::Vchan]
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
        .args(["--mode", "demo"])
        .args(["--bytes", &bytes.to_string()])
        .args(["--rounds", &rounds.to_string()])
        .args(["--spin-us", &spin_us.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the peer process: {e}"))?;
    let session = listener.accept_timeout(Duration::from_secs(20));
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
        Session::Vchan(mut s) => demo_vchan_server(&mut s, bytes, rounds),
        // Unreachable while vchan is the only protocol; vmbus will land here.
        #[allow(unreachable_patterns)]
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

fn demo_vchan_server(s: &mut VchanStream, bytes: u64, rounds: u32) -> Result<Row, String> {
    let e = |e: Error| format!("vchan demo: {e}");
    let kicks0 = s.signal().kicks();
    let start = Instant::now();
    let got = duplex(
        s,
        SERVER_SEED,
        bytes,
        bytes,
        progress_printer("vchan", bytes),
    )
    .map_err(e)?;
    let elapsed = start.elapsed();
    let our_kicks = s.signal().kicks() - kicks0;
    s.send_msg(&summary(&got.sent, &got.received, our_kicks))
        .map_err(e)?;
    let mut buf = [0u8; 40];
    let n = s.recv_msg(&mut buf).map_err(e)?;
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
        s.send_packet(&msg).map_err(e)?;
        s.recv_packet(&mut back).map_err(e)?;
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
        proto: "vchan",
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

fn demo_vchan_client(s: &mut VchanStream, bytes: u64, rounds: u32) -> Outcome {
    let e = |e: Error| format!("demo peer: {e}");
    let kicks0 = s.signal().kicks();
    let got = duplex(s, CLIENT_SEED, bytes, bytes, |_, _| {}).map_err(e)?;
    let our_kicks = s.signal().kicks() - kicks0;
    s.send_msg(&summary(&got.sent, &got.received, our_kicks))
        .map_err(e)?;
    let mut buf = [0u8; 40];
    let n = s.recv_msg(&mut buf).map_err(e)?;
    let (inbound, outbound) = compare(
        &got.sent,
        &got.received,
        unsummary(buf.get(..n).unwrap_or(&[])),
    );
    let mut msg = [0u8; 64];
    for _ in 0..rounds {
        s.recv_packet(&mut msg).map_err(e)?;
        s.send_packet(&msg).map_err(e)?;
    }
    // Wait for the server to close.
    let mut tail = [0u8; 1];
    match s.read(&mut tail) {
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

#[allow(clippy::too_many_arguments)]
fn peer(
    socket: &Path,
    mode: PeerMode,
    listen: bool,
    bytes: u64,
    rounds: u32,
    seed: u64,
    spin: Duration,
    ring_size: u64,
) -> Outcome {
    let session = if listen {
        let mut config = ServerConfig::new(Proto::Vchan)
            .ring_sizes(ring_bytes(ring_size)?, ring_bytes(ring_size)?);
        config.spin = spin;
        let l = Listener::bind(socket, config).map_err(|e| e.to_string())?;
        l.accept()
    } else {
        let mut config = ClientConfig::new(Proto::Vchan);
        config.spin = spin;
        rendezvous::connect_with(socket, config)
    }
    .map_err(|e| e.to_string())?;
    let Some(mut s) = session.into_vchan() else {
        return Err("peer: not a vchan session".into());
    };
    let e = |e: Error| format!("peer: {e}");
    match mode {
        PeerMode::Demo => demo_vchan_client(&mut s, bytes, rounds),
        PeerMode::Echo => {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(Error::Closed) => return Ok(()),
                    Ok(n) => match s.write_all(buf.get(..n).unwrap_or(&[])) {
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
                match s.write_all(chunk) {
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
        // Unreachable while vchan is the only protocol; vmbus will land here.
        #[allow(unreachable_patterns)]
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

// ---------------------------------------------------------------- inspect

/// Inspects the ring memfds of process `pid`: the fds whose link names a
/// memfd this crate made (`/memfd:ring-...`).
fn inspect_pid(pid: u32, proto: Proto, json: bool) -> Outcome {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let entries =
        std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut found: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:ring-"))
        })
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(format!("process {pid} holds no ring memory"));
    }
    for (fd, path) in found {
        if !json {
            println!("== {} (fd {fd})", path.display());
        }
        inspect_file(&path, proto, json)?;
    }
    Ok(())
}

fn inspect_file(file: &Path, proto: Proto, json: bool) -> Outcome {
    match proto {
        Proto::Vchan => {
            let header = inspect::read_header(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let state = inspect::decode_vchan(&header)?;
            if json {
                println!("{}", state.to_json());
            } else {
                print!("{state}");
            }
            Ok(())
        }
        // Unreachable while vchan is the only protocol; vmbus will land here.
        #[allow(unreachable_patterns)]
        other => Err(format!("cannot inspect protocol {}", other.name())),
    }
}
