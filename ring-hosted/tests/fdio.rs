//! Bytes moved between file descriptors and rings in place: `readv(2)`
//! into a ring's free space, `writev(2)` out of its used space, through
//! `FdIo` and `PollStream::{try_fill_from, try_drain_to}`, for vchan and
//! the VMBus pipe.

mod common;

use common::{vmbus_pair, Pattern};
use ring_core::loan::{Span, MAX_SPANS};
use ring_core::mem::SharedMem;
use ring_hosted::fdio::{FdIo, Output};
use ring_hosted::memfd::MemFd;
use ring_hosted::stream::{FdMove, PollStream};
use ring_hosted::window::Window;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

fn nonblocking(fd: impl AsFd) {
    rustix::io::ioctl_fionbio(fd, true).unwrap();
}

fn pipe() -> (std::io::PipeReader, std::io::PipeWriter) {
    std::io::pipe().unwrap()
}

#[test]
fn spans_outside_the_mapping_or_too_many_are_refused() {
    let mem = Arc::new(MemFd::create("fdio-bounds", 8192).unwrap());
    let (r, mut w) = pipe();
    w.write_all(&[7u8; 64]).unwrap();
    let outside = [Span {
        offset: 8000,
        len: 200,
    }];
    let e = mem.read_from_fd(r.as_fd(), &outside).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let wrapping = [Span {
        offset: usize::MAX,
        len: 2,
    }];
    let e = mem.read_from_fd(r.as_fd(), &wrapping).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let many = vec![Span { offset: 0, len: 1 }; MAX_SPANS + 1];
    let e = mem.read_from_fd(r.as_fd(), &many).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    // Nothing was read by the refused calls.
    let high = Window::new(mem.clone(), 4096, 4096).unwrap();
    let past = [Span {
        offset: 4000,
        len: 200,
    }];
    let e = high.read_from_fd(r.as_fd(), &past).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let two = [
        Span {
            offset: 4090,
            len: 6,
        },
        Span { offset: 0, len: 58 },
    ];
    assert_eq!(high.read_from_fd(r.as_fd(), &two).unwrap(), 64);
    // Both spans landed in the window, shifted by its base.
    assert_eq!(mem.load_u8(4096 + 4095).unwrap(), 7);
    assert_eq!(mem.load_u8(4096 + 57).unwrap(), 7);
    assert_eq!(mem.load_u8(4096 + 58).unwrap(), 0);
    // And out again, in order, to a socket.
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    assert_eq!(
        high.write_to_fd(a.as_fd(), &two, Output::Socket).unwrap(),
        64
    );
    let mut got = [0u8; 64];
    (&b).read_exact(&mut got).unwrap();
    assert_eq!(got, [7u8; 64]);
}

#[test]
fn a_closed_socket_reader_is_a_broken_pipe_not_a_signal() {
    let mem = MemFd::create("fdio-epipe", 4096).unwrap();
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    drop(b);
    let e = mem
        .write_to_fd(a.as_fd(), &[Span { offset: 0, len: 8 }], Output::Socket)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BrokenPipe, "{e}");
}

/// The edge answers of one pair: an empty input, a full ring, an empty
/// ring, a full output.
fn edges(a: &mut impl PollStream, b: &mut impl PollStream, ring: usize) {
    let (src_r, mut src_w) = pipe();
    let (dst_r, dst_w) = pipe();
    nonblocking(&src_r);
    nonblocking(&dst_w);
    assert_eq!(a.try_fill_from(src_r.as_fd()).unwrap(), FdMove::FdBlocked);
    assert_eq!(
        b.try_drain_to(dst_w.as_fd(), Output::File).unwrap(),
        FdMove::RingBlocked
    );
    // More input than the ring holds: fill until the ring says no.
    src_w.write_all(&vec![1u8; 2 * ring]).unwrap();
    let mut filled = 0;
    loop {
        match a.try_fill_from(src_r.as_fd()).unwrap() {
            FdMove::Moved(n) => filled += n,
            FdMove::RingBlocked => break,
            other => panic!("filling a ring: {other:?}"),
        }
        assert!(filled <= ring, "{filled} bytes into a {ring}-byte ring");
    }
    assert!(filled > ring / 2, "only {filled} bytes fitted");
    // Fill the output pipe with junk, then drain: the output says no.
    let junk = vec![0u8; 4096];
    while rustix::io::write(&dst_w, &junk).is_ok() {}
    assert_eq!(
        b.try_drain_to(dst_w.as_fd(), Output::File).unwrap(),
        FdMove::FdBlocked
    );
    drop(dst_r);
    // Its reader gone: a broken pipe, as an error of the output.
    let e = b.try_drain_to(dst_w.as_fd(), Output::File).unwrap_err();
    assert!(
        matches!(&e, ring_hosted::Error::Os { op: "write output", source } if source.kind() == ErrorKind::BrokenPipe),
        "{e}"
    );
}

/// Carries `total` bytes from a pipe through `a` → `b` into another pipe,
/// in place both ways, and checks every byte and the end.
fn carry(mut a: impl PollStream + Send + 'static, b: &mut impl PollStream, total: usize) {
    let (src_r, mut src_w) = pipe();
    let (mut dst_r, dst_w) = pipe();
    nonblocking(&dst_w);
    let feeder = thread::spawn(move || {
        let mut p = Pattern::new(11);
        let mut left = total;
        let mut buf = vec![0u8; 100_003];
        while left > 0 {
            let n = left.min(buf.len());
            p.fill(&mut buf[..n]);
            src_w.write_all(&buf[..n]).unwrap();
            left -= n;
        }
    });
    let checker = thread::spawn(move || {
        let mut p = Pattern::new(11);
        let mut buf = vec![0u8; 65536];
        let mut got = 0usize;
        loop {
            let n = dst_r.read(&mut buf).unwrap();
            if n == 0 {
                return got;
            }
            assert_eq!(p.first_mismatch(&buf[..n]), None, "at byte {got}+");
            got += n;
        }
    });
    let input: OwnedFd = src_r.into();
    let writer = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut sent = 0usize;
        loop {
            assert!(Instant::now() < deadline, "input not through after 60 s");
            match a.try_fill_from(input.as_fd()).unwrap() {
                FdMove::Moved(n) => sent += n,
                FdMove::End => break,
                FdMove::RingBlocked | FdMove::FdBlocked => {
                    let _ = a.wait_event(Some(input.as_fd()), Some(deadline));
                }
            }
        }
        while a.try_delivered().unwrap().is_none() {
            assert!(Instant::now() < deadline, "not delivered after 60 s");
            let _ = a.wait_event(None, Some(deadline));
        }
        if a.try_shutdown_write().unwrap() != Some(true) {
            a.close().unwrap();
        }
        (sent, a)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut drained = 0usize;
    loop {
        assert!(Instant::now() < deadline, "output not through after 60 s");
        match b.try_drain_to(dst_w.as_fd(), Output::File).unwrap() {
            FdMove::Moved(n) => drained += n,
            FdMove::End => break,
            FdMove::RingBlocked => {
                let _ = b.wait_event(None, Some(deadline));
            }
            FdMove::FdBlocked => {
                let _ = b.wait_io(None, Some(dst_w.as_fd()), Some(deadline));
            }
        }
    }
    drop(dst_w);
    feeder.join().unwrap();
    let (sent, _a) = writer.join().unwrap();
    assert_eq!(
        (sent, drained, checker.join().unwrap()),
        (total, total, total)
    );
    assert_eq!(b.bytes_read(), total as u64);
}

#[test]
fn vchan_fill_and_drain_answer_at_the_edges() {
    let (mut a, mut b) = ring_hosted::stream::pair(4096, 4096).unwrap();
    edges(&mut a, &mut b, 4096);
}

#[test]
fn vmbus_fill_and_drain_answer_at_the_edges() {
    let (mut a, mut b, _s) = vmbus_pair(16384);
    edges(&mut a, &mut b, 16384);
}

#[test]
fn vchan_carries_a_stream_in_place_through_a_small_ring() {
    let (a, mut b) = ring_hosted::stream::pair(4096, 4096).unwrap();
    carry(a, &mut b, 8 << 20);
}

#[test]
fn vmbus_carries_a_stream_in_place_through_a_small_ring() {
    let (a, mut b, _s) = vmbus_pair(16384);
    carry(a, &mut b, 8 << 20);
}
