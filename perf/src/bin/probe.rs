//! `probe`: measures this machine's I/O ceilings with raw io_uring, then
//! (unless `--limits-only`) Fjord's partition log under the same loads, and
//! prints each Fjord figure as a fraction of its ceiling from the same run
//! (the write limit measured right before and right after it).

use clap::Parser;
use fjord_core::FsyncPolicy;
use fjord_perf::aligned::Pages;
use fjord_perf::append::{self, Scenario};
use fjord_perf::limits;
use std::path::PathBuf;

// jemalloc, keeping freed pages: see fjord_storage::alloc.
fjord_storage::global_allocator!();

/// The memory the "spread" write limit writes from: what the log writes
/// from in its scenarios (its batch cache keeps written buffers).
const SPREAD_BYTES: usize = fjord_perf::append::CACHE_BYTES;

#[derive(Parser)]
#[command(about = "Probe the machine's I/O limits and Fjord's log against them")]
struct Args {
    /// Directory for probe files, on the disk to measure.
    #[arg(long, default_value = "target/probe")]
    dir: PathBuf,
    /// Bytes written by each throughput run.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Queue depth of the raw O_DIRECT write probe.
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// fdatasync samples.
    #[arg(long, default_value_t = 2000)]
    syncs: u64,
    /// Only the raw probes, not Fjord's log.
    #[arg(long)]
    limits_only: bool,
    /// Run only the log scenario with this index (0-based), e.g. to profile it.
    #[arg(long)]
    only: Option<usize>,
    /// Write the figures as JSON here.
    #[arg(long, default_value = "target/probe.json")]
    json: PathBuf,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    // From huge pages, as Fjord's shards write: the machine's best (see
    // `Pages`).
    let huge = (1 << 20, args.depth, Pages::Huge);
    let write = limits::direct_write(&args.dir.join("probe-write"), huge, args.bytes)?;
    // The same writes, each over the last block of the one before: what
    // the device makes of overlapping requests, which Fjord's log never
    // has in flight (it holds the shared block back, see the storage
    // crate's `pipeline`).
    let write_overlapping =
        limits::direct_write_overlapping(&args.dir.join("probe-write"), huge, args.bytes)?;
    // The same writes from as much memory as the log's scenarios write
    // from (its batch cache keeps written buffers): from 4 KiB pages the
    // device here was slower the more pages were under its requests.
    let spread = |pages| {
        limits::direct_write_spread(
            &args.dir.join("probe-write"),
            (1 << 20, args.depth, pages),
            args.bytes,
            SPREAD_BYTES,
        )
    };
    let write_spread = spread(Pages::Huge)?;
    // The same from shared memory, as a log writing straight from its
    // staging area would, as tmpfs gives it and collapsed into huge pages:
    // what dropping the staging copy would cost the device (BENCHMARKS.md,
    // "Writing from the staging area").
    let write_shared = spread(Pages::Shared)?;
    let write_shared_collapsed = spread(Pages::SharedCollapsed)?;
    // The same writes from 4 KiB pages: what software that does not ask
    // for huge pages gets.
    let small = (1 << 20, args.depth, Pages::Small);
    let write_small = limits::direct_write(&args.dir.join("probe-write"), small, args.bytes)?;
    // One 4 MiB write at a time: what a log without a pipeline would get.
    let write_serial = limits::direct_write(
        &args.dir.join("probe-write"),
        (4 << 20, 1, Pages::Huge),
        args.bytes,
    )?;
    // Fjord's cold fetch reads one window of about `max_bytes` at a time.
    let read_serial = limits::direct_read(&args.dir.join("probe-read"), 1 << 20, 1, args.bytes)?;
    let sync = limits::fdatasync_latency(&args.dir.join("probe-sync"), args.syncs)?;
    let write_latency = limits::direct_write_latency(
        &args.dir.join("probe-write-latency"),
        64 << 10,
        args.syncs,
        None,
    )?;
    // As `bench produce --rate 1M` writes one partition: 20 KiB every 400 us
    // (50 MB/s) for 8 s. Stalls of the disk show here as they do in acks.
    let paced = limits::direct_write_latency(
        &args.dir.join("probe-write-paced"),
        20 << 10,
        20_000,
        Some(std::time::Duration::from_micros(400)),
    )?;
    let tcp = limits::loopback_tcp(256 * 1024, args.bytes.max(1 << 30))?;
    println!("machine limits (raw io_uring)");
    println!(
        "  {:<44} {:>10.3} GB/s",
        format!("O_DIRECT sequential write, 1 MiB x QD{}", args.depth),
        write.gb_per_sec()
    );
    println!(
        "  {:<44} {:>10.3} GB/s",
        "  the same, from 4 KiB pages instead of huge",
        write_small.gb_per_sec()
    );
    println!(
        "  {:<44} {:>10.3} GB/s",
        format!("  the same, each over the one before's last 4 KiB"),
        write_overlapping.gb_per_sec()
    );
    println!(
        "  {:<44} {:>10.3} GB/s",
        format!(
            "  the same, from {} MiB of buffers in turn",
            SPREAD_BYTES >> 20
        ),
        write_spread.gb_per_sec()
    );
    println!(
        "  {:<44} {:>10.3} GB/s",
        "  the same, from shared memory (/dev/shm)",
        write_shared.gb_per_sec()
    );
    println!(
        "  {:<44} {:>10.3} GB/s",
        "  the same, shared, collapsed into huge pages",
        write_shared_collapsed.gb_per_sec()
    );
    println!(
        "  {:<44} {:>10.3} GB/s",
        "O_DIRECT sequential write, 4 MiB x QD1",
        write_serial.gb_per_sec()
    );
    println!(
        "  {:<44} {:>10.3} GB/s",
        "O_DIRECT sequential read, 1 MiB x QD1",
        read_serial.gb_per_sec()
    );
    println!(
        "  {:<44} p50 {:.0} us  p99 {:.0} us  p99.9 {:.0} us  max {:.0} us",
        "fdatasync after 4 KiB write", sync.p50_us, sync.p99_us, sync.p999_us, sync.max_us
    );
    println!(
        "  {:<44} p50 {:.0} us  p99 {:.0} us  p99.9 {:.0} us  max {:.0} us",
        "O_DIRECT 64 KiB append, QD1",
        write_latency.p50_us,
        write_latency.p99_us,
        write_latency.p999_us,
        write_latency.max_us
    );
    println!(
        "  {:<44} p50 {:.0} us  p99 {:.0} us  p99.9 {:.0} us  max {:.0} us",
        "O_DIRECT 20 KiB append every 400 us, 8 s",
        paced.p50_us,
        paced.p99_us,
        paced.p999_us,
        paced.max_us
    );
    println!(
        "  {:<44} {:>10.3} GB/s",
        "loopback TCP, one connection",
        tcp.gb_per_sec()
    );

    let mut report = serde_json::json!({
        "limits": { "direct_write": write, "direct_write_gb_per_sec": write.gb_per_sec(), "direct_write_overlapping": write_overlapping, "direct_write_overlapping_gb_per_sec": write_overlapping.gb_per_sec(), "direct_write_spread": write_spread, "direct_write_spread_gb_per_sec": write_spread.gb_per_sec(), "direct_write_shared": write_shared, "direct_write_shared_gb_per_sec": write_shared.gb_per_sec(), "direct_write_shared_collapsed": write_shared_collapsed, "direct_write_shared_collapsed_gb_per_sec": write_shared_collapsed.gb_per_sec(), "direct_write_small_pages": write_small, "direct_write_small_pages_gb_per_sec": write_small.gb_per_sec(), "direct_write_serial": write_serial, "direct_write_serial_gb_per_sec": write_serial.gb_per_sec(), "direct_read_serial": read_serial, "direct_read_serial_gb_per_sec": read_serial.gb_per_sec(), "fdatasync": sync, "direct_write_latency_64k": write_latency, "direct_write_latency_paced_20k": paced, "loopback_tcp": tcp, "loopback_tcp_gb_per_sec": tcp.gb_per_sec() },
    });
    if !args.limits_only {
        let scenarios = [
            Scenario {
                batch_bytes: 1 << 20,
                appenders: 1,
                in_flight: 32,
                fsync: FsyncPolicy::Never,
                total_bytes: args.bytes,
            },
            Scenario {
                batch_bytes: 16 << 10,
                appenders: 1,
                in_flight: 64,
                fsync: FsyncPolicy::Never,
                total_bytes: args.bytes / 2,
            },
            Scenario {
                batch_bytes: 1 << 10,
                appenders: 1,
                in_flight: 256,
                fsync: FsyncPolicy::Never,
                total_bytes: args.bytes / 8,
            },
            Scenario {
                batch_bytes: 16 << 10,
                appenders: 8,
                in_flight: 1,
                fsync: FsyncPolicy::Always,
                total_bytes: args.bytes / 4,
            },
            Scenario {
                batch_bytes: 16 << 10,
                appenders: 32,
                in_flight: 1,
                fsync: FsyncPolicy::Always,
                total_bytes: args.bytes / 4,
            },
            Scenario {
                batch_bytes: 1 << 20,
                appenders: 8,
                in_flight: 1,
                fsync: FsyncPolicy::Always,
                total_bytes: args.bytes,
            },
        ];
        println!("fjord partition log (one shard)");
        let mut outcomes = Vec::new();
        for (_, scenario) in scenarios
            .into_iter()
            .enumerate()
            .filter(|(i, _)| args.only.is_none_or(|only| only == *i))
        {
            // A shared machine's disk changes speed from one minute to the
            // next: the write limit a figure is a fraction of is measured
            // right before and right after it, with as many bytes.
            let bytes = scenario.total_bytes.max(256 << 20);
            let path = args.dir.join("probe-write");
            let limit_around = || limits::direct_write(&path, huge, bytes);
            let small_around = || limits::direct_write(&path, small, bytes);
            let (before, small_before) = (limit_around()?, small_around()?);
            let outcome = append::run(&args.dir, scenario, None)?;
            let (small_after, after) = (small_around()?, limit_around()?);
            let limit = before.merge(after);
            let small_limit = small_before.merge(small_after);
            let label = format!(
                "{} KiB batches, {} appender(s) x {} in flight, fsync={}",
                scenario.batch_bytes >> 10,
                scenario.appenders,
                scenario.in_flight,
                scenario.fsync
            );
            println!(
                "  {label:<62} {:>7.3} GB/s = {:>5.1} % of write limit around it ({:.3} GB/s before, {:.3} after), {:>5.1} % of it from 4 KiB pages ({:.3}, {:.3}); ack p50 {:.0} us p99 {:.0} us; {} appends / {} flushes / {} syncs / {} head writes",
                outcome.rate.gb_per_sec(),
                100.0 * outcome.rate.bytes_per_sec() / limit.bytes_per_sec(),
                before.gb_per_sec(),
                after.gb_per_sec(),
                100.0 * outcome.rate.bytes_per_sec() / small_limit.bytes_per_sec(),
                small_before.gb_per_sec(),
                small_after.gb_per_sec(),
                outcome.latency.p50_us,
                outcome.latency.p99_us,
                outcome.appends,
                outcome.flushes,
                outcome.syncs,
                outcome.head_writes
            );
            outcomes.push(serde_json::json!({
                "scenario": scenario,
                "outcome": outcome,
                "gb_per_sec": outcome.rate.gb_per_sec(),
                "write_limit_before": before,
                "write_limit_after": after,
                "fraction_of_write_limit": outcome.rate.bytes_per_sec() / limit.bytes_per_sec(),
                "write_small_pages_limit_before": small_before,
                "write_small_pages_limit_after": small_after,
                "fraction_of_write_small_pages_limit": outcome.rate.bytes_per_sec() / small_limit.bytes_per_sec(),
                "fraction_of_serial_write": outcome.rate.bytes_per_sec() / write_serial.bytes_per_sec(),
            }));
        }
        report["log_append"] = serde_json::Value::Array(outcomes);
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    println!("figures written to {}", args.json.display());
    Ok(())
}
