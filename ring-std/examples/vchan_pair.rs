//! Moves a few MiB through an in-process vchan pair in two threads, checks
//! every byte, and prints what it did.

use std::io::{Read, Write};
use std::time::Instant;

fn byte(i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b9) >> 13) as u8
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const TOTAL: u64 = 64 << 20;
    let (mut server, mut client) = ring_std::vchan::pair(64 << 10, 64 << 10)?;
    let started = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; 16 << 10];
        let mut sent = 0u64;
        while sent < TOTAL {
            for (k, b) in buf.iter_mut().enumerate() {
                *b = byte(sent + k as u64);
            }
            client.write_all(&buf)?;
            sent += buf.len() as u64;
        }
        client.close()
    });
    let mut got = 0u64;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = server.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for (k, &b) in buf[..n].iter().enumerate() {
            if b != byte(got + k as u64) {
                return Err(format!("byte {} differs", got + k as u64).into());
            }
        }
        got += n as u64;
    }
    writer.join().map_err(|_| "writer thread panicked")??;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "vchan in-process: {} MiB client -> server through 64 KiB rings, every byte checked, {:.2} GB/s",
        got >> 20,
        got as f64 / secs / 1e9
    );
    if got != TOTAL {
        return Err(format!("received {got} of {TOTAL} bytes").into());
    }
    Ok(())
}
