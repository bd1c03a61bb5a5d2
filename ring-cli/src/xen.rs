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

/// How a Xen pipe ends (`--timeout`, `--accept-timeout`, `--linger-ms`).
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
fn watch_domain(s: &mut XenStream, peer: DomId) -> Result<(), Failure> {
    let store = XenStore::open()?;
    match s.signal_mut().watch_peer_domain(store, peer) {
        Ok(()) => Ok(()),
        Err(DevError::Closed) => Err(Failure {
            code: exit::PEER_GONE,
            reason: format!("domain {peer} does not exist (or is being destroyed)"),
        }),
        Err(e) => Err(e.into()),
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
    let server = vchan::serve(&gntalloc, evtchn, &mut store, &config)?;
    let mut s = server.into_stream();
    let r = watch_domain(&mut s, peer).and_then(|()| pipe_stream(&mut s, end.pipe_end()));
    drop(s);
    // As libxenvchan's server: the keys go with the server. A failure to
    // remove them is worth a line only when all else went well.
    match (vchan::remove_published(&mut store, path), r) {
        (Err(e), Ok(())) => Err(format!("cannot remove {path} from xenstore: {e}").into()),
        (_, r) => r,
    }
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
