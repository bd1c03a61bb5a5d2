//! A xenstore client speaking the wire protocol of `<xen/io/xs_wire.h>`
//! over `/dev/xen/xenbus` (or any byte stream, for tests).
//!
//! Every message is a 16-byte header — type, request id, transaction id,
//! payload length, each a native-endian `u32` — followed by the payload.
//! Paths and values are NUL-separated strings. A reply echoes the request
//! id; an `XS_ERROR` reply carries an errno name such as `ENOENT` or
//! `EAGAIN`. Watch events (`XS_WATCH_EVENT`) can arrive between a request
//! and its reply; they are queued for [`XenStore::next_watch_event`].

use crate::devmem::DevError;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Instant;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The device's standard path.
pub const XENBUS_PATH: &str = "/dev/xen/xenbus";

/// The largest payload xenstored accepts (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;

/// `struct xsd_sockmsg`: the message header.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct Header {
    /// Message type (`XS_*`).
    pub ty: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id, 0 outside a transaction.
    pub tx_id: u32,
    /// Payload length in bytes.
    pub len: u32,
}

/// Message types (`enum xsd_sockmsg_type`).
#[allow(missing_docs)]
pub mod ty {
    pub const DIRECTORY: u32 = 1;
    pub const READ: u32 = 2;
    pub const GET_PERMS: u32 = 3;
    pub const WATCH: u32 = 4;
    pub const UNWATCH: u32 = 5;
    pub const TRANSACTION_START: u32 = 6;
    pub const TRANSACTION_END: u32 = 7;
    pub const GET_DOMAIN_PATH: u32 = 10;
    pub const WRITE: u32 = 11;
    pub const MKDIR: u32 = 12;
    pub const RM: u32 = 13;
    pub const SET_PERMS: u32 = 14;
    pub const WATCH_EVENT: u32 = 15;
    pub const ERROR: u32 = 16;
}

fn op_name(t: u32) -> &'static str {
    match t {
        ty::DIRECTORY => "DIRECTORY",
        ty::READ => "READ",
        ty::GET_PERMS => "GET_PERMS",
        ty::WATCH => "WATCH",
        ty::UNWATCH => "UNWATCH",
        ty::TRANSACTION_START => "TRANSACTION_START",
        ty::TRANSACTION_END => "TRANSACTION_END",
        ty::GET_DOMAIN_PATH => "GET_DOMAIN_PATH",
        ty::WRITE => "WRITE",
        ty::MKDIR => "MKDIR",
        ty::RM => "RM",
        ty::SET_PERMS => "SET_PERMS",
        _ => "request",
    }
}

/// What a domain may do with a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No access (`n`); on the first entry: the owner, others get none.
    None,
    /// Read (`r`).
    Read,
    /// Write (`w`).
    Write,
    /// Read and write (`b`).
    Both,
}

/// One entry of a node's permission list. The first entry names the owner
/// and the default for domains not listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perm {
    /// The access granted.
    pub access: Access,
    /// The domain.
    pub domid: u16,
}

impl Perm {
    /// The wire form: a letter and the domid, e.g. `r5`.
    pub fn encode(&self) -> String {
        let c = match self.access {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        };
        format!("{c}{}", self.domid)
    }
}

/// A transaction id (0 = none).
pub type Tx = u32;

/// A xenstore connection over a byte stream.
#[derive(Debug)]
pub struct XenStore<S> {
    stream: S,
    next_req: u32,
    events: VecDeque<(String, String)>,
}

impl XenStore<std::fs::File> {
    /// Opens `/dev/xen/xenbus`.
    ///
    /// # Errors
    ///
    /// I/O errors naming the device.
    ///
    /// # Examples
    ///
    /// Needs a Xen domain with `/dev/xen/xenbus` (and permission to open it):
    ///
    /// ```no_run
    /// use ring_hosted::devmem::DevError;
    /// use ring_hosted::xen::xenstore::XenStore;
    ///
    /// let mut store = match XenStore::open() {
    ///     Ok(store) => store,
    ///     Err(e) => {
    ///         eprintln!("no xenstore here: {e}");
    ///         return Ok(());
    ///     }
    /// };
    /// let me = store.own_domid()?;
    /// println!("domain {me}, home {}", store.domain_path(me)?);
    /// # Ok::<(), DevError>(())
    /// ```
    pub fn open() -> Result<Self, DevError> {
        let path = Path::new(XENBUS_PATH);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(DevError::io("open", path))?;
        Ok(XenStore::new(file))
    }
}

fn proto(what: impl Into<String>) -> DevError {
    DevError::invalid(Path::new(XENBUS_PATH), what)
}

fn io_err(op: &'static str) -> impl FnOnce(std::io::Error) -> DevError {
    DevError::io(op, Path::new(XENBUS_PATH))
}

fn strings(payload: &[u8]) -> Vec<String> {
    payload
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

impl<S: Read + Write> XenStore<S> {
    /// A client over `stream` (the xenbus device, or a fake's socket).
    ///
    /// # Examples
    ///
    /// Over a connection to the fake xenstored of the `fakes` feature, as seen
    /// from domain 3 (relative paths resolve under its home):
    ///
    /// ```
    /// # #[cfg(feature = "fakes")] {
    /// use ring_hosted::xen::{fake::FakeXenstore, xenstore::XenStore};
    ///
    /// let xenstored = FakeXenstore::start(3);
    /// let mut store = XenStore::new(xenstored.connect());
    /// store.write(0, "data/greeting", "hello")?;
    /// assert_eq!(store.read(0, "/local/domain/3/data/greeting")?.as_deref(), Some("hello"));
    /// assert_eq!(store.read(0, "data/missing")?, None);
    /// assert_eq!(store.own_domid()?, 3);
    /// # }
    /// # Ok::<(), ring_hosted::devmem::DevError>(())
    /// ```
    pub fn new(stream: S) -> Self {
        XenStore {
            stream,
            next_req: 1,
            events: VecDeque::new(),
        }
    }

    /// Sends one request and returns the reply's payload.
    ///
    /// # Errors
    ///
    /// [`DevError::Xenstore`] for an `XS_ERROR` reply (naming `arg`), I/O
    /// errors, or [`DevError::Invalid`] for a malformed reply.
    pub fn request(
        &mut self,
        t: u32,
        tx: Tx,
        payload: &[u8],
        arg: &str,
    ) -> Result<Vec<u8>, DevError> {
        if payload.len() > PAYLOAD_MAX {
            return Err(proto(format!(
                "{} payload of {} bytes exceeds {PAYLOAD_MAX}",
                op_name(t),
                payload.len()
            )));
        }
        let req_id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        let header = Header {
            ty: t,
            req_id,
            tx_id: tx,
            len: payload.len() as u32,
        };
        // One write per message: the xenbus device wants whole messages.
        let mut msg = Vec::with_capacity(16 + payload.len());
        msg.extend_from_slice(header.as_bytes());
        msg.extend_from_slice(payload);
        self.stream
            .write_all(&msg)
            .map_err(io_err("write request"))?;
        loop {
            let (h, body) = self.read_message()?;
            if h.ty == ty::WATCH_EVENT {
                self.queue_event(&body);
                continue;
            }
            if h.req_id != req_id {
                return Err(proto(format!(
                    "reply for request {} while waiting for {req_id}",
                    h.req_id
                )));
            }
            if h.ty == ty::ERROR {
                let errno = strings(&body).into_iter().next().unwrap_or_default();
                return Err(DevError::Xenstore {
                    op: op_name(t),
                    path: arg.to_owned(),
                    errno,
                });
            }
            if h.ty != t {
                return Err(proto(format!(
                    "reply type {} to a {} request",
                    h.ty,
                    op_name(t)
                )));
            }
            return Ok(body);
        }
    }

    fn read_message(&mut self) -> Result<(Header, Vec<u8>), DevError> {
        let mut raw = [0u8; 16];
        self.stream
            .read_exact(&mut raw)
            .map_err(io_err("read reply header"))?;
        let h = Header::read_from_bytes(&raw).map_err(|_| proto("bad header"))?;
        let len = h.len as usize;
        if len > PAYLOAD_MAX {
            return Err(proto(format!(
                "reply payload of {len} bytes exceeds {PAYLOAD_MAX}"
            )));
        }
        let mut body = vec![0u8; len];
        self.stream
            .read_exact(&mut body)
            .map_err(io_err("read reply payload"))?;
        Ok((h, body))
    }

    fn queue_event(&mut self, body: &[u8]) {
        let mut parts = strings(body).into_iter();
        let path = parts.next().unwrap_or_default();
        let token = parts.next().unwrap_or_default();
        self.events.push_back((path, token));
    }

    /// Reads `path`; `None` if it does not exist.
    ///
    /// # Errors
    ///
    /// Any xenstore error other than `ENOENT`.
    pub fn read(&mut self, tx: Tx, path: &str) -> Result<Option<String>, DevError> {
        match self.request(ty::READ, tx, &nul(path), path) {
            Ok(v) => Ok(Some(
                String::from_utf8_lossy(&v)
                    .trim_end_matches('\0')
                    .to_owned(),
            )),
            Err(DevError::Xenstore { errno, .. }) if errno == "ENOENT" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` to `path` (creating it and its parents).
    ///
    /// # Errors
    ///
    /// xenstore errors naming `path`.
    pub fn write(&mut self, tx: Tx, path: &str, value: &str) -> Result<(), DevError> {
        let mut p = nul(path);
        p.extend_from_slice(value.as_bytes());
        self.request(ty::WRITE, tx, &p, path).map(drop)
    }

    /// Removes `path` and everything under it (absent is fine).
    ///
    /// # Errors
    ///
    /// xenstore errors other than `ENOENT`.
    pub fn rm(&mut self, tx: Tx, path: &str) -> Result<(), DevError> {
        match self.request(ty::RM, tx, &nul(path), path) {
            Err(DevError::Xenstore { errno, .. }) if errno == "ENOENT" => Ok(()),
            r => r.map(drop),
        }
    }

    /// Lists the children of `path`.
    ///
    /// # Errors
    ///
    /// xenstore errors naming `path`.
    pub fn directory(&mut self, tx: Tx, path: &str) -> Result<Vec<String>, DevError> {
        Ok(strings(&self.request(
            ty::DIRECTORY,
            tx,
            &nul(path),
            path,
        )?))
    }

    /// Sets `path`'s permission list.
    ///
    /// # Errors
    ///
    /// xenstore errors naming `path`; [`DevError::Invalid`] for an empty list.
    pub fn set_perms(&mut self, tx: Tx, path: &str, perms: &[Perm]) -> Result<(), DevError> {
        if perms.is_empty() {
            return Err(proto("a permission list needs an owner entry"));
        }
        let mut p = nul(path);
        for perm in perms {
            p.extend_from_slice(&nul(&perm.encode()));
        }
        self.request(ty::SET_PERMS, tx, &p, path).map(drop)
    }

    /// Starts a transaction.
    ///
    /// # Errors
    ///
    /// xenstore errors; [`DevError::Invalid`] if the reply is not a number.
    pub fn transaction_start(&mut self) -> Result<Tx, DevError> {
        let reply = self.request(ty::TRANSACTION_START, 0, b"\0", "")?;
        let text = String::from_utf8_lossy(&reply);
        text.trim_end_matches('\0')
            .parse()
            .map_err(|_| proto(format!("transaction id {text:?} is not a number")))
    }

    /// Ends transaction `tx`, committing if `commit`. A conflicting commit
    /// fails with errno `EAGAIN`: start again (see [`XenStore::transact`]).
    ///
    /// # Errors
    ///
    /// xenstore errors.
    pub fn transaction_end(&mut self, tx: Tx, commit: bool) -> Result<(), DevError> {
        let arg: &[u8] = if commit { b"T\0" } else { b"F\0" };
        self.request(ty::TRANSACTION_END, tx, arg, "").map(drop)
    }

    /// Runs `body` in a transaction, retrying the whole transaction while
    /// the commit reports `EAGAIN` (at most `attempts` times).
    ///
    /// # Errors
    ///
    /// The body's error (after aborting the transaction), or the commit's.
    pub fn transact<T>(
        &mut self,
        attempts: usize,
        mut body: impl FnMut(&mut Self, Tx) -> Result<T, DevError>,
    ) -> Result<T, DevError> {
        let mut left = attempts.max(1);
        loop {
            let tx = self.transaction_start()?;
            let value = match body(self, tx) {
                Ok(v) => v,
                Err(e) => {
                    let _ = self.transaction_end(tx, false);
                    return Err(e);
                }
            };
            match self.transaction_end(tx, true) {
                Ok(()) => return Ok(value),
                Err(DevError::Xenstore { ref errno, .. }) if errno == "EAGAIN" && left > 1 => {
                    left -= 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Watches `path` (and below), tagging events with `token`.
    ///
    /// # Errors
    ///
    /// xenstore errors naming `path`.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), DevError> {
        let mut p = nul(path);
        p.extend_from_slice(&nul(token));
        self.request(ty::WATCH, 0, &p, path).map(drop)
    }

    /// Removes a watch.
    ///
    /// # Errors
    ///
    /// xenstore errors naming `path`.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), DevError> {
        let mut p = nul(path);
        p.extend_from_slice(&nul(token));
        self.request(ty::UNWATCH, 0, &p, path).map(drop)
    }

    /// The next watch event as (path, token), blocking until one arrives.
    ///
    /// # Errors
    ///
    /// I/O errors; [`DevError::Invalid`] for a non-event message.
    pub fn next_watch_event(&mut self) -> Result<(String, String), DevError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(e);
        }
        let (h, body) = self.read_message()?;
        if h.ty != ty::WATCH_EVENT {
            return Err(proto(format!(
                "unexpected message type {} while waiting for a watch",
                h.ty
            )));
        }
        self.queue_event(&body);
        self.events
            .pop_front()
            .ok_or_else(|| proto("empty watch event"))
    }

    /// Drops the watch events queued so far (those that arrived between a
    /// request and its reply); returns how many there were.
    pub fn take_queued_events(&mut self) -> usize {
        let n = self.events.len();
        self.events.clear();
        n
    }

    /// The home path of domain `domid` (`/local/domain/<domid>`).
    ///
    /// # Errors
    ///
    /// xenstore errors.
    pub fn domain_path(&mut self, domid: u16) -> Result<String, DevError> {
        let arg = domid.to_string();
        let reply = self.request(ty::GET_DOMAIN_PATH, 0, &nul(&arg), &arg)?;
        Ok(String::from_utf8_lossy(&reply)
            .trim_end_matches('\0')
            .to_owned())
    }

    /// Our own domain id, from the relative key `domid`.
    ///
    /// # Errors
    ///
    /// xenstore errors; [`DevError::Invalid`] if missing or not a number.
    pub fn own_domid(&mut self) -> Result<u16, DevError> {
        let v = self
            .read(0, "domid")?
            .ok_or_else(|| proto("key domid is missing"))?;
        v.parse()
            .map_err(|_| proto(format!("domid {v:?} is not a number")))
    }
}

impl<S: Read + Write + AsFd> XenStore<S> {
    /// The stream's fd (to poll it beside other fds for watch events;
    /// check [`XenStore::take_queued_events`] first: events that arrived
    /// during a request are already read off it).
    pub fn stream_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// The next watch event as (path, token), or `None` once `deadline`
    /// passes without one (the stream is polled, so the wait ends at the
    /// deadline even on `/dev/xen/xenbus`, which has no timeout of its own).
    ///
    /// # Errors
    ///
    /// I/O errors; [`DevError::Invalid`] for a non-event message.
    pub fn next_watch_event_until(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<(String, String)>, DevError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let readable = crate::devmem::poll_readable(self.stream.as_fd(), Some(left))
            .map_err(io_err("poll for a watch event"))?;
        if !readable {
            return Ok(None);
        }
        self.next_watch_event().map(Some)
    }
}

fn nul(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::fake::FakeXenstore;

    fn store() -> (XenStore<std::os::unix::net::UnixStream>, FakeXenstore) {
        let fake = FakeXenstore::start(3);
        (XenStore::new(fake.connect()), fake)
    }

    #[test]
    fn header_is_sixteen_bytes_native_endian() {
        let h = Header {
            ty: ty::WRITE,
            req_id: 2,
            tx_id: 3,
            len: 4,
        };
        let b = h.as_bytes();
        assert_eq!(b.len(), 16);
        assert_eq!(&b[..4], &11u32.to_ne_bytes());
        assert_eq!(&b[12..], &4u32.to_ne_bytes());
    }

    #[test]
    fn read_write_rm_and_missing_keys() {
        let (mut xs, _fake) = store();
        assert_eq!(xs.read(0, "/local/domain/3/a/b").unwrap(), None);
        xs.write(0, "/local/domain/3/a/b", "42").unwrap();
        assert_eq!(
            xs.read(0, "/local/domain/3/a/b").unwrap().as_deref(),
            Some("42")
        );
        assert_eq!(
            xs.directory(0, "/local/domain/3/a").unwrap(),
            vec!["b".to_string()]
        );
        xs.rm(0, "/local/domain/3/a").unwrap();
        assert_eq!(xs.read(0, "/local/domain/3/a/b").unwrap(), None);
        xs.rm(0, "/local/domain/3/a").unwrap();
        assert_eq!(xs.own_domid().unwrap(), 3);
        assert_eq!(xs.domain_path(3).unwrap(), "/local/domain/3");
    }

    #[test]
    fn transactions_hide_writes_until_commit_and_retry_on_eagain() {
        let (mut xs, fake) = store();
        let mut other = XenStore::new(fake.connect());
        let tx = xs.transaction_start().unwrap();
        assert_ne!(tx, 0);
        xs.write(tx, "/local/domain/3/t/k", "v").unwrap();
        assert_eq!(other.read(0, "/local/domain/3/t/k").unwrap(), None);
        xs.transaction_end(tx, true).unwrap();
        assert_eq!(
            other.read(0, "/local/domain/3/t/k").unwrap().as_deref(),
            Some("v")
        );
        // Aborted: nothing lands.
        let tx = xs.transaction_start().unwrap();
        xs.write(tx, "/local/domain/3/t/gone", "x").unwrap();
        xs.transaction_end(tx, false).unwrap();
        assert_eq!(other.read(0, "/local/domain/3/t/gone").unwrap(), None);
        // The fake refuses the next two commits with EAGAIN.
        fake.fail_commits(2);
        let mut runs = 0;
        xs.transact(5, |xs, tx| {
            runs += 1;
            xs.write(tx, "/local/domain/3/t/retry", &runs.to_string())
        })
        .unwrap();
        assert_eq!(runs, 3);
        assert_eq!(
            other.read(0, "/local/domain/3/t/retry").unwrap().as_deref(),
            Some("3")
        );
        fake.fail_commits(9);
        let e = xs
            .transact(2, |xs, tx| xs.write(tx, "/local/domain/3/t/x", "y"))
            .unwrap_err();
        assert!(
            matches!(e, DevError::Xenstore { ref errno, .. } if errno == "EAGAIN"),
            "{e}"
        );
    }

    #[test]
    fn permissions_are_encoded_and_enforced_by_the_fake() {
        let (mut xs, fake) = store();
        fake.introduce(7);
        xs.write(0, "/p", "1").unwrap();
        xs.set_perms(
            0,
            "/p",
            &[
                Perm {
                    access: Access::None,
                    domid: 3,
                },
                Perm {
                    access: Access::Read,
                    domid: 7,
                },
            ],
        )
        .unwrap();
        assert_eq!(fake.perms("/p"), vec!["n3".to_string(), "r7".to_string()]);
        // Domain 7 reads it; domain 8, given nothing, is refused.
        let mut seven = XenStore::new(fake.connect_as(7));
        assert_eq!(seven.read(0, "/p").unwrap().as_deref(), Some("1"));
        let e = XenStore::new(fake.connect_as(8)).read(0, "/p").unwrap_err();
        assert!(e.to_string().contains("EACCES"), "{e}");
        assert!(xs.set_perms(0, "/p", &[]).is_err());
        let e = xs
            .set_perms(
                0,
                "/missing",
                &[Perm {
                    access: Access::Both,
                    domid: 0,
                }],
            )
            .unwrap_err();
        assert!(
            e.to_string().contains("/missing") && e.to_string().contains("ENOENT"),
            "{e}"
        );
    }

    #[test]
    fn refusals_follow_xenstored_parents_and_domains_not_yet_introduced() {
        let (mut xs, fake) = store();
        let mut seven = XenStore::new(fake.connect_as(7));
        let dir = "/local/domain/3/data/vchan/7/1";
        // Nothing yet: the nearest existing parent, domain 3's home, is
        // not readable by domain 7, so the answer is EACCES, not ENOENT.
        let e = seven.read(0, &format!("{dir}/ring-ref")).unwrap_err();
        assert!(e.to_string().contains("EACCES"), "{e}");
        // Domain 3 sees its own missing key as missing.
        assert_eq!(xs.read(0, &format!("{dir}/ring-ref")).unwrap(), None);
        // New directories inherit the home's permissions, owned by the
        // (unprivileged) writer.
        xs.write(0, &format!("{dir}/ring-ref"), "8").unwrap();
        assert_eq!(fake.perms(dir), ["n3", "r3"]);
        // Opened to domain 7, the key reads; its sibling, still missing
        // under an unreadable directory, is EACCES.
        let perms = [
            Perm {
                access: Access::None,
                domid: 3,
            },
            Perm {
                access: Access::Read,
                domid: 7,
            },
        ];
        xs.set_perms(0, &format!("{dir}/ring-ref"), &perms).unwrap();
        assert_eq!(
            seven
                .read(0, &format!("{dir}/ring-ref"))
                .unwrap()
                .as_deref(),
            Some("8")
        );
        let e = seven.read(0, &format!("{dir}/event-channel")).unwrap_err();
        assert!(e.to_string().contains("EACCES"), "{e}");
        // A permission naming a domain xenstored does not know yet is
        // dropped, and stays dropped once the domain is introduced.
        let mut nine_perms = perms;
        nine_perms[1].domid = 9;
        xs.write(0, "/local/domain/3/early", "x").unwrap();
        xs.set_perms(0, "/local/domain/3/early", &nine_perms)
            .unwrap();
        assert_eq!(fake.perms("/local/domain/3/early"), ["n3"]);
        let mut nine = XenStore::new(fake.connect_as(9));
        let e = nine.read(0, "/local/domain/3/early").unwrap_err();
        assert!(e.to_string().contains("EACCES"), "{e}");
        // Domain 0 is privileged: it reads everything.
        let mut zero = XenStore::new(fake.connect_as(0));
        assert_eq!(
            zero.read(0, "/local/domain/3/early").unwrap().as_deref(),
            Some("x")
        );
        // A watch event reaches only a watcher that may read the node.
        seven.watch(dir, "t").unwrap();
        assert_eq!(seven.next_watch_event().unwrap(), (dir.into(), "t".into()));
        xs.write(0, &format!("{dir}/hidden"), "1").unwrap();
        xs.write(0, &format!("{dir}/ring-ref"), "9").unwrap();
        assert_eq!(
            seven.next_watch_event().unwrap(),
            (format!("{dir}/ring-ref"), "t".into())
        );
    }

    #[test]
    fn watch_events_interleave_with_replies() {
        let (mut xs, fake) = store();
        let mut other = XenStore::new(fake.connect());
        xs.watch("/w", "tok").unwrap();
        // The fake fires the initial event on registration, like xenstored.
        assert_eq!(xs.next_watch_event().unwrap(), ("/w".into(), "tok".into()));
        other.write(0, "/w/x", "1").unwrap();
        // A request made now sees the event arrive before its reply.
        assert_eq!(xs.read(0, "/w/x").unwrap().as_deref(), Some("1"));
        assert_eq!(
            xs.next_watch_event().unwrap(),
            ("/w/x".into(), "tok".into())
        );
        xs.unwatch("/w", "tok").unwrap();
    }

    /// Answers one request on `peer` with `header` and `payload`.
    fn reply_once(peer: &mut std::os::unix::net::UnixStream, header: Header, payload: &[u8]) {
        let mut raw = [0u8; 16];
        peer.read_exact(&mut raw).unwrap();
        let req = Header::read_from_bytes(&raw).unwrap();
        let mut body = vec![0u8; req.len as usize];
        peer.read_exact(&mut body).unwrap();
        let h = Header {
            req_id: if header.req_id == u32::MAX {
                req.req_id
            } else {
                header.req_id
            },
            ..header
        };
        peer.write_all(h.as_bytes()).unwrap();
        peer.write_all(payload).unwrap();
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        use std::os::unix::net::UnixStream;
        let cases: [(Header, &[u8], &str); 3] = [
            (
                Header {
                    ty: ty::READ,
                    req_id: u32::MAX,
                    tx_id: 0,
                    len: 5000,
                },
                b"",
                "exceeds",
            ),
            (
                Header {
                    ty: ty::READ,
                    req_id: 99,
                    tx_id: 0,
                    len: 0,
                },
                b"",
                "request 99",
            ),
            (
                Header {
                    ty: ty::WRITE,
                    req_id: u32::MAX,
                    tx_id: 0,
                    len: 3,
                },
                b"OK\0",
                "reply type",
            ),
        ];
        for (header, payload, expect) in cases {
            let (ours, mut peer) = UnixStream::pair().unwrap();
            let mut xs = XenStore::new(ours);
            let t = std::thread::spawn(move || reply_once(&mut peer, header, payload));
            let e = xs.read(0, "/k").unwrap_err();
            assert!(e.to_string().contains(expect), "{e}");
            t.join().unwrap();
        }
        // A peer that hangs up mid-reply is an I/O error naming xenbus.
        let (ours, peer) = UnixStream::pair().unwrap();
        drop(peer);
        let e = XenStore::new(ours).read(0, "/k").unwrap_err();
        assert!(e.to_string().contains(XENBUS_PATH), "{e}");
        // Oversized requests never leave.
        let (ours, _peer) = UnixStream::pair().unwrap();
        let e = XenStore::new(ours)
            .write(0, "/k", &"x".repeat(PAYLOAD_MAX))
            .unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
    }
}
