//! The status handler and the server-status section, on a real Apache: `?json` matches
//! the staple a client gets, `?metrics` passes Prometheus' own parser, the HTML page
//! renders in headless Firefox ESR, and server-status (and `?auto`) show the section.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A stapling vhost, plus a plain-HTTP listener on `http_port` for the status pages.
fn status_opts(pki: &Pki, http_port: u16) -> ApacheOptions {
    let mut opts = ApacheOptions::for_pki(pki);
    opts.vhost_conf = "Stapling on\n".into();
    opts.global_conf = format!(
        "LoadModule status_module {APACHE_MODULES}/mod_status.so\n\
         Listen 127.0.0.1:{http_port} http\n\
         <Location /stapling-status>\n  SetHandler stapling-status\n  Require all granted\n</Location>\n\
         <Location /server-status>\n  SetHandler server-status\n  Require all granted\n</Location>\n"
    );
    opts
}

/// The value after "NAME: " in `openssl ocsp -resp_text` output.
fn field(text: &str, name: &str) -> String {
    let prefix = format!("{name}: ");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("{name}:\n{text}"))
        .into()
}

/// An `openssl` date ("Nov 22 11:44:54 2026 GMT") in RFC 3339.
fn rfc3339(openssl_date: &str) -> String {
    let out = Command::new("date").args(["-u", "-d", openssl_date, "+%Y-%m-%dT%H:%M:%SZ"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn get(port: u16, path: &str) -> String {
    let (status, body) = http_get(port, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// Runs a Python snippet with Debian's python3 (where python3-prometheus-client is),
/// with `file` as its argument.
fn python(script: &str, file: &Path) -> CmdOutput {
    run_with_timeout(Command::new("/usr/bin/python3").arg("-c").arg(script).arg(file), Duration::from_secs(60))
}

const PARSE_METRICS: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{family.type} {s.name} {labels} {s.value}")
"#;

/// The default vhost's certificate is stapled; two more (name-based vhosts) have
/// serials the fixture responder does not know, so their fetches fail.
#[test]
fn status_pages_show_the_served_staple() {
    let fx = Fixture::new("mode=good");
    let (port, http_port) = (free_port(), free_port());
    let leaves = issue_leaves(&fx.pki, "site", 2);
    let mut opts = status_opts(&fx.pki, http_port);
    opts.port = Some(port);
    opts.extra_vhosts = sni_vhosts(port, &leaves, "Stapling on\n");
    let apache = Apache::start(opts).expect("apache");
    let staple = fx.staple(&apache);
    assert!(staple.stapled, "no staple:\n{}\n{}", staple.raw, apache.error_log());
    let text = ocsp_resp_text(&staple.der().unwrap());
    let serial = field(&text, "Serial Number");
    let failing: Vec<&str> = leaves.iter().map(|l| l.serial_hex.as_str()).collect();

    let json = get(http_port, "/stapling-status?json");
    check_json(&json, &text, staple.cert_status.as_deref());
    check_failing_in_json(&json, &failing);
    check_metrics(&get(http_port, "/stapling-status?metrics"));
    let all: Vec<&str> = [serial.as_str()].into_iter().chain(failing.iter().copied()).collect();
    check_html_in_firefox(http_port, &all);
    check_server_status(http_port, &serial);

    // Only GET: a POST is refused.
    let out = run_with_timeout(
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
            .arg(format!("http://127.0.0.1:{http_port}/stapling-status")),
        Duration::from_secs(15),
    );
    assert_eq!(out.stdout.trim(), "405", "{}", out.combined());
}

/// The certificate of `serial` in the `?json` document.
fn cert_of<'a>(doc: &'a Value, serial: &str) -> &'a Value {
    let certs = doc["certificates"].as_array().expect("certificates");
    certs.iter().find(|c| c["serial"] == serial).unwrap_or_else(|| panic!("no certificate {serial}: {doc}"))
}

fn check_json(body: &str, ocsp_text: &str, cert_status: Option<&str>) {
    let doc: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(doc["stapling"], true);
    assert!(doc["started"].as_str().is_some_and(|s| s.ends_with('Z')), "{body}");
    assert_eq!(doc["certificates"].as_array().map(Vec::len), Some(3), "{body}");
    let c = cert_of(&doc, &field(ocsp_text, "Serial Number"));
    assert_eq!(c["status"].as_str(), cert_status, "{body}");
    assert_eq!(c["stapled"], true);
    assert_eq!(c["next_update"], rfc3339(&field(ocsp_text, "Next Update")), "{body}\n{ocsp_text}");
    assert_eq!(c["this_update"], rfc3339(&field(ocsp_text, "This Update")), "{body}\n{ocsp_text}");
    assert_eq!(c["produced_at"], rfc3339(&field(ocsp_text, "Produced At")), "{body}\n{ocsp_text}");
    assert_eq!(c["source"], "responder");
    assert_eq!(c["last_fetch_outcome"], "ok");
    assert!(c["sha1"].as_str().is_some_and(|s| s.len() == 40), "{body}");
    assert!(c["vhosts"][0].as_str().is_some_and(|v| v.starts_with("localhost:")), "{body}");
    assert!(c["fetches"].as_u64().is_some_and(|n| n >= 1), "{body}");
}

fn check_failing_in_json(body: &str, serials: &[&str]) {
    let doc: Value = serde_json::from_str(body).unwrap();
    for serial in serials {
        let c = cert_of(&doc, serial);
        assert_eq!(c["status"], "none", "{c}");
        assert_eq!(c["stapled"], false, "{c}");
        assert_eq!(c["next_update"], Value::Null, "{c}");
        assert_eq!(c["last_fetch_outcome"], "failed", "{c}");
        assert_eq!(c["last_error"]["message"], "responder does not know the certificate", "{c}");
        assert!(c["consecutive_failures"].as_u64().is_some_and(|n| n >= 1), "{c}");
    }
}

fn check_metrics(body: &str) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body).unwrap();
    let out = python(PARSE_METRICS, file.path());
    assert!(out.success(), "prometheus_client refused the exposition:\n{}\n{body}", out.combined());
    let samples = out.stdout;
    for want in [
        "gauge mod_stapling_certificates status=good 1.0",
        "gauge mod_stapling_certificates status=none 2.0",
        "gauge mod_stapling_stapled cert=CN=",
        "gauge mod_stapling_seconds_until_next_update cert=",
        "counter mod_stapling_fetches_total cert=",
    ] {
        assert!(samples.contains(want), "{want} missing:\n{samples}\n{body}");
    }
    let stapled: Vec<&str> = samples.lines().filter(|l| l.starts_with("gauge mod_stapling_stapled ")).collect();
    assert_eq!(stapled.iter().filter(|l| l.ends_with(" 1.0")).count(), 1, "{samples}");
    assert_eq!(stapled.len(), 3, "{samples}");
    let until = samples.lines().find(|l| l.contains("seconds_until_next_update")).unwrap();
    let secs: f64 = until.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(secs > 0.0, "{until}");
}

/// Loads the page in headless Firefox ESR: every certificate must be rendered. The
/// screenshot is left in the target directory (docs/status-page.png is a copy of it).
fn check_html_in_firefox(http_port: u16, serials: &[&str]) {
    let url = format!("http://127.0.0.1:{http_port}/stapling-status");
    let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let out = run_with_timeout(
        Command::new("/usr/bin/python3").arg(manifest_dir().join("tests/fixtures/browser_page.py")).arg(&url).arg(&png),
        Duration::from_secs(180),
    );
    assert!(out.success(), "headless Firefox failed:\n{}", out.combined());
    let text = out.stdout;
    assert!(text.starts_with("OCSP stapling status"), "{text}");
    for want in ["good", "nextUpdate", "Must-staple", "responder does not know the certificate", "localhost:"] {
        assert!(text.contains(want), "{want} not rendered:\n{text}");
    }
    for serial in serials {
        assert!(text.contains(serial), "certificate {serial} not rendered:\n{text}");
    }
    assert_eq!(text.matches("SHA-1 id").count(), serials.len(), "{text}");
    assert!(png.is_file());
}

fn check_server_status(http_port: u16, serial: &str) {
    let page = get(http_port, "/server-status");
    assert!(page.contains("<h2>OCSP stapling</h2>"), "{page}");
    assert!(page.contains(&format!("<td>{serial}</td>")) && page.contains("<td>good</td>"), "{page}");
    let notable = get(http_port, "/server-status?notable");
    assert!(
        notable.contains("<h2>OCSP stapling</h2>") && notable.contains(&format!("(serial {serial}, ")),
        "{notable}"
    );
    let auto = get(http_port, "/server-status?auto");
    for want in ["StaplingCertificates: 3\n", "StaplingGood: 1\n", "StaplingNone: 2\n"] {
        assert!(auto.contains(want), "{want} missing:\n{auto}");
    }
    assert!(auto.contains(&format!("status=good serial={serial} ")), "{auto}");
}

#[test]
fn status_page_without_stapling_says_so() {
    let fx = Fixture::new("mode=good");
    let http_port = free_port();
    let mut opts = status_opts(&fx.pki, http_port);
    opts.vhost_conf = String::new();
    let apache = Apache::start(opts).expect("apache");
    assert!(get(http_port, "/stapling-status").contains("OCSP stapling is off"), "{}", apache.error_log());
    let doc: Value = serde_json::from_str(&get(http_port, "/stapling-status?json")).unwrap();
    assert_eq!(doc["stapling"], false);
    assert!(get(http_port, "/server-status?auto").contains("StaplingCertificates: 0\n"));
}
