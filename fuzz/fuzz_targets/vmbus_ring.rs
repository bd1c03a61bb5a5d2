//! A hostile peer owns a VMBus ring: the input sets the control words,
//! writes packet bytes where the reader will look, and scripts scribbles on
//! the header or the data area between the individual memory accesses of
//! our calls. We read packets (and everything in them), read a pipe, or
//! write. Only `Ok`, `Empty`, `Full` or `Corrupt` may come back (plus
//! `TooLarge` for a packet that really is too large), and corruption
//! latches.
#![no_main]

mod common;

use common::Input;
use libfuzzer_sys::fuzz_target;
use ring_core::mem::{SharedMem, WrapRegion};
use ring_core::vmbus::layout::{
    FEATURE_BITS, INTERRUPT_MASK, PENDING_SEND_SIZE, READ_INDEX, WRITE_INDEX,
};
use ring_core::vmbus::pipe::PipeReader;
use ring_core::vmbus::{Error, IncomingRing, OutgoingPacket, OutgoingRing, RingLayout};
use ring_std::hostile::HostileMem;
use ring_std::HeapMem;

const DATA: usize = 8192;

fn allowed<T>(r: &Result<T, Error>) {
    match r {
        Ok(_) | Err(Error::Empty | Error::Full { .. } | Error::Corrupt(_)) => {}
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let layout = RingLayout::new(4096, DATA).unwrap();
    let heap = HeapMem::new(layout.total_size());
    // Mostly plausible indices (aligned, in range), sometimes raw words.
    let index = |input: &mut Input<'_>| {
        let v = input.u32();
        if v & 1 == 0 {
            (v % DATA as u32) & !7
        } else {
            v
        }
    };
    let write = index(&mut input);
    let read = index(&mut input);
    heap.store_u32(WRITE_INDEX, write).unwrap();
    heap.store_u32(READ_INDEX, read).unwrap();
    heap.store_u32(INTERRUPT_MASK, u32::from(input.u8() & 1))
        .unwrap();
    heap.store_u32(PENDING_SEND_SIZE, u32::from(input.u16()))
        .unwrap();
    heap.store_u32(FEATURE_BITS, u32::from(input.u8() & 3))
        .unwrap();
    // Packet bytes from the read index on (wrapping).
    let len = usize::from(input.u16()) % DATA;
    let image: Vec<u8> = (0..len).map(|_| input.u8()).collect();
    let region = WrapRegion::new(layout.data_offset(), DATA);
    region
        .write(&heap, read as usize % DATA & !7, &image)
        .unwrap();
    let on_header = input.u8() & 1 == 0;
    let (start, window) = if on_header { (0, 0x44) } else { (4096, DATA) };
    let script = input.script(window as u32);
    let hostile = HostileMem::new(&heap, start, window, script);

    match input.u8() % 3 {
        0 => {
            let Ok(mut rx) = IncomingRing::new(&hostile, layout) else {
                return;
            };
            let mut latched = None;
            for _ in 0..64 {
                match rx.read_packet() {
                    Ok(p) => {
                        let mut buf = vec![0u8; p.payload_len()];
                        allowed(&p.read_payload(0, &mut buf));
                        // No cap of ours on the iterators: each record
                        // they yield is 8 bytes of the packet's header, so
                        // more than header_len / 8 of them means one runs
                        // on past its packet (or for ever).
                        let records = p.info().header_len as usize / 8;
                        let mut seen = 0usize;
                        let mut count = |n: &mut usize| {
                            *n += 1;
                            assert!(*n <= records, "more records than the header holds");
                        };
                        for range in p.gpa_ranges() {
                            count(&mut seen);
                            match range {
                                Ok(r) => r.pfns().for_each(|pfn| {
                                    count(&mut seen);
                                    allowed(&pfn)
                                }),
                                Err(e) => allowed(&Err::<(), _>(e)),
                            }
                        }
                        let mut seen = 0usize;
                        p.transfer_ranges().for_each(|r| {
                            count(&mut seen);
                            allowed(&r)
                        });
                    }
                    Err(e) => allowed(&Err::<(), _>(e)),
                }
                allowed(&rx.commit());
                if let Some(c) = latched {
                    assert_eq!(rx.poisoned(), Some(c), "corruption must latch");
                }
                latched = rx.poisoned();
            }
        }
        1 => {
            let Ok(rx) = IncomingRing::new(&hostile, layout) else {
                return;
            };
            let mut pipe = PipeReader::new(rx);
            let mut buf = vec![0u8; 1 << 15];
            for i in 0..64 {
                let n = usize::from(input.u16()) % buf.len();
                let r = if i % 2 == 0 {
                    pipe.read_bytes(&mut buf[..n])
                } else {
                    pipe.read_message(&mut buf[..n])
                };
                match r {
                    Ok(t) => assert!(t.len <= n),
                    Err(Error::OutOfRange { needed, available }) => assert!(needed > available),
                    Err(e) => allowed(&Err::<(), _>(e)),
                }
            }
        }
        _ => {
            let Ok(mut tx) = OutgoingRing::new(&hostile, layout) else {
                return;
            };
            let payload = vec![0xA5u8; DATA];
            while !input.is_empty() {
                let n = usize::from(input.u16()) % DATA;
                let r = tx.write(&OutgoingPacket::in_band(1, &[&payload[..n]]));
                match r {
                    Err(Error::TooLarge { len, max }) => assert!(len > max),
                    r => allowed(&r),
                }
                if input.u8() & 1 == 0 {
                    allowed(&tx.commit());
                }
                if input.u8() & 3 == 0 {
                    match tx.wait_for_space(n) {
                        Err(Error::TooLarge { len, max }) => assert!(len > max),
                        r => allowed(&r),
                    }
                }
            }
        }
    }
});
