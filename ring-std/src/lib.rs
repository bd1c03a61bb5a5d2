//! std glue for [`ring_core`]: page-aligned heap memory, an in-process
//! signal with timeouts, blocking `std::io` adapters, and helpers that build
//! connected in-process pairs for tests, examples and benchmarks.
//!
//! ```
//! use std::io::{Read, Write};
//! let (mut server, mut client) = ring_std::vchan::pair(4096, 4096).unwrap();
//! client.write_all(b"ping").unwrap();
//! let mut buf = [0u8; 4];
//! server.read_exact(&mut buf).unwrap();
//! assert_eq!(&buf, b"ping");
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod heap;
pub mod hostile;
pub mod io;
pub mod signal;
pub mod vchan;
pub mod vmbus;

pub use heap::HeapMem;
pub use signal::{InProcessSignal, ThreadEvent};
