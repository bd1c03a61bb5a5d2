//! Turning ring errors into `std::io` errors, once for both protocols.

use ring_core::loan::{Span, SpanReader, SpanWriter};
use ring_core::mem::SharedMem;
use ring_core::signal::BlockingError;
use std::io;

/// Converts a ring error into an `io::Error` of the matching kind (the
/// core's one mapping: [`ErrorClass::io_kind`](ring_core::error::ErrorClass::io_kind)).
pub fn ring_io_error<R: Into<io::Error>>(e: R) -> io::Error {
    e.into()
}

/// Converts a blocking wrapper's error into the `std::io` error a caller
/// of `Read`/`Write` expects: the signal's own error as it is (a timeout
/// stays `TimedOut`), the ring's by its class.
pub fn io_error<R: Into<io::Error>, S: Into<io::Error>>(e: BlockingError<R, S>) -> io::Error {
    match e {
        BlockingError::Signal(e) => e.into(),
        BlockingError::Ring(e) => ring_io_error(e),
        BlockingError::PeerGone => io::Error::new(io::ErrorKind::BrokenPipe, "the peer is gone"),
    }
}

/// Runs a caller's in-place writer over the offered spans: the bytes to
/// publish are all it wrote if it succeeded, none if it failed (its error
/// is kept in `failed`).
pub(crate) fn fill_spans<M: SharedMem>(
    mem: &M,
    spans: &[Span],
    fill: impl FnOnce(&mut SpanWriter<'_, M>) -> io::Result<()>,
    failed: &mut Option<io::Error>,
) -> usize {
    let mut w = SpanWriter::new(mem, spans);
    match fill(&mut w) {
        Ok(()) => w.len(),
        Err(e) => {
            *failed = Some(e);
            0
        }
    }
}

/// Runs a caller's in-place reader over the offered spans: the bytes to
/// give back are those it read in order if it succeeded, none if it failed
/// (its error is kept in `failed`).
pub(crate) fn drain_spans<M: SharedMem>(
    mem: &M,
    spans: &[Span],
    drain: impl FnOnce(&mut SpanReader<'_, M>) -> io::Result<()>,
    failed: &mut Option<io::Error>,
) -> usize {
    let mut r = SpanReader::new(mem, spans);
    match drain(&mut r) {
        Ok(()) => r.consumed(),
        Err(e) => {
            *failed = Some(e);
            0
        }
    }
}

/// The caller's error if its closure failed, else `ok`.
pub(crate) fn or_failed<T>(ok: T, failed: Option<io::Error>) -> io::Result<T> {
    match failed {
        Some(e) => Err(e),
        None => Ok(ok),
    }
}
