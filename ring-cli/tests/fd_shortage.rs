//! A client that runs out of fds during the handshake says so: "too many
//! open files", not a protocol problem.

mod common;

use ring_hosted::rendezvous::{Listener, Proto, ServerConfig};
use std::process::Stdio;
use std::time::Duration;

#[test]
fn a_connect_without_fds_to_spare_names_the_shortage() {
    let sock = common::TempSock::new("fd-shortage");
    let listener = Listener::bind(&sock.path, ServerConfig::new(Proto::Vchan)).unwrap();
    // The server side: it gets the client's hello and sends the welcome
    // with its fds, which the client then cannot take.
    let server = std::thread::spawn(move || {
        let _ = listener.accept_timeout(Duration::from_secs(10));
    });
    // fds 0-2 and the socket: no room for the welcome's fds.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 4 && exec \"$0\" connect --timeout 10 \"$1\"")
        .arg(env!("CARGO_BIN_EXE_ring"))
        .arg(&sock.path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    server.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.to_lowercase().contains("too many open files"),
        "the cause is not named: {stderr}"
    );
    assert!(!stderr.contains("truncated"), "{stderr}");
}
