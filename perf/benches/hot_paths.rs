//! Criterion benchmarks of Fjord's hot paths: CRC-32C, batch validation,
//! log append (1 KiB / 16 KiB / 1 MiB batches, fsync never and always), the
//! staging area's copy (stage and release one batch), tail reads from the
//! batch cache and cold reads from disk, frames sent to a loopback socket
//! through a copying buffer against one `sendmsg` per flush, and the log
//! cleaner's decompression and compression of a batch in each codec.
//!
//! Run: `cargo bench -p fjord-perf`. Log benches write under `target/bench`.

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fjord_core::{Batch, FsyncPolicy};
use fjord_perf::append::{self, Scenario};
use fjord_storage::{BatchCache, DataDir, Log, LogConfig};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

// jemalloc, keeping freed pages: see fjord_storage::alloc.
fjord_storage::global_allocator!();

fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench")
}

fn crc32c(c: &mut Criterion) {
    let mut group = c.benchmark_group("crc32c");
    for size in [1 << 10, 16 << 10, 1 << 20] {
        let data = vec![0xa5u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, data| {
            b.iter(|| crc32c::crc32c(data))
        });
    }
    group.finish();
}

fn validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_validate");
    for size in [1 << 10, 16 << 10, 1 << 20] {
        let batch = append::batch_of(size);
        group.throughput(Throughput::Bytes(batch.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &batch, |b, batch| {
            b.iter(|| Batch::validate(batch).map(|b| b.record_count()))
        });
    }
    group.finish();
}

/// What staging adds to each acks=1 append: the copy into shared memory
/// (its entry's CRC-32C combined from the batch's own, as the log stages
/// it), then the release once written, a few milliseconds later.
fn staging(c: &mut Criterion) {
    const STAGED_LIVE: usize = 16 << 20;
    use fjord_storage::staging::{self, Staging, StagingFile};
    let mut group = c.benchmark_group("staging_stage");
    let data_dir = bench_dir().join("staging-data");
    std::fs::create_dir_all(&data_dir).expect("bench dir");
    let shm = PathBuf::from(staging::DEFAULT_DIR);
    let file = StagingFile::open(&shm, &data_dir, 1, 0, 2, 64 << 20).expect("staging file");
    let path = file.path().to_path_buf();
    let area = Staging::new(file, data_dir);
    for size in [1 << 10, 16 << 10, 256 << 10, 1 << 20] {
        let batch = append::batch_of(size);
        let crc = fjord_core::Batch::validate(&batch).expect("a batch").crc();
        group.throughput(Throughput::Bytes(batch.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &batch, |b, batch| {
            // Under load a batch stays staged until its write completes, so
            // the ring runs through all its (cold) memory; keep 16 MiB live.
            let mut live = VecDeque::new();
            b.iter(|| {
                let ticket = area
                    .stage(
                        "topics/t.1/0",
                        0,
                        0,
                        staging::Pieces::whole(batch),
                        Some(crc),
                    )
                    .expect("room");
                live.push_back(ticket);
                if live.len() * batch.len() > STAGED_LIVE {
                    area.release(live.pop_front().expect("a ticket"));
                }
            });
            live.into_iter().for_each(|ticket| area.release(ticket));
        });
    }
    group.finish();
    drop(area);
    std::fs::remove_file(path).expect("remove staging file");
}

fn log_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_append");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for fsync in [FsyncPolicy::Never, FsyncPolicy::Always] {
        for size in [1 << 10, 16 << 10, 1 << 20] {
            // Always: 8 appenders, each waiting for its ack (group commit's
            // case); never: one appender pipelining 64 appends.
            let (appenders, in_flight) = if fsync == FsyncPolicy::Always {
                (8, 1)
            } else {
                (1, 64)
            };
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_function(BenchmarkId::new(fsync.to_string(), size), |b| {
                b.iter_custom(|iters| {
                    let scenario = Scenario {
                        batch_bytes: size,
                        appenders,
                        in_flight,
                        fsync,
                        total_bytes: iters * size as u64,
                    };
                    let outcome =
                        append::run(&bench_dir(), scenario, None).expect("append scenario");
                    Duration::from_secs_f64(
                        outcome.rate.seconds * iters as f64 / outcome.appends.max(1) as f64,
                    )
                })
            });
        }
    }
    group.finish();
}

/// Reads `reads` times 1 MiB from a log of 64 MiB in 16 KiB batches, from the
/// tail (cache) or from the start (disk, cache disabled).
fn read_scenario(from_cache: bool, reads: u64) -> Duration {
    let data = DataDir::create(bench_dir()).expect("bench dir");
    fjord_storage::shard::executor(
        "bench-read",
        glommio::Placement::Unbound,
        fjord_storage::shard::IO_MEMORY_BYTES,
    )
    .spawn(move || async move {
        data.prime().await.expect("prime");
        let dir = data.path().join(if from_cache {
            "read-cache"
        } else {
            "read-disk"
        });
        let _ = std::fs::remove_dir_all(&dir);
        let cache = BatchCache::new(if from_cache { 256 << 20 } else { 0 });
        let log = Rc::new(
            Log::open(&dir, LogConfig::default(), cache)
                .await
                .expect("open"),
        );
        let batch = append::batch_of(16 << 10);
        for _ in 0..(64 << 20) / batch.len() {
            log.append(&batch).await.expect("append");
        }
        log.flush().await.expect("flush");
        let end = log.offset_written();
        let per_read =
            (1 << 20) / batch.len() as u64 * (end / ((64 << 20) / batch.len() as u64)).max(1);
        let start = Instant::now();
        for i in 0..reads {
            let offset = if from_cache {
                end.saturating_sub(per_read)
            } else {
                (i * per_read) % end.saturating_sub(per_read).max(1)
            };
            let read = log.read(offset, 1 << 20).await.expect("read");
            assert!(read.len_bytes() > 0);
        }
        let elapsed = start.elapsed();
        log.close().await.expect("close");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        elapsed
    })
    .expect("executor")
    .join()
    .expect("join")
}

fn log_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_read_1MiB");
    group.sample_size(10).throughput(Throughput::Bytes(1 << 20));
    group.bench_function("tail_from_cache", |b| {
        b.iter_custom(|iters| read_scenario(true, iters))
    });
    group.bench_function("cold_from_disk", |b| {
        b.iter_custom(|iters| read_scenario(false, iters))
    });
    group.finish();
}

/// A frame as a broker's answer or a client's request is: a small head and
/// a payload of batches.
struct Frame {
    head: Rc<Vec<u8>>,
    payload: Rc<Vec<u8>>,
}

impl fjord_net::gather::Frame for Frame {
    fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        [self.head.as_slice(), self.payload.as_slice()].into_iter()
    }
}

/// The sending thread's CPU time for `work`: what a writer costs the
/// thread (its copies and system calls), without the time a reader on the
/// other core takes to drain the socket, which the wall clock would add.
fn thread_cpu(work: impl FnOnce()) -> Duration {
    let now = || {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a valid timespec for the call to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    };
    let start = now();
    work();
    now() - start
}

/// Sends frames of a 64-byte head and a payload of none (an ack), 1 or 16
/// KiB, four to a flush (pipelined answers), to a loopback TCP socket a thread drains:
/// through futures' `BufWriter` (64 KiB, as the broker and client had),
/// which copies each piece under its size, and through `GatherWriter`;
/// the sending thread's CPU time per flush.
fn frame_send(c: &mut Criterion) {
    use fjord_net::gather::GatherWriter;
    use futures::executor::block_on;
    use futures::io::{AllowStdIo, AsyncWriteExt, BufWriter};
    use std::io::Read;
    use std::os::fd::AsRawFd;
    const FRAMES_PER_FLUSH: usize = 4;
    // A Unix socket: the same copies and system calls on the sending side
    // without loopback TCP's receive path, which runs on the sender's
    // thread and varied its CPU time by half from run to run here.
    let drained = || {
        let (stream, mut reader) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        let draining = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            while reader.read(&mut buf).is_ok_and(|n| n > 0) {}
        });
        (stream, draining)
    };
    let (buffered_stream, buffered_drain) = drained();
    let mut buffered = BufWriter::with_capacity(64 << 10, AllowStdIo::new(buffered_stream));
    let (gather_stream, gather_drain) = drained();
    let fd = gather_stream.as_raw_fd();
    let mut gather = GatherWriter::new(fd, AllowStdIo::new(gather_stream));
    let mut group = c.benchmark_group("frame_send");
    for size in [0, 1 << 10, 16 << 10] {
        let head = Rc::new(vec![7u8; 64]);
        let payload = Rc::new(vec![0xa5u8; size]);
        group.throughput(Throughput::Bytes(((64 + size) * FRAMES_PER_FLUSH) as u64));
        group.bench_function(BenchmarkId::new("buffered", size), |b| {
            b.iter_custom(|iterations| {
                thread_cpu(|| {
                    for _ in 0..iterations {
                        block_on(async {
                            for _ in 0..FRAMES_PER_FLUSH {
                                buffered.write_all(head.as_slice()).await.expect("write");
                                buffered.write_all(payload.as_slice()).await.expect("write");
                            }
                            buffered.flush().await.expect("flush");
                        })
                    }
                })
            })
        });
        group.bench_function(BenchmarkId::new("gather", size), |b| {
            b.iter_custom(|iterations| {
                thread_cpu(|| {
                    for _ in 0..iterations {
                        for _ in 0..FRAMES_PER_FLUSH {
                            gather.push(Frame {
                                head: head.clone(),
                                payload: payload.clone(),
                            });
                        }
                        block_on(gather.flush()).expect("flush");
                    }
                })
            })
        });
    }
    group.finish();
    drop((buffered, gather));
    buffered_drain.join().expect("drained");
    gather_drain.join().expect("drained");
}

/// What the log cleaner does to a compressed batch it judges, on the shard
/// that serves the partition: decompress its records, and compress again
/// those it keeps (here all of them), per codec, for 1 MiB of JSON-like
/// records of 40–90 bytes.
fn cleaner_codecs(c: &mut Criterion) {
    use fjord_core::compression::{compressed, decompressed_records};
    use fjord_core::{BatchBuilder, Compression};
    let records = || {
        let mut builder = BatchBuilder::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut i = 0i64;
        while builder.encoded_len() < 1 << 20 {
            // xorshift: deterministic, as varied as user ids and events are.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let value = format!(
                r#"{{"user":{},"event":"{}","ts":{},"pad":"{}"}}"#,
                seed % 1_000_000,
                ["click", "view", "buy"][(seed % 3) as usize],
                1_700_000_000_000 + i,
                "x".repeat((seed % 50) as usize)
            );
            let key = format!("k{}", seed % 10_000);
            builder.push(i, Some(key.as_bytes()), Some(value.as_bytes()), &[]);
            i += 1;
        }
        builder
    };
    let plain = records().build();
    let section = &plain[fjord_core::HEADER_LEN..];
    let mut group = c.benchmark_group("cleaner_codec_1MiB");
    group.throughput(Throughput::Bytes(section.len() as u64));
    for codec in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let name = format!("{codec:?}").to_lowercase();
        let bytes = records().build_with(codec, |r| compressed(codec, r).expect("compressed"));
        let batch = Batch::parse(&bytes).expect("a batch");
        group.bench_function(BenchmarkId::new("decompress", &name), |b| {
            b.iter(|| {
                decompressed_records(&batch, 64 << 20)
                    .expect("decompressed")
                    .len()
            })
        });
        group.bench_function(BenchmarkId::new("compress", &name), |b| {
            b.iter(|| compressed(codec, section).expect("compressed").len())
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    crc32c,
    validate,
    staging,
    log_append,
    log_read,
    frame_send,
    cleaner_codecs
);
criterion_main!(benches);
