//! The stream the `ring` command pipes through on Xen (`ring_hosted::xen::stream`)
//! against FAKES (`ring_hosted::xen::fake`: grant pages in one memfd, a
//! modelled event channel, a thread playing xenstored): the same poll loop
//! code that drives memfd rings (`check::duplex`) over grant mappings and
//! the event channel, with the liveness re-check off, so a lost wake-up
//! hangs until a deadline and fails. The real hypervisor runs the `ring`
//! command itself (tests/xen_real.rs).

use ring_cli::check::duplex;
use ring_hosted::eventfd::WaitError;
use ring_hosted::fdio::Output;
use ring_hosted::stream::{FdMove, PollStream, StreamSignal};
use ring_hosted::xen::fake::FakeXen;
use ring_hosted::xen::stream::XenStream;
use ring_hosted::xen::vchan::{self, ServerConfig};
use ring_hosted::xen::xenstore::XenStore;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

const SERVER: u16 = 0;
const CLIENT: u16 = 7;
const PATH: &str = "/local/domain/0/data/vchan/7/1";
/// Every wait of these tests ends by then at the latest, as a failure.
const LIMIT: Duration = Duration::from_secs(20);

/// A connected server and client stream over one fake host, each with
/// the liveness re-check off and [`LIMIT`] as its idle timeout.
fn pair(xen: &FakeXen, size: usize) -> (XenStream, XenStream) {
    let xenstored = xen.xenstore(SERVER);
    xenstored.introduce(CLIENT);
    let mut xs = XenStore::new(xenstored.connect());
    let config = ServerConfig {
        peer: CLIENT,
        path: PATH.into(),
        read_min: size,
        write_min: size,
    };
    let server = vchan::serve(&xen.gntalloc(SERVER), xen.evtchn(SERVER), &mut xs, &config)
        .expect("serve on the fakes");
    let mut server = server.into_stream();
    assert!(!server.peer_connected(), "no client yet");
    let mut xs7 = XenStore::new(xenstored.connect_as(CLIENT));
    let client = vchan::connect(
        &xen.gntdev(CLIENT),
        xen.evtchn(CLIENT),
        &mut xs7,
        SERVER,
        PATH,
    )
    .expect("connect on the fakes");
    let mut client = client.into_stream();
    for s in [&mut server, &mut client] {
        s.signal_mut().set_liveness(None);
        s.signal_mut().set_timeout(Some(LIMIT));
    }
    (server, client)
}

#[test]
fn duplex_moves_megabytes_both_ways_with_every_wake_up_an_event() {
    let xen = FakeXen::new();
    let (mut server, mut client) = pair(&xen, 64 << 10);
    // The client's connect kicked the server.
    let w = server
        .wait_event(None, Some(Instant::now() + LIMIT))
        .expect("the connect's event");
    assert!(w.kicked && server.peer_connected());
    const BYTES: u64 = 4 << 20;
    let peer = std::thread::spawn(move || {
        let r = duplex(&mut client, 2, BYTES, BYTES, |_, _| {}).expect("client duplex");
        (r, client.signal().wake_counts(), client)
    });
    let ours = duplex(&mut server, 1, BYTES, BYTES, |_, _| {}).expect("server duplex");
    let (theirs, their_counts, _client) = peer.join().expect("client thread");
    assert_eq!(
        ours.sent.finish(),
        theirs.received.finish(),
        "server to client"
    );
    assert_eq!(
        theirs.sent.finish(),
        ours.received.finish(),
        "client to server"
    );
    for counts in [server.signal().wake_counts(), their_counts] {
        assert_eq!(counts.lapses, 0, "the re-check is off: {counts:?}");
        assert_eq!(counts.timeouts, 0, "no wait ran out: {counts:?}");
        assert!(
            counts.kicks > 0,
            "the sides slept and were woken: {counts:?}"
        );
    }
}

#[test]
fn fds_fill_and_drain_grant_pages_in_place() {
    let xen = FakeXen::new();
    let (mut server, mut client) = pair(&xen, 4096);
    let (input, mut feed) = std::io::pipe().unwrap();
    let (mut out, sink) = std::io::pipe().unwrap();
    feed.write_all(b"through grant pages").unwrap();
    drop(feed);
    assert_eq!(
        client.try_fill_from(input.as_fd()).unwrap(),
        FdMove::Moved(19)
    );
    assert_eq!(client.try_fill_from(input.as_fd()).unwrap(), FdMove::End);
    let w = server
        .wait_io(None, None, Some(Instant::now() + LIMIT))
        .unwrap();
    assert!(w.kicked);
    assert_eq!(
        server.try_drain_to(sink.as_fd(), Output::File).unwrap(),
        FdMove::Moved(19)
    );
    assert_eq!(
        server.try_drain_to(sink.as_fd(), Output::File).unwrap(),
        FdMove::RingBlocked
    );
    drop(sink);
    let mut got = Vec::new();
    out.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"through grant pages");
}

#[test]
fn a_killed_client_is_an_event_then_its_bytes_then_the_end() {
    let xen = FakeXen::new();
    let (mut server, mut client) = pair(&xen, 4096);
    client.write_all(b"last words").unwrap();
    // The process dies: the kernel's unmap notification clears the live
    // byte and sends the event (the fake plays the kernel).
    std::mem::forget(client);
    xen.kill(CLIENT);
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match server.try_read(&mut buf).unwrap() {
            Some(0) => break,
            Some(n) => got.extend_from_slice(&buf[..n]),
            None => {
                let w = server
                    .wait_event(None, Some(Instant::now() + LIMIT))
                    .expect("the unmap notification's event, not a timeout");
                assert!(w.kicked);
            }
        }
    }
    assert_eq!(got, b"last words");
    assert!(started.elapsed() < LIMIT);
    assert!(matches!(
        server.try_write(b"x"),
        Err(ring_hosted::Error::Closed)
    ));
}

#[test]
fn a_wait_ends_on_its_extra_fd_its_output_and_its_deadline() {
    let xen = FakeXen::new();
    let (server, _client) = pair(&xen, 4096);
    let signal = server.signal();
    // The client's connect sent one event: taken first.
    let w = signal
        .wait_io(None, None, Some(Instant::now() + LIMIT))
        .unwrap();
    assert!(w.kicked);
    let (input, mut feed) = std::io::pipe().unwrap();
    feed.write_all(b"x").unwrap();
    let w = signal
        .wait_io(Some(input.as_fd()), None, Some(Instant::now() + LIMIT))
        .unwrap();
    assert!(w.extra && !w.kicked);
    let (_r, out) = std::io::pipe().unwrap();
    let w = signal
        .wait_io(None, Some(out.as_fd()), Some(Instant::now() + LIMIT))
        .unwrap();
    assert!(w.writable && !w.kicked);
    // Nothing pending, nothing comes: the deadline.
    let t = Instant::now();
    let r = signal.wait_io(None, None, Some(t + Duration::from_millis(30)));
    assert!(matches!(r, Err(WaitError::TimedOut)), "{r:?}");
    assert!(t.elapsed() >= Duration::from_millis(30));
    assert!(signal.wake_counts().timeouts >= 1);
}
