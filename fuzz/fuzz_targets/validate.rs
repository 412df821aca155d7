//! Response validation from arbitrary bytes: `ocsp::validate`, the public entry every
//! responder answer and stored file goes through. Inputs are raw DER, so a crash file
//! reads with `openssl ocsp -respin FILE -resp_text`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mod_stapling::ocsp::{self, Policy};
use mod_stapling_fuzz::{check_plan, check_verified, leaf, now, policy, setting_variants, verbose};

fuzz_target!(|data: &[u8]| {
    let now = now();
    for settings in setting_variants() {
        let policy = policy(settings);
        let result = ocsp::validate(data, leaf(), &policy, now);
        if verbose() {
            eprintln!("{policy:?}: {result:?}");
        }
        if let Ok(v) = result {
            check_verified(&v, &policy, now);
            check_plan(v.this_update, v.next_update, settings, now);
        }
    }
    // A nonce the input would have to echo.
    let with_nonce = Policy { nonce: Some(b"mod_stapling-fuzz".to_vec()), ..policy(&setting_variants()[0]) };
    if let Ok(v) = ocsp::validate(data, leaf(), &with_nonce, now) {
        check_verified(&v, &with_nonce, now);
    }
});
