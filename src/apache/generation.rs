//! Starting a configuration generation in the parent: the shared store, the disk
//! store, the runtime, and the startup helper that fills them before the children fork.

use std::time::Duration;

use log::{error, info, warn};

use super::entry::server_config;
use super::{ffi, pool, process, shm};
use crate::cert::CertKey;
use crate::config::ServerConfig;
use crate::engine::{ManagedCert, Registry, Runtime};
use crate::store::{region_words, slots_in, DiskStore, SharedStore, DEFAULT_SLOT_DER_BYTES};

/// Seconds added to the responder timeout while the parent waits for the startup helper.
const HELPER_GRACE: Duration = Duration::from_secs(2);
/// Stored files of certificates no longer configured are kept this long.
const STORE_GRACE: Duration = Duration::from_secs(7 * 86_400);

/// The runtime for the certificates mod_ssl primed in this pass, with responses fetched
/// (or restored) before it returns; `None` when there is nothing to staple.
pub(super) fn start_generation(s: *mut ffi::server_rec, registry: Registry) -> Option<Box<Runtime>> {
    let main_cfg = server_config(s)?;
    let mut certs = registry.certs;
    if certs.is_empty() {
        return None;
    }
    let slots = plan_slots(&mut certs, main_cfg.cache_spec().and_then(|c| c.size));
    // SAFETY: `s` is the live main server; process is set for its whole life.
    let process_pool = unsafe { (*(*s).process).pool };
    let words = match shm::region(process_pool, region_words(slots, DEFAULT_SLOT_DER_BYTES)) {
        Ok(words) => words,
        Err(e) => {
            error!("{e}; OCSP stapling is off until the next restart");
            return None;
        }
    };
    let store = match SharedStore::attach(words, DEFAULT_SLOT_DER_BYTES) {
        Ok(store) => store,
        Err(e) => {
            error!("{e}; OCSP stapling is off until the next restart");
            return None;
        }
    };
    let disk = disk_store(s, main_cfg);
    let runtime = match Runtime::new(store, certs, disk) {
        Ok(r) => Box::new(r),
        Err(e) => {
            error!("{e}: cannot place every certificate; OCSP stapling is off until the next restart");
            return None;
        }
    };
    run_startup_helper(&runtime);
    if let Some(disk) = &runtime.disk {
        let keys: Vec<CertKey> = runtime.certs.iter().map(|c| c.info.key).collect();
        for name in disk.prune(&keys, STORE_GRACE) {
            info!("removed stored response {name}: its certificate is no longer configured");
        }
    }
    Some(runtime)
}

/// Slots for the shared store: what `StaplingCache` allows (dropping, loudly, the
/// certificates that do not fit), or room to grow at a graceful restart.
fn plan_slots(certs: &mut Vec<ManagedCert>, cache_bytes: Option<usize>) -> usize {
    let Some(bytes) = cache_bytes else { return (certs.len() * 2).max(16) };
    let fit = slots_in(bytes, DEFAULT_SLOT_DER_BYTES);
    if fit < certs.len() {
        let configured = certs.len();
        let dropped: Vec<String> = certs.drain(fit..).map(|c| c.info.label).collect();
        error!(
            "StaplingCache is too small: {fit} responses fit, {configured} certificates are configured. Not \
             stapled: {}. Raise the size in StaplingCache/SSLStaplingCache to at least {} bytes",
            dropped.join(", "),
            region_words(configured, DEFAULT_SLOT_DER_BYTES) * 8
        );
    }
    fit.max(1)
}

fn server_user() -> (u32, u32) {
    // SAFETY: ap_unixd_config is filled in by mod_unixd while reading the config.
    unsafe { (ffi::ap_unixd_config.user_id, ffi::ap_unixd_config.group_id) }
}

/// The directory for stored responses, created for the server's User, or None.
fn disk_store(s: *mut ffi::server_rec, cfg: &ServerConfig) -> Option<DiskStore> {
    let dir = match &cfg.global.store {
        Some(None) => return None,
        Some(Some(dir)) => server_root_relative(s, dir),
        None => default_store_dir(s),
    };
    let store = DiskStore::new(dir);
    // SAFETY: a plain query of the process's effective uid.
    let owner = (unsafe { libc::geteuid() } == 0).then(server_user);
    match store.prepare(owner) {
        Ok(()) => Some(store),
        Err(e) => {
            warn!(
                "StaplingStore {}: {e}; responses are kept in memory only and will be fetched again \
                 after a restart. Fix the directory or set StaplingStore none",
                store.dir().display()
            );
            None
        }
    }
}

fn server_root_relative(s: *mut ffi::server_rec, path: &str) -> String {
    if path.starts_with('/') {
        return path.to_string();
    }
    let c = std::ffi::CString::new(path).unwrap_or_default();
    // SAFETY: the main server's process pool is live; ap_server_root_relative copies
    // into it and returns NULL only on a bad path.
    let full = unsafe { ffi::ap_server_root_relative((*(*s).process).pconf, c.as_ptr()) };
    if full.is_null() {
        path.to_string()
    } else {
        pool::text(full).into_owned()
    }
}

/// Debian keeps state under /var/cache/apache2; RHEL's ServerRoot has a `state` link
/// to /var/lib/httpd; anything else gets a directory under ServerRoot.
fn default_store_dir(s: *mut ffi::server_rec) -> String {
    let root = server_root_relative(s, "");
    let root = root.trim_end_matches('/');
    if root == "/etc/apache2" {
        "/var/cache/apache2/mod_stapling".into()
    } else if std::path::Path::new(&format!("{root}/state")).is_dir() {
        format!("{root}/state/mod_stapling")
    } else {
        format!("{root}/stapling")
    }
}

fn run_startup_helper(runtime: &Runtime) {
    let longest = runtime.certs.iter().map(|c| c.settings.responder_timeout).max().unwrap_or_default();
    let (uid, gid) = server_user();
    match process::run_helper(uid, gid, longest + HELPER_GRACE, || runtime.startup_pass()) {
        process::HelperEnd::Exited(0) => {}
        process::HelperEnd::Exited(code) => warn!("startup fetch helper exited with status {code}"),
        process::HelperEnd::TimedOut => warn!(
            "startup fetch did not finish within {}s; the children go on trying in the background",
            (longest + HELPER_GRACE).as_secs()
        ),
        process::HelperEnd::ForkFailed(e) => {
            warn!("cannot start the startup fetch helper ({e}); fetching in the children")
        }
    }
    let stapled = (0..runtime.certs.len())
        .filter(|&i| runtime.store.state(runtime.slots[i]).staple_until > crate::engine::unix_now())
        .count();
    info!("OCSP stapling ready: {stapled} of {} certificates have a verified response", runtime.certs.len());
}
