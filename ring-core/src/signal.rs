//! How a host wakes the peer and waits to be woken.
//!
//! The ring code never signals by itself: every operation that may need to
//! wake the peer says so in its return value, and the host decides how (an
//! eventfd write, a Xen event channel, a doorbell register, nothing at all
//! for a busy-polling guest). This module holds the one trait a host
//! implements for that, and [`NoSignal`] for polling.
//!
//! # Waiting without losing wake-ups
//!
//! Both protocols use the same Dekker-style pattern. The side about to sleep
//! *arms* a request in shared memory ("wake me when you write/read"), issues
//! a full fence, and *re-checks* the ring. The acting side moves its index,
//! issues a full fence, and then tests the request. Whatever the
//! interleaving, at least one side sees the other's store: either the actor
//! signals, or the re-check finds the new state and the waiter does not
//! sleep. The ring operations in this crate return "would block" only after
//! arming and re-checking, so a caller may sleep on its event source as soon
//! as it sees that answer.

/// An event channel to the peer: kick it, and wait until it kicks us.
///
/// Events carry no meaning and may be spurious or merged: after every
/// wake-up the caller re-checks the ring.
pub trait Signal {
    /// Why signalling or waiting failed (a closed fd, a timeout, ...).
    type Error: core::fmt::Debug;

    /// Wakes the peer.
    fn notify(&self) -> Result<(), Self::Error>;

    /// Blocks until the peer has kicked us at least once since the last
    /// call (or returns at once if it already has).
    fn wait(&self) -> Result<(), Self::Error>;

    /// Whether `error` from [`wait`](Self::wait) means the peer is gone
    /// (it died or hung up) rather than that waiting itself failed.
    ///
    /// The blocking wrappers then look at the ring once more before
    /// reporting the error, so bytes the peer published just before it
    /// died are still delivered. The default says no.
    fn is_peer_gone(error: &Self::Error) -> bool {
        let _ = error;
        false
    }
}

impl<T: Signal + ?Sized> Signal for &T {
    type Error = T::Error;
    fn notify(&self) -> Result<(), Self::Error> {
        (**self).notify()
    }
    fn wait(&self) -> Result<(), Self::Error> {
        (**self).wait()
    }
    fn is_peer_gone(error: &Self::Error) -> bool {
        T::is_peer_gone(error)
    }
}

/// A signal for busy-polling environments: notifying does nothing, and
/// waiting returns at once (after a spin-loop hint), so blocking wrappers
/// turn into polling loops.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSignal;

impl Signal for NoSignal {
    type Error = core::convert::Infallible;
    fn notify(&self) -> Result<(), Self::Error> {
        Ok(())
    }
    fn wait(&self) -> Result<(), Self::Error> {
        core::hint::spin_loop();
        Ok(())
    }
}

/// Why a blocking call failed: the ring said no (`R`, the protocol's own
/// error), or the host's [`Signal`] failed (`S`, e.g. a timeout or a dead
/// fd). Both protocols' blocking wrappers use it.
#[derive(Debug, PartialEq, Eq)]
pub enum BlockingError<R, S> {
    /// The ring said no (closed, corrupt, too large, ...).
    Ring(R),
    /// The signal failed.
    Signal(S),
}

impl<R: core::fmt::Display, S: core::fmt::Debug> core::fmt::Display for BlockingError<R, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BlockingError::Ring(e) => e.fmt(f),
            BlockingError::Signal(e) => write!(f, "signal failed: {e:?}"),
        }
    }
}

impl<R: core::error::Error, S: core::fmt::Debug> core::error::Error for BlockingError<R, S> {}

impl<R: embedded_io::Error, S: core::fmt::Debug> embedded_io::Error for BlockingError<R, S> {
    fn kind(&self) -> embedded_io::ErrorKind {
        match self {
            BlockingError::Ring(e) => e.kind(),
            BlockingError::Signal(_) => embedded_io::ErrorKind::Other,
        }
    }
}

/// Waits on `signal` for a blocking wrapper. When the wait fails because
/// the peer is gone, it succeeds once (setting `last_pass`), so the caller
/// makes one last non-blocking pass over the ring before the error is
/// reported on its next wait.
pub(crate) fn wait_or_last_pass<S: Signal, R>(
    signal: &S,
    last_pass: &mut bool,
) -> Result<(), BlockingError<R, S::Error>> {
    match signal.wait() {
        Ok(()) => Ok(()),
        Err(e) if S::is_peer_gone(&e) && !*last_pass => {
            *last_pass = true;
            Ok(())
        }
        Err(e) => Err(BlockingError::Signal(e)),
    }
}
