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
/// - jemalloc's own decay (10 s): a freed page goes back to the system after about ten seconds
///   unused. A shorter one (1 s) made a worker answering requests a fraction of a second apart
///   fault part of its pages in again for every request, and sentences took about 13 % longer.
///   Slow processes once blamed on the decay had another cause, fixed when the process starts (see
///   `CONFIGURE_AT_START`).
/// - `background_thread:true`: jemalloc's own thread hands idle pages back on time even while
///   nothing allocates, so an idle worker shrinks too.
/// - `narenas:1`: one arena for every thread. A synthesis allocates its tensors on several
///   threads (the job's, ONNX Runtime's pool threads, a helper thread per job), and with an
///   arena per thread (jemalloc's default is four per core) each arena kept its own warm copy
///   of a run's large blocks: a piper worker stood at 195 MB after 1,000 short jobs and 594 MB
///   right after long ones, against 165 MB and 284 MB with one arena, at the same speed
///   (docs/PERFORMANCE.md, "One arena"). A run makes few allocations, most of them large, so
///   the threads seldom wait for the arena's lock; where they do, `MALLOC_CONF=narenas:<n>`
///   in the environment overrides this.
#[repr(transparent)]
pub struct Options(*const c_char);

// SAFETY: the pointer is to a string literal, immutable for the life of the process.
unsafe impl Sync for Options {}

/// jemalloc looks this symbol up by name (its weak default is empty).
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
pub static malloc_conf: Options = Options(OPTIONS.as_ptr());

const OPTIONS: &CStr = c"oversize_threshold:0,background_thread:true,narenas:1";

/// Makes the first arena keep the large blocks it frees, as every other arena does.
///
/// jemalloc creates its first arena before it reads `oversize_threshold`, so that arena alone
/// keeps the 8 MiB default: a freed block of 8 MiB or more there goes back to the system at once.
/// The threads that share that arena (the main thread, and any other jemalloc happens to assign
/// to it) then fault every large tensor in afresh on every run. Which threads those are is
/// chance, so before this about one worker process in four ran sentences 1.9 times slower than
/// the others for its whole life, with ten times the page faults (docs/PERFORMANCE.md, "The
/// first arena's eager purge"). With `narenas:1` every thread is on that arena, so without this
/// every run would be slow (1.9 to 2.1 times).
///
/// It runs when the process starts, before `main`, from the ELF constructor list: every
/// program that links this allocator (the service, its tests and benchmarks) needs it, and a
/// call each of them had to remember was a call one of them could forget. The service is built
/// for Linux; elsewhere the service's start warns that the arena is not set up.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static CONFIGURE_AT_START: extern "C" fn() = configure_first_arena;

#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
extern "C" fn configure_first_arena() {
    // No block is this large, so no freed block is purged early; decay still returns them.
    let mut threshold = usize::MAX;
    // Logging is not set up this early, so the outcome is left for
    // `first_arena_keeps_large_blocks` to read.
    // SAFETY: writes a `size_t` setting of arena 0, which always exists; nothing is read back.
    // jemalloc initialises itself on this first call if nothing has allocated yet.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            FIRST_ARENA_THRESHOLD.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            (&raw mut threshold).cast(),
            std::mem::size_of::<usize>(),
        );
    }
}

const FIRST_ARENA_THRESHOLD: &CStr = c"arena.0.oversize_threshold";

/// Whether the first arena keeps the large blocks it frees, as set when the process started.
/// The service logs a warning at start when it does not.
pub fn first_arena_keeps_large_blocks() -> bool {
    read_setting::<usize>(FIRST_ARENA_THRESHOLD) == Some(usize::MAX)
}

/// One of jemalloc's settings by name, read as the type it has; `None` when jemalloc refuses it.
/// `T` must be the setting's own type (`size_t` as `usize`, `bool`, `unsigned` as `u32`...).
fn read_setting<T: Default>(name: &CStr) -> Option<T> {
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
    (status == 0).then_some(value)
}

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
        super::read_setting(name).unwrap_or_else(|| panic!("mallctl {name:?}"))
    }

    #[test]
    fn jemalloc_serves_the_process_with_its_options() {
        assert_eq!(read::<usize>(c"opt.oversize_threshold"), 0);
        assert_eq!(read::<isize>(c"opt.dirty_decay_ms"), 10_000);
        assert_eq!(read::<u32>(c"opt.narenas"), 1);
        assert!(
            read::<bool>(c"opt.background_thread"),
            "jemalloc's background thread is on"
        );
        super::release_freed_memory();
    }

    /// This thread's minor page faults so far, from /proc.
    fn minor_faults() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc stat");
        // The command name, in parentheses, may hold spaces; the fields after it do not.
        let after_name = &stat[stat.rfind(')').expect("a command name") + 2..];
        // minflt is the 10th field of the line, the 8th after the name.
        after_name.split(' ').nth(7).unwrap().parse().unwrap()
    }

    #[test]
    fn the_first_arena_keeps_the_large_blocks_it_frees() {
        use tikv_jemalloc_sys::{MALLOCX_ARENA, MALLOCX_TCACHE_NONE, dallocx, mallocx};
        // Nothing here sets the arena up: the process did, when it started.
        assert!(super::first_arena_keeps_large_blocks());
        const SIZE: usize = 16 << 20;
        let flags = MALLOCX_ARENA(0) | MALLOCX_TCACHE_NONE;
        // Allocates a block of SIZE on arena 0 and writes one byte of every page.
        let touched = || {
            // SAFETY: a fresh allocation of SIZE bytes, written only within its bounds.
            unsafe {
                let block = mallocx(SIZE, flags).cast::<u8>();
                assert!(!block.is_null());
                for offset in (0..SIZE).step_by(4096) {
                    block.add(offset).write_volatile(1);
                }
                block
            }
        };
        // SAFETY: the block came from mallocx with the same flags.
        unsafe { dallocx(touched().cast(), flags) };
        let before = minor_faults();
        let block = touched();
        let faults = minor_faults() - before;
        // SAFETY: as above.
        unsafe { dallocx(block.cast(), flags) };
        // Purged at once, all 4,096 pages of the block would fault in again.
        assert!(
            faults < 512,
            "reusing a freed 16 MiB block of arena 0 faulted {faults} pages in again"
        );
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
