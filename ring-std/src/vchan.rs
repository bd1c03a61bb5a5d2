//! Blocking `std::io` over a vchan endpoint, and in-process pairs.

use crate::io::io_error;
use crate::{HeapMem, InProcessSignal};
use ring_core::loan::{Drained, SpanReader, SpanWriter};
use ring_core::mem::SharedMem;
use ring_core::signal::Signal;
use ring_core::vchan::{self, Blocking, BlockingError, Endpoint, Error, Orders, ServerOptions};
use std::io;
use std::sync::Arc;

/// A vchan endpoint as a blocking byte stream (`Read` + `Write`), plus
/// packet calls. Reads return `Ok(0)` at end of stream (peer closed and
/// ring drained); writes to a closed peer fail with `BrokenPipe`; a
/// signal's timeout surfaces as its own error (`TimedOut` for
/// [`InProcessSignal`]).
///
/// # Examples
///
/// 100 000 bytes through a 1 KiB ring, each side blocking on the other:
///
/// ```
/// use std::io::{Read, Write};
///
/// let (mut server, mut client) = ring_std::vchan::pair(0, 0)?;
/// let writer = std::thread::spawn(move || -> std::io::Result<()> {
///     client.write_all(&vec![b'z'; 100_000])?;
///     client.close()
/// });
/// let mut got = Vec::new();
/// server.read_to_end(&mut got)?; // until the client's close
/// writer.join().expect("writer panicked")?;
/// assert_eq!(got, vec![b'z'; 100_000]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Stream<M, S> {
    inner: Blocking<M, S>,
}

impl<M: SharedMem, S: Signal> Stream<M, S>
where
    S::Error: Into<io::Error>,
{
    /// Wraps a connected endpoint and its signal.
    ///
    /// # Examples
    ///
    /// What [`pair`] does, with 4 KiB rings in pages of their own:
    ///
    /// ```
    /// use ring_core::vchan::{self, FlatLayout, Orders, ServerOptions};
    /// use ring_std::vchan::Stream;
    /// use ring_std::{HeapMem, InProcessSignal};
    /// use std::io::{Read, Write};
    /// use std::sync::Arc;
    ///
    /// let orders = Orders::new(12, 12)?;
    /// let mem = Arc::new(HeapMem::new(FlatLayout::new(orders).size));
    /// let server = vchan::serve_flat(mem.clone(), orders, ServerOptions::default())?;
    /// let client = vchan::connect_flat(mem)?;
    /// let (server_signal, client_signal) = InProcessSignal::pair();
    /// let mut server = Stream::new(server, server_signal);
    /// let mut client = Stream::new(client, client_signal);
    /// client.write_all(b"4 KiB each way")?;
    /// let mut buf = [0u8; 14];
    /// server.read_exact(&mut buf)?;
    /// assert_eq!(&buf, b"4 KiB each way");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(endpoint: Endpoint<M>, signal: S) -> Self {
        Stream {
            inner: Blocking::new(endpoint, signal),
        }
    }

    /// The blocking wrapper inside.
    pub fn blocking(&mut self) -> &mut Blocking<M, S> {
        &mut self.inner
    }

    /// Sends `buf` as one packet (all or nothing), blocking for space.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::ErrorKind;
    ///
    /// let (mut server, mut client) = ring_std::vchan::pair(4096, 4096)?;
    /// client.send(&[1, 2, 3, 4])?;
    /// let mut packet = [0u8; 4];
    /// server.recv(&mut packet)?;
    /// assert_eq!(packet, [1, 2, 3, 4]);
    /// // Larger than the 4 KiB ring: it could never go.
    /// assert_eq!(client.send(&[0u8; 8192]).unwrap_err().kind(), ErrorKind::InvalidInput);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.send(buf).map_err(io_error)
    }

    /// Receives exactly `buf.len()` bytes as one packet.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::{ErrorKind, Write};
    ///
    /// let (mut server, mut client) = ring_std::vchan::pair(0, 0)?;
    /// client.write_all(b"abcdxyz")?;
    /// client.close()?;
    /// let mut four = [0u8; 4];
    /// server.recv(&mut four)?;
    /// assert_eq!(&four, b"abcd");
    /// // Three bytes, then the end of the stream: never a whole packet.
    /// assert_eq!(server.recv(&mut four).unwrap_err().kind(), ErrorKind::BrokenPipe);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.recv(buf).map_err(io_error)
    }

    /// Writes in place: waits until `want` bytes are free (at most the
    /// ring's capacity), lets `fill` write them straight into the ring
    /// through a [`SpanWriter`] (`std::io::Write`, plus
    /// [`write_at`](SpanWriter::write_at) for fields filled in last), and
    /// publishes what it wrote in one piece. If `fill` fails, nothing is
    /// published and its error is returned.
    ///
    /// Returns the bytes published.
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// let (mut a, mut b) = ring_std::vchan::pair(4096, 4096).unwrap();
    /// // A length-prefixed record, serialized in the ring itself.
    /// let n = a
    ///     .write_in_place(64, |w| {
    ///         w.write_all(&[0; 2])?; // length, patched below
    ///         write!(w, "temperature={:.1}", 21.5)?;
    ///         let body = (w.len() - 2) as u16;
    ///         Ok(w.write_at(0, &body.to_le_bytes())?)
    ///     })
    ///     .unwrap();
    /// assert_eq!(n, 18);
    /// // The reader parses in place too.
    /// let mut text = String::new();
    /// b.read_in_place(n, |r| {
    ///     let mut len = [0u8; 2];
    ///     r.read_exact(&mut len)?;
    ///     r.take(u16::from_le_bytes(len).into()).read_to_string(&mut text)?;
    ///     Ok(())
    /// })
    /// .unwrap();
    /// assert_eq!(text, "temperature=21.5");
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
    /// them straight out of the ring through a [`SpanReader`]
    /// (`std::io::Read`, end of file at the end of what is offered, plus
    /// [`read_at`](SpanReader::read_at)), and gives back to the writer
    /// what it read in order. If `drain` fails, nothing is given back
    /// and its error is returned.
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
    /// let (mut server, mut client) = ring_std::vchan::pair(0, 0)?;
    /// client.write_all(b"GET /\r\n")?;
    /// client.close()?;
    /// let mut line = String::new();
    /// let took = server.read_in_place(64, |r| r.read_to_string(&mut line).map(drop))?;
    /// assert_eq!((took, line.as_str()), (Drained::Took(7), "GET /\r\n"));
    /// assert_eq!(server.read_in_place(64, |_| Ok(()))?, Drained::End);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_in_place(
        &mut self,
        max: usize,
        drain: impl FnOnce(&mut SpanReader<'_, M>) -> io::Result<()>,
    ) -> io::Result<Drained> {
        crate::io::read_in_place(drain, |d| self.inner.read_with(max, d).map_err(io_error))
    }

    /// Closes our end and wakes the peer.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::{ErrorKind, Read, Write};
    ///
    /// let (mut server, mut client) = ring_std::vchan::pair(0, 0)?;
    /// client.write_all(b"bye")?;
    /// client.close()?;
    /// let mut buf = [0u8; 8];
    /// assert_eq!(server.read(&mut buf)?, 3); // bytes before the close arrive
    /// assert_eq!(server.read(&mut buf)?, 0); // then end of stream
    /// assert_eq!(server.write(b"x").unwrap_err().kind(), ErrorKind::BrokenPipe);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(&mut self) -> io::Result<()> {
        self.inner.close().map_err(io_error)
    }
}

impl<M: SharedMem, S: Signal> io::Read for Stream<M, S>
where
    S::Error: Into<io::Error>,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(io_error)
    }
}

impl<M: SharedMem, S: Signal> io::Write for Stream<M, S>
where
    S::Error: Into<io::Error>,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).map_err(io_error)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.inner.write_vectored(bufs).map_err(io_error)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One end of an in-process pair.
pub type PairStream = Stream<Arc<HeapMem>, InProcessSignal>;

impl PairStream {
    /// Makes blocking calls fail with `TimedOut` after `timeout` without an
    /// event from the peer (`None`: wait for ever).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::{ErrorKind, Read};
    /// use std::time::Duration;
    ///
    /// let (mut server, _client) = ring_std::vchan::pair(0, 0)?;
    /// server.set_timeout(Some(Duration::from_millis(20)));
    /// // The client's connect kick ends the first wait; the second times out.
    /// let err = server.read(&mut [0u8; 8]).unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::TimedOut);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_timeout(&mut self, timeout: Option<std::time::Duration>) {
        self.inner.signal_mut().set_timeout(timeout);
    }
}

/// A connected in-process vchan: `(server, client)`, with ring orders chosen
/// as libxenvchan's server would for `read_min` (client→server) and
/// `write_min` (server→client).
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
///
/// // The server reads at least 1 KiB at a time, and writes 64 KiB.
/// let (mut server, mut client) = ring_std::vchan::pair(1024, 65536)?;
/// assert!(server.blocking().endpoint().read_capacity() >= 1024);
/// assert_eq!(server.blocking().endpoint().write_capacity(), 65536);
/// server.write_all(b"welcome")?;
/// let mut buf = [0u8; 7];
/// client.read_exact(&mut buf)?;
/// assert_eq!(&buf, b"welcome");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn pair(read_min: usize, write_min: usize) -> Result<(PairStream, PairStream), Error> {
    pair_with(
        Orders::for_sizes(read_min, write_min)?,
        ServerOptions::default(),
    )
}

/// A connected in-process vchan with explicit orders and server options.
///
/// # Examples
///
/// ```
/// use ring_core::vchan::{Orders, ServerOptions};
/// use std::io::{Read, Write};
///
/// // Indices that start just short of the u32 wrap, to test it.
/// let options = ServerOptions { initial_index: u32::MAX - 100 };
/// let (mut server, mut client) = ring_std::vchan::pair_with(Orders::new(10, 11)?, options)?;
/// client.write_all(&[9u8; 1000])?;
/// let mut buf = [0u8; 1000];
/// server.read_exact(&mut buf)?;
/// assert_eq!(buf, [9u8; 1000]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn pair_with(
    orders: Orders,
    options: ServerOptions,
) -> Result<(PairStream, PairStream), Error> {
    let mem = Arc::new(HeapMem::new(vchan::FlatLayout::new(orders).size));
    let server = vchan::serve_flat(mem.clone(), orders, options)?;
    let client = vchan::connect_flat(mem)?;
    let (server_signal, client_signal) = InProcessSignal::pair();
    let client = Stream::new(client, client_signal);
    // The client's connect kick, as libxenvchan sends it.
    client.inner.kick().map_err(|e| match e {
        BlockingError::Ring(e) => e,
        BlockingError::Signal(_) | BlockingError::PeerGone => Error::Closed,
    })?;
    Ok((Stream::new(server, server_signal), client))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    #[test]
    fn stream_across_threads_with_eof() {
        let (mut server, mut client) = pair(0, 0).unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let expect = data.clone();
        let writer = std::thread::spawn(move || {
            client.write_all(&data).unwrap();
            client.close().unwrap();
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(got.len(), expect.len());
        assert!(got == expect);
        // Writing to a closed peer is a broken pipe.
        assert_eq!(
            server.write(b"x").unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
    }

    #[test]
    fn vectored_writes_arrive_in_order() {
        let (mut server, mut client) = pair(0, 0).unwrap();
        let writer = std::thread::spawn(move || {
            for i in 0..10_000u32 {
                let head = i.to_le_bytes();
                let body = [(i % 251) as u8; 60];
                let mut bufs = [io::IoSlice::new(&head), io::IoSlice::new(&body)];
                let mut bufs = &mut bufs[..];
                while !bufs.is_empty() {
                    let n = client.write_vectored(bufs).unwrap();
                    io::IoSlice::advance_slices(&mut bufs, n);
                }
            }
            client.close().unwrap();
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(got.len(), 10_000 * 64);
        for (i, msg) in got.chunks(64).enumerate() {
            assert_eq!(msg[..4], (i as u32).to_le_bytes());
            assert!(msg[4..].iter().all(|&b| b == (i % 251) as u8));
        }
    }

    #[test]
    fn read_times_out_without_data() {
        let (mut server, _client) = pair(0, 0).unwrap();
        server
            .blocking()
            .endpoint()
            .read(&mut [0; 1])
            .expect_err("empty ring");
        let (ep, mut sig) = server.inner.into_parts();
        sig.set_timeout(Some(Duration::from_millis(30)));
        let mut server = Stream::new(ep, sig);
        // The connect kick is pending: the first wait consumes it, the second times out.
        let err = server.read(&mut [0; 8]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn packets_are_all_or_nothing() {
        let (mut server, mut client) = pair(4096, 4096).unwrap();
        client.send(&[7u8; 4096]).unwrap();
        let mut big = vec![0u8; 4097];
        let err = server.recv(&mut big).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let mut buf = vec![0u8; 4096];
        server.recv(&mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
    }
}
