//! Xen event channels through `/dev/xen/evtchn`, as a [`Signal`].
//!
//! The device hands out local ports by ioctl (bind an unbound port for a
//! peer domain to connect to, or bind to a peer's port), sends events by
//! ioctl (`NOTIFY`), delivers them as 4-byte port numbers to `read`, and
//! masks a port when it fires until its number is written back (unmask).

use super::xenstore::XenStore;
use super::{DomId, Driver, XenDevice};
use crate::devmem::{ioc, DevError, IoctlArg, IoctlRequest, IOC_NONE};
use ring_core::signal::Signal;
use std::mem::size_of;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The device's standard path.
pub const EVTCHN_PATH: &str = "/dev/xen/evtchn";

/// `struct ioctl_evtchn_bind_interdomain`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct BindInterdomain {
    /// The peer domain.
    pub remote_domain: u32,
    /// The peer's (unbound) port.
    pub remote_port: u32,
}

/// `struct ioctl_evtchn_bind_unbound_port`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct BindUnboundPort {
    /// The domain allowed to bind to the new port.
    pub remote_domain: u32,
}

/// `struct ioctl_evtchn_notify` and `struct ioctl_evtchn_unbind`: one port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct PortArg {
    /// A local port.
    pub port: u32,
}

/// An evtchn request taking one `T`, which `evtchn_ioctl`
/// (drivers/xen/evtchn.c) copies in whole with `copy_from_user(&op, uarg,
/// sizeof(op))` and never writes back (results come as the return value).
const fn evtchn_ioc<T>(nr: u8) -> (u32, IoctlArg) {
    (
        ioc(IOC_NONE, b'E', nr, size_of::<T>()),
        IoctlArg::Fixed(size_of::<T>()),
    )
}

/// `IOCTL_EVTCHN_BIND_INTERDOMAIN`.
#[allow(unsafe_code)]
pub const IOCTL_EVTCHN_BIND_INTERDOMAIN: IoctlRequest = {
    let (number, arg) = evtchn_ioc::<BindInterdomain>(1);
    // SAFETY: the kernel reads exactly one `struct
    // ioctl_evtchn_bind_interdomain` (see `evtchn_ioc`).
    unsafe { IoctlRequest::new(number, arg) }
};
/// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`.
#[allow(unsafe_code)]
pub const IOCTL_EVTCHN_BIND_UNBOUND_PORT: IoctlRequest = {
    let (number, arg) = evtchn_ioc::<BindUnboundPort>(2);
    // SAFETY: the kernel reads exactly one `struct
    // ioctl_evtchn_bind_unbound_port`.
    unsafe { IoctlRequest::new(number, arg) }
};
/// `IOCTL_EVTCHN_UNBIND`.
#[allow(unsafe_code)]
pub const IOCTL_EVTCHN_UNBIND: IoctlRequest = {
    let (number, arg) = evtchn_ioc::<PortArg>(3);
    // SAFETY: the kernel reads exactly one `struct ioctl_evtchn_unbind`.
    unsafe { IoctlRequest::new(number, arg) }
};
/// `IOCTL_EVTCHN_NOTIFY`.
#[allow(unsafe_code)]
pub const IOCTL_EVTCHN_NOTIFY: IoctlRequest = {
    let (number, arg) = evtchn_ioc::<PortArg>(4);
    // SAFETY: the kernel reads exactly one `struct ioctl_evtchn_notify`.
    unsafe { IoctlRequest::new(number, arg) }
};

/// One bound event-channel port.
///
/// As a [`Signal`]: `notify` sends an event to the peer; `wait` blocks
/// until an event arrives on our port (or the timeout passes), consumes it
/// and unmasks the port. Dropping it unbinds the port.
#[derive(Debug)]
pub struct EventChannel {
    dev: XenDevice,
    port: u32,
    timeout: Option<Duration>,
    domain: Option<DomainWatch>,
}

/// xenstore's special path whose watch fires whenever a domain is
/// destroyed.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// A xenstore connection watching [`RELEASE_DOMAIN`], and the key whose
/// absence means the peer's domain is gone.
#[derive(Debug)]
pub(crate) struct DomainWatch {
    store: std::sync::Mutex<XenStore<std::fs::File>>,
    key: String,
}

impl DomainWatch {
    /// Watches [`RELEASE_DOMAIN`] on `store` for domain `peer`'s end.
    ///
    /// # Errors
    ///
    /// xenstore errors; [`DevError::Closed`] if the domain is already gone.
    pub(crate) fn new(mut store: XenStore<std::fs::File>, peer: DomId) -> Result<Self, DevError> {
        store.watch(RELEASE_DOMAIN, "ring-hosted-peer-domain")?;
        let watch = DomainWatch {
            key: format!("/local/domain/{peer}/domid"),
            store: std::sync::Mutex::new(store),
        };
        let mut store = watch.store.lock().unwrap_or_else(|p| p.into_inner());
        store.take_queued_events();
        if watch.gone(&mut store)? {
            return Err(DevError::Closed);
        }
        drop(store);
        Ok(watch)
    }

    /// Runs `f` with the store's fd (to poll it beside others).
    pub(crate) fn with_fd<T>(&self, f: impl FnOnce(BorrowedFd<'_>) -> T) -> T {
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        f(store.stream_fd())
    }

    /// After poll said the store's fd is readable (`readable`), or to look
    /// at events already queued: whether the peer's domain is gone. Reads
    /// at most one message from the fd, so a readable fd never blocks it.
    ///
    /// # Errors
    ///
    /// xenstore errors.
    pub(crate) fn check(&self, readable: bool) -> Result<bool, DevError> {
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let mut news = store.take_queued_events() > 0;
        if readable {
            store.next_watch_event()?;
            store.take_queued_events();
            news = true;
        }
        if news {
            self.gone(&mut store)
        } else {
            Ok(false)
        }
    }

    /// Whether the peer's home is gone. A key we may not read (an
    /// unprivileged domain looking at another's home) counts as there.
    fn gone(&self, store: &mut XenStore<std::fs::File>) -> Result<bool, DevError> {
        match store.read(0, &self.key) {
            Ok(v) => Ok(v.is_none()),
            Err(DevError::Xenstore { errno, .. }) if errno == "EACCES" => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl EventChannel {
    /// Allocates a port that domain `remote` may bind to (the vchan server
    /// side), and unmasks it.
    ///
    /// # Errors
    ///
    /// I/O errors naming the device.
    ///
    /// # Examples
    ///
    /// Against the fake host of the `fakes` feature (on Xen, pass
    /// `XenDevice::open(EVTCHN_PATH)` instead): domain 0 offers a port to
    /// domain 7, which binds to it; an event sent one way ends a wait on the
    /// other.
    ///
    /// ```
    /// # #[cfg(feature = "fakes")] {
    /// use ring_core::signal::Signal;
    /// use ring_hosted::devmem::DevError;
    /// use ring_hosted::xen::{evtchn::EventChannel, fake::FakeXen};
    /// use std::time::Duration;
    ///
    /// let xen = FakeXen::new();
    /// let server = EventChannel::bind_unbound(xen.evtchn(0), 7)?;
    /// let mut client = EventChannel::bind_interdomain(xen.evtchn(7), 0, server.port())?;
    /// client.set_timeout(Some(Duration::from_millis(20)));
    /// assert!(matches!(client.wait(), Err(DevError::TimedOut { .. })));
    /// server.send()?;
    /// client.set_timeout(Some(Duration::from_secs(10)));
    /// client.wait()?;
    /// # }
    /// # Ok::<(), ring_hosted::devmem::DevError>(())
    /// ```
    pub fn bind_unbound(dev: XenDevice, remote: DomId) -> Result<Self, DevError> {
        let mut arg = BindUnboundPort {
            remote_domain: remote.into(),
        };
        let port = dev.ioctl(
            Driver::Evtchn,
            "bind unbound port",
            IOCTL_EVTCHN_BIND_UNBOUND_PORT,
            arg.as_mut_bytes(),
        )?;
        Self::bound(dev, port)
    }

    /// Binds to port `remote_port` of domain `remote` (the vchan client
    /// side), and unmasks the local port.
    ///
    /// # Errors
    ///
    /// I/O errors naming the device (e.g. the port is not offered to us).
    ///
    /// # Examples
    ///
    /// Only the domain a port was offered to may bind to it (against the fake
    /// host of the `fakes` feature):
    ///
    /// ```
    /// # #[cfg(feature = "fakes")] {
    /// use ring_hosted::xen::{evtchn::EventChannel, fake::FakeXen};
    ///
    /// let xen = FakeXen::new();
    /// let offered = EventChannel::bind_unbound(xen.evtchn(0), 7)?;
    /// assert!(EventChannel::bind_interdomain(xen.evtchn(8), 0, offered.port()).is_err());
    /// let ours = EventChannel::bind_interdomain(xen.evtchn(7), 0, offered.port())?;
    /// assert_ne!(ours.port(), offered.port()); // each end has a local port of its own
    /// # }
    /// # Ok::<(), ring_hosted::devmem::DevError>(())
    /// ```
    pub fn bind_interdomain(
        dev: XenDevice,
        remote: DomId,
        remote_port: u32,
    ) -> Result<Self, DevError> {
        let mut arg = BindInterdomain {
            remote_domain: remote.into(),
            remote_port,
        };
        let port = dev.ioctl(
            Driver::Evtchn,
            "bind interdomain",
            IOCTL_EVTCHN_BIND_INTERDOMAIN,
            arg.as_mut_bytes(),
        )?;
        Self::bound(dev, port)
    }

    fn bound(dev: XenDevice, port: i32) -> Result<Self, DevError> {
        let port = u32::try_from(port)
            .map_err(|_| DevError::invalid(dev.path(), format!("bad port {port}")))?;
        let ch = EventChannel {
            dev,
            port,
            timeout: None,
            domain: None,
        };
        ch.unmask()?;
        Ok(ch)
    }

    /// Our local port.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// The device path (for errors).
    pub fn path(&self) -> &Path {
        self.dev.path()
    }

    /// Sets how long [`Signal::wait`] blocks (`None`: for ever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// Also ends waits when domain `peer` is destroyed, as
    /// [`DevError::Closed`] (which [`Signal::is_peer_gone`] reports as the
    /// peer gone): `store`, a connection of its own, watches xenstore's
    /// [`RELEASE_DOMAIN`] and, on each event, looks for the peer's home.
    /// A destroyed domain's kernel runs no unmap notification and Xen sends
    /// no event on the channel, so without this a survivor blocked on the
    /// ring waits until its timeout. Needs a domain that may read the
    /// peer's home and receives `@releaseDomain` events (dom0); elsewhere
    /// the watch never fires and nothing changes. Real devices only: the
    /// wait polls the event-channel fd directly, beside the store's.
    ///
    /// # Errors
    ///
    /// xenstore errors; [`DevError::Closed`] if the peer's domain is
    /// already gone.
    pub fn watch_domain(
        &mut self,
        store: XenStore<std::fs::File>,
        peer: DomId,
    ) -> Result<(), DevError> {
        self.domain = Some(DomainWatch::new(store, peer)?);
        Ok(())
    }

    /// Hands over the domain watch of [`watch_domain`](Self::watch_domain),
    /// if any (a signal that polls the channel itself takes it).
    pub(crate) fn take_domain_watch(&mut self) -> Option<DomainWatch> {
        self.domain.take()
    }

    /// The device, for polling its fd.
    pub(crate) fn device(&self) -> &XenDevice {
        &self.dev
    }

    /// The wait of [`Signal::wait`] with a domain watch: polls both fds.
    /// `Ok(true)`: an event is pending on our port.
    fn wait_either(&self, watch: &DomainWatch) -> Result<bool, DevError> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut store = watch.store.lock().unwrap_or_else(|p| p.into_inner());
        if store.take_queued_events() > 0 {
            return if watch.gone(&mut store)? {
                Err(DevError::Closed)
            } else {
                Ok(false)
            };
        }
        let ts = self.timeout.map(|t| Timespec {
            tv_sec: t.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: t.subsec_nanos().into(),
        });
        let (ours, theirs) = {
            let evtchn = self.dev.file().as_fd();
            let xs = store.stream_fd();
            let mut fds = [
                PollFd::new(&evtchn, PollFlags::IN),
                PollFd::new(&xs, PollFlags::IN),
            ];
            loop {
                match poll(&mut fds, ts.as_ref()) {
                    Ok(_) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => {
                        return Err(DevError::io("poll", self.dev.path())(std::io::Error::from(
                            e,
                        )))
                    }
                }
            }
            (!fds[0].revents().is_empty(), !fds[1].revents().is_empty())
        };
        if !ours && !theirs {
            return Err(DevError::TimedOut {
                path: self.dev.path().to_path_buf(),
            });
        }
        if theirs {
            store.next_watch_event()?;
            store.take_queued_events();
            if watch.gone(&mut store)? {
                return Err(DevError::Closed);
            }
        }
        Ok(ours)
    }

    /// Sends an event to the peer.
    ///
    /// # Errors
    ///
    /// I/O errors naming the device.
    pub fn send(&self) -> Result<(), DevError> {
        let mut arg = PortArg { port: self.port };
        self.dev
            .ioctl(
                Driver::Evtchn,
                "notify",
                IOCTL_EVTCHN_NOTIFY,
                arg.as_mut_bytes(),
            )
            .map(drop)
    }

    /// Unmasks our port (writes its number to the device).
    ///
    /// # Errors
    ///
    /// I/O errors naming the device.
    pub fn unmask(&self) -> Result<(), DevError> {
        let n = self
            .dev
            .sys()
            .write(self.dev.file().as_fd(), &self.port.to_ne_bytes())
            .map_err(DevError::io("unmask", self.dev.path()))?;
        if n != 4 {
            return Err(DevError::invalid(self.dev.path(), "short unmask write"));
        }
        Ok(())
    }

    /// Blocks until an event is pending and returns its port (masked until
    /// [`unmask`](Self::unmask)). There is no deadline here: for a bounded
    /// wait use [`Signal::wait`] after [`set_timeout`](Self::set_timeout).
    ///
    /// # Errors
    ///
    /// I/O errors naming the device; [`DevError::Closed`] at end of file.
    pub fn pending(&self) -> Result<u32, DevError> {
        let mut buf = [0u8; 4];
        let n = self
            .dev
            .sys()
            .read(self.dev.file().as_fd(), &mut buf)
            .map_err(DevError::io("read pending port", self.dev.path()))?;
        match n {
            0 => Err(DevError::Closed),
            4 => Ok(u32::from_ne_bytes(buf)),
            n => Err(DevError::invalid(
                self.dev.path(),
                format!("short read ({n} bytes)"),
            )),
        }
    }
}

impl Signal for EventChannel {
    type Error = DevError;

    /// End of file on the device, or the peer's domain destroyed (see
    /// [`EventChannel::watch_domain`]).
    fn is_peer_gone(error: &DevError) -> bool {
        matches!(error, DevError::Closed)
    }

    fn notify(&self) -> Result<(), DevError> {
        self.send()
    }

    fn wait(&self) -> Result<(), DevError> {
        if let Some(watch) = &self.domain {
            if !self.wait_either(watch)? {
                // Only the watch fired: a wake-up with nothing pending.
                return Ok(());
            }
        } else if let Some(t) = self.timeout {
            let ready = self
                .dev
                .sys()
                .poll_readable(self.dev.file().as_fd(), Some(t))
                .map_err(DevError::io("poll", self.dev.path()))?;
            if !ready {
                return Err(DevError::TimedOut {
                    path: self.dev.path().to_path_buf(),
                });
            }
        }
        let port = self.pending()?;
        if port != self.port {
            // Another port on a shared fd: not ours, but unmask it so it is
            // not lost; the caller re-checks its ring either way.
            let _ = self
                .dev
                .sys()
                .write(self.dev.file().as_fd(), &port.to_ne_bytes());
            return Ok(());
        }
        self.unmask()
    }
}

impl AsFd for EventChannel {
    /// The device's fd: readable while an event is pending on one of its
    /// ports (what libxenvchan's `fd_for_select` hands out).
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.dev.file().as_fd()
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        let mut arg = PortArg { port: self.port };
        // Nothing useful to do if unbinding fails at drop.
        let _ = self.dev.ioctl(
            Driver::Evtchn,
            "unbind",
            IOCTL_EVTCHN_UNBIND,
            arg.as_mut_bytes(),
        );
    }
}
