//! The shared store's size: sized from the certificates, only capped by `StaplingCache`,
//! and large enough for the largest response a responder may send.

mod common;

use std::process::Command;

use common::*;

fn stapling_opts(fx: &Fixture) -> ApacheOptions {
    let mut opts = ApacheOptions::for_pki(&fx.pki);
    opts.vhost_conf = "Stapling on\nStaplingResponderTimeout 5\n".into();
    opts
}

/// `openssl ocsp` checks `der` as the response for the PKI's leaf: signature, chain
/// to the test root, and the leaf's status.
fn openssl_verifies(fx: &Fixture, der: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("staple.der");
    std::fs::write(&path, der).unwrap();
    let out = run_with_timeout(
        Command::new("openssl")
            .args(["ocsp", "-respin"])
            .arg(&path)
            .arg("-CAfile")
            .arg(fx.pki.path("root.crt"))
            .arg("-issuer")
            .arg(fx.pki.path("issuer.crt"))
            .arg("-cert")
            .arg(fx.pki.path("leaf.crt")),
        std::time::Duration::from_secs(10),
    );
    out.combined()
}

#[test]
fn a_41_kb_response_is_stapled_and_verifies() {
    let fx = Fixture::new("mode=many");
    let apache = Apache::start(stapling_opts(&fx)).expect("apache");
    let r = handshake(apache.port(), &fx.pki.path("root.crt"), Some("-tls1_3"));
    assert!(r.stapled && r.verify_ok, "no staple\n{}\n{}", r.raw, apache.error_log());
    assert_eq!(r.cert_status.as_deref(), Some("good"));
    let der = r.der().expect("staple bytes");
    assert!(der.len() > 40_000, "{} bytes", der.len());
    let text = openssl_verifies(&fx, &der);
    assert!(text.contains("Response verify OK") && text.contains("leaf.crt: good"), "{text}");
    let (ok, out) = curl_cert_status(apache.port(), &fx.pki.path("root.crt"));
    assert!(ok, "curl --cert-status: {out}");
    // OpenSSL clients refuse a TLS 1.2 CertificateStatus over 16 KiB with a fatal
    // alert: the handshake goes on without a staple instead, and the admin is told.
    let r = handshake(apache.port(), &fx.pki.path("root.crt"), Some("-tls1_2"));
    assert!(r.exit_ok && !r.stapled, "{}", r.raw);
    assert!(apache.error_log().contains("stapled in TLS 1.3 handshakes only"), "{}", apache.error_log());
}

#[test]
fn a_huge_cache_size_only_caps_the_store() {
    let fx = Fixture::new("mode=good");
    let rss_with = |global_conf: &str| {
        let mut opts = stapling_opts(&fx);
        opts.global_conf = global_conf.into();
        let apache = Apache::start(opts).expect("apache");
        let stapled = wait_until(std::time::Duration::from_secs(10), || fx.staple(&apache).stapled);
        assert!(stapled, "{}", apache.error_log());
        vm_rss_kb(apache.pid()).expect("parent RSS")
    };
    let default = rss_with("");
    let capped = rss_with("StaplingCache shmcb:/unused(2000000000)\n");
    eprintln!("parent RSS: {default} KiB without a size, {capped} KiB with a 2 GB cap");
    assert!(capped <= default + 1024, "parent RSS {capped} KiB with a 2 GB cap, {default} KiB without");
}

#[test]
fn a_cap_too_small_fails_the_start_naming_what_does_not_fit() {
    let fx = Fixture::new("mode=good&unknown_serials=good");
    let leaves = issue_leaves(&fx.pki, "cap", 2);
    let mut opts = stapling_opts(&fx);
    opts.global_conf = "StaplingCache shmcb:/unused(8192)\n".into();
    let port = free_port();
    opts.port = Some(port);
    opts.extra_vhosts = sni_vhosts(port, &leaves, "Stapling on\n");
    let err = Apache::start(opts).err().expect("a 8192-byte cap cannot hold three certificates");
    let line =
        err.lines().find(|l| l.contains("StaplingCache size 8192 is too small")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("[stapling:error]") && line.contains("holds 1 of the 3 certificates"), "{line}");
    assert!(line.contains("Not stapled: ") && line.contains("at least 16384 bytes"), "{line}");
    let not_stapled = line.split("Not stapled: ").nth(1).and_then(|r| r.split(". Raise").next()).unwrap_or_default();
    let names = ["localhost", &leaves[0].server_name, &leaves[1].server_name];
    assert_eq!(names.iter().filter(|n| not_stapled.contains(*n)).count(), 2, "{line}");
}

#[test]
fn a_graceful_restart_past_the_cap_keeps_serving() {
    let fx = Fixture::new("mode=good&unknown_serials=good");
    let leaves = issue_leaves(&fx.pki, "grow", 1);
    let mut opts = stapling_opts(&fx);
    opts.global_conf = "StaplingCache shmcb:/unused(8192)\n".into();
    let mut apache = Apache::start(opts).expect("one certificate fits in 8192 bytes");
    assert!(fx.staple(&apache).stapled, "{}", apache.error_log());
    let port = apache.port();
    apache.reconfigure(|o| o.extra_vhosts = sni_vhosts(port, &leaves, "Stapling on\n"));
    apache.graceful();
    assert!(
        apache.wait_log("holds 1 of the 2 certificates", std::time::Duration::from_secs(10)),
        "{}",
        apache.error_log()
    );
    assert!(apache.error_log().contains("Apache keeps running"), "{}", apache.error_log());
    let (ok, out) = curl_get(port, &fx.pki.path("root.crt"));
    assert!(ok, "Apache keeps serving: {out}");
}
