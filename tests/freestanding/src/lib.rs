#![no_std]
//! The C memory functions that LLVM calls and that the prebuilt
//! `compiler_builtins` for the linux-gnu target does not provide (a hosted
//! program gets them from libc). Written with string instructions so LLVM
//! cannot turn a loop back into a call to the function itself.

use core::arch::asm;

/// Copies `n` bytes from `src` to `dest`.
///
/// # Safety
///
/// `src` must be valid for reads and `dest` for writes of `n` bytes, and the
/// two ranges must not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // Eight bytes per step, then the tail: far fewer steps under TCG.
    // SAFETY: the caller guarantees both ranges; `rep movs` copies forwards
    // (the direction flag is clear per the ABI).
    unsafe {
        asm!(
            "rep movsq",
            "mov rcx, {tail}",
            "rep movsb",
            tail = in(reg) n & 7,
            inout("rcx") n >> 3 => _,
            inout("rdi") dest => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags)
        )
    };
    dest
}

/// Copies `n` bytes from `src` to `dest`; the ranges may overlap.
///
/// # Safety
///
/// `src` must be valid for reads and `dest` for writes of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // `dest` is below `src` or past its end: a forward copy is safe.
        // SAFETY: forwarded from the caller; overlap is handled by direction.
        unsafe {
            asm!(
                "rep movsb",
                inout("rcx") n => _,
                inout("rdi") dest => _,
                inout("rsi") src => _,
                options(nostack, preserves_flags)
            )
        };
    } else {
        // `dest` overlaps the end of `src`: copy backwards from the last byte.
        // SAFETY: forwarded from the caller; `n > 0` here, so `n - 1` is in
        // both ranges; the direction flag is restored before returning.
        unsafe {
            asm!(
                "std",
                "rep movsb",
                "cld",
                inout("rcx") n => _,
                inout("rdi") dest.wrapping_add(n - 1) => _,
                inout("rsi") src.wrapping_add(n - 1) => _,
                options(nostack)
            )
        };
    }
    dest
}

/// Sets `n` bytes at `dest` to `c`.
///
/// # Safety
///
/// `dest` must be valid for writes of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range.
    unsafe {
        asm!(
            "rep stosb",
            inout("rcx") n => _,
            inout("rdi") dest => _,
            in("al") c as u8,
            options(nostack, preserves_flags)
        )
    };
    dest
}

/// Compares `n` bytes; negative, zero or positive like C's `memcmp`.
///
/// # Safety
///
/// Both pointers must be valid for reads of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: `i < n`, so both reads are in the caller's ranges; volatile
        // so LLVM keeps the loop instead of calling memcmp.
        let x = unsafe { a.wrapping_add(i).read_volatile() };
        // SAFETY: as above.
        let y = unsafe { b.wrapping_add(i).read_volatile() };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// Zero if the `n` bytes are equal, like C's `bcmp`.
///
/// # Safety
///
/// Both pointers must be valid for reads of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the same contract as `memcmp`.
    unsafe { memcmp(a, b, n) }
}

/// The prebuilt `core` was compiled with unwinding, so its (discarded)
/// unwind tables name this symbol; with `panic = "abort"` it is never called.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}
