//! `libxenvchan.so.4.17`, a drop-in for Xen's libxenvchan built on
//! ring-core's vchan endpoint and ring-hosted's Xen backend.
//!
//! Every function of `libxenvchan.h` is here under its C name, at the
//! symbol version `VERS_4.17.0` that programs linked against Xen 4.17's
//! library ask for, in a library whose soname is `libxenvchan.so.4.17`.
//! `struct libxenvchan` keeps every public field at the header's offset
//! ([`abi`]); our own state lives behind it, in the same allocation.
//!
//! What the C functions do is libxenvchan's, call for call, with an honest
//! peer (see `docs/xenvchan.md` for the few deliberate differences). A
//! dishonest one gets what ring-core gives it: a page whose indices or
//! live bytes break the protocol makes the calls return -1 with `errno`
//! `EPROTO` and `libxenvchan_is_open` return 0, where Xen's library blocks
//! or spins for ever. No Rust panic crosses into C: one becomes -1 with
//! `EIO` (NULL from the init functions).
//!
//! With the environment variable `RING_XENVCHAN_DIR` set to a directory,
//! the same library needs no Xen: servers and clients meet through Unix
//! sockets there, over a memfd and eventfds ([`memfd`]).
//!
//! Handles are checked: a null pointer, or one this library did not hand
//! out (or already closed), is refused with `EINVAL`/`EBADF` instead of
//! being followed. Like libxenvchan, a handle is for one thread at a time.

#![allow(unsafe_code)]

pub mod abi;
mod conn;
pub mod memfd;
mod xen;

use abi::{libxenvchan, BLOCKING, IS_SERVER, SERVER_PERSIST};
use conn::{CResult, Conn};
use libc::{c_char, c_int, c_void, EBADF, EINVAL, EIO};
use ring_core::mem::SharedMem;
use ring_core::signal::Signal;
use ring_core::vchan::layout::{LEFT_CONS, RIGHT_CONS};
use ring_core::vchan::{Blocking, Role};
use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

/// One open vchan: the public struct first (its address is the handle),
/// then ours.
#[repr(C)]
struct Handle {
    public: libxenvchan,
    end: End,
    /// The server's path, which `public.xs_path` points into.
    xs_path: Option<CString>,
}

enum End {
    Xen(xen::XenEnd),
    Mem(memfd::MemBlocking),
}

/// The handles handed out and not yet closed, by address.
static HANDLES: Mutex<BTreeSet<usize>> = Mutex::new(BTreeSet::new());

fn handles() -> std::sync::MutexGuard<'static, BTreeSet<usize>> {
    HANDLES.lock().unwrap_or_else(|p| p.into_inner())
}

fn set_errno(e: c_int) {
    // SAFETY: a plain libc call with no preconditions.
    let slot = unsafe { libc::__errno_location() };
    // SAFETY: the slot is this thread's errno, valid for the thread's life.
    unsafe { *slot = e };
}

/// Runs `f`, turning an error into -1 with `errno` and a panic into -1
/// with `EIO`.
fn guard(f: impl FnOnce() -> CResult) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(errno)) => {
            set_errno(errno);
            -1
        }
        Err(_) => {
            set_errno(EIO);
            -1
        }
    }
}

/// The handle behind `ctrl`, if this library handed it out and it is
/// still open.
fn handle<'a>(ctrl: *mut libxenvchan) -> Result<&'a mut Handle, c_int> {
    if ctrl.is_null() {
        return Err(EINVAL);
    }
    if !handles().contains(&(ctrl as usize)) {
        return Err(EBADF);
    }
    // Registered addresses come from `Box::into_raw` of a live `Handle`
    // (whose first field is the public struct, so the addresses agree)
    // and leave the set before the box is freed; libxenvchan's contract
    // gives one thread at a time the handle.
    // SAFETY: registered, so a live `Handle`, and no other reference to it.
    let handle = unsafe { &mut *ctrl.cast::<Handle>() };
    Ok(handle)
}

/// Runs `op` on the connection behind `ctrl` with its `blocking` and
/// `server_persist` bits as the caller last set them.
fn with_conn(
    ctrl: *mut libxenvchan,
    op: impl FnOnce(&mut dyn Calls, bool, bool) -> CResult,
) -> c_int {
    guard(|| {
        let h = handle(ctrl)?;
        let flags = h.public.flags;
        let (blocking, persist) = (flags & BLOCKING != 0, flags & SERVER_PERSIST != 0);
        match &mut h.end {
            End::Xen(x) => op(&mut Conn::new(x.vchan.blocking_mut()), blocking, persist),
            End::Mem(m) => op(&mut Conn::new(m), blocking, persist),
        }
    })
}

/// The calls of [`Conn`], object-safe so one dispatch serves both ends.
trait Calls {
    fn is_open(&mut self, persist: bool) -> CResult;
    fn data_ready(&mut self) -> CResult;
    fn buffer_space(&mut self) -> CResult;
    fn wait(&mut self) -> CResult;
    fn read(&mut self, buf: &mut [u8], blocking: bool, persist: bool) -> CResult;
    fn recv(&mut self, buf: &mut [u8], blocking: bool, persist: bool) -> CResult;
    fn write(&mut self, buf: &[u8], blocking: bool, persist: bool) -> CResult;
    fn send(&mut self, buf: &[u8], blocking: bool, persist: bool) -> CResult;
}

impl<M: SharedMem, S: conn::Wake> Calls for Conn<'_, M, S> {
    fn is_open(&mut self, persist: bool) -> CResult {
        Conn::is_open(self, persist)
    }
    fn data_ready(&mut self) -> CResult {
        Conn::data_ready(self)
    }
    fn buffer_space(&mut self) -> CResult {
        Conn::buffer_space(self)
    }
    fn wait(&mut self) -> CResult {
        Conn::wait(self)
    }
    fn read(&mut self, buf: &mut [u8], blocking: bool, persist: bool) -> CResult {
        Conn::read(self, buf, blocking, persist)
    }
    fn recv(&mut self, buf: &mut [u8], blocking: bool, persist: bool) -> CResult {
        Conn::recv(self, buf, blocking, persist)
    }
    fn write(&mut self, buf: &[u8], blocking: bool, persist: bool) -> CResult {
        Conn::write(self, buf, blocking, persist)
    }
    fn send(&mut self, buf: &[u8], blocking: bool, persist: bool) -> CResult {
        Conn::send(self, buf, blocking, persist)
    }
}

/// Fills the public struct's pointers from the endpoint: the control
/// page, each ring's index pair and first byte, and the orders.
fn publish<M: SharedMem, S: Signal>(
    public: &mut libxenvchan,
    io: &mut Blocking<M, S>,
    base: impl Fn(&M) -> *mut u8,
) {
    let ep = io.endpoint();
    let page = base(ep.control());
    let orders = ep.orders();
    let server = ep.role() == Role::Server;
    // The server reads left (index pair at LEFT_CONS), the client right.
    let (read_pair, write_pair) = if server {
        (LEFT_CONS, RIGHT_CONS)
    } else {
        (RIGHT_CONS, LEFT_CONS)
    };
    let (read_order, write_order) = if server {
        (orders.left(), orders.right())
    } else {
        (orders.right(), orders.left())
    };
    let (rmem, roff) = ep.read_ring();
    let (wmem, woff) = ep.write_ring();
    public.ring = page.cast();
    public.read.shr = page.wrapping_add(read_pair).cast();
    public.read.buffer = base(rmem).wrapping_add(roff).cast();
    public.read.order = read_order.into();
    public.write.shr = page.wrapping_add(write_pair).cast();
    public.write.buffer = base(wmem).wrapping_add(woff).cast();
    public.write.order = write_order.into();
    if server {
        public.flags |= IS_SERVER;
    }
}

/// Boxes and registers a new handle.
fn register(end: End, xs_path: Option<CString>) -> *mut libxenvchan {
    let mut h = Box::new(Handle {
        public: libxenvchan::empty(),
        end,
        xs_path,
    });
    let Handle {
        public,
        end,
        xs_path,
    } = &mut *h;
    match end {
        End::Xen(x) => {
            public.event_port = x.vchan.port();
            publish(public, x.vchan.blocking_mut(), |m| m.as_ptr());
        }
        End::Mem(m) => publish(public, m, |m| m.as_ptr()),
    }
    if let Some(p) = xs_path {
        public.xs_path = p.as_ptr().cast_mut();
    }
    let ptr = Box::into_raw(h).cast::<libxenvchan>();
    handles().insert(ptr as usize);
    ptr
}

/// The path argument as a string.
fn path_arg(xs_path: *const c_char) -> Result<String, c_int> {
    if xs_path.is_null() {
        return Err(EINVAL);
    }
    // SAFETY: the caller passes a NUL-terminated string (the header's
    // contract for `xs_path`); we checked it is not null.
    let s = unsafe { CStr::from_ptr(xs_path) };
    s.to_str().map(str::to_owned).map_err(|_| EINVAL)
}

/// Runs an init, turning its error or panic into NULL with `errno`.
fn init(f: impl FnOnce() -> Result<*mut libxenvchan, c_int>) -> *mut libxenvchan {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            set_errno(e);
            std::ptr::null_mut()
        }
        Err(_) => {
            set_errno(EIO);
            std::ptr::null_mut()
        }
    }
}

/// `libxenvchan_server_init`: shares a control page and rings with
/// domain `domain` (read ring at least `read_min` bytes, write ring at
/// least `write_min`, each at most 1 MiB) and publishes them under
/// `xs_path`. The client need not exist yet: `is_open` says 2 until it
/// connects. NULL with `errno` on failure.
///
/// # Safety
///
/// `xs_path` is null or a NUL-terminated string; `logger` is ignored.
#[export_name = "ring_xenvchan_server_init"]
pub unsafe extern "C" fn server_init(
    logger: *mut c_void,
    domain: c_int,
    xs_path: *const c_char,
    read_min: usize,
    write_min: usize,
) -> *mut libxenvchan {
    let _ = logger;
    init(|| {
        let path = path_arg(xs_path)?;
        let end = match memfd::dir() {
            Some(dir) => End::Mem(memfd::serve(&dir, &path, read_min, write_min)?),
            None => {
                let peer = u16::try_from(domain).map_err(|_| EINVAL)?;
                End::Xen(xen::serve(peer, &path, read_min, write_min)?)
            }
        };
        let copy = CString::new(path).map_err(|_| EINVAL)?;
        Ok(register(end, Some(copy)))
    })
}

/// `libxenvchan_client_init`: connects to the server in domain `domain`
/// that published under `xs_path`, and kicks it once. Does not wait for
/// the server to appear (NULL with `ENOENT` if it has not yet).
///
/// # Safety
///
/// As [`server_init`].
#[export_name = "ring_xenvchan_client_init"]
pub unsafe extern "C" fn client_init(
    logger: *mut c_void,
    domain: c_int,
    xs_path: *const c_char,
) -> *mut libxenvchan {
    let _ = logger;
    init(|| {
        let path = path_arg(xs_path)?;
        let end = match memfd::dir() {
            Some(dir) => End::Mem(memfd::connect(&dir, &path)?),
            None => {
                let server = u16::try_from(domain).map_err(|_| EINVAL)?;
                End::Xen(xen::connect(server, &path)?)
            }
        };
        Ok(register(end, None))
    })
}

/// `libxenvchan_close`: clears our live byte, kicks the peer, unmaps and
/// frees; a server also removes its xenstore path. NULL is ignored; a
/// pointer this library did not hand out is left alone (`errno`
/// `EBADF`).
///
/// # Safety
///
/// `ctrl` is null or a handle from this library's init functions; it is
/// not used again.
#[export_name = "ring_xenvchan_close"]
pub unsafe extern "C" fn close(ctrl: *mut libxenvchan) {
    if ctrl.is_null() {
        return;
    }
    guard(|| {
        if !handles().remove(&(ctrl as usize)) {
            return Err(EBADF);
        }
        // SAFETY: the address was registered (so it came from
        // `Box::into_raw` of a `Handle`) and we just removed it, so this
        // is its only owner from here on.
        let mut h = unsafe { Box::from_raw(ctrl.cast::<Handle>()) };
        match &mut h.end {
            End::Xen(x) => {
                x.vchan
                    .close(x.store.as_mut())
                    .map_err(|e| xen::errno(&e))?;
            }
            End::Mem(m) => Conn::new(m).close()?,
        }
        Ok(0)
    });
}

/// A byte slice from C's pointer and size; empty for size 0 (any
/// pointer, as C accepts).
///
/// # Safety
///
/// `data` is valid for `size` bytes when `size > 0`.
unsafe fn slice<'a>(data: *const c_void, size: usize) -> Result<&'a [u8], c_int> {
    if size == 0 {
        return Ok(&[]);
    }
    if data.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller guarantees `size` readable bytes at `data`.
    Ok(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), size) })
}

/// As [`slice`], writable.
///
/// # Safety
///
/// `data` is valid for writes of `size` bytes when `size > 0`.
unsafe fn slice_mut<'a>(data: *mut c_void, size: usize) -> Result<&'a mut [u8], c_int> {
    if size == 0 {
        return Ok(&mut []);
    }
    if data.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller guarantees `size` writable bytes at `data`.
    Ok(unsafe { std::slice::from_raw_parts_mut(data.cast::<u8>(), size) })
}

/// `libxenvchan_recv`: exactly `size` bytes or none (see the docs page
/// for the return values).
///
/// # Safety
///
/// `ctrl` as for [`close`]; `data` valid for writes of `size` bytes.
#[export_name = "ring_xenvchan_recv"]
pub unsafe extern "C" fn recv(ctrl: *mut libxenvchan, data: *mut c_void, size: usize) -> c_int {
    with_conn(ctrl, |c, blocking, persist| {
        // SAFETY: the caller's contract.
        let buf = unsafe { slice_mut(data, size) }?;
        c.recv(buf, blocking, persist)
    })
}

/// `libxenvchan_read`: up to `size` bytes.
///
/// # Safety
///
/// As [`recv`].
#[export_name = "ring_xenvchan_read"]
pub unsafe extern "C" fn read(ctrl: *mut libxenvchan, data: *mut c_void, size: usize) -> c_int {
    with_conn(ctrl, |c, blocking, persist| {
        // SAFETY: the caller's contract.
        let buf = unsafe { slice_mut(data, size) }?;
        c.read(buf, blocking, persist)
    })
}

/// `libxenvchan_send`: all `size` bytes or none.
///
/// # Safety
///
/// `ctrl` as for [`close`]; `data` valid for `size` bytes.
#[export_name = "ring_xenvchan_send"]
pub unsafe extern "C" fn send(ctrl: *mut libxenvchan, data: *const c_void, size: usize) -> c_int {
    with_conn(ctrl, |c, blocking, persist| {
        // SAFETY: the caller's contract.
        let buf = unsafe { slice(data, size) }?;
        c.send(buf, blocking, persist)
    })
}

/// `libxenvchan_write`: as much as fits (not blocking) or all of it.
///
/// # Safety
///
/// As [`send`].
#[export_name = "ring_xenvchan_write"]
pub unsafe extern "C" fn write(ctrl: *mut libxenvchan, data: *const c_void, size: usize) -> c_int {
    with_conn(ctrl, |c, blocking, persist| {
        // SAFETY: the caller's contract.
        let buf = unsafe { slice(data, size) }?;
        c.write(buf, blocking, persist)
    })
}

/// `libxenvchan_wait`: blocks until an event arrives and acknowledges
/// it (call it whenever the fd of `fd_for_select` is readable).
///
/// # Safety
///
/// `ctrl` as for [`close`].
#[export_name = "ring_xenvchan_wait"]
pub unsafe extern "C" fn wait(ctrl: *mut libxenvchan) -> c_int {
    with_conn(ctrl, |c, _, _| c.wait())
}

/// `libxenvchan_fd_for_select`: an fd that is readable when `wait`
/// would not block.
///
/// # Safety
///
/// `ctrl` as for [`close`].
#[export_name = "ring_xenvchan_fd_for_select"]
pub unsafe extern "C" fn fd_for_select(ctrl: *mut libxenvchan) -> c_int {
    guard(|| {
        let h = handle(ctrl)?;
        Ok(match &mut h.end {
            End::Xen(x) => x.vchan.blocking_mut().signal().as_fd().as_raw_fd(),
            End::Mem(m) => m.signal().select_fd(),
        })
    })
}

/// `libxenvchan_is_open`: 1 open, 2 a server whose client has not come
/// yet, 0 closed — or the page found corrupt (then `errno` is `EPROTO`).
///
/// # Safety
///
/// `ctrl` as for [`close`].
#[export_name = "ring_xenvchan_is_open"]
pub unsafe extern "C" fn is_open(ctrl: *mut libxenvchan) -> c_int {
    match with_conn(ctrl, |c, _, persist| c.is_open(persist)) {
        -1 => 0,
        n => n,
    }
}

/// `libxenvchan_data_ready`: bytes readable now (and a wake-up asked for
/// when more come); -1 with `EPROTO` on a corrupt page.
///
/// # Safety
///
/// `ctrl` as for [`close`].
#[export_name = "ring_xenvchan_data_ready"]
pub unsafe extern "C" fn data_ready(ctrl: *mut libxenvchan) -> c_int {
    with_conn(ctrl, |c, _, _| c.data_ready())
}

/// `libxenvchan_buffer_space`: bytes writable now (and a wake-up asked
/// for when the peer reads); -1 with `EPROTO` on a corrupt page.
///
/// # Safety
///
/// `ctrl` as for [`close`].
#[export_name = "ring_xenvchan_buffer_space"]
pub unsafe extern "C" fn buffer_space(ctrl: *mut libxenvchan) -> c_int {
    with_conn(ctrl, |c, _, _| c.buffer_space())
}

// Each function under its C name at libxenvchan 4.17's symbol version
// (the version script, libxenvchan.map, defines the version node), the
// Rust-side name removed from the symbol table. The unit tests call the
// Rust-side names, so their build keeps them.
macro_rules! versioned {
    ($($name:literal),*) => {
        #[cfg(not(test))]
        std::arch::global_asm!($(concat!(
            ".symver ring_xenvchan_", $name, ", libxenvchan_", $name, "@@VERS_4.17.0, remove"
        )),*);
        #[cfg(test)]
        std::arch::global_asm!($(concat!(
            ".symver ring_xenvchan_", $name, ", libxenvchan_", $name, "@@VERS_4.17.0"
        )),*);
    };
}

versioned!(
    "server_init",
    "client_init",
    "close",
    "recv",
    "read",
    "send",
    "write",
    "wait",
    "fd_for_select",
    "is_open",
    "data_ready",
    "buffer_space"
);

#[cfg(test)]
mod tests {
    use super::*;

    fn errno() -> c_int {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn a_panic_becomes_minus_one_with_eio() {
        set_errno(0);
        let r = guard(|| panic!("a bug of ours"));
        assert_eq!((r, errno()), (-1, EIO));
        set_errno(0);
        let p = init(|| panic!("a bug of ours"));
        assert!(p.is_null());
        assert_eq!(errno(), EIO);
    }

    #[test]
    fn null_and_foreign_handles_are_refused_without_being_followed() {
        let mut fake = libxenvchan::empty();
        let foreign: *mut libxenvchan = &mut fake;
        let mut buf = [0u8; 8];
        for (ctrl, want) in [(std::ptr::null_mut(), EINVAL), (foreign, EBADF)] {
            let results = [
                // SAFETY: `ctrl` is checked before use; `buf` is valid.
                unsafe { read(ctrl, buf.as_mut_ptr().cast(), buf.len()) },
                // SAFETY: `ctrl` is checked before use; `buf` is valid.
                unsafe { recv(ctrl, buf.as_mut_ptr().cast(), buf.len()) },
                // SAFETY: `ctrl` is checked before use; `buf` is valid.
                unsafe { write(ctrl, buf.as_ptr().cast(), buf.len()) },
                // SAFETY: `ctrl` is checked before use; `buf` is valid.
                unsafe { send(ctrl, buf.as_ptr().cast(), buf.len()) },
                // SAFETY: `ctrl` is checked before use; `buf` is valid.
                unsafe { wait(ctrl) },
                // SAFETY: `ctrl` is checked before use; `buf` is valid.
                unsafe { fd_for_select(ctrl) },
                // SAFETY: `ctrl` is checked before use; `buf` is valid.
                unsafe { data_ready(ctrl) },
                // SAFETY: `ctrl` is checked before use; `buf` is valid.
                unsafe { buffer_space(ctrl) },
            ];
            assert_eq!(results, [-1; 8]);
            assert_eq!(errno(), want);
            // SAFETY: as above.
            assert_eq!(unsafe { is_open(ctrl) }, 0);
        }
        set_errno(0);
        // SAFETY: close ignores null.
        unsafe { close(std::ptr::null_mut()) };
        // SAFETY: close leaves a pointer it did not hand out alone.
        unsafe { close(foreign) };
        assert_eq!(errno(), EBADF);
        assert_eq!(fake.flags, 0, "the foreign struct was not touched");
    }

    #[test]
    fn init_refuses_a_null_path() {
        set_errno(0);
        // SAFETY: a null path is checked before use.
        let p = unsafe { client_init(std::ptr::null_mut(), 0, std::ptr::null()) };
        assert!(p.is_null());
        assert_eq!(errno(), EINVAL);
    }
}
