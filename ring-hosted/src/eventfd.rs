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
use std::sync::Mutex;
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
    ///
    /// # Examples
    ///
    /// Kicks add up in the counter until somebody takes it; taking never
    /// blocks:
    ///
    /// ```
    /// use ring_hosted::eventfd::EventFd;
    ///
    /// let efd = EventFd::new()?;
    /// efd.kick()?;
    /// efd.kick()?;
    /// assert_eq!(efd.take()?, 2);
    /// assert_eq!(efd.take()?, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    ///
    /// # Examples
    ///
    /// An eventfd comes back whole; a pipe is named for what it is:
    ///
    /// ```
    /// use ring_hosted::eventfd::EventFd;
    /// use ring_hosted::{Error, FdProblem};
    /// use std::os::fd::OwnedFd;
    ///
    /// let back = EventFd::from_fd(OwnedFd::from(EventFd::new()?))?;
    /// back.kick()?;
    /// assert_eq!(back.take()?, 1);
    ///
    /// let (reader, _writer) = std::io::pipe()?;
    /// match EventFd::from_fd(OwnedFd::from(reader)) {
    ///     Err(Error::BadFd(FdProblem::NotEventfd { found })) => assert!(found.starts_with("pipe:")),
    ///     other => panic!("a pipe passed for an eventfd: {other:?}"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    /// A counter so full that one more would overflow it (`EAGAIN`, which
    /// a peer can cause by writing 0xffff_ffff_ffff_fffe into its own
    /// eventfd) counts as delivered: the eventfd is readable already, so
    /// its reader is signalled.
    ///
    /// # Errors
    ///
    /// The write's OS error (only possible for a broken fd).
    pub fn kick(&self) -> io::Result<()> {
        match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
            Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
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

/// What ended a [`EventSignal::wait_event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Woken {
    /// The peer kicked us.
    pub kicked: bool,
    /// The extra fd is readable (or hung up).
    pub extra: bool,
    /// The output fd of [`EventSignal::wait_io`] is writable (or hung up).
    pub writable: bool,
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

/// The longest spin [`EventSignal::set_spin`] accepts: a spin is a
/// shortcut around a sleep, never a way to wait.
pub const MAX_SPIN: Duration = Duration::from_secs(1);

/// The default [liveness re-check](EventSignal::set_liveness): the longest
/// a wait sleeps without returning for the caller to look at the ring
/// again. It bounds how late we notice a peer that cleared its live byte
/// without kicking us (a foreign vchan peer may); between two of our own
/// processes the kick or the hang-up always comes first.
pub const LIVENESS_POLL: Duration = Duration::from_millis(50);

/// Why each wait of an [`EventSignal`] ended, counted: every wake-up has
/// exactly one cause. A test that turns the liveness re-check off and
/// finds `lapses == 0` knows that no wake-up was lost and rescued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WakeCounts {
    /// Waits ended by the peer's kick.
    pub kicks: u64,
    /// Waits ended by the hang-up fd (death, close, or a notice).
    pub hangups: u64,
    /// Waits ended by the extra fd of [`EventSignal::wait_event`].
    pub extra: u64,
    /// Waits ended by the liveness re-check with nothing to report.
    pub lapses: u64,
    /// Waits ended by the timeout.
    pub timeouts: u64,
}

/// A message one of our processes sends the other on the hang-up socket
/// (the rendezvous socket), 9 bytes: a tag and a little-endian `u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// "I will write no more; I wrote this many bytes in all": a half-close
    /// for rings that have none of their own (vchan). Sent only after the
    /// last byte is published.
    WriteClosed(u64),
    /// "I am finished: I received this many bytes and passed them all on."
    Done(u64),
}

impl Notice {
    const LEN: usize = 9;

    fn encode(self) -> [u8; Self::LEN] {
        let (tag, v) = match self {
            Notice::WriteClosed(v) => (b'E', v),
            Notice::Done(v) => (b'D', v),
        };
        let mut b = [0u8; Self::LEN];
        b[0] = tag;
        b[1..].copy_from_slice(&v.to_le_bytes());
        b
    }

    fn decode(b: &[u8; Self::LEN]) -> Option<Notice> {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[1..]);
        let v = u64::from_le_bytes(v);
        match b[0] {
            b'E' => Some(Notice::WriteClosed(v)),
            b'D' => Some(Notice::Done(v)),
            _ => None,
        }
    }
}

/// What the hang-up socket has told us.
#[derive(Debug, Default)]
struct HangupState {
    /// Bytes of a notice read so far.
    partial: [u8; Notice::LEN],
    have: usize,
    write_closed: Option<u64>,
    done: Option<u64>,
    /// End of file, an error, or a notice we do not understand.
    gone: bool,
}

/// The event channel between two processes: kick the peer's eventfd, wait
/// on ours, and watch a hang-up fd for the peer's death. Implements
/// [`ring_core::signal::Signal`], so ring-core's blocking layer does the
/// arming, re-checking and kicking; this type only sleeps and wakes.
///
/// # Waiting
///
/// A wait ends on the peer's kick, the hang-up fd, the extra fd of
/// [`wait_event`](Self::wait_event), the timeout, or the liveness re-check
/// (a wake-up with nothing to report, after which the caller looks at the
/// ring again). Each cause is counted ([`wake_counts`](Self::wake_counts)).
///
/// The timeout is an *idle* timeout: a wait fails with
/// [`WaitError::TimedOut`] once the peer has not been heard from (no kick,
/// no hang-up) for that long across consecutive waits. Once a wait has
/// failed so, the count starts again: a caller that chooses to wait on
/// gets a whole timeout more.
#[derive(Debug)]
pub struct EventSignal {
    kick: EventFd,
    wake: EventFd,
    hangup: Option<OwnedFd>,
    /// The hang-up fd is a socket to one of our processes, carrying
    /// [`Notice`]s; else (a pidfd) readable only means gone.
    notices: bool,
    spin: Duration,
    timeout: Option<Duration>,
    liveness: Option<Duration>,
    kicks: AtomicU64,
    counts: Mutex<WakeCounts>,
    /// When the current stretch of waits without news began.
    quiet_since: Mutex<Option<Instant>>,
    state: Mutex<HangupState>,
}

/// The liveness re-check a new [`EventSignal`] gets: [`LIVENESS_POLL`],
/// or the `RING_LIVENESS_MS` environment variable (`0`: off), which lets
/// tests of whole processes make a lost wake-up hang, and so fail.
pub(crate) fn default_liveness() -> Option<Duration> {
    match std::env::var("RING_LIVENESS_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(0) => None,
        Some(ms) => Some(Duration::from_millis(ms)),
        None => Some(LIVENESS_POLL),
    }
}

impl EventSignal {
    /// A signal that writes `kick` to wake the peer and waits on `wake`.
    ///
    /// # Examples
    ///
    /// Wiring two signals by hand, one eventfd per direction (what
    /// [`pair`] does, and what the rendezvous does across processes): each
    /// side kicks the eventfd the other waits on.
    ///
    /// ```
    /// use ring_core::signal::Signal;
    /// use ring_hosted::eventfd::{EventFd, EventSignal};
    /// use std::os::fd::{AsFd, OwnedFd};
    /// use std::time::Duration;
    ///
    /// let (to_b, to_a) = (EventFd::new()?, EventFd::new()?);
    /// let dup = |e: &EventFd| -> std::io::Result<OwnedFd> { e.as_fd().try_clone_to_owned() };
    /// let a = EventSignal::new(EventFd::from_fd(dup(&to_b)?)?, EventFd::from_fd(dup(&to_a)?)?);
    /// let b = EventSignal::new(to_a, to_b);
    ///
    /// a.notify()?;
    /// b.wait_timeout(Some(Duration::from_secs(10)))?;
    /// assert_eq!((a.kicks(), b.wakeups()), (1, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(kick: EventFd, wake: EventFd) -> Self {
        EventSignal {
            kick,
            wake,
            hangup: None,
            notices: false,
            spin: DEFAULT_SPIN,
            timeout: None,
            liveness: default_liveness(),
            kicks: AtomicU64::new(0),
            counts: Mutex::new(WakeCounts::default()),
            quiet_since: Mutex::new(None),
            state: Mutex::new(HangupState::default()),
        }
    }

    /// A signal for a peer that neither kicks nor is kicked: two private
    /// eventfds nobody else sees, and waits that look at the ring again
    /// every `interval` (each such look counts as a lapse).
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if eventfds cannot be made.
    ///
    /// # Examples
    ///
    /// With nobody to kick it, a wait comes back after `interval` for the
    /// caller to look at the ring again:
    ///
    /// ```
    /// use ring_hosted::eventfd::EventSignal;
    /// use std::time::Duration;
    ///
    /// let signal = EventSignal::polling(Duration::from_millis(5))?;
    /// assert_eq!(signal.spin(), Duration::ZERO);
    /// signal.wait_timeout(Some(Duration::from_secs(10)))?;
    /// assert_eq!(signal.wake_counts().lapses, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn polling(interval: Duration) -> Result<Self, Error> {
        let mut s = EventSignal::new(EventFd::new()?, EventFd::new()?);
        s.liveness = Some(interval.max(Duration::from_micros(1)));
        s.spin = Duration::ZERO;
        Ok(s)
    }

    /// Watches `fd`, the rendezvous socket to the peer, while waiting: it
    /// carries the peer's [`Notice`]s, and its end of file (the peer's
    /// process exited or closed it) fails waits with
    /// [`WaitError::PeerGone`].
    ///
    /// # Examples
    ///
    /// The peer's end of the socket closing (as the kernel closes it when
    /// the peer's process dies) ends a wait at once:
    ///
    /// ```
    /// use ring_hosted::eventfd::{self, WaitError};
    /// use std::os::unix::net::UnixStream;
    /// use std::time::Duration;
    ///
    /// let (_theirs, ours) = eventfd::pair()?;
    /// let (sock, peer_sock) = UnixStream::pair()?;
    /// let ours = ours.with_hangup(sock.into());
    /// assert!(ours.carries_notices() && !ours.peer_gone());
    ///
    /// drop(peer_sock);
    /// let waited = ours.wait_timeout(Some(Duration::from_secs(10)));
    /// assert!(matches!(waited, Err(WaitError::PeerGone)));
    /// assert!(ours.peer_gone());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_hangup(mut self, fd: OwnedFd) -> Self {
        self.set_hangup(fd);
        self
    }

    /// Sets (or replaces) the hang-up socket; see
    /// [`with_hangup`](Self::with_hangup).
    pub fn set_hangup(&mut self, fd: OwnedFd) {
        self.hangup = Some(fd);
        self.notices = true;
    }

    /// Watches `fd`, which becomes readable when the peer is gone (a
    /// pidfd of the peer's process), while waiting. It carries no notices.
    pub fn set_watch(&mut self, fd: OwnedFd) {
        self.hangup = Some(fd);
        self.notices = false;
    }

    /// Whether the hang-up fd is a socket that carries [`Notice`]s (one of
    /// our own processes is the peer).
    pub fn carries_notices(&self) -> bool {
        self.hangup.is_some() && self.notices
    }

    /// Sets how long a blocking call spins (re-checking the ring without
    /// arming) before it sleeps, at most [`MAX_SPIN`]. Zero disables
    /// spinning. A spin ends early when the peer hangs up.
    ///
    /// # Examples
    ///
    /// ```
    /// use ring_hosted::eventfd::{self, DEFAULT_SPIN, MAX_SPIN};
    /// use std::time::Duration;
    ///
    /// let (mut signal, _peer) = eventfd::pair()?;
    /// assert_eq!(signal.spin(), DEFAULT_SPIN);
    /// signal.set_spin(Duration::ZERO); // a saturated machine: sleep at once
    /// assert_eq!(signal.spin(), Duration::ZERO);
    /// signal.set_spin(Duration::from_secs(60)); // capped
    /// assert_eq!(signal.spin(), MAX_SPIN);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin.min(MAX_SPIN);
    }

    /// The spin budget.
    pub fn spin(&self) -> Duration {
        self.spin
    }

    /// Sets the idle timeout (see the type's docs); `None`: none.
    ///
    /// # Examples
    ///
    /// A peer that stays silent for the timeout fails the wait (here
    /// [`Signal::wait`], the wait ring-core's blocking layer calls):
    ///
    /// ```
    /// use ring_core::signal::Signal;
    /// use ring_hosted::eventfd::{self, WaitError};
    /// use std::time::{Duration, Instant};
    ///
    /// let (mut signal, _silent_peer) = eventfd::pair()?;
    /// signal.set_timeout(Some(Duration::from_millis(20)));
    /// assert_eq!(signal.timeout(), Some(Duration::from_millis(20)));
    /// let start = Instant::now();
    /// assert!(matches!(signal.wait(), Err(WaitError::TimedOut)));
    /// assert!(start.elapsed() >= Duration::from_millis(20));
    /// assert_eq!(signal.wake_counts().timeouts, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// The idle timeout (`None`: no limit).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Sets the liveness re-check (`None`: off, so a wait ends only on a
    /// kick, the hang-up fd, the extra fd or the timeout, and a lost
    /// wake-up blocks until the timeout).
    ///
    /// # Examples
    ///
    /// With a short re-check a silent wait comes back with nothing to
    /// report (a lapse); with none, only the timeout ends it:
    ///
    /// ```
    /// use ring_hosted::eventfd::{self, WaitError};
    /// use std::time::Duration;
    ///
    /// let (mut signal, _silent_peer) = eventfd::pair()?;
    /// signal.set_liveness(Some(Duration::from_millis(5)));
    /// signal.wait_timeout(Some(Duration::from_secs(10)))?;
    /// assert_eq!(signal.wake_counts().lapses, 1);
    ///
    /// signal.set_liveness(None);
    /// let waited = signal.wait_timeout(Some(Duration::from_millis(20)));
    /// assert!(matches!(waited, Err(WaitError::TimedOut)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_liveness(&mut self, every: Option<Duration>) {
        self.liveness = every;
    }

    /// The liveness re-check in force.
    pub fn liveness(&self) -> Option<Duration> {
        self.liveness
    }

    /// Kicks sent to the peer so far.
    pub fn kicks(&self) -> u64 {
        self.kicks.load(Ordering::Relaxed)
    }

    /// Wake-ups taken so far that ended with the peer's kick.
    pub fn wakeups(&self) -> u64 {
        self.wake_counts().kicks
    }

    /// How every wait so far ended.
    pub fn wake_counts(&self) -> WakeCounts {
        *lock(&self.counts)
    }

    fn count(&self, f: impl FnOnce(&mut WakeCounts)) {
        f(&mut lock(&self.counts));
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

    /// Whether the peer is known to be gone, looking at the hang-up fd
    /// once without blocking (and reading any notices it carries).
    pub fn peer_gone(&self) -> bool {
        self.poll_hangup(Some(Duration::ZERO));
        lock(&self.state).gone
    }

    /// What the peer said with [`Notice::WriteClosed`], if it did.
    pub fn peer_write_closed(&self) -> Option<u64> {
        lock(&self.state).write_closed
    }

    /// What the peer said with [`Notice::Done`], if it did.
    pub fn peer_done(&self) -> Option<u64> {
        lock(&self.state).done
    }

    /// Sends `notice` to the peer over the hang-up socket.
    ///
    /// # Errors
    ///
    /// [`Error::PeerGone`] if the peer's end of the socket is gone;
    /// [`Error::Os`] if there is no hang-up fd or the write fails otherwise.
    pub fn send_notice(&self, notice: Notice) -> Result<(), Error> {
        let Some(h) = self.hangup.as_ref().filter(|_| self.notices) else {
            return Err(Error::Os {
                op: "send notice",
                source: io::Error::new(io::ErrorKind::Unsupported, "no socket to the peer"),
            });
        };
        let bytes = notice.encode();
        let sent = match rustix::net::send(h, &bytes, rustix::net::SendFlags::NOSIGNAL) {
            Ok(n) => n,
            // The peer's end of the socket is gone: so is the peer.
            Err(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET) => {
                return Err(Error::PeerGone)
            }
            Err(e) => return Err(Error::os("send notice")(e)),
        };
        if sent != bytes.len() {
            return Err(Error::Os {
                op: "send notice",
                source: io::Error::new(io::ErrorKind::WriteZero, "short write"),
            });
        }
        Ok(())
    }

    /// Reads what the hang-up fd holds without blocking: notices, or end
    /// of file (the peer is gone). `readable`: poll said so.
    fn drain_hangup(&self) {
        let Some(h) = &self.hangup else {
            return;
        };
        let mut st = lock(&self.state);
        if !self.notices {
            // A pidfd: readable means the process is gone.
            st.gone = true;
            return;
        }
        // Bounded: a peer that floods the socket is read 64 notices at a
        // time; poll reports the rest on the next wait.
        for _ in 0..64 {
            if st.gone {
                return;
            }
            let have = st.have;
            let Some(rest) = st.partial.get_mut(have..) else {
                st.gone = true;
                return;
            };
            // Never block here: the socket itself may be in blocking mode.
            match rustix::net::recv(h, rest, rustix::net::RecvFlags::DONTWAIT).map(|(n, _)| n) {
                Ok(0) => st.gone = true,
                Ok(n) => {
                    st.have += n;
                    if st.have == Notice::LEN {
                        st.have = 0;
                        match Notice::decode(&st.partial) {
                            Some(Notice::WriteClosed(v)) => st.write_closed = Some(v),
                            Some(Notice::Done(v)) => st.done = Some(v),
                            None => st.gone = true,
                        }
                    }
                }
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => return,
                // Not a socket we can read (a pidfd, say): readable means
                // the peer is gone.
                Err(_) => st.gone = true,
            }
        }
    }

    /// Polls the hang-up fd alone for up to `timeout` and reads it if it
    /// fired.
    fn poll_hangup(&self, timeout: Option<Duration>) {
        let Some(h) = &self.hangup else {
            return;
        };
        let mut fds = [PollFd::new(h, PollFlags::IN | PollFlags::RDHUP)];
        let ts = timeout.map(timespec);
        if matches!(rustix::event::poll(&mut fds, ts.as_ref()), Ok(n) if n > 0) {
            self.drain_hangup();
        }
    }

    fn took(&self, n: u64) -> bool {
        if n > 0 {
            self.count(|c| c.kicks += 1);
            true
        } else {
            false
        }
    }

    /// Waits for a kick with an explicit timeout (`None`: the signal's
    /// own), with the liveness re-check: the wait behind [`Signal::wait`].
    ///
    /// # Errors
    ///
    /// [`WaitError::PeerGone`], [`WaitError::TimedOut`], or an OS error.
    pub fn wait_timeout(&self, timeout: Option<Duration>) -> Result<(), WaitError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        self.wait_event(None, deadline).map(drop)
    }

    /// One wait: for a kick, the peer's death, `extra` to become readable
    /// or `deadline` (`None`: the idle timeout alone), but no longer than
    /// the liveness re-check. Returns at once if a kick is pending or the
    /// peer is known to be gone.
    ///
    /// # Errors
    ///
    /// [`WaitError::PeerGone`] once the hang-up fd fires (a pending kick is
    /// reported first), [`WaitError::TimedOut`] at `deadline` or after the
    /// idle timeout, or an OS error.
    pub fn wait_event(
        &self,
        extra: Option<BorrowedFd<'_>>,
        deadline: Option<Instant>,
    ) -> Result<Woken, WaitError> {
        self.wait_io(extra, None, deadline)
    }

    /// As [`wait_event`](Self::wait_event), also ending when `output`
    /// becomes writable (a copy loop with bytes it could not yet write).
    ///
    /// # Errors
    ///
    /// As [`wait_event`](Self::wait_event).
    pub fn wait_io(
        &self,
        extra: Option<BorrowedFd<'_>>,
        output: Option<BorrowedFd<'_>>,
        deadline: Option<Instant>,
    ) -> Result<Woken, WaitError> {
        let nothing = Woken {
            kicked: false,
            extra: false,
            writable: false,
        };
        if lock(&self.state).gone {
            return Err(WaitError::PeerGone);
        }
        let start = Instant::now();
        let idle_end = self.timeout.map(|t| {
            let since = *lock(&self.quiet_since).get_or_insert(start);
            since + t
        });
        let end = match (deadline, idle_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let lapse = self.liveness.map(|l| start + l);
        loop {
            let now = Instant::now();
            if end.is_some_and(|e| now >= e) {
                self.count(|c| c.timeouts += 1);
                if idle_end.is_some_and(|e| now >= e) {
                    // Reported: a caller that waits again gets a whole
                    // timeout more, not an instant failure.
                    self.heard();
                }
                return Err(WaitError::TimedOut);
            }
            if lapse.is_some_and(|l| now >= l) {
                self.count(|c| c.lapses += 1);
                return Ok(nothing);
            }
            let until = match (end, lapse) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let ts = until.map(|u| timespec(u.saturating_duration_since(now)));
            // The eventfd, then the hang-up fd and the extra fd if present;
            // a fixed array, so waiting never allocates.
            let mut fds = [
                PollFd::from_borrowed_fd(self.wake.as_fd(), PollFlags::IN),
                PollFd::from_borrowed_fd(self.wake.as_fd(), PollFlags::empty()),
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
            let mut out_at = None;
            if let (Some(o), Some(slot)) = (output, fds.get_mut(used)) {
                *slot = PollFd::from_borrowed_fd(o, PollFlags::OUT);
                out_at = Some(used);
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
            let (hung, extra_ready, writable) = (fired(hang_at), fired(extra_at), fired(out_at));
            let seen = Woken {
                kicked: false,
                extra: extra_ready,
                writable,
            };
            // The eventfd is read only when poll says it holds a kick: a
            // wait costs one system call more than the poll only when it
            // ends with a kick.
            if fired(Some(0)) && self.took(self.wake.take().map_err(WaitError::Os)?) {
                self.heard();
                return Ok(Woken {
                    kicked: true,
                    ..seen
                });
            }
            if hung {
                self.heard();
                self.count(|c| c.hangups += 1);
                self.drain_hangup();
                if lock(&self.state).gone {
                    return Err(WaitError::PeerGone);
                }
                // A notice: news the caller must look at.
                return Ok(seen);
            }
            if extra_ready || writable {
                self.count(|c| c.extra += 1);
                return Ok(seen);
            }
        }
    }

    /// Counts a wake-up by the peer's kick that a wait of somebody else's
    /// took (the tokio adapters' reactor), so the counters keep showing the
    /// cause of every wake-up.
    #[cfg(feature = "tokio")]
    pub(crate) fn note_kick(&self) {
        self.heard();
        self.count(|c| c.kicks += 1);
    }

    /// As [`note_kick`](Self::note_kick), for a wake-up by the hang-up fd.
    #[cfg(feature = "tokio")]
    pub(crate) fn note_hangup(&self) {
        self.heard();
        self.count(|c| c.hangups += 1);
    }

    /// The peer was heard from: the idle timeout starts again.
    fn heard(&self) {
        *lock(&self.quiet_since) = None;
    }
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: d.subsec_nanos().into(),
    }
}

/// Locks `m`, taking the data of a poisoned lock as it is (the state
/// behind these locks is a few plain fields, consistent after any panic).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Signal for EventSignal {
    type Error = WaitError;

    fn notify(&self) -> Result<(), WaitError> {
        self.kicks.fetch_add(1, Ordering::Relaxed);
        self.kick.kick().map_err(WaitError::Os)
    }

    fn wait(&self) -> Result<(), WaitError> {
        self.wait_event(None, None).map(drop)
    }

    fn is_peer_gone(error: &WaitError) -> bool {
        matches!(error, WaitError::PeerGone)
    }

    fn spin(&self, ready: &mut dyn FnMut() -> bool) -> bool {
        if self.spin.is_zero() {
            return ready();
        }
        let start = Instant::now();
        let mut turns = 0u32;
        loop {
            if ready() {
                return true;
            }
            turns = turns.wrapping_add(1);
            if turns.is_multiple_of(256) {
                if start.elapsed() >= self.spin {
                    return false;
                }
                // A peer that hung up will never make us ready.
                if self.hangup.is_some() && self.peer_gone() {
                    return false;
                }
            }
            std::hint::spin_loop();
        }
    }

    fn peer_write_closed(&self) -> Option<u64> {
        EventSignal::peer_write_closed(self)
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
///
/// # Examples
///
/// ```
/// use ring_core::signal::Signal;
/// use ring_hosted::eventfd::{self, WaitError};
/// use std::time::Duration;
///
/// let (a, b) = eventfd::pair()?;
/// a.notify()?;
/// b.wait_timeout(Some(Duration::from_secs(10)))?;
/// assert_eq!(b.wakeups(), 1);
/// // The kick was taken: the next wait has nothing to find.
/// let again = b.wait_timeout(Some(Duration::from_millis(10)));
/// assert!(matches!(again, Err(WaitError::TimedOut)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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

impl From<WaitError> for Error {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::PeerGone => Error::PeerGone,
            WaitError::TimedOut => Error::TimedOut,
            WaitError::Os(source) => Error::Os {
                op: "eventfd",
                source,
            },
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
    fn a_wait_after_an_idle_timeout_gets_a_whole_timeout_again() {
        let (_a, mut b) = pair().unwrap();
        b.set_spin(Duration::ZERO);
        b.set_timeout(Some(Duration::from_millis(50)));
        for _ in 0..2 {
            let start = Instant::now();
            assert!(matches!(b.wait(), Err(WaitError::TimedOut)));
            assert!(
                start.elapsed() >= Duration::from_millis(50),
                "failed after {:?}",
                start.elapsed()
            );
        }
        assert_eq!(b.wake_counts().timeouts, 2);
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
