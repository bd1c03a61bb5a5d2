//! Validating a ring image the way a reader would, for `ring inspect`.
//!
//! The file is read once into private memory ([`read_image`]: never
//! mapped, never blocking, only regular files and memfds) and the checks
//! run on that copy, so a live peer cannot change what we look at
//! half-way. VMBus packets are walked with ring-core's own incoming ring,
//! the code that reads them in production, over the copy; it never
//! commits, so even the copy keeps its indices.

use super::{VchanState, VmbusState};
use ring_core::mem::RawMem;
use ring_core::vchan::layout::{placement, Placement, GRANTS, PAGE_SIZE};
use ring_core::vchan::{Live, NotifyBits};
use ring_core::vmbus::{self, IncomingRing, RingLayout};
use std::fmt;
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::AtomicU64;

/// The largest image `inspect` reads (two 1 MiB vchan rings fit many
/// times; a VMBus channel of two 64 MiB rings fits).
pub const MAX_IMAGE: u64 = 256 << 20;

/// A rule the image breaks, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Byte offset in the file of the field or packet at fault.
    pub offset: u64,
    /// What is wrong, in a few words.
    pub what: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.what)
    }
}

/// Reads a whole ring image without blocking and without mapping it.
///
/// Opens with `O_NONBLOCK` (a FIFO or device never holds us in `open`),
/// then refuses anything that is not a regular file (memfds and shm files
/// are) or is larger than [`MAX_IMAGE`].
///
/// # Errors
///
/// The open or read error, or `InvalidInput` for another kind of file.
///
/// # Examples
///
/// ```
/// use ring_hosted::inspect::validate::read_image;
/// use std::io::ErrorKind;
///
/// let path = std::env::temp_dir().join(format!("ring-doc-image-{}", std::process::id()));
/// std::fs::write(&path, [1u8; 8192])?;
/// assert_eq!(read_image(&path)?, vec![1u8; 8192]);
/// // A directory (like a FIFO or a device) is no ring image.
/// let dir = read_image(&std::env::temp_dir());
/// assert!(matches!(dir, Err(e) if e.kind() == ErrorKind::InvalidInput));
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_image(path: &Path) -> io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}, not a ring image (a regular file or memfd)"),
        ));
    }
    let len = meta.len();
    if len > MAX_IMAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{len} bytes is more than the {MAX_IMAGE} bytes inspect reads"),
        ));
    }
    let mut image = vec![0u8; len as usize];
    file.read_exact_at(&mut image, 0)?;
    Ok(image)
}

fn libc_flags() -> i32 {
    (rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32
}

/// Checks a vchan image (control page at offset 0) against the rules a
/// reader enforces: orders, live bytes, notify bits, indices within their
/// rings, and grant refs that name pages of this file other than the
/// control page, each once.
///
/// # Examples
///
/// A healthy pair's image passes; a producer index more than a ring ahead
/// of its consumer is reported at its offset:
///
/// ```
/// use ring_core::vchan::layout::LEFT_PROD;
/// use ring_hosted::inspect::{decode_vchan, validate};
/// use ring_hosted::stream;
/// use std::os::fd::{AsFd, AsRawFd};
///
/// let (server, mut client) = stream::pair(4096, 4096)?;
/// client.write_all(b"fine")?;
/// let path = format!("/proc/self/fd/{}", server.memory().as_fd().as_raw_fd());
/// let mut image = validate::read_image(std::path::Path::new(&path))?;
/// let findings = validate::vchan(&image, &decode_vchan(&image)?);
/// assert!(findings.is_empty(), "{findings:?}");
///
/// image[LEFT_PROD..LEFT_PROD + 4].copy_from_slice(&5000u32.to_le_bytes());
/// let findings = validate::vchan(&image, &decode_vchan(&image)?);
/// assert!(findings.iter().any(|f| f.offset == LEFT_PROD as u64), "{findings:?}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn vchan(image: &[u8], state: &VchanState) -> Vec<Finding> {
    use ring_core::vchan::layout::{
        CLI_LIVE, CLI_NOTIFY, LEFT_ORDER, LEFT_PROD, RIGHT_PROD, SRV_LIVE, SRV_NOTIFY,
    };
    let mut found = Vec::new();
    let mut say = |offset: usize, what: String| {
        found.push(Finding {
            offset: offset as u64,
            what,
        })
    };
    if let Some(p) = &state.orders_problem {
        say(LEFT_ORDER, format!("ring orders: {p}"));
    }
    for (at, byte, who, may_wait) in [
        (CLI_LIVE, state.cli_live, "client", true),
        (SRV_LIVE, state.srv_live, "server", false),
    ] {
        match Live::from_byte(byte) {
            None => say(
                at,
                format!("{who} live byte holds {byte}, which means nothing"),
            ),
            Some(Live::Waiting) if !may_wait => say(
                at,
                format!("{who} live byte holds 2, which only a client may"),
            ),
            Some(_) => {}
        }
    }
    for (at, byte) in [
        (CLI_NOTIFY, state.cli_notify),
        (SRV_NOTIFY, state.srv_notify),
    ] {
        if NotifyBits::from_bits(byte).is_none() {
            say(at, format!("notify byte {byte:#04x} has undefined bits"));
        }
    }
    for (at, r) in [(LEFT_PROD, &state.left), (RIGHT_PROD, &state.right)] {
        if let Some(size) = r.size {
            if r.used > size {
                say(
                    at,
                    format!(
                        "{} ring: producer {} is {} bytes past consumer {}, more than its {size}",
                        r.name, r.prod, r.used, r.cons
                    ),
                );
            }
        }
    }
    if state.orders_problem.is_none() {
        let pages = image.len() / PAGE_SIZE;
        let mut seen = std::collections::BTreeSet::new();
        let mut slot = 0usize;
        for r in [&state.left, &state.right] {
            let Ok(order) = u8::try_from(r.order) else {
                continue;
            };
            let count = match placement(order) {
                Placement::External { pages } => pages,
                Placement::InPage { .. } => 0,
            };
            for _ in 0..count {
                let at = GRANTS + 4 * slot;
                slot += 1;
                let Some(raw) = image.get(at..at + 4) else {
                    say(at, "grant list runs past the control page".into());
                    continue;
                };
                let gref = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
                if gref == 0 {
                    say(
                        at,
                        format!("{} ring: grant ref 0 is the control page", r.name),
                    );
                } else if gref as usize >= pages {
                    say(
                        at,
                        format!(
                            "{} ring: grant ref {gref} is past the file's {pages} pages",
                            r.name
                        ),
                    );
                } else if !seen.insert(gref) {
                    say(
                        at,
                        format!("{} ring: grant ref {gref} is used twice", r.name),
                    );
                }
            }
        }
    }
    found
}

/// Checks a VMBus channel image: two rings back to back (`first` and
/// `second` data bytes, each after a 4 KiB control page). Indices must be
/// valid, and every packet between the read and write index must pass the
/// reader's validation; the first bad packet of each ring is reported
/// with its offset in the file.
///
/// # Examples
///
/// A channel with a packet in flight passes; a write index off the 8-byte
/// grid does not:
///
/// ```
/// use ring_core::vmbus::layout::WRITE_INDEX;
/// use ring_hosted::inspect::{self, decode_vmbus, validate, VMBUS_HEADER_LEN as H};
/// use ring_hosted::vmbus::{ChannelLayout, VmbusPipe};
/// use ring_hosted::{eventfd, memfd::MemFd};
/// use std::os::fd::{AsFd, AsRawFd};
/// use std::sync::Arc;
///
/// let layout = ChannelLayout::new(4096, 4096)?;
/// let mem = Arc::new(MemFd::create("doc-validate-vmbus", layout.total_size())?);
/// let (server_signal, client_signal) = eventfd::pair()?;
/// let _server = VmbusPipe::serve(mem.clone(), layout, server_signal)?;
/// VmbusPipe::connect(mem.clone(), layout, client_signal)?.write_all(b"in flight")?;
/// let path = format!("/proc/self/fd/{}", mem.as_fd().as_raw_fd());
/// let mut image = validate::read_image(std::path::Path::new(&path))?;
/// let second = layout.to_client_offset();
/// let check = |image: &[u8]| -> Result<Vec<validate::Finding>, inspect::TooShort> {
///     let state = decode_vmbus(&image[..H], 4096, &image[second..second + H], 4096)?;
///     Ok(validate::vmbus(image, 4096, 4096, &state))
/// };
/// assert!(check(&image)?.is_empty());
/// image[WRITE_INDEX..WRITE_INDEX + 4].copy_from_slice(&3u32.to_le_bytes());
/// assert!(!check(&image)?.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn vmbus(image: &[u8], first: u32, second: u32, state: &VmbusState) -> Vec<Finding> {
    let page = vmbus::layout::DEFAULT_DATA_OFFSET as u64;
    let mut found = Vec::new();
    let second_at = page + u64::from(first);
    for (base, size, r) in [
        (0u64, first, &state.to_server),
        (second_at, second, &state.to_client),
    ] {
        if r.used.is_none() {
            found.push(Finding {
                offset: base,
                what: format!(
                    "{} ring: write index {} or read index {} is misaligned or past its {size} bytes",
                    r.name, r.write_index, r.read_index
                ),
            });
            continue;
        }
        let Some(ring) = image.get(base as usize..(base + page + u64::from(size)) as usize) else {
            found.push(Finding {
                offset: base,
                what: format!("{} ring runs past the end of the file", r.name),
            });
            continue;
        };
        if let Some(f) = walk_packets(ring, size, base + page, r.name) {
            found.push(f);
        }
    }
    found
}

/// Reads every packet of one ring (a private copy) with ring-core's
/// incoming ring; `data_at` is where its data area starts in the file.
fn walk_packets(ring: &[u8], size: u32, data_at: u64, name: &str) -> Option<Finding> {
    let words: Vec<AtomicU64> = ring
        .chunks(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            AtomicU64::new(u64::from_le_bytes(w))
        })
        .collect();
    let mem = RawMem::from_atomics(&words);
    let fail = |offset: u32, what: String| Finding {
        offset: data_at + u64::from(offset),
        what: format!("{name} ring: {what}"),
    };
    let layout = match RingLayout::new(vmbus::layout::DEFAULT_DATA_OFFSET, size as usize) {
        Ok(l) => l,
        Err(e) => return Some(fail(0, e.to_string())),
    };
    let mut rx = match IncomingRing::new(mem, layout) {
        Ok(rx) => rx,
        Err(e) => return Some(fail(0, e.to_string())),
    };
    let mut next = ring_core::vmbus::inspect(&mem).map_or(0, |h| h.read_index.get());
    // Each packet takes at least 24 bytes: the walk ends in bounded steps.
    for _ in 0..=size / 24 {
        match rx.read_packet() {
            Ok(p) => next = (p.offset() + p.info().len + 8) % size.max(1),
            Err(vmbus::Error::Empty) => return None,
            Err(e) => return Some(fail(next, format!("packet at data offset {next}: {e}"))),
        }
    }
    Some(fail(next, "more packets than the ring can hold".into()))
}
