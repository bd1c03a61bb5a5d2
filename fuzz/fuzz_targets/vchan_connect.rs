//! A hostile server: the fuzzer writes the whole control page (and the
//! first ring pages) before we connect as the client, then keeps
//! scribbling while we use the endpoint. Set-up fails cleanly or the
//! endpoint obeys the contract.
#![no_main]

mod common;

use common::Input;
use libfuzzer_sys::fuzz_target;
use ring_core::mem::SharedMem;
use ring_core::vchan::{self, Error};
use ring_std::hostile::HostileMem;
use ring_std::HeapMem;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let heap = HeapMem::new(4096 + 64 * 1024);
    let page_len = usize::from(input.u8()).min(64);
    let page: Vec<u8> = (0..page_len).map(|_| input.u8()).collect();
    let _ = heap.write(0, &page);
    let script = input.script(4096);
    let hostile = HostileMem::new(&heap, 0, 4096, script);
    let Ok(mut ep) = vchan::connect_flat(&hostile) else {
        return;
    };
    let mut buf = vec![0u8; 4096];
    for round in 0..32usize {
        let n = usize::from(input.u16()) % buf.len();
        let r = if round % 2 == 0 {
            ep.read(&mut buf[..n])
        } else {
            ep.write(&buf[..n])
        };
        match r {
            Ok(t) => assert!(t.len <= n),
            Err(Error::WouldBlock | Error::Closed | Error::Corrupt(_)) => {}
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
});
