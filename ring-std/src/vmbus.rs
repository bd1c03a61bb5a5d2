//! In-process VMBus channels: one heap ring each way, connected by an
//! in-process signal, for tests, examples and benchmarks; and blocking
//! `std::io` over a VMBus byte pipe.
//!
//! ```
//! use ring_core::vmbus::OutgoingPacket;
//! let (mut a, mut b) = ring_std::vmbus::pair(16384).unwrap();
//! a.send(&OutgoingPacket::in_band(1, &[b"ping"])).unwrap();
//! let mut buf = [0u8; 64];
//! let (info, len) = b.recv(&mut buf).unwrap();
//! assert_eq!((info.transaction_id, &buf[..4], len), (1, &b"ping"[..], 8));
//! ```

use crate::io::io_error;
use crate::{HeapMem, InProcessSignal};
use ring_core::loan::{Drained, SpanReader, SpanWriter};
use ring_core::mem::SharedMem;
use ring_core::signal::Signal;
use ring_core::vmbus::pipe::{PipeReader, PipeWriter};
use ring_core::vmbus::{
    initialize_ring, Blocking, BlockingPipe, Error, IncomingRing, OutgoingRing, RingLayout,
};
use std::io;
use std::sync::Arc;

/// Memory of one in-process ring.
pub type RingMem = Arc<HeapMem>;

/// One end of an in-process channel.
pub type PairChannel = Blocking<RingMem, InProcessSignal>;

/// One end of an in-process byte pipe.
pub type PairPipe = PipeStream<RingMem, InProcessSignal>;

/// A fresh ring of `data_size` bytes on the heap (control page, then data).
///
/// # Errors
///
/// [`Error::Setup`] unless `data_size` is a non-zero multiple of 4096.
///
/// # Examples
///
/// ```
/// use ring_core::vmbus::{IncomingRing, OutgoingPacket, OutgoingRing};
///
/// let (mem, layout) = ring_std::vmbus::heap_ring(8192)?;
/// assert_eq!(layout.data_size(), 8192);
/// let mut tx = OutgoingRing::new(mem.clone(), layout)?;
/// let mut rx = IncomingRing::new(mem, layout)?;
/// let _ = tx.send(&OutgoingPacket::in_band(1, &[b"one way"]))?;
/// assert_eq!(rx.read_packet()?.transaction_id(), 1);
/// assert!(ring_std::vmbus::heap_ring(1000).is_err()); // not whole pages
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn heap_ring(data_size: usize) -> Result<(RingMem, RingLayout), Error> {
    let layout = RingLayout::new(4096, data_size)?;
    let mem = Arc::new(HeapMem::new(layout.total_size()));
    initialize_ring(&mem, layout)?;
    Ok((mem, layout))
}

/// Both ends' rings: `(a's incoming, a's outgoing)` and `(b's ...)`, each
/// direction with `data_size` bytes of data.
///
/// # Errors
///
/// As [`heap_ring`].
///
/// # Examples
///
/// The rings of [`channel`] with a signal of your own, here a polling one:
///
/// ```
/// use ring_core::signal::NoSignal;
/// use ring_core::vmbus::{Blocking, OutgoingPacket};
///
/// let ((a_in, a_out), (b_in, b_out)) = ring_std::vmbus::ring_pairs(8192)?;
/// let mut a = Blocking::new(a_in, a_out, NoSignal);
/// let mut b = Blocking::new(b_in, b_out, NoSignal);
/// a.send(&OutgoingPacket::in_band(5, &[b"polled"]))?;
/// let mut buf = [0u8; 8];
/// let (info, _) = b.recv(&mut buf)?;
/// assert_eq!((info.transaction_id, &buf[..6]), (5, &b"polled"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[allow(clippy::type_complexity)] // Two pairs of rings, named in the doc.
pub fn ring_pairs(
    data_size: usize,
) -> Result<
    (
        (IncomingRing<RingMem>, OutgoingRing<RingMem>),
        (IncomingRing<RingMem>, OutgoingRing<RingMem>),
    ),
    Error,
> {
    let (a_to_b, layout) = heap_ring(data_size)?;
    let (b_to_a, _) = heap_ring(data_size)?;
    let a = (
        IncomingRing::new(b_to_a.clone(), layout)?,
        OutgoingRing::new(a_to_b.clone(), layout)?,
    );
    let b = (
        IncomingRing::new(a_to_b, layout)?,
        OutgoingRing::new(b_to_a, layout)?,
    );
    Ok((a, b))
}

/// A connected in-process channel with `data_size` bytes of ring each way.
///
/// # Errors
///
/// As [`heap_ring`].
///
/// # Examples
///
/// A request that asks for a completion, and its answer:
///
/// ```
/// use ring_core::vmbus::{OutgoingPacket, PacketType};
///
/// let (mut host, mut guest) = ring_std::vmbus::pair(16384)?;
/// host.send(&OutgoingPacket::in_band(1, &[b"status?"]).with_completion_requested())?;
/// let mut buf = [0u8; 64];
/// let (request, _) = guest.recv(&mut buf)?;
/// assert_eq!(&buf[..7], b"status?");
/// guest.send(&OutgoingPacket::completion(request.transaction_id, &[b"ok"]))?;
/// let (reply, len) = host.recv(&mut buf)?;
/// assert_eq!((reply.packet_type, reply.transaction_id), (PacketType::Completion, 1));
/// assert_eq!((&buf[..2], len), (&b"ok"[..], 8)); // padded to 8
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn pair(data_size: usize) -> Result<(PairChannel, PairChannel), Error> {
    let ((a_in, a_out), (b_in, b_out)) = ring_pairs(data_size)?;
    let (sa, sb) = InProcessSignal::pair();
    Ok((
        Blocking::new(a_in, a_out, sa),
        Blocking::new(b_in, b_out, sb),
    ))
}

/// The old name of [`pair`].
///
/// # Errors
///
/// As [`pair`].
#[deprecated(since = "0.1.0", note = "renamed `pair`, as `ring_std::vchan::pair`")]
pub fn channel(data_size: usize) -> Result<(PairChannel, PairChannel), Error> {
    pair(data_size)
}

/// A VMBus byte pipe as a blocking `std::io` stream. Reads return `Ok(0)`
/// at end of stream (the peer called [`close`](Self::close)); a signal's
/// timeout surfaces as its own error (`TimedOut` for [`InProcessSignal`]).
///
/// # Examples
///
/// 50 000 bytes through a 16 KiB ring, writer and reader on two threads:
///
/// ```
/// use std::io::{Read, Write};
///
/// let (mut a, mut b) = ring_std::vmbus::pipe_pair(16384)?;
/// let writer = std::thread::spawn(move || -> std::io::Result<()> {
///     a.write_all(&[b'v'; 50_000])?;
///     a.close()
/// });
/// let mut got = Vec::new();
/// b.read_to_end(&mut got)?; // until a's end of stream
/// writer.join().expect("writer panicked")?;
/// assert_eq!(got, vec![b'v'; 50_000]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct PipeStream<M, S> {
    inner: BlockingPipe<M, S>,
}

impl<M: SharedMem, S: Signal> PipeStream<M, S>
where
    S::Error: Into<io::Error>,
{
    /// Wraps a pipe's two rings and the channel's signal.
    ///
    /// # Examples
    ///
    /// What [`pipe_pair`] does, with a deadline on one side's waits:
    ///
    /// ```
    /// use ring_std::vmbus::{ring_pairs, PipeStream};
    /// use ring_std::InProcessSignal;
    /// use std::io::{Read, Write};
    /// use std::time::Duration;
    ///
    /// let ((a_in, a_out), (b_in, b_out)) = ring_pairs(8192)?;
    /// let (a_signal, mut b_signal) = InProcessSignal::pair();
    /// b_signal.set_timeout(Some(Duration::from_secs(5)));
    /// let mut a = PipeStream::new(a_in, a_out, a_signal);
    /// let mut b = PipeStream::new(b_in, b_out, b_signal);
    /// a.write_all(b"hi")?;
    /// let mut buf = [0u8; 2];
    /// b.read_exact(&mut buf)?;
    /// assert_eq!(&buf, b"hi");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(incoming: IncomingRing<M>, outgoing: OutgoingRing<M>, signal: S) -> Self {
        PipeStream {
            inner: BlockingPipe::new(PipeReader::new(incoming), PipeWriter::new(outgoing), signal),
        }
    }

    /// The blocking pipe inside.
    pub fn blocking(&mut self) -> &mut BlockingPipe<M, S> {
        &mut self.inner
    }

    /// Writes in place: waits until one packet with `want` data bytes
    /// fits (`want` is clamped to the pipe's chunk, at most 16 KiB), lets
    /// `fill` write them straight into the ring through a [`SpanWriter`]
    /// (`std::io::Write`, plus [`write_at`](SpanWriter::write_at)), and
    /// commits what it wrote as one packet. If `fill` fails, nothing is
    /// committed and its error is returned.
    ///
    /// Returns the bytes committed.
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// let (mut a, mut b) = ring_std::vmbus::pipe_pair(16 * 4096).unwrap();
    /// let n = a.write_in_place(4096, |w| {
    ///     for i in 0..100u32 {
    ///         w.write_all(&i.to_le_bytes())?;
    ///     }
    ///     Ok(())
    /// }).unwrap();
    /// assert_eq!(n, 400);
    /// let mut sum = 0u32;
    /// b.read_in_place(4096, |r| {
    ///     let mut word = [0u8; 4];
    ///     while r.read(&mut word)? == 4 {
    ///         sum += u32::from_le_bytes(word);
    ///     }
    ///     Ok(())
    /// }).unwrap();
    /// assert_eq!(sum, (0..100).sum());
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`std::io::Write::write`], and `fill`'s own.
    pub fn write_in_place(
        &mut self,
        want: usize,
        fill: impl FnOnce(&mut SpanWriter<'_, M>) -> io::Result<()>,
    ) -> io::Result<usize> {
        crate::io::write_in_place(fill, |f| self.inner.write_with(want, f).map_err(io_error))
    }

    /// Reads in place: waits for bytes, lets `drain` read up to `max` of
    /// them (across packets) straight out of the ring through a
    /// [`SpanReader`] (`std::io::Read`, plus
    /// [`read_at`](SpanReader::read_at)), and gives back what it read in
    /// order. If `drain` fails, nothing is given back and its error is
    /// returned.
    ///
    /// # Errors
    ///
    /// As for [`std::io::Read::read`], and `drain`'s own.
    ///
    /// # Examples
    ///
    /// ```
    /// use ring_core::loan::Drained;
    /// use std::io::{Read, Write};
    ///
    /// let (mut a, mut b) = ring_std::vmbus::pipe_pair(16384)?;
    /// a.write_all(b"abc")?;
    /// a.write_all(b"def")?; // a second packet
    /// let mut all = Vec::new();
    /// let took = b.read_in_place(64, |r| r.read_to_end(&mut all).map(drop))?;
    /// assert_eq!((took, all.as_slice()), (Drained::Took(6), &b"abcdef"[..]));
    /// a.close()?;
    /// assert_eq!(b.read_in_place(64, |_| Ok(()))?, Drained::End);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_in_place(
        &mut self,
        max: usize,
        drain: impl FnOnce(&mut SpanReader<'_, M>) -> io::Result<()>,
    ) -> io::Result<Drained> {
        crate::io::read_in_place(drain, |d| self.inner.read_with(max, d).map_err(io_error))
    }

    /// Sends end of stream.
    ///
    /// # Errors
    ///
    /// As for writes.
    ///
    /// # Examples
    ///
    /// A half-close: only our direction ends.
    ///
    /// ```
    /// use std::io::{Read, Write};
    ///
    /// let (mut a, mut b) = ring_std::vmbus::pipe_pair(16384)?;
    /// a.write_all(b"request")?;
    /// a.close()?;
    /// let mut request = String::new();
    /// b.read_to_string(&mut request)?; // ends at a's close
    /// b.write_all(b"reply")?; // b's direction still flows
    /// let mut reply = [0u8; 5];
    /// a.read_exact(&mut reply)?;
    /// assert_eq!((request.as_str(), &reply), ("request", b"reply"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(&mut self) -> io::Result<()> {
        self.inner.close().map_err(io_error)
    }

    /// Sends one message as one pipe packet (at most
    /// [`MAX_PIPE_PAYLOAD`](ring_core::vmbus::pipe::MAX_PIPE_PAYLOAD)
    /// bytes), blocking for room: the peer's
    /// [`recv_msg`](Self::recv_msg) gets exactly these bytes.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an empty message (size 0 is end of stream on
    /// the wire) or one too large for a packet; `BrokenPipe` after our
    /// close; as [`Write`](io::Write) otherwise.
    ///
    /// # Examples
    ///
    /// ```
    /// let (mut a, mut b) = ring_std::vmbus::pipe_pair(16384)?;
    /// a.send_msg(b"one")?;
    /// a.send_msg(b"three")?;
    /// a.close()?;
    /// let mut buf = [0u8; 64];
    /// let n = b.recv_msg(&mut buf)?;
    /// assert_eq!(&buf[..n], b"one");
    /// let n = b.recv_msg(&mut buf)?;
    /// assert_eq!(&buf[..n], b"three");
    /// assert_eq!(b.recv_msg(&mut buf)?, 0); // end of stream
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_msg(&mut self, msg: &[u8]) -> io::Result<()> {
        self.inner.send_msg(msg).map_err(io_error)
    }

    /// Receives one message into `buf`, blocking; returns its length, 0
    /// at the peer's end of stream (no message is empty).
    ///
    /// # Errors
    ///
    /// `InvalidInput` (nothing consumed) if `buf` is smaller than the
    /// message; as [`Read`](io::Read) otherwise.
    pub fn recv_msg(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.recv_msg(buf).map_err(io_error)
    }
}

impl PairPipe {
    /// Makes blocking calls fail with `TimedOut` after `timeout` without an
    /// event from the peer (`None`: wait for ever), as
    /// [`PairStream::set_timeout`](crate::vchan::PairStream::set_timeout).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::{ErrorKind, Read};
    /// use std::time::Duration;
    ///
    /// let (mut a, _b) = ring_std::vmbus::pipe_pair(16384)?;
    /// a.set_timeout(Some(Duration::from_millis(20)));
    /// let err = a.read(&mut [0u8; 8]).unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::TimedOut);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_timeout(&mut self, timeout: Option<std::time::Duration>) {
        self.inner.signal_mut().set_timeout(timeout);
    }
}

impl<M: SharedMem, S: Signal> io::Read for PipeStream<M, S>
where
    S::Error: Into<io::Error>,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(io_error)
    }
}

impl<M: SharedMem, S: Signal> io::Write for PipeStream<M, S>
where
    S::Error: Into<io::Error>,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).map_err(io_error)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connected in-process byte pipe with `data_size` bytes of ring each way.
///
/// # Errors
///
/// As [`heap_ring`].
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
///
/// let (mut a, mut b) = ring_std::vmbus::pipe_pair(16384)?;
/// a.write_all(b"ping")?;
/// let mut buf = [0u8; 4];
/// b.read_exact(&mut buf)?;
/// assert_eq!(&buf, b"ping");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn pipe_pair(data_size: usize) -> Result<(PairPipe, PairPipe), Error> {
    let ((a_in, a_out), (b_in, b_out)) = ring_pairs(data_size)?;
    let (sa, sb) = InProcessSignal::pair();
    Ok((
        PipeStream::new(a_in, a_out, sa),
        PipeStream::new(b_in, b_out, sb),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring_core::vmbus::{OutgoingPacket, PacketType};
    use std::io::{Read, Write};
    use std::time::Duration;

    #[test]
    fn packets_across_threads_both_ways() {
        let (mut a, mut b) = pair(8192).unwrap();
        const N: u64 = 5_000;
        let echo = std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            for _ in 0..N {
                let (info, len) = b.recv(&mut buf).unwrap();
                let reply = [&buf[..len]];
                b.send(&OutgoingPacket::completion(info.transaction_id, &reply))
                    .unwrap();
            }
        });
        let sender = std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            let mut sent = 0u64;
            let mut got = 0u64;
            // Two requests in flight: enough to fill the rings now and then,
            // few enough that all their completions fit, so the echo side
            // can never block on a full ring while we block on ours.
            while got < N {
                while sent < N && sent - got < 2 {
                    let body = vec![sent as u8; (sent as usize * 37) % 3000];
                    a.send(&OutgoingPacket::in_band(sent, &[&body])).unwrap();
                    sent += 1;
                }
                let (info, len) = a.recv(&mut buf).unwrap();
                assert_eq!(info.packet_type, PacketType::Completion);
                assert_eq!(info.transaction_id, got);
                assert_eq!(len, ((got as usize * 37) % 3000).next_multiple_of(8));
                assert!(buf[..(got as usize * 37) % 3000]
                    .iter()
                    .all(|&x| x == got as u8));
                got += 1;
            }
        });
        sender.join().unwrap();
        echo.join().unwrap();
    }

    #[test]
    fn byte_pipe_stream_with_eof() {
        let (mut a, mut b) = pipe_pair(16384).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 + i / 977) as u8).collect();
        let expect = data.clone();
        let writer = std::thread::spawn(move || {
            a.write_all(&data).unwrap();
            a.close().unwrap();
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert!(got == expect);
    }

    #[test]
    fn blocking_read_times_out() {
        let ((a_in, a_out), _b) = ring_pairs(4096).unwrap();
        let (mut sa, _sb) = InProcessSignal::pair();
        sa.set_timeout(Some(Duration::from_millis(20)));
        let mut a = PipeStream::new(a_in, a_out, sa);
        let err = a.read(&mut [0; 8]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
