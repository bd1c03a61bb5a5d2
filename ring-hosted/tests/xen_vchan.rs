//! The Xen vchan set-up against FAKES: `ring_hosted::xen::fake` stands in
//! for gntalloc, gntdev, evtchn (ioctl replies computed from a small grant
//! and port model, one memfd behind every granted page) and xenstored (a
//! thread speaking the wire format). No hypervisor is involved; the bytes
//! really move through shared pages of the memfd, mapped separately by the
//! server (via "gntalloc") and the client (via "gntdev").

use ring_core::mem::SharedMem;
use ring_core::vchan::layout::{CLI_LIVE, SRV_LIVE};
use ring_hosted::devmem::DevError;
use ring_hosted::xen::fake::{FakeXen, FakeXenstore};
use ring_hosted::xen::vchan::{self, ServerConfig, XenVchan};
use ring_hosted::xen::xenstore::XenStore;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

const SERVER: u16 = 0;
const CLIENT: u16 = 7;
const PATH: &str = "/local/domain/0/data/vchan/7/1";

struct Setup {
    xen: FakeXen,
    store: FakeXenstore,
    server_xs: XenStore<UnixStream>,
}

/// A host where the client's domain exists (is introduced) before the
/// server publishes, as it must on real xenstored.
fn setup() -> Setup {
    let xen = FakeXen::new();
    let store = xen.xenstore(SERVER);
    store.introduce(CLIENT);
    let server_xs = XenStore::new(store.connect());
    Setup {
        xen,
        store,
        server_xs,
    }
}

fn serve(s: &mut Setup, read_min: usize, write_min: usize) -> XenVchan {
    let config = ServerConfig {
        peer: CLIENT,
        path: PATH.into(),
        read_min,
        write_min,
    };
    vchan::serve(
        &s.xen.gntalloc(SERVER),
        s.xen.evtchn(SERVER),
        &mut s.server_xs,
        &config,
    )
    .unwrap()
}

fn connect(s: &Setup) -> Result<XenVchan, DevError> {
    let mut xs = XenStore::new(s.store.connect_as(CLIENT));
    vchan::connect(
        &s.xen.gntdev(CLIENT),
        s.xen.evtchn(CLIENT),
        &mut xs,
        SERVER,
        PATH,
    )
}

fn position(log: &[String], needle: &str) -> usize {
    log.iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in log:\n{}", log.join("\n")))
}

#[test]
fn handshake_follows_libxenvchan_order_and_bytes_move() {
    let mut s = setup();
    let mut server = serve(&mut s, 0, 0);
    // Published keys, readable by the client only.
    let port = s.store.value(&format!("{PATH}/event-channel")).unwrap();
    assert_eq!(port, server.port().to_string());
    let ring_ref = s.store.value(&format!("{PATH}/ring-ref")).unwrap();
    assert_ne!(ring_ref.parse::<u32>().unwrap(), 0);
    assert_eq!(s.store.perms(&format!("{PATH}/ring-ref")), ["n0", "r7"]);
    assert_eq!(
        s.store.perms(&format!("{PATH}/event-channel")),
        ["n0", "r7"]
    );

    let mut client = connect(&s).unwrap();
    server.wait_for_client().unwrap();

    let log = s.xen.log();
    // Server: port, then the control page with its notify, then xenstore.
    let unbound = position(&log, "dom0: evtchn bind unbound for dom7");
    let unmask = position(&log, "dom0: evtchn unmask");
    let alloc = position(&log, "dom0: gntalloc alloc 1 page(s) for dom7");
    let notify = position(
        &log,
        &format!("dom0: set unmap notify at page byte {SRV_LIVE} action 3 port {port}"),
    );
    let tx = position(&log, "dom0: xenstore TRANSACTION_START");
    let write = position(&log, &format!("dom0: xenstore WRITE {PATH}/ring-ref"));
    let commit = position(&log, "dom0: xenstore TRANSACTION_END");
    assert!(unbound < unmask && unmask < alloc && alloc < notify && notify < tx);
    assert!(tx < write && write < commit);
    // Client: keys, then bind, then map with its notify.
    let read = position(&log, &format!("dom7: xenstore READ {PATH}/ring-ref"));
    let bind = position(
        &log,
        &format!("dom7: evtchn bind interdomain dom0 port {port}"),
    );
    let map = position(&log, &format!("dom7: gntdev map refs [{ring_ref}]"));
    let cnotify = position(
        &log,
        &format!("dom7: set unmap notify at page byte {CLI_LIVE} action 3"),
    );
    assert!(commit < read && read < bind && bind < map && map < cnotify);

    client.write_all(b"hello from the client").unwrap();
    let mut buf = [0u8; 64];
    let n = server.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello from the client");
    server.send(b"and back").unwrap();
    let mut back = [0u8; 8];
    client.recv(&mut back).unwrap();
    assert_eq!(&back, b"and back");

    // A client given a store leaves the server's directory alone.
    let mut client_xs = XenStore::new(s.store.connect_as(CLIENT));
    client.close(Some(&mut client_xs)).unwrap();
    assert!(s.store.value(&format!("{PATH}/ring-ref")).is_some());
    assert_eq!(server.read(&mut buf).unwrap(), 0);
    server.close(Some(&mut s.server_xs)).unwrap();
    assert_eq!(s.store.value(&format!("{PATH}/ring-ref")), None);
}

#[test]
fn external_ring_pages_carry_a_megabyte_each_way() {
    let mut s = setup();
    // 8 KiB and 16 KiB rings: orders 13 and 14, five external pages.
    let mut server = serve(&mut s, 8192, 16384);
    let log = s.xen.log();
    position(&log, "dom0: gntalloc alloc 2 page(s)");
    position(&log, "dom0: gntalloc alloc 4 page(s)");
    let mut client = connect(&s).unwrap();
    assert_eq!(client.endpoint().orders().left(), 13);
    assert_eq!(client.endpoint().orders().right(), 14);

    const TOTAL: usize = 1 << 20;
    let pattern = |i: usize| (i * 31 % 251) as u8;
    let writer = thread::spawn(move || {
        let data: Vec<u8> = (0..TOTAL).map(pattern).collect();
        for chunk in data.chunks(3000) {
            client.write_all(chunk).unwrap();
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < TOTAL {
            let n = client.read(&mut buf).unwrap();
            assert_ne!(n, 0);
            got.extend_from_slice(&buf[..n]);
        }
        client.close::<UnixStream>(None).unwrap();
        got
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 5000];
    while got.len() < TOTAL {
        let n = server.read(&mut buf).unwrap();
        assert_ne!(n, 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.iter().enumerate().all(|(i, &b)| b == pattern(i)));
    // Echo it back reversed in chunks.
    for chunk in got.chunks(7000) {
        server.write_all(chunk).unwrap();
    }
    let echoed = writer.join().unwrap();
    assert_eq!(echoed, got);
}

#[test]
fn a_dead_server_reads_as_end_of_stream_via_its_unmap_notify() {
    let mut s = setup();
    let mut server = serve(&mut s, 0, 0);
    let mut client = connect(&s).unwrap();
    server.wait_for_client().unwrap();
    server.write_all(b"last words").unwrap();
    // The server process "dies": the fake kernel runs its unmap notify,
    // clearing srv_live and sending the event.
    s.xen.kill(SERVER);
    assert_eq!(client.endpoint().control().load_u8(SRV_LIVE).unwrap(), 0);
    let mut buf = [0u8; 32];
    let n = client.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"last words");
    assert_eq!(client.read(&mut buf).unwrap(), 0);
    assert!(matches!(client.write_all(b"x"), Err(DevError::Closed)));
}

#[test]
fn a_blocked_reader_wakes_when_the_peer_writes() {
    let mut s = setup();
    let mut server = serve(&mut s, 0, 0);
    let mut client = connect(&s).unwrap();
    server.wait_for_client().unwrap();
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 4];
        client.recv(&mut buf).unwrap();
        buf
    });
    // Written only once the reader waits on its event channel, so the wake
    // is what the test runs.
    let start = Instant::now();
    while !s.xen.log().iter().any(|l| l.contains("evtchn wait")) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the reader never waited"
        );
        thread::sleep(Duration::from_millis(1));
    }
    server.write_all(b"ping").unwrap();
    assert_eq!(&reader.join().unwrap(), b"ping");
}

#[test]
fn client_errors_name_what_was_missing_or_refused() {
    let mut s = setup();
    // Nothing published yet: the server's directory does not exist and
    // its home is unreadable to the client, so xenstored says EACCES.
    let e = connect(&s).unwrap_err();
    assert!(
        e.to_string().contains("ring-ref") && e.to_string().contains("EACCES"),
        "{e}"
    );
    let _server = serve(&mut s, 0, 0);
    // A domain the keys were not opened to cannot read them.
    let mut xs = XenStore::new(s.store.connect_as(9));
    let e = vchan::connect(&s.xen.gntdev(9), s.xen.evtchn(9), &mut xs, SERVER, PATH).unwrap_err();
    assert!(e.to_string().contains("EACCES"), "{e}");
    // A zero ring-ref is refused, as libxenvchan does.
    s.server_xs
        .write(0, &format!("{PATH}/ring-ref"), "0")
        .unwrap();
    let e = connect(&s).unwrap_err();
    assert!(e.to_string().contains("ring-ref"), "{e}");
}

#[test]
fn event_channel_wait_times_out_naming_the_device() {
    let mut s = setup();
    let mut server = serve(&mut s, 0, 0);
    server
        .event_channel_mut()
        .set_timeout(Some(Duration::from_millis(20)));
    let e = server.wait_for_client().unwrap_err();
    assert!(e.to_string().contains("/dev/xen/evtchn"), "{e}");
}

/// The client starts before the server: until the keys appear, xenstored
/// refuses them with EACCES (their directory does not exist and the
/// server's home is not readable to the client), which `wait_published`
/// must take as "not yet".
#[test]
fn a_client_started_before_the_server_waits_through_eacces() {
    let mut s = setup();
    let mut client_xs = XenStore::new(s.store.connect_as(CLIENT));
    let e = client_xs.read(0, &format!("{PATH}/ring-ref")).unwrap_err();
    assert!(e.to_string().contains("EACCES"), "{e}");
    let xen = s.xen.clone();
    let waiter = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        vchan::wait_published(&mut client_xs, PATH, deadline).unwrap();
        let mut c = vchan::connect(
            &xen.gntdev(CLIENT),
            xen.evtchn(CLIENT),
            &mut client_xs,
            SERVER,
            PATH,
        )
        .unwrap();
        c.write_all(b"late").unwrap();
        c
    });
    thread::sleep(Duration::from_millis(50));
    assert!(!waiter.is_finished(), "the client waited for the keys");
    let mut server = serve(&mut s, 0, 0);
    server
        .event_channel_mut()
        .set_timeout(Some(Duration::from_secs(20)));
    let mut buf = [0u8; 4];
    let got = server.recv(&mut buf);
    assert!(waiter.is_finished() || got.is_ok(), "{got:?}");
    got.unwrap();
    assert_eq!(&buf, b"late");
    drop(waiter.join().unwrap());
}

#[test]
fn a_wait_for_keys_that_never_come_ends_at_its_deadline() {
    let s = setup();
    let mut client_xs = XenStore::new(s.store.connect_as(CLIENT));
    let started = Instant::now();
    let deadline = started + Duration::from_millis(100);
    let e = vchan::wait_published(&mut client_xs, PATH, deadline).unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(e.to_string().contains("ring-ref"), "{e}");
}

/// A server that publishes before the client's domain exists names a
/// domain xenstored does not know: the permission is dropped, the keys
/// stay unreadable to the client, and the wait ends at its deadline with
/// EACCES (the reason), not in a hang.
#[test]
fn keys_published_before_the_client_domain_exists_are_reported_at_the_deadline() {
    let xen = FakeXen::new();
    let store = xen.xenstore(SERVER);
    let mut s = Setup {
        server_xs: XenStore::new(store.connect()),
        xen,
        store,
    };
    let _server = serve(&mut s, 0, 0);
    assert_eq!(s.store.perms(&format!("{PATH}/ring-ref")), ["n0"]);
    let mut client_xs = XenStore::new(s.store.connect_as(CLIENT));
    let deadline = Instant::now() + Duration::from_millis(100);
    let e = vchan::wait_published(&mut client_xs, PATH, deadline).unwrap_err();
    assert!(
        e.to_string().contains("ring-ref") && e.to_string().contains("EACCES"),
        "{e}"
    );
}

#[test]
fn a_dead_client_is_seen_by_the_server_and_grants_stay_private() {
    let mut s = setup();
    let mut server = serve(&mut s, 0, 0);
    let ring_ref: u32 = s
        .store
        .value(&format!("{PATH}/ring-ref"))
        .unwrap()
        .parse()
        .unwrap();
    // Domain 9 was not granted the page: the (fake) hypervisor refuses.
    let e =
        ring_hosted::xen::gntdev::map(&s.xen.gntdev(9), SERVER, &[ring_ref], Default::default())
            .unwrap_err();
    assert!(
        e.to_string().contains("/dev/xen/gntdev") && e.to_string().contains("map grant refs"),
        "{e}"
    );

    let mut client = connect(&s).unwrap();
    server.wait_for_client().unwrap();
    client.write_all(b"bye").unwrap();
    // The client process dies: its unmap notify clears cli_live and kicks.
    s.xen.kill(CLIENT);
    assert_eq!(server.endpoint().control().load_u8(CLI_LIVE).unwrap(), 0);
    let mut buf = [0u8; 8];
    let n = server.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"bye");
    assert_eq!(server.read(&mut buf).unwrap(), 0);
}
