//! Whole messages over the in-process VMBus pipe: boundaries kept, end of
//! stream apart from every message, and errors a caller can tell apart.

use std::io::{ErrorKind, Write};
use std::time::Duration;

#[test]
fn messages_keep_their_boundaries_and_their_errors_say_why() {
    let (mut a, mut b) = ring_std::vmbus::pipe_pair(16384).unwrap();
    a.set_timeout(Some(Duration::from_secs(10)));
    b.set_timeout(Some(Duration::from_secs(10)));
    let big = vec![7u8; ring_core::vmbus::pipe::MAX_PIPE_PAYLOAD + 1];
    assert_eq!(
        a.send_msg(&big).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    // Size 0 is end of stream on the wire: no message may look like it.
    assert_eq!(a.send_msg(b"").unwrap_err().kind(), ErrorKind::InvalidInput);
    a.send_msg(b"twelve bytes").unwrap();
    let mut small = [0u8; 4];
    assert_eq!(
        b.recv_msg(&mut small).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let mut buf = [0u8; 64];
    let n = b.recv_msg(&mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        b"twelve bytes",
        "a short buffer consumed nothing"
    );
    a.write_all(b"raw").unwrap();
    a.close().unwrap();
    // Stream bytes read as a message are one packet's worth.
    assert_eq!(b.recv_msg(&mut buf).unwrap(), 3);
    assert_eq!(b.recv_msg(&mut buf).unwrap(), 0, "end of stream");
    assert_eq!(b.recv_msg(&mut buf).unwrap(), 0, "and it stays the end");
    assert_eq!(a.send_msg(b"x").unwrap_err().kind(), ErrorKind::BrokenPipe);
}
