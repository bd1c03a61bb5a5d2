//! Linux shims for ring-core: shared memory from memfd and shm files,
//! eventfd signalling, and the `ring` command.
//!
//! Thin for now: the in-process example lives in `ring demo`.

pub mod devmem;
pub mod replay;
pub mod uio;
pub mod vfio;
pub mod xen;
