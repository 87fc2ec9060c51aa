//! A shard's DMA memory (`shard::dma_memory_bytes`): glommio's pool, which
//! the vendored glommio maps on its own and advises onto huge pages, serves
//! the log's large write buffers; small buffers, and those the pool cannot
//! hold, come from the heap and work the same.

use fjord_storage::shard::executor;

/// What `/sys/kernel/mm/transparent_hugepage/enabled` selects.
fn huge_page_mode() -> String {
    let modes =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let selected = modes
        .split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'));
    selected.map_or("never", |(mode, _)| mode).to_string()
}

/// The `THPeligible` line of the mapping that holds `address`, from
/// `/proc/self/smaps`: whether the kernel may back it with huge pages.
fn huge_page_eligible(address: usize) -> bool {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((start, end)) = range.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            inside = (start..end).contains(&address);
        } else if inside && let Some(value) = line.strip_prefix("THPeligible:") {
            return value.trim() == "1";
        }
    }
    panic!("no mapping in /proc/self/smaps holds {address:#x}");
}

#[test]
fn write_buffers_come_from_huge_page_memory_then_from_the_heap() {
    let mode = huge_page_mode();
    if mode != "madvise" {
        // `never`: nothing is eligible; `always`: everything is, the heap
        // too, so the check could not tell the pool from the heap.
        eprintln!("skipped: transparent huge pages are `{mode}` here, the check needs `madvise`");
        return;
    }
    const BUFFER: usize = 2 << 20;
    // The pool holds its own bookkeeping, so three buffers fit in 8 MiB,
    // not four; six overflow it. The last, below 1 MiB, is one the pool
    // leaves to the heap whatever room it has.
    let sizes = [BUFFER, BUFFER, BUFFER, BUFFER, BUFFER, BUFFER, 64 << 10];
    let placed = executor("dma-memory", glommio::Placement::Unbound, 8 << 20)
        .spawn(move || async move {
            let buffers: Vec<_> = sizes
                .iter()
                .zip(0u8..)
                .map(|(&size, fill)| {
                    let mut buffer = glommio::allocate_dma_buffer(size);
                    buffer.as_bytes_mut().fill(fill);
                    buffer
                })
                .collect();
            buffers
                .iter()
                .zip(0u8..)
                .map(|(b, fill)| {
                    assert!(
                        b.as_bytes().iter().all(|&v| v == fill),
                        "buffer {fill} lost its bytes"
                    );
                    huge_page_eligible(b.as_ptr() as usize)
                })
                .collect::<Vec<_>>()
        })
        .expect("executor")
        .join()
        .expect("join");
    assert_eq!(
        placed,
        [true, true, true, false, false, false, false],
        "which buffers are in huge-page memory (the pool) and which on the heap"
    );
}
