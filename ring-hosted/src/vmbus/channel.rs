//! VMBus packets as they are, between two processes: no pipe framing, so
//! each side chooses every packet's type, flags and transaction id and
//! sees the peer's (the way a VMBus device and its driver talk).

use super::{ChannelLayout, RingMem};
use crate::eventfd::EventSignal;
use crate::memfd::MemFd;
use crate::Error;
use ring_core::vmbus::{
    self, IncomingPacket, IncomingRing, OutgoingPacket, OutgoingRing, PacketInfo, RingLayout,
};
use std::sync::Arc;

/// One end of a VMBus channel carrying raw packets: ring-core's
/// [`vmbus::Blocking`] on an [`EventSignal`].
///
/// Packets keep everything the ring carries: [`send`](Self::send) takes an
/// [`OutgoingPacket`] (in-band data, a completion, transfer-page or GPA
/// ranges) and [`recv`](Self::recv) gives back its [`PacketInfo`] and
/// payload. Raw packets have no end-of-stream mark of their own: a
/// channel ends when a side drops its end (the rendezvous socket hangs
/// up) and the other, once it has read every packet that was committed,
/// gets [`Error::PeerGone`]. Protocols that need a clean goodbye send one
/// as a packet of their own.
///
/// # Examples
///
/// A request that asks for a completion, and the completion, through the
/// typed rendezvous ([`crate::session::VmbusPackets`]):
///
/// ```
/// use ring_core::vmbus::{OutgoingPacket, PacketFlags, PacketType};
/// use ring_hosted::session::{self, Listener, VmbusPackets};
/// use std::time::Duration;
///
/// let dir = std::env::temp_dir().join(format!("ring-packets-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("sock");
/// let listener = Listener::<VmbusPackets>::bind(&path)?;
/// let device = std::thread::spawn({
///     let path = path.clone();
///     move || -> Result<(), ring_hosted::Error> {
///         let mut c = session::connect::<VmbusPackets>(&path)?;
///         c.signal_mut().set_timeout(Some(Duration::from_secs(10)));
///         let mut buf = [0u8; 64];
///         let (info, len) = c.recv(&mut buf)?;
///         assert!(info.flags.contains(PacketFlags::COMPLETION_REQUESTED));
///         let reply: [&[u8]; 1] = [&buf[..len]];
///         c.send(&OutgoingPacket::completion(info.transaction_id, &reply))
///     }
/// });
/// let mut driver = listener.accept_timeout(Duration::from_secs(10))?;
/// driver.signal_mut().set_timeout(Some(Duration::from_secs(10)));
/// let request: [&[u8]; 1] = [b"get status"];
/// driver.send(&OutgoingPacket::in_band(42, &request).with_completion_requested())?;
/// let mut buf = [0u8; 64];
/// let (info, len) = driver.recv(&mut buf)?;
/// assert_eq!(info.packet_type, PacketType::Completion);
/// assert_eq!(info.transaction_id, 42);
/// assert_eq!(&buf[..len.min(10)], b"get status");
/// device.join().unwrap()?;
/// # drop(listener);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct VmbusChannel {
    inner: vmbus::Blocking<RingMem, EventSignal>,
    mem: Arc<MemFd>,
}

impl VmbusChannel {
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
        let (rx, tx) = super::serve_rings(&mem, layout)?;
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
        let (rx, tx) = super::connect_rings(&mem, layout)?;
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
        let (rx, tx) = super::attach_rings(rx, tx)?;
        Ok(Self::from_rings(rx, tx, signal, mem))
    }

    fn from_rings(
        rx: IncomingRing<RingMem>,
        tx: OutgoingRing<RingMem>,
        signal: EventSignal,
        mem: Arc<MemFd>,
    ) -> Self {
        VmbusChannel {
            inner: vmbus::Blocking::new(rx, tx, signal),
            mem,
        }
    }

    /// The shared memory (both rings).
    pub fn memory(&self) -> &Arc<MemFd> {
        &self.mem
    }

    /// ring-core's blocking channel inside, for what this type does not
    /// wrap (the rings themselves, `wait_with`).
    pub fn blocking(&mut self) -> &mut vmbus::Blocking<RingMem, EventSignal> {
        &mut self.inner
    }

    /// The event channel.
    pub fn signal(&self) -> &EventSignal {
        self.inner.signal()
    }

    /// The event channel, to change its spin or timeout.
    pub fn signal_mut(&mut self) -> &mut EventSignal {
        self.inner.signal_mut()
    }

    /// Whether the peer has been seen to hang up.
    pub fn peer_gone(&self) -> bool {
        self.inner.peer_gone()
    }

    /// Bytes of packets waiting in the ring we read (no arming).
    ///
    /// # Errors
    ///
    /// [`Error::Vmbus`] if the peer's write index is invalid.
    pub fn unread(&mut self) -> Result<usize, Error> {
        Ok(self.inner.incoming().available()?)
    }

    /// Sends one packet, waiting for room as long as the peer lives (and
    /// the signal's timeout allows), and signals the peer if it is owed.
    ///
    /// While blocked here we do not read: two sides that both block
    /// sending wait for each other. Bound what is in flight so replies
    /// always fit, as VMBus devices do.
    ///
    /// # Errors
    ///
    /// [`Error::Vmbus`] with `TooLarge` or `InvalidPacket` for a packet
    /// the ring cannot carry, or `Corrupt`; [`Error::PeerGone`];
    /// [`Error::TimedOut`].
    pub fn send(&mut self, packet: &OutgoingPacket<'_>) -> Result<(), Error> {
        Ok(self.inner.send(packet)?)
    }

    /// Sends one packet if there is room now: `Ok(None)` if not (the
    /// peer is asked to signal us when it has made room).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), without [`Error::TimedOut`].
    pub fn try_send(&mut self, packet: &OutgoingPacket<'_>) -> Result<Option<()>, Error> {
        Ok(self.inner.try_send(packet)?)
    }

    /// Waits for the next packet and copies its payload into `buf`;
    /// returns the packet's type, flags, transaction id and ranges, and
    /// the payload length (padded to 8 bytes, as the ring carries it).
    ///
    /// # Errors
    ///
    /// [`Error::Vmbus`] with `OutOfRange` if `buf` is smaller than the
    /// payload (the packet stays unread), or `Corrupt`; [`Error::PeerGone`]
    /// once the peer has gone and every packet it committed was read;
    /// [`Error::TimedOut`].
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<(PacketInfo, usize), Error> {
        Ok(self.inner.recv(buf)?)
    }

    /// Receives the next packet if there is one now: `Ok(None)` if not
    /// (interrupts unmasked, so the peer signals the next one).
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv), without [`Error::TimedOut`].
    pub fn try_recv(&mut self, buf: &mut [u8]) -> Result<Option<(PacketInfo, usize)>, Error> {
        Ok(self.inner.try_recv(buf)?)
    }

    /// Waits for the next packet and hands it to `f` where it lies in the
    /// ring (to read its ranges or part of its payload without a copy of
    /// the whole), then consumes it.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub fn recv_with<R>(
        &mut self,
        f: impl FnOnce(&IncomingPacket<'_, RingMem>) -> R,
    ) -> Result<R, Error> {
        Ok(self.inner.recv_with(f)?)
    }

    /// Waits for at least one packet, then hands `f` every packet there is
    /// (at most `max`) with the peer's signals suppressed meanwhile, and
    /// consumes them in one commit. Returns how many there were.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub fn drain_with(
        &mut self,
        max: usize,
        f: impl FnMut(&IncomingPacket<'_, RingMem>),
    ) -> Result<usize, Error> {
        Ok(self.inner.drain_with(max, f)?)
    }

    /// Waits until the peer has read every packet we sent.
    ///
    /// # Errors
    ///
    /// [`Error::PeerGone`]; [`Error::TimedOut`]; [`Error::Vmbus`].
    pub fn wait_delivered(&mut self) -> Result<(), Error> {
        Ok(self.inner.wait_delivered()?)
    }
}
