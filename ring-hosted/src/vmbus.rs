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
//!
//! # Raw packets
//!
//! [`VmbusChannel`] is the same channel without the pipe framing: each
//! side sends and receives VMBus packets with their own types, flags and
//! transaction ids (requests, completions, transfer-page and GPA ranges).
//! [`RawVmbus`] is a third use, for `ring attach --framing raw`: stream
//! bytes as the payloads of in-band packets.

mod channel;

use crate::eventfd::{EventSignal, Woken};
use crate::fdio::{write_bytes, FdIo, Output};
use crate::memfd::MemFd;
use crate::stream::{drain_outcome, fd_call, fill_outcome, woken, FdMove, PollStream};
use crate::window::Window;
use crate::Error;
use ring_core::loan::Drained;
use ring_core::vmbus::pipe::{PipeReader, PipeWriter, MAX_PIPE_PAYLOAD};
use ring_core::vmbus::{
    self, BlockingPipe, IncomingRing, OutgoingPacket, OutgoingRing, RingLayout,
};
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Instant;

pub use channel::VmbusChannel;

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

/// The rings we read and write.
type Rings = (IncomingRing<RingMem>, OutgoingRing<RingMem>);

/// The server's rings over `mem`, both initialised first (before the
/// client maps them): it reads the client→server ring.
fn serve_rings(mem: &Arc<MemFd>, layout: ChannelLayout) -> Result<Rings, Error> {
    let (to_server, to_client) = layout.windows(mem)?;
    vmbus::initialize_ring(&to_server, layout.to_server)?;
    vmbus::initialize_ring(&to_client, layout.to_client)?;
    attach_rings((to_server, layout.to_server), (to_client, layout.to_client))
}

/// The client's rings over memory the server initialised: it reads the
/// server→client ring.
fn connect_rings(mem: &Arc<MemFd>, layout: ChannelLayout) -> Result<Rings, Error> {
    let (to_server, to_client) = layout.windows(mem)?;
    attach_rings((to_client, layout.to_client), (to_server, layout.to_server))
}

/// Rings somebody else placed: `rx` we read, `tx` we write.
fn attach_rings(rx: (RingMem, RingLayout), tx: (RingMem, RingLayout)) -> Result<Rings, Error> {
    Ok((
        IncomingRing::new(rx.0, rx.1)?,
        OutgoingRing::new(tx.0, tx.1)?,
    ))
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
        let (rx, tx) = serve_rings(&mem, layout)?;
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
        let (rx, tx) = connect_rings(&mem, layout)?;
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
        let (rx, tx) = attach_rings(rx, tx)?;
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

    /// The event channel (its counters, its fds).
    pub fn signal(&self) -> &EventSignal {
        self.inner.signal()
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

    /// Sends one message as one packet (1 byte to 16 KiB), blocking.
    ///
    /// # Errors
    ///
    /// [`Error::Vmbus`] with `InvalidPacket` for an empty message (size 0
    /// is end of stream on the wire) or `TooLarge`; [`Error::Closed`];
    /// [`Error::PeerGone`].
    pub fn send_msg(&mut self, msg: &[u8]) -> Result<(), Error> {
        Ok(self.inner.send_msg(msg)?)
    }

    /// Receives one message into `buf`, blocking; returns its length, 0
    /// at the peer's end of stream (no message is empty).
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

    fn try_fill_from(&mut self, fd: BorrowedFd<'_>) -> Result<FdMove, Error> {
        let mut call = None;
        let ring = self.inner.try_write_with(usize::MAX, |mem, spans| {
            fd_call(&mut call, mem.read_from_fd(fd, spans))
        })?;
        fill_outcome(ring, call)
    }

    fn try_drain_to(&mut self, fd: BorrowedFd<'_>, to: Output) -> Result<FdMove, Error> {
        let mut call = None;
        let ring = self.inner.try_read_with(usize::MAX, |mem, spans| {
            fd_call(&mut call, mem.write_to_fd(fd, spans, to))
        })?;
        drain_outcome(ring, call)
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

    fn wait_io(
        &mut self,
        extra: Option<BorrowedFd<'_>>,
        output: Option<BorrowedFd<'_>>,
        deadline: Option<Instant>,
    ) -> Result<Woken, Error> {
        let w = self
            .inner
            .wait_with(|s| s.wait_io(extra, output, deadline))?;
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

    fn try_hang_up(&mut self) -> Result<Option<()>, Error> {
        Ok(self.inner.try_close()?)
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

/// One end of a VMBus channel used without pipe framing: every in-band
/// packet's payload is stream bytes, both ways (`ring attach --framing
/// raw`). The ring carries lengths in 8-byte units only, so a peer's
/// payload arrives padded to 8, and what we write goes out in whole 8-byte
/// units: a last partial unit is held until more bytes come, and sent
/// padded with zeroes when our stream ends. Raw framing has no end of
/// stream: it ends by the peer's death or our linger. A packet of any other
/// type (completion, GPA direct, transfer pages) carries no stream bytes:
/// it is refused as [`vmbus::Error::Corrupt`], as pipe framing refuses it,
/// and nothing of it reaches the reader.
#[derive(Debug)]
pub struct RawVmbus {
    inner: vmbus::Blocking<RingMem, EventSignal>,
    mem: Arc<MemFd>,
    /// Payload received and not yet handed out, and how far it was read.
    pending: Vec<u8>,
    taken: usize,
    /// Fewer than 8 bytes written and not yet sent.
    tail: Vec<u8>,
    /// Bytes [`PollStream::try_fill_from`] read from its fd that did not
    /// fit the ring yet, and how many of them have gone in since.
    staged: Vec<u8>,
    staged_at: usize,
    read: u64,
    written: u64,
    /// A packet of another type than in-band came: refused for good.
    refused: Option<ring_core::Corrupt>,
}

impl RawVmbus {
    /// An end over two rings somebody else initialised and placed, as
    /// [`VmbusPipe::attach`].
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
        let (rx, tx) = attach_rings(rx, tx)?;
        Ok(RawVmbus {
            inner: vmbus::Blocking::new(rx, tx, signal),
            mem,
            pending: Vec::new(),
            taken: 0,
            tail: Vec::with_capacity(8),
            staged: Vec::new(),
            staged_at: 0,
            read: 0,
            written: 0,
            refused: None,
        })
    }

    /// The shared memory.
    pub fn memory(&self) -> &Arc<MemFd> {
        &self.mem
    }

    /// Sends `bytes` (a multiple of 8, or the padded last piece) as one
    /// in-band packet if it fits.
    fn send_raw(&mut self, bytes: &[u8]) -> Result<Option<()>, Error> {
        let pieces: [&[u8]; 1] = [bytes];
        Ok(self.inner.try_send(&OutgoingPacket::in_band(0, &pieces))?)
    }

    /// Sends the held partial unit, padded, if there is one.
    fn flush_tail(&mut self) -> Result<Option<()>, Error> {
        if self.tail.is_empty() {
            return Ok(Some(()));
        }
        let mut unit = [0u8; 8];
        unit.get_mut(..self.tail.len())
            .unwrap_or_default()
            .copy_from_slice(&self.tail);
        let sent = self.send_raw(&unit)?;
        if sent.is_some() {
            self.tail.clear();
        }
        Ok(sent)
    }

    /// The largest payload one packet of ours may carry, in 8-byte units.
    fn max_payload(&mut self) -> usize {
        let max = self.inner.outgoing().max_packet_len();
        max.saturating_sub(vmbus::layout::DESCRIPTOR_SIZE)
            .min(MAX_PIPE_PAYLOAD)
            & !7
    }

    /// Receives the next packet's payload into `pending` once the last is
    /// handed out: `false` if none is there (wake-up armed).
    fn refill(&mut self) -> Result<bool, Error> {
        if self.taken < self.pending.len() {
            return Ok(true);
        }
        if let Some(c) = self.refused {
            return Err(Error::Vmbus(vmbus::Error::Corrupt(c)));
        }
        let max = self.inner.incoming().layout().max_packet_len();
        self.pending.resize(max, 0);
        self.taken = 0;
        match self.inner.try_recv(&mut self.pending)? {
            Some((info, _)) if info.packet_type != vmbus::PacketType::InBand => {
                // Not stream bytes: a completion, GPA-direct or
                // transfer-page packet's payload never reaches the output.
                self.pending.clear();
                let c = ring_core::Corrupt {
                    what: not_in_band(info.packet_type),
                };
                self.refused = Some(c);
                Err(Error::Vmbus(vmbus::Error::Corrupt(c)))
            }
            Some((_, len)) => {
                self.pending.truncate(len);
                Ok(true)
            }
            None => {
                self.pending.clear();
                Ok(false)
            }
        }
    }

    /// Pushes staged input into the ring: `Some(true)` all of it is in,
    /// `Some(false)` some moved, `None` none fitted (wake-up armed).
    fn push_staged(&mut self) -> Result<Option<bool>, Error> {
        let staged = std::mem::take(&mut self.staged);
        let r = self.try_write(staged.get(self.staged_at..).unwrap_or_default());
        self.staged = staged;
        let Some(n) = r? else {
            return Ok(None);
        };
        self.staged_at += n;
        if self.staged_at < self.staged.len() {
            return Ok(Some(false));
        }
        self.staged.clear();
        self.staged_at = 0;
        Ok(Some(true))
    }
}

/// Why raw framing refuses a packet of type `t` (not in-band).
fn not_in_band(t: vmbus::PacketType) -> &'static str {
    match t {
        vmbus::PacketType::Completion => {
            "raw framing carries in-band packets only; the peer sent a completion packet (type 0xB)"
        }
        vmbus::PacketType::GpaDirect => {
            "raw framing carries in-band packets only; the peer sent a GPA-direct packet (type 0x9)"
        }
        vmbus::PacketType::TransferPages => {
            "raw framing carries in-band packets only; the peer sent a transfer-page packet (type 0x7)"
        }
        vmbus::PacketType::InBand => "in-band packet refused",
    }
}

impl PollStream for RawVmbus {
    fn try_read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        if !self.refill()? {
            return Ok(None);
        }
        let rest = self.pending.get(self.taken..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf.get_mut(..n)
            .unwrap_or_default()
            .copy_from_slice(rest.get(..n).unwrap_or_default());
        self.taken += n;
        self.read += n as u64;
        Ok(Some(n))
    }

    fn try_write(&mut self, buf: &[u8]) -> Result<Option<usize>, Error> {
        if buf.is_empty() {
            return Ok(Some(0));
        }
        // Complete the held unit first.
        let mut used = 0;
        if !self.tail.is_empty() {
            used = (8 - self.tail.len()).min(buf.len());
            let mut unit = self.tail.clone();
            unit.extend_from_slice(buf.get(..used).unwrap_or_default());
            if unit.len() < 8 {
                self.tail = unit;
                self.written += used as u64;
                return Ok(Some(used));
            }
            if self.send_raw(&unit)?.is_none() {
                return Ok(None);
            }
            self.tail.clear();
        }
        let rest = buf.get(used..).unwrap_or_default();
        let whole = (rest.len() & !7).min(self.max_payload());
        if whole > 0 {
            match self.send_raw(rest.get(..whole).unwrap_or_default())? {
                Some(()) => used += whole,
                None if used == 0 => return Ok(None),
                None => {}
            }
        } else if rest.len() < 8 {
            // Less than a unit: hold it.
            self.tail.extend_from_slice(rest);
            used += rest.len();
        }
        self.written += used as u64;
        Ok(Some(used))
    }

    // Raw framing goes through buffers of ours: a packet's payload is
    // copied out whole (its length is only known once it is read), and
    // input waits in `staged` until the ring takes it.
    fn try_fill_from(&mut self, fd: BorrowedFd<'_>) -> Result<FdMove, Error> {
        if !self.staged.is_empty() {
            return Ok(match self.push_staged()? {
                None => FdMove::RingBlocked,
                Some(_) => FdMove::Moved(0),
            });
        }
        self.staged.resize(64 << 10, 0);
        let got = rustix::io::read(fd, &mut self.staged);
        let n = match got {
            Ok(n) => n,
            Err(e) => {
                self.staged.clear();
                return fill_outcome(Some(0), Some(Err(e.into())));
            }
        };
        self.staged.truncate(n);
        if n == 0 {
            return Ok(FdMove::End);
        }
        self.push_staged()?;
        Ok(FdMove::Moved(n))
    }

    fn staged_input(&self) -> bool {
        !self.staged.is_empty()
    }

    fn try_drain_to(&mut self, fd: BorrowedFd<'_>, to: Output) -> Result<FdMove, Error> {
        if !self.refill()? {
            return Ok(FdMove::RingBlocked);
        }
        let rest = self.pending.get(self.taken..).unwrap_or_default();
        if rest.is_empty() {
            // A packet with no payload: end of stream, as for `try_read`.
            return Ok(FdMove::End);
        }
        let got = write_bytes(fd, rest, to);
        if let Ok(n) = got {
            self.taken += n;
            self.read += n as u64;
        }
        drain_outcome(Some(Drained::Took(0)), Some(got))
    }

    fn try_shutdown_write(&mut self) -> Result<Option<bool>, Error> {
        // No end mark in raw framing; the held unit has gone out already
        // (try_delivered sends it first).
        Ok(self.flush_tail()?.map(|()| false))
    }

    fn try_delivered(&mut self) -> Result<Option<()>, Error> {
        while !self.staged.is_empty() {
            if self.push_staged()?.is_none() {
                return Ok(None);
            }
        }
        if self.flush_tail()?.is_none() {
            return Ok(None);
        }
        Ok(self.inner.try_delivered()?)
    }

    fn ready(&mut self) -> (bool, bool) {
        let (r, w) = self.inner.ready();
        (r || self.taken < self.pending.len(), w)
    }

    fn spin_ready(&mut self, read: bool, write: bool) -> bool {
        self.inner.spin_ready(read, write)
    }

    fn wait_io(
        &mut self,
        extra: Option<BorrowedFd<'_>>,
        output: Option<BorrowedFd<'_>>,
        deadline: Option<Instant>,
    ) -> Result<Woken, Error> {
        let w = self
            .inner
            .wait_with(|s| s.wait_io(extra, output, deadline))?;
        Ok(woken(w))
    }

    fn signal(&self) -> &EventSignal {
        self.inner.signal()
    }

    fn bytes_read(&self) -> u64 {
        self.read
    }

    fn bytes_written(&self) -> u64 {
        self.written
    }

    fn close(&mut self) -> Result<(), Error> {
        // Nothing to send: raw framing has no end mark.
        Ok(())
    }

    fn try_hang_up(&mut self) -> Result<Option<()>, Error> {
        Ok(Some(()))
    }
}
