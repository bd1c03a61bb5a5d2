#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod attach;
pub mod devmem;
pub mod eventfd;
pub mod fdio;
pub mod inspect;
pub mod ivshmem;
pub mod memfd;
pub mod rendezvous;
#[cfg(feature = "fakes")]
pub mod replay;
pub mod session;
pub mod stream;
#[cfg(feature = "tokio")]
pub mod tokio_io;
pub mod uio;
pub mod unix_socket;
pub mod vfio;
pub mod vmbus;
pub mod window;
pub mod xen;

use std::fmt;
use std::io;

pub use memfd::FdProblem;
pub use rendezvous::HandshakeProblem;

/// Everything that can go wrong in this crate, each with a one-line reason.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed.
    Os {
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A file descriptor (or file) offered by the peer is unusable.
    BadFd(FdProblem),
    /// The rendezvous handshake failed.
    Handshake(HandshakeProblem),
    /// The peer runs as a user we do not accept.
    ForeignPeer {
        /// The peer's uid (from `SO_PEERCRED`).
        uid: u32,
        /// The uid we accept.
        expected: u32,
    },
    /// A vchan ring refused (set-up error, corruption, a packet too large).
    Vchan(ring_core::vchan::Error),
    /// A VMBus ring refused (set-up error, corruption, a packet too large).
    Vmbus(ring_core::vmbus::Error),
    /// The peer closed the ring: no more data will come, and it takes no
    /// more of ours.
    Closed,
    /// The peer died or hung up (its process exited, or it closed the
    /// rendezvous socket) before the stream ended cleanly. What it
    /// published before it went was delivered first.
    PeerGone,
    /// A wait passed its timeout.
    TimedOut,
    /// Another `ring` listener holds this socket path.
    InUse {
        /// The socket path.
        path: std::path::PathBuf,
    },
    /// Something other than a socket is at this path.
    NotASocket {
        /// The path.
        path: std::path::PathBuf,
    },
    /// A layout or fd given to [`attach`] is unusable: which, and why.
    Attach(attach::AttachProblem),
}

impl Error {
    /// A closure turning a rustix error into [`Error::Os`] for `op`.
    pub(crate) fn os(op: &'static str) -> impl Fn(rustix::io::Errno) -> Error {
        move |e| Error::Os {
            op,
            source: e.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Os { op, source } => write!(f, "{op}: {source}"),
            Error::BadFd(p) => p.fmt(f),
            Error::Handshake(p) => write!(f, "handshake failed: {p}"),
            Error::ForeignPeer { uid, expected } => {
                write!(f, "peer runs as uid {uid}, only uid {expected} is accepted")
            }
            Error::Vchan(e) => write!(f, "vchan: {e}"),
            Error::Vmbus(e) => write!(f, "vmbus: {e}"),
            Error::Closed => f.write_str("peer closed the ring"),
            Error::PeerGone => f.write_str("peer died or hung up"),
            Error::TimedOut => f.write_str("timed out waiting for the peer"),
            Error::Attach(problem) => problem.fmt(f),
            Error::InUse { path } => {
                write!(f, "another ring listen is serving {}", path.display())
            }
            Error::NotASocket { path } => write!(
                f,
                "{} exists and is not a socket (remove it or choose another path)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Os { source, .. } => Some(source),
            Error::Vchan(e) => Some(e),
            Error::Vmbus(e) => Some(e),
            Error::Attach(p) => Some(p),
            _ => None,
        }
    }
}

impl From<ring_core::vchan::Error> for Error {
    fn from(e: ring_core::vchan::Error) -> Self {
        match e {
            ring_core::vchan::Error::Closed => Error::Closed,
            other => Error::Vchan(other),
        }
    }
}

impl From<ring_core::vmbus::Error> for Error {
    fn from(e: ring_core::vmbus::Error) -> Self {
        match e {
            ring_core::vmbus::Error::Closed => Error::Closed,
            other => Error::Vmbus(other),
        }
    }
}

impl<R: Into<Error>> From<ring_core::signal::BlockingError<R, eventfd::WaitError>> for Error {
    fn from(e: ring_core::signal::BlockingError<R, eventfd::WaitError>) -> Self {
        use ring_core::signal::BlockingError;
        match e {
            BlockingError::Ring(e) => e.into(),
            BlockingError::Signal(e) => e.into(),
            BlockingError::PeerGone => Error::PeerGone,
        }
    }
}

impl From<ring_core::vmbus::SetupError> for Error {
    fn from(e: ring_core::vmbus::SetupError) -> Self {
        Error::Vmbus(e.into())
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Os { source, .. } => source.kind(),
            Error::Closed => io::ErrorKind::BrokenPipe,
            Error::PeerGone => io::ErrorKind::ConnectionReset,
            Error::TimedOut => io::ErrorKind::TimedOut,
            Error::BadFd(_) | Error::ForeignPeer { .. } => io::ErrorKind::PermissionDenied,
            Error::Attach(_) => io::ErrorKind::InvalidInput,
            Error::InUse { .. } => io::ErrorKind::AddrInUse,
            Error::NotASocket { .. } => io::ErrorKind::InvalidInput,
            Error::Handshake(_) => io::ErrorKind::InvalidData,
            // The core's one mapping, by the error's class.
            Error::Vchan(e) => e.class().io_kind(),
            Error::Vmbus(e) => e.class().io_kind(),
        };
        io::Error::new(kind, e)
    }
}
