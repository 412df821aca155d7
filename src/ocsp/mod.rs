//! OCSP: build the request, fetch it over HTTP(S), directly or through a proxy, and validate the answer. Pure Rust.

pub mod fetch;
pub mod proxy;
pub mod request;
pub mod tls;
pub mod validate;

pub use fetch::{fetch, Client, Exchange, FetchError, RequestMethod, MAX_RESPONSE_BYTES};
pub use request::build_request;
pub use validate::{validate, CertStatus, Policy, Rejection, Verified};
