//! A page-aligned buffer for O_DIRECT, for the raw probes (glommio's
//! `DmaBuffer` needs a glommio executor; the probes run without one), on
//! the machine's small pages or on its huge pages.

use std::alloc::{Layout, alloc_zeroed, dealloc};

/// Alignment of every buffer: the page size.
pub const ALIGN: usize = 4096;
/// A transparent huge page on x86-64 and most aarch64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// The pages under a buffer. A direct-I/O request spans one physically
/// contiguous piece per page it touches, and a virtual disk may split a
/// request at its segment limit and pay per piece: on this machine a
/// 1 MiB write from 4 KiB pages goes out as two requests, from huge pages
/// as one (BENCHMARKS.md, "Huge pages under the log's buffers").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pages {
    /// 4 KiB pages, from the heap.
    Small,
    /// Transparent huge pages, asked for with `madvise(MADV_HUGEPAGE)` on a
    /// mapping of its own (small pages where the kernel has none to give),
    /// as Fjord's shards allocate their DMA memory.
    Huge,
    /// A shared mapping of a file under `/dev/shm`, as the staging area is
    /// mapped: what a log writing to disk straight from its staging area
    /// would write from. tmpfs gives it small pages unless the system turns
    /// on huge pages for shared memory (off by default).
    Shared,
    /// The same, collapsed into huge pages once written
    /// (`madvise(MADV_COLLAPSE)`, Linux 6.1+), which asks for no system
    /// setting: small pages where the kernel cannot.
    SharedCollapsed,
}

/// A zeroed, page-aligned buffer.
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
    backing: Backing,
}

enum Backing {
    Heap(Layout),
    Mapped { base: *mut libc::c_void, len: usize },
}

impl AlignedBuf {
    /// Allocates `len` bytes, rounded up to the alignment, on `pages`.
    pub fn new(len: usize, pages: Pages) -> AlignedBuf {
        let len = len.max(ALIGN).next_multiple_of(ALIGN);
        match pages {
            Pages::Small => {
                let layout = Layout::from_size_align(len, ALIGN).expect("valid layout");
                // SAFETY: the layout has a non-zero size.
                let ptr = unsafe { alloc_zeroed(layout) };
                assert!(!ptr.is_null(), "out of memory allocating {len} bytes");
                AlignedBuf {
                    ptr,
                    len,
                    backing: Backing::Heap(layout),
                }
            }
            Pages::Huge => {
                // Over-mapped by a huge page, so that the buffer can start on one.
                let mapped = len.next_multiple_of(HUGE_PAGE) + HUGE_PAGE;
                // SAFETY: an anonymous mapping with no address hint.
                let base = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        mapped,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                assert!(
                    base != libc::MAP_FAILED,
                    "out of memory mapping {len} bytes"
                );
                let ptr = (base as usize).next_multiple_of(HUGE_PAGE) as *mut u8;
                // SAFETY: the range lies inside the mapping. Advice only: the
                // result does not matter to correctness.
                unsafe { libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE) };
                AlignedBuf {
                    ptr,
                    len,
                    backing: Backing::Mapped { base, len: mapped },
                }
            }
            Pages::Shared | Pages::SharedCollapsed => {
                let path = format!("/dev/shm/fjord-probe-{}", std::process::id());
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .unwrap_or_else(|e| panic!("cannot create {path}: {e}"));
                // The mapping keeps the pages; the name is not needed.
                let _ = std::fs::remove_file(&path);
                file.set_len(len as u64)
                    .unwrap_or_else(|e| panic!("cannot size {path}: {e}"));
                // SAFETY: a shared mapping of a file of `len` bytes, no hint.
                let base = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        std::os::fd::AsRawFd::as_raw_fd(&file),
                        0,
                    )
                };
                assert!(base != libc::MAP_FAILED, "cannot map {len} bytes of {path}");
                if pages == Pages::SharedCollapsed {
                    // SAFETY: the whole mapping, ours. A collapse needs the
                    // pages present; it is advice, and its result does not
                    // matter to correctness.
                    unsafe {
                        std::ptr::write_bytes(base.cast::<u8>(), 0, len);
                        libc::madvise(base, len, libc::MADV_COLLAPSE);
                    }
                }
                AlignedBuf {
                    ptr: base.cast(),
                    len,
                    backing: Backing::Mapped { base, len },
                }
            }
        }
    }

    /// The bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` starts `len` bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Start of the buffer, for io_uring.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: buffers have at least one block.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        match self.backing {
            // SAFETY: allocated in `new` with this layout and not freed since.
            Backing::Heap(layout) => unsafe { dealloc(self.ptr, layout) },
            // SAFETY: mapped in `new` with this base and length.
            Backing::Mapped { base, len } => unsafe {
                libc::munmap(base, len);
            },
        }
    }
}
