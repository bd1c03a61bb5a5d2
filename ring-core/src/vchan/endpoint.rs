//! A connected vchan endpoint: set-up, the data path and the notify protocol.

use super::layout::{
    placement, FlatLayout, Orders, Placement, CLI_LIVE, CLI_NOTIFY, GRANTS, LEFT_CONS, LEFT_PROD,
    PAGE_SIZE, RIGHT_CONS, RIGHT_PROD, SRV_LIVE, SRV_NOTIFY,
};
use super::{ControlHeader, Error, Live, NotifyBits, Role, SetupError, Transfer};
use crate::error::{Corrupt, Poison};
use crate::loan::{Span, SpanList};
use crate::mem::{SharedMem, WrapRegion};
use crate::mutation::{self, Mutation};
use core::ops::Deref;
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, IntoBytes};

/// Where one ring's data bytes live: a memory and a byte offset in it.
#[derive(Clone, Copy, Debug)]
pub struct RingPlace<M> {
    /// The memory holding the ring (the control page's own memory for an
    /// in-page ring).
    pub mem: M,
    /// Byte offset of the ring's first byte in `mem`.
    pub offset: usize,
}

/// Server set-up choices beyond the ring sizes.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerOptions {
    /// Starting value of all four indices. libxenvchan uses 0; any value
    /// works because only differences matter, and tests use values near
    /// `u32::MAX` to exercise the wrap.
    pub initial_index: u32,
}

/// One direction's state: where its bytes are, our own index (a private
/// shadow, never read back from the page) and the last peer index we saw.
#[derive(Debug)]
struct Ring<M> {
    mem: M,
    region: WrapRegion,
    size: u32,
    /// Offset of our index in the control page.
    own_at: usize,
    /// Offset of the peer's index in the control page.
    peer_at: usize,
    own: u32,
    peer: u32,
}

impl<M: SharedMem> Ring<M> {
    fn new(
        place: RingPlace<M>,
        order: u8,
        own_at: usize,
        peer_at: usize,
        own: u32,
        peer: u32,
    ) -> Result<Self, Error> {
        let size = 1usize << order;
        let end = place.offset.saturating_add(size);
        if end > place.mem.size() {
            return Err(SetupError::MemoryTooSmall {
                needed: end,
                available: place.mem.size(),
            }
            .into());
        }
        Ok(Ring {
            region: WrapRegion::new(place.offset, size),
            mem: place.mem,
            size: 1u32 << order,
            own_at,
            peer_at,
            own,
            peer,
        })
    }

    fn position(&self, index: u32) -> usize {
        (index & (self.size - 1)) as usize
    }
}

/// One end of a connected vchan.
///
/// Non-blocking: every data call either makes progress, or returns
/// [`Error::WouldBlock`] after arming the wake-up request and re-checking the
/// ring. Calls that moved an index say in [`Transfer::notify`] whether the
/// peer asked to be kicked. Wrap it in [`Blocking`](super::Blocking) to
/// block on a [`Signal`](crate::signal::Signal).
#[derive(Debug)]
pub struct Endpoint<M> {
    ctrl: M,
    role: Role,
    orders: Orders,
    rx: Ring<M>,
    tx: Ring<M>,
    /// Our live byte, the peer's live byte.
    own_live: usize,
    peer_live: usize,
    /// The byte we OR requests into (aimed at the peer), and our own byte.
    ask_peer: usize,
    own_notify: usize,
    /// The consumer index of the ring we read as last published: bytes
    /// between it and `rx.own` are held (read but not given back).
    released: u32,
    closed: bool,
    /// Our live byte is cleared ([`Endpoint::hang_up`]): writes end, reads
    /// go on until [`Endpoint::close`].
    hung_up: bool,
    /// A server has seen its client: its live byte at 1 or 0, or bytes
    /// from it. From then on a client live byte of 2 is a protocol error.
    peer_joined: bool,
    poison: Poison,
}

/// Offsets a role uses: (rx own, rx peer, tx own, tx peer, own live, peer
/// live, ask-peer byte, own notify byte).
const fn role_offsets(role: Role) -> [usize; 8] {
    match role {
        Role::Server => [
            LEFT_CONS, LEFT_PROD, RIGHT_PROD, RIGHT_CONS, SRV_LIVE, CLI_LIVE, CLI_NOTIFY,
            SRV_NOTIFY,
        ],
        Role::Client => [
            RIGHT_CONS, RIGHT_PROD, LEFT_PROD, LEFT_CONS, CLI_LIVE, SRV_LIVE, SRV_NOTIFY,
            CLI_NOTIFY,
        ],
    }
}

fn check_ctrl<M: SharedMem>(ctrl: &M) -> Result<(), SetupError> {
    if ctrl.size() < PAGE_SIZE {
        return Err(SetupError::MemoryTooSmall {
            needed: PAGE_SIZE,
            available: ctrl.size(),
        });
    }
    Ok(())
}

fn check_in_page<M: SharedMem>(order: u8, place: &RingPlace<M>) -> Result<(), SetupError> {
    // An in-page ring must sit at its fixed offset; we trust the caller to
    // pass the control page's memory, but not a wrong offset.
    match placement(order) {
        Placement::InPage { offset } if place.offset != offset => {
            Err(SetupError::MisplacedRing { order })
        }
        _ => Ok(()),
    }
}

/// Sets up a vchan as the server, the way libxenvchan's server does: zero
/// the control page, write indices, orders and grant refs, mark the server
/// live (1) and the client waiting (2), and ask the client to kick us on
/// its first write.
///
/// `left` and `right` say where the rings' bytes are; for in-page orders
/// they must be the control page's memory at offset 1024 or 2048. `grants`
/// holds the refs of the external pages (left's, then right's), written to
/// the page for the client.
///
/// # Examples
///
/// Rings of order 12 live in pages of their own, which the client finds by
/// grant ref:
///
/// ```
/// use core::sync::atomic::AtomicU64;
/// use ring_core::mem::{RawMem, SharedMem};
/// use ring_core::vchan::{self, Orders, RingPlace, ServerOptions};
///
/// let page = || (0..512).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
/// let (ctrl_page, left_page, right_page) = (page(), page(), page());
/// let ctrl = RawMem::from_atomics(&ctrl_page);
/// let left = RingPlace { mem: RawMem::from_atomics(&left_page), offset: 0 };
/// let right = RingPlace { mem: RawMem::from_atomics(&right_page), offset: 0 };
/// let orders = Orders::new(12, 12)?; // 4 KiB each way
/// let server = vchan::serve(ctrl, left, right, orders, &[70, 71], ServerOptions::default())?;
/// assert_eq!((server.read_capacity(), server.write_capacity()), (4096, 4096));
/// // The refs follow the 24-byte header, for the client to map.
/// assert_eq!((ctrl.load_u32(24)?, ctrl.load_u32(28)?), (70, 71));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn serve<M: SharedMem>(
    ctrl: M,
    left: RingPlace<M>,
    right: RingPlace<M>,
    orders: Orders,
    grants: &[u32],
    options: ServerOptions,
) -> Result<Endpoint<M>, Error> {
    check_ctrl(&ctrl)?;
    check_in_page(orders.left(), &left)?;
    check_in_page(orders.right(), &right)?;
    if grants.len() < orders.grant_count() {
        return Err(SetupError::GrantCount {
            needed: orders.grant_count(),
            given: grants.len(),
        }
        .into());
    }
    let i = U32::new(options.initial_index);
    let header = ControlHeader {
        left: super::RingIndices { cons: i, prod: i },
        right: super::RingIndices { cons: i, prod: i },
        left_order: U16::new(u16::from(orders.left())),
        right_order: U16::new(u16::from(orders.right())),
        cli_live: Live::Waiting as u8,
        srv_live: Live::Connected as u8,
        cli_notify: NotifyBits::WRITE.bits(),
        srv_notify: 0,
    };
    ctrl.fill(0, PAGE_SIZE, 0)?;
    for (n, grant) in grants.iter().take(orders.grant_count()).enumerate() {
        ctrl.write(GRANTS + 4 * n, grant.as_bytes())?;
    }
    // The indices and orders first, the live bytes last, so a client that
    // sees the server live also sees a complete header.
    ctrl.write(0, header.as_bytes().get(..CLI_LIVE).unwrap_or(&[]))?;
    ctrl.store_u8(CLI_NOTIFY, header.cli_notify)?;
    ctrl.store_u8(CLI_LIVE, header.cli_live)?;
    ctrl.store_u8(SRV_LIVE, header.srv_live)?;
    let start = options.initial_index;
    Endpoint::new(ctrl, Role::Server, orders, left, right, [start; 4])
}

/// [`serve`] over one memory laid out as [`FlatLayout`]: control page,
/// then left's pages, then right's. The page numbers stand in for grant
/// refs.
///
/// # Examples
///
/// ```
/// use core::sync::atomic::AtomicU64;
/// use ring_core::mem::RawMem;
/// use ring_core::vchan::{self, FlatLayout, Orders, ServerOptions};
///
/// // 8 KiB each way: the control page, then two pages per ring.
/// let orders = Orders::for_sizes(8192, 8192)?;
/// let layout = FlatLayout::new(orders);
/// assert_eq!(layout.size, 4096 + 2 * 8192);
/// let words: Vec<AtomicU64> = (0..layout.size / 8).map(|_| AtomicU64::new(0)).collect();
/// let mem = RawMem::from_atomics(&words);
/// let server = vchan::serve_flat(mem, orders, ServerOptions::default())?;
/// assert_eq!((server.read_capacity(), server.write_capacity()), (8192, 8192));
/// // A memory smaller than the layout is refused.
/// let short = RawMem::from_atomics(&words[..512]);
/// assert!(vchan::serve_flat(short, orders, ServerOptions::default()).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn serve_flat<M: SharedMem + Clone>(
    mem: M,
    orders: Orders,
    options: ServerOptions,
) -> Result<Endpoint<M>, Error> {
    let layout = FlatLayout::new(orders);
    if mem.size() < layout.size {
        return Err(SetupError::MemoryTooSmall {
            needed: layout.size,
            available: mem.size(),
        }
        .into());
    }
    let mut grants = [0u32; 2 * (1 << 8)];
    for (slot, page) in grants.iter_mut().zip(layout.page_numbers()) {
        *slot = page;
    }
    let left = RingPlace {
        mem: mem.clone(),
        offset: layout.left,
    };
    let right = RingPlace {
        mem: mem.clone(),
        offset: layout.right,
    };
    serve(mem, left, right, orders, &grants, options)
}

/// Connects as the client to a page a server has set up.
///
/// Reads the header once, validates the orders strictly (see
/// [`Orders::new`]) and the server's liveness, then asks `place` where the
/// two rings are (`place` gets the orders and a reader of the grant list,
/// e.g. to map grant refs). Marks the client connected and asks the server
/// to kick us on its first write.
///
/// The caller must send the server one event after this returns, as
/// libxenvchan's client does, so a server waiting for its client wakes.
///
/// # Examples
///
/// The client side of the [`serve`] example: `place` maps the two grant
/// refs it is given.
///
/// ```
/// # use core::sync::atomic::AtomicU64;
/// use ring_core::mem::RawMem;
/// use ring_core::vchan::{self, Orders, RingPlace, ServerOptions};
/// # let page = || (0..512).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
/// # let (ctrl_page, left_page, right_page) = (page(), page(), page());
/// # let ctrl = RawMem::from_atomics(&ctrl_page);
/// # let (left, right) = (RawMem::from_atomics(&left_page), RawMem::from_atomics(&right_page));
/// # let places = (RingPlace { mem: left, offset: 0 }, RingPlace { mem: right, offset: 0 });
/// # let orders = Orders::new(12, 12)?;
/// # let mut server = vchan::serve(ctrl, places.0, places.1, orders, &[70, 71], ServerOptions::default())?;
/// let mut client = vchan::connect(ctrl, |orders, grant| {
///     assert_eq!(orders.grant_count(), 2);
///     // A real client maps each ref here; ours name pages we already hold.
///     let map = |r| RingPlace { mem: if r == Some(70) { left } else { right }, offset: 0 };
///     Ok((map(grant(0)), map(grant(1))))
/// })?;
/// // (Now send the server its first event.)
/// let _ = client.write(b"hi")?;
/// let mut buf = [0u8; 2];
/// let _ = server.read(&mut buf)?;
/// assert_eq!(&buf, b"hi");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn connect<M, F>(ctrl: M, place: F) -> Result<Endpoint<M>, Error>
where
    M: SharedMem,
    F: FnOnce(Orders, &dyn Fn(usize) -> Option<u32>) -> Result<(RingPlace<M>, RingPlace<M>), Error>,
{
    check_ctrl(&ctrl)?;
    // The server's live byte first (Acquire): a server publishes it after
    // the orders, so a page nobody serves says so (rather than "order 0"),
    // and the orders read below are the ones the server wrote.
    let srv_live = ctrl.load_u8(SRV_LIVE)?;
    if srv_live != Live::Connected as u8 {
        return Err(SetupError::ServerNotLive { live: srv_live }.into());
    }
    let mut raw = [0u8; GRANTS];
    ctrl.read(0, &mut raw)?;
    let header = ControlHeader::read_from_bytes(&raw).map_err(|_| SetupError::BadIndices)?;
    // The orders are set-up constants: the copy is their one read. The
    // indices are loaded atomically (Acquire), so bytes a server wrote
    // before we connected are visible once its producer index is.
    let orders = Orders::from_wire(header.left_order.get(), header.right_order.get())?;
    if ctrl.load_u8(CLI_LIVE)? == Live::Connected as u8 {
        return Err(SetupError::ClientAlreadyConnected.into());
    }
    let grant_count = orders.grant_count();
    let grant = |n: usize| -> Option<u32> {
        if n >= grant_count {
            return None;
        }
        ctrl.load_u32(GRANTS + 4 * n).ok()
    };
    let (left, right) = place(orders, &grant)?;
    check_in_page(orders.left(), &left)?;
    check_in_page(orders.right(), &right)?;
    let indices = [
        ctrl.load_u32(RIGHT_CONS)?,
        ctrl.load_u32(RIGHT_PROD)?,
        ctrl.load_u32(LEFT_PROD)?,
        ctrl.load_u32(LEFT_CONS)?,
    ];
    let endpoint = Endpoint::new(ctrl, Role::Client, orders, left, right, indices)?;
    endpoint.ctrl.store_u8(CLI_LIVE, Live::Connected as u8)?;
    endpoint
        .ctrl
        .store_u8(SRV_NOTIFY, NotifyBits::WRITE.bits())?;
    Ok(endpoint)
}

/// [`connect`] over one memory laid out as [`FlatLayout`].
///
/// # Examples
///
/// ```
/// use core::sync::atomic::AtomicU64;
/// use ring_core::mem::RawMem;
/// use ring_core::vchan::{self, Error, Orders, Role, ServerOptions, SetupError};
///
/// let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
/// let mem = RawMem::from_atomics(&words);
/// let _server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
/// let client = vchan::connect_flat(mem)?;
/// assert_eq!(client.role(), Role::Client);
/// assert_eq!((client.write_capacity(), client.read_capacity()), (1024, 2048));
/// // One client per vchan.
/// let second = vchan::connect_flat(mem).unwrap_err();
/// assert_eq!(second, Error::Setup(SetupError::ClientAlreadyConnected));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn connect_flat<M: SharedMem + Clone>(mem: M) -> Result<Endpoint<M>, Error> {
    let for_rings = mem.clone();
    connect(mem, move |orders, _grants| {
        let layout = FlatLayout::new(orders);
        if for_rings.size() < layout.size {
            return Err(SetupError::MemoryTooSmall {
                needed: layout.size,
                available: for_rings.size(),
            }
            .into());
        }
        Ok((
            RingPlace {
                mem: for_rings.clone(),
                offset: layout.left,
            },
            RingPlace {
                mem: for_rings,
                offset: layout.right,
            },
        ))
    })
}

/// A packet call's length check: a packet larger than the ring could never
/// move, so it is an error at once rather than a "would block" for ever.
fn fits_ring(len: usize, size: u32) -> Result<(), Error> {
    let capacity = size as usize;
    if len > capacity {
        return Err(Error::TooLarge { len, capacity });
    }
    Ok(())
}

/// The bytes in `bufs` together (saturating: an absurd total is then
/// simply too large for any ring).
fn total_len<B: Deref<Target = [u8]>>(bufs: &[B]) -> usize {
    bufs.iter().fold(0usize, |n, b| n.saturating_add(b.len()))
}

/// Whether data can move now, after arming and re-checking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// The call would make progress (or report EOF/closed) now.
    Ready,
    /// The request is armed: sleep until the peer kicks.
    Armed,
}

impl<M: SharedMem> Endpoint<M> {
    /// `indices` = [rx own, rx peer, tx own, tx peer].
    fn new(
        ctrl: M,
        role: Role,
        orders: Orders,
        left: RingPlace<M>,
        right: RingPlace<M>,
        indices: [u32; 4],
    ) -> Result<Self, Error> {
        let [rx_own_at, rx_peer_at, tx_own_at, tx_peer_at, own_live, peer_live, ask_peer, own_notify] =
            role_offsets(role);
        let [rx_own, rx_peer, tx_own, tx_peer] = indices;
        let (rx_place, rx_order, tx_place, tx_order) = match role {
            Role::Server => (left, orders.left(), right, orders.right()),
            Role::Client => (right, orders.right(), left, orders.left()),
        };
        let rx = Ring::new(rx_place, rx_order, rx_own_at, rx_peer_at, rx_own, rx_peer)?;
        let tx = Ring::new(tx_place, tx_order, tx_own_at, tx_peer_at, tx_own, tx_peer)?;
        // rx: prod (peer) - cons (own); tx: prod (own) - cons (peer).
        if rx_peer.wrapping_sub(rx_own) > rx.size || tx_own.wrapping_sub(tx_peer) > tx.size {
            return Err(SetupError::BadIndices.into());
        }
        Ok(Endpoint {
            ctrl,
            role,
            orders,
            rx,
            tx,
            own_live,
            peer_live,
            ask_peer,
            own_notify,
            released: rx_own,
            closed: false,
            hung_up: false,
            peer_joined: false,
            poison: Poison::default(),
        })
    }

    /// Which end this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The ring orders, as validated at set-up.
    pub fn orders(&self) -> Orders {
        self.orders
    }

    /// Size of the ring we read.
    pub fn read_capacity(&self) -> usize {
        self.rx.size as usize
    }

    /// Size of the ring we write.
    pub fn write_capacity(&self) -> usize {
        self.tx.size as usize
    }

    /// The control page's memory.
    pub fn control(&self) -> &M {
        &self.ctrl
    }

    /// Where the ring we read lives: its memory and the offset of its
    /// first byte there (for a C-ABI shell that must publish the ring's
    /// address, as libxenvchan's public struct does).
    pub fn read_ring(&self) -> (&M, usize) {
        (&self.rx.mem, self.rx.region.base())
    }

    /// Where the ring we write lives, as [`read_ring`](Self::read_ring).
    pub fn write_ring(&self) -> (&M, usize) {
        (&self.tx.mem, self.tx.region.base())
    }

    /// The corruption that poisoned this endpoint, if any.
    pub fn poisoned(&self) -> Option<Corrupt> {
        self.poison.get()
    }

    fn poison(&mut self, what: &'static str) -> Error {
        self.poison.latch(what).into()
    }

    fn usable(&self) -> Result<(), Error> {
        self.poison.check()?;
        if self.closed {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// As [`usable`](Self::usable), for a write: none after a hang-up.
    fn usable_for_write(&self) -> Result<(), Error> {
        self.usable()?;
        if self.hung_up {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// The peer's liveness, read once. An undefined value poisons.
    pub fn peer_live(&mut self) -> Result<Live, Error> {
        self.usable()?;
        let byte = self.ctrl.load_u8(self.peer_live)?;
        match Live::from_byte(byte) {
            Some(Live::Waiting) if self.role == Role::Client => {
                Err(self.poison("server live byte holds 2, which only a client may"))
            }
            Some(Live::Waiting) if self.peer_joined => {
                Err(self.poison("client live byte went back to 2 after the client joined"))
            }
            Some(live) => {
                self.peer_joined |= live != Live::Waiting;
                Ok(live)
            }
            None => Err(self.poison("peer live byte holds an undefined value")),
        }
    }

    /// Reloads the producer index of the ring we read and returns the bytes
    /// available. The peer's index may only move forward, to at most one
    /// full ring ahead of the consumer index we last published: the writer
    /// may not overwrite bytes we still hold.
    fn refresh_rx(&mut self) -> Result<u32, Error> {
        let prod = self.ctrl.load_u32(self.rx.peer_at)?;
        let moved = prod.wrapping_sub(self.rx.peer);
        let room = self
            .released
            .wrapping_add(self.rx.size)
            .wrapping_sub(self.rx.peer);
        if moved > room {
            return Err(self.poison("producer index moved backwards or more than a ring ahead"));
        }
        self.rx.peer = prod;
        // Bytes from the peer: it has joined, whatever its live byte says.
        self.peer_joined |= moved > 0;
        Ok(prod.wrapping_sub(self.rx.own))
    }

    /// Reloads the consumer index of the ring we write and returns the free
    /// bytes. The peer's index may only move forward, up to our producer.
    fn refresh_tx(&mut self) -> Result<u32, Error> {
        let cons = self.ctrl.load_u32(self.tx.peer_at)?;
        let moved = cons.wrapping_sub(self.tx.peer);
        let room = self.tx.own.wrapping_sub(self.tx.peer);
        if moved > room {
            return Err(self.poison("consumer index moved backwards or past the producer"));
        }
        self.tx.peer = cons;
        Ok(self.tx.size - self.tx.own.wrapping_sub(cons))
    }

    /// Bytes readable, from the cached peer index if it shows at least
    /// `want`, else from a fresh load.
    fn readable(&mut self, want: usize) -> Result<u32, Error> {
        let cached = self.rx.peer.wrapping_sub(self.rx.own);
        if cached as usize >= want {
            return Ok(cached);
        }
        self.refresh_rx()
    }

    /// Bytes writable, cached first as for [`readable`](Self::readable).
    fn writable(&mut self, want: usize) -> Result<u32, Error> {
        let cached = self.tx.size - self.tx.own.wrapping_sub(self.tx.peer);
        if cached as usize >= want {
            return Ok(cached);
        }
        self.refresh_tx()
    }

    /// Bytes read with [`read_held`](Self::read_held) or
    /// [`recv_held`](Self::recv_held) and not yet given back to the writer.
    pub fn held(&self) -> usize {
        self.rx.own.wrapping_sub(self.released) as usize
    }

    /// Arms `bits` in the byte aimed at the peer, then fences so the
    /// re-check that follows cannot be ordered before the request.
    ///
    /// Every wait goes through here, so this is where held bytes are
    /// refused: a caller told to sleep must not owe the peer space (and
    /// with it, perhaps, a kick it could not be told about).
    fn arm(&self, bits: NotifyBits) -> Result<(), Error> {
        match self.held() {
            0 => {}
            len => return Err(Error::Held { len }),
        }
        self.ctrl.fetch_or_u8(self.ask_peer, bits.bits())?;
        self.ctrl.fence();
        Ok(())
    }

    /// After publishing one or both indices: fence, then test-and-clear
    /// `bits` in our own notify byte. True if the peer asked to be kicked.
    fn peer_asked(&self, bits: NotifyBits) -> Result<bool, Error> {
        if !mutation::on(Mutation::NoPublishFence) {
            self.ctrl.fence();
        }
        // A plain load first keeps the locked RMW off the fast path; if the
        // bits are clear now, the peer's re-check will see our index.
        let asked = self.ctrl.load_u8(self.own_notify)? & bits.bits();
        if asked == 0 {
            return Ok(false);
        }
        let old = self.ctrl.fetch_and_u8(self.own_notify, !asked)?;
        Ok(old & bits.bits() != 0)
    }

    /// Publishes our consumer index, giving every held byte back. The
    /// caller fences and checks the `READ` request afterwards.
    fn publish_rx(&mut self) -> Result<(), Error> {
        self.ctrl.store_u32(self.rx.own_at, self.rx.own)?;
        self.released = self.rx.own;
        Ok(())
    }

    /// Bytes readable now, without arming anything.
    pub fn data_ready(&mut self) -> Result<usize, Error> {
        self.usable()?;
        Ok(self.refresh_rx()? as usize)
    }

    /// Bytes we wrote that the peer has not read yet (a fresh load of its
    /// consumer index). Still answers after the peer closed, so a writer
    /// can tell whether everything it wrote was taken.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after our own close; [`Error::Corrupt`].
    pub fn unread_by_peer(&mut self) -> Result<usize, Error> {
        self.usable()?;
        let free = self.refresh_tx()?;
        Ok((self.tx.size - free) as usize)
    }

    /// Bytes writable now, without arming anything.
    pub fn buffer_space(&mut self) -> Result<usize, Error> {
        self.usable()?;
        Ok(self.refresh_tx()? as usize)
    }

    /// Waits for at least `want` readable bytes (clamped to the ring size):
    /// the request is armed and the ring re-checked. On
    /// [`Readiness::Armed`] the caller may sleep until the next event.
    pub fn arm_readable(&mut self, want: usize) -> Result<Readiness, Error> {
        self.usable()?;
        let want = want.clamp(1, self.rx.size as usize);
        if self.readable(want)? as usize >= want {
            return Ok(Readiness::Ready);
        }
        self.arm(NotifyBits::WRITE)?;
        if mutation::on(Mutation::NoArmRecheck) {
            return Ok(Readiness::Armed);
        }
        if self.refresh_rx()? as usize >= want || self.peer_live()? == Live::Closed {
            return Ok(Readiness::Ready);
        }
        Ok(Readiness::Armed)
    }

    /// Waits for at least `want` writable bytes, as
    /// [`arm_readable`](Self::arm_readable).
    pub fn arm_writable(&mut self, want: usize) -> Result<Readiness, Error> {
        self.usable()?;
        let want = want.clamp(1, self.tx.size as usize);
        if self.writable(want)? as usize >= want {
            return Ok(Readiness::Ready);
        }
        self.arm(NotifyBits::READ)?;
        if mutation::on(Mutation::NoArmRecheck) {
            return Ok(Readiness::Armed);
        }
        if self.refresh_tx()? as usize >= want || self.peer_live()? == Live::Closed {
            return Ok(Readiness::Ready);
        }
        Ok(Readiness::Armed)
    }

    /// Finds `want` readable bytes (`exact`: all of them, else at least
    /// one), arming and re-checking before giving up. `Ok(0)` means the
    /// peer closed and the ring is drained (or holds too little for an
    /// exact read).
    fn wait_data(&mut self, want: usize, exact: bool) -> Result<usize, Error> {
        let need = if exact { want } else { 1 };
        let avail = self.readable(want)? as usize;
        if avail >= need {
            return Ok(avail);
        }
        self.arm(NotifyBits::WRITE)?;
        if mutation::on(Mutation::NoRecheck) {
            return Err(Error::WouldBlock);
        }
        let avail = self.refresh_rx()? as usize;
        if avail >= need {
            return Ok(avail);
        }
        if self.peer_live()? != Live::Closed {
            return Err(Error::WouldBlock);
        }
        // The peer closed. It may have written more just before: look once
        // more (the live byte was loaded with Acquire after its last index).
        let avail = self.refresh_rx()? as usize;
        Ok(if avail >= need { avail } else { 0 })
    }

    /// Copies `buf.len()` readable bytes out and counts them as read (held
    /// until published).
    fn copy_out(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        let pos = self.rx.position(self.rx.own);
        self.rx.region.read(&self.rx.mem, pos, buf)?;
        self.rx.own = self.rx.own.wrapping_add(buf.len() as u32);
        Ok(())
    }

    /// Copies `buf.len()` readable bytes out and gives them (and any held
    /// before) back to the writer.
    fn finish_read(&mut self, buf: &mut [u8]) -> Result<Transfer, Error> {
        self.copy_out(buf)?;
        // Release: our copy-out completes before the peer sees the space.
        self.publish_rx()?;
        let notify = self.peer_asked(NotifyBits::READ)?;
        Ok(Transfer {
            len: buf.len(),
            notify,
        })
    }

    /// Copies the first `len` bytes of `bufs`, in order, in and publishes
    /// them, together with any held reads: both indices under one fence,
    /// one check of both requests. `len` fits the free space.
    fn finish_write<B: Deref<Target = [u8]>>(
        &mut self,
        bufs: &[B],
        len: usize,
    ) -> Result<Transfer, Error> {
        let mut at = self.tx.own;
        let mut left = len;
        if mutation::on(Mutation::IndexBeforeCopy) {
            self.ctrl
                .store_u32(self.tx.own_at, at.wrapping_add(len as u32))?;
        }
        for buf in bufs {
            if left == 0 {
                break;
            }
            let piece = buf.get(..left.min(buf.len())).unwrap_or_default();
            self.tx
                .region
                .write(&self.tx.mem, self.tx.position(at), piece)?;
            at = at.wrapping_add(piece.len() as u32);
            left -= piece.len();
        }
        self.publish_tx(at, len)
    }

    /// Publishes our producer index `at` (`len` bytes past the last),
    /// together with any held reads: both indices under one fence, one
    /// check of both requests.
    fn publish_tx(&mut self, at: u32, len: usize) -> Result<Transfer, Error> {
        let mut asks = NotifyBits::WRITE;
        if self.held() > 0 {
            self.publish_rx()?;
            asks |= NotifyBits::READ;
        }
        // Release: the bytes are in place before the peer sees the index.
        self.tx.own = at;
        self.ctrl.store_u32(self.tx.own_at, self.tx.own)?;
        // Before the fence: the lines we fill next start moving to us while
        // it waits for the stores above.
        let free = self.tx.size - self.tx.own.wrapping_sub(self.tx.peer);
        self.tx.region.prefetch_for_producer(
            &self.tx.mem,
            self.tx.position(self.tx.own),
            free as usize,
        );
        let notify = self.peer_asked(asks)?;
        Ok(Transfer { len, notify })
    }

    /// Stream read: copies up to `buf.len()` bytes.
    ///
    /// Returns the bytes read; `len == 0` (with a non-empty `buf`) means end
    /// of stream: the peer closed and everything it wrote has been read.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] when the ring is empty and the peer is open
    /// (the wake-up request is armed); [`Error::Corrupt`] if the peer broke
    /// the protocol; [`Error::Closed`] after our own [`close`](Self::close).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::vchan::{self, Orders, ServerOptions};
    /// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # // Left (client to server) 1 KiB, right (server to client) 2 KiB.
    /// # let mut server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
    /// # let mut client = vchan::connect_flat(mem)?;
    /// use ring_core::vchan::Error;
    /// // Nothing yet: the request is armed, sleep until the client kicks.
    /// assert_eq!(server.read(&mut [0u8; 8]), Err(Error::WouldBlock));
    /// let _ = client.write(b"hello")?;
    /// let mut buf = [0u8; 3];
    /// let got = server.read(&mut buf)?; // a stream read takes what fits
    /// assert_eq!((got.len, &buf), (3, b"hel"));
    /// let _ = client.close()?;
    /// let mut rest = [0u8; 8];
    /// assert_eq!(server.read(&mut rest)?.len, 2); // written before the close
    /// assert_eq!(server.read(&mut rest)?.len, 0); // then end of stream
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read(&mut self, buf: &mut [u8]) -> Result<Transfer, Error> {
        self.usable()?;
        if buf.is_empty() {
            return Ok(Transfer::NOTHING);
        }
        let want = buf.len().min(self.rx.size as usize);
        let avail = self.wait_data(want, false)?;
        let n = avail.min(want);
        match buf.get_mut(..n) {
            Some(dst) if n > 0 => self.finish_read(dst),
            _ => Ok(Transfer::NOTHING),
        }
    }

    /// Stream read in place: offers up to `max` readable bytes to `drain`
    /// as spans of the memory the ring lives in (two when they wrap), and
    /// gives the first `n` back to the writer, where `n` is what `drain`
    /// returns (clamped to what was offered). `drain` copies the bytes out
    /// itself, through the memory it is given (see [`loan`](crate::loan)).
    ///
    /// Returns `None` at end of stream (the peer closed and everything it
    /// wrote has been read; `drain` is not called), else the bytes taken
    /// (0 if `drain` took none).
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read): [`Error::WouldBlock`] when the ring is
    /// empty and the peer open (armed; `drain` is not called).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::vchan::{self, Orders, ServerOptions};
    /// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # // Left (client to server) 1 KiB, right (server to client) 2 KiB.
    /// # let mut server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
    /// # let mut client = vchan::connect_flat(mem)?;
    /// use ring_core::loan::SpanReader;
    /// let _ = client.write(b"key=value")?;
    /// // Parse in place; give back the key and the '=' only.
    /// let mut key = [0u8; 3];
    /// let took = server.read_with(64, |mem, spans| {
    ///     let r = SpanReader::new(mem, spans);
    ///     r.read_at(0, &mut key).map_or(0, |()| 4)
    /// })?;
    /// assert_eq!((took.map(|t| t.len), &key), (Some(4), b"key"));
    /// let mut rest = [0u8; 16];
    /// let got = server.read(&mut rest)?;
    /// assert_eq!(&rest[..got.len], b"value");
    /// let _ = client.close()?;
    /// assert_eq!(server.read_with(64, |_, _| 0)?, None); // end of stream
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_with(
        &mut self,
        max: usize,
        drain: impl FnOnce(&M, &[Span]) -> usize,
    ) -> Result<Option<Transfer>, Error> {
        self.usable()?;
        let want = max.min(self.rx.size as usize);
        if want == 0 {
            return Ok(Some(Transfer::NOTHING));
        }
        let n = match self.wait_data(want, false)? {
            0 => return Ok(None),
            avail => avail.min(want),
        };
        let mut spans = SpanList::new();
        self.rx
            .region
            .push_spans(self.rx.position(self.rx.own), n, &mut spans)?;
        let took = drain(&self.rx.mem, &spans).min(n);
        if took == 0 {
            return Ok(Some(Transfer::NOTHING));
        }
        self.rx.own = self.rx.own.wrapping_add(took as u32);
        // Release: the caller's copy-out completes before the peer sees
        // the space.
        self.publish_rx()?;
        let notify = self.peer_asked(NotifyBits::READ)?;
        Ok(Some(Transfer { len: took, notify }))
    }

    /// Packet receive: fills all of `buf` or nothing.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] if `buf` is larger than the ring (it could never
    /// be filled); [`Error::WouldBlock`] until `buf.len()` bytes are there;
    /// [`Error::Closed`] if the peer closed with fewer bytes left.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::vchan::{self, Orders, ServerOptions};
    /// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # // Left (client to server) 1 KiB, right (server to client) 2 KiB.
    /// # let mut server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
    /// # let mut client = vchan::connect_flat(mem)?;
    /// use ring_core::vchan::Error;
    /// let _ = client.write(b"abc")?;
    /// let mut four = [0u8; 4];
    /// // Three bytes are not a whole packet: nothing is taken.
    /// assert_eq!(server.recv(&mut four), Err(Error::WouldBlock));
    /// let _ = client.write(b"d")?;
    /// let _ = server.recv(&mut four)?;
    /// assert_eq!(&four, b"abcd");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Transfer, Error> {
        self.usable()?;
        fits_ring(buf.len(), self.rx.size)?;
        if buf.is_empty() {
            return Ok(Transfer::NOTHING);
        }
        match self.wait_data(buf.len(), true)? {
            0 => Err(Error::Closed),
            _ => self.finish_read(buf),
        }
    }

    /// Counts readable bytes, looking for `want` (`exact`: all of them,
    /// else at least one) without arming anything. Fewer than that is
    /// `Closed` once the peer has closed.
    fn peek_data(&mut self, want: usize, exact: bool) -> Result<usize, Error> {
        let need = if exact { want } else { 1 };
        let avail = self.readable(want)? as usize;
        if avail >= need || self.peer_live()? != Live::Closed {
            return Ok(avail);
        }
        // As in `wait_data`: look once more after seeing the close.
        let avail = self.refresh_rx()? as usize;
        if avail >= need {
            return Ok(avail);
        }
        Err(Error::Closed)
    }

    /// Stream read that holds the space: copies up to `buf.len()` bytes
    /// like [`read`](Self::read), but leaves them counted as used, so the
    /// writer does not see the space yet. Never arms anything.
    ///
    /// Holding saves the fence and the shared-line write that giving space
    /// back costs: many held reads can be given back with one
    /// [`release`](Self::release), and a request read with
    /// [`recv_held`](Self::recv_held) is given back by the
    /// [`write`](Self::write) or [`send`](Self::send) of its reply, under
    /// that call's fence. While bytes are held, a call that would have to
    /// arm a wake-up returns [`Error::Held`]; `read`, `recv`, `write`,
    /// `send`, `release` and `close` give them back.
    ///
    /// Returns the bytes read; `Ok(0)` when none are there now.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] when the peer closed and everything it wrote has
    /// been read (or after our own close); [`Error::Corrupt`] if the peer
    /// broke the protocol.
    pub fn read_held(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.usable()?;
        if buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(self.rx.size as usize);
        let n = self.peek_data(want, false)?.min(want);
        match buf.get_mut(..n) {
            Some(dst) if n > 0 => {
                self.copy_out(dst)?;
                Ok(n)
            }
            _ => Ok(0),
        }
    }

    /// Packet receive that holds the space: fills all of `buf` or nothing,
    /// like [`recv`](Self::recv), without giving the bytes back (see
    /// [`read_held`](Self::read_held)). Never arms anything.
    ///
    /// Returns `true` if `buf` was filled, `false` if fewer bytes are there
    /// now.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] if `buf` is larger than the ring;
    /// [`Error::Closed`] if the peer closed with fewer bytes left.
    pub fn recv_held(&mut self, buf: &mut [u8]) -> Result<bool, Error> {
        self.usable()?;
        fits_ring(buf.len(), self.rx.size)?;
        if buf.is_empty() {
            return Ok(true);
        }
        if self.peek_data(buf.len(), true)? < buf.len() {
            return Ok(false);
        }
        self.copy_out(buf)?;
        Ok(true)
    }

    /// Gives every held byte back to the writer: publishes our consumer
    /// index, fences, and says in [`Transfer::notify`] whether the writer
    /// asked to be kicked. `len` is the number of bytes given back.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] on a poisoned endpoint, [`Error::Closed`] after
    /// our own close (which gave them back already).
    pub fn release(&mut self) -> Result<Transfer, Error> {
        self.usable()?;
        let len = self.held();
        if len == 0 {
            return Ok(Transfer::NOTHING);
        }
        self.publish_rx()?;
        let notify = self.peer_asked(NotifyBits::READ)?;
        Ok(Transfer { len, notify })
    }

    /// Finds room for `want` bytes (`exact`: all, else at least one).
    fn wait_space(&mut self, want: usize, exact: bool) -> Result<usize, Error> {
        if self.peer_live()? == Live::Closed {
            return Err(Error::Closed);
        }
        let need = if exact { want } else { 1 };
        let free = self.writable(want)? as usize;
        if free >= need {
            return Ok(free);
        }
        self.arm(NotifyBits::READ)?;
        if mutation::on(Mutation::NoRecheck) {
            return Err(Error::WouldBlock);
        }
        let free = self.refresh_tx()? as usize;
        if free >= need {
            return Ok(free);
        }
        if self.peer_live()? == Live::Closed {
            return Err(Error::Closed);
        }
        Err(Error::WouldBlock)
    }

    /// Stream write: copies as much of `buf` as fits now.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the peer has closed; [`Error::WouldBlock`] when
    /// the ring is full (the wake-up request is armed);
    /// [`Error::Corrupt`] if the peer broke the protocol.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::vchan::{self, Orders, ServerOptions};
    /// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # // Left (client to server) 1 KiB, right (server to client) 2 KiB.
    /// # let mut server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
    /// # let mut client = vchan::connect_flat(mem)?;
    /// use ring_core::vchan::Error;
    /// // The client writes the left ring, 1 KiB here.
    /// let sent = client.write(&[7u8; 1500])?;
    /// assert_eq!(sent.len, 1024); // a stream write copies what fits
    /// assert!(sent.notify); // the server asked for a kick on the first write
    /// assert_eq!(client.write(b"more"), Err(Error::WouldBlock));
    /// let _ = server.close()?;
    /// assert_eq!(client.write(b"more"), Err(Error::Closed));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write(&mut self, buf: &[u8]) -> Result<Transfer, Error> {
        self.write_vectored(&[buf])
    }

    /// Stream write of several buffers, in order, as one: copies as much
    /// of them as fits now and publishes it with one index store and one
    /// fence. Gathering many small messages this way costs one wake-up
    /// check instead of one per message.
    ///
    /// Accepts `&[&[u8]]`, `&[std::io::IoSlice]` and the like.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    pub fn write_vectored<B: Deref<Target = [u8]>>(
        &mut self,
        bufs: &[B],
    ) -> Result<Transfer, Error> {
        self.usable_for_write()?;
        let total = total_len(bufs);
        if total == 0 {
            return Ok(Transfer::NOTHING);
        }
        let want = total.min(self.tx.size as usize);
        let free = self.wait_space(want, false)?;
        self.finish_write(bufs, free.min(want))
    }

    /// Stream write in place: offers up to `max` bytes of the free space
    /// to `fill` as spans of the memory the ring lives in (two when the
    /// space wraps), and publishes the first `n` bytes, where `n` is what
    /// `fill` returns (clamped to what was offered). `fill` writes the
    /// bytes itself, through the memory it is given (see
    /// [`loan`](crate::loan)).
    ///
    /// Returns the bytes published; 0 if `fill` wrote none (nothing is
    /// armed then: the caller waits for its own source).
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write): [`Error::WouldBlock`] when the ring is
    /// full (armed; `fill` is not called).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::vchan::{self, Orders, ServerOptions};
    /// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # // Left (client to server) 1 KiB, right (server to client) 2 KiB.
    /// # let mut server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
    /// # let mut client = vchan::connect_flat(mem)?;
    /// use ring_core::loan::SpanWriter;
    /// // Move the ring's position near its end: 1000 of 1024 bytes.
    /// let _ = client.write(&[0u8; 1000])?;
    /// let _ = server.read(&mut [0u8; 1000])?;
    /// let sent = client.write_with(48, |mem, spans| {
    ///     // The free space wraps: 24 bytes at the end, 24 at the start.
    ///     assert_eq!(spans.iter().map(|s| s.len).collect::<Vec<_>>(), [24, 24]);
    ///     let mut w = SpanWriter::new(mem, spans);
    ///     w.write_at(0, &[b'x'; 48]).map_or(0, |()| w.len())
    /// })?;
    /// assert_eq!(sent.len, 48);
    /// let mut buf = [0u8; 48];
    /// assert_eq!(server.read(&mut buf)?.len, 48);
    /// assert_eq!(buf, [b'x'; 48]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_with(
        &mut self,
        max: usize,
        fill: impl FnOnce(&M, &[Span]) -> usize,
    ) -> Result<Transfer, Error> {
        self.usable_for_write()?;
        let want = max.min(self.tx.size as usize);
        if want == 0 {
            return Ok(Transfer::NOTHING);
        }
        let n = self.wait_space(want, false)?.min(want);
        let mut spans = SpanList::new();
        self.tx
            .region
            .push_spans(self.tx.position(self.tx.own), n, &mut spans)?;
        let filled = fill(&self.tx.mem, &spans).min(n);
        if filled == 0 {
            return Ok(Transfer::NOTHING);
        }
        self.publish_tx(self.tx.own.wrapping_add(filled as u32), filled)
    }

    /// Packet send: writes all of `buf` or nothing.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] if `buf` is larger than the ring;
    /// [`Error::WouldBlock`] until it fits; [`Error::Closed`] if the peer
    /// has closed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::vchan::{self, Orders, ServerOptions};
    /// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # // Left (client to server) 1 KiB, right (server to client) 2 KiB.
    /// # let mut server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
    /// # let mut client = vchan::connect_flat(mem)?;
    /// use ring_core::vchan::Error;
    /// let _ = client.send(&[1u8; 1000])?;
    /// // 24 bytes are left in the 1 KiB ring, and a packet never goes in part.
    /// assert_eq!(client.send(&[2u8; 100]), Err(Error::WouldBlock));
    /// let too_big = client.send(&[0u8; 2000]);
    /// assert_eq!(too_big, Err(Error::TooLarge { len: 2000, capacity: 1024 }));
    /// let mut packet = [0u8; 1000];
    /// let _ = server.recv(&mut packet)?;
    /// assert_eq!(packet, [1u8; 1000]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send(&mut self, buf: &[u8]) -> Result<Transfer, Error> {
        self.send_vectored(&[buf])
    }

    /// Packet send of several buffers as one packet (a header and its
    /// payload, say, without copying them together first): all of them or
    /// nothing, with one index store and one fence.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), for their total length.
    pub fn send_vectored<B: Deref<Target = [u8]>>(
        &mut self,
        bufs: &[B],
    ) -> Result<Transfer, Error> {
        self.usable_for_write()?;
        let total = total_len(bufs);
        fits_ring(total, self.tx.size)?;
        if total == 0 {
            return Ok(Transfer::NOTHING);
        }
        self.wait_space(total, true)?;
        self.finish_write(bufs, total)
    }

    /// True while the peer is connected (or, for a server, not yet
    /// connected) and we have not closed.
    pub fn is_open(&mut self) -> Result<bool, Error> {
        if self.closed {
            return Ok(false);
        }
        Ok(self.peer_live()? != Live::Closed)
    }

    /// Whether we have hung up ([`hang_up`](Self::hang_up)): writes fail
    /// with [`Error::Closed`], reads go on.
    pub fn is_hung_up(&self) -> bool {
        self.hung_up || self.closed
    }

    /// Clears our live byte, as [`close`](Self::close) does, but goes on
    /// reading: bytes the peer published before it saw the close can still
    /// be read, and then end of stream (the peer's live byte) or
    /// [`Error::WouldBlock`]. Writes fail with [`Error::Closed`]. The peer
    /// must be kicked (the returned transfer says so). vchan has no
    /// half-close: this is the last look a reader that ends the stream gets
    /// at what the peer sent. Later calls do nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::vchan::{self, Orders, ServerOptions};
    /// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # let mut server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
    /// # let mut client = vchan::connect_flat(mem)?;
    /// use ring_core::vchan::Error;
    /// let _ = client.write(b"in flight")?;
    /// assert!(server.hang_up()?.notify);
    /// assert!(!client.is_open()?); // the client sees the close
    /// assert_eq!(client.write(b"late"), Err(Error::Closed));
    /// let mut buf = [0u8; 16];
    /// assert_eq!(server.read(&mut buf)?.len, 9); // still read
    /// assert_eq!(server.write(b"x"), Err(Error::Closed));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn hang_up(&mut self) -> Result<Transfer, Error> {
        self.usable()?;
        if self.hung_up {
            return Ok(Transfer::NOTHING);
        }
        self.hung_up = true;
        self.ctrl.store_u8(self.own_live, Live::Closed as u8)?;
        self.ctrl.fence();
        Ok(Transfer {
            len: 0,
            notify: true,
        })
    }

    /// Closes our end: marks us not live. The peer must be kicked
    /// unconditionally (the returned transfer says so), so a peer blocked on
    /// us wakes and sees the close. Later calls return [`Error::Closed`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::sync::atomic::AtomicU64;
    /// # use ring_core::mem::RawMem;
    /// # use ring_core::vchan::{self, Orders, ServerOptions};
    /// # let words: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    /// # let mem = RawMem::from_atomics(&words);
    /// # // Left (client to server) 1 KiB, right (server to client) 2 KiB.
    /// # let mut server = vchan::serve_flat(mem, Orders::new(10, 11)?, ServerOptions::default())?;
    /// # let mut client = vchan::connect_flat(mem)?;
    /// use ring_core::vchan::Error;
    /// let _ = client.write(b"last words")?;
    /// let kick = client.close()?;
    /// assert!(kick.notify); // always kick the peer after a close
    /// assert!(!server.is_open()?);
    /// let mut buf = [0u8; 16];
    /// assert_eq!(server.read(&mut buf)?.len, 10); // still delivered
    /// assert_eq!(client.write(b"x"), Err(Error::Closed));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(&mut self) -> Result<Transfer, Error> {
        if self.closed {
            return Ok(Transfer::NOTHING);
        }
        self.closed = true;
        // Held bytes go back first: a writer may be waiting for them, and
        // the kick below wakes it whatever it waits for.
        if self.held() > 0 {
            self.publish_rx()?;
        }
        self.ctrl.store_u8(self.own_live, Live::Closed as u8)?;
        self.ctrl.fence();
        Ok(Transfer {
            len: 0,
            notify: true,
        })
    }
}

#[cfg(test)]
mod tests;
