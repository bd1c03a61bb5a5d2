//! Shared pages backed by a memfd (or an existing shm file), mapped with
//! memmap2 and exposed to ring code through [`SharedMem`].
//!
//! # Why seals
//!
//! A shared file can be truncated by anyone holding a writable fd. If the
//! peer shrinks it while we have it mapped, our next access to the lost
//! pages raises `SIGBUS` and kills us: a hostile peer must not be able to do
//! that. [`MemFd::create`] therefore sizes the memfd once and then adds
//! `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`, after which no process can
//! change its size again; every way of attaching to memory we did not create
//! ([`MemFd::from_fd`], [`MemFd::open_path`]) refuses a file without those
//! seals. Plain `/dev/shm` files cannot be sealed at all; attaching to one
//! is [`MemFd::open_path_unsealed`], which is `unsafe` for that reason.
//!
//! # Example
//!
//! ```
//! use ring_core::mem::SharedMem;
//! use ring_hosted::memfd::MemFd;
//!
//! let mem = MemFd::create("example", 8192)?;
//! mem.store_u32(16, 7)?;
//! assert_eq!(mem.load_u32(16)?, 7);
//! assert!(mem.is_sealed());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// The crate denies unsafe code; this module is one of its few rooms for
// it (the RawMem view over the mapping, the unsealed-attach contract and
// the kernel's copies in and out of the mapping for `FdIo`), each block
// argued by a SAFETY comment.
#![allow(unsafe_code)]

use crate::fdio::{too_many_spans, FdIo, Output};
use crate::Error;
use memmap2::{MmapOptions, MmapRaw};
use ring_core::loan::{Span, MAX_SPANS};
use ring_core::mem::{MemError, RawMem, SharedMem};
use rustix::fs::{FileType, MemfdFlags, SealFlags};
use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// The seals every memory we share or accept must carry.
pub const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// What is wrong with a file descriptor (or file) offered as shared memory
/// or as an event source. Each case is a distinct, printable reason.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FdProblem {
    /// The fd is not a regular file (a pipe, socket, directory, ...).
    NotRegularFile {
        /// What it is instead.
        kind: &'static str,
    },
    /// The file does not support seals, so it is not a memfd.
    NotSealable,
    /// The file lacks some of [`REQUIRED_SEALS`].
    MissingSeals {
        /// The seals it has (raw `F_GET_SEALS` bits).
        have: u32,
        /// The seals we need.
        need: u32,
    },
    /// The file is smaller than the layout needs.
    TooSmall {
        /// Its size in bytes.
        size: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// The file's size differs from the size the peer announced.
    SizeMismatch {
        /// Its size in bytes.
        size: u64,
        /// The size announced.
        announced: u64,
    },
    /// A size of zero, or one that does not fit this address space.
    BadSize {
        /// The size asked for.
        size: u64,
    },
    /// The fd is not an eventfd.
    NotEventfd {
        /// What `/proc/self/fd` says it is.
        found: String,
    },
}

impl fmt::Display for FdProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdProblem::NotRegularFile { kind } => {
                write!(f, "expected a memfd, got a {kind}")
            }
            FdProblem::NotSealable => f.write_str("file does not support seals (not a memfd)"),
            FdProblem::MissingSeals { have, need } => write!(
                f,
                "memory is not sealed against resizing (seals {have:#x}, need {need:#x}); \
                 a peer could truncate it under us"
            ),
            FdProblem::TooSmall { size, needed } => {
                write!(f, "memory has {size} bytes, at least {needed} needed")
            }
            FdProblem::SizeMismatch { size, announced } => {
                write!(
                    f,
                    "memory has {size} bytes but the peer announced {announced}"
                )
            }
            FdProblem::BadSize { size } => write!(f, "unusable memory size {size}"),
            FdProblem::NotEventfd { found } => write!(f, "expected an eventfd, got {found}"),
        }
    }
}

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "pipe",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "file of unknown type",
    }
}

/// A shared mapping of a memfd or shm file.
///
/// Owns the fd (to pass it on, e.g. over a Unix socket) and the mapping.
/// Implements [`SharedMem`] by delegating to a [`RawMem`] view of the
/// mapping; share it between endpoints as `Arc<MemFd>`.
pub struct MemFd {
    fd: OwnedFd,
    view: RawMem<'static>,
    sealed: bool,
    // Keeps the pages mapped for as long as `view` is used; declared last so
    // it is dropped (unmapped) after everything else.
    _map: MmapRaw,
}

impl fmt::Debug for MemFd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemFd")
            .field("fd", &self.fd.as_raw_fd())
            .field("size", &self.view.size())
            .field("sealed", &self.sealed)
            .finish()
    }
}

impl MemFd {
    /// Creates a zero-filled memfd of `size` bytes, seals it against any
    /// change of size, and maps it shared.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if the kernel refuses (no memfd support, out of memory),
    /// [`Error::BadFd`] for a size of zero.
    ///
    /// # Examples
    ///
    /// The memory has exactly the size asked for, starts zeroed, and no fd
    /// to it can change that size any more:
    ///
    /// ```
    /// use ring_core::mem::SharedMem;
    /// use ring_hosted::memfd::MemFd;
    /// use std::os::fd::AsFd;
    ///
    /// let mem = MemFd::create("doc-create", 3 * 4096)?;
    /// assert_eq!(mem.len(), 3 * 4096);
    /// assert_eq!(mem.load_u32(8192)?, 0);
    /// assert!(mem.is_sealed());
    ///
    /// // Another handle on the same file: growing or shrinking it fails.
    /// let file = std::fs::File::from(mem.as_fd().try_clone_to_owned()?);
    /// assert!(file.set_len(4096).is_err());
    /// assert!(MemFd::create("doc-empty", 0).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create(name: &str, size: usize) -> Result<Self, Error> {
        if size == 0 {
            return Err(Error::BadFd(FdProblem::BadSize { size: 0 }));
        }
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(Error::os("memfd_create"))?;
        rustix::fs::ftruncate(&fd, size as u64).map_err(Error::os("ftruncate memfd"))?;
        rustix::fs::fcntl_add_seals(&fd, REQUIRED_SEALS).map_err(Error::os("seal memfd"))?;
        Self::map(fd, size, true)
    }

    /// Attaches to a memfd received from a peer.
    ///
    /// The fd must be a regular, sealable file carrying [`REQUIRED_SEALS`]
    /// and at least `min_size` bytes long; the whole file is mapped.
    ///
    /// # Errors
    ///
    /// [`Error::BadFd`] naming the first check that failed.
    ///
    /// # Examples
    ///
    /// A second mapping of a memfd, as a peer that received its fd would
    /// make it; both see the same bytes. A file that is too small is
    /// refused with the reason:
    ///
    /// ```
    /// use ring_core::mem::SharedMem;
    /// use ring_hosted::memfd::{FdProblem, MemFd};
    /// use ring_hosted::Error;
    /// use std::os::fd::AsFd;
    ///
    /// let ours = MemFd::create("doc-from-fd", 8192)?;
    /// let theirs = MemFd::from_fd(ours.as_fd().try_clone_to_owned()?, 8192)?;
    /// ours.store_u32(4096, 0xfeed)?;
    /// assert_eq!(theirs.load_u32(4096)?, 0xfeed);
    ///
    /// let too_small = MemFd::from_fd(ours.as_fd().try_clone_to_owned()?, 16384);
    /// assert!(matches!(
    ///     too_small,
    ///     Err(Error::BadFd(FdProblem::TooSmall { size: 8192, needed: 16384 }))
    /// ));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_fd(fd: OwnedFd, min_size: usize) -> Result<Self, Error> {
        let size = Self::check_fd(fd.as_fd(), min_size, true)?;
        Self::map(fd, size, true)
    }

    /// Attaches to a sealed memory file by path, e.g. `/proc/PID/fd/N` of a
    /// peer's memfd. The same checks as [`from_fd`](Self::from_fd) apply.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if the file cannot be opened, else as `from_fd`.
    ///
    /// # Examples
    ///
    /// Attaching by the `/proc` path of an fd (our own here; a peer's is
    /// `/proc/PID/fd/N`):
    ///
    /// ```
    /// use ring_core::mem::SharedMem;
    /// use ring_hosted::memfd::MemFd;
    /// use std::os::fd::{AsFd, AsRawFd};
    ///
    /// let ours = MemFd::create("doc-open-path", 4096)?;
    /// ours.store_u8(100, 42)?;
    /// let path = format!("/proc/self/fd/{}", ours.as_fd().as_raw_fd());
    /// let theirs = MemFd::open_path(std::path::Path::new(&path), 4096)?;
    /// assert_eq!(theirs.load_u8(100)?, 42);
    /// assert!(theirs.is_sealed());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_path(path: &Path, min_size: usize) -> Result<Self, Error> {
        let fd = Self::open_rw(path)?;
        Self::from_fd(fd, min_size)
    }

    /// Attaches to an unsealed shm file (e.g. one made with `shm_open` by a
    /// peer we did not create). Size is still checked.
    ///
    /// # Errors
    ///
    /// As [`open_path`](Self::open_path), except that missing seals are
    /// accepted.
    ///
    /// # Safety
    ///
    /// Nobody may shrink the file while the returned value (or anything
    /// made from it) is alive: access to truncated pages raises `SIGBUS`,
    /// which kills the process. Only use this with files whose writers you
    /// trust not to truncate them.
    ///
    /// # Examples
    ///
    /// A plain file (as `shm_open` or a C peer would make it) has no
    /// seals: [`open_path`](Self::open_path) refuses it, this accepts it.
    ///
    /// ```
    /// use ring_core::mem::SharedMem;
    /// use ring_hosted::memfd::MemFd;
    ///
    /// let path = std::env::temp_dir().join(format!("ring-doc-shm-{}", std::process::id()));
    /// std::fs::write(&path, [0u8; 8192])?;
    /// assert!(MemFd::open_path(&path, 8192).is_err());
    /// // SAFETY: this example made the file and nothing truncates it while
    /// // the mapping lives.
    /// let mem = unsafe { MemFd::open_path_unsealed(&path, 8192) }?;
    /// mem.store_u32(0, 7)?;
    /// assert!(!mem.is_sealed());
    /// assert_eq!(std::fs::read(&path)?[0], 7);
    /// # drop(mem);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub unsafe fn open_path_unsealed(path: &Path, min_size: usize) -> Result<Self, Error> {
        let fd = Self::open_rw(path)?;
        let size = Self::check_fd(fd.as_fd(), min_size, false)?;
        let sealed = rustix::fs::fcntl_get_seals(&fd)
            .map(|s| s.contains(REQUIRED_SEALS))
            .unwrap_or(false);
        Self::map(fd, size, sealed)
    }

    /// Attaches to an unsealed memory fd we own (e.g. one inherited from
    /// the program that made it). Kind and size are still checked.
    ///
    /// # Errors
    ///
    /// As [`from_fd`](Self::from_fd), except that missing seals are
    /// accepted.
    ///
    /// # Safety
    ///
    /// As [`open_path_unsealed`](Self::open_path_unsealed): nobody may
    /// shrink the file while the mapping lives.
    ///
    /// # Examples
    ///
    /// An fd to an unsealed file (a plain temporary file here; a memfd made
    /// without `F_SEAL_*`, as many C programs make them, is the same case):
    ///
    /// ```
    /// use ring_hosted::memfd::MemFd;
    /// use std::os::fd::OwnedFd;
    ///
    /// let path = std::env::temp_dir().join(format!("ring-doc-unsealed-{}", std::process::id()));
    /// std::fs::write(&path, [0u8; 4096])?;
    /// let fd = OwnedFd::from(std::fs::OpenOptions::new().read(true).write(true).open(&path)?);
    /// assert!(MemFd::from_fd(fd.try_clone()?, 4096).is_err());
    /// // SAFETY: this example made the file and nothing truncates it while
    /// // the mapping lives.
    /// let mem = unsafe { MemFd::from_fd_unsealed(fd, 4096) }?;
    /// assert_eq!(mem.len(), 4096);
    /// # drop(mem);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub unsafe fn from_fd_unsealed(fd: OwnedFd, min_size: usize) -> Result<Self, Error> {
        let size = Self::check_fd(fd.as_fd(), min_size, false)?;
        let sealed = rustix::fs::fcntl_get_seals(&fd)
            .map(|s| s.contains(REQUIRED_SEALS))
            .unwrap_or(false);
        Self::map(fd, size, sealed)
    }

    fn open_rw(path: &Path) -> Result<OwnedFd, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| Error::Os {
                op: "open shared memory file",
                source,
            })?;
        Ok(file.into())
    }

    /// Checks kind, seals (if `need_seals`) and size; returns the size.
    fn check_fd(fd: BorrowedFd<'_>, min_size: usize, need_seals: bool) -> Result<usize, Error> {
        let stat = rustix::fs::fstat(fd).map_err(Error::os("fstat memory fd"))?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind != FileType::RegularFile {
            return Err(Error::BadFd(FdProblem::NotRegularFile {
                kind: type_name(kind),
            }));
        }
        if need_seals {
            let seals = rustix::fs::fcntl_get_seals(fd)
                .map_err(|_| Error::BadFd(FdProblem::NotSealable))?;
            if !seals.contains(REQUIRED_SEALS) {
                return Err(Error::BadFd(FdProblem::MissingSeals {
                    have: seals.bits(),
                    need: REQUIRED_SEALS.bits(),
                }));
            }
        }
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        if size < min_size as u64 {
            return Err(Error::BadFd(FdProblem::TooSmall {
                size,
                needed: min_size as u64,
            }));
        }
        match usize::try_from(size) {
            Ok(s) if s > 0 => Ok(s),
            _ => Err(Error::BadFd(FdProblem::BadSize { size })),
        }
    }

    fn map(fd: OwnedFd, size: usize, sealed: bool) -> Result<Self, Error> {
        let map = MmapOptions::new()
            .len(size)
            .map_raw(fd.as_raw_fd())
            .map_err(|source| Error::Os {
                op: "mmap shared memory",
                source,
            })?;
        // The `'static` view is private; `raw` hands it out only with the
        // lifetime of `&self`. Nobody forms references into the mapping.
        // SAFETY: `map` is a fresh shared mapping of `size` bytes kept alive
        // (never remapped) by this struct, and the file cannot shrink (sealed,
        // or promised by the caller of the unsafe unsealed constructor).
        let view = unsafe { RawMem::from_raw_parts(map.as_mut_ptr(), size) }
            .ok_or(Error::BadFd(FdProblem::BadSize { size: size as u64 }))?;
        Ok(MemFd {
            fd,
            view,
            sealed,
            _map: map,
        })
    }

    /// Size of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.view.size()
    }

    /// Always false: a mapping has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.view.size() == 0
    }

    /// Whether the file carries [`REQUIRED_SEALS`] (false only for files
    /// opened with [`open_path_unsealed`](Self::open_path_unsealed)).
    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// A raw view of the mapping, valid while `self` is borrowed.
    pub fn raw(&self) -> RawMem<'_> {
        self.view
    }

    /// The address of the mapping's first byte, for a caller that must
    /// hand it to C (the libxenvchan drop-in's public struct points into
    /// the control page). Valid while `self` lives; access it only with
    /// atomics or volatile copies, as the peer writes it concurrently.
    pub fn as_ptr(&self) -> *mut u8 {
        self._map.as_mut_ptr()
    }
}

/// The `iovec`s of `spans` over the `size` bytes mapped at `base`, each
/// checked to lie inside them (pointer arithmetic only: nothing is read).
fn iovecs(
    base: *mut u8,
    size: usize,
    spans: &[Span],
) -> io::Result<([libc::iovec; MAX_SPANS], usize)> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_SPANS];
    if spans.len() > MAX_SPANS {
        return Err(too_many_spans());
    }
    for (slot, s) in iov.iter_mut().zip(spans) {
        match s.offset.checked_add(s.len) {
            Some(end) if end <= size => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "span of {} bytes at {} outside a {}-byte mapping",
                        s.len, s.offset, size
                    ),
                ))
            }
        }
        // In bounds (checked above): the pointer stays in the mapping.
        slot.iov_base = base.wrapping_add(s.offset).cast();
        slot.iov_len = s.len;
    }
    Ok((iov, spans.len()))
}

/// The byte count of a system call's return, or its error.
fn syscall_len(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// [`FdIo::read_from_fd`] over the `size` bytes mapped at `base`: one
/// `readv(2)` from `fd` into `spans` of them.
///
/// # Safety
///
/// `base..base + size` must be a live shared mapping of ours for the
/// whole call, accessed only through raw pointers (no Rust reference into
/// it), as [`MemFd`]'s and `devmem::MappedRegion`'s are.
pub(crate) unsafe fn read_spans(
    base: *mut u8,
    size: usize,
    fd: BorrowedFd<'_>,
    spans: &[Span],
) -> io::Result<usize> {
    let (iov, count) = iovecs(base, size, spans)?;
    // The kernel writes those bytes as the peer may at any time: nothing
    // holds a Rust reference into the mapping, every other access goes
    // through `RawMem`.
    // SAFETY: the first `count` iovecs (≤ MAX_SPANS, fits c_int) lie in
    // the live mapping (checked by `iovecs`; the caller keeps it mapped).
    let n = unsafe { libc::readv(fd.as_raw_fd(), iov.as_ptr(), count as libc::c_int) };
    syscall_len(n)
}

/// [`FdIo::write_to_fd`] over the `size` bytes mapped at `base`.
///
/// # Safety
///
/// As [`read_spans`].
pub(crate) unsafe fn write_spans(
    base: *mut u8,
    size: usize,
    fd: BorrowedFd<'_>,
    spans: &[Span],
    to: Output,
) -> io::Result<usize> {
    let (mut iov, count) = iovecs(base, size, spans)?;
    let n = match to {
        // SAFETY: as in `read_spans`; the kernel only reads the bytes.
        Output::File => unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), count as libc::c_int) },
        Output::Socket => {
            // SAFETY: an all-zero msghdr is valid (no name, no control).
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = count as _;
            // SAFETY: `msg` points at `count` iovecs inside the live
            // mapping (as in `read_spans`), which the kernel only reads;
            // `msg` and `iov` outlive the call.
            unsafe {
                libc::sendmsg(
                    fd.as_raw_fd(),
                    &msg,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            }
        }
    };
    syscall_len(n)
}

impl FdIo for MemFd {
    fn read_from_fd(&self, fd: BorrowedFd<'_>, spans: &[Span]) -> io::Result<usize> {
        // SAFETY: our mapping of `self.len()` bytes lives as long as `self`,
        // and this crate forms no reference into it.
        unsafe { read_spans(self._map.as_mut_ptr(), self.len(), fd, spans) }
    }

    fn write_to_fd(&self, fd: BorrowedFd<'_>, spans: &[Span], to: Output) -> io::Result<usize> {
        // SAFETY: as in `read_from_fd`.
        unsafe { write_spans(self._map.as_mut_ptr(), self.len(), fd, spans, to) }
    }
}

impl AsFd for MemFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl SharedMem for MemFd {
    fn size(&self) -> usize {
        self.view.size()
    }
    fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
        self.view.load_u32(offset)
    }
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        self.view.store_u32(offset, value)
    }
    fn load_u8(&self, offset: usize) -> Result<u8, MemError> {
        self.view.load_u8(offset)
    }
    fn store_u8(&self, offset: usize, value: u8) -> Result<(), MemError> {
        self.view.store_u8(offset, value)
    }
    fn fetch_or_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        self.view.fetch_or_u8(offset, bits)
    }
    fn fetch_and_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        self.view.fetch_and_u8(offset, bits)
    }
    fn fence(&self) {
        self.view.fence()
    }
    fn prefetch_write(&self, offset: usize) {
        self.view.prefetch_write(offset)
    }
    fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemError> {
        self.view.read(offset, dst)
    }
    fn write(&self, offset: usize, src: &[u8]) -> Result<(), MemError> {
        self.view.write(offset, src)
    }
    fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), MemError> {
        self.view.fill(offset, len, byte)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(r: Result<MemFd, Error>) -> FdProblem {
        match r {
            Err(Error::BadFd(p)) => p,
            other => panic!("expected a bad-fd error, got {other:?}"),
        }
    }

    #[test]
    fn created_memory_is_sealed_and_shared_between_mappings() {
        let a = MemFd::create("t", 4096).unwrap();
        let seals = rustix::fs::fcntl_get_seals(&a).unwrap();
        assert!(seals.contains(REQUIRED_SEALS));
        assert!(rustix::fs::ftruncate(&a, 100).is_err());
        assert!(rustix::fs::ftruncate(&a, 1 << 20).is_err());
        let dup = a.as_fd().try_clone_to_owned().unwrap();
        let b = MemFd::from_fd(dup, 4096).unwrap();
        a.store_u32(8, 0xdead_beef).unwrap();
        assert_eq!(b.load_u32(8).unwrap(), 0xdead_beef);
        assert_eq!(b.len(), 4096);
    }

    #[test]
    fn unsealed_memfd_is_refused() {
        let fd =
            rustix::fs::memfd_create("u", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        assert!(matches!(
            bad(MemFd::from_fd(fd, 4096)),
            FdProblem::MissingSeals { .. }
        ));
    }

    #[test]
    fn undersized_memfd_is_refused() {
        let a = MemFd::create("small", 4096).unwrap();
        let dup = a.as_fd().try_clone_to_owned().unwrap();
        assert_eq!(
            bad(MemFd::from_fd(dup, 8192)),
            FdProblem::TooSmall {
                size: 4096,
                needed: 8192
            }
        );
    }

    #[test]
    fn pipes_and_plain_files_are_refused() {
        let (r, _w) = rustix::pipe::pipe().unwrap();
        assert_eq!(
            bad(MemFd::from_fd(r, 1)),
            FdProblem::NotRegularFile { kind: "pipe" }
        );
        let path = std::env::temp_dir().join(format!("ring-memfd-test-{}", std::process::id()));
        std::fs::write(&path, [0u8; 4096]).unwrap();
        let got = MemFd::open_path(&path, 1);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            bad(got),
            FdProblem::NotSealable | FdProblem::MissingSeals { .. }
        ));
    }

    #[test]
    fn proc_path_of_a_sealed_memfd_attaches() {
        let a = MemFd::create("p", 8192).unwrap();
        let path = format!("/proc/self/fd/{}", a.as_fd().as_raw_fd());
        let b = MemFd::open_path(Path::new(&path), 8192).unwrap();
        b.store_u8(5000, 9).unwrap();
        assert_eq!(a.load_u8(5000).unwrap(), 9);
        assert!(b.is_sealed());
    }

    #[test]
    fn unsealed_shm_files_attach_only_through_the_unsafe_door() {
        let dir = if Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let path = dir.join(format!("ring-memfd-unsealed-{}", std::process::id()));
        std::fs::write(&path, [0u8; 8192]).unwrap();
        let safe = MemFd::open_path(&path, 4096);
        // SAFETY: this test owns the file and nobody truncates it while
        // the mapping lives.
        let unsealed = unsafe { MemFd::open_path_unsealed(&path, 4096) };
        // SAFETY: as above.
        let too_small = unsafe { MemFd::open_path_unsealed(&path, 8193) };
        std::fs::remove_file(&path).unwrap();
        assert!(safe.is_err(), "an unsealed file must not attach safely");
        let m = unsealed.unwrap();
        assert!(!m.is_sealed());
        m.store_u32(4096, 42).unwrap();
        assert_eq!(m.load_u32(4096).unwrap(), 42);
        assert!(matches!(
            bad(too_small),
            FdProblem::TooSmall {
                size: 8192,
                needed: 8193
            }
        ));
    }

    #[test]
    fn zero_size_is_refused() {
        assert!(matches!(
            bad(MemFd::create("z", 0)),
            FdProblem::BadSize { .. }
        ));
    }
}
