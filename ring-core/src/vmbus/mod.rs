//! Hyper-V VMBus: one packet ring per direction, wire-compatible with Linux
//! hv_vmbus, uio_hv_generic, DPDK, FreeBSD and OpenVMM.
//!
//! # The format in brief
//!
//! A *channel* is two rings, one per direction, and each ring has exactly
//! one writer and one reader. A ring is a 4 KiB control page followed by a
//! data area (at 4096 bytes, or at the system page size on guests with
//! 64 KiB pages; see [`RingLayout`]). The control page starts with a
//! [`ControlHeader`]:
//!
//! | offset | field | written by | meaning |
//! |---|---|---|---|
//! | 0x00 | `write_index` | writer | where the next packet will start |
//! | 0x04 | `read_index` | reader | first unconsumed byte |
//! | 0x08 | `interrupt_mask` | reader | non-zero: "don't signal me, I'm draining" |
//! | 0x0C | `pending_send_size` | writer | 0, or the free bytes a blocked writer waits for |
//! | 0x40 | `feature_bits` | writer | bit 0: the writer uses `pending_send_size` |
//!
//! Both indices are byte offsets into the data area, multiples of 8, below
//! its size. The ring is empty when they are equal, so it is never allowed
//! to become completely full: a writer needs *more* free bytes than the
//! packet takes, and at least 8 bytes always stay unused.
//!
//! ```text
//!  one ring: control page, then the data area
//!  ┌─────────────┬────────────┬────────────────┬───────────────────┬──────────────┐
//!  │ write_index │ read_index │ interrupt_mask │ pending_send_size │ feature_bits │ ..4 KiB
//!  │   (writer)  │  (reader)  │    (reader)    │     (writer)      │ 0x40 (writer)│
//!  └─────────────┴────────────┴────────────────┴───────────────────┴──────────────┘
//!  data area: packets back to back, each 8-aligned, wrapping at the end
//!  ┌────────┬──────────────────────────┬──────────────┬──────────────┐
//!  │  free  │ packet │ packet │ packet │     free     │ (≥ 8 unused) │
//!  └────────┴──────────────────────────┴──────────────┴──────────────┘
//!           ^ read_index               ^ write_index
//!
//!  one packet
//!  ┌───────────────────────────┬──────────────┬─────────────────┬─────────┬─────────┐
//!  │ descriptor (16 B)         │ type header  │ payload         │ zeros   │ trailer │
//!  │ type, data_offset8,       │ (GPA ranges, │                 │ to 8 B  │ (8 B):  │
//!  │ length8, flags, txn id    │ transfer pg) │                 │         │ start<<32│
//!  └───────────────────────────┴──────────────┴─────────────────┴─────────┴─────────┘
//!  ^ start      data_offset8 × 8 ^ payload     length8 × 8 ^ end  (trailer not counted)
//! ```
//!
//! A packet is a 16-byte [`PacketDescriptor`] (type, `data_offset8`,
//! `length8`, flags, transaction id), an optional type-specific header,
//! the payload padded with zeros to 8 bytes, and an 8-byte [`Trailer`]
//! holding the packet's start offset in its upper half. `data_offset8` and
//! `length8` count 8-byte units from the start of the descriptor, so a
//! packet is at most 65 535 × 8 = 524 280 bytes ([`MAX_PACKET_LEN`]) and the
//! exact payload length is the business of the protocol above (the pipe
//! header, for instance). Packets are contiguous modulo the data size: one
//! may wrap at any 8-byte boundary, even inside its descriptor.
//!
//! The packet types in use are [`PacketType::InBand`] (the payload follows
//! the descriptor), [`PacketType::Completion`] (echoes a transaction id),
//! [`PacketType::GpaDirect`] (page ranges of guest memory, each a byte
//! count, an offset in the first page and its page frame numbers) and
//! [`PacketType::TransferPages`] (byte ranges of a pre-shared receive
//! buffer).
//!
//! # Signalling
//!
//! Signals are costly and Hyper-V throttles needless ones, so both sides
//! signal only on transitions, and this module only ever *says* when a
//! signal is owed (in [`Transfer::notify`]); the host sends it.
//!
//! ```text
//!  reader                                       writer
//!  ──────                                       ──────
//!  drain; ring looks empty                      write packets, then commit:
//!  interrupt_mask = 0        (unmask)           write_index = next   (publish)
//!  full fence                                   full fence
//!  look again: empty? ──► sleep                 if mask == 0 and read_index ==
//!              data?  ──► mask, drain              old write_index: signal
//!
//!  writer, packet does not fit                  reader, after consuming
//!  pending_send_size = bytes needed             read_index = new     (publish)
//!  full fence                                   full fence
//!  look again: fits? ──► write                  if free was ≤ pending before and
//!              no    ──► commit, sleep             > pending now: signal
//! ```
//!
//! - **Data available.** After publishing its write index, the writer
//!   fences and signals only if the reader's mask is clear and the read
//!   index equals the write index from before the batch: the ring went from
//!   empty to non-empty.
//! - **Reader's mask.** A reader sets the mask while it drains, and when the
//!   ring looks empty clears it, fences, and looks again before sleeping.
//!   [`IncomingRing::read_packet`] does that last step itself, so
//!   [`Error::Empty`] is only returned after the re-check.
//! - **Space available.** A writer that does not fit stores the bytes it
//!   needs in `pending_send_size`, fences and re-checks
//!   ([`OutgoingRing::write`] does this before returning [`Error::Full`]).
//!   After publishing its read index, the reader fences and signals only
//!   when the free space crossed that threshold in this batch
//!   (`free_before ≤ pending < free_after`), and only if the writer has set
//!   [`FeatureBits::PENDING_SEND_SIZE`], as Linux and DPDK require.
//!
//! Both indices can be published once per batch: write several packets and
//! [`commit`](OutgoingRing::commit) once, read several and
//! [`commit`](IncomingRing::commit) once. One commit makes one signal
//! decision.
//!
//! # How this implementation treats the peer
//!
//! The peer is hostile. Each index it writes is loaded once, must be
//! 8-aligned, in range and may only move forward; each descriptor is copied
//! once into private memory and checked (see [`IncomingRing::read_packet`]
//! for the list) before anything is computed from it. A violation latches
//! [`Error::Corrupt`]: the ring is poisoned and every later call returns the
//! same error. Payload bytes are never referenced in place: packets are
//! read through the memory door into caller buffers
//! ([`IncomingPacket::read_payload`]), which copes with the wrap.
//!
//! # Example
//!
//! ```
//! use core::sync::atomic::AtomicU64;
//! use ring_core::mem::RawMem;
//! use ring_core::vmbus::{self, IncomingRing, OutgoingPacket, OutgoingRing, RingLayout};
//!
//! let layout = RingLayout::new(4096, 8192).unwrap();
//! let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
//! let mem = RawMem::from_atomics(&words);
//! vmbus::initialize_ring(&mem, layout).unwrap();
//! let mut tx = OutgoingRing::new(mem, layout).unwrap();
//! let mut rx = IncomingRing::new(mem, layout).unwrap();
//!
//! let sent = tx.send(&OutgoingPacket::in_band(7, &[b"hello"])).unwrap();
//! assert!(sent.notify); // the ring was empty and the reader is not masked
//!
//! let packet = rx.read_packet().unwrap();
//! assert_eq!(packet.transaction_id(), 7);
//! let mut buf = [0u8; 5];
//! packet.read_payload(0, &mut buf).unwrap();
//! assert_eq!(&buf, b"hello");
//! assert_eq!(packet.payload_len(), 8); // the ring only knows padded lengths
//! let done = rx.commit().unwrap();
//! assert!(!done.notify); // the writer was not waiting for space
//! ```

#![forbid(unsafe_code)]

mod blocking;
mod incoming;
pub mod layout;
mod outgoing;
mod packet;
pub mod pipe;

pub use blocking::{Blocking, BlockingError, BlockingPipe};
pub use incoming::{IncomingRing, ReadMark};
pub use layout::{
    ControlHeader, FeatureBits, PacketDescriptor, PacketFlags, PacketType, RingLayout, Trailer,
    MAX_PACKET_LEN,
};
pub use outgoing::OutgoingRing;
pub use packet::{
    GpaRange, GpaRangeRef, GpaRanges, IncomingPacket, OutgoingKind, OutgoingPacket, PacketInfo,
    Pfns, RangeInfo, TransferRange, TransferRanges,
};

use crate::error::{Corrupt, ErrorClass};
use crate::mem::{MemError, SharedMem};
use core::fmt;

/// Why a ring could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SetupError {
    /// The data area must start at a non-zero multiple of 4096.
    BadDataOffset {
        /// The offset asked for.
        data_offset: usize,
    },
    /// The data area must be a non-zero multiple of 4096 that fits a `u32`.
    BadDataSize {
        /// The size asked for.
        data_size: usize,
    },
    /// The memory is smaller than the layout.
    MemoryTooSmall {
        /// Bytes the layout needs.
        needed: usize,
        /// Bytes the memory has.
        available: usize,
    },
    /// An index found in the control page at set-up is misaligned or out of
    /// range.
    BadIndex {
        /// The index value.
        index: u32,
    },
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SetupError::BadDataOffset { data_offset } => write!(
                f,
                "ring data offset {data_offset} is not a non-zero multiple of 4096"
            ),
            SetupError::BadDataSize { data_size } => write!(
                f,
                "ring data size {data_size} is not a non-zero multiple of 4096 below 4 GiB"
            ),
            SetupError::MemoryTooSmall { needed, available } => {
                write!(
                    f,
                    "ring memory has {available} bytes, layout needs {needed}"
                )
            }
            SetupError::BadIndex { index } => {
                write!(f, "ring index {index:#x} is misaligned or out of range")
            }
        }
    }
}

/// What a VMBus ring operation can return instead of progress.
///
/// [`Empty`](Error::Empty) and [`Full`](Error::Full) mean "retry later"
/// and are returned only after the wake-up request is armed and the ring
/// re-checked, so the caller may sleep on its signal. Everything else is
/// final for the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// No packet to read. Unless interrupts were turned off with
    /// [`IncomingRing::set_interrupts`], the mask is cleared and the ring
    /// was re-checked; commit any reads before sleeping on it.
    Empty,
    /// The packet does not fit now. `pending_send_size` is armed and the
    /// ring re-checked.
    Full {
        /// Bytes the packet occupies, trailer included.
        needed: usize,
        /// Bytes the ring could take now (free space minus the 8 bytes that
        /// always stay unused).
        available: usize,
    },
    /// The packet can never fit: it exceeds the 524 280-byte descriptor
    /// limit or this ring.
    TooLarge {
        /// The packet's length (descriptor to padded payload).
        len: usize,
        /// The largest packet this ring accepts.
        max: usize,
    },
    /// A packet we were asked to send is malformed (e.g. a GPA range whose
    /// page count does not match its length).
    InvalidPacket {
        /// What is wrong, in a few words.
        what: &'static str,
    },
    /// A read past the end of a packet's payload, or a caller buffer too
    /// small for a message.
    OutOfRange {
        /// Bytes asked for (offset + length, or the buffer size needed).
        needed: usize,
        /// Bytes there are.
        available: usize,
    },
    /// The peer broke the protocol; the ring is poisoned.
    Corrupt(Corrupt),
    /// We ended our side of a pipe (sent end of stream): it takes no more.
    Closed,
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
            Error::Empty => f.write_str("ring is empty"),
            Error::Full { needed, available } => write!(
                f,
                "packet of {needed} bytes does not fit, {available} bytes available"
            ),
            Error::TooLarge { len, max } => write!(
                f,
                "packet of {len} bytes exceeds the largest possible ({max} bytes)"
            ),
            Error::InvalidPacket { what } => write!(f, "invalid packet to send: {what}"),
            Error::OutOfRange { needed, available } => {
                write!(f, "access needs {needed} bytes, {available} available")
            }
            Error::Corrupt(c) => c.fmt(f),
            Error::Closed => f.write_str("the pipe was closed"),
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
    /// use ring_core::vmbus::{self, IncomingRing, OutgoingPacket, OutgoingRing, RingLayout};
    /// let layout = RingLayout::new(4096, 4096)?;
    /// # let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// vmbus::initialize_ring(&mem, layout)?;
    /// let mut tx = OutgoingRing::new(mem, layout)?;
    /// let mut rx = IncomingRing::new(mem, layout)?;
    /// // Empty: wait for the writer's signal, then read again.
    /// assert_eq!(rx.read_packet().unwrap_err().class(), ErrorClass::Retry);
    /// // More than the 4 KiB ring can ever hold: retrying will not help.
    /// let big = [0u8; 5000];
    /// let err = tx.send(&OutgoingPacket::in_band(1, &[&big])).unwrap_err();
    /// assert_eq!(err.class(), ErrorClass::Usage);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Empty | Error::Full { .. } => ErrorClass::Retry,
            Error::Closed => ErrorClass::Closed,
            Error::Corrupt(_) => ErrorClass::Corrupt,
            Error::TooLarge { .. } | Error::InvalidPacket { .. } | Error::OutOfRange { .. } => {
                ErrorClass::Usage
            }
            // The door refuses only a mapping smaller than the layout.
            Error::Setup(_) | Error::Memory(_) => ErrorClass::Setup,
        }
    }
}

crate::error::protocol_error_traits!(Error);

pub use crate::Transfer;

/// What a ring commit published: ring bytes (whole packets with their
/// descriptors, padding and trailers), and whether the peer must be
/// signalled. Pipe calls report payload bytes in a [`Transfer`] instead.
#[must_use = "if `notify` is set the peer must be signalled, or it may sleep for ever"]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Commit {
    /// Bytes of ring the commit published or freed (packets with their
    /// descriptors, padding and trailers).
    pub ring_bytes: usize,
    /// The peer is waiting for this transition: signal it.
    pub notify: bool,
}

/// Zeroes the control page of a ring we create (both indices 0, mask
/// clear, no pending send, no features).
///
/// Only for a fresh ring this side owns (a host creating a channel, a test):
/// never on a live ring set up by someone else, such as a uio mapping.
///
/// # Errors
///
/// [`SetupError::MemoryTooSmall`] if the memory cannot hold the layout.
///
/// # Examples
///
/// ```
/// use core::sync::atomic::AtomicU64;
/// use ring_core::mem::RawMem;
/// use ring_core::vmbus::{self, Error, RingLayout, SetupError};
///
/// let layout = RingLayout::new(4096, 8192)?;
/// // Memory full of leftovers: initializing clears the control page.
/// let words: Vec<AtomicU64> = (0..layout.total_size() / 8).map(|_| AtomicU64::new(!0)).collect();
/// let mem = RawMem::from_atomics(&words);
/// vmbus::initialize_ring(&mem, layout)?;
/// let header = vmbus::inspect(&mem)?;
/// assert_eq!((header.write_index.get(), header.read_index.get()), (0, 0));
/// // Memory smaller than the layout is refused.
/// let short = RawMem::from_atomics(&words[..512]);
/// let err = vmbus::initialize_ring(&short, layout).unwrap_err();
/// assert!(matches!(err, Error::Setup(SetupError::MemoryTooSmall { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn initialize_ring<M: SharedMem + ?Sized>(mem: &M, layout: RingLayout) -> Result<(), Error> {
    check_memory(mem, layout)?;
    mem.fill(0, layout::CONTROL_PAGE_SIZE, 0)?;
    Ok(())
}

/// Reads a ring's control header for inspection (a CLI `inspect`, a debug
/// dump), one atomic load per defined field. The values are whatever the
/// two sides last stored; nothing is validated.
///
/// # Errors
///
/// [`Error::Memory`] if `mem` is smaller than the header.
pub fn inspect<M: SharedMem + ?Sized>(mem: &M) -> Result<ControlHeader, Error> {
    use zerocopy::byteorder::little_endian::U32;
    let word = |at| mem.load_u32(at).map(U32::new);
    Ok(ControlHeader {
        write_index: word(layout::WRITE_INDEX)?,
        read_index: word(layout::READ_INDEX)?,
        interrupt_mask: word(layout::INTERRUPT_MASK)?,
        pending_send_size: word(layout::PENDING_SEND_SIZE)?,
        reserved: [U32::ZERO; 12],
        feature_bits: word(layout::FEATURE_BITS)?,
    })
}

fn check_memory<M: SharedMem + ?Sized>(mem: &M, layout: RingLayout) -> Result<(), SetupError> {
    if mem.size() < layout.total_size() {
        return Err(SetupError::MemoryTooSmall {
            needed: layout.total_size(),
            available: mem.size(),
        });
    }
    Ok(())
}

/// `(to − from) mod size` for two offsets already below `size`.
const fn distance(from: u32, to: u32, size: u32) -> u32 {
    if to >= from {
        to - from
    } else {
        size - from + to
    }
}

/// `(at + len) mod size` for `at < size` and `len ≤ size`, without overflow.
const fn advance(at: u32, len: u32, size: u32) -> u32 {
    let room = size - at;
    if len >= room {
        len - room
    } else {
        at + len
    }
}

/// Whether a ring index is usable: 8-aligned and inside the data area.
const fn index_ok(index: u32, size: u32) -> bool {
    index.is_multiple_of(8) && index < size
}

#[cfg(test)]
mod tests;
