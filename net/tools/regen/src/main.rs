//! Regenerates `net/src/generated/fjord_generated.rs` from
//! `net/schema/fjord.fbs` with the flatc that the `flatc` crate builds
//! (23.5.26, matching the `flatbuffers` runtime the workspace pins).
//! Run from the repository root:
//! `cargo run --manifest-path net/tools/regen/Cargo.toml`.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../..");
    let status = Command::new(flatc::flatc())
        .current_dir(root)
        .args(["--rust", "--gen-all", "-o", "net/src/generated", "net/schema/fjord.fbs"])
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("flatc failed: {s}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cannot run {}: {e}", flatc::flatc().display());
            ExitCode::FAILURE
        }
    }
}
