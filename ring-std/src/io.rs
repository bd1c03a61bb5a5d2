//! Turning ring errors into `std::io` errors, once for both protocols.

use ring_core::loan::{Drained, Span, SpanReader, SpanWriter};
use ring_core::mem::SharedMem;
use ring_core::signal::BlockingError;
use std::io;

/// Converts a ring error into an `io::Error` of the matching kind (the
/// core's one mapping: [`ErrorClass::io_kind`](ring_core::error::ErrorClass::io_kind)).
///
/// # Examples
///
/// ```
/// use ring_core::{vchan, vmbus};
/// use ring_std::io::ring_io_error;
/// use std::io::ErrorKind;
///
/// let full = ring_io_error(vmbus::Error::Full { needed: 64, available: 8 });
/// assert_eq!(full.kind(), ErrorKind::WouldBlock);
/// assert_eq!(ring_io_error(vchan::Error::Closed).kind(), ErrorKind::BrokenPipe);
/// ```
pub fn ring_io_error<R: Into<io::Error>>(e: R) -> io::Error {
    e.into()
}

/// Converts a blocking wrapper's error into the `std::io` error a caller
/// of `Read`/`Write` expects: the signal's own error as it is (a timeout
/// stays `TimedOut`), the ring's by its class.
///
/// # Examples
///
/// ```
/// use ring_core::vchan;
/// use ring_std::io::io_error;
/// use std::io::{Error, ErrorKind};
///
/// type Failed = ring_core::signal::BlockingError<vchan::Error, Error>;
/// let timeout = io_error(Failed::Signal(Error::from(ErrorKind::TimedOut)));
/// assert_eq!(timeout.kind(), ErrorKind::TimedOut); // the signal's own
/// let ring = io_error(Failed::Ring(vchan::Error::WouldBlock));
/// assert_eq!(ring.kind(), ErrorKind::WouldBlock); // by its class
/// assert_eq!(io_error(Failed::PeerGone).kind(), ErrorKind::BrokenPipe);
/// ```
pub fn io_error<R: Into<io::Error>, S: Into<io::Error>>(e: BlockingError<R, S>) -> io::Error {
    match e {
        BlockingError::Signal(e) => e.into(),
        BlockingError::Ring(e) => ring_io_error(e),
        BlockingError::PeerGone => io::Error::new(io::ErrorKind::BrokenPipe, "the peer is gone"),
    }
}

/// An in-place write for either protocol's stream: `write` runs the
/// blocking wrapper's `write_with` with the closure it is given, which
/// hands the spans to `fill` through a [`SpanWriter`]. What `fill` wrote is
/// published if it succeeded, nothing if it failed (and its error is
/// returned).
pub(crate) fn write_in_place<M: SharedMem>(
    fill: impl FnOnce(&mut SpanWriter<'_, M>) -> io::Result<()>,
    write: impl FnOnce(&mut dyn FnMut(&M, &[Span]) -> usize) -> io::Result<usize>,
) -> io::Result<usize> {
    let mut fill = Some(fill);
    let mut failed = None;
    let n = write(&mut |mem, spans| {
        let Some(fill) = fill.take() else { return 0 };
        let mut w = SpanWriter::new(mem, spans);
        match fill(&mut w) {
            Ok(()) => w.len(),
            Err(e) => {
                failed = Some(e);
                0
            }
        }
    })?;
    failed.map_or(Ok(n), Err)
}

/// An in-place read for either protocol's stream, as
/// [`write_in_place`]: what `drain` read in order is given back if it
/// succeeded, nothing if it failed.
pub(crate) fn read_in_place<M: SharedMem>(
    drain: impl FnOnce(&mut SpanReader<'_, M>) -> io::Result<()>,
    read: impl FnOnce(&mut dyn FnMut(&M, &[Span]) -> usize) -> io::Result<Drained>,
) -> io::Result<Drained> {
    let mut drain = Some(drain);
    let mut failed = None;
    let d = read(&mut |mem, spans| {
        let Some(drain) = drain.take() else { return 0 };
        let mut r = SpanReader::new(mem, spans);
        match drain(&mut r) {
            Ok(()) => r.consumed(),
            Err(e) => {
                failed = Some(e);
                0
            }
        }
    })?;
    failed.map_or(Ok(d), Err)
}
