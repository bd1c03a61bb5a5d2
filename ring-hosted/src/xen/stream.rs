//! A Xen vchan as a [`PollStream`](crate::stream::PollStream): the same [`VchanStream`] that runs
//! between two processes over a memfd, here over grant mappings and woken
//! by the event channel, so one poll loop (ring-cli's pipe, behind `ring
//! listen --xen` and `ring connect --xen`) drives both.
//!
//! [`XenSignal`] is the [`StreamSignal`]: its wait polls the
//! `/dev/xen/evtchn` fd (readable while an event is pending, like an
//! eventfd with a kick in it) beside the caller's own fds, and, when the
//! peer's domain is watched ([`XenSignal::watch_peer_domain`]), the
//! xenstore connection whose `@releaseDomain` events tell that the domain
//! was destroyed: the one death no unmap notification reports.
//!
//! How the peer's end shows:
//!
//! - **close, or death of its process**: its live byte goes to 0 (by its
//!   close, or by the kernel's unmap notification) and an event arrives;
//!   the stream reads what is left, then end of stream. vchan cannot tell
//!   these two apart.
//! - **its domain destroyed**: the watch fires; every wait then returns
//!   [`WaitError::PeerGone`], and the stream reports [`Error::PeerGone`](crate::Error::PeerGone)
//!   once it has read what the peer had published.
//! - **silence**: the liveness re-check (every [`LIVENESS_POLL`](crate::eventfd::LIVENESS_POLL), or
//!   `RING_LIVENESS_MS`; `0` turns it off) returns waits for a look at the
//!   live byte, in case a peer cleared it without an event.
//!
//! # Example (against the fakes of the `fakes` feature)
//!
//! ```
//! # #[cfg(feature = "fakes")] {
//! use ring_hosted::stream::PollStream;
//! use ring_hosted::xen::fake::FakeXen;
//! use ring_hosted::xen::vchan::{self, ServerConfig};
//! use ring_hosted::xen::xenstore::XenStore;
//! use std::time::{Duration, Instant};
//!
//! let xen = FakeXen::new(); // a FAKE host
//! let xenstored = xen.xenstore(0);
//! xenstored.introduce(7);
//! let config = ServerConfig { peer: 7, path: "data/vchan/7/1".into(), read_min: 0, write_min: 0 };
//! let mut xs = XenStore::new(xenstored.connect());
//! let server = vchan::serve(&xen.gntalloc(0), xen.evtchn(0), &mut xs, &config)?;
//! let mut server = server.into_stream();
//! assert!(!server.peer_connected());
//!
//! let mut xs7 = XenStore::new(xenstored.connect_as(7));
//! let path = "/local/domain/0/data/vchan/7/1";
//! let mut client = vchan::connect(&xen.gntdev(7), xen.evtchn(7), &mut xs7, 0, path)?.into_stream();
//! // The client's connect kicked us: the wait ends at once.
//! let w = server.wait_event(None, Some(Instant::now() + Duration::from_secs(10)))?;
//! assert!(w.kicked && server.peer_connected());
//! client.write_all(b"hi")?;
//! let mut buf = [0u8; 2];
//! server.recv(&mut buf)?;
//! assert_eq!(&buf, b"hi");
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use super::evtchn::{DomainWatch, EventChannel};
use super::xenstore::XenStore;
use super::DomId;
use crate::devmem::{DevError, MappedRegion};
use crate::eventfd::{WaitError, WakeCounts, Woken};
use crate::stream::{StreamSignal, VchanStream};
use ring_core::signal::Signal;
use rustix::event::{PollFd, PollFlags, Timespec};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A vchan stream between Xen domains: grant mappings for memory, an
/// event channel for wake-ups.
pub type XenStream = VchanStream<MappedRegion, XenSignal>;

/// An event channel as a [`StreamSignal`] (see the [module docs](self)).
#[derive(Debug)]
pub struct XenSignal {
    ev: EventChannel,
    domain: Option<DomainWatch>,
    timeout: Option<Duration>,
    liveness: Option<Duration>,
    gone: AtomicBool,
    sent: AtomicU64,
    counts: Mutex<WakeCounts>,
}

fn os(e: DevError) -> WaitError {
    WaitError::Os(std::io::Error::other(e))
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: d.subsec_nanos().into(),
    }
}

impl XenSignal {
    /// Wraps a bound event channel (taking over its domain watch, if it
    /// has one). The liveness re-check is
    /// [`LIVENESS_POLL`](crate::eventfd::LIVENESS_POLL), or
    /// `RING_LIVENESS_MS` from the environment (`0`: off).
    pub fn new(mut ev: EventChannel) -> Self {
        let domain = ev.take_domain_watch();
        let liveness = crate::eventfd::default_liveness();
        XenSignal {
            ev,
            domain,
            timeout: None,
            liveness,
            gone: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            counts: Mutex::new(WakeCounts::default()),
        }
    }

    /// Ends waits with [`WaitError::PeerGone`] once domain `peer` is
    /// destroyed, learnt through `store`, a xenstore connection of its own
    /// watching `@releaseDomain` (dom0, or a domain allowed to read the
    /// peer's home; elsewhere the watch never fires).
    ///
    /// # Errors
    ///
    /// xenstore errors; [`DevError::Closed`] if the domain is already gone.
    pub fn watch_peer_domain(
        &mut self,
        store: XenStore<std::fs::File>,
        peer: DomId,
    ) -> Result<(), DevError> {
        self.domain = Some(DomainWatch::new(store, peer)?);
        Ok(())
    }

    /// Sets the idle timeout of each blocking call (`None`: none).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// Sets the liveness re-check (`None`: off, so a lost event hangs
    /// until the caller's deadline).
    pub fn set_liveness(&mut self, every: Option<Duration>) {
        self.liveness = every;
    }

    /// Why each wait ended, counted (as [`EventSignal::wake_counts`](crate::eventfd::EventSignal::wake_counts):
    /// `hangups` counts the domain watch).
    pub fn wake_counts(&self) -> WakeCounts {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Events we sent the peer.
    pub fn kicks(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Our local port.
    pub fn port(&self) -> u32 {
        self.ev.port()
    }

    fn count(&self, f: impl FnOnce(&mut WakeCounts)) {
        f(&mut self.counts.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The domain watch's verdict after it fired (or on queued events).
    fn domain_gone(&self, readable: bool) -> Result<bool, WaitError> {
        let Some(watch) = &self.domain else {
            return Ok(false);
        };
        if watch.check(readable).map_err(os)? {
            self.gone.store(true, Ordering::Release);
            return Ok(true);
        }
        Ok(false)
    }

    /// Takes a pending event after poll said the device is readable:
    /// whether it was ours (unmasked again either way).
    fn take_event(&self) -> Result<bool, WaitError> {
        let port = self.ev.pending().map_err(os)?;
        if port != self.ev.port() {
            // Another port on a shared fd: unmask it so it is not lost.
            let dev = self.ev.device();
            let _ = dev.sys().write(dev.file().as_fd(), &port.to_ne_bytes());
            return Ok(false);
        }
        self.ev.unmask().map_err(os)?;
        Ok(true)
    }
}

impl Signal for XenSignal {
    type Error = WaitError;

    fn notify(&self) -> Result<(), WaitError> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.ev.send().map_err(os)
    }

    fn wait(&self) -> Result<(), WaitError> {
        self.wait_io(None, None, None).map(drop)
    }

    fn is_peer_gone(error: &WaitError) -> bool {
        matches!(error, WaitError::PeerGone)
    }
}

impl StreamSignal for XenSignal {
    fn wait_io(
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
        if self.gone.load(Ordering::Acquire) || self.domain_gone(false)? {
            return Err(WaitError::PeerGone);
        }
        let start = Instant::now();
        let end = [deadline, self.timeout.map(|t| start + t)]
            .into_iter()
            .flatten()
            .min();
        let lapse = self.liveness.map(|l| start + l);
        let dev = self.ev.device();
        loop {
            let now = Instant::now();
            if end.is_some_and(|e| now >= e) {
                self.count(|c| c.timeouts += 1);
                return Err(WaitError::TimedOut);
            }
            if lapse.is_some_and(|l| now >= l) {
                self.count(|c| c.lapses += 1);
                return Ok(nothing);
            }
            let until = [end, lapse].into_iter().flatten().min();
            let ts = until.map(|u| timespec(u.saturating_duration_since(now)));
            let evtchn = dev.sys().poll_fd(dev.file().as_fd());
            let polled = |store: Option<BorrowedFd<'_>>| {
                let mut fds = [
                    PollFd::from_borrowed_fd(evtchn, PollFlags::IN),
                    PollFd::from_borrowed_fd(evtchn, PollFlags::empty()),
                    PollFd::from_borrowed_fd(evtchn, PollFlags::empty()),
                    PollFd::from_borrowed_fd(evtchn, PollFlags::empty()),
                ];
                let mut at = [None; 3];
                let mut used = 1;
                for (i, (fd, flags)) in [
                    (store, PollFlags::IN),
                    (extra, PollFlags::IN),
                    (output, PollFlags::OUT),
                ]
                .into_iter()
                .enumerate()
                {
                    if let (Some(fd), Some(slot), Some(a)) = (fd, fds.get_mut(used), at.get_mut(i))
                    {
                        *slot = PollFd::from_borrowed_fd(fd, flags);
                        *a = Some(used);
                        used += 1;
                    }
                }
                let fds = fds.get_mut(..used).unwrap_or_default();
                match rustix::event::poll(fds, ts.as_ref()) {
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => return Ok(None),
                    Err(e) => return Err(WaitError::Os(e.into())),
                }
                let fired = |i: Option<usize>| {
                    i.and_then(|i| fds.get(i))
                        .is_some_and(|f| !f.revents().is_empty())
                };
                Ok(Some([
                    fired(Some(0)),
                    fired(at[0]),
                    fired(at[1]),
                    fired(at[2]),
                ]))
            };
            let fired = match &self.domain {
                Some(watch) => watch.with_fd(|fd| polled(Some(fd)))?,
                None => polled(None)?,
            };
            let Some([ours, store, extra_ready, writable]) = fired else {
                continue;
            };
            let seen = Woken {
                kicked: false,
                extra: extra_ready,
                writable,
            };
            if ours && self.take_event()? {
                self.count(|c| c.kicks += 1);
                return Ok(Woken {
                    kicked: true,
                    ..seen
                });
            }
            if store {
                self.count(|c| c.hangups += 1);
                if self.domain_gone(true)? {
                    return Err(WaitError::PeerGone);
                }
            }
            if extra_ready || writable {
                self.count(|c| c.extra += 1);
                return Ok(seen);
            }
        }
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    fn peer_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire) || matches!(self.domain_gone(false), Ok(true))
    }
}

impl super::vchan::XenVchan {
    /// This end as a [`XenStream`]: the non-blocking, pollable stream the
    /// `ring` command pipes through (the event channel and any domain
    /// watch move with it). A server's xenstore keys stay where they are:
    /// remove them with [`super::vchan::remove_published`].
    pub fn into_stream(self) -> XenStream {
        let (endpoint, ev) = self.into_parts();
        VchanStream::new(endpoint, XenSignal::new(ev))
    }
}
