//! A hostile peer scribbles on the vchan header between the individual
//! memory accesses of our calls while we read, write, send and receive.
//! Only `Ok`, `WouldBlock`, `Closed`, `TooLarge` or `Corrupt` may come
//! back, a transfer never exceeds its buffer, and corruption latches.
#![no_main]

mod common;

use common::Input;
use libfuzzer_sys::fuzz_target;
use ring_core::vchan::{self, Error, Orders, ServerOptions};
use ring_std::hostile::HostileMem;
use ring_std::HeapMem;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let (left, right) = (10 + input.u8() % 4, 10 + input.u8() % 4);
    let Ok(orders) = Orders::new(left, right) else { return };
    let as_server = input.u8() & 1 == 0;
    let start = input.u32();
    let script = input.script(24);
    let heap = HeapMem::new(vchan::FlatLayout::new(orders).size);
    let hostile = HostileMem::new(&heap, 0, 24, script);
    let options = ServerOptions { initial_index: start };
    let (Ok(server), Ok(client)) = (
        vchan::serve_flat(&hostile, orders, options),
        vchan::connect_flat(&hostile),
    ) else {
        return;
    };
    let mut ep = if as_server { server } else { client };
    let mut buf = vec![0u8; 1 << 15];
    let mut latched = None;
    while !input.is_empty() {
        let op = input.u8();
        let n = usize::from(input.u16()) % buf.len();
        let r = match op % 6 {
            0 => ep.read(&mut buf[..n]),
            1 => ep.write(&buf[..n]),
            2 => ep.recv(&mut buf[..n]),
            3 => ep.send(&buf[..n]),
            4 => ep.close(),
            _ => ep.data_ready().and_then(|_| ep.buffer_space()).map(|_| vchan::Transfer {
                len: 0,
                notify: false,
            }),
        };
        match r {
            Ok(t) => assert!(t.len <= n),
            Err(Error::WouldBlock | Error::Closed | Error::Corrupt(_)) => {}
            Err(Error::TooLarge { len, capacity }) => assert!(len > capacity),
            Err(e) => panic!("unexpected error {e:?}"),
        }
        if let Some(p) = latched {
            assert_eq!(ep.poisoned(), Some(p), "corruption must latch");
        }
        latched = ep.poisoned();
    }
});
