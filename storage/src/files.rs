//! The shard's descriptor budget: segment files are opened on demand and the
//! least recently used idle ones closed, so that a shard holding tens of
//! thousands of partitions keeps only its busy files open.
//!
//! A [`SegmentFile`] names a file and holds its descriptor while it has one.
//! [`SegmentFile::get`] hands out the open file (reopening it if the budget
//! closed it); a file somebody holds (an I/O in flight, a reader) is busy
//! and never closed under them. Each shard (thread) has its own budget, set
//! once at start with [`set_budget`]; without one a shard never closes idle
//! files (the default for tools and tests).
//!
//! Closing a written file and reopening it loses nothing: writes are
//! O_DIRECT and every write's error is reported by that write; `fdatasync`
//! on a new descriptor syncs the file's data all the same.
//!
//! A new segment's files are created by their first use
//! ([`SegmentFile::create_on_first_use`]), not by the roll that makes the
//! segment: a stalled device holds a file's creation as it holds writes,
//! and an append that rolls must not wait for the disk. The first use is
//! the flusher's write, which waits for the disk anyway.

use crate::error::{Result, StorageError};
use glommio::io::{DmaFile, OpenOptions};
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::{Rc, Weak};

/// Descriptors of segment files open on this shard, and which to close first.
struct Budget {
    /// Most descriptors to keep open; `usize::MAX`: no limit.
    limit: usize,
    /// Descriptors open now.
    open: usize,
    /// Open files by last use (a tick), oldest first.
    lru: BTreeMap<u64, Weak<SegmentFile>>,
    tick: u64,
    /// Files closed to stay within the budget, ever.
    evicted: u64,
    /// Times a file had to be opened although every open one was busy.
    over_budget: u64,
}

thread_local! {
    static BUDGET: RefCell<Budget> = const {
        RefCell::new(Budget {
            limit: usize::MAX,
            open: 0,
            lru: BTreeMap::new(),
            tick: 0,
            evicted: 0,
            over_budget: 0,
        })
    };
}

/// Sets this shard's budget of open segment files. Call on the shard's
/// thread before it opens logs.
pub fn set_budget(limit: usize) {
    assert!(limit > 0, "a budget of no files cannot serve anything");
    BUDGET.with(|b| b.borrow_mut().limit = limit);
    FLUSH_SLOTS.with(|slots| {
        *slots.borrow_mut() = Some(Rc::new(Semaphore::new(flush_slots(limit) as u64)));
    });
}

/// Group commits a shard runs at once under a budget of `limit` files: each
/// holds up to four files busy (a sealing and an active segment, each with
/// its index). Acknowledgements from the staging area let thousands of logs
/// have a write due at the same moment; unbounded, their busy files would
/// run the process out of descriptors.
fn flush_slots(limit: usize) -> usize {
    (limit / 4).max(1)
}

thread_local! {
    static FLUSH_SLOTS: RefCell<Option<Rc<Semaphore>>> = const { RefCell::new(None) };
}

/// This shard's group-commit slots; `None` without a budget (no limit).
pub(crate) fn flush_slots_of_shard() -> Option<Rc<Semaphore>> {
    FLUSH_SLOTS.with(|slots| slots.borrow().clone())
}

/// What this shard's budget looks like now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetStats {
    /// The budget.
    pub limit: usize,
    /// Segment files open now.
    pub open: usize,
    /// Files closed to stay within the budget, ever.
    pub evicted: u64,
    /// Opens past the budget because every open file was busy.
    pub over_budget: u64,
}

/// This shard's budget and use.
pub fn budget_stats() -> BudgetStats {
    BUDGET.with(|b| {
        let b = b.borrow();
        BudgetStats {
            limit: b.limit,
            open: b.open,
            evicted: b.evicted,
            over_budget: b.over_budget,
        }
    })
}

/// A segment file that is open only while the budget allows.
pub struct SegmentFile {
    path: Rc<Path>,
    file: RefCell<Option<Rc<DmaFile>>>,
    /// Its key in the LRU while open.
    used_at: Cell<u64>,
    /// Replaced under its name by a compacted copy: the descriptor stays
    /// open for those still holding it and is never reopened (the name now
    /// leads to the new file, whose positions differ).
    retired: Cell<bool>,
    /// How the next open creates the file, until it exists.
    to_create: Cell<Option<Create>>,
    /// Held by the open that creates the file: a second open meanwhile,
    /// without `O_CREAT`, would not find it yet.
    creating: Semaphore,
}

/// How the open that creates a file treats what it finds at the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Kept.
    Keep,
    /// Emptied: nothing an earlier run left there belongs to this file.
    Empty,
}

impl SegmentFile {
    fn new(path: &Path, to_create: Option<Create>) -> Rc<SegmentFile> {
        Rc::new(SegmentFile {
            path: path.into(),
            file: RefCell::new(None),
            used_at: Cell::new(0),
            retired: Cell::new(false),
            to_create: Cell::new(to_create),
            creating: Semaphore::new(1),
        })
    }

    /// Opens `path` for O_DIRECT reads and writes, creating it if `create`.
    pub async fn open(path: &Path, create: bool) -> Result<Rc<SegmentFile>> {
        let this = SegmentFile::new(path, create.then_some(Create::Keep));
        this.reopen().await?;
        Ok(this)
    }

    /// `path`, created (as `create` says) by the first [`get`](Self::get)
    /// rather than now; see the module doc. No I/O.
    pub fn create_on_first_use(path: &Path, create: Create) -> Rc<SegmentFile> {
        SegmentFile::new(path, Some(create))
    }

    /// Whether the file exists: not one still to be created by its first use.
    pub fn created(&self) -> bool {
        self.to_create.get().is_none()
    }

    /// Empties the file (a rewrite starts over, or a file a failed one
    /// left behind is reused).
    pub async fn clear(self: &Rc<Self>) -> Result<()> {
        self.get()
            .await?
            .truncate(0)
            .await
            .map_err(StorageError::io("truncate", &*self.path))
    }

    /// The file's path.
    pub fn path(&self) -> &Rc<Path> {
        &self.path
    }

    /// The open file, reopened if the budget closed it. Holding the returned
    /// `Rc` keeps the descriptor open.
    pub async fn get(self: &Rc<Self>) -> Result<Rc<DmaFile>> {
        let open = self.file.borrow().clone();
        match open {
            Some(file) => {
                self.touch();
                Ok(file)
            }
            None => self.reopen().await,
        }
    }

    /// Opens the descriptor if the budget closed it and keeps it open until
    /// the last holder drops this file; the name is never opened again.
    /// Called before the name is taken by a replacement file, so that
    /// readers in flight keep reading this file's bytes.
    pub async fn retire(self: &Rc<Self>) -> Result<()> {
        self.get().await?;
        self.retired.set(true);
        Ok(())
    }

    async fn reopen(self: &Rc<Self>) -> Result<Rc<DmaFile>> {
        // A retired file keeps its descriptor (never closed when idle), so
        // a reopen would open its replacement.
        assert!(!self.retired.get(), "reopening a retired segment file");
        // A stalled disk holds a creation as it holds writes.
        let _pending = self
            .to_create
            .get()
            .map(|_| crate::io_stats::pending("create", self.path.clone()));
        let _creating = match self.to_create.get() {
            Some(_) => Some(
                self.creating
                    .acquire_permit(1)
                    .await
                    .map_err(|_| StorageError::Closed)?,
            ),
            None => None,
        };
        // The creator this open waited for may have left it open.
        if let Some(file) = self.file.borrow().clone() {
            self.touch();
            return Ok(file);
        }
        let create = self.to_create.get();
        make_room();
        let file = Rc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(create.is_some())
                .dma_open(&*self.path)
                .await
                .map_err(StorageError::io("open", &*self.path))?,
        );
        if create == Some(Create::Empty) {
            file.truncate(0)
                .await
                .map_err(StorageError::io("truncate", &*self.path))?;
        }
        self.to_create.set(None);
        // Another task may have reopened it while this open was in flight:
        // keep theirs, and let this descriptor close with `file`.
        if let Some(theirs) = self.file.borrow().clone() {
            self.touch();
            return Ok(theirs);
        }
        *self.file.borrow_mut() = Some(file.clone());
        BUDGET.with(|b| b.borrow_mut().open += 1);
        self.touch();
        Ok(file)
    }

    fn touch(self: &Rc<Self>) {
        BUDGET.with(|b| {
            let mut b = b.borrow_mut();
            b.tick += 1;
            let tick = b.tick;
            b.lru.remove(&self.used_at.replace(tick));
            b.lru.insert(tick, Rc::downgrade(self));
        });
    }

    /// Gives the descriptor up if nobody holds the file; true if it did.
    fn close_if_idle(&self) -> bool {
        let mut file = self.file.borrow_mut();
        if self.retired.get() || file.as_ref().is_none_or(|f| Rc::strong_count(f) > 1) {
            return false;
        }
        // Dropping the last handle closes the descriptor through the ring.
        *file = None;
        true
    }
}

impl Drop for SegmentFile {
    fn drop(&mut self) {
        if self.file.get_mut().take().is_some() {
            BUDGET.with(|b| {
                let mut b = b.borrow_mut();
                b.open -= 1;
                b.lru.remove(&self.used_at.get());
            });
        }
    }
}

/// Closes least recently used idle files until one more fits the budget.
/// When every open file is busy the open goes ahead over budget: a busy file
/// is one an I/O is using, and there are few of those at any time.
fn make_room() {
    BUDGET.with(|b| {
        let mut b = b.borrow_mut();
        let mut busy = Vec::new();
        while b.open >= b.limit {
            let Some((tick, weak)) = b.lru.pop_first() else {
                b.over_budget += 1;
                break;
            };
            let Some(file) = weak.upgrade() else {
                continue;
            };
            if file.close_if_idle() {
                b.open -= 1;
                b.evicted += 1;
            } else {
                busy.push((tick, weak));
            }
        }
        b.lru.extend(busy);
    });
}
