//! Mapping a peer's granted pages through `/dev/xen/gntdev`.
//!
//! `MAP_GRANT_REF` registers (domain, ref) pairs and returns an mmap offset
//! ("index"); mapping the device at that offset maps the peer's pages.
//! `SET_UNMAP_NOTIFY` asks the kernel to clear a byte and/or send an event
//! when the mapping goes (the vchan client's live byte). The kernel keeps
//! the grants mapped while any mapping exists, so we release our handle
//! (`UNMAP_GRANT_REF`) right after mapping.

use super::gntalloc::UnmapNotifyArg;
use super::{DomId, Driver, UnmapNotify, XenDevice, GRANT_PAGE};
use crate::devmem::{ioc, DevError, IoctlArg, IoctlRequest, MappedRegion, IOC_NONE};
use std::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The device's standard path.
pub const GNTDEV_PATH: &str = "/dev/xen/gntdev";

/// `struct ioctl_gntdev_grant_ref`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct GrantRef {
    /// The granting domain.
    pub domid: u32,
    /// The grant ref.
    pub gref: u32,
}

/// `struct ioctl_gntdev_map_grant_ref` (with its first trailing ref).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct MapGrantRef {
    /// Number of refs.
    pub count: u32,
    /// Padding in the uapi struct.
    pub pad: u32,
    /// Out: the mmap offset.
    pub index: u64,
    /// The first ref (the rest follow it in the buffer).
    pub refs: [GrantRef; 1],
}

/// `struct ioctl_gntdev_unmap_grant_ref`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct UnmapGrantRef {
    /// The index `MAP_GRANT_REF` returned.
    pub index: u64,
    /// Number of refs.
    pub count: u32,
    /// Padding in the uapi struct.
    pub pad: u32,
}

/// `IOCTL_GNTDEV_MAP_GRANT_REF` (argument: [`MapGrantRef`] whose `refs`
/// run on for `count` entries).
#[allow(unsafe_code)]
pub const IOCTL_GNTDEV_MAP_GRANT_REF: IoctlRequest =
    // SAFETY: `gntdev_ioctl_map_grant_ref` (drivers/xen/gntdev.c) copies the
    // struct in, then `op.count` refs from `&u->refs`, then the struct back
    // out: exactly the extent `Counted` describes.
    unsafe {
        IoctlRequest::new(
            ioc(IOC_NONE, b'G', 0, size_of::<MapGrantRef>()),
            IoctlArg::Counted {
                header_len: size_of::<MapGrantRef>(),
                count_at: offset_of!(MapGrantRef, count),
                array_at: offset_of!(MapGrantRef, refs),
                elem_len: size_of::<GrantRef>(),
            },
        )
    };
/// `IOCTL_GNTDEV_UNMAP_GRANT_REF`.
#[allow(unsafe_code)]
pub const IOCTL_GNTDEV_UNMAP_GRANT_REF: IoctlRequest =
    // SAFETY: `gntdev_ioctl_unmap_grant_ref` reads one whole struct and
    // writes nothing.
    unsafe {
        IoctlRequest::new(
            ioc(IOC_NONE, b'G', 1, size_of::<UnmapGrantRef>()),
            IoctlArg::Fixed(size_of::<UnmapGrantRef>()),
        )
    };
/// `IOCTL_GNTDEV_SET_UNMAP_NOTIFY` (the same request as
/// [`IOCTL_GNTALLOC_SET_UNMAP_NOTIFY`](super::gntalloc::IOCTL_GNTALLOC_SET_UNMAP_NOTIFY)).
#[allow(unsafe_code)]
pub const IOCTL_GNTDEV_SET_UNMAP_NOTIFY: IoctlRequest =
    // SAFETY: `gntdev_ioctl_notify` reads one whole struct and writes
    // nothing.
    unsafe {
        IoctlRequest::new(
            ioc(IOC_NONE, b'G', 7, size_of::<UnmapNotifyArg>()),
            IoctlArg::Fixed(size_of::<UnmapNotifyArg>()),
        )
    };

/// Maps the pages `refs` that domain `domid` granted us, in order, as one
/// region, with the unmap notification if asked.
///
/// # Errors
///
/// I/O errors naming the device and the step; [`DevError::Invalid`] for no
/// refs or a notify offset beyond the pages.
///
/// # Examples
///
/// A mapping with an unmap notification, against the fake host of the
/// `fakes` feature (on Xen, pass `XenDevice::open(GNTDEV_PATH)`): when
/// domain 7's process dies, the kernel clears the byte it marked itself
/// live with, and the granting side sees it.
///
/// ```
/// # #[cfg(feature = "fakes")] {
/// use ring_core::mem::SharedMem;
/// use ring_hosted::xen::{fake::FakeXen, gntalloc, gntdev, UnmapNotify};
///
/// let xen = FakeXen::new();
/// let page = gntalloc::share(&xen.gntalloc(0), 7, 1, true, UnmapNotify::default())?;
/// let on_death = UnmapNotify { clear_byte: Some(100), send_event: None };
/// let theirs = gntdev::map(&xen.gntdev(7), 0, &page.refs, on_death)?;
/// theirs.store_u8(100, 1)?;
/// assert_eq!(page.mem.load_u8(100)?, 1);
/// xen.kill(7);
/// assert_eq!(page.mem.load_u8(100)?, 0);
/// # }
/// # Ok::<(), ring_hosted::devmem::DevError>(())
/// ```
pub fn map(
    dev: &XenDevice,
    domid: DomId,
    refs: &[u32],
    notify: UnmapNotify,
) -> Result<MappedRegion, DevError> {
    let count = u32::try_from(refs.len())
        .ok()
        .filter(|&c| c > 0)
        .ok_or_else(|| DevError::invalid(dev.path(), format!("cannot map {} refs", refs.len())))?;
    let refs_at = std::mem::offset_of!(MapGrantRef, refs);
    let mut buf =
        vec![0u8; (refs_at + size_of::<GrantRef>() * refs.len()).max(size_of::<MapGrantRef>())];
    let header = MapGrantRef {
        count,
        ..MapGrantRef::default()
    };
    buf[..size_of::<MapGrantRef>()].copy_from_slice(header.as_bytes());
    for (slot, &gref) in buf[refs_at..]
        .chunks_exact_mut(size_of::<GrantRef>())
        .zip(refs)
    {
        let r = GrantRef {
            domid: domid.into(),
            gref,
        };
        slot.copy_from_slice(r.as_bytes());
    }
    dev.ioctl(
        Driver::Gntdev,
        "map grant refs",
        IOCTL_GNTDEV_MAP_GRANT_REF,
        &mut buf,
    )?;
    let (reply, _) = MapGrantRef::read_from_prefix(&buf)
        .map_err(|_| DevError::invalid(dev.path(), "short map reply"))?;
    let index = reply.index;
    let release = |dev: &XenDevice| {
        let mut arg = UnmapGrantRef {
            index,
            count,
            pad: 0,
        };
        dev.ioctl(
            Driver::Gntdev,
            "unmap grant refs",
            IOCTL_GNTDEV_UNMAP_GRANT_REF,
            arg.as_mut_bytes(),
        )
    };
    let len = refs.len() * GRANT_PAGE;
    dev.map_grants(
        Driver::Gntdev,
        index,
        len,
        notify,
        IOCTL_GNTDEV_SET_UNMAP_NOTIFY,
        release,
    )
}
