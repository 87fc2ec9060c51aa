//! `alloc::pretouch` leaves memory the shard's DMA buffers reuse without
//! faulting: buffers as large as the log's write buffers, allocated and
//! written after it, fault in almost no page. Runs with the allocator and
//! settings every Fjord binary runs with.

fjord_storage::global_allocator!();

use fjord_storage::alloc::pretouch;

const PAGE: usize = 4096;
const BUFFER: usize = 4 << 20;

/// Page faults this thread has taken.
fn faults() -> i64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    usage.ru_minflt + usage.ru_majflt
}

/// Faults taken while `count` buffers of [`BUFFER`] bytes are allocated and
/// written, as the appender fills its write buffers.
fn faults_filling(count: usize) -> i64 {
    let before = faults();
    let buffers: Vec<_> = (0..count)
        .map(|_| {
            let mut buffer = glommio::allocate_dma_buffer(BUFFER);
            buffer.as_bytes_mut().fill(0x5a);
            buffer
        })
        .collect();
    let taken = faults() - before;
    drop(buffers);
    taken
}

#[test]
fn buffers_after_a_pretouch_reuse_its_pages() {
    let (cold, warm) = fjord_storage::shard::executor(
        "pretouch",
        glommio::Placement::Unbound,
        fjord_storage::shard::IO_MEMORY_BYTES,
    )
    .spawn(|| async {
        // Fresh memory: every page of every buffer faults in.
        let cold = faults_filling(8);
        // Then as much again, beside what the first round keeps.
        let took = pretouch(16 * BUFFER);
        assert!(took.as_secs() < 60, "pretouch took {took:?}");
        (cold, faults_filling(16))
    })
    .expect("executor")
    .join()
    .expect("join");
    let pages = (8 * BUFFER / PAGE) as i64;
    assert!(
        cold >= pages / 2,
        "fresh buffers faulted {cold} pages, expected about {pages}: the check cannot see faults"
    );
    assert!(
        warm < pages / 20,
        "buffers after a pretouch faulted {warm} pages of {}",
        2 * pages
    );
}
