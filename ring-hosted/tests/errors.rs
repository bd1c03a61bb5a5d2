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

/// A layout that cannot be attached says which option and which numbers,
/// as data a caller can match, with the cause chained where there is one.
#[test]
fn attach_problems_are_data_not_sentences() {
    use ring_hosted::attach::{self, AttachProblem, VmbusRing};
    use ring_hosted::memfd::MemFd;
    use std::sync::Arc;

    let mem = Arc::new(MemFd::create("attach-errors", 64 << 10).unwrap());
    let ring = |offset, size| VmbusRing {
        offset,
        size,
        data_offset: 4096,
    };
    let signal = || attach::poll_signal().unwrap();
    let overlap = attach::vmbus(
        mem.clone(),
        ring(0, 16 << 10),
        ring(8192, 16 << 10),
        signal(),
    );
    match overlap {
        Err(ring_hosted::Error::Attach(AttachProblem::Overlap {
            region: "tx ring",
            at,
            other: "rx ring",
            other_at,
        })) => assert_eq!((at, other_at), (0..16384, 8192..24576)),
        other => panic!("expected an overlap, got {other:?}"),
    }
    match attach::vmbus(
        mem.clone(),
        ring(100, 16 << 10),
        ring(32768, 16 << 10),
        signal(),
    ) {
        Err(ring_hosted::Error::Attach(AttachProblem::Misaligned {
            option: "--tx-offset",
            offset: 100,
            align: 4096,
        })) => {}
        other => panic!("expected a misaligned tx ring, got {other:?}"),
    }
    match attach::vmbus(
        mem.clone(),
        ring(0, 16 << 10),
        ring(61440, 16 << 10),
        signal(),
    ) {
        Err(ring_hosted::Error::Attach(AttachProblem::PastEnd {
            region: "rx ring",
            memory,
            ..
        })) => assert_eq!(memory, 64 << 10),
        other => panic!("expected an rx ring past the end, got {other:?}"),
    }
    let e = attach::vmbus(mem, ring(0, 4096), ring(32768, 16 << 10), signal()).unwrap_err();
    assert!(
        matches!(
            &e,
            ring_hosted::Error::Attach(AttachProblem::RingSize { ring: "tx", .. })
        ),
        "{e:?}"
    );
    let cause = e.source().and_then(|p| p.source());
    assert!(cause.is_some(), "the ring's set-up error is chained: {e:?}");
    assert_eq!(io::Error::from(e).kind(), io::ErrorKind::InvalidInput);
}
