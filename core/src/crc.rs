//! CRC-32C of a concatenation from the CRCs of its parts.
//!
//! Written here rather than taken from `crc32c::crc32c_combine`: that one is
//! zlib's old matrix method, about a thousand steps per bit of the length,
//! slower than reading a 100 KiB batch again with the CPU's CRC instruction.
//! This is zlib's newer method (`crc32_combine` since 1.2.12): multiply by
//! x^(8·len) modulo the polynomial, from a table of x^(2^k), at most 32 steps
//! per set bit of the length.

/// The CRC-32C polynomial, bit-reflected.
const POLY: u32 = 0x82F6_3B78;

/// `a · b` modulo the polynomial (reflected: x^0 is the top bit).
const fn mul_mod_p(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut p = 0;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                return p;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
}

/// `X2N[k]` is x^(2^k) modulo the polynomial.
const X2N: [u32; 32] = {
    let mut table = [0u32; 32];
    let mut p = 1u32 << 30; // x^1
    table[0] = p;
    let mut k = 1;
    while k < 32 {
        p = mul_mod_p(p, p);
        table[k] = p;
        k += 1;
    }
    table
};

/// x^(n · 2^k) modulo the polynomial.
fn x2n_mod_p(mut n: u64, mut k: usize) -> u32 {
    let mut p = 1u32 << 31; // x^0
    while n != 0 {
        if n & 1 != 0 {
            p = mul_mod_p(X2N[k & 31], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// The CRC-32C of `a ++ b`, given `crc_a` of `a`, `crc_b` of `b` and
/// `b`'s length: `crc32c_append(crc_a, b)` without reading `b`.
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: usize) -> u32 {
    // Shifting `crc_a` by 8·len_b zero bits is a multiplication by
    // x^(8·len_b) = x^(len_b · 2^3).
    mul_mod_p(x2n_mod_p(len_b as u64, 3), crc_a) ^ crc_b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combining_equals_reading_on() {
        let bytes: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for split in [0, 1, 7, 21, 4096, 65_537, 69_999, 70_000] {
            let (a, b) = bytes.split_at(split);
            let combined = crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len());
            assert_eq!(combined, crc32c::crc32c(&bytes), "split at {split}");
            assert_eq!(combined, crc32c::crc32c_append(crc32c::crc32c(a), b));
        }
    }
}
