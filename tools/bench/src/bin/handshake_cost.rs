//! Cost of OCSP stapling per TLS handshake, in CPU instructions counted by valgrind's
//! callgrind (repeatable, unlike wall-clock throughput on a small shared machine).
//!
//! Run with `scripts/bench-cost.sh`, which also installs what is missing and builds the
//! module, or from the repository root after `cargo build --release` with
//! `cargo run --release --manifest-path tools/bench/Cargo.toml --target-dir target --bin handshake_cost`.
//!
//! The same four configurations as `compare` (src/bin/compare.rs): no stapling, mod_ssl
//! `SSLUseStapling`, mod_md `MDStapling on` + `MDStapleOthers on`, mod_stapling
//! `Stapling on`; one certificate, one local OCSP responder (the Python fixture, no
//! delay). Each server runs as a single process in the foreground
//! (`apache2 -X`, prefork MPM, so every handshake is served by the main thread) under
//! `valgrind --tool=callgrind --separate-threads=yes`. The bench does N full handshakes
//! (no session cache, no tickets, status extension requested; one client thread),
//! stops Apache with SIGTERM and reads the instruction counts callgrind writes at exit.
//!
//! Each configuration runs twice, with `COST_N1` and `COST_N2` handshakes; the cost of
//! one handshake is `(Ir(N2) − Ir(N1)) / (N2 − N1)`, so startup, configuration and the
//! first handshakes (mod_ssl fetches the response during the first one) cancel out.
//!
//! Two figures per configuration:
//! * handshake thread: instructions of the thread that serves the connections, per
//!   handshake. This is the per-handshake cost.
//! * background threads (mod_stapling's per-child refresher, mod_md's watchdog, ...):
//!   they run on a timer, not per handshake, so they are reported per second of wall
//!   time: `(Ir_bg(N2) − Ir_bg(N1)) / (T2 − T1)`. Under valgrind a handshake takes
//!   ~50× longer than natively, so per handshake they would be grossly overstated.
//!   The all-threads per-handshake figure is reported too, for completeness.
//!
//! Environment knobs (defaults in parentheses):
//! * `COST_N1` (100), `COST_N2` (3000): handshakes in the short and the long run. The
//!   RSA signature's variable-time bignum code (blinding) makes single handshakes
//!   differ by some 25,000 instructions; over 2,900 handshakes that averages out to
//!   about ±500 per handshake.
//! * `COST_TLS` (1.3): `1.3` or `1.2`
//! * `COST_CERT` (rsa): `rsa` (RSA-2048 `leaf`) or `ec` (ECDSA P-256 `leaf-ec`)
//! * `COST_SERVERS` (none,mod_ssl,mod_md,mod_stapling): which configurations to run
//! * `COST_JOBS` (number of CPUs, at most 2): runs in parallel (instruction counts do
//!   not care; only the wall-clock rate of the background threads might, slightly)
//! * `MOD_STAPLING_SO`: the module to test (default target/release/libmod_stapling.so)
//!
//! The markdown report is printed and written to `target/bench-handshake-cost.md`; the
//! callgrind files, one per run and thread, are kept in `target/bench-handshake-cost/`
//! (`callgrind_annotate --inclusive=yes FILE` shows where the instructions go).

#[path = "../common/mod.rs"]
mod bench_common;

#[path = "../../../../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bench_common::*;
use common::*;

/// How long valgrind may take until Apache listens.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long callgrind may take to write its output after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Read and write timeout of each client connection (generous: the server runs under
/// valgrind).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// settings
// ---------------------------------------------------------------------------

struct Settings {
    n1: u64,
    n2: u64,
    tls13: bool,
    /// `leaf` (RSA-2048) or `leaf-ec` (ECDSA P-256), from scripts/mkpki.sh.
    cert: String,
    servers: Vec<Kind>,
    jobs: usize,
}

impl Settings {
    fn from_env() -> Settings {
        let servers = Kind::list_from_env("COST_SERVERS");
        let n1 = env_num("COST_N1", 100u64).max(1);
        let n2 = env_num("COST_N2", 3000u64);
        assert!(n2 > n1, "COST_N2 ({n2}) must be larger than COST_N1 ({n1})");
        Settings {
            n1,
            n2,
            tls13: match std::env::var("COST_TLS").as_deref() {
                Ok("") | Ok("1.3") | Ok("13") | Err(_) => true,
                Ok("1.2") | Ok("12") => false,
                Ok(other) => panic!("COST_TLS: expected 1.3 or 1.2, got '{other}'"),
            },
            cert: cert_from_env("COST_CERT"),
            servers,
            jobs: env_num("COST_JOBS", nproc().min(2)).max(1),
        }
    }

    /// The TLS version of the client: 1.3 or 1.2 only.
    fn proto(&self) -> Proto {
        if self.tls13 {
            Proto::Tls13
        } else {
            Proto::Tls12
        }
    }
}

// ---------------------------------------------------------------------------
// the four configurations
// ---------------------------------------------------------------------------

/// Options for `kind` as in compare.rs, but prefork with one process.
/// `md_store` is mod_md's store directory.
fn options(kind: Kind, pki: &Pki, root: &Path, md_store: &Path, set: &Settings) -> ApacheOptions {
    kind.options(pki, &set.cert, Mpm::Prefork, 1, root, md_store)
}

// ---------------------------------------------------------------------------
// one measured run: apache2 -X under callgrind
// ---------------------------------------------------------------------------

/// PIDs of every valgrind process started by this bench, so that a panic anywhere
/// still stops them (see [`stop_all`]).
static STARTED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A foreground Apache under valgrind. Dropping it kills it (SIGKILL, by PID) and any
/// process it forked that is still alive.
struct Profiled {
    child: Child,
    pid: u32,
}

impl Profiled {
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then wait for exit (callgrind writes its files on the way out).
    fn terminate(&mut self) -> Result<(), String> {
        let kids = children_of(self.pid);
        send_signal(self.pid, "TERM");
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                _ => {
                    self.kill();
                    return Err(format!("still running {} s after SIGTERM", EXIT_TIMEOUT.as_secs()));
                }
            }
        }
        for k in kids {
            if process_alive(k) {
                send_signal(k, "KILL");
            }
        }
        Ok(())
    }

    fn kill(&mut self) {
        let kids = children_of(self.pid);
        if let Ok(None) = self.child.try_wait() {
            send_signal(self.pid, "KILL");
        }
        let _ = self.child.wait();
        for k in kids {
            if process_alive(k) {
                send_signal(k, "KILL");
            }
        }
    }
}

impl Drop for Profiled {
    fn drop(&mut self) {
        self.kill();
        STARTED.lock().unwrap_or_else(|e| e.into_inner()).retain(|&p| p != self.pid);
    }
}

/// SIGKILL (by PID) for every valgrind still registered, and their children.
fn stop_all() {
    let pids = std::mem::take(&mut *STARTED.lock().unwrap_or_else(|e| e.into_inner()));
    for p in pids {
        for k in children_of(p) {
            send_signal(k, "KILL");
        }
        if process_alive(p) {
            send_signal(p, "KILL");
        }
    }
}

/// Instruction counts of one run.
#[derive(Clone, Copy, Default, Debug)]
struct Counts {
    /// The thread that served the handshakes (callgrind thread 1: prefork -X has no
    /// other worker).
    main: u64,
    /// All other threads of the Apache process.
    background: u64,
    /// Number of background threads that ran.
    bg_threads: usize,
    /// Wall time from spawning valgrind to its exit.
    wall: f64,
    /// Handshakes that carried a staple / a valid staple; client errors.
    stapled: u64,
    valid: u64,
    errors: u64,
    /// Whether the first handshake carried a staple.
    first_stapled: bool,
    /// Inclusive instructions of mod_ssl's `ap_ssl_ocsp_get_resp` (the hook through
    /// which mod_md and mod_stapling hand over the staple) in the handshake thread.
    hook: Option<u64>,
}

impl Counts {
    fn total(&self) -> u64 {
        self.main + self.background
    }
}

/// The `totals:` (or `summary:`) line of a callgrind output file.
fn callgrind_total(path: &Path) -> Result<u64, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let mut summary = None;
    for line in text.lines() {
        for key in ["totals:", "summary:"] {
            if let Some(v) = line.strip_prefix(key) {
                let n = v.split_whitespace().next().and_then(|x| x.parse::<u64>().ok());
                match n {
                    Some(n) if key == "totals:" => return Ok(n),
                    _ => summary = summary.or(n),
                }
            }
        }
    }
    summary.ok_or_else(|| format!("no totals:/summary: line in {}", path.display()))
}

/// Inclusive instructions of `function` (as callgrind_annotate names it, e.g.
/// `ap_ssl_ocsp_get_resp`) in a callgrind file; None if it was never called or
/// callgrind_annotate fails.
fn inclusive_ir(path: &Path, function: &str) -> Option<u64> {
    let out = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100"])
        .arg(path)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let needle = format!(":{function} [");
    text.lines()
        .find(|l| l.contains(&needle))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.replace(',', "").parse().ok())
}

/// The `apache2 -X` command for `root`, wrapped in valgrind.
fn valgrind_cmd(apache: Command, out_pattern: &Path) -> Command {
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_pattern.display()))
        .arg("--trace-children=no")
        .arg("--separate-threads=yes")
        .arg("--log-file=/dev/null")
        .arg(apache.get_program())
        .arg("-X")
        .args(apache.get_args());
    cmd.env_clear();
    for (k, v) in apache.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    if let Some(d) = apache.get_current_dir() {
        cmd.current_dir(d);
    }
    cmd
}

fn run_once(kind: Kind, n: u64, pki: &Pki, base: &Path, set: &Settings) -> Result<Counts, String> {
    let root = base.join(format!("{}-{}", kind.label(), n));
    fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    let root = fs::canonicalize(&root).map_err(|e| e.to_string())?;
    let md_store = base.join("md-store"); // shared by both mod_md runs (see main)
    let opts = options(kind, pki, &root, &md_store, set);
    let (port, apache) = prepare_server_root(&root, &opts);
    // Apache drops privileges (User www-data) before callgrind writes its files:
    // ROOT/var belongs to www-data. %p: the startup helper mod_stapling forks
    // writes a file of its own.
    let out_dir = root.join("var");
    let log = fs::File::create(root.join("logs/stdout")).map_err(|e| e.to_string())?;
    let mut cmd = valgrind_cmd(apache, &out_dir.join("callgrind.%p"));
    cmd.stdin(Stdio::null()).stdout(Stdio::from(log.try_clone().unwrap())).stderr(Stdio::from(log));
    let t0 = Instant::now();
    let child = cmd.spawn().map_err(|e| format!("cannot run valgrind: {e}"))?;
    let pid = child.id();
    STARTED.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
    let mut p = Profiled { child, pid };
    let context = |what: &str| {
        format!(
            "{}: {what}\n----- error_log -----\n{}----- stdout/stderr -----\n{}",
            kind.label(),
            fs::read_to_string(root.join("logs/error_log")).unwrap_or_default(),
            fs::read_to_string(root.join("logs/stdout")).unwrap_or_default()
        )
    };

    let mut exited = false;
    let listening = wait_until(READY_TIMEOUT, || {
        exited = !p.alive();
        exited || port_listening(port)
    });
    if exited || !listening {
        p.kill();
        return Err(context(if exited { "apache2 -X exited during startup" } else { "not listening within 60 s" }));
    }

    let client = Client::new(set.proto(), CLIENT_TIMEOUT);
    let v = Validator::new(pki, &set.cert);
    let mut c = Counts::default();
    let mut done = 0;
    while done < n {
        match client.handshake(port, true) {
            Ok(staple) => {
                if let Some(d) = staple {
                    c.stapled += 1;
                    c.valid += v.valid(&d) as u64;
                    if done == 0 {
                        c.first_stapled = true;
                    }
                }
                done += 1;
            }
            Err(e) => {
                c.errors += 1;
                if c.errors > 5 {
                    p.kill();
                    return Err(context(&format!("handshake {} failed: {e}", done + 1)));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    p.terminate().map_err(|e| context(&e))?;
    c.wall = t0.elapsed().as_secs_f64();
    drop(p);

    // Thread files of the Apache process: callgrind.PID-01 (main), -02, ...
    let prefix = format!("callgrind.{pid}-");
    let mut files: Vec<(u32, PathBuf)> = fs::read_dir(&out_dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let t = name.strip_prefix(&prefix)?.parse::<u32>().ok()?;
            Some((t, e.path()))
        })
        .collect();
    files.sort();
    if files.first().map(|f| f.0) != Some(1) {
        return Err(context(&format!("no callgrind output {}/{prefix}01", out_dir.display())));
    }
    // Keep the files for callgrind_annotate (the temporary ServerRoot goes away).
    let keep = target_dir().join("bench-handshake-cost");
    let _ = fs::create_dir_all(&keep);
    for (t, f) in &files {
        let ir = callgrind_total(f)?;
        let _ = fs::copy(f, keep.join(format!("{}-{n}.thread{t}.callgrind", kind.label())));
        if *t == 1 {
            c.main = ir;
            c.hook = inclusive_ir(f, "ap_ssl_ocsp_get_resp");
        } else {
            c.background += ir;
            c.bg_threads += 1;
        }
    }
    Ok(c)
}

// ---------------------------------------------------------------------------
// results
// ---------------------------------------------------------------------------

struct Measured {
    kind: Kind,
    runs: Result<(Counts, Counts), String>,
}

impl Measured {
    fn ok(&self) -> Option<&(Counts, Counts)> {
        self.runs.as_ref().ok()
    }
}

/// Per-handshake instructions of the handshake thread.
fn per_hs_main(r: &(Counts, Counts), set: &Settings) -> f64 {
    (r.1.main as f64 - r.0.main as f64) / (set.n2 - set.n1) as f64
}

/// Per-handshake instructions of the `ap_ssl_ocsp_get_resp` hook.
fn per_hs_hook(r: &(Counts, Counts), set: &Settings) -> Option<f64> {
    let (a, b) = (r.0.hook.unwrap_or(0), r.1.hook.unwrap_or(0));
    (b > 0).then(|| (b as f64 - a as f64) / (set.n2 - set.n1) as f64)
}

fn per_hs_total(r: &(Counts, Counts), set: &Settings) -> f64 {
    (r.1.total() as f64 - r.0.total() as f64) / (set.n2 - set.n1) as f64
}

/// Background instructions per second of wall time.
fn bg_per_sec(r: &(Counts, Counts)) -> Option<f64> {
    let dt = r.1.wall - r.0.wall;
    (dt > 1.0 && (r.0.bg_threads > 0 || r.1.bg_threads > 0))
        .then(|| (r.1.background as f64 - r.0.background as f64) / dt)
}

fn fmt_int(x: f64) -> String {
    let neg = x < 0.0;
    let s = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if neg {
        format!("−{out}")
    } else {
        out
    }
}

fn fmt_signed(x: f64) -> String {
    if x >= 0.0 {
        format!("+{}", fmt_int(x))
    } else {
        fmt_int(x)
    }
}

fn machine() -> Vec<(String, String)> {
    vec![
        ("CPU".into(), format!("{} ({} CPUs)", cpu_model(), nproc())),
        ("kernel".into(), kernel_release()),
        ("Apache".into(), apache_version()),
        ("OpenSSL".into(), cmd_first_line("openssl", &["version"])),
        ("valgrind".into(), cmd_first_line("valgrind", &["--version"])),
    ]
}

fn report(set: &Settings, results: &[Measured], machine: &[(String, String)], took: Duration) -> String {
    let mut o = String::new();
    let find = |k: Kind| results.iter().find(|r| r.kind == k).and_then(|r| r.ok());
    let none = find(Kind::None).map(|r| per_hs_main(r, set));
    let extra = |k: Kind| Some(per_hs_main(find(k)?, set) - none?);

    let _ = writeln!(o, "# Instructions per TLS handshake (callgrind)\n");
    let _ = writeln!(
        o,
        "`apache2 -X` (prefork, one process) under `valgrind --tool=callgrind`, {} full handshakes \
         (no resumption) asking for the status extension, {} certificate, local OCSP responder. \
         Per handshake = (Ir({n2}) − Ir({n1})) / {d} over the thread that serves the connections; \
         startup and the first handshakes cancel out. Background threads run on a timer and are \
         given per second of wall time.\n",
        set.proto().label(),
        cert_label(&set.cert),
        n1 = set.n1,
        n2 = set.n2,
        d = set.n2 - set.n1,
    );
    let _ = writeln!(
        o,
        "| server | instructions / handshake | extra vs none | of which `ap_ssl_ocsp_get_resp` | all threads / handshake (under valgrind) | background threads: instructions / s | staples ({} + {} handshakes) |",
        set.n1, set.n2
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|");
    for r in results {
        let _ = write!(o, "| {} |", r.kind.label());
        match &r.runs {
            Err(e) => {
                let first = e.lines().next().unwrap_or("").replace('|', "/");
                let _ = writeln!(o, " failed: {first} | – | – | – | – | – |");
            }
            Ok(runs) => {
                let main = per_hs_main(runs, set);
                let ex = match (r.kind, none) {
                    (Kind::None, _) => "–".to_string(),
                    (_, Some(n)) => format!("{} ({:+.2}%)", fmt_signed(main - n), 100.0 * (main - n) / n),
                    _ => "–".into(),
                };
                let bg = match bg_per_sec(runs) {
                    Some(x) => format!(
                        "{} ({} thread{})",
                        fmt_int(x),
                        runs.1.bg_threads,
                        if runs.1.bg_threads == 1 { "" } else { "s" }
                    ),
                    None => "none".into(),
                };
                let (st, tot) = (runs.0.stapled + runs.1.stapled, set.n1 + set.n2);
                let valid = runs.0.valid + runs.1.valid;
                let staples = if r.kind.staples() || st > 0 {
                    let mut s = format!("{st}/{tot}");
                    if valid != st {
                        let _ = write!(s, " ({} invalid)", st - valid);
                    }
                    if !runs.0.first_stapled || !runs.1.first_stapled {
                        s.push_str(", not on the first");
                    }
                    s
                } else {
                    format!("{st}/{tot}")
                };
                let hook = per_hs_hook(runs, set).map(fmt_int).unwrap_or_else(|| "–".into());
                let _ = writeln!(
                    o,
                    " {} | {} | {} | {} | {} | {} |",
                    fmt_int(main),
                    ex,
                    hook,
                    fmt_int(per_hs_total(runs, set)),
                    bg,
                    staples
                );
            }
        }
    }

    let _ = writeln!(
        o,
        "\nRepeat runs agree to about ±1,000 instructions per handshake (variable-time bignum code in \
         the RSA signature, e.g. blinding, differs from handshake to handshake); smaller differences \
         in the first two columns are noise. The `ap_ssl_ocsp_get_resp` column (inclusive cost of the \
         hook through which mod_md and mod_stapling hand the staple to mod_ssl; mod_ssl's own \
         stapling asks it too, gets nothing, and uses its own cache outside it) has no such noise. \
         Valgrind counts user-space instructions only, on its own virtual CPU (crypto code paths may \
         differ from native ones)."
    );
    if let Some(ours) = extra(Kind::Stapling) {
        let _ = writeln!(o, "\nmod_stapling's extra instructions per handshake compared with:\n");
        for k in [Kind::ModSsl, Kind::ModMd] {
            match extra(k) {
                Some(e) => {
                    let _ = writeln!(
                        o,
                        "- {}'s extra ({}): {} per handshake{}",
                        k.label(),
                        fmt_signed(e),
                        fmt_signed(ours - e),
                        if e.abs() > 1.0 { format!(" ({:.2}×)", ours / e) } else { String::new() }
                    );
                }
                None => {
                    let _ = writeln!(o, "- {}: not measured", k.label());
                }
            }
        }
        let hook = |k: Kind| find(k).and_then(|r| per_hs_hook(r, set));
        if let (Some(us), Some(md)) = (hook(Kind::Stapling), hook(Kind::ModMd)) {
            let _ = writeln!(
                o,
                "- in the `ap_ssl_ocsp_get_resp` hook alone: {} (mod_stapling) vs {} (mod_md), {} per handshake",
                fmt_int(us),
                fmt_int(md),
                fmt_signed(us - md)
            );
        }
    }

    let _ = writeln!(o, "\nRaw counts (handshake thread / background threads, wall time of the run):\n");
    let _ = writeln!(o, "| server | Ir({}) | Ir({}) |", set.n1, set.n2);
    let _ = writeln!(o, "|---|---|---|");
    for r in results {
        if let Some((a, b)) = r.ok() {
            let cell =
                |c: &Counts| format!("{} / {} ({:.0} s)", fmt_int(c.main as f64), fmt_int(c.background as f64), c.wall);
            let _ = writeln!(o, "| {} | {} | {} |", r.kind.label(), cell(a), cell(b));
        }
    }

    let _ = writeln!(o, "\n## Machine\n");
    for (k, v) in machine {
        let _ = writeln!(o, "- {k}: {v}");
    }
    let _ = writeln!(
        o,
        "- settings: COST_N1={} COST_N2={} COST_TLS={} COST_CERT={}",
        set.n1,
        set.n2,
        if set.tls13 { "1.3" } else { "1.2" },
        cert_setting(&set.cert)
    );
    let _ = writeln!(o, "- total run time: {:.0} s", took.as_secs_f64());
    o
}

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------

/// Runs mod_md once normally (not under valgrind) until it staples, so that its store
/// holds a response and the measured runs staple from their first handshake (mod_md
/// fetches in a watchdog, asynchronously; a fresh store means no staple at first).
fn seed_md_store(pki: &Pki, base: &Path, set: &Settings) -> Result<(), String> {
    let root = base.join("mod_md-seed");
    let md_store = base.join("md-store");
    let mut opts = options(Kind::ModMd, pki, &root, &md_store, set);
    opts.server_root = Some(root);
    let mut a = Apache::start(opts).map_err(|e| format!("mod_md seeding run: {e}"))?;
    let client = Client::new(set.proto(), CLIENT_TIMEOUT);
    let ok = wait_until(Duration::from_secs(30), || matches!(client.handshake(a.port(), true), Ok(Some(_))));
    a.stop();
    if ok {
        Ok(())
    } else {
        Err(format!("mod_md seeding run: no staple within 30 s\n{}", a.error_log()))
    }
}

fn main() {
    let set = Settings::from_env();
    let started = Instant::now();
    let machine = machine();
    let so = module_path();
    eprintln!(
        "[cost] module {}; servers {:?}; {}, {}; {} and {} handshakes per server; {} parallel run(s)",
        so.display(),
        set.servers.iter().map(|k| k.label()).collect::<Vec<_>>(),
        set.proto().label(),
        cert_label(&set.cert),
        set.n1,
        set.n2,
        set.jobs
    );

    let outcome = std::panic::catch_unwind(|| measure(&set));
    stop_all();
    let results = match outcome {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    };

    let md = report(&set, &results, &machine, started.elapsed());
    println!("{md}");
    let out = target_dir().join("bench-handshake-cost.md");
    match fs::write(&out, &md) {
        Ok(()) => eprintln!("[cost] written to {}", out.display()),
        Err(e) => eprintln!("[cost] cannot write {}: {}", out.display(), e),
    }
    if results.iter().any(|r| r.runs.is_err()) {
        std::process::exit(1);
    }
}

fn measure(set: &Settings) -> Vec<Measured> {
    let _ = fs::remove_dir_all(target_dir().join("bench-handshake-cost"));
    let tmp = tempfile::Builder::new().prefix("stapling-cost.").tempdir().unwrap();
    let rport = free_port();
    let pki = Pki::create(&tmp.path().join("pki"), &ocsp_url(rport));
    let responder = Responder::fixture(&pki, rport);
    responder.set("mode=good&delay=0");

    let md_seed = if set.servers.contains(&Kind::ModMd) {
        let r = seed_md_store(&pki, tmp.path(), set);
        if let Err(e) = &r {
            eprintln!("[cost] {e}");
        }
        r
    } else {
        Ok(())
    };

    // Jobs: (server, n); longest first so that parallel runs finish together.
    let mut jobs: Vec<(usize, u64)> = Vec::new();
    for n in [set.n2, set.n1] {
        for i in 0..set.servers.len() {
            jobs.push((i, n));
        }
    }
    // Per server: (run with n1, run with n2).
    type Slot = Mutex<(Option<Result<Counts, String>>, Option<Result<Counts, String>>)>;
    let slots: Vec<Slot> = set.servers.iter().map(|_| Mutex::new((None, None))).collect();
    let next = Mutex::new(0usize);
    std::thread::scope(|sc| {
        for _ in 0..set.jobs.min(jobs.len()) {
            sc.spawn(|| loop {
                let j = {
                    let mut g = next.lock().unwrap();
                    let j = *g;
                    *g += 1;
                    j
                };
                let Some(&(i, n)) = jobs.get(j) else { break };
                let kind = set.servers[i];
                let r = if kind == Kind::ModMd && md_seed.is_err() {
                    Err(md_seed.clone().unwrap_err())
                } else {
                    let t = Instant::now();
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_once(kind, n, &pki, tmp.path(), set)
                    }))
                    .unwrap_or_else(|_| Err("panicked".into()));
                    match &r {
                        Ok(c) => eprintln!(
                            "[cost] {:<12} {:>4} handshakes: {} Ir handshake thread, {} Ir in {} background thread(s), {}/{} stapled, {:.0} s",
                            kind.label(),
                            n,
                            fmt_int(c.main as f64),
                            fmt_int(c.background as f64),
                            c.bg_threads,
                            c.stapled,
                            n,
                            t.elapsed().as_secs_f64()
                        ),
                        Err(e) => eprintln!("[cost] {} {} handshakes failed:\n{e}", kind.label(), n),
                    }
                    r
                };
                let mut s = slots[i].lock().unwrap();
                if n == set.n1 {
                    s.0 = Some(r);
                } else {
                    s.1 = Some(r);
                }
            });
        }
    });
    drop(responder);

    set.servers
        .iter()
        .zip(slots)
        .map(|(&kind, m)| {
            let (a, b) = m.into_inner().unwrap();
            let runs = match (a.unwrap_or_else(|| Err("not run".into())), b.unwrap_or_else(|| Err("not run".into()))) {
                (Ok(a), Ok(b)) => Ok((a, b)),
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            Measured { kind, runs }
        })
        .collect()
}
