//! APR pools: Rust values owned by a pool, pool userdata, and strings for Apache.

use std::ffi::{c_void, CStr};
use std::ptr;

use super::ffi;

unsafe extern "C" fn drop_box<T>(data: *mut c_void) -> ffi::apr_status_t {
    // SAFETY: registered only by `pool_owned` with a pointer from Box::into_raw::<T>,
    // and APR runs each cleanup once.
    drop(unsafe { Box::from_raw(data.cast::<T>()) });
    0
}

/// Moves `value` into memory owned by `pool`: it is dropped when the pool is cleared.
pub(crate) fn pool_owned<T>(pool: *mut ffi::apr_pool_t, value: T) -> *mut T {
    let raw = Box::into_raw(Box::new(value));
    // SAFETY: `pool` is a live pool handed to us by Apache; `raw` stays valid until
    // the cleanup frees it.
    unsafe { ffi::apr_pool_cleanup_register(pool, raw.cast(), Some(drop_box::<T>), Some(ffi::apr_pool_cleanup_null)) };
    raw
}

/// Copies `text` into `pool` as a NUL-terminated string (NULs inside become '?').
pub(crate) fn pstr(pool: *mut ffi::apr_pool_t, text: &str) -> *const libc::c_char {
    let clean = text.replace('\0', "?");
    // SAFETY: apr_pstrmemdup copies `len` bytes from a valid buffer and terminates it.
    unsafe { ffi::apr_pstrmemdup(pool, clean.as_ptr().cast(), clean.len()) }
}

/// Reads userdata `key` (NUL-terminated) from `pool`.
pub(crate) fn userdata_get(pool: *mut ffi::apr_pool_t, key: &CStr) -> *mut c_void {
    let mut data: *mut c_void = ptr::null_mut();
    // SAFETY: `pool` is live; `data` is a valid out-pointer; `key` is NUL-terminated.
    unsafe { ffi::apr_pool_userdata_get(&mut data, key.as_ptr(), pool) };
    data
}

/// Sets userdata `key` on `pool` (the key must be 'static: APR keeps the pointer).
pub(crate) fn userdata_set(pool: *mut ffi::apr_pool_t, key: &'static CStr, data: *mut c_void) {
    // SAFETY: `key` is 'static; `data` outlives `pool` (it is pool memory or static).
    unsafe { ffi::apr_pool_userdata_set(data, key.as_ptr(), None, pool) };
}

/// A borrowed C string as text, or "" for NULL.
pub(crate) fn text<'a>(s: *const libc::c_char) -> std::borrow::Cow<'a, str> {
    if s.is_null() {
        return "".into();
    }
    // SAFETY: non-NULL strings from Apache are NUL-terminated and live for the call.
    unsafe { CStr::from_ptr(s) }.to_string_lossy()
}
