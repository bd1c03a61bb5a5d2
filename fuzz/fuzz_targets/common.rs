//! Input decoding shared by the fuzz targets.
#![allow(dead_code)] // each target uses a different subset

use ring_std::hostile::Scribble;

/// Reads little pieces off the front of the fuzzer's input.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A scribble script: a count, then (after, offset, value) triples.
    pub fn script(&mut self, window: u32) -> Vec<Scribble> {
        let n = self.u8() % 32;
        (0..n)
            .map(|_| Scribble {
                after: u32::from(self.u8() % 16),
                offset: u32::from(self.u8()) % window,
                value: if self.u8() & 1 == 0 {
                    u32::from(self.u16())
                } else {
                    self.u32()
                },
            })
            .collect()
    }
}
