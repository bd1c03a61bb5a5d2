//! Device memory and the plumbing the device shims share: mappings of
//! device files behind the [`SharedMem`] door, the error type that names the
//! path that failed, and the ioctl seam that lets tests replay recorded
//! kernel replies, with [`IoctlRequest`]: a request number together with
//! how much of its argument the kernel touches, checked before every call.
//!
//! Every device backend (UIO, VFIO, Xen grants) ends in a
//! [`MappedRegion`]: a window into an `mmap` of a device file (or, in tests,
//! of a memfd or temporary file standing in for one). Ring code sees it only
//! through [`SharedMem`], exactly like memfd memory.

// This module is one of the crate's unsafe rooms: the mapping view, the raw
// ioctl calls and owning the descriptors they return. Each block says why it
// is sound.
#![allow(unsafe_code)]

use memmap2::{MmapOptions, MmapRaw};
use ring_core::mem::{MemError, RawMem, SharedMem};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
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
    Vchan(ring_core::vchan::Error),
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
            DevError::Vchan(e) => e.fmt(f),
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
            DevError::Vchan(e) => Some(e),
            DevError::Vmbus(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ring_core::vchan::Error> for DevError {
    fn from(e: ring_core::vchan::Error) -> Self {
        match e {
            ring_core::vchan::Error::Closed => DevError::Closed,
            other => DevError::Vchan(other),
        }
    }
}

impl From<ring_core::vchan::BlockingError<DevError>> for DevError {
    fn from(e: ring_core::vchan::BlockingError<DevError>) -> Self {
        match e {
            ring_core::vchan::BlockingError::Ring(e) => e.into(),
            ring_core::vchan::BlockingError::Signal(e) => e,
            ring_core::vchan::BlockingError::PeerGone => DevError::Closed,
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
            ring_core::vmbus::BlockingError::PeerGone => DevError::Closed,
        }
    }
}

impl From<MemError> for DevError {
    fn from(e: MemError) -> Self {
        DevError::Vchan(ring_core::vchan::Error::Memory(e))
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

/// A file of `len` zero bytes that can stand in for a device file: a
/// memfd sealed against shrinking, so [`MappedRegion::map`] takes it. For
/// tests and examples that fake a device; it can still grow.
///
/// # Errors
///
/// The `memfd_create`, `ftruncate` or seal error.
///
/// # Examples
///
/// ```
/// use ring_core::mem::SharedMem;
/// use ring_hosted::devmem::{stand_in_file, MappedRegion};
///
/// let file = stand_in_file("doc-device", 8192)?;
/// let region = MappedRegion::map(&file, std::path::Path::new("(fake device)"), 0, 8192)?;
/// assert_eq!(region.size(), 8192);
/// assert!(file.set_len(4096).is_err()); // it cannot shrink
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn stand_in_file(name: &str, len: u64) -> io::Result<File> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let file = File::from(fd);
    file.set_len(len)?;
    rustix::fs::fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::SEAL)?;
    Ok(file)
}

/// Whether `file` keeps its size for as long as it is mapped: a device
/// file, a file on sysfs, or a memfd sealed against shrinking.
fn cannot_shrink(file: &File) -> bool {
    const SYSFS_MAGIC: u64 = 0x6265_6572;
    let Ok(st) = rustix::fs::fstat(file) else {
        return false;
    };
    let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
    if matches!(
        kind,
        rustix::fs::FileType::CharacterDevice | rustix::fs::FileType::BlockDevice
    ) {
        return true;
    }
    if rustix::fs::fstatfs(file).is_ok_and(|fs| fs.f_type as u64 == SYSFS_MAGIC) {
        return true;
    }
    rustix::fs::fcntl_get_seals(file)
        .is_ok_and(|seals| seals.contains(rustix::fs::SealFlags::SHRINK))
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
    /// Only files that cannot shrink under the mapping are taken: device
    /// files, sysfs files (PCI `resourceN`) and memfds sealed against
    /// shrinking. A regular file could be truncated by anyone who can
    /// write it, and a read of the pages past its new end would raise
    /// SIGBUS; [`map_any`](Self::map_any) is the `unsafe` door for a caller
    /// who can promise that does not happen.
    ///
    /// # Errors
    ///
    /// [`DevError::Io`] if the kernel refuses the mapping,
    /// [`DevError::Invalid`] for a zero length or a file that could shrink.
    ///
    /// # Examples
    ///
    /// A sealed memfd can stand in for a device file; what is stored through
    /// the mapping is in the file. A plain file is refused:
    ///
    /// ```
    /// use ring_core::mem::SharedMem;
    /// use ring_hosted::devmem::{stand_in_file, MappedRegion};
    /// use std::os::unix::fs::FileExt;
    ///
    /// let file = stand_in_file("doc-map", 2 * 4096)?; // sealed against shrinking
    /// let path = std::path::Path::new("(memfd)");
    /// let region = MappedRegion::map(&file, path, 4096, 4096)?; // the second page
    /// region.store_u32(8, 0xabcd)?;
    /// let mut word = [0u8; 4];
    /// file.read_exact_at(&mut word, 4096 + 8)?;
    /// assert_eq!(u32::from_ne_bytes(word), 0xabcd);
    /// assert!(MappedRegion::map(&file, path, 0, 0).is_err()); // nothing to map
    ///
    /// let plain = tempfile::tempfile()?;
    /// plain.set_len(4096)?;
    /// assert!(MappedRegion::map(&plain, std::path::Path::new("(temp file)"), 0, 4096).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map(file: &File, path: &Path, offset: u64, len: usize) -> Result<Self, DevError> {
        if !cannot_shrink(file) {
            return Err(DevError::invalid(
                path,
                "not a device, sysfs file or memfd sealed against shrinking: \
                 a file that can shrink under a mapping is not mapped",
            ));
        }
        // SAFETY: the file cannot shrink (checked above), so the mapping
        // stays backed for as long as it lives.
        unsafe { Self::map_any(file, path, offset, len) }
    }

    /// Maps `len` bytes of any mappable `file`, as [`map`](Self::map) does,
    /// without asking what kind of file it is.
    ///
    /// # Safety
    ///
    /// For as long as the region (or any window of it) lives, the file
    /// must not shrink below `offset + len`: an access to a page past a
    /// file's end raises SIGBUS.
    ///
    /// # Errors
    ///
    /// As for [`map`](Self::map).
    pub unsafe fn map_any(
        file: &File,
        path: &Path,
        offset: u64,
        len: usize,
    ) -> Result<Self, DevError> {
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
    ///
    /// # Examples
    ///
    /// The two halves of one mapping as two regions, as the UIO code splits a
    /// channel's map into its rings:
    ///
    /// ```
    /// use ring_core::mem::{MemError, SharedMem};
    /// use ring_hosted::devmem::MappedRegion;
    ///
    /// let file = ring_hosted::devmem::stand_in_file("doc-sub", 8192)?;
    /// let whole = MappedRegion::map(&file, std::path::Path::new("(temp file)"), 0, 8192)?;
    /// let (low, high) = (whole.sub(0, 4096)?, whole.sub(4096, 4096)?);
    /// high.store_u32(0, 5)?;
    /// assert_eq!(whole.load_u32(4096)?, 5);
    /// assert!(low.load_u32(4096).is_err()); // past the window
    /// assert!(matches!(whole.sub(4, 8), Err(MemError::Misaligned { offset: 4 })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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

// Grant mappings (a Xen vchan's pages) move bytes to and from fds in
// place, as a memfd does: `ring listen --xen` pipes through them.
impl crate::fdio::FdIo for MappedRegion {
    fn read_from_fd(
        &self,
        fd: BorrowedFd<'_>,
        spans: &[ring_core::loan::Span],
    ) -> io::Result<usize> {
        // SAFETY: the window of `self.len` bytes at `as_ptr()` lies inside
        // the live mapping `self.map` holds (checked in `map`/`sub`), and
        // this crate forms no reference into it.
        unsafe { crate::memfd::read_spans(self.as_ptr(), self.len, fd, spans) }
    }

    fn write_to_fd(
        &self,
        fd: BorrowedFd<'_>,
        spans: &[ring_core::loan::Span],
        to: crate::fdio::Output,
    ) -> io::Result<usize> {
        // SAFETY: as in `read_from_fd`.
        unsafe { crate::memfd::write_spans(self.as_ptr(), self.len, fd, spans, to) }
    }
}

/// How an ioctl's argument is laid out, as far as the kernel's reads and
/// writes of our memory go: what [`IoctlRequest::check`] holds a buffer to
/// before any call reaches the kernel.
///
/// All counts and sizes read from the buffer are native-endian `u32`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IoctlArg {
    /// An integer (or nothing): the kernel dereferences no memory of ours.
    /// Such requests go through [`Sys::ioctl_value`] only.
    Value,
    /// A struct of this many bytes, read and/or written whole.
    Fixed(usize),
    /// A VFIO-style struct whose first field is `argsz`, the size of the
    /// whole argument: the kernel reads and writes `min_len` bytes, and at
    /// most `argsz` bytes in all (capability chains, trailing data). The
    /// buffer must hold both.
    Argsz {
        /// Bytes the kernel accesses whatever `argsz` says (the struct).
        min_len: usize,
    },
    /// A struct of `header_len` bytes ending in an array of `count`
    /// elements of `elem_len` bytes that starts at `array_at`, where
    /// `count` is the `u32` at `count_at` (gntalloc's and gntdev's grant
    /// ref lists). The buffer must hold the header and the whole array.
    Counted {
        /// Size of the struct the kernel copies whole.
        header_len: usize,
        /// Offset of the `u32` element count.
        count_at: usize,
        /// Offset of the first element.
        array_at: usize,
        /// Size of one element.
        elem_len: usize,
    },
    /// A NUL-terminated string the kernel reads up to its first NUL (and
    /// does not write). The buffer must contain a NUL.
    CStr,
}

/// An ioctl request number together with what the kernel does with its
/// argument, so [`Sys`] can refuse a buffer too small for it before any
/// system call.
///
/// Values come only from the request constants this crate defines (the
/// `IOCTL_*` and `VFIO_*` constants of [`vfio`](crate::vfio) and
/// [`xen`](crate::xen)) or from the `unsafe` constructors, whose callers
/// vouch for the kernel's side of the contract.
///
/// Equality compares the whole description, so a request can be matched
/// against the constants.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IoctlRequest {
    number: u32,
    arg: IoctlArg,
    returns_fd: bool,
}

impl fmt::Debug for IoctlRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IoctlRequest({:#x}, {:?}", self.number, self.arg)?;
        if self.returns_fd {
            f.write_str(", returns fd")?;
        }
        f.write_str(")")
    }
}

impl IoctlRequest {
    /// Describes ioctl `number`, whose argument is laid out as `arg`.
    ///
    /// # Safety
    ///
    /// On any file the request may be issued on, the kernel, given an
    /// argument that [`check`](Self::check) (or, for [`IoctlArg::Value`],
    /// [`check_value`](Self::check_value)) accepts, must read and write no
    /// memory of the caller's outside the bytes `arg` describes:
    ///
    /// - [`IoctlArg::Value`]: none at all (the argument is an integer);
    /// - [`IoctlArg::Fixed`]`(n)`: the first `n` bytes;
    /// - [`IoctlArg::Argsz`]: the first `max(min_len, argsz)` bytes;
    /// - [`IoctlArg::Counted`]: the first `max(header_len, array_at +
    ///   count * elem_len)` bytes;
    /// - [`IoctlArg::CStr`]: reads up to the first NUL, writes nothing.
    ///
    /// (A request that hands back a file descriptor belongs with
    /// [`returning_fd`](Self::returning_fd); made here, its descriptors
    /// would only leak.) Ioctl numbers are allocated per driver
    /// (`Documentation/userspace-api/ioctl/ioctl-number.rst`); the contract
    /// is about the driver that owns `number`.
    pub const unsafe fn new(number: u32, arg: IoctlArg) -> Self {
        IoctlRequest {
            number,
            arg,
            returns_fd: false,
        }
    }

    /// As [`new`](Self::new), for a request that on success returns a new
    /// file descriptor (issued through [`Sys::ioctl_fd`]).
    ///
    /// # Safety
    ///
    /// As [`new`](Self::new) for the argument; and a successful call
    /// returns a descriptor that is open and owned by the caller alone.
    pub const unsafe fn returning_fd(number: u32, arg: IoctlArg) -> Self {
        IoctlRequest {
            number,
            arg,
            returns_fd: true,
        }
    }

    /// The request number passed to `ioctl(2)`.
    pub const fn number(self) -> u32 {
        self.number
    }

    /// How the argument is laid out.
    pub const fn arg(self) -> IoctlArg {
        self.arg
    }

    /// Whether a successful call returns a new file descriptor.
    pub const fn returns_fd(self) -> bool {
        self.returns_fd
    }

    /// The argument size the number encodes (`_IOC_SIZE`); 0 for `_IO`
    /// requests such as VFIO's, which carry `argsz` in the argument instead.
    pub const fn encoded_size(self) -> usize {
        ((self.number >> IOC_SIZESHIFT) & IOC_SIZEMASK) as usize
    }

    fn refused(self, why: impl fmt::Display) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ioctl {:#x} refused: {why}", self.number),
        )
    }

    /// The number of bytes of `arg` the kernel may touch, or why `arg`
    /// cannot be described (a count or `argsz` field outside it, a missing
    /// NUL).
    fn reach(self, arg: &[u8]) -> io::Result<usize> {
        let need = match self.arg {
            IoctlArg::Value => {
                return Err(
                    self.refused("the argument is an integer, not a buffer (use Sys::ioctl_value)")
                )
            }
            IoctlArg::Fixed(n) => n,
            IoctlArg::Argsz { min_len } => {
                let argsz = read_u32(arg, 0).ok_or_else(|| {
                    self.refused(format_args!("{}-byte buffer cannot hold argsz", arg.len()))
                })?;
                let argsz = usize::try_from(argsz).unwrap_or(usize::MAX);
                if argsz > arg.len() {
                    return Err(self.refused(format_args!(
                        "argsz {argsz} exceeds the {}-byte buffer",
                        arg.len()
                    )));
                }
                min_len.max(argsz)
            }
            IoctlArg::Counted {
                header_len,
                count_at,
                array_at,
                elem_len,
            } => {
                let count = read_u32(arg, count_at).ok_or_else(|| {
                    self.refused(format_args!(
                        "{}-byte buffer cannot hold the count at {count_at}",
                        arg.len()
                    ))
                })?;
                usize::try_from(count)
                    .ok()
                    .and_then(|c| c.checked_mul(elem_len))
                    .and_then(|b| b.checked_add(array_at))
                    .ok_or_else(|| self.refused(format_args!("count {count} overflows")))?
                    .max(header_len)
            }
            IoctlArg::CStr => {
                if !arg.contains(&0) {
                    return Err(self.refused("the string has no NUL terminator"));
                }
                0
            }
        };
        // The size the number encodes is a floor the driver may rely on
        // whatever the description says.
        Ok(need.max(self.encoded_size()))
    }

    /// Checks `arg` for [`Sys::ioctl`]: the request takes a buffer, does not
    /// return a descriptor, and `arg` holds every byte the kernel may
    /// access (see [`IoctlArg`]; never less than the size the number
    /// encodes).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] (what `EINVAL` maps to) saying what
    /// is wrong.
    pub fn check(self, arg: &[u8]) -> io::Result<()> {
        if self.returns_fd {
            return Err(self.refused("it returns a descriptor (use Sys::ioctl_fd)"));
        }
        self.check_buffer(arg)
    }

    /// Checks `arg` for [`Sys::ioctl_fd`]: as [`check`](Self::check), for a
    /// request that returns a descriptor.
    ///
    /// # Errors
    ///
    /// As [`check`](Self::check).
    pub fn check_fd(self, arg: &[u8]) -> io::Result<()> {
        if !self.returns_fd {
            return Err(self.refused("it does not return a descriptor"));
        }
        self.check_buffer(arg)
    }

    fn check_buffer(self, arg: &[u8]) -> io::Result<()> {
        let need = self.reach(arg)?;
        if arg.len() < need {
            return Err(self.refused(format_args!(
                "it needs {need} bytes, the buffer has {}",
                arg.len()
            )));
        }
        Ok(())
    }

    /// Checks the request for [`Sys::ioctl_value`]: its argument is an
    /// integer ([`IoctlArg::Value`]), its number encodes no argument size
    /// (one that does takes a pointer), and it returns no descriptor.
    ///
    /// # Errors
    ///
    /// As [`check`](Self::check).
    pub fn check_value(self) -> io::Result<()> {
        if self.arg != IoctlArg::Value {
            return Err(self.refused(format_args!(
                "the argument is a buffer ({:?}), not an integer",
                self.arg
            )));
        }
        if self.encoded_size() != 0 {
            return Err(self.refused(format_args!(
                "the number encodes a {}-byte argument",
                self.encoded_size()
            )));
        }
        if self.returns_fd {
            return Err(self.refused("it returns a descriptor"));
        }
        Ok(())
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// The kernel's name for the device `file` is (`DEVNAME` in sysfs, the
/// path under `/dev` it is created at: `xen/gntalloc`, `vfio/vfio`,
/// `vfio/12`), or `None` for a file that is not a character device the
/// kernel names. How the device shims make sure a file handed to them is
/// the driver their ioctls are meant for.
///
/// # Examples
///
/// ```
/// use ring_hosted::devmem::device_name;
///
/// let null = std::fs::File::open("/dev/null")?;
/// assert_eq!(device_name(&null).as_deref(), Some("null"));
/// assert_eq!(device_name(&tempfile::tempfile()?), None);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn device_name(file: &File) -> Option<String> {
    let st = rustix::fs::fstat(file).ok()?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::CharacterDevice {
        return None;
    }
    let (major, minor) = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    let uevent = std::fs::read_to_string(format!("/sys/dev/char/{major}:{minor}/uevent")).ok()?;
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(str::to_owned)
}

/// The seam between the device shims and the kernel: every ioctl, and the
/// reads and writes on event-channel style fds, go through it.
///
/// [`Kernel`] makes the real system calls; tests substitute an
/// implementation that checks each request and replays a recorded reply,
/// so the set-up logic runs on a machine without the devices.
///
/// Argument structs travel as their bytes (`zerocopy`), so a fake sees and
/// fills exactly what the kernel would. Each request is an
/// [`IoctlRequest`] that says how much of the buffer the kernel may touch;
/// [`Kernel`] refuses a buffer that does not hold it
/// ([`IoctlRequest::check`]) before making the call, and the fakes in this
/// crate refuse the same buffers, so tests see the errors a real machine
/// would give.
pub trait Sys: Send + Sync {
    /// `ioctl(fd, request, arg)` where `arg` points at `arg`'s bytes, which
    /// the call may update. Returns the ioctl's non-negative result.
    ///
    /// An `arg` that [`IoctlRequest::check`] refuses is refused here too
    /// (with its error) before anything else happens: [`Kernel`] relies on
    /// that for soundness, and the fakes do it so tests see the same errors.
    ///
    /// # Safety
    ///
    /// `fd` must be a file of the driver that `request` was declared for
    /// (or the seam must be one that never reaches the kernel). An ioctl
    /// number means what its [`IoctlRequest`] says only to the driver that
    /// owns it; another driver may read or write other memory of ours, or
    /// return something else, for the same number.
    unsafe fn ioctl(
        &self,
        fd: BorrowedFd<'_>,
        request: IoctlRequest,
        arg: &mut [u8],
    ) -> io::Result<i32>;

    /// `ioctl(fd, request, value)` for requests whose argument is an
    /// integer rather than a pointer ([`IoctlRequest::check_value`]).
    ///
    /// # Safety
    ///
    /// As for [`ioctl`](Self::ioctl).
    unsafe fn ioctl_value(
        &self,
        fd: BorrowedFd<'_>,
        request: IoctlRequest,
        value: u64,
    ) -> io::Result<i32>;

    /// `ioctl(fd, request, arg)` for a request that returns a new file
    /// descriptor ([`IoctlRequest::check_fd`]), which the caller then owns.
    ///
    /// The default refuses every request (a seam without such requests).
    ///
    /// # Safety
    ///
    /// As for [`ioctl`](Self::ioctl): what comes back is owned as a
    /// descriptor only because the driver that owns the number says so.
    unsafe fn ioctl_fd(
        &self,
        fd: BorrowedFd<'_>,
        request: IoctlRequest,
        arg: &mut [u8],
    ) -> io::Result<OwnedFd> {
        let _ = (fd, arg);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "ioctl {:#x}: this seam hands out no descriptors",
                request.number()
            ),
        ))
    }

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

    /// The descriptor a `poll(2)` of several fds watches for `fd`'s
    /// readiness: `fd` itself for the kernel. A fake, whose device file is
    /// a stand-in that always polls readable, gives one it makes readable
    /// exactly when a read of `fd` would not block.
    fn poll_fd<'a>(&'a self, fd: BorrowedFd<'a>) -> BorrowedFd<'a> {
        fd
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

impl Kernel {
    /// The pointer-argument call, once [`IoctlRequest::check`] or
    /// [`IoctlRequest::check_fd`] has accepted `arg`.
    fn ioctl_checked(fd: BorrowedFd<'_>, request: IoctlRequest, arg: &mut [u8]) -> io::Result<i32> {
        // Buffers are `repr(C)` structs checked against the uapi headers by
        // the layout probe test. The caller checked `arg` against `request`,
        // so by the contract of `IoctlRequest::new` the kernel reads and
        // writes only within `arg`, which we borrow exclusively.
        let (raw, number, ptr) = (fd.as_raw_fd(), request.number(), arg.as_mut_ptr());
        // SAFETY: `ptr` covers what the request touches (checked above);
        // `fd` is live for the call.
        os_result(unsafe { libc::ioctl(raw, number as _, ptr) })
    }
}

/// A libc return code as a result: negative means `errno` says why.
fn os_result(rc: libc::c_int) -> io::Result<i32> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Sys for Kernel {
    unsafe fn ioctl(
        &self,
        fd: BorrowedFd<'_>,
        request: IoctlRequest,
        arg: &mut [u8],
    ) -> io::Result<i32> {
        request.check(arg)?;
        Self::ioctl_checked(fd, request, arg)
    }

    unsafe fn ioctl_value(
        &self,
        fd: BorrowedFd<'_>,
        request: IoctlRequest,
        value: u64,
    ) -> io::Result<i32> {
        request.check_value()?;
        // `check_value` passed, so the request was described as
        // `IoctlArg::Value` and (by `IoctlRequest::new`'s contract) the
        // kernel dereferences no memory of ours.
        let (raw, number) = (fd.as_raw_fd(), request.number());
        // SAFETY: an integer argument, no memory of ours; `fd` is live.
        os_result(unsafe { libc::ioctl(raw, number as _, value as libc::c_ulong) })
    }

    unsafe fn ioctl_fd(
        &self,
        fd: BorrowedFd<'_>,
        request: IoctlRequest,
        arg: &mut [u8],
    ) -> io::Result<OwnedFd> {
        request.check_fd(arg)?;
        let raw = Self::ioctl_checked(fd, request, arg)?;
        // `check_fd` passed, so the request was made with
        // `IoctlRequest::returning_fd`, whose contract is that a successful
        // call (a non-negative result, checked above) returns an open
        // descriptor owned by us alone.
        // SAFETY: `raw` is open and ours alone, by that contract.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }
}

/// Encodes an ioctl request number the way `<asm-generic/ioctl.h>`'s
/// `_IOC` does: direction in bits 30..32, argument size in 16..30, type in
/// 8..16, number in 0..8.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << IOC_SIZESHIFT) | ((ty as u32) << 8) | nr as u32
}

const IOC_SIZESHIFT: u32 = 16;
const IOC_SIZEMASK: u32 = (1 << 14) - 1;

/// `_IOC_NONE`: the direction bits the Xen and VFIO headers use.
pub const IOC_NONE: u32 = 0;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn mapped_region_is_shared_memory_over_the_file() {
        let mut file = stand_in_file("map-test", 0).unwrap();
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
        let file = stand_in_file("map-test", 4096).unwrap();
        let e = MappedRegion::map(&file, Path::new("/dev/uio9"), 0, 0).unwrap_err();
        assert!(e.to_string().contains("/dev/uio9"), "{e}");
    }

    /// A file that can shrink is not mapped by the safe door: shrunk under
    /// the mapping, a read would be SIGBUS.
    #[test]
    fn files_that_can_shrink_are_refused() {
        let plain = tempfile::tempfile().unwrap();
        plain.set_len(8192).unwrap();
        let e = MappedRegion::map(&plain, Path::new("/tmp/plain"), 0, 8192).unwrap_err();
        assert!(e.to_string().contains("can shrink"), "{e}");
        let unsealed = File::from(memfd());
        unsealed.set_len(8192).unwrap();
        assert!(MappedRegion::map(&unsealed, Path::new("(memfd)"), 0, 8192).is_err());
        let sealed = stand_in_file("map-test", 8192).unwrap();
        assert!(MappedRegion::map(&sealed, Path::new("(memfd)"), 0, 8192).is_ok());
        let null = File::options()
            .read(true)
            .write(true)
            .open("/dev/zero")
            .unwrap();
        assert!(cannot_shrink(&null), "a character device keeps its size");
    }

    fn memfd() -> std::os::fd::OwnedFd {
        rustix::fs::memfd_create("ioctl-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap()
    }

    fn refused(r: io::Result<i32>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert_eq!(e.raw_os_error(), None, "reached the kernel: {e}");
        e.to_string()
    }

    // A memfd has no ioctls: the kernel answers ENOTTY to every number and
    // touches nothing, so these tests may send it any driver's request.

    #[allow(unsafe_code)]
    fn memfd_ioctl(fd: BorrowedFd<'_>, request: IoctlRequest, arg: &mut [u8]) -> io::Result<i32> {
        // SAFETY: `fd` is a memfd (see above).
        unsafe { Kernel.ioctl(fd, request, arg) }
    }

    #[allow(unsafe_code)]
    fn memfd_ioctl_value(fd: BorrowedFd<'_>, request: IoctlRequest, value: u64) -> io::Result<i32> {
        // SAFETY: `fd` is a memfd (see above).
        unsafe { Kernel.ioctl_value(fd, request, value) }
    }

    #[allow(unsafe_code)]
    fn memfd_ioctl_fd(
        fd: BorrowedFd<'_>,
        request: IoctlRequest,
        arg: &mut [u8],
    ) -> io::Result<OwnedFd> {
        // SAFETY: `fd` is a memfd (see above).
        unsafe { Kernel.ioctl_fd(fd, request, arg) }
    }

    /// What a memfd says to an ioctl that did reach the kernel.
    fn reached_the_kernel(r: io::Result<i32>) {
        let e = r.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY), "{e}");
    }

    #[test]
    fn a_vfio_argsz_beyond_the_buffer_is_refused_before_the_kernel() {
        use crate::vfio::{DeviceInfo, IrqSet, VFIO_DEVICE_GET_INFO, VFIO_DEVICE_SET_IRQS};
        use zerocopy::IntoBytes;
        let fd = memfd();
        // VFIO numbers encode no size: argsz is the kernel's only bound. An
        // argsz past the slice would have it write (capabilities) past it.
        let mut info = DeviceInfo {
            argsz: 4096,
            ..DeviceInfo::default()
        };
        let msg = refused(memfd_ioctl(
            fd.as_fd(),
            VFIO_DEVICE_GET_INFO,
            info.as_mut_bytes(),
        ));
        assert!(
            msg.contains("argsz 4096 exceeds the 20-byte buffer"),
            "{msg}"
        );
        // SET_IRQS: the kernel reads argsz - header bytes of eventfds.
        let mut set = IrqSet {
            argsz: 28,
            count: 2,
            ..IrqSet::default()
        };
        refused(memfd_ioctl(
            fd.as_fd(),
            VFIO_DEVICE_SET_IRQS,
            set.as_mut_bytes(),
        ));
        // A buffer shorter than the struct the kernel copies whole, even
        // with an argsz that fits it.
        let mut short = [8u8, 0, 0, 0, 0, 0, 0, 0];
        let msg = refused(memfd_ioctl(fd.as_fd(), VFIO_DEVICE_GET_INFO, &mut short));
        assert!(msg.contains("needs 20 bytes, the buffer has 8"), "{msg}");
        refused(memfd_ioctl(fd.as_fd(), VFIO_DEVICE_GET_INFO, &mut [0u8; 2]));
        // A truthful argsz is let through (and the memfd has no ioctls).
        info.argsz = size_of::<DeviceInfo>() as u32;
        reached_the_kernel(memfd_ioctl(
            fd.as_fd(),
            VFIO_DEVICE_GET_INFO,
            info.as_mut_bytes(),
        ));
    }

    #[test]
    fn an_encoded_size_or_count_beyond_the_buffer_is_refused_before_the_kernel() {
        use crate::xen::evtchn::IOCTL_EVTCHN_BIND_INTERDOMAIN;
        use crate::xen::gntalloc::{AllocGref, IOCTL_GNTALLOC_ALLOC_GREF};
        use crate::xen::gntdev::{MapGrantRef, IOCTL_GNTDEV_MAP_GRANT_REF};
        use zerocopy::IntoBytes;
        let fd = memfd();
        // _IOC(_IOC_NONE, 'E', 1, 8), given 4 bytes.
        assert_eq!(IOCTL_EVTCHN_BIND_INTERDOMAIN.encoded_size(), 8);
        let msg = refused(memfd_ioctl(
            fd.as_fd(),
            IOCTL_EVTCHN_BIND_INTERDOMAIN,
            &mut [0u8; 4],
        ));
        assert!(msg.contains("needs 8 bytes, the buffer has 4"), "{msg}");
        reached_the_kernel(memfd_ioctl(
            fd.as_fd(),
            IOCTL_EVTCHN_BIND_INTERDOMAIN,
            &mut [0u8; 8],
        ));
        // gntalloc writes `count` grant refs from offset 16: three need 28
        // bytes, more than the bare struct's 24.
        let mut alloc = AllocGref {
            count: 3,
            ..AllocGref::default()
        };
        let msg = refused(memfd_ioctl(
            fd.as_fd(),
            IOCTL_GNTALLOC_ALLOC_GREF,
            alloc.as_mut_bytes(),
        ));
        assert!(msg.contains("needs 28 bytes, the buffer has 24"), "{msg}");
        let mut buf = vec![0u8; 28];
        buf[..24].copy_from_slice(alloc.as_bytes());
        reached_the_kernel(memfd_ioctl(fd.as_fd(), IOCTL_GNTALLOC_ALLOC_GREF, &mut buf));
        // gntdev reads `count` 8-byte refs from offset 16; a huge count
        // neither overflows nor passes.
        let mut map = MapGrantRef {
            count: u32::MAX,
            ..MapGrantRef::default()
        };
        refused(memfd_ioctl(
            fd.as_fd(),
            IOCTL_GNTDEV_MAP_GRANT_REF,
            map.as_mut_bytes(),
        ));
    }

    #[test]
    fn integer_and_pointer_and_descriptor_requests_are_not_mixed_up() {
        use crate::vfio::{VFIO_DEVICE_GET_INFO, VFIO_GET_API_VERSION, VFIO_GROUP_GET_DEVICE_FD};
        let fd = memfd();
        // An integer where the kernel expects a pointer would be a wild
        // write: refused.
        let e = memfd_ioctl_value(fd.as_fd(), VFIO_DEVICE_GET_INFO, 0x1000).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        refused(memfd_ioctl(fd.as_fd(), VFIO_GET_API_VERSION, &mut [0u8; 8]));
        reached_the_kernel(memfd_ioctl_value(fd.as_fd(), VFIO_GET_API_VERSION, 0));
        // A descriptor-returning request only through ioctl_fd, and only
        // with its NUL-terminated name.
        refused(memfd_ioctl(
            fd.as_fd(),
            VFIO_GROUP_GET_DEVICE_FD,
            &mut b"dev\0".to_owned(),
        ));
        let e = memfd_ioctl_fd(fd.as_fd(), VFIO_GROUP_GET_DEVICE_FD, &mut b"dev".to_owned())
            .unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");
        assert_eq!(e.raw_os_error(), None);
        let e = memfd_ioctl_fd(fd.as_fd(), VFIO_DEVICE_GET_INFO, &mut [0u8; 64]).unwrap_err();
        assert_eq!(e.raw_os_error(), None, "{e}");
        let e = memfd_ioctl_fd(
            fd.as_fd(),
            VFIO_GROUP_GET_DEVICE_FD,
            &mut b"dev\0".to_owned(),
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY), "{e}");
    }

    #[test]
    fn the_encoded_size_is_a_floor_whatever_the_description() {
        // SAFETY: never issued to the kernel (the buffers below are all
        // refused or only checked); the description is deliberately short.
        let req = unsafe { IoctlRequest::new(ioc(IOC_NONE, b'x', 1, 16), IoctlArg::Fixed(4)) };
        assert_eq!(req.encoded_size(), 16);
        assert!(req.check(&[0; 8]).is_err());
        assert!(req.check(&[0; 16]).is_ok());
        // An "integer" request whose number encodes a size takes a pointer.
        // SAFETY: only checked, never issued.
        let value = unsafe { IoctlRequest::new(ioc(IOC_NONE, b'x', 2, 8), IoctlArg::Value) };
        assert!(value.check_value().is_err());
    }

    #[test]
    fn ioc_matches_the_kernel_encoding() {
        // _IO(';', 100) = VFIO_GET_API_VERSION, a value well known from
        // strace output.
        assert_eq!(ioc(IOC_NONE, b';', 100, 0), 0x3b64);
        assert_eq!(ioc(2, b'E', 1, 8), 0x8008_4501);
    }
}
