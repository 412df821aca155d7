//! The vertical slice: a real Apache with mod_stapling, a real responder, real clients.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// Options for a vhost with `Stapling on` and a private store.
fn stapling_opts(pki: &Pki, mpm: Mpm, children: u32) -> ApacheOptions {
    let mut opts = ApacheOptions::for_pki(pki);
    opts.mpm = mpm;
    opts.children = children;
    opts.vhost_conf = "Stapling on\n".into();
    opts
}

fn assert_stapled_good(apache: &Apache, pki: &Pki) {
    let ca = pki.path("root.crt");
    for tls in ["-tls1_2", "-tls1_3"] {
        let r = handshake(apache.port(), &ca, Some(tls));
        assert!(r.stapled && r.verify_ok, "{tls}: no verified staple:\n{}\n{}", r.raw, apache.error_log());
        assert_eq!(r.cert_status.as_deref(), Some("good"), "{tls}");
    }
    let (ok, out) = curl_cert_status(apache.port(), &ca);
    assert!(ok, "curl --cert-status failed: {out}\n{}", apache.error_log());
}

#[test]
fn module_exports_its_symbol() {
    let out = Command::new("nm").args(["-D", "--defined-only"]).arg(module_path()).output().expect("nm");
    let symbols = String::from_utf8_lossy(&out.stdout);
    assert!(symbols.lines().any(|l| l.ends_with(" D stapling_module")), "{symbols}");
}

#[test]
fn staples_a_verified_response_prefork() {
    let fx = Fixture::openssl();
    let pki = &fx.pki;
    let apache = Apache::start(stapling_opts(pki, Mpm::Prefork, 3)).expect("apache");
    assert_eq!(apache.child_pids().len(), 3);
    assert_stapled_good(&apache, pki);
    // The parent does not wait for the responder: the helper fetches in the background.
    let log = apache.error_log();
    assert!(log.contains("OCSP stapling ready: ") && log.contains("stapling a good response"), "{log}");
}

#[test]
fn staples_a_verified_response_event() {
    let fx = Fixture::openssl();
    let pki = &fx.pki;
    let apache = Apache::start(stapling_opts(pki, Mpm::Event, 3)).expect("apache");
    assert_stapled_good(&apache, pki);
}

#[test]
fn compatibility_mode_serves_ssl_use_stapling_vhosts() {
    let fx = Fixture::new("mode=good");
    let (pki, responder) = (&fx.pki, &fx.responder);
    let mut opts = ApacheOptions::for_pki(pki);
    opts.global_conf = "SSLStaplingCache shmcb:ssl_stapling(8192)\n\
                        SSLStaplingReturnResponderErrors off\n"
        .into();
    opts.vhost_conf = "SSLUseStapling on\nSSLStaplingResponderTimeout 5\n".into();
    let apache = Apache::start(opts).expect("apache");
    assert_stapled_good(&apache, pki);
    // mod_ssl's own code would fetch again on the first handshake: only our startup
    // fetch reached the responder.
    assert_eq!(responder.requests(), 1, "{}", apache.error_log());
    let log = apache.error_log();
    assert!(log.contains("SSLStaplingReturnResponderErrors has no effect"), "{log}");
    // A cache sized for mod_ssl never caps our store.
    assert!(log.contains("SSLStaplingCache stays mod_ssl's") && !log.contains("too small"), "{log}");
}

#[test]
fn loading_before_mod_ssl_is_reported_only_if_mod_ssl_directives_are_missed() {
    let fx = Fixture::openssl();
    let pki = &fx.pki;
    let mut opts = stapling_opts(pki, Mpm::Prefork, 1);
    opts.load_order_ssl_first = false;
    let mut apache = Apache::start(opts).expect("apache");
    assert!(!apache.error_log().contains("loaded before mod_ssl"), "stapling works:\n{}", apache.error_log());
    // Our own directive works in that order.
    assert_stapled_good(&apache, pki);
    apache.stop();
    apache.reconfigure(|o| o.vhost_conf.push_str("SSLStaplingResponderTimeout 5\n"));
    apache.start_again();
    let log = apache.error_log();
    let line = log.lines().find(|l| l.contains("loaded before mod_ssl")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("[stapling:warn]"), "{line}");
    assert!(
        line.contains("compatibility mode cannot read SSLStaplingResponderTimeout: only mod_ssl sees them"),
        "{line}"
    );
}

#[test]
fn bad_directives_fail_the_config_test_naming_the_directive() {
    for (line, name) in [
        ("Stapling maybe", "Stapling"),
        ("StaplingResponderTimeout ten", "StaplingResponderTimeout"),
        ("StaplingResponseTimeSkew -3", "StaplingResponseTimeSkew"),
        ("StaplingResponseMaxAge 0", "StaplingResponseMaxAge"),
        ("StaplingForceURL ocsp.example.com", "StaplingForceURL"),
        ("StaplingRenewWindow 120%", "StaplingRenewWindow"),
        ("StaplingCache nosuch:/x", "StaplingCache"),
        ("StaplingUseNonce 2", "StaplingUseNonce"),
        ("<VirtualHost 127.0.0.1:1>\nStaplingStore /tmp/x\n</VirtualHost>", "StaplingStore"),
        ("<Directory /tmp>\nStapling on\n</Directory>", "Stapling"),
    ] {
        let (ok, out) = apachectl_test(line);
        assert!(!ok, "{line}: config test passed:\n{out}");
        let msg = out.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{line}:\n{out}"));
        assert!(msg.len() < 200, "one short line: {msg}");
    }
    let (ok, out) = apachectl_test("Stapling on\nStaplingResponderTimeout 3\nStaplingStore none\n");
    assert!(ok, "{out}");
}

#[test]
fn certificate_without_ocsp_url_is_skipped_with_one_info_line() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::create(tmp.path(), &ocsp_url(free_port()));
    let mut opts = ApacheOptions::new(pki.path("noaia-chain.crt"), pki.path("noaia.key"));
    opts.vhost_conf = "Stapling on\n".into();
    let apache = Apache::start(opts).expect("apache");
    let r = handshake(apache.port(), &pki.path("root.crt"), None);
    assert!(!r.stapled && r.verify_ok, "{}", r.raw);
    assert_eq!(apache.log_count("has no OCSP responder URL"), 1, "{}", apache.error_log());
    let (ok, out) = curl_get(apache.port(), &pki.path("root.crt"));
    assert!(ok, "{out}");
}

#[test]
fn vhost_without_issuer_in_chain_gets_an_error_line_naming_certificate_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let rport = free_port();
    let pki = Pki::create(tmp.path(), &ocsp_url(rport));
    let mut opts = ApacheOptions::new(pki.path("leaf.crt"), pki.path("leaf.key"));
    opts.vhost_conf = "Stapling on\n".into();
    let apache = Apache::start(opts).expect("apache");
    let log = apache.error_log();
    let line = log.lines().find(|l| l.contains("mod_ssl found no issuer")).unwrap_or_else(|| panic!("{log}"));
    let expected = format!(
        "(vhost localhost:{}) cannot be stapled: mod_ssl found no issuer for it. Add the issuing (intermediate) \
         CA certificate to {} after the server certificate (SSLCertificateFile), or name a file holding it in \
         SSLCertificateChainFile",
        apache.port(),
        pki.path("leaf.crt").display()
    );
    assert!(line.contains("[stapling:error]") && line.contains("certificate CN=localhost serial="), "{line}");
    assert!(line.ends_with(&expected), "{line}");
    assert!(!log.contains("OCSP stapling ready: 0 of 0"), "{log}");
    assert!(log.contains("OCSP stapling ready: 0 of 1"), "{log}");
}

#[test]
fn a_self_signed_certificate_gets_one_info_line_and_no_chain_advice() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::create(tmp.path(), &ocsp_url(free_port()));
    let mut opts = ApacheOptions::new(pki.path("root.crt"), pki.path("root.key"));
    opts.vhost_conf = "Stapling on\n".into();
    let apache = Apache::start(opts).expect("apache");
    let log = apache.error_log();
    let line = log.lines().find(|l| l.contains("self-signed")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("[stapling:info]"), "{line}");
    let expected = format!(
        "(vhost localhost:{}) is self-signed: there is no responder to ask, so it is not stapled",
        apache.port()
    );
    assert!(line.ends_with(&expected), "{line}");
    assert!(!log.contains("intermediate") && !log.contains("[stapling:error]"), "{log}");
}

#[test]
fn one_of_two_certificates_without_its_chain_is_a_warning_and_counted() {
    let fx = Fixture::openssl();
    let pki = &fx.pki;
    let mut opts = stapling_opts(pki, Mpm::Prefork, 1);
    opts.vhost_conf.push_str(&format!(
        "SSLCertificateFile {}\nSSLCertificateKeyFile {}\n",
        pki.path("leaf-ec.crt").display(),
        pki.path("leaf-ec.key").display()
    ));
    let apache = Apache::start(opts).expect("apache");
    let log = apache.error_log();
    let line = log.lines().find(|l| l.contains("mod_ssl found no issuer")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("[stapling:warn]"), "{line}");
    assert!(line.contains(&format!("to {} after the server certificate", pki.path("leaf-ec.crt").display())), "{line}");
    // The helper fetches in the background: the ready line counts both certificates.
    assert!(log.contains(" of 2 certificates have a verified response"), "{log}");
}

#[test]
fn bad_responder_answers_are_never_stapled_and_apache_keeps_serving() {
    let fx = Fixture::new("mode=good");
    let (pki, responder) = (&fx.pki, &fx.responder);
    let ca = pki.path("root.crt");
    for (mode, reason) in [
        ("bad_signature", "signature does not verify"),
        ("delegated_noeku", "signature does not verify"),
        ("wrong_certid", "different certificate"),
        ("unknown", "'unknown'"),
        ("expired", "nextUpdate"),
        ("not_yet_valid", "thisUpdate"),
        ("truncated", "not a DER OCSP response"),
        ("html", "wrong Content-Type"),
        ("http500", "HTTP 500"),
        ("trylater", "'tryLater'"),
        ("unauthorized", "'unauthorized'"),
        ("close", "Network Error"),
        ("huge", "larger than"),
        ("wrong_content_type", "wrong Content-Type"),
    ] {
        responder.set(&format!("mode={mode}"));
        let mut opts = ApacheOptions::for_pki(pki);
        opts.vhost_conf = "Stapling on\nStaplingResponderTimeout 3\n".into();
        let apache = Apache::start(opts).unwrap_or_else(|e| panic!("{mode}: {e}"));
        let r = handshake(apache.port(), &ca, None);
        assert!(!r.stapled && r.response_der_hex.is_none(), "{mode}: stapled:\n{}", r.raw);
        let (ok, out) = curl_get(apache.port(), &ca);
        assert!(ok, "{mode}: Apache stopped serving: {out}");
        // The fetch runs in the background: its warning may come after the handshake.
        let warned = || apache.error_log().lines().any(|l| l.contains("[stapling:warn]") && l.contains(reason));
        assert!(
            wait_until(Duration::from_secs(10), warned),
            "{mode}: no warning with '{reason}':\n{}",
            apache.error_log()
        );
    }
    // A delegated responder with the OCSPSigning EKU is fine.
    responder.set("mode=delegated");
    let mut opts = ApacheOptions::for_pki(pki);
    opts.vhost_conf = "Stapling on\n".into();
    let apache = Apache::start(opts).expect("apache");
    assert_stapled_good(&apache, pki);
}

#[test]
fn force_url_overrides_the_certificates_responder() {
    let tmp = tempfile::tempdir().unwrap();
    let dead = free_port(); // nothing listens here: the AIA URL must not be used
    let rport = free_port();
    let pki = Pki::create(tmp.path(), &ocsp_url(dead));
    let responder = Responder::fixture(&pki, rport);
    for directive in ["StaplingForceURL", "SSLStaplingForceURL"] {
        responder.reset_stats();
        let mut opts = ApacheOptions::for_pki(&pki);
        opts.vhost_conf = format!("Stapling on\n{directive} {}\n", ocsp_url(rport));
        let apache = Apache::start(opts).expect("apache");
        assert_stapled_good(&apache, &pki);
        assert_eq!(responder.requests(), 1, "{directive}");
    }
}

#[test]
fn nonce_is_sent_and_checked_when_configured() {
    // openssl ocsp echoes the request's nonce.
    let fx = Fixture::openssl();
    let pki = &fx.pki;
    let mut opts = stapling_opts(pki, Mpm::Event, 2);
    opts.vhost_conf.push_str("StaplingUseNonce on\n");
    let apache = Apache::start(opts).expect("apache");
    assert_stapled_good(&apache, pki);
}

#[test]
fn log_lines_follow_the_modules_own_log_level() {
    let fx = Fixture::openssl();
    let pki = &fx.pki;
    // The harness sets LogLevel stapling:debug.
    let apache = Apache::start(stapling_opts(pki, Mpm::Prefork, 1)).expect("apache");
    assert!(apache.log_count("[stapling:debug]") > 0, "{}", apache.error_log());
    drop(apache);
    let mut opts = stapling_opts(pki, Mpm::Prefork, 1);
    opts.global_conf = "LogLevel info stapling:warn\n".into();
    let apache = Apache::start(opts).expect("apache");
    assert_stapled_good(&apache, pki);
    let log = apache.error_log();
    assert!(log.contains("[ssl:info]"), "other modules still log at info:\n{log}");
    assert!(!log.contains("[stapling:info]") && !log.contains("[stapling:debug]"), "{log}");
}

#[test]
fn compatibility_off_leaves_ssl_use_stapling_to_mod_ssl() {
    let fx = Fixture::new("mode=good");
    let (pki, responder) = (&fx.pki, &fx.responder);
    let mut opts = ApacheOptions::for_pki(pki);
    opts.global_conf = "StaplingCompatibility Off\nSSLStaplingCache shmcb:ssl_stapling(65536)\n".into();
    opts.vhost_conf = "SSLUseStapling on\n".into();
    let apache = Apache::start(opts).expect("apache");
    assert_eq!(responder.requests(), 0, "mod_stapling fetched nothing at startup");
    // mod_ssl's own code fetches during the first handshake.
    let r = handshake(apache.port(), &pki.path("root.crt"), None);
    assert!(r.stapled, "{}", r.raw);
    assert_eq!(responder.requests(), 1);
    assert!(!apache.error_log().contains("OCSP stapling ready"), "{}", apache.error_log());
}

#[test]
fn a_vhost_whose_certificate_mod_md_provides_is_not_told_to_add_the_intermediate() {
    let md = std::path::Path::new("/usr/lib/apache2/modules/mod_md.so");
    if !md.exists() {
        eprintln!("mod_md not installed: skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // No SSLCertificateFile anywhere: mod_md hands mod_ssl its (fallback) certificate.
    let mut opts = ApacheOptions::new("", "");
    let port = free_port();
    opts.port = Some(free_port());
    opts.global_conf = format!(
        "LoadModule md_module {}\nMDStoreDir {}\nMDCertificateAgreement accepted\n\
         MDCertificateAuthority http://127.0.0.1:9/directory\nListen 127.0.0.1:{port} https\n\
         MDomain md.example\n<VirtualHost 127.0.0.1:{port}>\nServerName md.example\nSSLEngine on\n\
         Stapling on\n</VirtualHost>\n",
        md.display(),
        tmp.path().join("md").display()
    );
    let apache = Apache::start(opts).expect("apache");
    let log = apache.error_log();
    assert!(!log.contains("intermediate") && !log.contains("no issuer"), "{log}");
    let line = log.lines().find(|l| l.contains("another module")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("[stapling:info]"), "{line}");
    let expected = format!(
        "vhost md.example:{port}: Stapling is on, but mod_ssl handed over no certificate and no \
         SSLCertificateFile is set for it: its certificate comes from another module (mod_md staples with \
         MDStapling on) or SSL is off there"
    );
    assert!(line.ends_with(&expected), "{line}");
}
