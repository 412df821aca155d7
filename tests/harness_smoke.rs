//! Smoke tests for the test harness itself (tests/common/mod.rs). They do not
//! need mod_stapling: Apache runs with mod_ssl's own stapling.

mod common;

use std::time::Duration;

use common::*;

fn mod_ssl_stapling_opts(pki: &Pki, mpm: Mpm) -> ApacheOptions {
    let mut opts = ApacheOptions::for_pki(pki);
    opts.mpm = mpm;
    opts.load_stapling = false;
    // Relative shmcb paths are relative to DefaultRuntimeDir (ROOT/run).
    opts.global_conf = "SSLStaplingCache shmcb:ssl_stapling(65536)\n".into();
    opts.vhost_conf = "SSLUseStapling on\n".into();
    opts
}

#[test]
fn apache_serves_https_and_mod_ssl_staples() {
    let tmp = tempfile::tempdir().unwrap();
    let rport = free_port();
    let pki = Pki::create(tmp.path(), &ocsp_url(rport));
    let _responder = Responder::openssl(&pki, rport);

    let mut apache = Apache::start(mod_ssl_stapling_opts(&pki, Mpm::Prefork)).expect("apache start");
    assert_eq!(apache.child_pids().len(), 2, "children: {:?}", apache.child_pids());
    let ca = pki.path("root.crt");

    let (ok, out) = curl_cert_status(apache.port(), &ca);
    assert!(ok, "curl --cert-status failed: {}", out);
    let (ok, out) = curl_get(apache.port(), &ca);
    assert!(ok && out.contains("hello"), "curl: {}", out);

    let r12 = s_client_status(apache.port(), &ca, Some("-tls1_2"));
    assert!(r12.stapled && r12.exit_ok && r12.verify_ok, "{}", r12.raw);
    assert_eq!(r12.cert_status.as_deref(), Some("good"));
    let r13 = s_client_status(apache.port(), &ca, Some("-tls1_3"));
    assert!(r13.stapled && r13.exit_ok, "{}", r13.raw);
    assert_eq!(r13.cert_status.as_deref(), Some("good"));
    // mod_ssl caches the response: same bytes for both protocol versions.
    let der = r12.der().expect("TLS 1.2 staple bytes");
    assert_eq!(Some(&der), r13.der().as_ref(), "TLS 1.3 staple bytes differ");
    assert_eq!(der[0], 0x30, "DER SEQUENCE");
    let text = ocsp_resp_text(&der);
    assert!(text.contains("Cert Status: good"), "{}", text);

    assert_eq!(staple_der(apache.port(), &ca, None), Some(der.clone()));

    // (mod_ssl re-creates its shmcb stapling cache on graceful restart and
    // fetches a new response, so the bytes may change here.)
    apache.graceful();
    assert!(apache.is_running());
    assert_eq!(apache.child_pids().len(), 2);
    let r = s_client_status(apache.port(), &ca, None);
    assert!(r.stapled && r.der().is_some(), "{}", r.raw);

    let parent = apache.pid();
    apache.stop();
    assert!(!process_alive(parent));
    assert!(!port_listening(apache.port()));
    apache.start_again();
    assert_ne!(apache.pid(), parent);
    assert!(s_client_status(apache.port(), &ca, None).stapled);
}

#[test]
fn event_mpm_and_fixture_responder() {
    let tmp = tempfile::tempdir().unwrap();
    let rport = free_port();
    let pki = Pki::create(tmp.path(), &ocsp_url(rport));
    let responder = Responder::fixture(&pki, rport);
    responder.reset_stats();
    assert_eq!(responder.requests(), 0);

    let mut opts = mod_ssl_stapling_opts(&pki, Mpm::Event);
    opts.children = 1;
    let apache = Apache::start(opts).expect("apache start");
    let ca = pki.path("root.crt");
    let r = s_client_status(apache.port(), &ca, None);
    assert!(r.stapled, "{}", r.raw);
    assert_eq!(r.cert_status.as_deref(), Some("good"));
    assert!(responder.requests() >= 1);

    responder.set("mode=good");
    responder.reset_stats();
    assert_eq!(responder.requests(), 0);
    assert!(wait_until(Duration::from_secs(1), || apache.child_pids().len() == 1));

    let old = apache.child_pids();
    apache.graceful();
    let new = apache.child_pids();
    assert_eq!(new.len(), 1);
    assert_ne!(old, new);
    assert!(s_client_status(apache.port(), &ca, Some("-tls1_3")).stapled);
}

#[test]
fn failure_after_detach_is_reported() {
    // Key does not match the certificate: mod_ssl fails in post_config,
    // i.e. after `apache2 -k start` has already returned successfully.
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::create(tmp.path(), &ocsp_url(free_port()));
    let mut opts = ApacheOptions::new(pki.path("leaf-chain.crt"), pki.path("leaf2.key"));
    opts.load_stapling = false;
    let t = std::time::Instant::now();
    let err = match Apache::start(opts) {
        Ok(_) => panic!("start with mismatched key succeeded"),
        Err(e) => e,
    };
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    assert!(err.contains("AH02565") || err.contains("does not match"), "{}", err);
}

#[test]
fn no_staple_without_stapling() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::create(tmp.path(), &ocsp_url(free_port()));
    let mut opts = ApacheOptions::for_pki(&pki);
    opts.load_stapling = false;
    let apache = Apache::start(opts).expect("apache start");
    let ca = pki.path("root.crt");
    let r = s_client_status(apache.port(), &ca, None);
    assert!(r.exit_ok && !r.stapled && r.der().is_none(), "{}", r.raw);
    assert!(r.raw.contains("OCSP response: no response sent"));
    let (ok, out) = curl_cert_status(apache.port(), &ca);
    assert!(!ok, "curl --cert-status should fail without a staple: {}", out);
    let (ok, out) = curl_get(apache.port(), &ca);
    assert!(ok, "{}", out);
}

#[test]
fn bad_config_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::create(tmp.path(), &ocsp_url(free_port()));
    let mut opts = ApacheOptions::for_pki(&pki);
    opts.load_stapling = false;
    opts.vhost_conf = "BogusDirective on\n".into();
    let err = match Apache::start(opts.clone()) {
        Ok(_) => panic!("start with a bogus directive succeeded"),
        Err(e) => e,
    };
    assert!(err.contains("BogusDirective"), "{}", err);

    let (ok, out) = apachectl_test_opts(&opts);
    assert!(!ok && out.contains("BogusDirective"), "{}", out);
    opts.vhost_conf.clear();
    let (ok, out) = apachectl_test_opts(&opts);
    assert!(ok && out.contains("Syntax OK"), "{}", out);

    if module_available() {
        let (ok, out) = apachectl_test("Bogus");
        assert!(!ok && out.contains("Bogus"), "{}", out);
    } else {
        let mut o = ApacheOptions::new("", "");
        o.load_stapling = false;
        o.global_conf = "Bogus\n".into();
        let (ok, out) = apachectl_test_opts(&o);
        assert!(!ok && out.contains("Bogus"), "{}", out);
    }
}
