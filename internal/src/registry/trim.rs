//! Returning freed memory to the operating system after documents close.
//!
//! Each actor thread allocates from glibc's per-thread arenas; when thousands of documents are
//! closed, glibc keeps the freed arena memory mapped (measured: 590 MB still resident after
//! 6,581 documents were evicted). `malloc_trim(0)` releases it.

/// Asks the allocator to give freed memory back (glibc only; a no-op elsewhere).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim has no preconditions; it only walks the allocator's own state under
    // the allocator's locks and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
