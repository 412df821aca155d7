//! The only place with `unsafe`: Apache's FFI types, the module struct and the hook
//! entry points (`hooks`), the panic boundary (`boundary`), typed handles for pools and
//! servers (`handles`), the per-server config (`server`), the log bridge, shared memory,
//! the startup helper, the fleet tier over socache providers (`socache`), and the status handler and server-status section (`status`).
//!
//! Imports go one way: `hooks`, `status` → `generation`, `refresher` → `server`,
//! `process`, `shm` → `handles`, `boundary`, `log`, `ffi`.

#![allow(unsafe_code)]

mod boundary;
mod conftree;
mod ffi;
mod generation;
mod handles;
mod hooks;
pub mod log;
mod process;
mod refresher;
mod server;
mod shm;
mod socache;
mod status;

pub use hooks::stapling_module;
