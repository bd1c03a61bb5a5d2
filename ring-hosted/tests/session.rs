//! Typed sessions: each protocol's listener and client give its stream,
//! and a client of the other protocol is refused with a handshake error,
//! not a stream of the wrong kind. Raw VMBus packets keep their type,
//! flags, transaction id and ranges across processes. Every wait has a
//! timeout.

mod common;

use common::TempSock;
use ring_core::vmbus::{OutgoingPacket, PacketFlags, PacketType, RangeInfo, TransferRange};
use ring_hosted::session::{self, Listener, Protocol, Vchan, Vmbus, VmbusPackets};
use ring_hosted::vmbus::VmbusChannel;
use ring_hosted::{Error, HandshakeProblem};
use std::io::Read;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

#[test]
fn a_vmbus_listener_and_client_give_pipes() {
    let sock = TempSock::new("typed-vmbus");
    let listener = Listener::<Vmbus>::bind(&sock.path).unwrap();
    let path = sock.path.clone();
    let client = std::thread::spawn(move || {
        let mut pipe = session::connect::<Vmbus>(&path).unwrap();
        pipe.signal_mut().set_timeout(Some(DEADLINE));
        pipe.send_msg(b"one message").unwrap();
        pipe.write_all(&[5u8; 100_000]).unwrap();
        pipe.close().unwrap();
    });
    let mut server = listener.accept_timeout(DEADLINE).unwrap();
    server.signal_mut().set_timeout(Some(DEADLINE));
    let mut msg = [0u8; 64];
    let n = server.recv_msg(&mut msg).unwrap();
    assert_eq!(&msg[..n], b"one message");
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, vec![5u8; 100_000]);
    client.join().unwrap();
}

/// A `C` client of a `L` listener is refused in the handshake, and the
/// listener keeps waiting: no session of the wrong kind comes out.
fn refused<L: Protocol, C: Protocol>(tag: &str)
where
    C::Stream: Send + 'static,
{
    let sock = TempSock::new(tag);
    let listener = Listener::<L>::bind(&sock.path).unwrap();
    let path = sock.path.clone();
    let client = std::thread::spawn(move || session::connect::<C>(&path).map(drop));
    assert!(matches!(
        listener.accept_timeout(Duration::from_millis(500)),
        Err(Error::TimedOut)
    ));
    match client.join().unwrap() {
        Err(Error::Handshake(HandshakeProblem::Refused { .. })) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_client_of_the_other_protocol_is_refused() {
    refused::<Vchan, Vmbus>("typed-mismatch");
    refused::<Vmbus, Vchan>("typed-mismatch-back");
}

#[test]
fn a_pipe_client_is_refused_by_a_packet_listener() {
    refused::<VmbusPackets, Vmbus>("typed-packets-mismatch");
    refused::<Vmbus, VmbusPackets>("typed-packets-mismatch-back");
}

/// What the client end of the packet tests does: three packets of three
/// types, then (for the request) waits for its completion, then goes.
fn packet_client(mut c: VmbusChannel) -> Result<(), String> {
    let e = |e: Error| e.to_string();
    c.signal_mut().set_timeout(Some(DEADLINE));
    let body: [&[u8]; 2] = [b"head/", b"tail"];
    c.send(&OutgoingPacket::in_band(7, &body).with_completion_requested())
        .map_err(e)?;
    let ranges = [
        TransferRange {
            byte_count: 100,
            byte_offset: 0,
        },
        TransferRange {
            byte_count: 28,
            byte_offset: 4096,
        },
    ];
    let none: [&[u8]; 0] = [];
    c.send(&OutgoingPacket::transfer_pages(8, 3, &ranges, &none))
        .map_err(e)?;
    let big = vec![0xa5u8; 12_000];
    let big: [&[u8]; 1] = [&big];
    c.send(&OutgoingPacket::in_band(9, &big)).map_err(e)?;
    let mut buf = [0u8; 64];
    let (info, len) = c.recv(&mut buf).map_err(e)?;
    if info.packet_type != PacketType::Completion
        || info.transaction_id != 7
        || &buf[..4] != b"done"
    {
        return Err(format!("unexpected reply {info:?} {:?}", &buf[..len]));
    }
    c.wait_delivered().map_err(e)
}

/// The server end: checks the three packets, completes the request, and
/// then sees the client go only after its last packet.
fn packet_server(mut s: VmbusChannel) {
    s.signal_mut().set_timeout(Some(DEADLINE));
    let mut buf = vec![0u8; 16 << 10];
    let (info, len) = s.recv(&mut buf).unwrap();
    assert_eq!(info.packet_type, PacketType::InBand);
    assert_eq!(info.transaction_id, 7);
    assert!(info.flags.contains(PacketFlags::COMPLETION_REQUESTED));
    // The payload comes padded to 8 bytes, the pieces back to back.
    assert_eq!(len, 16);
    assert_eq!(&buf[..9], b"head/tail");
    assert_eq!(&buf[9..16], &[0u8; 7]);
    let ranges = s
        .recv_with(|p| {
            assert_eq!(p.transaction_id(), 8);
            assert_eq!(p.transfer_page_set_id(), Some(3));
            p.transfer_ranges()
                .map(|r| r.map(|r| (r.byte_count, r.byte_offset)))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap()
        .unwrap();
    assert_eq!(ranges, [(100, 0), (28, 4096)]);
    let (info, len) = s.recv(&mut buf).unwrap();
    assert_eq!((info.transaction_id, info.ranges), (9, RangeInfo::None));
    assert_eq!(len, 12_000);
    assert!(buf[..len].iter().all(|&b| b == 0xa5));
    let done: [&[u8]; 1] = [b"done"];
    s.send(&OutgoingPacket::completion(7, &done)).unwrap();
    // Nothing more comes: the client's going is reported, not a packet.
    let t = Instant::now();
    match s.recv(&mut buf) {
        Err(Error::PeerGone) => {}
        other => panic!("expected the client gone, got {other:?}"),
    }
    assert!(t.elapsed() < DEADLINE, "its going took {:?}", t.elapsed());
}

#[test]
fn vmbus_packets_keep_their_type_flags_id_and_ranges() {
    let sock = TempSock::new("typed-packets");
    let listener = Listener::<VmbusPackets>::bind(&sock.path).unwrap();
    let path = sock.path.clone();
    let client = std::thread::spawn(move || {
        packet_client(session::connect::<VmbusPackets>(&path).map_err(|e| e.to_string())?)
    });
    packet_server(listener.accept_timeout(DEADLINE).unwrap());
    client.join().unwrap().unwrap();
}

/// Set in the environment of the child that
/// [`vmbus_packets_cross_processes`] starts: the socket to connect to.
const CHILD_SOCKET: &str = "RING_TEST_PACKET_CLIENT_SOCKET";

/// Kills the child if the test fails before it has been waited for.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The same exchange with the client in another process: this test's own
/// binary, started again to run only this test with [`CHILD_SOCKET`] set,
/// where it plays the client and exits with its verdict.
#[test]
fn vmbus_packets_cross_processes() {
    if let Some(path) = std::env::var_os(CHILD_SOCKET) {
        let r = session::connect::<VmbusPackets>(std::path::Path::new(&path))
            .map_err(|e| e.to_string())
            .and_then(packet_client);
        if let Err(e) = &r {
            eprintln!("packet client: {e}");
        }
        std::process::exit(i32::from(r.is_err()));
    }
    let sock = TempSock::new("typed-packets-processes");
    let listener = Listener::<VmbusPackets>::bind(&sock.path).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "vmbus_packets_cross_processes", "--nocapture"])
        .env(CHILD_SOCKET, &sock.path)
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    packet_server(listener.accept_timeout(DEADLINE).unwrap());
    let until = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "the client process never exited");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "the client process failed: {status}");
}
