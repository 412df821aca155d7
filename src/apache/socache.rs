//! The fleet tier over Apache's socache providers (mod_socache_memcache, _redis, _dc):
//! the admin's own `LoadModule` lines and provider settings (`MemcacheConnTTL`,
//! `RedisTimeout`, ...) apply, and no client for memcached or Redis lives here.

use std::ffi::{c_uint, CString};
use std::ptr::{self, NonNull};
use std::sync::Mutex;

use super::ffi;
use super::handles::{Pool, Server};
use crate::config::CacheSpec;
use crate::fleet::{FleetTier, TierError};
use crate::ocsp::MAX_RESPONSE_BYTES;
use crate::time::UnixTime;

/// APR_NOTFOUND (APR_OS_START_STATUS + 15): the key is not in the cache.
const APR_NOTFOUND: ffi::apr_status_t = 70_015;
/// Largest value read back: a response, with room to spare.
const MAX_VALUE_BYTES: usize = MAX_RESPONSE_BYTES as usize + 1024;

/// The provider registered under `name`, if its module is loaded.
pub(super) fn lookup(name: &str) -> Option<&'static ffi::ap_socache_provider_t> {
    let name = CString::new(name).ok()?;
    // SAFETY: the strings are NUL-terminated; providers are registered in the process
    // pool by their modules' register_hooks and stay for the life of the configuration.
    let found = unsafe { ffi::ap_lookup_provider(c"socache".as_ptr(), name.as_ptr(), c"0".as_ptr()) };
    // SAFETY: what the socache group holds is an ap_socache_provider_t.
    unsafe { found.cast::<ffi::ap_socache_provider_t>().as_ref() }
}

/// An initialised provider instance, valid for the configuration generation whose
/// pool made it (destroyed by that pool's cleanup, after the runtime that uses it).
pub(super) struct SocacheTier {
    provider: &'static ffi::ap_socache_provider_t,
    instance: NonNull<ffi::ap_socache_instance_t>,
    server: NonNull<ffi::server_rec>,
    described: String,
    /// Held around every call of a provider that is not multi-thread safe.
    serialize: Option<Mutex<()>>,
}

// SAFETY: the instance and server stay valid for the generation (see above); calls into
// a provider without AP_SOCACHE_FLAG_NOTMPSAFE may be made from any thread, and those
// into one with the flag are serialized by `serialize`.
unsafe impl Send for SocacheTier {}
// SAFETY: as above.
unsafe impl Sync for SocacheTier {}

/// Calls the provider's destroy when the generation's pool goes.
struct Destroy {
    provider: &'static ffi::ap_socache_provider_t,
    instance: NonNull<ffi::ap_socache_instance_t>,
    server: NonNull<ffi::server_rec>,
}

impl Drop for Destroy {
    fn drop(&mut self) {
        if let Some(destroy) = self.provider.destroy {
            // SAFETY: the instance was created and initialised in this pool, which is
            // being cleared; nothing uses it afterwards.
            unsafe { destroy(self.instance.as_ptr(), self.server.as_ptr()) };
        }
    }
}

impl SocacheTier {
    /// Creates and initialises `spec`'s provider in `pconf` (post_config, parent).
    pub(super) fn open(spec: &CacheSpec, main: &Server<'_>, pconf: Pool<'_>) -> Result<SocacheTier, String> {
        let provider = lookup(&spec.provider).ok_or_else(|| format!("{} is not loaded", spec.module()))?;
        let (Some(create), Some(init)) = (provider.create, provider.init) else {
            return Err("the provider has no create/init".into());
        };
        let server = NonNull::new(main.as_ptr()).ok_or("no server")?;
        let args = CString::new(spec.args.as_str()).map_err(|_| "a NUL in the arguments".to_string())?;
        let arg = pconf.pstr(args.to_str().unwrap_or_default());
        let mut instance: *mut ffi::ap_socache_instance_t = ptr::null_mut();
        // SAFETY: create fills `instance` from `arg`, allocating in pconf; it returns
        // NULL or a NUL-terminated error in pconf.
        let err = unsafe { create(&mut instance, arg, pconf.as_ptr(), pconf.as_ptr()) };
        if !err.is_null() {
            // SAFETY: a NUL-terminated string (see above).
            return Err(unsafe { super::handles::text(err) });
        }
        let instance = NonNull::new(instance).ok_or("the provider made no instance")?;
        let hints = ffi::ap_socache_hints { avg_id_len: 80, avg_obj_size: 2048, expiry_interval: 60_000_000 };
        // SAFETY: a fresh instance, our server and pool; `hints` is read during the call.
        let status =
            unsafe { init(instance.as_ptr(), c"mod_stapling".as_ptr(), &hints, server.as_ptr(), pconf.as_ptr()) };
        if status != 0 {
            return Err(format!("the provider did not start (APR status {status})"));
        }
        pconf.own(Destroy { provider, instance, server });
        let serialize = (provider.flags & ffi::AP_SOCACHE_FLAG_NOTMPSAFE != 0).then(|| Mutex::new(()));
        Ok(SocacheTier { provider, instance, server, described: spec.describe(), serialize })
    }

    /// Runs `call` with a pool of its own (destroyed after), serialized if the provider
    /// needs it.
    fn with_pool<T>(&self, call: impl FnOnce(*mut ffi::apr_pool_t) -> T) -> Result<T, TierError> {
        let _guard = self.serialize.as_ref().map(|m| m.lock().unwrap_or_else(|e| e.into_inner()));
        let mut pool: *mut ffi::apr_pool_t = ptr::null_mut();
        // SAFETY: an unmanaged pool belongs to this call alone, whatever thread runs it.
        let status = unsafe { ffi::apr_pool_create_unmanaged_ex(&mut pool, None, ptr::null_mut()) };
        if status != 0 || pool.is_null() {
            return Err(TierError(format!("cannot create a pool (APR status {status})")));
        }
        let result = call(pool);
        // SAFETY: created above; nothing the call returned points into it.
        unsafe { ffi::apr_pool_destroy(pool) };
        Ok(result)
    }
}

fn key_len(key: &str) -> c_uint {
    c_uint::try_from(key.len()).unwrap_or(c_uint::MAX)
}

fn failed(what: &str, status: ffi::apr_status_t) -> TierError {
    TierError(format!("{what} failed with APR status {status}"))
}

impl FleetTier for SocacheTier {
    fn describe(&self) -> &str {
        &self.described
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, TierError> {
        let retrieve = self.provider.retrieve.ok_or_else(|| TierError("no retrieve".into()))?;
        let mut buf = vec![0u8; MAX_VALUE_BYTES];
        let mut len = c_uint::try_from(buf.len()).unwrap_or(0);
        let status = self.with_pool(|pool| {
            // SAFETY: instance and server are valid (see SocacheTier); the key and the
            // buffer are ours for the call, and `len` says how much the buffer holds.
            unsafe {
                retrieve(
                    self.instance.as_ptr(),
                    self.server.as_ptr(),
                    key.as_ptr(),
                    key_len(key),
                    buf.as_mut_ptr(),
                    &mut len,
                    pool,
                )
            }
        })?;
        match status {
            0 => {
                buf.truncate((len as usize).min(MAX_VALUE_BYTES));
                Ok(Some(buf))
            }
            APR_NOTFOUND => Ok(None),
            other => Err(failed("reading", other)),
        }
    }

    fn put(&self, key: &str, value: &[u8], expires: UnixTime) -> Result<(), TierError> {
        let store = self.provider.store.ok_or_else(|| TierError("no store".into()))?;
        let len = c_uint::try_from(value.len()).map_err(|_| TierError("value too large".into()))?;
        let expiry = expires.secs().saturating_mul(1_000_000);
        let status = self.with_pool(|pool| {
            // SAFETY: as in `get`; the provider copies the value during the call.
            unsafe {
                store(
                    self.instance.as_ptr(),
                    self.server.as_ptr(),
                    key.as_ptr(),
                    key_len(key),
                    expiry,
                    value.as_ptr().cast_mut(),
                    len,
                    pool,
                )
            }
        })?;
        if status == 0 {
            Ok(())
        } else {
            Err(failed("writing", status))
        }
    }

    fn remove(&self, key: &str) -> Result<(), TierError> {
        let remove = self.provider.remove.ok_or_else(|| TierError("no remove".into()))?;
        let status = self.with_pool(|pool| {
            // SAFETY: as in `get`.
            unsafe { remove(self.instance.as_ptr(), self.server.as_ptr(), key.as_ptr(), key_len(key), pool) }
        })?;
        match status {
            0 | APR_NOTFOUND => Ok(()),
            other => Err(failed("removing", other)),
        }
    }
}
