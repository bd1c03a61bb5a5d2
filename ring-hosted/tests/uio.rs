//! The UIO path end to end against a FAKE: a sysfs tree in a temporary
//! directory, a temporary file standing in for `/dev/uioN`'s maps, and a
//! Unix socket pair standing in for its interrupt side. No real
//! uio_hv_generic device is involved.

use ring_core::mem::SharedMem;
use ring_core::signal::Signal;
use ring_hosted::devmem::{page_size, DevError};
use ring_hosted::uio::{self, Roots, UioDevice, UioIrq};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const INSTANCE: &str = "f8615163-df3e-46c5-913f-f2d2f965ed0e";

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// A fake tree with one uio_hv_generic device whose rings are `ring` bytes
/// each (as a kernel with a per-class ring size would make them).
/// A device file at `path` that cannot shrink, as the mapping requires: a
/// link to a sealed memfd this process keeps open for good.
fn stand_in(path: &Path, len: u64) {
    let file = ring_hosted::devmem::stand_in_file("fake-uio", len).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    std::os::unix::fs::symlink(format!("/proc/self/fd/{fd}"), path).unwrap();
    std::mem::forget(file);
}

fn fake_tree(dir: &Path, ring: usize) -> Roots {
    let roots = Roots {
        sysfs: dir.join("sys"),
        dev: dir.join("dev"),
    };
    let uio0 = roots.sysfs.join("class/uio/uio0");
    write(&uio0.join("name"), "uio_hv_generic\n");
    let maps = [
        ("txrx_rings", 2 * ring),
        ("int_page", 4096),
        ("monitor_page", 4096),
    ];
    for (k, (name, size)) in maps.iter().enumerate() {
        let m = uio0.join(format!("maps/map{k}"));
        write(&m.join("name"), &format!("{name}\n"));
        write(
            &m.join("addr"),
            &format!("0x{:016x}\n", 0xffff_8880_0000_0000u64 + k as u64),
        );
        write(&m.join("size"), &format!("0x{size:016x}\n"));
        write(&m.join("offset"), "0x0\n");
    }
    fs::create_dir_all(
        roots
            .sysfs
            .join("bus/vmbus/devices")
            .join(INSTANCE)
            .join("uio/uio0"),
    )
    .unwrap();
    fs::create_dir_all(roots.sysfs.join("class/uio/uio1")).unwrap();
    write(&roots.sysfs.join("class/uio/uio1/name"), "other\n");
    fs::create_dir_all(&roots.dev).unwrap();
    stand_in(&roots.dev.join("uio0"), (2 * ring + 3 * 4096) as u64);
    roots
}

#[test]
fn discovery_finds_the_device_by_guid_and_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let roots = fake_tree(dir.path(), 4 * 4096);
    let by_guid = uio::find_by_vmbus_instance(&roots, &INSTANCE.to_uppercase()).unwrap();
    assert_eq!(by_guid.node, "uio0");
    assert_eq!(by_guid.driver, "uio_hv_generic");
    assert_eq!(by_guid.maps.len(), 3);
    assert_eq!(by_guid.maps[0].size, 8 * 4096);
    assert_eq!(by_guid.maps[1].name, "int_page");
    assert_eq!(by_guid.maps[2].addr, 0xffff_8880_0000_0002);
    let by_name = uio::find_by_name(&roots, "other").unwrap();
    assert_eq!(by_name.node, "uio1");
    assert!(by_name.maps.is_empty());
    let missing = uio::find_by_name(&roots, "nope").unwrap_err();
    assert!(matches!(missing, DevError::NotFound { .. }));
    let unbound =
        uio::find_by_vmbus_instance(&roots, "00000000-0000-0000-0000-000000000000").unwrap_err();
    assert!(unbound.to_string().contains("00000000-0000"), "{unbound}");
}

#[test]
fn a_bad_map_file_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let roots = fake_tree(dir.path(), 4 * 4096);
    let size = roots.sysfs.join("class/uio/uio0/maps/map1/size");
    fs::write(&size, "lots\n").unwrap();
    let e = uio::read_info(&roots, "uio0").unwrap_err();
    assert!(e.to_string().contains("maps/map1/size"), "{e}");
}

#[test]
fn rings_are_sized_from_the_map_and_move_bytes_through_the_file() {
    let page = page_size();
    // An unusual ring size (3 pages each) so nothing hard-coded could pass.
    let ring = 3 * page;
    let dir = tempfile::tempdir().unwrap();
    let roots = fake_tree(dir.path(), ring);
    let info = uio::find_by_vmbus_instance(&roots, INSTANCE).unwrap();
    let dev = UioDevice::open(&roots, info).unwrap();
    let rings = dev.vmbus_rings().unwrap();
    assert_eq!(rings.layout.tx.offset, 0);
    assert_eq!(rings.layout.tx.size, ring);
    assert_eq!(rings.layout.rx.offset, ring);
    assert_eq!(rings.layout.tx.data_offset, page);
    assert_eq!(rings.layout.rx.data_size(), 2 * page);
    assert_eq!(rings.tx.size(), ring);
    assert_eq!(rings.rx.size(), ring);

    // Writes through the ring windows land in the device file where the
    // layout says: the TX write index at 0, RX data one page into the
    // second half.
    rings.tx.store_u32(0, 0x1234_5678).unwrap();
    rings.rx.write(page, b"host data").unwrap();
    let file = fs::File::open(roots.dev.join("uio0")).unwrap();
    let mut word = [0u8; 4];
    file.read_exact_at(&mut word, 0).unwrap();
    assert_eq!(u32::from_le_bytes(word), 0x1234_5678);
    let mut data = [0u8; 9];
    file.read_exact_at(&mut data, (ring + page) as u64).unwrap();
    assert_eq!(&data, b"host data");
    // Nothing can reach past a ring's window.
    assert!(rings.tx.load_u32(ring).is_err());
}

#[test]
fn a_map_too_small_for_two_rings_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let roots = fake_tree(dir.path(), page_size());
    let info = uio::find_by_name(&roots, "uio_hv_generic").unwrap();
    let e = UioDevice::open(&roots, info)
        .unwrap()
        .vmbus_rings()
        .unwrap_err();
    assert!(e.to_string().contains("maps/map0"), "{e}");
}

#[test]
fn the_irq_speaks_four_byte_words() {
    let dir = tempfile::tempdir().unwrap();
    let roots = fake_tree(dir.path(), 2 * page_size());
    let info = uio::find_by_name(&roots, "uio_hv_generic").unwrap();
    let (ours, mut kernel) = UnixStream::pair().unwrap();
    let irq = UioIrq::new(ours.into(), roots.dev.join("uio0"));
    let dev = UioDevice::open(&roots, info).unwrap().with_irq(irq);
    let irq = dev.irq();

    // notify: one 4-byte write of 1.
    irq.notify().unwrap();
    let mut word = [0u8; 4];
    kernel.read_exact(&mut word).unwrap();
    assert_eq!(i32::from_ne_bytes(word), 1);

    // Nothing pending yet.
    assert!(!irq.poll(Some(Duration::from_millis(10))).unwrap());

    // An interrupt: the "kernel" makes the count readable; wait consumes it
    // and unmasks with a 1.
    kernel.write_all(&7u32.to_ne_bytes()).unwrap();
    assert!(irq.poll(Some(Duration::from_secs(5))).unwrap());
    irq.wait().unwrap();
    kernel.read_exact(&mut word).unwrap();
    assert_eq!(i32::from_ne_bytes(word), 1);
    assert!(!irq.poll(Some(Duration::from_millis(10))).unwrap());

    // A timeout turns a silent wait into TimedOut naming the device.
    let (quiet, _kernel2) = UnixStream::pair().unwrap();
    let mut irq = UioIrq::new(quiet.into(), roots.dev.join("uio0"));
    irq.set_timeout(Some(Duration::from_millis(20)));
    let e = irq.wait().unwrap_err();
    assert!(matches!(e, DevError::TimedOut { .. }), "{e}");

    // The device going away reads as closed.
    drop(kernel);
    let (ours, kernel) = UnixStream::pair().unwrap();
    drop(kernel);
    let dev = dev.with_irq(UioIrq::new(ours.into(), roots.dev.join("uio0")));
    assert!(matches!(dev.irq().wait(), Err(DevError::Closed)));
}

#[test]
fn binding_writes_the_class_guid_to_new_id() {
    let dir = tempfile::tempdir().unwrap();
    let roots = fake_tree(dir.path(), 2 * page_size());
    let drivers = roots.sysfs.join("bus/vmbus/drivers");
    write(&drivers.join("uio_hv_generic/new_id"), "");
    write(&drivers.join("uio_hv_generic/bind"), "");
    write(&drivers.join("hv_netvsc/unbind"), "");
    let class = "f8615163-df3e-46c5-913f-f2d2f965ed0e";
    uio::bind_vmbus_class(&roots, class).unwrap();
    assert_eq!(
        fs::read_to_string(drivers.join("uio_hv_generic/new_id")).unwrap(),
        class
    );
    uio::rebind_vmbus_instance(&roots, INSTANCE, "hv_netvsc").unwrap();
    assert_eq!(
        fs::read_to_string(drivers.join("hv_netvsc/unbind")).unwrap(),
        INSTANCE
    );
    assert_eq!(
        fs::read_to_string(drivers.join("uio_hv_generic/bind")).unwrap(),
        INSTANCE
    );
    let e = uio::rebind_vmbus_instance(&roots, INSTANCE, "missing").unwrap_err();
    assert!(e.to_string().contains("missing/unbind"), "{e}");
}

#[test]
fn subchannel_ring_files_split_in_half() {
    let dir = tempfile::tempdir().unwrap();
    let roots = fake_tree(dir.path(), 2 * page_size());
    let ring = roots
        .sysfs
        .join("bus/vmbus/devices")
        .join(INSTANCE)
        .join("channels/14/ring");
    fs::create_dir_all(ring.parent().unwrap()).unwrap();
    stand_in(&ring, 8 * page_size() as u64);
    let rings = uio::subchannel_rings(&roots, INSTANCE, 14).unwrap();
    assert_eq!(rings.layout.rx.offset, 4 * page_size());
    assert_eq!(rings.rx.size(), 4 * page_size());
    // A sub-channel opens as a VMBus channel the same way (the kernel
    // zeroed its rings; the fake file is zeros too).
    let (ours, mut kernel) = UnixStream::pair().unwrap();
    let irq = UioIrq::new(ours.into(), roots.dev.join("uio0"));
    let mut channel = uio::vmbus_channel(rings, irq).unwrap();
    assert_eq!(
        channel.outgoing().layout().data_size() as usize,
        3 * page_size()
    );
    let mut word = [0u8; 4];
    kernel.read_exact(&mut word).unwrap();
    assert_eq!(i32::from_ne_bytes(word), 1);
    assert!(uio::subchannel_rings(&roots, INSTANCE, 15)
        .unwrap_err()
        .to_string()
        .contains("channels/15/ring"));
}

#[test]
fn a_fake_host_writes_the_rx_ring_and_interrupts_the_guest() {
    let page = page_size();
    let ring = 4 * page;
    let dir = tempfile::tempdir().unwrap();
    let roots = fake_tree(dir.path(), ring);
    let (ours, mut kernel) = UnixStream::pair().unwrap();
    let info = uio::find_by_vmbus_instance(&roots, INSTANCE).unwrap();
    let dev = UioDevice::open(&roots, info)
        .unwrap()
        .with_irq(UioIrq::new(ours.into(), roots.dev.join("uio0")));
    let rings = dev.vmbus_rings().unwrap();
    let data_at = rings.layout.rx.data_offset;

    // The "host": writes a message at the start of the RX data area and
    // the RX write index in its control page, then raises the interrupt.
    let host_file = fs::OpenOptions::new()
        .write(true)
        .open(roots.dev.join("uio0"))
        .unwrap();
    let rx_base = rings.layout.rx.offset as u64;
    let host = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        host_file
            .write_all_at(b"from the host", rx_base + data_at as u64)
            .unwrap();
        host_file
            .write_all_at(&13u32.to_le_bytes(), rx_base)
            .unwrap();
        kernel.write_all(&1u32.to_ne_bytes()).unwrap();
        // The guest unmasks after consuming the interrupt.
        let mut word = [0u8; 4];
        kernel.read_exact(&mut word).unwrap();
        i32::from_ne_bytes(word)
    });
    // The guest: wait, then look.
    dev.irq().wait().unwrap();
    assert_eq!(rings.rx.load_u32(0).unwrap(), 13);
    let mut got = [0u8; 13];
    rings.rx.read(data_at, &mut got).unwrap();
    assert_eq!(&got, b"from the host");
    assert_eq!(host.join().unwrap(), 1, "the guest wrote 1 to unmask");
}

#[test]
fn a_vmbus_channel_runs_over_the_uio_rings_with_a_fake_host() {
    use ring_core::vmbus::{self, IncomingRing, OutgoingPacket, OutgoingRing, RingLayout};
    let page = page_size();
    let ring = 5 * page; // 16 KiB of data each way on 4 KiB pages
    let dir = tempfile::tempdir().unwrap();
    let roots = fake_tree(dir.path(), ring);
    let info = uio::find_by_vmbus_instance(&roots, INSTANCE).unwrap();

    // The fake host: its own mapping of the same file, rings crossed (it
    // reads TX, writes RX), initialised as the kernel does at open.
    let host_dev = UioDevice::open(&roots, info.clone()).unwrap();
    let host_rings = host_dev.vmbus_rings().unwrap();
    let layout = RingLayout::for_total(page, ring).unwrap();
    vmbus::initialize_ring(&host_rings.tx, layout).unwrap();
    vmbus::initialize_ring(&host_rings.rx, layout).unwrap();
    let mut host_in = IncomingRing::new(host_rings.tx.clone(), layout).unwrap();
    let mut host_out = OutgoingRing::new(host_rings.rx.clone(), layout).unwrap();

    let (ours, mut kernel) = UnixStream::pair().unwrap();
    let dev = UioDevice::open(&roots, info)
        .unwrap()
        .with_irq(UioIrq::new(ours.into(), roots.dev.join("uio0")));
    let mut channel = dev.open_vmbus_channel().unwrap();
    let mut word = [0u8; 4];
    kernel.read_exact(&mut word).unwrap();
    assert_eq!(
        i32::from_ne_bytes(word),
        1,
        "opening unmasks the inbound ring"
    );
    assert_eq!(
        channel.incoming().layout().data_size() as usize,
        ring - page
    );

    // Guest → host: the send reaches the host's reader and signals it.
    channel
        .send(&OutgoingPacket::in_band(42, &[b"guest says hi"]))
        .unwrap();
    kernel.read_exact(&mut word).unwrap();
    assert_eq!(i32::from_ne_bytes(word), 1, "the guest signalled the host");
    let mut buf = [0u8; 13];
    {
        let packet = host_in.read_packet().unwrap();
        assert_eq!(packet.transaction_id(), 42);
        packet.read_payload(0, &mut buf).unwrap();
    }
    assert_eq!(&buf, b"guest says hi");
    let _ = host_in.commit().unwrap();

    // Host → guest: the guest blocks until the "kernel" interrupts it.
    let host = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        let sent = host_out
            .send(&OutgoingPacket::in_band(7, &[b"host reply"]))
            .unwrap();
        // The guest's mask is clear and the ring was empty: a signal is owed.
        assert!(sent.notify);
        kernel.write_all(&1u32.to_ne_bytes()).unwrap();
        let mut words = Vec::new();
        let mut w = [0u8; 4];
        while kernel.read_exact(&mut w).is_ok() {
            words.push(i32::from_ne_bytes(w));
        }
        words
    });
    let mut got = [0u8; 16];
    let (info, len) = channel.recv(&mut got).unwrap();
    assert_eq!(info.transaction_id, 7);
    assert_eq!(&got[..10], b"host reply");
    assert_eq!(len, 16);
    drop(channel);
    assert!(host.join().unwrap().iter().all(|&w| w == 1));
}

/// uio_pci_generic has no irqcontrol hook (its 4-byte write fails; an
/// eventfd, which refuses 4-byte writes with EINVAL, stands in): the
/// unmask clears the INTx-disable bit the driver's handler set in the PCI
/// command register, and touches nothing else.
#[test]
fn without_irqcontrol_the_unmask_clears_intx_disable() {
    let config = tempfile::tempfile().unwrap();
    config.set_len(256).unwrap();
    // Memory Space, Bus Master, SERR, INTx disabled.
    config.write_all_at(&0x0506u16.to_le_bytes(), 4).unwrap();
    let fd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    let irq = UioIrq::new(fd, "/dev/uio-fake".into()).with_pci_config(config.try_clone().unwrap());
    irq.unmask().unwrap();
    let mut cmd = [0u8; 2];
    config.read_exact_at(&mut cmd, 4).unwrap();
    assert_eq!(u16::from_le_bytes(cmd), 0x0106);
    // Without a config file the failed write is the error.
    let fd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    let bare = UioIrq::new(fd, "/dev/uio-fake".into());
    assert!(bare.unmask().is_err());
}
