//! The allocator every Fjord binary runs with, as one macro so that the
//! broker, `bench`, `probe` and the benches cannot drift apart.
//!
//! Log writes go through large, short-lived DMA buffers. glibc unmapped and
//! refaulted them on every write (a fifth of a shard's time in page faults);
//! jemalloc with its default decay still handed their pages back to the
//! kernel within seconds (16 % of a shard in `clear_page` under
//! `bench produce --rate 1M`). Never purging keeps a process at its peak
//! footprint, which a broker that sizes its caches up front reaches anyway.

pub use tikv_jemallocator;

/// jemalloc's options: keep freed pages (see the module doc).
pub const MALLOC_CONF: &[u8] = b"dirty_decay_ms:-1,muzzy_decay_ms:-1\0";

/// Installs jemalloc as the global allocator with [`MALLOC_CONF`]. Invoke
/// once, at the top level of a binary.
#[macro_export]
macro_rules! global_allocator {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::alloc::tikv_jemallocator::Jemalloc =
            $crate::alloc::tikv_jemallocator::Jemalloc;

        /// Read by jemalloc at start-up (its `malloc_conf` symbol, prefixed
        /// as tikv-jemallocator builds it).
        #[unsafe(export_name = "_rjem_malloc_conf")]
        #[used]
        static MALLOC_CONF: Option<&'static u8> = Some(&$crate::alloc::MALLOC_CONF[0]);
    };
}

/// Size of each allocation [`pretouch`] makes: the log's largest write
/// buffer by default, and under jemalloc's `oversize_threshold` (8 MiB),
/// above which allocations come from an arena of their own that the
/// thread's buffers would not reuse.
const PRETOUCH_CHUNK: usize = 4 << 20;
const PAGE: usize = 4096;

/// Faults in `bytes` of this thread's DMA-buffer memory and hands it back
/// to the allocator, which keeps it (see [`MALLOC_CONF`]): write buffers
/// allocated afterwards reuse mapped pages instead of faulting fresh ones
/// in. A broker that has run under load for a while is in that state; a
/// fresh process is not, and on a virtual machine that gives free memory
/// back to its host (free page reporting) the first touch of a page costs
/// a host fault: this machine faults fresh memory in at 0.35 GB/s, a sixth
/// of its disk's write rate (README, *Measuring*). `probe` runs this before
/// it measures the log, so that it measures the log and not those faults.
/// Call on an executor thread; blocks it for the faults' time.
pub fn pretouch(bytes: usize) -> std::time::Duration {
    let started = std::time::Instant::now();
    // Held until every page is touched: freed one by one, each chunk would
    // be handed out again as the next and the same pages touched over.
    let mut chunks = Vec::with_capacity(bytes.div_ceil(PRETOUCH_CHUNK));
    let mut left = bytes;
    while left > 0 {
        let size = left.min(PRETOUCH_CHUNK).next_multiple_of(PAGE);
        let mut chunk = glommio::allocate_dma_buffer(size);
        // A write, not a read: a read maps the shared zero page.
        for page in chunk.as_bytes_mut().chunks_mut(PAGE) {
            page[0] = 0;
        }
        chunks.push(chunk);
        left -= size.min(left);
    }
    started.elapsed()
}
