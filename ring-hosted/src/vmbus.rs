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
use crate::stream::{spin_for, PollStream};
use crate::window::Window;
use crate::Error;
use ring_core::signal::Signal;
use ring_core::vmbus::pipe::{PipeReader, PipeWriter, MAX_PIPE_PAYLOAD};
use ring_core::vmbus::{self, IncomingRing, OutgoingRing, RingLayout};
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// One end of a VMBus pipe between two processes.
#[derive(Debug)]
pub struct VmbusPipe {
    reader: PipeReader<RingMem>,
    writer: PipeWriter<RingMem>,
    signal: EventSignal,
    mem: Arc<MemFd>,
    peer_gone: bool,
    closed: bool,
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
            reader: PipeReader::new(rx),
            writer,
            signal,
            mem,
            peer_gone: false,
            closed: false,
        }
    }

    /// The shared memory (both rings).
    pub fn memory(&self) -> &Arc<MemFd> {
        &self.mem
    }

    /// The signal inside, to change its spin or timeout.
    pub fn signal_mut(&mut self) -> &mut EventSignal {
        &mut self.signal
    }

    /// Whether the peer has been seen to hang up.
    pub fn peer_gone(&self) -> bool {
        self.peer_gone
    }

    /// Kicks the peer whether or not it is owed a signal (to unstick it).
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if the eventfd write fails.
    pub fn kick(&self) -> Result<(), Error> {
        self.signal.notify().map_err(Error::from)
    }

    /// Bytes of packets waiting in the ring we read (no arming).
    ///
    /// # Errors
    ///
    /// [`Error::Vmbus`] if the peer's write index is invalid.
    pub fn unread(&mut self) -> Result<usize, Error> {
        Ok(self.reader.ring().available()?)
    }

    fn kick_if(&self, t: vmbus::Transfer) -> Result<(), Error> {
        if t.notify {
            self.signal.notify().map_err(Error::from)?;
        }
        Ok(())
    }

    /// Blocks (spin, then sleep) until `op` makes progress. `reading`
    /// says which readiness to spin on: data to read, or room to write.
    fn block<T>(
        &mut self,
        reading: bool,
        mut op: impl FnMut(&mut Self) -> Result<Option<T>, Error>,
    ) -> Result<T, Error> {
        let deadline = self.deadline();
        let mut spun = false;
        loop {
            if let Some(v) = op(self)? {
                return Ok(v);
            }
            // One spin per sleep: readiness is only a hint (room for a
            // small packet is not room for this message), so a spin that
            // found it is followed by one more try, then a real wait.
            if !spun && PollStream::spin_ready(self, reading, !reading) {
                spun = true;
                continue;
            }
            spun = false;
            // The interrupt mask stays clear between calls (the rule of
            // ring-core's vmbus Blocking): a caller that sleeps next, by any
            // means, is still woken. `read_bytes` drains every packet there
            // is in one commit, which is where batching pays.
            PollStream::wait_event(self, None, deadline)?;
        }
    }

    /// Reads at least one byte, blocking; `Ok(0)` is end of stream.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the peer died (after what it sent was read);
    /// [`Error::TimedOut`]; [`Error::Vmbus`].
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.block(true, |s| PollStream::try_read(s, buf))
    }

    /// Writes at least one byte of `buf`, blocking.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the peer died or we closed; [`Error::TimedOut`].
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.block(false, |s| PollStream::try_write(s, buf))
    }

    /// Writes all of `buf`.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    pub fn write_all(&mut self, mut buf: &[u8]) -> Result<(), Error> {
        while !buf.is_empty() {
            let n = VmbusPipe::write(self, buf)?;
            buf = buf.get(n..).unwrap_or(&[]);
        }
        Ok(())
    }

    /// Sends one message as one packet (at most 16 KiB), blocking.
    ///
    /// # Errors
    ///
    /// [`Error::Vmbus`] with `TooLarge`; [`Error::Closed`].
    pub fn send_msg(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.block(false, |s| {
            if s.peer_gone || s.closed {
                return Err(Error::Closed);
            }
            match s.writer.write_message(msg) {
                Ok(t) => s.kick_if(t).map(Some),
                Err(vmbus::Error::Full { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Receives one message into `buf`, blocking; returns its length.
    ///
    /// # Errors
    ///
    /// [`Error::Vmbus`] with `OutOfRange` if `buf` is too small (nothing is
    /// consumed); [`Error::Closed`] if the peer died.
    pub fn recv_msg(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.block(true, |s| match s.reader.read_message(buf) {
            Ok(t) => {
                s.kick_if(t)?;
                Ok(Some(t.len))
            }
            Err(vmbus::Error::Empty) if s.peer_gone => Err(Error::Closed),
            Err(vmbus::Error::Empty) => Ok(None),
            Err(e) => Err(e.into()),
        })
    }
}

impl PollStream for VmbusPipe {
    fn try_read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        if self.reader.is_eof() {
            return Ok(Some(0));
        }
        match self.reader.read_bytes(buf) {
            Ok(t) => {
                self.kick_if(t)?;
                Ok(Some(t.len))
            }
            Err(vmbus::Error::Empty) if self.peer_gone => Err(Error::Closed),
            Err(vmbus::Error::Empty) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn try_write(&mut self, buf: &[u8]) -> Result<Option<usize>, Error> {
        if self.peer_gone || self.closed {
            return Err(Error::Closed);
        }
        match self.writer.write_bytes(buf) {
            Ok(t) => {
                self.kick_if(t)?;
                Ok(Some(t.len))
            }
            Err(vmbus::Error::Full { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn ready(&mut self) -> (bool, bool) {
        (
            self.reader.ring().available().map_or(true, |n| n > 0),
            // Room for a packet with at least a few bytes of data.
            self.writer.ring().available().map_or(true, |n| n > 64),
        )
    }

    fn spin_ready(&mut self, read: bool, write: bool) -> bool {
        let budget = self.signal.spin();
        spin_for(budget, || {
            let (r, w) = self.ready();
            (read && r) || (write && w)
        })
    }

    fn wait_event(
        &mut self,
        extra: Option<BorrowedFd<'_>>,
        deadline: Option<Instant>,
    ) -> Result<Woken, Error> {
        self.signal.wait_slice(&mut self.peer_gone, extra, deadline)
    }

    fn deadline(&self) -> Option<Instant> {
        self.signal.timeout().map(|t| Instant::now() + t)
    }

    fn signal(&self) -> &EventSignal {
        &self.signal
    }

    /// Sends end of stream, waiting (up to a second) for room for it.
    fn close(&mut self) -> Result<(), Error> {
        if self.closed || self.peer_gone {
            self.closed = true;
            return Ok(());
        }
        let deadline = Some(Instant::now() + Duration::from_secs(1));
        loop {
            match self.writer.write_eof() {
                Ok(t) => {
                    self.closed = true;
                    return self.kick_if(t);
                }
                Err(vmbus::Error::Full { .. }) => {
                    self.wait_event(None, deadline)?;
                    if self.peer_gone {
                        self.closed = true;
                        return Ok(());
                    }
                }
                Err(e) => {
                    self.closed = true;
                    return Err(e.into());
                }
            }
        }
    }
}

impl Drop for VmbusPipe {
    fn drop(&mut self) {
        // Best effort: tell a peer still reading that the stream ended.
        let _ = PollStream::close(self);
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
