//! The test pattern every contender writes and every reader checks.
//!
//! A job's stream is a sequence of little-endian `u64` words; word `w` of
//! job `job` is [`word`]`(job, w)`. Word indices count from the start of
//! the job's stream, so a 4 KiB chunk or sample `s` holds words
//! `512 s .. 512 s + 511`: the pattern carries the sequence number of
//! every word, and a lost, repeated, reordered or stale chunk (or a chunk
//! left over from an earlier job) fails the check.

/// Bytes of a chunk in the throughput groups.
pub const CHUNK: usize = 4096;
/// Words of a chunk.
pub const CHUNK_WORDS: usize = CHUNK / 8;
/// Bytes of a ping in the round-trip group.
pub const PING: usize = 64;

/// Word `w` of job `job`'s stream.
#[inline(always)]
pub fn word(job: u64, w: u64) -> u64 {
    w ^ (job << 40) ^ 0x5a00_0000_0000_0000
}

/// The byte at stream offset `pos`.
#[inline]
fn byte(job: u64, pos: u64) -> u8 {
    word(job, pos / 8).to_le_bytes()[(pos % 8) as usize]
}

/// Fills `buf` with the stream's bytes from offset `pos` on.
pub fn fill_bytes(buf: &mut [u8], job: u64, pos: u64) {
    if pos.is_multiple_of(8) && buf.len().is_multiple_of(8) {
        let w0 = pos / 8;
        for (i, c) in buf.chunks_exact_mut(8).enumerate() {
            c.copy_from_slice(&word(job, w0 + i as u64).to_le_bytes());
        }
    } else {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = byte(job, pos + i as u64);
        }
    }
}

/// Fills `buf` with the stream's words from word `w0` on.
pub fn fill_words(buf: &mut [u64], job: u64, w0: u64) {
    for (i, v) in buf.iter_mut().enumerate() {
        *v = word(job, w0 + i as u64);
    }
}

/// Checks that `buf` holds the stream's bytes from offset `pos` on.
///
/// # Errors
///
/// The first wrong byte, described.
pub fn check_bytes(buf: &[u8], job: u64, pos: u64) -> Result<(), String> {
    let fast_ok = if pos.is_multiple_of(8) && buf.len().is_multiple_of(8) {
        let w0 = pos / 8;
        // No early exit: the whole buffer is compared, branch-free.
        let bad = buf.chunks_exact(8).enumerate().fold(0u64, |acc, (i, c)| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            acc | (u64::from_le_bytes(b) ^ word(job, w0 + i as u64))
        });
        bad == 0
    } else {
        false
    };
    if fast_ok {
        return Ok(());
    }
    match buf
        .iter()
        .enumerate()
        .find(|&(i, &b)| b != byte(job, pos + i as u64))
    {
        None => Ok(()),
        Some((i, &b)) => Err(format!(
            "job {job}: byte at stream offset {} is {b:#04x}, expected {:#04x}",
            pos + i as u64,
            byte(job, pos + i as u64)
        )),
    }
}

/// Checks that `buf` holds the stream's words from word `w0` on.
///
/// # Errors
///
/// The first wrong word, described.
pub fn check_words(buf: &[u64], job: u64, w0: u64) -> Result<(), String> {
    let bad = buf
        .iter()
        .enumerate()
        .fold(0u64, |acc, (i, &v)| acc | (v ^ word(job, w0 + i as u64)));
    if bad == 0 {
        return Ok(());
    }
    match buf
        .iter()
        .enumerate()
        .find(|&(i, &v)| v != word(job, w0 + i as u64))
    {
        None => Ok(()),
        Some((i, &v)) => Err(format!(
            "job {job}: word {} is {v:#018x}, expected {:#018x}",
            w0 + i as u64,
            word(job, w0 + i as u64)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_words_agree_at_any_offset() {
        let mut words = [0u64; 8];
        fill_words(&mut words, 3, 10);
        let mut bytes = [0u8; 64];
        fill_bytes(&mut bytes, 3, 80);
        for (i, w) in words.iter().enumerate() {
            assert_eq!(&bytes[i * 8..i * 8 + 8], &w.to_le_bytes());
        }
        check_bytes(&bytes[5..37], 3, 85).unwrap();
        check_words(&words, 3, 10).unwrap();
        let mut odd = [0u8; 13];
        fill_bytes(&mut odd, 3, 83);
        assert_eq!(&odd, &bytes[3..16]);
        bytes[20] ^= 1;
        assert!(check_bytes(&bytes, 3, 80).is_err());
        assert!(check_words(&words, 4, 10).is_err());
        assert!(check_words(&words, 3, 11).is_err());
    }
}
