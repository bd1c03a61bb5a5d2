//! The `ring` command's library half: the test pattern and checksum that
//! prove bytes crossed a ring intact ([`check`]), and the benchmark harness
//! behind `ring bench` and the workspace's `rings` cargo bench ([`mod@bench`]).
//!
//! The command itself is the `ring` binary of this crate; the rings, the
//! memory and the signals it drives are ring-core and ring-hosted, which
//! carry none of this.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod check;
