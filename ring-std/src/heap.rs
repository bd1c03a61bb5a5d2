//! Page-aligned shared memory on the heap, for in-process pairs.

use core::sync::atomic::AtomicU64;
use ring_core::mem::{MemError, RawMem, SharedMem};

const PAGE: usize = 4096;
const WORDS_PER_PAGE: usize = PAGE / 8;

/// Zeroed, 4 KiB-aligned memory that both ends of an in-process ring share
/// (usually through an `Arc`).
///
/// Built from atomics, so no `unsafe` is needed: the vector is allocated
/// one page larger than asked and the aligned window inside it is used.
///
/// # Examples
///
/// One VMBus ring, its writer on another thread:
///
/// ```
/// use ring_core::vmbus::{initialize_ring, IncomingRing, OutgoingPacket, OutgoingRing, RingLayout};
/// use ring_std::HeapMem;
/// use std::sync::Arc;
///
/// let layout = RingLayout::new(4096, 8192)?;
/// let mem = Arc::new(HeapMem::new(layout.total_size()));
/// initialize_ring(&mem, layout)?;
/// let mut tx = OutgoingRing::new(mem.clone(), layout)?;
/// let mut rx = IncomingRing::new(mem, layout)?;
/// let sender = std::thread::spawn(move || tx.send(&OutgoingPacket::in_band(3, &[b"hi"])));
/// let _ = sender.join().expect("sender panicked")?;
/// assert_eq!(rx.read_packet()?.transaction_id(), 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct HeapMem {
    words: Vec<AtomicU64>,
    start: usize,
    size: usize,
}

impl std::fmt::Debug for HeapMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeapMem").field("size", &self.size).finish()
    }
}

impl HeapMem {
    /// At least `size` bytes of zeroed memory, rounded up to whole pages.
    ///
    /// # Examples
    ///
    /// ```
    /// use ring_core::mem::{MemError, SharedMem};
    /// use ring_std::HeapMem;
    ///
    /// let mem = HeapMem::new(5000);
    /// assert_eq!(mem.size(), 8192); // two whole pages
    /// assert_eq!(mem.load_u32(4096)?, 0); // zeroed
    /// mem.store_u32(4096, 0xfeed)?;
    /// assert_eq!(mem.load_u32(4096)?, 0xfeed);
    /// assert!(mem.load_u32(8192).is_err()); // bounds-checked like any door
    /// # Ok::<(), MemError>(())
    /// ```
    pub fn new(size: usize) -> Self {
        let pages = size.div_ceil(PAGE).max(1);
        let words: Vec<AtomicU64> = (0..(pages + 1) * WORDS_PER_PAGE)
            .map(|_| AtomicU64::new(0))
            .collect();
        let start = words.as_ptr().align_offset(PAGE).min(WORDS_PER_PAGE);
        HeapMem {
            words,
            start,
            size: pages * PAGE,
        }
    }

    /// The memory as a [`RawMem`] view.
    ///
    /// # Examples
    ///
    /// A view is `Copy`: both ends of a vchan can share it without an
    /// `Arc`, as long as the `HeapMem` outlives them.
    ///
    /// ```
    /// use ring_core::vchan::{self, Orders, ServerOptions};
    /// use ring_std::HeapMem;
    ///
    /// let mem = HeapMem::new(4096);
    /// let orders = Orders::new(10, 11)?;
    /// let mut server = vchan::serve_flat(mem.view(), orders, ServerOptions::default())?;
    /// let mut client = vchan::connect_flat(mem.view())?;
    /// let _ = client.write(b"hi")?;
    /// let mut buf = [0u8; 2];
    /// let _ = server.read(&mut buf)?;
    /// assert_eq!(&buf, b"hi");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn view(&self) -> RawMem<'_> {
        let words = self
            .words
            .get(self.start..self.start + self.size / 8)
            .unwrap_or(&[]);
        RawMem::from_atomics(words)
    }
}

impl SharedMem for HeapMem {
    fn size(&self) -> usize {
        self.size
    }
    fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
        self.view().load_u32(offset)
    }
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        self.view().store_u32(offset, value)
    }
    fn load_u8(&self, offset: usize) -> Result<u8, MemError> {
        self.view().load_u8(offset)
    }
    fn store_u8(&self, offset: usize, value: u8) -> Result<(), MemError> {
        self.view().store_u8(offset, value)
    }
    fn fetch_or_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        self.view().fetch_or_u8(offset, bits)
    }
    fn fetch_and_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        self.view().fetch_and_u8(offset, bits)
    }
    fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemError> {
        self.view().read(offset, dst)
    }
    fn write(&self, offset: usize, src: &[u8]) -> Result<(), MemError> {
        self.view().write(offset, src)
    }
    fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), MemError> {
        self.view().fill(offset, len, byte)
    }
    fn prefetch_write(&self, offset: usize) {
        self.view().prefetch_write(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two threads of a safe program copying into the same bytes at once:
    /// every access is atomic (ThreadSanitizer, which scripts/sanitize runs
    /// this under, reports none), and each byte ends up one writer's.
    #[test]
    fn threads_may_write_the_same_bytes_at_once() {
        let mem = HeapMem::new(4096);
        std::thread::scope(|s| {
            for b in [0xAAu8, 0x55] {
                let mem = &mem;
                s.spawn(move || {
                    for round in 0..2000usize {
                        let at = 56 + round % 9;
                        mem.write(at, &[b; 8]).unwrap();
                        mem.write(at, &[b; 700]).unwrap();
                        mem.fill(at + 3, 100, b).unwrap();
                        let mut back = [0u8; 64];
                        mem.read(at, &mut back).unwrap();
                        assert!(back.iter().all(|&x| x == 0xAA || x == 0x55));
                    }
                });
            }
        });
    }

    #[test]
    fn pages_are_aligned_zeroed_and_rounded_up() {
        for size in [0, 1, 4096, 4097, 3 * 4096] {
            let m = HeapMem::new(size);
            assert!(m.size() >= size.max(1));
            assert_eq!(m.size() % PAGE, 0);
            let v = m.view();
            let mut probe = vec![0xffu8; m.size()];
            v.read(0, &mut probe).unwrap();
            assert!(probe.iter().all(|&b| b == 0));
            // The view starts on a page boundary.
            let base = &m.words[m.start] as *const AtomicU64 as usize;
            assert_eq!(base % PAGE, 0);
        }
    }
}
