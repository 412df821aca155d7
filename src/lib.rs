//! mod_stapling: OCSP stapling for Apache httpd 2.4.
//!
//! Layers: `apache` holds all of Apache's FFI code, types and pointers, and `openssl_ext`
//! the few OpenSSL calls the openssl crate lacks (the compiler refuses `unsafe_code`
//! anywhere else); `config`, `cert`, `ocsp`, `store`, `refresh`, `status`, `time`,
//! `transport` and `engine` are safe Rust, tested without Apache. OpenSSL is the only ASN.1 parser.

#![deny(unsafe_code, unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod alert;
// Unit tests and the fuzz targets (cargo-fuzz sets `--cfg fuzzing`) run without Apache,
// whose symbols exist only inside httpd.
#[cfg(not(any(test, fuzzing)))]
pub mod apache;
pub mod cert;
pub mod config;
pub mod diagnose;
pub mod engine;
pub mod failure;
pub mod fleet;
pub mod ocsp;
pub mod openssl_ext;
pub mod refresh;
pub mod status;
pub mod store;
#[cfg(test)]
pub mod testpki;
pub mod time;
pub mod transport;
