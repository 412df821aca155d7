//! The shared region: anonymous shared memory mapped in the parent before the children
//! fork, so every child sees the same words. The mapping is recorded in the process
//! pool's userdata, which survives graceful restarts and module reloads; Rust statics
//! may not.

use std::ffi::c_void;
use std::sync::atomic::AtomicU64;

use super::handles::{Pool, Userdata};

/// Named after the store's layout: a module of another version (loaded by a graceful
/// restart) maps its own region instead of reformatting one that old children read.
static REGION: Userdata<Region> = Userdata::new(c"mod_stapling.shared_region.v3");
const _: () = assert!(crate::store::LAYOUT_VERSION == 3, "rename the REGION userdata");

/// A mapping, as kept in process-pool memory.
struct Region {
    base: *mut c_void,
    words: usize,
}

/// The region mapped before a restart if `reusable` accepts it, else a new one of
/// `words` words. A new mapping is zero and takes no memory until its pages are touched.
pub(crate) fn region(
    process_pool: Pool<'_>,
    words: usize,
    reusable: impl FnOnce(&[AtomicU64]) -> bool,
) -> Result<&'static [AtomicU64], String> {
    if let Some(r) = process_pool.get(&REGION) {
        // SAFETY: base..base+words*8 is a live MAP_SHARED mapping that is never
        // unmapped while the process lives; AtomicU64 has u64's layout and the
        // mapping is page-aligned.
        let old = unsafe { std::slice::from_raw_parts(r.base.cast::<AtomicU64>(), r.words) };
        if reusable(old) {
            return Ok(old);
        }
        // Map another one. The old mapping stays for children of the old generation,
        // which still read it until they exit.
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
    process_pool.put(&REGION, Region { base, words });
    // SAFETY: as above; anonymous mappings are zero-filled, and zero is a valid AtomicU64.
    Ok(unsafe { std::slice::from_raw_parts(base.cast::<AtomicU64>(), words) })
}
