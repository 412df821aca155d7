//! Integration-test harness for mod_stapling.
//!
//! Used by `tests/*.rs` through `mod common;`. Everything here is safe to use
//! from tests running in parallel threads: ports come from [`free_port`]
//! (never handed out twice per process), every server gets a private
//! temporary directory, and every process that is started is stopped again by
//! PID in a `Drop` impl, also when the test panics.
//!
//! Overview:
//! * [`module_path`], [`free_port`], [`wait_until`], [`http_get`]
//! * [`Pki`]: runs `scripts/mkpki.sh`
//! * [`Responder`]: the Python fixture (`tests/fixtures/ocsp_responder.py`,
//!   controllable) or `openssl ocsp` as a reference responder
//! * [`Apache`], [`ApacheOptions`], [`Mpm`], [`apachectl_test`]
//! * clients: [`s_client_status`], [`staple_der`], [`curl_cert_status`],
//!   [`ocsp_resp_text`]; with SNI: [`s_client_status_sni`],
//!   [`handshake_sni`], [`tls_handshake`] (in-process, for tight loops)
//! * many certificates: [`issue_leaves`] + [`sni_vhosts`] (into
//!   [`ApacheOptions::extra_vhosts`])
//! * lifecycle: [`Apache::begin_start`]/[`Apache::wait_started`] (act during
//!   startup), [`Apache::k_command`], [`startup_helper_pid`], [`vm_rss_kb`],
//!   [`server_root_processes`], [`BlackHole`] (a responder that never answers)
//!
//! How the exact staple bytes are obtained: `openssl s_client -status -msg`
//! prints every received handshake message as hex. For TLS 1.2 the staple is
//! the body of the `CertificateStatus` message; for TLS 1.3 it is the
//! `status_request` extension of the first entry of the `Certificate`
//! message. [`s_client_status`] always passes `-msg`, extracts the DER
//! `OCSPResponse` from whichever of the two is present and checks all the
//! length fields; see [`StapleResult::response_der_hex`] and [`staple_der`].
#![allow(dead_code)]

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

/// The Apache binary (Debian layout).
pub const APACHE_BIN: &str = "/usr/sbin/apache2";
/// Where Debian keeps the Apache modules (`apxs -q LIBEXECDIR`).
pub const APACHE_MODULES: &str = "/usr/lib/apache2/modules";

// ---------------------------------------------------------------------------
// small utilities
// ---------------------------------------------------------------------------

/// Root of the repository (where the module's Cargo.toml is). The benchmark tools in
/// tools/bench include this harness too; their package sits two levels below it.
pub fn manifest_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match dir.ends_with("tools/bench") {
        true => dir.ancestors().nth(2).map(Path::to_path_buf).unwrap_or(dir),
        false => dir,
    }
}

/// The built module: `$MOD_STAPLING_SO` if set, else
/// `target/release/libmod_stapling.so`. Panics if the file does not exist.
pub fn module_path() -> PathBuf {
    let p = match std::env::var_os("MOD_STAPLING_SO") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => manifest_dir().join("target/release/libmod_stapling.so"),
    };
    if !p.is_file() {
        panic!(
            "mod_stapling module not found at {}: run cargo build --release first \
             (or set MOD_STAPLING_SO to the built .so)",
            p.display()
        );
    }
    p
}

/// Whether the built module exists (see [`module_path`]), without panicking.
pub fn module_available() -> bool {
    std::panic::catch_unwind(module_path).is_ok()
}

static USED_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A TCP port that is currently free on 127.0.0.1 (and on the wildcard
/// address, since `openssl ocsp` binds to it).
///
/// Ports are taken from below the kernel's ephemeral range when possible, so
/// that outgoing client connections (which get ephemeral source ports) cannot
/// grab a port between the time it is chosen here and the time a server binds
/// it. A port is never handed out twice within one test process.
pub fn free_port() -> u16 {
    let mut guard = USED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let used = guard.get_or_insert_with(HashSet::new);

    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse::<u32>().ok()))
        .unwrap_or(32768);
    let (lo, hi) = (20000u32, ephemeral_low.min(65535));
    if hi > lo + 1000 {
        let span = hi - lo;
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
            ^ (std::process::id().wrapping_mul(2654435761));
        for i in 0..span {
            let port = (lo + (seed.wrapping_add(i.wrapping_mul(7919)) % span)) as u16;
            if used.contains(&port) {
                continue;
            }
            if port_bindable(port) {
                used.insert(port);
                return port;
            }
        }
    }
    // Fallback: let the kernel choose.
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        drop(l);
        if !used.contains(&port) {
            used.insert(port);
            return port;
        }
    }
    panic!("free_port: no free port found");
}

fn port_bindable(port: u16) -> bool {
    // Both must be bindable: 127.0.0.1 (Apache, the fixture) and 0.0.0.0
    // (openssl ocsp). Each listener is dropped before the next bind.
    TcpListener::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// Polls `f` every 50 ms until it returns true or `timeout` has passed
/// (`f` is always tried one last time at the deadline). Returns the last
/// result of `f`.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Output of a command run by [`run_with_timeout`].
#[derive(Debug)]
pub struct CmdOutput {
    /// `None` if the command was killed because of the timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.map(|s| s.success()).unwrap_or(false)
    }
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }
    /// stdout followed by stderr.
    pub fn combined(&self) -> String {
        let mut s = self.stdout.clone();
        if !s.is_empty() && !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str(&self.stderr);
        if self.timed_out() {
            s.push_str("\n[harness: command killed after timeout]\n");
        }
        s
    }
}

/// Runs `cmd` with stdin from /dev/null and stdout/stderr captured in
/// anonymous temporary files (so grandchildren holding the descriptors can
/// never block us). Kills the child (SIGKILL, by PID) after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let mut out = tempfile::tempfile().expect("tempfile");
    let mut err = tempfile::tempfile().expect("tempfile");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(err.try_clone().unwrap()));
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("cannot run {:?}: {}", cmd, e),
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => {}
            Err(e) => panic!("waiting for {:?}: {}", cmd, e),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |f: &mut fs::File| {
        let mut v = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut v).unwrap();
        String::from_utf8_lossy(&v).into_owned()
    };
    CmdOutput { status, stdout: read(&mut out), stderr: read(&mut err) }
}

/// Sends a signal (e.g. "TERM", "KILL", "HUP") to `pid` with kill(1).
/// Errors (e.g. no such process) are ignored.
pub fn send_signal(pid: u32, sig: &str) {
    if pid <= 1 {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{}", sig))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// (state, ppid) of a process from /proc/PID/stat.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let s = fs::read_to_string(format!("/proc/{}/stat", pid)).ok()?;
    // The command name is in parentheses and may contain spaces/parens.
    let rest = &s[s.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

/// True if the process exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((st, _)) if st != 'Z' && st != 'X')
}

fn all_pids() -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                v.push(pid);
            }
        }
    }
    v
}

/// Live (non-zombie) processes whose parent is `ppid`.
pub fn children_of(ppid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| matches!(proc_stat(p), Some((st, pp)) if pp == ppid && st != 'Z' && st != 'X'))
        .collect()
}

/// Live processes (other than ourselves) that have `arg` as one of their
/// command-line arguments. Used to find every Apache process belonging to one
/// (unique, temporary) ServerRoot, also after reparenting.
fn processes_with_arg(arg: &str) -> Vec<u32> {
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|&p| p != me)
        .filter(|&p| {
            fs::read(format!("/proc/{}/cmdline", p))
                .map(|c| c.split(|&b| b == 0).any(|a| a == arg.as_bytes()))
                .unwrap_or(false)
        })
        .filter(|&p| process_alive(p))
        .collect()
}

/// Whether some socket is in LISTEN state on TCP `port` (any address),
/// according to /proc/net/tcp and /proc/net/tcp6. Unlike a test connection,
/// this has no side effects on the server (no log lines, no request counts).
pub fn port_listening(port: u16) -> bool {
    let want = format!("{:04X}", port);
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(s) = fs::read_to_string(f) else { continue };
        for line in s.lines().skip(1) {
            let mut it = line.split_whitespace();
            let (_sl, local, _rem, st) = (it.next(), it.next(), it.next(), it.next());
            if let (Some(local), Some("0A")) = (local, st) {
                if local.rsplit(':').next() == Some(want.as_str()) {
                    return true;
                }
            }
        }
    }
    false
}

/// Adds search (x) permission for group and others to `dir` and all of its
/// ancestors that lack it, so that the unprivileged Apache children
/// (`User www-data`) can reach files below `dir`.
fn make_traversable(dir: &Path) {
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || d == Path::new("/") {
            break;
        }
        if let Ok(md) = fs::metadata(d) {
            let mode = md.permissions().mode();
            if mode & 0o011 != 0o011 {
                let _ = fs::set_permissions(d, fs::Permissions::from_mode((mode | 0o011) & 0o7777));
            }
        }
        cur = d.parent();
    }
}

fn www_data_ids() -> Option<(u32, u32)> {
    let pw = fs::read_to_string("/etc/passwd").ok()?;
    for line in pw.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == "www-data" {
            return Some((f[2].parse().ok()?, f[3].parse().ok()?));
        }
    }
    None
}

/// Minimal HTTP/1.0 GET against 127.0.0.1:`port`. Returns (status, body).
/// Panics on connection/IO errors (10 s timeouts).
pub fn http_get(port: u16, path_and_query: &str) -> (u16, String) {
    let addr = ("127.0.0.1", port);
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect 127.0.0.1:{}: {}", port, e));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n", path_and_query, port).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .unwrap_or_else(|e| panic!("reading response from 127.0.0.1:{}{}: {}", port, path_and_query, e));
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response from port {}: {:?}", port, text));
    let body = match text.find("\r\n\r\n") {
        Some(i) => text[i + 4..].to_string(),
        None => String::new(),
    };
    (status, body)
}

// ---------------------------------------------------------------------------
// PKI
// ---------------------------------------------------------------------------

/// A test PKI created by `scripts/mkpki.sh`.
pub struct Pki {
    pub dir: PathBuf,
    pub ocsp_url: String,
    _tmp: Option<TempDir>,
}

impl Pki {
    /// Runs `scripts/mkpki.sh DIR OCSP_URL` (panics with its output on
    /// failure). The directory is not removed by the harness.
    pub fn create(dir: &Path, ocsp_url: &str) -> Pki {
        let script = manifest_dir().join("scripts/mkpki.sh");
        assert!(script.is_file(), "{} does not exist", script.display());
        fs::create_dir_all(dir).unwrap();
        let out = run_with_timeout(
            Command::new("bash").arg(&script).arg(dir).arg(ocsp_url).current_dir(manifest_dir()),
            Duration::from_secs(120),
        );
        if !out.success() {
            panic!("mkpki.sh {} {} failed:\n{}", dir.display(), ocsp_url, out.combined());
        }
        Pki { dir: dir.to_path_buf(), ocsp_url: ocsp_url.to_string(), _tmp: None }
    }

    /// Like [`Pki::create`] in a private temporary directory that is removed
    /// when the `Pki` is dropped.
    pub fn temp(ocsp_url: &str) -> Pki {
        let tmp = tempfile::Builder::new().prefix("stapling-pki.").tempdir().unwrap();
        let mut p = Pki::create(tmp.path(), ocsp_url);
        p._tmp = Some(tmp);
        p
    }

    /// `DIR/name`, e.g. `pki.path("leaf-chain.crt")`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// `http://127.0.0.1:PORT/`, the OCSP URL to put into a PKI for a responder
/// that will listen on `port`.
pub fn ocsp_url(port: u16) -> String {
    format!("http://127.0.0.1:{}/", port)
}

// ---------------------------------------------------------------------------
// OCSP responders
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponderKind {
    Fixture,
    Openssl,
}

/// A running OCSP responder on 127.0.0.1:`port`. Stopped on drop.
pub struct Responder {
    pub port: u16,
    pub kind: ResponderKind,
    child: Child,
    log: PathBuf,
    _tmp: TempDir,
}

impl Responder {
    /// Starts `tests/fixtures/ocsp_responder.py` on `port` and waits (15 s)
    /// until it has written its port file and is listening.
    pub fn fixture(pki: &Pki, port: u16) -> Responder {
        let tmp = tempfile::Builder::new().prefix("stapling-resp.").tempdir().unwrap();
        let port_file = tmp.path().join("port");
        let script = manifest_dir().join("tests/fixtures/ocsp_responder.py");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(&script)
            .arg("--pki")
            .arg(&pki.dir)
            .arg("--port")
            .arg(port.to_string())
            .arg("--port-file")
            .arg(&port_file);
        let mut r = Self::spawn(cmd, tmp, port, ResponderKind::Fixture);
        let pf = port_file.clone();
        r.wait_ready(move || pf.exists());
        r
    }

    /// Like [`fixture`](Self::fixture), and also serves OCSP over TLS on
    /// `tls_host:tls_port` with the chain file `cert` and its `key` (an https://
    /// responder). Control and stats stay on the plain `port`.
    pub fn fixture_tls(pki: &Pki, port: u16, tls_host: &str, tls_port: u16, cert: &Path, key: &Path) -> Responder {
        let tmp = tempfile::Builder::new().prefix("stapling-resp.").tempdir().unwrap();
        let (port_file, tls_port_file) = (tmp.path().join("port"), tmp.path().join("tls-port"));
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(manifest_dir().join("tests/fixtures/ocsp_responder.py"))
            .arg("--pki")
            .arg(&pki.dir)
            .args(["--port", &port.to_string(), "--tls-host", tls_host, "--tls-port", &tls_port.to_string()])
            .arg("--port-file")
            .arg(&port_file)
            .arg("--tls-port-file")
            .arg(&tls_port_file)
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key);
        let mut r = Self::spawn(cmd, tmp, port, ResponderKind::Fixture);
        r.wait_ready(move || port_file.exists() && tls_port_file.exists());
        r
    }

    /// Starts `openssl ocsp` as responder for `DIR/index.txt`, signing with
    /// the issuer key, and waits (15 s) until it listens.
    ///
    /// Note: OpenSSL 3.0's `ocsp -port` only takes a number, so this
    /// responder listens on all addresses, not just 127.0.0.1. It answers
    /// one request at a time.
    pub fn openssl(pki: &Pki, port: u16) -> Responder {
        let tmp = tempfile::Builder::new().prefix("stapling-resp.").tempdir().unwrap();
        let mut cmd = Command::new("openssl");
        cmd.arg("ocsp")
            .arg("-index")
            .arg(pki.path("index.txt"))
            .arg("-port")
            .arg(port.to_string())
            .arg("-rsigner")
            .arg(pki.path("issuer.crt"))
            .arg("-rkey")
            .arg(pki.path("issuer.key"))
            .arg("-CA")
            .arg(pki.path("issuer.crt"))
            .arg("-ndays")
            .arg("1")
            .arg("-ignore_err");
        let mut r = Self::spawn(cmd, tmp, port, ResponderKind::Openssl);
        r.wait_ready(|| true);
        r
    }

    fn spawn(mut cmd: Command, tmp: TempDir, port: u16, kind: ResponderKind) -> Responder {
        let log = tmp.path().join("responder.log");
        let f = fs::File::create(&log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f))
            .current_dir(manifest_dir());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {:?}: {}", cmd, e));
        Responder { port, kind, child, log, _tmp: tmp }
    }

    fn wait_ready(&mut self, mut extra: impl FnMut() -> bool) {
        let port = self.port;
        let mut exited = None;
        let ok = wait_until(Duration::from_secs(15), || {
            if let Ok(Some(st)) = self.child.try_wait() {
                exited = Some(st);
                return true;
            }
            extra() && port_listening(port)
        });
        if let Some(st) = exited {
            panic!("{:?} OCSP responder exited early ({}):\n{}", self.kind, st, self.log());
        }
        if !ok {
            panic!("{:?} OCSP responder did not come up on port {} within 15 s:\n{}", self.kind, port, self.log());
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The responder's stdout+stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fixture only: `GET /_control?{query}`, e.g. `"mode=expired&delay=2"`.
    /// Asserts HTTP 200.
    pub fn set(&self, query: &str) {
        let (st, body) = http_get(self.port, &format!("/_control?{}", query));
        assert_eq!(st, 200, "responder /_control?{} answered {}: {}", query, st, body);
    }

    /// Fixture only: number of OCSP requests served (from `GET /_stats`).
    pub fn requests(&self) -> u64 {
        let (st, body) = http_get(self.port, "/_stats");
        assert_eq!(st, 200, "responder /_stats answered {}: {}", st, body);
        json_u64(&body, "requests").unwrap_or_else(|| panic!("no \"requests\" in /_stats: {}", body))
    }

    /// Fixture only: one number of `GET /_stats`, e.g. "max_in_flight".
    pub fn stat(&self, key: &str) -> u64 {
        let (st, body) = http_get(self.port, "/_stats");
        assert_eq!(st, 200, "responder /_stats answered {}: {}", st, body);
        json_u64(&body, key).unwrap_or_else(|| panic!("no \"{key}\" in /_stats: {body}"))
    }

    /// Fixture only: zero the counters.
    pub fn reset_stats(&self) {
        self.set("reset_stats=1");
    }

    /// Waits until at least `n` requests were counted (fixture only).
    pub fn wait_requests(&self, n: u64, timeout: Duration) -> bool {
        wait_until(timeout, || self.requests() >= n)
    }
}

/// Finds `"key": N` in a JSON text (flat string search; good enough for the
/// fixture's /_stats).
fn json_u64(json: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{}\"", key);
    let i = json.find(&pat)? + pat.len();
    let rest = json[i..].trim_start().strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

impl Drop for Responder {
    fn drop(&mut self) {
        let pid = self.child.id();
        if let Ok(None) = self.child.try_wait() {
            send_signal(pid, "TERM");
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill(); // SIGKILL
            }
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "===== {:?} OCSP responder log (port {}) =====\n{}\n===== end of responder log =====",
                self.kind,
                self.port,
                self.log()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Apache
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mpm {
    Prefork,
    Worker,
    Event,
}

#[derive(Debug, Clone)]
pub struct ApacheOptions {
    pub mpm: Mpm,
    /// Number of child processes (prefork: exactly this many; event: this
    /// many processes with 4 threads each).
    pub children: u32,
    /// Extra lines at global scope (after all LoadModule lines and the
    /// defaults, before the <VirtualHost>).
    pub global_conf: String,
    /// Lines inside the SSL <VirtualHost>.
    pub vhost_conf: String,
    /// Extra lines after the default SSL <VirtualHost> (at global scope), e.g.
    /// name-based vhosts on the same port from [`sni_vhosts`]. Vhosts written
    /// here come after the default one, so it stays the default for its
    /// address (clients without SNI or with an unknown name get it).
    pub extra_vhosts: String,
    /// Certificate chain file (SSLCertificateFile). If empty, no SSL
    /// <VirtualHost> is written (only useful for [`apachectl_test_opts`]).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// LoadModule stapling_module (default true).
    pub load_stapling: bool,
    /// Put the stapling LoadModule after mod_ssl's (default true).
    pub load_order_ssl_first: bool,
    /// Use this directory as ServerRoot (created if needed, never removed)
    /// instead of a fresh temporary one, e.g. to reuse caches across
    /// Apache instances.
    pub server_root: Option<PathBuf>,
    /// Port to listen on; a [`free_port`] if None.
    pub port: Option<u16>,
    /// Extra environment variables for the apache2 process (the environment
    /// is otherwise cleared, except PATH, LANG and RUST_BACKTRACE/RUST_LOG/
    /// MOD_STAPLING_* which are passed through).
    pub env: Vec<(String, String)>,
}

impl ApacheOptions {
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> ApacheOptions {
        ApacheOptions {
            mpm: Mpm::Prefork,
            children: 2,
            global_conf: String::new(),
            vhost_conf: String::new(),
            extra_vhosts: String::new(),
            cert: cert.into(),
            key: key.into(),
            load_stapling: true,
            load_order_ssl_first: true,
            server_root: None,
            port: None,
            env: Vec::new(),
        }
    }

    /// Options for `pki`'s `leaf-chain.crt` / `leaf.key`.
    pub fn for_pki(pki: &Pki) -> ApacheOptions {
        ApacheOptions::new(pki.path("leaf-chain.crt"), pki.path("leaf.key"))
    }
}

fn module_line(name: &str, file: &str) -> Option<String> {
    let p = Path::new(APACHE_MODULES).join(file);
    p.is_file().then(|| format!("LoadModule {} {}\n", name, p.display()))
}

/// Creates the ServerRoot layout and writes `conf/httpd.conf`.
///
/// Layout: conf/, logs/ (error_log), run/ (pid file, mutexes, runtime dir;
/// a good place for shmcb files), htdocs/index.html ("hello"), var/ (owned
/// by www-data, writable by the children).
fn write_config(root: &Path, port: u16, opts: &ApacheOptions) {
    for d in ["conf", "logs", "run", "htdocs", "var"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    make_traversable(root);
    if let Some((uid, gid)) = www_data_ids() {
        let _ = std::os::unix::fs::chown(root.join("var"), Some(uid), Some(gid));
    }
    fs::write(root.join("htdocs/index.html"), "hello\n").unwrap();
    fs::write(root.join("conf/mime.types"), "text/html html htm\n").unwrap();

    let r = root.display();
    let mut c = String::new();
    let _ = writeln!(c, "# generated by tests/common/mod.rs");
    let _ = writeln!(c, "ServerRoot \"{}\"", r);
    let _ = writeln!(c, "ServerName localhost");
    let _ = writeln!(c, "PidFile \"{}/run/httpd.pid\"", r);
    let _ = writeln!(c, "DefaultRuntimeDir \"{}/run\"", r);
    let _ = writeln!(c, "Mutex \"file:{}/run\" default", r);
    let _ = writeln!(c, "ErrorLog logs/error_log");
    let _ = writeln!(c, "User www-data");
    let _ = writeln!(c, "Group www-data");
    let _ = writeln!(c, "Listen 127.0.0.1:{} https", port);
    let _ = writeln!(c, "Timeout 30");

    // Modules.
    match opts.mpm {
        Mpm::Prefork => c.push_str(&module_line("mpm_prefork_module", "mod_mpm_prefork.so").unwrap()),
        Mpm::Worker => c.push_str(&module_line("mpm_worker_module", "mod_mpm_worker.so").unwrap()),
        Mpm::Event => c.push_str(&module_line("mpm_event_module", "mod_mpm_event.so").unwrap()),
    }
    c.push_str(&module_line("authz_core_module", "mod_authz_core.so").expect("mod_authz_core.so missing"));
    c.push_str(&module_line("mime_module", "mod_mime.so").unwrap_or_default());
    c.push_str(&module_line("dir_module", "mod_dir.so").unwrap_or_default());
    c.push_str(&module_line("socache_shmcb_module", "mod_socache_shmcb.so").expect("mod_socache_shmcb.so missing"));
    let stapling = if opts.load_stapling {
        format!("LoadModule stapling_module \"{}\"\n", module_path().display())
    } else {
        String::new()
    };
    if !opts.load_order_ssl_first {
        c.push_str(&stapling);
    }
    c.push_str(&module_line("ssl_module", "mod_ssl.so").expect("mod_ssl.so missing"));
    if opts.load_order_ssl_first {
        c.push_str(&stapling);
    }

    // LogLevel must come after the LoadModule lines (per-module levels need
    // the module to be loaded).
    if opts.load_stapling {
        let _ = writeln!(c, "LogLevel info stapling:debug ssl:info");
    } else {
        let _ = writeln!(c, "LogLevel info ssl:info");
    }

    let n = opts.children.max(1);
    match opts.mpm {
        Mpm::Prefork => {
            let _ = writeln!(c, "StartServers {n}");
            let _ = writeln!(c, "MinSpareServers {n}");
            let _ = writeln!(c, "MaxSpareServers {n}");
            let _ = writeln!(c, "ServerLimit {n}");
            let _ = writeln!(c, "MaxRequestWorkers {n}");
        }
        Mpm::Worker | Mpm::Event => {
            let _ = writeln!(c, "StartServers {n}");
            let _ = writeln!(c, "ServerLimit {n}");
            let _ = writeln!(c, "ThreadLimit 4");
            let _ = writeln!(c, "ThreadsPerChild 4");
            let _ = writeln!(c, "MaxRequestWorkers {}", 4 * n);
            let _ = writeln!(c, "MinSpareThreads 4");
            let _ = writeln!(c, "MaxSpareThreads {}", 4 * n);
        }
    }

    let _ = writeln!(c, "<IfModule mime_module>\n    TypesConfig conf/mime.types\n</IfModule>");
    let _ = writeln!(c, "<IfModule dir_module>\n    DirectoryIndex index.html\n</IfModule>");
    let _ = writeln!(c, "DocumentRoot \"{}/htdocs\"", r);
    let _ = writeln!(c, "<Directory \"{}/htdocs\">\n    Require all granted\n</Directory>", r);

    let _ = writeln!(c, "\n# ---- global_conf ----");
    c.push_str(&opts.global_conf);
    if !c.ends_with('\n') {
        c.push('\n');
    }

    if !opts.cert.as_os_str().is_empty() {
        let _ = writeln!(c, "\n<VirtualHost 127.0.0.1:{}>", port);
        let _ = writeln!(c, "ServerName localhost");
        let _ = writeln!(c, "SSLEngine on");
        let _ = writeln!(c, "SSLCertificateFile \"{}\"", opts.cert.display());
        let _ = writeln!(c, "SSLCertificateKeyFile \"{}\"", opts.key.display());
        let _ = writeln!(c, "# ---- vhost_conf ----");
        c.push_str(&opts.vhost_conf);
        if !c.ends_with('\n') {
            c.push('\n');
        }
        let _ = writeln!(c, "</VirtualHost>");
    }
    if !opts.extra_vhosts.is_empty() {
        let _ = writeln!(c, "\n# ---- extra_vhosts ----");
        c.push_str(&opts.extra_vhosts);
        if !c.ends_with('\n') {
            c.push('\n');
        }
    }
    fs::write(root.join("conf/httpd.conf"), c).unwrap();
}

/// Writes the ServerRoot layout and `conf/httpd.conf` for `opts` into `root` (as
/// [`Apache::start`] does, with `opts.port` or a [`free_port`]) without starting
/// anything. Returns the port and the `apache2 -d ROOT -f conf/httpd.conf` command
/// (clean environment, working directory ROOT) for running the server some other
/// way, e.g. in the foreground (`-X`) under a profiler.
pub fn prepare_server_root(root: &Path, opts: &ApacheOptions) -> (u16, Command) {
    let port = opts.port.unwrap_or_else(free_port);
    write_config(root, port, opts);
    (port, apache_cmd(root, &opts.env))
}

/// An `apache2` command for ServerRoot `root` with a clean environment.
fn apache_cmd(root: &Path, extra_env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(APACHE_BIN);
    cmd.arg("-d").arg(root).arg("-f").arg("conf/httpd.conf");
    cmd.env_clear();
    cmd.env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    cmd.env("LANG", "C");
    // Harmless and only read by config files that reference them.
    let r = root.display().to_string();
    cmd.env("APACHE_RUN_DIR", format!("{}/run", r));
    cmd.env("APACHE_LOCK_DIR", format!("{}/run", r));
    cmd.env("APACHE_LOG_DIR", format!("{}/logs", r));
    cmd.env("APACHE_PID_FILE", format!("{}/run/httpd.pid", r));
    cmd.env("APACHE_RUN_USER", "www-data");
    cmd.env("APACHE_RUN_GROUP", "www-data");
    for (k, v) in std::env::vars() {
        if k == "RUST_BACKTRACE" || k == "RUST_LOG" || k.starts_with("MOD_STAPLING_") {
            cmd.env(k, v);
        }
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.current_dir(root);
    cmd
}

/// The error_log line Apache writes when a (re)started generation is ready.
pub const RESUMING: &str = "resuming normal operations";

/// A running Apache with one SSL virtual host on 127.0.0.1:`port()`.
/// Stopped (and all its processes killed) on drop; if the test is panicking,
/// the error_log is printed to stderr.
pub struct Apache {
    opts: ApacheOptions,
    port: u16,
    root: PathBuf,
    pid: Option<u32>,
    /// stdout+stderr of the last apache2 -k command.
    last_output: String,
    /// "resuming normal operations" lines in the error_log before the last start.
    start_resuming: usize,
    _tmp: Option<TempDir>,
}

impl Apache {
    /// Writes the configuration and starts Apache (`-k start`), waiting up to
    /// 30 s until the PidFile exists, the parent is alive, the port is in
    /// LISTEN state and the error log shows "resuming normal operations".
    /// On failure everything started is killed and the error contains the
    /// apache2 output and the full error_log.
    pub fn start(opts: ApacheOptions) -> Result<Apache, String> {
        let mut a = Apache::begin_start(opts)?;
        a.wait_started()?;
        Ok(a)
    }

    /// The first half of [`Apache::start`]: writes the configuration and runs
    /// `apache2 -k start`, which returns once the daemon has detached, i.e.
    /// before post_config (and so before the module's startup work) is done.
    /// Finish with [`wait_started`](Self::wait_started); in between, the
    /// test can act during startup (e.g. on [`startup_helper_pid`]). The
    /// returned `Apache` stops everything of its ServerRoot on drop, also if
    /// it never became ready.
    pub fn begin_start(opts: ApacheOptions) -> Result<Apache, String> {
        let (root, tmp) = match &opts.server_root {
            Some(r) => {
                fs::create_dir_all(r).map_err(|e| format!("create {}: {}", r.display(), e))?;
                // ServerRoot must be absolute.
                let r = fs::canonicalize(r).map_err(|e| format!("canonicalize {}: {}", r.display(), e))?;
                (r, None)
            }
            None => {
                let t = tempfile::Builder::new().prefix("stapling-httpd.").tempdir().unwrap();
                (t.path().to_path_buf(), Some(t))
            }
        };
        let port = opts.port.unwrap_or_else(free_port);
        let mut a = Apache { opts, port, root, pid: None, last_output: String::new(), start_resuming: 0, _tmp: tmp };
        a.begin_start_again()?;
        Ok(a)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn options(&self) -> &ApacheOptions {
        &self.opts
    }

    pub fn error_log_path(&self) -> PathBuf {
        self.root.join("logs/error_log")
    }

    /// The whole error_log (all starts, if the ServerRoot is reused).
    pub fn error_log(&self) -> String {
        fs::read_to_string(self.error_log_path()).unwrap_or_default()
    }

    /// Number of occurrences of `needle` in the error_log.
    pub fn log_count(&self, needle: &str) -> usize {
        self.error_log().matches(needle).count()
    }

    /// Waits until the error_log contains `needle` at least `n` times.
    pub fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.log_count(needle) >= n)
    }

    /// Waits until the error_log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_log_count(needle, 1, timeout)
    }

    /// Output of the last `apache2 -k ...` command run by the harness.
    pub fn last_output(&self) -> &str {
        &self.last_output
    }

    fn pid_file(&self) -> PathBuf {
        self.root.join("run/httpd.pid")
    }

    fn read_pid_file(&self) -> Option<u32> {
        fs::read_to_string(self.pid_file()).ok()?.trim().parse().ok()
    }

    /// PID of the Apache parent process. Panics if not running.
    pub fn pid(&self) -> u32 {
        self.pid.expect("Apache is not running")
    }

    pub fn is_running(&self) -> bool {
        self.pid.map(process_alive).unwrap_or(false)
    }

    /// PIDs of the live child processes of the Apache parent.
    pub fn child_pids(&self) -> Vec<u32> {
        match self.pid {
            Some(p) => children_of(p),
            None => Vec::new(),
        }
    }

    /// Every live process belonging to this ServerRoot (parent, children,
    /// and leftovers reparented after a crash).
    fn own_processes(&self) -> Vec<u32> {
        let mut v = processes_with_arg(&self.root.display().to_string());
        if let Some(p) = self.pid {
            if process_alive(p) && !v.contains(&p) {
                v.push(p);
            }
            for c in children_of(p) {
                if !v.contains(&c) {
                    v.push(c);
                }
            }
        }
        v
    }

    /// Changes the options (e.g. `vhost_conf`) and rewrites conf/httpd.conf
    /// with the same ServerRoot and port. Takes effect at the next
    /// [`graceful`](Self::graceful) or [`start_again`](Self::start_again).
    pub fn reconfigure(&mut self, f: impl FnOnce(&mut ApacheOptions)) {
        f(&mut self.opts);
        write_config(&self.root, self.port, &self.opts);
    }

    /// Starts again with the same ServerRoot, configuration and port (after
    /// [`stop`](Self::stop)). Panics (with the error_log) on failure.
    pub fn start_again(&mut self) {
        if let Err(e) = self.try_start_again() {
            panic!("Apache start_again failed: {}", e);
        }
    }

    /// Like [`start_again`](Self::start_again), returning the error.
    pub fn try_start_again(&mut self) -> Result<(), String> {
        self.begin_start_again()?;
        self.wait_started()
    }

    /// `apache2 -k start` with the same ServerRoot, configuration and port,
    /// without waiting for the server to become ready (see
    /// [`begin_start`](Self::begin_start)).
    pub fn begin_start_again(&mut self) -> Result<(), String> {
        if self.is_running() {
            return Err("Apache is already running".into());
        }
        write_config(&self.root, self.port, &self.opts);
        let _ = fs::remove_file(self.pid_file());
        self.start_resuming = self.log_count(RESUMING);
        let out =
            run_with_timeout(apache_cmd(&self.root, &self.opts.env).arg("-k").arg("start"), Duration::from_secs(30));
        self.last_output = out.combined();
        if !out.success() {
            return Err(self.fail_start(&format!("apache2 -k start failed ({:?})", out.status)));
        }
        Ok(())
    }

    /// The second half of a start: waits up to 30 s until the PidFile exists,
    /// the parent is alive, the port is in LISTEN state and the error log
    /// shows one more "resuming normal operations" than before the start; then
    /// (without failing) up to 10 s for all children. On failure everything
    /// is killed and the error has the apache2 output and the error_log.
    pub fn wait_started(&mut self) -> Result<(), String> {
        let before = self.start_resuming;
        let root_arg = self.root.display().to_string();
        let mut dead_since: Option<Instant> = None;
        let mut failure: Option<String> = None;
        let ok = wait_until(Duration::from_secs(30), || {
            if let Some(pid) = self.read_pid_file() {
                if process_alive(pid) {
                    self.pid = Some(pid);
                    return port_listening(self.port) && self.log_count(RESUMING) > before;
                }
            }
            // The daemon is forked before `-k start` returns, so if no
            // process for our ServerRoot exists any more, it has died.
            if processes_with_arg(&root_arg).is_empty() {
                let t = *dead_since.get_or_insert_with(Instant::now);
                if t.elapsed() > Duration::from_millis(500) {
                    failure = Some("Apache exited during startup".into());
                    return true;
                }
            } else {
                dead_since = None;
            }
            false
        });
        if let Some(f) = failure {
            return Err(self.fail_start(&f));
        }
        if !ok {
            return Err(self.fail_start("Apache did not become ready within 30 s"));
        }
        // Normally all children are forked before "resuming normal
        // operations" is logged; give them a moment if not (no failure).
        let n = self.opts.children.max(1) as usize;
        wait_until(Duration::from_secs(10), || self.child_pids().len() >= n);
        Ok(())
    }

    fn fail_start(&mut self, what: &str) -> String {
        self.kill_all(Duration::from_secs(5));
        format!(
            "{} (ServerRoot {}, port {})\n----- apache2 output -----\n{}\n----- error_log -----\n{}\n----- httpd.conf -----\n{}",
            what,
            self.root.display(),
            self.port,
            self.last_output,
            self.error_log(),
            fs::read_to_string(self.root.join("conf/httpd.conf")).unwrap_or_default()
        )
    }

    /// `apache2 -k graceful`, then waits (30 s) until the error log shows
    /// one more "resuming normal operations" and `children` processes of the
    /// new generation (PIDs not seen before the restart) are running; then
    /// waits up to 5 s more (without failing) for the old generation to
    /// exit, so `child_pids()` is normally exact afterwards. Panics on
    /// failure.
    pub fn graceful(&self) {
        if let Err(e) = self.try_graceful() {
            panic!("{}", e);
        }
    }

    /// Like [`graceful`](Self::graceful), returning the error (which
    /// includes the apache2 output and the error_log).
    pub fn try_graceful(&self) -> Result<(), String> {
        let before = self.log_count(RESUMING);
        let old_children = self.child_pids();
        let out =
            run_with_timeout(apache_cmd(&self.root, &self.opts.env).arg("-k").arg("graceful"), Duration::from_secs(30));
        let err = |what: &str| {
            format!(
                "{}\n----- apache2 output -----\n{}\n----- error_log -----\n{}",
                what,
                out.combined(),
                self.error_log()
            )
        };
        if !out.success() {
            return Err(err("apache2 -k graceful failed"));
        }
        if !wait_until(Duration::from_secs(30), || self.log_count(RESUMING) > before) {
            return Err(err("no new 'resuming normal operations' within 30 s after graceful"));
        }
        if !self.is_running() {
            return Err(err("Apache parent is gone after graceful"));
        }
        let n = self.opts.children.max(1) as usize;
        let new_gen = || self.child_pids().into_iter().filter(|p| !old_children.contains(p)).count();
        if !wait_until(Duration::from_secs(30), || new_gen() >= n) {
            return Err(err(&format!(
                "only {} of {} new-generation children running 30 s after graceful",
                new_gen(),
                n
            )));
        }
        wait_until(Duration::from_secs(5), || self.child_pids().iter().all(|p| !old_children.contains(p)));
        Ok(())
    }

    /// SIGTERM to the parent, wait up to 15 s for it to exit, then SIGKILL it
    /// and every remaining process of this instance. Idempotent.
    pub fn stop(&mut self) {
        if self.pid.is_none() {
            self.pid = self.read_pid_file().filter(|&p| process_alive(p));
        }
        self.kill_all(Duration::from_secs(15));
    }

    fn kill_all(&mut self, grace: Duration) {
        let mut procs = self.own_processes();
        if let Some(pid) = self.pid.filter(|&p| process_alive(p)) {
            send_signal(pid, "TERM");
            wait_until(grace, || !process_alive(pid));
        } else if !procs.is_empty() {
            // No known parent (e.g. failed start): terminate everything.
            for &p in &procs {
                send_signal(p, "TERM");
            }
            wait_until(grace.min(Duration::from_secs(3)), || procs.iter().all(|&p| !process_alive(p)));
        }
        for p in self.own_processes() {
            if !procs.contains(&p) {
                procs.push(p);
            }
        }
        for &p in &procs {
            if process_alive(p) {
                send_signal(p, "KILL");
            }
        }
        wait_until(Duration::from_secs(5), || procs.iter().all(|&p| !process_alive(p)));
        self.pid = None;
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "===== Apache error_log ({}, port {}) =====\n{}===== end of error_log =====",
                self.root.display(),
                self.port,
                self.error_log()
            );
        }
    }
}

/// Writes a configuration like [`Apache::start`] does (mod_stapling loaded,
/// no SSL virtual host) with `conf_body` appended at global scope, runs
/// `apache2 -t` and returns (success, stderr+stdout).
///
/// Note `-t` only runs the directive handlers and the check_config/
/// test_config hooks; post_config does not run.
pub fn apachectl_test(conf_body: &str) -> (bool, String) {
    let mut opts = ApacheOptions::new(PathBuf::new(), PathBuf::new());
    opts.global_conf = conf_body.to_string();
    apachectl_test_opts(&opts)
}

/// Like [`apachectl_test`] with full control over the configuration
/// (including the SSL virtual host when `opts.cert` is non-empty).
pub fn apachectl_test_opts(opts: &ApacheOptions) -> (bool, String) {
    let tmp;
    let root = match &opts.server_root {
        Some(r) => r.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("stapling-conftest.").tempdir().unwrap();
            tmp.path().to_path_buf()
        }
    };
    let port = opts.port.unwrap_or_else(free_port);
    write_config(&root, port, opts);
    let out = run_with_timeout(apache_cmd(&root, &opts.env).arg("-t"), Duration::from_secs(30));
    let mut text = out.stderr.clone();
    text.push_str(&out.stdout);
    if out.timed_out() {
        text.push_str("\n[harness: apache2 -t killed after timeout]\n");
    }
    (out.success(), text)
}

// ---------------------------------------------------------------------------
// TLS clients
// ---------------------------------------------------------------------------

/// Result of [`s_client_status`].
#[derive(Debug, Clone)]
pub struct StapleResult {
    /// A successful OCSP response was stapled ("OCSP Response Status:
    /// successful" present and not "OCSP response: no response sent").
    pub stapled: bool,
    /// "good" / "revoked" / "unknown" from the first "Cert Status: X".
    pub cert_status: Option<String>,
    /// Hex (lowercase, no separators) of the stapled DER OCSPResponse,
    /// extracted from the `-msg` handshake dump (also set for non-successful
    /// OCSP responses, None if nothing was stapled).
    pub response_der_hex: Option<String>,
    /// "Verify return code: 0 (ok)" seen.
    pub verify_ok: bool,
    /// openssl s_client exited with status 0 (handshake completed; with
    /// -verify_return_error, also the chain verified).
    pub exit_ok: bool,
    /// Full stdout+stderr of s_client.
    pub raw: String,
}

impl StapleResult {
    /// The stapled DER OCSPResponse bytes.
    pub fn der(&self) -> Option<Vec<u8>> {
        self.response_der_hex.as_deref().map(hex_decode)
    }

    /// The "OCSP response:" text block printed by s_client (from the
    /// "OCSP response:" line up to the "---" that ends it), or None.
    pub fn ocsp_text(&self) -> Option<String> {
        let i = self.raw.find("OCSP response:")?;
        let block = &self.raw[i..];
        let end = block.find("\n---").unwrap_or(block.len());
        Some(block[..end].to_string())
    }
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex")).collect()
}

fn hex_encode(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{:02x}", x);
    }
    s
}

/// A handshake that completed, for assertions about the staple: retried when the
/// client itself fails (a loaded 2-core machine running several Apaches), so that
/// "no staple" never just means "no handshake". Panics after 4 failed attempts.
pub fn handshake(port: u16, cafile: &Path, tls: Option<&str>) -> StapleResult {
    let mut r = s_client_status(port, cafile, tls);
    for _ in 0..3 {
        if r.exit_ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        r = s_client_status(port, cafile, tls);
    }
    assert!(r.exit_ok, "TLS handshake with 127.0.0.1:{port} failed:\n{}", r.raw);
    r
}

/// A throwaway PKI plus the controllable fixture responder, set to `initial`
/// (e.g. "mode=good&validity=80").
pub struct Fixture {
    _tmp: TempDir,
    pub pki: Pki,
    pub responder: Responder,
}

impl Fixture {
    pub fn new(initial: &str) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let rport = free_port();
        let pki = Pki::create(tmp.path(), &ocsp_url(rport));
        let responder = Responder::fixture(&pki, rport);
        responder.set(initial);
        Fixture { _tmp: tmp, pki, responder }
    }

    /// A throwaway PKI with `openssl ocsp` as the responder: the reference implementation,
    /// not controllable.
    pub fn openssl() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let rport = free_port();
        let pki = Pki::create(tmp.path(), &ocsp_url(rport));
        let responder = Responder::openssl(&pki, rport);
        Fixture { _tmp: tmp, pki, responder }
    }

    /// A completed handshake with `apache`, verified against the test root.
    pub fn staple(&self, apache: &Apache) -> StapleResult {
        handshake(apache.port(), &self.pki.path("root.crt"), None)
    }
}

/// `openssl s_client -connect 127.0.0.1:PORT -servername localhost -status
/// -msg -CAfile CAFILE -verify_return_error [TLS]` with stdin from /dev/null
/// and a 10 s timeout. `tls` is e.g. `Some("-tls1_2")` or `Some("-tls1_3")`.
pub fn s_client_status(port: u16, cafile: &Path, tls: Option<&str>) -> StapleResult {
    s_client_status_sni(port, "localhost", cafile, tls)
}

fn parse_s_client(raw: &str, exit_ok: bool) -> StapleResult {
    let stapled = raw.contains("OCSP Response Status: successful") && !raw.contains("OCSP response: no response sent");
    let cert_status = raw.lines().find_map(|l| {
        l.trim().strip_prefix("Cert Status:").and_then(|r| r.split_whitespace().next()).map(|s| s.to_string())
    });
    StapleResult {
        stapled,
        cert_status,
        response_der_hex: extract_staple(raw).map(|d| hex_encode(&d)),
        verify_ok: raw.contains("Verify return code: 0 (ok)"),
        exit_ok,
        raw: raw.to_string(),
    }
}

/// The stapled DER bytes, or None if nothing was stapled (see
/// [`s_client_status`] for the arguments).
pub fn staple_der(port: u16, cafile: &Path, tls: Option<&str>) -> Option<Vec<u8>> {
    s_client_status(port, cafile, tls).der()
}

/// Received handshake messages from `-msg` output: (protocol, name, bytes).
fn received_handshakes(raw: &str) -> Vec<(String, String, Vec<u8>)> {
    let mut msgs: Vec<(String, String, Vec<u8>)> = Vec::new();
    let mut cur: Option<(String, String, Vec<u8>)> = None;
    for line in raw.lines() {
        if let Some(c) = cur.as_mut() {
            let toks: Vec<&str> = line.split_whitespace().collect();
            let is_hex = line.starts_with(' ')
                && !toks.is_empty()
                && toks.iter().all(|t| t.len() == 2 && t.chars().all(|ch| ch.is_ascii_hexdigit()));
            if is_hex {
                c.2.extend(toks.iter().map(|t| u8::from_str_radix(t, 16).unwrap()));
                continue;
            }
            msgs.push(cur.take().unwrap());
        }
        // e.g. "<<< TLS 1.2, Handshake [length 058a], CertificateStatus"
        if let Some(rest) = line.strip_prefix("<<< ") {
            if let Some(hpos) = rest.find(", Handshake [length ") {
                let proto = rest[..hpos].to_string();
                let name = rest.rsplit("], ").next().unwrap_or("").trim().to_string();
                cur = Some((proto, name, Vec::new()));
            }
        }
    }
    if let Some(c) = cur {
        msgs.push(c);
    }
    msgs
}

fn be(b: &[u8]) -> usize {
    b.iter().fold(0usize, |a, &x| (a << 8) | x as usize)
}

/// Parses the status_request payload `CertificateStatus { status_type=1,
/// opaque OCSPResponse<1..2^24-1> }` and returns the DER.
fn parse_cert_status_body(b: &[u8]) -> Option<Vec<u8>> {
    if b.len() < 4 || b[0] != 1 {
        return None;
    }
    let l = be(&b[1..4]);
    (b.len() == 4 + l && l > 0).then(|| b[4..].to_vec())
}

fn extract_staple(raw: &str) -> Option<Vec<u8>> {
    for (proto, name, m) in received_handshakes(raw) {
        if m.len() < 4 || be(&m[1..4]) != m.len() - 4 {
            continue;
        }
        let body = &m[4..];
        if name == "CertificateStatus" && m[0] == 22 {
            // TLS 1.2: the whole message body is a CertificateStatus.
            if let Some(d) = parse_cert_status_body(body) {
                return Some(d);
            }
        } else if name == "Certificate" && m[0] == 11 && proto.contains("1.3") {
            // TLS 1.3: certificate_request_context<0..255>,
            // CertificateEntry certificate_list<0..2^24-1>, where each entry
            // is cert_data<1..2^24-1> + Extension extensions<0..2^16-1>.
            // The staple is status_request (5) of the first entry.
            let ctx = *body.first()? as usize;
            let mut p = 1 + ctx;
            let list_len = be(body.get(p..p + 3)?);
            p += 3;
            if body.len() != p + list_len {
                continue;
            }
            let cert_len = be(body.get(p..p + 3)?);
            p += 3 + cert_len;
            let ext_len = be(body.get(p..p + 2)?);
            p += 2;
            let exts = body.get(p..p + ext_len)?;
            let mut q = 0;
            while q + 4 <= exts.len() {
                let ty = be(&exts[q..q + 2]);
                let l = be(&exts[q + 2..q + 4]);
                let data = exts.get(q + 4..q + 4 + l)?;
                if ty == 5 {
                    if let Some(d) = parse_cert_status_body(data) {
                        return Some(d);
                    }
                }
                q += 4 + l;
            }
        }
    }
    None
}

/// `openssl ocsp -respin DER -resp_text -noverify`: the text form of a DER
/// OCSPResponse (e.g. from [`staple_der`]), for checking fields such as
/// "Next Update".
pub fn ocsp_resp_text(der: &[u8]) -> String {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(der).unwrap();
    f.flush().unwrap();
    let out = run_with_timeout(
        Command::new("openssl").arg("ocsp").arg("-respin").arg(f.path()).arg("-resp_text").arg("-noverify"),
        Duration::from_secs(10),
    );
    out.combined()
}

/// `curl [extra] --cacert CAFILE --resolve localhost:PORT:127.0.0.1
/// https://localhost:PORT/ -sS` with a 15 s timeout.
fn curl(port: u16, cafile: &Path, extra: &[&str]) -> CmdOutput {
    run_with_timeout(
        Command::new("curl")
            .args(extra)
            .arg("--cacert")
            .arg(cafile)
            .args(["--noproxy", "*", "--resolve"])
            .arg(format!("localhost:{}:127.0.0.1", port))
            .arg(format!("https://localhost:{}/", port))
            .args(["-sS", "--max-time", "14"]),
        Duration::from_secs(15),
    )
}

/// `curl --cert-status` of `/`. Returns (exit status 0 and HTTP 200,
/// stdout+stderr). curl fails (exit 91) if no valid staple is sent.
pub fn curl_cert_status(port: u16, cafile: &Path) -> (bool, String) {
    let out = curl(port, cafile, &["--cert-status", "-o", "/dev/null", "-w", "%{http_code}"]);
    (out.success() && out.stdout.trim() == "200", out.combined())
}

/// Plain HTTPS GET of `/`. Returns (HTTP 200, body+stderr).
pub fn curl_get(port: u16, cafile: &Path) -> (bool, String) {
    let out = curl(port, cafile, &["-w", "\n%{http_code}"]);
    let ok = out.success() && out.stdout.trim_end().ends_with("\n200");
    (ok, out.combined())
}

// ---------------------------------------------------------------------------
// lifecycle helpers: processes, memory, restarts
// ---------------------------------------------------------------------------

/// The process name (`/proc/PID/comm`, without the newline), if the process
/// exists.
pub fn process_comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{}/comm", pid)).ok().map(|s| s.trim_end_matches('\n').to_string())
}

/// Resident set size of `pid` in KiB (`VmRSS` from `/proc/PID/status`).
pub fn vm_rss_kb(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{}/status", pid)).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Every live process that has `root` (a ServerRoot) as one of its
/// command-line arguments: the Apache daemon, its children, the module's
/// startup helper, and leftovers reparented after a crash. Works for servers
/// started some other way too (e.g. under valgrind, whose command line
/// contains Apache's).
pub fn server_root_processes(root: &Path) -> Vec<u32> {
    processes_with_arg(&root.display().to_string())
}

/// The process name the module gives its startup helper (after the fix of
/// the lifecycle issue; older code leaves the helper named like Apache).
pub const STARTUP_HELPER_COMM: &str = "stapling-helper";

/// The module's startup helper of the server with ServerRoot `root`, while it
/// runs, or None.
///
/// The helper is the process of `root` named [`STARTUP_HELPER_COMM`] (it runs
/// detached, so its parent is not Apache's). The daemon is the process of `root`
/// whose parent is not itself a process of `root`. As a
/// fallback for code that does not name its helper: the only child of the
/// daemon while the PidFile (`ROOT/run/httpd.pid`) does not exist yet, i.e.
/// during startup before any worker was forked.
pub fn startup_helper_pid(root: &Path) -> Option<u32> {
    let procs = server_root_processes(root);
    if let Some(&h) = procs.iter().find(|&&p| process_comm(p).as_deref() == Some(STARTUP_HELPER_COMM)) {
        return Some(h);
    }
    let daemons: Vec<u32> =
        procs.iter().copied().filter(|&p| proc_stat(p).map(|(_, pp)| !procs.contains(&pp)).unwrap_or(false)).collect();
    for &d in &daemons {
        let kids = children_of(d);
        if let Some(&h) = kids.iter().find(|&&k| process_comm(k).as_deref() == Some(STARTUP_HELPER_COMM)) {
            return Some(h);
        }
        if !root.join("run/httpd.pid").exists() && kids.len() == 1 {
            return Some(kids[0]);
        }
    }
    None
}

impl Apache {
    /// Runs `apache2 -k ACTION` (e.g. "graceful", "stop") for this server and
    /// returns at once with its output (30 s timeout), without waiting for
    /// the effect. Unlike [`graceful`](Self::graceful) and
    /// [`stop`](Self::stop), the caller observes and times what follows.
    pub fn k_command(&mut self, action: &str) -> CmdOutput {
        let out =
            run_with_timeout(apache_cmd(&self.root, &self.opts.env).arg("-k").arg(action), Duration::from_secs(30));
        self.last_output = out.combined();
        out
    }

    /// See [`startup_helper_pid`].
    pub fn startup_helper_pid(&self) -> Option<u32> {
        startup_helper_pid(&self.root)
    }

    /// See [`server_root_processes`].
    pub fn server_processes(&self) -> Vec<u32> {
        server_root_processes(&self.root)
    }
}

// ---------------------------------------------------------------------------
// many certificates, SNI virtual hosts
// ---------------------------------------------------------------------------

/// A leaf certificate issued by [`issue_leaves`].
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The DNS name it is for, e.g. `site7.test` (also its CN).
    pub server_name: String,
    /// `<name>-chain.crt`: the leaf followed by `issuer.crt`.
    pub chain: PathBuf,
    /// The private key (shared by all leaves of one [`issue_leaves`] call).
    pub key: PathBuf,
    /// Serial number, upper-case hex.
    pub serial_hex: String,
}

/// Issues `n` leaf certificates signed by the PKI's intermediate
/// (`issuer.crt`/`issuer.key`), in Rust (fast: one shared ECDSA P-256 key,
/// one RSA signature per certificate).
///
/// Leaf `i` (1-based) is for `{prefix}{i}.test`: CN and SAN DNS name, plus
/// SAN `localhost` and `127.0.0.1`; a distinct random serial; valid from one
/// day ago for ten days; the extensions of mkpki.sh's `ext_leaf`
/// (CA:FALSE, digitalSignature, serverAuth, subject/authority key ids) and
/// an AIA OCSP URL of `pki.ocsp_url`. Writes `{prefix}{i}-chain.crt` and
/// `{prefix}-shared.key` into the PKI directory.
///
/// The fixture responder answers UNKNOWN for serials it does not know,
/// unless told `unknown_serials=good` (see [`Responder::set`]).
pub fn issue_leaves(pki: &Pki, prefix: &str, n: usize) -> Vec<Leaf> {
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::{
        AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
        SubjectKeyIdentifier,
    };
    use openssl::x509::{X509Builder, X509Extension, X509NameBuilder, X509};

    let issuer_pem = fs::read(pki.path("issuer.crt")).expect("issuer.crt");
    let issuer = X509::from_pem(&issuer_pem).expect("issuer.crt is PEM");
    let issuer_key =
        PKey::private_key_from_pem(&fs::read(pki.path("issuer.key")).expect("issuer.key")).expect("issuer.key");

    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let key_path = pki.path(&format!("{prefix}-shared.key"));
    fs::write(&key_path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();

    let not_before = Asn1Time::from_unix(unix_time_now() - 86_400).unwrap();
    let not_after = Asn1Time::days_from_now(9).unwrap();
    let mut serials = HashSet::new();
    let mut leaves = Vec::with_capacity(n);
    for i in 1..=n {
        let server_name = format!("{prefix}{i}.test");
        let serial = loop {
            let mut bn = BigNum::new().unwrap();
            bn.rand(126, MsbOption::MAYBE_ZERO, false).unwrap();
            let hex = bn.to_hex_str().unwrap().to_string();
            if serials.insert(hex.clone()) {
                break (bn, hex);
            }
        };
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "mod_stapling Test").unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, &server_name).unwrap();
        let name = name.build();

        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&serial.0.to_asn1_integer().unwrap()).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(issuer.subject_name()).unwrap();
        b.set_not_before(&not_before).unwrap();
        b.set_not_after(&not_after).unwrap();
        b.set_pubkey(&key).unwrap();
        b.append_extension(BasicConstraints::new().critical().build().unwrap()).unwrap();
        b.append_extension(KeyUsage::new().critical().digital_signature().build().unwrap()).unwrap();
        b.append_extension(ExtendedKeyUsage::new().server_auth().build().unwrap()).unwrap();
        let san = SubjectAlternativeName::new()
            .dns(&server_name)
            .dns("localhost")
            .ip("127.0.0.1")
            .build(&b.x509v3_context(Some(&issuer), None))
            .unwrap();
        b.append_extension(san).unwrap();
        let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(Some(&issuer), None)).unwrap();
        b.append_extension(ski).unwrap();
        let aki = AuthorityKeyIdentifier::new().keyid(true).build(&b.x509v3_context(Some(&issuer), None)).unwrap();
        b.append_extension(aki).unwrap();
        // The crate has no typed builder for authorityInfoAccess; the config
        // string form is the one mkpki.sh uses.
        #[allow(deprecated)]
        let aia = X509Extension::new_nid(
            None,
            Some(&b.x509v3_context(Some(&issuer), None)),
            Nid::INFO_ACCESS,
            &format!("OCSP;URI:{}", pki.ocsp_url),
        )
        .unwrap();
        b.append_extension(aia).unwrap();
        b.sign(&issuer_key, MessageDigest::sha256()).unwrap();
        let cert = b.build();

        let chain = pki.path(&format!("{prefix}{i}-chain.crt"));
        let mut pem = cert.to_pem().unwrap();
        pem.extend_from_slice(&issuer_pem);
        fs::write(&chain, pem).unwrap();
        leaves.push(Leaf { server_name, chain, key: key_path.clone(), serial_hex: serial.1 });
    }
    leaves
}

fn unix_time_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// One name-based SSL `<VirtualHost 127.0.0.1:PORT>` per leaf (ServerName
/// `leaf.server_name`, its chain and key), each with `vhost_conf` inside
/// (e.g. "Stapling on\n"). Put the result into
/// [`ApacheOptions::extra_vhosts`] to serve them on the main port beside the
/// default vhost; clients pick one by SNI.
pub fn sni_vhosts(port: u16, leaves: &[Leaf], vhost_conf: &str) -> String {
    let mut c = String::new();
    for l in leaves {
        let _ = writeln!(c, "<VirtualHost 127.0.0.1:{}>", port);
        let _ = writeln!(c, "ServerName {}", l.server_name);
        let _ = writeln!(c, "SSLEngine on");
        let _ = writeln!(c, "SSLCertificateFile \"{}\"", l.chain.display());
        let _ = writeln!(c, "SSLCertificateKeyFile \"{}\"", l.key.display());
        c.push_str(vhost_conf);
        if !c.ends_with('\n') {
            c.push('\n');
        }
        let _ = writeln!(c, "</VirtualHost>");
    }
    c
}

/// Like [`s_client_status`] with `-servername SERVERNAME` instead of
/// `localhost`, to reach a name-based vhost by SNI.
pub fn s_client_status_sni(port: u16, servername: &str, cafile: &Path, tls: Option<&str>) -> StapleResult {
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{}", port))
        .arg("-servername")
        .arg(servername)
        .arg("-status")
        .arg("-msg")
        .arg("-CAfile")
        .arg(cafile)
        .arg("-verify_return_error");
    if let Some(t) = tls {
        cmd.arg(t);
    }
    let out = run_with_timeout(&mut cmd, Duration::from_secs(10));
    let raw = out.combined();
    parse_s_client(&raw, out.success())
}

/// Like [`handshake`] (retried, panics after 4 failures) with SNI
/// `servername`.
pub fn handshake_sni(port: u16, servername: &str, cafile: &Path) -> StapleResult {
    let mut r = s_client_status_sni(port, servername, cafile, None);
    for _ in 0..3 {
        if r.exit_ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        r = s_client_status_sni(port, servername, cafile, None);
    }
    assert!(r.exit_ok, "TLS handshake with 127.0.0.1:{port} (SNI {servername}) failed:\n{}", r.raw);
    r
}

/// One plain TLS handshake in-process (no status request, no certificate
/// verification, no process spawned, so it can be run in a tight loop):
/// connect to 127.0.0.1:`port` with SNI `servername` and complete the
/// handshake, each step bounded by `timeout`. Returns the error text on
/// failure.
pub fn tls_handshake(port: u16, servername: &str, timeout: Duration) -> Result<(), String> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    b.set_verify(SslVerifyMode::NONE);
    let connector = b.build();
    let cfg = connector.configure().map_err(|e| e.to_string())?.verify_hostname(false);
    let mut tls = cfg.connect(servername, stream).map_err(|e| format!("handshake: {e}"))?;
    let _ = tls.shutdown();
    Ok(())
}

// ---------------------------------------------------------------------------
// a responder that never answers
// ---------------------------------------------------------------------------

/// A "black-holed" OCSP responder: listens on 127.0.0.1:`port`, accepts
/// every TCP connection and holds it open without ever reading or writing,
/// so a client blocks until its own timeout. Runs in a thread of the test
/// process; stopped (thread joined, connections closed) on drop.
pub struct BlackHole {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BlackHole {
    /// Starts listening on `port` (e.g. a [`free_port`]) at once.
    pub fn start(port: u16) -> BlackHole {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| panic!("bind {port}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (s, a) = (Arc::clone(&stop), Arc::clone(&accepted));
        let thread = std::thread::Builder::new()
            .name("black-hole".into())
            .spawn(move || {
                let mut held = Vec::new();
                while !s.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            a.fetch_add(1, Ordering::Relaxed);
                            held.push(conn);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
            .unwrap();
        BlackHole { port, stop, accepted, thread: Some(thread) }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
