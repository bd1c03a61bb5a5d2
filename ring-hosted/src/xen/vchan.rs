//! A vchan between Xen domains: grant pages for memory, an event channel
//! for signals, xenstore for the rendezvous, and `ring_core::vchan` for the
//! protocol. The set-up follows libxenvchan's order step by step, so a C
//! peer sees nothing unusual.
//!
//! **Server** ([`serve`]): allocate an unbound port for the peer and unmask
//! it; share the control page with an unmap notification that clears
//! `srv_live` and sends an event; share the external ring pages; lay out
//! the page ([`ring_core::vchan::serve`]); only then publish `ring-ref` and
//! `event-channel` under the path in one xenstore transaction (retried on
//! `EAGAIN`), each readable by the peer only.
//!
//! **Client** ([`connect`]): read both keys (missing or 0 is an error — the
//! C client does not wait either); bind to the server's port and unmask;
//! map the control page with an unmap notification on `cli_live`; validate
//! the orders and map the ring pages ([`ring_core::vchan::connect`]); mark
//! the client live; send one event.
//!
//! # Example (against the fakes of the `fakes` feature; on Xen, open the real devices instead)
//!
//! ```
//! # #[cfg(feature = "fakes")] {
//! use ring_hosted::xen::fake::FakeXen;
//! use ring_hosted::xen::vchan::{self, ServerConfig};
//! use ring_hosted::xen::xenstore::XenStore;
//!
//! let xen = FakeXen::new(); // a FAKE host: memfd pages, modelled ports
//! let xenstored = xen.xenstore(0);
//! xenstored.introduce(7); // the client's domain exists before we publish
//! let mut server_xs = XenStore::new(xenstored.connect());
//! let config = ServerConfig { peer: 7, path: "data/vchan/7/1".into(), read_min: 0, write_min: 0 };
//! let mut server = vchan::serve(&xen.gntalloc(0), xen.evtchn(0), &mut server_xs, &config)?;
//!
//! let mut client_xs = XenStore::new(xenstored.connect_as(7));
//! let path = "/local/domain/0/data/vchan/7/1";
//! let mut client = vchan::connect(&xen.gntdev(7), xen.evtchn(7), &mut client_xs, 0, path)?;
//! client.write_all(b"hi")?;
//! let mut buf = [0u8; 2];
//! server.recv(&mut buf)?;
//! assert_eq!(&buf, b"hi");
//! # }
//! # Ok::<(), ring_hosted::devmem::DevError>(())
//! ```
//!
//! On a Xen guest the same calls take `XenDevice::open(GNTALLOC_PATH)`,
//! `XenDevice::open(EVTCHN_PATH)` and `XenStore::open()`.

use super::evtchn::EventChannel;
use super::xenstore::{Access, Perm, XenStore};
use super::{gntalloc, gntdev, DomId, UnmapNotify, XenDevice};
use crate::devmem::{DevError, MappedRegion};
use ring_core::vchan::layout::{placement, CLI_LIVE, SRV_LIVE};
use ring_core::vchan::{
    self, Blocking, Endpoint, Live, Orders, Placement, RingPlace, ServerOptions, SetupError,
};
use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Instant;

/// The xenstore key holding the control page's grant ref.
pub const RING_REF: &str = "ring-ref";
/// The xenstore key holding the server's event-channel port.
pub const EVENT_CHANNEL: &str = "event-channel";

/// What a server needs to know.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The client's domain.
    pub peer: DomId,
    /// The xenstore directory for the keys, by convention
    /// `/local/domain/<server>/data/vchan/<client>/<port>` (relative paths
    /// resolve under our own domain's home).
    pub path: String,
    /// Minimum size of the ring we read (left), as libxenvchan's `read_min`.
    pub read_min: usize,
    /// Minimum size of the ring we write (right).
    pub write_min: usize,
}

/// One end of a Xen vchan: a blocking endpoint on an event channel, plus
/// the xenstore path it was published under.
#[derive(Debug)]
pub struct XenVchan {
    io: Blocking<MappedRegion, EventChannel>,
    path: String,
    peer: DomId,
}

fn join(dir: &str, key: &str) -> String {
    format!("{}/{key}", dir.trim_end_matches('/'))
}

/// Sets up a vchan server and publishes it (see the [module docs](self)).
///
/// # Errors
///
/// [`DevError`]s naming the device or xenstore key that failed; ring
/// set-up errors for impossible sizes.
///
/// # Examples
///
/// Needs a Xen domain with gntalloc, evtchn and xenbus, and a client in
/// domain 7 that connects within a minute (the module example runs the same
/// calls against the fakes):
///
/// ```no_run
/// use ring_hosted::devmem::DevError;
/// use ring_hosted::xen::vchan::{self, ServerConfig};
/// use ring_hosted::xen::{evtchn::EVTCHN_PATH, gntalloc::GNTALLOC_PATH};
/// use ring_hosted::xen::{xenstore::XenStore, XenDevice};
/// use std::time::Duration;
///
/// let mut store = XenStore::open()?;
/// let config = ServerConfig { peer: 7, path: "data/vchan/7/1".into(), read_min: 4096, write_min: 4096 };
/// let (gntalloc, evtchn) = (XenDevice::open(GNTALLOC_PATH)?, XenDevice::open(EVTCHN_PATH)?);
/// let mut server = vchan::serve(&gntalloc, evtchn, &mut store, &config)?;
/// server.event_channel_mut().set_timeout(Some(Duration::from_secs(60)));
/// match server.wait_for_client() {
///     Ok(()) => server.write_all(b"hello, domain 7")?,
///     Err(e) => eprintln!("no client came: {e}"),
/// }
/// server.close(Some(&mut store))?; // also removes its xenstore directory
/// # Ok::<(), DevError>(())
/// ```
pub fn serve<S: Read + Write>(
    gntalloc: &XenDevice,
    evtchn: XenDevice,
    store: &mut XenStore<S>,
    config: &ServerConfig,
) -> Result<XenVchan, DevError> {
    serve_with(gntalloc, evtchn, store, config, ServerOptions::default())
}

/// As [`serve`], laying out the page with `options` (e.g. indices that
/// start near `u32::MAX`, so a transfer crosses the 32-bit wrap early; any
/// start is valid vchan, libxenvchan starts at 0).
///
/// # Errors
///
/// As [`serve`].
pub fn serve_with<S: Read + Write>(
    gntalloc: &XenDevice,
    evtchn: XenDevice,
    store: &mut XenStore<S>,
    config: &ServerConfig,
    options: ServerOptions,
) -> Result<XenVchan, DevError> {
    let orders = Orders::for_sizes(config.read_min, config.write_min)
        .map_err(|e| DevError::Vchan(e.into()))?;
    let peer = config.peer;
    let ev = EventChannel::bind_unbound(evtchn, peer)?;
    let ctrl = gntalloc::share(
        gntalloc,
        peer,
        1,
        true,
        UnmapNotify {
            clear_byte: Some(SRV_LIVE),
            send_event: Some(ev.port()),
        },
    )?;
    let ctrl_ref =
        ctrl.refs.first().copied().ok_or_else(|| {
            DevError::invalid(gntalloc.path(), "no grant ref for the control page")
        })?;
    let mut grants = Vec::new();
    let mut place = |order: u8| -> Result<RingPlace<MappedRegion>, DevError> {
        match placement(order) {
            Placement::InPage { offset } => Ok(RingPlace {
                mem: ctrl.mem.clone(),
                offset,
            }),
            Placement::External { pages } => {
                let shared = gntalloc::share(gntalloc, peer, pages, true, UnmapNotify::default())?;
                grants.extend_from_slice(&shared.refs);
                Ok(RingPlace {
                    mem: shared.mem,
                    offset: 0,
                })
            }
        }
    };
    let left = place(orders.left())?;
    let right = place(orders.right())?;
    let endpoint = vchan::serve(ctrl.mem.clone(), left, right, orders, &grants, options)?;
    // Publish only now that the page is complete.
    let own = store.own_domid()?;
    let perms = [
        Perm {
            access: Access::None,
            domid: own,
        },
        Perm {
            access: Access::Read,
            domid: peer,
        },
    ];
    let ring_key = join(&config.path, RING_REF);
    let event_key = join(&config.path, EVENT_CHANNEL);
    store.transact(16, |xs, tx| {
        xs.write(tx, &ring_key, &ctrl_ref.to_string())?;
        xs.set_perms(tx, &ring_key, &perms)?;
        xs.write(tx, &event_key, &ev.port().to_string())?;
        xs.set_perms(tx, &event_key, &perms)
    })?;
    Ok(XenVchan {
        io: Blocking::new(endpoint, ev),
        path: config.path.clone(),
        peer,
    })
}

/// Blocks until a server has published both keys under `path`, or until
/// `deadline` (a xenstore watch on `path`, re-reading the keys after every
/// event; the watch is set before the first read, so a publish in between
/// is not missed). libxenvchan's client does not wait; callers such as
/// vchan-socket-proxy and Qubes watch like this themselves.
///
/// A key that is missing is not there yet. So is a key xenstored refuses
/// with `EACCES`: real xenstored answers `EACCES`, not `ENOENT`, for a
/// missing key whose nearest existing parent we may not read — the
/// server's directory before it publishes, as a domU sees it. Both mean
/// "wait for the next watch event".
///
/// # Errors
///
/// At the deadline: the last `EACCES` if xenstored was still refusing
/// (typically keys published before our domain existed: xenstored ignores
/// a permission naming a domain not yet introduced, so the server must
/// publish again), else [`DevError::TimedOut`] naming the missing key.
/// Other xenstore and I/O errors at once.
pub fn wait_published<S: Read + Write + AsFd>(
    store: &mut XenStore<S>,
    path: &str,
    deadline: Instant,
) -> Result<(), DevError> {
    const TOKEN: &str = "ring-hosted-vchan-wait";
    store.watch(path, TOKEN)?;
    let result = (|| loop {
        let mut missing = None;
        for key in [RING_REF, EVENT_CHANNEL] {
            let key = join(path, key);
            match store.read(0, &key) {
                Ok(Some(_)) => continue,
                Ok(None) => {
                    missing = Some(DevError::TimedOut {
                        path: Path::new("xenstore:").join(key.trim_start_matches('/')),
                    })
                }
                Err(e) if matches!(&e, DevError::Xenstore { errno, .. } if errno == "EACCES") => {
                    missing = Some(e)
                }
                Err(e) => return Err(e),
            }
            break;
        }
        let Some(missing) = missing else {
            return Ok(());
        };
        if store.next_watch_event_until(deadline)?.is_none() {
            return Err(missing);
        }
    })();
    let unwatched = store.unwatch(path, TOKEN);
    result.and(unwatched)
}

fn read_key<S: Read + Write>(store: &mut XenStore<S>, key: &str) -> Result<u32, DevError> {
    let value = store.read(0, key)?.ok_or_else(|| DevError::Xenstore {
        op: "READ",
        path: key.to_owned(),
        errno: "ENOENT".into(),
    })?;
    match value.trim().parse::<u32>() {
        Ok(0) | Err(_) => Err(DevError::Parse {
            path: Path::new("xenstore:").join(key.trim_start_matches('/')),
            what: "a non-zero decimal number",
        }),
        Ok(n) => Ok(n),
    }
}

/// Connects as the client to the server in domain `server` that published
/// under `path` (see the [module docs](self)).
///
/// # Errors
///
/// [`DevError`]s naming the key, device or step that failed; ring set-up
/// errors for a page with bad orders or a server that is not live.
///
/// # Examples
///
/// Needs a Xen domain with gntdev, evtchn and xenbus, and a server in
/// domain 0 that has published under the path:
///
/// ```no_run
/// use ring_hosted::devmem::DevError;
/// use ring_hosted::xen::{evtchn::EVTCHN_PATH, gntdev::GNTDEV_PATH, vchan};
/// use ring_hosted::xen::{xenstore::XenStore, XenDevice};
/// use std::time::Duration;
///
/// let mut store = XenStore::open()?;
/// let path = "/local/domain/0/data/vchan/7/1";
/// let (gntdev, evtchn) = (XenDevice::open(GNTDEV_PATH)?, XenDevice::open(EVTCHN_PATH)?);
/// let mut client = match vchan::connect(&gntdev, evtchn, &mut store, 0, path) {
///     Ok(client) => client,
///     Err(e) => {
///         eprintln!("no server at {path}: {e}");
///         return Ok(());
///     }
/// };
/// client.event_channel_mut().set_timeout(Some(Duration::from_secs(10)));
/// let mut buf = [0u8; 64];
/// let n = client.read(&mut buf)?;
/// println!("{}", String::from_utf8_lossy(&buf[..n]));
/// client.close(None::<&mut XenStore<std::fs::File>>)?; // a client leaves the keys
/// # Ok::<(), DevError>(())
/// ```
pub fn connect<S: Read + Write>(
    gntdev: &XenDevice,
    evtchn: XenDevice,
    store: &mut XenStore<S>,
    server: DomId,
    path: &str,
) -> Result<XenVchan, DevError> {
    let ring_ref = read_key(store, &join(path, RING_REF))?;
    let port = read_key(store, &join(path, EVENT_CHANNEL))?;
    let ev = EventChannel::bind_interdomain(evtchn, server, port)?;
    let ctrl = gntdev::map(
        gntdev,
        server,
        &[ring_ref],
        UnmapNotify {
            clear_byte: Some(CLI_LIVE),
            send_event: Some(ev.port()),
        },
    )?;
    // A mapping failure inside the placement callback is kept here and
    // reported in place of the ring error used to abort set-up.
    let failure: RefCell<Option<DevError>> = RefCell::new(None);
    let for_rings = ctrl.clone();
    let result = vchan::connect(
        ctrl,
        |orders: Orders, grant: &dyn Fn(usize) -> Option<u32>| {
            let mut next = 0;
            let mut place = |order: u8| -> Result<RingPlace<MappedRegion>, vchan::Error> {
                match placement(order) {
                    Placement::InPage { offset } => Ok(RingPlace {
                        mem: for_rings.clone(),
                        offset,
                    }),
                    Placement::External { pages } => {
                        let refs: Option<Vec<u32>> = (next..next + pages).map(grant).collect();
                        next += pages;
                        let refs = refs.ok_or(SetupError::GrantCount {
                            needed: orders.grant_count(),
                            given: next - pages,
                        })?;
                        gntdev::map(gntdev, server, &refs, UnmapNotify::default())
                            .map(|mem| RingPlace { mem, offset: 0 })
                            .map_err(|e| {
                                *failure.borrow_mut() = Some(e);
                                vchan::Error::Setup(SetupError::GrantCount {
                                    needed: orders.grant_count(),
                                    given: 0,
                                })
                            })
                    }
                }
            };
            Ok((place(orders.left())?, place(orders.right())?))
        },
    );
    let endpoint = match result {
        Ok(ep) => ep,
        Err(e) => return Err(failure.into_inner().unwrap_or_else(|| e.into())),
    };
    let io = Blocking::new(endpoint, ev);
    // libxenvchan's client kicks once so a server waiting for it wakes.
    io.kick()?;
    Ok(XenVchan {
        io,
        path: path.to_owned(),
        peer: server,
    })
}

/// Removes a server's xenstore directory `path` (what
/// [`XenVchan::close`] does for a server given its store), for a server
/// that went on as a [`XenStream`](super::stream::XenStream).
///
/// # Errors
///
/// xenstore errors.
pub fn remove_published<S: Read + Write>(
    store: &mut XenStore<S>,
    path: &str,
) -> Result<(), DevError> {
    store.rm(0, path)
}

impl XenVchan {
    /// The endpoint and event channel inside.
    pub(crate) fn into_parts(self) -> (Endpoint<MappedRegion>, EventChannel) {
        self.io.into_parts()
    }

    /// The xenstore path the server published under.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Our local event-channel port.
    pub fn port(&self) -> u32 {
        self.io.signal().port()
    }

    /// The peer's domain.
    pub fn peer(&self) -> DomId {
        self.peer
    }

    /// Ends waits with [`DevError::Closed`] (the peer gone) when the
    /// peer's domain is destroyed, through `store`, a xenstore connection
    /// of its own (see [`EventChannel::watch_domain`]: dom0 only in
    /// effect).
    ///
    /// # Errors
    ///
    /// xenstore errors; [`DevError::Closed`] if the domain is already gone.
    pub fn watch_peer_domain(&mut self, store: XenStore<std::fs::File>) -> Result<(), DevError> {
        let peer = self.peer;
        self.io.signal_mut().watch_domain(store, peer)
    }

    /// The ring endpoint (for `data_ready`, `buffer_space`, ...).
    pub fn endpoint(&mut self) -> &mut Endpoint<MappedRegion> {
        self.io.endpoint()
    }

    /// The event channel, e.g. to set a timeout.
    pub fn event_channel_mut(&mut self) -> &mut EventChannel {
        self.io.signal_mut()
    }

    /// The blocking endpoint itself, for a host that drives the ring call
    /// by call (the libxenvchan drop-in maps each C function onto its
    /// `try_` calls and waits).
    pub fn blocking_mut(&mut self) -> &mut Blocking<MappedRegion, EventChannel> {
        &mut self.io
    }

    /// Server: sleeps on the event channel until a client has connected
    /// (or the client byte says closed).
    ///
    /// # Errors
    ///
    /// Ring corruption, or the event channel failing (e.g. its timeout).
    pub fn wait_for_client(&mut self) -> Result<(), DevError> {
        while self.io.endpoint().peer_live()? == Live::Waiting {
            use ring_core::signal::Signal;
            self.io.signal().wait()?;
        }
        Ok(())
    }

    /// Reads at least one byte; `Ok(0)` once the peer has closed and the
    /// ring is drained.
    ///
    /// # Errors
    ///
    /// Ring or event-channel errors.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, DevError> {
        match self.io.read(buf) {
            Err(vchan::BlockingError::Ring(vchan::Error::Closed)) => Ok(0),
            r => Ok(r?),
        }
    }

    /// Writes all of `buf`.
    ///
    /// # Errors
    ///
    /// [`DevError::Closed`] if the peer has gone; ring or event-channel
    /// errors.
    pub fn write_all(&mut self, buf: &[u8]) -> Result<(), DevError> {
        Ok(self.io.write_all(buf)?)
    }

    /// Sends `buf` as one packet.
    ///
    /// # Errors
    ///
    /// As [`XenVchan::write_all`], and `TooLarge` for a packet the ring can
    /// never hold.
    pub fn send(&mut self, buf: &[u8]) -> Result<(), DevError> {
        Ok(self.io.send(buf)?)
    }

    /// Receives exactly `buf.len()` bytes as one packet.
    ///
    /// # Errors
    ///
    /// Ring or event-channel errors.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<(), DevError> {
        Ok(self.io.recv(buf)?)
    }

    /// Closes our end and kicks the peer. A server also removes its
    /// xenstore directory (as C servers do since 2022) when given the
    /// store; a client never does (the directory is the server's), so the
    /// store it is given is left alone.
    ///
    /// # Errors
    ///
    /// Ring, event-channel or xenstore errors.
    pub fn close<S: Read + Write>(
        &mut self,
        store: Option<&mut XenStore<S>>,
    ) -> Result<(), DevError> {
        self.io.close()?;
        let server = self.io.endpoint().role() == ring_core::vchan::Role::Server;
        if let (true, Some(store)) = (server, store) {
            store.rm(0, &self.path)?;
        }
        Ok(())
    }
}

impl Read for XenVchan {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        XenVchan::read(self, buf).map_err(std::io::Error::other)
    }
}

impl Write for XenVchan {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.io.write(buf) {
            Ok(n) => Ok(n),
            Err(e) => Err(std::io::Error::other(DevError::from(e))),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
