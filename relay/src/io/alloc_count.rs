//! A counting global allocator, for the test that proves the relay path does not
//! allocate per packet (`relay/tests/alloc_free.rs`) and the one that measures the
//! heap held per allocation (`relay/tests/many_allocations.rs`). It lives here because
//! implementing `GlobalAlloc` needs `unsafe`, which the crate allows only in `io`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// The system allocator, counting allocations (alloc, alloc_zeroed and realloc) and
/// the bytes live (requested sizes, without the allocator's own overhead).
#[derive(Debug)]
pub struct CountingAlloc {
    count: AtomicU64,
    live: AtomicI64,
}

impl CountingAlloc {
    pub const fn new() -> Self {
        CountingAlloc {
            count: AtomicU64::new(0),
            live: AtomicI64::new(0),
        }
    }

    /// Allocations so far, in every thread.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Bytes allocated and not yet freed, in every thread.
    pub fn live_bytes(&self) -> i64 {
        self.live.load(Ordering::SeqCst)
    }
}

impl Default for CountingAlloc {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds
// the `GlobalAlloc` contract; the counter is only a side effect and never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.live.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, which is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.live.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: `ptr` was returned by `System` for `layout` (every allocation here
        // is forwarded to it).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.live.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.live
            .fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: `ptr`/`layout` came from `System` (as for `dealloc`) and the caller
        // upholds `realloc`'s contract on `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
