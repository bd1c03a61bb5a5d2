//! The VMBus pipe in one process, through the real rendezvous.

mod common;

use common::vmbus_pair as pair;
use ring_core::vmbus;
use ring_hosted::stream::PollStream;
use ring_hosted::Error;
use std::io::Read;
use std::thread;
use std::time::Duration;

#[test]
fn messages_keep_boundaries_and_a_small_buffer_consumes_nothing() {
    let (mut server, mut client, _sock) = pair(64 << 10);
    // No message is empty: size 0 on the wire is end of stream.
    assert!(matches!(
        client.send_msg(&[]),
        Err(Error::Vmbus(vmbus::Error::InvalidPacket { .. }))
    ));
    for n in [1usize, 7, 8, 4000, 16 << 10] {
        client.send_msg(&vec![n as u8; n]).unwrap();
    }
    let mut buf = vec![0u8; 16 << 10];
    for n in [1usize, 7, 8] {
        assert_eq!(server.recv_msg(&mut buf).unwrap(), n);
        assert!(buf[..n].iter().all(|&b| b == n as u8));
    }
    let mut small = [0u8; 100];
    assert!(matches!(
        server.recv_msg(&mut small),
        Err(Error::Vmbus(vmbus::Error::OutOfRange { needed: 4000, .. }))
    ));
    assert_eq!(server.recv_msg(&mut buf).unwrap(), 4000, "still there");
    assert_eq!(server.recv_msg(&mut buf).unwrap(), 16 << 10);
    assert!(matches!(
        client.send_msg(&vec![0u8; (16 << 10) + 1]),
        Err(Error::Vmbus(vmbus::Error::TooLarge { .. }))
    ));
    client.close().unwrap();
    assert_eq!(server.recv_msg(&mut buf).unwrap(), 0, "end of stream");
}

#[test]
fn bytes_flow_through_small_rings_and_end_cleanly() {
    let (mut server, mut client, _sock) = pair(4096);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let sent = data.clone();
    let t = thread::spawn(move || {
        client.write_all(&sent).unwrap();
        PollStream::close(&mut client).unwrap();
        client
    });
    let mut got = Vec::new();
    server.read_to_end(&mut got).unwrap();
    assert!(got == data);
    let client = t.join().unwrap();
    assert!(PollStream::signal(&client).kicks() > 0);
    // End of stream stays end of stream.
    assert_eq!(server.read(&mut [0u8; 4]).unwrap(), 0);
}

#[test]
fn timeouts_end_blocking_reads_and_dropping_sends_end_of_stream() {
    let (mut server, client, _sock) = pair(8192);
    server
        .signal_mut()
        .set_timeout(Some(Duration::from_millis(30)));
    assert!(matches!(server.read(&mut [0u8; 4]), Err(Error::TimedOut)));
    server.signal_mut().set_timeout(None);
    // Dropping a pipe sends end of stream (a peer's death is the SIGKILL
    // suite's business).
    drop(client);
    assert_eq!(server.read(&mut [0u8; 4]).unwrap(), 0);
}

#[test]
fn a_message_that_does_not_fit_yet_waits_and_times_out() {
    // 8 KiB of data area: a 6000-byte message fits once, not twice, and
    // the room left (over 64 bytes) must not make the sender spin for ever.
    let (_server, mut client, _sock) = pair(8192);
    client.send_msg(&[1u8; 6000]).unwrap();
    client
        .signal_mut()
        .set_timeout(Some(Duration::from_millis(50)));
    let start = std::time::Instant::now();
    assert!(matches!(
        client.send_msg(&[2u8; 6000]),
        Err(Error::TimedOut)
    ));
    assert!(start.elapsed() < Duration::from_secs(2));
}
