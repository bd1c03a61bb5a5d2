//! Unit tests of the endpoint over in-process memory.
