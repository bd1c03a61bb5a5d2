//! A VMBus pipe between two processes: one memfd holding both rings, the
//! same eventfds and hang-up detection as the vchan stream.
//!
//! # Layout
//!
//! The memfd holds two VMBus rings back to back, each a 4 KiB control page
//! and its data area: first the client→server ring, then the
//! server→client ring. Each side sees its rings through a
//! [`Window`], so a ring's code cannot reach the
//! other ring.
//!
//! # Framing and end of stream
//!
//! Bytes travel as pipe packets ([`ring_core::vmbus::pipe`]), as hv_sock
//! frames them; a zero-length data packet is end of stream. VMBus has no
//! live byte: [`VmbusPipe::close`] sends end of stream, and a peer that
//! dies is noticed through the rendezvous socket, exactly as for vchan.

use crate::eventfd::{EventSignal, Woken};
use crate::memfd::MemFd;
use crate::stream::{woken, PollStream};
use crate::window::Window;
use crate::Error;
use ring_core::vmbus::pipe::{PipeReader, PipeWriter, MAX_PIPE_PAYLOAD};
use ring_core::vmbus::{self, BlockingPipe, IncomingRing, OutgoingRing, RingLayout};
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Instant;

/// The memory of one VMBus ring in the shared memfd.
pub type RingMem = Window<Arc<MemFd>>;

/// Where the two rings of a channel lie in its memfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelLayout {
    /// The client→server ring, at offset 0.
    pub to_server: RingLayout,
    /// The server→client ring, right after it.
    pub to_client: RingLayout,
}

impl ChannelLayout {
    /// Rings with `to_server` and `to_client` data bytes (multiples of
    /// 4 KiB).
    ///
    /// # Errors
    ///
    /// [`Error::Vmbus`] for sizes VMBus cannot use.
    pub fn new(to_server: usize, to_client: usize) -> Result<Self, Error> {
        let ring = |size| RingLayout::new(vmbus::layout::DEFAULT_DATA_OFFSET, size);
        Ok(ChannelLayout {
            to_server: ring(to_server)?,
            to_client: ring(to_client)?,
        })
    }

    /// Sizes rounded up to whole 4 KiB pages (at least one).
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn rounded(to_server: usize, to_client: usize) -> Result<Self, Error> {
        let up = |n: usize| n.max(1).div_ceil(4096).saturating_mul(4096);
        Self::new(up(to_server), up(to_client))
    }

    /// Offset of the server→client ring.
    pub fn to_client_offset(&self) -> usize {
        self.to_server.total_size()
    }

    /// Bytes the memfd must have.
    pub fn total_size(&self) -> usize {
        self.to_server.total_size() + self.to_client.total_size()
    }

    /// The two rings' memories: (client→server, server→client).
    ///
    /// # Errors
    ///
    /// [`Error::Vmbus`] if `mem` is smaller than the layout.
    pub fn windows(&self, mem: &Arc<MemFd>) -> Result<(RingMem, RingMem), Error> {
        let small = || {
            Error::Vmbus(vmbus::Error::Setup(vmbus::SetupError::MemoryTooSmall {
                needed: self.total_size(),
                available: mem.len(),
            }))
        };
        let a = Window::new(mem.clone(), 0, self.to_server.total_size()).ok_or_else(small)?;
        let b = Window::new(
            mem.clone(),
            self.to_client_offset(),
            self.to_client.total_size(),
        )
        .ok_or_else(small)?;
        Ok((a, b))
    }
}

/// One end of a VMBus pipe between two processes: ring-core's
/// [`BlockingPipe`] on an [`EventSignal`].
///
/// The pipe has a half-close of its own: [`close`](Self::close) sends end
/// of stream our way only, and the peer's direction flows on.
#[derive(Debug)]
pub struct VmbusPipe {
    inner: BlockingPipe<RingMem, EventSignal>,
    mem: Arc<MemFd>,
}

impl VmbusPipe {
    /// The server's end over `mem` laid out as `layout`; initialises both
    /// rings (do this before the client maps them).
    ///
    /// # Errors
    ///
    /// [`Error::Vmbus`] if the memory does not fit the layout.
    pub fn serve(
        mem: Arc<MemFd>,
        layout: ChannelLayout,
        signal: EventSignal,
    ) -> Result<Self, Error> {
        let (to_server, to_client) = layout.windows(&mem)?;
        vmbus::initialize_ring(&to_server, layout.to_server)?;
        vmbus::initialize_ring(&to_client, layout.to_client)?;
        let rx = IncomingRing::new(to_server, layout.to_server)?;
        let tx = OutgoingRing::new(to_client, layout.to_client)?;
        Ok(Self::from_rings(rx, tx, signal, mem))
    }

    /// The client's end over memory the server initialised.
    ///
    /// # Errors
    ///
    /// [`Error::Vmbus`] if the memory does not fit the layout or its
    /// indices are invalid.
    pub fn connect(
        mem: Arc<MemFd>,
        layout: ChannelLayout,
        signal: EventSignal,
    ) -> Result<Self, Error> {
        let (to_server, to_client) = layout.windows(&mem)?;
        let rx = IncomingRing::new(to_client, layout.to_client)?;
        let tx = OutgoingRing::new(to_server, layout.to_server)?;
        Ok(Self::from_rings(rx, tx, signal, mem))
    }

    /// An end over two rings somebody else initialised and placed: `rx`
    /// is the ring we read, `tx` the one we write, both windows of `mem`.
    ///
    /// # Errors
    ///
    /// [`Error::Vmbus`] if a window does not fit its layout or a ring's
    /// indices are invalid.
    pub fn attach(
        mem: Arc<MemFd>,
        rx: (RingMem, RingLayout),
        tx: (RingMem, RingLayout),
        signal: EventSignal,
    ) -> Result<Self, Error> {
        let rx = IncomingRing::new(rx.0, rx.1)?;
        let tx = OutgoingRing::new(tx.0, tx.1)?;
        Ok(Self::from_rings(rx, tx, signal, mem))
    }

    fn from_rings(
        rx: IncomingRing<RingMem>,
        tx: OutgoingRing<RingMem>,
        signal: EventSignal,
        mem: Arc<MemFd>,
    ) -> Self {
        let mut writer = PipeWriter::new(tx);
        writer.set_chunk(MAX_PIPE_PAYLOAD);
        VmbusPipe {
            inner: BlockingPipe::new(PipeReader::new(rx), writer, signal),
            mem,
        }
    }

    /// The shared memory (both rings).
    pub fn memory(&self) -> &Arc<MemFd> {
        &self.mem
    }

    /// ring-core's blocking pipe inside.
    pub fn blocking(&mut self) -> &mut BlockingPipe<RingMem, EventSignal> {
        &mut self.inner
    }

    /// The signal inside, to change its spin or timeout.
    pub fn signal_mut(&mut self) -> &mut EventSignal {
        self.inner.signal_mut()
    }

    /// Whether the peer has been seen to hang up.
    pub fn peer_gone(&self) -> bool {
        self.inner.peer_gone()
    }

    /// Kicks the peer whether or not it is owed a signal (to unstick it).
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if the eventfd write fails.
    pub fn kick(&self) -> Result<(), Error> {
        Ok(self.inner.kick()?)
    }

    /// Bytes of packets waiting in the ring we read (no arming).
    ///
    /// # Errors
    ///
    /// [`Error::Vmbus`] if the peer's write index is invalid.
    pub fn unread(&mut self) -> Result<usize, Error> {
        Ok(self.inner.reader().ring().available()?)
    }

    /// Reads at least one byte, blocking; `Ok(0)` is end of stream.
    ///
    /// # Errors
    ///
    /// [`Error::PeerGone`] if the peer died (after what it sent was read);
    /// [`Error::TimedOut`]; [`Error::Vmbus`].
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        Ok(self.inner.read(buf)?)
    }

    /// Writes at least one byte of `buf`, blocking.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after our close; [`Error::PeerGone`];
    /// [`Error::TimedOut`].
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, Error> {
        Ok(self.inner.write(buf)?)
    }

    /// Writes all of `buf`.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    pub fn write_all(&mut self, buf: &[u8]) -> Result<(), Error> {
        Ok(self.inner.write_all(buf)?)
    }

    /// Sends one message as one packet (at most 16 KiB), blocking.
    ///
    /// # Errors
    ///
    /// [`Error::Vmbus`] with `TooLarge`; [`Error::Closed`];
    /// [`Error::PeerGone`].
    pub fn send_msg(&mut self, msg: &[u8]) -> Result<(), Error> {
        Ok(self.inner.send_msg(msg)?)
    }

    /// Receives one message into `buf`, blocking; returns its length.
    ///
    /// # Errors
    ///
    /// [`Error::Vmbus`] with `OutOfRange` if `buf` is too small (nothing is
    /// consumed); [`Error::PeerGone`] if the peer died.
    pub fn recv_msg(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        Ok(self.inner.recv_msg(buf)?)
    }

    /// Blocks until the peer has consumed every packet we sent.
    ///
    /// # Errors
    ///
    /// [`Error::PeerGone`]; [`Error::TimedOut`].
    pub fn wait_delivered(&mut self) -> Result<(), Error> {
        Ok(self.inner.wait_delivered()?)
    }

    /// Sends end of stream (our direction only), waiting for room for it
    /// as long as the peer lives. Idempotent.
    ///
    /// # Errors
    ///
    /// [`Error::PeerGone`]; [`Error::TimedOut`]; [`Error::Vmbus`].
    pub fn close(&mut self) -> Result<(), Error> {
        Ok(self.inner.close()?)
    }
}

impl PollStream for VmbusPipe {
    fn try_read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        Ok(self.inner.try_read(buf)?)
    }

    fn try_write(&mut self, buf: &[u8]) -> Result<Option<usize>, Error> {
        Ok(self.inner.try_write(buf)?)
    }

    fn try_shutdown_write(&mut self) -> Result<Option<bool>, Error> {
        Ok(self.inner.try_close()?.map(|()| true))
    }

    fn try_delivered(&mut self) -> Result<Option<()>, Error> {
        Ok(self.inner.try_delivered()?)
    }

    fn ready(&mut self) -> (bool, bool) {
        self.inner.ready()
    }

    fn spin_ready(&mut self, read: bool, write: bool) -> bool {
        self.inner.spin_ready(read, write)
    }

    fn wait_event(
        &mut self,
        extra: Option<BorrowedFd<'_>>,
        deadline: Option<Instant>,
    ) -> Result<Woken, Error> {
        let w = self.inner.wait_with(|s| s.wait_event(extra, deadline))?;
        Ok(woken(w))
    }

    fn signal(&self) -> &EventSignal {
        self.inner.signal()
    }

    fn bytes_read(&self) -> u64 {
        self.inner.bytes_read()
    }

    fn bytes_written(&self) -> u64 {
        self.inner.bytes_written()
    }

    fn close(&mut self) -> Result<(), Error> {
        VmbusPipe::close(self)
    }
}

impl Drop for VmbusPipe {
    fn drop(&mut self) {
        // Best effort, without blocking: tell a peer still reading that
        // the stream ended, if there is room for the mark.
        let _ = self.inner.try_close();
    }
}

impl io::Read for VmbusPipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        VmbusPipe::read(self, buf).map_err(io::Error::from)
    }
}

impl io::Write for VmbusPipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        VmbusPipe::write(self, buf).map_err(io::Error::from)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Each write commits its packets.
        Ok(())
    }
}
