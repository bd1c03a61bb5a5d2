//! An in-process [`Signal`] between threads: a counting event per side,
//! with an optional timeout on waits.

use ring_core::signal::Signal;
use std::io;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A counting event: `set` adds one, `wait` blocks until the count is
/// non-zero and takes all of it (events merge, as on an event channel).
///
/// # Examples
///
/// ```
/// use ring_std::ThreadEvent;
/// use std::time::Duration;
///
/// let event = ThreadEvent::new();
/// event.set();
/// event.set();
/// assert!(event.wait(None)); // two sets, one wake-up
/// assert!(!event.wait(Some(Duration::from_millis(10)))); // nothing left: times out
/// ```
#[derive(Debug, Default)]
pub struct ThreadEvent {
    count: Mutex<u64>,
    ready: Condvar,
}

impl ThreadEvent {
    /// A new event with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the event pending and wakes a waiter.
    pub fn set(&self) {
        let mut count = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        *count = count.saturating_add(1);
        self.ready.notify_all();
    }

    /// Waits for the event (up to `timeout`), consuming it. Returns false on
    /// timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut count = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        while *count == 0 {
            match deadline {
                None => {
                    count = self
                        .ready
                        .wait(count)
                        .unwrap_or_else(PoisonError::into_inner)
                }
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    count = self
                        .ready
                        .wait_timeout(count, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
        *count = 0;
        true
    }
}

/// One side's signal: kicks the peer's event, waits on its own.
#[derive(Clone, Debug)]
pub struct InProcessSignal {
    peer: Arc<ThreadEvent>,
    own: Arc<ThreadEvent>,
    timeout: Option<Duration>,
}

impl InProcessSignal {
    /// A connected pair of signals.
    ///
    /// # Examples
    ///
    /// ```
    /// use ring_core::signal::Signal;
    /// use ring_std::InProcessSignal;
    ///
    /// let (a, b) = InProcessSignal::pair();
    /// let waiter = std::thread::spawn(move || b.wait());
    /// a.notify()?; // wakes b
    /// waiter.join().expect("waiter panicked")?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn pair() -> (Self, Self) {
        let a = Arc::new(ThreadEvent::new());
        let b = Arc::new(ThreadEvent::new());
        (
            InProcessSignal {
                peer: b.clone(),
                own: a.clone(),
                timeout: None,
            },
            InProcessSignal {
                peer: a,
                own: b,
                timeout: None,
            },
        )
    }

    /// Makes [`Signal::wait`] fail with [`io::ErrorKind::TimedOut`] after
    /// `timeout` without an event (`None`: wait for ever).
    ///
    /// # Examples
    ///
    /// ```
    /// use ring_core::signal::Signal;
    /// use ring_std::InProcessSignal;
    /// use std::io::ErrorKind;
    /// use std::time::Duration;
    ///
    /// let (mut a, _b) = InProcessSignal::pair();
    /// a.set_timeout(Some(Duration::from_millis(10)));
    /// assert_eq!(a.wait().unwrap_err().kind(), ErrorKind::TimedOut);
    /// ```
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }
}

impl Signal for InProcessSignal {
    type Error = io::Error;

    fn notify(&self) -> io::Result<()> {
        self.peer.set();
        Ok(())
    }

    fn wait(&self) -> io::Result<()> {
        if self.own.wait(self.timeout) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no event from the peer within the timeout",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_merge_and_timeouts_fire() {
        let (mut a, b) = InProcessSignal::pair();
        b.notify().unwrap();
        b.notify().unwrap();
        a.wait().unwrap(); // both kicks merged into one wake-up
        a.set_timeout(Some(Duration::from_millis(20)));
        let err = a.wait().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let t = std::thread::spawn(move || b.notify().unwrap());
        a.set_timeout(Some(Duration::from_secs(10)));
        a.wait().unwrap();
        t.join().unwrap();
    }
}
