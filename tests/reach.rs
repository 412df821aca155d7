//! Reaching responders as production networks require: through Debian's squid (default
//! ACLs, and with authentication), chosen by `StaplingProxy` or `http_proxy`; https://
//! responders behind TLS; GET for small requests; `SSLStaplingResponseMaxAge` kept at
//! serve time; and mod_ssl values beyond our ranges said in one warn line.

mod common;

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// mod_ssl refuses `SSLUseStapling on` without a stapling cache of its own.
const CACHE: &str = "SSLStaplingCache shmcb:ssl_stapling(65536)\n";

/// A host name only squid's hosts_file resolves: this machine cannot resolve it, so
/// a staple for a certificate whose OCSP URL uses it can only come through squid.
const PROXY_ONLY_HOST: &str = "ocsp.stapling-proxy.test";

/// Debian's squid, started in the foreground on a free loopback port with the default
/// ACLs of /etc/squid/squid.conf (optionally requiring a user), no cache, and a
/// hosts_file that resolves [`PROXY_ONLY_HOST`]. Stopped by PID on drop.
struct Squid {
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Squid {
    fn start(credentials: Option<(&str, &str)>) -> Squid {
        let dir = tempfile::Builder::new().prefix("stapling-squid.").tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let port = free_port();
        fs::write(d.join("hosts"), format!("127.0.0.1 {PROXY_ONLY_HOST}\n")).unwrap();
        let defaults = fs::read_to_string("/etc/squid/squid.conf").expect("squid is installed (scripts/deps.sh)");
        let mut conf: String = defaults
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter(|l| !["http_port", "coredump_dir", "include"].iter().any(|k| l.starts_with(k)))
            .map(|l| format!("{l}\n"))
            .collect();
        if let Some((user, password)) = credentials {
            let htpasswd = d.join("passwd");
            let made = Command::new("htpasswd").arg("-bc").arg(&htpasswd).arg(user).arg(password).output().unwrap();
            assert!(made.status.success(), "htpasswd: {made:?}");
            let auth = format!(
                "auth_param basic program /usr/lib/squid/basic_ncsa_auth {}\nauth_param basic realm proxy\n\
                 acl authed proxy_auth REQUIRED\nhttp_access deny !authed\nhttp_access allow localhost\n",
                htpasswd.display()
            );
            conf = conf.replacen("http_access allow localhost\n", &auth, 1);
            // Before the default `allow localhost manager` would matter: put it first.
            assert!(conf.contains("acl authed"), "the default config has `http_access allow localhost`");
        }
        conf.push_str(&format!(
            "http_port 127.0.0.1:{port}\npid_filename {0}/squid.pid\naccess_log stdio:{0}/access.log\n\
             cache_log {0}/cache.log\ncache_store_log none\ncoredump_dir {0}\nnetdb_filename none\ncache deny all\n\
             shutdown_lifetime 0 seconds\nhosts_file {0}/hosts\nlogfile_rotate 0\n",
            d.display()
        ));
        fs::write(d.join("squid.conf"), conf).unwrap();
        // squid drops to the proxy user, who must write its logs.
        let _ = Command::new("chown").arg("-R").arg("proxy:proxy").arg(&d).status();
        let child = Command::new("squid")
            .arg("-N")
            .arg("-f")
            .arg(d.join("squid.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(fs::File::create(d.join("stderr")).unwrap()))
            .spawn()
            .expect("squid");
        let mut squid = Squid { port, dir, child };
        let up = wait_until(Duration::from_secs(15), || port_listening(port) || squid.exited());
        assert!(up && !squid.exited(), "squid did not start:\n{}", squid.logs());
        squid
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn access_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let read = |f: &str| fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}{}", read("stderr"), read("cache.log"))
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        send_signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !self.exited() {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !self.exited() {
            send_signal(self.child.id(), "KILL");
            let _ = self.child.wait();
        }
    }
}

/// A PKI whose certificates name `url` as their responder, and the fixture responder
/// on `port`.
fn pki_and_responder(url: &str, port: u16) -> (Pki, Responder) {
    let pki = Pki::temp(url);
    let responder = Responder::fixture(&pki, port);
    (pki, responder)
}

fn start(pki: &Pki, global: &str, env: &[(&str, &str)]) -> Apache {
    let mut opts = ApacheOptions::for_pki(pki);
    opts.global_conf = format!("Stapling on\n{global}");
    opts.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Apache::start(opts).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits up to 20 s for a good staple.
fn wait_good_staple(apache: &Apache, pki: &Pki) -> bool {
    wait_until(Duration::from_secs(20), || {
        let r = handshake(apache.port(), &pki.path("root.crt"), None);
        r.stapled && r.cert_status.as_deref() == Some("good")
    })
}

#[test]
fn a_staple_comes_through_squid_with_default_acls_from_the_directive_or_the_environment() {
    if !module_available() {
        return;
    }
    let squid = Squid::start(None);
    let rport = free_port();
    let (pki, responder) = pki_and_responder(&format!("http://{PROXY_ONLY_HOST}:{rport}/"), rport);

    let apache = start(&pki, &format!("StaplingProxy {}\n", squid.url()), &[]);
    assert!(wait_good_staple(&apache, &pki), "no staple through squid:\n{}\n{}", apache.error_log(), squid.logs());
    assert!(squid.access_log().contains(&format!("http://{PROXY_ONLY_HOST}:{rport}/")), "{}", squid.access_log());
    assert!(apache.log_count(&format!("go through the HTTP proxy {} (from StaplingProxy)", squid.url())) >= 1);
    assert!(responder.log().contains("ocsp GET"), "a small request goes as GET:\n{}", responder.log());
    drop(apache);

    let before = squid.access_log().lines().count();
    let no_proxy = "localhost,10.0.0.0/8";
    let apache = start(&pki, "", &[("http_proxy", &squid.url()), ("no_proxy", no_proxy)]);
    assert!(wait_good_staple(&apache, &pki), "no staple through http_proxy:\n{}", apache.error_log());
    assert!(squid.access_log().lines().count() > before, "squid saw the request");
    assert!(apache.log_count("(from http_proxy in Apache's environment); except hosts in no_proxy") >= 1);
}

#[test]
fn squid_with_authentication_takes_the_credentials_of_the_proxy_url() {
    if !module_available() {
        return;
    }
    let squid = Squid::start(Some(("stapler", "s3cret")));
    let rport = free_port();
    let (pki, _responder) = pki_and_responder(&format!("http://{PROXY_ONLY_HOST}:{rport}/"), rport);
    let with_user = format!("http://stapler:s3cret@127.0.0.1:{}", squid.port);
    let apache = start(&pki, &format!("StaplingProxy {with_user}\n"), &[]);
    assert!(wait_good_staple(&apache, &pki), "{}\n{}", apache.error_log(), squid.logs());
    assert!(squid.access_log().contains(" stapler "), "the user is logged: {}", squid.access_log());
    assert!(!apache.error_log().contains("s3cret"), "the password is never logged");
    drop(apache);

    let apache = start(&pki, &format!("StaplingProxy http://127.0.0.1:{}\n", squid.port), &[]);
    let said = format!("proxy http://127.0.0.1:{}: HTTP 407", squid.port);
    assert!(apache.wait_log(&said, Duration::from_secs(20)), "{}", apache.error_log());
}

#[test]
fn a_proxy_that_is_down_is_named_in_a_warn_line() {
    if !module_available() {
        return;
    }
    let rport = free_port();
    let (pki, _responder) = pki_and_responder(&ocsp_url(rport), rport);
    let dead = free_port();
    let apache = start(&pki, &format!("StaplingProxy http://127.0.0.1:{dead}\n"), &[]);
    let said = format!("proxy http://127.0.0.1:{dead}: cannot connect to the proxy");
    assert!(apache.wait_log(&said, Duration::from_secs(20)), "{}", apache.error_log());
    let line = apache.error_log().lines().find(|l| l.contains(&said)).unwrap().to_string();
    assert!(line.contains(":warn]") || line.contains(":error]"), "{line}");
    assert!(line.contains("StaplingProxy"), "says what to check: {line}");
}

/// The fixture responder with a TLS listener on `tls_host:tls_port`, using the test
/// PKI's leaf (localhost, 127.0.0.1) as its certificate.
fn tls_responder(url: &str, port: u16, tls_host: &str, tls_port: u16) -> (Pki, Responder) {
    let pki = Pki::temp(url);
    let responder =
        Responder::fixture_tls(&pki, port, tls_host, tls_port, &pki.path("leaf-chain.crt"), &pki.path("leaf.key"));
    (pki, responder)
}

#[test]
fn an_https_responder_is_verified_against_the_ca_file_and_refused_without_it() {
    if !module_available() {
        return;
    }
    let (rport, tport) = (free_port(), free_port());
    let (pki, responder) = tls_responder(&format!("https://localhost:{tport}/"), rport, "127.0.0.1", tport);
    let ca = pki.path("root.crt").display().to_string();
    let apache = start(&pki, &format!("StaplingResponderCAFile {ca}\n"), &[]);
    assert!(wait_good_staple(&apache, &pki), "{}\n{}", apache.error_log(), responder.log());
    drop(apache);

    // Without the CA file the test CA is unknown.
    let apache = start(&pki, "", &[]);
    let said = "the responder's TLS certificate does not verify for localhost: unable to get local issuer certificate";
    assert!(apache.wait_log(said, Duration::from_secs(20)), "{}", apache.error_log());
    assert!(apache.error_log().contains("StaplingResponderCAFile"), "says what to do");
    assert!(!handshake(apache.port(), &pki.path("root.crt"), None).stapled);
}

#[test]
fn an_https_force_url_with_the_wrong_host_name_is_refused() {
    if !module_available() {
        return;
    }
    let (rport, tport) = (free_port(), free_port());
    let (pki, _responder) = tls_responder(&ocsp_url(rport), rport, "127.0.0.2", tport);
    let ca = pki.path("root.crt").display().to_string();
    // mod_ssl's own directive, in compatibility mode: an https:// URL is kept now.
    let global = format!("StaplingResponderCAFile {ca}\nSSLStaplingForceURL https://127.0.0.2:{tport}/\n");
    let apache = start(&pki, &global, &[]);
    let said = "the responder's TLS certificate does not verify for 127.0.0.2: IP address mismatch";
    assert!(apache.wait_log(said, Duration::from_secs(20)), "{}", apache.error_log());
}

#[test]
fn https_force_url_through_compatibility_mode_staples() {
    if !module_available() {
        return;
    }
    let (rport, tport) = (free_port(), free_port());
    let (pki, responder) = tls_responder(&ocsp_url(rport), rport, "127.0.0.1", tport);
    let ca = pki.path("root.crt").display().to_string();
    let global = format!("StaplingResponderCAFile {ca}\nSSLStaplingForceURL https://localhost:{tport}/\n");
    let apache = start(&pki, &global, &[]);
    assert!(wait_good_staple(&apache, &pki), "{}\n{}", apache.error_log(), responder.log());
    assert!(apache.error_log().contains(&format!("https://localhost:{tport}/")), "the URL is used");
}

#[test]
fn request_method_post_is_honoured() {
    if !module_available() {
        return;
    }
    let rport = free_port();
    let (pki, responder) = pki_and_responder(&ocsp_url(rport), rport);
    let apache = start(&pki, "StaplingRequestMethod post\n", &[]);
    assert!(wait_good_staple(&apache, &pki), "{}", apache.error_log());
    let log = responder.log();
    assert!(log.contains("ocsp POST") && !log.contains("ocsp GET"), "{log}");
}

/// Seconds since the staple's thisUpdate, from `openssl ocsp -resp_text`.
fn staple_age(der: &[u8]) -> i64 {
    let text = ocsp_resp_text(der);
    let line = text.lines().find_map(|l| l.trim().strip_prefix("This Update: ")).expect("This Update");
    let out = Command::new("date").arg("-u").arg("-d").arg(line.trim()).arg("+%s").output().unwrap();
    let this_update: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("date");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    now - this_update
}

#[test]
fn max_age_is_kept_at_serve_time_and_staples_keep_coming() {
    if !module_available() {
        return;
    }
    const MAX_AGE: i64 = 30;
    const SKEW: i64 = 5;
    let rport = free_port();
    let (pki, responder) = pki_and_responder(&ocsp_url(rport), rport);
    responder.set("backdate=0&validity=86400");
    let mut opts = ApacheOptions::for_pki(&pki);
    opts.global_conf =
        format!("SSLUseStapling on\nSSLStaplingResponseMaxAge {MAX_AGE}\nSSLStaplingResponseTimeSkew {SKEW}\n{CACHE}");
    let apache = Apache::start(opts).unwrap_or_else(|e| panic!("{e}"));
    assert!(wait_good_staple(&apache, &pki), "{}", apache.error_log());
    let started = Instant::now();
    let (mut probes, mut stapled, mut oldest) = (0, 0, 0);
    while started.elapsed() < Duration::from_secs(90) {
        let r = handshake(apache.port(), &pki.path("root.crt"), None);
        probes += 1;
        if let Some(der) = r.der().filter(|_| r.stapled) {
            stapled += 1;
            let age = staple_age(&der);
            oldest = oldest.max(age);
            assert!(age <= MAX_AGE + SKEW, "a staple {age} s old was served:\n{}", apache.error_log());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(stapled == probes, "staples keep coming: {stapled} of {probes} probes stapled");
    assert!(oldest > 5, "the probes saw ageing staples (oldest {oldest} s)");
    assert!(responder.requests() >= 3, "refreshed before the age limit: {} requests", responder.requests());
}

#[test]
fn mod_ssl_values_beyond_our_ranges_give_one_warn_line_each() {
    if !module_available() {
        return;
    }
    let rport = free_port();
    let (pki, _responder) = pki_and_responder(&ocsp_url(rport), rport);
    let global = "SSLStaplingCache shmcb:ssl_stapling(65536)\nSSLUseStapling on\nSSLStaplingResponderTimeout 600\nSSLStaplingResponseTimeSkew 5s\n\
                  SSLStaplingResponseMaxAge 0\nSSLStaplingForceURL ldap://ocsp.example/\n";
    let mut opts = ApacheOptions::for_pki(&pki);
    opts.global_conf = global.to_string();
    let apache = Apache::start(opts).unwrap_or_else(|e| panic!("{e}"));
    for said in [
        "SSLStaplingResponderTimeout 600: mod_stapling uses 300 seconds",
        "SSLStaplingResponseTimeSkew '5s' is not a whole number of seconds: mod_ssl reads it as 5, and mod_stapling \
         uses 5 seconds",
        "SSLStaplingResponseMaxAge 0: mod_stapling uses 1 second",
        "SSLStaplingForceURL 'ldap://ocsp.example/' is not an http:// or https:// URL",
    ] {
        let log = apache.error_log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(said)).collect();
        assert_eq!(lines.len(), 1, "{said}:\n{log}");
        assert!(lines[0].contains(":warn]"), "{}", lines[0]);
    }
    // The values used are the ones the lines state: with a 1 s max age and 5 s of skew,
    // the fixture's responses (thisUpdate 60 s ago) are too old to staple.
    let said = "is older than StaplingResponseMaxAge";
    assert!(apache.wait_log(said, Duration::from_secs(20)), "{}", apache.error_log());
}
