//! A stored file, from the disk to the decision to staple it: the bytes are written as
//! `<key>.der`, read back by `DiskStore::load` (size limit, file checks) and judged by
//! `engine::accept_stored` under the defaults and both ends of every range; what is
//! accepted is then scheduled. Inputs are the file's bytes.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mod_stapling::engine::accept_stored;
use mod_stapling::ocsp::MAX_RESPONSE_BYTES;
use mod_stapling::store::DiskStore;
use mod_stapling_fuzz::{check_plan, check_verified, leaf, managed_variants, now, policy};

/// A private directory: `$MOD_STAPLING_FUZZ_TMP` (scripts/fuzz.sh makes and removes
/// it), else one under the temporary directory named after this process.
fn store() -> &'static DiskStore {
    static STORE: OnceLock<DiskStore> = OnceLock::new();
    STORE.get_or_init(|| {
        let base = std::env::var_os("MOD_STAPLING_FUZZ_TMP").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("mod_stapling-fuzz-store.{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz store directory");
        DiskStore::new(dir)
    })
}

fuzz_target!(|data: &[u8]| {
    let (store, key) = (store(), leaf().key);
    std::fs::write(store.path(&key), data).expect("write the stored file");
    let bytes = match store.load(&key) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => panic!("the file just written is missing"),
        Err(e) => {
            assert!(data.len() as u64 > MAX_RESPONSE_BYTES, "a plain file of {} bytes refused: {e}", data.len());
            return;
        }
    };
    assert_eq!(bytes, data, "the store reads back what was written");
    let now = now();
    for cert in managed_variants() {
        if let Ok(v) = accept_stored(&bytes, cert, now) {
            check_verified(&v, &policy(&cert.settings), now);
            check_plan(v.this_update, v.next_update, &cert.settings, now);
        }
    }
});
