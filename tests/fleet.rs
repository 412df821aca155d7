//! The fleet tier with a real memcached and a real Redis (Debian's packages, started on
//! loopback ports) through mod_socache_memcache / mod_socache_redis: three servers share
//! one responder request per refresh round, survive the tier dying, never staple what a
//! poisoned tier holds, and a missing provider module fails the config test.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Validity of the fixture's responses: a refresh round is half of it.
const VALIDITY_SECS: u64 = 40;

/// A memcached or redis-server on a free loopback port, stopped by PID on drop.
struct CacheServer {
    port: u16,
    kind: &'static str,
    child: Option<Child>,
}

impl CacheServer {
    fn memcached(port: Option<u16>) -> CacheServer {
        Self::start("memcache", port)
    }

    fn redis() -> CacheServer {
        Self::start("redis", None)
    }

    fn start(kind: &'static str, port: Option<u16>) -> CacheServer {
        let port = port.unwrap_or_else(free_port);
        let mut cmd = if kind == "memcache" {
            let mut c = Command::new("memcached");
            c.args(["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0", "-m", "16", "-u", "nobody"]);
            c
        } else {
            let mut c = Command::new("redis-server");
            c.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"]);
            c
        };
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect(kind);
        assert!(wait_until(Duration::from_secs(10), || port_listening(port)), "{kind} did not start");
        CacheServer { port, kind, child: Some(child) }
    }

    /// The StaplingCache argument, and the LoadModule line it needs.
    fn cache_line(&self, directive: &str) -> String {
        let module = format!("mod_socache_{}.so", self.kind);
        format!(
            "LoadModule socache_{0}_module /usr/lib/apache2/modules/{module}\n{directive} {0}:127.0.0.1:{1}\n",
            self.kind, self.port
        )
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            send_signal(c.id(), "KILL");
            let _ = c.wait();
        }
    }

    /// memcached's text protocol: one command, the reply up to `end`.
    fn memcached_command(&self, command: &[u8], end: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(command).unwrap();
        let mut reply = String::new();
        let mut reader = BufReader::new(s);
        while !reply.ends_with(end) {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            reply.push_str(&line);
        }
        reply
    }

    /// The keys memcached holds (`lru_crawler metadump`), URL-decoded.
    fn memcached_keys(&self) -> Vec<String> {
        let dump = self.memcached_command(b"lru_crawler metadump all\r\n", "END\r\n");
        dump.lines()
            .filter_map(|l| l.strip_prefix("key="))
            .map(|l| l.split(' ').next().unwrap_or("").replace("%3A", ":").replace("%3a", ":"))
            .collect()
    }

    fn memcached_set(&self, key: &str, value: &[u8]) {
        let mut cmd = format!("set {key} 0 0 {}\r\n", value.len()).into_bytes();
        cmd.extend_from_slice(value);
        cmd.extend_from_slice(b"\r\n");
        let reply = self.memcached_command(&cmd, "\r\n");
        assert_eq!(reply, "STORED\r\n", "set {key}");
    }

    fn memcached_get(&self, key: &str) -> Option<Vec<u8>> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("get {key}\r\n").as_bytes()).unwrap();
        let mut all = Vec::new();
        let mut buf = [0u8; 65536];
        while !all.ends_with(b"END\r\n") {
            let n = s.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        let header_end = all.windows(2).position(|w| w == b"\r\n")?;
        let header = String::from_utf8_lossy(&all[..header_end]).to_string();
        let len: usize = header.split(' ').nth(3)?.parse().ok()?;
        Some(all[header_end + 2..header_end + 2 + len].to_vec())
    }
}

impl Drop for CacheServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `hex(text)`: how mod_socache_memcache writes an id after its "mod_stapling:" tag.
fn memcache_key(id: &str) -> String {
    let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
    format!("mod_stapling:{hex}")
}

/// The id behind a memcached key written by the module, if it is one.
fn module_id(key: &str) -> Option<String> {
    let hex = key.strip_prefix("mod_stapling:")?;
    let bytes: Option<Vec<u8>> =
        (0..hex.len() / 2).map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

/// Three servers (4 prefork children each, each its own ServerRoot and disk store)
/// started 2 s apart, sharing `cache_conf`.
fn fleet(fx: &Fixture, cache_conf: &str, switch: &str) -> Vec<Apache> {
    (0..3)
        .map(|n| {
            if n > 0 {
                std::thread::sleep(Duration::from_secs(2));
            }
            let mut opts = ApacheOptions::for_pki(&fx.pki);
            opts.children = 4;
            opts.global_conf = format!("{cache_conf}{switch}");
            Apache::start(opts).unwrap_or_else(|e| panic!("server {n}: {e}"))
        })
        .collect()
}

/// Probes every server every second for `secs`: every handshake must be stapled.
/// Returns the times (seconds since the start) at which the responder's request count
/// went up, one entry per request.
fn watch(fx: &Fixture, servers: &[Apache], secs: u64) -> Vec<f64> {
    let start = Instant::now();
    let mut seen = fx.responder.requests();
    let mut at = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        for (n, a) in servers.iter().enumerate() {
            let r = fx.staple(a);
            assert!(r.stapled, "server {n} did not staple at {:?}:\n{}", start.elapsed(), a.error_log());
        }
        let now = fx.responder.requests();
        at.extend((seen..now).map(|_| start.elapsed().as_secs_f64()));
        seen = now;
        std::thread::sleep(Duration::from_secs(1));
    }
    at
}

/// At most one responder request per refresh round: no two within a third of a round.
fn assert_one_per_round(at: &[f64], what: &str) {
    let round = VALIDITY_SECS as f64 / 2.0;
    for pair in at.windows(2) {
        assert!(pair[1] - pair[0] > round / 3.0, "{what}: two requests in one round: {at:?}");
    }
}

fn shares_one_request_per_round(cache: &CacheServer, directive: &str, switch: &str) {
    let fx = Fixture::new(&format!("mode=good&validity={VALIDITY_SECS}&backdate=0"));
    let servers = fleet(&fx, &cache.cache_line(directive), switch);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(fx.responder.requests(), 1, "one request at startup for the whole fleet");
    for a in &servers[1..] {
        assert!(a.error_log().contains("the fleet tier shares"), "took it from the tier:\n{}", a.error_log());
    }
    // Three refresh rounds and some.
    let at = watch(&fx, &servers, 3 * VALIDITY_SECS / 2 + 8);
    assert!(at.len() >= 3, "refreshed every round: {at:?}");
    assert_one_per_round(&at, directive);
    eprintln!("{directive} {}: 1 responder request at startup, then {at:?} (s)", cache.kind);
}

#[test]
fn three_servers_share_one_request_per_round_through_redis() {
    if !module_available() {
        return;
    }
    shares_one_request_per_round(&CacheServer::redis(), "StaplingCache", "Stapling on\n");
}

#[test]
fn three_servers_share_through_memcache_named_in_ssl_stapling_cache() {
    if !module_available() {
        return;
    }
    // An existing mod_ssl fleet configuration, moved over unchanged.
    shares_one_request_per_round(&CacheServer::memcached(None), "SSLStaplingCache", "SSLUseStapling on\n");
}

#[test]
fn memcached_dying_is_said_once_and_sharing_resumes_when_it_is_back() {
    if !module_available() {
        return;
    }
    let mut cache = CacheServer::memcached(None);
    let fx = Fixture::new(&format!("mode=good&validity={VALIDITY_SECS}&backdate=0"));
    let servers = fleet(&fx, &cache.cache_line("StaplingCache"), "Stapling on\n");
    cache.kill();
    // A round without the tier: every server staples and fetches on its own.
    let alone = watch(&fx, &servers, VALIDITY_SECS / 2 + 6);
    assert!(!alone.is_empty() && alone.len() <= 3, "each server fetched on its own, once: {alone:?}");
    for a in &servers {
        let said = a.log_count("is unreachable");
        assert_eq!(said, 1, "one warn line per server:\n{}", a.error_log());
    }
    let _back = CacheServer::memcached(Some(cache.port));
    let again = watch(&fx, &servers, VALIDITY_SECS + 6);
    assert_one_per_round(&again[again.len().min(1)..], "after memcached came back");
    let counts: Vec<usize> = servers.iter().map(|a| a.log_count("answers again: responses are shared")).collect();
    assert!(counts.iter().all(|n| *n <= 1) && counts.contains(&1), "sharing resumed {again:?}: {counts:?}");
}

#[test]
fn poisoned_entries_are_never_stapled_and_are_replaced() {
    if !module_available() {
        return;
    }
    let cache = CacheServer::memcached(None);
    let fx = Fixture::new(&format!("mode=good&validity={VALIDITY_SECS}&backdate=0"));
    let servers = fleet(&fx, &cache.cache_line("StaplingCache"), "Stapling on\n");
    // The crawler behind metadump may be busy with its own round: ask again until it answers.
    let mut response_id = None;
    wait_until(Duration::from_secs(15), || {
        response_id = cache.memcached_keys().iter().filter_map(|k| module_id(k)).find(|id| id.starts_with("s1:r:"));
        response_id.is_some()
    });
    let response_id = response_id.expect("the shared response is in memcached");
    let lease_id = response_id.replace("s1:r:", "s1:l:");
    assert!(cache.memcached_get(&memcache_key(&response_id)).is_some_and(|v| !v.is_empty()));
    // Another certificate's valid response, and an expired one (from the same responder).
    fx.responder.set("unknown_serials=good");
    let leaf2 = fx.pki.path("leaf2.crt");
    let other = ocsp_response_for(&fx, &leaf2);
    fx.responder.set("mode=expired");
    let expired = ocsp_response_for(&fx, &fx.pki.path("leaf.crt"));
    fx.responder.set("mode=good");
    for poison in [b"garbage".to_vec(), other, expired] {
        for id in [&response_id, &lease_id] {
            cache.memcached_set(&memcache_key(id), &poison);
        }
        // A fourth server that starts cold looks in the tier first.
        let mut opts = ApacheOptions::for_pki(&fx.pki);
        opts.global_conf = format!("{}Stapling on\n", cache.cache_line("StaplingCache"));
        let fresh = Apache::start(opts).unwrap();
        let r = fx.staple(&fresh);
        let staple = r.der().unwrap_or_default();
        assert_ne!(staple, poison, "the poison is never stapled");
        assert!(
            wait_until(Duration::from_secs(20), || {
                let r = fx.staple(&fresh);
                r.stapled && r.cert_status.as_deref() == Some("good")
            }),
            "a valid response is stapled:\n{}",
            fresh.error_log()
        );
        assert!(fresh.error_log().contains("is not usable"), "the poison is logged:\n{}", fresh.error_log());
        let replaced = cache.memcached_get(&memcache_key(&response_id)).unwrap_or_default();
        assert_ne!(replaced, poison, "replaced by a valid one");
        assert!(!replaced.is_empty() && replaced != b"garbage");
        for a in &servers {
            assert!(fx.staple(a).stapled);
        }
    }
}

/// The DER response the fixture gives for `cert` now (`openssl ocsp` as the client).
fn ocsp_response_for(fx: &Fixture, cert: &std::path::Path) -> Vec<u8> {
    let out = tempfile::NamedTempFile::new().unwrap();
    let status = Command::new("openssl")
        .args(["ocsp", "-no_nonce", "-issuer"])
        .arg(fx.pki.path("issuer.crt"))
        .arg("-cert")
        .arg(cert)
        .arg("-url")
        .arg(&fx.pki.ocsp_url)
        .arg("-respout")
        .arg(out.path())
        .args(["-noverify"])
        .output()
        .unwrap();
    assert!(status.status.success() || out.path().metadata().map(|m| m.len() > 0).unwrap_or(false), "{status:?}");
    std::fs::read(out.path()).unwrap()
}

#[test]
fn a_provider_that_is_not_loaded_fails_the_config_test_naming_its_module() {
    if !module_available() {
        return;
    }
    let (ok, out) = apachectl_test("StaplingCache memcache:127.0.0.1:11211\n");
    assert!(!ok, "{out}");
    let line = out.lines().find(|l| l.contains("StaplingCache")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("socache_memcache_module") && line.contains("mod_socache_memcache.so"), "{line}");
}
