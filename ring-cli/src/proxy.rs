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
use ring_hosted::unix_socket::{listen_at, Existing};
use std::net::{TcpListener, TcpStream};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
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
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn connect(addr: &Addr) -> std::io::Result<Conn> {
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
            confirm: true,
        };
        let mut done = || self.shutdown_write();
        let mut ends = Ends {
            input: self.fd(),
            output: self.fd(),
            output_kind: Output::Socket,
            input_name: "the connection",
            output_name: "the connection",
            output_done: &mut done,
        };
        let r = match session {
            Session::Vchan(mut s) => pipe_ends(&mut s, end, &mut ends),
            Session::Vmbus(mut s) => pipe_ends(&mut s, end, &mut ends),
            other => Err(format!("no pipe for protocol {}", other.proto().name()).into()),
        };
        // Either way the connection is finished with.
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
        r
    }
}

/// What both halves share: the stop flag, the session count and limit,
/// the session threads.
struct Sessions {
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    max: usize,
    next_id: AtomicU64,
    threads: Vec<JoinHandle<()>>,
}

impl Sessions {
    fn new(max: usize) -> Result<Self, Failure> {
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, stop.clone())
                .map_err(|e| format!("cannot handle signal {sig}: {e}"))?;
        }
        raise_fd_limit();
        Ok(Sessions {
            stop,
            active: Arc::new(AtomicUsize::new(0)),
            max,
            next_id: AtomicU64::new(1),
            threads: Vec::new(),
        })
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Whether one more session may start; says why not.
    fn admit(&self, what: &str) -> bool {
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

    /// Lets every session in flight finish.
    fn drain(self) -> Outcome {
        for t in self.threads {
            let _ = t.join();
        }
        Ok(())
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
pub(crate) fn ring_listen(
    ring: &Path,
    to: &Addr,
    config: ServerConfig,
    max: usize,
    timeout: Option<Duration>,
) -> Outcome {
    let mut sessions = Sessions::new(max)?;
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
        sessions.start(move || {
            let conn = Conn::connect(&to).map_err(|e| format!("connect to {to:?}: {e}"))?;
            conn.pipe(session, timeout)
        })?;
    }
    drop(listener);
    sessions.drain()
}

/// The half that accepts connections at `listen` and opens a ring session
/// for each at `ring`.
pub(crate) fn ring_connect(
    ring: &Path,
    listen: &Addr,
    proto: Proto,
    max: usize,
    timeout: Option<Duration>,
) -> Outcome {
    let mut sessions = Sessions::new(max)?;
    let accept: Box<dyn Fn() -> std::io::Result<Option<Conn>>> = match listen {
        Addr::Tcp(hp) => {
            let l = TcpListener::bind(hp).map_err(|e| format!("listen on {hp}: {e}"))?;
            Box::new(move || accept_one(l.as_fd(), || l.accept().map(|(s, _)| Conn::Tcp(s))))
        }
        Addr::Unix(p) => {
            let l = listen_at(p, Existing::Keep)
                .map_err(|e| format!("listen on {}: {e}", p.display()))?;
            let path = p.clone();
            let _cleanup = Unlink(path);
            Box::new(move || {
                let _keep = &_cleanup;
                accept_one(l.as_fd(), || l.accept().map(|(s, _)| Conn::Unix(s)))
            })
        }
    };
    while !sessions.stopping() {
        let conn = match accept() {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("ring: proxy: accept: {e}");
                continue;
            }
        };
        if !sessions.admit("a connection") {
            continue;
        }
        let ring = ring.to_path_buf();
        sessions.start(move || {
            let session = rendezvous::connect(&ring, proto)?;
            conn.pipe(session, timeout)
        })?;
    }
    drop(accept);
    sessions.drain()
}

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
