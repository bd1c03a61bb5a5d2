//! FAKES: stand-ins for a Xen host, for tests and for trying the Xen code
//! on a machine without Xen. Nothing here talks to a hypervisor.
//!
//! - [`FakeXen`]: one memfd plays all granted memory; [`Sys`] replies for
//!   gntalloc, gntdev and evtchn ioctls are computed from a small model
//!   (grant table, ports), and every request is logged so tests can check
//!   the order of a handshake.
//! - [`FakeXenstore`]: a thread per connection speaking the xenstore wire
//!   format over a Unix socket pair, with a tree, transactions (a snapshot
//!   per transaction, committed whole), permissions and watches. Reads
//!   answer as C xenstored's do: a node inherits its parent's permissions
//!   when created (an unprivileged writer becomes its owner), domain 0 is
//!   privileged, a missing key under a parent the caller may not read is
//!   `EACCES` rather than `ENOENT`, a permission naming a domain not yet
//!   introduced is dropped when set, and a watch event reaches only a
//!   watcher that may read the node.
//!
//! The fakes follow the uapi headers' request numbers and struct layouts,
//! so the code under test builds exactly the bytes it would give the
//! kernel; what they cannot show is how a real kernel and hypervisor
//! answer.

use super::evtchn::{
    BindInterdomain, BindUnboundPort, PortArg, IOCTL_EVTCHN_BIND_INTERDOMAIN,
    IOCTL_EVTCHN_BIND_UNBOUND_PORT, IOCTL_EVTCHN_NOTIFY, IOCTL_EVTCHN_UNBIND,
};
use super::gntalloc::{
    AllocGref, UnmapNotifyArg, IOCTL_GNTALLOC_ALLOC_GREF, IOCTL_GNTALLOC_DEALLOC_GREF,
    IOCTL_GNTALLOC_SET_UNMAP_NOTIFY,
};
use super::gntdev::{
    GrantRef, MapGrantRef, IOCTL_GNTDEV_MAP_GRANT_REF, IOCTL_GNTDEV_UNMAP_GRANT_REF,
};
use super::xenstore::{ty, Header};
use super::{DomId, XenDevice, GRANT_PAGE, UNMAP_NOTIFY_CLEAR_BYTE, UNMAP_NOTIFY_SEND_EVENT};
use crate::devmem::{IoctlRequest, Sys};
use crate::eventfd::EventFd;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, IntoBytes};

/// A shared, ordered log of the requests the fakes saw.
pub type Log = Arc<Mutex<Vec<String>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug)]
struct Grant {
    grantee: DomId,
    offset: u64,
}

#[derive(Debug)]
struct Port {
    dom: DomId,
    remote_dom: DomId,
    peer: Option<u32>,
    pending: bool,
}

#[derive(Debug, Default)]
struct World {
    pages: u64,
    next_gref: u32,
    grants: HashMap<u32, Grant>,
    next_port: u32,
    ports: HashMap<u32, Port>,
    /// (domain, file offset, action, port) of registered unmap notifies.
    notifies: Vec<(DomId, u64, u32, u32)>,
    /// Each device's stand-in for poll(2): readable exactly while a port
    /// of its domain has an event pending ([`Sys::poll_fd`]).
    wakers: Vec<(DomId, std::sync::Weak<EventFd>)>,
}

impl World {
    /// Makes every poll stand-in of `dom` match its ports: readable while
    /// one has an event pending, not once none has.
    fn sync_wakers(&mut self, dom: DomId) {
        let pending = self.ports.values().any(|p| p.dom == dom && p.pending);
        self.wakers.retain(|(_, w)| w.strong_count() > 0);
        for waker in self
            .wakers
            .iter()
            .filter(|(d, _)| *d == dom)
            .filter_map(|(_, w)| w.upgrade())
        {
            // An eventfd of ours: neither call can fail but on a broken fd.
            let _ = if pending {
                waker.kick()
            } else {
                waker.take().map(drop)
            };
        }
    }
}

struct Shared {
    mem: File,
    world: Mutex<World>,
    cond: Condvar,
    log: Log,
}

/// A fake Xen host: grant table, event channels, and the memory behind
/// them (one memfd). See the [module docs](self).
#[derive(Clone)]
pub struct FakeXen {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FakeXen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeXen").finish_non_exhaustive()
    }
}

impl FakeXen {
    /// A fresh host with no grants or ports.
    ///
    /// # Panics
    ///
    /// If the memfd cannot be created (a test-environment failure).
    ///
    /// # Examples
    ///
    /// ```
    /// use ring_hosted::xen::{fake::FakeXen, gntalloc, UnmapNotify};
    ///
    /// let xen = FakeXen::new();
    /// let pages = gntalloc::share(&xen.gntalloc(0), 7, 1, true, UnmapNotify::default())?;
    /// assert_eq!(pages.refs.len(), 1);
    /// assert!(xen.log().iter().any(|line| line.contains("alloc 1 page(s) for dom7")));
    /// # Ok::<(), ring_hosted::devmem::DevError>(())
    /// ```
    pub fn new() -> Self {
        let mem = crate::devmem::stand_in_file("fake-xen-grants", 0)
            .expect("memfd_create for the fake Xen memory");
        FakeXen {
            shared: Arc::new(Shared {
                mem,
                world: Mutex::new(World {
                    next_gref: 8,
                    next_port: 5,
                    ..World::default()
                }),
                cond: Condvar::new(),
                log: Arc::default(),
            }),
        }
    }

    /// The request log (ioctls, unmasks, and the xenstore requests of a
    /// [`FakeXenstore`] made with [`FakeXen::xenstore`]).
    pub fn log(&self) -> Vec<String> {
        lock(&self.shared.log).clone()
    }

    #[allow(unsafe_code)]
    fn device(&self, domid: DomId, path: &str) -> XenDevice {
        let file = self.shared.mem.try_clone().expect("dup of the fake memfd");
        let waker = Arc::new(EventFd::new().expect("an eventfd for the fake's poll"));
        let mut w = lock(&self.shared.world);
        w.wakers.push((domid, Arc::downgrade(&waker)));
        w.sync_wakers(domid);
        drop(w);
        let sys = Arc::new(FakeDomain {
            domid,
            shared: Arc::clone(&self.shared),
            waker,
        });
        // SAFETY: the fake seam never reaches the kernel.
        unsafe { XenDevice::from_parts(file, PathBuf::from(path), sys) }
    }

    /// `/dev/xen/gntalloc` as domain `domid` sees it.
    pub fn gntalloc(&self, domid: DomId) -> XenDevice {
        self.device(domid, super::gntalloc::GNTALLOC_PATH)
    }

    /// `/dev/xen/gntdev` as domain `domid` sees it.
    pub fn gntdev(&self, domid: DomId) -> XenDevice {
        self.device(domid, super::gntdev::GNTDEV_PATH)
    }

    /// `/dev/xen/evtchn` as domain `domid` sees it.
    pub fn evtchn(&self, domid: DomId) -> XenDevice {
        self.device(domid, super::evtchn::EVTCHN_PATH)
    }

    /// A fake xenstored for domain `domid` that logs into this host's log.
    pub fn xenstore(&self, domid: DomId) -> FakeXenstore {
        FakeXenstore::with_log(domid, Arc::clone(&self.shared.log))
    }

    /// Plays the kernel's part when domain `domid`'s process dies: runs
    /// every unmap notification it registered (clear the byte, send the
    /// event).
    pub fn kill(&self, domid: DomId) {
        let mut w = lock(&self.shared.world);
        let notifies: Vec<_> = w
            .notifies
            .iter()
            .filter(|n| n.0 == domid)
            .copied()
            .collect();
        w.notifies.retain(|n| n.0 != domid);
        for (_, offset, action, port) in notifies {
            if action & UNMAP_NOTIFY_CLEAR_BYTE != 0 {
                let _ = self.shared.mem.write_at(&[0], offset);
            }
            if action & UNMAP_NOTIFY_SEND_EVENT != 0 {
                raise(&mut w, port);
            }
        }
        lock(&self.shared.log).push(format!("dom{domid}: killed"));
        self.shared.cond.notify_all();
    }
}

impl Default for FakeXen {
    fn default() -> Self {
        Self::new()
    }
}

fn raise(w: &mut World, port: u32) {
    if let Some(peer) = w.ports.get(&port).and_then(|p| p.peer) {
        if let Some(p) = w.ports.get_mut(&peer) {
            p.pending = true;
            let dom = p.dom;
            w.sync_wakers(dom);
        }
    }
}

struct FakeDomain {
    domid: DomId,
    shared: Arc<Shared>,
    /// What poll(2) watches in place of the stand-in device file.
    waker: Arc<EventFd>,
}

fn einval(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_owned())
}

impl FakeDomain {
    fn log(&self, entry: String) {
        lock(&self.shared.log).push(format!("dom{}: {entry}", self.domid));
    }

    fn pending_port(&self, w: &mut World, take: bool) -> Option<u32> {
        let (&port, p) = w
            .ports
            .iter_mut()
            .find(|(_, p)| p.dom == self.domid && p.pending)?;
        if take {
            p.pending = false;
        }
        Some(port)
    }
}

// The seam's methods are `unsafe` to call; the fake reaches no kernel and
// does nothing unsafe itself.
#[allow(unsafe_code)]
impl Sys for FakeDomain {
    unsafe fn ioctl(
        &self,
        _fd: BorrowedFd<'_>,
        request: IoctlRequest,
        arg: &mut [u8],
    ) -> io::Result<i32> {
        // Refuse what the real seam refuses, before touching the model.
        request.check(arg)?;
        let mut w = lock(&self.shared.world);
        match request {
            IOCTL_GNTALLOC_ALLOC_GREF => {
                let (mut a, _) = AllocGref::read_from_prefix(arg).map_err(|_| einval("short"))?;
                let offset = w.pages * GRANT_PAGE as u64;
                w.pages += u64::from(a.count);
                self.shared.mem.set_len(w.pages * GRANT_PAGE as u64)?;
                a.index = offset;
                let refs_at = std::mem::offset_of!(AllocGref, gref_ids);
                let head = a.as_bytes().len();
                arg[..head].copy_from_slice(a.as_bytes());
                let mut refs = Vec::new();
                for n in 0..a.count as usize {
                    let gref = w.next_gref;
                    w.next_gref += 1;
                    w.grants.insert(
                        gref,
                        Grant {
                            grantee: a.domid,
                            offset: offset + (n * GRANT_PAGE) as u64,
                        },
                    );
                    let at = refs_at + 4 * n;
                    arg.get_mut(at..at + 4)
                        .ok_or_else(|| einval("gref buffer too small"))?
                        .copy_from_slice(&gref.to_ne_bytes());
                    refs.push(gref);
                }
                self.log(format!(
                    "gntalloc alloc {} page(s) for dom{} -> refs {refs:?}",
                    a.count, a.domid
                ));
                Ok(0)
            }
            IOCTL_GNTALLOC_DEALLOC_GREF => {
                self.log("gntalloc dealloc".into());
                Ok(0)
            }
            // gntalloc's and gntdev's SET_UNMAP_NOTIFY share one number.
            IOCTL_GNTALLOC_SET_UNMAP_NOTIFY => {
                let n = UnmapNotifyArg::read_from_bytes(arg).map_err(|_| einval("size"))?;
                w.notifies
                    .push((self.domid, n.index, n.action, n.event_channel_port));
                self.log(format!(
                    "set unmap notify at page byte {} action {} port {}",
                    n.index % GRANT_PAGE as u64,
                    n.action,
                    n.event_channel_port
                ));
                Ok(0)
            }
            IOCTL_GNTDEV_MAP_GRANT_REF => {
                let (mut m, _) = MapGrantRef::read_from_prefix(arg).map_err(|_| einval("short"))?;
                let refs_at = std::mem::offset_of!(MapGrantRef, refs);
                let mut first = None;
                let mut refs = Vec::new();
                for n in 0..m.count as usize {
                    let at = refs_at + n * size_of::<GrantRef>();
                    let bytes = arg
                        .get(at..at + size_of::<GrantRef>())
                        .ok_or_else(|| einval("refs"))?;
                    let r = GrantRef::read_from_bytes(bytes).map_err(|_| einval("ref"))?;
                    let g = w
                        .grants
                        .get(&r.gref)
                        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
                    if g.grantee != self.domid {
                        return Err(io::Error::from_raw_os_error(libc::EPERM));
                    }
                    let start = *first.get_or_insert(g.offset);
                    if g.offset != start + (n * GRANT_PAGE) as u64 {
                        return Err(einval("the fake maps only refs of contiguous pages"));
                    }
                    refs.push(r.gref);
                }
                m.index = first.ok_or_else(|| einval("no refs"))?;
                let head = m.as_bytes().len();
                arg[..head].copy_from_slice(m.as_bytes());
                self.log(format!("gntdev map refs {refs:?}"));
                Ok(0)
            }
            IOCTL_GNTDEV_UNMAP_GRANT_REF => {
                self.log("gntdev release".into());
                Ok(0)
            }
            IOCTL_EVTCHN_BIND_UNBOUND_PORT => {
                let b = BindUnboundPort::read_from_bytes(arg).map_err(|_| einval("size"))?;
                let port = w.next_port;
                w.next_port += 1;
                let remote_dom = DomId::try_from(b.remote_domain).map_err(|_| einval("domid"))?;
                w.ports.insert(
                    port,
                    Port {
                        dom: self.domid,
                        remote_dom,
                        peer: None,
                        pending: false,
                    },
                );
                self.log(format!(
                    "evtchn bind unbound for dom{remote_dom} -> port {port}"
                ));
                Ok(port as i32)
            }
            IOCTL_EVTCHN_BIND_INTERDOMAIN => {
                let b = BindInterdomain::read_from_bytes(arg).map_err(|_| einval("size"))?;
                let ok = w.ports.get(&b.remote_port).is_some_and(|p| {
                    u32::from(p.dom) == b.remote_domain
                        && p.remote_dom == self.domid
                        && p.peer.is_none()
                });
                if !ok {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                }
                let port = w.next_port;
                w.next_port += 1;
                let remote_dom = DomId::try_from(b.remote_domain).map_err(|_| einval("domid"))?;
                w.ports.insert(
                    port,
                    Port {
                        dom: self.domid,
                        remote_dom,
                        peer: Some(b.remote_port),
                        pending: false,
                    },
                );
                if let Some(p) = w.ports.get_mut(&b.remote_port) {
                    p.peer = Some(port);
                }
                self.log(format!(
                    "evtchn bind interdomain dom{} port {} -> port {port}",
                    b.remote_domain, b.remote_port
                ));
                Ok(port as i32)
            }
            IOCTL_EVTCHN_NOTIFY => {
                let p = PortArg::read_from_bytes(arg).map_err(|_| einval("size"))?;
                raise(&mut w, p.port);
                self.shared.cond.notify_all();
                Ok(0)
            }
            IOCTL_EVTCHN_UNBIND => {
                let p = PortArg::read_from_bytes(arg).map_err(|_| einval("size"))?;
                if let Some(gone) = w.ports.remove(&p.port) {
                    w.sync_wakers(gone.dom);
                }
                self.log(format!("evtchn unbind port {}", p.port));
                Ok(0)
            }
            other => Err(einval(&format!(
                "the fake does not know ioctl {:#x}",
                other.number()
            ))),
        }
    }

    unsafe fn ioctl_value(
        &self,
        _fd: BorrowedFd<'_>,
        request: IoctlRequest,
        _value: u64,
    ) -> io::Result<i32> {
        request.check_value()?;
        Err(einval(&format!(
            "the fake does not know ioctl {:#x}",
            request.number()
        )))
    }

    fn read(&self, _fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
        let mut w = lock(&self.shared.world);
        let mut logged = false;
        loop {
            if let Some(port) = self.pending_port(&mut w, true) {
                w.sync_wakers(self.domid);
                let b = port.to_ne_bytes();
                let n = buf.len().min(4);
                buf[..n].copy_from_slice(&b[..n]);
                return Ok(n);
            }
            // As in `poll_readable`: logged under the lock the wait
            // releases.
            if !logged {
                self.log("evtchn wait".into());
                logged = true;
            }
            w = self.shared.cond.wait(w).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn write(&self, _fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
        let port = <[u8; 4]>::try_from(buf)
            .map(u32::from_ne_bytes)
            .map_err(|_| einval("unmask takes 4 bytes"))?;
        let w = lock(&self.shared.world);
        if !w.ports.contains_key(&port) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        drop(w);
        self.log(format!("evtchn unmask port {port}"));
        Ok(4)
    }

    fn poll_fd<'a>(&'a self, _fd: BorrowedFd<'a>) -> BorrowedFd<'a> {
        self.waker.as_fd()
    }

    fn poll_readable(&self, _fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut w = lock(&self.shared.world);
        let mut logged = false;
        loop {
            if self.pending_port(&mut w, false).is_some() {
                return Ok(true);
            }
            // Logged under the lock the wait releases: an event sent after
            // a test saw this line wakes the wait, it cannot slip past.
            if !logged {
                self.log("evtchn wait".into());
                logged = true;
            }
            match deadline {
                None => w = self.shared.cond.wait(w).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(false);
                    }
                    w = self
                        .shared
                        .cond
                        .wait_timeout(w, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Node {
    value: String,
    perms: Vec<String>,
}

type Tree = BTreeMap<String, Node>;

#[derive(Default)]
struct StoreState {
    tree: Tree,
    txs: HashMap<u32, Tree>,
    next_tx: u32,
    fail_commits: usize,
    /// (path, token, connection, the connection's domain).
    watches: Vec<(String, String, usize, DomId)>,
    conns: HashMap<usize, UnixStream>,
    next_conn: usize,
    /// Domains xenstored knows (introduced by the toolstack).
    introduced: std::collections::BTreeSet<DomId>,
}

/// A fake xenstored (see the [module docs](self)).
#[derive(Clone)]
pub struct FakeXenstore {
    domid: DomId,
    state: Arc<Mutex<StoreState>>,
    log: Log,
}

impl std::fmt::Debug for FakeXenstore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeXenstore")
            .field("domid", &self.domid)
            .finish_non_exhaustive()
    }
}

impl FakeXenstore {
    /// A fake store as seen from domain `domid` (relative paths resolve
    /// under `/local/domain/<domid>`, whose `domid` key is set). Domains 0
    /// and `domid` are introduced.
    pub fn start(domid: DomId) -> Self {
        Self::with_log(domid, Arc::default())
    }

    /// As [`FakeXenstore::start`], logging requests into `log`.
    pub fn with_log(domid: DomId, log: Log) -> Self {
        let s = FakeXenstore {
            domid,
            state: Arc::default(),
            log,
        };
        let mut st = lock(&s.state);
        st.next_tx = 1;
        introduce(&mut st, 0);
        introduce(&mut st, domid);
        drop(st);
        s
    }

    /// Introduces domain `domid`, as the toolstack does when it creates a
    /// domain: xenstored learns of it and makes its home
    /// `/local/domain/<domid>` (owned by domain 0, readable by `domid`).
    /// Permissions naming `domid` count only if set after this.
    pub fn introduce(&self, domid: DomId) {
        introduce(&mut lock(&self.state), domid);
    }

    /// A new client connection (the other end is served by a thread).
    ///
    /// # Panics
    ///
    /// If a socket pair cannot be made.
    pub fn connect(&self) -> UnixStream {
        self.connect_as(self.domid)
    }

    /// A new client connection from domain `domid` (its relative paths
    /// resolve under its own home, and permissions are checked for it).
    /// Introduces `domid` if it was not.
    ///
    /// # Panics
    ///
    /// If a socket pair cannot be made.
    pub fn connect_as(&self, domid: DomId) -> UnixStream {
        let (ours, theirs) = UnixStream::pair().expect("socketpair for the fake xenstore");
        let mut st = lock(&self.state);
        introduce(&mut st, domid);
        let id = st.next_conn;
        st.next_conn += 1;
        st.conns.insert(id, theirs.try_clone().expect("dup"));
        drop(st);
        let me = self.clone();
        std::thread::spawn(move || me.serve(id, domid, theirs));
        ours
    }

    /// Makes the next `n` transaction commits fail with `EAGAIN`.
    pub fn fail_commits(&self, n: usize) {
        lock(&self.state).fail_commits = n;
    }

    /// The permission list of `path` (encoded, e.g. `["n3", "r7"]`), as
    /// `GET_PERMS` would answer: without entries that were dropped because
    /// they named a domain not yet introduced.
    pub fn perms(&self, path: &str) -> Vec<String> {
        lock(&self.state)
            .tree
            .get(path)
            .map(|n| n.perms.clone())
            .unwrap_or_default()
    }

    /// The value of `path`, if set.
    pub fn value(&self, path: &str) -> Option<String> {
        lock(&self.state).tree.get(path).map(|n| n.value.clone())
    }

    fn abs(path: &str, domid: DomId) -> String {
        if path.starts_with('/') || path.starts_with('@') {
            path.to_owned()
        } else {
            format!("/local/domain/{domid}/{path}")
        }
    }

    fn serve(&self, id: usize, domid: DomId, mut stream: UnixStream) {
        loop {
            let mut raw = [0u8; 16];
            if stream.read_exact(&mut raw).is_err() {
                break;
            }
            let Ok(h) = Header::read_from_bytes(&raw) else {
                break;
            };
            let mut body = vec![0u8; h.len as usize];
            if stream.read_exact(&mut body).is_err() {
                break;
            }
            let mut st = lock(&self.state);
            let reply = self.handle(&mut st, (id, domid), &h, &body);
            let (t, payload) = match reply {
                Ok(p) => (h.ty, p),
                Err(errno) => (ty::ERROR, format!("{errno}\0").into_bytes()),
            };
            let out = Header {
                ty: t,
                req_id: h.req_id,
                tx_id: h.tx_id,
                len: payload.len() as u32,
            };
            let mut msg = out.as_bytes().to_vec();
            msg.extend_from_slice(&payload);
            // Replies are written under the lock so they never interleave
            // with watch events sent to this connection.
            if stream.write_all(&msg).is_err() {
                break;
            }
        }
        let mut st = lock(&self.state);
        st.conns.remove(&id);
        st.watches.retain(|w| w.2 != id);
    }

    /// Sends the watch events for a change of `changed`, to watchers that
    /// may read it (or, once removed, its nearest existing parent), as
    /// xenstored does.
    fn fire(&self, st: &mut StoreState, changed: &str) {
        let perms = nearest(&st.tree, changed);
        let hits: Vec<(String, usize)> = st
            .watches
            .iter()
            .filter(|(p, _, _, _)| changed == p || changed.starts_with(&format!("{p}/")))
            .filter(|(_, _, _, dom)| may_read(&perms, *dom))
            .map(|(_, t, c, _)| (t.clone(), *c))
            .collect();
        for (token, conn) in hits {
            send_event(st, conn, changed, &token);
        }
    }

    fn handle(
        &self,
        st: &mut StoreState,
        (id, domid): (usize, DomId),
        h: &Header,
        body: &[u8],
    ) -> Result<Vec<u8>, &'static str> {
        let args: Vec<String> = body
            .split(|&b| b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let arg0 = args.first().cloned().unwrap_or_default();
        let path = Self::abs(&arg0, domid);
        let name = match h.ty {
            ty::READ => "READ",
            ty::WRITE => "WRITE",
            ty::RM => "RM",
            ty::SET_PERMS => "SET_PERMS",
            ty::TRANSACTION_START => "TRANSACTION_START",
            ty::TRANSACTION_END => "TRANSACTION_END",
            ty::WATCH => "WATCH",
            ty::UNWATCH => "UNWATCH",
            ty::DIRECTORY => "DIRECTORY",
            ty::GET_DOMAIN_PATH => "GET_DOMAIN_PATH",
            _ => "?",
        };
        lock(&self.log).push(format!("dom{domid}: xenstore {name} {arg0}"));
        let tx = h.tx_id;
        if tx != 0 && !st.txs.contains_key(&tx) {
            return Err("ENOENT");
        }
        let ok = || b"OK\0".to_vec();
        match h.ty {
            ty::READ => {
                let tree = if tx == 0 { &st.tree } else { &st.txs[&tx] };
                // A missing node is EACCES if its nearest existing parent
                // is unreadable (xenstored's errno_from_parents).
                if !may_read(&nearest(tree, &path), domid) {
                    return Err("EACCES");
                }
                let node = tree.get(&path).ok_or("ENOENT")?;
                Ok(node.value.clone().into_bytes())
            }
            ty::DIRECTORY => {
                let tree = if tx == 0 { &st.tree } else { &st.txs[&tx] };
                if !tree.contains_key(&path) {
                    return Err("ENOENT");
                }
                let prefix = format!("{path}/");
                let mut out = Vec::new();
                for k in tree.keys().filter(|k| k.starts_with(&prefix)) {
                    let rest = &k[prefix.len()..];
                    if !rest.contains('/') {
                        out.extend_from_slice(rest.as_bytes());
                        out.push(0);
                    }
                }
                Ok(out)
            }
            ty::WRITE => {
                let value = body
                    .iter()
                    .position(|&b| b == 0)
                    .map(|i| &body[i + 1..])
                    .unwrap_or(&[]);
                let value = String::from_utf8_lossy(value).into_owned();
                if tx == 0 {
                    set(&mut st.tree, &path, &value, domid);
                    self.fire(st, &path);
                } else if let Some(t) = st.txs.get_mut(&tx) {
                    set(t, &path, &value, domid);
                }
                Ok(ok())
            }
            ty::RM => {
                let prefix = format!("{path}/");
                let tree = if tx == 0 {
                    &mut st.tree
                } else {
                    st.txs.get_mut(&tx).ok_or("ENOENT")?
                };
                if tree.remove(&path).is_none() {
                    return Err("ENOENT");
                }
                tree.retain(|k, _| !k.starts_with(&prefix));
                if tx == 0 {
                    self.fire(st, &path);
                }
                Ok(ok())
            }
            ty::SET_PERMS => {
                let perms: Vec<String> = args
                    .iter()
                    .skip(1)
                    .filter(|s| !s.is_empty())
                    .cloned()
                    .collect();
                let valid = !perms.is_empty()
                    && perms.iter().all(|p| {
                        let mut c = p.chars();
                        matches!(c.next(), Some('n' | 'r' | 'w' | 'b'))
                            && c.as_str().parse::<u16>().is_ok()
                    });
                if !valid {
                    return Err("EINVAL");
                }
                // Entries after the owner that name a domain xenstored does
                // not know yet are ignored for good (XS_PERM_IGNORE).
                let perms: Vec<String> = perms
                    .into_iter()
                    .enumerate()
                    .filter(|(i, p)| {
                        *i == 0 || p[1..].parse().is_ok_and(|d| st.introduced.contains(&d))
                    })
                    .map(|(_, p)| p)
                    .collect();
                let tree = if tx == 0 {
                    &mut st.tree
                } else {
                    st.txs.get_mut(&tx).ok_or("ENOENT")?
                };
                tree.get_mut(&path).ok_or("ENOENT")?.perms = perms;
                Ok(ok())
            }
            ty::TRANSACTION_START => {
                let t = st.next_tx;
                st.next_tx += 1;
                let snapshot = st.tree.clone();
                st.txs.insert(t, snapshot);
                Ok(format!("{t}\0").into_bytes())
            }
            ty::TRANSACTION_END => {
                let tree = st.txs.remove(&tx).ok_or("ENOENT")?;
                if arg0 == "T" {
                    if st.fail_commits > 0 {
                        st.fail_commits -= 1;
                        return Err("EAGAIN");
                    }
                    let changed: Vec<String> = tree
                        .iter()
                        .filter(|(k, n)| st.tree.get(*k).map(|o| o.value != n.value) != Some(false))
                        .map(|(k, _)| k.clone())
                        .collect();
                    st.tree = tree;
                    for k in changed {
                        self.fire(st, &k);
                    }
                }
                Ok(ok())
            }
            ty::WATCH => {
                let token = args.get(1).cloned().unwrap_or_default();
                st.watches.push((path.clone(), token.clone(), id, domid));
                // xenstored fires every new watch once.
                send_event(st, id, &path, &token);
                Ok(ok())
            }
            ty::UNWATCH => {
                let token = args.get(1).cloned().unwrap_or_default();
                st.watches
                    .retain(|w| !(w.0 == path && w.1 == token && w.2 == id));
                Ok(ok())
            }
            ty::GET_DOMAIN_PATH => Ok(format!("/local/domain/{arg0}\0").into_bytes()),
            _ => Err("ENOSYS"),
        }
    }
}

/// Whether `domid` may read a node with permission list `perms`: domain 0
/// (privileged) and the owner (first entry) always, others per their entry
/// or the default.
fn may_read(perms: &[String], domid: DomId) -> bool {
    let parse = |p: &String| {
        let (c, d) = p.split_at(1);
        (c.to_owned(), d.parse::<DomId>().ok())
    };
    if domid == 0 {
        return true;
    }
    let Some((default, owner)) = perms.first().map(parse) else {
        return false;
    };
    if owner == Some(domid) {
        return true;
    }
    let entry = perms
        .iter()
        .skip(1)
        .map(parse)
        .find(|(_, d)| *d == Some(domid))
        .map(|(c, _)| c)
        .unwrap_or(default);
    entry == "r" || entry == "b"
}

fn send_event(st: &mut StoreState, conn: usize, path: &str, token: &str) {
    let payload = format!("{path}\0{token}\0").into_bytes();
    let h = Header {
        ty: ty::WATCH_EVENT,
        req_id: 0,
        tx_id: 0,
        len: payload.len() as u32,
    };
    if let Some(s) = st.conns.get_mut(&conn) {
        let mut msg = h.as_bytes().to_vec();
        msg.extend_from_slice(&payload);
        let _ = s.write_all(&msg);
    }
}

/// The permissions of `path`, or of its nearest existing parent if it is
/// missing (the root's are `n0`: only domain 0 may read it).
fn nearest(tree: &Tree, path: &str) -> Vec<String> {
    let mut at = path;
    loop {
        if let Some(node) = tree.get(at) {
            return node.perms.clone();
        }
        match at.rfind('/') {
            Some(0) | None => return vec!["n0".to_owned()],
            Some(i) => at = &at[..i],
        }
    }
}

/// Sets `path` to `value` as domain `writer`, creating missing parents
/// with empty values as xenstored does: a new node inherits its parent's
/// permissions, and one created by an unprivileged domain is owned by it.
fn set(tree: &mut Tree, path: &str, value: &str, writer: DomId) {
    let mut at = 0;
    let mut ends: Vec<usize> = Vec::new();
    while let Some(i) = path[at + 1..].find('/') {
        ends.push(at + 1 + i);
        at += 1 + i;
    }
    ends.push(path.len());
    for end in ends {
        let node = &path[..end];
        if !tree.contains_key(node) {
            let mut perms = nearest(tree, node);
            if writer != 0 {
                if let Some(owner) = perms.first_mut() {
                    *owner = format!("{}{writer}", &owner[..1]);
                }
            }
            tree.insert(
                node.to_owned(),
                Node {
                    value: String::new(),
                    perms,
                },
            );
        }
    }
    if let Some(node) = tree.get_mut(path) {
        node.value = value.to_owned();
    }
}

/// Makes `domid` known, with its home and its `domid` key (owned by
/// domain 0, readable by `domid`), as the toolstack leaves them.
fn introduce(st: &mut StoreState, domid: DomId) {
    if !st.introduced.insert(domid) {
        return;
    }
    let home = format!("/local/domain/{domid}");
    let mut perms = vec!["n0".to_owned()];
    if domid != 0 {
        perms.push(format!("r{domid}"));
    }
    set(
        &mut st.tree,
        &format!("{home}/domid"),
        &domid.to_string(),
        0,
    );
    for node in [home.clone(), format!("{home}/domid")] {
        if let Some(n) = st.tree.get_mut(&node) {
            n.perms = perms.clone();
        }
    }
}
