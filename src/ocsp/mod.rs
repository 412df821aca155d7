//! OCSP: build the request, fetch it over HTTP, and validate the answer. Pure Rust.

pub mod fetch;
pub mod request;
pub mod validate;

pub use fetch::{fetch, FetchError, MAX_RESPONSE_BYTES};
pub use request::build_request;
pub use validate::{validate, CertStatus, Policy, Rejection, Verified};
