//! The memory door: the only way ring code touches shared pages.
//!
//! Shared pages are written concurrently by a peer we do not trust, so ring
//! code never holds a Rust reference (`&[u8]`, `&u32`) into them. Instead it
//! goes through [`SharedMem`], a deliberately narrow trait: the length, 8- and
//! 32-bit atomics with the orderings the protocols need, a full fence, a
//! write-prefetch hint, and bulk copies in and out at an offset. Every access is bounds-checked and
//! returns [`MemError`] instead of panicking.
//!
//! All multi-byte words are little-endian in shared memory (both wire
//! protocols say so); implementations convert, so ring code sees native
//! values.
//!
//! [`RawMem`] is the one implementation over a raw pointer and a length, and
//! holds the crate's only `unsafe` code. Everything else is generic over the
//! trait, so tests can substitute hostile or model-checked memories.

#![allow(unsafe_code)]

use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};

/// Why the memory door refused an access.
///
/// Ring code validates every peer-supplied offset before it reaches the
/// door, so this error means a mapping that is smaller than the layout says
/// or a bug, never a peer's doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemError {
    /// `offset + len` lies beyond the end of the memory.
    OutOfBounds {
        /// First byte of the access.
        offset: usize,
        /// Length of the access in bytes.
        len: usize,
        /// Length of the memory.
        size: usize,
    },
    /// An atomic word access at an offset that is not a multiple of its size.
    Misaligned {
        /// The offending offset.
        offset: usize,
    },
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MemError::OutOfBounds { offset, len, size } => write!(
                f,
                "shared-memory access of {len} bytes at offset {offset} exceeds the {size}-byte region"
            ),
            MemError::Misaligned { offset } => {
                write!(f, "atomic access at misaligned offset {offset}")
            }
        }
    }
}

impl core::error::Error for MemError {}

/// Narrow access to a region of memory shared with an untrusted peer.
///
/// Orderings are part of the contract: `load_*` is Acquire, `store_*` is
/// Release, the read-modify-write operations and [`fence`](Self::fence) are
/// SeqCst. Bulk copies carry no ordering of their own; ring code orders them
/// with the index loads and stores around them.
///
/// # Examples
///
/// The calls ring code makes, on a [`RawMem`] over atomics this process
/// owns:
///
/// ```
/// use core::sync::atomic::AtomicU64;
/// use ring_core::mem::{MemError, RawMem, SharedMem};
///
/// let words: Vec<AtomicU64> = (0..2).map(|_| AtomicU64::new(0)).collect();
/// let mem = RawMem::from_atomics(&words);
/// assert_eq!(mem.size(), 16);
/// mem.store_u32(4, 0x0403_0201)?;
/// let mut bytes = [0u8; 4];
/// mem.read(4, &mut bytes)?;
/// assert_eq!(bytes, [1, 2, 3, 4]); // little-endian in memory
/// assert_eq!(mem.fetch_or_u8(0, 0b10)?, 0); // the old value
/// // Every access is checked, and refused with an error, never a panic.
/// assert!(matches!(mem.load_u32(16), Err(MemError::OutOfBounds { .. })));
/// assert!(matches!(mem.load_u32(2), Err(MemError::Misaligned { .. })));
/// # Ok::<(), MemError>(())
/// ```
pub trait SharedMem {
    /// Length of the region in bytes.
    fn size(&self) -> usize;
    /// Atomically loads the little-endian `u32` at `offset` (Acquire).
    fn load_u32(&self, offset: usize) -> Result<u32, MemError>;
    /// Atomically stores `value` as a little-endian `u32` at `offset` (Release).
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError>;
    /// Atomically loads the byte at `offset` (Acquire).
    fn load_u8(&self, offset: usize) -> Result<u8, MemError>;
    /// Atomically stores the byte at `offset` (Release).
    fn store_u8(&self, offset: usize, value: u8) -> Result<(), MemError>;
    /// Atomically ORs `bits` into the byte at `offset`, returning the old value (SeqCst).
    fn fetch_or_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError>;
    /// Atomically ANDs `bits` into the byte at `offset`, returning the old value (SeqCst).
    fn fetch_and_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError>;
    /// A full (SeqCst) fence: orders every earlier access before every later one.
    fn fence(&self) {
        fence(Ordering::SeqCst);
    }
    /// Hints that the bytes at `offset` will be written soon, so the memory
    /// may start taking their cache line for writing now.
    ///
    /// Producers call this for the ring space they fill next: a producer's
    /// full fence (the wake-up check after every publish) waits for every
    /// store before it, and a store into a line the consumer last read
    /// first has to take that line back from the consumer's cache. Taken
    /// early, off that path, the fence finds the line ready. A hint only:
    /// it never faults, reads or changes memory, and the default does
    /// nothing.
    fn prefetch_write(&self, offset: usize) {
        let _ = offset;
    }
    /// Copies `dst.len()` bytes out of the region, starting at `offset`.
    fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemError>;
    /// Copies `src` into the region, starting at `offset`.
    fn write(&self, offset: usize, src: &[u8]) -> Result<(), MemError>;
    /// Sets `len` bytes starting at `offset` to `byte`.
    fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), MemError> {
        let chunk = [byte; 64];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len());
            self.write(offset.saturating_add(done), chunk.get(..n).unwrap_or(&[]))?;
            done += n;
        }
        Ok(())
    }
}

macro_rules! forward_shared_mem {
    () => {
        fn size(&self) -> usize {
            (**self).size()
        }
        fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
            (**self).load_u32(offset)
        }
        fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
            (**self).store_u32(offset, value)
        }
        fn load_u8(&self, offset: usize) -> Result<u8, MemError> {
            (**self).load_u8(offset)
        }
        fn store_u8(&self, offset: usize, value: u8) -> Result<(), MemError> {
            (**self).store_u8(offset, value)
        }
        fn fetch_or_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
            (**self).fetch_or_u8(offset, bits)
        }
        fn fetch_and_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
            (**self).fetch_and_u8(offset, bits)
        }
        fn fence(&self) {
            (**self).fence()
        }
        fn prefetch_write(&self, offset: usize) {
            (**self).prefetch_write(offset)
        }
        fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemError> {
            (**self).read(offset, dst)
        }
        fn write(&self, offset: usize, src: &[u8]) -> Result<(), MemError> {
            (**self).write(offset, src)
        }
        fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), MemError> {
            (**self).fill(offset, len, byte)
        }
    };
}

impl<T: SharedMem + ?Sized> SharedMem for &T {
    forward_shared_mem!();
}

#[cfg(feature = "alloc")]
impl<T: SharedMem + ?Sized> SharedMem for alloc::sync::Arc<T> {
    forward_shared_mem!();
}

/// Shared memory described by a raw pointer and a length.
///
/// This is the crate's single implementation of [`SharedMem`] over real
/// memory: an mmap'd file, a device BAR, a grant mapping, or (safely, via
/// [`RawMem::from_atomics`]) a slice of atomics owned by this process.
///
/// How bulk copies touch the memory depends on where it came from:
///
/// - Memory shared with another party ([`RawMem::from_raw_parts`]: an
///   mmap'd file, a device BAR, a grant mapping) is copied by the `bulk`
///   copy below (`copy_nonoverlapping` for short copies, a vector loop for
///   long ones on x86-64). A hostile peer may write the same bytes while we
///   copy; the copy then yields some mix of old and new bytes, which ring
///   code treats as untrusted data to validate after the copy. This is the
///   accepted practice for shared-memory rings (the kernel and DPDK do the
///   same); Rust has no stable atomic memcpy to express it more exactly, so
///   the constructor is `unsafe` and its caller promises what the memory is.
/// - Memory this process owns as atomics ([`RawMem::from_atomics`]) is
///   copied with atomic accesses only (relaxed 8-byte words where aligned,
///   single bytes at the edges), so two threads of one safe program that
///   copy into the same bytes at once race only as atomics may: each byte
///   ends up one writer's or the other's, and nothing is undefined.
#[derive(Clone, Copy)]
pub struct RawMem<'a> {
    base: NonNull<u8>,
    size: usize,
    /// Bulk copies use atomic accesses (memory made of atomics).
    atomic_copies: bool,
    _memory: PhantomData<&'a [AtomicU8]>,
}

// SAFETY: `RawMem` only performs atomic accesses and byte copies through its
// pointer, never forms references, and the memory behind it is shared by
// design; moving the view to another thread changes nothing about that.
unsafe impl Send for RawMem<'_> {}
// SAFETY: as for `Send`: all access through `&RawMem` is either atomic or a
// raw byte copy, both of which tolerate concurrent access by contract.
unsafe impl Sync for RawMem<'_> {}

impl fmt::Debug for RawMem<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawMem")
            .field("base", &self.base)
            .field("size", &self.size)
            .finish()
    }
}

impl<'a> RawMem<'a> {
    /// Builds a view of `size` bytes starting at `base`.
    ///
    /// Returns `None` if `base` is null or not 8-byte aligned.
    ///
    /// # Safety
    ///
    /// For the whole lifetime `'a`, the `size` bytes at `base` must stay
    /// mapped, readable and writable, and must not be accessed through Rust
    /// references by anyone (other processes and raw-pointer or atomic access
    /// are fine).
    ///
    /// # Examples
    ///
    /// A zeroed heap allocation standing in for an mmap'd file or a
    /// device BAR:
    ///
    /// ```
    /// use ring_core::mem::{RawMem, SharedMem};
    /// use std::alloc::{alloc_zeroed, dealloc, Layout};
    ///
    /// let layout = Layout::from_size_align(8192, 4096)?;
    /// // SAFETY: the layout's size is not zero.
    /// let base = unsafe { alloc_zeroed(layout) };
    /// assert!(!base.is_null());
    /// // SAFETY: the bytes stay allocated until the `dealloc` below, and
    /// // nothing forms a Rust reference into them meanwhile.
    /// let mem = unsafe { RawMem::from_raw_parts(base, layout.size()) }.ok_or("misaligned")?;
    /// mem.store_u32(8, 7)?;
    /// assert_eq!(mem.load_u32(8)?, 7);
    /// // A base that is not 8-aligned is refused.
    /// // SAFETY: as above; the view is never built.
    /// assert!(unsafe { RawMem::from_raw_parts(base.wrapping_add(1), 8) }.is_none());
    /// // SAFETY: allocated above with this layout; `mem` is not used again.
    /// unsafe { dealloc(base, layout) };
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub unsafe fn from_raw_parts(base: *mut u8, size: usize) -> Option<Self> {
        let base = NonNull::new(base)?;
        if base.as_ptr().align_offset(8) != 0 {
            return None;
        }
        Some(RawMem {
            base,
            size,
            atomic_copies: false,
            _memory: PhantomData,
        })
    }

    /// A view of memory this process owns as atomics (heap pages, statics).
    ///
    /// Safe because every access to it is atomic, bulk copies included
    /// (see [`RawMem`]): threads of this process may share and write it at
    /// will. The price is copies a few times slower than the vector copy
    /// that memory shared with another party gets.
    ///
    /// # Examples
    ///
    /// A `static` page, as a `no_std` guest without an allocator would
    /// use (a `Vec` of atomics works the same way):
    ///
    /// ```
    /// use core::sync::atomic::AtomicU64;
    /// use ring_core::mem::{RawMem, SharedMem};
    ///
    /// static PAGE: [AtomicU64; 512] = [const { AtomicU64::new(0) }; 512];
    /// let mem = RawMem::from_atomics(&PAGE);
    /// assert_eq!(mem.size(), 4096);
    /// mem.write(100, b"shared")?;
    /// let mut back = [0u8; 6];
    /// mem.read(100, &mut back)?;
    /// assert_eq!(&back, b"shared");
    /// # Ok::<(), ring_core::mem::MemError>(())
    /// ```
    pub fn from_atomics(words: &'a [AtomicU64]) -> Self {
        RawMem {
            // A slice pointer is never null and `AtomicU64` is 8-aligned.
            base: NonNull::from(words).cast(),
            size: core::mem::size_of_val(words),
            atomic_copies: true,
            _memory: PhantomData,
        }
    }

    /// Pointer to `len` bytes at `offset`, after the bounds (and, for atomic
    /// words, alignment) check.
    fn at(&self, offset: usize, len: usize, align: usize) -> Result<*mut u8, MemError> {
        let in_bounds = offset.checked_add(len).is_some_and(|end| end <= self.size);
        if !in_bounds {
            return Err(MemError::OutOfBounds {
                offset,
                len,
                size: self.size,
            });
        }
        if !offset.is_multiple_of(align) {
            return Err(MemError::Misaligned { offset });
        }
        // `wrapping_add` is safe; the result is in bounds by the check above.
        Ok(self.base.as_ptr().wrapping_add(offset))
    }

    fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32, MemError> {
        let ptr = self.at(offset, 4, 4)?;
        // SAFETY: `ptr` is in bounds and 4-aligned (checked by `at`; the base
        // is 8-aligned), the memory is valid for `'a` per the constructor's
        // contract, and it is only ever accessed atomically or by raw copies.
        Ok(unsafe { AtomicU32::from_ptr(ptr.cast()) })
    }

    fn atomic_u8(&self, offset: usize) -> Result<&AtomicU8, MemError> {
        let ptr = self.at(offset, 1, 1)?;
        // SAFETY: `ptr` is in bounds, any address is 1-aligned, and the
        // memory is valid for `'a` per the constructor's contract.
        Ok(unsafe { AtomicU8::from_ptr(ptr) })
    }
}

impl SharedMem for RawMem<'_> {
    fn size(&self) -> usize {
        self.size
    }

    fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
        Ok(u32::from_le(
            self.atomic_u32(offset)?.load(Ordering::Acquire),
        ))
    }

    fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        self.atomic_u32(offset)?
            .store(value.to_le(), Ordering::Release);
        Ok(())
    }

    fn load_u8(&self, offset: usize) -> Result<u8, MemError> {
        Ok(self.atomic_u8(offset)?.load(Ordering::Acquire))
    }

    fn store_u8(&self, offset: usize, value: u8) -> Result<(), MemError> {
        self.atomic_u8(offset)?.store(value, Ordering::Release);
        Ok(())
    }

    fn prefetch_write(&self, offset: usize) {
        if let Ok(line) = self.at(offset, 1, 1) {
            cpu::prefetch_write(line);
        }
    }

    fn fetch_or_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        Ok(self.atomic_u8(offset)?.fetch_or(bits, Ordering::SeqCst))
    }

    fn fetch_and_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        Ok(self.atomic_u8(offset)?.fetch_and(bits, Ordering::SeqCst))
    }

    fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemError> {
        let src = self.at(offset, dst.len(), 1)?;
        if self.atomic_copies {
            // SAFETY: `src..src+len` is in bounds (checked by `at`), lies in
            // memory made of atomics that lives for `'a`, and is only ever
            // accessed atomically.
            unsafe { atomic_copy::read(src, dst) };
            return Ok(());
        }
        // SAFETY: `src..src+len` is in bounds of the shared region (checked by
        // `at`) and valid for reads; `dst` is a private buffer that cannot
        // overlap shared memory we hold no references to.
        unsafe { bulk::copy(src, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn write(&self, offset: usize, src: &[u8]) -> Result<(), MemError> {
        let dst = self.at(offset, src.len(), 1)?;
        if self.atomic_copies {
            // SAFETY: as in `read`: in bounds, alive, atomics only.
            unsafe { atomic_copy::write(src, dst) };
            return Ok(());
        }
        // SAFETY: `dst..dst+len` is in bounds of the shared region (checked
        // by `at`) and valid for writes; `src` is a private buffer.
        unsafe { bulk::copy(src.as_ptr(), dst, src.len()) };
        Ok(())
    }

    fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), MemError> {
        let dst = self.at(offset, len, 1)?;
        if self.atomic_copies {
            // SAFETY: as in `read`: in bounds, alive, atomics only.
            unsafe { atomic_copy::fill(dst, len, byte) };
            return Ok(());
        }
        // SAFETY: `dst..dst+len` is in bounds and valid for writes.
        unsafe { core::ptr::write_bytes(dst, byte, len) };
        Ok(())
    }
}

/// Bulk copies between a private buffer and memory made of atomics, with
/// atomic accesses only: relaxed 8-byte words over the 8-aligned middle,
/// bytes at the edges. Relaxed is enough: ordering against the indices
/// comes from the acquire/release index accesses and the fences around
/// the copy, exactly as for the plain copy.
mod atomic_copy {
    use core::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

    /// The byte offsets `0..len` from `at` in three runs: bytes up to
    /// 8-alignment, whole aligned words, bytes after them.
    fn runs(at: *const u8, len: usize) -> [core::ops::Range<usize>; 3] {
        let head = at.align_offset(8).min(len);
        let tail = head + (len - head) / 8 * 8;
        [0..head, head..tail, tail..len]
    }

    /// The atomic byte at `p`.
    ///
    /// # Safety
    ///
    /// `p` is valid memory made of atomics for the returned lifetime.
    unsafe fn byte<'a>(p: *mut u8) -> &'a AtomicU8 {
        // SAFETY: our caller's contract.
        unsafe { AtomicU8::from_ptr(p) }
    }

    /// The atomic word at `p`.
    ///
    /// # Safety
    ///
    /// As [`byte`], and `p` is 8-aligned.
    unsafe fn word<'a>(p: *mut u8) -> &'a AtomicU64 {
        // SAFETY: our caller's contract.
        unsafe { AtomicU64::from_ptr(p.cast()) }
    }

    /// Copies `dst.len()` bytes from `src` into `dst`.
    ///
    /// # Safety
    ///
    /// `src..src + dst.len()` must be valid memory made of atomics (only
    /// ever accessed atomically) for the duration of the call.
    pub(super) unsafe fn read(src: *const u8, dst: &mut [u8]) {
        let [head, words, tail] = runs(src, dst.len());
        let at = |i: usize| src.wrapping_add(i).cast_mut();
        for i in head.chain(tail) {
            // SAFETY: in bounds, atomics only, per our contract.
            let b = unsafe { byte(at(i)) }.load(Relaxed);
            if let Some(d) = dst.get_mut(i) {
                *d = b;
            }
        }
        for i in words.step_by(8) {
            // SAFETY: in bounds and 8-aligned (a whole-word run), atomics
            // only, per our contract.
            let w = unsafe { word(at(i)) }.load(Relaxed);
            if let Some(d) = dst.get_mut(i..i + 8) {
                d.copy_from_slice(&w.to_ne_bytes());
            }
        }
    }

    /// Copies `src` into `src.len()` bytes at `dst`.
    ///
    /// # Safety
    ///
    /// As for [`read`], for `dst..dst + src.len()`.
    pub(super) unsafe fn write(src: &[u8], dst: *mut u8) {
        let [head, words, tail] = runs(dst, src.len());
        for i in head.chain(tail) {
            // SAFETY: in bounds, atomics only.
            unsafe { byte(dst.wrapping_add(i)) }.store(src.get(i).copied().unwrap_or(0), Relaxed);
        }
        for i in words.step_by(8) {
            let mut w = [0u8; 8];
            if let Some(s) = src.get(i..i + 8) {
                w.copy_from_slice(s);
            }
            // SAFETY: in bounds and 8-aligned, atomics only.
            unsafe { word(dst.wrapping_add(i)) }.store(u64::from_ne_bytes(w), Relaxed);
        }
    }

    /// Sets `len` bytes at `dst` to `byte`.
    ///
    /// # Safety
    ///
    /// As for [`read`], for `dst..dst + len`.
    pub(super) unsafe fn fill(dst: *mut u8, len: usize, value: u8) {
        let [head, words, tail] = runs(dst, len);
        for i in head.chain(tail) {
            // SAFETY: in bounds, atomics only.
            unsafe { byte(dst.wrapping_add(i)) }.store(value, Relaxed);
        }
        for i in words.step_by(8) {
            // SAFETY: in bounds and 8-aligned, atomics only.
            unsafe { word(dst.wrapping_add(i)) }.store(u64::from_ne_bytes([value; 8]), Relaxed);
        }
    }
}

/// Bulk copies between a private buffer and shared memory.
///
/// Why not just `copy_nonoverlapping`: it becomes the C library's
/// `memcpy`, and glibc copies 2 KiB to 512 KiB with `rep movsb`. On AMD
/// Zen 3 (EPYC 7xx3, CPUID family 19h model 01h) `rep movsb` drops from
/// about 35 GB/s to about 2 GB/s when the destination lies 1 to 31 bytes
/// past the source modulo 64. A byte-stream ring's position takes every
/// value, so a vchan stream met that case on most copies and ran at a
/// tenth of the VMBus pipe's speed (docs/benchmarks.md has the numbers).
///
/// Long copies on x86-64 therefore run our own loop: unaligned vector
/// loads, stores aligned to the destination's vector size, 256-bit where
/// the CPU and OS enable AVX, 128-bit (SSE2, always present on x86-64)
/// otherwise. It matches `rep movsb` at its best and never falls off. The
/// loop's stores are volatile, so the compiler cannot turn it back into a
/// `memcpy` call. Short copies stay with
/// `copy_nonoverlapping`, whose small-size code has no such trap.
mod bulk {
    /// Copies of at least this many bytes take the vector loop.
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2", not(miri)))]
    const VECTOR_MIN: usize = 512;

    /// Copies `len` bytes from `src` to `dst`.
    ///
    /// # Safety
    ///
    /// `src` must be valid for reads and `dst` for writes of `len` bytes,
    /// and the two ranges must not overlap (as for `copy_nonoverlapping`).
    pub(super) unsafe fn copy(src: *const u8, dst: *mut u8, len: usize) {
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2", not(miri)))]
        if len >= VECTOR_MIN {
            // SAFETY: our caller's contract is `x86::copy`'s.
            unsafe { x86::copy(src, dst, len) };
            return;
        }
        // SAFETY: our caller's contract is `copy_nonoverlapping`'s.
        unsafe { core::ptr::copy_nonoverlapping(src, dst, len) };
    }

    #[cfg(all(target_arch = "x86_64", target_feature = "sse2", not(miri)))]
    mod x86 {
        use core::arch::x86_64::{__cpuid, __m128i, __m256i};
        use core::ptr::{copy_nonoverlapping, write_volatile};
        use core::sync::atomic::{AtomicU8, Ordering};

        /// 0: not asked yet, 1: AVX usable, 2: not usable.
        static AVX: AtomicU8 = AtomicU8::new(0);

        /// Whether the CPU has AVX and the OS saves its registers (CPUID
        /// 1: ECX bit 28 AVX, bit 27 OSXSAVE; XCR0 bits 1 and 2). Asked
        /// once; a race only asks twice.
        fn avx_usable() -> bool {
            match AVX.load(Ordering::Relaxed) {
                1 => return true,
                2 => return false,
                _ => {}
            }
            let ecx = __cpuid(1).ecx;
            let usable = ecx & (1 << 28) != 0 && ecx & (1 << 27) != 0 && xcr0() & 0b110 == 0b110;
            AVX.store(if usable { 1 } else { 2 }, Ordering::Relaxed);
            usable
        }

        /// The OS's enabled-state mask XCR0. Only called once CPUID has
        /// said OSXSAVE, which is what makes XGETBV legal.
        fn xcr0() -> u64 {
            let (lo, hi): (u32, u32);
            // SAFETY: XGETBV with ECX = 0 reads XCR0 into EDX:EAX and
            // touches nothing else; OSXSAVE (checked by our caller) means
            // the OS has enabled the instruction, so it cannot fault.
            unsafe {
                core::arch::asm!(
                    "xgetbv",
                    in("ecx") 0u32,
                    out("eax") lo,
                    out("edx") hi,
                    options(nomem, nostack, preserves_flags)
                )
            };
            (u64::from(hi) << 32) | u64::from(lo)
        }

        /// See [`super::copy`]; `len` may be any size.
        ///
        /// # Safety
        ///
        /// As for [`super::copy`].
        pub(super) unsafe fn copy(src: *const u8, dst: *mut u8, len: usize) {
            if avx_usable() {
                // SAFETY: AVX is present and enabled (checked above), and
                // our caller's contract is `copy_avx`'s.
                unsafe { copy_avx(src, dst, len) }
            } else {
                // SAFETY: SSE2 is a baseline feature of this target (the
                // cfg above), and our caller's contract is `copy_sse2`'s.
                unsafe { copy_sse2(src, dst, len) }
            }
        }

        /// The copy in 32-byte vectors, destination-aligned.
        ///
        /// # Safety
        ///
        /// As for [`super::copy`], and the CPU must support AVX.
        #[target_feature(enable = "avx")]
        unsafe fn copy_avx(src: *const u8, dst: *mut u8, len: usize) {
            const V: usize = core::mem::size_of::<__m256i>();
            let head = dst.align_offset(V).min(len);
            // SAFETY: the first `head <= len` bytes of both valid ranges.
            unsafe { copy_nonoverlapping(src, dst, head) };
            let mut at = head;
            // Four vectors per turn: the loads issue ahead of the stores.
            while len - at >= 4 * V {
                let (s, d) = (src.wrapping_add(at), dst.wrapping_add(at));
                // SAFETY: `at + 4V <= len`, inside the readable source
                // range; AVX is present (our contract).
                let v = unsafe { load256x4(s) };
                for (k, v) in v.into_iter().enumerate() {
                    // SAFETY: inside the writable destination range, and
                    // 32-byte aligned (`head` aligned `dst + at`, and
                    // `at - head` is a multiple of 32).
                    unsafe { write_volatile(d.wrapping_add(k * V).cast::<__m256i>(), v) };
                }
                at += 4 * V;
            }
            while len - at >= V {
                let (s, d) = (src.wrapping_add(at), dst.wrapping_add(at));
                // SAFETY: `at + V <= len`, inside the readable source
                // range; AVX is present (our contract).
                let v = unsafe { load256(s) };
                // SAFETY: the vector lies inside the writable destination
                // range, and `d` is 32-byte aligned (`head` aligned it and
                // `at - head` is a multiple of 32).
                unsafe { write_volatile(d.cast::<__m256i>(), v) };
                at += V;
            }
            // SAFETY: the last `len - at` bytes of both valid ranges.
            unsafe { copy_nonoverlapping(src.wrapping_add(at), dst.wrapping_add(at), len - at) };
        }

        /// An unaligned 32-byte load.
        ///
        /// # Safety
        ///
        /// `p` must be valid for 32 bytes of reads; the CPU must have AVX.
        #[target_feature(enable = "avx")]
        #[inline]
        unsafe fn load256(p: *const u8) -> __m256i {
            // SAFETY: `p` is valid for 32 bytes (our contract); the
            // intrinsic accepts any alignment.
            unsafe { core::arch::x86_64::_mm256_loadu_si256(p.cast()) }
        }

        /// Four unaligned 32-byte loads from 128 bytes.
        ///
        /// # Safety
        ///
        /// `p` must be valid for 128 bytes of reads; the CPU must have AVX.
        #[target_feature(enable = "avx")]
        #[inline]
        unsafe fn load256x4(p: *const u8) -> [__m256i; 4] {
            // SAFETY: each 32-byte piece lies in the 128 valid bytes.
            core::array::from_fn(|k| unsafe { load256(p.wrapping_add(32 * k)) })
        }

        /// The copy in 16-byte vectors, destination-aligned.
        ///
        /// # Safety
        ///
        /// As for [`super::copy`].
        unsafe fn copy_sse2(src: *const u8, dst: *mut u8, len: usize) {
            const V: usize = core::mem::size_of::<__m128i>();
            let head = dst.align_offset(V).min(len);
            // SAFETY: the first `head <= len` bytes of both valid ranges.
            unsafe { copy_nonoverlapping(src, dst, head) };
            let mut at = head;
            while len - at >= V {
                let (s, d) = (src.wrapping_add(at), dst.wrapping_add(at));
                // SAFETY: `at + V <= len`, inside the readable source
                // range; SSE2's unaligned load accepts any alignment.
                let v = unsafe { core::arch::x86_64::_mm_loadu_si128(s.cast()) };
                // SAFETY: inside the writable destination range, and `d`
                // is 16-byte aligned (`head` aligned it).
                unsafe { write_volatile(d.cast::<__m128i>(), v) };
                at += V;
            }
            // SAFETY: the last `len - at` bytes of both valid ranges.
            unsafe { copy_nonoverlapping(src.wrapping_add(at), dst.wrapping_add(at), len - at) };
        }

        #[cfg(test)]
        mod tests {
            extern crate std;
            use std::vec::Vec;

            /// Every length up to a few vectors past the unrolled turn, at
            /// every source and destination offset within a cache line,
            /// through both loops; nothing outside the range is touched.
            #[test]
            fn vector_copies_match_a_byte_copy_at_every_alignment() {
                let src: Vec<u8> = (0..2048u32).map(|i| (i * 7 + 3) as u8).collect();
                let avx = super::avx_usable();
                for len in (0..300).chain([511, 512, 513, 1000, 1500]) {
                    for s_off in 0..64 {
                        for d_off in [0, 1, 7, 8, 15, 16, 31, 32, 33, 63] {
                            for pass in 0..2 {
                                if pass == 0 && !avx {
                                    continue;
                                }
                                let mut dst = std::vec![0xEEu8; 2048];
                                let (sp, dp) = (
                                    src.as_ptr().wrapping_add(s_off),
                                    dst.as_mut_ptr().wrapping_add(d_off),
                                );
                                let copy = if pass == 0 {
                                    super::copy_avx
                                } else {
                                    super::copy_sse2
                                };
                                // SAFETY: in-bounds (64 + 1500 < 2048), distinct
                                // buffers; AVX only when found usable.
                                unsafe { copy(sp, dp, len) };
                                let ok = dst[..d_off].iter().all(|&b| b == 0xEE)
                                    && dst[d_off..d_off + len] == src[s_off..s_off + len]
                                    && dst[d_off + len..].iter().all(|&b| b == 0xEE);
                                assert!(ok, "pass {pass} len {len} src+{s_off} dst+{d_off}");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The CPU's write-prefetch hint, where the architecture has one.
mod cpu {
    #[cfg(target_arch = "x86_64")]
    use core::sync::atomic::{AtomicU8, Ordering};

    /// 0: not asked yet, 1: PREFETCHW present, 2: absent.
    #[cfg(target_arch = "x86_64")]
    static PREFETCHW: AtomicU8 = AtomicU8::new(0);

    /// Whether the CPU has PREFETCHW (CPUID 8000_0001h, ECX bit 8). Asked
    /// once; a race only asks twice.
    #[cfg(target_arch = "x86_64")]
    fn has_prefetchw() -> bool {
        use core::arch::x86_64::__cpuid;
        match PREFETCHW.load(Ordering::Relaxed) {
            1 => return true,
            2 => return false,
            _ => {}
        }
        // CPUID is unprivileged and always present in 64-bit mode; it only
        // reports facts about the processor.
        let max_extended = __cpuid(0x8000_0000).eax;
        let present = max_extended >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0;
        PREFETCHW.store(if present { 1 } else { 2 }, Ordering::Relaxed);
        present
    }

    /// Asks for the cache line holding `ptr` in a writable state.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn prefetch_write(ptr: *const u8) {
        if has_prefetchw() {
            // PREFETCHW is present (checked above) and only a hint: no
            // stack, flags, registers or memory change.
            // SAFETY: it never faults; an unmapped address is ignored.
            unsafe {
                core::arch::asm!(
                    "prefetchw byte ptr [{line}]",
                    line = in(reg) ptr,
                    options(nostack, preserves_flags, readonly)
                )
            };
        }
    }

    /// Asks for the cache line holding `ptr` in a writable state.
    #[cfg(target_arch = "aarch64")]
    pub(super) fn prefetch_write(ptr: *const u8) {
        // SAFETY: PRFM is a hint in the base A64 instruction set: it never
        // faults, changes no register, memory, stack or flags.
        unsafe {
            core::arch::asm!(
                "prfm pstl1keep, [{line}]",
                line = in(reg) ptr,
                options(nostack, preserves_flags, readonly)
            )
        };
    }

    /// No hint on this architecture.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub(super) fn prefetch_write(_ptr: *const u8) {}
}

/// The cache-line size the prefetch policy assumes (x86-64 and most
/// AArch64 parts).
pub const CACHE_LINE: usize = 64;

/// How far ahead of its write position a producer prefetches: far enough
/// that the line's transfer from the consumer's cache finishes before the
/// producer reaches it at small-message rates, near enough to stay in L1.
pub const PREFETCH_AHEAD: usize = 1024;

/// A ring's data area inside a [`SharedMem`]: `size` bytes at `base`.
///
/// Positions passed in are already reduced modulo `size` by the protocol
/// code; copies that run past the end continue at the start. Both vchan and
/// VMBus move their payload bytes through this one type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrapRegion {
    base: usize,
    size: usize,
}

impl WrapRegion {
    /// A region of `size` bytes at `base`. `size` must be non-zero.
    pub const fn new(base: usize, size: usize) -> Self {
        WrapRegion { base, size }
    }

    /// First byte of the region within its memory.
    pub const fn base(&self) -> usize {
        self.base
    }

    /// Size of the region in bytes.
    pub const fn size(&self) -> usize {
        self.size
    }

    /// Splits an access of `len` bytes at `pos` into the part before the
    /// end of the region and the part that wraps to its start.
    fn split(&self, pos: usize, len: usize) -> Result<(usize, usize), MemError> {
        if pos >= self.size || len > self.size {
            return Err(MemError::OutOfBounds {
                offset: self.base.wrapping_add(pos),
                len,
                size: self.size,
            });
        }
        let first = len.min(self.size - pos);
        Ok((first, len - first))
    }

    /// Copies `dst.len()` bytes out of the region starting at `pos`, wrapping.
    pub fn read<M: SharedMem + ?Sized>(
        &self,
        mem: &M,
        pos: usize,
        dst: &mut [u8],
    ) -> Result<(), MemError> {
        let (first, _) = self.split(pos, dst.len())?;
        let (head, tail) = dst.split_at_mut(first);
        mem.read(self.base + pos, head)?;
        if !tail.is_empty() {
            mem.read(self.base, tail)?;
        }
        Ok(())
    }

    /// Copies `src` into the region starting at `pos`, wrapping.
    pub fn write<M: SharedMem + ?Sized>(
        &self,
        mem: &M,
        pos: usize,
        src: &[u8],
    ) -> Result<(), MemError> {
        let (first, _) = self.split(pos, src.len())?;
        let (head, tail) = src.split_at(first);
        mem.write(self.base + pos, head)?;
        if !tail.is_empty() {
            mem.write(self.base, tail)?;
        }
        Ok(())
    }

    /// Appends the spans (one, or two when it wraps) covering `len` bytes
    /// at `pos` to `out`, as offsets in the region's memory.
    ///
    /// # Errors
    ///
    /// [`MemError::OutOfBounds`] if the access does not fit the region or
    /// `out` has no room for the spans.
    pub fn push_spans(
        &self,
        pos: usize,
        len: usize,
        out: &mut crate::loan::SpanList,
    ) -> Result<(), MemError> {
        let (first, rest) = self.split(pos, len)?;
        let full = MemError::OutOfBounds {
            offset: self.base.wrapping_add(pos),
            len,
            size: self.size,
        };
        for span in [
            crate::loan::Span {
                offset: self.base + pos,
                len: first,
            },
            crate::loan::Span {
                offset: self.base,
                len: rest,
            },
        ] {
            if span.len > 0 {
                out.push(span).map_err(|_| full)?;
            }
        }
        Ok(())
    }

    /// Prefetches, for writing, the space a producer at `pos` fills next:
    /// the first whole cache line at or after `pos`, and the line
    /// [`PREFETCH_AHEAD`] bytes on. `free` is the space the consumer has
    /// released (by the producer's cached view); a line is only prefetched
    /// when it lies well inside it, so we never pull a line the consumer
    /// may still be reading. (The line holding `pos` itself may end with
    /// bytes just published: packets need not fill whole lines.)
    pub fn prefetch_for_producer<M: SharedMem + ?Sized>(&self, mem: &M, pos: usize, free: usize) {
        if pos >= self.size {
            return;
        }
        let at = self.base + pos;
        let gap = at.next_multiple_of(CACHE_LINE) - at;
        if free >= gap + 2 * CACHE_LINE {
            mem.prefetch_write(self.base + self.wrap(pos + gap));
        }
        if free >= 2 * PREFETCH_AHEAD {
            mem.prefetch_write(self.base + self.wrap(pos + PREFETCH_AHEAD));
        }
    }

    /// `pos` (less than twice the size) reduced into the region.
    fn wrap(&self, pos: usize) -> usize {
        if pos >= self.size {
            pos - self.size
        } else {
            pos
        }
    }

    /// Sets `len` bytes starting at `pos` to zero, wrapping.
    pub fn zero<M: SharedMem + ?Sized>(
        &self,
        mem: &M,
        pos: usize,
        len: usize,
    ) -> Result<(), MemError> {
        let (first, rest) = self.split(pos, len)?;
        mem.fill(self.base + pos, first, 0)?;
        if rest > 0 {
            mem.fill(self.base, rest, 0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec;

    fn words(n: usize) -> std::vec::Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn words_are_little_endian_in_memory() {
        let w = words(2);
        let m = RawMem::from_atomics(&w);
        m.store_u32(4, 0x0403_0201).unwrap();
        let mut b = [0u8; 4];
        m.read(4, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert_eq!(m.load_u32(4).unwrap(), 0x0403_0201);
    }

    #[test]
    fn every_access_is_bounds_checked() {
        let w = words(2);
        let m = RawMem::from_atomics(&w);
        assert_eq!(m.size(), 16);
        assert!(m.load_u32(12).is_ok());
        assert!(matches!(m.load_u32(9), Err(MemError::Misaligned { .. })));
        assert!(matches!(m.load_u32(13), Err(MemError::OutOfBounds { .. })));
        assert!(matches!(m.load_u32(16), Err(MemError::OutOfBounds { .. })));
        assert!(m.load_u8(16).is_err());
        assert!(m.read(8, &mut [0; 9]).is_err());
        assert!(m.write(usize::MAX, &[0; 2]).is_err());
        assert!(m.fill(1, 16, 0).is_err());
        assert!(m.fetch_or_u8(15, 1).is_ok());
        assert!(m.fetch_and_u8(16, 1).is_err());
    }

    /// The atomic copies of memory made of atomics, at every alignment and
    /// length around a word, against plain slice copies.
    #[test]
    fn atomic_copies_are_exact_at_every_alignment() {
        let w = words(8);
        let m = RawMem::from_atomics(&w);
        let src: std::vec::Vec<u8> = (1..=64).collect();
        for at in 0..17 {
            for len in 0..=(64 - at).min(33) {
                m.fill(0, 64, 0xEE).unwrap();
                m.write(at, &src[..len]).unwrap();
                let mut all = [0u8; 64];
                m.read(0, &mut all).unwrap();
                assert!(all[..at].iter().all(|&b| b == 0xEE), "{at} {len}");
                assert_eq!(&all[at..at + len], &src[..len], "{at} {len}");
                assert!(all[at + len..].iter().all(|&b| b == 0xEE), "{at} {len}");
                let mut part = std::vec![0u8; len];
                m.read(at, &mut part).unwrap();
                assert_eq!(&part[..], &src[..len]);
                m.fill(at, len, 7).unwrap();
                m.read(0, &mut all).unwrap();
                assert!(all[at..at + len].iter().all(|&b| b == 7));
                assert!(all[at + len..].iter().all(|&b| b == 0xEE));
            }
        }
    }

    #[test]
    fn rmw_bytes_return_old_values() {
        let w = words(1);
        let m = RawMem::from_atomics(&w);
        assert_eq!(m.fetch_or_u8(3, 0b01).unwrap(), 0);
        assert_eq!(m.fetch_or_u8(3, 0b10).unwrap(), 0b01);
        assert_eq!(m.fetch_and_u8(3, !0b01).unwrap(), 0b11);
        assert_eq!(m.load_u8(3).unwrap(), 0b10);
    }

    #[test]
    fn prefetch_is_a_hint_only() {
        let w = words(2);
        let m = RawMem::from_atomics(&w);
        m.write(0, &[7; 16]).unwrap();
        for offset in [0, 15, 16, usize::MAX] {
            m.prefetch_write(offset);
        }
        let mut all = [0u8; 16];
        m.read(0, &mut all).unwrap();
        assert_eq!(all, [7; 16]);
    }

    /// Records the offsets a producer prefetches.
    struct Prefetches<'a>(RawMem<'a>, core::cell::RefCell<vec::Vec<usize>>);

    impl SharedMem for Prefetches<'_> {
        fn size(&self) -> usize {
            self.0.size()
        }
        fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
            self.0.load_u32(offset)
        }
        fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
            self.0.store_u32(offset, value)
        }
        fn load_u8(&self, offset: usize) -> Result<u8, MemError> {
            self.0.load_u8(offset)
        }
        fn store_u8(&self, offset: usize, value: u8) -> Result<(), MemError> {
            self.0.store_u8(offset, value)
        }
        fn fetch_or_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
            self.0.fetch_or_u8(offset, bits)
        }
        fn fetch_and_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
            self.0.fetch_and_u8(offset, bits)
        }
        fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemError> {
            self.0.read(offset, dst)
        }
        fn write(&self, offset: usize, src: &[u8]) -> Result<(), MemError> {
            self.0.write(offset, src)
        }
        fn prefetch_write(&self, offset: usize) {
            self.1.borrow_mut().push(offset);
        }
    }

    #[test]
    fn producers_prefetch_only_released_space() {
        let w = words(1);
        let m = Prefetches(RawMem::from_atomics(&w), Default::default());
        let r = WrapRegion::new(4096, 4096);
        let seen = |pos, free| {
            m.1.borrow_mut().clear();
            r.prefetch_for_producer(&m, pos, free);
            m.1.borrow().clone()
        };
        // Plenty of room: the next line and the one PREFETCH_AHEAD on.
        assert_eq!(seen(64, 4096), [4096 + 64, 4096 + 64 + PREFETCH_AHEAD]);
        // Mid-line: the line holding pos may hold unread bytes; start at
        // the next whole line.
        assert_eq!(seen(88, 4096), [4096 + 128, 4096 + 88 + PREFETCH_AHEAD]);
        assert_eq!(seen(88, 40 + 2 * CACHE_LINE - 1), [] as [usize; 0]);
        assert_eq!(seen(88, 40 + 2 * CACHE_LINE), [4096 + 128]);
        assert_eq!(
            seen(4090, 4096),
            [4096, 4096 + 4090 + PREFETCH_AHEAD - 4096]
        );
        // The line ahead wraps to the region's start.
        assert_eq!(
            seen(4032, 4096),
            [4096 + 4032, 4096 + 4032 + PREFETCH_AHEAD - 4096]
        );
        // Too little released space for the line ahead, then for any.
        assert_eq!(seen(64, 2 * PREFETCH_AHEAD - 1), [4096 + 64]);
        assert_eq!(seen(64, 2 * CACHE_LINE - 1), [] as [usize; 0]);
        // A position outside the region is ignored.
        assert_eq!(seen(4096, 4096), [] as [usize; 0]);
    }

    #[test]
    fn wrap_region_splits_at_the_end() {
        let w = words(4);
        let m = RawMem::from_atomics(&w);
        let r = WrapRegion::new(8, 16);
        r.write(&m, 12, &[1, 2, 3, 4, 5, 6, 7]).unwrap();
        let mut all = [0u8; 32];
        m.read(0, &mut all).unwrap();
        assert_eq!(&all[20..24], &[1, 2, 3, 4]);
        assert_eq!(&all[8..11], &[5, 6, 7]);
        let mut back = vec![0u8; 7];
        r.read(&m, 12, &mut back).unwrap();
        assert_eq!(back, [1, 2, 3, 4, 5, 6, 7]);
        r.zero(&m, 14, 4).unwrap();
        r.read(&m, 12, &mut back).unwrap();
        assert_eq!(back, [1, 2, 0, 0, 0, 0, 7]);
        assert!(r.read(&m, 16, &mut [0]).is_err());
        assert!(r.write(&m, 0, &[0; 17]).is_err());
    }
}
