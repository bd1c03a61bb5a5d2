//! On Xen: ring-hosted's `xen::vchan` (gntalloc, gntdev, evtchn and
//! xenstore, set up in libxenvchan's order) under the C calls.

use crate::conn::Wake;
use libc::c_int;
use ring_hosted::devmem::DevError;
use ring_hosted::xen::evtchn::{EventChannel, EVTCHN_PATH};
use ring_hosted::xen::gntalloc::GNTALLOC_PATH;
use ring_hosted::xen::gntdev::GNTDEV_PATH;
use ring_hosted::xen::vchan::{self, ServerConfig, XenVchan};
use ring_hosted::xen::xenstore::XenStore;
use ring_hosted::xen::XenDevice;
use std::fs::File;

/// The `errno` a xenstore error name stands for.
fn xenstore_errno(name: &str) -> c_int {
    match name {
        "ENOENT" => libc::ENOENT,
        "EACCES" => libc::EACCES,
        "EAGAIN" => libc::EAGAIN,
        "EINVAL" => libc::EINVAL,
        "EEXIST" => libc::EEXIST,
        "ENOSPC" => libc::ENOSPC,
        "EPERM" => libc::EPERM,
        "E2BIG" => libc::E2BIG,
        "EBUSY" => libc::EBUSY,
        "EQUOTA" => libc::EDQUOT,
        _ => libc::EIO,
    }
}

/// The `errno` for a device, xenstore or ring error.
pub(crate) fn errno(e: &DevError) -> c_int {
    match e {
        DevError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        DevError::Xenstore { errno, .. } => xenstore_errno(errno),
        DevError::Parse { .. } | DevError::Invalid { .. } => libc::EINVAL,
        DevError::NotFound { .. } => libc::ENOENT,
        DevError::Closed => libc::EPIPE,
        DevError::TimedOut { .. } => libc::ETIMEDOUT,
        DevError::Vchan(v) => crate::conn::ring_errno(v),
        _ => libc::EIO,
    }
}

impl Wake for EventChannel {
    fn errno(e: &DevError) -> c_int {
        errno(e)
    }
}

/// A Xen end: the vchan, and (server) the xenstore connection that
/// removes its keys at close.
pub(crate) struct XenEnd {
    pub(crate) vchan: XenVchan,
    pub(crate) store: Option<XenStore<File>>,
}

fn open(path: &str) -> Result<XenDevice, c_int> {
    XenDevice::open(path).map_err(|e| errno(&e))
}

/// `server_init` on Xen: shares the page and rings with domain `peer`
/// and publishes them under `xs_path`.
pub(crate) fn serve(
    peer: u16,
    xs_path: &str,
    read_min: usize,
    write_min: usize,
) -> Result<XenEnd, c_int> {
    let mut store = XenStore::open().map_err(|e| errno(&e))?;
    let config = ServerConfig {
        peer,
        path: xs_path.to_owned(),
        read_min,
        write_min,
    };
    let vchan = vchan::serve(
        &open(GNTALLOC_PATH)?,
        open(EVTCHN_PATH)?,
        &mut store,
        &config,
    )
    .map_err(|e| errno(&e))?;
    Ok(XenEnd {
        vchan,
        store: Some(store),
    })
}

/// `client_init` on Xen: maps what the server in domain `server`
/// published under `xs_path` (no waiting: a missing key fails at once,
/// as in C).
pub(crate) fn connect(server: u16, xs_path: &str) -> Result<XenEnd, c_int> {
    let mut store = XenStore::open().map_err(|e| errno(&e))?;
    let vchan = vchan::connect(
        &open(GNTDEV_PATH)?,
        open(EVTCHN_PATH)?,
        &mut store,
        server,
        xs_path,
    )
    .map_err(|e| errno(&e))?;
    Ok(XenEnd { vchan, store: None })
}
