//! `ring`: run, pipe through and inspect shared-memory rings between
//! processes. See `ring --help`.

#![deny(unsafe_code)]

mod attach;
mod demo;
mod inspect;
mod ivshmem;
mod pipe;
mod proxy;
mod xen;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use ring_cli::check::{duplex, Checksum, Pattern};
use ring_hosted::eventfd::{Notice, DEFAULT_SPIN, MAX_SPIN};
use ring_hosted::rendezvous::{
    self, ClientConfig, Listener, PeerPolicy, Proto, ServerConfig, Session,
};
use ring_hosted::stream::{PollStream, VchanStream};
use ring_hosted::vmbus::VmbusPipe;
use ring_hosted::Error;
use std::io::IsTerminal;
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
/// 7 our stdout closed first; 8 (proxy) stopped with sessions cut.
const EXIT_CODES: &str = "Exit status of listen, connect and attach: 0 every byte went through \
both ways and the peer ended cleanly; 1 set-up or I/O failed; 2 usage; 3 the peer broke the \
ring protocol; 4 the peer closed before taking all our bytes; 5 the peer died or hung up \
first; 6 timed out; 7 our stdout closed first; 8 (proxy) stopped with sessions cut. See \
docs/hosted.md.";

/// Shared-memory rings between two processes: memfd + eventfds, wire
/// compatible with Xen vchan and Hyper-V VMBus; and vchans between Xen
/// domains (`ring listen --xen`, `ring connect --xen`).
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
    /// ring, both directions (like socat). With --xen DOMID, serve a vchan
    /// to Xen domain DOMID instead, published under the xenstore path.
    Listen {
        /// Socket path to bind (with --xen: the xenstore path to publish
        /// under; relative paths are under our domain's home, by
        /// convention data/vchan/DOMID/PORT).
        socket: PathBuf,
        /// Serve a vchan to this Xen domain (grant pages, an event channel,
        /// xenstore keys as libxenvchan's server writes them) instead of a
        /// Unix-socket rendezvous. The peer (ours or libxenvchan's) has no
        /// half-close: see --linger-ms.
        #[arg(long, value_name = "DOMID",
              conflicts_with_all = ["any_uid", "keep"])]
        xen: Option<u16>,
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
        /// stream unfinished, while we wait on it (time waiting on our own
        /// stdin or stdout does not count; seconds; default: wait while it
        /// lives).
        #[arg(long, value_parser = parse_secs)]
        timeout: Option<Duration>,
        /// Serve one session after another until stopped (stdin goes to the
        /// first; a failed session is reported and the next is served).
        #[arg(long)]
        keep: bool,
        /// --xen: give up (exit 6) if no client has connected this long
        /// after we published (seconds; default: wait however long it
        /// takes).
        #[arg(long, requires = "xen", value_parser = parse_secs)]
        accept_timeout: Option<Duration>,
        /// --xen: vchan cannot say "no more from me" without closing both
        /// ways: once stdin has ended and the peer has read all of it, keep
        /// copying the peer's bytes until it closes or has been quiet this
        /// long, then close (milliseconds).
        #[arg(long, requires = "xen", default_value_t = 500)]
        linger_ms: u64,
    },
    /// Connect to a `ring listen` socket and pipe stdin/stdout through the
    /// ring, both directions. With --xen DOMID, connect to the vchan a
    /// server in Xen domain DOMID published under the xenstore path
    /// (`ring listen --xen`, libxenvchan, vchan-socket-proxy).
    Connect {
        /// Socket path to connect to (with --xen: the xenstore path the
        /// server publishes under; relative paths are under the server's
        /// home, /local/domain/DOMID/).
        socket: PathBuf,
        /// Connect to a vchan served by this Xen domain instead of a Unix
        /// socket, waiting for its keys to appear.
        #[arg(long, value_name = "DOMID")]
        xen: Option<u16>,
        /// Ring protocol.
        #[arg(long, value_enum, default_value = "vchan")]
        proto: CliProto,
        /// Give up (exit 6) once the peer has been silent this long with the
        /// stream unfinished, while we wait on it (time waiting on our own
        /// stdin or stdout does not count; seconds; default: wait while it
        /// lives). With --xen it also bounds the wait for the server to
        /// publish.
        #[arg(long, value_parser = parse_secs)]
        timeout: Option<Duration>,
        /// --xen: as `ring listen --linger-ms` (milliseconds).
        #[arg(long, requires = "xen", default_value_t = 500)]
        linger_ms: u64,
    },
    /// Decode the control state of the rings in a shm or memfd-backed file
    /// (e.g. /proc/PID/fd/N): indices, used/free, who owes whom a signal,
    /// and orders, live and notify bytes (vchan) or interrupt masks and
    /// pending send sizes (vmbus). Exit 0 valid, 3 invalid, 1 unreadable,
    /// 9 busy (live rings that moved during every copy).
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
    /// Carry socket connections over ring sessions, one session per
    /// connection (like vchan-socket-proxy): --ring-listen R --to ADDR
    /// serves ring sessions and connects each to ADDR; --ring-connect R
    /// --listen ADDR accepts connections at ADDR and opens a session for
    /// each. ADDR is tcp:HOST:PORT or unix:PATH. SIGTERM/SIGINT: stop
    /// accepting, let sessions finish (up to --drain-timeout), exit 0; a
    /// second signal, or the drain timeout, cuts the sessions still open:
    /// exit 8.
    Proxy {
        /// Carry the sessions over vchans between Xen domains instead:
        /// with --ring-listen PATH, serve vchans to domain DOMID under the
        /// xenstore path PATH, a fresh one for every client (the keys exist
        /// while one waits); with --ring-connect PATH, join the vchans a
        /// server in domain DOMID publishes there, one new vchan per
        /// connection. Relative paths as for `ring listen --xen` and `ring
        /// connect --xen`.
        #[arg(long, value_name = "DOMID")]
        xen: Option<u16>,
        /// --xen: how long a session lingers for a quiet peer once its
        /// connection's bytes are through and read (milliseconds): vchan
        /// has no half-close.
        #[arg(long, requires = "xen", default_value_t = 500)]
        linger_ms: u64,
        /// Serve ring sessions on this rendezvous socket.
        #[arg(
            long,
            conflicts_with = "ring_connect",
            required_unless_present = "ring_connect"
        )]
        ring_listen: Option<PathBuf>,
        /// Open ring sessions at this rendezvous socket.
        #[arg(long)]
        ring_connect: Option<PathBuf>,
        /// With --ring-listen: where each session's connection goes.
        #[arg(long, value_parser = proxy::parse_addr)]
        to: Option<proxy::Addr>,
        /// With --ring-connect: where connections are accepted.
        #[arg(long, value_parser = proxy::parse_addr)]
        listen: Option<proxy::Addr>,
        /// Ring protocol.
        #[arg(long, value_enum, default_value = "vchan")]
        proto: CliProto,
        /// Size of each ring (--ring-listen).
        #[arg(long, default_value = "64K", value_parser = parse_ring_size)]
        ring_size: u64,
        /// Most sessions at once; further connections are closed.
        #[arg(long, default_value_t = 1024,
              value_parser = clap::value_parser!(u64).range(1..=65536))]
        max_sessions: u64,
        /// Give up a session once its peer has been silent this long
        /// mid-stream (seconds).
        #[arg(long, value_parser = parse_secs)]
        timeout: Option<Duration>,
        /// Once stopped, wait at most this long for sessions to finish
        /// (seconds); those still open then are cut (exit 8).
        #[arg(long, value_parser = parse_secs)]
        drain_timeout: Option<Duration>,
    },
    /// Serve a QEMU guest's ivshmem-doorbell device (this process is the
    /// ivshmem server and peer 0) and pipe stdin/stdout through a ring in
    /// the shared memory, with interrupts both ways. The guest is the
    /// client (vchan: flat layout at the start of BAR2; VMBus: the
    /// guest-to-host ring at 0, the host-to-guest ring after it, 4 KiB
    /// control pages) and rings peer 0 on vector 0. Exit codes as listen;
    /// the guest's QEMU exiting is exit 5. A client that leaves before its
    /// guest joins is dropped and the next served; while a guest is
    /// served, other QEMUs are refused.
    Ivshmem {
        /// Socket path QEMU connects to (-chardev socket,path=…).
        socket: PathBuf,
        /// Ring protocol.
        #[arg(long, value_enum, default_value = "vchan")]
        proto: CliProto,
        /// Size of each ring.
        #[arg(long, default_value = "64K", value_parser = parse_ring_size)]
        ring_size: u64,
        /// Give up if no guest has joined this long after start (seconds).
        #[arg(long, value_parser = parse_secs)]
        accept_timeout: Option<Duration>,
        /// Give up once the guest has been silent this long mid-stream
        /// (seconds).
        #[arg(long, value_parser = parse_secs)]
        timeout: Option<Duration>,
        /// Once the guest has read all of stdin and been quiet this long,
        /// end (milliseconds): vchan has no half-close for a foreign peer.
        #[arg(long, default_value_t = 500)]
        linger_ms: u64,
    },
    /// Benchmark the rings against pipe, Unix socket, eventfd and rtrb
    /// (ratios measured interleaved; the C rings are in `cargo bench`).
    Bench(ring_cli::bench::suite::BenchArgs),
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

/// How `ring attach` frames bytes in VMBus packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Framing {
    /// hv_sock pipe packets: an 8-byte pipe header, and a zero-length
    /// packet for end of stream.
    Pipe,
    /// Raw in-band packets: the payload is the bytes.
    Raw,
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
    /// vmbus: how bytes travel: `pipe` (hv_sock pipe packets, with end of
    /// stream) or `raw` (each in-band payload is stream bytes, padded to 8;
    /// no end of stream) [default: pipe].
    #[arg(long, value_enum)]
    framing: Option<Framing>,
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
    /// stream unfinished, while we wait on it (seconds; counted only once
    /// it has connected, and not while we wait on our own stdin or
    /// stdout): waits for ring space, data and our close alike.
    #[arg(long, value_parser = parse_secs)]
    timeout: Option<Duration>,
    /// Give up (exit 6) if the peer has not connected this long after
    /// start (seconds; a vchan server waiting for its client; default:
    /// wait however long it takes).
    #[arg(long, value_parser = parse_secs)]
    accept_timeout: Option<Duration>,
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
        } => demo::demo(bytes, rounds, ring_size, spin_us, &proto),
        Cmd::Listen {
            socket,
            xen: Some(peer),
            proto,
            ring_size,
            timeout,
            accept_timeout,
            linger_ms,
            ..
        } => xen::listen(
            peer,
            &socket,
            ring_size,
            xen_end(proto, timeout, accept_timeout, linger_ms),
        ),
        Cmd::Listen {
            socket,
            xen: None,
            proto,
            ring_size,
            any_uid,
            timeout,
            keep,
            ..
        } => pipe::listen(&socket, proto.into(), ring_size, any_uid, timeout, keep),
        Cmd::Connect {
            socket,
            xen: Some(server),
            proto,
            timeout,
            linger_ms,
        } => xen::connect(server, &socket, xen_end(proto, timeout, None, linger_ms)),
        Cmd::Connect {
            socket,
            xen: None,
            proto,
            timeout,
            ..
        } => pipe::connect(&socket, proto.into(), timeout),
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
            (Some(file), _) => inspect::inspect_file(&file, proto.into(), data_size, json),
            (None, Some(pid)) => inspect::inspect_pid(pid, json),
            (None, None) => Err(Failure::from("nothing to inspect")),
        },
        Cmd::Attach(args) => attach::attach_cmd(*args),
        Cmd::Ivshmem {
            socket,
            proto,
            ring_size,
            accept_timeout,
            timeout,
            linger_ms,
        } => ivshmem::serve(
            &socket,
            proto,
            ring_size,
            accept_timeout,
            timeout,
            Duration::from_millis(linger_ms),
        ),
        Cmd::Proxy {
            xen,
            linger_ms,
            ring_listen,
            ring_connect,
            to,
            listen,
            proto,
            ring_size,
            max_sessions,
            timeout,
            drain_timeout,
        } => {
            let limits = proxy::Limits {
                max: max_sessions as usize,
                timeout,
                drain_timeout,
            };
            let linger = Duration::from_millis(linger_ms);
            if xen.is_some() && proto != CliProto::Vchan {
                usage("--xen speaks vchan only".into());
            }
            match (xen, ring_listen, ring_connect, to, listen) {
                (Some(peer), Some(r), None, Some(to), None) => {
                    xen::proxy_listen(peer, &r, &to, ring_size, limits, linger)
                }
                (Some(server), None, Some(r), None, Some(l)) => {
                    xen::proxy_connect(server, &r, &l, limits, linger)
                }
                (None, Some(r), None, Some(to), None) => ring_bytes(ring_size)
                    .map_err(Failure::from)
                    .and_then(|size| {
                        let config = ServerConfig::new(proto.into()).ring_sizes(size, size);
                        proxy::ring_listen(&r, &to, config, limits)
                    }),
                (None, None, Some(r), None, Some(l)) => {
                    proxy::ring_connect(&r, &l, proto.into(), limits)
                }
                _ => usage(
                    "give --ring-listen R --to ADDR, or --ring-connect R --listen ADDR".into(),
                ),
            }
        }
        Cmd::Bench(args) => ring_cli::bench::suite::run(args).map_err(Failure::from),
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
        } => demo::peer(
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

/// How a `--xen` session ends: its timeouts and linger. `--xen` speaks
/// vchan only: another protocol is a usage error.
fn xen_end(
    proto: CliProto,
    timeout: Option<Duration>,
    accept: Option<Duration>,
    linger_ms: u64,
) -> xen::XenEnd {
    if proto != CliProto::Vchan {
        usage("--xen speaks vchan only".into());
    }
    xen::XenEnd {
        timeout,
        accept,
        linger: Duration::from_millis(linger_ms),
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
    /// `proxy`: stopped with sessions still open, cut by a second signal
    /// or the drain timeout.
    pub const CUT: u8 = 8;
    /// `inspect`: live rings moved during every read; no consistent copy.
    pub const BUSY: u8 = 9;
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
            Error::Vchan(ring_core::vchan::Error::Corrupt(_))
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

/// Exits with status 2 and a one-line reason, like clap's own errors.
fn usage(reason: String) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, reason)
        .exit()
}
