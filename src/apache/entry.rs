//! The module struct and every function Apache calls. Each entry point runs its body
//! inside [`guard`], so no panic ever unwinds into C.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_ulong, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

use log::{error, info, warn};

use super::{ffi, generation, log as aplog, pool, refresher};
use crate::cert::{CertInfo, CertKey};
use crate::config::{Context, Outcome, ServerConfig};
use crate::engine::{PrimeDecision, Registry, Runtime};
use crate::store::StapleBuffer;

/// The module record Apache finds with `LoadModule stapling_module`. Rust owns it so that
/// the cdylib exports the symbol; the directive table and hook registration are the
/// C shim's.
#[no_mangle]
pub static mut stapling_module: ffi::module = ffi::module {
    version: ffi::MODULE_MAGIC_NUMBER_MAJOR as c_int,
    minor_version: ffi::MODULE_MAGIC_NUMBER_MINOR as c_int,
    module_index: -1,
    name: c"mod_stapling.c".as_ptr(),
    dynamic_load_handle: ptr::null_mut(),
    next: ptr::null_mut(),
    magic: ffi::MODULE_MAGIC_COOKIE as c_ulong,
    rewrite_args: None,
    create_dir_config: None,
    merge_dir_config: None,
    create_server_config: Some(create_server_config),
    merge_server_config: Some(merge_server_config),
    // Only the address of the shim's static table is taken (no unsafe needed).
    cmds: ptr::addr_of!(ffi::stapling_shim_cmds).cast(),
    register_hooks: Some(ffi::stapling_shim_register_hooks),
    flags: 0,
};

/// What one configuration pass collected: reset in pre_config, consumed in post_config.
#[derive(Default)]
struct Pass {
    registry: Registry,
    notes: Vec<String>,
}

static PASS: Mutex<Option<Pass>> = Mutex::new(None);

/// The runtime of the current generation, built in the parent's post_config and
/// inherited by the children at fork.
static RUNTIME: AtomicPtr<Runtime> = AtomicPtr::new(ptr::null_mut());

/// Runs `body`, turning a panic into an error line and `fallback`.
pub(super) fn guard<T>(what: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        let detail = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        aplog::write(3, &format!("internal error in {what}: {detail}; please report this bug"));
        fallback
    })
}

fn with_pass<T>(f: impl FnOnce(&mut Pass) -> T) -> T {
    let mut guard = PASS.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(Pass::default))
}

/// The module's config on server `s`.
pub(super) fn server_config<'a>(s: *const ffi::server_rec) -> Option<&'a mut ServerConfig> {
    if s.is_null() {
        return None;
    }
    // SAFETY: `s` is a live server_rec; module_config is an array indexed by module
    // index, whose entry for us was made by create/merge_server_config below.
    unsafe {
        let index = ffi::stapling_shim_module_index();
        let vector = (*s).module_config as *mut *mut c_void;
        if vector.is_null() || index < 0 {
            return None;
        }
        (*vector.add(index as usize)).cast::<ServerConfig>().as_mut()
    }
}

fn vhost_label(s: *const ffi::server_rec) -> String {
    // SAFETY: `s` is a live server_rec; its strings are NUL-terminated or NULL.
    unsafe {
        let host = pool::text((*s).server_hostname);
        let addrs = (*s).addrs;
        let port = if addrs.is_null() { (*s).port } else { (*addrs).host_port };
        format!("{}:{}", if host.is_empty() { "(unnamed)".into() } else { host }, port)
    }
}

unsafe extern "C" fn create_server_config(p: *mut ffi::apr_pool_t, _s: *mut ffi::server_rec) -> *mut c_void {
    guard("create_server_config", ptr::null_mut(), || pool::pool_owned(p, ServerConfig::default()).cast())
}

unsafe extern "C" fn merge_server_config(p: *mut ffi::apr_pool_t, base: *mut c_void, add: *mut c_void) -> *mut c_void {
    guard("merge_server_config", add, || {
        // SAFETY: both are ServerConfigs made by create/merge_server_config.
        let (base, add) = unsafe { (&*base.cast::<ServerConfig>(), &*add.cast::<ServerConfig>()) };
        pool::pool_owned(p, ServerConfig::merge(base, add)).cast()
    })
}

/// Every directive, ours and (in compatibility mode) mod_ssl's, arrives here.
#[no_mangle]
pub unsafe extern "C" fn stapling_rs_cmd(
    cmd: *mut ffi::cmd_parms,
    _dir: *mut c_void,
    arg: *const c_char,
) -> *const c_char {
    guard("directive parsing", c"mod_stapling: internal error while parsing a directive".as_ptr(), || {
        if cmd.is_null() {
            return ptr::null();
        }
        // SAFETY: Apache passes a live cmd_parms whose cmd and server are set.
        let (name, server, cmd_pool) = unsafe { (pool::text((*(*cmd).cmd).name), (*cmd).server, (*cmd).pool) };
        // SAFETY: `server` is live; is_virtual is a plain field.
        let ctx = if unsafe { (*server).is_virtual } != 0 { Context::VirtualHost } else { Context::Global };
        let Some(cfg) = server_config(server) else { return ptr::null() };
        match cfg.apply(&name, &pool::text(arg), ctx) {
            Ok(Outcome::Handled) => ptr::null(),
            Ok(Outcome::PassToModSsl) => ffi::DECLINE_CMD.as_ptr().cast(),
            Ok(Outcome::IgnoredPassToModSsl(note)) => {
                with_pass(|p| {
                    if !p.notes.contains(&note) {
                        p.notes.push(note)
                    }
                });
                ffi::DECLINE_CMD.as_ptr().cast()
            }
            Err(e) => pool::pstr(cmd_pool, &e.to_string()),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn stapling_rs_pre_config(
    _pconf: *mut ffi::apr_pool_t,
    _plog: *mut ffi::apr_pool_t,
    _ptemp: *mut ffi::apr_pool_t,
) -> c_int {
    guard("pre_config", ffi::OK, || {
        with_pass(|p| *p = Pass::default());
        aplog::init(ptr::null_mut());
        ffi::OK
    })
}

/// mod_ssl hands over each certificate (leaf PEM, then issuer PEM) during its post_config.
#[no_mangle]
pub unsafe extern "C" fn stapling_rs_ocsp_prime(
    s: *mut ffi::server_rec,
    _p: *mut ffi::apr_pool_t,
    id: *const c_char,
    id_len: usize,
    pem: *const c_char,
) -> c_int {
    guard("ocsp_prime", ffi::DECLINED, || {
        if id.is_null() || pem.is_null() || id_len != 20 {
            return ffi::DECLINED;
        }
        let Some(cfg) = server_config(s) else { return ffi::DECLINED };
        let settings = cfg.effective(cfg.compatibility());
        if !settings.enabled {
            return ffi::DECLINED;
        }
        // Lines about this certificate go to its vhost's log (and the logger must not
        // keep a server_rec from the previous, freed configuration pass).
        aplog::init(s);
        let mut key: CertKey = [0; 20];
        // SAFETY: mod_ssl passes `id_len` (checked: 20) readable bytes, valid for the call.
        key.copy_from_slice(unsafe { std::slice::from_raw_parts(id.cast::<u8>(), 20) });
        let vhost = vhost_label(s);
        let mut info = match CertInfo::from_pem_chain(pool::text(pem).as_bytes()) {
            Ok(info) => info,
            Err(e) => {
                error!("vhost {vhost}: {e}; this certificate is not stapled");
                return ffi::DECLINED;
            }
        };
        info.key = key;
        match with_pass(|p| p.registry.prime(info, settings, &vhost, s as usize)) {
            PrimeDecision::Take => ffi::OK,
            PrimeDecision::Off | PrimeDecision::NoUrl => ffi::DECLINED,
        }
    })
}

/// The handshake path: copy the shared response out and hand it to mod_ssl.
/// No lock, no I/O, no parsing; the only allocation is the reusable copy buffer.
#[no_mangle]
pub unsafe extern "C" fn stapling_rs_ocsp_get_resp(
    _s: *mut ffi::server_rec,
    _c: *mut ffi::conn_rec,
    id: *const c_char,
    id_len: usize,
    cb: ffi::ap_ssl_ocsp_copy_resp,
    userdata: *mut c_void,
) -> c_int {
    thread_local!(static BUFFER: RefCell<StapleBuffer> = RefCell::new(StapleBuffer::default()));
    guard("ocsp_get_resp", ffi::DECLINED, || {
        let (Some(cb), false, 20) = (cb, id.is_null(), id_len) else { return ffi::DECLINED };
        // SAFETY: RUNTIME is NULL or a leaked Runtime that is never freed while a
        // process of its generation runs.
        let Some(runtime) = (unsafe { RUNTIME.load(Ordering::Acquire).as_ref() }) else { return ffi::DECLINED };
        let mut key: CertKey = [0; 20];
        // SAFETY: mod_ssl passes 20 readable bytes, valid for the call.
        key.copy_from_slice(unsafe { std::slice::from_raw_parts(id.cast::<u8>(), 20) });
        BUFFER.with_borrow_mut(|buf| match runtime.staple(&key, buf) {
            None => ffi::DECLINED,
            Some(true) => {
                let der = buf.bytes();
                // SAFETY: `der` is valid for the duration of the callback, which copies it.
                unsafe { cb(der.as_ptr(), der.len(), userdata) };
                ffi::OK
            }
            Some(false) => {
                // SAFETY: NULL/0 is the documented "no response" call.
                unsafe { cb(ptr::null(), 0, userdata) };
                ffi::OK
            }
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn stapling_rs_post_config(
    _pconf: *mut ffi::apr_pool_t,
    _plog: *mut ffi::apr_pool_t,
    _ptemp: *mut ffi::apr_pool_t,
    s: *mut ffi::server_rec,
) -> c_int {
    guard("post_config", ffi::OK, || {
        aplog::init(s);
        // SAFETY: a plain query of Apache's state.
        if unsafe { ffi::ap_state_query(ffi::AP_SQ_MAIN_STATE as c_int) } == ffi::AP_SQ_MS_CREATE_PRE_CONFIG as c_int {
            return ffi::OK; // the dry run: the real pass follows
        }
        let pass = with_pass(std::mem::take);
        report_load_order(server_config(s).is_none_or(|c| c.compatibility()));
        pass.notes.iter().chain(pass.registry.no_url.iter().map(|(_, line)| line)).for_each(|n| info!("{n}"));
        report_unprimed_vhosts(s, &pass.registry);
        replace_runtime(generation::start_generation(s, pass.registry));
        ffi::OK
    })
}

/// Modules loaded later are searched first for a directive, so compatibility mode
/// only sees mod_ssl's directives when we are loaded after mod_ssl.
fn report_load_order(compatibility: bool) {
    // SAFETY: ap_top_module heads the list of loaded modules, which Apache does not
    // change during post_config; names are NUL-terminated.
    let names: Vec<String> = unsafe {
        let mut names = Vec::new();
        let mut m = ffi::ap_top_module;
        while !m.is_null() {
            names.push(pool::text((*m).name).into_owned());
            m = (*m).next;
        }
        names
    };
    let ours = names.iter().position(|n| n == "mod_stapling.c");
    // mod_tls uses the same core hooks, so it works too (without compatibility mode).
    let tls = names.iter().any(|n| n == "mod_tls.c");
    match (ours, names.iter().position(|n| n == "mod_ssl.c")) {
        (_, None) if !tls => {
            error!("mod_ssl is not loaded: mod_stapling has nothing to staple. Enable it (a2enmod ssl)")
        }
        (_, None) => {}
        (Some(o), Some(ssl)) if ssl < o && compatibility => warn!(
            "mod_stapling is loaded before mod_ssl, so compatibility mode cannot read SSLUseStapling and \
             SSLStapling*; load mod_stapling after mod_ssl (on Debian: a2enmod stapling does this)"
        ),
        _ => {}
    }
}

/// mod_ssl never primes a certificate whose issuer it cannot find.
fn report_unprimed_vhosts(main: *mut ffi::server_rec, registry: &Registry) {
    let mut s = main;
    while !s.is_null() {
        if let Some(cfg) = server_config(s) {
            let on = cfg.effective(cfg.compatibility()).enabled;
            if on && cfg.switch_in_vhost && !registry.primed_servers.contains(&(s as usize)) {
                error!(
                    "vhost {}: Stapling is on, but mod_ssl handed over no certificate with an OCSP \
                     responder for it. Usually mod_ssl could not find the issuer: add the intermediate \
                     CA certificate to the file in SSLCertificateFile (after the server certificate)",
                    vhost_label(s)
                );
            }
        }
        // SAFETY: the server list is live and NULL-terminated.
        s = unsafe { (*s).next };
    }
}

/// Installs this generation's runtime. The parent has no other threads, so the previous
/// runtime has no readers left in this process.
fn replace_runtime(runtime: Option<Box<Runtime>>) {
    let new = runtime.map_or(ptr::null_mut(), Box::into_raw);
    let old = RUNTIME.swap(new, Ordering::AcqRel);
    if !old.is_null() {
        // SAFETY: `old` came from Box::into_raw here, in an earlier generation.
        drop(unsafe { Box::from_raw(old) });
    }
}

/// Each child starts its refresher thread; the startup helper already filled the store.
#[no_mangle]
pub unsafe extern "C" fn stapling_rs_child_init(pchild: *mut ffi::apr_pool_t, _s: *mut ffi::server_rec) {
    guard("child_init", (), || {
        let runtime = RUNTIME.load(Ordering::Acquire);
        if !runtime.is_null() {
            refresher::start(pchild, runtime);
        }
    })
}
