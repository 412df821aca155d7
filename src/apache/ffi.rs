//! bindgen output for the allowlisted parts of httpd.h, http_config.h, http_ssl.h, ...
#![allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    unsafe_op_in_unsafe_fn,
    unknown_lints,
    unnecessary_transmutes,
    clippy::all
)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// `DECLINE_CMD` from http_config.h: the directive passes to the next module.
pub const DECLINE_CMD: &[u8] = b"\x07\x08\0";
/// Hook return values from httpd.h.
pub const OK: i32 = 0;
/// The hook declines.
pub const DECLINED: i32 = -1;
/// A hook failed: from post_config, Apache stops with "Configuration Failed".
pub const HTTP_INTERNAL_SERVER_ERROR: i32 = 500;
