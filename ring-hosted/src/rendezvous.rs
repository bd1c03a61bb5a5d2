//! Meeting a peer process: a Unix socket over which the server hands the
//! client a sealed memfd and two eventfds (`SCM_RIGHTS`, as vhost-user
//! does) after a small versioned handshake.
//!
//! # Wire format (all integers little-endian)
//!
//! The client sends a 16-byte *hello*:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `RNGr` |
//! | 4..6 | version (1) |
//! | 6 | protocol (1 = vchan, 2 = vmbus) |
//! | 7..16 | zero |
//!
//! The server answers with a 32-byte *welcome*, carrying three fds when the
//! status is 0 (memory, the eventfd that wakes the server, the eventfd that
//! wakes the client):
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `RNGr` |
//! | 4..6 | version |
//! | 6 | protocol |
//! | 7 | status: 0 ok, else a [`Refusal`] code |
//! | 8..16 | memory size in bytes |
//! | 16..20 | size of the client→server ring ("left" in vchan; the data area in vmbus) |
//! | 20..24 | size of the server→client ring ("right") |
//! | 24..32 | zero |
//!
//! The client checks everything it receives (magic, version, protocol,
//! sizes, fd count, that the memory is a sealed memfd of the announced size
//! and that both events are eventfds) before it maps anything. The server
//! checks the client's uid with `SO_PEERCRED` before it reads a byte.
//!
//! After the handshake the socket stays open and silent: it is the hang-up
//! fd of both sides' [`EventSignal`], so either process dying wakes the
//! other (see [`stream`](crate::stream)).
//!
//! # Adding a protocol
//!
//! A protocol is a [`Proto`] code, a layout size and an initialisation of
//! the memory by the server (done here before the fds are sent), and a
//! [`Session`] variant carrying its endpoint.

use crate::eventfd::{EventFd, EventSignal, DEFAULT_SPIN};
use crate::memfd::MemFd;
use crate::stream::{PollStream, VchanStream};
use crate::vmbus::{ChannelLayout, VmbusChannel, VmbusPipe};
use crate::Error;
use ring_core::vchan::{self, FlatLayout, Orders, ServerOptions};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::fmt;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// First four bytes of every handshake message.
pub const MAGIC: [u8; 4] = *b"RNGr";
/// The handshake version this code speaks.
pub const VERSION: u16 = 1;
/// Length of the client's hello.
pub const HELLO_LEN: usize = 16;
/// Length of the server's welcome.
pub const WELCOME_LEN: usize = 32;
/// Number of fds a welcome carries.
pub const WELCOME_FDS: usize = 3;

/// A ring protocol the rendezvous can set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Proto {
    /// Xen vchan: one control page and two byte rings.
    Vchan,
    /// Hyper-V VMBus: two packet rings, used as a pipe.
    Vmbus,
    /// Hyper-V VMBus: the same two packet rings carrying raw packets (each
    /// side's own types, flags and transaction ids; no pipe framing).
    VmbusPackets,
}

impl Proto {
    /// The protocol's code on the wire.
    pub const fn code(self) -> u8 {
        match self {
            Proto::Vchan => 1,
            Proto::Vmbus => 2,
            Proto::VmbusPackets => 3,
        }
    }

    /// The protocol with wire code `code`, if known.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Proto::Vchan),
            2 => Some(Proto::Vmbus),
            3 => Some(Proto::VmbusPackets),
            _ => None,
        }
    }

    /// Short lower-case name, as the CLI spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Proto::Vchan => "vchan",
            Proto::Vmbus => "vmbus",
            Proto::VmbusPackets => "vmbus-packets",
        }
    }
}

/// Why a server turned a client away (the welcome's status byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The hello was not a hello (bad magic or too short).
    BadHello = 1,
    /// The hello's version is not ours.
    Version = 2,
    /// The server does not serve that protocol.
    Proto = 3,
    /// The client's uid is not accepted.
    NotPermitted = 4,
    /// The server failed to set up the memory.
    ServerError = 5,
}

impl Refusal {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Refusal::BadHello,
            2 => Refusal::Version,
            3 => Refusal::Proto,
            4 => Refusal::NotPermitted,
            5 => Refusal::ServerError,
            _ => return None,
        })
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::BadHello => "server did not understand our hello",
            Refusal::Version => "server speaks another handshake version",
            Refusal::Proto => "server does not serve this protocol",
            Refusal::NotPermitted => "server does not accept our uid",
            Refusal::ServerError => "server failed to set up the ring",
        })
    }
}

/// What was wrong with a handshake message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeProblem {
    /// The message ended early (the peer closed or stopped sending).
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// The message does not start with [`MAGIC`].
    BadMagic {
        /// The first four bytes.
        got: [u8; 4],
    },
    /// A version other than [`VERSION`].
    Version {
        /// The peer's version.
        got: u16,
    },
    /// An unknown protocol code, or not the one asked for.
    Proto {
        /// The peer's code.
        got: u8,
        /// The code expected.
        want: u8,
    },
    /// The server refused us.
    Refused {
        /// The status byte.
        code: u8,
        /// Its meaning, if known.
        reason: Option<Refusal>,
    },
    /// A welcome with the wrong number of fds.
    FdCount {
        /// Fds received.
        got: usize,
    },
    /// The kernel dropped fds (our buffer was too small for what was sent).
    FdsTruncated,
    /// Ring sizes that are not valid vchan rings.
    BadSizes {
        /// Client→server ring size.
        left: u32,
        /// Server→client ring size.
        right: u32,
        /// Why.
        why: String,
    },
    /// The whole handshake did not finish within its deadline.
    TimedOut {
        /// Bytes received by then.
        got: usize,
        /// Bytes expected.
        want: usize,
        /// The deadline.
        after: Duration,
    },
}

impl fmt::Display for HandshakeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeProblem::Truncated { got, want } => {
                write!(f, "peer sent {got} of {want} handshake bytes")
            }
            HandshakeProblem::BadMagic { got } => {
                write!(f, "not a ring handshake (starts with {got:02x?})")
            }
            HandshakeProblem::Version { got } => {
                write!(f, "peer speaks handshake version {got}, we speak {VERSION}")
            }
            HandshakeProblem::Proto { got, want } => {
                write!(f, "peer offers protocol code {got}, expected {want}")
            }
            HandshakeProblem::Refused { code, reason } => match reason {
                Some(r) => write!(f, "refused: {r}"),
                None => write!(f, "refused with unknown status {code}"),
            },
            HandshakeProblem::FdCount { got } => {
                write!(f, "welcome carried {got} fds, expected {WELCOME_FDS}")
            }
            HandshakeProblem::FdsTruncated => f.write_str("the kernel truncated the passed fds"),
            HandshakeProblem::BadSizes { left, right, why } => {
                write!(f, "bad ring sizes {left}/{right}: {why}")
            }
            HandshakeProblem::TimedOut { got, want, after } => write!(
                f,
                "timed out after {after:?} with {got} of {want} handshake bytes"
            ),
        }
    }
}

fn hs(p: HandshakeProblem) -> Error {
    Error::Handshake(p)
}

/// The client's hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Handshake version.
    pub version: u16,
    /// Requested protocol code.
    pub proto: u8,
}

impl Hello {
    /// Encodes the hello.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6] = self.proto;
        b
    }

    /// Decodes a hello (magic checked; version and protocol left to the
    /// caller, so it can refuse them precisely).
    ///
    /// # Errors
    ///
    /// [`HandshakeProblem::BadMagic`].
    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Self, HandshakeProblem> {
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != MAGIC {
            return Err(HandshakeProblem::BadMagic { got: magic });
        }
        Ok(Hello {
            version: u16::from_le_bytes([b[4], b[5]]),
            proto: b[6],
        })
    }
}

/// The server's welcome (or refusal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// Handshake version.
    pub version: u16,
    /// Protocol code.
    pub proto: u8,
    /// 0, or a [`Refusal`] code.
    pub status: u8,
    /// Size of the memory passed.
    pub mem_size: u64,
    /// Client→server ring size.
    pub left_size: u32,
    /// Server→client ring size.
    pub right_size: u32,
}

impl Welcome {
    /// A refusal for `proto`.
    pub fn refusal(proto: u8, why: Refusal) -> Self {
        Welcome {
            version: VERSION,
            proto,
            status: why as u8,
            mem_size: 0,
            left_size: 0,
            right_size: 0,
        }
    }

    /// Encodes the welcome.
    pub fn encode(&self) -> [u8; WELCOME_LEN] {
        let mut b = [0u8; WELCOME_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6] = self.proto;
        b[7] = self.status;
        b[8..16].copy_from_slice(&self.mem_size.to_le_bytes());
        b[16..20].copy_from_slice(&self.left_size.to_le_bytes());
        b[20..24].copy_from_slice(&self.right_size.to_le_bytes());
        b
    }

    /// Decodes a welcome and checks magic, version and status.
    ///
    /// # Errors
    ///
    /// [`HandshakeProblem::BadMagic`], `Version` or `Refused`.
    pub fn decode(b: &[u8; WELCOME_LEN]) -> Result<Self, HandshakeProblem> {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != MAGIC {
            return Err(HandshakeProblem::BadMagic { got: magic });
        }
        let w = Welcome {
            version: u16::from_le_bytes([b[4], b[5]]),
            proto: b[6],
            status: b[7],
            mem_size: u64::from(word(8)) | (u64::from(word(12)) << 32),
            left_size: word(16),
            right_size: word(20),
        };
        if w.version != VERSION {
            return Err(HandshakeProblem::Version { got: w.version });
        }
        if w.status != 0 {
            return Err(HandshakeProblem::Refused {
                code: w.status,
                reason: Refusal::from_code(w.status),
            });
        }
        Ok(w)
    }
}

/// Which peers a server accepts, by the uid `SO_PEERCRED` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerPolicy {
    /// Only our own effective uid (the default).
    SameUid,
    /// Only this uid.
    Uid(u32),
    /// Anyone who can open the socket.
    AnyUid,
}

impl PeerPolicy {
    /// Whether a peer with `uid` is accepted; `Err(expected)` if not.
    pub fn check(self, uid: u32) -> Result<(), u32> {
        let expected = match self {
            PeerPolicy::AnyUid => return Ok(()),
            PeerPolicy::SameUid => rustix::process::geteuid().as_raw(),
            PeerPolicy::Uid(u) => u,
        };
        if uid == expected {
            Ok(())
        } else {
            Err(expected)
        }
    }
}

/// What a server sets up for each client.
#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    /// The protocol served.
    pub proto: Proto,
    /// Minimum size of the ring the server reads (client→server).
    pub read_size: usize,
    /// Minimum size of the ring the server writes (server→client).
    pub write_size: usize,
    /// Which uids may connect.
    pub peer: PeerPolicy,
    /// Spin budget of the server's signal.
    pub spin: Duration,
    /// How long a client may take to say hello.
    pub handshake_timeout: Duration,
}

impl ServerConfig {
    /// Defaults: 64 KiB rings both ways, same uid only, the default spin,
    /// a 5 s handshake timeout.
    pub fn new(proto: Proto) -> Self {
        ServerConfig {
            proto,
            read_size: 64 << 10,
            write_size: 64 << 10,
            peer: PeerPolicy::SameUid,
            spin: DEFAULT_SPIN,
            handshake_timeout: Duration::from_secs(5),
        }
    }

    /// Sets both ring sizes (rounded up to the protocol's sizes).
    pub fn ring_sizes(mut self, read: usize, write: usize) -> Self {
        self.read_size = read;
        self.write_size = write;
        self
    }
}

/// A connected ring of some protocol.
#[derive(Debug)]
#[non_exhaustive]
pub enum Session {
    /// A vchan byte stream.
    Vchan(VchanStream),
    /// A VMBus pipe.
    Vmbus(VmbusPipe),
    /// A VMBus channel of raw packets.
    VmbusPackets(VmbusChannel),
}

impl Session {
    /// The protocol of this session.
    pub fn proto(&self) -> Proto {
        match self {
            Session::Vchan(_) => Proto::Vchan,
            Session::Vmbus(_) => Proto::Vmbus,
            Session::VmbusPackets(_) => Proto::VmbusPackets,
        }
    }

    /// The vchan stream, if this is a vchan session.
    pub fn into_vchan(self) -> Option<VchanStream> {
        match self {
            Session::Vchan(s) => Some(s),
            _ => None,
        }
    }

    /// The VMBus pipe, if this is a VMBus session.
    pub fn into_vmbus(self) -> Option<VmbusPipe> {
        match self {
            Session::Vmbus(p) => Some(p),
            _ => None,
        }
    }

    /// The VMBus packet channel, if this is a raw-packet session.
    pub fn into_vmbus_packets(self) -> Option<VmbusChannel> {
        match self {
            Session::VmbusPackets(c) => Some(c),
            _ => None,
        }
    }

    /// The shared memory.
    pub fn memory(&self) -> &Arc<MemFd> {
        match self {
            Session::Vchan(s) => s.memory(),
            Session::Vmbus(p) => p.memory(),
            Session::VmbusPackets(c) => c.memory(),
        }
    }

    /// The event channel.
    pub fn signal(&self) -> &EventSignal {
        match self {
            Session::Vchan(s) => s.signal(),
            Session::Vmbus(p) => PollStream::signal(p),
            Session::VmbusPackets(c) => c.signal(),
        }
    }

    /// The event channel, to change spin, timeout or hang-up fd.
    pub fn signal_mut(&mut self) -> &mut EventSignal {
        match self {
            Session::Vchan(s) => s.signal_mut(),
            Session::Vmbus(p) => p.signal_mut(),
            Session::VmbusPackets(c) => c.signal_mut(),
        }
    }
}

/// At most this many handshakes run at once. A client that arrives when
/// all are taken is not kept waiting behind idle ones: the oldest
/// handshake whose client has been silent for a while (no hello, nothing
/// sent) is cut off (that client refused) to make room. A flood of silent
/// clients ends its own oldest members, a client that says its hello at
/// once is served at once, and a burst of good clients waits its turn.
pub const MAX_HANDSHAKES: usize = 64;

/// The longest pause in accepting while the process is out of
/// descriptors or memory.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// A server socket that sets up a ring for every client it accepts.
///
/// # Surviving clients
///
/// A client can never stop the listener. Each handshake (at most
/// [`MAX_HANDSHAKES`] at once) runs in a thread of its own with one deadline ([`ServerConfig::handshake_timeout`]) for
/// the whole hello, so a silent or slow client holds only itself; a client
/// that sends garbage, runs as the wrong uid or hangs up early is refused
/// (reported to [`accept_with`](Self::accept_with)'s callback) and the
/// listener waits for the next.
///
/// # One listener per path
///
/// Beside the socket the listener holds `PATH.lock`, locked with `flock`
/// for its whole life. A second listener on the same path finds the lock
/// taken and fails with [`Error::InUse`] without touching the live
/// socket; a listener that finds the lock free knows any socket left at
/// the path is stale and replaces it.
#[derive(Debug)]
pub struct Listener {
    inner: UnixListener,
    path: PathBuf,
    lock: std::fs::File,
    lock_path: PathBuf,
    config: ServerConfig,
    /// Handshakes in flight send their outcome here, then kick `ready`.
    done_tx: std::sync::mpsc::Sender<Result<Session, Error>>,
    done_rx: std::sync::mpsc::Receiver<Result<Session, Error>>,
    ready: Arc<EventFd>,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// The handshakes in flight, oldest first, each with a handle on its
    /// socket to cut it off when it idles and a newer client needs room.
    pending: Arc<std::sync::Mutex<std::collections::VecDeque<Pending>>>,
    next_id: std::sync::atomic::AtomicU64,
    /// While the process is out of descriptors (or memory): when to try
    /// `accept` again, and the pause after that one.
    backoff: std::sync::Mutex<Option<(Instant, Duration)>>,
    /// A descriptor kept for the day there are none: given up to accept a
    /// client over the limit and close it at once (it is refused, not
    /// left waiting in the backlog), then taken again.
    spare: std::sync::Mutex<Option<std::fs::File>>,
}

/// What one [`Listener::accept_step`] found.
#[cfg(feature = "tokio")]
pub(crate) enum AcceptStep {
    /// A client's handshake ended with this session (boxed: it is large,
    /// and the other answer is the common one).
    Session(Box<Session>),
    /// No session yet. `moved`: something happened (step again at once);
    /// `again`: step again after this long even with no event.
    Waiting {
        moved: bool,
        again: Option<Duration>,
    },
}

/// A handshake in flight, as the listener sees it.
#[derive(Debug)]
struct Pending {
    id: u64,
    /// A handle on the client's socket: shut down to cut the handshake off.
    sock: UnixStream,
    since: Instant,
    /// The client's whole hello is in: the handshake is not idle.
    hello: Arc<std::sync::atomic::AtomicBool>,
}

/// How long a client may be silent before its handshake counts as idle
/// (and may be cut off for a newer client when all are taken). A client
/// of ours sends its hello the moment it connects.
const IDLE_AFTER: Duration = Duration::from_millis(100);

/// Whether an `accept` error is the server's passing shortage (out of
/// descriptors, buffers or memory) rather than a broken socket: back off
/// and serve again when resources return.
fn is_shortage(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Takes the lock file of `path`, making sure the file we locked is still
/// the one at the path (a listener that was removing it as we opened it
/// would otherwise leave us holding an orphan).
fn take_lock(path: &Path, lock_path: &Path) -> Result<std::fs::File, Error> {
    use rustix::fs::{flock, FlockOperation};
    let os = |op| move |source| Error::Os { op, source };
    for _ in 0..8 {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(lock_path)
            .map_err(os("open lock file"))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(Error::InUse {
                    path: path.to_owned(),
                })
            }
            Err(e) => return Err(Error::os("flock")(e)),
        }
        let ours = rustix::fs::fstat(&file).map_err(Error::os("fstat lock file"))?;
        match rustix::fs::stat(lock_path) {
            Ok(now) if now.st_ino == ours.st_ino && now.st_dev == ours.st_dev => return Ok(file),
            // Removed or replaced meanwhile: lock the new one.
            _ => continue,
        }
    }
    Err(Error::InUse {
        path: path.to_owned(),
    })
}

impl Listener {
    /// Binds `path`, after taking `PATH.lock`. A socket left at the path
    /// by a listener that is gone is replaced; anything else at the path
    /// is an error.
    ///
    /// # Errors
    ///
    /// [`Error::InUse`] if another listener serves the path,
    /// [`Error::NotASocket`] if a file of another kind is there,
    /// [`Error::Os`] if the path cannot be bound.
    pub fn bind(path: &Path, config: ServerConfig) -> Result<Self, Error> {
        let bind_err = |source| Error::Os {
            op: "bind rendezvous socket",
            source,
        };
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let not_a_socket = || std::fs::symlink_metadata(path).is_ok() && !is_socket(path);
        // Refused before a lock file is made for it.
        if not_a_socket() {
            return Err(Error::NotASocket {
                path: path.to_owned(),
            });
        }
        let lock = take_lock(path, &lock_path)?;
        // From here a refusal removes the lock file it made (it is ours).
        let refuse = |e: Error| {
            let _ = std::fs::remove_file(&lock_path);
            e
        };
        if not_a_socket() {
            return Err(refuse(Error::NotASocket {
                path: path.to_owned(),
            }));
        }
        // The lock is ours, so a socket left at the path is served by
        // nobody: ours replaces it in one step, already accepting.
        let inner = crate::unix_socket::listen_at(path, crate::unix_socket::Existing::Replace)
            .map_err(|e| refuse(bind_err(e)))?;
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        Ok(Listener {
            inner,
            path: path.to_owned(),
            lock,
            lock_path,
            config,
            done_tx,
            done_rx,
            ready: Arc::new(EventFd::new()?),
            in_flight: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            pending: Arc::default(),
            next_id: std::sync::atomic::AtomicU64::new(0),
            backoff: std::sync::Mutex::new(None),
            spare: std::sync::Mutex::new(std::fs::File::open("/dev/null").ok()),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file beside the socket (`PATH.lock`), which dropping the
    /// listener removes with the socket: what a process that is killed
    /// before it can drop the listener should remove too.
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Waits for a client that completes the handshake and returns its
    /// session; refused clients are skipped silently.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if accepting fails, or setting up a ring for a good
    /// client fails on our side.
    pub fn accept(&self) -> Result<Session, Error> {
        self.accept_with(|_| {})
    }

    /// As [`accept`](Self::accept), calling `refused` with the reason for
    /// every client turned away (for a log line).
    ///
    /// # Errors
    ///
    /// As [`accept`](Self::accept).
    pub fn accept_with(&self, refused: impl FnMut(&Error)) -> Result<Session, Error> {
        self.next_session(None, refused)
    }

    /// As [`accept`](Self::accept), giving up after `timeout` with
    /// [`Error::TimedOut`].
    ///
    /// # Errors
    ///
    /// As `accept`, and [`Error::TimedOut`].
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Session, Error> {
        self.accept_timeout_with(timeout, |_| {})
    }

    /// As [`accept_timeout`](Self::accept_timeout), calling `refused` for
    /// every client turned away meanwhile.
    ///
    /// # Errors
    ///
    /// As `accept`, and [`Error::TimedOut`].
    pub fn accept_timeout_with(
        &self,
        timeout: Duration,
        refused: impl FnMut(&Error),
    ) -> Result<Session, Error> {
        self.next_session(Some(Instant::now() + timeout), refused)
    }

    fn next_session(
        &self,
        deadline: Option<Instant>,
        mut refused: impl FnMut(&Error),
    ) -> Result<Session, Error> {
        loop {
            if let Some(session) = self.finished(&mut refused)? {
                return Ok(session);
            }
            let ts = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::TimedOut);
                    }
                    Some(left)
                }
                None => None,
            };
            self.poll_once(ts, &mut refused)?;
        }
    }

    /// The outcome of a handshake that has ended, if one has: a session,
    /// or (a client's fault) reported to `refused` and skipped.
    fn finished(&self, refused: &mut impl FnMut(&Error)) -> Result<Option<Session>, Error> {
        while let Ok(outcome) = self.done_rx.try_recv() {
            match outcome {
                Ok(session) => return Ok(Some(session)),
                Err(e) if is_client_fault(&e) => refused(&e),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// One non-blocking step of [`accept`](Self::accept), for a caller
    /// that waits on its own (the tokio listener): a session if a
    /// handshake has ended with one, else whether anything moved (a client
    /// accepted, a handshake ended), and when to step again at the latest
    /// even with no event (`Some` while out of descriptors or out of
    /// handshake slots). Wait for [`accept_fds`](Self::accept_fds) only
    /// after a step that moved nothing.
    #[cfg(feature = "tokio")]
    pub(crate) fn accept_step(
        &self,
        refused: &mut impl FnMut(&Error),
    ) -> Result<AcceptStep, Error> {
        if let Some(session) = self.finished(refused)? {
            return Ok(AcceptStep::Session(Box::new(session)));
        }
        let moved = self.poll_once(Some(Duration::ZERO), refused)?;
        if let Some(session) = self.finished(refused)? {
            return Ok(AcceptStep::Session(Box::new(session)));
        }
        let paused = self.backoff_until().is_some()
            || self.in_flight.load(std::sync::atomic::Ordering::Acquire) >= MAX_HANDSHAKES;
        Ok(AcceptStep::Waiting {
            moved,
            again: paused.then_some(Duration::from_millis(20)),
        })
    }

    /// The fds whose readiness means [`accept_step`](Self::accept_step)
    /// has work: the listening socket and the handshakes' "ended" eventfd.
    #[cfg(feature = "tokio")]
    pub(crate) fn accept_fds(&self) -> [BorrowedFd<'_>; 2] {
        [self.inner.as_fd(), self.ready.as_fd()]
    }

    /// One poll of the listening socket and the handshakes' eventfd, for
    /// at most `wait` (`None`: until something happens), and what it
    /// found: a client accepted and its handshake started, or refused.
    /// Returns whether anything happened.
    fn poll_once(
        &self,
        wait: Option<Duration>,
        refused: &mut impl FnMut(&Error),
    ) -> Result<bool, Error> {
        let ts = wait.map(|left| rustix::event::Timespec {
            tv_sec: left.as_secs() as _,
            tv_nsec: left.subsec_nanos() as _,
        });
        // Out of descriptors: leave the clients in the backlog until
        // the pause is over (or a handshake ends and frees some).
        let paused_until = self.backoff_until();
        let ts = match paused_until {
            Some(until) => {
                let pause = until.saturating_duration_since(Instant::now());
                let pause = ts.map_or(pause, |t| {
                    pause.min(Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
                });
                Some(rustix::event::Timespec {
                    tv_sec: pause.as_secs() as _,
                    tv_nsec: pause.subsec_nanos() as _,
                })
            }
            None => ts,
        };
        // All handshakes taken: cut an idle one off to make room; if
        // none is idle yet, wait for one to finish or to idle.
        let full = self.in_flight.load(std::sync::atomic::Ordering::Acquire) >= MAX_HANDSHAKES
            && !self.cut_idle_handshake();
        let ts = match (full, ts) {
            (false, ts) => ts,
            (true, None) => Some(rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 20_000_000,
            }),
            (true, Some(t)) => Some(rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: if t.tv_sec > 0 {
                    20_000_000
                } else {
                    t.tv_nsec.min(20_000_000)
                },
            }),
        };
        let listen_for = if paused_until.is_some() || full {
            rustix::event::PollFlags::empty()
        } else {
            rustix::event::PollFlags::IN
        };
        let mut fds = [
            rustix::event::PollFd::new(&self.inner, listen_for),
            rustix::event::PollFd::new(&*self.ready, rustix::event::PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::os("poll rendezvous socket")(e)),
        }
        let [listener, ready] = &fds;
        let (incoming, finished) = (!listener.revents().is_empty(), !ready.revents().is_empty());
        if finished {
            self.ready.take().map_err(|source| Error::Os {
                op: "eventfd",
                source,
            })?;
            // A handshake ended: descriptors may be free again.
            self.end_backoff();
        }
        if !incoming {
            return Ok(finished);
        }
        let sock = match self.inner.accept() {
            Ok((sock, _)) => sock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            // The client gave up between poll and accept.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => return Ok(true),
            Err(source) if is_shortage(&source) => {
                self.on_shortage(source, true, refused);
                return Ok(true);
            }
            Err(source) => {
                return Err(Error::Os {
                    op: "accept",
                    source,
                })
            }
        };
        match self.start_handshake(sock) {
            // The shortage (if any) is over.
            Ok(()) => *self.backoff.lock().unwrap_or_else(|p| p.into_inner()) = None,
            // Accepted with the last descriptor, none left to run its
            // handshake: refused (dropped), as the shortage says.
            Err(Error::Os { source, .. }) if is_shortage(&source) => {
                self.on_shortage(source, false, refused);
            }
            Err(e) => refused(&e),
        }
        Ok(true)
    }

    /// Cuts off the oldest idle handshake (silent for [`IDLE_AFTER`], its
    /// hello not in, nothing waiting on its socket); true if there was one.
    fn cut_idle_handshake(&self) -> bool {
        use std::sync::atomic::Ordering;
        let mut pending = lock_pending(&self.pending);
        let idle = pending.iter().position(|p| {
            let silent = || {
                let mut fds = [rustix::event::PollFd::new(
                    &p.sock,
                    rustix::event::PollFlags::IN,
                )];
                matches!(
                    rustix::event::poll(
                        &mut fds,
                        Some(&rustix::event::Timespec {
                            tv_sec: 0,
                            tv_nsec: 0
                        })
                    ),
                    Ok(0)
                )
            };
            !p.hello.load(Ordering::Acquire) && p.since.elapsed() >= IDLE_AFTER && silent()
        });
        match idle.and_then(|i| pending.remove(i)) {
            Some(p) => {
                // Its read ends; the handshake fails as the client's.
                let _ = p.sock.shutdown(std::net::Shutdown::Both);
                true
            }
            None => false,
        }
    }

    /// Runs the handshake of a new client in a thread of its own.
    fn start_handshake(&self, sock: UnixStream) -> Result<(), Error> {
        use std::sync::atomic::Ordering;
        let handle = sock.try_clone().map_err(|source| Error::Os {
            op: "dup a client socket",
            source,
        })?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let hello = Arc::new(std::sync::atomic::AtomicBool::new(false));
        lock_pending(&self.pending).push_back(Pending {
            id,
            sock: handle,
            since: Instant::now(),
            hello: hello.clone(),
        });
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let (tx, ready, in_flight, pending, config) = (
            self.done_tx.clone(),
            self.ready.clone(),
            self.in_flight.clone(),
            self.pending.clone(),
            self.config,
        );
        let spawned = std::thread::Builder::new()
            .name("ring-handshake".into())
            .spawn(move || {
                let outcome = serve_client_noting(sock, &config, &hello);
                lock_pending(&pending).retain(|p| p.id != id);
                in_flight.fetch_sub(1, Ordering::AcqRel);
                // The listener may be gone; the session then just drops.
                let _ = tx.send(outcome);
                let _ = ready.kick();
            });
        if let Err(source) = spawned {
            lock_pending(&self.pending).retain(|p| p.id != id);
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::Os {
                op: "start a handshake thread",
                source,
            });
        }
        Ok(())
    }

    /// Out of descriptors (or memory): one report per shortage through
    /// `refused`; with `use_spare`, a client waiting in the backlog is
    /// refused through the spare descriptor, and accepting pauses when
    /// that cannot be done.
    fn on_shortage(&self, source: io::Error, use_spare: bool, refused: &mut impl FnMut(&Error)) {
        let first = self
            .backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none();
        if first {
            refused(&Error::Os {
                op: "accept (refusing clients until descriptors free up)",
                source,
            });
        }
        if use_spare && !self.refuse_with_spare() {
            self.start_backoff();
        } else if first {
            // Marks the shortage as begun, without a pause.
            *self.backoff.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((Instant::now(), Duration::from_millis(5)));
        }
    }

    /// Out of descriptors: gives up the spare to accept one waiting client
    /// and close it, then takes the spare again. False if there was no
    /// spare to give, or none could be taken back (pause instead).
    fn refuse_with_spare(&self) -> bool {
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        if spare.take().is_none() {
            *spare = std::fs::File::open("/dev/null").ok();
            return false;
        }
        if let Ok(client) = rustix::net::accept(&self.inner) {
            drop(client);
        }
        *spare = std::fs::File::open("/dev/null").ok();
        spare.is_some()
    }

    /// When accepting may resume, if it is paused.
    fn backoff_until(&self) -> Option<Instant> {
        let mut b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        match *b {
            Some((until, _)) if until > Instant::now() => Some(until),
            Some((_, step)) => {
                // The pause is over: try again, and pause longer if that
                // fails too (kept until an accept succeeds).
                *b = Some((Instant::now(), step));
                None
            }
            None => None,
        }
    }

    /// Pauses accepting, each pause of a shortage twice the last (up to
    /// [`MAX_ACCEPT_BACKOFF`]).
    fn start_backoff(&self) {
        let mut b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let step = match *b {
            None => Duration::from_millis(10),
            Some((_, step)) => (step * 2).min(MAX_ACCEPT_BACKOFF),
        };
        *b = Some((Instant::now() + step, step));
    }

    /// Ends a pause: resources are back (or may be).
    fn end_backoff(&self) {
        let mut b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((until, step)) = *b {
            if until > Instant::now() {
                *b = Some((Instant::now(), step));
            }
        }
    }
}

fn lock_pending<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a handshake failed because of the client (refuse it, serve the
/// next) rather than because of us.
fn is_client_fault(e: &Error) -> bool {
    matches!(
        e,
        Error::Handshake(_) | Error::ForeignPeer { .. } | Error::Os { .. } | Error::BadFd(_)
    )
}

impl Drop for Listener {
    fn drop(&mut self) {
        // The socket goes first, while the lock still says it is ours; the
        // lock file is removed while locked, so a listener that opened it
        // meanwhile sees it replaced and locks the new one.
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.lock_path);
        let _ = &self.lock;
    }
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// How a [`read_full`] ended short.
enum Short {
    /// End of file after this many bytes.
    Eof(usize),
    /// The deadline passed after this many bytes.
    Late(usize),
}

/// Reads all of `buf` before `deadline` (one deadline for the whole
/// message, however slowly the peer sends it).
fn read_full(
    sock: &mut UnixStream,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<Result<(), Short>, Error> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Err(Short::Late(got)));
        }
        sock.set_read_timeout(Some(left))
            .map_err(|source| Error::Os {
                op: "socket timeout",
                source,
            })?;
        match sock.read(buf.get_mut(got..).unwrap_or(&mut [])) {
            Ok(0) => return Ok(Err(Short::Eof(got))),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(source) => {
                return Err(Error::Os {
                    op: "read handshake",
                    source,
                })
            }
        }
    }
    Ok(Ok(()))
}

/// The handshake problem of a short read of a `want`-byte message.
fn short(s: Short, want: usize, after: Duration) -> Error {
    hs(match s {
        Short::Eof(got) => HandshakeProblem::Truncated { got, want },
        Short::Late(got) => HandshakeProblem::TimedOut { got, want, after },
    })
}

fn refuse(sock: &mut UnixStream, proto: u8, why: Refusal) {
    // Best effort: the client may already be gone.
    let _ = sock.write_all(&Welcome::refusal(proto, why).encode());
}

/// Runs the server side of the handshake on an accepted socket.
///
/// # Errors
///
/// As [`Listener::accept`].
pub fn serve_client(sock: UnixStream, config: &ServerConfig) -> Result<Session, Error> {
    serve_client_noting(sock, config, &std::sync::atomic::AtomicBool::new(false))
}

/// [`serve_client`], setting `hello` once the client's whole hello is in
/// (the listener's sign that a handshake is not an idle one).
fn serve_client_noting(
    mut sock: UnixStream,
    config: &ServerConfig,
    hello: &std::sync::atomic::AtomicBool,
) -> Result<Session, Error> {
    take_hello(&mut sock, config, hello)?;
    let want = config.proto.code();
    let (to_server, to_client) = (EventFd::new()?, EventFd::new()?);
    let mut signal = EventSignal::new(to_client, to_server);
    signal.set_spin(config.spin);
    let made = match config.proto {
        Proto::Vchan => setup_vchan(config, signal),
        Proto::Vmbus | Proto::VmbusPackets => setup_vmbus(config, signal),
    };
    let (mut session, welcome) = match made {
        Ok(m) => m,
        Err(e) => {
            refuse(&mut sock, want, Refusal::ServerError);
            return Err(e);
        }
    };
    let signal = session.signal();
    send_with_fds(
        &sock,
        &welcome.encode(),
        &[session.memory().as_fd(), signal.wake_fd(), signal.kick_fd()],
    )?;
    sock.set_read_timeout(None).map_err(|source| Error::Os {
        op: "socket timeout",
        source,
    })?;
    session.signal_mut().set_hangup(sock.into());
    Ok(session)
}

/// The server's side of a vchan handshake over memory and eventfds the
/// caller made and laid out beforehand (`mem` holds a server's
/// [`FlatLayout`] of `orders`; the client waits on `to_client` and kicks
/// `to_server`): the same checks as [`serve_client`], then the welcome
/// with those fds. Returns the socket, whose hang-up (readable at end of
/// file) means the client is gone. The libxenvchan drop-in uses this: its
/// `server_init` must lay out the page before any client arrives, as on
/// Xen.
///
/// # Errors
///
/// As [`Listener::accept`]; [`Error::Vchan`] if `config` does not ask
/// for vchan.
pub fn welcome_vchan(
    mut sock: UnixStream,
    config: &ServerConfig,
    mem: &MemFd,
    orders: Orders,
    to_server: BorrowedFd<'_>,
    to_client: BorrowedFd<'_>,
) -> Result<UnixStream, Error> {
    if config.proto != Proto::Vchan {
        return Err(hs(HandshakeProblem::Proto {
            got: config.proto.code(),
            want: Proto::Vchan.code(),
        }));
    }
    take_hello(
        &mut sock,
        config,
        &std::sync::atomic::AtomicBool::new(false),
    )?;
    let welcome = Welcome {
        version: VERSION,
        proto: Proto::Vchan.code(),
        status: 0,
        mem_size: mem.len() as u64,
        left_size: 1u32 << orders.left(),
        right_size: 1u32 << orders.right(),
    };
    send_with_fds(
        &sock,
        &welcome.encode(),
        &[mem.as_fd(), to_server, to_client],
    )?;
    sock.set_read_timeout(None).map_err(|source| Error::Os {
        op: "socket timeout",
        source,
    })?;
    Ok(sock)
}

/// The hello of a client on `sock`: its uid, version and protocol
/// checked against `config` (refused with a welcome that says why).
/// Sets `hello` once the whole hello is in.
fn take_hello(
    sock: &mut UnixStream,
    config: &ServerConfig,
    hello: &std::sync::atomic::AtomicBool,
) -> Result<(), Error> {
    let want = config.proto.code();
    let cred = rustix::net::sockopt::socket_peercred(&*sock).map_err(Error::os("SO_PEERCRED"))?;
    let uid = cred.uid.as_raw();
    if let Err(expected) = config.peer.check(uid) {
        refuse(sock, want, Refusal::NotPermitted);
        return Err(Error::ForeignPeer { uid, expected });
    }
    let deadline = Instant::now() + config.handshake_timeout;
    let mut raw = [0u8; HELLO_LEN];
    if let Err(s) = read_full(sock, &mut raw, deadline)? {
        refuse(sock, want, Refusal::BadHello);
        return Err(short(s, HELLO_LEN, config.handshake_timeout));
    }
    hello.store(true, std::sync::atomic::Ordering::Release);
    let hello = match Hello::decode(&raw) {
        Ok(h) => h,
        Err(p) => {
            refuse(sock, want, Refusal::BadHello);
            return Err(hs(p));
        }
    };
    if hello.version != VERSION {
        refuse(sock, want, Refusal::Version);
        return Err(hs(HandshakeProblem::Version { got: hello.version }));
    }
    if hello.proto != want {
        refuse(sock, want, Refusal::Proto);
        return Err(hs(HandshakeProblem::Proto {
            got: hello.proto,
            want,
        }));
    }
    Ok(())
}

fn setup_vchan(config: &ServerConfig, signal: EventSignal) -> Result<(Session, Welcome), Error> {
    let orders = Orders::for_sizes(config.read_size, config.write_size)
        .map_err(|e| Error::Vchan(e.into()))?;
    let layout = FlatLayout::new(orders);
    let mem = Arc::new(MemFd::create("ring-vchan", layout.size)?);
    let ep = vchan::serve_flat(mem, orders, ServerOptions::default())?;
    let welcome = Welcome {
        version: VERSION,
        proto: Proto::Vchan.code(),
        status: 0,
        mem_size: layout.size as u64,
        left_size: 1u32 << orders.left(),
        right_size: 1u32 << orders.right(),
    };
    Ok((Session::Vchan(VchanStream::new(ep, signal)), welcome))
}

/// Both VMBus sessions: the same rings, framed as a pipe or not.
fn setup_vmbus(config: &ServerConfig, signal: EventSignal) -> Result<(Session, Welcome), Error> {
    let layout = ChannelLayout::rounded(config.read_size, config.write_size)?;
    let mem = Arc::new(MemFd::create("ring-vmbus", layout.total_size())?);
    let session = match config.proto {
        Proto::VmbusPackets => Session::VmbusPackets(VmbusChannel::serve(mem, layout, signal)?),
        _ => Session::Vmbus(VmbusPipe::serve(mem, layout, signal)?),
    };
    let welcome = Welcome {
        version: VERSION,
        proto: config.proto.code(),
        status: 0,
        mem_size: layout.total_size() as u64,
        left_size: layout.to_server.data_size(),
        right_size: layout.to_client.data_size(),
    };
    Ok((session, welcome))
}

/// Sends `bytes` with `fds` attached in one `sendmsg` (`SCM_RIGHTS`).
///
/// # Errors
///
/// [`Error::Os`] if the send fails or is short.
pub fn send_with_fds(sock: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Error::Os {
            op: "sendmsg",
            source: io::Error::other("too many fds for one message"),
        });
    }
    let sent = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map_err(Error::os("sendmsg"))?;
    if sent != bytes.len() {
        return Err(Error::Os {
            op: "sendmsg",
            source: io::Error::new(io::ErrorKind::WriteZero, "short handshake send"),
        });
    }
    Ok(())
}

/// Client settings beyond the protocol.
#[derive(Clone, Copy, Debug)]
pub struct ClientConfig {
    /// The protocol wanted.
    pub proto: Proto,
    /// Spin budget of the client's signal.
    pub spin: Duration,
    /// How long the server may take to answer.
    pub handshake_timeout: Duration,
}

impl ClientConfig {
    /// Defaults: the default spin, a 5 s handshake timeout.
    pub fn new(proto: Proto) -> Self {
        ClientConfig {
            proto,
            spin: DEFAULT_SPIN,
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// Connects to the server at `path` and sets up the ring it offers.
///
/// # Errors
///
/// See [`connect_with`].
pub fn connect(path: &Path, proto: Proto) -> Result<Session, Error> {
    connect_with(path, ClientConfig::new(proto))
}

/// Connects to the rendezvous socket at `path`; a path that exists but is
/// not a socket is [`Error::NotASocket`], not a bare `ECONNREFUSED`.
fn connect_socket(path: &Path) -> Result<UnixStream, Error> {
    UnixStream::connect(path).map_err(|source| {
        if path.exists() && !is_socket(path) {
            return Error::NotASocket {
                path: path.to_owned(),
            };
        }
        Error::Os {
            op: "connect to rendezvous socket",
            source,
        }
    })
}

/// Connects with explicit settings.
///
/// # Errors
///
/// [`Error::Os`] if the socket cannot be reached, [`Error::Handshake`] for
/// a bad or refusing welcome, [`Error::BadFd`] for fds that are not a
/// sealed memfd of the announced size and two eventfds, [`Error::Vchan`] if
/// the control page does not hold a live server.
pub fn connect_with(path: &Path, config: ClientConfig) -> Result<Session, Error> {
    let sock = connect_socket(path)?;
    client_handshake(sock, config)
}

/// Runs the client side of the handshake on a connected socket.
///
/// # Errors
///
/// As [`connect_with`].
pub fn client_handshake(mut sock: UnixStream, config: ClientConfig) -> Result<Session, Error> {
    let deadline = Instant::now() + config.handshake_timeout;
    sock.set_read_timeout(Some(config.handshake_timeout))
        .map_err(sock_err)?;
    // A server that refuses our uid may answer and close before reading
    // the hello, so a failed write is not yet an error: the answer tells.
    let _ = sock.write_all(&client_hello(config.proto));
    finish_client_handshake(sock, config, deadline)
}

fn sock_err(source: io::Error) -> Error {
    Error::Os {
        op: "handshake socket",
        source,
    }
}

/// The hello a client of `proto` sends.
pub(crate) fn client_hello(proto: Proto) -> [u8; HELLO_LEN] {
    Hello {
        version: VERSION,
        proto: proto.code(),
    }
    .encode()
}

/// The client's handshake after its hello: the welcome (by `deadline`)
/// and the ring it offers. The async connect sends the hello and waits
/// for the welcome on the runtime, then finishes here without waiting.
pub(crate) fn finish_client_handshake(
    mut sock: UnixStream,
    config: ClientConfig,
    deadline: Instant,
) -> Result<Session, Error> {
    let left = deadline.saturating_duration_since(Instant::now());
    // A zero read timeout is none at all: keep it at least a moment.
    sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(sock_err)?;
    let (welcome, [mem_fd, to_server, to_client]) = take_welcome(&mut sock, config, deadline)?;
    let session = match config.proto {
        Proto::Vchan => {
            let VchanParts {
                endpoint: ep,
                to_server,
                to_client,
                socket: sock,
            } = vchan_parts(sock, &welcome, [mem_fd, to_server, to_client])?;
            let mut signal = EventSignal::new(to_server, to_client).with_hangup(sock.into());
            signal.set_spin(config.spin);
            let stream = VchanStream::new(ep, signal);
            // As libxenvchan's client: one event, so a server waiting for
            // its client wakes.
            ring_core::signal::Signal::notify(stream.signal()).map_err(|e| Error::Os {
                op: "kick server",
                source: io::Error::other(e),
            })?;
            Session::Vchan(stream)
        }
        Proto::Vmbus | Proto::VmbusPackets => {
            let layout =
                ChannelLayout::new(welcome.left_size as usize, welcome.right_size as usize)
                    .map_err(|e| {
                        hs(HandshakeProblem::BadSizes {
                            left: welcome.left_size,
                            right: welcome.right_size,
                            why: e.to_string(),
                        })
                    })?;
            let mem = MemFd::from_fd(mem_fd, layout.total_size())?;
            if mem.len() as u64 != welcome.mem_size {
                return Err(Error::BadFd(crate::FdProblem::SizeMismatch {
                    size: mem.len() as u64,
                    announced: welcome.mem_size,
                }));
            }
            let (to_server, to_client) =
                (EventFd::from_fd(to_server)?, EventFd::from_fd(to_client)?);
            sock.set_read_timeout(None).map_err(sock_err)?;
            let mut signal = EventSignal::new(to_server, to_client).with_hangup(sock.into());
            signal.set_spin(config.spin);
            let mem = Arc::new(mem);
            match config.proto {
                Proto::VmbusPackets => {
                    Session::VmbusPackets(VmbusChannel::connect(mem, layout, signal)?)
                }
                _ => Session::Vmbus(VmbusPipe::connect(mem, layout, signal)?),
            }
        }
    };
    Ok(session)
}

/// The server's welcome on `sock` (by `deadline`) and its three fds,
/// checked to be for `config`'s protocol.
fn take_welcome(
    sock: &mut UnixStream,
    config: ClientConfig,
    deadline: Instant,
) -> Result<(Welcome, [OwnedFd; WELCOME_FDS]), Error> {
    let want = config.proto.code();
    let (raw, fds) = recv_welcome(sock, deadline, config.handshake_timeout)?;
    let welcome = Welcome::decode(&raw).map_err(hs)?;
    if welcome.proto != want {
        return Err(hs(HandshakeProblem::Proto {
            got: welcome.proto,
            want,
        }));
    }
    let fds: [OwnedFd; WELCOME_FDS] = fds
        .try_into()
        .map_err(|fds: Vec<OwnedFd>| hs(HandshakeProblem::FdCount { got: fds.len() }))?;
    Ok((welcome, fds))
}

/// A vchan joined through the rendezvous, in pieces, for a host that
/// waits on its own terms (the libxenvchan drop-in polls the socket and
/// the eventfd itself, behind one fd of its own).
#[derive(Debug)]
pub struct VchanParts {
    /// The client's endpoint, already marked live. The server has not
    /// been kicked yet: kick it once, as libxenvchan's client does.
    pub endpoint: vchan::Endpoint<Arc<MemFd>>,
    /// Kicked to wake the server.
    pub to_server: EventFd,
    /// Kicked by the server to wake us.
    pub to_client: EventFd,
    /// The rendezvous socket, now silent: end of file on it means the
    /// server is gone.
    pub socket: UnixStream,
}

/// The client's vchan from a welcome and its fds: the memory checked
/// (a sealed memfd of the announced size), the endpoint connected and its
/// orders checked against the welcome's sizes.
fn vchan_parts(
    sock: UnixStream,
    welcome: &Welcome,
    [mem_fd, to_server, to_client]: [OwnedFd; WELCOME_FDS],
) -> Result<VchanParts, Error> {
    let orders = vchan_orders(welcome)?;
    let layout = FlatLayout::new(orders);
    let mem = MemFd::from_fd(mem_fd, layout.size)?;
    if mem.len() as u64 != welcome.mem_size {
        return Err(Error::BadFd(crate::FdProblem::SizeMismatch {
            size: mem.len() as u64,
            announced: welcome.mem_size,
        }));
    }
    let (to_server, to_client) = (EventFd::from_fd(to_server)?, EventFd::from_fd(to_client)?);
    let ep = vchan::connect_flat(Arc::new(mem))?;
    if ep.orders() != orders {
        return Err(hs(HandshakeProblem::BadSizes {
            left: welcome.left_size,
            right: welcome.right_size,
            why: format!(
                "the control page says orders {}/{}",
                ep.orders().left(),
                ep.orders().right()
            ),
        }));
    }
    sock.set_read_timeout(None).map_err(sock_err)?;
    Ok(VchanParts {
        endpoint: ep,
        to_server,
        to_client,
        socket: sock,
    })
}

/// Joins the vchan server listening at `path` and returns the pieces
/// (see [`VchanParts`]) instead of a stream: the same handshake and checks
/// as [`connect_with`] for [`Proto::Vchan`], with `config`'s timeout.
///
/// # Errors
///
/// As [`connect_with`].
pub fn join_vchan(path: &Path, config: ClientConfig) -> Result<VchanParts, Error> {
    let config = ClientConfig {
        proto: Proto::Vchan,
        ..config
    };
    let mut sock = connect_socket(path)?;
    let deadline = Instant::now() + config.handshake_timeout;
    sock.set_read_timeout(Some(config.handshake_timeout))
        .map_err(sock_err)?;
    let _ = sock.write_all(&client_hello(config.proto));
    let (welcome, fds) = take_welcome(&mut sock, config, deadline)?;
    vchan_parts(sock, &welcome, fds)
}

/// The orders a welcome announces, validated.
fn vchan_orders(w: &Welcome) -> Result<Orders, Error> {
    let bad = |why: String| {
        hs(HandshakeProblem::BadSizes {
            left: w.left_size,
            right: w.right_size,
            why,
        })
    };
    let order = |size: u32| {
        if size.is_power_of_two() {
            u8::try_from(size.trailing_zeros()).map_err(|e| bad(e.to_string()))
        } else {
            Err(bad(format!("{size} is not a power of two")))
        }
    };
    Orders::new(order(w.left_size)?, order(w.right_size)?).map_err(|e| bad(e.to_string()))
}

/// Whether this process (or the system) is out of fds, found by asking
/// for one more: the error (`EMFILE`, "too many open files", or
/// `ENFILE`) if so.
fn fd_shortage(sock: &UnixStream) -> Option<io::Error> {
    match rustix::io::fcntl_dupfd_cloexec(sock, 0) {
        Ok(_probe) => None,
        Err(e @ (rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)) => Some(e.into()),
        Err(_) => None,
    }
}

fn recv_welcome(
    sock: &mut UnixStream,
    deadline: Instant,
    timeout: Duration,
) -> Result<([u8; WELCOME_LEN], Vec<OwnedFd>), Error> {
    let mut raw = [0u8; WELCOME_LEN];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        let mut iov = [IoSliceMut::new(&mut raw)];
        match rustix::net::recvmsg(&*sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(m) => break m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => {
                return Err(hs(HandshakeProblem::TimedOut {
                    got: 0,
                    want: WELCOME_LEN,
                    after: timeout,
                }))
            }
            Err(e) => return Err(Error::os("recvmsg")(e)),
        }
    };
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        // Our buffer has room for more fds than a welcome carries, so the
        // usual cause is ours: the kernel could not give us the fds (no
        // fd numbers left). Say that, not "truncated".
        if let Some(source) = fd_shortage(sock) {
            return Err(Error::Os {
                op: "receive the session's fds",
                source,
            });
        }
        return Err(hs(HandshakeProblem::FdsTruncated));
    }
    let got = msg.bytes;
    if got == 0 {
        return Err(hs(HandshakeProblem::Truncated {
            got,
            want: WELCOME_LEN,
        }));
    }
    if let Err(s) = read_full(sock, raw.get_mut(got..).unwrap_or(&mut []), deadline)? {
        let s = match s {
            Short::Eof(n) => Short::Eof(got + n),
            Short::Late(n) => Short::Late(got + n),
        };
        return Err(short(s, WELCOME_LEN, timeout));
    }
    Ok((raw, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let h = Hello {
            version: VERSION,
            proto: 1,
        };
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
        let w = Welcome {
            version: VERSION,
            proto: 1,
            status: 0,
            mem_size: 0x1_0000_2000,
            left_size: 4096,
            right_size: 1 << 20,
        };
        assert_eq!(Welcome::decode(&w.encode()), Ok(w));
        let r = Welcome::refusal(1, Refusal::NotPermitted).encode();
        assert_eq!(
            Welcome::decode(&r),
            Err(HandshakeProblem::Refused {
                code: 4,
                reason: Some(Refusal::NotPermitted)
            })
        );
        let mut v = w.encode();
        v[4] = 9;
        assert_eq!(
            Welcome::decode(&v),
            Err(HandshakeProblem::Version { got: 9 })
        );
        assert!(matches!(
            Hello::decode(&[0xff; HELLO_LEN]),
            Err(HandshakeProblem::BadMagic { .. })
        ));
    }

    #[test]
    fn policy_checks_uids() {
        let me = rustix::process::geteuid().as_raw();
        assert!(PeerPolicy::SameUid.check(me).is_ok());
        assert_eq!(PeerPolicy::SameUid.check(me + 1), Err(me));
        assert_eq!(PeerPolicy::Uid(7).check(8), Err(7));
        assert!(PeerPolicy::Uid(7).check(7).is_ok());
        assert!(PeerPolicy::AnyUid.check(12345).is_ok());
    }

    #[test]
    fn sizes_must_be_valid_orders() {
        let mut w = Welcome::refusal(1, Refusal::BadHello);
        w.status = 0;
        (w.left_size, w.right_size) = (3000, 4096);
        assert!(vchan_orders(&w).is_err());
        (w.left_size, w.right_size) = (1024, 1024);
        assert!(vchan_orders(&w).is_err(), "two 1 KiB rings share a slot");
        (w.left_size, w.right_size) = (1 << 21, 4096);
        assert!(vchan_orders(&w).is_err());
        (w.left_size, w.right_size) = (4096, 1 << 20);
        assert!(vchan_orders(&w).is_ok());
    }
}
