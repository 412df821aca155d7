//! Typed handles for the Apache objects the module touches. Each is made once, at the
//! edge, by an `unsafe` constructor that states what the pointer must satisfy; the rest
//! of the module then works with safe methods whose results cannot outlive the object.

use std::ffi::{c_void, CStr};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};

use super::ffi;

/// An APR pool that stays alive (is neither cleared nor destroyed) for `'p`.
#[derive(Clone, Copy)]
pub(crate) struct Pool<'p> {
    raw: NonNull<ffi::apr_pool_t>,
    _life: PhantomData<&'p ffi::apr_pool_t>,
}

/// A pool userdata slot that only ever holds a `T` (so reading it back is safe).
pub(crate) struct Userdata<T> {
    name: &'static CStr,
    _holds: PhantomData<fn() -> T>,
}

impl<T> Userdata<T> {
    /// A slot named `name`; each name must be used by one `Userdata` only.
    pub(crate) const fn new(name: &'static CStr) -> Userdata<T> {
        Userdata { name, _holds: PhantomData }
    }
}

unsafe extern "C" fn drop_box<T>(data: *mut c_void) -> ffi::apr_status_t {
    // SAFETY: registered only by `Pool::own` with a pointer from Box::into_raw::<T>,
    // and APR runs each cleanup once.
    drop(unsafe { Box::from_raw(data.cast::<T>()) });
    0
}

impl<'p> Pool<'p> {
    /// # Safety
    /// `raw` is NULL or a live pool that is not cleared or destroyed during `'p`.
    pub(crate) unsafe fn from_raw(raw: *mut ffi::apr_pool_t) -> Option<Pool<'p>> {
        NonNull::new(raw).map(|raw| Pool { raw, _life: PhantomData })
    }

    /// The pool, for calls into APR and Apache.
    pub(crate) fn as_ptr(self) -> *mut ffi::apr_pool_t {
        self.raw.as_ptr()
    }

    /// Moves `value` into the pool: it is dropped when the pool is cleared.
    pub(crate) fn own<T: 'p>(self, value: T) -> NonNull<T> {
        let raw = Box::into_raw(Box::new(value));
        // SAFETY: the pool is live; `raw` stays valid until the cleanup frees it, once.
        unsafe {
            ffi::apr_pool_cleanup_register(
                self.as_ptr(),
                raw.cast(),
                Some(drop_box::<T>),
                Some(ffi::apr_pool_cleanup_null),
            )
        };
        // SAFETY: Box::into_raw never returns NULL.
        unsafe { NonNull::new_unchecked(raw) }
    }

    /// The value stored under `slot`, if any.
    pub(crate) fn get<T>(self, slot: &Userdata<T>) -> Option<&'p T> {
        let mut data: *mut c_void = ptr::null_mut();
        // SAFETY: the pool is live; `data` is a valid out-pointer; the name is
        // NUL-terminated.
        unsafe { ffi::apr_pool_userdata_get(&mut data, slot.name.as_ptr(), self.as_ptr()) };
        // SAFETY: only `put` sets this name, with a `T` owned by this pool, which lives
        // (and is not cleared) for 'p.
        unsafe { data.cast::<T>().as_ref() }
    }

    /// Moves `value` into the pool and stores it under `slot` (replacing, without
    /// freeing early, what was there: the pool frees both).
    pub(crate) fn put<T: 'p>(self, slot: &Userdata<T>, value: T) -> &'p T {
        let owned = self.own(value);
        // SAFETY: the name is 'static (APR keeps the pointer); `owned` lives until the
        // pool is cleared, when the userdata table goes too.
        unsafe { ffi::apr_pool_userdata_set(owned.as_ptr().cast(), slot.name.as_ptr(), None, self.as_ptr()) };
        // SAFETY: `owned` is valid until the pool is cleared, which is after 'p.
        unsafe { owned.as_ref() }
    }

    /// Copies `text` into the pool as a NUL-terminated string (NULs inside become '?').
    pub(crate) fn pstr(self, text: &str) -> *const libc::c_char {
        let clean = text.replace('\0', "?");
        // SAFETY: apr_pstrmemdup copies `len` bytes from a valid buffer and terminates it.
        unsafe { ffi::apr_pstrmemdup(self.as_ptr(), clean.as_ptr().cast(), clean.len()) }
    }
}

/// A `server_rec` (the main server or a virtual host) that lives for `'s`.
#[derive(Clone, Copy)]
pub(crate) struct Server<'s> {
    raw: NonNull<ffi::server_rec>,
    _life: PhantomData<&'s ffi::server_rec>,
}

impl<'s> Server<'s> {
    /// # Safety
    /// `raw` is NULL or a live `server_rec` of the current configuration, which lives
    /// for `'s`, with its `process` set (Apache sets it for every server).
    pub(crate) unsafe fn from_raw(raw: *mut ffi::server_rec) -> Option<Server<'s>> {
        NonNull::new(raw).map(|raw| Server { raw, _life: PhantomData })
    }

    /// The record, for calls into Apache.
    pub(crate) fn as_ptr(&self) -> *mut ffi::server_rec {
        self.raw.as_ptr()
    }

    fn record(&self) -> &ffi::server_rec {
        // SAFETY: live for 's (constructor contract); the fields read here are not
        // changed after the configuration is read.
        unsafe { self.raw.as_ref() }
    }

    /// True for a `<VirtualHost>`, false for the main server.
    pub(crate) fn is_virtual(&self) -> bool {
        self.record().is_virtual != 0
    }

    /// "host:port", for log lines.
    pub(crate) fn label(&self) -> String {
        let r = self.record();
        // SAFETY: server_hostname is NULL or a string in the configuration pool.
        let host = unsafe { text(r.server_hostname) };
        // SAFETY: `addrs` is NULL or the server's first address record, live for 's.
        let port = unsafe { r.addrs.as_ref() }.map_or(r.port, |a| a.host_port);
        format!("{}:{}", if host.is_empty() { "(unnamed)".into() } else { host }, port)
    }

    /// Where a `<VirtualHost>` is defined (file, line); `None` for the main server.
    pub(crate) fn definition(&self) -> Option<(String, u32)> {
        let r = self.record();
        // SAFETY: defn_name is NULL or a string in the configuration pool.
        (self.is_virtual() && !r.defn_name.is_null()).then(|| (unsafe { text(r.defn_name) }, r.defn_line_number))
    }

    /// The next server in Apache's list (the main server's list holds every vhost).
    pub(crate) fn next(&self) -> Option<Server<'s>> {
        // SAFETY: `next` is NULL or another server_rec of the same configuration.
        unsafe { Server::from_raw(self.record().next) }
    }

    /// This server and every one after it.
    pub(crate) fn with_following(self) -> impl Iterator<Item = Server<'s>> {
        std::iter::successors(Some(self), Server::next)
    }

    /// The pool that lives as long as the process (and keeps its userdata across
    /// restarts).
    pub(crate) fn process_pool(&self) -> Pool<'s> {
        // SAFETY: `process` is set for every server (constructor contract), and its
        // pool outlives every configuration.
        unsafe { Pool::from_raw((*self.record().process).pool) }.expect("Apache always sets the process pool")
    }

    /// The pool of the current configuration generation: cleared at the next restart.
    pub(crate) fn config_pool(&self) -> Pool<'s> {
        // SAFETY: as above; pconf is cleared only after every server_rec allocated in
        // it (this one included) is gone.
        unsafe { Pool::from_raw((*self.record().process).pconf) }.expect("Apache always sets pconf")
    }

    /// The module's entry in this server's config vector.
    pub(crate) fn module_config_ptr(&self) -> *mut c_void {
        // SAFETY: a plain read of the index Apache assigned when it loaded the module.
        let index = unsafe { ffi::stapling_shim_module_index() };
        let vector = self.record().module_config as *mut *mut c_void;
        if vector.is_null() || index < 0 {
            return ptr::null_mut();
        }
        // SAFETY: module_config has one entry per loaded module; `index` is ours.
        unsafe { *vector.add(index as usize) }
    }
}

/// A copy of a C string from Apache, or "" for NULL.
///
/// # Safety
/// `s` is NULL or a NUL-terminated string that is live for the call.
pub(crate) unsafe fn text(s: *const libc::c_char) -> String {
    if s.is_null() {
        return String::new();
    }
    // SAFETY: the caller's contract.
    unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
}
