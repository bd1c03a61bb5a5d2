//! VFIO: user-space access to a PCI device's regions and interrupts, so a
//! ring can live in a device BAR (ivshmem's shared memory, see [`ivshmem`]).
//!
//! The classic VFIO sequence: open the container (`/dev/vfio/vfio`) and
//! check its API version; open the group (`/dev/vfio/<N>`, or
//! `/dev/vfio/noiommu-<N>` when the kernel runs VFIO without an IOMMU) and
//! check it is viable; attach the group to the container; pick an IOMMU
//! model; ask the group for the device's fd by its PCI address. On the
//! device fd, each region (BARs, config space) has a size, an offset into
//! the fd and flags saying whether it may be read, written or mmap'd;
//! interrupts are routed to eventfds with `VFIO_DEVICE_SET_IRQS`.
//!
//! Every ioctl goes through the [`Sys`] seam: `replay` (feature `fakes`) feeds
//! recorded kernel replies so the logic runs on a machine without the device. Nothing
//! here has been run against real VFIO hardware on the machines this was
//! written on; see `docs/devices.md`.

// One of the crate's unsafe rooms: the ioctl request descriptions (what the
// kernel touches for each) and volatile MMIO register access. Each block
// says why it is sound.
#![allow(unsafe_code)]

pub mod ivshmem;

use crate::devmem::{ioc, DevError, IoctlArg, IoctlRequest, Kernel, MappedRegion, Sys, IOC_NONE};
use ring_core::mem::SharedMem;
use ring_core::signal::Signal;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `VFIO_TYPE`, the ioctl type byte.
pub const VFIO_TYPE: u8 = b';';
/// `VFIO_BASE`, the first ioctl number.
pub const VFIO_BASE: u8 = 100;
/// `VFIO_API_VERSION`.
pub const VFIO_API_VERSION: i32 = 0;

const fn vfio_io(n: u8) -> u32 {
    ioc(IOC_NONE, VFIO_TYPE, VFIO_BASE + n, 0)
}

// VFIO's numbers are `_IO`: they encode no size, so each argument's extent is
// spelled out below from the kernel's handlers (drivers/vfio/vfio_main.c,
// container.c, group.c, pci/vfio_pci_core.c). The argsz structs: the kernel
// copies `minsz` (at most our struct's size) in, refuses `argsz < minsz`, and
// touches nothing past `argsz` (capability chains, `vfio_irq_set.data`).

/// `VFIO_GET_API_VERSION` (no argument).
pub const VFIO_GET_API_VERSION: IoctlRequest =
    // SAFETY: the container ioctl ignores its argument.
    unsafe { IoctlRequest::new(vfio_io(0), IoctlArg::Value) };
/// `VFIO_CHECK_EXTENSION` (argument: the extension number).
pub const VFIO_CHECK_EXTENSION: IoctlRequest =
    // SAFETY: the argument is an integer, never dereferenced.
    unsafe { IoctlRequest::new(vfio_io(1), IoctlArg::Value) };
/// `VFIO_SET_IOMMU` (argument: the IOMMU model number).
pub const VFIO_SET_IOMMU: IoctlRequest =
    // SAFETY: the argument is an integer, never dereferenced.
    unsafe { IoctlRequest::new(vfio_io(2), IoctlArg::Value) };
/// `VFIO_GROUP_GET_STATUS` (argument: [`GroupStatus`]).
pub const VFIO_GROUP_GET_STATUS: IoctlRequest =
    // SAFETY: the kernel copies `minsz` (8) bytes in and out after checking
    // `argsz >= minsz`; nothing else.
    unsafe {
        IoctlRequest::new(
            vfio_io(3),
            IoctlArg::Argsz {
                min_len: size_of::<GroupStatus>(),
            },
        )
    };
/// `VFIO_GROUP_SET_CONTAINER` (argument: the container's fd, an `int`).
pub const VFIO_GROUP_SET_CONTAINER: IoctlRequest =
    // SAFETY: the kernel reads one `int` (`get_user`) and writes nothing.
    unsafe { IoctlRequest::new(vfio_io(4), IoctlArg::Fixed(size_of::<libc::c_int>())) };
/// `VFIO_GROUP_UNSET_CONTAINER` (no argument).
pub const VFIO_GROUP_UNSET_CONTAINER: IoctlRequest =
    // SAFETY: the group ioctl ignores its argument.
    unsafe { IoctlRequest::new(vfio_io(5), IoctlArg::Value) };
/// `VFIO_GROUP_GET_DEVICE_FD` (argument: the device name, NUL-terminated;
/// returns the device's fd).
pub const VFIO_GROUP_GET_DEVICE_FD: IoctlRequest =
    // SAFETY: the kernel reads the name with `strndup_user` (up to the first
    // NUL) and writes nothing; on success it returns a new fd, installed
    // for the caller and owned by nothing else.
    unsafe { IoctlRequest::returning_fd(vfio_io(6), IoctlArg::CStr) };
/// `VFIO_DEVICE_GET_INFO` (argument: [`DeviceInfo`] and room for
/// capabilities up to `argsz`).
pub const VFIO_DEVICE_GET_INFO: IoctlRequest =
    // SAFETY: the kernel copies `minsz` bytes in and out and writes a
    // capability chain only where it fits below `argsz`.
    unsafe {
        IoctlRequest::new(
            vfio_io(7),
            IoctlArg::Argsz {
                min_len: size_of::<DeviceInfo>(),
            },
        )
    };
/// `VFIO_DEVICE_GET_REGION_INFO` (argument: [`RegionInfo`] and room for
/// capabilities up to `argsz`).
pub const VFIO_DEVICE_GET_REGION_INFO: IoctlRequest =
    // SAFETY: as `VFIO_DEVICE_GET_INFO`: `minsz` bytes, capabilities only
    // below `argsz`.
    unsafe {
        IoctlRequest::new(
            vfio_io(8),
            IoctlArg::Argsz {
                min_len: size_of::<RegionInfo>(),
            },
        )
    };
/// `VFIO_DEVICE_GET_IRQ_INFO` (argument: [`IrqInfo`]).
pub const VFIO_DEVICE_GET_IRQ_INFO: IoctlRequest =
    // SAFETY: the kernel copies `minsz` bytes in and out after checking
    // `argsz >= minsz`.
    unsafe {
        IoctlRequest::new(
            vfio_io(9),
            IoctlArg::Argsz {
                min_len: size_of::<IrqInfo>(),
            },
        )
    };
/// `VFIO_DEVICE_SET_IRQS` (argument: [`IrqSet`] followed by its data).
pub const VFIO_DEVICE_SET_IRQS: IoctlRequest =
    // SAFETY: the kernel copies the `minsz`-byte header in, refuses data
    // that does not fit in `argsz - minsz`, then copies only that data in;
    // it writes nothing.
    unsafe {
        IoctlRequest::new(
            vfio_io(10),
            IoctlArg::Argsz {
                min_len: size_of::<IrqSet>(),
            },
        )
    };
/// `VFIO_DEVICE_RESET` (no argument).
pub const VFIO_DEVICE_RESET: IoctlRequest =
    // SAFETY: the device ioctl ignores its argument.
    unsafe { IoctlRequest::new(vfio_io(11), IoctlArg::Value) };

/// `VFIO_TYPE1_IOMMU`.
pub const VFIO_TYPE1_IOMMU: u32 = 1;
/// `VFIO_TYPE1v2_IOMMU`.
pub const VFIO_TYPE1V2_IOMMU: u32 = 3;
/// `VFIO_NOIOMMU_IOMMU`: no translation, no isolation (needs the
/// `enable_unsafe_noiommu_mode` module parameter).
pub const VFIO_NOIOMMU_IOMMU: u32 = 8;

/// `VFIO_GROUP_FLAGS_VIABLE`: every device in the group is bound to VFIO.
pub const VFIO_GROUP_FLAGS_VIABLE: u32 = 1 << 0;
/// `VFIO_GROUP_FLAGS_CONTAINER_SET`.
pub const VFIO_GROUP_FLAGS_CONTAINER_SET: u32 = 1 << 1;
/// `VFIO_DEVICE_FLAGS_PCI`.
pub const VFIO_DEVICE_FLAGS_PCI: u32 = 1 << 1;
/// `VFIO_REGION_INFO_FLAG_READ`.
pub const VFIO_REGION_INFO_FLAG_READ: u32 = 1 << 0;
/// `VFIO_REGION_INFO_FLAG_WRITE`.
pub const VFIO_REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
/// `VFIO_REGION_INFO_FLAG_MMAP`.
pub const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
/// `VFIO_IRQ_INFO_EVENTFD`.
pub const VFIO_IRQ_INFO_EVENTFD: u32 = 1 << 0;
/// `VFIO_IRQ_SET_DATA_NONE`.
pub const VFIO_IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// `VFIO_IRQ_SET_DATA_EVENTFD`.
pub const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// `VFIO_IRQ_SET_ACTION_TRIGGER`.
pub const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

/// `VFIO_PCI_BAR0_REGION_INDEX` (BAR n is index n).
pub const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
/// `VFIO_PCI_CONFIG_REGION_INDEX`.
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
/// `VFIO_PCI_MSIX_IRQ_INDEX`.
pub const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;

/// `struct vfio_group_status`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct GroupStatus {
    /// Size of the struct (set by us).
    pub argsz: u32,
    /// `VFIO_GROUP_FLAGS_*`.
    pub flags: u32,
}

/// `struct vfio_device_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct DeviceInfo {
    /// Size of the struct (set by us).
    pub argsz: u32,
    /// `VFIO_DEVICE_FLAGS_*`.
    pub flags: u32,
    /// Number of regions (max index + 1).
    pub num_regions: u32,
    /// Number of interrupt indexes (max index + 1).
    pub num_irqs: u32,
    /// Offset of the first capability (unused here).
    pub cap_offset: u32,
}

/// `struct vfio_region_info`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct RegionInfo {
    /// Size of the struct (set by us).
    pub argsz: u32,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// The region's index (set by us).
    pub index: u32,
    /// Offset of the first capability (unused here).
    pub cap_offset: u32,
    /// Size in bytes.
    pub size: u64,
    /// Offset of the region in the device fd (for pread/pwrite and mmap).
    pub offset: u64,
}

impl RegionInfo {
    /// Whether the kernel allows mmap of the region.
    pub fn mappable(&self) -> bool {
        self.flags & VFIO_REGION_INFO_FLAG_MMAP != 0
    }
}

/// `struct vfio_irq_info`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct IrqInfo {
    /// Size of the struct (set by us).
    pub argsz: u32,
    /// `VFIO_IRQ_INFO_*`.
    pub flags: u32,
    /// The interrupt index (set by us).
    pub index: u32,
    /// Number of vectors at this index.
    pub count: u32,
}

/// `struct vfio_irq_set` without its trailing `data[]`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct IrqSet {
    /// Size of the struct plus data.
    pub argsz: u32,
    /// `VFIO_IRQ_SET_DATA_*` | `VFIO_IRQ_SET_ACTION_*`.
    pub flags: u32,
    /// The interrupt index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
}

/// Offset of the PCI command register in config space.
pub const PCI_COMMAND: u64 = 0x04;
/// Command register: the device answers memory-space accesses (its BARs).
pub const PCI_COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: the device may master the bus (DMA, MSI/MSI-X writes).
pub const PCI_COMMAND_MASTER: u16 = 1 << 2;

/// Which IOMMU model to ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuMode {
    /// `VFIO_TYPE1v2_IOMMU` (the usual choice on x86).
    Type1v2,
    /// `VFIO_TYPE1_IOMMU`.
    Type1,
    /// `VFIO_NOIOMMU_IOMMU`: no isolation; the group node is
    /// `noiommu-<N>`.
    NoIommu,
}

impl IommuMode {
    /// The number `VFIO_SET_IOMMU` takes.
    pub fn value(self) -> u32 {
        match self {
            IommuMode::Type1v2 => VFIO_TYPE1V2_IOMMU,
            IommuMode::Type1 => VFIO_TYPE1_IOMMU,
            IommuMode::NoIommu => VFIO_NOIOMMU_IOMMU,
        }
    }
}

/// An open VFIO file (container, group or device) and its ioctl seam.
#[derive(Clone)]
struct Handle {
    file: Arc<File>,
    path: PathBuf,
    sys: Arc<dyn Sys>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("path", &self.path).finish()
    }
}

/// Every `Handle` holds a file of the VFIO driver (a container, a group,
/// or a device fd the driver returned) or a seam that never reaches the
/// kernel: `open`'s contract, the device-name checks of the safe openers,
/// and `Group::device` keep that, and the ioctl wrappers rely on it.
impl Handle {
    /// Opens `path`; with `expect`, fails unless the file opened is that
    /// kind of VFIO device (checked on the file itself, not the path).
    ///
    /// # Safety
    ///
    /// With `expect` `None`: the file at `path` is the VFIO file the
    /// requests made on it are for, or `sys` never reaches the kernel.
    unsafe fn open(
        path: &Path,
        sys: Arc<dyn Sys>,
        expect: Option<Expect>,
    ) -> Result<Self, DevError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(DevError::io("open", path))?;
        if let Some(expect) = expect {
            expect.check(&file, path)?;
        }
        Ok(Handle {
            file: Arc::new(file),
            path: path.to_path_buf(),
            sys,
        })
    }

    fn ioctl(
        &self,
        op: &'static str,
        request: IoctlRequest,
        arg: &mut [u8],
    ) -> Result<i32, DevError> {
        // SAFETY: the file is the VFIO driver's (the `Handle` invariant),
        // and every request here is a VFIO one.
        unsafe { self.sys.ioctl(self.file.as_fd(), request, arg) }
            .map_err(DevError::io(op, &self.path))
    }

    fn ioctl_value(
        &self,
        op: &'static str,
        request: IoctlRequest,
        value: u64,
    ) -> Result<i32, DevError> {
        // SAFETY: as in `ioctl`.
        unsafe { self.sys.ioctl_value(self.file.as_fd(), request, value) }
            .map_err(DevError::io(op, &self.path))
    }

    fn ioctl_fd(
        &self,
        op: &'static str,
        request: IoctlRequest,
        arg: &mut [u8],
    ) -> Result<OwnedFd, DevError> {
        // SAFETY: as in `ioctl`.
        unsafe { self.sys.ioctl_fd(self.file.as_fd(), request, arg) }
            .map_err(DevError::io(op, &self.path))
    }
}

/// A VFIO container (`/dev/vfio/vfio`).
#[derive(Debug)]
pub struct Container {
    h: Handle,
}

impl Container {
    /// Opens `/dev/vfio/vfio` with real system calls, after checking that
    /// the file there is the VFIO container.
    ///
    /// # Errors
    ///
    /// [`DevError::Invalid`] if it is not; else as [`Container::open_with`].
    ///
    /// # Examples
    ///
    /// Needs VFIO (`/dev/vfio/vfio`, from the vfio module) and permission to
    /// open it:
    ///
    /// ```no_run
    /// use ring_hosted::vfio::{Container, IommuMode};
    ///
    /// match Container::open() {
    ///     Ok(container) => {
    ///         let type1v2 = container.supports(IommuMode::Type1v2).unwrap_or(false);
    ///         println!("VFIO is here; type-1 v2 IOMMU {}", if type1v2 { "yes" } else { "no" });
    ///     }
    ///     Err(e) => eprintln!("no VFIO: {e}"),
    /// }
    /// ```
    pub fn open() -> Result<Self, DevError> {
        // SAFETY: `open_checked` checks the file is the container.
        unsafe {
            Self::open_checked(
                Path::new("/dev/vfio/vfio"),
                Arc::new(Kernel),
                Some(CONTAINER),
            )
        }
    }

    /// Opens the container at `path` with ioctls through `sys`, and checks
    /// the API version.
    ///
    /// # Errors
    ///
    /// I/O errors naming the path; [`DevError::Invalid`] for an API version
    /// other than [`VFIO_API_VERSION`].
    ///
    /// # Examples
    ///
    /// With the `fakes` feature, a recorded kernel (`replay`) can answer in place
    /// of a real one: here it accepts the first open, and reports an API version
    /// we do not speak to the second.
    ///
    /// ```
    /// # #[cfg(feature = "fakes")] {
    /// use ring_hosted::replay::{Replay, Reply, Step};
    /// use ring_hosted::vfio::{Container, VFIO_GET_API_VERSION};
    /// use std::sync::Arc;
    ///
    /// let version = |v| Step { request: VFIO_GET_API_VERSION, reply: Reply::Value(v) };
    /// let replay = Arc::new(Replay::new([version(0), version(1)]));
    /// let stand_in = tempfile::NamedTempFile::new()?; // for /dev/vfio/vfio
    /// // SAFETY: the replay never reaches the kernel.
    /// let _container = unsafe { Container::open_with(stand_in.path(), replay.clone()) }?;
    /// // SAFETY: as above.
    /// let refused = unsafe { Container::open_with(stand_in.path(), replay.clone()) };
    /// assert!(refused.is_err_and(|e| e.to_string().contains("API version 1")));
    /// assert_eq!(replay.remaining(), 0);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Safety
    ///
    /// The file at `path` must be the VFIO container, or `sys` a seam
    /// that never reaches the kernel (a recorded replay): VFIO's ioctl
    /// numbers mean something else, or nothing, to other drivers.
    pub unsafe fn open_with(path: &Path, sys: Arc<dyn Sys>) -> Result<Self, DevError> {
        // SAFETY: our caller's contract is `open_checked`'s without a check.
        unsafe { Self::open_checked(path, sys, None) }
    }

    /// # Safety
    ///
    /// As [`Handle::open`].
    unsafe fn open_checked(
        path: &Path,
        sys: Arc<dyn Sys>,
        expect: Option<Expect>,
    ) -> Result<Self, DevError> {
        // SAFETY: our caller's contract is `Handle::open`'s.
        let h = unsafe { Handle::open(path, sys, expect) }?;
        let version = h.ioctl_value("get API version", VFIO_GET_API_VERSION, 0)?;
        if version != VFIO_API_VERSION {
            return Err(DevError::invalid(
                path,
                format!("VFIO API version {version}, expected {VFIO_API_VERSION}"),
            ));
        }
        Ok(Container { h })
    }

    /// Whether the container supports IOMMU model `mode`.
    ///
    /// # Errors
    ///
    /// I/O errors naming the container.
    pub fn supports(&self, mode: IommuMode) -> Result<bool, DevError> {
        Ok(self
            .h
            .ioctl_value("check extension", VFIO_CHECK_EXTENSION, mode.value().into())?
            > 0)
    }

    /// Selects IOMMU model `mode` (after a group is attached).
    ///
    /// # Errors
    ///
    /// [`DevError::Invalid`] if the container does not support it; I/O
    /// errors naming the container.
    pub fn set_iommu(&self, mode: IommuMode) -> Result<(), DevError> {
        if !self.supports(mode)? {
            return Err(DevError::invalid(
                &self.h.path,
                format!("IOMMU model {mode:?} not supported"),
            ));
        }
        self.h
            .ioctl_value("set IOMMU", VFIO_SET_IOMMU, mode.value().into())
            .map(drop)
    }
}

/// A VFIO group (`/dev/vfio/<N>` or `/dev/vfio/noiommu-<N>`).
#[derive(Debug)]
pub struct Group {
    h: Handle,
}

/// The path of group `group` under `dev_vfio` (normally `/dev/vfio`).
pub fn group_path(dev_vfio: &Path, group: u32, mode: IommuMode) -> PathBuf {
    match mode {
        IommuMode::NoIommu => dev_vfio.join(format!("noiommu-{group}")),
        _ => dev_vfio.join(group.to_string()),
    }
}

impl Group {
    /// Opens the group at `path` with real system calls, after checking
    /// that the file there is a VFIO group, and checks that it is viable.
    ///
    /// # Errors
    ///
    /// [`DevError::Invalid`] if the file is not a VFIO group; else as
    /// [`Group::open_with`].
    pub fn open(path: &Path) -> Result<Self, DevError> {
        // SAFETY: `open_checked` checks the file is a group.
        unsafe { Self::open_checked(path, Arc::new(Kernel), Some(GROUP)) }
    }

    /// Opens the group at `path` and checks that it is viable.
    ///
    /// # Errors
    ///
    /// I/O errors naming the path; [`DevError::Invalid`] if the group is not
    /// viable (some device in it is not bound to vfio-pci).
    ///
    /// # Examples
    ///
    /// Needs IOMMU group 12 under `/dev/vfio` with every device in it bound to
    /// vfio-pci; a group that is not viable says so:
    ///
    /// ```no_run
    /// use ring_hosted::devmem::DevError;
    /// use ring_hosted::vfio::{group_path, Group, IommuMode};
    /// use std::path::Path;
    ///
    /// let path = group_path(Path::new("/dev/vfio"), 12, IommuMode::Type1v2);
    /// match Group::open(&path) {
    ///     Ok(_group) => println!("{} is ready", path.display()),
    ///     Err(e @ DevError::Invalid { .. }) => eprintln!("{e}"), // not viable
    ///     Err(e) => eprintln!("cannot open {}: {e}", path.display()),
    /// }
    /// ```
    ///
    /// # Safety
    ///
    /// The file at `path` must be a VFIO group, or `sys` a seam that never
    /// reaches the kernel (see [`Container::open_with`]).
    pub unsafe fn open_with(path: &Path, sys: Arc<dyn Sys>) -> Result<Self, DevError> {
        // SAFETY: our caller's contract is `open_checked`'s without a check.
        unsafe { Self::open_checked(path, sys, None) }
    }

    /// # Safety
    ///
    /// As [`Handle::open`].
    unsafe fn open_checked(
        path: &Path,
        sys: Arc<dyn Sys>,
        expect: Option<Expect>,
    ) -> Result<Self, DevError> {
        // SAFETY: our caller's contract is `Handle::open`'s.
        let h = unsafe { Handle::open(path, sys, expect) }?;
        let mut status = GroupStatus {
            argsz: size_of::<GroupStatus>() as u32,
            flags: 0,
        };
        h.ioctl(
            "get group status",
            VFIO_GROUP_GET_STATUS,
            status.as_mut_bytes(),
        )?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(DevError::invalid(
                path,
                "group is not viable: bind every device in it to vfio-pci",
            ));
        }
        Ok(Group { h })
    }

    /// Attaches the group to `container`.
    ///
    /// # Errors
    ///
    /// I/O errors naming the group.
    pub fn set_container(&self, container: &Container) -> Result<(), DevError> {
        let mut fd = container.h.file.as_raw_fd();
        self.h
            .ioctl("set container", VFIO_GROUP_SET_CONTAINER, fd.as_mut_bytes())
            .map(drop)
    }

    /// Opens device `name` (its PCI address, e.g. `0000:00:04.0`).
    ///
    /// # Errors
    ///
    /// I/O errors naming the group and device.
    pub fn device(&self, name: &str) -> Result<Device, DevError> {
        let mut arg = name.as_bytes().to_vec();
        arg.push(0);
        // The seam hands over an owned descriptor (the real kernel's new fd,
        // or the replay's stand-in), so nothing here trusts a bare number.
        let owned = self
            .h
            .ioctl_fd("get device fd", VFIO_GROUP_GET_DEVICE_FD, &mut arg)?;
        Ok(Device {
            h: Handle {
                file: Arc::new(File::from(owned)),
                path: self.h.path.join(name),
                sys: Arc::clone(&self.h.sys),
            },
            config: std::sync::OnceLock::new(),
        })
    }
}

/// The whole open sequence: container, group (viable, attached), IOMMU
/// model, device.
///
/// # Errors
///
/// The first step that failed, naming its path.
///
/// # Examples
///
/// Needs the PCI device `0000:00:04.0` bound to vfio-pci in IOMMU group 12,
/// and access to `/dev/vfio`:
///
/// ```no_run
/// use ring_hosted::devmem::DevError;
/// use ring_hosted::vfio::{self, IommuMode};
/// use std::path::Path;
///
/// let dev_vfio = Path::new("/dev/vfio");
/// let opened = vfio::open_device(dev_vfio, 12, "0000:00:04.0", IommuMode::Type1v2);
/// let (_container, _group, device) = match opened {
///     Ok(parts) => parts,
///     Err(e) => {
///         eprintln!("VFIO set-up failed: {e}");
///         return Ok(());
///     }
/// };
/// let info = device.info()?;
/// println!("{} regions, {} interrupt indices", info.num_regions, info.num_irqs);
/// # Ok::<(), DevError>(())
/// ```
pub fn open_device(
    dev_vfio: &Path,
    group: u32,
    device: &str,
    mode: IommuMode,
) -> Result<(Container, Group, Device), DevError> {
    // SAFETY: each file is checked to be the VFIO device its path names.
    unsafe { open_device_checked(dev_vfio, group, device, mode, Arc::new(Kernel), true) }
}

/// [`open_device`] with ioctls through `sys` (a recorded replay, in
/// tests), without asking what the files are.
///
/// # Errors
///
/// As [`open_device`].
///
/// # Safety
///
/// As [`Container::open_with`], for `DEV_VFIO/vfio` and the group's file.
pub unsafe fn open_device_with(
    dev_vfio: &Path,
    group: u32,
    device: &str,
    mode: IommuMode,
    sys: Arc<dyn Sys>,
) -> Result<(Container, Group, Device), DevError> {
    // SAFETY: our caller's contract, without the checks.
    unsafe { open_device_checked(dev_vfio, group, device, mode, sys, false) }
}

/// # Safety
///
/// With `check` false, as [`open_device_with`].
unsafe fn open_device_checked(
    dev_vfio: &Path,
    group: u32,
    device: &str,
    mode: IommuMode,
    sys: Arc<dyn Sys>,
    check: bool,
) -> Result<(Container, Group, Device), DevError> {
    let (container_check, group_check) = match check {
        true => (Some(CONTAINER), Some(GROUP)),
        false => (None, None),
    };
    let container_path = dev_vfio.join("vfio");
    // SAFETY: checked, or our caller's contract.
    let container =
        unsafe { Container::open_checked(&container_path, Arc::clone(&sys), container_check) }?;
    // SAFETY: as above.
    let group =
        unsafe { Group::open_checked(&group_path(dev_vfio, group, mode), sys, group_check) }?;
    group.set_container(&container)?;
    container.set_iommu(mode)?;
    let device = group.device(device)?;
    Ok((container, group, device))
}

/// The kind of VFIO file a safe opener requires, by the kernel's name for
/// it: what makes issuing VFIO's ioctls on the file sound.
#[derive(Clone, Copy)]
struct Expect {
    is: fn(&str) -> bool,
    what: &'static str,
}

const CONTAINER: Expect = Expect {
    is: |name| name == "vfio/vfio",
    what: "the VFIO container",
};

const GROUP: Expect = Expect {
    is: is_group_name,
    what: "a VFIO group",
};

impl Expect {
    fn check(self, file: &File, path: &Path) -> Result<(), DevError> {
        match crate::devmem::device_name(file) {
            Some(name) if (self.is)(&name) => Ok(()),
            Some(name) => Err(DevError::invalid(
                path,
                format!("is {name}, not {}", self.what),
            )),
            None => Err(DevError::invalid(
                path,
                format!("not a device, so not {}", self.what),
            )),
        }
    }
}

/// A group's kernel name: `vfio/N` or `vfio/noiommu-N`.
fn is_group_name(name: &str) -> bool {
    name.strip_prefix("vfio/")
        .map(|n| n.strip_prefix("noiommu-").unwrap_or(n))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// An open VFIO device.
#[derive(Debug)]
pub struct Device {
    h: Handle,
    config: std::sync::OnceLock<RegionInfo>,
}

impl Device {
    /// A device from an already open fd (tests; or an fd received from a
    /// privileged helper).
    ///
    /// # Safety
    ///
    /// `file` must be a VFIO device fd, or `sys` a seam that never reaches
    /// the kernel (see [`Container::open_with`]) and `file` one that
    /// nobody shrinks while a region of it is mapped.
    pub unsafe fn from_parts(file: File, path: PathBuf, sys: Arc<dyn Sys>) -> Self {
        Device {
            h: Handle {
                file: Arc::new(file),
                path,
                sys,
            },
            config: std::sync::OnceLock::new(),
        }
    }

    /// The device's name in errors (group path / PCI address).
    pub fn path(&self) -> &Path {
        &self.h.path
    }

    /// The device's flags and region and interrupt counts.
    ///
    /// # Errors
    ///
    /// I/O errors naming the device.
    pub fn info(&self) -> Result<DeviceInfo, DevError> {
        let mut info = DeviceInfo {
            argsz: size_of::<DeviceInfo>() as u32,
            ..DeviceInfo::default()
        };
        self.h
            .ioctl("get device info", VFIO_DEVICE_GET_INFO, info.as_mut_bytes())?;
        Ok(info)
    }

    /// Region `index`'s size, offset and flags.
    ///
    /// # Errors
    ///
    /// I/O errors naming the device.
    pub fn region(&self, index: u32) -> Result<RegionInfo, DevError> {
        let mut info = RegionInfo {
            argsz: size_of::<RegionInfo>() as u32,
            index,
            ..RegionInfo::default()
        };
        self.h.ioctl(
            "get region info",
            VFIO_DEVICE_GET_REGION_INFO,
            info.as_mut_bytes(),
        )?;
        if info.index != index {
            return Err(DevError::invalid(
                &self.h.path,
                format!("region info for {} when asking for {index}", info.index),
            ));
        }
        Ok(info)
    }

    /// Interrupt index `index`'s vector count and flags.
    ///
    /// # Errors
    ///
    /// I/O errors naming the device.
    pub fn irq_info(&self, index: u32) -> Result<IrqInfo, DevError> {
        let mut info = IrqInfo {
            argsz: size_of::<IrqInfo>() as u32,
            index,
            ..IrqInfo::default()
        };
        self.h.ioctl(
            "get irq info",
            VFIO_DEVICE_GET_IRQ_INFO,
            info.as_mut_bytes(),
        )?;
        Ok(info)
    }

    /// Opens region `region` for access: mmap'd when the kernel allows it
    /// and the mapping succeeds, otherwise through pread/pwrite on the
    /// device fd.
    ///
    /// # Errors
    ///
    /// [`DevError::Invalid`] for an empty or oversized region.
    pub fn open_region(&self, region: &RegionInfo) -> Result<Bar, DevError> {
        let size = usize::try_from(region.size)
            .ok()
            .filter(|&s| s > 0)
            .ok_or_else(|| {
                DevError::invalid(
                    &self.h.path,
                    format!("region {} has size {}", region.index, region.size),
                )
            })?;
        let path = self.h.path.join(format!("region{}", region.index));
        if region.mappable() {
            // The file is a VFIO device fd, whose regions are the device's
            // own (or a fake's file its `Device::from_parts` caller vouched
            // for): the `Handle` invariant.
            // SAFETY: so the mapped region never shrinks under us.
            let mapped = unsafe { MappedRegion::map_any(&self.h.file, &path, region.offset, size) };
            if let Ok(mem) = mapped {
                return Ok(Bar::Mapped(mem, path));
            }
        }
        Ok(Bar::Io(IoRegion {
            file: Arc::clone(&self.h.file),
            path,
            offset: region.offset,
            size,
        }))
    }

    /// The config-space region, asked for once.
    fn config_region(&self) -> Result<RegionInfo, DevError> {
        if let Some(info) = self.config.get() {
            return Ok(*info);
        }
        let info = self.region(VFIO_PCI_CONFIG_REGION_INDEX)?;
        Ok(*self.config.get_or_init(|| info))
    }

    /// Reads `buf.len()` bytes of PCI config space at `offset`.
    ///
    /// # Errors
    ///
    /// I/O errors naming the device.
    pub fn config_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
        let cfg = self.config_region()?;
        check_span(&self.h.path, offset, buf.len(), cfg.size)?;
        self.h
            .file
            .read_exact_at(buf, cfg.offset + offset)
            .map_err(DevError::io("read config space", &self.h.path))
    }

    /// Writes `buf` to PCI config space at `offset`.
    ///
    /// # Errors
    ///
    /// I/O errors naming the device.
    pub fn config_write(&self, offset: u64, buf: &[u8]) -> Result<(), DevError> {
        let cfg = self.config_region()?;
        check_span(&self.h.path, offset, buf.len(), cfg.size)?;
        self.h
            .file
            .write_all_at(buf, cfg.offset + offset)
            .map_err(DevError::io("write config space", &self.h.path))
    }

    /// Sets Bus Master (and Memory Space) in the PCI command register, so
    /// the device may raise MSI/MSI-X: after binding to vfio-pci it is off,
    /// and a device without it has its interrupt writes dropped (QEMU drops
    /// them silently). Returns the command register as it was.
    ///
    /// # Errors
    ///
    /// I/O errors naming the device.
    pub fn enable_bus_master(&self) -> Result<u16, DevError> {
        let mut cmd = [0u8; 2];
        self.config_read(PCI_COMMAND, &mut cmd)?;
        let old = u16::from_le_bytes(cmd);
        let new = old | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        if new != old {
            self.config_write(PCI_COMMAND, &new.to_le_bytes())?;
        }
        Ok(old)
    }

    /// Routes vectors `start..start + fds.len()` of interrupt index `index`
    /// to the eventfds `fds` (`VFIO_DEVICE_SET_IRQS`, data = eventfd,
    /// action = trigger).
    ///
    /// # Errors
    ///
    /// I/O errors naming the device.
    pub fn set_irq_eventfds(
        &self,
        index: u32,
        start: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), DevError> {
        let header = IrqSet {
            argsz: (size_of::<IrqSet>() + 4 * fds.len()) as u32,
            flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            start,
            count: fds.len() as u32,
        };
        let mut arg = header.as_bytes().to_vec();
        for fd in fds {
            arg.extend_from_slice(&fd.as_raw_fd().to_ne_bytes());
        }
        self.h
            .ioctl("set irqs", VFIO_DEVICE_SET_IRQS, &mut arg)
            .map(drop)
    }

    /// Turns off every vector of interrupt index `index`.
    ///
    /// # Errors
    ///
    /// I/O errors naming the device.
    pub fn disable_irqs(&self, index: u32) -> Result<(), DevError> {
        let mut header = IrqSet {
            argsz: size_of::<IrqSet>() as u32,
            flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            start: 0,
            count: 0,
        };
        self.h
            .ioctl("disable irqs", VFIO_DEVICE_SET_IRQS, header.as_mut_bytes())
            .map(drop)
    }

    /// Creates `count` eventfds and routes MSI-X vectors `0..count` to
    /// them.
    ///
    /// # Errors
    ///
    /// [`DevError::Invalid`] if the device has fewer vectors; I/O errors.
    pub fn enable_msix(&self, count: u32) -> Result<Vec<IrqEvent>, DevError> {
        let info = self.irq_info(VFIO_PCI_MSIX_IRQ_INDEX)?;
        if info.count < count || info.flags & VFIO_IRQ_INFO_EVENTFD == 0 {
            return Err(DevError::invalid(
                &self.h.path,
                format!(
                    "wanted {count} MSI-X vectors with eventfds, device offers {} (flags {:#x})",
                    info.count, info.flags
                ),
            ));
        }
        let events = (0..count)
            .map(|n| IrqEvent::new(self.h.path.join(format!("msix{n}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let fds: Vec<BorrowedFd<'_>> = events.iter().map(|e| e.fd.as_fd()).collect();
        self.set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 0, &fds)?;
        Ok(events)
    }

    /// Resets the device.
    ///
    /// # Errors
    ///
    /// I/O errors naming the device.
    pub fn reset(&self) -> Result<(), DevError> {
        self.h.ioctl_value("reset", VFIO_DEVICE_RESET, 0).map(drop)
    }
}

fn check_span(path: &Path, offset: u64, len: usize, size: u64) -> Result<(), DevError> {
    let end = offset.checked_add(len as u64);
    if end.is_none_or(|e| e > size) {
        return Err(DevError::invalid(
            path,
            format!("access of {len} bytes at {offset:#x} beyond the {size:#x}-byte region"),
        ));
    }
    Ok(())
}

/// A region reached through pread/pwrite on the device fd (when mmap is
/// not allowed, e.g. a BAR smaller than a page or an MSI-X table).
#[derive(Clone, Debug)]
pub struct IoRegion {
    file: Arc<File>,
    path: PathBuf,
    offset: u64,
    size: usize,
}

/// An opened device region.
#[derive(Clone, Debug)]
pub enum Bar {
    /// Mapped: shared memory (rings) and MMIO registers; the path names
    /// the region in errors.
    Mapped(MappedRegion, PathBuf),
    /// Not mappable: register access through the fd.
    Io(IoRegion),
}

impl Bar {
    /// Size of the region.
    pub fn size(&self) -> usize {
        match self {
            Bar::Mapped(m, _) => m.size(),
            Bar::Io(io) => io.size,
        }
    }

    /// The mapping, if the region is mapped (rings need one).
    pub fn memory(&self) -> Option<&MappedRegion> {
        match self {
            Bar::Mapped(m, _) => Some(m),
            Bar::Io(_) => None,
        }
    }

    fn check(&self, path: &Path, offset: usize) -> Result<(), DevError> {
        if !offset.is_multiple_of(4) {
            return Err(DevError::invalid(
                path,
                format!("register offset {offset:#x} is not 4-byte aligned"),
            ));
        }
        check_span(path, offset as u64, 4, self.size() as u64)
    }

    fn path(&self) -> &Path {
        match self {
            Bar::Mapped(_, path) => path,
            Bar::Io(io) => &io.path,
        }
    }

    /// Reads the 32-bit register at `offset` (one volatile load, or a
    /// 4-byte pread).
    ///
    /// # Errors
    ///
    /// [`DevError::Invalid`] for an unaligned or out-of-range offset; I/O
    /// errors for the pread.
    pub fn read_u32(&self, offset: usize) -> Result<u32, DevError> {
        self.check(self.path(), offset)?;
        match self {
            Bar::Mapped(m, _) => {
                let ptr = register(m, offset)?;
                // MMIO wants one volatile access and no reference is formed.
                // SAFETY: `ptr` is 4-aligned and inside the live mapping `m`
                // (checked above; mappings are page-aligned), which outlives this call.
                let reg = unsafe { volatile::VolatilePtr::new_read_only(ptr) };
                Ok(u32::from_le(reg.read()))
            }
            Bar::Io(io) => {
                let mut b = [0u8; 4];
                io.file
                    .read_exact_at(&mut b, io.offset + offset as u64)
                    .map_err(DevError::io("read register", &io.path))?;
                Ok(u32::from_le_bytes(b))
            }
        }
    }

    /// Writes the 32-bit register at `offset` (one volatile store, or a
    /// 4-byte pwrite).
    ///
    /// # Errors
    ///
    /// As [`Bar::read_u32`].
    pub fn write_u32(&self, offset: usize, value: u32) -> Result<(), DevError> {
        self.check(self.path(), offset)?;
        match self {
            Bar::Mapped(m, _) => {
                let ptr = register(m, offset)?;
                // SAFETY: as in `read_u32`: an aligned, in-bounds pointer
                // into a live mapping, accessed once, volatile, without a
                // reference.
                let reg = unsafe { volatile::VolatilePtr::new(ptr) };
                reg.write(value.to_le());
                Ok(())
            }
            Bar::Io(io) => io
                .file
                .write_all_at(&value.to_le_bytes(), io.offset + offset as u64)
                .map_err(DevError::io("write register", &io.path)),
        }
    }
}

fn register(m: &MappedRegion, offset: usize) -> Result<std::ptr::NonNull<u32>, DevError> {
    std::ptr::NonNull::new(m.as_ptr().wrapping_add(offset).cast::<u32>())
        .ok_or_else(|| DevError::invalid(Path::new("mapped BAR"), "null register"))
}

/// An eventfd an interrupt vector is routed to, as a [`Signal`]: `wait`
/// consumes the count (blocking, or up to the timeout); `notify` adds one
/// to it (wakes our own waiter — the device's doorbell is what reaches the
/// peer, see [`ivshmem::IvshmemSignal`]).
#[derive(Debug)]
pub struct IrqEvent {
    fd: OwnedFd,
    path: PathBuf,
    timeout: Option<Duration>,
}

impl IrqEvent {
    /// A fresh eventfd; `path` names it in errors.
    ///
    /// # Errors
    ///
    /// I/O errors from `eventfd`.
    ///
    /// # Examples
    ///
    /// Before a device is routed to it, the eventfd only times out; a count
    /// written to it (the device's interrupt, or `notify`) ends one wait:
    ///
    /// ```
    /// use ring_core::signal::Signal;
    /// use ring_hosted::{devmem::DevError, vfio::IrqEvent};
    /// use std::time::Duration;
    ///
    /// let mut event = IrqEvent::new("msix0".into())?;
    /// event.set_timeout(Some(Duration::from_millis(20)));
    /// assert!(matches!(event.wait(), Err(DevError::TimedOut { .. })));
    /// event.notify()?;
    /// event.wait()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(path: PathBuf) -> Result<Self, DevError> {
        let fd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
            .map_err(|e| DevError::io("eventfd", &path)(e.into()))?;
        Ok(IrqEvent {
            fd,
            path,
            timeout: None,
        })
    }

    /// Sets how long [`Signal::wait`] blocks (`None`: for ever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }
}

impl AsFd for IrqEvent {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Signal for IrqEvent {
    type Error = DevError;

    fn notify(&self) -> Result<(), DevError> {
        rustix::io::write(&self.fd, &1u64.to_ne_bytes())
            .map(drop)
            .map_err(|e| DevError::io("eventfd write", &self.path)(e.into()))
    }

    fn wait(&self) -> Result<(), DevError> {
        if self.timeout.is_some()
            && !crate::devmem::poll_readable(self.fd.as_fd(), self.timeout)
                .map_err(DevError::io("poll", &self.path))?
        {
            return Err(DevError::TimedOut {
                path: self.path.clone(),
            });
        }
        let mut b = [0u8; 8];
        rustix::io::read(&self.fd, &mut b)
            .map(drop)
            .map_err(|e| DevError::io("eventfd read", &self.path)(e.into()))
    }
}
