//! Responses that survive restarts and reboots, must-staple, certificate rotation and
//! a hostile or unwritable store.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use common::*;

fn opts(s: &Fixture, vhost_extra: &str) -> ApacheOptions {
    let mut o = ApacheOptions::for_pki(&s.pki);
    o.vhost_conf = format!("Stapling on\nStaplingResponderTimeout 3\n{vhost_extra}");
    o
}

fn must_staple_opts(s: &Fixture) -> ApacheOptions {
    let mut o = ApacheOptions::new(s.pki.path("muststaple-chain.crt"), s.pki.path("muststaple.key"));
    o.vhost_conf = "Stapling on\n".into();
    o
}

fn store_dir(apache: &Apache) -> PathBuf {
    apache.root().join("stapling")
}

fn stored_files(apache: &Apache) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(store_dir(apache)) else { return Vec::new() };
    entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "der")).collect()
}

#[test]
fn store_is_private_to_the_server_user() {
    let s = Fixture::new("mode=good");
    let apache = Apache::start(opts(&s, "")).expect("apache");
    // The helper fetches (and stores) in the background.
    assert!(wait_until(Duration::from_secs(10), || !stored_files(&apache).is_empty()), "{}", apache.error_log());
    let files = stored_files(&apache);
    assert_eq!(files.len(), 1, "{}", apache.error_log());
    let dir = fs::metadata(store_dir(&apache)).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o700);
    let file = fs::metadata(&files[0]).unwrap();
    assert_eq!(file.permissions().mode() & 0o777, 0o600);
    let www_data = std::process::Command::new("id").args(["-u", "www-data"]).output().unwrap();
    let uid: u32 = String::from_utf8_lossy(&www_data.stdout).trim().parse().unwrap();
    assert_eq!((dir.uid(), file.uid()), (uid, uid));
    // The file is the responder's DER, readable by openssl.
    let text = ocsp_resp_text(&fs::read(&files[0]).unwrap());
    assert!(text.contains("Cert Status: good"), "{text}");
}

#[test]
fn full_restart_with_responder_down_staples_from_the_store() {
    let s = Fixture::new("mode=good");
    let mut apache = Apache::start(opts(&s, "")).expect("apache");
    let before = s.staple(&apache).der().expect("staple");
    apache.stop();
    s.responder.set("mode=http500");
    apache.start_again();
    let r = s.staple(&apache);
    assert_eq!(r.der().as_ref(), Some(&before), "first handshake after restart:\n{}", apache.error_log());
    let (ok, out) = curl_cert_status(apache.port(), &s.pki.path("root.crt"));
    assert!(ok, "{out}");
    assert_eq!(s.responder.requests(), 1, "no new request:\n{}", apache.error_log());
    // The warm-restart line says when the responder is asked next, as a date.
    let log = apache.error_log();
    let line = log.lines().find(|l| l.contains("stapling the stored response")).expect("restore line");
    assert!(line.contains(" UTC) until a fresh one is fetched at 20") && line.ends_with(" UTC"), "{line}");
}

#[test]
fn graceful_restart_with_responder_down_keeps_stapling() {
    let s = Fixture::new("mode=good");
    let apache = Apache::start(opts(&s, "")).expect("apache");
    let before = s.staple(&apache).der().expect("staple");
    s.responder.set("mode=close");
    apache.graceful();
    assert_eq!(s.staple(&apache).der(), Some(before));
    assert_eq!(s.responder.requests(), 1);
}

#[test]
fn stored_response_that_expired_meanwhile_is_not_stapled() {
    // nextUpdate 5 s after the fetch, no skew allowed.
    let s = Fixture::new("mode=good&validity=65");
    let mut apache = Apache::start(opts(&s, "StaplingResponseTimeSkew 0\n")).expect("apache");
    assert!(s.staple(&apache).stapled);
    apache.stop();
    std::thread::sleep(Duration::from_secs(7));
    s.responder.set("mode=http500");
    apache.start_again();
    let r = s.staple(&apache);
    assert!(!r.stapled && r.response_der_hex.is_none(), "{}", r.raw);
    assert!(apache.error_log().contains("is not usable"), "{}", apache.error_log());
    assert!(stored_files(&apache).is_empty(), "expired file deleted");
}

#[test]
fn must_staple_certificate_is_stapled_from_the_first_handshake() {
    let s = Fixture::new("mode=good");
    let apache = Apache::start(must_staple_opts(&s)).expect("apache");
    let r = s.staple(&apache);
    assert!(r.stapled && r.cert_status.as_deref() == Some("good"), "{}", r.raw);
    let (ok, out) = curl_cert_status(apache.port(), &s.pki.path("root.crt"));
    assert!(ok, "{out}");
}

#[test]
fn must_staple_without_a_response_is_an_error_at_startup() {
    let s = Fixture::new("mode=http500");
    let apache = Apache::start(must_staple_opts(&s)).expect("apache");
    let log = apache.error_log();
    assert!(
        log.lines().any(|l| l.contains("[stapling:error]") && l.contains("must-staple") && l.contains("refuse")),
        "{log}"
    );
}

#[test]
fn rotated_certificate_gets_its_own_staple_on_the_first_handshake_after_reload() {
    let s = Fixture::new("mode=good");
    let mut apache = Apache::start(opts(&s, "")).expect("apache");
    assert!(s.staple(&apache).stapled);
    apache.reconfigure(|o| {
        o.cert = s.pki.path("leaf2-chain.crt");
        o.key = s.pki.path("leaf2.key");
    });
    apache.graceful();
    // curl checks that the staple is for the certificate it was sent.
    let (ok, out) = curl_cert_status(apache.port(), &s.pki.path("root.crt"));
    assert!(ok, "{out}\n{}", apache.error_log());
    assert_eq!(s.responder.requests(), 2);
}

#[test]
fn hostile_store_files_never_crash_apache_and_are_never_stapled() {
    let s = Fixture::new("mode=good");
    let mut apache = Apache::start(opts(&s, "")).expect("apache");
    // The helper fetches (and stores) in the background.
    assert!(wait_until(Duration::from_secs(10), || !stored_files(&apache).is_empty()), "{}", apache.error_log());
    let file = stored_files(&apache).pop().expect("stored file");
    let good = fs::read(&file).unwrap();
    // leaf2's response, stored under leaf's name, is a valid response for the wrong certificate.
    let other = {
        let mut o = ApacheOptions::new(s.pki.path("leaf2-chain.crt"), s.pki.path("leaf2.key"));
        o.vhost_conf = "Stapling on\n".into();
        let a2 = Apache::start(o).expect("apache for leaf2");
        // Fetched and stored in the background, like leaf's above.
        assert!(wait_until(Duration::from_secs(10), || !stored_files(&a2).is_empty()), "{}", a2.error_log());
        fs::read(stored_files(&a2).pop().expect("leaf2 file")).unwrap()
    };
    apache.stop();
    s.responder.set("mode=http500");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x30\x82\xff\xff not a response at all".to_vec()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("trailing junk", [good.clone(), b"junk".to_vec()].concat()),
        ("wrong certificate", other),
        ("oversized", vec![0x30; 200_000]),
    ];
    for (what, bytes) in cases {
        fs::write(&file, &bytes).unwrap();
        let logged_before = apache.error_log().len();
        apache.start_again();
        let r = s.staple(&apache);
        assert!(r.response_der_hex.is_none(), "{what}: stapled:\n{}", r.raw);
        let (ok, out) = curl_get(apache.port(), &s.pki.path("root.crt"));
        assert!(ok, "{what}: {out}");
        let log = apache.error_log()[logged_before..].to_string();
        assert!(
            log.lines()
                .any(|l| l.contains("[stapling:warn]") && (l.contains("deleting it") || l.contains("deleted it"))),
            "{what}:\n{log}"
        );
        assert!(!file.exists(), "{what}: bad file deleted");
        apache.stop();
    }
}

#[test]
fn unwritable_store_runs_memory_only_with_a_warning() {
    let s = Fixture::new("mode=good");
    let apache = Apache::start(opts(&s, "").with_global("StaplingStore /proc/mod_stapling-test\n")).expect("apache");
    assert!(s.staple(&apache).stapled, "{}", apache.error_log());
    let log = apache.error_log();
    assert!(log.contains("StaplingStore /proc/mod_stapling-test") && log.contains("memory only"), "{log}");
}

trait WithGlobal {
    fn with_global(self, line: &str) -> Self;
}

impl WithGlobal for ApacheOptions {
    fn with_global(mut self, line: &str) -> Self {
        self.global_conf.push_str(line);
        self
    }
}

#[test]
fn removing_the_stored_file_and_reloading_fetches_again() {
    let s = Fixture::new("mode=good");
    let apache = Apache::start(opts(&s, "")).expect("apache");
    assert!(wait_until(Duration::from_secs(10), || !stored_files(&apache).is_empty()), "{}", apache.error_log());
    let before = s.responder.requests();
    let file = stored_files(&apache).pop().unwrap();
    fs::remove_file(&file).unwrap();
    apache.graceful();
    assert!(
        wait_until(Duration::from_secs(10), || s.responder.requests() > before && file.exists()),
        "no new fetch after the stored file was removed and Apache reloaded:\n{}",
        apache.error_log()
    );
    assert!(apache.error_log().contains("its stored response was removed; asking the responder again now"));
    assert!(s.staple(&apache).stapled);
}
