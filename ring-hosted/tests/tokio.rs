//! The tokio face of the vchan stream against a blocking peer.

#![cfg(feature = "tokio")]

use ring_hosted::stream;
use ring_hosted::tokio_io::AsyncVchan;
use std::io::Read;
use std::thread;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 7) as u8 ^ seed)
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn async_side_and_blocking_side_move_data_both_ways() {
    // Small rings (1K and 2K), so both sides fill them and must wait.
    let (server, client) = stream::pair(1024, 2048).unwrap();
    let (up, down) = (pattern(1, 300_000), pattern(2, 200_000));
    let (up2, down2) = (up.clone(), down.clone());
    // Blocking side: receive all of `up`, then echo chunks (xored), then
    // send `down`.
    let peer = thread::spawn(move || {
        let mut s = server;
        let mut got = vec![0u8; up2.len()];
        s.read_exact(&mut got).unwrap();
        assert!(got == up2, "blocking side got different bytes");
        let mut chunk = [0u8; 3000];
        for _ in 0..50 {
            s.read_exact(&mut chunk).unwrap();
            chunk.iter_mut().for_each(|b| *b ^= 0x5a);
            s.write_all(&chunk).unwrap();
        }
        s.write_all(&down2).unwrap();
        s.close().unwrap();
    });
    let mut a = AsyncVchan::new(client).unwrap();
    a.write_all(&up).await.unwrap();
    for round in 0..50u8 {
        let chunk = pattern(round, 3000);
        a.write_all(&chunk).await.unwrap();
        let mut back = vec![0u8; 3000];
        a.read_exact(&mut back).await.unwrap();
        assert!(back.iter().zip(&chunk).all(|(b, c)| *b == c ^ 0x5a));
    }
    let mut rest = Vec::new();
    a.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest.len(), down.len());
    assert!(rest == down, "async side got different bytes");
    a.shutdown().await.unwrap();
    peer.join().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn gathered_async_writes_arrive_in_order() {
    let (server, client) = stream::pair(1024, 1024).unwrap();
    let data = pattern(7, 100_000);
    let expect = data.clone();
    let peer = thread::spawn(move || {
        let mut s = server;
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let mut a = AsyncVchan::new(client).unwrap();
    assert!(tokio::io::AsyncWrite::is_write_vectored(&a));
    for piece in data.chunks(500) {
        let (x, y) = piece.split_at(piece.len() / 2);
        let mut bufs = [
            std::io::IoSlice::new(x),
            std::io::IoSlice::new(&[]),
            std::io::IoSlice::new(y),
        ];
        let mut bufs = &mut bufs[..];
        while !bufs.is_empty() {
            let n = a.write_vectored(bufs).await.unwrap();
            std::io::IoSlice::advance_slices(&mut bufs, n);
        }
    }
    a.shutdown().await.unwrap();
    let got = peer.join().unwrap();
    assert!(
        got == expect,
        "gathered bytes arrived out of order or damaged"
    );
}
