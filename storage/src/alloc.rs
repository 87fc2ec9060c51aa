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
