//! The module struct and every function Apache calls. Each turns its raw pointers into
//! typed handles and runs its body inside [`guard`], so no panic ever unwinds into C.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_ulong, c_void};
use std::ptr;

use super::boundary::guard;
use super::handles::{text, Pool, Server};
use super::{ffi, generation, log as aplog, refresher, server, socache};
use crate::cert::CertKey;
use crate::config::{Context, Outcome};
use crate::engine::MAX_TLS12_STAPLE;
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
    create_server_config: Some(server::create_server_config),
    merge_server_config: Some(server::merge_server_config),
    // Only the address of the shim's static table is taken (no unsafe needed).
    cmds: ptr::addr_of!(ffi::stapling_shim_cmds).cast(),
    register_hooks: Some(ffi::stapling_shim_register_hooks),
    flags: 0,
};

// Each hook function against the type httpd declares for it: a mismatch fails the build.
const _: ffi::ap_HOOK_pre_config_t = Some(stapling_rs_pre_config);
const _: ffi::ap_HOOK_post_config_t = Some(stapling_rs_post_config);
const _: ffi::ap_HOOK_child_init_t = Some(stapling_rs_child_init);
const _: ffi::ap_HOOK_ssl_ocsp_prime_hook_t = Some(stapling_rs_ocsp_prime);
const _: ffi::ap_HOOK_ssl_ocsp_get_resp_hook_t = Some(stapling_rs_ocsp_get_resp);

/// mod_ssl's certificate id: 20 bytes (SHA-1), or None.
///
/// # Safety
/// `id` is NULL or points to `id_len` readable bytes for the call.
unsafe fn cert_key(id: *const c_char, id_len: usize) -> Option<CertKey> {
    if id.is_null() || id_len != 20 {
        return None;
    }
    let mut key: CertKey = [0; 20];
    // SAFETY: the caller's contract; the length is checked above.
    key.copy_from_slice(unsafe { std::slice::from_raw_parts(id.cast::<u8>(), 20) });
    Some(key)
}

/// Every directive, ours and (in compatibility mode) mod_ssl's, arrives here.
#[no_mangle]
pub unsafe extern "C" fn stapling_rs_cmd(
    cmd: *mut ffi::cmd_parms,
    _dir: *mut c_void,
    arg: *const c_char,
) -> *const c_char {
    guard("directive parsing", c"mod_stapling: internal error while parsing a directive".as_ptr(), || {
        // SAFETY: Apache passes a live cmd_parms whose cmd, server and pool are set for
        // the call; the directive name and argument are NUL-terminated.
        let Some(cmd) = (unsafe { cmd.as_ref() }) else { return ptr::null() };
        let (name, value) = unsafe { (text((*cmd.cmd).name), text(arg)) };
        // SAFETY: the server being configured and the config pool, both live.
        let (Some(mut server), Some(pconf)) =
            (unsafe { Server::from_raw(cmd.server) }, unsafe { Pool::from_raw(cmd.pool) })
        else {
            return ptr::null();
        };
        let ctx = if server.is_virtual() { Context::VirtualHost } else { Context::Global };
        // SAFETY: directives are applied one at a time; nothing else borrows this config now.
        let Some(cfg) = (unsafe { server.config_mut() }) else { return ptr::null() };
        match cfg.settings.apply(&name, &value, ctx) {
            Ok(Outcome::Handled) if name.eq_ignore_ascii_case("StaplingCache") => {
                match cfg.settings.global.cache.as_ref().filter(|c| c.is_shared()) {
                    Some(spec) if socache::lookup(&spec.provider).is_none() => pconf.pstr(&format!(
                        "{name} {}: the socache provider '{}' is not loaded; load {} before this line",
                        spec.describe(),
                        spec.provider,
                        spec.module()
                    )),
                    _ => ptr::null(),
                }
            }
            Ok(Outcome::Handled) => ptr::null(),
            Ok(Outcome::PassToModSsl) => ffi::DECLINE_CMD.as_ptr().cast(),
            Ok(Outcome::IgnoredPassToModSsl(note)) => {
                generation::note(pconf, note);
                ffi::DECLINE_CMD.as_ptr().cast()
            }
            Ok(Outcome::AdjustedPassToModSsl(line)) => {
                generation::compat_warning(pconf, line);
                ffi::DECLINE_CMD.as_ptr().cast()
            }
            Err(e) => pconf.pstr(&e.to_string()),
        }
    })
}

/// Starts a configuration pass.
#[no_mangle]
pub unsafe extern "C" fn stapling_rs_pre_config(
    _pconf: *mut ffi::apr_pool_t,
    _plog: *mut ffi::apr_pool_t,
    _ptemp: *mut ffi::apr_pool_t,
) -> c_int {
    guard("pre_config", ffi::OK, || {
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
        // SAFETY: mod_ssl passes the vhost's live server_rec, `id_len` readable bytes
        // at `id` and a NUL-terminated PEM, all valid for the call.
        let (Some(server), Some(key), false) =
            (unsafe { Server::from_raw(s) }, unsafe { cert_key(id, id_len) }, pem.is_null())
        else {
            return ffi::DECLINED;
        };
        // Lines about this certificate go to its vhost's log (and the logger must not
        // keep a server_rec from the previous, freed configuration pass).
        aplog::init(server.as_ptr());
        // SAFETY: checked non-NULL above; NUL-terminated for the call.
        let pem = unsafe { text(pem) };
        if generation::prime(&server, key, &pem) {
            ffi::OK
        } else {
            ffi::DECLINED
        }
    })
}

/// True if the connection negotiated TLS 1.3. Asked of mod_ssl only for the rare
/// response too large for a TLS 1.2 CertificateStatus message.
///
/// # Safety
/// `s` and `c` are the live server and connection of the handshake (`c` may be NULL).
unsafe fn negotiated_tls13(s: *mut ffi::server_rec, c: *mut ffi::conn_rec) -> bool {
    if c.is_null() {
        return false;
    }
    // SAFETY: per the contract; mod_ssl answers from the connection's SSL, allocating
    // the result in the connection's pool, and returns NULL or a C string.
    unsafe {
        let version = ffi::ap_ssl_var_lookup((*c).pool, s, c, ptr::null_mut(), c"SSL_PROTOCOL".as_ptr());
        !version.is_null() && std::ffi::CStr::from_ptr(version).to_bytes() == b"TLSv1.3"
    }
}

/// The handshake path: copy the shared response out and hand it to mod_ssl.
/// No lock, no I/O, no parsing; the only allocation is the reusable copy buffer.
#[no_mangle]
pub unsafe extern "C" fn stapling_rs_ocsp_get_resp(
    s: *mut ffi::server_rec,
    c: *mut ffi::conn_rec,
    id: *const c_char,
    id_len: usize,
    cb: ffi::ap_ssl_ocsp_copy_resp,
    userdata: *mut c_void,
) -> c_int {
    thread_local!(static BUFFER: RefCell<StapleBuffer> = RefCell::new(StapleBuffer::default()));
    guard("ocsp_get_resp", ffi::DECLINED, || {
        // SAFETY: mod_ssl passes the connection's live server_rec and 20 readable bytes.
        let (Some(server), Some(key), Some(cb)) = (unsafe { Server::from_raw(s) }, unsafe { cert_key(id, id_len) }, cb)
        else {
            return ffi::DECLINED;
        };
        let Some(runtime) = server.runtime() else { return ffi::DECLINED };
        BUFFER.with_borrow_mut(|buf| match runtime.staple_or_wait(&key, buf) {
            None => ffi::DECLINED,
            // SAFETY: `c` is the live connection being handshaken, or NULL.
            Some(true) if buf.bytes().len() > MAX_TLS12_STAPLE && !unsafe { negotiated_tls13(s, c) } => {
                // SAFETY: NULL/0 is the documented "no response" call.
                unsafe { cb(ptr::null(), 0, userdata) };
                ffi::OK
            }
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

/// After mod_ssl primed every certificate: start this generation (in the real pass).
#[no_mangle]
pub unsafe extern "C" fn stapling_rs_post_config(
    _pconf: *mut ffi::apr_pool_t,
    _plog: *mut ffi::apr_pool_t,
    _ptemp: *mut ffi::apr_pool_t,
    s: *mut ffi::server_rec,
) -> c_int {
    guard("post_config", ffi::OK, || {
        // SAFETY: Apache passes the live main server of this configuration.
        let Some(main) = (unsafe { Server::from_raw(s) }) else { return ffi::OK };
        aplog::init(main.as_ptr());
        // Not the dry run, whose config pool is cleared unused.
        if !generation::is_dry_run() && generation::finish(main).is_err() {
            return ffi::HTTP_INTERNAL_SERVER_ERROR;
        }
        ffi::OK
    })
}

/// Each child starts its refresher thread; the startup helper already filled the store.
#[no_mangle]
pub unsafe extern "C" fn stapling_rs_child_init(pchild: *mut ffi::apr_pool_t, s: *mut ffi::server_rec) {
    guard("child_init", (), || {
        // SAFETY: the child's pool lives until the child exits; `s` is its main server.
        let (Some(pchild), Some(main)) = (unsafe { Pool::from_raw(pchild) }, unsafe { Server::from_raw(s) }) else {
            return;
        };
        if let Some(runtime) = main.runtime() {
            refresher::start(pchild, std::sync::Arc::clone(runtime));
        }
    })
}
