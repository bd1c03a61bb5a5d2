//! The C side of a two-process interop run: libxenvchan (through the test
//! harness) in its own process, over a memfd and two eventfds inherited
//! from the parent test.
//!
//! Usage: `xen_child <server|client> MEMFD C_WAKE RUST_WAKE LEFT_ORDER
//! RIGHT_ORDER INITIAL_INDEX BYTES SEND_SEED RECV_SEED <c|rust>`
//!
//! The child sends BYTES bytes of the SEND_SEED pattern and expects BYTES
//! bytes of the RECV_SEED pattern, both at once. The last argument says who
//! closes first: `c` closes as soon as the transfer is done; `rust` waits
//! for the parent's close, checks that the drained ring reads as EOF (−1)
//! and that `is_open` is 0, then closes. Prints the two checksums on
//! stdout and exits 0 on success, 1 (with a message on stderr) otherwise.

use ring_tests::xen::{fd_from_arg, CPeer, Duplex, Pattern};
use std::os::fd::AsFd;
use std::process::ExitCode;

fn run(args: &[String]) -> Result<String, String> {
    let [role, memfd, c_wake, rust_wake, lo, ro, index, bytes, send_seed, recv_seed, closer] = args
    else {
        return Err(format!("expected 11 arguments, got {}", args.len()));
    };
    let num = |s: &String| s.parse::<u64>().map_err(|e| format!("{s}: {e}"));
    // SAFETY: the parent passes these three descriptors to us and nothing
    // else in this process uses them.
    let memfd = unsafe { fd_from_arg(memfd) }.map_err(|e| e.to_string())?;
    // SAFETY: as above.
    let c_wake = unsafe { fd_from_arg(c_wake) }.map_err(|e| e.to_string())?;
    // SAFETY: as above.
    let rust_wake = unsafe { fd_from_arg(rust_wake) }.map_err(|e| e.to_string())?;
    let mut peer = match role.as_str() {
        "server" => {
            let lo = u8::try_from(num(lo)?).map_err(|e| e.to_string())?;
            let ro = u8::try_from(num(ro)?).map_err(|e| e.to_string())?;
            let index = u32::try_from(num(index)?).map_err(|e| e.to_string())?;
            let mut p = CPeer::server(
                memfd.as_fd(),
                lo,
                ro,
                index,
                c_wake.as_fd(),
                rust_wake.as_fd(),
            )
            .ok_or("server set-up failed")?;
            // Tell the parent the page is ready.
            if p.kick() != 0 {
                return Err("kick failed".into());
            }
            p
        }
        "client" => CPeer::client(memfd.as_fd(), c_wake.as_fd(), rust_wake.as_fd())
            .ok_or("client refused the page")?,
        other => return Err(format!("unknown role {other}")),
    };
    let len = num(bytes)?;
    let job = Duplex {
        send: Pattern::new(num(send_seed)?),
        send_len: len,
        recv: Pattern::new(num(recv_seed)?),
        recv_len: len,
        chunk: 8192,
    };
    let report = ring_tests::xen::c_duplex(&mut peer, job)?;
    match closer.as_str() {
        "c" => peer.close(),
        "rust" => {
            peer.set_blocking(true);
            let mut b = [0u8; 64];
            let r = peer.read(&mut b);
            if r != -1 {
                return Err(format!(
                    "expected EOF (-1) after the parent closed, got {r}"
                ));
            }
            let open = peer.is_open();
            if open != 0 {
                return Err(format!("is_open is {open} after the parent closed"));
            }
            let w = peer.write(b"late");
            if w != -1 {
                return Err(format!("write after the parent closed returned {w}"));
            }
            peer.close();
        }
        other => return Err(format!("unknown closer {other}")),
    }
    Ok(format!(
        "sent={:016x} received={:016x} waits={}",
        report.sent.0, report.received.0, report.waits
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xen_child: {e}");
            ExitCode::FAILURE
        }
    }
}
