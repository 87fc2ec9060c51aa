//! Feeds arbitrary bytes to the batch decoder: framing, validation and
//! record iteration must end in `Ok` or an error, never a panic, hang or
//! unbounded allocation. Run: `cd core/fuzz && cargo +nightly fuzz run batch_decode`.
#![no_main]

use fjord_core::batch::{self, Batch};
use libfuzzer_sys::fuzz_target;

/// CRC-32C covers bytes 21.. of a batch; the fuzzer's bytes rarely get it
/// right, so a second pass repairs it to let mutations reach the records.
const CRC_AT: usize = 17;
const CRC_FROM: usize = 21;

fn decode(bytes: &[u8]) {
    if let Ok(batch) = Batch::validate(bytes) {
        assert!(batch.len() <= bytes.len());
        if let Ok(records) = batch.records() {
            for record in records {
                let _ = record;
            }
        }
    }
    for batch in batch::batches(bytes) {
        assert!(batch.len() >= batch::HEADER_LEN);
    }
}

fuzz_target!(|bytes: &[u8]| {
    decode(bytes);
    if let Ok(len) = Batch::peek_len(bytes)
        && len <= bytes.len()
    {
        let mut repaired = bytes[..len].to_vec();
        let crc = crc32c::crc32c(&repaired[CRC_FROM..]);
        repaired[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        decode(&repaired);
    }
});
