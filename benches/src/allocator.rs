//! The allocator of the benches' binaries (`loadgen`, `bank`): mimalloc
//! with the `mimalloc` feature (a default), for every allocation of the
//! process: Rust's, as the global allocator, and RocksDB's, whose malloc,
//! free and C++ new and delete mimalloc's `override` replaces at link time.
//! Without the feature, the C library's malloc.
//!
//! An application embedding eventfold picks its own allocator; the
//! binaries here pick mimalloc because glibc's malloc cost the runtime a
//! third of a shard thread's CPU in W7 (frees of blocks another thread
//! allocated) and let W4's heap grow to 1.5 GB through fragmentation, and
//! because glibc's per-thread arenas kept about 50 bytes per aggregate of
//! RocksDB's freed read buffers in W8. `BENCHMARKS.md` gives figures with
//! both.

/// The allocator the binaries declare (`#[global_allocator]`).
#[cfg(feature = "mimalloc")]
pub type Global = mimalloc::MiMalloc;

/// The allocator the binaries declare (`#[global_allocator]`).
#[cfg(not(feature = "mimalloc"))]
pub type Global = std::alloc::System;

/// An instance of [`Global`] for `#[global_allocator]`.
#[cfg(feature = "mimalloc")]
pub const GLOBAL: Global = mimalloc::MiMalloc;

/// An instance of [`Global`] for `#[global_allocator]`.
#[cfg(not(feature = "mimalloc"))]
pub const GLOBAL: Global = std::alloc::System;

/// Its name, in the JSON (`allocator`).
pub const NAME: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "system"
};

/// What [`heap_bytes`] measures, as W8 names it per resident aggregate.
pub const HEAP_FIGURE: &str = if cfg!(feature = "mimalloc") {
    "allocator_committed_bytes_per_resident_aggregate"
} else {
    "heap_bytes_per_resident_aggregate"
};

/// The allocator's own count of the bytes it holds for the program:
/// with mimalloc the memory it has committed (`mi_process_info`), with
/// glibc the bytes handed out and not had back over all arenas
/// (`mallinfo2`: `uordblks` plus `hblkhd`, which leaves out free chunks).
/// `None` where neither applies.
pub fn heap_bytes() -> Option<u64> {
    #[cfg(feature = "mimalloc")]
    {
        let (mut elapsed, mut user, mut system) = (0, 0, 0);
        let (mut rss, mut peak_rss, mut commit, mut peak_commit, mut faults) = (0, 0, 0, 0, 0);
        // SAFETY: mi_process_info only writes the counters it is given
        // pointers to, all valid `usize`s (`size_t`) on this stack frame.
        unsafe {
            libmimalloc_sys::mi_process_info(
                &mut elapsed,
                &mut user,
                &mut system,
                &mut rss,
                &mut peak_rss,
                &mut commit,
                &mut peak_commit,
                &mut faults,
            );
        }
        u64::try_from(commit).ok()
    }
    #[cfg(all(not(feature = "mimalloc"), target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments, only reads the allocator's
        // counters under its arena locks, and returns a plain struct.
        let info = unsafe { libc::mallinfo2() };
        Some((info.uordblks + info.hblkhd) as u64)
    }
    #[cfg(all(
        not(feature = "mimalloc"),
        not(all(target_os = "linux", target_env = "gnu"))
    ))]
    {
        None
    }
}
