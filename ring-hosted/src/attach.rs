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

use crate::eventfd::{EventFd, EventSignal, Woken};
use crate::memfd::MemFd;
use crate::stream::PollStream;
use crate::vmbus::{RingMem, VmbusPipe};
use crate::window::Window;
use crate::Error;
use ring_core::signal::Signal;
use ring_core::vchan::{self, Endpoint, FlatLayout, Orders, Placement, RingPlace, Role};
use ring_core::vmbus::RingLayout;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// No fds: wait by sleeping [`POLL_INTERVAL`] and looking again.
    Poll,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::Attach(reason.into())
}

/// Takes ownership of inherited fd `n`, after checking that it is open.
///
/// # Safety
///
/// Nothing else in the process may own fd `n` (or take it again).
unsafe fn take_fd(n: i32, what: &str) -> Result<OwnedFd, Error> {
    if n < 0 {
        return Err(bad(format!("{what}: fd {n} is negative")));
    }
    if n <= 2 {
        return Err(bad(format!(
            "{what}: fd {n} is stdin, stdout or stderr, which the pipe uses"
        )));
    }
    if std::fs::symlink_metadata(format!("/proc/self/fd/{n}")).is_err() {
        return Err(bad(format!("{what}: fd {n} is not open")));
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
pub unsafe fn open_memory(source: &MemSource) -> Result<Arc<MemFd>, Error> {
    let mem = match source {
        // SAFETY: our caller promised that nobody shrinks the file.
        MemSource::Path(path) => unsafe { MemFd::open_path_unsealed(path, 1) }?,
        MemSource::Fd(n) => {
            // SAFETY: our caller promised that nothing else owns fd `n`.
            let fd = unsafe { take_fd(*n, "--fd") }?;
            let flags = rustix::fs::fcntl_getfl(&fd).map_err(Error::os("fcntl(F_GETFL)"))?;
            if flags & rustix::fs::OFlags::RWMODE != rustix::fs::OFlags::RDWR {
                return Err(bad(format!(
                    "--fd: fd {n} is not open read-write (a ring needs both)"
                )));
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
                EventFd::from_fd(kick_fd).map_err(|e| bad(format!("--notify-fd {notify}: {e}")))?;
            let wake =
                EventFd::from_fd(wake_fd).map_err(|e| bad(format!("--wait-fd {wait}: {e}")))?;
            Ok(EventSignal::new(kick, wake))
        }
    }
}

/// The event channel for [`Wakeup::Poll`]: two private eventfds nobody
/// else sees (kicks go nowhere).
///
/// # Errors
///
/// [`Error::Os`] if eventfds cannot be made.
pub fn poll_signal() -> Result<EventSignal, Error> {
    Ok(EventSignal::new(EventFd::new()?, EventFd::new()?))
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
        Window::new(mem.clone(), 0, mem.len()).ok_or_else(|| bad("memory cannot be windowed"))?;
    let mut spans = vec![(
        "control page".to_string(),
        layout.ctrl,
        layout.ctrl + vchan::layout::PAGE_SIZE,
    )];
    let mut place = |name: &str, order: u8, given: Option<usize>, flat_at: usize| {
        let size = 1usize << order;
        match vchan::layout::placement(order) {
            Placement::InPage { offset } => {
                let fixed = layout.ctrl + offset;
                if given.is_some_and(|g| g != fixed) {
                    return Err(bad(format!(
                        "--{name}-offset: a {size}-byte ring (order {order}) lives inside \
                         the control page at byte {fixed}, not {}",
                        given.unwrap_or(fixed)
                    )));
                }
                Ok(RingPlace {
                    mem: ctrl.clone(),
                    offset,
                })
            }
            Placement::External { .. } => {
                let at = given.unwrap_or(layout.ctrl + flat_at);
                if !at.is_multiple_of(8) {
                    return Err(bad(format!("--{name}-offset {at} is not a multiple of 8")));
                }
                let end = at.saturating_add(size);
                if end > mem.len() {
                    return Err(bad(format!(
                        "{name} ring ({size} bytes at {at}) ends at {end}, past the \
                         {}-byte memory",
                        mem.len()
                    )));
                }
                if let Some((other, s, e)) = spans.iter().find(|(_, s, e)| at < *e && *s < end) {
                    return Err(bad(format!(
                        "{name} ring ({at}..{end}) overlaps the {other} ({s}..{e})"
                    )));
                }
                spans.push((format!("{name} ring"), at, end));
                Ok(RingPlace {
                    mem: whole.clone(),
                    offset: at,
                })
            }
        }
    };
    let left = place("left", orders.left(), layout.left, flat.left)?;
    let right = place("right", orders.right(), layout.right, flat.right)?;
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
/// [`Error::Attach`] naming the offset or size at fault, [`Error::Ring`]
/// if the control page refuses (server not live, bad orders).
pub fn vchan(
    mem: Arc<MemFd>,
    layout: VchanLayout,
    signal: EventSignal,
    poll: bool,
) -> Result<Attached<AttachedVchan>, Error> {
    if !layout.ctrl.is_multiple_of(8) {
        return Err(bad(format!(
            "--ctrl-offset {} is not a multiple of 8",
            layout.ctrl
        )));
    }
    let page = vchan::layout::PAGE_SIZE;
    let ctrl = Window::new(mem.clone(), layout.ctrl, page).ok_or_else(|| {
        bad(format!(
            "control page ({page} bytes at {}) does not fit in the {}-byte memory",
            layout.ctrl,
            mem.len()
        ))
    })?;
    let ep = match layout.role {
        Role::Server => {
            let orders = layout
                .orders
                .ok_or_else(|| bad("a vchan server needs ring orders"))?;
            let (left, right) = place_rings(&mem, &ctrl, &layout, orders)?;
            let grants = vec![0u32; orders.grant_count()];
            vchan::serve(ctrl, left, right, orders, &grants, Default::default())?
        }
        Role::Client => {
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
                (Err(e), None) => {
                    return Err(bad(format!(
                        "vchan control page at byte {}: {e}",
                        layout.ctrl
                    )))
                }
            }
        }
    };
    let stream = AttachedVchan {
        ep,
        signal,
        peer_gone: false,
    };
    if layout.role == Role::Client {
        stream.signal.notify().map_err(Error::from)?;
    }
    Ok(Attached {
        inner: stream,
        poll,
    })
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

fn vmbus_ring(mem: &Arc<MemFd>, name: &str, r: VmbusRing) -> Result<(RingMem, RingLayout), Error> {
    if !r.offset.is_multiple_of(4096) {
        return Err(bad(format!(
            "--{name}-offset {} is not a multiple of 4096",
            r.offset
        )));
    }
    let layout = RingLayout::for_total(r.data_offset, r.size)
        .map_err(|e| bad(format!("{name} ring of {} bytes: {e}", r.size)))?;
    let window = Window::new(mem.clone(), r.offset, r.size).ok_or_else(|| {
        bad(format!(
            "{name} ring ({} bytes at {}) does not fit in the {}-byte memory",
            r.size,
            r.offset,
            mem.len()
        ))
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
pub fn vmbus(
    mem: Arc<MemFd>,
    tx: VmbusRing,
    rx: VmbusRing,
    signal: EventSignal,
    poll: bool,
) -> Result<Attached<VmbusPipe>, Error> {
    let t = vmbus_ring(&mem, "tx", tx)?;
    let r = vmbus_ring(&mem, "rx", rx)?;
    if tx.offset < rx.offset + rx.size && rx.offset < tx.offset + tx.size {
        return Err(bad(format!(
            "tx ring ({}..{}) overlaps rx ring ({}..{})",
            tx.offset,
            tx.offset + tx.size,
            rx.offset,
            rx.offset + rx.size
        )));
    }
    let pipe = VmbusPipe::attach(mem, r, t, signal)?;
    Ok(Attached { inner: pipe, poll })
}

/// A vchan endpoint in foreign memory with its event channel.
#[derive(Debug)]
pub struct AttachedVchan {
    ep: Endpoint<Win>,
    signal: EventSignal,
    peer_gone: bool,
}

impl AttachedVchan {
    /// The ring orders (left, right) in use.
    pub fn orders(&self) -> Orders {
        self.ep.orders()
    }

    fn kick_if(&self, t: vchan::Transfer) -> Result<usize, Error> {
        if t.notify {
            self.signal.notify().map_err(Error::from)?;
        }
        Ok(t.len)
    }
}

impl PollStream for AttachedVchan {
    fn try_read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        match self.ep.read(buf) {
            Ok(t) => self.kick_if(t).map(Some),
            Err(vchan::Error::WouldBlock) if self.peer_gone => Err(Error::Closed),
            Err(vchan::Error::WouldBlock) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn try_write(&mut self, buf: &[u8]) -> Result<Option<usize>, Error> {
        match self.ep.write(buf) {
            Ok(t) => self.kick_if(t).map(Some),
            Err(vchan::Error::WouldBlock) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn ready(&mut self) -> (bool, bool) {
        (
            self.ep.data_ready().map_or(true, |n| n > 0),
            self.ep.buffer_space().map_or(true, |n| n > 0),
        )
    }

    fn spin_ready(&mut self, read: bool, write: bool) -> bool {
        let budget = self.signal.spin();
        crate::stream::spin_for(budget, || {
            let (r, w) = self.ready();
            (read && r) || (write && w)
        })
    }

    fn wait_event(
        &mut self,
        extra: Option<BorrowedFd<'_>>,
        deadline: Option<Instant>,
    ) -> Result<Woken, Error> {
        self.signal.wait_slice(&mut self.peer_gone, extra, deadline)
    }

    fn deadline(&self) -> Option<Instant> {
        self.signal.timeout().map(|t| Instant::now() + t)
    }

    fn signal(&self) -> &EventSignal {
        &self.signal
    }

    fn close(&mut self) -> Result<(), Error> {
        match self.ep.close() {
            Ok(t) => self.kick_if(t).map(drop),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for AttachedVchan {
    fn drop(&mut self) {
        // Best effort: a peer waiting on us must learn that we are gone.
        let _ = PollStream::close(self);
    }
}

/// An attached stream: waits on the eventfds, or with `--poll` by sleeping
/// [`POLL_INTERVAL`] between looks (watching the extra fd meanwhile).
#[derive(Debug)]
pub struct Attached<S> {
    inner: S,
    poll: bool,
}

impl<S> Attached<S> {
    /// The stream inside.
    pub fn inner(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: PollStream> PollStream for Attached<S> {
    fn try_read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        self.inner.try_read(buf)
    }

    fn try_write(&mut self, buf: &[u8]) -> Result<Option<usize>, Error> {
        self.inner.try_write(buf)
    }

    fn ready(&mut self) -> (bool, bool) {
        self.inner.ready()
    }

    fn spin_ready(&mut self, read: bool, write: bool) -> bool {
        self.inner.spin_ready(read, write)
    }

    fn wait_event(
        &mut self,
        extra: Option<BorrowedFd<'_>>,
        deadline: Option<Instant>,
    ) -> Result<Woken, Error> {
        if !self.poll {
            return self.inner.wait_event(extra, deadline);
        }
        let now = Instant::now();
        let nap = match deadline {
            Some(d) if d <= now => return Err(Error::TimedOut),
            Some(d) => (d - now).min(POLL_INTERVAL),
            None => POLL_INTERVAL,
        };
        let Some(fd) = extra else {
            std::thread::sleep(nap);
            return Ok(Woken {
                kicked: false,
                extra: false,
            });
        };
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: i64::from(nap.subsec_nanos()),
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(n) => Ok(Woken {
                kicked: false,
                extra: n > 0,
            }),
            Err(rustix::io::Errno::INTR) => Ok(Woken {
                kicked: false,
                extra: false,
            }),
            Err(e) => Err(Error::os("poll")(e)),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.inner.deadline()
    }

    fn signal(&self) -> &EventSignal {
        self.inner.signal()
    }

    fn close(&mut self) -> Result<(), Error> {
        self.inner.close()
    }
}
