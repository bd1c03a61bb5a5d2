//! `ring proxy`: socket connections carried over ring sessions, the way
//! libxenvchan's vchan-socket-proxy puts a vchan in front of a service.
//!
//! Two halves, usually on the two sides of a VM boundary:
//!
//! ```text
//!  client --TCP/Unix--> [ring proxy --ring-connect R --listen A]
//!                              | one ring session per connection
//!                              v
//!                       [ring proxy --ring-listen R --to B] --TCP/Unix--> service
//! ```
//!
//! Every connection gets a ring session of its own and a thread of its
//! own running the same copy loop as `ring listen`/`connect`, with the same
//! stream-end model: half-closes pass through (a client's `shutdown(SHUT_WR)`
//! becomes the ring's end mark, the ring's end becomes `shutdown` of the
//! other connection), and a session ends well only when both proxies
//! confirmed every byte. A session that ends badly is reported in one line
//! and closes both of its connections; the others are not touched.
//!
//! Threads rather than an event loop: each session is the straight-line
//! loop that `listen`/`connect` already prove, blocking only in its own
//! `poll`; 1024 sessions are 1024 small threads (256 KiB stacks). The
//! number of sessions is capped (`--max-sessions`); beyond it a connection
//! is closed at once. SIGTERM or SIGINT stops the accepting, lets the
//! sessions in flight finish, and exits 0.

use super::pipe::{pipe_ends, Ends, PipeEnd};
use super::*;
use ring_hosted::fdio::Output;
use ring_hosted::stream::StreamSignal;
use ring_hosted::unix_socket::{listen_at, Existing};
use ring_hosted::xen::stream::XenStream;
use std::net::{TcpListener, TcpStream};
use std::os::fd::BorrowedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Where connections come from or go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Addr {
    /// `tcp:HOST:PORT`.
    Tcp(String),
    /// `unix:PATH`, or a bare path.
    Unix(PathBuf),
}

/// Parses `tcp:HOST:PORT`, `unix:PATH` or a path.
pub(crate) fn parse_addr(s: &str) -> Result<Addr, String> {
    if let Some(hp) = s.strip_prefix("tcp:") {
        if hp
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            return Ok(Addr::Tcp(hp.to_string()));
        }
        return Err(format!("`{s}`: give tcp:HOST:PORT"));
    }
    let path = s.strip_prefix("unix:").unwrap_or(s);
    if path.is_empty() {
        return Err("an empty path".into());
    }
    Ok(Addr::Unix(PathBuf::from(path)))
}

/// One side of a connection.
pub(crate) enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    pub(crate) fn connect(addr: &Addr) -> std::io::Result<Conn> {
        Ok(match addr {
            Addr::Tcp(hp) => Conn::Tcp(TcpStream::connect(hp)?),
            Addr::Unix(p) => Conn::Unix(UnixStream::connect(p)?),
        })
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Conn::Tcp(s) => s.as_fd(),
            Conn::Unix(s) => s.as_fd(),
        }
    }

    fn shutdown_write(&self) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }

    /// Pipes this connection through `session`, both ways.
    fn pipe(&self, session: Session, timeout: Option<Duration>) -> Outcome {
        let end = PipeEnd {
            linger: None,
            timeout,
            accept: None,
            confirm: true,
        };
        let r = match session {
            Session::Vchan(mut s) => self.pipe_through(&mut s, end),
            Session::Vmbus(mut s) => self.pipe_through(&mut s, end),
            other => Err(format!("no pipe for protocol {}", other.proto().name()).into()),
        };
        self.finish();
        r
    }

    /// Pipes this connection through a Xen vchan (a foreign peer: `end`
    /// lingers), both ways.
    pub(crate) fn pipe_xen(&self, s: &mut XenStream, end: PipeEnd) -> Outcome {
        let r = self.pipe_through(s, end);
        self.finish();
        r
    }

    fn pipe_through<S: StreamSignal>(&self, s: &mut impl PollStream<S>, end: PipeEnd) -> Outcome {
        let mut done = || self.shutdown_write();
        let mut ends = Ends {
            input: self.fd(),
            output: self.fd(),
            output_kind: Output::Socket,
            input_name: "the connection",
            output_name: "the connection",
            output_done: &mut done,
        };
        pipe_ends(s, end, &mut ends)
    }

    /// Either way the connection is finished with.
    fn finish(&self) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

/// What a proxy half may hold and how long it waits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Most sessions at once.
    pub max: usize,
    /// A session's peer may be silent this long mid-stream.
    pub timeout: Option<Duration>,
    /// Once stopped, how long sessions may take to finish.
    pub drain_timeout: Option<Duration>,
}

/// What both halves share: the stop and cut flags, the session count and
/// limit, the session threads.
pub(crate) struct Sessions {
    /// Set by the first SIGTERM/SIGINT: accept no more.
    stop: Arc<AtomicBool>,
    /// Set by a second one: cut the sessions still open.
    cut: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    max: usize,
    drain_timeout: Option<Duration>,
    next_id: AtomicU64,
    threads: Vec<JoinHandle<()>>,
}

impl Sessions {
    pub(crate) fn new(limits: Limits) -> Result<Self, Failure> {
        let stop = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicBool::new(false));
        // The first signal stops accepting, the next cuts the sessions
        // (a signal thread, so nothing runs in a signal handler).
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
        ])
        .map_err(|e| format!("cannot handle SIGTERM/SIGINT: {e}"))?;
        let (on_stop, on_cut) = (stop.clone(), cut.clone());
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for _ in signals.forever() {
                    if on_stop.swap(true, Ordering::AcqRel) {
                        on_cut.store(true, Ordering::Release);
                    }
                }
            })
            .map_err(|e| format!("cannot start the signal thread: {e}"))?;
        raise_fd_limit();
        Ok(Sessions {
            stop,
            cut,
            active: Arc::new(AtomicUsize::new(0)),
            max: limits.max,
            drain_timeout: limits.drain_timeout,
            next_id: AtomicU64::new(1),
            threads: Vec::new(),
        })
    }

    /// Sessions running now.
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Whether one more session may start; says why not.
    pub(crate) fn admit(&self, what: &str) -> bool {
        if self.active.load(Ordering::Acquire) >= self.max {
            eprintln!("ring: proxy: {} sessions already; {what} closed", self.max);
            return false;
        }
        true
    }

    /// Runs `work` as a session in a thread of its own.
    fn start(&mut self, work: impl FnOnce() -> Outcome + Send + 'static) -> Outcome {
        self.threads.retain(|t| !t.is_finished());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let active = self.active.clone();
        active.fetch_add(1, Ordering::AcqRel);
        let t = std::thread::Builder::new()
            .name(format!("session-{id}"))
            .stack_size(256 << 10)
            .spawn(move || {
                if let Err(f) = work() {
                    eprintln!(
                        "ring: proxy: session {id} ended badly (exit {}): {}",
                        f.code, f.reason
                    );
                }
                active.fetch_sub(1, Ordering::AcqRel);
            })
            .map_err(|e| {
                self.active.fetch_sub(1, Ordering::AcqRel);
                format!("cannot start a session thread: {e}")
            })?;
        self.threads.push(t);
        Ok(())
    }

    /// Runs `work` as a session, or (no thread to be had) drops it with a
    /// line: the sessions in flight go on.
    pub(crate) fn start_or_refuse(&mut self, work: impl FnOnce() -> Outcome + Send + 'static) {
        if let Err(f) = self.start(work) {
            eprintln!("ring: proxy: {}; the connection is closed", f.reason);
        }
    }

    /// Lets every session in flight finish, until a second signal or the
    /// drain timeout cuts the rest.
    pub(crate) fn drain(mut self) -> Outcome {
        let deadline = self.drain_timeout.map(|t| Instant::now() + t);
        loop {
            self.threads.retain(|t| !t.is_finished());
            let open = self.threads.len();
            if open == 0 {
                return Ok(());
            }
            let why = if self.cut.load(Ordering::Acquire) {
                "a second signal"
            } else if deadline.is_some_and(|d| Instant::now() >= d) {
                "the drain timeout"
            } else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            return Err(Failure {
                code: exit::CUT,
                reason: format!("proxy: stopped; {why} cut {open} sessions still open"),
            });
        }
    }
}

/// Sessions need fds (a connection, the rendezvous socket, the memfd and
/// two eventfds each): take the hard limit.
fn raise_fd_limit() {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    );
}

/// The half that serves ring sessions and connects each to `to`.
pub(crate) fn ring_listen(ring: &Path, to: &Addr, config: ServerConfig, limits: Limits) -> Outcome {
    let timeout = limits.timeout;
    let mut sessions = Sessions::new(limits)?;
    let listener = Listener::bind(ring, config)?;
    while !sessions.stopping() {
        let refused = |e: &Error| eprintln!("ring: proxy: refused a ring client: {e}");
        let session = match listener.accept_timeout_with(Duration::from_millis(100), refused) {
            Ok(s) => s,
            Err(Error::TimedOut) => continue,
            Err(e) => return Err(e.into()),
        };
        if !sessions.admit("a ring session") {
            continue;
        }
        let to = to.clone();
        sessions.start_or_refuse(move || {
            let conn = Conn::connect(&to).map_err(|e| format!("connect to {to:?}: {e}"))?;
            conn.pipe(session, timeout)
        });
    }
    drop(listener);
    sessions.drain()
}

/// The half that accepts connections at `listen` and opens a ring session
/// for each at `ring`.
pub(crate) fn ring_connect(ring: &Path, listen: &Addr, proto: Proto, limits: Limits) -> Outcome {
    let timeout = limits.timeout;
    let ring = ring.to_path_buf();
    accept_loop(listen, limits, move |conn| {
        let ring = ring.clone();
        move || {
            let session = rendezvous::connect(&ring, proto)?;
            conn.pipe(session, timeout)
        }
    })
}

/// Accepts connections at `listen` until stopped and runs `session(conn)`
/// for each in a thread of its own, within `limits`.
pub(crate) fn accept_loop<W>(
    listen: &Addr,
    limits: Limits,
    mut session: impl FnMut(Conn) -> W,
) -> Outcome
where
    W: FnOnce() -> Outcome + Send + 'static,
{
    let max = limits.max;
    let mut sessions = Sessions::new(limits)?;
    let front = match listen {
        Addr::Tcp(hp) => {
            Front::Tcp(tcp_listen(hp, max).map_err(|e| format!("listen on {hp}: {e}"))?)
        }
        Addr::Unix(p) => {
            let l = listen_at(p, Existing::Keep)
                .map_err(|e| format!("listen on {}: {e}", p.display()))?;
            Front::Unix {
                listener: l,
                _unlink: Unlink(p.clone()),
            }
        }
    };
    let mut shortage = Shortage::new();
    while !sessions.stopping() {
        let conn = match accept_one(front.fd(), || front.accept()) {
            Ok(Some(c)) => {
                shortage.over();
                c
            }
            Ok(None) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                shortage.refuse_or_pause(&e, front.fd());
                continue;
            }
        };
        if !sessions.admit("a connection") {
            continue;
        }
        sessions.start_or_refuse(session(conn));
    }
    drop(front);
    sessions.drain()
}

/// The socket the front half accepts connections on.
enum Front {
    Tcp(TcpListener),
    /// The path is removed when the front half ends.
    Unix {
        listener: UnixListener,
        _unlink: Unlink,
    },
}

impl Front {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Front::Tcp(l) => l.as_fd(),
            Front::Unix { listener, .. } => listener.as_fd(),
        }
    }

    fn accept(&self) -> std::io::Result<Conn> {
        match self {
            Front::Tcp(l) => l.accept().map(|(s, _)| Conn::Tcp(s)),
            Front::Unix { listener, .. } => listener.accept().map(|(s, _)| Conn::Unix(s)),
        }
    }
}

/// A TCP listener on `hp` whose backlog holds a burst of `max` sessions'
/// connections (the kernel caps it at `net.core.somaxconn`).
fn tcp_listen(hp: &str, max: usize) -> std::io::Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketType};
    use std::net::ToSocketAddrs;
    let mut last = None;
    for addr in hp.to_socket_addrs()? {
        let family = if addr.is_ipv4() {
            AddressFamily::INET
        } else {
            AddressFamily::INET6
        };
        let bound = rustix::net::socket_with(
            family,
            SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .and_then(|fd| {
            rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
            rustix::net::bind(&fd, &addr)?;
            rustix::net::listen(&fd, i32::try_from(max.max(128)).unwrap_or(i32::MAX))?;
            Ok(fd)
        });
        match bound {
            Ok(fd) => return Ok(TcpListener::from(fd)),
            Err(e) => last = Some(std::io::Error::from(e)),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to listen on")))
}

/// Accepting while out of descriptors: one line per shortage. A spare
/// descriptor, kept open for the purpose, is given up to accept the
/// waiting connection and close it at once, so a client over the limit is
/// refused (end of file) instead of left in the backlog; without a spare
/// (or on other errors) accepting pauses, each pause longer (up to a
/// second), instead of spinning. An accept that succeeds ends the
/// shortage.
struct Shortage {
    spare: Option<std::fs::File>,
    pause: Option<Duration>,
    refused: u64,
    logged: bool,
}

impl Shortage {
    fn new() -> Self {
        Shortage {
            spare: std::fs::File::open("/dev/null").ok(),
            pause: None,
            refused: 0,
            logged: false,
        }
    }

    fn refuse_or_pause(&mut self, e: &std::io::Error, listener: BorrowedFd<'_>) {
        if !self.logged {
            eprintln!("ring: proxy: accept: {e}; refusing connections until it clears");
            self.logged = true;
        }
        let out_of_fds = matches!(e.raw_os_error(), Some(n) if n == EMFILE || n == ENFILE);
        if out_of_fds && self.spare.take().is_some() {
            if let Ok(conn) = rustix::net::accept(listener) {
                drop(conn);
                self.refused += 1;
            }
            self.spare = std::fs::File::open("/dev/null").ok();
            if self.spare.is_some() {
                return;
            }
        }
        let step = self.pause.map_or(Duration::from_millis(10), |p| {
            (p * 2).min(Duration::from_secs(1))
        });
        self.pause = Some(step);
        std::thread::sleep(step);
    }

    fn over(&mut self) {
        if self.logged {
            eprintln!(
                "ring: proxy: accepting again ({} connections refused meanwhile)",
                self.refused
            );
        }
        self.pause = None;
        self.refused = 0;
        self.logged = false;
        if self.spare.is_none() {
            self.spare = std::fs::File::open("/dev/null").ok();
        }
    }
}

const EMFILE: i32 = rustix::io::Errno::MFILE.raw_os_error();
const ENFILE: i32 = rustix::io::Errno::NFILE.raw_os_error();

/// Waits up to 100 ms for a connection, then accepts it.
fn accept_one(
    fd: BorrowedFd<'_>,
    accept: impl FnOnce() -> std::io::Result<Conn>,
) -> std::io::Result<Option<Conn>> {
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    match rustix::event::poll(&mut fds, Some(&ts)) {
        Ok(0) | Err(rustix::io::Errno::INTR) => Ok(None),
        Ok(_) => accept().map(Some),
        Err(e) => Err(e.into()),
    }
}

/// Removes a socket path when dropped.
struct Unlink(PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
