//! Unit tests of set-up, the data path and the notify protocol over
//! in-process memory.

extern crate std;

use super::super::layout::*;
use super::*;
use crate::mem::RawMem;
use crate::race::{At, Peer, Race};
use core::sync::atomic::AtomicU64;
use std::vec;
use std::vec::Vec;

fn words(bytes: usize) -> Vec<AtomicU64> {
    (0..bytes / 8).map(|_| AtomicU64::new(0)).collect()
}

fn pair_at(
    w: &[AtomicU64],
    left: u8,
    right: u8,
    start: u32,
) -> (Endpoint<RawMem<'_>>, Endpoint<RawMem<'_>>) {
    let mem = RawMem::from_atomics(w);
    let orders = Orders::new(left, right).unwrap();
    let server = serve_flat(
        mem,
        orders,
        ServerOptions {
            initial_index: start,
        },
    )
    .unwrap();
    let client = connect_flat(mem).unwrap();
    (server, client)
}

fn header(mem: RawMem<'_>) -> ControlHeader {
    let mut raw = [0u8; 24];
    mem.read(0, &mut raw).unwrap();
    ControlHeader::read_from_bytes(&raw).unwrap()
}

#[test]
fn server_writes_the_page_as_libxenvchan_does() {
    let w = words(4096 + 8192 + 4096);
    let mem = RawMem::from_atomics(&w);
    mem.fill(0, mem.size(), 0xaa).unwrap();
    let orders = Orders::new(13, 12).unwrap();
    let _server = serve_flat(mem, orders, ServerOptions::default()).unwrap();
    let h = header(mem);
    assert_eq!((h.left.cons.get(), h.left.prod.get()), (0, 0));
    assert_eq!((h.right.cons.get(), h.right.prod.get()), (0, 0));
    assert_eq!((h.left_order.get(), h.right_order.get()), (13, 12));
    assert_eq!((h.cli_live, h.srv_live), (2, 1));
    assert_eq!((h.cli_notify, h.srv_notify), (NotifyBits::WRITE.bits(), 0));
    // Grant list: left's two pages, then right's one.
    let grants: Vec<u32> = (0..4)
        .map(|n| mem.load_u32(GRANTS + 4 * n).unwrap())
        .collect();
    assert_eq!(grants, [1, 2, 3, 0]);
    // The rest of the control page is zeroed.
    let mut rest = vec![0u8; 4096 - 40];
    mem.read(40, &mut rest).unwrap();
    assert!(rest.iter().all(|&b| b == 0));
}

#[test]
fn client_connect_marks_itself_live_and_asks_for_writes() {
    let w = words(4096);
    let (_server, client) = pair_at(&w, 10, 11, 0);
    let h = header(*client.control());
    assert_eq!((h.cli_live, h.srv_live), (1, 1));
    assert_eq!(h.srv_notify, NotifyBits::WRITE.bits());
    assert_eq!(client.read_capacity(), 2048);
    assert_eq!(client.write_capacity(), 1024);
}

#[test]
fn connect_rejects_bad_pages() {
    let w = words(4096);
    let mem = RawMem::from_atomics(&w);
    // Nothing set up: nobody serves the page, which is what it says.
    assert!(matches!(
        connect_flat(mem),
        Err(Error::Setup(SetupError::ServerNotLive { live: 0 }))
    ));
    // A live byte over orders never written: the orders are refused.
    mem.store_u8(SRV_LIVE, 1).unwrap();
    assert!(matches!(
        connect_flat(mem),
        Err(Error::Setup(SetupError::BadOrder { order: 0 }))
    ));
    mem.store_u8(SRV_LIVE, 0).unwrap();
    let _server = serve_flat(mem, Orders::new(10, 11).unwrap(), ServerOptions::default()).unwrap();
    mem.store_u8(SRV_LIVE, 0).unwrap();
    assert!(matches!(
        connect_flat(mem),
        Err(Error::Setup(SetupError::ServerNotLive { live: 0 }))
    ));
    mem.store_u8(SRV_LIVE, 1).unwrap();
    let _client = connect_flat(mem).unwrap();
    assert!(matches!(
        connect_flat(mem),
        Err(Error::Setup(SetupError::ClientAlreadyConnected))
    ));
    // Equal in-page orders written by a hostile server.
    mem.store_u8(CLI_LIVE, 2).unwrap();
    mem.write(LEFT_ORDER, &11u16.to_le_bytes()).unwrap();
    assert!(matches!(
        connect_flat(mem),
        Err(Error::Setup(SetupError::OrderClash { order: 11 }))
    ));
    // Orders that need more memory than there is.
    mem.write(LEFT_ORDER, &20u16.to_le_bytes()).unwrap();
    assert!(matches!(
        connect_flat(mem),
        Err(Error::Setup(SetupError::MemoryTooSmall { .. }))
    ));
    // Inconsistent indices at connect.
    mem.write(LEFT_ORDER, &10u16.to_le_bytes()).unwrap();
    mem.store_u32(RIGHT_PROD, 4096).unwrap();
    assert!(matches!(
        connect_flat(mem),
        Err(Error::Setup(SetupError::BadIndices))
    ));
}

#[test]
fn too_small_memory_is_a_setup_error() {
    let w = words(4096);
    let mem = RawMem::from_atomics(&w);
    assert!(matches!(
        serve_flat(mem, Orders::new(12, 11).unwrap(), ServerOptions::default()),
        Err(Error::Setup(SetupError::MemoryTooSmall {
            needed: 8192,
            available: 4096
        }))
    ));
    let small = words(1024);
    assert!(serve_flat(
        RawMem::from_atomics(&small),
        Orders::new(10, 11).unwrap(),
        ServerOptions::default()
    )
    .is_err());
}

#[test]
fn notify_bits_follow_the_protocol() {
    let w = words(4096);
    let (mut server, mut client) = pair_at(&w, 10, 11, 0);
    let mem = *server.control();
    // Server reads an empty ring: WouldBlock, with WRITE armed in the
    // byte aimed at the client.
    mem.store_u8(CLI_NOTIFY, 0).unwrap();
    assert_eq!(server.read(&mut [0; 8]), Err(Error::WouldBlock));
    assert_eq!(mem.load_u8(CLI_NOTIFY).unwrap(), NotifyBits::WRITE.bits());
    // The client's write finds the request, clears it, and says kick.
    let t = client.write(b"abc").unwrap();
    assert_eq!(
        t,
        Transfer {
            len: 3,
            notify: true
        }
    );
    assert_eq!(mem.load_u8(CLI_NOTIFY).unwrap(), 0);
    // No request now: no kick.
    assert!(!client.write(b"d").unwrap().notify);
    // Server reads; the client never asked for READ, so no kick.
    let mut buf = [0u8; 8];
    let t = server.read(&mut buf).unwrap();
    assert_eq!((t.len, t.notify), (4, false));
    assert_eq!(&buf[..4], b"abcd");
    // Client fills the 1 KiB left ring, then would block with READ armed.
    assert_eq!(client.write(&[1; 2000]).unwrap().len, 1024);
    assert_eq!(client.write(&[1; 1]), Err(Error::WouldBlock));
    assert_eq!(
        mem.load_u8(SRV_NOTIFY).unwrap() & NotifyBits::READ.bits(),
        NotifyBits::READ.bits()
    );
    // The server's read frees space and owes the client a kick.
    let t = server.read(&mut [0; 10]).unwrap();
    assert!(t.notify);
    assert_eq!(
        mem.load_u8(SRV_NOTIFY).unwrap() & NotifyBits::READ.bits(),
        0
    );
}

#[test]
fn arm_then_recheck_reports_ready_or_armed() {
    let w = words(4096);
    let (mut server, mut client) = pair_at(&w, 10, 11, 0);
    assert_eq!(server.arm_readable(1), Ok(Readiness::Armed));
    let _ = client.write(b"x").unwrap();
    assert_eq!(server.arm_readable(1), Ok(Readiness::Ready));
    assert_eq!(server.arm_readable(2), Ok(Readiness::Armed));
    assert_eq!(client.arm_writable(1023), Ok(Readiness::Ready));
    assert_eq!(client.arm_writable(1024), Ok(Readiness::Armed));
    let _ = client.close().unwrap();
    assert_eq!(server.arm_readable(2), Ok(Readiness::Ready));
}

#[test]
fn indices_wrap_through_u32_max() {
    for start in [0xffff_ff00u32, u32::MAX, u32::MAX - 1023, 0x7fff_ffff] {
        let w = words(4096 + 4096);
        let (mut server, mut client) = pair_at(&w, 12, 11, start);
        let mut next = 0u8;
        let mut expect = 0u8;
        for round in 0..40 {
            let chunk: Vec<u8> = (0..300 + round * 7)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            let mut sent = 0;
            while sent < chunk.len() {
                sent += client.write(&chunk[sent..]).unwrap().len;
                let mut buf = [0u8; 777];
                let got = server.read(&mut buf).unwrap().len;
                for &b in &buf[..got] {
                    expect = expect.wrapping_add(1);
                    assert_eq!(b, expect);
                }
            }
        }
        while let Ok(t) = server.read(&mut [0; 4096]) {
            expect = expect.wrapping_add(t.len as u8);
        }
        assert_eq!(expect, next);
    }
}

#[test]
fn ring_fills_to_exactly_its_size() {
    let w = words(4096 + 4096);
    let (mut server, mut client) = pair_at(&w, 12, 11, 0xffff_fff0);
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(client.write(&data).unwrap().len, 4096);
    assert_eq!(client.buffer_space(), Ok(0));
    assert_eq!(server.data_ready(), Ok(4096));
    assert_eq!(client.write(&[0]), Err(Error::WouldBlock));
    let mut back = vec![0u8; 5000];
    assert_eq!(server.read(&mut back).unwrap().len, 4096);
    assert_eq!(&back[..4096], &data[..]);
}

#[test]
fn packets_of_exactly_ring_size_and_larger() {
    let w = words(4096 + 4096);
    let (mut server, mut client) = pair_at(&w, 12, 11, 0);
    let packet = vec![9u8; 4096];
    assert_eq!(client.send(&packet).unwrap().len, 4096);
    assert_eq!(client.send(&[1]), Err(Error::WouldBlock));
    assert_eq!(
        client.send(&vec![0; 4097]),
        Err(Error::TooLarge {
            len: 4097,
            capacity: 4096
        })
    );
    let mut small = [0u8; 100];
    assert_eq!(server.recv(&mut small).unwrap().len, 100);
    assert_eq!(
        server.recv(&mut vec![0; 4097]),
        Err(Error::TooLarge {
            len: 4097,
            capacity: 4096
        })
    );
    let mut rest = vec![0u8; 3996];
    assert_eq!(server.recv(&mut rest).unwrap().len, 3996);
    assert_eq!(server.recv(&mut [0; 1]), Err(Error::WouldBlock));
    // Server → client packets use the 2 KiB right ring.
    assert_eq!(server.send(&[3; 2048]).unwrap().len, 2048);
    assert_eq!(
        client.recv(&mut [0; 2049]),
        Err(Error::TooLarge {
            len: 2049,
            capacity: 2048
        })
    );
}

#[test]
fn close_then_drain_then_eof() {
    let w = words(4096);
    let (mut server, mut client) = pair_at(&w, 10, 11, 0);
    let _ = client.write(&[5; 1000]).unwrap();
    let t = client.close().unwrap();
    assert!(t.notify, "close always kicks");
    assert_eq!(client.write(b"x"), Err(Error::Closed));
    assert_eq!(server.is_open(), Ok(false));
    // A short exact read fails once the writer is gone.
    assert_eq!(server.recv(&mut [0; 1001]), Err(Error::Closed));
    let mut buf = [0u8; 600];
    assert_eq!(server.read(&mut buf).unwrap().len, 600);
    assert_eq!(server.read(&mut buf).unwrap().len, 400);
    assert_eq!(server.read(&mut buf).unwrap().len, 0, "EOF after the drain");
    assert_eq!(server.write(b"late"), Err(Error::Closed));
}

#[test]
fn server_may_write_before_the_client_connects() {
    let w = words(4096);
    let mem = RawMem::from_atomics(&w);
    let mut server =
        serve_flat(mem, Orders::new(10, 11).unwrap(), ServerOptions::default()).unwrap();
    assert_eq!(server.peer_live(), Ok(Live::Waiting));
    assert_eq!(server.read(&mut [0; 4]), Err(Error::WouldBlock));
    assert_eq!(server.write(b"early").unwrap().len, 5);
    let mut client = connect_flat(mem).unwrap();
    let mut buf = [0u8; 5];
    assert_eq!(client.recv(&mut buf).unwrap().len, 5);
    assert_eq!(&buf, b"early");
}

#[test]
fn hostile_indices_poison_the_endpoint() {
    let w = words(4096);
    let (mut server, mut client) = pair_at(&w, 10, 11, 0);
    let mem = *server.control();
    // The client's producer index jumps more than a ring ahead.
    mem.store_u32(LEFT_PROD, 1025).unwrap();
    let err = server.read(&mut [0; 4]).unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)));
    // Latched: even a repaired page does not revive it.
    mem.store_u32(LEFT_PROD, 0).unwrap();
    assert_eq!(server.read(&mut [0; 4]), Err(err));
    assert_eq!(server.write(b"x"), Err(err));
    assert_eq!(
        server.poisoned(),
        Some(Corrupt {
            what: "producer index moved backwards or more than a ring ahead"
        })
    );
    // A consumer index that moves backwards.
    let _ = client.write(&[1; 100]).unwrap();
    mem.store_u32(LEFT_CONS, u32::MAX).unwrap();
    assert!(matches!(client.write(&[1; 2000]), Err(Error::Corrupt(_))));
}

#[test]
fn undefined_live_values_poison() {
    let w = words(4096);
    let (mut server, mut client) = pair_at(&w, 10, 11, 0);
    let mem = *server.control();
    mem.store_u8(CLI_LIVE, 7).unwrap();
    assert!(matches!(server.read(&mut [0; 4]), Err(Error::Corrupt(_))));
    mem.store_u8(SRV_LIVE, 2).unwrap();
    assert!(matches!(client.write(b"x"), Err(Error::Corrupt(_))));
}

#[test]
fn a_client_live_byte_back_at_2_after_joining_poisons() {
    let what = "client live byte went back to 2 after the client joined";
    // Joined: its live byte seen at 1.
    let w = words(4096);
    let (mut server, _client) = pair_at(&w, 10, 11, 0);
    let mem = *server.control();
    assert_eq!(server.peer_live(), Ok(Live::Connected));
    mem.store_u8(CLI_LIVE, 2).unwrap();
    assert_eq!(
        server.read(&mut [0; 4]),
        Err(Error::Corrupt(Corrupt { what }))
    );
    // Joined: bytes from it, its live byte never seen at 1.
    let w = words(4096);
    let (mut server, mut client) = pair_at(&w, 10, 11, 0);
    let mem = *server.control();
    let _ = client.write(b"hi").unwrap();
    mem.store_u8(CLI_LIVE, 2).unwrap();
    let mut buf = [0u8; 2];
    assert_eq!(server.read(&mut buf).unwrap().len, 2);
    assert_eq!(server.peer_live(), Err(Error::Corrupt(Corrupt { what })));
    // Not joined yet: 2 is the wait for it, however long.
    let w = words(4096);
    let mem = RawMem::from_atomics(&w);
    let mut server =
        serve_flat(mem, Orders::new(10, 11).unwrap(), ServerOptions::default()).unwrap();
    assert_eq!(server.peer_live(), Ok(Live::Waiting));
    assert_eq!(server.peer_live(), Ok(Live::Waiting));
}

#[test]
fn hang_up_clears_our_live_byte_and_reads_on() {
    let w = words(4096);
    let (mut server, mut client) = pair_at(&w, 10, 11, 0);
    let _ = client.write(b"before").unwrap();
    assert!(server.hang_up().unwrap().notify, "a hang-up always kicks");
    assert_eq!(server.hang_up(), Ok(Transfer::NOTHING), "once");
    assert_eq!(header(*server.control()).srv_live, 0);
    assert_eq!(client.write(b"after"), Err(Error::Closed));
    assert_eq!(server.write(b"x"), Err(Error::Closed));
    assert_eq!(server.send(b"x"), Err(Error::Closed));
    let mut buf = [0u8; 16];
    assert_eq!(server.read(&mut buf).unwrap().len, 6);
    assert_eq!(server.read(&mut buf), Err(Error::WouldBlock));
    let _ = client.close().unwrap();
    assert_eq!(server.read(&mut buf).unwrap().len, 0, "then its end");
    let _ = server.close().unwrap();
    assert_eq!(server.read(&mut buf), Err(Error::Closed));
}

#[test]
fn every_external_order_round_trips() {
    for order in 12..=20u8 {
        let layout = FlatLayout::new(Orders::new(order, order).unwrap());
        let w = words(layout.size);
        let (mut server, mut client) = pair_at(&w, order, order, 0xffff_0000);
        let size = 1usize << order;
        let data: Vec<u8> = (0..size + 123).map(|i| (i * 31 % 255) as u8).collect();
        assert_eq!(client.write(&data).unwrap().len, size);
        let mut back = vec![0u8; size];
        assert_eq!(server.recv(&mut back).unwrap().len, size);
        assert!(back == data[..size]);
        assert_eq!(server.send(&data[..size]).unwrap().len, size);
        assert_eq!(client.recv(&mut back).unwrap().len, size);
        assert!(back == data[..size]);
    }
}

#[test]
fn empty_buffers_do_nothing() {
    let w = words(4096);
    let (mut server, mut client) = pair_at(&w, 10, 11, 0);
    assert_eq!(
        server.read(&mut []),
        Ok(Transfer {
            len: 0,
            notify: false
        })
    );
    assert_eq!(
        client.write(&[]),
        Ok(Transfer {
            len: 0,
            notify: false
        })
    );
    assert_eq!(
        client.send(&[]),
        Ok(Transfer {
            len: 0,
            notify: false
        })
    );
    assert_eq!(
        server.recv(&mut []),
        Ok(Transfer {
            len: 0,
            notify: false
        })
    );
}

#[test]
fn held_reads_keep_the_space_until_released() {
    let w = words(4096);
    let (mut server, mut client) = pair_at(&w, 10, 11, 0);
    let mem = *server.control();
    // The client fills the 1 KiB left ring and would block, READ armed.
    assert_eq!(client.write(&[7; 1024]).unwrap().len, 1024);
    assert_eq!(client.write(&[7; 1]), Err(Error::WouldBlock));
    let mut buf = [0u8; 100];
    assert_eq!(server.read_held(&mut buf), Ok(100));
    assert_eq!(buf, [7; 100]);
    assert_eq!(server.held(), 100);
    // Nothing published: the writer still sees a full ring.
    assert_eq!(mem.load_u32(LEFT_CONS).unwrap(), 0);
    assert_eq!(client.buffer_space(), Ok(0));
    // More held reads add up; the release gives all back and owes the
    // waiting writer its kick.
    assert_eq!(server.read_held(&mut buf[..50]), Ok(50));
    assert_eq!(
        server.release(),
        Ok(Transfer {
            len: 150,
            notify: true
        })
    );
    assert_eq!(mem.load_u32(LEFT_CONS).unwrap(), 150);
    assert_eq!(server.held(), 0);
    assert_eq!(client.buffer_space(), Ok(150));
    assert_eq!(server.release(), Ok(Transfer::NOTHING));
}

#[test]
fn held_bytes_refuse_every_wait() {
    let w = words(4096);
    let (mut server, mut client) = pair_at(&w, 10, 11, 0);
    let mem = *server.control();
    let _ = client.write(b"request").unwrap();
    assert_eq!(server.write(&[1; 2048]).unwrap().len, 2048);
    assert_eq!(server.recv_held(&mut [0; 7]), Ok(true));
    let before = (
        mem.load_u8(CLI_NOTIFY).unwrap(),
        mem.load_u8(SRV_NOTIFY).unwrap(),
    );
    let held = Err(Error::Held { len: 7 });
    // The ring is empty now: every call that would arm refuses instead.
    assert_eq!(server.read(&mut [0; 4]), held.map(|()| Transfer::NOTHING));
    assert_eq!(server.recv(&mut [0; 4]), held.map(|()| Transfer::NOTHING));
    assert_eq!(server.arm_readable(1), held.map(|()| Readiness::Ready));
    assert_eq!(server.write(b"x"), held.map(|()| Transfer::NOTHING));
    assert_eq!(server.arm_writable(1), held.map(|()| Readiness::Ready));
    // Nothing was armed on the way.
    assert_eq!(
        (
            mem.load_u8(CLI_NOTIFY).unwrap(),
            mem.load_u8(SRV_NOTIFY).unwrap()
        ),
        before
    );
    // Non-arming calls still answer; held calls find nothing.
    assert_eq!(server.data_ready(), Ok(0));
    assert_eq!(server.read_held(&mut [0; 4]), Ok(0));
    assert_eq!(server.recv_held(&mut [0; 4]), Ok(false));
    // A read that completes gives the held bytes back with its own.
    let _ = client.write(b"more").unwrap();
    let t = server.read(&mut [0; 4]).unwrap();
    assert_eq!(t.len, 4);
    assert_eq!(server.held(), 0);
    assert_eq!(mem.load_u32(LEFT_CONS).unwrap(), 11);
    assert_eq!(server.read(&mut [0; 4]), Err(Error::WouldBlock));
}

#[test]
fn a_reply_gives_the_request_back_under_one_fence() {
    let w = words(4096);
    let (mut server, mut client) = pair_at(&w, 10, 11, 0);
    let mem = *server.control();
    // The client fills its ring (READ armed) and waits for the reply
    // (WRITE armed).
    let _ = client.write(&[3; 1024]).unwrap();
    assert_eq!(client.write(b"x"), Err(Error::WouldBlock));
    assert_eq!(client.read(&mut [0; 8]), Err(Error::WouldBlock));
    let mut request = [0u8; 64];
    assert_eq!(server.recv_held(&mut request), Ok(true));
    // One send publishes both indices and owes one kick for both asks.
    let t = server.send(b"reply").unwrap();
    assert_eq!((t.len, t.notify), (5, true));
    assert_eq!(server.held(), 0);
    assert_eq!(mem.load_u32(LEFT_CONS).unwrap(), 64);
    assert_eq!(mem.load_u32(RIGHT_PROD).unwrap(), 5);
    assert_eq!(mem.load_u8(SRV_NOTIFY).unwrap(), 0, "both asks cleared");
    assert_eq!(client.buffer_space(), Ok(64));
    let mut reply = [0u8; 5];
    assert_eq!(client.recv(&mut reply).unwrap().len, 5);
    assert_eq!(&reply, b"reply");
    // Only the write was asked for this time: still one kick.
    assert_eq!(server.recv_held(&mut request), Ok(true));
    assert_eq!(server.arm_readable(1024), Err(Error::Held { len: 64 }));
    assert_eq!(client.read(&mut [0; 8]), Err(Error::WouldBlock));
    let t = server.send(b"again").unwrap();
    assert!(t.notify);
    assert_eq!(mem.load_u32(LEFT_CONS).unwrap(), 128);
}

#[test]
fn held_reads_end_at_eof_and_close_gives_them_back() {
    let w = words(4096);
    let (mut server, mut client) = pair_at(&w, 10, 11, 0);
    let mem = *server.control();
    let _ = client.write(&[9; 10]).unwrap();
    let _ = client.close().unwrap();
    assert_eq!(server.recv_held(&mut [0; 11]), Err(Error::Closed));
    assert_eq!(server.read_held(&mut [0; 6]), Ok(6));
    assert_eq!(server.recv_held(&mut [0; 4]), Ok(true));
    assert_eq!(server.read_held(&mut [0; 4]), Err(Error::Closed));
    assert_eq!(mem.load_u32(LEFT_CONS).unwrap(), 0);
    assert!(server.close().unwrap().notify);
    assert_eq!(mem.load_u32(LEFT_CONS).unwrap(), 10, "close released");
    assert_eq!(server.release(), Err(Error::Closed));
}

#[test]
fn a_writer_may_not_overrun_held_bytes() {
    let w = words(4096);
    let (mut server, mut client) = pair_at(&w, 10, 11, 0);
    let mem = *server.control();
    let _ = client.write(&[1; 1024]).unwrap();
    assert_eq!(server.read_held(&mut [0; 100]), Ok(100));
    // A full ring past what the writer can see as released: corrupt, even
    // though it is within a ring of what we have read.
    mem.store_u32(LEFT_PROD, 1100).unwrap();
    assert!(matches!(server.data_ready(), Err(Error::Corrupt(_))));
}

#[test]
fn vectored_writes_gather_in_order_under_one_publish() {
    let w = words(4096);
    // Start near the wrap so the gathered bytes cross the ring's end.
    let (mut server, mut client) = pair_at(&w, 10, 11, 1000);
    let mem = *server.control();
    let _ = client.write(&[0; 1000]).unwrap();
    assert_eq!(server.read(&mut [0; 1000]).unwrap().len, 1000);
    let parts: [&[u8]; 4] = [b"head", b"", b"-middle-", b"tail"];
    let t = client.write_vectored(&parts).unwrap();
    assert_eq!(t.len, 16);
    assert_eq!(mem.load_u32(LEFT_PROD).unwrap(), 2016, "one index store");
    let mut got = [0u8; 16];
    assert_eq!(server.recv(&mut got).unwrap().len, 16);
    assert_eq!(&got, b"head-middle-tail");
    // A stream write takes what fits, stopping inside a buffer.
    let big = [5u8; 1000];
    let t = client.write_vectored(&[&big[..], &big[..]]).unwrap();
    assert_eq!(t.len, 1024);
    assert_eq!(client.write_vectored(&[&b"x"[..]]), Err(Error::WouldBlock));
}

#[test]
fn vectored_sends_are_all_or_nothing() {
    let w = words(4096);
    let (mut server, mut client) = pair_at(&w, 10, 11, 0);
    let header = [1u8; 24];
    let payload = [2u8; 1000];
    // 1024 bytes exactly: one packet.
    let t = client.send_vectored(&[&header[..], &payload[..]]).unwrap();
    assert_eq!(t.len, 1024);
    assert_eq!(
        client.send_vectored(&[&header[..], b"y"]),
        Err(Error::WouldBlock)
    );
    let mut got = [0u8; 1024];
    assert_eq!(server.recv(&mut got).unwrap().len, 1024);
    assert_eq!(got[..24], header);
    assert_eq!(got[24..], payload);
    // Larger than the ring in total: never, not "later".
    assert_eq!(
        client.send_vectored(&[&payload[..], &payload[..25]]),
        Err(Error::TooLarge {
            len: 1025,
            capacity: 1024
        })
    );
    let none: [&[u8]; 2] = [b"", b""];
    assert_eq!(client.send_vectored(&none), Ok(Transfer::NOTHING));
    assert_eq!(client.write_vectored(&none), Ok(Transfer::NOTHING));
}

#[test]
fn arming_rechecks_what_the_peer_did_as_the_request_landed() {
    let w = words(4096);
    let mem = RawMem::from_atomics(&w);
    let hook: Peer<'_> = std::rc::Rc::default();
    let orders = Orders::new(10, 11).unwrap();
    let mut server = serve_flat(
        Race {
            mem,
            at: At::FetchOr,
            peer: hook.clone(),
        },
        orders,
        ServerOptions::default(),
    )
    .unwrap();
    let client = std::rc::Rc::new(core::cell::RefCell::new(connect_flat(mem).unwrap()));

    // Reading: nothing there, and nothing arrives: armed.
    assert_eq!(server.arm_readable(1).unwrap(), Readiness::Armed);
    // The client writes as our request lands: found by the re-check.
    let peer = client.clone();
    *hook.borrow_mut() = Some(std::boxed::Box::new(move || {
        assert_eq!(peer.borrow_mut().write(b"late").unwrap().len, 4);
    }));
    assert_eq!(server.arm_readable(4).unwrap(), Readiness::Ready);
    assert!(hook.borrow().is_none(), "the peer never moved");
    let mut got = [0u8; 4];
    assert_eq!(server.read(&mut got).unwrap().len, 4);

    // Writing: fill our ring; nothing is read: armed.
    let size = server.write_capacity();
    assert_eq!(server.write(&vec![7u8; size]).unwrap().len, size);
    assert_eq!(server.arm_writable(1).unwrap(), Readiness::Armed);
    // The client reads as our request lands: found by the re-check.
    let peer = client.clone();
    *hook.borrow_mut() = Some(std::boxed::Box::new(move || {
        let mut buf = [0u8; 100];
        assert_eq!(peer.borrow_mut().read(&mut buf).unwrap().len, 100);
    }));
    assert_eq!(server.arm_writable(100).unwrap(), Readiness::Ready);
    assert!(hook.borrow().is_none(), "the peer never moved");
    assert_eq!(server.write(&[8u8; 100]).unwrap().len, 100);
}

/// The set-up checks at their edges: a layout exactly the memory's size is
/// taken and one word more is refused, both ends; a control page short of
/// a page is refused, both ends; an in-page ring away from its place is
/// refused, both ends; `connect` hands `place` exactly the grant refs the
/// server wrote, and nothing past them.
#[test]
fn set_up_checks_hold_exactly_at_their_edges() {
    let orders = Orders::new(12, 12).unwrap();
    let size = FlatLayout::new(orders).size;
    let w = words(size + 8);
    let exact = RawMem::from_atomics(&w[..size / 8]);
    let short = RawMem::from_atomics(&w[..size / 8 - 1]);
    // Refused by the layout check itself: it names the whole layout.
    let too_small = Error::Setup(SetupError::MemoryTooSmall {
        needed: size,
        available: size - 8,
    });
    assert_eq!(
        serve_flat(short, orders, ServerOptions::default()).unwrap_err(),
        too_small
    );
    serve_flat(exact, orders, ServerOptions::default()).unwrap();
    assert_eq!(connect_flat(short).unwrap_err(), too_small);
    connect_flat(exact).unwrap();
    // Memory to spare is fine, both ends.
    let bigger = RawMem::from_atomics(&w[..size / 8 + 1]);
    serve_flat(bigger, orders, ServerOptions::default()).unwrap();
    connect_flat(bigger).unwrap();

    // A control page one word short, on either side.
    let w = words(4096 + 2 * 4096);
    let ctrl = RawMem::from_atomics(&w[..512]);
    let small = RawMem::from_atomics(&w[..511]);
    let left = RawMem::from_atomics(&w[512..1024]);
    let right = RawMem::from_atomics(&w[1024..]);
    let place = |mem| RingPlace { mem, offset: 0 };
    assert!(matches!(
        serve(
            small,
            place(left),
            place(right),
            orders,
            &[70, 71],
            ServerOptions::default()
        ),
        Err(Error::Setup(SetupError::MemoryTooSmall { .. }))
    ));
    serve(
        ctrl,
        place(left),
        place(right),
        orders,
        &[70, 71],
        ServerOptions::default(),
    )
    .unwrap();
    assert!(matches!(
        connect(small, |_, _| Ok((place(left), place(right)))),
        Err(Error::Setup(SetupError::MemoryTooSmall { .. }))
    ));
    // The grant refs as written, and none past them.
    let seen = core::cell::RefCell::new(Vec::new());
    connect(ctrl, |orders, grant| {
        for n in 0..orders.grant_count() + 2 {
            seen.borrow_mut().push(grant(n));
        }
        Ok((place(left), place(right)))
    })
    .unwrap();
    assert_eq!(*seen.borrow(), [Some(70), Some(71), None, None]);

    // In-page rings (orders 10 and 11) away from their fixed places.
    let w = words(4096);
    let ctrl = RawMem::from_atomics(&w);
    let in_page = Orders::new(10, 11).unwrap();
    let at = |offset| RingPlace { mem: ctrl, offset };
    assert!(matches!(
        serve(
            ctrl,
            at(1024 + 8),
            at(2048),
            in_page,
            &[],
            ServerOptions::default()
        ),
        Err(Error::Setup(SetupError::MisplacedRing { order: 10 }))
    ));
    serve(
        ctrl,
        at(1024),
        at(2048),
        in_page,
        &[],
        ServerOptions::default(),
    )
    .unwrap();
    assert!(matches!(
        connect(ctrl, |_, _| Ok((at(1024), at(2048 + 8)))),
        Err(Error::Setup(SetupError::MisplacedRing { order: 11 }))
    ));
    connect(ctrl, |_, _| Ok((at(1024), at(2048)))).unwrap();
}
