//! Xen backends: grant pages, event channels, xenstore, and a vchan built
//! on them that follows libxenvchan's set-up order.
//!
//! - [`gntalloc`]: share our pages with a domain (`/dev/xen/gntalloc`),
//!   with an unmap notification that clears a byte and sends an event if
//!   we die;
//! - [`gntdev`]: map a peer's grant refs (`/dev/xen/gntdev`);
//! - [`evtchn`]: event channels (`/dev/xen/evtchn`) as a
//!   [`Signal`](ring_core::signal::Signal);
//! - [`xenstore`]: the xenstore wire protocol over `/dev/xen/xenbus` (or
//!   any byte stream);
//! - [`vchan`]: a vchan server and client over the four;
//! - [`stream`]: a vchan as a pollable stream on the event channel, what
//!   `ring listen --xen` and `ring connect --xen` pipe through.
//!
//! Every ioctl goes through the [`Sys`] seam, and every
//! device is opened either from its standard path or from a file handed in,
//! so `fake` (feature `fakes`) can stand in for a Xen host in tests. The
//! whole module also runs on the real Xen 4.17 hypervisor under QEMU, dom0
//! and a PVH domU, against Debian's libxenvchan (ring-cli's `xen_real`
//! test); see `docs/devices.md`.

pub mod evtchn;
#[cfg(any(test, feature = "fakes"))]
pub mod fake;
pub mod gntalloc;
pub mod gntdev;
pub mod stream;
pub mod vchan;
pub mod xenstore;

use crate::devmem::{DevError, IoctlRequest, Kernel, MappedRegion, Sys};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zerocopy::IntoBytes;

/// A Xen domain id.
pub type DomId = u16;

/// Size of a grant page (Xen's page, whatever the guest's page size).
pub const GRANT_PAGE: usize = 4096;

/// What the kernel does to a shared or mapped page when it is unmapped
/// (including when the process dies): clear one byte, send one event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnmapNotify {
    /// Byte offset within the mapping to clear (the vchan live byte).
    pub clear_byte: Option<usize>,
    /// Local event-channel port to notify.
    pub send_event: Option<u32>,
}

/// `UNMAP_NOTIFY_CLEAR_BYTE` in `<xen/gntalloc.h>` and `<xen/gntdev.h>`.
pub const UNMAP_NOTIFY_CLEAR_BYTE: u32 = 0x1;
/// `UNMAP_NOTIFY_SEND_EVENT` in `<xen/gntalloc.h>` and `<xen/gntdev.h>`.
pub const UNMAP_NOTIFY_SEND_EVENT: u32 = 0x2;

impl UnmapNotify {
    /// The `action` bits for the ioctl.
    pub fn action(&self) -> u32 {
        let mut a = 0;
        if self.clear_byte.is_some() {
            a |= UNMAP_NOTIFY_CLEAR_BYTE;
        }
        if self.send_event.is_some() {
            a |= UNMAP_NOTIFY_SEND_EVENT;
        }
        a
    }
}

/// An open Xen device file and the seam its ioctls go through.
#[derive(Clone)]
pub struct XenDevice {
    file: Arc<File>,
    path: PathBuf,
    sys: Arc<dyn Sys>,
    /// The kernel's name for the device, when [`XenDevice::open`] checked
    /// it (`xen/gntalloc`, ...); `None` when [`XenDevice::from_parts`]'s
    /// caller vouched for the file instead.
    driver: Option<String>,
}

/// The Xen drivers whose ioctls we issue, by the kernel's name for their
/// device: an ioctl is made only on a file of the driver it is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Driver {
    Gntalloc,
    Gntdev,
    Evtchn,
}

impl Driver {
    fn device_name(self) -> &'static str {
        match self {
            Driver::Gntalloc => "xen/gntalloc",
            Driver::Gntdev => "xen/gntdev",
            Driver::Evtchn => "xen/evtchn",
        }
    }
}

impl std::fmt::Debug for XenDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenDevice")
            .field("path", &self.path)
            .finish()
    }
}

impl XenDevice {
    /// Opens the device at `path` read-write, with real system calls.
    ///
    /// # Errors
    ///
    /// I/O errors naming `path` (no Xen, or no permission);
    /// [`DevError::Invalid`] if the file there is not a Xen device (the
    /// kernel's name for it is checked: each ioctl is later made only on a
    /// file of the driver it belongs to).
    ///
    /// # Examples
    ///
    /// Needs a Xen domain with the evtchn driver and permission to open
    /// `/dev/xen/evtchn`; elsewhere the open fails, naming the path:
    ///
    /// ```no_run
    /// use ring_hosted::devmem::DevError;
    /// use ring_hosted::xen::evtchn::{EventChannel, EVTCHN_PATH};
    /// use ring_hosted::xen::XenDevice;
    ///
    /// let evtchn = match XenDevice::open(EVTCHN_PATH) {
    ///     Ok(dev) => dev,
    ///     Err(e) => {
    ///         eprintln!("not on Xen: {e}");
    ///         return Ok(());
    ///     }
    /// };
    /// let port = EventChannel::bind_unbound(evtchn, 0)?;
    /// println!("port {} offered to dom0", port.port());
    /// # Ok::<(), DevError>(())
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DevError> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(DevError::io("open", path))?;
        let name = crate::devmem::device_name(&file);
        let Some(name) = name.filter(|n| n.starts_with("xen/")) else {
            return Err(DevError::invalid(path, "not a Xen device"));
        };
        Ok(XenDevice {
            file: Arc::new(file),
            path: path.to_path_buf(),
            sys: Arc::new(Kernel),
            driver: Some(name),
        })
    }

    /// A device from an already open file and a [`Sys`] (tests pass a
    /// memfd and a fake).
    ///
    /// # Safety
    ///
    /// `file` must be the device of every Xen driver whose requests are
    /// made on it (gntalloc's by [`gntalloc`], ...), or `sys` a seam that
    /// never reaches the kernel (a fake or a recorded replay): an ioctl
    /// number means what we think only to the driver that owns it.
    #[allow(unsafe_code)]
    pub unsafe fn from_parts(file: File, path: PathBuf, sys: Arc<dyn Sys>) -> Self {
        XenDevice {
            file: Arc::new(file),
            path,
            sys,
            driver: None,
        }
    }

    /// The device's path (for errors).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    pub(crate) fn sys(&self) -> &dyn Sys {
        &*self.sys
    }

    /// The step both grant devices end with, after their alloc or map
    /// ioctl returned mmap `index`: maps the `len` bytes there, asks for
    /// `notify` with ioctl `set_notify`, then drops the device's own handle
    /// with `release` (the mapping keeps the grants alive). Any failure
    /// releases the handle as well, so nothing leaks.
    pub(crate) fn map_grants(
        &self,
        driver: Driver,
        index: u64,
        len: usize,
        notify: UnmapNotify,
        set_notify: IoctlRequest,
        release: impl Fn(&XenDevice) -> Result<i32, DevError>,
    ) -> Result<MappedRegion, DevError> {
        let mapped = MappedRegion::map(self.file(), self.path(), index, len).and_then(|mem| {
            self.set_unmap_notify(driver, index, len, notify, set_notify)
                .map(|()| mem)
        });
        match mapped {
            Ok(mem) => {
                release(self)?;
                Ok(mem)
            }
            Err(e) => {
                let _ = release(self);
                Err(e)
            }
        }
    }

    /// Asks the device to clear a byte and/or send an event when the `len`
    /// bytes mapped at `index` go away (nothing if `notify` asks for
    /// neither).
    fn set_unmap_notify(
        &self,
        driver: Driver,
        index: u64,
        len: usize,
        notify: UnmapNotify,
        set_notify: IoctlRequest,
    ) -> Result<(), DevError> {
        if notify.action() == 0 {
            return Ok(());
        }
        let offset = notify.clear_byte.unwrap_or(0);
        if offset >= len {
            return Err(DevError::invalid(
                self.path(),
                format!("notify offset {offset} beyond the pages"),
            ));
        }
        let mut arg = gntalloc::UnmapNotifyArg {
            index: index + offset as u64,
            action: notify.action(),
            event_channel_port: notify.send_event.unwrap_or(0),
        };
        self.ioctl(driver, "set unmap notify", set_notify, arg.as_mut_bytes())
            .map(drop)
    }

    /// Issues ioctl `request`, one of `driver`'s, with `arg`'s bytes,
    /// naming `op` in errors. Refused without a system call if the device
    /// is another driver's.
    #[allow(unsafe_code)]
    pub(crate) fn ioctl(
        &self,
        driver: Driver,
        op: &'static str,
        request: IoctlRequest,
        arg: &mut [u8],
    ) -> Result<i32, DevError> {
        use std::os::fd::AsFd;
        if let Some(name) = self.driver.as_deref() {
            if name != driver.device_name() {
                return Err(DevError::invalid(
                    &self.path,
                    format!("{op}: the device is {name}, not {}", driver.device_name()),
                ));
            }
        }
        // SAFETY: the file is `driver`'s device: the kernel said so when
        // `open` checked it, or `from_parts`'s caller vouched for it (or
        // for a seam that never reaches the kernel).
        unsafe { self.sys.ioctl(self.file.as_fd(), request, arg) }
            .map_err(DevError::io(op, &self.path))
    }
}
