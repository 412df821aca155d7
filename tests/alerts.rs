//! Never fail in silence: at the default `LogLevel warn`, a staple that is dying,
//! dead and back again is said in the error log, once per state and rate-limited.

mod common;

use std::time::Duration;

use common::*;

/// The stapling lines of the error log (not the harness's or mod_ssl's).
fn stapling_lines(apache: &Apache) -> Vec<String> {
    apache.error_log().lines().filter(|l| l.contains("[stapling:")).map(str::to_string).collect()
}

/// A must-staple certificate (retries 5, 10, 20 s apart) with a response that ends
/// 40 s after the fetch (the fixture dates thisUpdate 60 s back): the renew about 10 s
/// later fails, so do the retries within the hour, the response expires, and the
/// responder comes back.
#[test]
fn a_failing_responder_warns_then_errors_at_expiry_then_recovers_at_loglevel_warn() {
    let s = Fixture::new("mode=good&validity=100");
    let mut o = ApacheOptions::new(s.pki.path("muststaple-chain.crt"), s.pki.path("muststaple.key"));
    o.global_conf = "LogLevel warn stapling:warn ssl:warn\n".into();
    o.vhost_conf = "Stapling on\nStaplingResponderTimeout 5\nStaplingResponseTimeSkew 0\n".into();
    let apache = Apache::start(o).expect("apache");
    assert!(s.staple(&apache).stapled, "{}", apache.error_log());
    s.responder.set("mode=http500");
    let expiring = "the last good response stays stapled, but it expires in ";
    assert!(apache.wait_log(expiring, Duration::from_secs(40)), "no expiring warning:\n{}", apache.error_log());
    let expired = "the OCSP response expired at ";
    assert!(apache.wait_log(expired, Duration::from_secs(40)), "no expiry error:\n{}", apache.error_log());
    assert!(!s.staple(&apache).stapled);
    s.responder.set("mode=good&validity=3600");
    let recovered = "recovered: a fresh OCSP response is stapled again after the response had expired";
    assert!(apache.wait_log(recovered, Duration::from_secs(60)), "no recovery line:\n{}", apache.error_log());
    assert!(s.staple(&apache).stapled);

    let lines = stapling_lines(&apache);
    eprintln!("{}", lines.join("\n"));
    let with = |needle: &str| lines.iter().filter(|l| l.contains(needle)).cloned().collect::<Vec<_>>();
    let warned = with(expiring);
    assert_eq!(warned.len(), 1, "one expiring warning within the hour, though every retry failed:\n{lines:#?}");
    assert!(warned[0].contains("[stapling:warn]") && warned[0].contains("CN=localhost"), "{}", warned[0]);
    assert!(warned[0].contains("the responder http://127.0.0.1:"), "{}", warned[0]);
    assert!(warned[0].contains("answered HTTP 500") && warned[0].contains("the responder is failing"), "{}", warned[0]);
    assert!(warned[0].contains("(vhost localhost:"), "{}", warned[0]);
    let errors = with(expired);
    assert_eq!(errors.len(), 1, "{lines:#?}");
    assert!(errors[0].contains("[stapling:error]") && errors[0].contains("nothing is stapled"), "{}", errors[0]);
    assert!(errors[0].contains("clients that require a staple will fail"), "{}", errors[0]);
    assert!(errors[0].contains(" UTC"), "a date, not Unix seconds: {}", errors[0]);
    let back = with(recovered);
    assert_eq!(back.len(), 1, "{lines:#?}");
    assert!(back[0].contains("[stapling:warn]"), "{}", back[0]);
    assert!(
        lines.iter().all(|l| l.contains("[stapling:warn]") || l.contains("[stapling:error]")),
        "LogLevel warn shows nothing below: {lines:#?}"
    );
}
