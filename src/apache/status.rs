//! The `stapling-status` handler and the section in mod_status's server-status page.
//! Both take a [`Snapshot`] of the runtime (atomic loads only: no lock a writer holds,
//! no fetch) and write what `crate::status` renders.

use std::ffi::{c_int, CStr};
use std::marker::PhantomData;
use std::ptr::NonNull;

use super::boundary::guard;
use super::ffi;
use super::handles::Server;
use crate::status::{self, Format, Section, Snapshot};

// Each hook function against the type httpd declares for it: a mismatch fails the build.
const _: ffi::ap_HOOK_handler_t = Some(stapling_rs_handler);
const _: ffi::ap_HOOK_status_hook_t = Some(stapling_rs_status_hook);

/// The handler name of `SetHandler stapling-status`.
const HANDLER: &[u8] = b"stapling-status";

/// A `request_rec` being handled, live for `'r`.
struct Request<'r> {
    raw: NonNull<ffi::request_rec>,
    _life: PhantomData<&'r mut ffi::request_rec>,
}

impl<'r> Request<'r> {
    /// # Safety
    /// `raw` is NULL or the live request Apache passed to a handler or status hook,
    /// used only by this thread for `'r`.
    unsafe fn from_raw(raw: *mut ffi::request_rec) -> Option<Request<'r>> {
        NonNull::new(raw).map(|raw| Request { raw, _life: PhantomData })
    }

    fn record(&self) -> &ffi::request_rec {
        // SAFETY: live for 'r (constructor contract).
        unsafe { self.raw.as_ref() }
    }

    /// True if `SetHandler` named our handler (no allocation: runs for every request).
    fn is_ours(&self) -> bool {
        let handler = self.record().handler;
        // SAFETY: `handler` is NULL or a NUL-terminated string in the request's or the
        // config's pool.
        !handler.is_null() && unsafe { CStr::from_ptr(handler) }.to_bytes() == HANDLER
    }

    fn is_get(&self) -> bool {
        // HEAD is M_GET too, with header_only set (Apache then drops the body).
        self.record().method_number == ffi::M_GET as c_int
    }

    /// Only GET is allowed (for the Allow header of a 405).
    fn allow_get_only(&mut self) {
        // SAFETY: the request is ours for 'r; `allowed` is a plain bit mask.
        unsafe { self.raw.as_mut().allowed = 1 << ffi::M_GET };
    }

    /// The query string, if any.
    fn args(&self) -> Option<String> {
        let args = self.record().args;
        // SAFETY: `args` is NULL or a NUL-terminated string in the request pool.
        (!args.is_null()).then(|| unsafe { CStr::from_ptr(args) }.to_string_lossy().into_owned())
    }

    /// The snapshot of the request's server's runtime; `None` if stapling is off.
    fn snapshot(&self) -> Option<Snapshot> {
        // SAFETY: `server` is the live server_rec of the request's vhost, part of the
        // current configuration, which outlives the request.
        let server = unsafe { Server::from_raw(self.record().server) }?;
        server.runtime().map(|rt| Snapshot::of(rt))
    }

    fn set_content_type(&mut self, content_type: &'static CStr) {
        // SAFETY: a live request; the type is static, so it outlives the request.
        unsafe { ffi::ap_set_content_type(self.raw.as_ptr(), content_type.as_ptr()) };
    }

    /// Writes `body` (through ap_rwrite: no format string involved). Stops at the first
    /// error (the client went away).
    fn write(&mut self, body: &str) {
        for chunk in body.as_bytes().chunks(1 << 20) {
            // SAFETY: a live request; `chunk` is readable for its length, which fits an
            // int; Apache copies or sends it before returning.
            let written = unsafe { ffi::ap_rwrite(chunk.as_ptr().cast(), chunk.len() as c_int, self.raw.as_ptr()) };
            if written < 0 {
                return;
            }
        }
    }
}

/// `SetHandler stapling-status`: HTML, `?json` or `?metrics`.
#[no_mangle]
pub unsafe extern "C" fn stapling_rs_handler(r: *mut ffi::request_rec) -> c_int {
    guard("stapling-status handler", ffi::HTTP_INTERNAL_SERVER_ERROR, || {
        // SAFETY: Apache passes the live request being handled, for this thread.
        let Some(mut req) = (unsafe { Request::from_raw(r) }) else { return ffi::DECLINED };
        if !req.is_ours() {
            return ffi::DECLINED;
        }
        req.allow_get_only();
        if !req.is_get() {
            return ffi::HTTP_METHOD_NOT_ALLOWED as c_int;
        }
        let format = Format::from_query(req.args().as_deref());
        let body = status::render(format, req.snapshot().as_ref());
        req.set_content_type(format.content_type());
        req.write(&body);
        ffi::OK
    })
}

/// The form of the section that mod_status's flags ask for.
fn section(flags: c_int) -> Section {
    if flags & ffi::AP_STATUS_SHORT as c_int != 0 {
        Section::Auto
    } else if flags & ffi::AP_STATUS_NOTABLE as c_int != 0 {
        Section::List
    } else {
        Section::Table
    }
}

/// mod_status's `status_hook`: our section of server-status (`?auto`: short form).
#[no_mangle]
pub unsafe extern "C" fn stapling_rs_status_hook(r: *mut ffi::request_rec, flags: c_int) -> c_int {
    guard("server-status section", ffi::DECLINED, || {
        // SAFETY: mod_status passes the live server-status request, for this thread.
        let Some(mut req) = (unsafe { Request::from_raw(r) }) else { return ffi::DECLINED };
        req.write(&status::server_status(req.snapshot().as_ref(), section(flags)));
        ffi::OK
    })
}
