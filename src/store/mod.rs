//! Where responses live: shared memory for the handshake path, disk across restarts.

pub mod disk;
pub mod shared;

pub use disk::DiskStore;
pub use shared::{
    region_words, slots_in, supersedes, Lease, Publish, Published, Schedule, SharedStore, SlotState, SlotStatus,
    StapleBuffer, StoreError, DEFAULT_SLOT_DER_BYTES, LAYOUT_VERSION,
};
