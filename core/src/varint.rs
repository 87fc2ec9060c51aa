//! Zig-zag variable-length integers as Kafka's record format uses them.
//!
//! Hand-written rather than taken from a crate: the decoder must report a
//! truncated or over-long encoding as an error at a precise position (input is
//! hostile), and it is a dozen lines.

/// Why a varint could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarintError {
    /// The input ended inside the varint.
    Truncated,
    /// More continuation bytes than the type can hold.
    Overlong,
}

/// Decodes a zig-zag varlong from the start of `input`; returns it and the
/// number of bytes it used.
pub fn read_varlong(input: &[u8]) -> Result<(i64, usize), VarintError> {
    let mut raw: u64 = 0;
    for (i, &byte) in input.iter().enumerate() {
        // A u64 fits in ten 7-bit groups; the tenth may only carry one bit.
        if i == 9 && byte > 1 {
            return Err(VarintError::Overlong);
        }
        raw |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let value = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
            return Ok((value, i + 1));
        }
    }
    Err(VarintError::Truncated)
}

/// Decodes a zig-zag varint (32-bit) from the start of `input`.
pub fn read_varint(input: &[u8]) -> Result<(i32, usize), VarintError> {
    let (value, used) = read_varlong(&input[..input.len().min(5)]).map_err(|e| {
        if input.len() > 5 && e == VarintError::Truncated {
            VarintError::Overlong
        } else {
            e
        }
    })?;
    let value = i32::try_from(value).map_err(|_| VarintError::Overlong)?;
    Ok((value, used))
}

/// Appends `value` as a zig-zag varlong.
pub fn write_varlong(out: &mut Vec<u8>, value: i64) {
    let mut raw = ((value << 1) ^ (value >> 63)) as u64;
    while raw >= 0x80 {
        out.push((raw as u8) | 0x80);
        raw >>= 7;
    }
    out.push(raw as u8);
}

/// Number of bytes `write_varlong(value)` appends.
pub fn varlong_len(value: i64) -> usize {
    let raw = ((value << 1) ^ (value >> 63)) as u64;
    let bits = 64 - raw.leading_zeros() as usize;
    bits.max(1).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varlong_round_trips(value: i64) {
            let mut out = Vec::new();
            write_varlong(&mut out, value);
            prop_assert_eq!(out.len(), varlong_len(value));
            prop_assert_eq!(read_varlong(&out), Ok((value, out.len())));
        }

        #[test]
        fn varint_round_trips(value: i32) {
            let mut out = Vec::new();
            write_varlong(&mut out, i64::from(value));
            prop_assert_eq!(read_varint(&out), Ok((value, out.len())));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>) {
            let _ = read_varlong(&bytes);
            let _ = read_varint(&bytes);
        }
    }

    #[test]
    fn known_encodings() {
        // Values from Kafka's ByteUtilsTest.
        let mut out = Vec::new();
        write_varlong(&mut out, -1);
        assert_eq!(out, [0x01]);
        out.clear();
        write_varlong(&mut out, 300);
        assert_eq!(out, [0xd8, 0x04]);
    }

    #[test]
    fn rejects_truncated_and_overlong() {
        assert_eq!(read_varlong(&[0x80, 0x80]), Err(VarintError::Truncated));
        assert_eq!(read_varlong(&[0xff; 11]), Err(VarintError::Overlong));
        assert_eq!(
            read_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(VarintError::Overlong)
        );
        // Five bytes that encode a value wider than 32 bits.
        assert_eq!(
            read_varint(&[0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(VarintError::Overlong)
        );
    }
}
