//! Round trips through the builder, the validator and the record iterator,
//! and hostile bytes that must end in errors, never panics.

use fjord_core::batch::{self, Batch, BatchError, Compression, HEADER_LEN};
use fjord_core::{BatchBuilder, RecordHeader};
use proptest::prelude::*;

type Rec = (
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(Vec<u8>, Option<Vec<u8>>)>,
);

fn record() -> impl Strategy<Value = Rec> {
    (
        0i64..4_000_000_000_000,
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
        proptest::collection::vec(
            (
                proptest::collection::vec(any::<u8>(), 0..10),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10)),
            ),
            0..3,
        ),
    )
}

fn build(records: &[Rec]) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    for (ts, key, value, headers) in records {
        let headers: Vec<_> = headers
            .iter()
            .map(|(k, v)| RecordHeader {
                key: k,
                value: v.as_deref(),
            })
            .collect();
        let before = builder.encoded_len();
        let grows = builder.record_len(*ts, key.as_deref(), value.as_deref(), &headers);
        builder.push(*ts, key.as_deref(), value.as_deref(), &headers);
        assert_eq!(builder.encoded_len(), before + grows);
    }
    builder.build()
}

proptest! {
    #[test]
    fn built_batches_validate_and_iterate_back(records in proptest::collection::vec(record(), 1..20), base in 0i64..1 << 50, epoch: i32) {
        let mut bytes = build(&records);
        batch::set_base_offset(&mut bytes, base);
        batch::set_partition_leader_epoch(&mut bytes, epoch);
        let batch = Batch::validate(&bytes).expect("patched batch still valid");
        prop_assert_eq!(batch.len(), bytes.len());
        prop_assert_eq!(batch.base_offset(), base);
        prop_assert_eq!(batch.partition_leader_epoch(), epoch);
        prop_assert_eq!(batch.record_count() as usize, records.len());
        prop_assert_eq!(batch.last_offset(), base + records.len() as i64 - 1);
        prop_assert_eq!(batch.max_timestamp(), records.iter().map(|r| r.0).max().unwrap_or(-1));
        let decoded: Vec<_> = batch.records().expect("uncompressed").collect::<Result<_, _>>().expect("records decode");
        prop_assert_eq!(decoded.len(), records.len());
        for (i, (got, want)) in decoded.iter().zip(&records).enumerate() {
            prop_assert_eq!(got.offset, base + i as i64);
            prop_assert_eq!(got.timestamp, want.0);
            prop_assert_eq!(got.key, want.1.as_deref());
            prop_assert_eq!(got.value, want.2.as_deref());
            let headers: Vec<_> = want.3.iter().map(|(k, v)| (k.as_slice(), v.as_deref())).collect();
            prop_assert_eq!(&got.headers, &headers);
        }
    }

    #[test]
    fn any_flipped_byte_inside_the_crc_is_caught(records in proptest::collection::vec(record(), 1..5), at: prop::sample::Index, bit in 0u8..8) {
        let mut bytes = build(&records);
        let at = 21 + at.index(bytes.len() - 21);
        bytes[at] ^= 1 << bit;
        prop_assert!(Batch::validate(&bytes).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(batch) = Batch::parse(&bytes) {
            prop_assert!(batch.len() <= bytes.len());
            if let Ok(records) = batch.records() {
                for record in records.take(1000) {
                    let _ = record;
                }
            }
        }
        let _ = Batch::validate(&bytes);
        let _ = batch::batches(&bytes).count();
    }

    #[test]
    fn mutated_batches_never_panic(records in proptest::collection::vec(record(), 1..5), edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = build(&records);
        for (at, value) in edits {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        // Recompute the CRC so mutations reach the record decoder.
        if bytes.len() >= HEADER_LEN {
            let crc = crc32c::crc32c(&bytes[21..]);
            bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        }
        if let Ok(records) = Batch::validate(&bytes).and_then(|b| b.records()) {
            let _ = records.collect::<Vec<_>>();
        }
    }
}

#[test]
fn rejects_bad_framing() {
    let bytes = build(&[(1, None, Some(b"v".to_vec()), vec![])]);
    assert!(matches!(
        Batch::validate(&bytes[..10]),
        Err(BatchError::Truncated { .. })
    ));
    assert!(matches!(
        Batch::validate(&bytes[..bytes.len() - 1]),
        Err(BatchError::Truncated { .. })
    ));

    let mut huge = bytes.clone();
    huge[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
    assert!(matches!(
        Batch::validate(&huge),
        Err(BatchError::LengthOutOfRange(_))
    ));
    let mut negative = bytes.clone();
    negative[8..12].copy_from_slice(&(-5i32).to_be_bytes());
    assert!(matches!(
        Batch::validate(&negative),
        Err(BatchError::LengthOutOfRange(_))
    ));

    let mut magic = bytes.clone();
    magic[16] = 1;
    assert_eq!(Batch::validate(&magic), Err(BatchError::BadMagic(1)));

    let mut crc = bytes.clone();
    crc[17] ^= 0xff;
    assert!(matches!(
        Batch::validate(&crc),
        Err(BatchError::CrcMismatch { .. })
    ));
}

#[test]
fn rejects_record_counts_the_batch_cannot_hold() {
    let mut bytes = build(&[(1, None, Some(b"v".to_vec()), vec![])]);
    bytes[57..61].copy_from_slice(&1000i32.to_be_bytes());
    bytes[23..27].copy_from_slice(&1000i32.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    assert!(matches!(
        Batch::validate(&bytes),
        Err(BatchError::BadRecordCount { .. })
    ));
}

#[test]
fn compressed_batches_are_recognised_and_passed_through() {
    let mut builder = BatchBuilder::new();
    builder.push(7, Some(b"k"), Some(b"v"), &[]);
    // Any bytes stand in for a codec's output: the broker never looks inside.
    let bytes = builder.build_with(Compression::Zstd, |records| {
        records.iter().rev().copied().collect()
    });
    let batch = Batch::validate(&bytes).expect("compressed batch validates");
    assert_eq!(batch.compression(), Compression::Zstd);
    assert_eq!(
        batch.records().err(),
        Some(BatchError::Compressed(Compression::Zstd))
    );

    let mut unknown = bytes.clone();
    unknown[22] |= 0x07;
    let crc = crc32c::crc32c(&unknown[21..]);
    unknown[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(
        Batch::validate(&unknown),
        Err(BatchError::UnknownCompression(7))
    );
}

#[test]
fn batches_iterates_back_to_back_and_stops_at_garbage() {
    let one = build(&[(1, None, Some(b"a".to_vec()), vec![])]);
    let two = build(&[
        (2, None, Some(b"b".to_vec()), vec![]),
        (3, None, None, vec![]),
    ]);
    let mut log = [one.clone(), two.clone()].concat();
    log.extend_from_slice(&[0u8; 100]);
    let lens: Vec<_> = batch::batches(&log).map(|b| b.len()).collect();
    assert_eq!(lens, [one.len(), two.len()]);
}

#[test]
fn a_stamped_batch_validates_and_carries_its_producer() {
    let mut builder = fjord_core::BatchBuilder::new();
    builder.push(1, None, Some(b"v"), &[]);
    builder.push(2, None, Some(b"w"), &[]);
    let mut bytes = builder.build();
    fjord_core::batch::set_producer(&mut bytes, 42, 3, i32::MAX);
    let batch = fjord_core::Batch::validate(&bytes).expect("CRC recomputed");
    assert_eq!(
        (
            batch.producer_id(),
            batch.producer_epoch(),
            batch.base_sequence()
        ),
        (42, 3, i32::MAX)
    );
}
