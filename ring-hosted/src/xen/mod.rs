//! Xen.
