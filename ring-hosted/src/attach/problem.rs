//! Why rings cannot be attached as asked, as data: the option or region at
//! fault, the numbers, and the underlying error where there is one.

use core::ops::Range;
use std::fmt;

/// What is wrong with an inherited fd number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FdNumberProblem {
    /// Below zero.
    Negative,
    /// 0, 1 or 2: the standard streams the pipe itself uses.
    Standard,
    /// No such open fd in this process.
    NotOpen,
    /// Open, but not for both reading and writing (a ring needs both).
    NotReadWrite,
}

/// Why [`attach`](super) refused: each variant names what was given and
/// how it is wrong, so a caller (the `ring attach` command, a test) can
/// report or match it without parsing a sentence.
#[derive(Debug)]
#[non_exhaustive]
pub enum AttachProblem {
    /// An inherited fd number that cannot be taken.
    FdNumber {
        /// The option that gave it (`--fd`, `--notify-fd`, `--wait-fd`).
        option: &'static str,
        /// The number.
        fd: i32,
        /// What is wrong with it.
        problem: FdNumberProblem,
    },
    /// An fd that is open but unusable as a signal (not an eventfd).
    Signal {
        /// The option that gave it.
        option: &'static str,
        /// The number.
        fd: i32,
        /// Why [`EventFd::from_fd`](crate::eventfd::EventFd::from_fd) refused it.
        source: Box<crate::Error>,
    },
    /// An offset not aligned as the protocol needs.
    Misaligned {
        /// The option that gave it.
        option: &'static str,
        /// The offset.
        offset: usize,
        /// The alignment it needs.
        align: usize,
    },
    /// A region that ends past the memory.
    PastEnd {
        /// The region (`control page`, `left ring`, `tx ring`, ...).
        region: &'static str,
        /// Its bytes.
        at: Range<usize>,
        /// The memory's size.
        memory: usize,
    },
    /// Two regions that overlap.
    Overlap {
        /// The region being placed.
        region: &'static str,
        /// Its bytes.
        at: Range<usize>,
        /// The region it overlaps.
        other: &'static str,
        /// That region's bytes.
        other_at: Range<usize>,
    },
    /// A vchan ring small enough to live inside the control page (orders
    /// 10 and 11), given another offset.
    InPageRing {
        /// The option that gave the offset.
        option: &'static str,
        /// The ring's order.
        order: u8,
        /// Where the protocol puts it.
        fixed: usize,
        /// Where it was said to be.
        given: usize,
    },
    /// A vchan server was given no ring orders to write.
    NoOrders,
    /// The memory cannot be windowed (it is empty).
    NoMemory,
    /// No vchan server at the control page: its header is all zeroes.
    NoServer {
        /// The control page's offset.
        ctrl: usize,
    },
    /// The vchan control page could not be read.
    ControlPageUnreadable {
        /// The control page's offset.
        ctrl: usize,
        /// Why.
        source: ring_core::mem::MemError,
    },
    /// The vchan control page refused (server not live, bad orders).
    ControlPage {
        /// The control page's offset.
        ctrl: usize,
        /// What the control page says.
        source: ring_core::vchan::Error,
    },
    /// A VMBus ring whose size the protocol cannot use.
    RingSize {
        /// The ring (`tx`, `rx`).
        ring: &'static str,
        /// Its size, control page included.
        size: usize,
        /// Why.
        source: ring_core::vmbus::SetupError,
    },
    /// A peer pid that is not a process id, or cannot be watched.
    PeerPid {
        /// The pid.
        pid: u32,
        /// The `pidfd_open` error, if it came that far.
        source: Option<std::io::Error>,
    },
}

impl fmt::Display for AttachProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachProblem::FdNumber {
                option,
                fd,
                problem,
            } => {
                let why = match problem {
                    FdNumberProblem::Negative => "is negative",
                    FdNumberProblem::Standard => "is stdin, stdout or stderr, which the pipe uses",
                    FdNumberProblem::NotOpen => "is not open",
                    FdNumberProblem::NotReadWrite => "is not open read-write (a ring needs both)",
                };
                write!(f, "{option}: fd {fd} {why}")
            }
            AttachProblem::Signal { option, fd, source } => {
                write!(f, "{option} {fd}: {source}")
            }
            AttachProblem::Misaligned {
                option,
                offset,
                align,
            } => write!(f, "{option} {offset} is not a multiple of {align}"),
            AttachProblem::PastEnd { region, at, memory } => write!(
                f,
                "{region} ({} bytes at {}) does not fit: it ends at {}, past the \
                 {memory}-byte memory",
                at.len(),
                at.start,
                at.end
            ),
            AttachProblem::Overlap {
                region,
                at,
                other,
                other_at,
            } => write!(
                f,
                "{region} ({}..{}) overlaps the {other} ({}..{})",
                at.start, at.end, other_at.start, other_at.end
            ),
            AttachProblem::InPageRing {
                option,
                order,
                fixed,
                given,
            } => write!(
                f,
                "{option}: a {}-byte ring (order {order}) lives inside the control page \
                 at byte {fixed}, not {given}",
                1usize << order
            ),
            AttachProblem::NoOrders => f.write_str("a vchan server needs ring orders"),
            AttachProblem::NoMemory => f.write_str("the memory is empty"),
            AttachProblem::NoServer { ctrl } => write!(
                f,
                "layout: no vchan server at byte {ctrl} (its control header is all zeroes); \
                 check --ctrl-offset, or start the server first"
            ),
            AttachProblem::ControlPageUnreadable { ctrl, source } => {
                write!(f, "vchan control page at byte {ctrl}: {source}")
            }
            AttachProblem::ControlPage { ctrl, source } => {
                write!(f, "vchan control page at byte {ctrl}: {source}")
            }
            AttachProblem::RingSize { ring, size, source } => {
                write!(f, "{ring} ring of {size} bytes: {source}")
            }
            AttachProblem::PeerPid { pid, source: None } => {
                write!(f, "--peer-pid {pid} is not a process id")
            }
            AttachProblem::PeerPid {
                pid,
                source: Some(e),
            } => write!(f, "--peer-pid {pid}: {e}"),
        }
    }
}

impl std::error::Error for AttachProblem {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AttachProblem::Signal { source, .. } => Some(&**source),
            AttachProblem::ControlPageUnreadable { source, .. } => Some(source),
            AttachProblem::ControlPage { source, .. } => Some(source),
            AttachProblem::RingSize { source, .. } => Some(source),
            AttachProblem::PeerPid {
                source: Some(e), ..
            } => Some(e),
            _ => None,
        }
    }
}
