//! Blocking use of an endpoint on a host-supplied [`Signal`], and a
//! spin-locked handle for sharing one endpoint between tasks.

use super::{Endpoint, Error, Transfer};
use crate::mem::SharedMem;
use crate::signal::{wait_or_last_pass, Signal};

/// Why a blocking call on a vchan ring failed.
pub type BlockingError<E> = crate::signal::BlockingError<Error, E>;

impl<E> From<Error> for BlockingError<E> {
    fn from(e: Error) -> Self {
        BlockingError::Ring(e)
    }
}

/// An endpoint that blocks on a [`Signal`] instead of returning
/// [`Error::WouldBlock`], and kicks the peer whenever the protocol says so.
///
/// Implements the `embedded-io` traits; ring-std builds `std::io` on it.
#[derive(Debug)]
pub struct Blocking<M, S> {
    endpoint: Endpoint<M>,
    signal: S,
    /// The signal reported the peer gone; the ring gets one last look.
    last_pass: bool,
}

impl<M: SharedMem, S: Signal> Blocking<M, S> {
    /// Wraps a connected endpoint and the event channel to its peer.
    pub fn new(endpoint: Endpoint<M>, signal: S) -> Self {
        Blocking {
            endpoint,
            signal,
            last_pass: false,
        }
    }

    /// The endpoint inside.
    pub fn endpoint(&mut self) -> &mut Endpoint<M> {
        &mut self.endpoint
    }

    /// The signal inside.
    pub fn signal(&self) -> &S {
        &self.signal
    }

    /// The signal inside, mutably (e.g. to set a timeout).
    pub fn signal_mut(&mut self) -> &mut S {
        &mut self.signal
    }

    /// Takes the endpoint and signal apart again.
    pub fn into_parts(self) -> (Endpoint<M>, S) {
        (self.endpoint, self.signal)
    }

    /// Kicks the peer unconditionally (e.g. once after a client connects).
    pub fn kick(&self) -> Result<(), BlockingError<S::Error>> {
        self.signal.notify().map_err(BlockingError::Signal)
    }

    fn settle(&self, t: Transfer) -> Result<usize, BlockingError<S::Error>> {
        if t.notify {
            self.kick()?;
        }
        Ok(t.len)
    }

    /// Runs `op` until it stops saying "would block", waiting on the signal
    /// in between.
    fn retry(
        &mut self,
        mut op: impl FnMut(&mut Endpoint<M>) -> Result<Transfer, Error>,
    ) -> Result<usize, BlockingError<S::Error>> {
        loop {
            match op(&mut self.endpoint) {
                Ok(t) => return self.settle(t),
                Err(Error::WouldBlock) => wait_or_last_pass(&self.signal, &mut self.last_pass)?,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads at least one byte; `Ok(0)` is end of stream.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, BlockingError<S::Error>> {
        self.retry(|ep| ep.read(buf))
    }

    /// Writes at least one byte of `buf` (all of it if it fits).
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, BlockingError<S::Error>> {
        self.retry(|ep| ep.write(buf))
    }

    /// Writes at least one byte of `bufs`, gathered in order under one
    /// publish (all of them if they fit); see [`Endpoint::write_vectored`].
    pub fn write_vectored<B: core::ops::Deref<Target = [u8]>>(
        &mut self,
        bufs: &[B],
    ) -> Result<usize, BlockingError<S::Error>> {
        self.retry(|ep| ep.write_vectored(bufs))
    }

    /// Sends `bufs` as one packet (all or nothing); see
    /// [`Endpoint::send_vectored`].
    pub fn send_vectored<B: core::ops::Deref<Target = [u8]>>(
        &mut self,
        bufs: &[B],
    ) -> Result<(), BlockingError<S::Error>> {
        self.retry(|ep| ep.send_vectored(bufs)).map(drop)
    }

    /// Writes all of `buf`, in as many pieces as the ring needs.
    pub fn write_all(&mut self, mut buf: &[u8]) -> Result<(), BlockingError<S::Error>> {
        while !buf.is_empty() {
            let n = self.write(buf)?;
            buf = buf.get(n..).unwrap_or(&[]);
        }
        Ok(())
    }

    /// Receives exactly `buf.len()` bytes as one packet.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<(), BlockingError<S::Error>> {
        self.retry(|ep| ep.recv(buf)).map(drop)
    }

    /// Sends `buf` as one packet (all or nothing).
    pub fn send(&mut self, buf: &[u8]) -> Result<(), BlockingError<S::Error>> {
        self.retry(|ep| ep.send(buf)).map(drop)
    }

    /// Closes our end and kicks the peer.
    pub fn close(&mut self) -> Result<(), BlockingError<S::Error>> {
        let t = self.endpoint.close()?;
        self.settle(t).map(drop)
    }
}

impl<M, S: Signal> embedded_io::ErrorType for Blocking<M, S> {
    type Error = BlockingError<S::Error>;
}

impl<M: SharedMem, S: Signal> embedded_io::Read for Blocking<M, S> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        Blocking::read(self, buf)
    }
}

impl<M: SharedMem, S: Signal> embedded_io::Write for Blocking<M, S> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        Blocking::write(self, buf)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        // Bytes are visible to the peer as soon as `write` returns.
        Ok(())
    }
}

impl<M: SharedMem, S: Signal> embedded_io::ReadReady for Blocking<M, S> {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        // Ready if data is waiting, or if a read would report end of stream.
        Ok(self.endpoint.data_ready()? > 0 || !self.endpoint.is_open()?)
    }
}

impl<M: SharedMem, S: Signal> embedded_io::WriteReady for Blocking<M, S> {
    fn write_ready(&mut self) -> Result<bool, Self::Error> {
        Ok(self.endpoint.buffer_space()? > 0 || !self.endpoint.is_open()?)
    }
}

/// One endpoint shared by several tasks of a `no_std` guest behind a spin
/// lock. Each call holds the lock for one non-blocking operation only, so a
/// task never sleeps while holding it.
#[derive(Debug)]
pub struct SharedEndpoint<M> {
    inner: spin::Mutex<Endpoint<M>>,
}

impl<M: SharedMem> SharedEndpoint<M> {
    /// Shares `endpoint`.
    pub fn new(endpoint: Endpoint<M>) -> Self {
        SharedEndpoint {
            inner: spin::Mutex::new(endpoint),
        }
    }

    /// Runs one operation on the endpoint under the lock.
    pub fn with<R>(&self, op: impl FnOnce(&mut Endpoint<M>) -> R) -> R {
        op(&mut self.inner.lock())
    }

    /// Non-blocking stream read; see [`Endpoint::read`].
    pub fn read(&self, buf: &mut [u8]) -> Result<Transfer, Error> {
        self.with(|ep| ep.read(buf))
    }

    /// Non-blocking stream write; see [`Endpoint::write`].
    pub fn write(&self, buf: &[u8]) -> Result<Transfer, Error> {
        self.with(|ep| ep.write(buf))
    }

    /// Non-blocking packet receive; see [`Endpoint::recv`].
    pub fn recv(&self, buf: &mut [u8]) -> Result<Transfer, Error> {
        self.with(|ep| ep.recv(buf))
    }

    /// Non-blocking packet send; see [`Endpoint::send`].
    pub fn send(&self, buf: &[u8]) -> Result<Transfer, Error> {
        self.with(|ep| ep.send(buf))
    }

    /// Takes the endpoint back.
    pub fn into_inner(self) -> Endpoint<M> {
        self.inner.into_inner()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::mem::RawMem;
    use crate::signal::NoSignal;
    use crate::vchan::{connect_flat, serve_flat, Orders, ServerOptions};
    use core::sync::atomic::AtomicU64;
    use embedded_io::{Read, ReadReady, Write, WriteReady};
    use std::vec::Vec;

    #[test]
    fn embedded_io_over_a_polling_signal() {
        let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
        let mem = RawMem::from_atomics(&words);
        let orders = Orders::new(10, 11).unwrap();
        let server = serve_flat(mem, orders, ServerOptions::default()).unwrap();
        let client = connect_flat(mem).unwrap();
        let mut server = Blocking::new(server, NoSignal);
        let mut client = Blocking::new(client, NoSignal);
        assert!(!server.read_ready().unwrap());
        assert!(client.write_ready().unwrap());
        Write::write_all(&mut client, b"over embedded-io").unwrap();
        assert!(server.read_ready().unwrap());
        let mut buf = [0u8; 16];
        Read::read_exact(&mut server, &mut buf).unwrap();
        assert_eq!(&buf, b"over embedded-io");
        client.close().unwrap();
        // End of stream is readable (it reports EOF at once).
        assert!(server.read_ready().unwrap());
        assert_eq!(Read::read(&mut server, &mut buf).unwrap(), 0);
        let err = Write::write(&mut server, b"x").unwrap_err();
        assert_eq!(
            embedded_io::Error::kind(&err),
            embedded_io::ErrorKind::BrokenPipe
        );
    }

    #[test]
    fn shared_endpoint_serialises_tasks() {
        let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
        let mem = RawMem::from_atomics(&words);
        let orders = Orders::new(10, 11).unwrap();
        let server =
            SharedEndpoint::new(serve_flat(mem, orders, ServerOptions::default()).unwrap());
        let client = SharedEndpoint::new(connect_flat(mem).unwrap());
        std::thread::scope(|s| {
            for task in 0..4u8 {
                let client = &client;
                s.spawn(move || {
                    let mut sent = 0;
                    while sent < 100 {
                        match client.send(&[task; 4]) {
                            Ok(_) => sent += 1,
                            Err(Error::WouldBlock) => std::thread::yield_now(),
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                });
            }
            let mut counts = [0u32; 4];
            let mut got = 0;
            while got < 400 {
                let mut packet = [0u8; 4];
                match server.recv(&mut packet) {
                    Ok(_) => {
                        // Packets from different tasks never interleave.
                        assert!(packet.iter().all(|&b| b == packet[0]));
                        counts[usize::from(packet[0])] += 1;
                        got += 1;
                    }
                    Err(Error::WouldBlock) => std::thread::yield_now(),
                    Err(e) => panic!("{e:?}"),
                }
            }
            assert_eq!(counts, [100; 4]);
        });
    }

    /// A peer that publishes bytes and dies while we are about to sleep:
    /// the wait reports it gone, and the bytes are still delivered before
    /// the error.
    #[test]
    fn bytes_published_before_the_peer_died_are_delivered() {
        use core::cell::RefCell;

        struct DyingPeer<'a> {
            peer: RefCell<Endpoint<RawMem<'a>>>,
        }
        impl Signal for DyingPeer<'_> {
            type Error = &'static str;
            fn notify(&self) -> Result<(), &'static str> {
                Ok(())
            }
            fn wait(&self) -> Result<(), &'static str> {
                // The peer's last act: publish three bytes, then vanish
                // without closing and without a kick.
                let _ = self.peer.borrow_mut().write(b"end");
                Err("peer gone")
            }
            fn is_peer_gone(error: &&'static str) -> bool {
                *error == "peer gone"
            }
        }

        let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
        let mem = RawMem::from_atomics(&words);
        let orders = Orders::new(10, 11).unwrap();
        let server = serve_flat(mem, orders, ServerOptions::default()).unwrap();
        let client = connect_flat(mem).unwrap();
        let mut server = Blocking::new(
            server,
            DyingPeer {
                peer: RefCell::new(client),
            },
        );
        let mut buf = [0u8; 8];
        assert_eq!(server.read(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"end");
        // Now the error surfaces.
        assert!(matches!(
            server.read(&mut buf),
            Err(BlockingError::Signal("peer gone"))
        ));
    }
}
