//! VFIO against a FAKE: `ring_hosted::replay` answers each ioctl
//! with a recorded reply (the structs a vfio-pci kernel fills in for an
//! ivshmem device), and a memfd stands in for the device fd, its regions at
//! vfio-pci's offsets (index << 40). No VFIO device or IOMMU is involved.

use ring_core::mem::SharedMem;
use ring_core::signal::Signal;
use ring_core::vchan::{self, Orders, ServerOptions};
use ring_hosted::devmem::{DevError, IoctlRequest, Sys};
use ring_hosted::replay::{Replay, Reply, Step};
use ring_hosted::vfio::ivshmem::{Ivshmem, REG_DOORBELL, REG_IV_POSITION};
use ring_hosted::vfio::*;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use zerocopy::IntoBytes;

const SHMEM: u64 = 1 << 20;
const fn region_offset(index: u32) -> u64 {
    (index as u64) << 40
}

/// A memfd laid out as vfio-pci lays out an ivshmem device fd.
fn device_file(position: u32) -> File {
    let f = ring_hosted::devmem::stand_in_file("fake-vfio-device", region_offset(7) + 256).unwrap();
    // Config space: vendor 1af4, device 1110.
    f.write_all_at(&[0xf4, 0x1a, 0x10, 0x11], region_offset(7))
        .unwrap();
    f.write_all_at(&position.to_le_bytes(), REG_IV_POSITION as u64)
        .unwrap();
    f
}

fn region(index: u32, size: u64, flags: u32) -> Reply {
    Reply::Fill(
        RegionInfo {
            argsz: 32,
            flags,
            index,
            cap_offset: 0,
            size,
            offset: region_offset(index),
        }
        .as_bytes()
        .to_vec(),
    )
}

fn step(request: IoctlRequest, reply: Reply) -> Step {
    Step { request, reply }
}

const RW: u32 = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;

/// The recorded conversation for opening an ivshmem device and enabling
/// two MSI-X vectors.
fn ivshmem_script(device: &File, mode_ok: bool, bar0_flags: u32) -> Vec<Step> {
    let dup: OwnedFd = device.as_fd().try_clone_to_owned().unwrap();
    let mut s = vec![
        step(VFIO_GET_API_VERSION, Reply::Value(0)),
        step(
            VFIO_GROUP_GET_STATUS,
            Reply::Fill(
                GroupStatus {
                    argsz: 8,
                    flags: VFIO_GROUP_FLAGS_VIABLE,
                }
                .as_bytes()
                .to_vec(),
            ),
        ),
        step(VFIO_GROUP_SET_CONTAINER, Reply::Value(0)),
        step(VFIO_CHECK_EXTENSION, Reply::Value(i32::from(mode_ok))),
    ];
    if !mode_ok {
        return s;
    }
    s.extend([
        step(VFIO_SET_IOMMU, Reply::Value(0)),
        step(VFIO_GROUP_GET_DEVICE_FD, Reply::Fd(dup)),
        step(VFIO_DEVICE_GET_REGION_INFO, region(7, 256, RW)),
        step(VFIO_DEVICE_GET_REGION_INFO, region(0, 256, bar0_flags)),
        step(
            VFIO_DEVICE_GET_REGION_INFO,
            region(2, SHMEM, RW | VFIO_REGION_INFO_FLAG_MMAP),
        ),
        step(
            VFIO_DEVICE_GET_IRQ_INFO,
            Reply::Fill(
                IrqInfo {
                    argsz: 16,
                    flags: VFIO_IRQ_INFO_EVENTFD,
                    index: 2,
                    count: 2,
                }
                .as_bytes()
                .to_vec(),
            ),
        ),
        step(VFIO_DEVICE_SET_IRQS, Reply::Value(0)),
    ]);
    s
}

fn dev_dir(mode: IommuMode) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    File::create(dir.path().join("vfio")).unwrap();
    File::create(group_path(dir.path(), 12, mode)).unwrap();
    dir
}

fn open(replay: &Arc<Replay>, dir: &Path, mode: IommuMode) -> Result<Ivshmem, DevError> {
    let sys: Arc<dyn Sys> = replay.clone();
    // SAFETY: the replay never reaches the kernel (the files are empty
    // stand-ins).
    let (_container, _group, device) =
        unsafe { open_device_with(dir, 12, "0000:00:04.0", mode, sys) }?;
    Ivshmem::open(device)
}

#[test]
fn ivshmem_open_regions_doorbell_and_msix() {
    let dir = dev_dir(IommuMode::Type1v2);
    let file = device_file(3);
    // BAR0 without the mmap flag (a 256-byte BAR): registers go through pwrite.
    let replay = Arc::new(Replay::new(ivshmem_script(&file, true, RW)));
    let iv = open(&replay, dir.path(), IommuMode::Type1v2).unwrap();
    assert!(
        iv.registers().memory().is_none(),
        "BAR0 fell back to pread/pwrite"
    );
    assert_eq!(iv.memory().size(), SHMEM as usize);
    assert_eq!(iv.position().unwrap(), 3);

    let mut signals = iv.signals(5, 2).unwrap();
    assert_eq!(replay.remaining(), 0);
    // What we told the kernel: the IOMMU model, the device name, and the
    // eventfds for vectors 0 and 1.
    let seen = replay.seen();
    assert_eq!(seen[4], (VFIO_SET_IOMMU, 3u64.to_ne_bytes().to_vec()));
    assert_eq!(seen[5].1, b"0000:00:04.0\0");
    let set = &seen.last().unwrap().1;
    let header = IrqSet {
        argsz: 28,
        flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        index: VFIO_PCI_MSIX_IRQ_INDEX,
        start: 0,
        count: 2,
    };
    assert_eq!(&set[..20], header.as_bytes());
    let fds: Vec<i32> = set[20..]
        .chunks(4)
        .map(|c| i32::from_ne_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(fds.len(), 2);

    // Doorbell: ring peer 5, vector 1.
    signals[1].notify().unwrap();
    let mut reg = [0u8; 4];
    file.read_exact_at(&mut reg, REG_DOORBELL as u64).unwrap();
    assert_eq!(u32::from_le_bytes(reg), (5 << 16) | 1);

    // An interrupt on vector 0: the "kernel" signals the routed eventfd.
    assert_eq!(fds[0], signals[0].event_mut().as_fd().as_raw_fd());
    signals[0]
        .event_mut()
        .set_timeout(Some(Duration::from_millis(20)));
    assert!(matches!(signals[0].wait(), Err(DevError::TimedOut { .. })));
    rustix::io::write(signals[0].event_mut().as_fd(), &1u64.to_ne_bytes()).unwrap();
    signals[0].wait().unwrap();

    // Config space round trip through the config region.
    iv.device().config_write(0x40, &[0xaa, 0xbb]).unwrap();
    let mut b = [0u8; 2];
    file.read_exact_at(&mut b, region_offset(7) + 0x40).unwrap();
    assert_eq!(b, [0xaa, 0xbb]);
}

/// What a real kernel showed (tests/linux_guest.rs in ring-cli): after
/// binding to vfio-pci the command register has Bus Master off, and QEMU
/// then drops every MSI-X write. `enable_bus_master` sets it (and Memory
/// Space), keeps the other bits, and reports the register as it was.
#[test]
fn bus_master_is_set_in_the_command_register() {
    let dir = dev_dir(IommuMode::Type1v2);
    let file = device_file(1);
    // What Linux 6.1's vfio-pci left in an ivshmem-doorbell's register
    // under QEMU 7.2: I/O and Memory Space and SERR on, Bus Master off.
    file.write_all_at(&[0x03, 0x01], region_offset(7) + 4)
        .unwrap();
    let replay = Arc::new(Replay::new(ivshmem_script(&file, true, RW)));
    let iv = open(&replay, dir.path(), IommuMode::Type1v2).unwrap();
    assert_eq!(iv.device().enable_bus_master().unwrap(), 0x0103);
    let mut cmd = [0u8; 2];
    file.read_exact_at(&mut cmd, region_offset(7) + 4).unwrap();
    assert_eq!(u16::from_le_bytes(cmd), 0x0107);
    // Already set: nothing changes.
    assert_eq!(iv.device().enable_bus_master().unwrap(), 0x0107);
}

#[test]
fn a_mappable_bar0_is_written_with_volatile_stores() {
    let dir = dev_dir(IommuMode::Type1v2);
    let file = device_file(9);
    // BAR0 at region offset 0 (page-aligned), marked mappable.
    let replay = Arc::new(Replay::new(ivshmem_script(
        &file,
        true,
        RW | VFIO_REGION_INFO_FLAG_MMAP,
    )));
    let iv = open(&replay, dir.path(), IommuMode::Type1v2).unwrap();
    assert!(iv.registers().memory().is_some());
    assert_eq!(iv.position().unwrap(), 9);
    iv.ring(2, 7).unwrap();
    let mut reg = [0u8; 4];
    file.read_exact_at(&mut reg, REG_DOORBELL as u64).unwrap();
    assert_eq!(u32::from_le_bytes(reg), (2 << 16) | 7);
    // Misaligned or out-of-range registers are refused, not touched.
    assert!(iv.registers().write_u32(2, 0).is_err());
    let e = iv.registers().read_u32(256).unwrap_err();
    assert!(e.to_string().contains("0000:00:04.0/region0"), "{e}");
}

#[test]
fn noiommu_mode_uses_its_group_node_and_reports_a_missing_model() {
    let dir = dev_dir(IommuMode::NoIommu);
    let file = device_file(0);
    let replay = Arc::new(Replay::new(ivshmem_script(&file, false, RW)));
    let e = open(&replay, dir.path(), IommuMode::NoIommu).unwrap_err();
    assert!(e.to_string().contains("NoIommu"), "{e}");
    assert!(e.to_string().contains("vfio"), "{e}");
    // It asked about VFIO_NOIOMMU_IOMMU (8), having opened noiommu-12.
    assert_eq!(
        replay.seen()[3],
        (VFIO_CHECK_EXTENSION, 8u64.to_ne_bytes().to_vec())
    );
    assert!(dir.path().join("noiommu-12").exists());
}

#[test]
fn a_group_that_is_not_viable_is_named() {
    let dir = dev_dir(IommuMode::Type1v2);
    let replay = Arc::new(Replay::new([
        step(VFIO_GET_API_VERSION, Reply::Value(0)),
        step(
            VFIO_GROUP_GET_STATUS,
            Reply::Fill(GroupStatus { argsz: 8, flags: 0 }.as_bytes().to_vec()),
        ),
    ]));
    let e = open(&replay, dir.path(), IommuMode::Type1v2).unwrap_err();
    assert!(
        e.to_string().contains("/12") && e.to_string().contains("viable"),
        "{e}"
    );
    // And a kernel error names the step and the path.
    let replay = Arc::new(Replay::new([step(
        VFIO_GET_API_VERSION,
        Reply::Errno(libc::ENODEV),
    )]));
    let e = open(&replay, dir.path(), IommuMode::Type1v2).unwrap_err();
    assert!(
        e.to_string().contains("get API version") && e.to_string().contains("vfio"),
        "{e}"
    );
}

#[test]
fn a_vchan_runs_over_two_mappings_of_bar2() {
    let dir = dev_dir(IommuMode::Type1v2);
    let file = device_file(0);
    // Two "VMs" whose ivshmem BAR2s are the same memory.
    let a = open(
        &Arc::new(Replay::new(ivshmem_script(&file, true, RW))),
        dir.path(),
        IommuMode::Type1v2,
    )
    .unwrap();
    let b = open(
        &Arc::new(Replay::new(ivshmem_script(&file, true, RW))),
        dir.path(),
        IommuMode::Type1v2,
    )
    .unwrap();
    assert_ne!(a.memory().as_ptr(), b.memory().as_ptr());
    let orders = Orders::for_sizes(64 * 1024, 64 * 1024).unwrap();
    let mut server =
        vchan::serve_flat(a.memory().clone(), orders, ServerOptions::default()).unwrap();
    let mut client = vchan::connect_flat(b.memory().clone()).unwrap();
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    let sent = client.write(&data).unwrap();
    assert_eq!(sent.len, data.len());
    let mut got = vec![0u8; data.len()];
    let n = server.read(&mut got).unwrap().len;
    assert_eq!(n, data.len());
    assert_eq!(got, data);
}

#[test]
fn region_replies_are_checked() {
    let file = device_file(0);
    let replay = Arc::new(Replay::new([
        step(VFIO_DEVICE_GET_REGION_INFO, region(3, 4096, RW)),
        step(VFIO_DEVICE_GET_REGION_INFO, region(7, 256, RW)),
    ]));
    let sys: Arc<dyn Sys> = replay.clone();
    // SAFETY: the replay never reaches the kernel.
    let dev = unsafe { Device::from_parts(file, "fake".into(), sys) };
    // Asked for region 2, the reply describes region 3.
    assert!(dev.region(2).is_err());
    let mut big = [0u8; 8];
    let e = dev.config_read(252, &mut big).unwrap_err();
    assert!(e.to_string().contains("beyond"), "{e}");
    // The script is exhausted: further ioctls fail rather than invent replies.
    assert!(dev.info().is_err());
}

/// The safe openers make VFIO's ioctls only on VFIO's files: another
/// device, or a plain file, is refused before any ioctl, by the kernel's
/// name for what was opened.
#[test]
fn safe_openers_refuse_files_that_are_not_vfio() {
    let e = Group::open(std::path::Path::new("/dev/null")).unwrap_err();
    assert!(e.to_string().contains("is null, not a VFIO group"), "{e}");
    let plain = tempfile::NamedTempFile::new().unwrap();
    let e = Group::open(plain.path()).unwrap_err();
    assert!(e.to_string().contains("not a device"), "{e}");
    // A directory laid out like /dev/vfio with the wrong files in it.
    let dir = dev_dir(IommuMode::Type1v2);
    let e = open_device(dir.path(), 12, "0000:00:04.0", IommuMode::Type1v2).unwrap_err();
    assert!(e.to_string().contains("not the VFIO container"), "{e}");
}
