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

use crate::mutation::{self, Mutation};
use core::task::{Context, Poll};

/// An event channel to the peer: kick it, and wait until it kicks us.
///
/// Events carry no meaning and may be spurious or merged: after every
/// wake-up the caller re-checks the ring.
///
/// Besides the two essentials, a host may offer what the blocking
/// wrappers of both protocols use when present: a *spin* on the ring
/// before sleeping ([`spin`](Self::spin)), the classification of a failed
/// wait as the peer's death ([`is_peer_gone`](Self::is_peer_gone)), and an
/// out-of-band end of the peer's byte stream
/// ([`peer_write_closed`](Self::peer_write_closed)).
///
/// # Examples
///
/// A signal that counts kicks instead of sending them (a host would write
/// an eventfd or an event channel there):
///
/// ```
/// # use core::sync::atomic::AtomicU64;
/// # use ring_core::mem::RawMem;
/// use core::cell::Cell;
/// use core::convert::Infallible;
/// use ring_core::signal::Signal;
/// use ring_core::vchan::{self, Blocking, Orders, ServerOptions};
///
/// #[derive(Default)]
/// struct Counter(Cell<u32>);
///
/// impl Signal for Counter {
///     type Error = Infallible;
///     fn notify(&self) -> Result<(), Infallible> {
///         self.0.set(self.0.get() + 1);
///         Ok(())
///     }
///     fn wait(&self) -> Result<(), Infallible> {
///         Ok(()) // nothing to sleep on: look at the ring again
///     }
/// }
/// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
/// # let mem = RawMem::from_atomics(&words);
/// let _server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
/// let mut client = Blocking::new(vchan::connect_flat(mem)?, Counter::default());
/// client.write_all(b"one")?;
/// client.write_all(b"two")?;
/// // The server asked to be kicked once, at set-up, and has not read since.
/// assert_eq!(client.signal().0.get(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
    /// reporting [`BlockingError::PeerGone`], so bytes the peer published
    /// just before it died are still delivered. The default says no.
    fn is_peer_gone(error: &Self::Error) -> bool {
        let _ = error;
        false
    }

    /// Re-checks `ready` (which only looks, arming nothing) for as long as
    /// the host's spin budget allows, and returns its last answer. A peer
    /// running on another core usually moves within microseconds, and a
    /// side that has not armed its request costs the peer no kick.
    ///
    /// A host should stop early when it learns that the peer is gone. The
    /// default does not spin.
    fn spin(&self, ready: &mut dyn FnMut() -> bool) -> bool {
        let _ = ready;
        false
    }

    /// `Some(total)` once the peer has said, outside the ring, that it
    /// will write no more and that it wrote `total` bytes in all (a
    /// half-close, for protocols whose ring has none). The peer says so
    /// only after publishing its last byte, so a reader that asks first and
    /// then finds the ring empty has read everything. The default: never.
    fn peer_write_closed(&self) -> Option<u64> {
        None
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
    fn spin(&self, ready: &mut dyn FnMut() -> bool) -> bool {
        (**self).spin(ready)
    }
    fn peer_write_closed(&self) -> Option<u64> {
        (**self).peer_write_closed()
    }
}

/// A signal for busy-polling environments: notifying does nothing, and
/// waiting returns at once (after a spin-loop hint), so blocking wrappers
/// turn into polling loops.
///
/// # Examples
///
/// A polling reader on one thread, a writer on another:
///
/// ```
/// # use core::sync::atomic::AtomicU64;
/// # use ring_core::mem::RawMem;
/// use ring_core::signal::NoSignal;
/// use ring_core::vchan::{self, Blocking, Orders, ServerOptions};
/// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
/// # let mem = RawMem::from_atomics(&words);
/// let server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
/// let mut server = Blocking::new(server, NoSignal);
/// let mut client = Blocking::new(vchan::connect_flat(mem)?, NoSignal);
/// std::thread::scope(|s| {
///     let writer = s.spawn(move || client.write_all(b"polled"));
///     let mut buf = [0u8; 6];
///     server.recv(&mut buf)?; // spins until all six bytes are there
///     assert_eq!(&buf, b"polled");
///     Ok::<(), Box<dyn std::error::Error>>(writer.join().expect("writer panicked")?)
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
/// error), the host's [`Signal`] failed (`S`, e.g. a timeout or a dead
/// fd), or the peer is gone. Both protocols' blocking wrappers use it.
///
/// Deliberately exhaustive: these three are the only ways a wait can end
/// badly, and callers match them to pick an exit path; new failure
/// reasons go in the protocol's error (`R`), which is non-exhaustive.
#[derive(Debug, PartialEq, Eq)]
pub enum BlockingError<R, S> {
    /// The ring said no (closed, corrupt, too large, ...).
    Ring(R),
    /// The signal failed.
    Signal(S),
    /// The signal reported the peer gone (it died or hung up) and the ring
    /// holds nothing more for us: what it published before it went was
    /// delivered first. Writes fail this way at once: nobody will read.
    PeerGone,
}

impl<R: core::fmt::Display, S: core::fmt::Debug> core::fmt::Display for BlockingError<R, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BlockingError::Ring(e) => e.fmt(f),
            BlockingError::Signal(e) => write!(f, "signal failed: {e:?}"),
            BlockingError::PeerGone => f.write_str("the peer is gone"),
        }
    }
}

impl<R: core::error::Error + 'static, S: core::fmt::Debug> core::error::Error
    for BlockingError<R, S>
{
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            BlockingError::Ring(e) => Some(e),
            _ => None,
        }
    }
}

impl<R: embedded_io::Error, S: core::fmt::Debug> embedded_io::Error for BlockingError<R, S> {
    fn kind(&self) -> embedded_io::ErrorKind {
        match self {
            BlockingError::Ring(e) => e.kind(),
            BlockingError::Signal(_) => embedded_io::ErrorKind::Other,
            BlockingError::PeerGone => embedded_io::ErrorKind::BrokenPipe,
        }
    }
}

/// The one blocking layer both protocols' wrappers are built on: the
/// signal, what it told us about the peer, and the loop that turns
/// non-blocking ring operations into blocking ones.
///
/// Every ring operation it drives has already armed its wake-up request
/// and re-checked the ring when it answers "not now", so the loop may
/// sleep at once: spin on readiness (arming nothing), try, wait. A wait
/// that reports the peer gone is taken as one more wake-up: the next
/// attempt still delivers what the peer published before it went, and
/// only an attempt that finds nothing more reports
/// [`BlockingError::PeerGone`].
#[derive(Debug)]
pub(crate) struct Waiter<S> {
    pub(crate) signal: S,
    /// The signal reported the peer gone; attempts that find nothing more
    /// report it.
    gone: bool,
}

/// The result of one non-blocking attempt: `Some` done, `None` not now
/// (wake-up armed, ring re-checked).
pub(crate) type Attempt<T, R, E> = Result<Option<T>, BlockingError<R, E>>;

impl<S: Signal> Waiter<S> {
    pub(crate) fn new(signal: S) -> Self {
        Waiter {
            signal,
            gone: false,
        }
    }

    /// Whether the signal has reported the peer gone.
    pub(crate) fn peer_gone(&self) -> bool {
        self.gone
    }

    /// Kicks the peer if the protocol says it is owed; passes `len` on.
    pub(crate) fn settle<R>(
        &self,
        notify: bool,
        len: usize,
    ) -> Result<usize, BlockingError<R, S::Error>> {
        if notify {
            self.signal.notify().map_err(BlockingError::Signal)?;
        }
        Ok(len)
    }

    /// Refuses to write once the peer is gone: nobody would read it.
    pub(crate) fn writable<R>(&self) -> Result<(), BlockingError<R, S::Error>> {
        if self.gone {
            return Err(BlockingError::PeerGone);
        }
        Ok(())
    }

    /// What an attempt that found nothing means: not now, or (once the peer
    /// is gone) never.
    pub(crate) fn nothing<T, R>(&self) -> Attempt<T, R, S::Error> {
        if self.gone {
            return Err(BlockingError::PeerGone);
        }
        Ok(None)
    }

    /// What a read that found the ring empty means, given what
    /// [`Signal::peer_write_closed`] said *before* the ring was looked at:
    /// end of stream if the peer had declared its end and we have read all
    /// it said it wrote, corruption if we have read less or more, else as
    /// [`nothing`](Self::nothing).
    pub(crate) fn empty<R: From<crate::Corrupt>>(
        &self,
        declared: Option<u64>,
        read: u64,
    ) -> Attempt<usize, R, S::Error> {
        match declared {
            Some(total) if total == read => Ok(Some(0)),
            Some(_) => Err(BlockingError::Ring(R::from(crate::Corrupt {
                what: "peer ended its stream with a byte count other than what it wrote",
            }))),
            None => self.nothing(),
        }
    }

    /// Waits with `wait` (the plain [`Signal::wait`], or a host's own with
    /// extra wake-up sources and a deadline). `Ok(None)`: the peer is gone
    /// and the caller's next attempt gets the last look. A caller that
    /// waits again after that look found nothing gets
    /// [`BlockingError::PeerGone`]: nothing can wake it any more.
    pub(crate) fn wait_with<W, R>(
        &mut self,
        wait: impl FnOnce(&S) -> Result<W, S::Error>,
    ) -> Result<Option<W>, BlockingError<R, S::Error>> {
        if self.gone {
            return Err(BlockingError::PeerGone);
        }
        match wait(&self.signal) {
            Ok(w) => Ok(Some(w)),
            Err(e) if S::is_peer_gone(&e) => {
                self.gone = true;
                Ok(None)
            }
            Err(e) => Err(BlockingError::Signal(e)),
        }
    }

    /// The blocking loop: spin until `ready` (on `rings`, arming nothing),
    /// `attempt`, and wait whenever it answers "not now".
    pub(crate) fn block<X, T, R>(
        &mut self,
        rings: &mut X,
        mut ready: impl FnMut(&mut X) -> bool,
        mut attempt: impl FnMut(&mut X, &Self) -> Attempt<T, R, S::Error>,
    ) -> Result<T, BlockingError<R, S::Error>> {
        loop {
            if !self.gone {
                self.signal.spin(&mut || ready(rings));
            }
            if let Some(v) = attempt(rings, self)? {
                return Ok(v);
            }
            // An attempt that found nothing after the peer went has
            // reported it; one that still answers "not now" is a bug in
            // the attempt, and must not make us spin.
            if self.gone {
                return Err(BlockingError::PeerGone);
            }
            self.wait_with(|s| s.wait())?;
        }
    }
}

/// Rounds of "event, try again" one [`poll_attempt`] makes before it
/// yields: a peer that kicks without end cannot keep a task (and the
/// runtime thread under it) in one poll.
pub const ASYNC_ROUNDS: usize = 32;

/// The async form of the blocking loop, for a host whose waits are
/// futures (a tokio reactor registration of the eventfd): try, and
/// whenever the ring answers "not now", poll the event source; return
/// `Pending` only when the source has registered the task's waker.
///
/// `attempt` is one non-blocking ring operation on `state` with this
/// crate's contract: it answers `None` only after arming its wake-up
/// request and re-checking the ring. `event` polls the source the peer's
/// kick makes ready: `Ready(Ok(()))` for an event that came since its last
/// `Ready` (which it takes: clears the readiness *before* returning, so a
/// kick during the retry that follows is a new event), or `Pending` with
/// the waker of `cx` registered so that any later event wakes it. Its
/// last argument says why it is polled: `true` when a `Pending` puts the
/// task to sleep; `false` for the look before the first attempt, where
/// the source may take an event already there (so the host can count
/// the cause of the wake-up) or leave it (a kick left makes the next
/// wait try once more before it sleeps), and need start nothing.
///
/// Together: a kick that lands after the attempt armed is either seen by
/// the re-check inside the attempt, or is an event the source has not yet
/// given out, so the next `event` returns it (and we try again) or wakes
/// the waker it registers. The loom models in `ring-core/tests/loom_async.rs`
/// check exactly this function against both protocols' attempts.
///
/// After [`ASYNC_ROUNDS`] events in one call it wakes its own waker and
/// returns `Pending`: the task is polled again soon, after others ran.
///
/// # Examples
///
/// A reader future over a vchan ring that the peer fills after the first
/// poll, with a hand-made event source (a host registers its eventfd with
/// its reactor instead):
///
/// ```
/// # use core::sync::atomic::AtomicU64;
/// # use ring_core::mem::RawMem;
/// use core::cell::Cell;
/// use core::task::{Context, Poll, Waker};
/// use ring_core::signal::{poll_attempt, NoSignal};
/// use ring_core::vchan::{self, Blocking, Orders, ServerOptions};
/// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
/// # let mem = RawMem::from_atomics(&words);
/// let server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
/// let mut client = Blocking::new(vchan::connect_flat(mem)?, NoSignal);
/// let mut server = Blocking::new(server, NoSignal);
/// let kicked = Cell::new(false); // the event source: "the peer kicked"
/// let mut cx = Context::from_waker(Waker::noop());
/// let mut buf = [0u8; 8];
/// let mut poll = |cx: &mut Context<'_>| {
///     poll_attempt(
///         cx,
///         &mut server,
///         |s| s.try_read(&mut buf),
///         |_, _, _| if kicked.replace(false) { Poll::Ready(Ok(())) } else { Poll::Pending },
///     )
/// };
/// assert!(poll(&mut cx).is_pending()); // armed, re-checked, registered
/// client.write_all(b"hi")?;
/// kicked.set(true); // the kick the server asked for
/// assert_eq!(poll(&mut cx), Poll::Ready(Ok(2)));
/// assert!(!kicked.get()); // taken
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn poll_attempt<X, T, E>(
    cx: &mut Context<'_>,
    state: &mut X,
    mut attempt: impl FnMut(&mut X) -> Result<Option<T>, E>,
    mut event: impl FnMut(&mut X, &mut Context<'_>, bool) -> Poll<Result<(), E>>,
) -> Poll<Result<T, E>> {
    // An event already there may be taken before the attempt, which then
    // looks at what it announced.
    if let Poll::Ready(Err(e)) = event(state, cx, false) {
        return Poll::Ready(Err(e));
    }
    for _ in 0..ASYNC_ROUNDS {
        match attempt(state) {
            Ok(Some(v)) => return Poll::Ready(Ok(v)),
            Ok(None) => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
        match event(state, cx, true) {
            Poll::Ready(Ok(())) => {
                if mutation::on(Mutation::NoRetryAfterEvent) {
                    return Poll::Pending;
                }
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use core::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};
    use std::vec::Vec;

    /// Counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// What happened, in order: `A` an attempt, `E(sleep)` an event poll.
    #[derive(Debug, PartialEq)]
    enum Step {
        A,
        E(bool),
    }

    /// Runs one `poll_attempt` whose attempts answer from `answers` (then
    /// "not now") and whose event source has `events` events to give.
    fn run(
        answers: &[Result<Option<u8>, u8>],
        events: usize,
        fail_event: bool,
    ) -> (Poll<Result<u8, u8>>, Vec<Step>, usize) {
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let steps = core::cell::RefCell::new(Vec::new());
        let left = Cell::new(events);
        let mut next = answers.iter();
        let r = poll_attempt(
            &mut cx,
            &mut (),
            |_| {
                steps.borrow_mut().push(Step::A);
                *next.next().unwrap_or(&Ok(None))
            },
            |_, _, sleep| {
                steps.borrow_mut().push(Step::E(sleep));
                if fail_event {
                    return Poll::Ready(Err(9));
                }
                match left.get() {
                    0 => Poll::Pending,
                    n => {
                        left.set(n - 1);
                        Poll::Ready(Ok(()))
                    }
                }
            },
        );
        (r, steps.into_inner(), count.0.load(Ordering::SeqCst))
    }

    #[test]
    fn an_event_already_there_is_taken_before_the_attempt() {
        let (r, steps, wakes) = run(&[Ok(Some(7))], 1, false);
        assert_eq!(r, Poll::Ready(Ok(7)));
        assert_eq!(steps, [Step::E(false), Step::A]);
        assert_eq!(wakes, 0);
    }

    #[test]
    fn not_now_polls_the_source_and_sleeps_only_when_it_is_pending() {
        let (r, steps, _) = run(&[Ok(None)], 0, false);
        assert_eq!(r, Poll::Pending);
        assert_eq!(steps, [Step::E(false), Step::A, Step::E(true)]);
    }

    #[test]
    fn a_taken_event_is_always_followed_by_another_attempt() {
        let (r, steps, _) = run(&[Ok(None), Ok(None), Ok(Some(3))], 3, false);
        assert_eq!(r, Poll::Ready(Ok(3)));
        assert_eq!(
            steps,
            [
                Step::E(false),
                Step::A,
                Step::E(true),
                Step::A,
                Step::E(true),
                Step::A
            ]
        );
    }

    #[test]
    fn errors_of_either_end_the_wait() {
        assert_eq!(run(&[Err(4)], 0, false).0, Poll::Ready(Err(4)));
        let (r, steps, _) = run(&[Ok(None)], 0, true);
        assert_eq!(r, Poll::Ready(Err(9)));
        assert_eq!(steps, [Step::E(false)]);
    }

    /// A source that never runs dry (a peer kicking without end) cannot
    /// keep the task in one poll: after `ASYNC_ROUNDS` tries it yields,
    /// waking itself so it is polled again.
    #[test]
    fn endless_events_yield_after_the_round_limit() {
        let (r, steps, wakes) = run(&[], usize::MAX, false);
        assert_eq!(r, Poll::Pending);
        let tries = steps.iter().filter(|s| **s == Step::A).count();
        assert_eq!(tries, ASYNC_ROUNDS);
        assert_eq!(wakes, 1);
    }
}
