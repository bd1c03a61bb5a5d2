//! Device memory and the plumbing the device shims share: mappings of
//! device files behind the [`SharedMem`] door, the error type that names the
//! path that failed, and the ioctl seam that lets tests replay recorded
//! kernel replies.
//!
//! Every device backend (UIO, VFIO, Xen grants) ends in a
//! [`MappedRegion`]: a window into an `mmap` of a device file (or, in tests,
//! of a memfd or temporary file standing in for one). Ring code sees it only
//! through [`SharedMem`], exactly like memfd memory.

// This module is one of the crate's unsafe rooms: the mapping view and the
// raw ioctl/read/write calls. Each block says why it is sound.
#![allow(unsafe_code)]

use memmap2::{MmapOptions, MmapRaw};
use ring_core::mem::{MemError, RawMem, SharedMem};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why a device operation failed. Every variant that touches the file
/// system names the path (or device) involved, so a failure on a real
/// machine says where to look.
#[derive(Debug)]
#[non_exhaustive]
pub enum DevError {
    /// A system call on `path` failed.
    Io {
        /// The file or device.
        path: PathBuf,
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A file held something we could not parse.
    Parse {
        /// The file.
        path: PathBuf,
        /// What we expected there.
        what: &'static str,
    },
    /// Nothing matched the search.
    NotFound {
        /// What we looked for.
        what: String,
        /// Where we looked.
        path: PathBuf,
    },
    /// The device or kernel reported something out of range.
    Invalid {
        /// The device or file concerned.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// The channel was rescinded or the peer is gone.
    Closed,
    /// A wait on `path` passed its timeout.
    TimedOut {
        /// The fd's device.
        path: PathBuf,
    },
    /// The ring refused to set up or move bytes.
    Ring(ring_core::vchan::Error),
    /// A VMBus ring refused to set up or move packets.
    Vmbus(ring_core::vmbus::Error),
    /// xenstored answered a request with an error.
    Xenstore {
        /// The request (`READ`, `WRITE`, ...).
        op: &'static str,
        /// The key or argument it concerned.
        path: String,
        /// xenstored's error name (`ENOENT`, `EAGAIN`, `EACCES`, ...).
        errno: String,
    },
}

impl DevError {
    /// A closure turning an `io::Error` into [`DevError::Io`] for `op` on `path`.
    pub(crate) fn io<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> DevError + 'a {
        move |source| DevError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    /// An [`DevError::Invalid`] for `path`.
    pub(crate) fn invalid(path: &Path, what: impl Into<String>) -> DevError {
        DevError::Invalid {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
}

impl fmt::Display for DevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DevError::Io { path, op, source } => {
                write!(f, "{}: {op}: {source}", path.display())
            }
            DevError::Parse { path, what } => {
                write!(f, "{}: expected {what}", path.display())
            }
            DevError::NotFound { what, path } => {
                write!(f, "{what} not found under {}", path.display())
            }
            DevError::Invalid { path, what } => write!(f, "{}: {what}", path.display()),
            DevError::Closed => f.write_str("device channel closed"),
            DevError::TimedOut { path } => write!(f, "{}: timed out waiting", path.display()),
            DevError::Ring(e) => e.fmt(f),
            DevError::Vmbus(e) => e.fmt(f),
            DevError::Xenstore { op, path, errno } => {
                write!(f, "xenstore {op} {path}: {errno}")
            }
        }
    }
}

impl std::error::Error for DevError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DevError::Io { source, .. } => Some(source),
            DevError::Ring(e) => Some(e),
            DevError::Vmbus(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ring_core::vchan::Error> for DevError {
    fn from(e: ring_core::vchan::Error) -> Self {
        match e {
            ring_core::vchan::Error::Closed => DevError::Closed,
            other => DevError::Ring(other),
        }
    }
}

impl From<ring_core::vchan::BlockingError<DevError>> for DevError {
    fn from(e: ring_core::vchan::BlockingError<DevError>) -> Self {
        match e {
            ring_core::vchan::BlockingError::Ring(e) => e.into(),
            ring_core::vchan::BlockingError::Signal(e) => e,
        }
    }
}

impl From<ring_core::vmbus::Error> for DevError {
    fn from(e: ring_core::vmbus::Error) -> Self {
        DevError::Vmbus(e)
    }
}

impl From<ring_core::vmbus::BlockingError<DevError>> for DevError {
    fn from(e: ring_core::vmbus::BlockingError<DevError>) -> Self {
        match e {
            ring_core::vmbus::BlockingError::Ring(e) => e.into(),
            ring_core::vmbus::BlockingError::Signal(e) => e,
        }
    }
}

impl From<MemError> for DevError {
    fn from(e: MemError) -> Self {
        DevError::Ring(ring_core::vchan::Error::Memory(e))
    }
}

/// The system page size (the unit UIO map offsets and grant pages use).
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// A window of `len` bytes at `offset` into a shared mapping of a device
/// file. Cloning shares the mapping; it is unmapped when the last clone
/// goes.
///
/// The only access is through [`SharedMem`] (atomics and bounded copies),
/// so no Rust reference into device or peer memory is ever formed.
#[derive(Clone)]
pub struct MappedRegion {
    map: Arc<MmapRaw>,
    offset: usize,
    len: usize,
}

impl fmt::Debug for MappedRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedRegion")
            .field("base", &self.map.as_mut_ptr())
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl MappedRegion {
    /// Maps `len` bytes of `file` (named `path` in errors) at file offset
    /// `offset`, shared and read-write.
    ///
    /// For device files the offset is often a selector rather than a
    /// position (UIO: map N at N × page size; gntalloc/gntdev: the index the
    /// ioctl returned; VFIO: the region offset).
    ///
    /// # Errors
    ///
    /// [`DevError::Io`] if the kernel refuses the mapping,
    /// [`DevError::Invalid`] for a zero length.
    pub fn map(file: &File, path: &Path, offset: u64, len: usize) -> Result<Self, DevError> {
        if len == 0 {
            return Err(DevError::invalid(path, "cannot map zero bytes"));
        }
        let map = MmapOptions::new()
            .offset(offset)
            .len(len)
            .map_raw(file)
            .map_err(DevError::io("mmap", path))?;
        Ok(MappedRegion {
            map: Arc::new(map),
            offset: 0,
            len,
        })
    }

    /// A narrower window: `len` bytes at `offset` within this one.
    ///
    /// The start must stay 8-byte aligned (the memory door's rule).
    ///
    /// # Errors
    ///
    /// [`MemError`] if the window falls outside this one or is misaligned.
    pub fn sub(&self, offset: usize, len: usize) -> Result<Self, MemError> {
        let end = offset.checked_add(len).filter(|&e| e <= self.len);
        if end.is_none() {
            return Err(MemError::OutOfBounds {
                offset,
                len,
                size: self.len,
            });
        }
        if !offset.is_multiple_of(8) {
            return Err(MemError::Misaligned { offset });
        }
        Ok(MappedRegion {
            map: Arc::clone(&self.map),
            offset: self.offset + offset,
            len,
        })
    }

    /// Base address of the window (for registers written through
    /// `volatile`, and for diagnostics).
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr().wrapping_add(self.offset)
    }

    fn raw(&self) -> RawMem<'_> {
        // mmap returns page-aligned memory and `sub` keeps offsets 8-aligned;
        // this crate never forms Rust references into the mapping.
        // SAFETY: the window lies inside the live mapping held by `self.map`
        // (checked in `map`/`sub`), which outlives the returned view.
        let view = unsafe { RawMem::from_raw_parts(self.as_ptr(), self.len) };
        // A null or misaligned base cannot happen (see above); an empty view
        // makes every access fail with OutOfBounds rather than panic.
        view.unwrap_or_else(|| RawMem::from_atomics(&[]))
    }
}

impl SharedMem for MappedRegion {
    fn size(&self) -> usize {
        self.len
    }
    fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
        self.raw().load_u32(offset)
    }
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        self.raw().store_u32(offset, value)
    }
    fn load_u8(&self, offset: usize) -> Result<u8, MemError> {
        self.raw().load_u8(offset)
    }
    fn store_u8(&self, offset: usize, value: u8) -> Result<(), MemError> {
        self.raw().store_u8(offset, value)
    }
    fn fetch_or_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        self.raw().fetch_or_u8(offset, bits)
    }
    fn fetch_and_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        self.raw().fetch_and_u8(offset, bits)
    }
    fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemError> {
        self.raw().read(offset, dst)
    }
    fn write(&self, offset: usize, src: &[u8]) -> Result<(), MemError> {
        self.raw().write(offset, src)
    }
    fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), MemError> {
        self.raw().fill(offset, len, byte)
    }
    // Grant mappings are ordinary RAM; on uncached device memory the CPU
    // ignores the hint.
    fn prefetch_write(&self, offset: usize) {
        self.raw().prefetch_write(offset)
    }
}

/// The seam between the device shims and the kernel: every ioctl, and the
/// reads and writes on event-channel style fds, go through it.
///
/// [`Kernel`] makes the real system calls; tests substitute an
/// implementation that checks each request number and replays a recorded
/// reply, so the set-up logic runs on a machine without the devices.
///
/// Argument structs travel as their bytes (`zerocopy`), so a fake sees and
/// fills exactly what the kernel would.
pub trait Sys: Send + Sync {
    /// `ioctl(fd, request, arg)` where `arg` points at `arg_bytes`, which
    /// the call may update. Returns the ioctl's non-negative result.
    fn ioctl(&self, fd: BorrowedFd<'_>, request: u32, arg: &mut [u8]) -> io::Result<i32>;

    /// `ioctl(fd, request, value)` for requests whose argument is an
    /// integer rather than a pointer.
    fn ioctl_value(&self, fd: BorrowedFd<'_>, request: u32, value: u64) -> io::Result<i32>;

    /// `read(fd, buf)`.
    fn read(&self, fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
        Ok(rustix::io::read(fd, buf)?)
    }

    /// `write(fd, buf)`.
    fn write(&self, fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
        Ok(rustix::io::write(fd, buf)?)
    }

    /// Waits up to `timeout` (`None`: for ever) for `fd` to be readable;
    /// returns whether it is.
    fn poll_readable(&self, fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
        poll_readable(fd, timeout)
    }
}

/// `poll(fd, POLLIN, timeout)`, retried on `EINTR`. Returns whether `fd`
/// is readable (or hung up).
pub fn poll_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let ts = timeout.map(|t| Timespec {
        tv_sec: t.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: t.subsec_nanos().into(),
    });
    loop {
        match poll(&mut fds, ts.as_ref()) {
            Ok(n) => return Ok(n > 0),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The real kernel behind [`Sys`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Kernel;

impl Sys for Kernel {
    fn ioctl(&self, fd: BorrowedFd<'_>, request: u32, arg: &mut [u8]) -> io::Result<i32> {
        // Buffers are `repr(C)` structs checked against the uapi headers by
        // the layout probe test.
        // SAFETY: each request passes a buffer of exactly the size the request
        // encodes, the kernel stays within it, and `fd` is live for the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg.as_mut_ptr()) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    fn ioctl_value(&self, fd: BorrowedFd<'_>, request: u32, value: u64) -> io::Result<i32> {
        // SAFETY: the request takes an integer argument, so the kernel
        // dereferences no memory of ours; `fd` is live for the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, value as libc::c_ulong) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }
}

/// Encodes an ioctl request number the way `<asm-generic/ioctl.h>`'s
/// `_IOC` does: direction in bits 30..32, argument size in 16..30, type in
/// 8..16, number in 0..8.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

/// `_IOC_NONE`: the direction bits the Xen and VFIO headers use.
pub const IOC_NONE: u32 = 0;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn mapped_region_is_shared_memory_over_the_file() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[7u8; 8192]).unwrap();
        let path = Path::new("/tmp/fake");
        let map = MappedRegion::map(&file, path, 0, 8192).unwrap();
        assert_eq!(map.size(), 8192);
        assert_eq!(map.load_u8(100).unwrap(), 7);
        let second = map.sub(4096, 4096).unwrap();
        second.store_u32(0, 0xdead_beef).unwrap();
        assert_eq!(map.load_u32(4096).unwrap(), 0xdead_beef);
        // A second mapping of the same file sees the bytes (MAP_SHARED).
        let again = MappedRegion::map(&file, path, 4096, 4096).unwrap();
        assert_eq!(again.load_u32(0).unwrap(), 0xdead_beef);
        assert!(second.load_u32(4096).is_err());
        assert!(map.sub(4096, 4097).is_err());
        assert!(matches!(
            map.sub(4, 8),
            Err(MemError::Misaligned { offset: 4 })
        ));
    }

    #[test]
    fn errors_name_the_path() {
        let file = tempfile::tempfile().unwrap();
        let e = MappedRegion::map(&file, Path::new("/dev/uio9"), 0, 0).unwrap_err();
        assert!(e.to_string().contains("/dev/uio9"), "{e}");
    }

    #[test]
    fn ioc_matches_the_kernel_encoding() {
        // _IO(';', 100) = VFIO_GET_API_VERSION, a value well known from
        // strace output.
        assert_eq!(ioc(IOC_NONE, b';', 100, 0), 0x3b64);
        assert_eq!(ioc(2, b'E', 1, 8), 0x8008_4501);
    }
}
