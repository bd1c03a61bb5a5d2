//! Test memory that lets the peer move at one exact access of ours: the
//! instant a wake-up request lands (a notify bit set, an interrupt mask
//! cleared), just before it does. The peer cannot have seen the request,
//! so it sends no signal, and only the re-check after it can find what the
//! peer did. Both protocols' tests use it.

extern crate std;

use crate::mem::{MemError, RawMem, SharedMem};
use core::cell::RefCell;
use std::boxed::Box;
use std::rc::Rc;

/// The access the peer moves at.
#[derive(Clone, Copy, Debug)]
pub(crate) enum At {
    /// Our first `fetch_or_u8` (vchan sets a notify bit).
    FetchOr,
    /// Our first store of `value` at `offset` (VMBus clears its mask).
    Store { offset: usize, value: u32 },
}

/// What the peer does, once; taken when it runs.
pub(crate) type Peer<'a> = Rc<RefCell<Option<Box<dyn FnMut() + 'a>>>>;

/// `mem`, with `peer` run once just before the access `at`.
#[derive(Clone)]
pub(crate) struct Race<'a> {
    pub(crate) mem: RawMem<'a>,
    pub(crate) at: At,
    pub(crate) peer: Peer<'a>,
}

impl Race<'_> {
    fn moment(&self) {
        let peer = self.peer.borrow_mut().take();
        if let Some(mut peer) = peer {
            peer();
        }
    }
}

impl SharedMem for Race<'_> {
    fn size(&self) -> usize {
        self.mem.size()
    }
    fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
        self.mem.load_u32(offset)
    }
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        if let At::Store {
            offset: o,
            value: v,
        } = self.at
        {
            if (o, v) == (offset, value) {
                self.moment();
            }
        }
        self.mem.store_u32(offset, value)
    }
    fn load_u8(&self, offset: usize) -> Result<u8, MemError> {
        self.mem.load_u8(offset)
    }
    fn store_u8(&self, offset: usize, value: u8) -> Result<(), MemError> {
        self.mem.store_u8(offset, value)
    }
    fn fetch_or_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        if let At::FetchOr = self.at {
            self.moment();
        }
        self.mem.fetch_or_u8(offset, bits)
    }
    fn fetch_and_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        self.mem.fetch_and_u8(offset, bits)
    }
    fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemError> {
        self.mem.read(offset, dst)
    }
    fn write(&self, offset: usize, src: &[u8]) -> Result<(), MemError> {
        self.mem.write(offset, src)
    }
}
