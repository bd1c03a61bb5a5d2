//! Joining rings that a foreign program set up itself (`ring attach`).
//!
//! The other side (a C program, a hypervisor shim, anything) made the
//! shared memory and the eventfds and tells us where everything is: the
//! memory as a path or an inherited fd, the byte offsets of the control
//! page and the rings, and the eventfds by number. Nothing is negotiated,
//! so everything is checked before it is used: offsets in range, aligned
//! and not overlapping, ring sizes that the protocol allows, and fds that
//! are open and of the right kind.

#![allow(unsafe_code)]

use crate::eventfd::{EventFd, EventSignal};
use crate::memfd::MemFd;
use crate::stream::VchanStream;
use crate::vmbus::{RawVmbus, RingMem, VmbusPipe};
use crate::window::Window;
use crate::Error;
use ring_core::vchan::{self, FlatLayout, Orders, Placement, RingPlace, Role};
use ring_core::vmbus::RingLayout;
use std::ops::Range;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long a `--poll` wait sleeps between looks at the ring.
pub const POLL_INTERVAL: Duration = Duration::from_micros(200);

/// Where the shared memory comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemSource {
    /// A shm or memfd-backed file opened read-write by path.
    Path(PathBuf),
    /// An fd number inherited from the parent, opened read-write.
    Fd(i32),
}

/// How the two sides wake each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wakeup {
    /// Eventfds by number: we write `notify` to kick the peer and read
    /// `wait` to be woken (they may be the same fd).
    Fds {
        /// The eventfd we write.
        notify: i32,
        /// The eventfd we read.
        wait: i32,
    },
    /// No fds: we never kick, and we wait by looking at the ring again
    /// every [`POLL_INTERVAL`]. The peer must poll too: it is never woken.
    Poll,
}

mod problem;

pub use problem::{AttachProblem, FdNumberProblem};

fn bad(problem: AttachProblem) -> Error {
    Error::Attach(problem)
}

fn fd_number(option: &'static str, fd: i32, problem: FdNumberProblem) -> Error {
    bad(AttachProblem::FdNumber {
        option,
        fd,
        problem,
    })
}

fn signal_problem(option: &'static str, fd: i32, e: Error) -> Error {
    bad(AttachProblem::Signal {
        option,
        fd,
        source: Box::new(e),
    })
}

/// Takes ownership of inherited fd `n`, after checking that it is open.
///
/// # Safety
///
/// Nothing else in the process may own fd `n` (or take it again).
unsafe fn take_fd(n: i32, what: &'static str) -> Result<OwnedFd, Error> {
    if n < 0 {
        return Err(fd_number(what, n, FdNumberProblem::Negative));
    }
    if n <= 2 {
        return Err(fd_number(what, n, FdNumberProblem::Standard));
    }
    if std::fs::symlink_metadata(format!("/proc/self/fd/{n}")).is_err() {
        return Err(fd_number(what, n, FdNumberProblem::NotOpen));
    }
    // SAFETY: fd `n` is open (checked above via /proc) and above the
    // standard streams; our caller promised that nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Opens the memory read-write and maps all of it.
///
/// The file is mapped even if it is not sealed.
///
/// # Errors
///
/// [`Error::Attach`] for an fd that is not open or not open read-write,
/// [`Error::BadFd`] for a non-regular or empty file, [`Error::Os`].
///
/// # Safety
///
/// Nobody may shrink the file while the mapping lives (access to
/// truncated pages raises `SIGBUS`). For [`MemSource::Fd`], the fd is
/// taken over: nothing else in the process may own it, and it must not be
/// passed here or to [`open_signal`] again.
///
/// # Examples
///
/// A plain file by path (mapped though it carries no seals), and a memfd by
/// an fd number the process was given:
///
/// ```
/// use ring_hosted::attach::{self, MemSource};
/// use ring_hosted::memfd::MemFd;
/// use std::os::fd::{AsFd, IntoRawFd};
///
/// let path = std::env::temp_dir().join(format!("ring-doc-attach-{}", std::process::id()));
/// std::fs::write(&path, vec![0u8; 65536])?;
/// // SAFETY: this example made the file and nothing truncates it while the
/// // mapping lives.
/// let by_path = unsafe { attach::open_memory(&MemSource::Path(path.clone())) }?;
/// assert_eq!((by_path.len(), by_path.is_sealed()), (65536, false));
///
/// let memfd = MemFd::create("doc-attach-fd", 8192)?;
/// let n = memfd.as_fd().try_clone_to_owned()?.into_raw_fd();
/// // SAFETY: fd `n` was given up just above and is passed here once.
/// let by_fd = unsafe { attach::open_memory(&MemSource::Fd(n)) }?;
/// assert_eq!((by_fd.len(), by_fd.is_sealed()), (8192, true));
/// # drop(by_path);
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub unsafe fn open_memory(source: &MemSource) -> Result<Arc<MemFd>, Error> {
    let mem = match source {
        // SAFETY: our caller promised that nobody shrinks the file.
        MemSource::Path(path) => unsafe { MemFd::open_path_unsealed(path, 1) }?,
        MemSource::Fd(n) => {
            // SAFETY: our caller promised that nothing else owns fd `n`.
            let fd = unsafe { take_fd(*n, "--fd") }?;
            let flags = rustix::fs::fcntl_getfl(&fd).map_err(Error::os("fcntl(F_GETFL)"))?;
            if flags & rustix::fs::OFlags::RWMODE != rustix::fs::OFlags::RDWR {
                return Err(fd_number("--fd", *n, FdNumberProblem::NotReadWrite));
            }
            // SAFETY: our caller promised that nobody shrinks the file.
            unsafe { MemFd::from_fd_unsealed(fd, 1) }?
        }
    };
    Ok(Arc::new(mem))
}

/// Builds the event channel: eventfds inherited by number, or for
/// [`Wakeup::Poll`] two private eventfds nobody else sees (kicks go
/// nowhere; waits sleep and look again).
///
/// # Errors
///
/// [`Error::Attach`] for fds that are not open, [`Error::BadFd`] for fds
/// that are not eventfds, [`Error::Os`].
///
/// # Safety
///
/// For [`Wakeup::Fds`], the fds are taken over: nothing else in the
/// process may own them, and they must not be passed here or to
/// [`open_memory`] again.
///
/// # Examples
///
/// Eventfds passed down by number, as a foreign peer's launcher would pass
/// them, and a pipe refused in their place:
///
/// ```
/// use ring_core::signal::Signal;
/// use ring_hosted::attach::{self, AttachProblem, Wakeup};
/// use ring_hosted::{eventfd::EventFd, Error};
/// use std::os::fd::{AsFd, IntoRawFd, OwnedFd};
/// use std::time::Duration;
///
/// let (notify, wait) = (EventFd::new()?, EventFd::new()?);
/// let peer_wakes = EventFd::from_fd(notify.as_fd().try_clone_to_owned()?)?;
/// let peer_kicks = EventFd::from_fd(wait.as_fd().try_clone_to_owned()?)?;
/// let (notify, wait) = (OwnedFd::from(notify).into_raw_fd(), OwnedFd::from(wait).into_raw_fd());
/// // SAFETY: both fd numbers were given up just above and are passed once.
/// let signal = unsafe { attach::open_signal(Wakeup::Fds { notify, wait }) }?;
/// peer_kicks.kick()?;
/// signal.wait_timeout(Some(Duration::from_secs(10)))?;
/// signal.notify()?;
/// assert_eq!(peer_wakes.take()?, 1);
///
/// let pipe = OwnedFd::from(std::io::pipe()?.0).into_raw_fd();
/// // SAFETY: as above.
/// let refused = unsafe { attach::open_signal(Wakeup::Fds { notify: pipe, wait: pipe }) };
/// assert!(matches!(
///     refused,
///     Err(Error::Attach(AttachProblem::Signal { option: "--notify-fd", .. }))
/// ));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub unsafe fn open_signal(wakeup: Wakeup) -> Result<EventSignal, Error> {
    match wakeup {
        Wakeup::Poll => poll_signal(),
        Wakeup::Fds { notify, wait } => {
            // SAFETY: our caller promised that nothing else owns the fd.
            let kick_fd = unsafe { take_fd(notify, "--notify-fd") }?;
            let wake_fd = if wait == notify {
                kick_fd.try_clone().map_err(|source| Error::Os {
                    op: "dup eventfd",
                    source,
                })?
            } else {
                // SAFETY: our caller promised that nothing else owns the fd,
                // and it differs from `notify`, taken above.
                unsafe { take_fd(wait, "--wait-fd") }?
            };
            let kick =
                EventFd::from_fd(kick_fd).map_err(|e| signal_problem("--notify-fd", notify, e))?;
            let wake =
                EventFd::from_fd(wake_fd).map_err(|e| signal_problem("--wait-fd", wait, e))?;
            Ok(EventSignal::new(kick, wake))
        }
    }
}

/// The event channel for [`Wakeup::Poll`]: two private eventfds nobody
/// else sees (kicks go nowhere), and waits that look at the ring again
/// every [`POLL_INTERVAL`].
///
/// # Errors
///
/// [`Error::Os`] if eventfds cannot be made.
///
/// # Examples
///
/// ```
/// use ring_hosted::attach::{self, POLL_INTERVAL};
/// use std::time::Duration;
///
/// let signal = attach::poll_signal()?;
/// assert_eq!(signal.liveness(), Some(POLL_INTERVAL));
/// // Nobody kicks: the wait returns after the interval to look at the ring.
/// signal.wait_timeout(Some(Duration::from_secs(10)))?;
/// assert_eq!(signal.wake_counts().lapses, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn poll_signal() -> Result<EventSignal, Error> {
    EventSignal::polling(POLL_INTERVAL)
}

/// The vchan layout a foreign peer chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VchanLayout {
    /// Which end we are.
    pub role: Role,
    /// Byte offset of the 4 KiB control page (8-aligned).
    pub ctrl: usize,
    /// Byte offset of the left (client→server) ring's data; `None`: the
    /// flat layout after the control page (or the in-page slot).
    pub left: Option<usize>,
    /// Byte offset of the right (server→client) ring's data; `None` as for
    /// `left`.
    pub right: Option<usize>,
    /// Server only: the orders to write into the control page.
    pub orders: Option<Orders>,
}

type Win = Window<Arc<MemFd>>;

/// Where each ring lies, checked against the memory and the other ring.
fn place_rings(
    mem: &Arc<MemFd>,
    ctrl: &Win,
    layout: &VchanLayout,
    orders: Orders,
) -> Result<(RingPlace<Win>, RingPlace<Win>), Error> {
    let flat = FlatLayout::new(orders);
    let whole =
        Window::new(mem.clone(), 0, mem.len()).ok_or_else(|| bad(AttachProblem::NoMemory))?;
    let mut spans: Vec<(&'static str, Range<usize>)> = vec![(
        "control page",
        layout.ctrl..layout.ctrl + vchan::layout::PAGE_SIZE,
    )];
    let mut place = |option: &'static str,
                     region: &'static str,
                     order: u8,
                     given: Option<usize>,
                     flat_at: usize| {
        let size = 1usize << order;
        match vchan::layout::placement(order) {
            Placement::InPage { offset } => {
                let fixed = layout.ctrl + offset;
                if let Some(given) = given.filter(|&g| g != fixed) {
                    return Err(bad(AttachProblem::InPageRing {
                        option,
                        order,
                        fixed,
                        given,
                    }));
                }
                Ok(RingPlace {
                    mem: ctrl.clone(),
                    offset,
                })
            }
            Placement::External { .. } => {
                let at = given.unwrap_or(layout.ctrl + flat_at);
                if !at.is_multiple_of(8) {
                    return Err(bad(AttachProblem::Misaligned {
                        option,
                        offset: at,
                        align: 8,
                    }));
                }
                let end = at.saturating_add(size);
                if end > mem.len() {
                    return Err(bad(AttachProblem::PastEnd {
                        region,
                        at: at..end,
                        memory: mem.len(),
                    }));
                }
                if let Some((other, span)) = spans
                    .iter()
                    .find(|(_, span)| at < span.end && span.start < end)
                {
                    return Err(bad(AttachProblem::Overlap {
                        region,
                        at: at..end,
                        other,
                        other_at: span.clone(),
                    }));
                }
                spans.push((region, at..end));
                Ok(RingPlace {
                    mem: whole.clone(),
                    offset: at,
                })
            }
        }
    };
    let left = place(
        "--left-offset",
        "left ring",
        orders.left(),
        layout.left,
        flat.left,
    )?;
    let right = place(
        "--right-offset",
        "right ring",
        orders.right(),
        layout.right,
        flat.right,
    )?;
    Ok((left, right))
}

/// Joins (client) or sets up (server) a vchan in foreign memory.
///
/// A server writes the control page for `layout.orders` and waits for its
/// client like any vchan server; a client reads the orders from the page.
/// A client kicks the server once after connecting, as libxenvchan's
/// does.
///
/// # Errors
///
/// [`Error::Attach`] naming the offset or size at fault, [`Error::Vchan`]
/// if the control page refuses (server not live, bad orders).
///
/// # Examples
///
/// Both ends attached to one memfd in the flat layout (in real use the other
/// end is the foreign program), and a layout refused with its reason:
///
/// ```
/// use ring_core::vchan::{FlatLayout, Orders, Role};
/// use ring_hosted::attach::{self, AttachProblem, VchanLayout};
/// use ring_hosted::{eventfd, memfd::MemFd, Error};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// let orders = Orders::for_sizes(4096, 4096)?;
/// let mem = Arc::new(MemFd::create("doc-attach-vchan", FlatLayout::new(orders).size)?);
/// let at = |role, orders| VchanLayout { role, ctrl: 0, left: None, right: None, orders };
/// let (server_signal, client_signal) = eventfd::pair()?;
/// let mut server = attach::vchan(mem.clone(), at(Role::Server, Some(orders)), server_signal)?;
/// let mut client = attach::vchan(mem.clone(), at(Role::Client, None), client_signal)?;
/// server.signal_mut().set_timeout(Some(Duration::from_secs(10)));
/// client.write_all(b"attached")?;
/// let mut got = [0u8; 8];
/// server.recv(&mut got)?;
/// assert_eq!(&got, b"attached");
///
/// let skewed = VchanLayout { ctrl: 4, ..at(Role::Client, None) };
/// let refused = attach::vchan(mem, skewed, eventfd::pair()?.0);
/// assert!(matches!(
///     refused,
///     Err(Error::Attach(AttachProblem::Misaligned { option: "--ctrl-offset", offset: 4, align: 8 }))
/// ));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn vchan(
    mem: Arc<MemFd>,
    layout: VchanLayout,
    signal: EventSignal,
) -> Result<AttachedVchan, Error> {
    if !layout.ctrl.is_multiple_of(8) {
        return Err(bad(AttachProblem::Misaligned {
            option: "--ctrl-offset",
            offset: layout.ctrl,
            align: 8,
        }));
    }
    let page = vchan::layout::PAGE_SIZE;
    let ctrl = Window::new(mem.clone(), layout.ctrl, page).ok_or_else(|| {
        bad(AttachProblem::PastEnd {
            region: "control page",
            at: layout.ctrl..layout.ctrl.saturating_add(page),
            memory: mem.len(),
        })
    })?;
    let ep = match layout.role {
        Role::Server => {
            let orders = layout.orders.ok_or_else(|| bad(AttachProblem::NoOrders))?;
            let (left, right) = place_rings(&mem, &ctrl, &layout, orders)?;
            let grants = grant_refs(&layout, orders);
            vchan::serve(ctrl, left, right, orders, &grants, Default::default())?
        }
        Role::Client => {
            let mut header = [0u8; vchan::layout::GRANTS];
            ring_core::mem::SharedMem::read(&ctrl, 0, &mut header).map_err(|source| {
                bad(AttachProblem::ControlPageUnreadable {
                    ctrl: layout.ctrl,
                    source,
                })
            })?;
            if header.iter().all(|&b| b == 0) {
                return Err(bad(AttachProblem::NoServer { ctrl: layout.ctrl }));
            }
            let mut placed = None;
            let result = vchan::connect(ctrl.clone(), |orders, _grants| {
                match place_rings(&mem, &ctrl, &layout, orders) {
                    Ok(p) => Ok(p),
                    Err(e) => {
                        placed = Some(e);
                        // Any setup error: the real reason is in `placed`.
                        Err(vchan::SetupError::BadIndices.into())
                    }
                }
            });
            match (result, placed) {
                (_, Some(e)) => return Err(e),
                (Ok(ep), None) => ep,
                (Err(source), None) => {
                    return Err(bad(AttachProblem::ControlPage {
                        ctrl: layout.ctrl,
                        source,
                    }))
                }
            }
        }
    };
    let stream = VchanStream::new(ep, signal);
    if layout.role == Role::Client {
        stream.kick()?;
    }
    Ok(stream)
}

/// The grant refs a server writes for its external rings: as the library's
/// flat server does, the page number of each ring page counted from the
/// control page, so a client that finds the rings through the grant list
/// finds them. A ring that does not start on a page boundary after the
/// control page cannot be described that way and gets refs of 0.
fn grant_refs(layout: &VchanLayout, orders: Orders) -> Vec<u32> {
    let page = vchan::layout::PAGE_SIZE;
    let flat = FlatLayout::new(orders);
    let mut refs = Vec::with_capacity(orders.grant_count());
    for (order, given, flat_at) in [
        (orders.left(), layout.left, flat.left),
        (orders.right(), layout.right, flat.right),
    ] {
        let Placement::External { pages } = vchan::layout::placement(order) else {
            continue;
        };
        let start = given
            .unwrap_or(layout.ctrl + flat_at)
            .checked_sub(layout.ctrl)
            .filter(|d| d.is_multiple_of(page))
            .and_then(|d| u32::try_from(d / page).ok());
        for i in 0..pages {
            refs.push(start.map_or(0, |s| s.saturating_add(i as u32)));
        }
    }
    refs
}

/// Makes `signal` notice the death of process `pid` at once: its pidfd
/// becomes the signal's watched fd.
///
/// # Errors
///
/// [`Error::Attach`] if there is no such process.
///
/// # Examples
///
/// A child process stands in for the peer; its exit ends our wait:
///
/// ```
/// use ring_hosted::{attach, eventfd, eventfd::WaitError};
/// use std::time::Duration;
///
/// let (mut signal, _peer) = eventfd::pair()?;
/// let mut child = std::process::Command::new("sleep").arg("30").spawn()?;
/// attach::watch_peer(&mut signal, child.id())?;
/// assert!(!signal.peer_gone());
/// child.kill()?;
/// child.wait()?;
/// let waited = signal.wait_timeout(Some(Duration::from_secs(10)));
/// assert!(matches!(waited, Err(WaitError::PeerGone)));
/// assert!(attach::watch_peer(&mut signal, 0).is_err()); // not a process id
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn watch_peer(signal: &mut EventSignal, pid: u32) -> Result<(), Error> {
    let raw = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| bad(AttachProblem::PeerPid { pid, source: None }))?;
    let fd =
        rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()).map_err(|e| {
            bad(AttachProblem::PeerPid {
                pid,
                source: Some(e.into()),
            })
        })?;
    signal.set_watch(fd);
    Ok(())
}

/// Where one VMBus ring lies: the whole ring (control page and data) as a
/// byte range of the memory, and its data offset inside the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmbusRing {
    /// Byte offset of the ring's control page in the memory.
    pub offset: usize,
    /// Bytes of the ring: control page plus data.
    pub size: usize,
    /// Offset of the data inside the ring (4096 normally).
    pub data_offset: usize,
}

fn vmbus_ring(
    mem: &Arc<MemFd>,
    (name, option, region): (&'static str, &'static str, &'static str),
    r: VmbusRing,
) -> Result<(RingMem, RingLayout), Error> {
    if !r.offset.is_multiple_of(4096) {
        return Err(bad(AttachProblem::Misaligned {
            option,
            offset: r.offset,
            align: 4096,
        }));
    }
    let layout = RingLayout::for_total(r.data_offset, r.size).map_err(|source| {
        bad(AttachProblem::RingSize {
            ring: name,
            size: r.size,
            source,
        })
    })?;
    let window = Window::new(mem.clone(), r.offset, r.size).ok_or_else(|| {
        bad(AttachProblem::PastEnd {
            region,
            at: r.offset..r.offset.saturating_add(r.size),
            memory: mem.len(),
        })
    })?;
    Ok((window, layout))
}

/// Joins a VMBus pipe whose two rings a foreign peer placed and
/// initialised: `tx` is the ring we write, `rx` the one we read.
///
/// # Errors
///
/// [`Error::Attach`] for rings out of range, misaligned, overlapping or of
/// a size VMBus cannot have; [`Error::Vmbus`] for rings whose indices are
/// invalid.
///
/// # Examples
///
/// A [`VmbusPipe`] server plays the foreign peer that initialised the two
/// rings; we join as its client, writing the first ring and reading the
/// second:
///
/// ```
/// use ring_hosted::attach::{self, VmbusRing};
/// use ring_hosted::vmbus::{ChannelLayout, VmbusPipe};
/// use ring_hosted::{eventfd, memfd::MemFd};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// let layout = ChannelLayout::new(4096, 4096)?; // a page of data each way
/// let mem = Arc::new(MemFd::create("doc-attach-vmbus", layout.total_size())?);
/// let (peer_signal, our_signal) = eventfd::pair()?;
/// let mut peer = VmbusPipe::serve(mem.clone(), layout, peer_signal)?;
///
/// let ring = |offset| VmbusRing { offset, size: 8192, data_offset: 4096 };
/// let mut ours = attach::vmbus(mem, ring(0), ring(8192), our_signal)?;
/// peer.signal_mut().set_timeout(Some(Duration::from_secs(10)));
/// ours.write_all(b"over vmbus")?;
/// let mut buf = [0u8; 32];
/// let n = peer.read(&mut buf)?;
/// assert_eq!(&buf[..n], b"over vmbus");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn vmbus(
    mem: Arc<MemFd>,
    tx: VmbusRing,
    rx: VmbusRing,
    signal: EventSignal,
) -> Result<VmbusPipe, Error> {
    let (t, r) = vmbus_rings(&mem, tx, rx)?;
    VmbusPipe::attach(mem, r, t, signal)
}

/// As [`vmbus`], without pipe framing: in-band payloads are the stream
/// (see [`RawVmbus`]).
///
/// # Errors
///
/// As [`vmbus`].
///
/// # Examples
///
/// Two raw ends over rings initialised in place; bytes travel in whole
/// 8-byte units:
///
/// ```
/// use ring_core::vmbus::{self, RingLayout};
/// use ring_hosted::attach::{self, VmbusRing};
/// use ring_hosted::stream::PollStream;
/// use ring_hosted::{eventfd, memfd::MemFd, window::Window};
/// use std::sync::Arc;
///
/// let mem = Arc::new(MemFd::create("doc-attach-raw", 4 * 4096)?);
/// for base in [0, 8192] {
///     let ring = Window::new(mem.clone(), base, 8192).ok_or("window")?;
///     vmbus::initialize_ring(&ring, RingLayout::for_total(4096, 8192)?)?;
/// }
/// let ring = |offset| VmbusRing { offset, size: 8192, data_offset: 4096 };
/// let (a_signal, b_signal) = eventfd::pair()?;
/// let mut a = attach::vmbus_raw(mem.clone(), ring(0), ring(8192), a_signal)?;
/// let mut b = attach::vmbus_raw(mem, ring(8192), ring(0), b_signal)?;
/// assert_eq!(a.try_write(b"8 bytes!")?, Some(8));
/// let mut buf = [0u8; 16];
/// assert_eq!(b.try_read(&mut buf)?, Some(8));
/// assert_eq!(&buf[..8], b"8 bytes!");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn vmbus_raw(
    mem: Arc<MemFd>,
    tx: VmbusRing,
    rx: VmbusRing,
    signal: EventSignal,
) -> Result<RawVmbus, Error> {
    let (t, r) = vmbus_rings(&mem, tx, rx)?;
    RawVmbus::attach(mem, r, t, signal)
}

type PlacedRing = (RingMem, RingLayout);

/// Both rings checked against the memory and each other: (tx, rx).
fn vmbus_rings(
    mem: &Arc<MemFd>,
    tx: VmbusRing,
    rx: VmbusRing,
) -> Result<(PlacedRing, PlacedRing), Error> {
    let t = vmbus_ring(mem, ("tx", "--tx-offset", "tx ring"), tx)?;
    let r = vmbus_ring(mem, ("rx", "--rx-offset", "rx ring"), rx)?;
    if tx.offset < rx.offset + rx.size && rx.offset < tx.offset + tx.size {
        return Err(bad(AttachProblem::Overlap {
            region: "tx ring",
            at: tx.offset..tx.offset + tx.size,
            other: "rx ring",
            other_at: rx.offset..rx.offset + rx.size,
        }));
    }
    Ok((t, r))
}

/// A vchan endpoint in foreign memory with its event channel: the same
/// stream as between two of our processes, over a window of the memory.
pub type AttachedVchan = VchanStream<Win>;
