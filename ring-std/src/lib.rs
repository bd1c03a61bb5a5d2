#![doc = include_str!("../README.md")]
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
