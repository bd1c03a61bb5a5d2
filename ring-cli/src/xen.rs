//! `ring listen --xen` and `ring connect --xen`: a vchan between Xen
//! domains (grant pages, an event channel, xenstore), piped through the
//! same loop as every other stream ([`pipe_stream`]).
//!
//! Addressing is libxenvchan's: the peer's domain id and a xenstore path.
//! The server publishes `ring-ref` and `event-channel` under the path,
//! readable by the peer's domain only; the client waits for them (through
//! xenstore's `EACCES` for a directory it may not read yet) and connects.
//! A relative path means the server's home: `data/vchan/7/1` is
//! `/local/domain/<server>/data/vchan/7/1` on both sides, so the two
//! command lines can name it alike.
//!
//! The peer is treated as foreign, whoever it is: nothing but the ring
//! runs between domains, so there is no half-close and no final count.
//! The end follows docs/hosted.md's foreign-peer rules (the linger, our
//! live byte cleared, a 10 ms grace). A peer domain destroyed is seen
//! through xenstore's `@releaseDomain` (where we may watch it: dom0) and
//! ends with exit 5.

use super::pipe::{pipe_stream, PipeEnd};
use super::*;
use ring_hosted::devmem::DevError;
use ring_hosted::xen::evtchn::EVTCHN_PATH;
use ring_hosted::xen::gntalloc::GNTALLOC_PATH;
use ring_hosted::xen::gntdev::GNTDEV_PATH;
use ring_hosted::xen::stream::XenStream;
use ring_hosted::xen::vchan::{self, ServerConfig as XenServerConfig};
use ring_hosted::xen::xenstore::XenStore;
use ring_hosted::xen::{DomId, XenDevice};
use std::sync::{Arc, Mutex};

/// How a Xen pipe ends (`--timeout`, `--accept-timeout`, `--linger-ms`).
#[derive(Clone, Copy)]
pub(crate) struct XenEnd {
    pub(crate) timeout: Option<Duration>,
    pub(crate) accept: Option<Duration>,
    pub(crate) linger: Duration,
}

impl XenEnd {
    fn pipe_end(&self) -> PipeEnd {
        PipeEnd {
            linger: Some(self.linger),
            timeout: self.timeout,
            accept: self.accept,
            confirm: false,
        }
    }
}

impl From<DevError> for Failure {
    fn from(e: DevError) -> Self {
        let code = match &e {
            DevError::TimedOut { .. } => exit::TIMED_OUT,
            DevError::Closed => exit::PEER_GONE,
            DevError::Vchan(ring_core::vchan::Error::Corrupt(_)) => exit::CORRUPT,
            _ => exit::FAILED,
        };
        Failure {
            code,
            reason: e.to_string(),
        }
    }
}

/// The xenstore path as a string (a path is given where a socket would
/// be).
fn xenstore_path(path: &Path) -> Result<&str, Failure> {
    match path.to_str() {
        Some(p) if !p.is_empty() && !p.contains('\0') => Ok(p),
        _ => Err(format!("{} is not a xenstore path", path.display()).into()),
    }
}

fn device(path: &str) -> Result<XenDevice, Failure> {
    XenDevice::open(path).map_err(|e| {
        Failure::from(format!(
            "{e} (--xen needs a Xen domain with the xen-gntalloc, xen-gntdev and xen-evtchn \
             drivers loaded)"
        ))
    })
}

/// Watches the peer's domain for its destruction where xenstore lets us
/// (dom0); elsewhere the watch never fires, and a destroyed peer is seen
/// only as silence (`--timeout`).
/// A domain xenstored refuses the watch to goes on without it.
fn watch_domain(s: &mut XenStream, peer: DomId) -> Result<(), Failure> {
    let store = XenStore::open()?;
    match s.signal_mut().watch_peer_domain(store, peer) {
        Err(DevError::Closed) => Err(Failure {
            code: exit::PEER_GONE,
            reason: format!("domain {peer} does not exist (or is being destroyed)"),
        }),
        Ok(()) | Err(_) => Ok(()),
    }
}

/// `ring listen --xen PEER PATH`: publish a vchan for domain `peer` under
/// `path`, pipe through it, and remove the path at the end.
pub(crate) fn listen(peer: DomId, path: &Path, ring_size: u64, end: XenEnd) -> Outcome {
    let path = xenstore_path(path)?;
    let size = ring_bytes(ring_size)?;
    let gntalloc = device(GNTALLOC_PATH)?;
    let evtchn = device(EVTCHN_PATH)?;
    let mut store = XenStore::open()?;
    let config = XenServerConfig {
        peer,
        path: path.to_owned(),
        read_min: size,
        write_min: size,
    };
    // Signals are taken before the keys exist: a script that sees them may
    // stop us at once, and must find them removed.
    let ours = Arc::new(Mutex::new(true));
    remove_on_signal(path, ours.clone())?;
    let server = vchan::serve(&gntalloc, evtchn, &mut store, &config)?;
    let mut s = server.into_stream();
    let r = watch_domain(&mut s, peer).and_then(|()| pipe_stream(&mut s, end.pipe_end()));
    drop(s);
    // As libxenvchan's server: the keys go with the server (and from now
    // on a signal leaves the path alone: it may be another server's). A
    // failure to remove them is worth a line only when all else went well.
    let mut ours = ours.lock().unwrap_or_else(|p| p.into_inner());
    *ours = false;
    match (vchan::remove_published(&mut store, path), r) {
        (Err(e), Ok(())) => Err(format!("cannot remove {path} from xenstore: {e}").into()),
        (_, r) => r,
    }
}

/// On SIGTERM, SIGINT or SIGHUP: removes the server's xenstore path
/// while it is still `ours` (through a connection of its own), says so in
/// one line and exits 128 + the signal's number, as `ring listen` does
/// with its socket.
fn remove_on_signal(path: &str, ours: Arc<Mutex<bool>>) -> Result<(), Failure> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut store = XenStore::open()?;
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| format!("cannot handle SIGTERM/SIGINT/SIGHUP: {e}"))?;
    let path = path.to_owned();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let ours = ours.lock().unwrap_or_else(|p| p.into_inner());
                if *ours {
                    let _ = vchan::remove_published(&mut store, &path);
                }
                let name = signal_hook::low_level::signal_name(sig).unwrap_or("a signal");
                eprintln!("ring: listen: stopped by {name}");
                std::process::exit(128 + sig);
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

/// `ring connect --xen SERVER PATH`: wait for the server in domain
/// `server` to publish under `path` (bounded by `--timeout`), connect,
/// pipe through the vchan.
pub(crate) fn connect(server: DomId, path: &Path, end: XenEnd) -> Outcome {
    let path = xenstore_path(path)?;
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/local/domain/{server}/{path}")
    };
    let gntdev = device(GNTDEV_PATH)?;
    let evtchn = device(EVTCHN_PATH)?;
    let mut store = XenStore::open()?;
    // No --timeout: wait for the server however long it takes, as `ring
    // listen` waits for its client (a century stands in for ever).
    let wait = end
        .timeout
        .unwrap_or(Duration::from_secs(100 * 365 * 86_400));
    vchan::wait_published(&mut store, &path, Instant::now() + wait).map_err(|e| match e {
        e @ DevError::TimedOut { .. } => Failure {
            code: exit::TIMED_OUT,
            reason: format!("no server published at {path} within --timeout: {e}"),
        },
        e => Failure::from(e),
    })?;
    let client = vchan::connect(&gntdev, evtchn, &mut store, server, &path)?;
    let mut s = client.into_stream();
    watch_domain(&mut s, server)?;
    pipe_stream(&mut s, end.pipe_end())
}

/// `ring proxy --xen PEER --ring-listen PATH --to ADDR`: serve vchans to
/// domain `peer` under `path`, one per client, each piped to a connection
/// of its own to `to`. The keys exist only while a server waits for its
/// client: once one joins they are removed, its session goes to a thread,
/// and a fresh vchan (new grants, a new port) is published at once for
/// the next client.
pub(crate) fn proxy_listen(
    peer: DomId,
    path: &Path,
    to: &proxy::Addr,
    ring_size: u64,
    limits: proxy::Limits,
    linger: Duration,
) -> Outcome {
    let path = xenstore_path(path)?.to_owned();
    let size = ring_bytes(ring_size)?;
    let gntalloc = device(GNTALLOC_PATH)?;
    let mut store = XenStore::open()?;
    let mut sessions = proxy::Sessions::new(limits)?;
    let end = XenEnd {
        timeout: limits.timeout,
        accept: None,
        linger,
    }
    .pipe_end();
    let config = XenServerConfig {
        peer,
        path: path.clone(),
        read_min: size,
        write_min: size,
    };
    // Out of grants (gntalloc's limit, 1024 pages by default: two 1 MiB
    // vchans) or ports while sessions run: say so once, keep the
    // sessions, and publish again as they end.
    let mut short: Option<Duration> = None;
    let served = (|| -> Outcome {
        while !sessions.stopping() {
            let server = match device(EVTCHN_PATH)
                .and_then(|ev| Ok(vchan::serve(&gntalloc, ev, &mut store, &config)?))
            {
                Ok(server) => server,
                Err(f) if sessions.active() > 0 => {
                    let pause = short.map_or(Duration::from_millis(10), |p| {
                        (p * 2).min(Duration::from_secs(1))
                    });
                    if short.is_none() {
                        eprintln!(
                            "ring: proxy: cannot publish another vchan now ({}); publishing \
                             again as sessions end ({} running)",
                            f.reason,
                            sessions.active()
                        );
                    }
                    short = Some(pause);
                    std::thread::sleep(pause);
                    continue;
                }
                Err(f) => return Err(f),
            };
            short = None;
            let mut s = server.into_stream();
            watch_domain(&mut s, peer)?;
            // Wait for the client, looking at the stop flag every 100 ms.
            let joined = loop {
                if s.peer_connected() {
                    break true;
                }
                if sessions.stopping() {
                    break false;
                }
                match s.wait_event(None, Some(Instant::now() + Duration::from_millis(100))) {
                    Ok(_) | Err(Error::TimedOut) => {}
                    Err(e) => return Err(e.into()),
                }
            };
            vchan::remove_published(&mut store, &path)?;
            if !joined || !sessions.admit("a vchan client") {
                continue;
            }
            let to = to.clone();
            sessions.start_or_refuse(move || {
                let conn =
                    proxy::Conn::connect(&to).map_err(|e| format!("connect to {to:?}: {e}"))?;
                conn.pipe_xen(&mut s, end)
            });
        }
        Ok(())
    })();
    // Gone with us, whatever happened (one try: it may be gone already).
    let _ = vchan::remove_published(&mut store, &path);
    served?;
    sessions.drain()
}

/// Waits until the server at `path` has published keys other than `last`
/// (the vchan an earlier session joined), or `deadline`.
fn wait_fresh(
    store: &mut XenStore<std::fs::File>,
    path: &str,
    last: Option<&(String, String)>,
    deadline: Instant,
) -> Result<(String, String), Failure> {
    const TOKEN: &str = "ring-proxy-fresh";
    store.watch(path, TOKEN)?;
    let r = (|| loop {
        let mut read = |key: &str| match store.read(0, &format!("{path}/{key}")) {
            Ok(v) => Ok(v),
            Err(DevError::Xenstore { errno, .. }) if errno == "EACCES" => Ok(None),
            Err(e) => Err(Failure::from(e)),
        };
        let keys = (read(vchan::RING_REF)?, read(vchan::EVENT_CHANNEL)?);
        if let (Some(r), Some(e)) = keys {
            let keys = (r, e);
            if last != Some(&keys) {
                return Ok(keys);
            }
        }
        if store.next_watch_event_until(deadline)?.is_none() {
            return Err(Failure {
                code: exit::TIMED_OUT,
                reason: format!("no fresh vchan published at {path} within --timeout"),
            });
        }
    })();
    let _ = store.unwatch(path, TOKEN);
    r
}

/// `ring proxy --xen SERVER --ring-connect PATH --listen ADDR`: accept
/// connections at `listen`, and join a vchan of the server in domain
/// `server` at `path` for each. One connection joins at a time, and never
/// a vchan an earlier one joined: each waits for keys other than the last
/// ones used (as `ring proxy --xen --ring-listen` publishes for every
/// client).
pub(crate) fn proxy_connect(
    server: DomId,
    path: &Path,
    listen: &proxy::Addr,
    limits: proxy::Limits,
    linger: Duration,
) -> Outcome {
    let path = xenstore_path(path)?;
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/local/domain/{server}/{path}")
    };
    let end = XenEnd {
        timeout: limits.timeout,
        accept: None,
        linger,
    }
    .pipe_end();
    let wait = limits
        .timeout
        .unwrap_or(Duration::from_secs(100 * 365 * 86_400));
    let last: Arc<Mutex<Option<(String, String)>>> = Arc::default();
    proxy::accept_loop(listen, limits, move |conn| {
        let (path, last) = (path.clone(), last.clone());
        move || {
            let mut s = {
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                let mut store = XenStore::open()?;
                let keys = wait_fresh(&mut store, &path, last.as_ref(), Instant::now() + wait)?;
                let (gntdev, evtchn) = (device(GNTDEV_PATH)?, device(EVTCHN_PATH)?);
                let client = vchan::connect(&gntdev, evtchn, &mut store, server, &path)?;
                *last = Some(keys);
                client.into_stream()
            };
            watch_domain(&mut s, server)?;
            conn.pipe_xen(&mut s, end)
        }
    })
}
