//! Shared-memory producer/consumer rings for virtual machines, in `no_std`
//! and without allocation, wire-compatible with two protocols:
//!
//! - [`vchan`]: Xen libxenvchan's pair of byte-stream rings;
//! - [`vmbus`]: the Hyper-V VMBus packet ring (and pipes on top of it).
//!
//! The crate touches shared pages only through the [`mem::SharedMem`]
//! trait, never calls into the host to signal (operations report when the
//! peer must be kicked, see [`signal`]), and treats everything the peer
//! writes as hostile: a peer can make a call return a corruption error, but
//! never make it panic, touch memory outside the region, loop for ever or
//! allocate.
//!
//! # Example: an in-process vchan over heap-backed atomics
//!
//! ```
//! use core::sync::atomic::AtomicU64;
//! use ring_core::mem::RawMem;
//! use ring_core::vchan::{self, Orders, ServerOptions};
//!
//! let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
//! let mem = RawMem::from_atomics(&words); // one 4 KiB page: both rings in-page
//! let orders = Orders::for_sizes(0, 0).unwrap(); // libxenvchan's default (10, 11)
//! let mut server = vchan::serve_flat(mem, orders, ServerOptions::default()).unwrap();
//! let mut client = vchan::connect_flat(mem).unwrap();
//!
//! let sent = client.write(b"hello").unwrap();
//! assert!(sent.notify); // the server asked to be woken by the first write
//! let mut buf = [0u8; 16];
//! let got = server.read(&mut buf).unwrap();
//! assert_eq!(&buf[..got.len], b"hello");
//! ```

#![no_std]
// A hostile peer must never make the core panic: no unwrap, expect, panic
// or unchecked indexing outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod error;
pub mod loan;
pub mod mem;
#[cfg(loom)]
#[doc(hidden)]
pub mod mutation;
#[cfg(not(loom))]
#[allow(dead_code)]
mod mutation;
pub mod signal;
pub mod vchan;
pub mod vmbus;

pub use error::Corrupt;

/// What one data call moved, in both protocols: `len` is always bytes of
/// the caller's data (a stream's bytes, a message's or packet's payload),
/// never ring bytes with headers, and `notify` says the peer asked to be
/// woken. (A VMBus ring commit, which publishes whole packets, returns a
/// [`vmbus::Commit`] instead.)
#[must_use = "if `notify` is set the peer must be kicked, or it may sleep for ever"]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes of the caller's data moved.
    pub len: usize,
    /// The peer asked to be woken: send it an event (kick or signal).
    pub notify: bool,
}

impl Transfer {
    /// Nothing moved and nobody to wake (an empty buffer, or end of stream).
    pub const NOTHING: Transfer = Transfer {
        len: 0,
        notify: false,
    };
}
