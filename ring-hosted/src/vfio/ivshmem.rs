//! The worked VFIO example: QEMU's ivshmem PCI device (vendor `0x1af4`,
//! device `0x1110`) carrying a ring between VMs.
//!
//! - BAR0 holds four 32-bit registers: interrupt mask (0), status (4), our
//!   peer id `IVPosition` (8) and the `Doorbell` (12). Writing
//!   `(peer << 16) | vector` to the doorbell raises MSI-X `vector` in VM
//!   `peer` (ivshmem-doorbell with an ivshmem-server).
//! - BAR1 holds the MSI-X table (VFIO routes its vectors to eventfds).
//! - BAR2 is the shared memory: the ring lives there, laid out flat
//!   (control page then ring pages, [`ring_core::vchan::FlatLayout`]).
//!
//! Registers are written with one volatile access through the mapped BAR0
//! (or pwrite where VFIO refuses to map it); the ring memory is reached
//! only through [`SharedMem`](ring_core::mem::SharedMem).

use super::{Bar, Device, IrqEvent, VFIO_PCI_BAR0_REGION_INDEX};
use crate::devmem::{DevError, MappedRegion};
use ring_core::signal::Signal;

/// ivshmem's PCI vendor id (Red Hat / virtio range).
pub const VENDOR_ID: u16 = 0x1af4;
/// ivshmem's PCI device id.
pub const DEVICE_ID: u16 = 0x1110;
/// BAR0 register: interrupt mask.
pub const REG_INTR_MASK: usize = 0;
/// BAR0 register: interrupt status.
pub const REG_INTR_STATUS: usize = 4;
/// BAR0 register: our peer id (read-only).
pub const REG_IV_POSITION: usize = 8;
/// BAR0 register: doorbell (write `(peer << 16) | vector`).
pub const REG_DOORBELL: usize = 12;
/// The BAR holding the shared memory.
pub const SHMEM_BAR: u32 = 2;

/// An opened ivshmem device: registers, shared memory, interrupt vectors.
#[derive(Debug)]
pub struct Ivshmem {
    device: Device,
    regs: Bar,
    shmem: MappedRegion,
}

impl Ivshmem {
    /// Checks the device's ids in config space, opens BAR0 (mapped or
    /// through the fd) and maps BAR2.
    ///
    /// # Errors
    ///
    /// [`DevError::Invalid`] naming the device if it is not an ivshmem or
    /// its BAR2 cannot be mapped (a ring needs atomics on real memory);
    /// I/O errors from VFIO.
    ///
    /// # Examples
    ///
    /// Needs a QEMU guest with an `ivshmem-doorbell` device at `0000:00:04.0`
    /// bound to vfio-pci (group 12 here, in no-IOMMU mode), and a host vchan
    /// server in its memory (as `ring ivshmem` makes). The guest joins as the
    /// client and rings peer 0, the host:
    ///
    /// ```no_run
    /// use ring_core::vchan;
    /// use ring_hosted::devmem::DevError;
    /// use ring_hosted::vfio::{self, ivshmem::Ivshmem, IommuMode};
    /// use std::{path::Path, time::Duration};
    ///
    /// let (_container, _group, device) =
    ///     vfio::open_device(Path::new("/dev/vfio"), 12, "0000:00:04.0", IommuMode::NoIommu)?;
    /// let ivshmem = match Ivshmem::open(device) {
    ///     Ok(ivshmem) => ivshmem,
    ///     Err(e @ DevError::Invalid { .. }) => {
    ///         eprintln!("not an ivshmem this can use: {e}");
    ///         return Ok(());
    ///     }
    ///     Err(e) => return Err(e),
    /// };
    /// ivshmem.device().enable_bus_master()?;
    /// let mut signal = ivshmem.signals(0, 1)?.remove(0);
    /// signal.event_mut().set_timeout(Some(Duration::from_secs(10)));
    /// let client = vchan::connect_flat(ivshmem.memory().clone())?;
    /// let mut ring = vchan::Blocking::new(client, signal);
    /// ring.write_all(b"hello from the guest")?;
    /// # Ok::<(), DevError>(())
    /// ```
    pub fn open(device: Device) -> Result<Self, DevError> {
        let mut ids = [0u8; 4];
        device.config_read(0, &mut ids)?;
        let vendor = u16::from_le_bytes([ids[0], ids[1]]);
        let dev = u16::from_le_bytes([ids[2], ids[3]]);
        if (vendor, dev) != (VENDOR_ID, DEVICE_ID) {
            return Err(DevError::invalid(device.path(), format!("PCI id {vendor:04x}:{dev:04x} is not ivshmem ({VENDOR_ID:04x}:{DEVICE_ID:04x})")));
        }
        let regs = device.open_region(&device.region(VFIO_PCI_BAR0_REGION_INDEX)?)?;
        if regs.size() < REG_DOORBELL + 4 {
            return Err(DevError::invalid(
                device.path(),
                format!("BAR0 of {} bytes has no doorbell", regs.size()),
            ));
        }
        let shmem = match device.open_region(&device.region(SHMEM_BAR)?)? {
            Bar::Mapped(m, _) => m,
            Bar::Io(_) => {
                return Err(DevError::invalid(
                    device.path(),
                    "BAR2 cannot be mapped; a ring needs mapped memory",
                ));
            }
        };
        Ok(Ivshmem {
            device,
            regs,
            shmem,
        })
    }

    /// The VFIO device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The register BAR.
    pub fn registers(&self) -> &Bar {
        &self.regs
    }

    /// The shared memory (BAR2), for a ring.
    pub fn memory(&self) -> &MappedRegion {
        &self.shmem
    }

    /// Our peer id (`IVPosition`).
    ///
    /// # Errors
    ///
    /// Register access errors.
    pub fn position(&self) -> Result<u16, DevError> {
        Ok(self.regs.read_u32(REG_IV_POSITION)? as u16)
    }

    /// Rings `peer`'s doorbell for `vector`.
    ///
    /// # Errors
    ///
    /// Register access errors.
    pub fn ring(&self, peer: u16, vector: u16) -> Result<(), DevError> {
        self.regs
            .write_u32(REG_DOORBELL, (u32::from(peer) << 16) | u32::from(vector))
    }

    /// Routes `vectors` MSI-X vectors to eventfds and returns, for each, a
    /// [`Signal`] that rings `peer`'s same vector and waits on ours.
    ///
    /// # Errors
    ///
    /// VFIO errors (too few vectors, ioctl failures).
    pub fn signals(&self, peer: u16, vectors: u16) -> Result<Vec<IvshmemSignal>, DevError> {
        let events = self.device.enable_msix(u32::from(vectors))?;
        Ok(events
            .into_iter()
            .enumerate()
            .map(|(v, event)| IvshmemSignal {
                regs: self.regs.clone(),
                peer,
                vector: v as u16,
                event,
            })
            .collect())
    }
}

/// One ivshmem interrupt vector as a [`Signal`]: `notify` rings the peer's
/// doorbell for the vector, `wait` waits for our vector's eventfd.
#[derive(Debug)]
pub struct IvshmemSignal {
    regs: Bar,
    peer: u16,
    vector: u16,
    event: IrqEvent,
}

impl IvshmemSignal {
    /// The eventfd our vector is routed to (e.g. to set a timeout).
    pub fn event_mut(&mut self) -> &mut IrqEvent {
        &mut self.event
    }
}

impl Signal for IvshmemSignal {
    type Error = DevError;

    fn notify(&self) -> Result<(), DevError> {
        self.regs.write_u32(
            REG_DOORBELL,
            (u32::from(self.peer) << 16) | u32::from(self.vector),
        )
    }

    fn wait(&self) -> Result<(), DevError> {
        self.event.wait()
    }
}
