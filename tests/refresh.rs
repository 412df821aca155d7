//! One response for every worker: the shared store, the single-flight refresher and
//! the failure semantics, against a responder whose answers the tests control.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn opts(s: &Fixture, mpm: Mpm, children: u32, extra_vhost: &str) -> ApacheOptions {
    let mut o = ApacheOptions::for_pki(&s.pki);
    o.mpm = mpm;
    o.children = children;
    o.vhost_conf = format!("Stapling on\nStaplingResponderTimeout 5\n{extra_vhost}");
    o
}

fn many_handshakes_all_stapled_with_one_fetch(mpm: Mpm) {
    let s = Fixture::new("mode=good");
    let apache = Apache::start(opts(&s, mpm, 6, "")).expect("apache");
    let ca = s.pki.path("root.crt");
    for i in 0..120 {
        let r = s.staple(&apache);
        assert!(r.stapled && r.cert_status.as_deref() == Some("good"), "handshake {i}: {}", r.raw);
    }
    for i in 0..60 {
        let (ok, out) = curl_cert_status(apache.port(), &ca);
        assert!(ok, "curl {i}: {out}");
    }
    assert_eq!(s.responder.requests(), 1, "{}", apache.error_log());
}

#[test]
fn prefork_six_children_one_fetch() {
    many_handshakes_all_stapled_with_one_fetch(Mpm::Prefork);
}

#[test]
fn worker_six_children_one_fetch() {
    many_handshakes_all_stapled_with_one_fetch(Mpm::Worker);
}

#[test]
fn event_six_children_one_fetch() {
    many_handshakes_all_stapled_with_one_fetch(Mpm::Event);
}

#[test]
fn recycled_children_keep_stapling_without_fetching() {
    let s = Fixture::new("mode=good");
    let mut o = opts(&s, Mpm::Prefork, 3, "");
    o.global_conf = "MaxConnectionsPerChild 4\n".into();
    let apache = Apache::start(o).expect("apache");
    for i in 0..40 {
        assert!(s.staple(&apache).stapled, "handshake {i}");
    }
    assert_eq!(s.responder.requests(), 1);
}

#[test]
fn a_responder_answering_within_the_startup_wait_staples_the_first_handshake() {
    let s = Fixture::new("mode=good&delay=0.2");
    let apache = Apache::start(opts(&s, Mpm::Event, 6, "")).expect("apache");
    let started = Instant::now();
    let r = s.staple(&apache);
    let took = started.elapsed();
    assert!(r.stapled && r.cert_status.as_deref() == Some("good"), "{}", r.raw);
    assert!(took < Duration::from_millis(1500), "first handshake took {took:?}");
    assert_eq!(s.responder.requests(), 1);
}

#[test]
fn graceful_restart_keeps_the_staple_without_a_new_request() {
    let s = Fixture::new("mode=good");
    let apache = Apache::start(opts(&s, Mpm::Prefork, 3, "")).expect("apache");
    let before = s.staple(&apache).der().expect("staple before restart");
    apache.graceful();
    let after = s.staple(&apache).der().expect("staple after restart");
    assert_eq!(before, after);
    assert_eq!(s.responder.requests(), 1, "{}", apache.error_log());
}

/// Unix time of the response's nextUpdate, as `openssl ocsp` prints it.
fn next_update(der: &[u8]) -> i64 {
    let text = ocsp_resp_text(der);
    let line = text.lines().find_map(|l| l.trim().strip_prefix("Next Update: ")).expect("Next Update").to_string();
    let out = std::process::Command::new("date").args(["-u", "-d", &line, "+%s"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("date")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A good response that expires 20 s after the fetch; the renew schedule then asks
/// again after 5 s. `mode` is served from then on.
fn last_good_stays_until_expiry_then_nothing(mode: &str) {
    const SKEW: i64 = 2;
    let s = Fixture::new("mode=good&validity=80");
    let apache =
        Apache::start(opts(&s, Mpm::Prefork, 2, &format!("StaplingResponseTimeSkew {SKEW}\n"))).expect("apache");
    let good = s.staple(&apache).der().expect("initial staple");
    let expires = next_update(&good) + SKEW;
    s.responder.set(&format!("mode={mode}"));
    assert!(s.responder.wait_requests(2, Duration::from_secs(15)), "no refresh attempt:\n{}", apache.error_log());
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        assert_eq!(s.staple(&apache).der().as_ref(), Some(&good), "{mode}: staple changed:\n{}", apache.error_log());
    }
    assert!(apache.error_log().contains("the last good response stays stapled"), "{}", apache.error_log());
    // Stapled byte for byte until nextUpdate plus skew, then nothing.
    let mut dropped_at = None;
    let gone = wait_until(Duration::from_secs(40), || {
        let r = s.staple(&apache);
        let now = unix_now();
        match r.der() {
            Some(der) => {
                assert_eq!(der, good, "{mode}: staple changed before expiry");
                false
            }
            None => {
                dropped_at = Some(now);
                true
            }
        }
    });
    assert!(gone, "{mode}: still stapled long after nextUpdate");
    let dropped_at = dropped_at.unwrap();
    assert!(dropped_at >= expires - 1, "{mode}: dropped at {dropped_at}, before nextUpdate+skew {expires}");
    let r = s.staple(&apache);
    assert!(r.response_der_hex.is_none(), "{mode}: something stapled after expiry:\n{}", r.raw);
    let (ok, out) = curl_get(apache.port(), &s.pki.path("root.crt"));
    assert!(ok, "{out}");
}

macro_rules! fault_tests {
    ($($name:ident => $mode:literal),* $(,)?) => {
        $(#[test] fn $name() { last_good_stays_until_expiry_then_nothing($mode); })*
    };
}

fault_tests! {
    fault_bad_signature => "bad_signature",
    fault_wrong_certid => "wrong_certid",
    fault_unknown => "unknown",
    fault_expired => "expired",
    fault_not_yet_valid => "not_yet_valid",
    fault_truncated => "truncated",
    fault_html => "html",
    fault_http500 => "http500",
    fault_trylater => "trylater",
    fault_unauthorized => "unauthorized",
    fault_connection_closed => "close",
}

#[test]
fn revoked_replaces_good_within_the_renew_schedule() {
    let s = Fixture::new("mode=good&validity=80");
    let apache = Apache::start(opts(&s, Mpm::Event, 2, "")).expect("apache");
    assert_eq!(s.staple(&apache).cert_status.as_deref(), Some("good"));
    s.responder.set("mode=revoked");
    let revoked = wait_until(Duration::from_secs(20), || s.staple(&apache).cert_status.as_deref() == Some("revoked"));
    assert!(revoked, "{}", apache.error_log());
    assert!(apache.error_log().lines().any(|l| l.contains("[stapling:error]") && l.contains("REVOKED")));
}

#[test]
fn requests_stay_bounded_while_the_responder_fails() {
    let s = Fixture::new("mode=http500");
    let apache = Apache::start(opts(&s, Mpm::Prefork, 6, "")).expect("apache");
    std::thread::sleep(Duration::from_secs(40));
    let n = s.responder.requests();
    // The startup attempt, then one retry after 30-33 s; the next is a minute later.
    assert!((2..=3).contains(&n), "{n} requests in 40 s:\n{}", apache.error_log());
    assert!(!s.staple(&apache).stapled);
    assert_eq!(apache.log_count("[stapling:warn]"), 1, "one warning per failure streak:\n{}", apache.error_log());
}

#[test]
fn several_certificates_are_fetched_in_parallel_at_startup_once_each() {
    let s = Fixture::new("mode=good&delay=2");
    let mut o = opts(&s, Mpm::Event, 4, "");
    let mut ports = vec![];
    for name in ["leaf2", "muststaple"] {
        let port = free_port();
        ports.push(port);
        o.global_conf.push_str(&format!(
            "Listen 127.0.0.1:{port} https\n<VirtualHost 127.0.0.1:{port}>\nServerName localhost\nSSLEngine on\n\
             SSLCertificateFile {}\nSSLCertificateKeyFile {}\nStapling on\n</VirtualHost>\n",
            s.pki.path(&format!("{name}-chain.crt")).display(),
            s.pki.path(&format!("{name}.key")).display()
        ));
    }
    let started = Instant::now();
    let apache = Apache::start(o).expect("apache");
    // The server does not wait for the responder at all.
    assert!(started.elapsed() < Duration::from_secs(2), "startup took {:?}", started.elapsed());
    // Three 2 s fetches in parallel (about 2 s), not one after another (6 s or more).
    let all_stapled = wait_until(Duration::from_secs(5), || {
        std::iter::once(apache.port()).chain(ports.iter().copied()).all(|port| {
            let r = handshake(port, &s.pki.path("root.crt"), None);
            r.stapled && r.cert_status.as_deref() == Some("good")
        })
    });
    assert!(all_stapled, "not all stapled {:?} after the start:\n{}", started.elapsed(), apache.error_log());
    assert_eq!(s.responder.requests(), 3, "{}", apache.error_log());
}
