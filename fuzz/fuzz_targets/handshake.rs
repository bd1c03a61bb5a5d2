//! A hostile client speaks first: the input is everything it sends on the
//! rendezvous socket before hanging up. The server's handshake must end in
//! a clear error (or a session, for a well-formed hello) — never a panic or
//! a hang — and the fixed-size codecs must round-trip what they accept.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ring_hosted::rendezvous::{self, Hello, Proto, ServerConfig, Welcome, HELLO_LEN, WELCOME_LEN};
use std::io::Write;
use std::os::unix::net::UnixStream;

fuzz_target!(|data: &[u8]| {
    if let Some(raw) = data.first_chunk::<HELLO_LEN>() {
        if let Ok(hello) = Hello::decode(raw) {
            assert_eq!(Hello::decode(&hello.encode()), Ok(hello));
        }
    }
    if let Some(raw) = data.first_chunk::<WELCOME_LEN>() {
        if let Ok(welcome) = Welcome::decode(raw) {
            assert_eq!(Welcome::decode(&welcome.encode()), Ok(welcome));
        }
    }
    let Ok((mut client, server)) = UnixStream::pair() else {
        return;
    };
    let _ = client.write_all(data);
    let _ = client.shutdown(std::net::Shutdown::Write);
    let proto = if data.first().is_some_and(|b| b & 1 == 1) {
        Proto::Vmbus
    } else {
        Proto::Vchan
    };
    let config = ServerConfig::new(proto).ring_sizes(4096, 4096);
    // Any outcome but a panic or a hang is fine; a session needs a valid hello.
    if rendezvous::serve_client(server, &config).is_ok() {
        let hello = data.first_chunk::<HELLO_LEN>().map(Hello::decode);
        assert!(
            matches!(hello, Some(Ok(_))),
            "a session from an invalid hello"
        );
    }
});
