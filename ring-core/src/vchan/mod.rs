//! Xen vchan: a pair of byte rings over one shared control page,
//! wire-compatible with libxenvchan.
//!
//! # The protocol in brief
//!
//! A *server* shares a 4 KiB control page and the ring pages; a *client*
//! maps them. The page starts with a 24-byte [`ControlHeader`]:
//!
//! | bytes | field | written by |
//! |---|---|---|
//! | 0, 4 | left `cons`, `prod` | server, client |
//! | 8, 12 | right `cons`, `prod` | client, server |
//! | 16, 18 | left, right order | server at set-up |
//! | 20, 21 | client, server live byte | each side |
//! | 22, 23 | notify requests aimed at client, at server | the other side sets, the named side clears |
//! | 24.. | grant refs of external ring pages | server at set-up |
//!
//! ```text
//!  control page (4 KiB), shared                     one cache line: bytes 0..64
//!  ┌──────────┬──────────┬──────────┬──────────┬───────┬──────┬────────┬───────────┐
//!  │left cons │left prod │right cons│right prod│ orders│ live │ notify │ grant refs│
//!  │ (server) │ (client) │ (client) │ (server) │ l | r │ c | s│ c | s  │ (external │
//!  │    0     │    4     │    8     │    12    │ 16 18 │20  21│22  23  │  rings)24.│
//!  └──────────┴──────────┴──────────┴──────────┴───────┴──────┴────────┴───────────┘
//!  order 10 ring: bytes 1024..2048 of this page;  order 11 ring: bytes 2048..4096
//!  orders 12..=20: 2^(order-12) pages of their own, listed by grant ref
//!
//!  one ring (size = 2^order bytes), indices free-running u32 byte counters
//!  ┌───────────────┬──────────────────────────┬────────────────┐
//!  │     free      │ used: prod − cons bytes  │      free      │
//!  └───────────────┴──────────────────────────┴────────────────┘
//!                  ^ cons & (size − 1)        ^ prod & (size − 1)
//!  empty: prod == cons          full: prod − cons == size (no spare byte)
//! ```
//!
//! *Left* carries client→server bytes, *right* server→client bytes. Indices
//! are free-running `u32` byte counters; the position in a ring is the
//! counter masked by the size, `used = prod − cons` (wrapping), and the ring
//! is full at `used == size` (no spare slot). Orders 10 and 11 live inside
//! the control page at bytes 1024 and 2048; orders 12..=20 in external pages.
//!
//! ```text
//!  reader (ring empty)                         writer
//!  ───────────────────                         ──────
//!  look: prod == cons
//!  notify[peer] |= WRITE    (arm)               copy bytes into the ring
//!  full fence                                   prod += n          (publish)
//!  look again: still empty? ──► sleep           full fence
//!               data?      ──► read             if notify[own] & WRITE:
//!                                                   clear it, kick the reader
//!  Whatever the interleaving, the re-check sees the new prod or the writer
//!  sees WRITE: the fences forbid both loads passing both stores. The same
//!  with READ for a writer waiting on a full ring.
//! ```
//!
//! A side that would block ORs a request bit into the byte aimed at the
//! peer (`WRITE`: "kick me when you have written", `READ`: "... when you have
//! read"), fences, and re-checks the ring. A side that moved an index
//! fences, then test-and-clears the matching bit in its own byte, and kicks
//! the peer if it was set. See [`signal`](crate::signal) for why this loses
//! no wake-ups.
//!
//! # What a wake-up check costs, and holding reads
//!
//! The check after each publish needs a full fence, and the fence waits
//! until the index store has taken the control line from the peer's cache.
//! Both rings' indices share that one line, so a reader that gives space
//! back after every read and then writes a reply pays two such waits per
//! exchange. [`Endpoint::read_held`] and [`Endpoint::recv_held`] read
//! without giving the space back; the next [`write`](Endpoint::write) or
//! [`send`](Endpoint::send) publishes both indices under its one fence (a
//! request and its reply), or [`Endpoint::release`] publishes many held
//! reads at once (a batching consumer). Held bytes are never left behind
//! a wait: while any are held, a call that would arm a wake-up returns
//! [`Error::Held`] instead, so nobody sleeps owing the peer space.
//!
//! # How this implementation treats the peer
//!
//! Everything in shared memory is hostile input. Both orders and our own
//! indices are private shadows taken once; the peer's index is read once per
//! refresh and must stay within the range the protocol allows (it may only
//! move forward, and never past our own index or past a full ring). A
//! violation, or a live byte with an undefined value, poisons the endpoint:
//! every call then returns [`Error::Corrupt`] instead of hanging the way
//! libxenvchan does.

mod blocking;
mod endpoint;
pub mod layout;

pub use blocking::{Blocking, BlockingError, SharedEndpoint};
pub use endpoint::{
    connect, connect_flat, serve, serve_flat, Endpoint, Readiness, RingPlace, ServerOptions,
};
pub use layout::{ControlHeader, FlatLayout, Orders, Placement, RingIndices};

use crate::error::{Corrupt, ErrorClass};
use crate::mem::MemError;
use core::fmt;

bitflags::bitflags! {
    /// Wake-up requests in a notify byte.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct NotifyBits: u8 {
        /// "Kick me when you have produced data."
        const WRITE = 0x01;
        /// "Kick me when you have consumed data (freed space)."
        const READ = 0x02;
    }
}

/// A side's liveness, as stored in its live byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Live {
    /// The side has closed or died.
    Closed = 0,
    /// The side is connected.
    Connected = 1,
    /// No client has connected yet (only ever in the client's byte).
    Waiting = 2,
}

impl Live {
    /// Decodes a live byte; `None` for values the protocol does not define.
    pub const fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Live::Closed),
            1 => Some(Live::Connected),
            2 => Some(Live::Waiting),
            _ => None,
        }
    }
}

/// Which end of a vchan an endpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Shared the pages; reads left, writes right.
    Server,
    /// Mapped the pages; reads right, writes left.
    Client,
}

/// Why a vchan could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SetupError {
    /// A ring order outside 10..=20.
    BadOrder {
        /// The order found or asked for.
        order: u16,
    },
    /// Both rings in the control page with the same order (same slot).
    OrderClash {
        /// The shared order.
        order: u8,
    },
    /// The grant list would run into an in-page ring of this order.
    GrantsOverlapRing {
        /// The in-page ring's order.
        order: u8,
    },
    /// An in-page ring given at an offset other than its fixed slot.
    MisplacedRing {
        /// The ring's order.
        order: u8,
    },
    /// A requested ring size above 1 MiB.
    TooBig {
        /// The requested size in bytes.
        requested: usize,
    },
    /// A memory region smaller than the layout needs.
    MemoryTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The server is not live (never set up, or gone).
    ServerNotLive {
        /// The server's live byte.
        live: u8,
    },
    /// Another client is already connected.
    ClientAlreadyConnected,
    /// The page's indices are inconsistent (`used > size`) at connect.
    BadIndices,
    /// Fewer grant refs supplied than the orders need.
    GrantCount {
        /// Refs needed.
        needed: usize,
        /// Refs given.
        given: usize,
    },
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SetupError::BadOrder { order } => write!(f, "ring order {order} is outside 10..=20"),
            SetupError::OrderClash { order } => {
                write!(f, "both rings have in-page order {order} and would overlap")
            }
            SetupError::GrantsOverlapRing { order } => {
                write!(
                    f,
                    "grant list would overlap the in-page ring of order {order}"
                )
            }
            SetupError::MisplacedRing { order } => {
                write!(
                    f,
                    "in-page ring of order {order} is not at its fixed offset"
                )
            }
            SetupError::TooBig { requested } => {
                write!(f, "requested ring size {requested} exceeds 1 MiB")
            }
            SetupError::MemoryTooSmall { needed, available } => {
                write!(
                    f,
                    "shared memory has {available} bytes, layout needs {needed}"
                )
            }
            SetupError::ServerNotLive { live } => {
                write!(f, "server is not live (live byte {live})")
            }
            SetupError::ClientAlreadyConnected => {
                f.write_str("another client is already connected")
            }
            SetupError::BadIndices => f.write_str("ring indices are inconsistent at connect"),
            SetupError::GrantCount { needed, given } => {
                write!(f, "{given} grant refs given, orders need {needed}")
            }
        }
    }
}

/// What a vchan operation can return instead of progress. Its
/// [`class`](Error::class) says whether to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Nothing can move now. The wake-up request is already armed and the
    /// ring re-checked, so the caller may sleep on its event source.
    WouldBlock,
    /// The peer has closed (and, for reads, the ring is drained), or we did.
    Closed,
    /// A packet larger than the ring can ever hold.
    TooLarge {
        /// Bytes asked for.
        len: usize,
        /// The ring's size.
        capacity: usize,
    },
    /// The call would have to arm a wake-up request, but read bytes are
    /// still held (see [`Endpoint::read_held`]): a peer writer waiting for
    /// that space could then sleep as long as we do. Give them back with
    /// [`Endpoint::release`] (kicking the peer if it says so), then retry.
    Held {
        /// Bytes read and not yet given back.
        len: usize,
    },
    /// The peer broke the protocol; the endpoint is poisoned.
    Corrupt(Corrupt),
    /// Set-up failed.
    Setup(SetupError),
    /// The memory door refused an access (a mapping smaller than promised).
    Memory(MemError),
}

impl From<SetupError> for Error {
    fn from(e: SetupError) -> Self {
        Error::Setup(e)
    }
}

impl From<MemError> for Error {
    fn from(e: MemError) -> Self {
        Error::Memory(e)
    }
}

impl From<Corrupt> for Error {
    fn from(e: Corrupt) -> Self {
        Error::Corrupt(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::WouldBlock => f.write_str("operation would block"),
            Error::Closed => f.write_str("vchan peer closed"),
            Error::TooLarge { len, capacity } => {
                write!(f, "packet of {len} bytes exceeds the {capacity}-byte ring")
            }
            Error::Held { len } => write!(
                f,
                "{len} read bytes are still held: release them before waiting"
            ),
            Error::Corrupt(c) => c.fmt(f),
            Error::Setup(e) => e.fmt(f),
            Error::Memory(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for SetupError {}

impl Error {
    /// Retry, closed, corrupt, usage or set-up (see [`ErrorClass`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// use ring_core::error::ErrorClass;
    /// use ring_core::vchan::{self, Error, Orders, ServerOptions};
    /// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// let mut server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
    /// let _client = vchan::connect_flat(mem)?;
    /// // Nothing written yet: try again after the peer's kick.
    /// let empty = server.read(&mut [0u8; 8]).unwrap_err();
    /// assert_eq!(empty, Error::WouldBlock);
    /// assert!(empty.class().is_retry());
    /// // A packet larger than the server's 2 KiB ring can never go.
    /// let too_big = server.send(&[0u8; 4096]).unwrap_err();
    /// assert_eq!(too_big.class(), ErrorClass::Usage);
    /// let _ = server.close()?;
    /// assert_eq!(server.read(&mut [0u8; 8]).unwrap_err().class(), ErrorClass::Closed);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::WouldBlock => ErrorClass::Retry,
            Error::Closed => ErrorClass::Closed,
            Error::Corrupt(_) => ErrorClass::Corrupt,
            Error::TooLarge { .. } | Error::Held { .. } => ErrorClass::Usage,
            // The door refuses only a mapping smaller than the layout.
            Error::Setup(_) | Error::Memory(_) => ErrorClass::Setup,
        }
    }
}

crate::error::protocol_error_traits!(Error);

pub use crate::Transfer;
