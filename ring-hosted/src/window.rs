//! A window onto part of a shared memory, itself a [`SharedMem`].
//!
//! Lets several rings live in one memfd (one mapping, one fd to pass) while
//! each ring's code sees a memory that starts at 0 and cannot reach its
//! neighbour: every access is checked against the window before it is
//! shifted into the memory below.
//!
//! ```
//! use ring_core::mem::SharedMem;
//! use ring_hosted::memfd::MemFd;
//! use ring_hosted::window::Window;
//! use std::sync::Arc;
//!
//! let mem = Arc::new(MemFd::create("two-halves", 8192)?);
//! let high = Window::new(mem.clone(), 4096, 4096).ok_or("the window lies outside")?;
//! high.store_u32(0, 5)?;
//! assert_eq!(mem.load_u32(4096)?, 5);
//! assert!(high.load_u32(4096).is_err()); // past the window's end
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use ring_core::mem::{MemError, SharedMem};

/// `len` bytes of `mem` starting at `base`.
#[derive(Clone, Debug)]
pub struct Window<M> {
    mem: M,
    base: usize,
    len: usize,
}

impl<M: SharedMem> Window<M> {
    /// The window `[base, base + len)` of `mem`, or `None` if that range
    /// does not lie inside `mem` or `base` is not 8-aligned (the words
    /// inside must stay as aligned as in the memory).
    ///
    /// # Examples
    ///
    /// Two rings' worth of memory in one memfd, each window starting at its own
    /// 0; a window that would stick out of the memory, or start off the 8-byte
    /// grid, is refused:
    ///
    /// ```
    /// use ring_core::mem::SharedMem;
    /// use ring_hosted::memfd::MemFd;
    /// use ring_hosted::window::Window;
    /// use std::sync::Arc;
    ///
    /// let mem = Arc::new(MemFd::create("doc-window", 16384)?);
    /// let first = Window::new(mem.clone(), 0, 8192).ok_or("first window")?;
    /// let second = Window::new(mem.clone(), 8192, 8192).ok_or("second window")?;
    /// second.store_u32(0, 9)?;
    /// assert_eq!(mem.load_u32(8192)?, 9);
    /// assert_eq!(first.load_u32(0)?, 0);
    /// assert_eq!(second.size(), 8192);
    /// assert!(Window::new(mem.clone(), 12288, 8192).is_none()); // past the end
    /// assert!(Window::new(mem, 4, 64).is_none()); // misaligned
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(mem: M, base: usize, len: usize) -> Option<Self> {
        let end = base.checked_add(len)?;
        if end > mem.size() || !base.is_multiple_of(8) {
            return None;
        }
        Some(Window { mem, base, len })
    }

    /// First byte of the window in the memory below.
    pub fn base(&self) -> usize {
        self.base
    }

    /// The memory below.
    pub fn inner(&self) -> &M {
        &self.mem
    }

    /// `offset` shifted into the memory below, after checking that
    /// `offset + n` stays inside the window.
    ///
    /// # Errors
    ///
    /// [`MemError::OutOfBounds`] past the window's end.
    pub fn translate(&self, offset: usize, n: usize) -> Result<usize, MemError> {
        match offset.checked_add(n) {
            Some(end) if end <= self.len => Ok(self.base + offset),
            _ => Err(MemError::OutOfBounds {
                offset,
                len: n,
                size: self.len,
            }),
        }
    }
}

impl<M: SharedMem> SharedMem for Window<M> {
    fn size(&self) -> usize {
        self.len
    }
    fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
        self.mem.load_u32(self.translate(offset, 4)?)
    }
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        self.mem.store_u32(self.translate(offset, 4)?, value)
    }
    fn load_u8(&self, offset: usize) -> Result<u8, MemError> {
        self.mem.load_u8(self.translate(offset, 1)?)
    }
    fn store_u8(&self, offset: usize, value: u8) -> Result<(), MemError> {
        self.mem.store_u8(self.translate(offset, 1)?, value)
    }
    fn fetch_or_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        self.mem.fetch_or_u8(self.translate(offset, 1)?, bits)
    }
    fn fetch_and_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        self.mem.fetch_and_u8(self.translate(offset, 1)?, bits)
    }
    fn fence(&self) {
        self.mem.fence()
    }
    fn prefetch_write(&self, offset: usize) {
        if let Ok(at) = self.translate(offset, 1) {
            self.mem.prefetch_write(at);
        }
    }
    fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemError> {
        self.mem.read(self.translate(offset, dst.len())?, dst)
    }
    fn write(&self, offset: usize, src: &[u8]) -> Result<(), MemError> {
        self.mem.write(self.translate(offset, src.len())?, src)
    }
    fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), MemError> {
        self.mem.fill(self.translate(offset, len)?, len, byte)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memfd::MemFd;
    use std::sync::Arc;

    #[test]
    fn windows_are_fenced_off_from_each_other() {
        let mem = Arc::new(MemFd::create("w", 8192).unwrap());
        let low = Window::new(mem.clone(), 0, 4096).unwrap();
        let high = Window::new(mem.clone(), 4096, 4096).unwrap();
        low.write(4092, &[1, 2, 3, 4]).unwrap();
        assert!(low.write(4093, &[1, 2, 3, 4]).is_err());
        assert!(low.fill(4000, 97, 0).is_err());
        assert!(low.load_u32(4096).is_err());
        assert!(high.read(usize::MAX, &mut [0]).is_err());
        assert_eq!(high.load_u8(0).unwrap(), 0);
        high.fetch_or_u8(0, 3).unwrap();
        assert_eq!(mem.load_u8(4096).unwrap(), 3);
        assert_eq!(low.load_u32(4092).unwrap(), 0x0403_0201);
        assert_eq!(high.size(), 4096);
    }

    #[test]
    fn windows_must_fit_and_stay_aligned() {
        let mem = Arc::new(MemFd::create("w", 8192).unwrap());
        assert!(Window::new(mem.clone(), 4096, 4097).is_none());
        assert!(Window::new(mem.clone(), usize::MAX, 2).is_none());
        assert!(Window::new(mem.clone(), 4, 8).is_none());
        assert!(Window::new(mem, 8192, 0).is_some());
    }
}
