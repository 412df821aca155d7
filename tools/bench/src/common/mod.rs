//! Shared parts of the Apache benchmarks `compare`, `handshake_cost` and `scale`
//! (tools/bench/src/bin/): environment knobs, the four server configurations, the TLS
//! client, the staple check and the machine description for the reports.
//!
//! Included by each tool with `#[path = "../common/mod.rs"] mod bench_common;`, beside
//! the integration-test harness (`#[path = "../../../../tests/common/mod.rs"] mod
//! common;`), which this module uses as `crate::common` and which finds the repository
//! root itself. Cargo does not build it as a binary of its own (only `src/bin/*.rs` and
//! `src/bin/*/main.rs` are discovered).
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use openssl::hash::MessageDigest;
use openssl::ocsp::{OcspCertId, OcspCertStatus, OcspFlag, OcspResponse, OcspResponseStatus};
use openssl::ssl::{
    ErrorCode, SslConnector, SslMethod, SslOptions, SslSessionCacheMode, SslStream, SslVerifyMode, SslVersion,
    StatusType,
};
use openssl::stack::Stack;
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::X509;

use crate::common::{manifest_dir, ApacheOptions, Mpm, Pki, APACHE_BIN, APACHE_MODULES};

// ---------------------------------------------------------------------------
// environment
// ---------------------------------------------------------------------------

/// The number in environment variable `name`, or `default` if it is unset or blank.
/// Panics if it does not parse.
pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| panic!("{name}: cannot parse '{v}'")),
        _ => default,
    }
}

/// Number of CPUs available to this process (at least 1).
pub fn nproc() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The certificate chosen by environment variable `name`: `leaf` (RSA-2048, the
/// default, also for `rsa`) or `leaf-ec` (ECDSA P-256, also for `ec`), as named by
/// scripts/mkpki.sh. Panics on anything else.
pub fn cert_from_env(name: &str) -> String {
    match std::env::var(name).as_deref() {
        Ok("ec") | Ok("leaf-ec") => "leaf-ec".into(),
        Ok("") | Ok("rsa") | Ok("leaf") | Err(_) => "leaf".into(),
        Ok(other) => panic!("{name}: expected rsa or ec, got '{other}'"),
    }
}

/// The key type of certificate `cert` (`leaf` or `leaf-ec`), for the report.
pub fn cert_label(cert: &str) -> &'static str {
    if cert == "leaf-ec" {
        "ECDSA P-256"
    } else {
        "RSA-2048"
    }
}

/// The environment value that selects certificate `cert`: `ec` or `rsa`.
pub fn cert_setting(cert: &str) -> &'static str {
    if cert == "leaf-ec" {
        "ec"
    } else {
        "rsa"
    }
}

// ---------------------------------------------------------------------------
// the four configurations
// ---------------------------------------------------------------------------

/// mod_ssl's `SSLStaplingCache` size in [`Kind::options`]: room for a few dozen
/// responses, enough for one certificate.
pub const SSL_STAPLING_CACHE_BYTES: usize = 128_000;

/// One server configuration: no stapling, mod_ssl `SSLUseStapling`, mod_md
/// `MDStapling` + `MDStapleOthers`, or mod_stapling `Stapling on`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    None,
    ModSsl,
    ModMd,
    Stapling,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::None, Kind::ModSsl, Kind::ModMd, Kind::Stapling];

    /// The name in reports and in the `*_SERVERS` environment variables.
    pub fn label(self) -> &'static str {
        match self {
            Kind::None => "none",
            Kind::ModSsl => "mod_ssl",
            Kind::ModMd => "mod_md",
            Kind::Stapling => "mod_stapling",
        }
    }

    /// Whether this configuration is expected to staple.
    pub fn staples(self) -> bool {
        self != Kind::None
    }

    /// The configurations listed (comma-separated labels, duplicates ignored) in
    /// environment variable `name`; all four if it is unset or blank. Panics on an
    /// unknown label.
    pub fn list_from_env(name: &str) -> Vec<Kind> {
        let v = match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => v,
            _ => return Kind::ALL.to_vec(),
        };
        let mut s = Vec::new();
        for label in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let k = Kind::ALL
                .into_iter()
                .find(|k| k.label() == label)
                .unwrap_or_else(|| panic!("{name}: unknown server '{label}'"));
            if !s.contains(&k) {
                s.push(k);
            }
        }
        s
    }

    /// Options for a server with certificate `cert` (`leaf` or `leaf-ec`), `children`
    /// processes of `mpm` and ServerRoot `root`. `md_store` is mod_md's store
    /// directory (used by [`Kind::ModMd`] only).
    pub fn options(
        self,
        pki: &Pki,
        cert: &str,
        mpm: Mpm,
        children: u32,
        root: &Path,
        md_store: &Path,
    ) -> ApacheOptions {
        let mut o = ApacheOptions::new(pki.path(&format!("{cert}-chain.crt")), pki.path(&format!("{cert}.key")));
        o.mpm = mpm;
        o.children = children;
        o.server_root = Some(root.to_path_buf());
        o.load_stapling = self == Kind::Stapling;
        o.global_conf = self.global_conf(md_store, SSL_STAPLING_CACHE_BYTES);
        o.vhost_conf = self.vhost_conf().into();
        o
    }

    /// Lines at global scope, with an `SSLStaplingCache` of `ssl_cache_bytes` for
    /// [`Kind::ModSsl`]. The harness logs at info (stapling:debug); measure at warn
    /// everywhere.
    pub fn global_conf(self, md_store: &Path, ssl_cache_bytes: usize) -> String {
        let mut g = String::from("LogLevel warn ssl:warn");
        if self == Kind::Stapling {
            g.push_str(" stapling:warn");
        }
        g.push('\n');
        match self {
            Kind::None | Kind::Stapling => {}
            Kind::ModSsl => {
                let _ = writeln!(g, "SSLStaplingCache shmcb:ssl_stapling({ssl_cache_bytes})");
            }
            Kind::ModMd => {
                let m = Path::new(APACHE_MODULES);
                // Debian builds mod_watchdog into the server binary; load it only if not.
                let _ = writeln!(
                    g,
                    "<IfModule !watchdog_module>\n    LoadModule watchdog_module \"{}\"\n</IfModule>",
                    m.join("mod_watchdog.so").display()
                );
                let _ = writeln!(g, "LoadModule md_module \"{}\"", m.join("mod_md.so").display());
                let _ = writeln!(g, "MDStoreDir \"{}\"", md_store.display());
                g.push_str("MDStapling on\nMDStapleOthers on\n");
            }
        }
        g
    }

    /// Lines inside each SSL <VirtualHost>.
    pub fn vhost_conf(self) -> &'static str {
        match self {
            Kind::None | Kind::ModMd => "",
            Kind::ModSsl => "SSLUseStapling on\n",
            Kind::Stapling => "Stapling on\n",
        }
    }
}

// ---------------------------------------------------------------------------
// TLS client
// ---------------------------------------------------------------------------

/// The TLS version the client offers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proto {
    /// Whatever both sides prefer (TLS 1.3 here).
    Any,
    Tls12,
    Tls13,
}

impl Proto {
    pub fn label(self) -> &'static str {
        match self {
            Proto::Any => "default",
            Proto::Tls12 => "TLS 1.2",
            Proto::Tls13 => "TLS 1.3",
        }
    }

    fn version(self) -> Option<SslVersion> {
        match self {
            Proto::Any => None,
            Proto::Tls12 => Some(SslVersion::TLS1_2),
            Proto::Tls13 => Some(SslVersion::TLS1_3),
        }
    }
}

/// A TLS client doing full handshakes: no verification (cheap; staples are checked
/// separately with a [`Validator`]), no session cache, no tickets.
pub struct Client {
    conn: SslConnector,
    /// Read and write timeout of each connection.
    timeout: Duration,
}

impl Client {
    pub fn new(proto: Proto, timeout: Duration) -> Client {
        let mut b = SslConnector::builder(SslMethod::tls_client()).expect("SslConnector");
        b.set_verify(SslVerifyMode::NONE);
        b.set_options(SslOptions::NO_TICKET);
        b.set_session_cache_mode(SslSessionCacheMode::OFF);
        if let Some(v) = proto.version() {
            b.set_min_proto_version(Some(v)).unwrap();
            b.set_max_proto_version(Some(v)).unwrap();
        }
        Client { conn: b.build(), timeout }
    }

    /// One full handshake with the status extension to 127.0.0.1:`port`, then a clean
    /// shutdown (see [`close`]). Returns the stapled bytes (empty if `keep` is false)
    /// or None if nothing was stapled.
    pub fn handshake(&self, port: u16, keep: bool) -> Result<Option<Vec<u8>>, String> {
        self.handshake_sni(port, "localhost", keep)
    }

    /// Like [`handshake`](Self::handshake), with SNI `server_name` (to reach a
    /// name-based virtual host).
    pub fn handshake_sni(&self, port: u16, server_name: &str, keep: bool) -> Result<Option<Vec<u8>>, String> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let _ = tcp.set_read_timeout(Some(self.timeout));
        let _ = tcp.set_write_timeout(Some(self.timeout));
        let mut cfg = self.conn.configure().map_err(|e| e.to_string())?.verify_hostname(false);
        cfg.set_status_type(StatusType::OCSP).map_err(|e| e.to_string())?;
        let mut s = cfg.connect(server_name, tcp).map_err(|e| format!("handshake: {e}"))?;
        let staple = s.ssl().ocsp_status().map(|d| if keep { d.to_vec() } else { Vec::new() });
        close(&mut s);
        Ok(staple)
    }
}

/// Our close_notify, then read until the server's close_notify or EOF, so that the
/// server finishes its side of the handshake and closes first.
fn close(s: &mut SslStream<TcpStream>) {
    let _ = s.shutdown();
    let mut buf = [0u8; 512];
    loop {
        match s.ssl_read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => break,
            Err(_) => break,
        }
    }
    let _ = s.get_mut().read(&mut buf);
}

/// Checks a stapled OCSPResponse: successful, signed by the issuer (chain to the
/// test root), a status for our certificate that is good, and valid now.
pub struct Validator {
    store: X509Store,
    chain: Stack<X509>,
    leaf: X509,
    issuer: X509,
}

impl Validator {
    /// Checks staples for `<cert>.crt` (`leaf` or `leaf-ec`).
    pub fn new(pki: &Pki, cert: &str) -> Validator {
        Validator::for_file(pki, &pki.path(&format!("{cert}.crt")))
    }

    /// Checks staples for the certificate in `file` (the first one, if it is a chain
    /// file such as [`crate::common::Leaf::chain`]), issued by the PKI's `issuer.crt`.
    pub fn for_file(pki: &Pki, file: &Path) -> Validator {
        let pem = |p: &Path| X509::from_pem(&fs::read(p).unwrap()).unwrap();
        let mut sb = X509StoreBuilder::new().unwrap();
        sb.add_cert(pem(&pki.path("root.crt"))).unwrap();
        let mut chain = Stack::new().unwrap();
        chain.push(pem(&pki.path("issuer.crt"))).unwrap();
        Validator { store: sb.build(), chain, leaf: pem(file), issuer: pem(&pki.path("issuer.crt")) }
    }

    pub fn valid(&self, der: &[u8]) -> bool {
        let Ok(resp) = OcspResponse::from_der(der) else { return false };
        if resp.status() != OcspResponseStatus::SUCCESSFUL {
            return false;
        }
        let Ok(basic) = resp.basic() else { return false };
        if basic.verify(&self.chain, &self.store, OcspFlag::empty()).is_err() {
            return false;
        }
        for md in [MessageDigest::sha1(), MessageDigest::sha256()] {
            let Ok(id) = OcspCertId::from_cert(md, &self.leaf, &self.issuer) else { continue };
            if let Some(st) = basic.find_status(&id) {
                return st.status == OcspCertStatus::GOOD && st.check_validity(300, None).is_ok();
            }
        }
        false
    }
}

// ---------------------------------------------------------------------------
// machine description and output
// ---------------------------------------------------------------------------

/// The first line of `cmd args` (stdout, then stderr), trimmed; `?` if it cannot run.
pub fn cmd_first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
            t.push_str(&String::from_utf8_lossy(&o.stderr));
            t.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|| "?".into())
}

/// The CPU's model name from /proc/cpuinfo, or `?`.
pub fn cpu_model() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "?".into())
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()
}

/// The operating system: `PRETTY_NAME` of /etc/os-release, plus the point release from
/// /etc/debian_version where there is one (e.g. `Debian GNU/Linux 12 (bookworm), 12.11`).
pub fn os_release() -> String {
    let os = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let name = os
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap_or_else(|| "?".into());
    match fs::read_to_string("/etc/debian_version") {
        Ok(v) if !v.trim().is_empty() => format!("{name}, {}", v.trim()),
        _ => name,
    }
}

/// The Apache version, e.g. `Apache/2.4.62 (Debian)`.
pub fn apache_version() -> String {
    cmd_first_line(APACHE_BIN, &["-v"]).trim_start_matches("Server version: ").to_string()
}

/// Where reports go: `$CARGO_TARGET_DIR`, else `target/` in the repository root.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| manifest_dir().join("target"))
}

/// The machine a report was measured on: CPU, cores, OS, kernel, Apache, OpenSSL and the
/// load average at the start.
pub fn machine() -> Vec<(String, String)> {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: String = load.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    vec![
        ("CPU".into(), cpu_model()),
        ("cores (nproc)".into(), nproc().to_string()),
        ("OS".into(), os_release()),
        ("kernel".into(), kernel_release()),
        ("Apache".into(), apache_version()),
        ("OpenSSL (CLI)".into(), cmd_first_line("openssl", &["version"])),
        ("OpenSSL (client library)".into(), openssl::version::version().to_string()),
        ("load average at start".into(), load),
    ]
}
