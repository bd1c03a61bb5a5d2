//! The Xen vchan set-up through the ioctl seam with RECORDED replies
//! (`ring_hosted::replay`): each side's gntalloc/gntdev/evtchn requests
//! are checked one by one, byte for byte, and answered as the kernel
//! would. One memfd stands in for the granted page (both "devices" map it
//! at the recorded index); xenstore is the fake xenstored. No hypervisor is
//! involved.

use ring_core::vchan::layout::{CLI_LIVE, SRV_LIVE};
use ring_hosted::devmem::{IoctlRequest, Sys};
use ring_hosted::replay::{Replay, Reply, Step};
use ring_hosted::xen::evtchn::*;
use ring_hosted::xen::fake::FakeXenstore;
use ring_hosted::xen::gntalloc::*;
use ring_hosted::xen::gntdev::*;
use ring_hosted::xen::vchan::{self, ServerConfig};
use ring_hosted::xen::xenstore::XenStore;
use ring_hosted::xen::{UnmapNotify, XenDevice};
use std::fs::File;
use std::sync::Arc;
use zerocopy::{FromBytes, IntoBytes};

const INDEX: u64 = 0x3000;
const GREF: u32 = 77;
const SERVER_PORT: u32 = 41;
const CLIENT_PORT: u32 = 9;

fn memfd(name: &str, len: u64) -> File {
    ring_hosted::devmem::stand_in_file(name, len).unwrap()
}

fn step(request: IoctlRequest, reply: Reply) -> Step {
    Step { request, reply }
}

fn device(file: &File, path: &str, sys: &Arc<Replay>) -> XenDevice {
    let sys: Arc<dyn Sys> = sys.clone();
    // SAFETY: the replay never reaches the kernel.
    unsafe { XenDevice::from_parts(file.try_clone().unwrap(), path.into(), sys) }
}

#[test]
fn recorded_set_up_on_both_sides_then_bytes_move() {
    let pages = memfd("granted", INDEX + 4096);
    let server_sys = Arc::new(Replay::new([
        step(
            IOCTL_EVTCHN_BIND_UNBOUND_PORT,
            Reply::Value(SERVER_PORT as i32),
        ),
        step(
            IOCTL_GNTALLOC_ALLOC_GREF,
            Reply::Fill(
                AllocGref {
                    domid: 7,
                    flags: GNTALLOC_FLAG_WRITABLE,
                    count: 1,
                    index: INDEX,
                    gref_ids: [GREF],
                    pad: 0,
                }
                .as_bytes()
                .to_vec(),
            ),
        ),
        step(IOCTL_GNTALLOC_SET_UNMAP_NOTIFY, Reply::Value(0)),
        step(IOCTL_GNTALLOC_DEALLOC_GREF, Reply::Value(0)),
    ]));
    let store = FakeXenstore::start(0);
    store.introduce(7);
    let mut server_xs = XenStore::new(store.connect());
    let config = ServerConfig {
        peer: 7,
        path: "data/vchan/7/1".into(),
        read_min: 0,
        write_min: 0,
    };
    let evtchn_file = memfd("evtchn", 0);
    let mut server = vchan::serve(
        &device(&pages, GNTALLOC_PATH, &server_sys),
        device(&evtchn_file, EVTCHN_PATH, &server_sys),
        &mut server_xs,
        &config,
    )
    .unwrap();
    assert_eq!(server_sys.remaining(), 0);
    let seen = server_sys.seen();
    assert_eq!(seen[0].1, BindUnboundPort { remote_domain: 7 }.as_bytes());
    let (alloc, _) = AllocGref::read_from_prefix(&seen[1].1).unwrap();
    assert_eq!(
        (alloc.domid, alloc.flags, alloc.count),
        (7, GNTALLOC_FLAG_WRITABLE, 1)
    );
    let notify = UnmapNotifyArg::read_from_bytes(&seen[2].1).unwrap();
    assert_eq!(notify.index, INDEX + SRV_LIVE as u64);
    assert_eq!((notify.action, notify.event_channel_port), (3, SERVER_PORT));
    let dealloc = DeallocGref::read_from_bytes(&seen[3].1).unwrap();
    assert_eq!((dealloc.index, dealloc.count), (INDEX, 1));
    let path = "/local/domain/0/data/vchan/7/1";
    assert_eq!(
        store.value(&format!("{path}/ring-ref")).as_deref(),
        Some("77")
    );
    assert_eq!(
        store.value(&format!("{path}/event-channel")).as_deref(),
        Some("41")
    );

    let client_sys = Arc::new(Replay::new([
        step(
            IOCTL_EVTCHN_BIND_INTERDOMAIN,
            Reply::Value(CLIENT_PORT as i32),
        ),
        step(
            IOCTL_GNTDEV_MAP_GRANT_REF,
            Reply::Fill(
                MapGrantRef {
                    count: 1,
                    pad: 0,
                    index: INDEX,
                    refs: [GrantRef {
                        domid: 0,
                        gref: GREF,
                    }],
                }
                .as_bytes()
                .to_vec(),
            ),
        ),
        step(IOCTL_GNTDEV_SET_UNMAP_NOTIFY, Reply::Value(0)),
        step(IOCTL_GNTDEV_UNMAP_GRANT_REF, Reply::Value(0)),
        step(IOCTL_EVTCHN_NOTIFY, Reply::Value(0)),
    ]));
    let mut client_xs = XenStore::new(store.connect_as(7));
    let client_evtchn = memfd("evtchn-client", 0);
    let mut client = vchan::connect(
        &device(&pages, GNTDEV_PATH, &client_sys),
        device(&client_evtchn, EVTCHN_PATH, &client_sys),
        &mut client_xs,
        0,
        path,
    )
    .unwrap();
    assert_eq!(client_sys.remaining(), 0);
    let seen = client_sys.seen();
    assert_eq!(
        seen[0].1,
        BindInterdomain {
            remote_domain: 0,
            remote_port: SERVER_PORT
        }
        .as_bytes()
    );
    let (map, _) = MapGrantRef::read_from_prefix(&seen[1].1).unwrap();
    assert_eq!(
        (map.count, map.refs[0].domid, map.refs[0].gref),
        (1, 0, GREF)
    );
    let notify = UnmapNotifyArg::read_from_bytes(&seen[2].1).unwrap();
    assert_eq!(notify.index, INDEX + CLI_LIVE as u64);
    assert_eq!((notify.action, notify.event_channel_port), (3, CLIENT_PORT));
    // The one kick libxenvchan's client sends after connecting.
    assert_eq!(
        seen[4],
        (
            IOCTL_EVTCHN_NOTIFY,
            PortArg { port: CLIENT_PORT }.as_bytes().to_vec()
        )
    );

    // Real bytes through the page, mapped separately by each side.
    let sent = client.endpoint().write(b"recorded").unwrap();
    assert_eq!(sent.len, 8);
    let mut buf = [0u8; 16];
    let got = server.endpoint().read(&mut buf).unwrap();
    assert_eq!(&buf[..got.len], b"recorded");
    let back = server.endpoint().write(b"ok").unwrap();
    assert_eq!(back.len, 2);
    let got = client.endpoint().read(&mut buf).unwrap();
    assert_eq!(&buf[..got.len], b"ok");
}

#[test]
fn a_refused_unmap_notify_still_releases_the_grant() {
    let pages = memfd("granted", INDEX + 4096);
    let sys = Arc::new(Replay::new([
        step(
            IOCTL_GNTALLOC_ALLOC_GREF,
            Reply::Fill(
                AllocGref {
                    domid: 3,
                    flags: 1,
                    count: 1,
                    index: INDEX,
                    gref_ids: [5],
                    pad: 0,
                }
                .as_bytes()
                .to_vec(),
            ),
        ),
        step(IOCTL_GNTALLOC_SET_UNMAP_NOTIFY, Reply::Errno(libc::EINVAL)),
        step(IOCTL_GNTALLOC_DEALLOC_GREF, Reply::Value(0)),
    ]));
    let dev = device(&pages, GNTALLOC_PATH, &sys);
    let notify = UnmapNotify {
        clear_byte: Some(21),
        send_event: Some(4),
    };
    let e = share(&dev, 3, 1, true, notify).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("/dev/xen/gntalloc") && text.contains("set unmap notify"),
        "{text}"
    );
    assert_eq!(
        sys.remaining(),
        0,
        "the grant was deallocated after the failure"
    );
    // A notify offset outside the pages is refused before any notify ioctl.
    let sys = Arc::new(Replay::new([
        step(
            IOCTL_GNTALLOC_ALLOC_GREF,
            Reply::Fill(
                AllocGref {
                    index: INDEX,
                    count: 1,
                    ..AllocGref::default()
                }
                .as_bytes()
                .to_vec(),
            ),
        ),
        step(IOCTL_GNTALLOC_DEALLOC_GREF, Reply::Value(0)),
    ]));
    let dev = device(&pages, GNTALLOC_PATH, &sys);
    let far = UnmapNotify {
        clear_byte: Some(4096),
        send_event: None,
    };
    assert!(share(&dev, 3, 1, true, far).is_err());
    assert_eq!(sys.remaining(), 0);
}

#[test]
fn multi_page_requests_carry_every_ref() {
    let pages = memfd("granted", 3 * 4096);
    // Three refs in, the kernel answers with index 0.
    let mut reply = MapGrantRef {
        count: 3,
        pad: 0,
        index: 0,
        refs: [GrantRef::default()],
    }
    .as_bytes()
    .to_vec();
    reply.truncate(16);
    let sys = Arc::new(Replay::new([
        step(IOCTL_GNTDEV_MAP_GRANT_REF, Reply::Fill(reply)),
        step(IOCTL_GNTDEV_UNMAP_GRANT_REF, Reply::Value(0)),
    ]));
    let dev = device(&pages, GNTDEV_PATH, &sys);
    let mem =
        ring_hosted::xen::gntdev::map(&dev, 4, &[10, 11, 12], UnmapNotify::default()).unwrap();
    assert_eq!(ring_core::mem::SharedMem::size(&mem), 3 * 4096);
    let arg = &sys.seen()[0].1;
    assert_eq!(arg.len(), 16 + 3 * 8);
    let refs: Vec<(u32, u32)> = arg[16..]
        .chunks(8)
        .map(|c| {
            let r = GrantRef::read_from_bytes(c).unwrap();
            (r.domid, r.gref)
        })
        .collect();
    assert_eq!(refs, [(4, 10), (4, 11), (4, 12)]);
    let release = UnmapGrantRef::read_from_bytes(&sys.seen()[1].1).unwrap();
    assert_eq!((release.index, release.count), (0, 3));
}

/// Xen's ioctls go only to Xen's devices: `XenDevice::open` asks the
/// kernel what the file is and refuses anything else.
#[test]
fn only_xen_devices_open_as_xen_devices() {
    let e = XenDevice::open("/dev/null").unwrap_err();
    assert!(e.to_string().contains("not a Xen device"), "{e}");
    let plain = tempfile::NamedTempFile::new().unwrap();
    let e = XenDevice::open(plain.path()).unwrap_err();
    assert!(e.to_string().contains("not a Xen device"), "{e}");
}
