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
