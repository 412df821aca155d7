//! The panic boundary: every function Apache calls runs its body through [`guard`], so
//! no panic ever unwinds into C.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::log as aplog;

/// Runs `body`, turning a panic into an error line and `fallback`.
pub(crate) fn guard<T>(what: &str, fallback: T, body: impl FnOnce() -> T) -> T {
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
