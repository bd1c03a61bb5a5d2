//! Sharing our pages with another domain through `/dev/xen/gntalloc`.
//!
//! `ALLOC_GREF` allocates pages and grants them to a domain, returning one
//! grant ref per page and an mmap offset ("index"); mapping the device at
//! that offset gives us the pages. `SET_UNMAP_NOTIFY` arranges for the
//! kernel to clear a byte and/or send an event when the mapping goes (the
//! vchan server's live byte, so the client learns if we die). As
//! libxengnttab does, we release our handle (`DEALLOC_GREF`) right after
//! mapping: the kernel keeps the grant until the last mapping is gone.

use super::{DomId, Driver, UnmapNotify, XenDevice, GRANT_PAGE};
use crate::devmem::{ioc, DevError, IoctlArg, IoctlRequest, MappedRegion, IOC_NONE};
use std::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The device's standard path.
pub const GNTALLOC_PATH: &str = "/dev/xen/gntalloc";

/// `struct ioctl_gntalloc_alloc_gref` (with the first of its trailing
/// `gref_ids` and the compiler's tail padding spelled out).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct AllocGref {
    /// The domain to grant to.
    pub domid: u16,
    /// [`GNTALLOC_FLAG_WRITABLE`] or 0.
    pub flags: u16,
    /// Number of pages.
    pub count: u32,
    /// Out: the mmap offset of the pages.
    pub index: u64,
    /// Out: the first grant ref (the rest follow it in the buffer).
    pub gref_ids: [u32; 1],
    /// Tail padding to the struct's 8-byte alignment.
    pub pad: u32,
}

/// `struct ioctl_gntalloc_dealloc_gref`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct DeallocGref {
    /// The index `ALLOC_GREF` returned.
    pub index: u64,
    /// Number of pages.
    pub count: u32,
    /// Tail padding.
    pub pad: u32,
}

/// `struct ioctl_gntalloc_unmap_notify` (the same layout as gntdev's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct UnmapNotifyArg {
    /// The mmap index plus the byte offset to clear.
    pub index: u64,
    /// `UNMAP_NOTIFY_*` bits.
    pub action: u32,
    /// The local port to notify.
    pub event_channel_port: u32,
}

/// `GNTALLOC_FLAG_WRITABLE`: the peer may write the pages.
pub const GNTALLOC_FLAG_WRITABLE: u16 = 1;
/// `IOCTL_GNTALLOC_ALLOC_GREF` (argument: [`AllocGref`] whose `gref_ids`
/// run on for `count` entries).
#[allow(unsafe_code)]
pub const IOCTL_GNTALLOC_ALLOC_GREF: IoctlRequest =
    // SAFETY: `gntalloc_ioctl_alloc` (drivers/xen/gntalloc.c) copies the
    // struct in and out whole, then writes `op.count` grant refs from
    // `arg->gref_ids`: exactly the extent `Counted` describes.
    unsafe {
        IoctlRequest::new(
            ioc(IOC_NONE, b'G', 5, size_of::<AllocGref>()),
            IoctlArg::Counted {
                header_len: size_of::<AllocGref>(),
                count_at: offset_of!(AllocGref, count),
                array_at: offset_of!(AllocGref, gref_ids),
                elem_len: size_of::<u32>(),
            },
        )
    };
/// `IOCTL_GNTALLOC_DEALLOC_GREF`.
#[allow(unsafe_code)]
pub const IOCTL_GNTALLOC_DEALLOC_GREF: IoctlRequest =
    // SAFETY: `gntalloc_ioctl_dealloc` reads one whole struct and writes
    // nothing.
    unsafe {
        IoctlRequest::new(
            ioc(IOC_NONE, b'G', 6, size_of::<DeallocGref>()),
            IoctlArg::Fixed(size_of::<DeallocGref>()),
        )
    };
/// `IOCTL_GNTALLOC_SET_UNMAP_NOTIFY`.
#[allow(unsafe_code)]
pub const IOCTL_GNTALLOC_SET_UNMAP_NOTIFY: IoctlRequest =
    // SAFETY: `gntalloc_ioctl_unmap_notify` reads one whole struct and
    // writes nothing.
    unsafe {
        IoctlRequest::new(
            ioc(IOC_NONE, b'G', 7, size_of::<UnmapNotifyArg>()),
            IoctlArg::Fixed(size_of::<UnmapNotifyArg>()),
        )
    };

/// Pages we share: their grant refs and our mapping of them.
#[derive(Clone, Debug)]
pub struct SharedPages {
    /// One grant ref per page, in order.
    pub refs: Vec<u32>,
    /// Our mapping of the pages.
    pub mem: MappedRegion,
}

/// Shares `count` fresh zeroed pages with `domid` (writable by it if
/// `writable`), maps them, and sets the unmap notification if asked.
///
/// # Errors
///
/// I/O errors naming the device and the step (alloc, mmap, notify);
/// [`DevError::Invalid`] for a zero count or a notify offset beyond the
/// pages.
///
/// # Examples
///
/// Two pages shared by domain 0 with domain 7, against the fake host of the
/// `fakes` feature (on Xen, pass `XenDevice::open(GNTALLOC_PATH)`): domain 7
/// maps them by their refs and sees what was written; domain 8 may not map
/// them.
///
/// ```
/// # #[cfg(feature = "fakes")] {
/// use ring_core::mem::SharedMem;
/// use ring_hosted::xen::{fake::FakeXen, gntalloc, gntdev, UnmapNotify};
///
/// let xen = FakeXen::new();
/// let shared = gntalloc::share(&xen.gntalloc(0), 7, 2, true, UnmapNotify::default())?;
/// assert_eq!(shared.refs.len(), 2);
/// shared.mem.write(4096, b"page two")?;
/// let theirs = gntdev::map(&xen.gntdev(7), 0, &shared.refs, UnmapNotify::default())?;
/// let mut buf = [0u8; 8];
/// theirs.read(4096, &mut buf)?;
/// assert_eq!(&buf, b"page two");
/// assert!(gntdev::map(&xen.gntdev(8), 0, &shared.refs, UnmapNotify::default()).is_err());
/// # }
/// # Ok::<(), ring_hosted::devmem::DevError>(())
/// ```
pub fn share(
    dev: &XenDevice,
    domid: DomId,
    count: usize,
    writable: bool,
    notify: UnmapNotify,
) -> Result<SharedPages, DevError> {
    let count32 = u32::try_from(count)
        .ok()
        .filter(|&c| c > 0)
        .ok_or_else(|| DevError::invalid(dev.path(), format!("cannot share {count} pages")))?;
    let header = AllocGref {
        domid,
        flags: if writable { GNTALLOC_FLAG_WRITABLE } else { 0 },
        count: count32,
        ..AllocGref::default()
    };
    let refs_at = std::mem::offset_of!(AllocGref, gref_ids);
    let mut buf = vec![0u8; (refs_at + 4 * count).max(size_of::<AllocGref>())];
    buf[..size_of::<AllocGref>()].copy_from_slice(header.as_bytes());
    dev.ioctl(
        Driver::Gntalloc,
        "alloc grant refs",
        IOCTL_GNTALLOC_ALLOC_GREF,
        &mut buf,
    )?;
    let (reply, _) = AllocGref::read_from_prefix(&buf)
        .map_err(|_| DevError::invalid(dev.path(), "short alloc reply"))?;
    let refs: Vec<u32> = buf[refs_at..refs_at + 4 * count]
        .chunks_exact(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let index = reply.index;
    let dealloc = |dev: &XenDevice| {
        let mut arg = DeallocGref {
            index,
            count: count32,
            pad: 0,
        };
        dev.ioctl(
            Driver::Gntalloc,
            "dealloc grant refs",
            IOCTL_GNTALLOC_DEALLOC_GREF,
            arg.as_mut_bytes(),
        )
    };
    let mem = dev.map_grants(
        Driver::Gntalloc,
        index,
        count * GRANT_PAGE,
        notify,
        IOCTL_GNTALLOC_SET_UNMAP_NOTIFY,
        dealloc,
    )?;
    Ok(SharedPages { refs, mem })
}
