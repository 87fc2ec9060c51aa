//! Raw io_uring probes of the machine's ceilings. Each probe uses its own
//! ring and plain file descriptors: nothing of Fjord or glommio, so the
//! figures bound what any software on this machine can do.

use crate::aligned::{AlignedBuf, Pages};
use crate::{Latency, Rate};
use io_uring::{IoUring, opcode, types};
use std::fs::OpenOptions;
use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Instant;

fn file_for_probe(path: &Path, size: u64) -> io::Result<std::fs::File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    // Preallocate as Fjord's segments are, so both pay the same extent costs.
    // SAFETY: fallocate on a valid fd with no pointers involved.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

fn completion_result(cqe: &io_uring::cqueue::Entry, expected: usize) -> io::Result<()> {
    match cqe.result() {
        r if r < 0 => Err(io::Error::from_raw_os_error(-r)),
        r if r as usize != expected => Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short I/O: {r} of {expected}"),
        )),
        _ => Ok(()),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// Sequential O_DIRECT I/O over the first `total` bytes of `file` in
/// `block`-byte operations, `depth` in flight, each `stride` bytes past the
/// one before (`stride < block`: each overlaps the last bytes of the one
/// before), until `total` new bytes are covered; the operations use
/// `buffers` buffers in turn (at least `depth`) on `pages`.
fn sequential(
    file: &std::fs::File,
    direction: Direction,
    (block, depth, buffers, pages): (usize, usize, usize, Pages),
    total: u64,
    stride: usize,
) -> io::Result<Rate> {
    assert!(block.is_multiple_of(crate::aligned::ALIGN) && depth > 0 && buffers >= depth);
    assert!(stride.is_multiple_of(crate::aligned::ALIGN) && stride > 0 && stride <= block);
    let fd = types::Fd(file.as_raw_fd());
    let mut ring = IoUring::new(depth.next_power_of_two() as u32 * 2)?;
    // One region, faulted in before the clock starts.
    let turn = buffers as u64;
    let mut memory = AlignedBuf::new(buffers * block, pages);
    for (i, b) in memory.as_mut_slice().chunks_mut(block).enumerate() {
        b.fill(i as u8 | 0x80);
    }
    let region = memory.as_mut_slice().as_mut_ptr();
    let blocks = total / stride as u64;
    let (mut submitted, mut completed) = (0u64, 0u64);
    let start = Instant::now();
    while completed < blocks {
        while submitted < blocks && submitted - completed < depth as u64 {
            // SAFETY: within the region: `turn` buffers of `block` bytes.
            let buffer = unsafe { region.add((submitted % turn) as usize * block) };
            let offset = submitted * stride as u64;
            let entry = match direction {
                Direction::Write => opcode::Write::new(fd, buffer, block as u32)
                    .offset(offset)
                    .build(),
                Direction::Read => opcode::Read::new(fd, buffer, block as u32)
                    .offset(offset)
                    .build(),
            };
            // SAFETY: the buffer outlives the operation: it is only reused
            // once its completion has been reaped below.
            unsafe {
                ring.submission()
                    .push(&entry.user_data(submitted))
                    .map_err(|_| io::Error::other("submission queue full"))?
            };
            submitted += 1;
        }
        ring.submit_and_wait(1)?;
        for cqe in ring.completion() {
            completion_result(&cqe, block)?;
            completed += 1;
        }
    }
    Ok(Rate {
        bytes: blocks * stride as u64,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// O_DIRECT sequential writes of `block` bytes, `depth` in flight, from
/// `depth` buffers on `pages`, until `total` bytes are written to a fresh
/// preallocated file at `path`.
pub fn direct_write(
    path: &Path,
    (block, depth, pages): (usize, usize, Pages),
    total: u64,
) -> io::Result<Rate> {
    direct_write_strided(path, (block, depth, depth, pages), total, block)
}

/// As [`direct_write`], but from `footprint` bytes of buffers in turn
/// instead of `depth` buffers: as a log writes, each byte of its stream
/// from memory of its own (its batch cache keeps what it wrote). On a
/// virtual machine the device may be slower with more guest pages under
/// its requests (BENCHMARKS.md, "First touches, page counts and huge
/// pages").
pub fn direct_write_spread(
    path: &Path,
    (block, depth, pages): (usize, usize, Pages),
    total: u64,
    footprint: usize,
) -> io::Result<Rate> {
    let buffers = footprint.div_ceil(block).max(depth);
    direct_write_strided(path, (block, depth, buffers, pages), total, block)
}

/// As [`direct_write`], but each write starts on the last 4 KiB block of
/// the one before, as consecutive appends of a log would if both were in
/// flight together: what a device makes of overlapping requests. Counts the
/// new bytes only.
pub fn direct_write_overlapping(
    path: &Path,
    (block, depth, pages): (usize, usize, Pages),
    total: u64,
) -> io::Result<Rate> {
    direct_write_strided(
        path,
        (block, depth, depth, pages),
        total,
        block - crate::aligned::ALIGN,
    )
}

fn direct_write_strided(
    path: &Path,
    shape: (usize, usize, usize, Pages),
    total: u64,
    stride: usize,
) -> io::Result<Rate> {
    let file = file_for_probe(path, total + (shape.0 - stride) as u64)?;
    let rate = sequential(&file, Direction::Write, shape, total, stride)?;
    drop(file);
    std::fs::remove_file(path)?;
    Ok(rate)
}

/// O_DIRECT sequential reads of `block` bytes, `depth` in flight, of a file
/// of `total` bytes written just before (O_DIRECT: no page cache involved).
pub fn direct_read(path: &Path, block: usize, depth: usize, total: u64) -> io::Result<Rate> {
    let file = file_for_probe(path, total)?;
    let shape = (block, depth, depth, Pages::Huge);
    sequential(
        &file,
        Direction::Write,
        (4 << 20, 4, 4, Pages::Huge),
        total,
        4 << 20,
    )?;
    let rate = sequential(&file, Direction::Read, shape, total, block)?;
    drop(file);
    std::fs::remove_file(path)?;
    Ok(rate)
}

/// fdatasync latency: 4 KiB O_DIRECT writes, each followed by an
/// fdatasync whose time is recorded (the floor under `fsync=always` acks).
pub fn fdatasync_latency(path: &Path, samples: u64) -> io::Result<Latency> {
    write_latency(path, 4096, samples, true, None)
}

/// Latency of single O_DIRECT appends of `block` bytes, one at a time (the
/// floor under an `acks=1` answer, which waits for its write); with `every`,
/// one write is started every `every` (paced like a steady producer) rather
/// than back to back.
pub fn direct_write_latency(
    path: &Path,
    block: usize,
    samples: u64,
    every: Option<std::time::Duration>,
) -> io::Result<Latency> {
    write_latency(path, block, samples, false, every)
}

fn write_latency(
    path: &Path,
    block: usize,
    samples: u64,
    sync: bool,
    every: Option<std::time::Duration>,
) -> io::Result<Latency> {
    let paced_from = Instant::now();
    let file = file_for_probe(path, samples * block as u64)?;
    let fd = types::Fd(file.as_raw_fd());
    let mut ring = IoUring::new(8)?;
    let mut buffer = AlignedBuf::new(block, Pages::Small);
    buffer.as_mut_slice().fill(0x5a);
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3).map_err(io::Error::other)?;
    let mut run = |entry: io_uring::squeue::Entry, expected: usize| -> io::Result<u64> {
        let start = Instant::now();
        // SAFETY: `buffer` outlives the operation, which is reaped before returning.
        unsafe {
            ring.submission()
                .push(&entry)
                .map_err(|_| io::Error::other("submission queue full"))?
        };
        ring.submit_and_wait(1)?;
        let cqe = ring
            .completion()
            .next()
            .ok_or_else(|| io::Error::other("no completion"))?;
        completion_result(&cqe, expected)?;
        Ok(start.elapsed().as_nanos() as u64)
    };
    for i in 0..samples {
        if let Some(every) = every {
            // Blocking sleep is fine here: the probe is its own thread.
            let due = paced_from + every * i as u32;
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let mut nanos = run(
            opcode::Write::new(fd, buffer.as_ptr(), block as u32)
                .offset(i * block as u64)
                .build(),
            block,
        )?;
        if sync {
            nanos = run(
                opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build(),
                0,
            )?;
        }
        histogram.record(nanos.max(1)).map_err(io::Error::other)?;
    }
    drop(file);
    std::fs::remove_file(path)?;
    Ok(Latency::from_histogram_ns(&histogram))
}

/// Loopback TCP throughput: one connection, the sender submitting `chunk`
/// byte sends through io_uring, four in flight, until `total` bytes are sent;
/// a plain reader thread drains the other end.
pub fn loopback_tcp(chunk: usize, total: u64) -> io::Result<Rate> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> io::Result<u64> {
        let (mut socket, _) = listener.accept()?;
        let mut buffer = vec![0u8; 1 << 20];
        let mut received = 0u64;
        loop {
            match socket.read(&mut buffer)? {
                0 => return Ok(received),
                n => received += n as u64,
            }
        }
    });
    let socket = TcpStream::connect(address)?;
    socket.set_nodelay(true)?;
    let fd = types::Fd(socket.as_raw_fd());
    const DEPTH: u64 = 4;
    let mut ring = IoUring::new(8)?;
    let buffer = vec![0x42u8; chunk];
    // Every byte is the same, so a short send needs no resend of its tail:
    // the shortfall is simply owed by later sends.
    let (mut sent, mut in_flight, mut in_flight_bytes) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while sent < total {
        while in_flight < DEPTH && sent + in_flight_bytes < total {
            let len = chunk.min((total - sent - in_flight_bytes) as usize);
            let entry = opcode::Send::new(fd, buffer.as_ptr(), len as u32)
                .build()
                .user_data(len as u64);
            // SAFETY: `buffer` is never written and outlives every send.
            unsafe {
                ring.submission()
                    .push(&entry)
                    .map_err(|_| io::Error::other("submission queue full"))?
            };
            in_flight += 1;
            in_flight_bytes += len as u64;
        }
        ring.submit_and_wait(1)?;
        for cqe in ring.completion() {
            if cqe.result() < 0 {
                return Err(io::Error::from_raw_os_error(-cqe.result()));
            }
            in_flight -= 1;
            in_flight_bytes -= cqe.user_data();
            sent += cqe.result() as u64;
        }
    }
    drop(socket);
    let received = reader
        .join()
        .map_err(|_| io::Error::other("reader panicked"))??;
    let seconds = start.elapsed().as_secs_f64();
    Ok(Rate {
        bytes: received,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_dir() -> std::path::PathBuf {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/probe-test");
        std::fs::create_dir_all(&dir).expect("probe dir");
        dir
    }

    #[test]
    fn probes_move_the_bytes_they_claim_and_clean_up() {
        let dir = probe_dir();
        for pages in [Pages::Small, Pages::Huge] {
            let write =
                direct_write(&dir.join("w"), (64 * 1024, 4, pages), 4 << 20).expect("direct write");
            assert_eq!(write.bytes, 4 << 20);
            assert!(write.seconds > 0.0 && !dir.join("w").exists());
        }
        let read = direct_read(&dir.join("r"), 64 * 1024, 1, 4 << 20).expect("direct read");
        assert_eq!(read.bytes, 4 << 20);
        assert!(!dir.join("r").exists());
        let sync = fdatasync_latency(&dir.join("s"), 20).expect("fdatasync");
        assert_eq!(sync.samples, 20);
        assert!(sync.p50_us > 0.0 && sync.p50_us <= sync.max_us);
        let tcp = loopback_tcp(64 * 1024, 8 << 20).expect("loopback");
        assert_eq!(
            tcp.bytes,
            8 << 20,
            "the reader must receive every byte sent"
        );
    }
}
