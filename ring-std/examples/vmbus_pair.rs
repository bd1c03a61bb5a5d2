//! Moves a few MiB through an in-process VMBus channel in two threads, two
//! ways: a byte pipe (hv_sock framing) with every byte checked, then
//! request/completion packets, and prints what it did.

use ring_core::vmbus::{OutgoingPacket, PacketType};
use std::io::{Read, Write};
use std::time::Instant;

fn byte(i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b9) >> 13) as u8
}

fn pipe() -> Result<(), Box<dyn std::error::Error>> {
    const TOTAL: u64 = 64 << 20;
    let (mut a, mut b) = ring_std::vmbus::pipe_pair(256 << 10)?;
    let started = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; 16 << 10];
        let mut sent = 0u64;
        while sent < TOTAL {
            for (k, x) in buf.iter_mut().enumerate() {
                *x = byte(sent + k as u64);
            }
            a.write_all(&buf)?;
            sent += buf.len() as u64;
        }
        a.close()
    });
    let mut got = 0u64;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = b.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for (k, &x) in buf[..n].iter().enumerate() {
            if x != byte(got + k as u64) {
                return Err(format!("byte {} differs", got + k as u64).into());
            }
        }
        got += n as u64;
    }
    writer.join().map_err(|_| "writer thread panicked")??;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "vmbus byte pipe: {} MiB through 256 KiB rings in 4 KiB packets, every byte checked, {:.2} GB/s",
        got >> 20,
        got as f64 / secs / 1e9
    );
    if got != TOTAL {
        return Err(format!("received {got} of {TOTAL} bytes").into());
    }
    Ok(())
}

fn requests() -> Result<(), Box<dyn std::error::Error>> {
    const COUNT: u64 = 200_000;
    let (mut client, mut server) = ring_std::vmbus::pair(64 << 10)?;
    let started = Instant::now();
    let host = std::thread::spawn(move || -> Result<(), String> {
        let mut handled = 0u64;
        while handled < COUNT {
            // Take every request there is, then complete them all.
            let mut ids = Vec::new();
            server
                .drain_with(64, |p| ids.push(p.transaction_id()))
                .map_err(|e| e.to_string())?;
            for id in ids {
                let status = id.to_le_bytes();
                server
                    .send(&OutgoingPacket::completion(id, &[&status]))
                    .map_err(|e| e.to_string())?;
                handled += 1;
            }
        }
        Ok(())
    });
    // Keep up to 16 requests in flight; completions always fit.
    let body = [7u8; 256];
    let (mut sent, mut done) = (0u64, 0u64);
    let mut buf = [0u8; 64];
    while done < COUNT {
        while sent < COUNT && sent - done < 16 {
            client.send(&OutgoingPacket::in_band(sent, &[&body]).with_completion_requested())?;
            sent += 1;
        }
        let (info, _) = client.recv(&mut buf)?;
        if info.packet_type != PacketType::Completion || info.transaction_id != done {
            return Err(format!("completion {} out of order", info.transaction_id).into());
        }
        if buf[..8] != done.to_le_bytes() {
            return Err("completion payload differs".into());
        }
        done += 1;
    }
    host.join().map_err(|_| "host thread panicked")??;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "vmbus packets: {COUNT} requests of 256 bytes and their completions, {:.0} round trips/s",
        COUNT as f64 / secs
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    pipe()?;
    requests()
}
