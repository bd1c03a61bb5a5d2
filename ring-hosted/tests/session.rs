//! Typed sessions: each protocol's listener and client give its stream,
//! and a client of the other protocol is refused with a handshake error,
//! not a stream of the wrong kind. Every wait has a timeout.

mod common;

use common::TempSock;
use ring_hosted::session::{self, Listener, Vchan, Vmbus};
use ring_hosted::{Error, HandshakeProblem};
use std::io::Read;
use std::time::Duration;

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

#[test]
fn a_client_of_the_other_protocol_is_refused() {
    let sock = TempSock::new("typed-mismatch");
    let listener = Listener::<Vchan>::bind(&sock.path).unwrap();
    let path = sock.path.clone();
    let client = std::thread::spawn(move || session::connect::<Vmbus>(&path).map(drop));
    // The listener refuses the client and keeps waiting: no session comes.
    assert!(matches!(
        listener.accept_timeout(Duration::from_millis(500)),
        Err(Error::TimedOut)
    ));
    match client.join().unwrap() {
        Err(Error::Handshake(HandshakeProblem::Refused { .. })) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}
