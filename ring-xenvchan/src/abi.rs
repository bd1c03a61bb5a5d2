//! The public part of `struct libxenvchan`, laid out as Xen 4.17's
//! `libxenvchan.h` declares it (checked against Debian's header by the
//! `layout` test), and the handle that keeps our state behind it.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_uint, c_void};

/// `struct libxenvchan_ring`: one ring as the header describes it.
#[repr(C)]
#[derive(Debug)]
pub struct libxenvchan_ring {
    /// The ring's `{cons, prod}` pair in the shared control page.
    pub shr: *mut c_void,
    /// The ring's first data byte.
    pub buffer: *mut c_void,
    /// log2 of the ring's size, taken once at set-up.
    pub order: c_int,
}

/// `struct libxenvchan`: every public field at the header's offset.
///
/// The three 1-bit fields `is_server`, `server_persist` and `blocking`
/// share one `int` after `event_port`: bits 0, 1 and 2 of [`flags`]
/// (x86-64 System V allocates bit-fields from the least significant bit).
/// Callers set `blocking` and `server_persist` directly, so every call
/// reads them afresh.
///
/// [`flags`]: libxenvchan::flags
#[repr(C)]
#[derive(Debug)]
pub struct libxenvchan {
    /// The header's `gntshr`/`gnttab` union: a libxengnttab handle in
    /// Xen's library. Always null here (the grant device is ours).
    pub gnt: *mut c_void,
    /// The shared control page (`struct vchan_interface *`).
    pub ring: *mut c_void,
    /// A libxenevtchn handle in Xen's library; always null here (use
    /// `libxenvchan_fd_for_select`).
    pub event: *mut c_void,
    /// Our local event-channel port (0 without Xen).
    pub event_port: u32,
    /// `is_server` (bit 0), `server_persist` (bit 1), `blocking` (bit 2).
    pub flags: c_uint,
    /// The ring we read.
    pub read: libxenvchan_ring,
    /// The ring we write.
    pub write: libxenvchan_ring,
    /// The server's xenstore path (a copy it owns); null for a client.
    pub xs_path: *mut c_char,
}

/// Bit of [`libxenvchan::flags`] holding `is_server`.
pub const IS_SERVER: c_uint = 1 << 0;
/// Bit of [`libxenvchan::flags`] holding `server_persist`.
pub const SERVER_PERSIST: c_uint = 1 << 1;
/// Bit of [`libxenvchan::flags`] holding `blocking`.
pub const BLOCKING: c_uint = 1 << 2;

impl libxenvchan {
    /// A struct with every pointer null and every flag clear.
    pub(crate) fn empty() -> Self {
        let ring = || libxenvchan_ring {
            shr: std::ptr::null_mut(),
            buffer: std::ptr::null_mut(),
            order: 0,
        };
        libxenvchan {
            gnt: std::ptr::null_mut(),
            ring: std::ptr::null_mut(),
            event: std::ptr::null_mut(),
            event_port: 0,
            flags: 0,
            read: ring(),
            write: ring(),
            xs_path: std::ptr::null_mut(),
        }
    }
}

/// Offsets and size of [`libxenvchan`] as this crate lays it out, for the
/// layout test to compare with the C compiler's view of the header:
/// `(name, offset)` pairs, then the size under the name `sizeof`.
pub fn layout() -> Vec<(&'static str, usize)> {
    use std::mem::{offset_of, size_of};
    vec![
        ("gntshr", offset_of!(libxenvchan, gnt)),
        ("ring", offset_of!(libxenvchan, ring)),
        ("event", offset_of!(libxenvchan, event)),
        ("event_port", offset_of!(libxenvchan, event_port)),
        ("bitfields", offset_of!(libxenvchan, flags)),
        (
            "read.shr",
            offset_of!(libxenvchan, read) + offset_of!(libxenvchan_ring, shr),
        ),
        (
            "read.buffer",
            offset_of!(libxenvchan, read) + offset_of!(libxenvchan_ring, buffer),
        ),
        (
            "read.order",
            offset_of!(libxenvchan, read) + offset_of!(libxenvchan_ring, order),
        ),
        (
            "write.shr",
            offset_of!(libxenvchan, write) + offset_of!(libxenvchan_ring, shr),
        ),
        (
            "write.buffer",
            offset_of!(libxenvchan, write) + offset_of!(libxenvchan_ring, buffer),
        ),
        (
            "write.order",
            offset_of!(libxenvchan, write) + offset_of!(libxenvchan_ring, order),
        ),
        ("xs_path", offset_of!(libxenvchan, xs_path)),
        ("sizeof", size_of::<libxenvchan>()),
        ("bit.is_server", IS_SERVER as usize),
        ("bit.server_persist", SERVER_PERSIST as usize),
        ("bit.blocking", BLOCKING as usize),
    ]
}
