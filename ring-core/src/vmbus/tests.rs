//! Unit tests of the VMBus rings over in-process memory.
