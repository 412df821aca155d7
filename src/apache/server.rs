//! The module's per-server configuration: the parsed directives, and the runtime of the
//! configuration generation the server belongs to. Both live in that generation's
//! config pool, so a restart frees them.

use std::ffi::c_void;
use std::ptr::{self, NonNull};
use std::sync::{Arc, OnceLock};

use super::boundary::guard;
use super::ffi;
use super::handles::{Pool, Server};
use crate::config::ServerConfig;
use crate::engine::Runtime;

/// What the module keeps on each `server_rec`.
#[derive(Default)]
pub(crate) struct ModuleConfig {
    /// The directives that apply to this server.
    pub settings: ServerConfig,
    /// The runtime of this configuration, set in post_config (so every process forked
    /// from it finds it); dropped with the config pool.
    pub runtime: OnceLock<Arc<Runtime>>,
}

impl<'s> Server<'s> {
    /// The module's config on this server.
    pub(crate) fn config(&self) -> Option<&'s ModuleConfig> {
        // SAFETY: the entry is NULL or a ModuleConfig made by create/merge below, owned
        // by the config pool, which outlives 's.
        unsafe { self.module_config_ptr().cast::<ModuleConfig>().as_ref() }
    }

    /// The module's config on this server, to apply a directive to.
    ///
    /// # Safety
    /// No other reference to this server's module config is alive while the result is
    /// (true while Apache reads directives: one at a time, in one thread).
    pub(crate) unsafe fn config_mut(&mut self) -> Option<&mut ModuleConfig> {
        // SAFETY: as in `config`, plus the caller's contract.
        unsafe { self.module_config_ptr().cast::<ModuleConfig>().as_mut() }
    }

    /// This configuration's runtime, if stapling runs.
    pub(crate) fn runtime(&self) -> Option<&'s Arc<Runtime>> {
        self.config()?.runtime.get()
    }
}

fn into_pool(pool: *mut ffi::apr_pool_t, config: ModuleConfig) -> *mut c_void {
    // SAFETY: Apache passes the live config pool, which holds server configs until it
    // is cleared.
    match unsafe { Pool::from_raw(pool) } {
        Some(pool) => pool.own(config).as_ptr().cast(),
        None => ptr::null_mut(),
    }
}

/// `create_server_config` of the module struct.
pub(super) unsafe extern "C" fn create_server_config(p: *mut ffi::apr_pool_t, _s: *mut ffi::server_rec) -> *mut c_void {
    guard("create_server_config", ptr::null_mut(), || into_pool(p, ModuleConfig::default()))
}

/// `merge_server_config` of the module struct.
pub(super) unsafe extern "C" fn merge_server_config(
    p: *mut ffi::apr_pool_t,
    base: *mut c_void,
    add: *mut c_void,
) -> *mut c_void {
    guard("merge_server_config", add, || {
        let (Some(base), Some(add)) = (NonNull::new(base), NonNull::new(add)) else { return add };
        // SAFETY: both are ModuleConfigs made by create/merge_server_config, live in
        // the config pool.
        let (base, add) = unsafe { (base.cast::<ModuleConfig>().as_ref(), add.cast::<ModuleConfig>().as_ref()) };
        into_pool(
            p,
            ModuleConfig { settings: ServerConfig::merge(&base.settings, &add.settings), ..Default::default() },
        )
    })
}
