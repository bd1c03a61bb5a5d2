//! VFIO.
