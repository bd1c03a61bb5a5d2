//! Interop with the real libxenvchan (Debian `libxen-dev`, linked statically
//! through the harness in `c/xen_peer.c`).
//!
//! Every test puts ring-core's vchan on one side and libxenvchan's I/O code
//! on the other, over a memfd that each side maps on its own (the C side
//! page by page from the grant list, as on Xen), with an eventfd per side
//! for the event channel. Data is checked byte for byte against a seeded
//! pattern; our side must never report corruption.

use ring_core::mem::{RawMem, SharedMem};
use ring_core::signal::Signal;
use ring_core::vchan::layout::{
    placement, CLI_LIVE, CLI_NOTIFY, GRANTS, LEFT_CONS, LEFT_ORDER, LEFT_PROD, PAGE_SIZE,
    RIGHT_CONS, RIGHT_ORDER, RIGHT_PROD, SRV_LIVE, SRV_NOTIFY,
};
use ring_core::vchan::{
    self, Blocking, Endpoint, Error, FlatLayout, NotifyBits, Orders, Placement, Readiness,
    RingPlace, ServerOptions, SetupError,
};
use ring_tests::xen::{
    c_duplex, c_layout, rust_duplex, take_events, CPeer, Chunks, Duplex, FdSignal, Fnv, Pattern,
    Shm, Wires,
};
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Every test here waits on another thread or process: past this, the
/// run fails instead of hanging.
const TEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// Order pairs every data test runs over: both in-page layouts and
/// external rings up to the 1 MiB maximum.
const ORDERS: [(u8, u8); 5] = [(10, 11), (11, 10), (12, 12), (16, 13), (20, 20)];
/// Starting index values: libxenvchan's 0, and 256 bytes before the u32 wrap.
const INDICES: [u32; 2] = [0, 0xffff_ff00];

type Ep<'a> = Endpoint<RawMem<'a>>;

fn shm_for(lo: u8, ro: u8) -> Shm {
    let orders = Orders::new(lo, ro).expect("valid orders");
    Shm::new(FlatLayout::new(orders).size).expect("memfd")
}

fn our_server(shm: &Shm, lo: u8, ro: u8, initial_index: u32) -> Ep<'_> {
    let orders = Orders::new(lo, ro).expect("valid orders");
    vchan::serve_flat(shm.mem(), orders, ServerOptions { initial_index }).expect("serve")
}

/// Connects our client to a page, finding the rings through the grant list
/// the server wrote (refs are page numbers in the memfd), as a Xen client
/// maps grants. The refs of one ring must be consecutive pages.
fn our_client(shm: &Shm) -> Result<Ep<'_>, Error> {
    let mem = shm.mem();
    vchan::connect(mem, move |orders, grant| {
        let place = |order: u8, first: usize| -> Result<RingPlace<RawMem<'_>>, Error> {
            match placement(order) {
                Placement::InPage { offset } => Ok(RingPlace { mem, offset }),
                Placement::External { pages } => {
                    let start = grant(first).ok_or(SetupError::GrantCount {
                        needed: first + pages,
                        given: first,
                    })?;
                    for i in 0..pages {
                        assert_eq!(
                            grant(first + i),
                            Some(start + i as u32),
                            "grant {} of the ring at grant index {first}",
                            i
                        );
                    }
                    Ok(RingPlace {
                        mem,
                        offset: start as usize * PAGE_SIZE,
                    })
                }
            }
        };
        let left = place(orders.left(), 0)?;
        let right = place(orders.right(), placement(orders.left()).grant_count())?;
        Ok((left, right))
    })
}

fn c_server(shm: &Shm, wires: &Wires, lo: u8, ro: u8, index: u32) -> CPeer {
    CPeer::server(
        shm.fd(),
        lo,
        ro,
        index,
        wires.c_wake.as_fd(),
        wires.rust_wake.as_fd(),
    )
    .expect("C server set-up")
}

fn c_client(shm: &Shm, wires: &Wires) -> Option<CPeer> {
    CPeer::client(shm.fd(), wires.c_wake.as_fd(), wires.rust_wake.as_fd())
}

/// Which side sets up the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Ours,
    Theirs,
}

/// A connected pair: our endpoint and libxenvchan's, over `shm`.
fn connect_pair<'a>(
    shm: &'a Shm,
    wires: &Wires,
    server: Server,
    lo: u8,
    ro: u8,
    index: u32,
) -> (Ep<'a>, CPeer) {
    match server {
        Server::Ours => {
            let ours = our_server(shm, lo, ro, index);
            let c = c_client(shm, wires).expect("C client accepts our page");
            // The C client kicks us once on connect.
            assert_eq!(take_events(wires.rust_wake.as_fd()).unwrap(), 1);
            (ours, c)
        }
        Server::Theirs => {
            let c = c_server(shm, wires, lo, ro, index);
            let ours = our_client(shm).expect("we accept the C server's page");
            // As libxenvchan's client: one event after connecting.
            wires.rust_signal().unwrap().notify().unwrap();
            (ours, c)
        }
    }
}

fn kick_if(signal: &FdSignal, t: vchan::Transfer) -> usize {
    if t.notify {
        signal.notify().expect("kick");
    }
    t.len
}

fn kick_if_notify(signal: &FdSignal, t: vchan::Transfer) -> bool {
    kick_if(signal, t);
    t.notify
}

fn check_clean(ours: &Ep<'_>) {
    assert_eq!(ours.poisoned(), None, "our endpoint saw corruption");
}

#[test]
fn c_header_layout_matches_ours() {
    let _deadline = ring_tests::Deadline::new("c_header_layout_matches_ours", TEST_DEADLINE);
    let c = c_layout();
    let ours = [
        LEFT_CONS,
        LEFT_PROD,
        RIGHT_CONS,
        RIGHT_PROD,
        LEFT_ORDER,
        RIGHT_ORDER,
        CLI_LIVE,
        SRV_LIVE,
        CLI_NOTIFY,
        SRV_NOTIFY,
        GRANTS,
        GRANTS,
    ];
    assert_eq!(c, ours);
}

/// The first byte at which two pages differ, for a message that says where.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Ring sizes asked of both servers: in-page pairs, external rings, sizes
/// between two orders, and the 1 MiB maximum on both sides.
const SIZES: [(usize, usize); 9] = [
    (0, 0),
    (1024, 2048),
    (2048, 1024),
    (4096, 4096),
    (2048, 5000),
    (1 << 14, 1 << 12),
    (3000, 70_000),
    (1 << 20, 1 << 11),
    (1 << 20, 1 << 20),
];

/// Our server and libxenvchan's own `libxenvchan_server_init` (its init.o,
/// over the harness's grant, event-channel and xenstore stand-ins) write
/// byte-identical control pages for the same ring sizes; then our client
/// and libxenvchan's own `libxenvchan_client_init` leave identical pages
/// behind on servers of either kind.
#[test]
fn control_pages_are_byte_identical_to_libxenvchan_init() {
    let _deadline = ring_tests::Deadline::new(
        "control_pages_are_byte_identical_to_libxenvchan_init",
        TEST_DEADLINE,
    );
    for (n, (left_min, right_min)) in SIZES.into_iter().enumerate() {
        let orders = Orders::for_sizes(left_min, right_min).expect("sizes libxenvchan takes");
        let (lo, ro) = (orders.left(), orders.right());
        let what = format!("sizes ({left_min}, {right_min}) -> orders ({lo}, {ro})");
        let path = format!("/local/domain/0/data/vchan-init-{n}-{}", std::process::id());
        let theirs = shm_for(lo, ro);
        let mine = shm_for(lo, ro);
        let (wt, wm) = (Wires::new().unwrap(), Wires::new().unwrap());
        let lib_srv = CPeer::lib_server(
            theirs.fd(),
            &path,
            left_min,
            right_min,
            wt.c_wake.as_fd(),
            wt.rust_wake.as_fd(),
        )
        .unwrap_or_else(|| panic!("libxenvchan_server_init refused {what}"));
        let our_srv = vchan::serve_flat(mine.mem(), orders, ServerOptions::default()).unwrap();
        let (a, b) = (theirs.snapshot(0, PAGE_SIZE), mine.snapshot(0, PAGE_SIZE));
        assert_eq!(
            first_difference(&a, &b),
            None,
            "{what}: server pages differ (init.o's, ours)"
        );
        // What init.c announced in xenstore: the control page's ref and
        // the port, each readable by the peer domain.
        assert_eq!(
            ring_tests::xen::xenstore_entry(&format!("{path}/ring-ref")),
            Some((ring_tests::xen::CTRL_REF.to_string(), 2))
        );
        assert_eq!(
            ring_tests::xen::xenstore_entry(&format!("{path}/event-channel")),
            Some((ring_tests::xen::PORT.to_string(), 2))
        );

        // Our client on init.o's server, init.o's client on ours (found
        // through xenstore entries of the same shape).
        let our_cli = our_client(&theirs).expect("we accept init.o's page");
        let our_path = format!("{path}-ours");
        assert!(ring_tests::xen::xenstore_put(
            &format!("{our_path}/ring-ref"),
            &ring_tests::xen::CTRL_REF.to_string()
        ));
        assert!(ring_tests::xen::xenstore_put(
            &format!("{our_path}/event-channel"),
            &ring_tests::xen::PORT.to_string()
        ));
        let lib_cli = CPeer::lib_client(
            mine.fd(),
            &our_path,
            wm.c_wake.as_fd(),
            wm.rust_wake.as_fd(),
        )
        .unwrap_or_else(|| panic!("libxenvchan_client_init refused our page, {what}"));
        // It kicked us once on connect, as init.c does.
        assert_eq!(take_events(wm.rust_wake.as_fd()).unwrap(), 1);
        let (a, b) = (theirs.snapshot(0, PAGE_SIZE), mine.snapshot(0, PAGE_SIZE));
        assert_eq!(
            first_difference(&a, &b),
            None,
            "{what}: pages differ after connect (init.o's server with our client, ours with init.o's)"
        );
        assert_eq!(&b[CLI_LIVE..CLI_LIVE + 4], &[1, 1, 1, 1]);
        assert_eq!(our_cli.orders(), orders);

        // Data both ways through init.o's client and our server (init.c
        // leaves the `blocking` bit unset: say it).
        let mut lib_cli = lib_cli;
        lib_cli.set_blocking(false);
        let mut ours = our_srv;
        assert_eq!(lib_cli.write(b"from init.o"), 11);
        let mut buf = [0u8; 32];
        let got = ours.read(&mut buf).unwrap().len;
        assert_eq!(&buf[..got], b"from init.o");
        let _ = ours.write(b"back").unwrap();
        let mut back = [0u8; 4];
        assert_eq!(lib_cli.read(&mut back), 4);
        assert_eq!(&back, b"back");

        // Closing init.o's server removes its xenstore entries (init.o's
        // close_xs_srv, called by libxenvchan_close).
        drop(lib_srv);
        assert_eq!(
            ring_tests::xen::xenstore_entry(&format!("{path}/ring-ref")),
            None
        );
        drop((lib_cli, our_cli));
    }
}

/// Our server and the harness's re-creation of libxenvchan's server set-up
/// (`xp_server_open` in c/xen_peer.c, written from init.c's rules, with
/// any starting index) write byte-identical control pages, and the pages
/// stay identical once the other side's client (ours; the harness's
/// re-creation of the C client) has connected.
#[test]
fn control_pages_match_the_harness_recreation_of_libxenvchan_setup() {
    let _deadline = ring_tests::Deadline::new(
        "control_pages_match_the_harness_recreation_of_libxenvchan_setup",
        TEST_DEADLINE,
    );
    for (lo, ro) in ORDERS
        .into_iter()
        .chain([(11, 12), (12, 11), (10, 19), (20, 11)])
    {
        for index in INDICES {
            let theirs = shm_for(lo, ro);
            let mine = shm_for(lo, ro);
            let (wt, wm) = (Wires::new().unwrap(), Wires::new().unwrap());
            let c_srv = c_server(&theirs, &wt, lo, ro, index);
            let our_srv = our_server(&mine, lo, ro, index);
            assert_eq!(
                theirs.snapshot(0, PAGE_SIZE),
                mine.snapshot(0, PAGE_SIZE),
                "server pages differ for orders ({lo}, {ro}), index {index:#x}"
            );
            let header = mine.snapshot(0, GRANTS);
            assert_eq!(&header[CLI_LIVE..], &[2, 1, 1, 0]);

            let our_cli = our_client(&theirs).expect("we accept the C page");
            let c_cli = c_client(&mine, &wm).expect("C accepts our page");
            assert_eq!(
                theirs.snapshot(0, PAGE_SIZE),
                mine.snapshot(0, PAGE_SIZE),
                "pages differ after connect for orders ({lo}, {ro}), index {index:#x}"
            );
            assert_eq!(&mine.snapshot(0, GRANTS)[CLI_LIVE..], &[1, 1, 1, 1]);
            assert_eq!(our_cli.orders(), Orders::new(lo, ro).unwrap());
            assert_eq!(our_cli.read_capacity(), 1 << ro);
            assert_eq!(our_cli.write_capacity(), 1 << lo);
            drop((c_srv, c_cli, our_srv));
        }
    }
}

/// Builds a page by hand with the given orders (grant refs = consecutive
/// pages) and asks both clients whether they accept it.
#[test]
fn order_validation_matches_c_client_except_grant_overlap() {
    let _deadline = ring_tests::Deadline::new(
        "order_validation_matches_c_client_except_grant_overlap",
        TEST_DEADLINE,
    );
    let shm_len = PAGE_SIZE * (1 + 512);
    let cases: &[((u16, u16), bool, bool)] = &[
        // (orders, C accepts, we accept)
        ((10, 11), true, true),
        ((11, 10), true, true),
        ((12, 12), true, true),
        ((10, 19), true, true),
        ((19, 10), true, true),
        ((11, 20), true, true),
        ((20, 20), true, true),
        ((9, 11), false, false),
        ((10, 21), false, false),
        ((0, 0), false, false),
        ((10, 10), false, false),
        ((11, 11), false, false),
        ((0x10a, 11), false, false),
        // The grant list (256 refs, bytes 24..1048) runs into the 1 KiB
        // ring at byte 1024: libxenvchan accepts, we refuse.
        ((10, 20), true, false),
        ((20, 10), true, false),
    ];
    for &((lo, ro), c_ok, ours_ok) in cases {
        for who in ["c", "ours"] {
            let shm = Shm::new(shm_len).unwrap();
            let mem = shm.mem();
            mem.store_u32(LEFT_ORDER, u32::from(lo) | (u32::from(ro) << 16))
                .unwrap();
            for n in 0..512u32 {
                mem.store_u32(GRANTS + 4 * n as usize, n + 1).unwrap();
            }
            mem.store_u8(CLI_NOTIFY, 1).unwrap();
            mem.store_u8(CLI_LIVE, 2).unwrap();
            mem.store_u8(SRV_LIVE, 1).unwrap();
            let before = shm.snapshot(0, PAGE_SIZE);
            let accepted = if who == "c" {
                let w = Wires::new().unwrap();
                c_client(&shm, &w).is_some()
            } else {
                our_client(&shm).is_ok()
            };
            let expected = if who == "c" { c_ok } else { ours_ok };
            assert_eq!(accepted, expected, "{who} client on orders ({lo}, {ro})");
            if !accepted {
                assert_eq!(
                    shm.snapshot(0, PAGE_SIZE),
                    before,
                    "{who} client changed a page it refused"
                );
            }
        }
    }
}

/// Stream, packet, full-ring, exact-size packet and notify checks, run
/// single-threaded with both sides non-blocking.
fn exchange(shm: &Shm, wires: &Wires, server: Server, lo: u8, ro: u8, index: u32) {
    let what = format!("{server:?} server, orders ({lo}, {ro}), index {index:#x}");
    let (mut ours, mut c) = connect_pair(shm, wires, server, lo, ro, index);
    let sig = wires.rust_signal().unwrap();
    c.set_blocking(false);
    assert!(!c.is_blocking());
    let (our_rx, our_tx) = (ours.read_capacity(), ours.write_capacity());
    let (c_rx, c_tx) = (our_tx, our_rx);
    assert_eq!(c.is_open(), 1, "{what}");
    assert!(ours.is_open().unwrap(), "{what}");

    // Stream, ours -> C: varied sizes, three rings' worth, crossing both
    // the ring end and (for index 0xffffff00) the u32 wrap.
    let pat = Pattern::new(u64::from(lo) << 8 | u64::from(ro));
    let mut sizes = Chunks::new(index as u64 + 1, our_tx);
    let mut pos = 0u64;
    let mut buf = vec![0u8; our_tx.max(our_rx) + 64];
    while pos < 3 * our_tx as u64 {
        let n = sizes.next_len();
        let data = pat.bytes(pos, n);
        let t = ours
            .write(&data)
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        assert_eq!(t.len, n, "{what}: empty ring takes the whole write");
        kick_if(&sig, t);
        let mut got = 0;
        while got < n {
            let r = c.read(&mut buf[got..n]);
            assert!(r > 0, "{what}: C read returned {r}");
            got += r as usize;
        }
        assert_eq!(&buf[..n], &data[..], "{what}: stream ours->C at {pos}");
        pos += n as u64;
    }
    // Stream, C -> ours.
    let mut sizes = Chunks::new(index as u64 + 7, c_tx);
    let mut pos = 0u64;
    while pos < 3 * c_tx as u64 {
        let n = sizes.next_len();
        let data = pat.bytes(pos, n);
        assert_eq!(c.write(&data), n as i32, "{what}");
        let mut got = 0;
        while got < n {
            let t = ours.read(&mut buf[got..n]).unwrap();
            got += kick_if(&sig, t);
        }
        assert_eq!(&buf[..n], &data[..], "{what}: stream C->ours at {pos}");
        pos += n as u64;
    }

    // Full ring, ours -> C: one write fills it exactly.
    let fill = pat.bytes(1000, our_tx);
    let t = ours.write(&fill).unwrap();
    assert_eq!(t.len, our_tx, "{what}: fill to exactly the ring size");
    kick_if(&sig, t);
    assert_eq!(ours.buffer_space().unwrap(), 0);
    assert_eq!(ours.write(b"x"), Err(Error::WouldBlock), "{what}");
    assert_eq!(c.data_ready(), our_tx as i32, "{what}: C sees a full ring");
    let _ = take_events(wires.rust_wake.as_fd()).unwrap();
    assert_eq!(c.read(&mut buf[..our_tx + 64]), our_tx as i32, "{what}");
    assert_eq!(&buf[..our_tx], &fill[..], "{what}: full ring ours->C");
    // Our blocked write asked to be woken when C read: C kicked us.
    assert!(
        take_events(wires.rust_wake.as_fd()).unwrap() > 0,
        "{what}: C did not kick"
    );
    assert_eq!(ours.buffer_space().unwrap(), our_tx);

    // Full ring, C -> ours.
    let fill = pat.bytes(5000, c_tx);
    assert_eq!(c.write(&fill), c_tx as i32, "{what}");
    assert_eq!(c.buffer_space(), 0, "{what}");
    assert_eq!(c.write(b"x"), 0, "{what}: C write into a full ring");
    assert_eq!(ours.data_ready().unwrap(), c_tx, "{what}");
    let _ = take_events(wires.c_wake.as_fd()).unwrap();
    let t = ours.read(&mut buf[..c_tx + 64]).unwrap();
    assert_eq!(t.len, c_tx, "{what}: read a full ring in one go");
    assert!(t.notify, "{what}: C's blocked write asked for a READ kick");
    kick_if(&sig, t);
    assert_eq!(&buf[..c_tx], &fill[..], "{what}: full ring C->ours");
    assert!(take_events(wires.c_wake.as_fd()).unwrap() > 0);

    // Packets of exactly ring size, both ways.
    let pkt = pat.bytes(9000, our_tx);
    let t = ours.send(&pkt).unwrap();
    assert_eq!(t.len, our_tx);
    kick_if(&sig, t);
    assert_eq!(c.recv(&mut buf[..our_tx]), our_tx as i32, "{what}");
    assert_eq!(&buf[..our_tx], &pkt[..], "{what}: ring-size packet ours->C");
    let pkt = pat.bytes(19000, c_tx);
    assert_eq!(c.send(&pkt), c_tx as i32, "{what}");
    let t = ours.recv(&mut buf[..c_tx]).unwrap();
    kick_if(&sig, t);
    assert_eq!(&buf[..c_tx], &pkt[..], "{what}: ring-size packet C->ours");

    // Packets mixed with stream calls: we send packets, C stream-reads;
    // C writes a stream, we receive it as packets.
    let mut sizes = Chunks::new(3, our_tx / 3);
    let mut pos = 0;
    for _ in 0..40 {
        let n = sizes.next_len();
        let pkt = pat.bytes(pos, n);
        let t = ours.send(&pkt).unwrap();
        kick_if(&sig, t);
        let mut got = 0;
        while got < n {
            let r = c.read(&mut buf[got..n]);
            assert!(r > 0, "{what}");
            got += r as usize;
        }
        assert_eq!(&buf[..n], &pkt[..], "{what}: packet ours->C at {pos}");
        pos += n as u64;
    }
    let mut sizes = Chunks::new(4, c_tx / 3);
    for _ in 0..40 {
        let n = sizes.next_len();
        let data = pat.bytes(pos, n);
        // Half the packet, a premature recv, then the rest.
        let half = n / 2;
        assert_eq!(c.write(&data[..half]), half as i32);
        if half < n {
            assert_eq!(ours.recv(&mut buf[..n]), Err(Error::WouldBlock), "{what}");
        }
        assert_eq!(c.write(&data[half..]), (n - half) as i32);
        let t = ours.recv(&mut buf[..n]).unwrap();
        kick_if(&sig, t);
        assert_eq!(
            &buf[..n],
            &data[..],
            "{what}: stream C->ours as packet at {pos}"
        );
        pos += n as u64;
    }

    // Notify requests cross over: our read that would block arms WRITE in
    // the peer's byte, so C's next write kicks us; C's read that returned 0
    // armed WRITE in ours, so our next write says "notify".
    let _ = take_events(wires.rust_wake.as_fd()).unwrap();
    assert_eq!(ours.read(&mut buf[..10]), Err(Error::WouldBlock));
    assert_eq!(c.write(b"ping"), 4);
    assert_eq!(take_events(wires.rust_wake.as_fd()).unwrap(), 1, "{what}");
    assert_eq!(ours.read(&mut buf[..10]).unwrap().len, 4);
    assert_eq!(&buf[..4], b"ping");
    assert_eq!(c.read(&mut buf[..10]), 0, "{what}: nothing for C yet");
    let t = ours.write(b"pong").unwrap();
    assert!(t.notify, "{what}: C armed WRITE and we must kick");
    kick_if(&sig, t);
    assert_eq!(c.read(&mut buf[..10]), 4);
    assert_eq!(&buf[..4], b"pong");

    // Oversized packets: we refuse at once; non-blocking C returns 0
    // (would block) for ever, blocking C returns -1.
    let big = vec![0u8; our_tx + 1];
    assert_eq!(
        ours.send(&big),
        Err(Error::TooLarge {
            len: our_tx + 1,
            capacity: our_tx
        })
    );
    let big = vec![0u8; c_tx + 1];
    assert_eq!(c.send(&big), 0, "{what}");
    c.set_blocking(true);
    assert_eq!(c.send(&big), -1, "{what}");
    let mut bigbuf = vec![0u8; c_rx + 1];
    assert_eq!(c.recv(&mut bigbuf), -1, "{what}");
    c.set_blocking(false);
    assert_eq!(c.recv(&mut bigbuf), 0, "{what}");

    check_clean(&ours);
    assert_eq!(ours.data_ready().unwrap(), 0);
    assert_eq!(c.data_ready(), 0);
}

#[test]
fn exchange_our_server_their_client() {
    let _deadline = ring_tests::Deadline::new("exchange_our_server_their_client", TEST_DEADLINE);
    for (lo, ro) in ORDERS {
        for index in INDICES {
            let shm = shm_for(lo, ro);
            let wires = Wires::new().unwrap();
            exchange(&shm, &wires, Server::Ours, lo, ro, index);
        }
    }
}

#[test]
fn exchange_their_server_our_client() {
    let _deadline = ring_tests::Deadline::new("exchange_their_server_our_client", TEST_DEADLINE);
    for (lo, ro) in ORDERS {
        for index in INDICES {
            let shm = shm_for(lo, ro);
            let wires = Wires::new().unwrap();
            exchange(&shm, &wires, Server::Theirs, lo, ro, index);
        }
    }
}

/// The writer sends, then closes; the reader drains everything and then
/// sees end of stream, in both directions and for both pairings.
#[test]
fn close_then_drain_then_eof_both_ways() {
    let _deadline = ring_tests::Deadline::new("close_then_drain_then_eof_both_ways", TEST_DEADLINE);
    for server in [Server::Ours, Server::Theirs] {
        for (lo, ro) in [(10, 11), (16, 13)] {
            let what = format!("{server:?} server, orders ({lo}, {ro})");
            let data = Pattern::new(42).bytes(0, 1000);
            let mut buf = vec![0u8; 4096];

            // We write and close; C drains, then gets -1.
            let shm = shm_for(lo, ro);
            let wires = Wires::new().unwrap();
            let (mut ours, mut c) = connect_pair(&shm, &wires, server, lo, ro, 0xffff_ff00);
            c.set_blocking(false);
            let t = ours.write(&data).unwrap();
            assert_eq!(t.len, 1000);
            let _ = take_events(wires.c_wake.as_fd()).unwrap();
            let t = ours.close().unwrap();
            assert!(t.notify, "close must kick the peer");
            wires.rust_signal().unwrap().notify().unwrap();
            assert!(take_events(wires.c_wake.as_fd()).unwrap() > 0);
            assert_eq!(c.is_open(), 0, "{what}");
            assert_eq!(c.write(b"late"), -1, "{what}: C write after our close");
            assert_eq!(c.send(b"late"), -1, "{what}");
            assert_eq!(c.recv(&mut buf[..1001]), -1, "{what}: too little left");
            assert_eq!(c.read(&mut buf), 1000, "{what}: drain after close");
            assert_eq!(&buf[..1000], &data[..]);
            assert_eq!(c.read(&mut buf), -1, "{what}: EOF");
            c.set_blocking(true);
            assert_eq!(c.read(&mut buf), -1, "{what}: blocking EOF");
            assert_eq!(c.recv(&mut buf[..1]), -1, "{what}");
            assert_eq!(ours.read(&mut buf), Err(Error::Closed));
            assert_eq!(ours.write(b"x"), Err(Error::Closed));
            check_clean(&ours);
            drop(c);

            // C writes and closes; we drain, then see EOF.
            let shm = shm_for(lo, ro);
            let wires = Wires::new().unwrap();
            let (mut ours, mut c) = connect_pair(&shm, &wires, server, lo, ro, 0xffff_ff00);
            c.set_blocking(false);
            assert_eq!(c.write(&data), 1000);
            let _ = take_events(wires.rust_wake.as_fd()).unwrap();
            c.close();
            assert_eq!(
                take_events(wires.rust_wake.as_fd()).unwrap(),
                1,
                "{what}: libxenvchan_close kicks unconditionally"
            );
            assert!(!ours.is_open().unwrap(), "{what}");
            assert_eq!(ours.write(b"late"), Err(Error::Closed), "{what}");
            assert_eq!(ours.send(b"late"), Err(Error::Closed), "{what}");
            assert_eq!(ours.recv(&mut buf[..1001]), Err(Error::Closed), "{what}");
            let t = ours.read(&mut buf).unwrap();
            assert_eq!(t.len, 1000, "{what}: drain after close");
            assert_eq!(&buf[..1000], &data[..]);
            assert_eq!(ours.read(&mut buf).unwrap().len, 0, "{what}: EOF");
            assert_eq!(ours.recv(&mut buf[..1]), Err(Error::Closed));
            let sig = wires.rust_signal().unwrap();
            let mut b = Blocking::new(ours, &sig);
            assert_eq!(b.read(&mut buf).unwrap(), 0, "{what}: blocking EOF");
            check_clean(b.endpoint());
        }
    }
}

/// One direction at a time, both sides in blocking mode: C's blocking
/// write/read/send/recv (sleeping in `libxenvchan_wait` on its eventfd)
/// against our `Blocking` over an eventfd `Signal`.
#[test]
fn blocking_one_way_streams_and_packets_in_two_threads() {
    let _deadline = ring_tests::Deadline::new(
        "blocking_one_way_streams_and_packets_in_two_threads",
        TEST_DEADLINE,
    );
    for server in [Server::Ours, Server::Theirs] {
        for (lo, ro) in [(10, 11), (12, 12), (20, 20)] {
            let what = format!("{server:?} server, orders ({lo}, {ro})");
            let shm = shm_for(lo, ro);
            let wires = Wires::new().unwrap();
            let (ours, mut c) = connect_pair(&shm, &wires, server, lo, ro, 0xffff_fff0);
            let sig = wires.rust_signal().unwrap();
            let mut ours = Blocking::new(ours, sig);
            c.set_blocking(true);
            assert!(c.is_blocking());
            let len: u64 = 3 << 20;
            let (up, down) = (Pattern::new(11), Pattern::new(12));
            let c_tx = ours.endpoint().read_capacity();
            let c_rx = ours.endpoint().write_capacity();
            let start = Instant::now();
            std::thread::scope(|s| {
                let c_side = s.spawn(move || {
                    // C reads our stream with blocking reads.
                    let mut buf = vec![0u8; c_rx.max(10_000)];
                    let mut got = 0u64;
                    let mut fnv = Fnv::default();
                    while got < len {
                        let n = (len - got).min(buf.len() as u64) as usize;
                        let r = c.read(&mut buf[..n]);
                        assert!(r > 0, "C blocking read returned {r}");
                        let r = r as usize;
                        assert_eq!(up.mismatch(got, &buf[..r]), None);
                        fnv.update(&buf[..r]);
                        got += r as u64;
                    }
                    // C writes its stream in large blocking writes.
                    let mut pos = 0u64;
                    while pos < len {
                        let n = (len - pos).min(300_000) as usize;
                        let data = down.bytes(pos, n);
                        assert_eq!(c.write(&data), n as i32, "C blocking write");
                        pos += n as u64;
                    }
                    // Packets: C sends, then receives, sizes up to its rings.
                    let mut sizes = Chunks::new(5, c_tx);
                    let mut pos = 0u64;
                    for _ in 0..200 {
                        let n = sizes.next_len();
                        assert_eq!(c.send(&down.bytes(pos, n)), n as i32, "C send");
                        pos += n as u64;
                    }
                    let mut sizes = Chunks::new(6, c_rx);
                    let mut pos = 0u64;
                    for _ in 0..200 {
                        let n = sizes.next_len();
                        assert_eq!(c.recv(&mut buf[..n]), n as i32, "C recv");
                        assert_eq!(up.mismatch(pos, &buf[..n]), None, "C recv data");
                        pos += n as u64;
                    }
                    (fnv, c)
                });
                let mut sizes = Chunks::new(9, 50_000);
                let mut pos = 0u64;
                while pos < len {
                    let n = (sizes.next_len() as u64).min(len - pos) as usize;
                    ours.write_all(&up.bytes(pos, n)).unwrap();
                    pos += n as u64;
                }
                let mut buf = vec![0u8; c_tx.max(70_000)];
                let mut got = 0u64;
                let mut fnv = Fnv::default();
                while got < len {
                    let n = (sizes.next_len() as u64).min(len - got) as usize;
                    let r = ours.read(&mut buf[..n]).unwrap();
                    assert!(r > 0);
                    assert_eq!(down.mismatch(got, &buf[..r]), None, "{what}");
                    fnv.update(&buf[..r]);
                    got += r as u64;
                }
                assert_eq!(fnv, Fnv::of_pattern(down, len), "{what}");
                let mut sizes = Chunks::new(5, c_tx);
                let mut pos = 0u64;
                for _ in 0..200 {
                    let n = sizes.next_len();
                    ours.recv(&mut buf[..n]).unwrap();
                    assert_eq!(down.mismatch(pos, &buf[..n]), None, "{what}: our recv");
                    pos += n as u64;
                }
                let mut sizes = Chunks::new(6, c_rx);
                let mut pos = 0u64;
                for _ in 0..200 {
                    let n = sizes.next_len();
                    ours.send(&up.bytes(pos, n)).unwrap();
                    pos += n as u64;
                }
                let (c_fnv, c) = c_side.join().expect("C thread");
                assert_eq!(c_fnv, Fnv::of_pattern(up, len), "{what}");
                // C closes; our blocking read sees EOF.
                c.close();
                assert_eq!(ours.read(&mut buf).unwrap(), 0, "{what}: EOF");
                check_clean(ours.endpoint());
            });
            eprintln!("{what}: {:?}", start.elapsed());
        }
    }
}

fn duplex_run(server: Server, lo: u8, ro: u8, index: u32, len: u64) {
    let what = format!("{server:?} server, orders ({lo}, {ro}), index {index:#x}");
    let shm = shm_for(lo, ro);
    let wires = Wires::new().unwrap();
    let (mut ours, mut c) = connect_pair(&shm, &wires, server, lo, ro, index);
    let sig = wires.rust_signal().unwrap();
    let (a, b) = (Pattern::new(0xa11ce), Pattern::new(0xb0b));
    let start = Instant::now();
    let (mine, theirs) = std::thread::scope(|s| {
        let c_side = s.spawn(move || {
            let r = c_duplex(
                &mut c,
                Duplex {
                    send: b,
                    send_len: len,
                    recv: a,
                    recv_len: len,
                    chunk: 6000,
                },
            );
            (r, c)
        });
        let mine = rust_duplex(
            &mut ours,
            &sig,
            Duplex {
                send: a,
                send_len: len,
                recv: b,
                recv_len: len,
                chunk: 5000,
            },
        );
        let (theirs, c) = c_side.join().expect("C thread");
        // Our side closes; C drains (nothing left) and sees EOF.
        let t = ours.close().unwrap();
        kick_if(&sig, t);
        let mut c = c;
        c.set_blocking(true);
        assert_eq!(c.read(&mut [0u8; 16]), -1, "{what}: C sees EOF");
        (mine, theirs)
    });
    let mine = mine.unwrap_or_else(|e| panic!("{what}: {e}"));
    let theirs = theirs.unwrap_or_else(|e| panic!("{what}: {e}"));
    let (fa, fb) = (Fnv::of_pattern(a, len), Fnv::of_pattern(b, len));
    assert_eq!((mine.sent, mine.received), (fa, fb), "{what}");
    assert_eq!((theirs.sent, theirs.received), (fb, fa), "{what}");
    check_clean(&ours);
    eprintln!(
        "{what}: {len} bytes each way in {:?} (waits: ours {}, C {})",
        start.elapsed(),
        mine.waits,
        theirs.waits
    );
}

/// Both directions at once, one thread per side, each sleeping on its own
/// eventfd whenever neither direction can move.
#[test]
fn duplex_checksummed_transfers_in_two_threads() {
    let _deadline =
        ring_tests::Deadline::new("duplex_checksummed_transfers_in_two_threads", TEST_DEADLINE);
    for server in [Server::Ours, Server::Theirs] {
        duplex_run(server, 10, 11, 0xffff_ff00, 2 << 20);
        duplex_run(server, 11, 10, 0, 2 << 20);
        duplex_run(server, 12, 12, 0xffff_ff00, 4 << 20);
        duplex_run(server, 16, 13, 0, 4 << 20);
        duplex_run(server, 20, 20, 0xffff_ff00, 8 << 20);
    }
}

fn child_run(server: Server, closer: &str, lo: u8, ro: u8, index: u32, len: u64) {
    let what = format!("{server:?} server, {closer} closes, orders ({lo}, {ro})");
    let shm = shm_for(lo, ro);
    let wires = Wires::new().unwrap();
    let (c_seed, our_seed) = (0xc0ffee_u64, 0xbeef_u64);
    let mut ours = match server {
        Server::Ours => Some(our_server(&shm, lo, ro, index)),
        Server::Theirs => None,
    };
    let fds = [
        shm.fd().as_raw_fd(),
        wires.c_wake.as_raw_fd(),
        wires.rust_wake.as_raw_fd(),
    ];
    let role = if server == Server::Ours {
        "client"
    } else {
        "server"
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xen_child"));
    cmd.args([role.to_string(), fds[0].to_string(), fds[1].to_string()])
        .args([fds[2].to_string(), lo.to_string(), ro.to_string()])
        .args([index.to_string(), len.to_string(), c_seed.to_string()])
        .args([our_seed.to_string(), closer.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let inherit = move || {
        for fd in fds {
            // SAFETY: clears close-on-exec on a descriptor that is open in
            // the parent, so in the forked child too.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: `inherit` only calls `fcntl`, which is async-signal-safe, so
    // it may run between fork and exec.
    unsafe { std::os::unix::process::CommandExt::pre_exec(&mut cmd, inherit) };
    let start = Instant::now();
    let child = cmd.spawn().expect("spawn xen_child");
    let sig = wires.rust_signal().unwrap();
    let mut ours = match ours.take() {
        Some(ep) => ep,
        None => {
            // Wait for the child's "page ready" kick, then connect.
            sig.wait().expect("child server ready");
            let ep = our_client(&shm).expect("we accept the child's page");
            sig.notify().unwrap();
            ep
        }
    };
    let mine = rust_duplex(
        &mut ours,
        &sig,
        Duplex {
            send: Pattern::new(our_seed),
            send_len: len,
            recv: Pattern::new(c_seed),
            recv_len: len,
            chunk: 7000,
        },
    );
    let mine = mine.unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut buf = [0u8; 64];
    if closer == "c" {
        // Wait for the child's close: our read must report EOF.
        loop {
            match ours.read(&mut buf) {
                Ok(t) => {
                    assert_eq!(t.len, 0, "{what}: nothing more was sent");
                    break;
                }
                Err(Error::WouldBlock) => sig.wait().expect("child close"),
                Err(e) => panic!("{what}: {e:?}"),
            }
        }
        assert!(!ours.is_open().unwrap());
        let t = ours.close().unwrap();
        kick_if(&sig, t);
    } else {
        let t = ours.close().unwrap();
        kick_if(&sig, t);
    }
    let out = child.wait_with_output().expect("child output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what}: child failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let expect = format!(
        "sent={:016x} received={:016x}",
        Fnv::of_pattern(Pattern::new(c_seed), len).0,
        Fnv::of_pattern(Pattern::new(our_seed), len).0
    );
    assert!(stdout.starts_with(&expect), "{what}: child said {stdout}");
    assert_eq!(mine.received, Fnv::of_pattern(Pattern::new(c_seed), len));
    check_clean(&ours);
    eprintln!("{what}: {len} bytes each way in {:?}", start.elapsed());
}

/// The same duplex transfer with libxenvchan in a child process, over the
/// memfd and eventfds it inherits: both pairings, both closing orders.
#[test]
fn duplex_transfers_across_two_processes() {
    let _deadline =
        ring_tests::Deadline::new("duplex_transfers_across_two_processes", TEST_DEADLINE);
    child_run(Server::Ours, "c", 10, 11, 0xffff_ff00, 4 << 20);
    child_run(Server::Theirs, "rust", 10, 11, 0, 4 << 20);
    child_run(Server::Ours, "rust", 16, 13, 0, 8 << 20);
    child_run(Server::Theirs, "c", 20, 20, 0xffff_ff00, 8 << 20);
}

/// Order pairs with one in-page and one external ring, over the same
/// exchange as above (libxenvchan's server picks such pairs for mixed
/// sizes; (10, 19) puts 128 grant refs in front of the 1 KiB ring).
#[test]
fn exchange_mixed_in_page_and_external_orders() {
    let _deadline =
        ring_tests::Deadline::new("exchange_mixed_in_page_and_external_orders", TEST_DEADLINE);
    for (lo, ro) in [(11, 12), (12, 11), (10, 19), (20, 11)] {
        for server in [Server::Ours, Server::Theirs] {
            let shm = shm_for(lo, ro);
            let wires = Wires::new().unwrap();
            exchange(&shm, &wires, server, lo, ro, 0xffff_fc00);
        }
    }
}

/// A server may write before any client has connected (C's `is_open`
/// says 2, which counts as open); the client finds the bytes on connect.
#[test]
fn server_writes_before_the_client_connects() {
    let _deadline =
        ring_tests::Deadline::new("server_writes_before_the_client_connects", TEST_DEADLINE);
    let greeting = Pattern::new(77).bytes(0, 700);
    let mut buf = vec![0u8; 1024];
    for (lo, ro) in [(10, 11), (12, 13)] {
        // Theirs writes first, ours connects.
        let shm = shm_for(lo, ro);
        let wires = Wires::new().unwrap();
        let mut c = c_server(&shm, &wires, lo, ro, 0xffff_ffff);
        assert_eq!(c.is_open(), 2);
        assert_eq!(c.write(&greeting), 700);
        let mut ours = our_client(&shm).unwrap();
        assert_eq!(ours.data_ready().unwrap(), 700);
        let t = ours.read(&mut buf).unwrap();
        assert_eq!(&buf[..t.len], &greeting[..]);
        assert_eq!(c.is_open(), 1);
        check_clean(&ours);
        drop(c);

        // Ours writes first, theirs connects.
        let shm = shm_for(lo, ro);
        let wires = Wires::new().unwrap();
        let mut ours = our_server(&shm, lo, ro, 0xffff_ffff);
        assert!(ours.is_open().unwrap());
        let t = ours.write(&greeting).unwrap();
        assert_eq!(t.len, 700);
        assert!(!t.notify, "no client has asked for a kick yet");
        let mut c = c_client(&shm, &wires).unwrap();
        assert_eq!(c.read(&mut buf), 700);
        assert_eq!(&buf[..700], &greeting[..]);
        check_clean(&ours);
    }
}

/// A server sleeps until its client connects: the C server in
/// `libxenvchan_wait` while `is_open` is 2, ours in a blocking read.
#[test]
fn server_sleeps_until_the_client_connects() {
    let _deadline =
        ring_tests::Deadline::new("server_sleeps_until_the_client_connects", TEST_DEADLINE);
    // Theirs waits, ours connects and kicks.
    let shm = shm_for(10, 11);
    let wires = Wires::new().unwrap();
    let mut c = c_server(&shm, &wires, 10, 11, 0);
    std::thread::scope(|s| {
        let waiter = s.spawn(move || {
            let mut waits = 0;
            while c.is_open() == 2 {
                assert_eq!(c.wait(), 0, "C server got no event");
                waits += 1;
            }
            (c.is_open(), waits)
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        let _ours = our_client(&shm).unwrap();
        wires.rust_signal().unwrap().notify().unwrap();
        let (open, waits) = waiter.join().unwrap();
        assert_eq!(open, 1);
        assert!(waits >= 1);
    });

    // Ours waits in a blocking read, theirs connects and writes.
    let shm = shm_for(10, 11);
    let wires = Wires::new().unwrap();
    let ours = our_server(&shm, 10, 11, 0);
    let sig = wires.rust_signal().unwrap();
    std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut b = Blocking::new(ours, sig);
            let mut buf = [0u8; 16];
            let n = b.read(&mut buf).unwrap();
            (buf[..n].to_vec(), b)
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut c = c_client(&shm, &wires).unwrap();
        assert_eq!(c.write(b"hello"), 5);
        let (got, mut b) = reader.join().unwrap();
        assert_eq!(got, b"hello");
        check_clean(b.endpoint());
    });
}

/// Closing wakes a peer that sleeps on a full ring: C's blocking write
/// returns −1 (after sending part), and so does our blocking write.
#[test]
fn close_wakes_a_writer_blocked_on_a_full_ring() {
    let _deadline =
        ring_tests::Deadline::new("close_wakes_a_writer_blocked_on_a_full_ring", TEST_DEADLINE);
    for server in [Server::Ours, Server::Theirs] {
        // C blocks writing more than the ring holds; we close.
        let shm = shm_for(12, 12);
        let wires = Wires::new().unwrap();
        let (mut ours, mut c) = connect_pair(&shm, &wires, server, 12, 12, 0);
        let sig = wires.rust_signal().unwrap();
        c.set_blocking(true);
        std::thread::scope(|s| {
            let writer = s.spawn(move || c.write(&[7u8; 10_000]));
            // Wait until the ring is full and C has asked to be woken.
            let t0 = Instant::now();
            while ours.data_ready().unwrap() < 4096 {
                assert!(t0.elapsed().as_secs() < 10);
                std::thread::yield_now();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            let t = ours.close().unwrap();
            kick_if(&sig, t);
            assert_eq!(writer.join().unwrap(), -1, "{server:?}: C blocking write");
        });

        // We block writing more than the ring holds; C closes.
        let shm = shm_for(12, 12);
        let wires = Wires::new().unwrap();
        let (ours, c) = connect_pair(&shm, &wires, server, 12, 12, 0);
        let sig = wires.rust_signal().unwrap();
        std::thread::scope(|s| {
            let writer = s.spawn(move || {
                let mut b = Blocking::new(ours, sig);
                let r = b.write_all(&[9u8; 10_000]);
                (r, b)
            });
            let mut c = c;
            let t0 = Instant::now();
            while c.data_ready() < 4096 {
                assert!(t0.elapsed().as_secs() < 10);
                std::thread::yield_now();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            c.close();
            let (r, mut b) = writer.join().unwrap();
            assert!(
                matches!(r, Err(ring_core::vchan::BlockingError::Ring(Error::Closed))),
                "{server:?}: our blocking write after C closed: {r:?}"
            );
            check_clean(b.endpoint());
        });
    }
}

/// Where the two deliberately differ: a peer that breaks the index rules.
/// libxenvchan clamps a producer index more than a ring ahead to "no data"
/// and stalls silently; ours reports corruption.
#[test]
fn hostile_producer_index_c_stalls_ours_reports_corrupt() {
    let _deadline = ring_tests::Deadline::new(
        "hostile_producer_index_c_stalls_ours_reports_corrupt",
        TEST_DEADLINE,
    );
    for server in [Server::Ours, Server::Theirs] {
        let shm = shm_for(10, 11);
        let wires = Wires::new().unwrap();
        let (mut ours, mut c) = connect_pair(&shm, &wires, server, 10, 11, 0);
        let mem = shm.mem();
        // The ring each side reads: ours is right for a client, left for a
        // server; corrupt the producer of both rings.
        for prod in [LEFT_PROD, RIGHT_PROD] {
            let cons = mem.load_u32(prod - 4).unwrap();
            mem.store_u32(prod, cons.wrapping_add(1 << 31)).unwrap();
        }
        assert_eq!(c.data_ready(), 0, "C clamps to zero");
        let mut buf = [0u8; 64];
        assert_eq!(c.read(&mut buf), 0, "C non-blocking read sees nothing");
        assert!(matches!(ours.read(&mut buf), Err(Error::Corrupt(_))));
        assert!(ours.poisoned().is_some());
        // A live byte outside 0..=2: C's is_open passes the raw byte on.
        let c_peer_live = if server == Server::Ours {
            SRV_LIVE
        } else {
            CLI_LIVE
        };
        mem.store_u8(c_peer_live, 7).unwrap();
        assert_eq!(c.is_open(), 7);
    }
}

/// A deliberate API difference: libxenvchan's `data_ready` and
/// `buffer_space` arm a wake-up request as a side effect; ours only report,
/// and arming is the separate `arm_readable`/`arm_writable`.
#[test]
fn c_queries_arm_notifications_ours_do_not() {
    let _deadline =
        ring_tests::Deadline::new("c_queries_arm_notifications_ours_do_not", TEST_DEADLINE);
    let shm = shm_for(10, 11);
    let wires = Wires::new().unwrap();
    let (mut ours, mut c) = connect_pair(&shm, &wires, Server::Ours, 10, 11, 0);
    let mem = shm.mem();
    let sig = wires.rust_signal().unwrap();
    // Connect left one WRITE request in each byte; one message each way
    // uses them up.
    assert_eq!(mem.load_u8(CLI_NOTIFY).unwrap(), 1);
    assert_eq!(mem.load_u8(SRV_NOTIFY).unwrap(), 1);
    let t = ours.write(b"a").unwrap();
    assert!(t.notify);
    kick_if(&sig, t);
    assert_eq!(c.write(b"b"), 1);
    let mut buf = [0u8; 4];
    // A read for more than is there: C arms WRITE anyway (it returns the
    // one byte but asks to hear about more); ours arms only when it finds
    // nothing at all.
    assert_eq!(c.read(&mut buf), 1);
    assert_eq!(
        mem.load_u8(SRV_NOTIFY).unwrap(),
        1,
        "C armed on a short read"
    );
    assert_eq!(kick_if(&sig, ours.read(&mut buf).unwrap()), 1);
    assert_eq!(mem.load_u8(CLI_NOTIFY).unwrap(), 0, "ours did not");
    // Our next write uses up C's request.
    assert!(kick_if_notify(&sig, ours.write(b"d").unwrap()));
    assert_eq!(c.read(&mut buf[..1]), 1);
    assert_eq!(mem.load_u8(SRV_NOTIFY).unwrap(), 0);

    assert_eq!(ours.data_ready().unwrap(), 0);
    assert_eq!(ours.buffer_space().unwrap(), 2048);
    assert_eq!(
        mem.load_u8(CLI_NOTIFY).unwrap(),
        0,
        "ours: no request armed"
    );
    assert_eq!(c.data_ready(), 0);
    assert_eq!(c.buffer_space(), 1024);
    assert_eq!(
        mem.load_u8(SRV_NOTIFY).unwrap(),
        3,
        "C: WRITE and READ armed"
    );
    assert_eq!(ours.arm_readable(1).unwrap(), Readiness::Armed);
    assert_eq!(mem.load_u8(CLI_NOTIFY).unwrap(), 1, "ours: WRITE armed");
    let t = ours.write(&[5u8; 2000]).unwrap();
    assert!(
        kick_if_notify(&sig, t),
        "C's data_ready asked for this kick"
    );
    assert_eq!(
        ours.arm_writable(4096).unwrap(),
        Readiness::Armed,
        "want clamped to the ring size"
    );
    assert_eq!(mem.load_u8(CLI_NOTIFY).unwrap(), 3, "ours: READ armed too");
    let _ = take_events(wires.rust_wake.as_fd()).unwrap();
    let mut big = [0u8; 2000];
    assert_eq!(c.read(&mut big), 2000);
    assert_eq!(
        take_events(wires.rust_wake.as_fd()).unwrap(),
        1,
        "READ kick"
    );
    assert_eq!(c.write(b"c"), 1);
    assert_eq!(take_events(wires.rust_wake.as_fd()).unwrap(), 1);
}

/// Reconnect on the same page: libxenvchan's persisting server takes a
/// second client of ours after the first closed, and our server takes a
/// second libxenvchan client. Indices carry on; nothing is reset.
#[test]
fn a_second_client_connects_after_the_first_closed() {
    let _deadline = ring_tests::Deadline::new(
        "a_second_client_connects_after_the_first_closed",
        TEST_DEADLINE,
    );
    let mut buf = [0u8; 64];
    for (lo, ro) in [(10, 11), (13, 12)] {
        // Theirs serves (persisting), ours connects twice.
        let shm = shm_for(lo, ro);
        let wires = Wires::new().unwrap();
        let mut c = c_server(&shm, &wires, lo, ro, 0xffff_fffe);
        c.set_server_persist(true);
        let sig = wires.rust_signal().unwrap();
        for round in 0..3u8 {
            let mut ours = our_client(&shm).expect("reconnect");
            sig.notify().unwrap();
            let msg = [round; 10];
            assert_eq!(kick_if(&sig, ours.write(&msg).unwrap()), 10);
            assert_eq!(c.read(&mut buf), 10);
            assert_eq!(&buf[..10], &msg);
            assert_eq!(c.write(&[round + 100; 7]), 7);
            let t = ours.read(&mut buf).unwrap();
            assert_eq!(&buf[..kick_if(&sig, t)], &[round + 100; 7]);
            kick_if(&sig, ours.close().unwrap());
            assert_eq!(c.is_open(), 1, "persisting server stays open");
            check_clean(&ours);
        }
        assert_eq!(
            shm.mem().load_u32(LEFT_PROD).unwrap(),
            0xffff_fffe_u32.wrapping_add(30)
        );

        // Ours serves, theirs connects twice.
        let shm = shm_for(lo, ro);
        let wires = Wires::new().unwrap();
        let mut ours = our_server(&shm, lo, ro, 0xffff_fffe);
        let sig = wires.rust_signal().unwrap();
        for round in 0..3u8 {
            let mut c = c_client(&shm, &wires).expect("C client reconnects");
            assert!(ours.is_open().unwrap());
            assert_eq!(c.write(&[round; 10]), 10);
            let t = ours.read(&mut buf).unwrap();
            assert_eq!(&buf[..kick_if(&sig, t)], &[round; 10]);
            assert_eq!(kick_if(&sig, ours.write(&[round + 50; 5]).unwrap()), 5);
            assert_eq!(c.read(&mut buf), 5);
            assert_eq!(&buf[..5], &[round + 50; 5]);
            c.close();
            assert!(!ours.is_open().unwrap());
            assert_eq!(ours.read(&mut buf).unwrap().len, 0, "EOF between clients");
        }
        check_clean(&ours);
    }
}

/// Where the clients differ at connect: libxenvchan's client checks only
/// the orders, so it connects to a page whose server is gone and to one
/// that already has a client; ours refuses both.
#[test]
fn connect_checks_liveness_where_c_does_not() {
    let _deadline =
        ring_tests::Deadline::new("connect_checks_liveness_where_c_does_not", TEST_DEADLINE);
    for (cli_live, srv_live, ours_err) in [
        (2u8, 0u8, SetupError::ServerNotLive { live: 0 }),
        (1, 1, SetupError::ClientAlreadyConnected),
    ] {
        let shm = shm_for(10, 11);
        let wires = Wires::new().unwrap();
        let c_srv = c_server(&shm, &wires, 10, 11, 0);
        let mem = shm.mem();
        mem.store_u8(CLI_LIVE, cli_live).unwrap();
        mem.store_u8(SRV_LIVE, srv_live).unwrap();
        let err = our_client(&shm).err();
        assert_eq!(err, Some(Error::Setup(ours_err)));
        let mut c = c_client(&shm, &wires).expect("C client connects anyway");
        assert_eq!(c.is_open(), i32::from(srv_live));
        drop((c, c_srv));
    }
}

/// The consumer index we publish in the page (the `cons` of the ring we
/// read), and our own notify byte (where the C side asks us for kicks).
fn our_cons_and_notify(server: Server) -> (usize, usize) {
    match server {
        Server::Ours => (LEFT_CONS, SRV_NOTIFY),
        Server::Theirs => (RIGHT_CONS, CLI_NOTIFY),
    }
}

/// What a held-reader run counted.
#[derive(Debug, Default)]
struct HeldStats {
    /// `release` calls that gave bytes back.
    releases: u64,
    /// Releases that said the C writer had asked to be kicked for space.
    kicks: u64,
    /// Times we slept on our eventfd.
    waits: u64,
}

/// libxenvchan as a blocking writer streams `len` bytes, in writes far
/// larger than the ring, so it sleeps on a full ring again and again; we
/// read with `read_held` and `recv_held` (alternating by chunk size),
/// give the space back once `release_every` bytes are held and always
/// before we sleep, kick when `release` says so, and sleep on our eventfd
/// when nothing is there. A lost wake-up on either side ends in a timeout
/// (C's blocking write returns −1 and closes; our wait fails) instead of a
/// hang.
fn held_reader_run(server: Server, lo: u8, ro: u8, index: u32, len: u64, release_every: usize) {
    let what = format!(
        "{server:?} server, orders ({lo}, {ro}), index {index:#x}, release every {release_every}"
    );
    let shm = shm_for(lo, ro);
    let wires = Wires::new().unwrap();
    let (mut ours, mut c) = connect_pair(&shm, &wires, server, lo, ro, index);
    let sig = wires.rust_signal().unwrap();
    let mem = shm.mem();
    let (cons_at, _) = our_cons_and_notify(server);
    let rx = ours.read_capacity();
    let pat = Pattern::new(0x4e1d ^ u64::from(index));
    c.set_blocking(true);
    let start = Instant::now();
    let (got, fnv, stats) = std::thread::scope(|s| {
        let writer = s.spawn(move || {
            let mut sizes = Chunks::new(17, 100_000);
            let mut pos = 0u64;
            while pos < len {
                let n = (sizes.next_len() as u64).min(len - pos) as usize;
                let r = c.write(&pat.bytes(pos, n));
                assert_eq!(r, n as i32, "C blocking write at {pos}");
                pos += n as u64;
            }
            // Dropping `c` closes: we drain and then see end of stream.
        });
        let mut buf = vec![0u8; rx];
        let mut sizes = Chunks::new(u64::from(index) ^ 0x5eed, rx);
        let (mut got, mut fnv) = (0u64, Fnv::default());
        let mut released = 0u64;
        let mut stats = HeldStats::default();
        loop {
            let n = sizes.next_len();
            let left = usize::try_from(len - got).unwrap_or(usize::MAX);
            // A whole packet only while that many bytes are still to come,
            // or the C side's close would (rightly) make it `Closed`.
            let (r, want) = if n.is_multiple_of(2) && n <= left {
                let r = ours.recv_held(&mut buf[..n]);
                (r.map(|whole| if whole { n } else { 0 }), n)
            } else {
                (ours.read_held(&mut buf[..n]), 1)
            };
            match r {
                Ok(0) => {
                    // Nothing (or no whole packet) there now: arm and
                    // sleep. While we owe the writer space, arming is
                    // refused: give it back first (kicking the writer if it
                    // is waiting for it), then arm again.
                    let held = ours.held();
                    match ours.arm_readable(want) {
                        // It arrived meanwhile; nothing was armed.
                        Ok(Readiness::Ready) => {}
                        Ok(Readiness::Armed) => {
                            assert_eq!(held, 0, "{what}: armed while holding");
                            stats.waits += 1;
                            sig.wait()
                                .unwrap_or_else(|e| panic!("{what}: {e} (received {got})"));
                        }
                        Err(Error::Held { len }) => {
                            assert_eq!(len, held, "{what}");
                            let t = ours.release().unwrap();
                            assert_eq!(t.len, held, "{what}");
                            released += held as u64;
                            stats.releases += 1;
                            stats.kicks += u64::from(kick_if_notify(&sig, t));
                        }
                        Err(e) => panic!("{what}: arm at {got}: {e:?}"),
                    }
                }
                Ok(r) => {
                    let data = &buf[..r];
                    assert_eq!(pat.mismatch(got, data), None, "{what}");
                    fnv.update(data);
                    got += r as u64;
                    // Held bytes stay counted as used in the page.
                    let cons = mem.load_u32(cons_at).unwrap();
                    assert_eq!(cons, index.wrapping_add(released as u32), "{what}");
                    assert_eq!(ours.held() as u64, got - released, "{what}");
                    if ours.held() >= release_every {
                        let t = ours.release().unwrap();
                        released = got;
                        stats.releases += 1;
                        stats.kicks += u64::from(kick_if_notify(&sig, t));
                    }
                }
                Err(Error::Closed) => break,
                Err(e) => panic!("{what}: held read at {got}: {e:?}"),
            }
        }
        writer.join().expect("C writer");
        (got, fnv, stats)
    });
    assert_eq!(got, len, "{what}: end of stream before everything arrived");
    assert_eq!(fnv, Fnv::of_pattern(pat, len), "{what}");
    // C found the ring full and asked for a kick; our releases gave it.
    assert!(
        stats.kicks > 0,
        "{what}: the C writer never waited: {stats:?}"
    );
    // The tail read at end of stream is given back like any other.
    let held = ours.held();
    assert_eq!(ours.release().unwrap().len, held);
    assert_eq!(
        mem.load_u32(cons_at).unwrap(),
        index.wrapping_add(len as u32),
        "{what}"
    );
    check_clean(&ours);
    eprintln!("{what}: {len} bytes in {:?}, {stats:?}", start.elapsed());
}

/// Held reads against libxenvchan's blocking writer on small rings (where
/// it sleeps for space after nearly every write): our releases, batched
/// and before each sleep, must wake it every time, and every byte must
/// arrive. Both pairings, in-page and external rings, across the u32 wrap.
#[test]
fn held_reads_keep_a_blocking_c_writer_moving() {
    let _deadline =
        ring_tests::Deadline::new("held_reads_keep_a_blocking_c_writer_moving", TEST_DEADLINE);
    held_reader_run(Server::Ours, 10, 11, 0xffff_ff00, 2 << 20, 256);
    held_reader_run(Server::Theirs, 11, 10, 0, 2 << 20, 256);
    // Never released early: only the release before each sleep frees space.
    held_reader_run(Server::Ours, 10, 11, 0, 1 << 20, usize::MAX);
    held_reader_run(Server::Theirs, 12, 12, 0xffff_ff00, 2 << 20, 3000);
}

/// Request/response sizes: requests large against a 1 KiB ring (two fit,
/// the third waits for space), replies large enough that the 2 KiB reply
/// ring can fill too.
const REQUEST: usize = 400;
const REPLY: usize = 600;
/// Requests the C side keeps in flight before it reads a reply.
const WINDOW: u64 = 4;

/// The reply to request `i`: its number, the checksum of the request,
/// then pattern bytes.
fn reply_to(i: u64, request: &[u8], pat: Pattern) -> Vec<u8> {
    let mut fnv = Fnv::default();
    fnv.update(request);
    let mut reply = pat.bytes(i * REPLY as u64, REPLY);
    reply[..8].copy_from_slice(&i.to_le_bytes());
    reply[8..16].copy_from_slice(&fnv.0.to_le_bytes());
    reply
}

/// What a request/response run counted.
#[derive(Debug, Default)]
struct ReplyStats {
    /// Replies that gave their request back to a C writer that was
    /// waiting for space (its `READ` request was set before the send).
    woke_writer: u64,
    /// Replies refused with `Held` (the reply ring was full), after which
    /// the request was released on its own.
    refused: u64,
    /// Times we slept on our eventfd.
    waits: u64,
}

/// libxenvchan sends `count` fixed-size requests with blocking sends,
/// keeping up to [`WINDOW`] in flight, and checks each reply with a
/// blocking receive. We take each request with `recv_held` and answer with
/// `send`, which gives the request's space back under the reply's fence:
/// when the C writer is asleep waiting for that space, the send must say
/// "notify" (its one check covers both requests), or the C side sleeps
/// until its wait times out and the test fails.
fn request_reply_run(server: Server, lo: u8, ro: u8, index: u32, count: u64) {
    let what = format!("{server:?} server, orders ({lo}, {ro}), index {index:#x}");
    let shm = shm_for(lo, ro);
    let wires = Wires::new().unwrap();
    let (mut ours, mut c) = connect_pair(&shm, &wires, server, lo, ro, index);
    let sig = wires.rust_signal().unwrap();
    let mem = shm.mem();
    let (cons_at, own_notify) = our_cons_and_notify(server);
    let asked_read = || mem.load_u8(own_notify).unwrap() & NotifyBits::READ.bits() != 0;
    assert!(
        ours.read_capacity() < 3 * REQUEST,
        "{what}: requests must fill the ring"
    );
    let (req_pat, reply_pat) = (Pattern::new(0x4e9), Pattern::new(0x4e91));
    c.set_blocking(true);
    let start = Instant::now();
    let stats = std::thread::scope(|s| {
        let client = s.spawn(move || {
            let mut reply = vec![0u8; REPLY];
            let mut answered = 0u64;
            let mut check = |c: &mut CPeer, answered: &mut u64| {
                assert_eq!(c.recv(&mut reply), REPLY as i32, "C recv {answered}");
                let request = req_pat.bytes(*answered * REQUEST as u64, REQUEST);
                assert!(
                    reply == reply_to(*answered, &request, reply_pat),
                    "C got a wrong reply {answered}"
                );
                *answered += 1;
            };
            for i in 0..count {
                let request = req_pat.bytes(i * REQUEST as u64, REQUEST);
                assert_eq!(c.send(&request), REQUEST as i32, "C blocking send {i}");
                if i + 1 - answered >= WINDOW {
                    check(&mut c, &mut answered);
                }
            }
            while answered < count {
                check(&mut c, &mut answered);
            }
            c
        });
        // Let the C side fill the ring and fall asleep waiting for space,
        // so at least the first reply must wake it.
        let t0 = Instant::now();
        while !asked_read() {
            assert!(t0.elapsed().as_secs() < 10, "{what}: C never waited");
            std::thread::yield_now();
        }
        let mut stats = ReplyStats::default();
        let mut request = vec![0u8; REQUEST];
        for i in 0..count {
            // Nothing is held here: the last reply gave its request back.
            loop {
                assert_eq!(ours.held(), 0, "{what}");
                if ours.recv_held(&mut request).unwrap() {
                    break;
                }
                if ours.arm_readable(REQUEST).unwrap() == Readiness::Armed {
                    stats.waits += 1;
                    sig.wait()
                        .unwrap_or_else(|e| panic!("{what}: {e} (waiting for request {i})"));
                }
            }
            assert_eq!(ours.held(), REQUEST, "{what}");
            let cons = mem.load_u32(cons_at).unwrap();
            assert_eq!(
                cons,
                index.wrapping_add((i * REQUEST as u64) as u32),
                "{what}"
            );
            assert_eq!(req_pat.mismatch(i * REQUEST as u64, &request), None);
            let reply = reply_to(i, &request, reply_pat);
            loop {
                // Only the C side sets its request bit and only we clear
                // it, so one seen before the send must be answered by it.
                let owed = ours.held() > 0 && asked_read();
                match ours.send(&reply) {
                    Ok(t) => {
                        assert_eq!(t.len, REPLY, "{what}");
                        if owed {
                            assert!(t.notify, "{what}: a waiting C writer not kicked");
                            stats.woke_writer += 1;
                        }
                        kick_if(&sig, t);
                        break;
                    }
                    Err(Error::Held { len }) => {
                        // The reply ring is full and a wait would be
                        // armed: give the request back on its own first.
                        assert_eq!(len, REQUEST, "{what}");
                        stats.refused += 1;
                        kick_if(&sig, ours.release().unwrap());
                    }
                    Err(Error::WouldBlock) => {
                        stats.waits += 1;
                        sig.wait()
                            .unwrap_or_else(|e| panic!("{what}: {e} (replying to {i})"));
                    }
                    Err(e) => panic!("{what}: reply {i}: {e:?}"),
                }
            }
            assert_eq!(ours.held(), 0, "{what}");
            let cons = mem.load_u32(cons_at).unwrap();
            assert_eq!(cons, index.wrapping_add(((i + 1) * REQUEST as u64) as u32));
        }
        let c = client.join().expect("C requester");
        kick_if(&sig, ours.close().unwrap());
        drop(c);
        stats
    });
    assert!(stats.woke_writer > 0, "{what}: {stats:?}");
    check_clean(&ours);
    eprintln!(
        "{what}: {count} requests in {:?}, {stats:?}",
        start.elapsed()
    );
}

/// Request/response with libxenvchan as the requester, its requests
/// large enough that it keeps sleeping for space: each reply gives its
/// request back under the reply's one fence and one wake-up check, which
/// must cover the waiting writer as well as the waiting reader.
#[test]
fn replies_give_held_requests_back_to_a_blocked_c_writer() {
    let _deadline = ring_tests::Deadline::new(
        "replies_give_held_requests_back_to_a_blocked_c_writer",
        TEST_DEADLINE,
    );
    request_reply_run(Server::Ours, 10, 11, 0xffff_ff00, 3000);
    request_reply_run(Server::Theirs, 11, 10, 0, 3000);
}

/// Cuts `msg` into pieces of wandering sizes, with empty pieces in front,
/// at the end and now and then in between.
fn pieces<'a>(msg: &'a [u8], sizes: &mut Chunks) -> Vec<&'a [u8]> {
    let mut out: Vec<&[u8]> = vec![&[]];
    let mut rest = msg;
    while !rest.is_empty() {
        let k = sizes.next_len();
        let (piece, tail) = rest.split_at(k.min(rest.len()));
        out.push(piece);
        if k.is_multiple_of(3) {
            out.push(&[]);
        }
        rest = tail;
    }
    out.push(&[]);
    out
}

/// We write gathered buffers, libxenvchan reads them (blocking): a stream
/// of messages cut into pieces (empty ones included) with `write_vectored`
/// over `IoSlice`s, taking partial writes and advancing through the
/// pieces; then packets with `send_vectored`, which C receives whole by
/// size; then both again through `Blocking`. Every byte must arrive in
/// order: C checks each against the pattern and the whole by checksum.
fn vectored_writer_run(server: Server, lo: u8, ro: u8, index: u32, len: u64) {
    let what = format!("{server:?} server, orders ({lo}, {ro}), index {index:#x}");
    let shm = shm_for(lo, ro);
    let wires = Wires::new().unwrap();
    let (mut ours, mut c) = connect_pair(&shm, &wires, server, lo, ro, index);
    let sig = wires.rust_signal().unwrap();
    let tx = ours.write_capacity();
    let (stream, packets) = (Pattern::new(0x9a7), Pattern::new(0x9a8));
    // Packet sizes both sides draw from the same sequence, up to the ring.
    const PACKETS: usize = 300;
    let packet_sizes = || Chunks::new(23, tx);
    c.set_blocking(true);
    let start = Instant::now();
    let ours = std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut buf = vec![0u8; tx.max(8192)];
            let mut fnv = Fnv::default();
            // Phase one and three are one stream; packets come between.
            let mut stream_part = |c: &mut CPeer, from: u64, to: u64| {
                let mut got = from;
                while got < to {
                    let n = (to - got).min(buf.len() as u64) as usize;
                    let r = c.read(&mut buf[..n]);
                    assert!(r > 0, "C blocking read at {got}: {r}");
                    let r = r as usize;
                    assert_eq!(stream.mismatch(got, &buf[..r]), None, "C stream");
                    fnv.update(&buf[..r]);
                    got += r as u64;
                }
            };
            stream_part(&mut c, 0, len);
            let mut sizes = packet_sizes();
            let mut pos = 0u64;
            let mut pkt = vec![0u8; tx];
            for _ in 0..2 * PACKETS {
                let n = sizes.next_len();
                assert_eq!(c.recv(&mut pkt[..n]), n as i32, "C recv at {pos}");
                assert_eq!(packets.mismatch(pos, &pkt[..n]), None, "C packet");
                pos += n as u64;
            }
            stream_part(&mut c, len, 2 * len);
            // We close after the last byte: C sees end of stream.
            assert_eq!(c.read(&mut buf), -1, "C sees EOF");
            fnv
        });

        // Stream through the endpoint: messages up to three rings long,
        // so writes stop part-way through a piece as often as not.
        let mut sizes = Chunks::new(u64::from(index) | 5, 3 * tx);
        let mut cuts = Chunks::new(29, tx / 3);
        let mut waits = 0u64;
        let mut pos = 0u64;
        while pos < len {
            let n = (sizes.next_len() as u64).min(len - pos) as usize;
            let msg = stream.bytes(pos, n);
            let parts = pieces(&msg, &mut cuts);
            let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
            let mut bufs = &mut slices[..];
            let mut left = n;
            while left > 0 {
                match ours.write_vectored(bufs) {
                    Ok(t) => {
                        assert!(t.len > 0 && t.len <= left, "{what}: wrote {}", t.len);
                        left -= kick_if(&sig, t);
                        IoSlice::advance_slices(&mut bufs, t.len);
                    }
                    Err(Error::WouldBlock) => {
                        waits += 1;
                        sig.wait()
                            .unwrap_or_else(|e| panic!("{what}: {e} at {pos}"));
                    }
                    Err(e) => panic!("{what}: write_vectored at {pos}: {e:?}"),
                }
            }
            pos += n as u64;
        }
        // Nothing but empty pieces: nothing moves, nobody to kick.
        let none: [&[u8]; 3] = [&[], &[], &[]];
        assert_eq!(ours.write_vectored(&none), Ok(vchan::Transfer::NOTHING));
        assert_eq!(ours.send_vectored(&none), Ok(vchan::Transfer::NOTHING));

        // Packets through the endpoint: all or nothing, whole or wait.
        let mut sizes = packet_sizes();
        let mut pos = 0u64;
        for _ in 0..PACKETS {
            let n = sizes.next_len();
            let pkt = packets.bytes(pos, n);
            let parts = pieces(&pkt, &mut cuts);
            loop {
                match ours.send_vectored(&parts) {
                    Ok(t) => {
                        assert_eq!(kick_if(&sig, t), n, "{what}: a whole packet");
                        break;
                    }
                    Err(Error::WouldBlock) => {
                        waits += 1;
                        sig.wait()
                            .unwrap_or_else(|e| panic!("{what}: {e} at {pos}"));
                    }
                    Err(e) => panic!("{what}: send_vectored at {pos}: {e:?}"),
                }
            }
            pos += n as u64;
        }

        // The same through `Blocking`, which waits and kicks for us.
        let mut b = Blocking::new(ours, &sig);
        for _ in 0..PACKETS {
            let n = sizes.next_len();
            let pkt = packets.bytes(pos, n);
            let parts = pieces(&pkt, &mut cuts);
            b.send_vectored(&parts).unwrap();
            pos += n as u64;
        }
        let mut pos = len;
        while pos < 2 * len {
            let n = (sizes.next_len() as u64).min(2 * len - pos) as usize;
            let msg = stream.bytes(pos, n);
            let parts = pieces(&msg, &mut cuts);
            let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
            let mut bufs = &mut slices[..];
            let mut left = n;
            while left > 0 {
                let r = b.write_vectored(bufs).unwrap();
                assert!(r > 0 && r <= left, "{what}: Blocking wrote {r}");
                IoSlice::advance_slices(&mut bufs, r);
                left -= r;
            }
            pos += n as u64;
        }
        b.close().unwrap();
        let fnv = reader.join().expect("C reader");
        assert_eq!(fnv, Fnv::of_pattern(stream, 2 * len), "{what}");
        eprintln!(
            "{what}: {} stream bytes and {} packets in {:?}, {waits} waits",
            2 * len,
            2 * PACKETS,
            start.elapsed()
        );
        b.into_parts().0
    });
    check_clean(&ours);
}

/// Gathered writes into libxenvchan's reader: pieces of every size,
/// empty ones among them, partial stream writes that stop inside a piece,
/// and packets assembled from pieces, in both pairings, on a 1 KiB ring
/// (many partial writes) and on external rings across the u32 wrap.
#[test]
fn vectored_writes_arrive_in_order_at_a_c_reader() {
    let _deadline = ring_tests::Deadline::new(
        "vectored_writes_arrive_in_order_at_a_c_reader",
        TEST_DEADLINE,
    );
    vectored_writer_run(Server::Ours, 11, 10, 0xffff_ff00, 1 << 20);
    vectored_writer_run(Server::Theirs, 10, 11, 0, 1 << 20);
    vectored_writer_run(Server::Ours, 12, 13, 0, 1 << 20);
    vectored_writer_run(Server::Theirs, 16, 12, 0xffff_ff00, 1 << 20);
}
