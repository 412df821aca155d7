//! Where responses live: shared memory for the handshake path, disk across restarts.

pub mod disk;
pub mod shared;

pub use disk::DiskStore;
pub use shared::{
    supersedes, CapTooSmall, Layout, Lease, Publish, Published, Schedule, SharedStore, SlotState, SlotStatus, Source,
    StapleBuffer, StoreError, Usage, INLINE_DER_BYTES, LARGE_DER_BYTES, LAYOUT_VERSION,
};
