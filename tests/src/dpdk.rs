//! DPDK's VMBus ring code (Debian `libdpdk-dev`, `librte_bus_vmbus.a`) as
//! a peer, through the harness `c/dpdk_peer.c`: the bindings, a ring in
//! test-owned memory, and a DPDK handle over it. Used by the interop tests
//! and the `rings` benchmark.

use core::ffi::c_void;
use core::sync::atomic::AtomicU64;
use ring_core::mem::{RawMem, SharedMem};
use ring_core::vmbus::layout::{READ_INDEX, WRITE_INDEX};
use ring_core::vmbus::{initialize_ring, RingLayout};

/// DPDK's `struct vmbus_br`, opaque here (the harness allocates it).
#[repr(C)]
pub struct VmbusBr {
    _opaque: [u8; 0],
}

/// One GPA entry of DPDK's scatter-gather send: one page per range.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Gpa {
    /// Bytes in the range.
    pub len: u32,
    /// Offset in the page.
    pub ofs: u32,
    /// Page number.
    pub page: u64,
}

/// DPDK's packet descriptor, as its receive function returns it.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct Desc {
    /// Packet type.
    pub ty: u16,
    /// Header length / 8.
    pub hlen8: u16,
    /// Total length / 8.
    pub tlen8: u16,
    /// Flags.
    pub flags: u16,
    /// Transaction id.
    pub xid: u64,
}

unsafe extern "C" {
    /// Sets the page size DPDK's ring code assumes (`rte_mem_page_size`).
    pub fn dpdk_set_page_size(size: usize);
    fn dpdk_ring_open(ring: *mut c_void, total_len: u32) -> *mut VmbusBr;
    fn dpdk_ring_close(br: *mut VmbusBr);
    fn dpdk_ring_data_size(br: *const VmbusBr) -> u32;
    fn dpdk_send(
        br: *mut VmbusBr,
        ty: u16,
        flags: u16,
        xid: u64,
        data: *const u8,
        len: u32,
        need_sig: *mut bool,
    ) -> i32;
    fn dpdk_send_sglist(
        br: *mut VmbusBr,
        xid: u64,
        sg: *const Gpa,
        n: u32,
        data: *const u8,
        len: u32,
        need_sig: *mut bool,
    ) -> i32;
    fn dpdk_recv_raw(br: *mut VmbusBr, buf: *mut u8, len: *mut u32) -> i32;
    fn dpdk_recv(br: *mut VmbusBr, desc: *mut Desc, buf: *mut u8, len: *mut u32) -> i32;
}

/// DPDK's "ring empty" / "ring full" return.
pub const EAGAIN: i32 = -11;

/// Ring memory owned by the test, handed to both sides.
pub struct Ring {
    words: Vec<AtomicU64>,
    /// The ring's layout.
    pub layout: RingLayout,
}

impl Ring {
    /// A ring of `data_size` data bytes with both indices at `start`.
    pub fn new(data_size: usize, start: u32) -> Ring {
        Ring::with_offset(4096, data_size, start)
    }

    /// A ring whose data starts at `data_offset` (a 64 KiB-page guest's
    /// layout when that is 65536).
    pub fn with_offset(data_offset: usize, data_size: usize, start: u32) -> Ring {
        let layout = RingLayout::new(data_offset, data_size).unwrap();
        let words = (0..layout.total_size() / 8)
            .map(|_| AtomicU64::new(0))
            .collect();
        let ring = Ring { words, layout };
        let mem = ring.mem();
        initialize_ring(&mem, layout).unwrap();
        mem.store_u32(WRITE_INDEX, start).unwrap();
        mem.store_u32(READ_INDEX, start).unwrap();
        ring
    }

    /// Our memory door over the ring.
    pub fn mem(&self) -> RawMem<'_> {
        RawMem::from_atomics(&self.words)
    }

    /// DPDK's view of this ring. The harness reads the current write index
    /// at set-up, so call it after any index preparation.
    pub fn dpdk(&self) -> Dpdk<'_> {
        let total = u32::try_from(self.layout.total_size()).unwrap();
        // SAFETY: the pointer covers `total` bytes of atomics that outlive
        // the returned handle (it borrows `self`); DPDK only stores it.
        let br = unsafe { dpdk_ring_open(self.words.as_ptr() as *mut c_void, total) };
        assert!(!br.is_null());
        Dpdk {
            br,
            _ring: core::marker::PhantomData,
        }
    }
}

/// A DPDK ring handle over a [`Ring`]'s memory.
pub struct Dpdk<'a> {
    br: *mut VmbusBr,
    _ring: core::marker::PhantomData<&'a Ring>,
}

// SAFETY: the handle is a heap struct plus a pointer to atomics; DPDK's
// functions touch the shared ring only with the accesses a cross-process
// peer would make, so using it from another thread is the intended use.
unsafe impl Send for Dpdk<'_> {}

impl<'a> Dpdk<'a> {
    /// A DPDK handle over a ring at `ring` (`total` bytes: control page and
    /// data), e.g. in a shared mapping another process also uses. The
    /// harness reads the ring's current write index at set-up.
    ///
    /// # Safety
    ///
    /// `ring..ring + total` must stay mapped, readable and writable for as
    /// long as the handle is used, and hold no Rust references.
    pub unsafe fn from_raw(ring: *mut u8, total: u32) -> Dpdk<'a> {
        // SAFETY: the caller keeps `total` bytes at `ring` mapped while the
        // handle lives; DPDK only stores the pointer.
        let br = unsafe { dpdk_ring_open(ring.cast(), total) };
        assert!(!br.is_null(), "DPDK ring set-up failed");
        Dpdk {
            br,
            _ring: core::marker::PhantomData,
        }
    }
}

impl Drop for Dpdk<'_> {
    fn drop(&mut self) {
        // SAFETY: `br` came from `dpdk_ring_open` and is freed once.
        unsafe { dpdk_ring_close(self.br) };
    }
}

impl Dpdk<'_> {
    /// DPDK's idea of the data size.
    pub fn data_size(&self) -> u32 {
        // SAFETY: `br` is a live handle.
        unsafe { dpdk_ring_data_size(self.br) }
    }

    /// Sends a packet; `Ok(need_sig)` or the negative errno.
    pub fn send(&mut self, ty: u16, flags: u16, xid: u64, data: &[u8]) -> Result<bool, i32> {
        let mut need_sig = false;
        let len = u32::try_from(data.len()).unwrap();
        // SAFETY: `data` is valid for `len` bytes, `need_sig` for a write.
        let r = unsafe { dpdk_send(self.br, ty, flags, xid, data.as_ptr(), len, &mut need_sig) };
        if r == 0 {
            Ok(need_sig)
        } else {
            Err(r)
        }
    }

    /// Sends a GPA-direct packet; `Ok(need_sig)` or the negative errno.
    pub fn send_sglist(&mut self, xid: u64, sg: &[Gpa], data: &[u8]) -> Result<bool, i32> {
        let mut need_sig = false;
        let n = u32::try_from(sg.len()).unwrap();
        let len = u32::try_from(data.len()).unwrap();
        // SAFETY: both slices are valid for their lengths.
        let r = unsafe {
            dpdk_send_sglist(
                self.br,
                xid,
                sg.as_ptr(),
                n,
                data.as_ptr(),
                len,
                &mut need_sig,
            )
        };
        if r == 0 {
            Ok(need_sig)
        } else {
            Err(r)
        }
    }

    /// Receives a whole packet (descriptor first, trailer skipped).
    pub fn recv_raw(&mut self) -> Result<Vec<u8>, i32> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut len = u32::try_from(buf.len()).unwrap();
        // SAFETY: `buf` is valid for `len` bytes, `len` for a write.
        let r = unsafe { dpdk_recv_raw(self.br, buf.as_mut_ptr(), &mut len) };
        if r != 0 {
            return Err(r);
        }
        buf.truncate(len as usize);
        Ok(buf)
    }

    /// Receives a packet's descriptor and (padded) payload into `buf`
    /// (which must hold the largest payload), returning the payload length.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<(Desc, usize), i32> {
        let mut desc = Desc::default();
        let mut len = u32::try_from(buf.len()).unwrap();
        // SAFETY: `buf` is valid for `len` bytes; `desc` and `len` for writes.
        let r = unsafe { dpdk_recv(self.br, &mut desc, buf.as_mut_ptr(), &mut len) };
        if r != 0 {
            return Err(r);
        }
        Ok((desc, len as usize))
    }
}

unsafe extern "C" {
    fn dpdk_read_signal(ctrl: *mut c_void, dsize: u32, bytes_read: u32) -> i32;
}

impl Ring {
    /// DPDK's own read-side decision (`rte_vmbus_chan_signal_read`) on this
    /// ring as it stands: whether, after a read of `bytes_read` bytes that
    /// left the read index where it is now, the writer must be signalled.
    pub fn dpdk_read_signal(&self, bytes_read: u32) -> bool {
        let dsize = self.layout.data_size();
        // SAFETY: the pointer is the control page of this ring (atomics
        // that outlive the call); DPDK only loads from it.
        unsafe { dpdk_read_signal(self.words.as_ptr() as *mut c_void, dsize, bytes_read) != 0 }
    }
}
