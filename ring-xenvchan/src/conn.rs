//! libxenvchan's calls, one by one, on ring-core's blocking layer: each C
//! function is a loop of the layer's one-attempt calls (`try_read`,
//! `try_send`, ...) and its [`wait_with`](Blocking::wait_with), with
//! libxenvchan's return conventions (a count, 0 for "not now" when not
//! blocking, -1 with `errno`). Generic over the memory and the signal, so
//! the Xen backend and the memfd rendezvous share every line.

use libc::{c_int, EIO, EMSGSIZE, EPIPE, EPROTO};
use ring_core::mem::SharedMem;
use ring_core::signal::Signal;
use ring_core::vchan::{Blocking, BlockingError, Endpoint, Error, Live, Role};

/// A call's outcome: the C return value, or -1 with this `errno`.
pub(crate) type CResult = Result<c_int, c_int>;

/// A signal the drop-in can wait on, with its errors as `errno` values.
pub(crate) trait Wake: Signal {
    /// The `errno` for a failed wait or kick.
    fn errno(e: &Self::Error) -> c_int;

    /// Handles whatever happened without waiting (a client arriving at a
    /// rendezvous, a peer's hang-up), so that `is_open` and the counts see
    /// it. Nothing to do on Xen, where the kernel does this.
    fn pump(&self) {}
}

/// The `errno` for a ring error.
pub(crate) fn ring_errno(e: &Error) -> c_int {
    match e {
        Error::Corrupt(_) => EPROTO,
        Error::Closed => EPIPE,
        Error::TooLarge { .. } => EMSGSIZE,
        _ => EIO,
    }
}

fn blocking_errno<S: Wake>(e: &BlockingError<S::Error>) -> c_int {
    match e {
        BlockingError::Ring(r) => ring_errno(r),
        BlockingError::Signal(s) => S::errno(s),
        BlockingError::PeerGone => EPIPE,
    }
}

/// Clamps a byte count (at most a ring, 1 MiB) to the `int` C returns.
fn count(n: usize) -> c_int {
    c_int::try_from(n).unwrap_or(c_int::MAX)
}

/// One end of a vchan as the C calls see it.
pub(crate) struct Conn<'a, M: SharedMem, S: Wake> {
    io: &'a mut Blocking<M, S>,
}

impl<'a, M: SharedMem, S: Wake> Conn<'a, M, S> {
    pub(crate) fn new(io: &'a mut Blocking<M, S>) -> Self {
        Conn { io }
    }

    /// `libxenvchan_is_open`: 0 closed (or the page corrupt), 1 open, 2 a
    /// server still waiting for its client. A persistent server says 1
    /// whatever its client does, as in C.
    pub(crate) fn is_open(&mut self, persist: bool) -> CResult {
        self.io.signal().pump();
        let ep = self.io.endpoint();
        if let Some(_corrupt) = ep.poisoned() {
            return Err(EPROTO);
        }
        if persist && ep.role() == Role::Server {
            return Ok(1);
        }
        match ep.peer_live() {
            Ok(Live::Closed) => Ok(0),
            Ok(Live::Connected) => Ok(1),
            Ok(Live::Waiting) => Ok(2),
            Err(e) => Err(ring_errno(&e)),
        }
    }

    /// `is_open` as C's calls test it: open unless it says 0 or fails.
    fn open(&mut self, persist: bool) -> bool {
        matches!(self.is_open(persist), Ok(n) if n != 0)
    }

    /// `libxenvchan_data_ready`: the bytes readable, with the "kick me
    /// when you write" request armed (as C does, for a caller about to
    /// sleep on the fd).
    pub(crate) fn data_ready(&mut self) -> CResult {
        self.armed_count(|ep| ep.arm_readable(usize::MAX).and_then(|_| ep.data_ready()))
    }

    /// `libxenvchan_buffer_space`: the bytes writable, with the "kick me
    /// when you read" request armed.
    pub(crate) fn buffer_space(&mut self) -> CResult {
        self.armed_count(|ep| ep.arm_writable(usize::MAX).and_then(|_| ep.buffer_space()))
    }

    /// A count C asks for, after the events that came are taken in:
    /// `look` arms the wake-up request and counts.
    fn armed_count(
        &mut self,
        look: impl FnOnce(&mut Endpoint<M>) -> Result<usize, Error>,
    ) -> CResult {
        self.io.signal().pump();
        look(self.io.endpoint())
            .map(count)
            .map_err(|e| ring_errno(&e))
    }

    /// `libxenvchan_wait`: blocks for one event and acknowledges it.
    pub(crate) fn wait(&mut self) -> CResult {
        match self.io.wait_with(|s| s.wait()) {
            Ok(_) => Ok(0),
            Err(e) => Err(blocking_errno::<S>(&e)),
        }
    }

    /// Waits for the next event inside a blocking call.
    fn block(&mut self) -> Result<(), c_int> {
        self.wait().map(drop)
    }

    /// `libxenvchan_read`: up to `buf.len()` bytes, at least one; 0 when
    /// not blocking and nothing is there; -1 at the peer's end (or on a
    /// corrupt page, `EPROTO`).
    pub(crate) fn read(&mut self, buf: &mut [u8], blocking: bool, persist: bool) -> CResult {
        if buf.is_empty() {
            // As C: 0 at once if data is there, else wait for some.
            loop {
                if self.data_ready()? > 0 {
                    return Ok(0);
                }
                if !self.open(persist) {
                    return Err(self.closed_errno());
                }
                if !blocking {
                    return Ok(0);
                }
                self.block()?;
            }
        }
        // Read until the buffer is full or the ring is empty: an empty
        // ring arms the "kick me when you write" request (as C arms it
        // whenever it finds less than asked for), so a caller that got
        // less and sleeps on the fd is woken by the peer's next write.
        let mut got = 0;
        loop {
            let rest = buf.get_mut(got..).unwrap_or_default();
            if rest.is_empty() {
                return Ok(count(got));
            }
            match self.io.try_read(rest) {
                Ok(Some(0)) => {
                    if got > 0 {
                        return Ok(count(got));
                    }
                    if !persist || self.io.endpoint().role() != Role::Server {
                        return Err(EPIPE);
                    }
                }
                Ok(Some(n)) => {
                    got += n;
                    continue;
                }
                Ok(None) if got > 0 => return Ok(count(got)),
                Ok(None) => {}
                // What was read is returned; the error comes next call.
                Err(_) if got > 0 => return Ok(count(got)),
                Err(e) => return Err(blocking_errno::<S>(&e)),
            }
            if !blocking {
                return Ok(0);
            }
            self.block()?;
        }
    }

    /// `libxenvchan_recv`: exactly `buf.len()` bytes or none: 0 when not
    /// blocking and they are not all there; -1 if the peer ended first,
    /// or (blocking) if they can never fit the ring.
    pub(crate) fn recv(&mut self, buf: &mut [u8], blocking: bool, persist: bool) -> CResult {
        if buf.is_empty() {
            return match self.io.endpoint().poisoned() {
                Some(_) => Err(EPROTO),
                None => Ok(0),
            };
        }
        loop {
            match self.io.try_recv(buf) {
                Ok(Some(())) => return Ok(count(buf.len())),
                Ok(None) => {}
                Err(BlockingError::Ring(Error::TooLarge { .. })) => {
                    // As C: never enough data, so the peer's end first,
                    // then "not now" when not blocking, else -1.
                    if !self.open(persist) {
                        return Err(self.closed_errno());
                    }
                    return if blocking { Err(EMSGSIZE) } else { Ok(0) };
                }
                Err(BlockingError::Ring(Error::Closed)) if self.persisting(persist) => {}
                Err(e) => return Err(blocking_errno::<S>(&e)),
            }
            if !blocking {
                return Ok(0);
            }
            self.block()?;
        }
    }

    /// `libxenvchan_write`: not blocking, as much as fits (maybe 0);
    /// blocking, all of it. -1 if the peer has gone (after a partial
    /// write too, as in C).
    pub(crate) fn write(&mut self, buf: &[u8], blocking: bool, persist: bool) -> CResult {
        if !self.open(persist) {
            return Err(self.closed_errno());
        }
        let mut done = 0;
        loop {
            let rest = buf.get(done..).unwrap_or_default();
            if rest.is_empty() {
                return Ok(count(done));
            }
            // Write until all is in or the ring is full: a full ring arms
            // the "kick me when you read" request (as C arms it whenever
            // the room is less than the request), so a caller whose write
            // was short and sleeps on the fd is woken when room comes.
            match self.io.try_write(rest) {
                Ok(Some(n)) => {
                    done += n;
                    continue;
                }
                Ok(None) if !blocking => return Ok(count(done)),
                Ok(None) => {}
                Err(_) if done > 0 && !blocking => return Ok(count(done)),
                Err(BlockingError::Ring(Error::Closed)) if self.persisting(persist) => {}
                Err(e) => return Err(blocking_errno::<S>(&e)),
            }
            if !blocking {
                return Ok(count(done));
            }
            self.block()?;
        }
    }

    /// `libxenvchan_send`: all of `buf` or nothing: 0 when not blocking
    /// and it does not fit now (or ever, as in C); blocking, -1 for a
    /// packet larger than the ring.
    pub(crate) fn send(&mut self, buf: &[u8], blocking: bool, persist: bool) -> CResult {
        loop {
            if !self.open(persist) {
                return Err(self.closed_errno());
            }
            if buf.is_empty() {
                return Ok(0);
            }
            match self.io.try_send(buf) {
                Ok(Some(())) => return Ok(count(buf.len())),
                Ok(None) => {}
                Err(BlockingError::Ring(Error::TooLarge { .. })) => {
                    return if blocking { Err(EMSGSIZE) } else { Ok(0) };
                }
                Err(BlockingError::Ring(Error::Closed)) if self.persisting(persist) => {}
                Err(e) => return Err(blocking_errno::<S>(&e)),
            }
            if !blocking {
                return Ok(0);
            }
            self.block()?;
        }
    }

    /// A persistent server between clients: "closed" means "not yet".
    fn persisting(&mut self, persist: bool) -> bool {
        persist
            && self.io.endpoint().role() == Role::Server
            && self.io.endpoint().poisoned().is_none()
    }

    /// The `errno` for "not open": `EPROTO` if the page was found
    /// corrupt, else `EPIPE`.
    fn closed_errno(&mut self) -> c_int {
        match self.io.endpoint().poisoned() {
            Some(_) => EPROTO,
            None => EPIPE,
        }
    }

    /// `libxenvchan_close`'s ring part: our live byte cleared, then one
    /// event whatever the peer asked for.
    pub(crate) fn close(&mut self) -> Result<(), c_int> {
        self.io.close().map_err(|e| blocking_errno::<S>(&e))
    }
}
