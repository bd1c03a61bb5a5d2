#![doc = include_str!("../README.md")]
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
#[cfg(test)]
mod race;
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
