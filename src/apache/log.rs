//! Forwards `log` records to Apache's error log under the module's own LogLevel.

use std::sync::atomic::{AtomicPtr, Ordering};

use super::ffi;

/// The main server, set in post_config; records are logged against it.
static MAIN_SERVER: AtomicPtr<ffi::server_rec> = AtomicPtr::new(std::ptr::null_mut());

struct ApacheLogger;

static LOGGER: ApacheLogger = ApacheLogger;

/// APLOG_* levels from http_log.h.
fn aplog_level(level: log::Level) -> i32 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug => 7,
        log::Level::Trace => 8,
    }
}

impl log::Log for ApacheLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        // Libraries (the HTTP client) only reach the admin when something is wrong.
        if !metadata.target().starts_with("mod_stapling") && metadata.level() > log::Level::Warn {
            return false;
        }
        let s = MAIN_SERVER.load(Ordering::Acquire);
        // SAFETY: `s` is NULL or the main server_rec, which lives as long as the
        // configuration generation; the shim handles NULL.
        unsafe { ffi::stapling_shim_log_enabled(s, aplog_level(metadata.level())) != 0 }
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = format!("{}", record.args());
        let file = record.file().and_then(|f| std::ffi::CString::new(f).ok());
        write_at(file.as_deref(), record.line().unwrap_or(0), aplog_level(record.level()), &text);
    }

    fn flush(&self) {}
}

/// Logs `text` at APLOG level `level`; the text is passed as data, never as a format.
pub(crate) fn write(level: i32, text: &str) {
    write_at(None, 0, level, text);
}

fn write_at(file: Option<&std::ffi::CStr>, line: u32, level: i32, text: &str) {
    let s = MAIN_SERVER.load(Ordering::Acquire);
    let file = file.unwrap_or(c"mod_stapling");
    // SAFETY: the pointers and length describe `file` and `text`, which outlive the
    // call; the shim prints the text with "%.*s"; `s` is NULL or the live server_rec.
    unsafe { ffi::stapling_shim_log(file.as_ptr(), line as i32, level, 0, s, text.as_ptr().cast(), text.len()) };
}

/// Installs the logger (once per load of the module) and points it at `server`.
pub(crate) fn init(server: *mut ffi::server_rec) {
    MAIN_SERVER.store(server, Ordering::Release);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}
