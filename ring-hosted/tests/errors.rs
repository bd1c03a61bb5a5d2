//! Errors chain to their cause, and the `std::io` kind follows the core's
//! one classification (retry / closed / corrupt / usage / set-up).

use ring_core::error::{Corrupt, ErrorClass};
use ring_core::{vchan, vmbus};
use std::error::Error as _;
use std::io;

#[test]
fn wrapped_ring_errors_chain_to_the_rule_the_peer_broke() {
    let corrupt = Corrupt {
        what: "producer index moved backwards",
    };
    let e = ring_hosted::Error::from(vchan::Error::Corrupt(corrupt));
    let ring = e.source().expect("the vchan error is the source");
    assert_eq!(ring.to_string(), corrupt.to_string());
    let rule = ring
        .source()
        .expect("the corruption is the vchan error's source");
    assert!(rule.to_string().contains("producer index moved backwards"));
    assert!(e.to_string().starts_with("vchan: "));

    let e = ring_hosted::Error::from(vmbus::Error::Corrupt(corrupt));
    assert!(e.source().and_then(|s| s.source()).is_some());
    assert_eq!(io::Error::from(e).kind(), io::ErrorKind::InvalidData);
}

#[test]
fn io_kinds_follow_the_class_in_every_crate() {
    let cases: [(vmbus::Error, ErrorClass, io::ErrorKind); 4] = [
        (
            vmbus::Error::Full {
                needed: 4096,
                available: 8,
            },
            ErrorClass::Retry,
            io::ErrorKind::WouldBlock,
        ),
        (
            vmbus::Error::Empty,
            ErrorClass::Retry,
            io::ErrorKind::WouldBlock,
        ),
        (
            vmbus::Error::TooLarge {
                len: 1 << 20,
                max: 4096,
            },
            ErrorClass::Usage,
            io::ErrorKind::InvalidInput,
        ),
        (
            vmbus::Error::Closed,
            ErrorClass::Closed,
            io::ErrorKind::BrokenPipe,
        ),
    ];
    for (e, class, kind) in cases {
        assert_eq!(e.class(), class, "{e}");
        assert_eq!(io::Error::from(e).kind(), kind, "{e}");
    }
    assert!(vchan::Error::WouldBlock.class().is_retry());
    assert!(!vchan::Error::Held { len: 3 }.class().is_retry());
    assert_eq!(
        io::Error::from(ring_hosted::Error::from(vchan::Error::TooLarge {
            len: 10,
            capacity: 4
        }))
        .kind(),
        io::ErrorKind::InvalidInput
    );
    // A peer's close is not an error class of the hosted crate's own: it
    // becomes `Closed` there, BrokenPipe in std.
    assert!(matches!(
        ring_hosted::Error::from(vchan::Error::Closed),
        ring_hosted::Error::Closed
    ));
}
