//! Feeds arbitrary bytes to the batch decoder: framing, validation and
//! record iteration must end in `Ok` or an error, never a panic, hang or
//! unbounded allocation. Run: `cd core/fuzz && cargo +nightly fuzz run batch_decode`.
#![no_main]

use fjord_core::batch::{self, Batch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
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
});
