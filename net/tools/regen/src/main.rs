//! Regenerates `net/src/generated/fjord_generated.rs` from
//! `net/schema/fjord.fbs` with the flatc that the `flatc` crate builds
//! (23.5.26, matching the `flatbuffers` runtime the workspace pins).
//! Run from the repository root:
//! `cargo run --manifest-path net/tools/regen/Cargo.toml`.
//!
//! The object API (`--gen-object-api`) gives owned `…T` types for the
//! control-plane messages. flatc marks them `#[non_exhaustive]`, which would
//! forbid struct literals in the other crates of this workspace; the schema
//! and every user of it are versioned together, so the mark is removed.

use std::process::{Command, ExitCode};

const OUTPUT: &str = "net/src/generated/fjord_generated.rs";

fn main() -> ExitCode {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../..");
    let status = Command::new(flatc::flatc())
        .current_dir(root)
        .args([
            "--rust",
            "--gen-all",
            "--gen-object-api",
            "-o",
            "net/src/generated",
            "net/schema/fjord.fbs",
        ])
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("flatc failed: {s}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("cannot run {}: {e}", flatc::flatc().display());
            return ExitCode::FAILURE;
        }
    }
    let path = std::path::Path::new(root).join(OUTPUT);
    let stripped = match std::fs::read_to_string(&path) {
        Ok(code) => code
            .lines()
            .filter(|line| line.trim() != "#[non_exhaustive]")
            .map(|line| format!("{line}\n"))
            .collect::<String>(),
        Err(e) => {
            eprintln!("cannot read {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::write(&path, stripped) {
        eprintln!("cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
