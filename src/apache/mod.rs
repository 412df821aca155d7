//! The only place with `unsafe`: Apache's FFI types, the module struct, the hook entry
//! points (each a panic boundary), the log bridge, shared memory and the startup helper.

#![allow(unsafe_code)]

mod entry;
mod ffi;
mod generation;
pub mod log;
mod pool;
mod process;
mod refresher;
mod shm;

pub use entry::stapling_module;
