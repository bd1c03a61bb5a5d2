//! Loom models of the vchan notify protocol and index publication.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p ring-core --release --test loom_vchan`
//! (scripts/test does). Loom explores every interleaving of the two
//! threads within a preemption bound, with C11 memory-model reorderings.
//! The memory door over loom's types is in `loom_support`.
#![cfg(loom)]

mod loom_support;

use loom::thread;
use loom_support::{model, LoomSignal, Mem, Shape};
use ring_core::mem::SharedMem;
use ring_core::signal::Signal;
use ring_core::vchan::{self, Blocking, Orders, ServerOptions};

/// Both rings in the control page; atomics for the header, cells for the
/// ring bytes (1024.. is the left ring, 2048.. the right ring).
///
/// The set-up's standing requests (the server asks for the client's first
/// write and vice versa) are cleared, as if those first kicks had been
/// sent, so every wake-up in a model must come from the protocol itself.
fn setup() -> (Mem, vchan::Endpoint<Mem>, vchan::Endpoint<Mem>) {
    // One-byte cells, so neighbouring bytes owned by different sides never
    // look like a race.
    let mem = Mem::new(Shape {
        atomic: 1024,
        data: 1024,
        data_len: 3072,
        chunk: 1,
    });
    let orders = Orders::new(10, 11).unwrap();
    let server = vchan::serve_flat(mem.clone(), orders, ServerOptions::default()).unwrap();
    let client = vchan::connect_flat(mem.clone()).unwrap();
    mem.store_u8(22, 0).unwrap();
    mem.store_u8(23, 0).unwrap();
    (mem, server, client)
}

fn read_to_end<M: SharedMem, S: Signal>(s: &mut Blocking<M, S>) -> Vec<u8>
where
    S::Error: std::fmt::Debug,
{
    let mut got = Vec::new();
    loop {
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            return got;
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// A reader that blocks on an empty ring is woken by a single write: no
/// second write or close comes to rescue a lost wake-up.
#[test]
fn blocked_reader_is_woken_by_one_write() {
    model("vchan blocked_reader_is_woken_by_one_write", || {
        let (_mem, server, client) = setup();
        let (server_signal, client_signal) = LoomSignal::pair();
        let writer = thread::spawn(move || {
            let mut c = Blocking::new(client, client_signal);
            c.write_all(&[1]).unwrap();
            c
        });
        let mut s = Blocking::new(server, server_signal);
        let mut buf = [0u8; 4];
        assert_eq!(s.read(&mut buf).unwrap(), 1);
        assert_eq!(buf[0], 1);
        drop(writer.join().unwrap());
    });
}

/// A writer that blocks on a full ring is woken by a single read.
#[test]
fn blocked_writer_is_woken_by_one_read() {
    model("vchan blocked_writer_is_woken_by_one_read", || {
        let (_mem, server, mut client) = setup();
        // Fill the 1 KiB left ring before the threads start.
        assert_eq!(client.write(&[7u8; 1024]).unwrap().len, 1024);
        let (server_signal, client_signal) = LoomSignal::pair();
        let writer = thread::spawn(move || {
            let mut c = Blocking::new(client, client_signal);
            c.write_all(&[9]).unwrap();
            c
        });
        let mut s = Blocking::new(server, server_signal);
        let mut buf = [0u8; 1024];
        s.recv(&mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        s.recv(&mut buf[..1]).unwrap();
        assert_eq!(buf[0], 9);
        drop(writer.join().unwrap());
    });
}

/// Two writes and a close: the reader sees both bytes in order, then end of
/// stream (data written before the close is never lost).
#[test]
fn close_after_data_is_seen_after_the_data() {
    model("vchan close_after_data_is_seen_after_the_data", || {
        let (_mem, server, client) = setup();
        let (server_signal, client_signal) = LoomSignal::pair();
        let writer = thread::spawn(move || {
            let mut c = Blocking::new(client, client_signal);
            c.write_all(&[1]).unwrap();
            c.write_all(&[2]).unwrap();
            c.close().unwrap();
        });
        let mut s = Blocking::new(server, server_signal);
        assert_eq!(read_to_end(&mut s), [1, 2]);
        writer.join().unwrap();
    });
}

/// Packet calls: a blocked `recv` of two bytes completes only with both,
/// published by one `send`, and the bytes are visible once the index is.
#[test]
fn packet_publication_is_atomic() {
    model("vchan packet_publication_is_atomic", || {
        let (_mem, server, client) = setup();
        let (server_signal, client_signal) = LoomSignal::pair();
        let writer = thread::spawn(move || {
            let mut c = Blocking::new(client, client_signal);
            c.send(&[3, 4]).unwrap();
            c
        });
        let mut s = Blocking::new(server, server_signal);
        let mut buf = [0u8; 2];
        s.recv(&mut buf).unwrap();
        assert_eq!(buf, [3, 4]);
        drop(writer.join().unwrap());
    });
}

/// The client's requests, filling the 1 KiB left ring before the threads
/// start (so the client's next send must wait for space): `[1, 2]`, then
/// filler.
fn fill_with_requests(client: &mut vchan::Endpoint<Mem>) {
    let mut requests = [7u8; 1024];
    requests[..2].copy_from_slice(&[1, 2]);
    assert_eq!(client.write(&requests).unwrap().len, 1024);
}

/// What the server finds in the left ring once the client is done: the
/// filler after the first two requests, then the client's `[8, 9]` in the
/// space given back.
fn read_rest_of_requests(s: &mut Blocking<Mem, LoomSignal>) {
    let mut rest = [0u8; 1024];
    s.recv(&mut rest).unwrap();
    assert!(rest[..1022].iter().all(|&b| b == 7));
    assert_eq!(rest[1022..], [8, 9]);
}

/// A request taken with `recv_held` and answered with one `send`: the
/// reply's publish gives the request's space back under the same fence and
/// checks both requests. The client is blocked on its full ring (`READ`
/// armed), and later may wait for the reply (`WRITE` armed, perhaps while
/// `READ` is still set): that one send must wake it for both, or it
/// sleeps for ever. (Checking only `WRITE` loses the first wake-up,
/// checking only `READ` the second; loom finds both.)
#[test]
fn a_reply_gives_the_request_back_and_wakes_a_writer_waiting_for_space() {
    model(
        "vchan a_reply_gives_the_request_back_and_wakes_a_writer_waiting_for_space",
        || {
            let (_mem, server, mut client) = setup();
            fill_with_requests(&mut client);
            let (server_signal, client_signal) = LoomSignal::pair();
            let writer = thread::spawn(move || {
                let mut c = Blocking::new(client, client_signal);
                // The ring is full: this waits for the request's space.
                c.send(&[8, 9]).unwrap();
                let mut reply = [0u8; 2];
                c.recv(&mut reply).unwrap();
                assert_eq!(reply, [5, 6]);
                c
            });
            let mut s = Blocking::new(server, server_signal);
            let mut request = [0u8; 2];
            assert_eq!(s.endpoint().recv_held(&mut request), Ok(true));
            assert_eq!(request, [1, 2]);
            assert_eq!(s.endpoint().held(), 2);
            // Kicks if the combined check found either request set.
            s.send(&[5, 6]).unwrap();
            assert_eq!(s.endpoint().held(), 0);
            drop(writer.join().unwrap());
            read_rest_of_requests(&mut s);
        },
    );
}

/// Reads held across two calls and given back by one `release`: a writer
/// blocked on the full ring, needing both bytes for its packet, is woken
/// by that release alone.
#[test]
fn release_wakes_a_writer_waiting_for_space() {
    model("vchan release_wakes_a_writer_waiting_for_space", || {
        let (_mem, server, mut client) = setup();
        fill_with_requests(&mut client);
        let (server_signal, client_signal) = LoomSignal::pair();
        let writer = thread::spawn(move || {
            let mut c = Blocking::new(client, client_signal);
            c.send(&[8, 9]).unwrap();
            c
        });
        let mut s = Blocking::new(server, server_signal);
        let mut buf = [0u8; 1];
        assert_eq!(s.endpoint().read_held(&mut buf), Ok(1));
        assert_eq!(buf, [1]);
        assert_eq!(s.endpoint().read_held(&mut buf), Ok(1));
        assert_eq!(buf, [2]);
        let t = s.endpoint().release().unwrap();
        assert_eq!(t.len, 2);
        if t.notify {
            s.kick().unwrap();
        }
        drop(writer.join().unwrap());
        read_rest_of_requests(&mut s);
    });
}

/// A gathered write of three slices, crossing the ring's end, wakes a
/// reader blocked on the empty ring, and that reader sees all four bytes
/// at once and in order: one index store publishes the whole gather.
#[test]
fn a_gathered_write_wakes_a_reader() {
    model("vchan a_gathered_write_wakes_a_reader", || {
        let (_mem, mut server, mut client) = setup();
        // Both left indices at 1022, so the gather wraps after two bytes.
        assert_eq!(client.write(&[0; 1022]).unwrap().len, 1022);
        assert_eq!(server.read(&mut [0; 1022]).unwrap().len, 1022);
        let (server_signal, client_signal) = LoomSignal::pair();
        let writer = thread::spawn(move || {
            let mut c = Blocking::new(client, client_signal);
            let parts: [&[u8]; 3] = [&[1], &[2, 3], &[4]];
            assert_eq!(c.write_vectored(&parts).unwrap(), 4);
            c
        });
        let mut s = Blocking::new(server, server_signal);
        let mut buf = [0u8; 8];
        assert_eq!(s.read(&mut buf).unwrap(), 4);
        assert_eq!(buf[..4], [1, 2, 3, 4]);
        drop(writer.join().unwrap());
    });
}

/// An in-place write that waits for room (`write_with`, through
/// `arm_writable`) is woken by the one read that frees it.
#[test]
fn an_in_place_write_is_woken_by_one_read() {
    model("vchan an_in_place_write_is_woken_by_one_read", || {
        let (_mem, server, mut client) = setup();
        assert_eq!(client.write(&[7u8; 1024]).unwrap().len, 1024);
        let (server_signal, client_signal) = LoomSignal::pair();
        let writer = thread::spawn(move || {
            let mut c = Blocking::new(client, client_signal);
            let n = c
                .write_with(1, |mem, spans| {
                    let Some(first) = spans.first() else { return 0 };
                    mem.write(first.offset, &[9]).unwrap();
                    1
                })
                .unwrap();
            assert_eq!(n, 1);
            c
        });
        let mut s = Blocking::new(server, server_signal);
        let mut buf = [0u8; 1024];
        s.recv(&mut buf).unwrap();
        s.recv(&mut buf[..1]).unwrap();
        assert_eq!(buf[0], 9);
        drop(writer.join().unwrap());
    });
}

/// A writer waiting for its bytes to be read (`wait_delivered`) is woken
/// by the one read that takes them; `try_delivered` then agrees.
///
/// (No negative control removes `arm_writable`'s re-check here: the
/// delivery check reads the peer's index again after arming, so that
/// mutant cannot lose this wake-up; `write_with` has no such second look.)
#[test]
fn a_delivery_wait_is_woken_by_one_read() {
    model("vchan a_delivery_wait_is_woken_by_one_read", || {
        let (_mem, server, mut client) = setup();
        assert_eq!(client.write(&[5, 6]).unwrap().len, 2);
        let (server_signal, client_signal) = LoomSignal::pair();
        let writer = thread::spawn(move || {
            let mut c = Blocking::new(client, client_signal);
            c.wait_delivered().unwrap();
            assert!(matches!(c.try_delivered(), Ok(Some(()))));
            c
        });
        let mut s = Blocking::new(server, server_signal);
        let mut buf = [0u8; 2];
        s.recv(&mut buf).unwrap();
        assert_eq!(buf, [5, 6]);
        drop(writer.join().unwrap());
    });
}

// Negative controls: each deliberate bug (ring-core's `mutation` module,
// compiled in only under loom) must make a model above fail.

#[test]
fn a_missing_publish_fence_is_caught() {
    loom_support::must_fail(
        ring_core::mutation::Mutation::NoPublishFence,
        "blocked_reader_is_woken_by_one_write",
    );
}

#[test]
fn a_missing_recheck_is_caught() {
    loom_support::must_fail(
        ring_core::mutation::Mutation::NoRecheck,
        "blocked_reader_is_woken_by_one_write",
    );
}

#[test]
fn an_index_published_before_the_copy_is_caught() {
    loom_support::must_fail(
        ring_core::mutation::Mutation::IndexBeforeCopy,
        "packet_publication_is_atomic",
    );
}

#[test]
fn a_missing_recheck_after_arm_writable_is_caught_in_write_with() {
    loom_support::must_fail(
        ring_core::mutation::Mutation::NoArmRecheck,
        "an_in_place_write_is_woken_by_one_read",
    );
}
