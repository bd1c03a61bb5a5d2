//! Every ioctl number, flag and struct layout the device shims use, checked
//! against the machine's own uapi headers: a small C probe
//! (`tests/c/uapi_probe.c`) is compiled with `cc`, prints the values the
//! headers define, and each is compared with the Rust constant or
//! `size_of`/`offset_of!`.
//!
//! Headers come from Debian's `linux-libc-dev` (VFIO, gntalloc, gntdev,
//! evtchn) and `libxen-dev` (`xen/io/xs_wire.h`); `scripts/install-deps`
//! installs both.

use ring_hosted::vfio::*;
use ring_hosted::xen::evtchn::*;
use ring_hosted::xen::gntalloc::*;
use ring_hosted::xen::gntdev::*;
use ring_hosted::xen::xenstore::{self, ty};
use ring_hosted::xen::{UNMAP_NOTIFY_CLEAR_BYTE, UNMAP_NOTIFY_SEND_EVENT};
use std::collections::HashMap;
use std::mem::{offset_of, size_of};
use std::path::Path;
use std::process::Command;

/// Header file → the Debian package that ships it.
const HEADERS: &[(&str, &str)] = &[
    ("/usr/include/linux/vfio.h", "linux-libc-dev"),
    ("/usr/include/xen/gntalloc.h", "linux-libc-dev"),
    ("/usr/include/xen/gntdev.h", "linux-libc-dev"),
    ("/usr/include/xen/evtchn.h", "linux-libc-dev"),
    ("/usr/include/xen/io/xs_wire.h", "libxen-dev"),
];

fn probe() -> HashMap<String, u64> {
    for (header, package) in HEADERS {
        assert!(
            Path::new(header).exists(),
            "{header} is missing: install the Debian package `{package}` \
             (apt-get install {package}, or run scripts/install-deps)"
        );
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/uapi_probe.c");
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("uapi_probe");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| {
            panic!("running {cc}: {e} (a C compiler is needed for the uapi probe)")
        });
    assert!(
        out.status.success(),
        "compiling {} failed (are `linux-libc-dev` and `libxen-dev` installed?):\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).output().expect("running the uapi probe");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_owned(), v.parse().unwrap())
        })
        .collect()
}

fn ours() -> Vec<(&'static str, u64)> {
    macro_rules! n {
        ($($name:literal = $v:expr),* $(,)?) => { vec![$(($name, ($v) as u64)),*] };
    }
    n![
        "VFIO_API_VERSION" = VFIO_API_VERSION,
        "VFIO_GET_API_VERSION" = VFIO_GET_API_VERSION.number(),
        "VFIO_CHECK_EXTENSION" = VFIO_CHECK_EXTENSION.number(),
        "VFIO_SET_IOMMU" = VFIO_SET_IOMMU.number(),
        "VFIO_GROUP_GET_STATUS" = VFIO_GROUP_GET_STATUS.number(),
        "VFIO_GROUP_SET_CONTAINER" = VFIO_GROUP_SET_CONTAINER.number(),
        "VFIO_GROUP_UNSET_CONTAINER" = VFIO_GROUP_UNSET_CONTAINER.number(),
        "VFIO_GROUP_GET_DEVICE_FD" = VFIO_GROUP_GET_DEVICE_FD.number(),
        "VFIO_DEVICE_GET_INFO" = VFIO_DEVICE_GET_INFO.number(),
        "VFIO_DEVICE_GET_REGION_INFO" = VFIO_DEVICE_GET_REGION_INFO.number(),
        "VFIO_DEVICE_GET_IRQ_INFO" = VFIO_DEVICE_GET_IRQ_INFO.number(),
        "VFIO_DEVICE_SET_IRQS" = VFIO_DEVICE_SET_IRQS.number(),
        "VFIO_DEVICE_RESET" = VFIO_DEVICE_RESET.number(),
        "VFIO_TYPE1_IOMMU" = VFIO_TYPE1_IOMMU,
        "VFIO_TYPE1v2_IOMMU" = VFIO_TYPE1V2_IOMMU,
        "VFIO_NOIOMMU_IOMMU" = VFIO_NOIOMMU_IOMMU,
        "VFIO_GROUP_FLAGS_VIABLE" = VFIO_GROUP_FLAGS_VIABLE,
        "VFIO_GROUP_FLAGS_CONTAINER_SET" = VFIO_GROUP_FLAGS_CONTAINER_SET,
        "VFIO_DEVICE_FLAGS_PCI" = VFIO_DEVICE_FLAGS_PCI,
        "VFIO_REGION_INFO_FLAG_READ" = VFIO_REGION_INFO_FLAG_READ,
        "VFIO_REGION_INFO_FLAG_WRITE" = VFIO_REGION_INFO_FLAG_WRITE,
        "VFIO_REGION_INFO_FLAG_MMAP" = VFIO_REGION_INFO_FLAG_MMAP,
        "VFIO_IRQ_INFO_EVENTFD" = VFIO_IRQ_INFO_EVENTFD,
        "VFIO_IRQ_SET_DATA_NONE" = VFIO_IRQ_SET_DATA_NONE,
        "VFIO_IRQ_SET_DATA_EVENTFD" = VFIO_IRQ_SET_DATA_EVENTFD,
        "VFIO_IRQ_SET_ACTION_TRIGGER" = VFIO_IRQ_SET_ACTION_TRIGGER,
        "VFIO_PCI_BAR0_REGION_INDEX" = VFIO_PCI_BAR0_REGION_INDEX,
        "VFIO_PCI_CONFIG_REGION_INDEX" = VFIO_PCI_CONFIG_REGION_INDEX,
        "VFIO_PCI_MSIX_IRQ_INDEX" = VFIO_PCI_MSIX_IRQ_INDEX,
        "sizeof vfio_group_status" = size_of::<GroupStatus>(),
        "offsetof vfio_group_status.argsz" = offset_of!(GroupStatus, argsz),
        "offsetof vfio_group_status.flags" = offset_of!(GroupStatus, flags),
        "sizeof vfio_device_info" = size_of::<DeviceInfo>(),
        "offsetof vfio_device_info.flags" = offset_of!(DeviceInfo, flags),
        "offsetof vfio_device_info.num_regions" = offset_of!(DeviceInfo, num_regions),
        "offsetof vfio_device_info.num_irqs" = offset_of!(DeviceInfo, num_irqs),
        "offsetof vfio_device_info.cap_offset" = offset_of!(DeviceInfo, cap_offset),
        "sizeof vfio_region_info" = size_of::<RegionInfo>(),
        "offsetof vfio_region_info.flags" = offset_of!(RegionInfo, flags),
        "offsetof vfio_region_info.index" = offset_of!(RegionInfo, index),
        "offsetof vfio_region_info.cap_offset" = offset_of!(RegionInfo, cap_offset),
        "offsetof vfio_region_info.size" = offset_of!(RegionInfo, size),
        "offsetof vfio_region_info.offset" = offset_of!(RegionInfo, offset),
        "sizeof vfio_irq_info" = size_of::<IrqInfo>(),
        "offsetof vfio_irq_info.flags" = offset_of!(IrqInfo, flags),
        "offsetof vfio_irq_info.index" = offset_of!(IrqInfo, index),
        "offsetof vfio_irq_info.count" = offset_of!(IrqInfo, count),
        "sizeof vfio_irq_set" = size_of::<IrqSet>(),
        "offsetof vfio_irq_set.flags" = offset_of!(IrqSet, flags),
        "offsetof vfio_irq_set.index" = offset_of!(IrqSet, index),
        "offsetof vfio_irq_set.start" = offset_of!(IrqSet, start),
        "offsetof vfio_irq_set.count" = offset_of!(IrqSet, count),
        // The eventfds follow the header directly.
        "offsetof vfio_irq_set.data" = size_of::<IrqSet>(),
        "IOCTL_GNTALLOC_ALLOC_GREF" = IOCTL_GNTALLOC_ALLOC_GREF.number(),
        "IOCTL_GNTALLOC_DEALLOC_GREF" = IOCTL_GNTALLOC_DEALLOC_GREF.number(),
        "IOCTL_GNTALLOC_SET_UNMAP_NOTIFY" = IOCTL_GNTALLOC_SET_UNMAP_NOTIFY.number(),
        "GNTALLOC_FLAG_WRITABLE" = GNTALLOC_FLAG_WRITABLE,
        "UNMAP_NOTIFY_CLEAR_BYTE" = UNMAP_NOTIFY_CLEAR_BYTE,
        "UNMAP_NOTIFY_SEND_EVENT" = UNMAP_NOTIFY_SEND_EVENT,
        "sizeof ioctl_gntalloc_alloc_gref" = size_of::<AllocGref>(),
        "offsetof ioctl_gntalloc_alloc_gref.domid" = offset_of!(AllocGref, domid),
        "offsetof ioctl_gntalloc_alloc_gref.flags" = offset_of!(AllocGref, flags),
        "offsetof ioctl_gntalloc_alloc_gref.count" = offset_of!(AllocGref, count),
        "offsetof ioctl_gntalloc_alloc_gref.index" = offset_of!(AllocGref, index),
        "offsetof ioctl_gntalloc_alloc_gref.gref_ids" = offset_of!(AllocGref, gref_ids),
        "sizeof ioctl_gntalloc_dealloc_gref" = size_of::<DeallocGref>(),
        "offsetof ioctl_gntalloc_dealloc_gref.index" = offset_of!(DeallocGref, index),
        "offsetof ioctl_gntalloc_dealloc_gref.count" = offset_of!(DeallocGref, count),
        "sizeof ioctl_gntalloc_unmap_notify" = size_of::<UnmapNotifyArg>(),
        "offsetof ioctl_gntalloc_unmap_notify.index" = offset_of!(UnmapNotifyArg, index),
        "offsetof ioctl_gntalloc_unmap_notify.action" = offset_of!(UnmapNotifyArg, action),
        "offsetof ioctl_gntalloc_unmap_notify.event_channel_port" =
            offset_of!(UnmapNotifyArg, event_channel_port),
        "IOCTL_GNTDEV_MAP_GRANT_REF" = IOCTL_GNTDEV_MAP_GRANT_REF.number(),
        "IOCTL_GNTDEV_UNMAP_GRANT_REF" = IOCTL_GNTDEV_UNMAP_GRANT_REF.number(),
        "IOCTL_GNTDEV_SET_UNMAP_NOTIFY" = IOCTL_GNTDEV_SET_UNMAP_NOTIFY.number(),
        "sizeof ioctl_gntdev_grant_ref" = size_of::<GrantRef>(),
        "offsetof ioctl_gntdev_grant_ref.domid" = offset_of!(GrantRef, domid),
        "offsetof ioctl_gntdev_grant_ref.ref" = offset_of!(GrantRef, gref),
        "sizeof ioctl_gntdev_map_grant_ref" = size_of::<MapGrantRef>(),
        "offsetof ioctl_gntdev_map_grant_ref.count" = offset_of!(MapGrantRef, count),
        "offsetof ioctl_gntdev_map_grant_ref.index" = offset_of!(MapGrantRef, index),
        "offsetof ioctl_gntdev_map_grant_ref.refs" = offset_of!(MapGrantRef, refs),
        "sizeof ioctl_gntdev_unmap_grant_ref" = size_of::<UnmapGrantRef>(),
        "offsetof ioctl_gntdev_unmap_grant_ref.index" = offset_of!(UnmapGrantRef, index),
        "offsetof ioctl_gntdev_unmap_grant_ref.count" = offset_of!(UnmapGrantRef, count),
        // gntdev's notify struct is laid out as gntalloc's; we use one type.
        "sizeof ioctl_gntdev_unmap_notify" = size_of::<UnmapNotifyArg>(),
        "IOCTL_EVTCHN_BIND_INTERDOMAIN" = IOCTL_EVTCHN_BIND_INTERDOMAIN.number(),
        "IOCTL_EVTCHN_BIND_UNBOUND_PORT" = IOCTL_EVTCHN_BIND_UNBOUND_PORT.number(),
        "IOCTL_EVTCHN_UNBIND" = IOCTL_EVTCHN_UNBIND.number(),
        "IOCTL_EVTCHN_NOTIFY" = IOCTL_EVTCHN_NOTIFY.number(),
        "sizeof ioctl_evtchn_bind_interdomain" = size_of::<BindInterdomain>(),
        "offsetof ioctl_evtchn_bind_interdomain.remote_domain" =
            offset_of!(BindInterdomain, remote_domain),
        "offsetof ioctl_evtchn_bind_interdomain.remote_port" =
            offset_of!(BindInterdomain, remote_port),
        "sizeof ioctl_evtchn_bind_unbound_port" = size_of::<BindUnboundPort>(),
        "sizeof ioctl_evtchn_notify" = size_of::<PortArg>(),
        "sizeof ioctl_evtchn_unbind" = size_of::<PortArg>(),
        "sizeof xsd_sockmsg" = size_of::<xenstore::Header>(),
        "offsetof xsd_sockmsg.type" = offset_of!(xenstore::Header, ty),
        "offsetof xsd_sockmsg.req_id" = offset_of!(xenstore::Header, req_id),
        "offsetof xsd_sockmsg.tx_id" = offset_of!(xenstore::Header, tx_id),
        "offsetof xsd_sockmsg.len" = offset_of!(xenstore::Header, len),
        "XENSTORE_PAYLOAD_MAX" = xenstore::PAYLOAD_MAX,
        "XS_DIRECTORY" = ty::DIRECTORY,
        "XS_READ" = ty::READ,
        "XS_GET_PERMS" = ty::GET_PERMS,
        "XS_WATCH" = ty::WATCH,
        "XS_UNWATCH" = ty::UNWATCH,
        "XS_TRANSACTION_START" = ty::TRANSACTION_START,
        "XS_TRANSACTION_END" = ty::TRANSACTION_END,
        "XS_GET_DOMAIN_PATH" = ty::GET_DOMAIN_PATH,
        "XS_WRITE" = ty::WRITE,
        "XS_MKDIR" = ty::MKDIR,
        "XS_RM" = ty::RM,
        "XS_SET_PERMS" = ty::SET_PERMS,
        "XS_WATCH_EVENT" = ty::WATCH_EVENT,
        "XS_ERROR" = ty::ERROR,
    ]
}

#[test]
fn every_constant_and_layout_matches_the_headers() {
    let headers = probe();
    let ours = ours();
    let mut wrong = Vec::new();
    for (name, value) in &ours {
        match headers.get(*name) {
            Some(h) if h == value => {}
            Some(h) => wrong.push(format!("{name}: ours {value:#x}, header {h:#x}")),
            None => wrong.push(format!("{name}: not printed by the probe")),
        }
    }
    // And nothing the probe checks is left without a Rust counterpart.
    for name in headers.keys() {
        if !ours.iter().any(|(n, _)| n == name) {
            wrong.push(format!("{name}: probed but not compared"));
        }
    }
    assert!(wrong.is_empty(), "uapi mismatches:\n{}", wrong.join("\n"));
    assert!(ours.len() > 100, "the table shrank: {}", ours.len());
}

/// The argument descriptions the ioctl seam checks buffers against agree
/// with the numbers the probe compared above: each Xen request's struct is
/// the size its number encodes, and VFIO's `_IO` numbers encode none (so
/// `argsz` and the description are the only bounds).
#[test]
fn every_request_describes_the_struct_its_number_encodes() {
    use ring_hosted::devmem::{IoctlArg, IoctlRequest};
    let xen: [(IoctlRequest, usize); 10] = [
        (IOCTL_GNTALLOC_ALLOC_GREF, size_of::<AllocGref>()),
        (IOCTL_GNTALLOC_DEALLOC_GREF, size_of::<DeallocGref>()),
        (IOCTL_GNTALLOC_SET_UNMAP_NOTIFY, size_of::<UnmapNotifyArg>()),
        (IOCTL_GNTDEV_MAP_GRANT_REF, size_of::<MapGrantRef>()),
        (IOCTL_GNTDEV_UNMAP_GRANT_REF, size_of::<UnmapGrantRef>()),
        (IOCTL_GNTDEV_SET_UNMAP_NOTIFY, size_of::<UnmapNotifyArg>()),
        (IOCTL_EVTCHN_BIND_INTERDOMAIN, size_of::<BindInterdomain>()),
        (IOCTL_EVTCHN_BIND_UNBOUND_PORT, size_of::<BindUnboundPort>()),
        (IOCTL_EVTCHN_UNBIND, size_of::<PortArg>()),
        (IOCTL_EVTCHN_NOTIFY, size_of::<PortArg>()),
    ];
    for (req, len) in xen {
        assert_eq!(req.encoded_size(), len, "{req:?}");
        let described = match req.arg() {
            IoctlArg::Fixed(n) => n,
            IoctlArg::Counted { header_len, .. } => header_len,
            other => panic!("{req:?}: unexpected {other:?}"),
        };
        assert_eq!(described, len, "{req:?}");
        // One count (the struct's own first element) fits the bare struct.
        let mut one = vec![0u8; len];
        if let IoctlArg::Counted { count_at, .. } = req.arg() {
            one[count_at..count_at + 4].copy_from_slice(&1u32.to_ne_bytes());
        }
        req.check(&one).unwrap();
        assert!(req.check(&one[..len - 1]).is_err(), "{req:?}");
    }
    let vfio = [
        (VFIO_GET_API_VERSION, IoctlArg::Value),
        (VFIO_CHECK_EXTENSION, IoctlArg::Value),
        (VFIO_SET_IOMMU, IoctlArg::Value),
        (VFIO_GROUP_UNSET_CONTAINER, IoctlArg::Value),
        (VFIO_DEVICE_RESET, IoctlArg::Value),
        (VFIO_GROUP_SET_CONTAINER, IoctlArg::Fixed(4)),
        (VFIO_GROUP_GET_DEVICE_FD, IoctlArg::CStr),
        (
            VFIO_GROUP_GET_STATUS,
            IoctlArg::Argsz {
                min_len: size_of::<GroupStatus>(),
            },
        ),
        (
            VFIO_DEVICE_GET_INFO,
            IoctlArg::Argsz {
                min_len: size_of::<DeviceInfo>(),
            },
        ),
        (
            VFIO_DEVICE_GET_REGION_INFO,
            IoctlArg::Argsz {
                min_len: size_of::<RegionInfo>(),
            },
        ),
        (
            VFIO_DEVICE_GET_IRQ_INFO,
            IoctlArg::Argsz {
                min_len: size_of::<IrqInfo>(),
            },
        ),
        (
            VFIO_DEVICE_SET_IRQS,
            IoctlArg::Argsz {
                min_len: size_of::<IrqSet>(),
            },
        ),
    ];
    for (req, arg) in vfio {
        assert_eq!(req.encoded_size(), 0, "{req:?}");
        assert_eq!(req.arg(), arg, "{req:?}");
        assert_eq!(req.returns_fd(), req == VFIO_GROUP_GET_DEVICE_FD, "{req:?}");
    }
}
