//! The only place with `unsafe`: Apache's FFI types, the module struct and the hook
//! entry points (`hooks`), the panic boundary (`boundary`), typed handles for pools and
//! servers (`handles`), the per-server config (`server`), the log bridge, shared memory
//! and the startup helper.
//!
//! Imports go one way: `hooks` → `generation`, `refresher` → `server`, `process`,
//! `shm` → `handles`, `boundary`, `log`, `ffi`.

#![allow(unsafe_code)]

mod boundary;
mod ffi;
mod generation;
mod handles;
mod hooks;
pub mod log;
mod process;
mod refresher;
mod server;
mod shm;

pub use hooks::stapling_module;
