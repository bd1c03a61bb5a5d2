//! eventfd signalling: kick the peer, wait to be kicked, notice the peer's
//! death.
//!
//! A channel uses two eventfds, one per direction: each side writes the
//! other's and waits on its own. [`EventSignal`] bundles the pair with an
//! optional *hang-up fd* (the rendezvous socket): when the peer process
//! exits, the kernel closes its end of that socket, and a waiter blocked in
//! [`EventSignal::wait`] returns [`WaitError::PeerGone`] at once instead of
//! sleeping for ever, which a dead peer's last kick could never end.
//!
//! Waiting can spin briefly first ([`EventSignal::set_spin`]): a peer that
//! is running on another core usually answers within microseconds, and a
//! short spin saves the sleep and wake-up (see [`DEFAULT_SPIN`] for the
//! measurements behind the default). Counters of kicks sent and wake-ups
//! taken make the notification cost visible.
//!
//! An `EventSignal` is for one waiting thread: two threads waiting on the
//! same eventfd could take each other's wake-ups.

use crate::memfd::FdProblem;
use crate::Error;
use ring_core::signal::Signal;
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One eventfd (non-blocking, close-on-exec).
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new eventfd with a zero counter.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if the kernel refuses.
    pub fn new() -> Result<Self, Error> {
        let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(Error::os("eventfd"))?;
        Ok(EventFd { fd })
    }

    /// Adopts an fd received from a peer after checking that it really is
    /// an eventfd (so a wrong kind of fd is reported, not misused), and
    /// makes it non-blocking.
    ///
    /// # Errors
    ///
    /// [`Error::BadFd`] with [`FdProblem::NotEventfd`] for any other fd.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, Error> {
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let found = std::fs::read_link(&link)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|e| format!("an fd /proc cannot describe ({e})"));
        if found != "anon_inode:[eventfd]" {
            return Err(Error::BadFd(FdProblem::NotEventfd { found }));
        }
        let flags = rustix::fs::fcntl_getfl(&fd).map_err(Error::os("fcntl(F_GETFL)"))?;
        rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)
            .map_err(Error::os("fcntl(F_SETFL)"))?;
        Ok(EventFd { fd })
    }

    /// Adds one to the counter, waking whoever polls it.
    ///
    /// # Errors
    ///
    /// The write's OS error (only possible for a broken fd).
    pub fn kick(&self) -> io::Result<()> {
        rustix::io::write(&self.fd, &1u64.to_ne_bytes())?;
        Ok(())
    }

    /// Takes the counter without blocking: the number of kicks since the
    /// last take, or 0.
    ///
    /// # Errors
    ///
    /// The read's OS error (only possible for a broken fd).
    pub fn take(&self) -> io::Result<u64> {
        let mut buf = [0u8; 8];
        match rustix::io::read(&self.fd, &mut buf) {
            Ok(8) => Ok(u64::from_ne_bytes(buf)),
            Ok(_) => Ok(0),
            Err(rustix::io::Errno::AGAIN) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<EventFd> for OwnedFd {
    fn from(e: EventFd) -> OwnedFd {
        e.fd
    }
}

/// Why a wait ended without a kick.
#[derive(Debug)]
pub enum WaitError {
    /// The hang-up fd reported that the peer is gone (its process exited or
    /// closed the rendezvous socket).
    PeerGone,
    /// The timeout passed without a kick.
    TimedOut,
    /// poll or read failed.
    Os(io::Error),
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::PeerGone => f.write_str("peer hung up"),
            WaitError::TimedOut => f.write_str("timed out waiting for the peer"),
            WaitError::Os(e) => write!(f, "waiting for the peer failed: {e}"),
        }
    }
}

impl std::error::Error for WaitError {}

/// What ended a [`EventSignal::wait_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Woken {
    /// The peer kicked us.
    pub kicked: bool,
    /// The extra fd is readable (or hung up).
    pub extra: bool,
}

/// The default spin before blocking: 20 µs.
///
/// Measured with `ring demo` on a 2-core VM: on an idle machine, blocking
/// at once cost about 80 µs per 64-byte round trip (waking an idle vCPU is
/// slow) where a 20 µs spin gave 0.3–1 µs and slightly more throughput;
/// with two CPU hogs running, the spin still gave about 1 µs (against 4–7
/// µs) at some throughput cost. Under heavy build load an earlier version
/// saw spins of this order trap a ping-pong where both sides always sleep
/// (65 µs); set it to zero ([`EventSignal::set_spin`], `ring demo
/// --spin-us 0`) on a machine that is always saturated.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(20);

/// The event channel between two processes: kick the peer's eventfd, wait
/// on ours, and watch a hang-up fd for the peer's death. Implements
/// [`ring_core::signal::Signal`].
#[derive(Debug)]
pub struct EventSignal {
    kick: EventFd,
    wake: EventFd,
    hangup: Option<OwnedFd>,
    spin: Duration,
    timeout: Option<Duration>,
    kicks: AtomicU64,
    wakeups: AtomicU64,
}

impl EventSignal {
    /// A signal that writes `kick` to wake the peer and waits on `wake`.
    pub fn new(kick: EventFd, wake: EventFd) -> Self {
        EventSignal {
            kick,
            wake,
            hangup: None,
            spin: DEFAULT_SPIN,
            timeout: None,
            kicks: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
        }
    }

    /// Watches `fd` while waiting: once it is readable or hung up (for a
    /// connected socket the peer sends nothing on: end of file), waits fail
    /// with [`WaitError::PeerGone`].
    pub fn with_hangup(mut self, fd: OwnedFd) -> Self {
        self.hangup = Some(fd);
        self
    }

    /// Sets (or replaces) the hang-up fd; see [`with_hangup`](Self::with_hangup).
    pub fn set_hangup(&mut self, fd: OwnedFd) {
        self.hangup = Some(fd);
    }

    /// Sets how long a wait spins (re-checking without sleeping) before it
    /// blocks in the kernel. Zero disables spinning.
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    /// The spin budget.
    pub fn spin(&self) -> Duration {
        self.spin
    }

    /// Sets the longest a [`wait`](Signal::wait) blocks; `None` waits for
    /// ever (or until the peer hangs up).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// The longest a wait blocks (`None`: no limit).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Kicks sent to the peer so far.
    pub fn kicks(&self) -> u64 {
        self.kicks.load(Ordering::Relaxed)
    }

    /// Wake-ups taken so far (waits that ended with the peer's kick).
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    /// The eventfd we wait on (for an outside poll loop).
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The eventfd we write to kick the peer (to pass it to the peer).
    pub fn kick_fd(&self) -> BorrowedFd<'_> {
        self.kick.as_fd()
    }

    /// The hang-up fd, if any.
    pub fn hangup_fd(&self) -> Option<BorrowedFd<'_>> {
        self.hangup.as_ref().map(|f| f.as_fd())
    }

    /// Whether the hang-up fd says the peer is gone, without blocking.
    pub fn peer_gone(&self) -> bool {
        let Some(h) = &self.hangup else {
            return false;
        };
        let mut fds = [PollFd::new(h, PollFlags::IN | PollFlags::RDHUP)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
    }

    fn took(&self, n: u64) -> bool {
        if n > 0 {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Waits for a kick with an explicit timeout (`None`: no limit),
    /// spinning on the eventfd counter for the spin budget first. This is
    /// the wait behind [`Signal::wait`], for callers that cannot spin on the
    /// ring themselves.
    ///
    /// # Errors
    ///
    /// [`WaitError::PeerGone`], [`WaitError::TimedOut`], or an OS error.
    pub fn wait_timeout(&self, timeout: Option<Duration>) -> Result<(), WaitError> {
        let start = Instant::now();
        while start.elapsed() < self.spin {
            if self.took(self.wake.take().map_err(WaitError::Os)?) {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        let left = timeout.map(|t| t.saturating_sub(start.elapsed()));
        self.wait_with(None, left).map(drop)
    }

    /// Waits until the peer kicks us or `extra` becomes readable, blocking
    /// in poll at once (callers that can re-check the ring spin on it
    /// before they call this, which is cheaper than spinning here).
    ///
    /// # Errors
    ///
    /// [`WaitError::PeerGone`] once the hang-up fd fires (a pending kick is
    /// reported first), [`WaitError::TimedOut`], or an OS error.
    pub fn wait_with(
        &self,
        extra: Option<BorrowedFd<'_>>,
        timeout: Option<Duration>,
    ) -> Result<Woken, WaitError> {
        if self.took(self.wake.take().map_err(WaitError::Os)?) {
            return Ok(Woken {
                kicked: true,
                extra: false,
            });
        }
        let start = Instant::now();
        let deadline = timeout.map(|t| start + t);
        loop {
            let left = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(WaitError::TimedOut);
                    }
                    Some(d - now)
                }
                None => None,
            };
            let ts = left.map(|d| Timespec {
                tv_sec: d.as_secs() as _,
                tv_nsec: d.subsec_nanos() as _,
            });
            // The eventfd, then the hang-up fd and the extra fd if present;
            // a fixed array, so waiting never allocates.
            let mut fds = [
                PollFd::from_borrowed_fd(self.wake.as_fd(), PollFlags::IN),
                PollFd::from_borrowed_fd(self.wake.as_fd(), PollFlags::empty()),
                PollFd::from_borrowed_fd(self.wake.as_fd(), PollFlags::empty()),
            ];
            let mut used = 1;
            let mut hang_at = None;
            if let (Some(h), Some(slot)) = (self.hangup.as_ref(), fds.get_mut(used)) {
                *slot = PollFd::from_borrowed_fd(h.as_fd(), PollFlags::IN | PollFlags::RDHUP);
                hang_at = Some(used);
                used += 1;
            }
            let mut extra_at = None;
            if let (Some(e), Some(slot)) = (extra, fds.get_mut(used)) {
                *slot = PollFd::from_borrowed_fd(e, PollFlags::IN);
                extra_at = Some(used);
                used += 1;
            }
            let fds = fds.get_mut(..used).unwrap_or_default();
            match rustix::event::poll(fds, ts.as_ref()) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(WaitError::Os(e.into())),
            }
            let fired = |at: Option<usize>| {
                at.and_then(|i| fds.get(i))
                    .is_some_and(|f| !f.revents().is_empty())
            };
            let (hung, extra_ready) = (fired(hang_at), fired(extra_at));
            let got = self.took(self.wake.take().map_err(WaitError::Os)?);
            if got || extra_ready {
                return Ok(Woken {
                    kicked: got,
                    extra: extra_ready,
                });
            }
            if hung {
                return Err(WaitError::PeerGone);
            }
        }
    }
}

impl Signal for EventSignal {
    type Error = WaitError;

    fn notify(&self) -> Result<(), WaitError> {
        self.kicks.fetch_add(1, Ordering::Relaxed);
        self.kick.kick().map_err(WaitError::Os)
    }

    fn wait(&self) -> Result<(), WaitError> {
        self.wait_timeout(self.timeout)
    }
}

impl AsFd for EventSignal {
    /// The eventfd this side waits on: readable when the peer has kicked.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
}

/// Two connected signals in one process (each one's kick is the other's
/// wake-up), for tests and in-process pairs.
///
/// # Errors
///
/// [`Error::Os`] if eventfds cannot be made.
pub fn pair() -> Result<(EventSignal, EventSignal), Error> {
    let (a, b) = (EventFd::new()?, EventFd::new()?);
    let a2 = EventFd {
        fd: a.fd.try_clone().map_err(|source| Error::Os {
            op: "dup eventfd",
            source,
        })?,
    };
    let b2 = EventFd {
        fd: b.fd.try_clone().map_err(|source| Error::Os {
            op: "dup eventfd",
            source,
        })?,
    };
    Ok((EventSignal::new(a, b), EventSignal::new(b2, a2)))
}

/// The longest a blocking call sleeps without re-checking the ring: the
/// bound on noticing a peer that cleared its live byte but never kicked,
/// and on how long a lost or withheld kick can stall us.
pub const LIVENESS_POLL: Duration = Duration::from_millis(50);

impl From<WaitError> for Error {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::PeerGone => Error::Closed,
            WaitError::TimedOut => Error::TimedOut,
            WaitError::Os(source) => Error::Os {
                op: "eventfd",
                source,
            },
        }
    }
}

impl EventSignal {
    /// One wait of a blocking ring call: for a kick, the peer's death, or
    /// `extra` to become readable, until `deadline` (`None`: no limit), but
    /// never longer than [`LIVENESS_POLL`], so the caller re-checks the ring
    /// (a peer that clears its live byte without kicking is still noticed).
    ///
    /// The peer's death is reported once as a wake-up and remembered in
    /// `peer_gone`; after it the call returns at once, and the caller's
    /// non-blocking operations report what is left, then `Closed`.
    ///
    /// # Errors
    ///
    /// [`Error::TimedOut`] once `deadline` has passed; [`Error::Os`].
    pub fn wait_slice(
        &self,
        peer_gone: &mut bool,
        extra: Option<BorrowedFd<'_>>,
        deadline: Option<Instant>,
    ) -> Result<Woken, Error> {
        let woken = Woken {
            kicked: true,
            extra: false,
        };
        if *peer_gone {
            return Ok(woken);
        }
        let now = Instant::now();
        let slice = match deadline {
            Some(d) if d <= now => return Err(Error::TimedOut),
            Some(d) => (d - now).min(LIVENESS_POLL),
            None => LIVENESS_POLL,
        };
        match self.wait_with(extra, Some(slice)) {
            Ok(w) => Ok(w),
            Err(WaitError::PeerGone) => {
                *peer_gone = true;
                Ok(woken)
            }
            Err(WaitError::TimedOut) if deadline.is_some_and(|d| Instant::now() >= d) => {
                Err(Error::TimedOut)
            }
            Err(WaitError::TimedOut) => Ok(Woken {
                kicked: false,
                extra: false,
            }),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn kick_wakes_the_other_side_and_counts() {
        let (a, b) = pair().unwrap();
        a.notify().unwrap();
        a.notify().unwrap();
        b.wait().unwrap();
        assert_eq!(a.kicks(), 2);
        assert_eq!(b.wakeups(), 1, "two kicks merge into one wake-up");
        assert!(matches!(
            b.wait_timeout(Some(Duration::from_millis(20))),
            Err(WaitError::TimedOut)
        ));
    }

    #[test]
    fn kick_from_another_thread_ends_a_blocked_wait() {
        let (a, mut b) = pair().unwrap();
        b.set_spin(Duration::ZERO);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            a.notify().unwrap();
        });
        let start = Instant::now();
        b.wait_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(20));
        t.join().unwrap();
    }

    #[test]
    fn hang_up_ends_a_wait_with_peer_gone() {
        let (_a, b) = pair().unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let b = b.with_hangup(ours.into());
        assert!(!b.peer_gone());
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(theirs);
        });
        let start = Instant::now();
        assert!(matches!(b.wait(), Err(WaitError::PeerGone)));
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(b.peer_gone());
        t.join().unwrap();
    }

    #[test]
    fn wrong_kind_of_fd_is_not_an_eventfd() {
        let (r, _w) = rustix::pipe::pipe().unwrap();
        match EventFd::from_fd(r) {
            Err(Error::BadFd(FdProblem::NotEventfd { found })) => {
                assert!(found.starts_with("pipe:"), "{found}")
            }
            other => panic!("expected NotEventfd, got {other:?}"),
        }
        let e = EventFd::new().unwrap();
        let back = EventFd::from_fd(OwnedFd::from(e)).unwrap();
        back.kick().unwrap();
        assert_eq!(back.take().unwrap(), 1);
        assert_eq!(back.take().unwrap(), 0);
    }
}
