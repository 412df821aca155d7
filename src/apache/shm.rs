//! The shared region: anonymous shared memory mapped in the parent before the children
//! fork, so every child sees the same words. The mapping is recorded in the process
//! pool's userdata, which survives graceful restarts and module reloads; Rust statics
//! may not.

use std::ffi::c_void;
use std::sync::atomic::AtomicU64;

use super::{ffi, pool};

const USERDATA_KEY: &std::ffi::CStr = c"mod_stapling.shared_region";

/// A mapping, as kept in process-pool memory.
#[repr(C)]
struct Region {
    base: *mut c_void,
    words: usize,
}

/// The shared region of at least `words` words, reusing the one mapped before a restart
/// when it is large enough.
pub(crate) fn region(process_pool: *mut ffi::apr_pool_t, words: usize) -> Result<&'static [AtomicU64], String> {
    let existing = pool::userdata_get(process_pool, USERDATA_KEY).cast::<Region>();
    if !existing.is_null() {
        // SAFETY: the userdata was set by this function to a Region in process-pool
        // memory, which outlives every configuration generation.
        let r = unsafe { &*existing };
        if r.words >= words {
            // SAFETY: base..base+words*8 is a live MAP_SHARED mapping that is never
            // unmapped while the process lives; AtomicU64 has u64's layout and the
            // mapping is page-aligned.
            return Ok(unsafe { std::slice::from_raw_parts(r.base.cast::<AtomicU64>(), r.words) });
        }
        // Too small: map a bigger one. The old mapping stays for children of the old
        // generation, which still read it until they exit.
    }
    let bytes = words.checked_mul(8).ok_or("shared region size overflows")?;
    // SAFETY: an anonymous shared mapping with no address hint; the result is checked.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(format!("cannot map {bytes} bytes of shared memory: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: apr_palloc returns memory for a Region from the live process pool.
    let record = unsafe { ffi::apr_palloc(process_pool, std::mem::size_of::<Region>()) }.cast::<Region>();
    if record.is_null() {
        return Err("out of memory recording the shared region".into());
    }
    // SAFETY: `record` is fresh, suitably sized pool memory (APR aligns to 8).
    unsafe { record.write(Region { base, words }) };
    pool::userdata_set(process_pool, USERDATA_KEY, record.cast());
    // SAFETY: as above; anonymous mappings are zero-filled, and zero is a valid AtomicU64.
    Ok(unsafe { std::slice::from_raw_parts(base.cast::<AtomicU64>(), words) })
}
