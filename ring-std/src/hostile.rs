//! A memory that plays a hostile peer, for tests and fuzzing.
//!
//! [`HostileMem`] wraps a real memory and, before every access the ring
//! code makes, may overwrite a word of the region the test chose: exactly
//! what a peer on another CPU can do between any two of our loads. The
//! script is deterministic, so a fuzzer's input or a proptest case replays
//! the same interleaving every time.

use ring_core::mem::{MemError, SharedMem};
use std::sync::{Mutex, PoisonError};

/// One scripted scribble: after `after` more accesses, store `value` as a
/// little-endian `u32` at `offset` (rounded down to 4 and wrapped into the
/// attacked window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scribble {
    /// Accesses to let through before this scribble lands.
    pub after: u32,
    /// Where, relative to the attacked window.
    pub offset: u32,
    /// What to store.
    pub value: u32,
}

#[derive(Debug)]
struct Script {
    steps: Vec<Scribble>,
    next: usize,
    countdown: u32,
    landed: u64,
}

/// A [`SharedMem`] that lets a scripted peer scribble on a window of the
/// region between our accesses.
#[derive(Debug)]
pub struct HostileMem<M> {
    inner: M,
    window: (usize, usize),
    script: Mutex<Script>,
}

impl<M: SharedMem> HostileMem<M> {
    /// Attacks `len` bytes at `start` of `inner` with `steps`, in order.
    pub fn new(inner: M, start: usize, len: usize, steps: Vec<Scribble>) -> Self {
        let countdown = steps.first().map_or(0, |s| s.after);
        HostileMem {
            inner,
            window: (start, len.max(4)),
            script: Mutex::new(Script {
                steps,
                next: 0,
                countdown,
                landed: 0,
            }),
        }
    }

    /// How many scribbles have landed so far.
    pub fn landed(&self) -> u64 {
        self.script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .landed
    }

    /// The memory underneath, for the honest side's own use.
    pub fn inner(&self) -> &M {
        &self.inner
    }

    fn tick(&self) {
        let mut s = self.script.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(step) = s.steps.get(s.next).copied() {
            if s.countdown > 0 {
                s.countdown -= 1;
                return;
            }
            let (start, len) = self.window;
            let at = start + (step.offset as usize % len) / 4 * 4;
            // The attacked window always lies inside the region; a store
            // that does not fit is simply dropped.
            let _ = self.inner.store_u32(at, step.value);
            s.landed += 1;
            s.next += 1;
            s.countdown = s.steps.get(s.next).map_or(0, |n| n.after);
        }
    }
}

impl<M: SharedMem> SharedMem for HostileMem<M> {
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
        self.tick();
        self.inner.load_u32(offset)
    }
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        self.tick();
        self.inner.store_u32(offset, value)
    }
    fn load_u8(&self, offset: usize) -> Result<u8, MemError> {
        self.tick();
        self.inner.load_u8(offset)
    }
    fn store_u8(&self, offset: usize, value: u8) -> Result<(), MemError> {
        self.tick();
        self.inner.store_u8(offset, value)
    }
    fn fetch_or_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        self.tick();
        self.inner.fetch_or_u8(offset, bits)
    }
    fn fetch_and_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        self.tick();
        self.inner.fetch_and_u8(offset, bits)
    }
    fn fence(&self) {
        self.inner.fence();
    }
    fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemError> {
        self.tick();
        self.inner.read(offset, dst)
    }
    fn write(&self, offset: usize, src: &[u8]) -> Result<(), MemError> {
        self.tick();
        self.inner.write(offset, src)
    }
    fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), MemError> {
        self.tick();
        self.inner.fill(offset, len, byte)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HeapMem;

    #[test]
    fn scribbles_land_between_accesses_in_order() {
        let mem = HeapMem::new(4096);
        let steps = vec![
            Scribble {
                after: 1,
                offset: 8,
                value: 7,
            },
            Scribble {
                after: 0,
                offset: 4097,
                value: 9,
            },
        ];
        let h = HostileMem::new(&mem, 0, 16, steps);
        assert_eq!(h.load_u32(8).unwrap(), 0); // first access passes
        assert_eq!(h.landed(), 0);
        assert_eq!(h.load_u32(8).unwrap(), 7); // then both land
        assert_eq!(h.landed(), 2);
        // 4097 % 16 = 1, rounded down to word 0.
        assert_eq!(mem.load_u32(0).unwrap(), 9);
    }
}
