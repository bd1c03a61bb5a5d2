//! Problems in ring-core's vchan found while testing it against
//! libxenvchan, each pinned by a test that fails until it is fixed.
//!
//! The memory below is traced: every access ring code makes through the
//! memory door is logged, so a test can check the order of accesses the
//! protocol requires, which an x86 run alone cannot show.

use ring_core::mem::{MemError, RawMem, SharedMem};
use ring_core::vchan::layout::{GRANTS, PAGE_SIZE, RIGHT_PROD};
use ring_core::vchan::{self, Error, Orders, ServerOptions};
use ring_tests::xen::{CPeer, Shm, Wires};
use std::cell::RefCell;
use std::os::fd::AsFd;

/// Every test here waits on another thread or process: past this, the
/// run fails instead of hanging.
const TEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Load32(usize),
    Store32(usize),
    Load8(usize),
    Store8(usize),
    Or8(usize),
    And8(usize),
    Fence,
    Read(usize, usize),
    Write(usize, usize),
    Fill(usize, usize),
}

/// A memory door that logs each access before passing it on.
#[derive(Clone, Copy)]
struct Traced<'a> {
    inner: RawMem<'a>,
    log: &'a RefCell<Vec<Op>>,
}

impl Traced<'_> {
    fn note(&self, op: Op) {
        self.log.borrow_mut().push(op);
    }
}

impl SharedMem for Traced<'_> {
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
        self.note(Op::Load32(offset));
        self.inner.load_u32(offset)
    }
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        self.note(Op::Store32(offset));
        self.inner.store_u32(offset, value)
    }
    fn load_u8(&self, offset: usize) -> Result<u8, MemError> {
        self.note(Op::Load8(offset));
        self.inner.load_u8(offset)
    }
    fn store_u8(&self, offset: usize, value: u8) -> Result<(), MemError> {
        self.note(Op::Store8(offset));
        self.inner.store_u8(offset, value)
    }
    fn fetch_or_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        self.note(Op::Or8(offset));
        self.inner.fetch_or_u8(offset, bits)
    }
    fn fetch_and_u8(&self, offset: usize, bits: u8) -> Result<u8, MemError> {
        self.note(Op::And8(offset));
        self.inner.fetch_and_u8(offset, bits)
    }
    fn fence(&self) {
        self.note(Op::Fence);
        self.inner.fence();
    }
    fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemError> {
        self.note(Op::Read(offset, dst.len()));
        self.inner.read(offset, dst)
    }
    fn write(&self, offset: usize, src: &[u8]) -> Result<(), MemError> {
        self.note(Op::Write(offset, src.len()));
        self.inner.write(offset, src)
    }
    fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), MemError> {
        self.note(Op::Fill(offset, len));
        self.inner.fill(offset, len, byte)
    }
}

/// ring-core `connect` (ring-core/src/vchan/endpoint.rs) takes the
/// server's producer index for the client's read ring from a plain byte
/// copy of the header (`ctrl.read(0, ..)`, which carries no ordering) and
/// caches it. When the server wrote before the client connected (C's
/// server may: `is_open` is 2, which counts as open), the client's first
/// `read` is served from that cached index (`readable` skips the reload
/// when the cache already shows enough bytes) and copies the ring bytes
/// with no Acquire load of `prod` in between. The protocol needs
/// "read prod (Acquire), then copy data" (libxenvchan has `xen_rmb()`
/// there); on a weakly ordered CPU the copy may see bytes older than the
/// index. x86 (TSO) hides it, so the test checks the access order instead.
#[test]
fn client_loads_producer_with_acquire_before_its_first_read() {
    let _deadline = ring_tests::Deadline::new(
        "client_loads_producer_with_acquire_before_its_first_read",
        TEST_DEADLINE,
    );
    let orders = Orders::new(10, 11).unwrap();
    let shm = Shm::new(PAGE_SIZE).unwrap();
    let wires = Wires::new().unwrap();
    let mut c = CPeer::server(
        shm.fd(),
        orders.left(),
        orders.right(),
        0,
        wires.c_wake.as_fd(),
        wires.rust_wake.as_fd(),
    )
    .unwrap();
    let greeting = [0x42u8; 100];
    assert_eq!(c.write(&greeting), 100, "C server writes before connect");

    let log = RefCell::new(Vec::new());
    let mem = Traced {
        inner: shm.mem(),
        log: &log,
    };
    let mut client = vchan::connect_flat(mem).unwrap();
    let mut buf = [0u8; 100];
    let t = client.read(&mut buf).unwrap();
    assert_eq!((t.len, buf), (100, greeting), "the data itself arrives");

    let log = log.borrow();
    let header = log
        .iter()
        .position(|op| *op == Op::Read(0, GRANTS))
        .expect("connect copies the header");
    // The right ring (order 11) is in-page at byte 2048.
    let data = log
        .iter()
        .position(|op| matches!(op, Op::Read(at, _) if *at >= 2048))
        .expect("read copies ring bytes");
    assert!(
        log[header..data].contains(&Op::Load32(RIGHT_PROD)),
        "ring bytes copied with no Acquire load of the producer index since \
         the plain header copy: {:?}",
        &log[header..=data]
    );
}

/// `Endpoint::is_open` is documented as "true while the peer is connected
/// ... and we have not closed", so after our own `close` it should say
/// `false`; instead it returns `Err(Error::Closed)` (it goes through
/// `peer_live`, which starts with the `usable` check). A caller polling
/// `is_open` (and `Blocking`'s `read_ready`/`write_ready`, built on it) gets
/// an error where the docs promise an answer.
#[test]
fn is_open_after_our_own_close_is_false() {
    let _deadline =
        ring_tests::Deadline::new("is_open_after_our_own_close_is_false", TEST_DEADLINE);
    let words: Vec<_> = (0..512)
        .map(|_| core::sync::atomic::AtomicU64::new(0))
        .collect();
    let mem = RawMem::from_atomics(&words);
    let orders = Orders::new(10, 11).unwrap();
    let mut server = vchan::serve_flat(mem, orders, ServerOptions::default()).unwrap();
    let _client = vchan::connect_flat(mem).unwrap();
    assert_eq!(server.is_open(), Ok(true));
    let _ = server.close().unwrap();
    assert_eq!(server.read(&mut [0u8; 4]), Err(Error::Closed));
    assert_eq!(server.is_open(), Ok(false));
}
