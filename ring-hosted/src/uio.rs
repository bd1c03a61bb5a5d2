//! UIO devices, and uio_hv_generic's VMBus channel rings in particular.
//!
//! A UIO device is a sysfs directory `class/uio/uioN` describing its memory
//! maps (`maps/mapK/{name,addr,size,offset}`) and a character device
//! `/dev/uioN`. Map K is selected by calling `mmap` on `/dev/uioN` with file
//! offset K × the system page size. The same fd is the interrupt: a 4-byte
//! `read` blocks until an interrupt arrives and returns the running count, a
//! 4-byte `write` is handed to the driver's irqcontrol hook.
//!
//! For uio_hv_generic (Hyper-V VMBus), map 0 `txrx_rings` holds the primary
//! channel's two rings: the first half is the guest→host (TX) ring, the
//! second half the host→guest (RX) ring, each a control page followed by the
//! data area. The ring size is **read from the map size**, never assumed
//! (kernels differ: 2 MiB default, per-class values, page-aligned to the
//! system page), and the data begins one *system* page into each half.
//!
//! [`UioDevice::open_vmbus_channel`] puts the two together: a
//! `ring_core::vmbus` channel over the mapped rings with the interrupt fd
//! as its event.
//!
//! # The interrupt protocol and the mask gotcha
//!
//! Writing the value 1 sets the inbound ring's `interrupt_mask` to 0
//! (unmasked) and, for channels without a monitor page, signals the host.
//! The stock driver masks the inbound ring before it wakes a reader, so
//! after every wake-up the reader must consume the count, write 1 again and
//! re-check the ring. [`UioIrq`]'s [`Signal::wait`] does the first two; the
//! blocking ring wrappers re-check by design. A read failing with `EIO`
//! means the host rescinded the channel: it becomes [`DevError::Closed`].
//!
//! # Roots
//!
//! All paths hang off a [`Roots`] (`/sys` and `/dev` by default) so tests run
//! against a fake tree in a temporary directory.

use crate::devmem::{page_size, DevError, MappedRegion};
use ring_core::mem::SharedMem;
use ring_core::signal::Signal;
use ring_core::vmbus;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where sysfs and device nodes live (injectable for tests).
#[derive(Clone, Debug)]
pub struct Roots {
    /// The sysfs mount, normally `/sys`.
    pub sysfs: PathBuf,
    /// The device directory, normally `/dev`.
    pub dev: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            sysfs: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        }
    }
}

/// The driver uio_hv_generic registers on the VMBus.
pub const HV_GENERIC_DRIVER: &str = "uio_hv_generic";
/// The name of uio_hv_generic's map 0, the primary channel's rings.
pub const TXRX_RINGS: &str = "txrx_rings";

/// One memory map of a UIO device, as sysfs describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UioMap {
    /// K in `mapK`; the map is selected with mmap offset K × page size.
    pub index: usize,
    /// The driver's name for the map (`txrx_rings`, `int_page`, ...).
    pub name: String,
    /// Physical or kernel address (informational).
    pub addr: u64,
    /// Size in bytes.
    pub size: usize,
    /// Offset of the mapped data within the first page.
    pub offset: u64,
}

/// A UIO device found in sysfs.
#[derive(Clone, Debug)]
pub struct UioInfo {
    /// The node name, `uioN`.
    pub node: String,
    /// Its sysfs directory (`<sysfs>/class/uio/uioN`).
    pub sysfs: PathBuf,
    /// The driver's name for the device (the `name` file).
    pub driver: String,
    /// Its maps, by index.
    pub maps: Vec<UioMap>,
}

impl UioInfo {
    /// The map called `name`.
    pub fn map_named(&self, name: &str) -> Option<&UioMap> {
        self.maps.iter().find(|m| m.name == name)
    }
}

fn read_trimmed(path: &Path) -> Result<String, DevError> {
    let text = fs::read_to_string(path).map_err(DevError::io("read", path))?;
    Ok(text.trim().to_owned())
}

/// Parses a sysfs number: `0x`-prefixed hex (how UIO prints addresses and
/// sizes) or decimal.
fn parse_number(path: &Path, text: &str) -> Result<u64, DevError> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| DevError::Parse {
        path: path.to_path_buf(),
        what: "a hex or decimal number",
    })
}

fn read_number(path: &Path) -> Result<u64, DevError> {
    let text = read_trimmed(path)?;
    parse_number(path, &text)
}

/// Reads `uioN`'s description from sysfs.
///
/// # Errors
///
/// [`DevError::Io`] naming the file that could not be read,
/// [`DevError::Parse`] naming the file that held garbage.
///
/// # Examples
///
/// Needs a machine with a UIO device (here `uio0`); without one the error
/// names the sysfs file that is missing:
///
/// ```no_run
/// use ring_hosted::uio::{self, Roots};
///
/// match uio::read_info(&Roots::default(), "uio0") {
///     Ok(info) => {
///         for map in &info.maps {
///             println!("{} map{} {:?}: {} bytes", info.node, map.index, map.name, map.size);
///         }
///     }
///     Err(e) => eprintln!("no uio0 here: {e}"),
/// }
/// ```
pub fn read_info(roots: &Roots, node: &str) -> Result<UioInfo, DevError> {
    let sysfs = roots.sysfs.join("class/uio").join(node);
    let driver = read_trimmed(&sysfs.join("name"))?;
    let mut maps = Vec::new();
    let maps_dir = sysfs.join("maps");
    if maps_dir.exists() {
        for index in 0.. {
            let dir = maps_dir.join(format!("map{index}"));
            if !dir.exists() {
                break;
            }
            let size_path = dir.join("size");
            let size = usize::try_from(read_number(&size_path)?).map_err(|_| DevError::Parse {
                path: size_path.clone(),
                what: "a size that fits in usize",
            })?;
            maps.push(UioMap {
                index,
                name: read_trimmed(&dir.join("name")).unwrap_or_default(),
                addr: read_number(&dir.join("addr"))?,
                size,
                offset: read_number(&dir.join("offset")).unwrap_or(0),
            });
        }
    }
    Ok(UioInfo {
        node: node.to_owned(),
        sysfs,
        driver,
        maps,
    })
}

/// Finds the UIO device whose `name` file reads `driver_name`.
///
/// # Errors
///
/// [`DevError::NotFound`] if none does; I/O errors naming the directory.
///
/// # Examples
///
/// Against a small fake sysfs tree in a temporary directory, so it runs
/// anywhere (on a real machine, pass `Roots::default()`):
///
/// ```
/// use ring_hosted::uio::{self, Roots};
/// use std::fs;
///
/// let dir = std::env::temp_dir().join(format!("ring-doc-uio-{}", std::process::id()));
/// let roots = Roots { sysfs: dir.join("sys"), dev: dir.join("dev") };
/// let uio3 = roots.sysfs.join("class/uio/uio3");
/// fs::create_dir_all(uio3.join("maps/map0"))?;
/// fs::write(uio3.join("name"), "uio_hv_generic\n")?;
/// for (file, value) in [("name", "txrx_rings"), ("addr", "0x0"), ("size", "0x4000")] {
///     fs::write(uio3.join("maps/map0").join(file), value)?;
/// }
/// let info = uio::find_by_name(&roots, uio::HV_GENERIC_DRIVER)?;
/// assert_eq!(info.node, "uio3");
/// assert_eq!(info.map_named(uio::TXRX_RINGS).map(|m| m.size), Some(0x4000));
/// assert!(uio::find_by_name(&roots, "no_such_driver").is_err());
/// # fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn find_by_name(roots: &Roots, driver_name: &str) -> Result<UioInfo, DevError> {
    let class = roots.sysfs.join("class/uio");
    let mut nodes: Vec<String> = fs::read_dir(&class)
        .map_err(DevError::io("read_dir", &class))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    nodes.sort();
    for node in nodes {
        if read_trimmed(&class.join(&node).join("name"))
            .ok()
            .as_deref()
            == Some(driver_name)
        {
            return read_info(roots, &node);
        }
    }
    Err(DevError::NotFound {
        what: format!("UIO device named {driver_name:?}"),
        path: class,
    })
}

/// Finds the UIO node of the VMBus device with instance GUID `instance`
/// (the directory name under `bus/vmbus/devices`, lower case).
///
/// # Errors
///
/// [`DevError::NotFound`] if the device has no `uio/uioN` child (not bound
/// to uio_hv_generic); I/O errors naming the path.
///
/// # Examples
///
/// Needs a Hyper-V guest whose device with this instance GUID is bound to
/// uio_hv_generic; a device bound to another driver is `NotFound`:
///
/// ```no_run
/// use ring_hosted::devmem::DevError;
/// use ring_hosted::uio::{self, Roots};
///
/// let instance = "ed963694-e847-4b2a-85af-bc9cfc11d6f3"; // this device's GUID
/// match uio::find_by_vmbus_instance(&Roots::default(), instance) {
///     Ok(info) => println!("{instance} is /dev/{}", info.node),
///     Err(DevError::NotFound { .. }) => eprintln!("{instance} is not bound to uio_hv_generic"),
///     Err(e) => eprintln!("cannot look: {e}"),
/// }
/// ```
pub fn find_by_vmbus_instance(roots: &Roots, instance: &str) -> Result<UioInfo, DevError> {
    let dir = roots
        .sysfs
        .join("bus/vmbus/devices")
        .join(instance.to_ascii_lowercase())
        .join("uio");
    let node = fs::read_dir(&dir)
        .map_err(DevError::io("read_dir", &dir))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("uio"))
        .ok_or_else(|| DevError::NotFound {
            what: "a uioN node".into(),
            path: dir.clone(),
        })?;
    read_info(roots, &node)
}

fn write_sysfs(path: &Path, value: &str) -> Result<(), DevError> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(DevError::io("open for writing", path))?;
    f.write_all(value.as_bytes())
        .map_err(DevError::io("write", path))
}

/// Tells uio_hv_generic to accept devices of VMBus class `class_guid`
/// (writes it to the driver's `new_id`).
///
/// # Errors
///
/// I/O errors naming `new_id` (typically: the module is not loaded, or we
/// are not root).
///
/// # Examples
///
/// Needs root on a Hyper-V guest with the uio_hv_generic module loaded:
///
/// ```no_run
/// use ring_hosted::uio::{self, Roots};
///
/// // The class GUID of the devices uio_hv_generic should take: network
/// // devices, the class hv_netvsc serves.
/// let class = "f8615163-df3e-46c5-913f-f2d2f965ed0e";
/// if let Err(e) = uio::bind_vmbus_class(&Roots::default(), class) {
///     eprintln!("cannot bind the class (not root, or the module is not loaded?): {e}");
/// }
/// ```
pub fn bind_vmbus_class(roots: &Roots, class_guid: &str) -> Result<(), DevError> {
    let new_id = roots
        .sysfs
        .join("bus/vmbus/drivers")
        .join(HV_GENERIC_DRIVER)
        .join("new_id");
    write_sysfs(&new_id, class_guid)
}

/// Moves the VMBus device `instance` from driver `from` to uio_hv_generic
/// (writes the instance to `from`'s `unbind` and uio_hv_generic's `bind`).
///
/// # Errors
///
/// I/O errors naming the `unbind` or `bind` file that refused.
///
/// # Examples
///
/// Needs root on a Hyper-V guest; here the device moves from `hv_netvsc`:
///
/// ```no_run
/// use ring_hosted::uio::{self, Roots};
///
/// let instance = "ed963694-e847-4b2a-85af-bc9cfc11d6f3"; // this device's GUID
/// match uio::rebind_vmbus_instance(&Roots::default(), instance, "hv_netvsc") {
///     Ok(()) => println!("{instance} now belongs to {}", uio::HV_GENERIC_DRIVER),
///     Err(e) => eprintln!("rebinding failed: {e}"),
/// }
/// ```
pub fn rebind_vmbus_instance(roots: &Roots, instance: &str, from: &str) -> Result<(), DevError> {
    let drivers = roots.sysfs.join("bus/vmbus/drivers");
    write_sysfs(&drivers.join(from).join("unbind"), instance)?;
    write_sysfs(&drivers.join(HV_GENERIC_DRIVER).join("bind"), instance)
}

/// Where one VMBus ring lies within its map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSpan {
    /// Offset of the ring's control page in the map.
    pub offset: usize,
    /// Size of the whole ring (control page plus data) in bytes.
    pub size: usize,
    /// Offset of the data area from the ring's start: one system page.
    pub data_offset: usize,
}

impl RingSpan {
    /// Size of the data area.
    pub fn data_size(&self) -> usize {
        self.size - self.data_offset
    }
}

/// The two rings of a uio_hv_generic channel map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmbusRingLayout {
    /// Guest→host ring: the first half.
    pub tx: RingSpan,
    /// Host→guest ring: the second half.
    pub rx: RingSpan,
}

/// Splits a channel map of `map_size` bytes into its TX and RX rings, for a
/// system page of `page` bytes: each ring is half the map, its data one page
/// in.
///
/// ```
/// // A 2 MiB-per-direction channel on a 4 KiB-page kernel.
/// let l = ring_hosted::uio::vmbus_ring_layout(2 * (4096 + (2 << 20)), 4096).unwrap();
/// assert_eq!((l.rx.offset, l.rx.data_offset, l.rx.data_size()), (4096 + (2 << 20), 4096, 2 << 20));
/// ```
///
/// # Errors
///
/// A message if the map cannot hold two page-aligned rings with a data
/// area each.
pub fn vmbus_ring_layout(map_size: usize, page: usize) -> Result<VmbusRingLayout, String> {
    if page == 0 || !page.is_power_of_two() {
        return Err(format!("page size {page} is not a power of two"));
    }
    let half = map_size / 2;
    if !map_size.is_multiple_of(2) || !half.is_multiple_of(page) {
        return Err(format!(
            "map size {map_size:#x} is not two rings of whole {page}-byte pages"
        ));
    }
    if half <= page {
        return Err(format!(
            "map size {map_size:#x} leaves no data area after the {page}-byte control pages"
        ));
    }
    let span = |offset| RingSpan {
        offset,
        size: half,
        data_offset: page,
    };
    Ok(VmbusRingLayout {
        tx: span(0),
        rx: span(half),
    })
}

/// A UIO device opened for mapping and interrupts.
#[derive(Debug)]
pub struct UioDevice {
    info: UioInfo,
    path: PathBuf,
    file: File,
    irq: UioIrq,
}

impl UioDevice {
    /// Opens `<dev>/uioN` for the device `info` describes. The interrupt is
    /// the same fd.
    ///
    /// # Errors
    ///
    /// I/O errors naming the device node.
    ///
    /// # Examples
    ///
    /// Needs read-write access to a real `/dev/uioN`:
    ///
    /// ```no_run
    /// use ring_hosted::devmem::DevError;
    /// use ring_hosted::uio::{self, Roots, UioDevice};
    ///
    /// let roots = Roots::default();
    /// let info = uio::read_info(&roots, "uio0")?;
    /// let device = match UioDevice::open(&roots, info) {
    ///     Ok(device) => device,
    ///     Err(e @ DevError::Io { .. }) => {
    ///         eprintln!("cannot open the device node (permissions?): {e}");
    ///         return Ok(());
    ///     }
    ///     Err(e) => return Err(e),
    /// };
    /// println!("{} has {} maps", device.info().node, device.info().maps.len());
    /// # Ok::<(), DevError>(())
    /// ```
    pub fn open(roots: &Roots, info: UioInfo) -> Result<Self, DevError> {
        let path = roots.dev.join(&info.node);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(DevError::io("open", &path))?;
        let irq_fd = file
            .as_fd()
            .try_clone_to_owned()
            .map_err(DevError::io("dup", &path))?;
        let irq = UioIrq::new(irq_fd, path.clone());
        Ok(UioDevice {
            info,
            path,
            file,
            irq,
        })
    }

    /// Replaces the interrupt source (tests stand a socket in for the
    /// device's interrupt side, which a plain file cannot imitate).
    pub fn with_irq(mut self, irq: UioIrq) -> Self {
        self.irq = irq;
        self
    }

    /// The sysfs description.
    pub fn info(&self) -> &UioInfo {
        &self.info
    }

    /// The interrupt fd as a [`Signal`].
    pub fn irq(&self) -> &UioIrq {
        &self.irq
    }

    /// Maps map `index` whole: mmap offset `index` × page size, length from
    /// sysfs.
    ///
    /// # Errors
    ///
    /// [`DevError::NotFound`] for an index sysfs does not list, mmap errors
    /// naming the device node.
    pub fn map(&self, index: usize) -> Result<MappedRegion, DevError> {
        let map = self
            .info
            .maps
            .get(index)
            .ok_or_else(|| DevError::NotFound {
                what: format!("map{index}"),
                path: self.info.sysfs.join("maps"),
            })?;
        let offset = (index as u64).saturating_mul(page_size() as u64);
        MappedRegion::map(&self.file, &self.path, offset, map.size)
    }

    /// Maps uio_hv_generic's `txrx_rings` map and returns its two rings,
    /// sized from the map and split at the system page.
    ///
    /// # Errors
    ///
    /// [`DevError::NotFound`] if the device has no `txrx_rings` map,
    /// [`DevError::Invalid`] if its size cannot hold two rings.
    pub fn vmbus_rings(&self) -> Result<VmbusRings, DevError> {
        let map = self
            .info
            .map_named(TXRX_RINGS)
            .ok_or_else(|| DevError::NotFound {
                what: format!("map named {TXRX_RINGS}"),
                path: self.info.sysfs.join("maps"),
            })?;
        let layout = vmbus_ring_layout(map.size, page_size()).map_err(|what| {
            DevError::invalid(
                &self.info.sysfs.join(format!("maps/map{}", map.index)),
                what,
            )
        })?;
        let region = self.map(map.index)?;
        VmbusRings::split(region, layout)
    }
}

/// A VMBus channel on uio_hv_generic: we read the RX (host→guest) ring,
/// write the TX (guest→host) ring, and the device's interrupt fd is the
/// channel's event.
pub type UioChannel = vmbus::Blocking<MappedRegion, UioIrq>;

/// Opens a VMBus channel on mapped rings and an interrupt fd: the ring
/// layouts come from the spans (data offset = the system page), and one
/// write of 1 unmasks the inbound ring so the host signals us.
///
/// The kernel initialised the rings when it opened the channel; nothing is
/// written to them here.
///
/// # Errors
///
/// [`DevError::Vmbus`] if a span is not a valid ring (the ring code checks
/// the sizes again), [`DevError::Closed`] if the channel was rescinded.
pub fn vmbus_channel(rings: VmbusRings, irq: UioIrq) -> Result<UioChannel, DevError> {
    let tx = vmbus::RingLayout::for_total(rings.layout.tx.data_offset, rings.layout.tx.size)
        .map_err(vmbus::Error::Setup)?;
    let rx = vmbus::RingLayout::for_total(rings.layout.rx.data_offset, rings.layout.rx.size)
        .map_err(vmbus::Error::Setup)?;
    let outgoing = vmbus::OutgoingRing::new(rings.tx, tx)?;
    let incoming = vmbus::IncomingRing::new(rings.rx, rx)?;
    irq.control(1)?;
    Ok(vmbus::Blocking::new(incoming, outgoing, irq))
}

impl UioDevice {
    /// Maps the primary channel's rings and opens it as a VMBus channel
    /// with the device's interrupt fd (see [`vmbus_channel`]).
    ///
    /// # Errors
    ///
    /// As [`UioDevice::vmbus_rings`] and [`vmbus_channel`].
    ///
    /// # Examples
    ///
    /// Needs a Hyper-V guest with a device bound to uio_hv_generic. One packet
    /// to the host and one back, each wait bounded by the interrupt's timeout:
    ///
    /// ```no_run
    /// use ring_core::vmbus::OutgoingPacket;
    /// use ring_hosted::devmem::DevError;
    /// use ring_hosted::uio::{self, Roots, UioDevice};
    /// use std::time::Duration;
    ///
    /// let roots = Roots::default();
    /// let info = uio::find_by_name(&roots, uio::HV_GENERIC_DRIVER)?;
    /// let mut channel = UioDevice::open(&roots, info)?.open_vmbus_channel()?;
    /// channel.signal_mut().set_timeout(Some(Duration::from_secs(10)));
    /// channel.send(&OutgoingPacket::in_band(1, &[&b"hello, host"[..]]))?;
    /// let mut buf = [0u8; 4096];
    /// match channel.recv(&mut buf) {
    ///     Ok((packet, n)) => println!("{:?}: {n} bytes", packet.packet_type),
    ///     Err(e) => eprintln!("no answer: {}", DevError::from(e)),
    /// }
    /// # Ok::<(), DevError>(())
    /// ```
    pub fn open_vmbus_channel(self) -> Result<UioChannel, DevError> {
        let rings = self.vmbus_rings()?;
        vmbus_channel(rings, self.irq)
    }
}

/// A mapped channel: the whole map and a [`SharedMem`] window per ring.
///
/// [`SharedMem`]: ring_core::mem::SharedMem
#[derive(Clone, Debug)]
pub struct VmbusRings {
    /// Where each ring lies in the map.
    pub layout: VmbusRingLayout,
    /// Guest→host ring (control page at offset 0 of the window).
    pub tx: MappedRegion,
    /// Host→guest ring (control page at offset 0 of the window).
    pub rx: MappedRegion,
}

impl VmbusRings {
    fn split(region: MappedRegion, layout: VmbusRingLayout) -> Result<Self, DevError> {
        Ok(VmbusRings {
            tx: region.sub(layout.tx.offset, layout.tx.size)?,
            rx: region.sub(layout.rx.offset, layout.rx.size)?,
            layout,
        })
    }
}

/// Maps a sub-channel's ring file
/// (`bus/vmbus/devices/<instance>/channels/<relid>/ring`): the whole file,
/// TX then RX, each half its size.
///
/// # Errors
///
/// I/O errors naming the ring file; [`DevError::Invalid`] for a size that
/// cannot hold two rings.
///
/// # Examples
///
/// Needs a Hyper-V guest where the device has opened sub-channel 14:
///
/// ```no_run
/// use ring_hosted::uio::{self, Roots};
///
/// let instance = "ed963694-e847-4b2a-85af-bc9cfc11d6f3"; // this device's GUID
/// match uio::subchannel_rings(&Roots::default(), instance, 14) {
///     Ok(rings) => println!("sub-channel rings of {} bytes each", rings.layout.tx.size),
///     Err(e) => eprintln!("no sub-channel 14: {e}"),
/// }
/// ```
pub fn subchannel_rings(roots: &Roots, instance: &str, relid: u32) -> Result<VmbusRings, DevError> {
    let path = roots
        .sysfs
        .join("bus/vmbus/devices")
        .join(instance.to_ascii_lowercase())
        .join("channels")
        .join(relid.to_string())
        .join("ring");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(DevError::io("open", &path))?;
    let size = file.metadata().map_err(DevError::io("stat", &path))?.len();
    let size = usize::try_from(size).map_err(|_| DevError::invalid(&path, "ring file too big"))?;
    let layout =
        vmbus_ring_layout(size, page_size()).map_err(|what| DevError::invalid(&path, what))?;
    VmbusRings::split(MappedRegion::map(&file, &path, 0, size)?, layout)
}

/// Maps BAR `index` of the PCI device at `device` (its sysfs directory,
/// `/sys/bus/pci/devices/DDDD:BB:DD.F`) through its `resourceN` file: the
/// memory path a UIO-style driver uses without any kernel driver of its
/// own (the device must have memory decoding on, as the kernel leaves a
/// device it enumerated).
///
/// # Errors
///
/// I/O errors naming the file; [`DevError::Invalid`] for an empty BAR.
///
/// # Examples
///
/// Needs a PCI device at this address and access to its sysfs resource
/// files (normally root):
///
/// ```no_run
/// use ring_core::mem::SharedMem;
/// use ring_hosted::uio;
/// use std::path::Path;
///
/// match uio::map_pci_resource(Path::new("/sys/bus/pci/devices/0000:00:04.0"), 2) {
///     Ok(bar) => println!("BAR2: {} bytes", bar.size()),
///     Err(e) => eprintln!("cannot map BAR2: {e}"),
/// }
/// ```
pub fn map_pci_resource(device: &Path, index: u8) -> Result<MappedRegion, DevError> {
    let path = device.join(format!("resource{index}"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(DevError::io("open", &path))?;
    let len = file.metadata().map_err(DevError::io("stat", &path))?.len();
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l > 0)
        .ok_or_else(|| DevError::invalid(&path, "BAR of zero size"))?;
    MappedRegion::map(&file, &path, 0, len)
}

/// An ivshmem device reached through its sysfs resource files alone: BAR2
/// as the ring memory, BAR0's doorbell for kicking a peer. ivshmem has no
/// INTx, so uio_pci_generic gives it no interrupt: a ring over it waits by
/// polling ([`IvshmemPolled`]), or uses VFIO for MSI-X.
#[derive(Debug)]
pub struct IvshmemResources {
    regs: MappedRegion,
    memory: MappedRegion,
}

impl IvshmemResources {
    /// Maps BAR0 (registers) and BAR2 (shared memory) of the device at
    /// `device`.
    ///
    /// # Errors
    ///
    /// As [`map_pci_resource`]; [`DevError::Invalid`] if BAR0 is too small
    /// for the doorbell.
    ///
    /// # Examples
    ///
    /// Needs a QEMU guest with an ivshmem device (here at `0000:00:04.0`) and
    /// access to its resource files. With no interrupts, the ring's signal
    /// polls:
    ///
    /// ```no_run
    /// use ring_core::mem::SharedMem;
    /// use ring_hosted::devmem::DevError;
    /// use ring_hosted::uio::IvshmemResources;
    /// use std::path::Path;
    /// use std::time::Duration;
    ///
    /// let device = Path::new("/sys/bus/pci/devices/0000:00:04.0");
    /// let ivshmem = match IvshmemResources::open(device) {
    ///     Ok(ivshmem) => ivshmem,
    ///     Err(e) => {
    ///         eprintln!("no ivshmem device at {}: {e}", device.display());
    ///         return Ok(());
    ///     }
    /// };
    /// println!("peer {} with {} bytes shared", ivshmem.position()?, ivshmem.memory().size());
    /// let _to_host = ivshmem.polled(0, 0, Duration::from_micros(200));
    /// # Ok::<(), DevError>(())
    /// ```
    pub fn open(device: &Path) -> Result<Self, DevError> {
        let regs = map_pci_resource(device, 0)?;
        if regs.size() < 16 {
            return Err(DevError::invalid(device, "BAR0 has no doorbell"));
        }
        let memory = map_pci_resource(device, 2)?;
        Ok(IvshmemResources { regs, memory })
    }

    /// The shared memory (BAR2).
    pub fn memory(&self) -> &MappedRegion {
        &self.memory
    }

    /// Our peer id (`IVPosition`, BAR0 offset 8).
    ///
    /// # Errors
    ///
    /// Only for a mapping smaller than checked at open.
    pub fn position(&self) -> Result<u16, DevError> {
        let v = self
            .regs
            .load_u32(8)
            .map_err(|e| DevError::invalid(Path::new("BAR0"), e.to_string()))?;
        Ok(v as u16)
    }

    /// A polling [`Signal`] to `peer` on `vector`: `notify` rings its
    /// doorbell, `wait` sleeps `interval` (the caller re-checks the ring).
    pub fn polled(&self, peer: u16, vector: u16, interval: Duration) -> IvshmemPolled {
        IvshmemPolled {
            regs: self.regs.clone(),
            value: (u32::from(peer) << 16) | u32::from(vector),
            interval,
        }
    }
}

/// See [`IvshmemResources::polled`].
#[derive(Debug)]
pub struct IvshmemPolled {
    regs: MappedRegion,
    value: u32,
    interval: Duration,
}

impl Signal for IvshmemPolled {
    type Error = DevError;

    fn notify(&self) -> Result<(), DevError> {
        // One 32-bit store to the doorbell register (BAR0 offset 12).
        self.regs
            .store_u32(12, self.value)
            .map_err(|e| DevError::invalid(Path::new("BAR0"), e.to_string()))
    }

    fn wait(&self) -> Result<(), DevError> {
        std::thread::sleep(self.interval);
        Ok(())
    }
}

/// A UIO interrupt fd as a [`Signal`].
///
/// - `notify` writes the 4-byte value 1: unmask the inbound ring and signal
///   the host (for channels without a monitor page).
/// - `wait` reads the 4-byte interrupt count (blocking, or up to the
///   timeout), then writes 1 to undo the driver's mask. The caller
///   re-checks the ring afterwards.
/// - `EIO` (channel rescinded) or end of file is [`DevError::Closed`].
#[derive(Debug)]
pub struct UioIrq {
    fd: OwnedFd,
    path: PathBuf,
    timeout: Option<Duration>,
    /// The PCI device's config space, for drivers without irqcontrol.
    pci_config: Option<File>,
}

/// Offset of the PCI command register.
const PCI_COMMAND: u64 = 0x04;
/// Command register bit: INTx disabled (uio_pci_generic sets it in its
/// interrupt handler).
const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;

impl UioIrq {
    /// Wraps an interrupt fd; `path` names it in errors.
    ///
    /// # Examples
    ///
    /// A socket stands in for the interrupt side of `/dev/uioN`: what the
    /// "kernel" writes is an interrupt count, what it reads back is the
    /// irqcontrol value.
    ///
    /// ```
    /// use ring_core::signal::Signal;
    /// use ring_hosted::{devmem::DevError, uio::UioIrq};
    /// use std::io::{Read, Write};
    /// use std::os::unix::net::UnixStream;
    /// use std::time::Duration;
    ///
    /// let (ours, mut kernel) = UnixStream::pair()?;
    /// kernel.set_read_timeout(Some(Duration::from_secs(10)))?;
    /// let mut irq = UioIrq::new(ours.into(), "/dev/uio0 (a socket here)".into());
    /// irq.set_timeout(Some(Duration::from_millis(20)));
    /// assert!(matches!(irq.wait(), Err(DevError::TimedOut { .. })));
    ///
    /// kernel.write_all(&1u32.to_ne_bytes())?; // one interrupt
    /// irq.wait()?; // takes the count, then unmasks by writing 1
    /// let mut control = [0u8; 4];
    /// kernel.read_exact(&mut control)?;
    /// assert_eq!(i32::from_ne_bytes(control), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(fd: OwnedFd, path: PathBuf) -> Self {
        UioIrq {
            fd,
            path,
            timeout: None,
            pci_config: None,
        }
    }

    /// For a PCI device whose driver has no irqcontrol hook (uio_pci_generic:
    /// the 4-byte write fails with `ENOSYS`): unmask by clearing the
    /// command register's INTx-disable bit in `config` (the device's sysfs
    /// `config` file, opened read-write), which the driver's interrupt
    /// handler set.
    pub fn with_pci_config(mut self, config: File) -> Self {
        self.pci_config = Some(config);
        self
    }

    /// Unmasks the interrupt: the irqcontrol write of 1, or where the
    /// driver has none (`ENOSYS`) and a config file was given, the PCI
    /// command register's INTx-disable bit cleared.
    ///
    /// # Errors
    ///
    /// [`DevError::Closed`] on `EIO`, other I/O errors naming the device.
    pub fn unmask(&self) -> Result<(), DevError> {
        let Some(config) = &self.pci_config else {
            return self.control(1);
        };
        match rustix::io::write(&self.fd, &1i32.to_ne_bytes()) {
            Ok(4) => return Ok(()),
            Err(rustix::io::Errno::NOSYS) | Err(rustix::io::Errno::INVAL) => {}
            Ok(n) => {
                return Err(DevError::invalid(
                    &self.path,
                    format!("short irq write ({n} bytes)"),
                ))
            }
            Err(e) => return Err(self.map_err("write irq control", e.into())),
        }
        use std::os::unix::fs::FileExt;
        let mut cmd = [0u8; 2];
        config
            .read_exact_at(&mut cmd, PCI_COMMAND)
            .map_err(DevError::io("read PCI command register", &self.path))?;
        let value = u16::from_le_bytes(cmd) & !PCI_COMMAND_INTX_DISABLE;
        config
            .write_all_at(&value.to_le_bytes(), PCI_COMMAND)
            .map_err(DevError::io("write PCI command register", &self.path))
    }

    /// Sets how long [`Signal::wait`] blocks before [`DevError::TimedOut`]
    /// (`None`: for ever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    fn map_err(&self, op: &'static str, e: io::Error) -> DevError {
        if e.raw_os_error() == Some(libc::EIO) {
            DevError::Closed
        } else {
            DevError::io(op, &self.path)(e)
        }
    }

    /// Writes the 4-byte `value` to the irqcontrol hook (1 unmasks and
    /// signals, 0 masks).
    ///
    /// # Errors
    ///
    /// [`DevError::Closed`] on `EIO`, other I/O errors naming the device.
    pub fn control(&self, value: i32) -> Result<(), DevError> {
        let n = rustix::io::write(&self.fd, &value.to_ne_bytes())
            .map_err(|e| self.map_err("write irq control", e.into()))?;
        if n != 4 {
            return Err(DevError::invalid(
                &self.path,
                format!("short irq write ({n} bytes)"),
            ));
        }
        Ok(())
    }

    /// Waits up to `timeout` (`None`: for ever) for the fd to be readable.
    /// Returns whether it is.
    ///
    /// # Errors
    ///
    /// I/O errors naming the device.
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool, DevError> {
        crate::devmem::poll_readable(self.fd.as_fd(), timeout).map_err(|e| self.map_err("poll", e))
    }

    /// Reads the 4-byte interrupt count (blocking until an interrupt
    /// arrives).
    ///
    /// # Errors
    ///
    /// [`DevError::Closed`] on `EIO` or end of file.
    pub fn consume(&self) -> Result<u32, DevError> {
        let mut buf = [0u8; 4];
        let n = loop {
            match rustix::io::read(&self.fd, &mut buf) {
                Ok(n) => break n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(self.map_err("read irq count", e.into())),
            }
        };
        match n {
            0 => Err(DevError::Closed),
            4 => Ok(u32::from_ne_bytes(buf)),
            n => Err(DevError::invalid(
                &self.path,
                format!("short irq read ({n} bytes)"),
            )),
        }
    }
}

impl AsFd for UioIrq {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Signal for UioIrq {
    type Error = DevError;

    fn notify(&self) -> Result<(), DevError> {
        self.control(1)
    }

    fn wait(&self) -> Result<(), DevError> {
        if self.timeout.is_some() && !self.poll(self.timeout)? {
            return Err(DevError::TimedOut {
                path: self.path.clone(),
            });
        }
        self.consume()?;
        // The driver masked the inbound ring (or the device's INTx) before
        // waking us: unmask, and let the caller re-check the ring.
        self.unmask()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_layout_comes_from_the_map_size() {
        let l = vmbus_ring_layout(2 * (4096 + 0x20_0000), 4096).unwrap();
        assert_eq!(l.tx.offset, 0);
        assert_eq!(l.tx.size, 0x20_1000);
        assert_eq!(l.rx.offset, 0x20_1000);
        assert_eq!(l.rx.data_offset, 4096);
        assert_eq!(l.rx.data_size(), 0x20_0000);
        // A 64 KiB-page kernel puts the data 64 KiB in.
        let l = vmbus_ring_layout(4 * 0x1_0000, 0x1_0000).unwrap();
        assert_eq!(
            (l.tx.size, l.tx.data_offset, l.rx.offset),
            (0x2_0000, 0x1_0000, 0x2_0000)
        );
        assert!(vmbus_ring_layout(2 * 4096, 4096).is_err());
        assert!(vmbus_ring_layout(3 * 4096, 4096).is_err());
        assert!(vmbus_ring_layout(2 * 6000, 4096).is_err());
        assert!(vmbus_ring_layout(0, 4096).is_err());
    }

    #[test]
    fn sysfs_numbers_parse_as_uio_prints_them() {
        let p = Path::new("/x");
        assert_eq!(parse_number(p, "0x0000000000200000").unwrap(), 0x20_0000);
        assert_eq!(parse_number(p, "4096").unwrap(), 4096);
        assert!(parse_number(p, "0xzz").is_err());
        assert!(parse_number(p, "").is_err());
    }

    #[test]
    fn eio_means_rescinded() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let irq = UioIrq::new(a.into(), PathBuf::from("/dev/uio0"));
        assert!(matches!(
            irq.map_err("read", io::Error::from_raw_os_error(libc::EIO)),
            DevError::Closed
        ));
        let e = irq.map_err("read", io::Error::from_raw_os_error(libc::EBADF));
        assert!(e.to_string().contains("/dev/uio0"), "{e}");
    }
}
