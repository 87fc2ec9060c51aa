//! A compressed batch's records, decompressed: only where the broker must
//! look inside one (the first record at a timestamp, the log cleaner's
//! judgement), and compressed again once the cleaner removed some. Produce
//! and fetch pass batches on as the client compressed them. Every codec
//! reads through a bound, so a small batch that inflates without end
//! (hostile input) ends in an error, not an allocation the input chose.

use crate::batch::{Batch, Compression};
use std::io::Read;

/// Why a batch's records could not be decompressed.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    /// They would be larger than the caller's bound.
    #[error("the records decompress to more than {0} bytes")]
    TooLarge(usize),
    /// The codec refused them.
    #[error("{codec:?}: {message}")]
    Corrupt {
        /// The batch's codec.
        codec: Compression,
        /// What it said.
        message: String,
    },
}

/// The records section of `batch` decompressed (as it is, when the batch is
/// not compressed), at most `limit` bytes.
pub fn decompressed_records(batch: &Batch<'_>, limit: usize) -> Result<Vec<u8>, DecompressError> {
    let codec = batch.compression();
    let compressed = batch.records_bytes();
    let corrupt = |e: &dyn std::fmt::Display| DecompressError::Corrupt {
        codec,
        message: e.to_string(),
    };
    match codec {
        Compression::None if compressed.len() > limit => Err(DecompressError::TooLarge(limit)),
        Compression::None => Ok(compressed.to_vec()),
        Compression::Gzip => bounded(flate2::read::GzDecoder::new(compressed), limit, corrupt),
        Compression::Lz4 => bounded(
            lz4_flex::frame::FrameDecoder::new(compressed),
            limit,
            corrupt,
        ),
        // The decoder's window is bounded too, to a batch's most: a frame
        // asking for more is refused, not given the memory.
        Compression::Zstd => {
            let mut decoder =
                zstd::stream::read::Decoder::with_buffer(compressed).map_err(|e| corrupt(&e))?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| corrupt(&e))?;
            bounded(decoder, limit, corrupt)
        }
        Compression::Snappy => snappy(compressed, limit).map_err(|e| match e {
            Snappy::TooLarge => DecompressError::TooLarge(limit),
            Snappy::Corrupt(message) => corrupt(&message),
        }),
    }
}

/// `records` (a records section) compressed with `codec`, in the form Kafka's
/// own broker writes when it rewrites a batch: a gzip stream; LZ4 frames of
/// independent 64 KiB blocks; snappy in xerial framing (32 KiB blocks, what
/// Kafka's Java client writes and every client reads); a zstd frame at
/// Kafka's default level, with its content size.
pub fn compressed(codec: Compression, records: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    Ok(match codec {
        Compression::None => records.to_vec(),
        // Level 1, not Kafka's 6: the cleaner compresses on a shard that
        // serves produce and fetch. A megabyte of records takes zlib 3.4 ms
        // at level 1 against 8.8 at 6, for a third more bytes (BENCHMARKS).
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(records)?;
            e.finish()?
        }
        Compression::Lz4 => {
            // 64 KiB blocks, as Kafka's: lz4_flex would otherwise size
            // them by the first write.
            let frame =
                lz4_flex::frame::FrameInfo::new().block_size(lz4_flex::frame::BlockSize::Max64KB);
            let mut e = lz4_flex::frame::FrameEncoder::with_frame_info(frame, Vec::new());
            e.write_all(records)?;
            e.finish().map_err(std::io::Error::other)?
        }
        Compression::Snappy => {
            let mut out = XERIAL_HEADER.to_vec();
            let mut encoder = snap::raw::Encoder::new();
            for chunk in records.chunks(XERIAL_BLOCK_BYTES) {
                let block = encoder.compress_vec(chunk).map_err(std::io::Error::other)?;
                let len = u32::try_from(block.len()).map_err(std::io::Error::other)?;
                out.extend(len.to_be_bytes());
                out.extend(block);
            }
            out
        }
        Compression::Zstd => zstd::bulk::compress(records, ZSTD_LEVEL)?,
    })
}

/// Reads `reader` to its end, failing past `limit` bytes.
fn bounded(
    reader: impl Read,
    limit: usize,
    corrupt: impl Fn(&dyn std::fmt::Display) -> DecompressError,
) -> Result<Vec<u8>, DecompressError> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(&e))?;
    if out.len() > limit {
        return Err(DecompressError::TooLarge(limit));
    }
    Ok(out)
}

/// The start of the xerial framing Kafka's Java client writes around its
/// snappy blocks (magic, then version and compatible version, 4 bytes each).
const XERIAL_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// Kafka's default `compression.zstd.level`.
const ZSTD_LEVEL: i32 = 3;
/// The largest zstd window a frame may ask for: 64 MiB, a batch's most.
const ZSTD_WINDOW_LOG_MAX: u32 = 26;
/// Uncompressed bytes per xerial block (the xerial library's default).
const XERIAL_BLOCK_BYTES: usize = 32 * 1024;

enum Snappy {
    TooLarge,
    Corrupt(String),
}

/// Kafka's snappy: xerial framing (blocks each after its big-endian u32
/// length) or, from clients that write it so, one raw block. Each block's
/// length is read from its header and checked before it is decoded.
fn snappy(bytes: &[u8], limit: usize) -> Result<Vec<u8>, Snappy> {
    let Some(mut rest) = bytes
        .strip_prefix(&XERIAL_HEADER[..8])
        .and_then(|b| b.get(8..))
    else {
        return snappy_block(bytes, limit, Vec::new());
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, body) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| Snappy::Corrupt("a block's length cut short".into()))?;
        let len = u32::from_be_bytes(*len) as usize;
        let block = body
            .get(..len)
            .ok_or_else(|| Snappy::Corrupt("a block past the records' end".into()))?;
        out = snappy_block(block, limit, out)?;
        rest = &body[len..];
    }
    Ok(out)
}

/// Appends one raw snappy block to `out`.
fn snappy_block(block: &[u8], limit: usize, mut out: Vec<u8>) -> Result<Vec<u8>, Snappy> {
    let len = snap::raw::decompress_len(block).map_err(|e| Snappy::Corrupt(e.to_string()))?;
    if out.len() + len > limit {
        return Err(Snappy::TooLarge);
    }
    let at = out.len();
    out.resize(at + len, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[at..])
        .map_err(|e| Snappy::Corrupt(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{HEADER_LEN, OFFSET_ATTRIBUTES, OFFSET_BATCH_LENGTH};
    use crate::builder::BatchBuilder;
    use crate::record::Records;
    use std::io::Write;

    /// A batch of `n` records whose records section is `compress`ed and
    /// marked with `codec` (attribute bits 0–2).
    fn batch_of(n: usize, codec: i16, compress: impl Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
        let mut builder = BatchBuilder::with_capacity(64 * n);
        for i in 0..n {
            let value = format!("value {i}");
            builder.push(1_000 + i as i64, None, Some(value.as_bytes()), &[]);
        }
        let plain = builder.build();
        let mut bytes = plain[..HEADER_LEN].to_vec();
        bytes.extend(compress(&plain[HEADER_LEN..]));
        let attributes =
            i16::from_be_bytes([bytes[OFFSET_ATTRIBUTES], bytes[OFFSET_ATTRIBUTES + 1]]);
        bytes[OFFSET_ATTRIBUTES..OFFSET_ATTRIBUTES + 2]
            .copy_from_slice(&((attributes & !7) | codec).to_be_bytes());
        let length = (bytes.len() - OFFSET_BATCH_LENGTH - 4) as i32;
        bytes[OFFSET_BATCH_LENGTH..OFFSET_BATCH_LENGTH + 4].copy_from_slice(&length.to_be_bytes());
        bytes
    }

    /// Compresses a records section.
    type Codec = fn(&[u8]) -> Vec<u8>;

    fn raw_snappy(b: &[u8]) -> Vec<u8> {
        snap::raw::Encoder::new().compress_vec(b).unwrap()
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn xerial_snappy(b: &[u8]) -> Vec<u8> {
        let mut out = XERIAL_HEADER.to_vec();
        for chunk in b.chunks(100) {
            let block = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
            out.extend((block.len() as u32).to_be_bytes());
            out.extend(block);
        }
        out
    }

    fn lz4(b: &[u8]) -> Vec<u8> {
        let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    /// Each codec's records come back whole, read by `Records::over`.
    #[test]
    fn every_codec_decompresses_to_the_records() {
        let codecs: [(i16, Codec); 4] = [(1, gzip), (2, xerial_snappy), (2, raw_snappy), (3, lz4)];
        for (codec, compress) in codecs {
            let bytes = batch_of(50, codec, compress);
            let batch = Batch::parse(&bytes).unwrap();
            let records = decompressed_records(&batch, 1 << 20).unwrap();
            let values: Vec<Vec<u8>> = Records::over(batch, &records)
                .map(|r| r.unwrap().value.unwrap().to_vec())
                .collect();
            assert_eq!(values.len(), 50, "codec {codec}");
            assert_eq!(values[49], b"value 49", "codec {codec}");
        }
    }

    /// A small batch that inflates past the bound is refused, in each
    /// codec, without allocating what it claims.
    #[test]
    fn a_bomb_stops_at_the_bound() {
        let zeros = vec![0u8; 4 << 20];
        let zstd: Codec = |b| compressed(Compression::Zstd, b).unwrap();
        for (codec, compress) in [
            (1, gzip as fn(&[u8]) -> Vec<u8>),
            (2, xerial_snappy),
            (3, lz4),
            (4, zstd),
        ] {
            let bytes = batch_of(1, codec, |_| compress(&zeros));
            let batch = Batch::parse(&bytes).unwrap();
            assert!(
                matches!(
                    decompressed_records(&batch, 1 << 20),
                    Err(DecompressError::TooLarge(_))
                ),
                "codec {codec}"
            );
        }
    }

    /// What `compressed` writes, every codec, decompresses to the records.
    #[test]
    fn every_codec_compresses_what_it_decompresses() {
        let plain = batch_of(2_000, 0, <[u8]>::to_vec);
        let section = &plain[HEADER_LEN..];
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let bytes = batch_of(2_000, codec.attribute_bits(), |records| {
                compressed(codec, records).unwrap()
            });
            let batch = Batch::parse(&bytes).unwrap();
            assert!(batch.records_bytes().len() < section.len(), "{codec:?}");
            let records = batch.records_bytes();
            match codec {
                // The frame descriptor: independent blocks, no checksums or
                // size (FLG 0x60), 64 KiB blocks (BD 0x40), as Kafka's.
                Compression::Lz4 => assert_eq!(records[4..6], [0x60, 0x40]),
                Compression::Zstd => assert_eq!(
                    zstd::zstd_safe::get_frame_content_size(records).ok(),
                    Some(Some(section.len() as u64)),
                    "the content size is in the frame: every client sizes its buffer by it"
                ),
                _ => {}
            }
            assert_eq!(
                decompressed_records(&batch, 1 << 20).unwrap(),
                section,
                "{codec:?}"
            );
        }
    }

    #[test]
    fn garbage_is_refused() {
        for codec in 1..=4 {
            let bytes = batch_of(1, codec, |_| {
                b"\x82SNAPPY\x00not a codec's bytes at all".to_vec()
            });
            let batch = Batch::parse(&bytes).unwrap();
            assert!(
                decompressed_records(&batch, 1 << 20).is_err(),
                "codec {codec}"
            );
        }
    }
}
