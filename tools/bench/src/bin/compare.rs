//! Comparison benchmark: the same Apache binary, on loopback, in four configurations
//! (no stapling, mod_ssl `SSLUseStapling`, mod_md `MDStapling`, mod_stapling), one
//! certificate, event MPM, the same number of children, one local OCSP responder
//! (the Python fixture from the integration tests).
//!
//! Run with `scripts/bench.sh`, which also installs what is missing and builds the
//! module, or from the repository root after `cargo build --release` with
//! `cargo run --release --manifest-path tools/bench/Cargo.toml --target-dir target --bin compare`.
//!
//! Phases:
//! 1. Cold start, one server after the other, each with a fresh ServerRoot (no stored
//!    responses, no caches) and a responder that answers after `BENCH_RESPONDER_DELAY`
//!    seconds: time to ready, latency of the first handshake, then handshakes from all
//!    client threads until `BENCH_COLD_SECONDS` after ready. Every staple is checked
//!    (signature against the test root, CertID, status good, times valid). The responder
//!    request count is taken per server (reset before each cold start).
//! 2. Throughput: all servers run at once; cells of (server, TLS version) run for
//!    `BENCH_SECONDS` each, servers alternating within every round, `BENCH_ROUNDS`
//!    rounds. Each client thread does full handshakes (no session cache, no tickets, no
//!    resumption) asking for the status extension, then a clean TLS shutdown.
//!    Reported: median handshakes/s, and ratios as the median of per-round ratios (the
//!    cells of one round are adjacent in time, so machine drift mostly cancels out).
//! 3. Memory: Pss and Rss per child from /proc/PID/smaps_rollup after the throughput run.
//!
//! Environment knobs (defaults in parentheses):
//! * `BENCH_SECONDS` (5): seconds per throughput cell
//! * `BENCH_ROUNDS` (3): throughput rounds
//! * `BENCH_CHILDREN` (4): Apache children (event MPM, 4 threads each)
//! * `BENCH_CLIENTS` (2 × nproc): client threads
//! * `BENCH_COLD_SECONDS` (5): length of the cold-start window
//! * `BENCH_RESPONDER_DELAY` (1): seconds the responder waits before answering
//! * `BENCH_SERVERS` (none,mod_ssl,mod_md,mod_stapling): which columns to run
//! * `BENCH_CERT` (rsa): `rsa` (RSA-2048) or `ec` (ECDSA P-256, a cheaper handshake
//!   that shows per-handshake stapling costs more clearly)
//! * `MOD_STAPLING_SO`: the module to test (default target/release/libmod_stapling.so)
//!
//! The markdown report is printed and written to `target/bench-compare.md`; the error
//! logs of the servers are copied to `target/bench-compare-logs/`.

#[path = "../common/mod.rs"]
mod bench_common;

#[path = "../../../../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use bench_common::*;
use common::*;

/// Read and write timeout of each client connection.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// settings
// ---------------------------------------------------------------------------

struct Settings {
    seconds: f64,
    rounds: usize,
    children: u32,
    clients: usize,
    cold_seconds: f64,
    delay: f64,
    servers: Vec<Kind>,
    /// `leaf` (RSA-2048) or `leaf-ec` (ECDSA P-256), from scripts/mkpki.sh.
    cert: String,
}

impl Settings {
    fn from_env() -> Settings {
        let servers = Kind::list_from_env("BENCH_SERVERS");
        Settings {
            seconds: env_num("BENCH_SECONDS", 5.0f64).max(0.1),
            rounds: env_num("BENCH_ROUNDS", 3usize).max(1),
            children: env_num("BENCH_CHILDREN", 4u32).max(1),
            clients: env_num("BENCH_CLIENTS", 2 * nproc()).max(1),
            cold_seconds: env_num("BENCH_COLD_SECONDS", 5.0f64).max(0.1),
            delay: env_num("BENCH_RESPONDER_DELAY", 1.0f64).max(0.0),
            servers,
            cert: cert_from_env("BENCH_CERT"),
        }
    }
}

// ---------------------------------------------------------------------------
// load generator
// ---------------------------------------------------------------------------

#[derive(Default)]
struct LoadStats {
    ok: u64,
    stapled: u64,
    valid: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl LoadStats {
    fn merge(&mut self, o: LoadStats) {
        self.ok += o.ok;
        self.stapled += o.stapled;
        self.valid += o.valid;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.latencies.extend(o.latencies);
    }

    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// `threads` client threads doing handshakes until `until`. With `validate`, every
/// staple is checked and every latency recorded.
fn run_load(port: u16, proto: Proto, threads: usize, until: Instant, validate: Option<(&Pki, &str)>) -> LoadStats {
    let start = Instant::now();
    let mut total = LoadStats::default();
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                sc.spawn(move || {
                    let client = Client::new(proto, CLIENT_TIMEOUT);
                    let v = validate.map(|(pki, cert)| Validator::new(pki, cert));
                    let mut st = LoadStats::default();
                    while Instant::now() < until {
                        let t = Instant::now();
                        match client.handshake(port, v.is_some()) {
                            Ok(staple) => {
                                st.ok += 1;
                                if let Some(d) = staple {
                                    st.stapled += 1;
                                    if v.as_ref().is_some_and(|v| v.valid(&d)) {
                                        st.valid += 1;
                                    }
                                }
                                if v.is_some() {
                                    st.latencies.push(t.elapsed());
                                }
                            }
                            Err(e) => {
                                st.errors += 1;
                                st.first_error.get_or_insert(e);
                                std::thread::sleep(Duration::from_millis(5));
                            }
                        }
                    }
                    st
                })
            })
            .collect();
        for h in handles {
            total.merge(h.join().expect("client thread panicked"));
        }
    });
    total.elapsed = start.elapsed();
    total
}

// ---------------------------------------------------------------------------
// measurements per server
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Cold {
    ready: Duration,
    first_latency: Duration,
    first_stapled: bool,
    first_valid: bool,
    first_error: Option<String>,
    total: u64,
    valid: u64,
    stapled: u64,
    errors: u64,
    p50: Duration,
    max: Duration,
    requests: u64,
}

#[derive(Default, Clone, Copy)]
struct Mem {
    pss_kib: f64,
    rss_kib: f64,
    n: usize,
}

struct Server {
    kind: Kind,
    apache: Option<Apache>,
    failed: Option<String>,
    cold: Cold,
    /// handshakes/s per round, [TLS 1.2, TLS 1.3]
    tput: [Vec<f64>; 2],
    tput_ok: u64,
    tput_stapled: u64,
    tput_errors: u64,
    tput_first_error: Option<String>,
    tput_requests: u64,
    warm_note: Option<String>,
    mem: Option<Mem>,
}

impl Server {
    fn new(kind: Kind) -> Server {
        Server {
            kind,
            apache: None,
            failed: None,
            cold: Cold::default(),
            tput: [Vec::new(), Vec::new()],
            tput_ok: 0,
            tput_stapled: 0,
            tput_errors: 0,
            tput_first_error: None,
            tput_requests: 0,
            warm_note: None,
            mem: None,
        }
    }
}

/// A one-line reason from a harness start error: its first line, plus the first
/// line of apache2's output or, failing that, the first error-level line of the
/// error_log.
fn short_reason(err: &str) -> String {
    let first = err.lines().next().unwrap_or("");
    let first = first.split(" (ServerRoot").next().unwrap_or(first);
    let first = first.split(" (Some(").next().unwrap_or(first);
    let section = |name: &str| -> Vec<&str> {
        let marker = format!("----- {name} -----");
        err.lines()
            .skip_while(|l| *l != marker)
            .skip(1)
            .take_while(|l| !l.starts_with("----- "))
            .filter(|l| !l.trim().is_empty())
            .collect()
    };
    let output = section("apache2 output");
    let log = section("error_log");
    let detail = output.first().map(|l| l.to_string()).or_else(|| {
        log.iter()
            .find(|l| ["emerg]", "alert]", "crit]", "error]"].iter().any(|t| l.contains(t)))
            .map(|l| l.rsplit("] ").next().unwrap_or(l).to_string())
    });
    let mut s = first.to_string();
    if let Some(d) = detail {
        // "apache2: Syntax error on line N of /long/path/httpd.conf: MESSAGE" -> keep MESSAGE
        let d = match d.find("httpd.conf: ") {
            Some(i) => format!("httpd.conf: {}", &d[i + "httpd.conf: ".len()..]),
            None => d,
        };
        let _ = write!(s, ": {}", d.trim());
    }
    s.replace('|', "/").chars().take(200).collect()
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn cold_start(kind: Kind, pki: &Pki, responder: &Responder, base: &Path, set: &Settings) -> Server {
    let mut s = Server::new(kind);
    responder.reset_stats();
    let root = base.join(format!("{}-root", kind.label()));
    // ROOT/var belongs to www-data (the server user).
    let opts = kind.options(pki, &set.cert, Mpm::Event, set.children, &root, &root.join("var/md"));
    let t0 = Instant::now();
    let apache = match Apache::start(opts) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("[bench] {} failed to start:\n{}", kind.label(), e);
            s.failed = Some(short_reason(&e));
            return s;
        }
    };
    let t_ready = Instant::now();
    s.cold.ready = t0.elapsed();
    let port = apache.port();
    let until = t_ready + Duration::from_secs_f64(set.cold_seconds);

    let v = Validator::new(pki, &set.cert);
    let client = Client::new(Proto::Any, CLIENT_TIMEOUT);
    let t = Instant::now();
    let first = client.handshake(port, true);
    s.cold.first_latency = t.elapsed();
    let mut lats = vec![s.cold.first_latency];
    match first {
        Ok(staple) => {
            s.cold.total += 1;
            if let Some(d) = staple {
                s.cold.first_stapled = true;
                s.cold.stapled += 1;
                s.cold.first_valid = v.valid(&d);
                s.cold.valid += s.cold.first_valid as u64;
            }
        }
        Err(e) => {
            s.cold.errors += 1;
            s.cold.first_error = Some(e);
        }
    }
    let st = run_load(port, Proto::Any, set.clients, until, Some((pki, &set.cert)));
    s.cold.total += st.ok;
    s.cold.stapled += st.stapled;
    s.cold.valid += st.valid;
    s.cold.errors += st.errors;
    if s.cold.first_error.is_none() {
        s.cold.first_error = st.first_error;
    }
    lats.extend(st.latencies);
    lats.sort();
    s.cold.p50 = percentile(&lats, 0.5);
    s.cold.max = lats.last().copied().unwrap_or_default();
    s.cold.requests = responder.requests();
    eprintln!(
        "[bench] {:<12} cold: ready {:.2}s, first handshake {:.1} ms (stapled {}), {}/{} valid staples, {} errors, {} responder requests",
        kind.label(),
        s.cold.ready.as_secs_f64(),
        ms(s.cold.first_latency),
        s.cold.first_stapled,
        s.cold.valid,
        s.cold.total,
        s.cold.errors,
        s.cold.requests
    );
    s.apache = Some(apache);
    s
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Pss and Rss per child (KiB) from /proc/PID/smaps_rollup (VmRSS as fallback).
fn memory(apache: &Apache) -> Option<Mem> {
    let kids = apache.child_pids();
    if kids.is_empty() {
        return None;
    }
    let field = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l[name.len()..].split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let (mut pss, mut rss, mut n) = (0.0, 0.0, 0);
    for pid in kids {
        if let Ok(t) = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            if let (Some(p), Some(r)) = (field(&t, "Pss:"), field(&t, "Rss:")) {
                pss += p;
                rss += r;
                n += 1;
                continue;
            }
        }
        if let Some(r) = fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|t| field(&t, "VmRSS:")) {
            pss += r;
            rss += r;
            n += 1;
        }
    }
    (n > 0).then(|| Mem { pss_kib: pss / n as f64, rss_kib: rss / n as f64, n })
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    Some(if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 })
}

/// Median over rounds of a[r] / b[r].
fn ratio(a: &[f64], b: &[f64]) -> Option<f64> {
    let r: Vec<f64> = a.iter().zip(b).filter(|(_, &y)| y > 0.0).map(|(x, y)| x / y).collect();
    median(&r)
}

// ---------------------------------------------------------------------------
// machine description
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------

fn main() {
    let set = Settings::from_env();
    let started = Instant::now();
    let machine = machine();
    let so = module_path();
    eprintln!(
        "[bench] module {}; servers {:?}; {} children (event MPM), {} client threads, {} s cells × 2 protocols × {} rounds, cold window {} s, responder delay {} s",
        so.display(),
        set.servers.iter().map(|k| k.label()).collect::<Vec<_>>(),
        set.children,
        set.clients,
        set.seconds,
        set.rounds,
        set.cold_seconds,
        set.delay
    );

    let tmp = tempfile::Builder::new().prefix("stapling-bench.").tempdir().unwrap();
    let rport = free_port();
    let pki = Pki::create(&tmp.path().join("pki"), &ocsp_url(rport));
    let responder = Responder::fixture(&pki, rport);
    responder.set(&format!("mode=good&delay={}", set.delay));

    // Phase 1: cold starts, one at a time; servers keep running afterwards.
    let mut servers: Vec<Server> =
        set.servers.iter().map(|&k| cold_start(k, &pki, &responder, tmp.path(), &set)).collect();

    // Phase 2: throughput. Warm up first: wait for a staple where one is expected.
    for s in servers.iter_mut() {
        let Some(a) = &s.apache else { continue };
        let port = a.port();
        if s.kind.staples() {
            let client = Client::new(Proto::Any, CLIENT_TIMEOUT);
            let ok = wait_until(Duration::from_secs(20), || matches!(client.handshake(port, false), Ok(Some(_))));
            if !ok {
                s.warm_note = Some("no staple within 20 s of warm-up".into());
            }
        }
        run_load(port, Proto::Tls13, set.clients, Instant::now() + Duration::from_secs(1), None);
    }
    let running: Vec<usize> = (0..servers.len()).filter(|&i| servers[i].apache.is_some()).collect();
    let cell = Duration::from_secs_f64(set.seconds);
    for round in 0..set.rounds {
        for (pi, proto) in [Proto::Tls12, Proto::Tls13].into_iter().enumerate() {
            let mut order = running.clone();
            if !order.is_empty() {
                let k = (round * 2 + pi) % order.len();
                order.rotate_left(k);
            }
            for i in order {
                let port = servers[i].apache.as_ref().unwrap().port();
                let before = responder.requests();
                let st = run_load(port, proto, set.clients, Instant::now() + cell, None);
                let after = responder.requests();
                let s = &mut servers[i];
                s.tput[pi].push(st.rate());
                s.tput_ok += st.ok;
                s.tput_stapled += st.stapled;
                s.tput_errors += st.errors;
                s.tput_requests += after.saturating_sub(before);
                if s.tput_first_error.is_none() {
                    s.tput_first_error = st.first_error.clone();
                }
                eprintln!(
                    "[bench] round {} {} {:<12} {:>8.1} hs/s ({} stapled of {}, {} errors)",
                    round + 1,
                    proto.label(),
                    s.kind.label(),
                    st.rate(),
                    st.stapled,
                    st.ok,
                    st.errors
                );
            }
        }
    }

    // Phase 3: memory, then logs, then stop everything.
    let logs = target_dir().join("bench-compare-logs");
    let _ = fs::create_dir_all(&logs);
    for s in servers.iter_mut() {
        if let Some(a) = &s.apache {
            s.mem = memory(a);
            let _ = fs::write(logs.join(format!("{}.error_log", s.kind.label())), a.error_log());
        }
    }
    for s in servers.iter_mut() {
        if let Some(mut a) = s.apache.take() {
            a.stop();
        }
    }
    drop(responder);

    let md = report(&set, &servers, &machine, started.elapsed());
    println!("{md}");
    let out = target_dir().join("bench-compare.md");
    match fs::write(&out, &md) {
        Ok(()) => eprintln!("[bench] written to {} (server logs in {})", out.display(), logs.display()),
        Err(e) => eprintln!("[bench] cannot write {}: {}", out.display(), e),
    }
}

// ---------------------------------------------------------------------------
// report
// ---------------------------------------------------------------------------

fn report(set: &Settings, servers: &[Server], machine: &[(String, String)], took: Duration) -> String {
    let mut o = String::new();
    let find = |k: Kind| servers.iter().find(|s| s.kind == k && s.failed.is_none());
    let none = find(Kind::None);
    let ours = find(Kind::Stapling);

    let _ = writeln!(o, "# mod_stapling comparison benchmark\n");
    let _ = writeln!(
        o,
        "Same Apache binary on loopback, event MPM, {} children × 4 threads, one {} certificate, \
         one local OCSP responder (fixture, answers after {} s). Client: {} threads of full handshakes \
         (no session cache, no tickets) asking for the status extension. Throughput is the median of {} rounds \
         of {} s per (server, protocol); servers alternate within each round; ratios are medians of per-round ratios.\n",
        set.children,
        cert_label(&set.cert),
        set.delay,
        set.clients,
        set.rounds,
        set.seconds
    );

    // main table
    let _ = write!(o, "| metric |");
    for s in servers {
        let _ = write!(o, " {} |", s.kind.label());
    }
    let _ = write!(o, "\n|---|");
    for _ in servers {
        let _ = write!(o, "---|");
    }
    o.push('\n');
    let row = |o: &mut String, name: &str, f: &dyn Fn(&Server) -> String| {
        let _ = write!(o, "| {name} |");
        for s in servers {
            let cell = if s.failed.is_some() { "–".to_string() } else { f(s) };
            let _ = write!(o, " {} |", cell.replace('|', "/"));
        }
        o.push('\n');
    };
    {
        let _ = write!(o, "| status |");
        for s in servers {
            let cell = match (&s.failed, &s.warm_note) {
                (Some(r), _) => format!("failed: {r}"),
                (None, Some(n)) => format!("ok ({n})"),
                (None, None) => "ok".into(),
            };
            let _ = write!(o, " {} |", cell.replace('|', "/"));
        }
        o.push('\n');
    }
    for (pi, p) in ["TLS 1.2", "TLS 1.3"].iter().enumerate() {
        row(&mut o, &format!("{p} full handshakes/s (median)"), &|s| {
            median(&s.tput[pi]).map(|m| format!("{m:.0}")).unwrap_or_else(|| "–".into())
        });
        row(&mut o, &format!("{p} ratio to none"), &|s| {
            none.and_then(|n| ratio(&s.tput[pi], &n.tput[pi])).map(|r| format!("{r:.3}×")).unwrap_or_else(|| "–".into())
        });
    }
    row(&mut o, "handshakes with a staple (throughput run)", &|s| {
        if s.tput_ok == 0 {
            return "–".into();
        }
        let mut c = format!("{:.1}%", 100.0 * s.tput_stapled as f64 / s.tput_ok as f64);
        if s.tput_errors > 0 {
            let _ = write!(c, " ({} errors)", s.tput_errors);
        }
        c
    });
    row(&mut o, "cold start: `apache2 -k start` to ready", &|s| format!("{:.2} s", s.cold.ready.as_secs_f64()));
    row(&mut o, "first handshake after ready", &|s| {
        let what = if s.cold.first_error.is_some() && s.cold.total == 0 {
            "error"
        } else if s.cold.first_valid {
            "stapled"
        } else if s.cold.first_stapled {
            "invalid staple"
        } else {
            "no staple"
        };
        format!("{:.1} ms, {}", ms(s.cold.first_latency), what)
    });
    row(&mut o, &format!("valid staples, first {} s after ready", set.cold_seconds), &|s| {
        let pct = if s.cold.total > 0 { 100.0 * s.cold.valid as f64 / s.cold.total as f64 } else { 0.0 };
        let mut c = format!("{:.1}% ({}/{})", pct, s.cold.valid, s.cold.total);
        if s.cold.errors > 0 {
            let _ = write!(c, ", {} errors", s.cold.errors);
        }
        c
    });
    row(&mut o, &format!("handshake latency, first {} s: p50 / max", set.cold_seconds), &|s| {
        format!("{:.1} / {:.0} ms", ms(s.cold.p50), ms(s.cold.max))
    });
    row(&mut o, &format!("responder requests: cold start + {} s", set.cold_seconds), &|s| s.cold.requests.to_string());
    row(&mut o, "responder requests: throughput run", &|s| s.tput_requests.to_string());
    row(&mut o, "Pss per child (after throughput)", &|s| {
        s.mem.map(|m| format!("{:.2} MiB", m.pss_kib / 1024.0)).unwrap_or_else(|| "–".into())
    });
    row(&mut o, "Pss per child vs none", &|s| match (s.mem, none.and_then(|n| n.mem)) {
        (Some(m), Some(n)) => format!("{:+.0} KiB", m.pss_kib - n.pss_kib),
        _ => "–".into(),
    });
    row(&mut o, "Rss per child", &|s| {
        s.mem.map(|m| format!("{:.2} MiB ({} children)", m.rss_kib / 1024.0, m.n)).unwrap_or_else(|| "–".into())
    });

    // ratios of mod_stapling to each peer
    let mut missed: Vec<String> = Vec::new();
    let mut met: Vec<String> = Vec::new();
    if let Some(us) = ours {
        let _ = writeln!(o, "\n## mod_stapling throughput relative to each peer\n");
        let _ =
            writeln!(o, "| protocol | ÷ none (target ≥ 0.97) | ÷ mod_ssl (target ≥ 1.10) | ÷ mod_md (target ≥ 1.00) |");
        let _ = writeln!(o, "|---|---|---|---|");
        for (pi, p) in ["TLS 1.2", "TLS 1.3"].iter().enumerate() {
            let _ = write!(o, "| {p} |");
            for (k, target) in [(Kind::None, 0.97), (Kind::ModSsl, 1.10), (Kind::ModMd, 1.00)] {
                let peer = servers.iter().find(|s| s.kind == k);
                let cell = match peer {
                    None => "not run".to_string(),
                    Some(ps) if ps.failed.is_some() => "peer failed".to_string(),
                    Some(ps) => match ratio(&us.tput[pi], &ps.tput[pi]) {
                        Some(r) => {
                            let what = format!("{p} throughput vs {}: {r:.3}× (target ≥ {target:.2}×)", k.label());
                            if r >= target {
                                met.push(what);
                                format!("{r:.3}× ✓")
                            } else {
                                missed.push(what);
                                format!("{r:.3}× **MISSED**")
                            }
                        }
                        None => "–".into(),
                    },
                };
                let _ = write!(o, " {cell} |");
            }
            o.push('\n');
        }

        // staple availability and responder requests
        let c = &us.cold;
        let what = format!(
            "stapled from the first handshake: first handshake {}, {}/{} valid in the first {} s",
            if c.first_valid { "stapled" } else { "NOT stapled" },
            c.valid,
            c.total,
            set.cold_seconds
        );
        if c.first_valid && c.total > 0 && c.valid == c.total {
            met.push(what);
        } else {
            missed.push(what);
        }
        let tput_share = if us.tput_ok > 0 { us.tput_stapled as f64 / us.tput_ok as f64 } else { 0.0 };
        let what = format!("staple on every handshake of the throughput run: {:.2}%", 100.0 * tput_share);
        if us.tput_ok > 0 && us.tput_stapled == us.tput_ok {
            met.push(what);
        } else {
            missed.push(what);
        }
        let what = format!(
            "1 responder request per certificate per refresh (1 certificate, {} children): {} at cold start, {} during the throughput run",
            set.children, c.requests, us.tput_requests
        );
        if c.requests == 1 && us.tput_requests == 0 {
            met.push(what);
        } else {
            missed.push(what);
        }
    } else {
        missed.push(match servers.iter().find(|s| s.kind == Kind::Stapling) {
            Some(s) => format!("mod_stapling failed: {}", s.failed.clone().unwrap_or_default()),
            None => "mod_stapling was not run (BENCH_SERVERS)".into(),
        });
    }

    let _ = writeln!(o, "\n## Targets\n");
    for m in &missed {
        let _ = writeln!(o, "- **MISSED**: {m}");
    }
    for m in &met {
        let _ = writeln!(o, "- met: {m}");
    }

    let errs: Vec<String> = servers
        .iter()
        .filter_map(|s| {
            s.tput_first_error
                .as_ref()
                .or(s.cold.first_error.as_ref())
                .map(|e| format!("- {}: first client error: {}", s.kind.label(), e))
        })
        .collect();
    if !errs.is_empty() {
        let _ = writeln!(o, "\n## Client errors\n");
        for e in errs {
            let _ = writeln!(o, "{e}");
        }
    }

    let _ = writeln!(o, "\n## Machine\n");
    for (k, v) in machine {
        let _ = writeln!(o, "- {k}: {v}");
    }
    let _ = writeln!(
        o,
        "- settings: BENCH_SECONDS={} BENCH_ROUNDS={} BENCH_CHILDREN={} BENCH_CLIENTS={} BENCH_COLD_SECONDS={} BENCH_RESPONDER_DELAY={} BENCH_CERT={}",
        set.seconds,
        set.rounds,
        set.children,
        set.clients,
        set.cold_seconds,
        set.delay,
        cert_setting(&set.cert)
    );
    let _ = writeln!(o, "- total run time: {:.0} s", took.as_secs_f64());
    o
}
