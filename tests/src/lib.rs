//! Shared helpers for the cross-crate tests in `tests/tests/`: the C peers
//! (libxenvchan, DPDK's VMBus ring) and, re-exported from
//! `ring-model-tests`, the helpers every test package shares.

pub mod dpdk;
pub mod xen;

pub use ring_model_tests::{proptest_config, stream_byte, Deadline};
