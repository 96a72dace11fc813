//! The process's memory allocator: jemalloc, for Rust and for the C and C++ libraries alike.
//!
//! Built unprefixed, jemalloc's `malloc` and `free` are the symbols every library in the process
//! resolves to, ONNX Runtime's (loaded at run time) included. That is the point of it: a worker's
//! memory is mostly ONNX Runtime's, and glibc's allocator kept what a long sentence had needed
//! in heaps it seldom gave back, while jemalloc returns freed pages to the system a few seconds
//! after they fall idle (docs/PERFORMANCE.md, "jemalloc, and no arena in ONNX Runtime").

use std::ffi::{CStr, c_char};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once when it starts:
/// - `oversize_threshold:0`: large blocks (a long sentence's tensors run to tens of megabytes)
///   are served from the same arenas as the rest and reused while they are warm. By default
///   blocks over 8 MiB go to an arena that unmaps them as soon as they are freed, so every run
///   faulted their pages in afresh, and synthesis took 30 to 65 % longer.
/// - `dirty_decay_ms:30000`: a freed page goes back to the system after about thirty seconds
///   unused. Pages decay gradually over that time, so a worker answering requests a fraction of
///   a second apart can lose part of its warm pages between them and fault them in again. With
///   one second sentences took about 13 % longer on average against Piper's server; with ten
///   seconds (jemalloc's default) about one process in three fell into that pattern for good once
///   the decoder ran on ONNX Runtime's blocked kernels, whose runs free and reallocate more
///   large buffers: six to seven times the page faults and sentences 45 % slower. With thirty
///   seconds none did (docs/PERFORMANCE.md, "The decoder's convolutions as 2-D"). The cost is
///   memory for those thirty seconds after a burst.
/// - `background_thread:true`: jemalloc's own thread hands idle pages back on time even while
///   nothing allocates, so an idle worker shrinks too.
#[repr(transparent)]
pub struct Options(*const c_char);

// SAFETY: the pointer is to a string literal, immutable for the life of the process.
unsafe impl Sync for Options {}

/// jemalloc looks this symbol up by name (its weak default is empty).
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
pub static malloc_conf: Options = Options(OPTIONS.as_ptr());

const OPTIONS: &CStr = c"oversize_threshold:0,dirty_decay_ms:30000,background_thread:true";

/// Hands every page of freed memory back to the system now rather than when it would fall due.
/// Loading a model parses it into many small allocations that are all freed once its sessions
/// are built: tens of megabytes that would otherwise wait out jemalloc's decay.
pub fn release_freed_memory() {
    // MALLCTL_ARENAS_ALL: the purge applies to every arena.
    let name = c"arena.4096.purge";
    // SAFETY: a purge takes and returns nothing, so both pointers are null; the name is a
    // NUL-terminated string.
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if status != 0 {
        tracing::debug!(status, "the allocator did not purge its freed pages");
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::{CStr, c_char, c_void};

    /// Reads one of jemalloc's settings by name, as the type it has.
    fn read<T: Default>(name: &CStr) -> T {
        let mut value = T::default();
        let mut len = std::mem::size_of::<T>();
        // SAFETY: the caller names a setting of type `T`, and `len` is its size.
        let status = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                (&raw mut value).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(status, 0, "mallctl {name:?}");
        value
    }

    #[test]
    fn jemalloc_serves_the_process_with_its_options() {
        assert_eq!(read::<usize>(c"opt.oversize_threshold"), 0);
        assert_eq!(read::<isize>(c"opt.dirty_decay_ms"), 30_000);
        assert!(
            read::<bool>(c"opt.background_thread"),
            "jemalloc's background thread is on"
        );
        super::release_freed_memory();
    }

    #[test]
    fn libraries_loaded_at_run_time_allocate_from_jemalloc() {
        unsafe extern "C" {
            fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
        }
        // RTLD_DEFAULT: the lookup a library that is loaded later makes for its `malloc`.
        // SAFETY: looks up a symbol by a NUL-terminated name.
        let found = unsafe { dlsym(std::ptr::null_mut(), c"malloc".as_ptr()) };
        assert_eq!(
            found as usize,
            tikv_jemalloc_sys::malloc as *const () as usize
        );
    }
}
