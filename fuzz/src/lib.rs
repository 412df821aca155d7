//! What the fuzz targets share: the test PKI that `scripts/fuzz.sh` makes, the settings
//! they try (the defaults and both ends of every range), and the checks every accepted
//! response must pass.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use mod_stapling::cert::CertInfo;
use mod_stapling::config::{Context, Effective, RenewWindow, ServerConfig, MAX_RESPONDER_TIMEOUT_SECS, MAX_SPAN_SECS};
use mod_stapling::engine::ManagedCert;
use mod_stapling::ocsp::{Policy, Verified};
use mod_stapling::refresh::{self, MIN_REFRESH_INTERVAL, NO_NEXT_UPDATE_REFRESH};
use mod_stapling::time::{Clock, SystemClock, UnixTime};

/// The PKI directory: `$MOD_STAPLING_FUZZ_PKI`, else `fuzz/pki` (made by scripts/fuzz.sh).
pub fn pki_dir() -> PathBuf {
    std::env::var_os("MOD_STAPLING_FUZZ_PKI")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/pki")))
}

/// `leaf.crt` and `issuer.crt` of the PKI, as mod_ssl hands them over.
pub fn leaf() -> &'static CertInfo {
    static LEAF: OnceLock<CertInfo> = OnceLock::new();
    LEAF.get_or_init(|| {
        let dir = pki_dir();
        let read = |name: &str| {
            std::fs::read(dir.join(name)).unwrap_or_else(|e| {
                panic!("{}: {e}. Run scripts/fuzz.sh, which makes the PKI and the seeds", dir.join(name).display())
            })
        };
        CertInfo::from_pem_chain(&[read("leaf.crt"), read("issuer.crt")].concat()).expect("the PKI's leaf chain")
    })
}

/// "Now", read once per process so that a run is repeatable within itself.
pub fn now() -> UnixTime {
    static NOW: OnceLock<UnixTime> = OnceLock::new();
    *NOW.get_or_init(|| SystemClock.now())
}

/// True when `$MOD_STAPLING_FUZZ_VERBOSE` is set: the targets then print what they
/// decided, e.g. to see which seeds validate (`cargo fuzz run validate FILE...`).
pub fn verbose() -> bool {
    static VERBOSE: OnceLock<bool> = OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("MOD_STAPLING_FUZZ_VERBOSE").is_some())
}

/// `Stapling on` plus `directives`, applied as Apache would.
pub fn settings(directives: &[(&str, &str)]) -> Effective {
    let mut cfg = ServerConfig::default();
    for (name, arg) in [("Stapling", "on")].iter().chain(directives) {
        cfg.apply(name, arg, Context::Global).unwrap_or_else(|e| panic!("{name} {arg}: {e}"));
    }
    cfg.effective(true)
}

/// The defaults, and both ends of every range.
pub fn setting_variants() -> &'static [Effective] {
    static VARIANTS: OnceLock<Vec<Effective>> = OnceLock::new();
    VARIANTS.get_or_init(|| {
        vec![
            settings(&[]),
            settings(&[
                ("StaplingResponseTimeSkew", "2592000"),
                ("StaplingResponseMaxAge", "2592000"),
                ("StaplingRenewWindow", "99%"),
                ("StaplingResponderTimeout", "300"),
            ]),
            settings(&[
                ("StaplingResponseTimeSkew", "0"),
                ("StaplingResponseMaxAge", "1"),
                ("StaplingRenewWindow", "2592000"),
                ("StaplingResponderTimeout", "1"),
            ]),
        ]
    })
}

/// The leaf under each of [`setting_variants`].
pub fn managed_variants() -> &'static [ManagedCert] {
    static CERTS: OnceLock<Vec<ManagedCert>> = OnceLock::new();
    CERTS.get_or_init(|| {
        setting_variants()
            .iter()
            .map(|s| ManagedCert {
                info: leaf().clone(),
                settings: s.clone(),
                url: "http://127.0.0.1:9/".into(),
                vhosts: vec![],
            })
            .collect()
    })
}

/// The validation policy `settings` give (no nonce).
pub fn policy(settings: &Effective) -> Policy {
    Policy { time_skew: settings.time_skew, max_age: settings.max_age, nonce: None }
}

/// Every value in `e` lies inside its documented range.
pub fn check_ranges(e: &Effective) {
    assert!((1..=MAX_RESPONDER_TIMEOUT_SECS).contains(&e.responder_timeout.as_secs()), "{e:?}");
    assert!(e.time_skew.as_secs() <= MAX_SPAN_SECS, "{e:?}");
    assert!(e.max_age.is_none_or(|m| (1..=MAX_SPAN_SECS).contains(&m.as_secs())), "{e:?}");
    match e.renew_window {
        RenewWindow::Percent(p) => assert!((1..=99).contains(&p), "{e:?}"),
        RenewWindow::Fixed(d) => assert!((1..=MAX_SPAN_SECS).contains(&d.as_secs()), "{e:?}"),
    }
}

/// A response that passed `policy` at `now` has times the policy allows.
pub fn check_verified(v: &Verified, policy: &Policy, now: UnixTime) {
    assert!(v.this_update <= now.plus(policy.time_skew), "{v:?} passed {policy:?}");
    if let Some(next) = v.next_update {
        assert!(next >= now.minus(policy.time_skew), "{v:?} passed {policy:?}");
    }
    if let Some(max_age) = policy.max_age {
        assert!(v.this_update >= now.minus(max_age.saturating_add(policy.time_skew)), "{v:?} passed {policy:?}");
    }
}

/// The schedule of a response with these times: never a fetch at once (a loop), never
/// one after nextUpdate (unless that is within the hour), and stapled until exactly
/// nextUpdate plus the skew.
pub fn check_plan(this_update: UnixTime, next_update: Option<UnixTime>, settings: &Effective, now: UnixTime) {
    for jitter in [0.0, 0.5, 0.999_999] {
        let limits =
            refresh::Limits { skew: settings.time_skew, max_age: settings.max_age, window: settings.renew_window };
        let p = refresh::plan_success(this_update, next_update, now, limits, jitter);
        let case = || format!("{this_update:?} {next_update:?} {now:?} {settings:?}: {p:?}");
        assert!(p.next_fetch >= now.plus(MIN_REFRESH_INTERVAL), "{}", case());
        // The max age ends the staple early, never late.
        let aged_out = settings.max_age.map(|age| this_update.plus(age).plus(settings.time_skew));
        match next_update.filter(|n| *n > this_update) {
            Some(n) => {
                let end = n.plus(settings.time_skew);
                assert_eq!(p.staple_until, aged_out.map_or(end, |a| a.min(end)), "{}", case());
                assert!(p.next_fetch <= n.max(now.plus(Duration::from_secs(3600))), "{}", case());
            }
            None => {
                assert!(p.next_fetch <= now.plus(NO_NEXT_UPDATE_REFRESH), "{}", case());
                let day_long = this_update.max(now).plus(refresh::NO_NEXT_UPDATE_LIFETIME);
                assert!(aged_out.is_none_or(|a| p.staple_until == a.min(day_long)), "{}", case());
            }
        }
    }
}
