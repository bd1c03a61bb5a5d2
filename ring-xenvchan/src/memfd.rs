//! Without Xen: the same calls between two Linux processes, over
//! ring-hosted's rendezvous (a Unix socket passing a sealed memfd and two
//! eventfds), chosen by the [`DIR_VAR`] environment variable.
//!
//! The server lays out the page in a fresh memfd at `server_init`, as on
//! Xen, and listens on a socket named after the xenstore path in that
//! directory; a thread of the library's welcomes one client at a time
//! there (so a client joins whatever the server's program is doing, as on
//! Xen). The client joins in `client_init`. Each side's `fd_for_select` is
//! an epoll fd over its eventfd and the rendezvous socket.
//!
//! The kernel's unmap notification, which on Xen clears a dead peer's
//! live byte and sends an event, is done by the survivor here: when the
//! socket to the peer hangs up, the peer's live byte is cleared, so a
//! peer that dies is seen as closed, exactly as on Xen.

use crate::conn::Wake;
use libc::c_int;
use ring_core::mem::SharedMem;
use ring_core::signal::Signal;
use ring_core::vchan::layout::{CLI_LIVE, SRV_LIVE};
use ring_core::vchan::{self, Blocking, Endpoint, FlatLayout, Orders, ServerOptions};
use ring_hosted::eventfd::EventFd;
use ring_hosted::memfd::MemFd;
use ring_hosted::rendezvous::{self, ClientConfig, Proto, ServerConfig, VchanParts};
use rustix::event::epoll;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// The environment variable that selects this mode: a directory where
/// servers listen and clients look for them.
pub const DIR_VAR: &str = "RING_XENVCHAN_DIR";

/// How long a client waits for the server to answer (the server answers
/// from inside any of its library calls).
const HANDSHAKE: Duration = Duration::from_secs(10);

const WAKE: u64 = 0;
const SOCKET: u64 = 1;

/// The directory of [`DIR_VAR`], if this mode is selected.
pub(crate) fn dir() -> Option<PathBuf> {
    std::env::var_os(DIR_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The socket for xenstore path `xs_path`: relative paths are taken as
/// under `/local/domain/0` (this process plays domain 0), so a server's
/// `data/vchan/1/5` and a client's `/local/domain/0/data/vchan/1/5` meet.
pub(crate) fn socket_path(dir: &Path, xs_path: &str) -> PathBuf {
    let full = if xs_path.starts_with('/') {
        xs_path.to_owned()
    } else {
        format!("/local/domain/0/{xs_path}")
    };
    let name: String = full
        .trim_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("vchan.{name}"))
}

/// What the server's acceptor thread and the signal share.
struct Shared {
    epoll: OwnedFd,
    /// The socket to the connected peer, if any.
    socket: Mutex<Option<UnixStream>>,
    /// Set at close: the acceptor ends at its next wake-up.
    closing: AtomicBool,
}

impl Shared {
    fn watch(&self, sock: &UnixStream) -> io::Result<()> {
        epoll::add(
            &self.epoll,
            sock.as_fd(),
            epoll::EventData::new_u64(SOCKET),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        )
        .map_err(os)
    }

    fn socket(&self) -> MutexGuard<'_, Option<UnixStream>> {
        self.socket.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The server's acceptor: a thread welcoming one client at a time at the
/// listener, so that a client can join while the server's program is busy
/// elsewhere (on Xen it needs nothing from the server at all).
struct Acceptor {
    /// A second handle on the listener, to shut it down at close.
    listener: UnixListener,
    thread: Option<JoinHandle<()>>,
}

/// What the acceptor thread needs to welcome a client.
struct Welcome {
    listener: UnixListener,
    config: ServerConfig,
    orders: Orders,
    mem: Arc<MemFd>,
    /// The eventfd that wakes the server (the client kicks it) and the one
    /// that wakes the client.
    to_server: OwnedFd,
    to_client: OwnedFd,
    shared: Arc<Shared>,
}

impl Welcome {
    fn run(self) {
        let mut pause = Duration::from_millis(1);
        loop {
            let accepted = self.listener.accept();
            if self.shared.closing.load(Ordering::Acquire) {
                return;
            }
            let sock = match accepted {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // Out of fds or memory: the client waits in the
                    // backlog until things ease.
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(200));
                    continue;
                }
            };
            pause = Duration::from_millis(1);
            if self.shared.socket().is_some() {
                // One client at a time: this one is turned away.
                continue;
            }
            let welcomed = rendezvous::welcome_vchan(
                sock,
                &self.config,
                &self.mem,
                self.orders,
                self.to_server.as_fd(),
                self.to_client.as_fd(),
            );
            // A client refused (wrong uid, bad hello) changes nothing.
            if let Ok(sock) = welcomed {
                let mut slot = self.shared.socket();
                if self.shared.watch(&sock).is_ok() {
                    *slot = Some(sock);
                }
            }
        }
    }
}

/// The signal of one end in this mode (see the [module docs](self)).
pub(crate) struct MemSignal {
    kick: EventFd,
    wake: EventFd,
    mem: Arc<MemFd>,
    /// The peer's live byte, cleared when its socket hangs up.
    peer_live: usize,
    shared: Arc<Shared>,
    acceptor: Option<Acceptor>,
    /// The server's socket path, removed at drop.
    path: Option<PathBuf>,
}

fn os(e: rustix::io::Errno) -> io::Error {
    io::Error::from(e)
}

impl MemSignal {
    fn new(
        kick: EventFd,
        wake: EventFd,
        mem: Arc<MemFd>,
        peer_live: usize,
        socket: Option<UnixStream>,
    ) -> io::Result<Self> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(os)?;
        epoll::add(
            &epoll,
            wake.as_fd(),
            epoll::EventData::new_u64(WAKE),
            epoll::EventFlags::IN,
        )
        .map_err(os)?;
        let shared = Arc::new(Shared {
            epoll,
            socket: Mutex::new(None),
            closing: AtomicBool::new(false),
        });
        if let Some(s) = socket {
            shared.watch(&s)?;
            *shared.socket() = Some(s);
        }
        Ok(MemSignal {
            kick,
            wake,
            mem,
            peer_live,
            shared,
            acceptor: None,
            path: None,
        })
    }

    /// Starts the acceptor thread on `listener`.
    fn accept_on(
        &mut self,
        listener: UnixListener,
        config: ServerConfig,
        orders: Orders,
    ) -> io::Result<()> {
        let welcome = Welcome {
            listener: listener.try_clone()?,
            config,
            orders,
            mem: self.mem.clone(),
            to_server: self.wake.as_fd().try_clone_to_owned()?,
            to_client: self.kick.as_fd().try_clone_to_owned()?,
            shared: self.shared.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("xenvchan-accept".into())
            .spawn(move || welcome.run())?;
        self.acceptor = Some(Acceptor {
            listener,
            thread: Some(thread),
        });
        Ok(())
    }

    /// The fd `libxenvchan_fd_for_select` returns.
    pub(crate) fn select_fd(&self) -> RawFd {
        self.shared.epoll.as_raw_fd()
    }

    /// Handles what is ready; `timeout` none: waits for something first.
    fn handle(&self, timeout: Option<Duration>) -> io::Result<()> {
        let mut buf = [std::mem::MaybeUninit::<epoll::Event>::uninit(); 4];
        let ts = timeout.map(|t| rustix::event::Timespec {
            tv_sec: t.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: t.subsec_nanos().into(),
        });
        let events = loop {
            match epoll::wait(&self.shared.epoll, &mut buf, ts.as_ref()) {
                Ok((events, _)) => break events,
                Err(rustix::io::Errno::INTR) if timeout.is_none() => continue,
                Err(rustix::io::Errno::INTR) => return Ok(()),
                Err(e) => return Err(os(e)),
            }
        };
        let tokens: Vec<u64> = events.iter().map(|e| e.data.u64()).collect();
        for token in tokens {
            match token {
                SOCKET => self.peer_socket(),
                // A kick: taken only by a real wait (a look leaves it for
                // the caller's select).
                _ if timeout.is_none() => {
                    self.wake.take()?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The peer's socket is readable: bytes (ignored) or its end, which
    /// clears the peer's live byte (what Xen's unmap notification does)
    /// and drops the socket.
    fn peer_socket(&self) {
        let mut slot = self.shared.socket();
        let Some(sock) = slot.as_mut() else {
            return;
        };
        let mut buf = [0u8; 64];
        let gone = match rustix::net::recv(&*sock, &mut buf, rustix::net::RecvFlags::DONTWAIT) {
            Ok((0, _)) => true,
            Ok(_) => false,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => false,
            Err(_) => true,
        };
        if gone {
            let _ = epoll::delete(&self.shared.epoll, sock.as_fd());
            *slot = None;
            let _ = self.mem.store_u8(self.peer_live, 0);
            self.mem.fence();
        }
    }
}

impl Signal for MemSignal {
    type Error = io::Error;

    fn notify(&self) -> io::Result<()> {
        self.kick.kick()
    }

    fn wait(&self) -> io::Result<()> {
        self.handle(None)
    }
}

impl Wake for MemSignal {
    fn errno(e: &io::Error) -> c_int {
        e.raw_os_error().unwrap_or(libc::EIO)
    }

    fn pump(&self) {
        // Best effort: a failure here shows in the next wait.
        let _ = self.handle(Some(Duration::ZERO));
    }
}

impl Drop for MemSignal {
    fn drop(&mut self) {
        if let Some(mut a) = self.acceptor.take() {
            self.shared.closing.store(true, Ordering::Release);
            // Wakes the thread's accept (it then sees `closing`).
            let _ = rustix::net::shutdown(&a.listener, rustix::net::Shutdown::Read);
            if let Some(t) = a.thread.take() {
                let _ = t.join();
            }
        }
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds a listener at `path` so that it exists only once it accepts:
/// bound under a temporary name, listening, then renamed.
fn listen_at(path: &Path) -> io::Result<UnixListener> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(listener)
}

/// The endpoint and signal of a memfd-mode end.
pub(crate) type MemBlocking = Blocking<Arc<MemFd>, MemSignal>;

fn errno_of(e: &ring_hosted::Error) -> c_int {
    match e {
        ring_hosted::Error::Os { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        ring_hosted::Error::Vchan(v) => crate::conn::ring_errno(v),
        _ => libc::EPROTO,
    }
}

/// `server_init` in this mode.
pub(crate) fn serve(
    dir: &Path,
    xs_path: &str,
    read_min: usize,
    write_min: usize,
) -> Result<MemBlocking, c_int> {
    let orders = Orders::for_sizes(read_min, write_min).map_err(|_| libc::EINVAL)?;
    let layout = FlatLayout::new(orders);
    let mem = Arc::new(MemFd::create("libxenvchan", layout.size).map_err(|e| errno_of(&e))?);
    let ep: Endpoint<Arc<MemFd>> = vchan::serve_flat(mem.clone(), orders, ServerOptions::default())
        .map_err(|e| crate::conn::ring_errno(&e))?;
    let (to_client, to_server) = (
        EventFd::new().map_err(|e| errno_of(&e))?,
        EventFd::new().map_err(|e| errno_of(&e))?,
    );
    let path = socket_path(dir, xs_path);
    let listener = listen_at(&path).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    let mut config = ServerConfig::new(Proto::Vchan);
    config.handshake_timeout = HANDSHAKE;
    let started =
        MemSignal::new(to_client, to_server, mem, CLI_LIVE, None).and_then(|mut signal| {
            signal.accept_on(listener, config, orders)?;
            Ok(signal)
        });
    let mut signal = started.map_err(|e| {
        let _ = std::fs::remove_file(&path);
        e.raw_os_error().unwrap_or(libc::EIO)
    })?;
    signal.path = Some(path);
    Ok(Blocking::new(ep, signal))
}

/// `client_init` in this mode.
pub(crate) fn connect(dir: &Path, xs_path: &str) -> Result<MemBlocking, c_int> {
    let path = socket_path(dir, xs_path);
    if !path.exists() {
        return Err(libc::ENOENT);
    }
    let mut config = ClientConfig::new(Proto::Vchan);
    config.handshake_timeout = HANDSHAKE;
    let VchanParts {
        endpoint,
        to_server,
        to_client,
        socket,
    } = rendezvous::join_vchan(&path, config).map_err(|e| errno_of(&e))?;
    let mem = endpoint.control().clone();
    let signal = MemSignal::new(to_server, to_client, mem, SRV_LIVE, Some(socket))
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    let io = Blocking::new(endpoint, signal);
    // As libxenvchan's client: one event, so a server waiting for its
    // client wakes.
    io.kick().map_err(|_| libc::EIO)?;
    Ok(io)
}
