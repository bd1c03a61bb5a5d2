//! Decoding the control state of a vchan page or a VMBus channel: the
//! facts behind `ring inspect`, as typed values (the command lays them out
//! as a table or JSON).
//!
//! Works on a copy of the page's first bytes (read with `pread`, never
//! mapped), so inspecting a live ring cannot disturb it or fault on it.
//! Everything is reported as found, including values a hostile or broken
//! peer wrote; the decoder only says which ones make no sense.
//!
//! ```
//! use ring_hosted::inspect::decode_vchan;
//!
//! let mut page = [0u8; 24];
//! page[4..8].copy_from_slice(&100u32.to_le_bytes()); // left prod
//! page[16] = 12; // left order
//! page[18] = 11; // right order
//! page[20] = 1; // client live
//! page[21] = 1; // server live
//! page[22] = 1; // server asked the client: kick me on write
//! let s = decode_vchan(&page).unwrap();
//! assert_eq!(s.left.used, 100);
//! assert_eq!(s.owed.len(), 1);
//! assert_eq!(s.owed[0].from, "client");
//! ```

pub mod validate;

use ring_core::vchan::layout::{
    CLI_LIVE, CLI_NOTIFY, LEFT_CONS, LEFT_ORDER, LEFT_PROD, RIGHT_CONS, RIGHT_ORDER, RIGHT_PROD,
    SRV_LIVE, SRV_NOTIFY,
};
use ring_core::vchan::{NotifyBits, Orders, SetupError};
use std::fmt;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes of the control header that `inspect` decodes.
pub const HEADER_LEN: usize = 24;

/// One ring's state as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingState {
    /// "left" or "right".
    pub name: &'static str,
    /// Which side writes it.
    pub writer: &'static str,
    /// Which side reads it.
    pub reader: &'static str,
    /// The order field.
    pub order: u16,
    /// The ring size, if the order is in 10..=20.
    pub size: Option<u32>,
    /// Producer index.
    pub prod: u32,
    /// Consumer index.
    pub cons: u32,
    /// `prod - cons`, wrapping.
    pub used: u32,
    /// `size - used`, if the size is known and `used <= size`.
    pub free: Option<u32>,
}

impl RingState {
    /// Whether the size is known and the ring holds no more than it.
    pub fn consistent(&self) -> bool {
        self.size.is_some_and(|s| self.used <= s)
    }
}

/// A signal one side owes the other: the other asked to be woken on a
/// condition that already holds. Fleetingly normal; if it persists, the
/// ring is stuck and one kick unsticks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owed {
    /// Who should kick ("client" or "server").
    pub from: &'static str,
    /// Who is waiting.
    pub to: &'static str,
    /// Why: what the waiter asked for and what the ring holds.
    pub why: Why,
}

/// Why a signal is owed: a waiter's request, and the ring that already
/// meets it. Its `Display` says it in one sentence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// vchan: `waiter` asked to be woken for data, and `ring` holds
    /// `bytes`.
    Data {
        /// Who asked.
        waiter: &'static str,
        /// The ring ("left" or "right").
        ring: &'static str,
        /// Bytes it holds.
        bytes: u32,
    },
    /// vchan: `waiter` asked to be woken for space, and `ring` has `free`
    /// bytes free.
    Space {
        /// Who asked.
        waiter: &'static str,
        /// The ring ("left" or "right").
        ring: &'static str,
        /// Bytes free.
        free: u32,
    },
    /// VMBus: `reader` has not masked its interrupts and `ring` holds
    /// `bytes` it has not read.
    Unread {
        /// The ring's reader.
        reader: &'static str,
        /// The ring ("to-server" or "to-client").
        ring: &'static str,
        /// Unread bytes.
        bytes: u32,
    },
    /// VMBus: `writer` waits (`pending_send_size`) for `wanted` free bytes
    /// and `ring` has more than that, `free`.
    Pending {
        /// The ring's writer.
        writer: &'static str,
        /// The free space it asked for.
        wanted: u32,
        /// The ring ("to-server" or "to-client").
        ring: &'static str,
        /// Bytes free.
        free: u32,
    },
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Why::Data {
                waiter,
                ring,
                bytes,
            } => {
                write!(
                    f,
                    "{waiter} waits for data and the {ring} ring holds {bytes} bytes"
                )
            }
            Why::Space { waiter, ring, free } => {
                write!(
                    f,
                    "{waiter} waits for space and the {ring} ring has {free} bytes free"
                )
            }
            Why::Unread {
                reader,
                ring,
                bytes,
            } => write!(
                f,
                "{reader} has {bytes} unread bytes in the {ring} ring and is not masked"
            ),
            Why::Pending {
                writer,
                wanted,
                ring,
                free,
            } => write!(
                f,
                "{writer} waits for {wanted} free bytes in the {ring} ring, which has {free}"
            ),
        }
    }
}

/// A header too short to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooShort {
    /// Which header ("vchan control header", "VMBus control header").
    pub what: &'static str,
    /// Bytes given.
    pub len: usize,
    /// Bytes it needs.
    pub need: usize,
}

impl fmt::Display for TooShort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes is too short for a {} ({} bytes)",
            self.len, self.what, self.need
        )
    }
}

impl std::error::Error for TooShort {}

/// The decoded control state of a vchan page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VchanState {
    /// Client→server ring.
    pub left: RingState,
    /// Server→client ring.
    pub right: RingState,
    /// Client live byte.
    pub cli_live: u8,
    /// Server live byte.
    pub srv_live: u8,
    /// Requests aimed at the client (set by the server).
    pub cli_notify: u8,
    /// Requests aimed at the server (set by the client).
    pub srv_notify: u8,
    /// Why the order pair is invalid, if it is.
    pub orders_problem: Option<SetupError>,
    /// Signals owed.
    pub owed: Vec<Owed>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(b.get(at..at + 4).unwrap_or(&[0; 4]));
    u32::from_le_bytes(w)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut w = [0u8; 2];
    w.copy_from_slice(b.get(at..at + 2).unwrap_or(&[0; 2]));
    u16::from_le_bytes(w)
}

fn ring(
    b: &[u8],
    name: &'static str,
    writer: &'static str,
    reader: &'static str,
    at: [usize; 3],
) -> RingState {
    let [prod_at, cons_at, order_at] = at;
    let (prod, cons, order) = (u32_at(b, prod_at), u32_at(b, cons_at), u16_at(b, order_at));
    let size = (10..=20).contains(&order).then(|| 1u32 << order);
    let used = prod.wrapping_sub(cons);
    RingState {
        name,
        writer,
        reader,
        order,
        size,
        prod,
        cons,
        used,
        free: size.and_then(|s| s.checked_sub(used)),
    }
}

/// Decodes the first [`HEADER_LEN`] bytes of a vchan control page.
///
/// # Errors
///
/// Only if `page` is shorter than the header.
///
/// # Examples
///
/// The header of a live pair, copied out of its memory: the six bytes the
/// client wrote wait in the left ring.
///
/// ```
/// use ring_core::mem::SharedMem;
/// use ring_hosted::inspect::{decode_vchan, HEADER_LEN};
/// use ring_hosted::stream;
///
/// let (server, mut client) = stream::pair(1024, 2048)?;
/// client.write_all(b"unread")?;
/// let mut header = [0u8; HEADER_LEN];
/// server.memory().read(0, &mut header)?;
/// let state = decode_vchan(&header)?;
/// assert_eq!((state.left.used, state.left.size), (6, Some(1024)));
/// assert_eq!(state.right.size, Some(2048));
/// assert_eq!(state.orders_problem, None);
/// assert!(decode_vchan(&header[..10]).is_err()); // too short for a header
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn decode_vchan(page: &[u8]) -> Result<VchanState, TooShort> {
    if page.len() < HEADER_LEN {
        return Err(TooShort {
            what: "vchan control header",
            len: page.len(),
            need: HEADER_LEN,
        });
    }
    let byte = |at: usize| page.get(at).copied().unwrap_or(0);
    let left = ring(
        page,
        "left",
        "client",
        "server",
        [LEFT_PROD, LEFT_CONS, LEFT_ORDER],
    );
    let right = ring(
        page,
        "right",
        "server",
        "client",
        [RIGHT_PROD, RIGHT_CONS, RIGHT_ORDER],
    );
    let orders_problem = Orders::from_wire(left.order, right.order).err();
    let (cli_notify, srv_notify) = (byte(CLI_NOTIFY), byte(SRV_NOTIFY));
    let mut owed = Vec::new();
    // (request byte, who set it, who must kick)
    for (bits, waiter, kicker, data_ring, space_ring) in [
        (cli_notify, "server", "client", &left, &right),
        (srv_notify, "client", "server", &right, &left),
    ] {
        let bits = NotifyBits::from_bits_retain(bits);
        if bits.contains(NotifyBits::WRITE) && data_ring.used > 0 {
            owed.push(Owed {
                from: kicker,
                to: waiter,
                why: Why::Data {
                    waiter,
                    ring: data_ring.name,
                    bytes: data_ring.used,
                },
            });
        }
        if let Some(free) = space_ring.free.filter(|&f| f > 0) {
            if bits.contains(NotifyBits::READ) {
                owed.push(Owed {
                    from: kicker,
                    to: waiter,
                    why: Why::Space {
                        waiter,
                        ring: space_ring.name,
                        free,
                    },
                });
            }
        }
    }
    Ok(VchanState {
        left,
        right,
        cli_live: byte(CLI_LIVE),
        srv_live: byte(SRV_LIVE),
        cli_notify,
        srv_notify,
        orders_problem,
        owed,
    })
}

/// Reads the first [`HEADER_LEN`] bytes of a file (a shm file, or a
/// memfd via `/proc/PID/fd/N`) without mapping it.
///
/// # Errors
///
/// The open or read error; `UnexpectedEof` for a shorter file.
///
/// # Examples
///
/// Inspecting a memfd from outside, through `/proc`, as `ring inspect` does:
///
/// ```
/// use ring_hosted::inspect::{decode_vchan, read_header};
/// use ring_hosted::stream;
/// use std::os::fd::{AsFd, AsRawFd};
/// use std::path::PathBuf;
///
/// let (server, mut client) = stream::pair(4096, 4096)?;
/// client.write_all(b"seen from outside")?;
/// let fd = server.memory().as_fd().as_raw_fd();
/// let path = PathBuf::from(format!("/proc/self/fd/{fd}"));
/// let state = decode_vchan(&read_header(&path)?)?;
/// assert_eq!(state.left.used, 17);
/// assert_eq!(state.right.used, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_header(path: &Path) -> io::Result<[u8; HEADER_LEN]> {
    let file = std::fs::File::open(path)?;
    let mut b = [0u8; HEADER_LEN];
    file.read_exact_at(&mut b, 0).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                e.kind(),
                format!("file is shorter than a vchan control header ({HEADER_LEN} bytes)"),
            )
        } else {
            e
        }
    })?;
    Ok(b)
}

/// One VMBus ring's control state as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmbusRingState {
    /// "to-server" or "to-client".
    pub name: &'static str,
    /// Which side writes it.
    pub writer: &'static str,
    /// Which side reads it.
    pub reader: &'static str,
    /// Size of the data area.
    pub data_size: u32,
    /// Writer's index.
    pub write_index: u32,
    /// Reader's index.
    pub read_index: u32,
    /// Reader's interrupt mask.
    pub interrupt_mask: u32,
    /// Writer's pending send size.
    pub pending_send_size: u32,
    /// Writer's feature bits.
    pub feature_bits: u32,
    /// Unread bytes, if both indices are valid (8-aligned, in range).
    pub used: Option<u32>,
}

/// The decoded control state of a VMBus channel (two rings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmbusState {
    /// The client→server ring.
    pub to_server: VmbusRingState,
    /// The server→client ring.
    pub to_client: VmbusRingState,
    /// Signals owed.
    pub owed: Vec<Owed>,
}

/// Bytes of a VMBus control header that `inspect` decodes.
pub const VMBUS_HEADER_LEN: usize = 0x44;

fn vmbus_ring(
    b: &[u8],
    name: &'static str,
    writer: &'static str,
    reader: &'static str,
    data_size: u32,
) -> VmbusRingState {
    use ring_core::vmbus::layout::{
        FEATURE_BITS, INTERRUPT_MASK, PENDING_SEND_SIZE, READ_INDEX, WRITE_INDEX,
    };
    let (w, r) = (u32_at(b, WRITE_INDEX), u32_at(b, READ_INDEX));
    let valid = |i: u32| i.is_multiple_of(8) && i < data_size;
    let used = (valid(w) && valid(r)).then(|| if w >= r { w - r } else { data_size - r + w });
    VmbusRingState {
        name,
        writer,
        reader,
        data_size,
        write_index: w,
        read_index: r,
        interrupt_mask: u32_at(b, INTERRUPT_MASK),
        pending_send_size: u32_at(b, PENDING_SEND_SIZE),
        feature_bits: u32_at(b, FEATURE_BITS),
        used,
    }
}

/// Decodes a VMBus channel from the two rings' control headers (the first
/// [`VMBUS_HEADER_LEN`] bytes of each control page) and their data sizes.
///
/// # Errors
///
/// If a header is too short.
///
/// # Examples
///
/// A VMBus channel between two ends in one process, decoded from the file
/// while a packet waits in the ring to the server:
///
/// ```
/// use ring_hosted::inspect::{decode_vmbus, read_at, VMBUS_HEADER_LEN};
/// use ring_hosted::vmbus::{ChannelLayout, VmbusPipe};
/// use ring_hosted::{eventfd, memfd::MemFd};
/// use std::os::fd::{AsFd, AsRawFd};
/// use std::sync::Arc;
///
/// let layout = ChannelLayout::new(4096, 4096)?;
/// let mem = Arc::new(MemFd::create("doc-inspect-vmbus", layout.total_size())?);
/// let (server_signal, client_signal) = eventfd::pair()?;
/// let _server = VmbusPipe::serve(mem.clone(), layout, server_signal)?;
/// let mut client = VmbusPipe::connect(mem.clone(), layout, client_signal)?;
/// client.write_all(b"queued")?;
///
/// let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", mem.as_fd().as_raw_fd()));
/// let to_server: [u8; VMBUS_HEADER_LEN] = read_at(&path, 0)?;
/// let to_client: [u8; VMBUS_HEADER_LEN] = read_at(&path, layout.to_client_offset() as u64)?;
/// let state = decode_vmbus(&to_server, 4096, &to_client, 4096)?;
/// // One packet: its header, the six bytes, padding to 8, a trailer.
/// assert!(state.to_server.used.is_some_and(|n| n > 6 && n % 8 == 0));
/// assert_eq!(state.to_client.used, Some(0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn decode_vmbus(
    to_server: &[u8],
    to_server_size: u32,
    to_client: &[u8],
    to_client_size: u32,
) -> Result<VmbusState, TooShort> {
    let len = to_server.len().min(to_client.len());
    if len < VMBUS_HEADER_LEN {
        return Err(TooShort {
            what: "VMBus control header",
            len,
            need: VMBUS_HEADER_LEN,
        });
    }
    let a = vmbus_ring(to_server, "to-server", "client", "server", to_server_size);
    let b = vmbus_ring(to_client, "to-client", "server", "client", to_client_size);
    let mut owed = Vec::new();
    for r in [&a, &b] {
        if let Some(used) = r.used {
            if used > 0 && r.interrupt_mask == 0 {
                owed.push(Owed {
                    from: r.writer,
                    to: r.reader,
                    why: Why::Unread {
                        reader: r.reader,
                        ring: r.name,
                        bytes: used,
                    },
                });
            }
            let free = r.data_size - used;
            let honoured = r.feature_bits & 1 != 0;
            if honoured && r.pending_send_size != 0 && free > r.pending_send_size {
                owed.push(Owed {
                    from: r.reader,
                    to: r.writer,
                    why: Why::Pending {
                        writer: r.writer,
                        wanted: r.pending_send_size,
                        ring: r.name,
                        free,
                    },
                });
            }
        }
    }
    Ok(VmbusState {
        to_server: a,
        to_client: b,
        owed,
    })
}

/// Reads `N` bytes at `offset` of a file without mapping it.
///
/// # Errors
///
/// The open or read error; `UnexpectedEof` for a shorter file.
///
/// # Examples
///
/// ```
/// use ring_hosted::inspect::read_at;
///
/// let path = std::env::temp_dir().join(format!("ring-doc-read-at-{}", std::process::id()));
/// std::fs::write(&path, [&[0u8; 4096][..], b"MARK"].concat())?;
/// let got: [u8; 4] = read_at(&path, 4096)?;
/// assert_eq!(&got, b"MARK");
/// assert!(read_at::<8>(&path, 4096).is_err()); // runs past the end
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_at<const N: usize>(path: &Path, offset: u64) -> io::Result<[u8; N]> {
    let file = std::fs::File::open(path)?;
    let mut b = [0u8; N];
    file.read_exact_at(&mut b, offset)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(f: impl FnOnce(&mut [u8; 24])) -> VchanState {
        let mut p = [0u8; 24];
        p[16] = 12;
        p[18] = 13;
        f(&mut p);
        decode_vchan(&p).unwrap()
    }

    #[test]
    fn quiet_page_owes_nothing() {
        let s = page(|p| {
            p[20] = 2;
            p[21] = 1;
        });
        assert_eq!(s.left.size, Some(4096));
        assert_eq!(s.right.free, Some(8192));
        assert!(s.owed.is_empty());
        assert!(s.orders_problem.is_none());
        assert_eq!((s.cli_live, s.srv_live), (2, 1));
    }

    #[test]
    fn requests_that_already_hold_are_owed_signals() {
        // Client asks server: kick me on read (space), and left has space.
        let s = page(|p| p[23] = 2);
        assert_eq!(s.owed.len(), 1);
        assert_eq!((s.owed[0].from, s.owed[0].to), ("server", "client"));
        // Client waits for data on right, which holds 5 bytes.
        let s = page(|p| {
            p[12] = 5;
            p[23] = 1;
        });
        assert_eq!(s.owed.len(), 1);
        assert_eq!(
            s.owed[0].why.to_string(),
            "client waits for data and the right ring holds 5 bytes"
        );
    }

    #[test]
    fn vmbus_rings_and_owed_signals() {
        let mut a = [0u8; VMBUS_HEADER_LEN];
        a[0..4].copy_from_slice(&64u32.to_le_bytes()); // write
        let mut b = [0u8; VMBUS_HEADER_LEN];
        b[0..4].copy_from_slice(&8u32.to_le_bytes()); // write
        b[4..8].copy_from_slice(&16u32.to_le_bytes()); // read: wrapped
        b[8..12].copy_from_slice(&1u32.to_le_bytes()); // masked
        b[12..16].copy_from_slice(&100u32.to_le_bytes()); // pending
        b[0x40] = 1; // honours pending_send_size
        let s = decode_vmbus(&a, 4096, &b, 4096).unwrap();
        assert_eq!(s.to_server.used, Some(64));
        assert_eq!(s.to_client.used, Some(4096 - 8));
        assert_eq!(s.owed.len(), 1, "{:?}", s.owed);
        assert_eq!((s.owed[0].from, s.owed[0].to), ("client", "server"));
        // A writer waiting for space that is there.
        b[0..4].copy_from_slice(&16u32.to_le_bytes());
        let s = decode_vmbus(&a, 4096, &b, 4096).unwrap();
        assert!(s.owed.iter().any(|o| o.from == "client"
            && o.to == "server"
            && o.why.to_string().contains("waits for 100 free bytes")));
        // Nonsense indices are reported, not used.
        a[0..4].copy_from_slice(&5u32.to_le_bytes());
        let s = decode_vmbus(&a, 4096, &b, 4096).unwrap();
        assert_eq!(s.to_server.used, None);
        assert_eq!(
            decode_vmbus(&a[..10], 4096, &b, 4096)
                .unwrap_err()
                .to_string(),
            "10 bytes is too short for a VMBus control header (68 bytes)"
        );
    }

    #[test]
    fn nonsense_is_reported_not_trusted() {
        let s = page(|p| {
            p[4..8].copy_from_slice(&100_000u32.to_le_bytes());
            p[16] = 30;
            p[20] = 9;
        });
        assert_eq!(s.left.size, None);
        assert_eq!(s.orders_problem, Some(SetupError::BadOrder { order: 30 }));
        assert!(!s.left.consistent());
        assert_eq!(s.cli_live, 9);
        assert_eq!(
            decode_vchan(&[0; 10]).unwrap_err(),
            TooShort {
                what: "vchan control header",
                len: 10,
                need: 24
            }
        );
    }
}
