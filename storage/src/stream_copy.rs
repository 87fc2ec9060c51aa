//! A copy that goes around the CPU caches, for memory nothing reads soon.
//!
//! The staging area is written once per batch and read back only after a
//! crash, and its ring (128 MiB per shard by default) is cold; so is a log's
//! write buffer, read next by the device (the batch cache keeps written
//! buffers, so new ones cycle through the whole DMA pool; BENCHMARKS.md,
//! "The request's copies: into the cold buffer around the cache"). A plain copy
//! first reads every destination line into the cache (read-for-ownership)
//! and then evicts lines the shard is working on to make room. Streaming
//! (non-temporal) stores write whole lines through write-combining buffers
//! instead: 1.1× as fast as `memcpy` for 16 KiB batches here and 1.8–1.9×
//! for 256 KiB and 1 MiB (BENCHMARKS.md, "The staging copy streams"),
//! slower at 4 KiB and below, where the closing fence's wait for the
//! buffers to drain costs more than the stores save.
//!
//! Written by hand: std's `nontemporal_store` is an unstable intrinsic and
//! no maintained crate offers a streaming copy; the loop below is SSE2,
//! which every x86-64 has, so there is nothing to detect at run time.

/// Copies shorter than this take a plain copy.
pub const STREAMING_MIN: usize = 16 << 10;

/// [`copy`] into a slice of the same length.
pub fn copy_into(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "a copy between equal lengths");
    // SAFETY: `dst` is `src.len()` writable bytes, and a `&mut` never
    // overlaps a `&`.
    unsafe { copy(dst.as_mut_ptr(), src) }
}

/// Copies `src` to `dst`, with streaming stores where `src` is at least
/// [`STREAMING_MIN`] long, and fenced: once it returns, the bytes are
/// ordered before any later store of this thread, as a plain copy's are.
///
/// # Safety
///
/// `dst` is valid for `src.len()` bytes of writes and does not overlap
/// `src`.
pub unsafe fn copy(dst: *mut u8, src: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    if src.len() >= STREAMING_MIN {
        // SAFETY: the caller's promise, passed on.
        unsafe { stream(dst, src) };
        return;
    }
    // SAFETY: the caller's promise.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
}

#[cfg(target_arch = "x86_64")]
unsafe fn stream(dst: *mut u8, src: &[u8]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    const LANE: usize = 16;
    let len = src.len();
    // Streaming stores need 16-byte aligned destinations: the bytes before
    // the first aligned one go the plain way.
    let head = dst.align_offset(LANE).min(len);
    let body = (len - head) / LANE * LANE;
    // SAFETY: every access below is inside `dst[..len]` and `src[..len]`
    // (`head + body <= len`), which the caller vouches for; each stream
    // target is 16-byte aligned (`dst + head` is, and steps by 16).
    unsafe {
        let src = src.as_ptr();
        std::ptr::copy_nonoverlapping(src, dst, head);
        let mut at = head;
        while at < head + body {
            let lane = _mm_loadu_si128(src.add(at).cast::<__m128i>());
            _mm_stream_si128(dst.add(at).cast::<__m128i>(), lane);
            at += LANE;
        }
        std::ptr::copy_nonoverlapping(src.add(at), dst.add(at), len - at);
        // Streaming stores are weakly ordered: without the fence a later
        // plain store (the entry's header, written last on purpose) could
        // become visible before them.
        _mm_sfence();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_byte_at_every_alignment_and_length() {
        let src: Vec<u8> = (0..STREAMING_MIN * 2 + 100)
            .map(|i| (i * 7 + 3) as u8)
            .collect();
        for len in [
            0,
            1,
            15,
            4096,
            STREAMING_MIN - 1,
            STREAMING_MIN,
            STREAMING_MIN + 17,
            src.len() - 40,
        ] {
            for offset in [0, 1, 8, 15, 16, 33] {
                let mut dst = vec![0xAAu8; len + 64];
                // SAFETY: `dst` holds `offset + len` bytes and is separate.
                unsafe { copy(dst.as_mut_ptr().add(offset), &src[..len]) };
                assert_eq!(
                    &dst[offset..offset + len],
                    &src[..len],
                    "len {len} offset {offset}"
                );
                assert!(
                    dst[..offset].iter().all(|&b| b == 0xAA),
                    "before, len {len} offset {offset}"
                );
                assert!(
                    dst[offset + len..].iter().all(|&b| b == 0xAA),
                    "after, len {len} offset {offset}"
                );
            }
        }
    }
}
