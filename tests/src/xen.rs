//! The real libxenvchan as a peer: bindings to the C harness in
//! `c/xen_peer.c`, memfd-backed shared memory, eventfd signals, and the
//! transfer loops both the interop tests and the child process run.

use core::ffi::{c_int, c_void};
use core::ptr::NonNull;
use ring_core::mem::{RawMem, SharedMem};
use ring_core::signal::Signal;
use ring_core::vchan::{Endpoint, Error};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

mod ffi {
    use core::ffi::{c_int, c_void};

    extern "C" {
        pub fn xp_server_open(
            memfd: c_int,
            left_order: c_int,
            right_order: c_int,
            initial_index: u32,
            wake_fd: c_int,
            kick_fd: c_int,
        ) -> *mut c_void;
        pub fn xp_client_open(memfd: c_int, wake_fd: c_int, kick_fd: c_int) -> *mut c_void;
        pub fn xp_set_blocking(ctrl: *mut c_void, on: c_int);
        pub fn xp_is_blocking(ctrl: *mut c_void) -> c_int;
        pub fn xp_set_server_persist(ctrl: *mut c_void, on: c_int);
        pub fn xp_set_wait_timeout_ms(ms: c_int);
        pub fn xp_kick(ctrl: *mut c_void) -> c_int;
        pub fn xp_read(ctrl: *mut c_void, buf: *mut c_void, n: usize) -> c_int;
        pub fn xp_write(ctrl: *mut c_void, buf: *const c_void, n: usize) -> c_int;
        pub fn xp_recv(ctrl: *mut c_void, buf: *mut c_void, n: usize) -> c_int;
        pub fn xp_send(ctrl: *mut c_void, buf: *const c_void, n: usize) -> c_int;
        pub fn xp_data_ready(ctrl: *mut c_void) -> c_int;
        pub fn xp_buffer_space(ctrl: *mut c_void) -> c_int;
        pub fn xp_is_open(ctrl: *mut c_void) -> c_int;
        pub fn xp_wait(ctrl: *mut c_void) -> c_int;
        pub fn xp_fd(ctrl: *mut c_void) -> c_int;
        pub fn xp_close(ctrl: *mut c_void);
        pub fn xp_layout(out: *mut usize, n: usize) -> usize;
        pub fn xp_lib_server_init(
            memfd: c_int,
            xs_path: *const core::ffi::c_char,
            left_min: usize,
            right_min: usize,
            wake_fd: c_int,
            kick_fd: c_int,
        ) -> *mut c_void;
        pub fn xp_lib_client_init(
            memfd: c_int,
            xs_path: *const core::ffi::c_char,
            wake_fd: c_int,
            kick_fd: c_int,
        ) -> *mut c_void;
        pub fn xp_xs_get(
            path: *const core::ffi::c_char,
            out: *mut core::ffi::c_char,
            n: usize,
        ) -> c_int;
        pub fn xp_xs_put(path: *const core::ffi::c_char, value: *const core::ffi::c_char) -> c_int;
    }
}

/// How long either side waits for one event before calling it a lost
/// wake-up (the C side's `xenevtchn_pending` stand-in uses the same).
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the stand-in xenstore holds at `path`, and how many permission
/// entries were set on it; `None` if nothing is there.
pub fn xenstore_entry(path: &str) -> Option<(String, u32)> {
    let path = std::ffi::CString::new(path).ok()?;
    let mut out = [0u8; 64];
    // SAFETY: `path` is NUL-terminated; `out` is valid for `out.len()`
    // bytes, which the harness never exceeds (it NUL-terminates within).
    let perms = unsafe { ffi::xp_xs_get(path.as_ptr(), out.as_mut_ptr().cast(), out.len()) };
    let perms = u32::try_from(perms).ok()?;
    let end = out.iter().position(|&b| b == 0).unwrap_or(out.len());
    Some((String::from_utf8_lossy(&out[..end]).into_owned(), perms))
}

/// Puts `value` at `path` in the stand-in xenstore.
pub fn xenstore_put(path: &str, value: &str) -> bool {
    let (Ok(path), Ok(value)) = (std::ffi::CString::new(path), std::ffi::CString::new(value))
    else {
        return false;
    };
    // SAFETY: both are NUL-terminated and outlive the call, which copies.
    unsafe { ffi::xp_xs_put(path.as_ptr(), value.as_ptr()) == 0 }
}

/// The grant ref the stand-ins give libxenvchan's control page (memfd page
/// 0; init.c's client refuses a ring-ref of 0).
pub const CTRL_REF: u32 = 0x10_0000;

/// The event-channel port the stand-ins report for every bind.
pub const PORT: u32 = 7;

/// Field offsets of `struct vchan_interface` as the C header lays it out:
/// left.cons, left.prod, right.cons, right.prod, left_order, right_order,
/// cli_live, srv_live, cli_notify, srv_notify, grants, header size.
pub fn c_layout() -> [usize; 12] {
    let mut out = [0usize; 12];
    // SAFETY: `out` is valid for writes of `out.len()` `usize`s, which is the
    // most `xp_layout` writes.
    let n = unsafe { ffi::xp_layout(out.as_mut_ptr(), out.len()) };
    assert_eq!(n, out.len(), "harness reported a different field count");
    out
}

/// A libxenvchan endpoint (a `struct libxenvchan` the harness set up),
/// driven through the real library's I/O functions. Return values are the
/// library's own: a byte count, 0 for "would block", −1 for error or
/// "peer closed".
#[derive(Debug)]
pub struct CPeer {
    ctrl: NonNull<c_void>,
}

// SAFETY: the handle is used by one thread at a time (all methods take
// `&mut self`); libxenvchan keeps no thread-local state, so moving the
// handle to another thread is fine.
unsafe impl Send for CPeer {}

impl CPeer {
    /// Sets up a libxenvchan server on `memfd` (laid out as ring-core's
    /// `FlatLayout` for these orders, and at least that large), initialising
    /// the control page as `libxenvchan_server_init` does, with all indices
    /// at `initial_index`. `wake` is the eventfd the C side waits on, `kick`
    /// the one it writes to wake us. Non-blocking until told otherwise.
    pub fn server(
        memfd: BorrowedFd<'_>,
        left_order: u8,
        right_order: u8,
        initial_index: u32,
        wake: BorrowedFd<'_>,
        kick: BorrowedFd<'_>,
    ) -> Option<CPeer> {
        // SAFETY: plain fds and integers; the harness dups the eventfds and
        // maps the memfd itself, so nothing borrowed outlives this call.
        let ctrl = unsafe {
            ffi::xp_server_open(
                memfd.as_raw_fd(),
                c_int::from(left_order),
                c_int::from(right_order),
                initial_index,
                wake.as_raw_fd(),
                kick.as_raw_fd(),
            )
        };
        NonNull::new(ctrl).map(|ctrl| CPeer { ctrl })
    }

    /// Connects a libxenvchan client to the server page in `memfd`, as
    /// `libxenvchan_client_init` does (validating the orders, mapping the
    /// rings from the grant list, marking itself live, kicking the server).
    /// `None` if the page is refused.
    pub fn client(
        memfd: BorrowedFd<'_>,
        wake: BorrowedFd<'_>,
        kick: BorrowedFd<'_>,
    ) -> Option<CPeer> {
        let (m, w, k) = (memfd.as_raw_fd(), wake.as_raw_fd(), kick.as_raw_fd());
        // SAFETY: as for `server`.
        let ctrl = unsafe { ffi::xp_client_open(m, w, k) };
        NonNull::new(ctrl).map(|ctrl| CPeer { ctrl })
    }

    /// A server set up by libxenvchan's own `libxenvchan_server_init`
    /// (init.o, linked as it is) for rings of at least `left_min` and
    /// `right_min` bytes, over the harness's stand-ins: its pages are taken
    /// from `memfd` (control page at 0, ring pages from 1 in the order it
    /// shares them), its xenstore entries go under `xs_path` in the
    /// stand-in table. `None` if the library refused.
    pub fn lib_server(
        memfd: BorrowedFd<'_>,
        xs_path: &str,
        left_min: usize,
        right_min: usize,
        wake: BorrowedFd<'_>,
        kick: BorrowedFd<'_>,
    ) -> Option<CPeer> {
        let path = std::ffi::CString::new(xs_path).ok()?;
        // SAFETY: plain fds, sizes and a NUL-terminated path that outlives
        // the call (libxenvchan copies it); the stand-ins dup the eventfds
        // and map the memfd themselves.
        let ctrl = unsafe {
            ffi::xp_lib_server_init(
                memfd.as_raw_fd(),
                path.as_ptr(),
                left_min,
                right_min,
                wake.as_raw_fd(),
                kick.as_raw_fd(),
            )
        };
        NonNull::new(ctrl).map(|ctrl| CPeer { ctrl })
    }

    /// A client set up by libxenvchan's own `libxenvchan_client_init`,
    /// finding the server through the stand-in xenstore under `xs_path`
    /// and its pages in `memfd`. `None` if the library refused.
    pub fn lib_client(
        memfd: BorrowedFd<'_>,
        xs_path: &str,
        wake: BorrowedFd<'_>,
        kick: BorrowedFd<'_>,
    ) -> Option<CPeer> {
        let path = std::ffi::CString::new(xs_path).ok()?;
        // SAFETY: as for `lib_server`.
        let ctrl = unsafe {
            ffi::xp_lib_client_init(
                memfd.as_raw_fd(),
                path.as_ptr(),
                wake.as_raw_fd(),
                kick.as_raw_fd(),
            )
        };
        NonNull::new(ctrl).map(|ctrl| CPeer { ctrl })
    }

    fn ptr(&mut self) -> *mut c_void {
        self.ctrl.as_ptr()
    }

    /// Sets the `blocking` bitfield (neither init function sets it).
    pub fn set_blocking(&mut self, on: bool) {
        let ctrl = self.ptr();
        // SAFETY: `ctrl` is a live handle from the harness.
        unsafe { ffi::xp_set_blocking(ctrl, c_int::from(on)) };
    }

    /// Sets the `server_persist` bitfield (server only): `is_open` stays 1
    /// after the client leaves, and a new client may connect.
    pub fn set_server_persist(&mut self, on: bool) {
        let ctrl = self.ptr();
        // SAFETY: `ctrl` is a live handle from the harness.
        unsafe { ffi::xp_set_server_persist(ctrl, c_int::from(on)) };
    }

    /// Reads the `blocking` bitfield back.
    pub fn is_blocking(&mut self) -> bool {
        let ctrl = self.ptr();
        // SAFETY: `ctrl` is a live handle from the harness.
        unsafe { ffi::xp_is_blocking(ctrl) != 0 }
    }

    /// One unconditional event to the peer.
    pub fn kick(&mut self) -> i32 {
        let ctrl = self.ptr();
        // SAFETY: `ctrl` is a live handle from the harness.
        unsafe { ffi::xp_kick(ctrl) }
    }

    /// `libxenvchan_read`.
    pub fn read(&mut self, buf: &mut [u8]) -> i32 {
        let ctrl = self.ptr();
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        unsafe { ffi::xp_read(ctrl, buf.as_mut_ptr().cast(), buf.len()) }
    }

    /// `libxenvchan_write`.
    pub fn write(&mut self, buf: &[u8]) -> i32 {
        let ctrl = self.ptr();
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
        unsafe { ffi::xp_write(ctrl, buf.as_ptr().cast(), buf.len()) }
    }

    /// `libxenvchan_recv`.
    pub fn recv(&mut self, buf: &mut [u8]) -> i32 {
        let ctrl = self.ptr();
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        unsafe { ffi::xp_recv(ctrl, buf.as_mut_ptr().cast(), buf.len()) }
    }

    /// `libxenvchan_send`.
    pub fn send(&mut self, buf: &[u8]) -> i32 {
        let ctrl = self.ptr();
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
        unsafe { ffi::xp_send(ctrl, buf.as_ptr().cast(), buf.len()) }
    }

    /// `libxenvchan_data_ready` (arms a WRITE request).
    pub fn data_ready(&mut self) -> i32 {
        let ctrl = self.ptr();
        // SAFETY: `ctrl` is a live handle from the harness.
        unsafe { ffi::xp_data_ready(ctrl) }
    }

    /// `libxenvchan_buffer_space` (arms a READ request).
    pub fn buffer_space(&mut self) -> i32 {
        let ctrl = self.ptr();
        // SAFETY: `ctrl` is a live handle from the harness.
        unsafe { ffi::xp_buffer_space(ctrl) }
    }

    /// `libxenvchan_is_open`: 0, 1, or 2 (server, no client yet).
    pub fn is_open(&mut self) -> i32 {
        let ctrl = self.ptr();
        // SAFETY: `ctrl` is a live handle from the harness.
        unsafe { ffi::xp_is_open(ctrl) }
    }

    /// `libxenvchan_wait`: blocks for one event (−1 after [`WAIT_TIMEOUT`]).
    pub fn wait(&mut self) -> i32 {
        let ctrl = self.ptr();
        // SAFETY: `ctrl` is a live handle from the harness.
        unsafe { ffi::xp_wait(ctrl) }
    }

    /// `libxenvchan_fd_for_select`.
    pub fn fd(&mut self) -> RawFd {
        let ctrl = self.ptr();
        // SAFETY: `ctrl` is a live handle from the harness.
        unsafe { ffi::xp_fd(ctrl) }
    }

    /// `libxenvchan_close`: marks us dead, unmaps, kicks the peer, frees.
    pub fn close(self) {
        // Drop does the work.
    }
}

impl Drop for CPeer {
    fn drop(&mut self) {
        let ctrl = self.ptr();
        // SAFETY: `ctrl` is live and is not used again: `libxenvchan_close`
        // frees it.
        unsafe { ffi::xp_close(ctrl) };
    }
}

/// Sets how long the C side's event wait gives up after (whole process).
pub fn set_c_wait_timeout(timeout: Duration) {
    let ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
    // SAFETY: stores an integer in the harness.
    unsafe { ffi::xp_set_wait_timeout_ms(ms) };
}

fn cvt(r: c_int) -> io::Result<c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A new eventfd (counter mode, blocking, close-on-exec).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: `eventfd` takes no pointers.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits up to `timeout` for `fd` to become readable.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
    loop {
        // SAFETY: `p` is one valid `pollfd`.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        match cvt(r) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Consumes an eventfd's counter if it is non-zero; returns the count
/// (0 if no event was pending). Never blocks.
pub fn take_events(fd: BorrowedFd<'_>) -> io::Result<u64> {
    if !poll_readable(fd, Duration::ZERO)? {
        return Ok(0);
    }
    let mut v = 0u64;
    // SAFETY: `v` is valid for writes of 8 bytes.
    let r = unsafe { libc::read(fd.as_raw_fd(), (&raw mut v).cast(), 8) };
    if r != 8 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// Adds one to an eventfd's counter.
pub fn kick_fd(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one = 1u64;
    // SAFETY: `one` is valid for reads of 8 bytes.
    let r = unsafe { libc::write(fd.as_raw_fd(), (&raw const one).cast(), 8) };
    if r != 8 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Our side of the event channel: `wait` blocks on our own eventfd,
/// `notify` writes the peer's.
#[derive(Debug)]
pub struct FdSignal {
    wake: OwnedFd,
    kick: OwnedFd,
}

impl FdSignal {
    /// A signal that waits on `wake` and kicks `kick` (both duplicated).
    pub fn new(wake: BorrowedFd<'_>, kick: BorrowedFd<'_>) -> io::Result<Self> {
        Ok(FdSignal {
            wake: wake.try_clone_to_owned()?,
            kick: kick.try_clone_to_owned()?,
        })
    }

    /// The eventfd we wait on.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
}

impl Signal for FdSignal {
    type Error = io::Error;

    fn notify(&self) -> io::Result<()> {
        kick_fd(self.kick.as_fd())
    }

    fn wait(&self) -> io::Result<()> {
        if !poll_readable(self.wake.as_fd(), WAIT_TIMEOUT)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no event from the peer: lost wake-up?",
            ));
        }
        take_events(self.wake.as_fd()).map(drop)
    }
}

/// Both sides' eventfds for one vchan.
#[derive(Debug)]
pub struct Wires {
    /// Ours: the C side kicks it, we wait on it.
    pub rust_wake: OwnedFd,
    /// The C side's: we kick it, it waits on it.
    pub c_wake: OwnedFd,
}

impl Wires {
    /// Two fresh eventfds.
    pub fn new() -> io::Result<Self> {
        Ok(Wires {
            rust_wake: eventfd()?,
            c_wake: eventfd()?,
        })
    }

    /// Our signal: wait on `rust_wake`, kick `c_wake`.
    pub fn rust_signal(&self) -> io::Result<FdSignal> {
        FdSignal::new(self.rust_wake.as_fd(), self.c_wake.as_fd())
    }
}

/// A memfd mapped shared into this process.
#[derive(Debug)]
pub struct Shm {
    fd: OwnedFd,
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory that this process only touches
// through `RawMem` (atomics and raw copies), from any thread.
unsafe impl Send for Shm {}
// SAFETY: as for `Send`: no access through `&Shm` forms references into
// the mapping.
unsafe impl Sync for Shm {}

impl Shm {
    /// A new zeroed memfd of `len` bytes, mapped.
    pub fn new(len: usize) -> io::Result<Self> {
        // SAFETY: the name is a NUL-terminated string literal.
        let fd = cvt(unsafe { libc::memfd_create(c"vchan-interop".as_ptr(), libc::MFD_CLOEXEC) })?;
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let size = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: `fd` is an open memfd.
        cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size) })?;
        Shm::map(fd, len)
    }

    /// Maps an existing memfd (e.g. inherited from a parent) whole.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let mut st = core::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `st` is valid for writes of one `stat`.
        cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
        // SAFETY: `fstat` succeeded, so it initialised `st`.
        let st = unsafe { st.assume_init() };
        let len = usize::try_from(st.st_size).map_err(|_| io::ErrorKind::InvalidData)?;
        Shm::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh shared mapping of an open fd at an address of the
        // kernel's choosing; it aliases no Rust object.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast()).ok_or(io::ErrorKind::Other)?;
        Ok(Shm { fd, base, len })
    }

    /// The memfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The mapping's first byte, for C code that takes a pointer (valid
    /// while `self` lives).
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length memory.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memory door over the whole mapping.
    pub fn mem(&self) -> RawMem<'_> {
        // The C side and other processes use their own mappings.
        // SAFETY: the mapping stays valid and writable while `self` is
        // borrowed (unmapped only in `Drop`); no Rust references into it.
        let mem = unsafe { RawMem::from_raw_parts(self.base.as_ptr(), self.len) };
        mem.expect("mmap returns page-aligned, non-null memory")
    }

    /// Copies `len` bytes at `offset` out of the mapping.
    pub fn snapshot(&self, offset: usize, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem()
            .read(offset, &mut v)
            .expect("snapshot within the mapping");
        v
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: `base..base+len` is our mapping; `RawMem`s borrowed from
        // `self` cannot outlive it.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Bytes from a seeded generator, addressable by stream position, so a
/// receiver can check every byte without the sender's buffer.
#[derive(Clone, Copy, Debug)]
pub struct Pattern {
    seed: u64,
}

impl Pattern {
    /// The stream for `seed`.
    pub const fn new(seed: u64) -> Self {
        Pattern { seed }
    }

    fn word(&self, n: u64) -> u64 {
        // splitmix64 of (seed, n)
        let mut z = self
            .seed
            .wrapping_add(n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The byte at stream position `pos`.
    pub fn byte(&self, pos: u64) -> u8 {
        (self.word(pos / 8) >> ((pos % 8) * 8)) as u8
    }

    /// Fills `buf` with the stream from `pos` on.
    pub fn fill(&self, pos: u64, buf: &mut [u8]) {
        let mut at = pos;
        let mut rest = buf;
        // Up to the next word boundary byte by byte, then whole words.
        while !at.is_multiple_of(8) {
            let Some((b, tail)) = rest.split_first_mut() else {
                return;
            };
            *b = self.byte(at);
            at += 1;
            rest = tail;
        }
        let mut words = rest.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.word(at / 8).to_le_bytes());
            at += 8;
        }
        for b in words.into_remainder() {
            *b = self.byte(at);
            at += 1;
        }
    }

    /// The stream's bytes `pos..pos+len`.
    pub fn bytes(&self, pos: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(pos, &mut v);
        v
    }

    /// Position of the first byte of `buf` that differs from the stream at
    /// `pos`, if any.
    pub fn mismatch(&self, pos: u64, buf: &[u8]) -> Option<u64> {
        let expected = self.bytes(pos, buf.len());
        if expected == buf {
            return None;
        }
        buf.iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .map(|i| pos + i as u64)
    }
}

/// FNV-1a, 64-bit: a checksum both ends compute over what they moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The checksum of `len` bytes of `pattern` from position 0.
    pub fn of_pattern(pattern: Pattern, len: u64) -> Fnv {
        let mut f = Fnv::default();
        let mut buf = vec![0u8; 64 * 1024];
        let mut pos = 0;
        while pos < len {
            let n = (len - pos).min(buf.len() as u64) as usize;
            pattern.fill(pos, &mut buf[..n]);
            f.update(&buf[..n]);
            pos += n as u64;
        }
        f
    }
}

/// Chunk sizes that wander between 1 and `max`, so copies start and end
/// at every offset of the ring.
#[derive(Clone, Debug)]
pub struct Chunks {
    state: u64,
    max: usize,
}

impl Chunks {
    /// Sizes in `1..=max` from `seed`.
    pub fn new(seed: u64, max: usize) -> Self {
        Chunks {
            state: seed | 1,
            max: max.max(1),
        }
    }

    /// The next size.
    pub fn next_len(&mut self) -> usize {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state % self.max as u64) as usize + 1
    }
}

/// What a duplex run moved and received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DuplexReport {
    /// Checksum of everything sent.
    pub sent: Fnv,
    /// Checksum of everything received.
    pub received: Fnv,
    /// Times this side slept waiting for the peer.
    pub waits: u64,
}

/// One side's job in a duplex run: send `send_len` bytes of `send` and
/// receive `recv_len` bytes that must equal `recv`, in chunks of at most
/// `chunk` bytes.
#[derive(Clone, Copy, Debug)]
pub struct Duplex {
    /// The stream this side sends.
    pub send: Pattern,
    /// Bytes to send.
    pub send_len: u64,
    /// The stream this side expects.
    pub recv: Pattern,
    /// Bytes to receive.
    pub recv_len: u64,
    /// Largest chunk per call.
    pub chunk: usize,
}

/// Runs a duplex job on the C side in non-blocking mode: stream writes and
/// reads as far as they go, and `libxenvchan_wait` when neither moved
/// (both calls have then armed their notify requests and re-checked).
pub fn c_duplex(peer: &mut CPeer, job: Duplex) -> Result<DuplexReport, String> {
    peer.set_blocking(false);
    let mut out = vec![0u8; job.chunk];
    let mut inb = vec![0u8; job.chunk];
    let (mut sent, mut got, mut waits) = (0u64, 0u64, 0u64);
    let (mut fs, mut fr) = (Fnv::default(), Fnv::default());
    let mut sizes = Chunks::new(job.send.seed ^ 0x5eed, job.chunk);
    while sent < job.send_len || got < job.recv_len {
        let mut moved = false;
        if sent < job.send_len {
            let n = (sizes.next_len() as u64).min(job.send_len - sent) as usize;
            job.send.fill(sent, &mut out[..n]);
            let r = peer.write(&out[..n]);
            if r < 0 {
                return Err(format!("C write failed at {sent}: {r}"));
            }
            let r = r as usize;
            fs.update(&out[..r]);
            sent += r as u64;
            moved |= r > 0;
        }
        if got < job.recv_len {
            let n = (sizes.next_len() as u64).min(job.recv_len - got) as usize;
            let r = peer.read(&mut inb[..n]);
            if r < 0 {
                return Err(format!("C read failed at {got}: {r}"));
            }
            let r = r as usize;
            if let Some(at) = job.recv.mismatch(got, &inb[..r]) {
                return Err(format!(
                    "C side received a wrong byte at stream position {at}"
                ));
            }
            fr.update(&inb[..r]);
            got += r as u64;
            moved |= r > 0;
        }
        if !moved {
            waits += 1;
            if peer.wait() != 0 {
                return Err(format!("C side: no event (sent {sent}, received {got})"));
            }
        }
    }
    Ok(DuplexReport {
        sent: fs,
        received: fr,
        waits,
    })
}

/// Runs a duplex job on our side: non-blocking endpoint calls, a kick
/// whenever a transfer says so, and a wait on the signal when both
/// directions would block (each `WouldBlock` has armed and re-checked).
pub fn rust_duplex<M: SharedMem>(
    ep: &mut Endpoint<M>,
    signal: &FdSignal,
    job: Duplex,
) -> Result<DuplexReport, String> {
    let mut out = vec![0u8; job.chunk];
    let mut inb = vec![0u8; job.chunk];
    let (mut sent, mut got, mut waits) = (0u64, 0u64, 0u64);
    let (mut fs, mut fr) = (Fnv::default(), Fnv::default());
    let mut sizes = Chunks::new(job.send.seed ^ 0x5eed, job.chunk);
    let kick = |notify: bool| -> Result<(), String> {
        if notify {
            signal.notify().map_err(|e| format!("kick failed: {e}"))?;
        }
        Ok(())
    };
    while sent < job.send_len || got < job.recv_len {
        let mut moved = false;
        if sent < job.send_len {
            let n = (sizes.next_len() as u64).min(job.send_len - sent) as usize;
            job.send.fill(sent, &mut out[..n]);
            match ep.write(&out[..n]) {
                Ok(t) => {
                    kick(t.notify)?;
                    fs.update(&out[..t.len]);
                    sent += t.len as u64;
                    moved |= t.len > 0;
                }
                Err(Error::WouldBlock) => {}
                Err(e) => return Err(format!("our write failed at {sent}: {e:?}")),
            }
        }
        if got < job.recv_len {
            let n = (sizes.next_len() as u64).min(job.recv_len - got) as usize;
            match ep.read(&mut inb[..n]) {
                Ok(t) if t.len == 0 => return Err(format!("unexpected EOF at {got}")),
                Ok(t) => {
                    kick(t.notify)?;
                    if let Some(at) = job.recv.mismatch(got, &inb[..t.len]) {
                        return Err(format!("we received a wrong byte at stream position {at}"));
                    }
                    fr.update(&inb[..t.len]);
                    got += t.len as u64;
                    moved = true;
                }
                Err(Error::WouldBlock) => {}
                Err(e) => return Err(format!("our read failed at {got}: {e:?}")),
            }
        }
        if !moved {
            waits += 1;
            signal
                .wait()
                .map_err(|e| format!("our side: {e} (sent {sent}, received {got})"))?;
        }
    }
    if let Some(c) = ep.poisoned() {
        return Err(format!("endpoint poisoned: {c}"));
    }
    Ok(DuplexReport {
        sent: fs,
        received: fr,
        waits,
    })
}

/// Parses an fd number handed to a child process on its command line.
///
/// # Safety
///
/// The number must name an open descriptor that nothing else in this
/// process owns.
pub unsafe fn fd_from_arg(arg: &str) -> io::Result<OwnedFd> {
    let raw: RawFd = arg
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "fd argument"))?;
    // SAFETY: the caller promises `raw` is open and unowned.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}
