//! Scale benchmark: N certificates, one name-based SNI virtual host each, on the same
//! Apache binary in four configurations (no stapling, mod_ssl `SSLUseStapling`, mod_md
//! `MDStapling` + `MDStapleOthers`, mod_stapling `Stapling on`), for several N.
//!
//! Run with `scripts/bench-scale.sh`, which also installs what is missing and builds the
//! module, or from the repository root after `cargo build --release` with
//! `cargo run --release --manifest-path tools/bench/Cargo.toml --target-dir target --bin scale`.
//!
//! Setup: one test PKI (scripts/mkpki.sh) and the largest N of leaf certificates
//! (ECDSA P-256, one shared key, each its own serial and name `scale{i}.test`), issued
//! once; a run with N uses the first N. Leaf 1 is the default vhost's certificate
//! (ServerName localhost), leaves 2..N each get a name-based vhost on the same port.
//! Every (N, server) gets a fresh ServerRoot (no stored responses, empty caches, cold)
//! and a fresh fixture responder (tests/fixtures/ocsp_responder.py: answers `good` for
//! every serial after `SCALE_RESPONDER_DELAY` seconds, thisUpdate now, nextUpdate
//! `SCALE_VALIDITY` seconds later). Event MPM, `BENCH_CHILDREN` children × 4 threads.
//!
//! Measured per (N, server), in this order:
//! 1. start → serving: from running `apache2 -k start` until a TLS handshake (default
//!    vhost, no status request, so nothing is fetched by it) completes; tried every
//!    20 ms. Also reported: when the port was first in LISTEN (from /proc/net/tcp).
//!    A LISTEN socket is not enough: Apache binds before post_config, and the kernel
//!    queues connections until a child accepts them.
//! 2. first handshakes: right after serving, each sampled vhost's very first
//!    handshake asking for the status (all vhosts up to `SCALE_SAMPLE`, else that many
//!    spread over 1..N), `SCALE_CLIENTS` at a time; a staple counts if it verifies
//!    against the test root, is for that certificate, is good and is current.
//! 3. start → all stapled (mod_md, mod_stapling: they fetch in the background):
//!    until the responder has answered every one of the N serials (read from its log,
//!    polled every 100 ms, alongside 2.), capped at `SCALE_TIMEOUT`. mod_ssl fetches
//!    only inside a handshake that asks for the status, so it is "lazy" here.
//! 4. sweep: one status-requesting handshake per vhost (`SCALE_CLIENTS` at a time),
//!    confirming 3. (for mod_ssl it is what fetches the responses).
//! 5. responder load until the end of the sweep: the most requests that arrived in
//!    one second, the most in flight at once, the total (the fixture's /_stats).
//! 6. memory after the sweep: Pss (/proc/PID/smaps_rollup) of the parent and of each
//!    child; their sum, and the sum minus that of `none` at the same N; and each
//!    child's private pages (Private_Clean + Private_Dirty).
//! 7. mod_stapling's shared region: `shared_store` of the status handler's JSON
//!    (`/stapling-status?json` on a plain-HTTP listener) if the module reports it;
//!    the mapping is also found in the parent's /proc/PID/smaps (the anonymous shared
//!    mapping whose first word is the store's magic number, read from /proc/PID/mem)
//!    for its size and its resident pages.
//! 8. the next refresh round (`SCALE_NEXT_ROUND`, N ≥ `SCALE_NEXT_ROUND_MIN_N`, for
//!    the servers that refresh by themselves: mod_md and mod_stapling): after the sweep,
//!    waits until every serial has been answered twice (at most `SCALE_VALIDITY` + 60 s
//!    after the sweep). From the log (1 s resolution): the span from the first to the
//!    last second answer (and p5–p95), and how long after its first fetch each
//!    certificate was fetched again, and the most fetches of any one certificate by
//!    then; from the fixture's counters (reset after the sweep): the most requests that
//!    arrived in one second, and the most in flight.
//!
//! Environment knobs (defaults in parentheses):
//! * `SCALE_NS` (1,100,1000,3000): the N to run
//! * `BENCH_SERVERS` (none,mod_ssl,mod_md,mod_stapling): which servers to run
//! * `BENCH_CHILDREN` (4): Apache children (event MPM, 4 threads each)
//! * `SCALE_RESPONDER_DELAY` (0.05): seconds the responder waits before answering
//! * `SCALE_VALIDITY` (240): seconds from thisUpdate to nextUpdate of every response
//! * `SCALE_TIMEOUT` (300): longest wait for serving and for all stapled, in seconds
//! * `SCALE_SAMPLE` (100): first handshakes sampled per run
//! * `SCALE_CLIENTS` (4): client threads for the sample and the sweep
//! * `SCALE_NEXT_ROUND` (1): 0 skips the next-round measurement
//! * `SCALE_NEXT_ROUND_MIN_N` (1000): smallest N whose next round is measured (each
//!   such run waits 2–3 minutes for it)
//! * `MOD_STAPLING_SO`: the module to test (default target/release/libmod_stapling.so)
//!
//! The markdown report is printed and written to `target/bench-scale.md` (rewritten
//! after every run, so an interrupted benchmark leaves what it measured); the error
//! logs of the servers and the responder logs go to `target/bench-scale-logs/`.

#[path = "../common/mod.rs"]
mod bench_common;

#[path = "../../../../tests/common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bench_common::*;
use common::*;

/// Read and write timeout of each client connection.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Prefix of the leaf names: `scale{i}.test`.
const PREFIX: &str = "scale";
/// How often the start is probed.
const SERVING_POLL: Duration = Duration::from_millis(20);
/// How often the responder's log is read while waiting for all certificates: the
/// resolution of "start → all stapled" (parsing 3,000 lines takes a few ms).
const LOG_POLL: Duration = Duration::from_millis(100);
/// Header word 0 of mod_stapling's shared region (`MAGIC` in src/store/shared.rs).
const STORE_MAGIC: u64 = 0x6d6f_645f_7374_6170;
/// Names of unstapled vhosts kept for the report.
const KEEP_NAMES: usize = 5;

// ---------------------------------------------------------------------------
// settings
// ---------------------------------------------------------------------------

struct Settings {
    ns: Vec<usize>,
    servers: Vec<Kind>,
    children: u32,
    delay: f64,
    validity: u64,
    timeout: Duration,
    sample: usize,
    clients: usize,
    next_round: bool,
    next_round_min_n: usize,
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            ns: ns_from_env("SCALE_NS", &[1, 100, 1000, 3000]),
            servers: Kind::list_from_env("BENCH_SERVERS"),
            children: env_num("BENCH_CHILDREN", 4u32).max(1),
            delay: env_num("SCALE_RESPONDER_DELAY", 0.05f64).max(0.0),
            validity: env_num("SCALE_VALIDITY", 240u64).max(10),
            timeout: Duration::from_secs(env_num("SCALE_TIMEOUT", 300u64).max(1)),
            sample: env_num("SCALE_SAMPLE", 100usize).max(1),
            clients: env_num("SCALE_CLIENTS", 4usize).max(1),
            next_round: env_num("SCALE_NEXT_ROUND", 1u32) != 0,
            next_round_min_n: env_num("SCALE_NEXT_ROUND_MIN_N", 1000usize),
        }
    }

    /// The fixture's settings: healthy, every serial good, thisUpdate now (no
    /// backdating, so that the renew time is a known share of the validity).
    fn responder_query(&self) -> String {
        format!("mode=good&unknown_serials=good&delay={}&validity={}&backdate=0", self.delay, self.validity)
    }

    /// The knobs as they were, for the report.
    fn line(&self) -> String {
        let ns: Vec<String> = self.ns.iter().map(usize::to_string).collect();
        let servers: Vec<&str> = self.servers.iter().map(|k| k.label()).collect();
        format!(
            "SCALE_NS={} BENCH_SERVERS={} BENCH_CHILDREN={} SCALE_RESPONDER_DELAY={} SCALE_VALIDITY={} \
             SCALE_TIMEOUT={} SCALE_SAMPLE={} SCALE_CLIENTS={} SCALE_NEXT_ROUND={} SCALE_NEXT_ROUND_MIN_N={}",
            ns.join(","),
            servers.join(","),
            self.children,
            self.delay,
            self.validity,
            self.timeout.as_secs(),
            self.sample,
            self.clients,
            u8::from(self.next_round),
            self.next_round_min_n
        )
    }
}

/// The comma-separated numbers in environment variable `name` (at least 1 each,
/// duplicates dropped), or `default`. Panics on anything else.
fn ns_from_env(name: &str, default: &[usize]) -> Vec<usize> {
    let v = match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => return default.to_vec(),
    };
    let mut ns = Vec::new();
    for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let n: usize = t.replace('_', "").parse().unwrap_or_else(|_| panic!("{name}: cannot parse '{t}'"));
        assert!(n >= 1, "{name}: N must be at least 1");
        if !ns.contains(&n) {
            ns.push(n);
        }
    }
    assert!(!ns.is_empty(), "{name}: no N given");
    ns
}

/// mod_ssl's stapling cache for `n` certificates: 1 MB per 500 (a response is about
/// 1 KiB here), so that no response is evicted during the run.
fn ssl_cache_bytes(n: usize) -> usize {
    n.div_ceil(500).max(1) * 1_000_000
}

// ---------------------------------------------------------------------------
// results
// ---------------------------------------------------------------------------

/// Handshakes with a list of vhosts, one each.
#[derive(Default)]
struct Handshakes {
    tried: usize,
    /// With a staple that verified (see [`Validator`]).
    valid: usize,
    /// With a staple that did not verify.
    invalid: usize,
    errors: usize,
    first_error: Option<String>,
    /// The first few vhosts without a valid staple.
    unstapled: Vec<String>,
    /// Sorted.
    latencies: Vec<Duration>,
    elapsed: Duration,
}

/// Start → every certificate fetched.
enum AllStapled {
    /// Not measured, and why.
    NotApplicable(&'static str),
    Reached(Duration),
    /// `SCALE_TIMEOUT` passed with this many fetched.
    TimedOut(usize),
}

/// The responder's counters at the end of the sweep.
#[derive(Default, Clone, Copy)]
struct Load {
    peak_per_second: u64,
    max_in_flight: u64,
    requests: u64,
}

/// The second fetch of every certificate, from the responder's log.
struct Round {
    /// Certificates fetched twice.
    renewed: usize,
    n: usize,
    /// First to last second fetch; 5th to 95th percentile.
    span: i64,
    span_p5_p95: i64,
    /// Most requests that arrived in one second, and most in flight, from the end of
    /// the sweep to the end of the round (the fixture's counters, which count arrivals;
    /// its log has answers, whole seconds).
    peak_per_second: u64,
    max_in_flight: u64,
    /// Seconds from a certificate's first fetch to its second: min, median, max.
    after: (i64, i64, i64),
    /// The most answers one certificate got by the end of the wait: more than two
    /// while others wait for their second means the fetch order is unfair.
    most_fetches: usize,
}

enum NextRound {
    NotMeasured(String),
    Measured(Round),
}

/// Pss in KiB.
#[derive(Clone, Copy)]
struct Memory {
    parent: f64,
    child_mean: f64,
    /// Private_Clean + Private_Dirty per child (mean): what each child holds alone,
    /// e.g. pages copied on write after the fork.
    child_private_mean: f64,
    children: usize,
    total: f64,
}

/// mod_stapling's shared mapping.
#[derive(Default)]
struct Region {
    /// Size of the mapping (from the status JSON, else from smaps).
    bytes: Option<u64>,
    slots: Option<u64>,
    /// Bytes holding responses (status JSON only).
    in_use: Option<u64>,
    /// Resident pages of the mapping, the most in any one process (smaps).
    resident_kib: Option<u64>,
    from_json: bool,
}

struct Cell {
    n: usize,
    kind: Kind,
    failed: Option<String>,
    listening: Option<Duration>,
    serving: Option<Duration>,
    first: Handshakes,
    all: AllStapled,
    sweep: Handshakes,
    load: Load,
    mem: Option<Memory>,
    region: Option<Region>,
    next: NextRound,
}

impl Cell {
    fn new(n: usize, kind: Kind) -> Cell {
        Cell {
            n,
            kind,
            failed: None,
            listening: None,
            serving: None,
            first: Handshakes::default(),
            all: AllStapled::NotApplicable("–"),
            sweep: Handshakes::default(),
            load: Load::default(),
            mem: None,
            region: None,
            next: NextRound::NotMeasured("–".into()),
        }
    }
}

/// Whether `kind` fetches every response by itself, without a handshake asking.
fn fetches_in_background(kind: Kind) -> bool {
    matches!(kind, Kind::ModMd | Kind::Stapling)
}

// ---------------------------------------------------------------------------
// one (N, server) run
// ---------------------------------------------------------------------------

/// Everything a run needs besides its N and server.
struct Env<'a> {
    set: &'a Settings,
    pki: &'a Pki,
    responder_port: u16,
    base: &'a Path,
    logs: &'a Path,
}

/// The server options: leaf 1 in the default vhost, one SNI vhost per other leaf, the
/// server's stapling lines in each, and for mod_stapling the status handler on a
/// plain-HTTP listener.
fn options(kind: Kind, env: &Env, leaves: &[Leaf], root: &Path, port: u16, http_port: u16) -> ApacheOptions {
    let md_store = root.join("var/md"); // ROOT/var belongs to www-data (the server user)
    let mut o = kind.options(env.pki, "leaf", Mpm::Event, env.set.children, root, &md_store);
    o.cert = leaves[0].chain.clone();
    o.key = leaves[0].key.clone();
    o.port = Some(port);
    o.global_conf = kind.global_conf(&md_store, ssl_cache_bytes(leaves.len()));
    if kind == Kind::Stapling {
        let _ = write!(
            o.global_conf,
            "Listen 127.0.0.1:{http_port} http\n\
             <Location /stapling-status>\n  SetHandler stapling-status\n  Require all granted\n</Location>\n"
        );
    }
    o.extra_vhosts = sni_vhosts(port, &leaves[1..], kind.vhost_conf());
    o
}

/// One (N, server) run; a panic inside becomes a failed cell (the harness's Drop impls
/// have stopped the server and the responder by then).
fn run_cell(kind: Kind, leaves: &[Leaf], env: &Env) -> Cell {
    let n = leaves.len();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| measure(kind, leaves, env)));
    run.unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let mut c = Cell::new(n, kind);
        c.failed = Some(format!("panicked: {}", first_line(&what)));
        c
    })
}

/// The measurements of one (N, server) run, in order (see the module doc).
fn measure(kind: Kind, leaves: &[Leaf], env: &Env) -> Cell {
    let n = leaves.len();
    let mut cell = Cell::new(n, kind);
    let responder = Responder::fixture(env.pki, env.responder_port);
    responder.set(&env.set.responder_query());
    let root = env.base.join(format!("{n}-{}", kind.label()));
    let (port, http_port) = (free_port(), free_port());
    let opts = options(kind, env, leaves, &root, port, http_port);
    let t0 = Instant::now();
    let Some(mut apache) = start(&mut cell, opts, &responder, env, t0) else { return cell };

    let wanted = serials(leaves);
    cold_start(&mut cell, port, leaves, &wanted, &responder, env, t0);
    let all: Vec<&Leaf> = leaves.iter().collect();
    cell.sweep = handshake_each(port, env.pki, &all, env.set.clients);
    cell.load = Load {
        peak_per_second: responder.stat("max_per_second"),
        max_in_flight: responder.stat("max_in_flight"),
        requests: responder.requests(),
    };
    cell.mem = memory(&apache);
    if kind == Kind::Stapling {
        cell.region = Some(shared_region(&apache, http_port));
    }
    cell.next = next_round(kind, &cell.all, &responder, &wanted, env.set);
    save_logs(&apache, &responder, env.logs, n, kind);
    apache.stop();
    drop(apache);
    let _ = fs::remove_dir_all(&root);
    cell
}

/// Starts the server at `t0` and times it (1.); None, with the cell marked failed, if
/// it does not come up.
fn start(cell: &mut Cell, opts: ApacheOptions, responder: &Responder, env: &Env, t0: Instant) -> Option<Apache> {
    let (n, label) = (cell.n, cell.kind.label());
    let port = opts.port.expect("options() sets the port");
    let mut apache = match Apache::begin_start(opts) {
        Ok(a) => a,
        Err(e) => {
            // The harness's message has apache2's output and the whole error_log.
            let _ = fs::write(env.logs.join(format!("{n}-{label}.start-error")), &e);
            cell.failed = Some(first_line(&e));
            return None;
        }
    };
    (cell.listening, cell.serving) = wait_serving(port, t0, t0 + env.set.timeout);
    let started = match cell.serving {
        Some(_) => apache.wait_started(),
        None => Err(format!("no TLS handshake within {} s", env.set.timeout.as_secs())),
    };
    if let Err(e) = started {
        cell.failed = Some(first_line(&e));
        save_logs(&apache, responder, env.logs, n, cell.kind);
        return None;
    }
    Some(apache)
}

/// The first handshakes (2.) while, for the servers that fetch by themselves, the
/// responder's log is watched until every certificate was fetched (3.).
fn cold_start(
    cell: &mut Cell,
    port: u16,
    leaves: &[Leaf],
    wanted: &HashSet<String>,
    responder: &Responder,
    env: &Env,
    t0: Instant,
) {
    let sample = sample(leaves, env.set.sample);
    let deadline = t0 + env.set.timeout;
    let kind = cell.kind;
    std::thread::scope(|s| {
        let watcher =
            fetches_in_background(kind).then(|| s.spawn(|| wait_all_fetched(responder, wanted, t0, deadline)));
        cell.first = handshake_each(port, env.pki, &sample, env.set.clients);
        cell.all = match watcher {
            Some(w) => w.join().expect("watcher thread panicked"),
            None if kind == Kind::ModSsl => AllStapled::NotApplicable("lazy"),
            None => AllStapled::NotApplicable("–"),
        };
    });
}

/// (start → port in LISTEN, start → first completed TLS handshake), each None if it
/// did not happen before `deadline`.
fn wait_serving(port: u16, t0: Instant, deadline: Instant) -> (Option<Duration>, Option<Duration>) {
    let mut listening = None;
    while Instant::now() < deadline {
        if listening.is_none() && port_listening(port) {
            listening = Some(t0.elapsed());
        }
        // A connection queued before the children accept completes when they do, so
        // the time of the first success is exact, not rounded up to a retry.
        if listening.is_some() && tls_handshake(port, "localhost", Duration::from_secs(30)).is_ok() {
            return (listening, Some(t0.elapsed()));
        }
        std::thread::sleep(SERVING_POLL);
    }
    (listening, None)
}

/// The vhosts of the first-handshake sample: all of them up to `size`, else `size`
/// spread evenly over the range (leaf 1, the default vhost, included).
fn sample(leaves: &[Leaf], size: usize) -> Vec<&Leaf> {
    let n = leaves.len();
    if n <= size {
        return leaves.iter().collect();
    }
    (0..size).map(|k| &leaves[k * n / size]).collect()
}

/// One status-requesting handshake with each of `leaves` (by SNI), `clients` at a
/// time, each staple verified for its certificate.
fn handshake_each(port: u16, pki: &Pki, leaves: &[&Leaf], clients: usize) -> Handshakes {
    let start = Instant::now();
    let next = AtomicUsize::new(0);
    let total = Mutex::new(Handshakes::default());
    std::thread::scope(|s| {
        for _ in 0..clients.min(leaves.len()) {
            s.spawn(|| {
                let client = Client::new(Proto::Any, CLIENT_TIMEOUT);
                let mut mine = Handshakes::default();
                while let Some(leaf) = leaves.get(next.fetch_add(1, Ordering::Relaxed)) {
                    one_handshake(&client, port, pki, leaf, &mut mine);
                }
                merge(&mut total.lock().unwrap(), mine);
            });
        }
    });
    let mut h = total.into_inner().unwrap();
    h.latencies.sort();
    h.elapsed = start.elapsed();
    h
}

fn one_handshake(client: &Client, port: u16, pki: &Pki, leaf: &Leaf, into: &mut Handshakes) {
    let t = Instant::now();
    let r = client.handshake_sni(port, &leaf.server_name, true);
    into.tried += 1;
    let valid = match r {
        Ok(Some(der)) => {
            let ok = Validator::for_file(pki, &leaf.chain).valid(&der);
            into.invalid += usize::from(!ok);
            ok
        }
        Ok(None) => false,
        Err(e) => {
            into.errors += 1;
            into.first_error.get_or_insert(e);
            false
        }
    };
    into.latencies.push(t.elapsed());
    if valid {
        into.valid += 1;
    } else if into.unstapled.len() < KEEP_NAMES {
        into.unstapled.push(leaf.server_name.clone());
    }
}

fn merge(into: &mut Handshakes, h: Handshakes) {
    into.tried += h.tried;
    into.valid += h.valid;
    into.invalid += h.invalid;
    into.errors += h.errors;
    if into.first_error.is_none() {
        into.first_error = h.first_error;
    }
    for name in h.unstapled {
        if into.unstapled.len() < KEEP_NAMES {
            into.unstapled.push(name);
        }
    }
    into.latencies.extend(h.latencies);
}

/// Copies the server's error_log and the responder's log into `logs`.
fn save_logs(apache: &Apache, responder: &Responder, logs: &Path, n: usize, kind: Kind) {
    let _ = fs::write(logs.join(format!("{n}-{}.error_log", kind.label())), apache.error_log());
    let _ = fs::write(logs.join(format!("{n}-{}.responder.log", kind.label())), responder.log());
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").replace('|', "/").chars().take(200).collect()
}

// ---------------------------------------------------------------------------
// the responder's log
// ---------------------------------------------------------------------------

/// A serial as the fixture logs it: upper-case hex, no leading zeros.
fn norm_serial(hex: &str) -> String {
    let t = hex.trim().trim_start_matches('0').to_ascii_uppercase();
    if t.is_empty() {
        "0".into()
    } else {
        t
    }
}

fn serials(leaves: &[Leaf]) -> HashSet<String> {
    leaves.iter().map(|l| norm_serial(&l.serial_hex)).collect()
}

/// The answers of good responses in the fixture's log, as (second, serial) in log
/// order. Lines look like `[ocsp_responder 15:09:26] ocsp POST mode=good serial=AB12
/// -> 200 status=good bytes=…`, written once the answer is sent; the seconds count
/// from the midnight before the first line (the clock is local time, whole seconds).
fn answers(log: &str) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let (mut day, mut last) = (0i64, 0i64);
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("[ocsp_responder ") else { continue };
        let Some((stamp, msg)) = rest.split_once("] ") else { continue };
        if !msg.starts_with("ocsp ") || !msg.contains("-> 200 status=good") {
            continue;
        }
        let hms: Vec<i64> = stamp.split(':').filter_map(|x| x.parse().ok()).collect();
        let Some(serial) = msg.split_whitespace().find_map(|t| t.strip_prefix("serial=")) else { continue };
        if hms.len() != 3 {
            continue;
        }
        let mut t = day + hms[0] * 3600 + hms[1] * 60 + hms[2];
        if t + 43_200 < last {
            // past midnight
            day += 86_400;
            t += 86_400;
        }
        last = t;
        out.push((t, norm_serial(serial)));
    }
    out
}

/// How many of `wanted` have been answered at least once.
fn fetched_count(log: &str, wanted: &HashSet<String>) -> usize {
    let got: HashSet<String> = answers(log).into_iter().map(|(_, s)| s).filter(|s| wanted.contains(s)).collect();
    got.len()
}

/// Polls the responder's log until every serial in `wanted` was answered.
fn wait_all_fetched(responder: &Responder, wanted: &HashSet<String>, t0: Instant, deadline: Instant) -> AllStapled {
    loop {
        let got = fetched_count(&responder.log(), wanted);
        if got >= wanted.len() {
            return AllStapled::Reached(t0.elapsed());
        }
        if Instant::now() >= deadline {
            return AllStapled::TimedOut(got);
        }
        std::thread::sleep(LOG_POLL);
    }
}

/// The times each of `wanted` was answered, in order.
fn answer_times(log: &str, wanted: &HashSet<String>) -> HashMap<String, Vec<i64>> {
    let mut m: HashMap<String, Vec<i64>> = HashMap::new();
    for (t, s) in answers(log) {
        if wanted.contains(&s) {
            m.entry(s).or_default().push(t);
        }
    }
    m
}

/// Waits for the next round where it is measured (see the module doc).
fn next_round(
    kind: Kind,
    all: &AllStapled,
    responder: &Responder,
    wanted: &HashSet<String>,
    set: &Settings,
) -> NextRound {
    let n = wanted.len();
    let skip = |why: &str| NextRound::NotMeasured(why.into());
    if kind == Kind::ModSsl {
        return skip("lazy");
    }
    if !fetches_in_background(kind) {
        return skip("–");
    }
    if !set.next_round {
        return skip("off");
    }
    if n < set.next_round_min_n {
        return skip(&format!("N < {}", set.next_round_min_n));
    }
    if !matches!(all, AllStapled::Reached(_)) {
        return skip("not all stapled");
    }
    let deadline = Instant::now() + Duration::from_secs(set.validity + 60);
    eprintln!("[scale]   waiting for the next round (at most {} s)", set.validity + 60);
    // The cold start's peak was read at the end of the sweep; count this round's anew.
    responder.reset_stats();
    loop {
        let times = answer_times(&responder.log(), wanted);
        let renewed = times.values().filter(|v| v.len() >= 2).count();
        if renewed >= n || Instant::now() >= deadline {
            let mut r = round_stats(&times, n);
            r.peak_per_second = responder.stat("max_per_second");
            r.max_in_flight = responder.stat("max_in_flight");
            return NextRound::Measured(r);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The round's times from the log (the counters are filled in by the caller).
fn round_stats(times: &HashMap<String, Vec<i64>>, n: usize) -> Round {
    let mut second: Vec<i64> = times.values().filter(|v| v.len() >= 2).map(|v| v[1]).collect();
    let mut after: Vec<i64> = times.values().filter(|v| v.len() >= 2).map(|v| v[1] - v[0]).collect();
    second.sort_unstable();
    after.sort_unstable();
    let at = |v: &[i64], q: f64| if v.is_empty() { 0 } else { v[((v.len() - 1) as f64 * q).round() as usize] };
    Round {
        renewed: second.len(),
        n,
        span: at(&second, 1.0) - at(&second, 0.0),
        span_p5_p95: at(&second, 0.95) - at(&second, 0.05),
        peak_per_second: 0,
        max_in_flight: 0,
        after: (at(&after, 0.0), at(&after, 0.5), at(&after, 1.0)),
        most_fetches: times.values().map(Vec::len).max().unwrap_or(0),
    }
}

// ---------------------------------------------------------------------------
// memory and the shared region
// ---------------------------------------------------------------------------

/// A `Name:  value kB` field of /proc/PID/smaps or smaps_rollup.
fn kib_field(line: &str, name: &str) -> Option<u64> {
    line.strip_prefix(name)?.split_whitespace().next()?.parse().ok()
}

/// (Pss, Private_Clean + Private_Dirty) of `pid` in KiB, from smaps_rollup.
fn pss_kib(pid: u32) -> Option<(f64, f64)> {
    let t = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| t.lines().find_map(|l| kib_field(l, name)).map(|v| v as f64);
    Some((field("Pss:")?, field("Private_Clean:").unwrap_or(0.0) + field("Private_Dirty:").unwrap_or(0.0)))
}

fn memory(apache: &Apache) -> Option<Memory> {
    let (parent, _) = pss_kib(apache.pid())?;
    let kids: Vec<(f64, f64)> = apache.child_pids().into_iter().filter_map(pss_kib).collect();
    let count = kids.len().max(1) as f64;
    let pss: f64 = kids.iter().map(|k| k.0).sum();
    Some(Memory {
        parent,
        child_mean: pss / count,
        child_private_mean: kids.iter().map(|k| k.1).sum::<f64>() / count,
        children: kids.len(),
        total: parent + pss,
    })
}

/// One mapping of /proc/PID/smaps.
struct Mapping {
    start: u64,
    perms: String,
    size_kib: u64,
    rss_kib: u64,
}

fn smaps(pid: u32) -> Vec<Mapping> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let header = it.next().and_then(|r| r.split_once('-')).and_then(|(a, _)| u64::from_str_radix(a, 16).ok());
        match (header, it.next()) {
            (Some(start), Some(perms)) if perms.len() == 4 => {
                maps.push(Mapping { start, perms: perms.into(), size_kib: 0, rss_kib: 0 });
            }
            _ => {
                let Some(m) = maps.last_mut() else { continue };
                if let Some(v) = kib_field(line, "Size:") {
                    m.size_kib = v;
                } else if let Some(v) = kib_field(line, "Rss:") {
                    m.rss_kib = v;
                }
            }
        }
    }
    maps
}

/// The first word of `pid`'s memory at `addr` (needs ptrace rights: root).
fn peek_word(pid: u32, addr: u64) -> Option<u64> {
    let f = fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, addr).ok()?;
    Some(u64::from_ne_bytes(b))
}

/// The status JSON's `shared_store`, then the mapping in smaps: the parent maps the
/// region before the children fork, so it sits at the same address in all of them.
fn shared_region(apache: &Apache, http_port: u16) -> Region {
    let mut r = Region::default();
    if let Some(body) = get(http_port, "/stapling-status?json") {
        if let Some(i) = body.find("\"shared_store\"") {
            let obj = &body[i..body[i..].find('}').map_or(body.len(), |j| i + j)];
            r.bytes = json_num(obj, "bytes");
            r.slots = json_num(obj, "slots");
            r.in_use = json_num(obj, "in_use");
            r.from_json = r.bytes.is_some();
        }
    }
    let parent = apache.pid();
    let shared = smaps(parent).into_iter().filter(|m| m.perms.starts_with("rw") && m.perms.ends_with('s'));
    let Some(m) = shared.into_iter().find(|m| peek_word(parent, m.start) == Some(STORE_MAGIC)) else { return r };
    if r.bytes.is_none() {
        r.bytes = Some(m.size_kib * 1024);
    }
    let mut pids = apache.child_pids();
    pids.push(parent);
    r.resident_kib =
        pids.into_iter().filter_map(|p| smaps(p).into_iter().find(|x| x.start == m.start).map(|x| x.rss_kib)).max();
    r
}

/// The number after `"key":` in `json` (a flat search, enough for one small object).
fn json_num(json: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\"");
    let rest = json[json.find(&pat)? + pat.len()..].trim_start().strip_prefix(':')?.trim_start();
    rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}

/// HTTP/1.0 GET from 127.0.0.1:`port`: the body if the status is 200.
fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.lines().next()?.contains(" 200 ").then(|| body.to_string())
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
    if set.servers.contains(&Kind::Stapling) {
        eprintln!("[scale] module {}", module_path().display());
    }
    eprintln!("[scale] {}", set.line());

    let tmp = tempfile::Builder::new().prefix("stapling-scale.").tempdir().unwrap();
    let responder_port = free_port();
    let pki = Pki::create(&tmp.path().join("pki"), &ocsp_url(responder_port));
    let max_n = set.ns.iter().copied().max().unwrap_or(1);
    let t = Instant::now();
    let leaves = issue_leaves(&pki, PREFIX, max_n);
    eprintln!("[scale] {max_n} certificates issued in {:.1} s", t.elapsed().as_secs_f64());

    let logs = target_dir().join("bench-scale-logs");
    let _ = fs::remove_dir_all(&logs);
    let _ = fs::create_dir_all(&logs);
    let env = Env { set: &set, pki: &pki, responder_port, base: tmp.path(), logs: &logs };
    let out = target_dir().join("bench-scale.md");
    let mut cells = Vec::new();
    for &n in &set.ns {
        for &kind in &set.servers {
            eprintln!("[scale] N={n} {} ...", kind.label());
            let cell = run_cell(kind, &leaves[..n], &env);
            eprintln!("[scale]   {}", summary(&cell));
            cells.push(cell);
            let _ = fs::write(&out, report(&set, &cells, &machine, started.elapsed()));
        }
    }
    let md = report(&set, &cells, &machine, started.elapsed());
    println!("{md}");
    match fs::write(&out, &md) {
        Ok(()) => eprintln!("[scale] written to {} (server and responder logs in {})", out.display(), logs.display()),
        Err(e) => eprintln!("[scale] cannot write {}: {}", out.display(), e),
    }
}

/// One progress line.
fn summary(c: &Cell) -> String {
    if let Some(f) = &c.failed {
        return format!("FAILED: {f}");
    }
    format!(
        "serving {} | first {} | all stapled {} | sweep {} | load {} | Pss {} | next {}",
        serving_cell(c),
        first_cell(&c.first),
        all_cell(&c.all),
        sweep_cell(&c.sweep),
        load_cell(&c.load),
        c.mem.map(|m| mib(m.total)).unwrap_or_else(|| "–".into()),
        next_cell(&c.next)
    )
}

// ---------------------------------------------------------------------------
// report
// ---------------------------------------------------------------------------

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    match sorted.len() {
        0 => Duration::ZERO,
        len => sorted[((len - 1) as f64 * q).round() as usize],
    }
}

fn serving_cell(c: &Cell) -> String {
    let listen = c.listening.map(secs).unwrap_or_else(|| "–".into());
    match c.serving {
        Some(d) => format!("{} (LISTEN {listen})", secs(d)),
        None => format!("> timeout (LISTEN {listen})"),
    }
}

/// Valid staples of tried, and what else happened.
fn staples(h: &Handshakes) -> String {
    let mut s = format!("{}/{}", h.valid, h.tried);
    if h.invalid > 0 {
        let _ = write!(s, ", {} invalid", h.invalid);
    }
    if h.errors > 0 {
        let _ = write!(s, ", {} errors", h.errors);
    }
    s
}

fn first_cell(h: &Handshakes) -> String {
    format!("{}; p50 {}, max {}", staples(h), ms(percentile(&h.latencies, 0.5)), ms(percentile(&h.latencies, 1.0)))
}

fn sweep_cell(h: &Handshakes) -> String {
    format!("{} in {:.1} s", staples(h), h.elapsed.as_secs_f64())
}

fn all_cell(a: &AllStapled) -> String {
    match a {
        AllStapled::NotApplicable(why) => why.to_string(),
        AllStapled::Reached(d) => secs(*d),
        AllStapled::TimedOut(got) => format!("> timeout ({got} fetched)"),
    }
}

fn load_cell(l: &Load) -> String {
    format!("{}/s, {} in flight, {} requests", l.peak_per_second, l.max_in_flight, l.requests)
}

fn next_cell(n: &NextRound) -> String {
    match n {
        NextRound::NotMeasured(why) => why.clone(),
        NextRound::Measured(r) => {
            let mut s = format!(
                "{} s (p5–p95 {} s), peak {}/s, {} in flight; refetched {}–{} s after the first (median {})",
                r.span, r.span_p5_p95, r.peak_per_second, r.max_in_flight, r.after.0, r.after.2, r.after.1
            );
            if r.renewed < r.n {
                let _ = write!(s, "; only {}/{} refetched", r.renewed, r.n);
            }
            if r.most_fetches > 2 {
                let _ = write!(s, "; one certificate fetched {} times", r.most_fetches);
            }
            s
        }
    }
}

/// `bytes` in MiB, or in KiB below one MiB.
fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}

fn region_cell(r: &Region) -> String {
    let mut s = r.bytes.map(size).unwrap_or_else(|| "not found".into());
    if let Some(slots) = r.slots {
        let _ = write!(s, ", {slots} slots");
    }
    if let Some(u) = r.in_use {
        let _ = write!(s, ", {} in responses", size(u));
    }
    if let Some(res) = r.resident_kib {
        let _ = write!(s, ", {} resident", size(res * 1024));
    }
    s.push_str(if r.from_json { " (status JSON)" } else { " (smaps)" });
    s
}

/// One table: a row per N, a column per server, `f` for each cell that did not fail.
fn table(o: &mut String, title: &str, set: &Settings, cells: &[Cell], f: &dyn Fn(&Cell) -> String) {
    let _ = writeln!(o, "\n### {title}\n");
    let _ = write!(o, "| N |");
    for k in &set.servers {
        let _ = write!(o, " {} |", k.label());
    }
    let _ = write!(o, "\n|---:|");
    for _ in &set.servers {
        let _ = write!(o, "---|");
    }
    o.push('\n');
    for &n in &set.ns {
        if !cells.iter().any(|c| c.n == n) {
            continue;
        }
        let _ = write!(o, "| {n} |");
        for &k in &set.servers {
            let cell = match cells.iter().find(|c| c.n == n && c.kind == k) {
                None => "…".to_string(),
                Some(c) if c.failed.is_some() => "failed".to_string(),
                Some(c) => f(c),
            };
            let _ = write!(o, " {} |", cell.replace('|', "/"));
        }
        o.push('\n');
    }
}

fn report(set: &Settings, cells: &[Cell], machine: &[(String, String)], took: Duration) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# mod_stapling scale benchmark\n");
    intro(&mut o, set);
    table(&mut o, "Start → serving (first completed TLS handshake; port in LISTEN)", set, cells, &serving_cell);
    table(&mut o, "First handshakes right after serving: valid staples / sampled; latency", set, cells, &|c| {
        first_cell(&c.first)
    });
    table(&mut o, "Start → all stapled (responder answered every certificate)", set, cells, &|c| all_cell(&c.all));
    table(&mut o, "Sweep (one handshake per vhost, after the above): valid staples / vhosts", set, cells, &|c| {
        sweep_cell(&c.sweep)
    });
    table(
        &mut o,
        "Responder load until the end of the sweep: peak requests/s, most in flight, total",
        set,
        cells,
        &|c| load_cell(&c.load),
    );
    table(&mut o, "Next refresh round: span of the second fetches, peak, delay after the first", set, cells, &|c| {
        next_cell(&c.next)
    });
    memory_tables(&mut o, set, cells);
    if set.servers.contains(&Kind::Stapling) {
        region_table(&mut o, set, cells);
    }
    problems(&mut o, cells);
    let _ = writeln!(o, "\n## Machine\n");
    for (k, v) in machine {
        let _ = writeln!(o, "- {k}: {v}");
    }
    let _ = writeln!(o, "- settings: {}", set.line());
    let _ = writeln!(o, "- total run time: {:.0} s", took.as_secs_f64());
    o
}

fn intro(o: &mut String, set: &Settings) {
    let _ = writeln!(
        o,
        "Same Apache binary on loopback, event MPM, {} children × 4 threads. N certificates (ECDSA P-256, \
         each its own serial), one name-based SNI vhost each (the first is the default vhost); a fresh \
         ServerRoot per run (no stored responses, empty caches). One local OCSP responder (the test \
         fixture), answering `good` after {} s, responses valid for {} s from thisUpdate = now. \
         mod_ssl: `SSLUseStapling on` in every vhost, `SSLStaplingCache shmcb` of 1 MB per 500 certificates; \
         mod_md: `MDStapling on` + `MDStapleOthers on`; mod_stapling: `Stapling on` in every vhost and \
         defaults otherwise: at most 20 requests a second and 4 in flight per responder host \
         (`StaplingResponderRate`), renew window 50% (renewal 40–50% of the validity after the fetch, \
         with jitter), a first handshake waits up to 1 s (`StaplingStartupWait`) for a certificate's first response.\n",
        set.children, set.delay, set.validity
    );
    let _ = writeln!(
        o,
        "\"lazy\": mod_ssl fetches a response only inside a handshake that asks for it, and never in the \
         background. \"All stapled\" is when the responder's log shows an answer for every certificate's \
         serial (the sweep confirms it). The first-handshake sample is every vhost up to {} of them, \
         else {} spread over 1..N, {} client threads; staples are verified (signature, certificate, good, current). \
         Memory is Pss after the sweep. The next round is measured from the responder's log (1 s \
         resolution) for the servers that refresh by themselves{}.",
        set.sample,
        set.sample,
        set.clients,
        if set.next_round { format!(", N ≥ {}", set.next_round_min_n) } else { " (off in this run)".into() }
    );
}

fn memory_tables(o: &mut String, set: &Settings, cells: &[Cell]) {
    let none = |n: usize| cells.iter().find(|c| c.n == n && c.kind == Kind::None).and_then(|c| c.mem);
    table(o, "Memory: Pss of all processes (parent + children); added over none", set, cells, &|c| match c.mem {
        None => "–".into(),
        Some(m) => match none(c.n) {
            Some(b) if c.kind != Kind::None => format!("{} ({:+.1} MiB)", mib(m.total), (m.total - b.total) / 1024.0),
            _ => mib(m.total),
        },
    });
    table(o, "Memory: Pss of the parent; Pss per child (mean), of which private", set, cells, &|c| match c.mem {
        None => "–".into(),
        Some(m) => {
            format!("{}; {} × {} ({} private)", mib(m.parent), mib(m.child_mean), m.children, mib(m.child_private_mean))
        }
    });
}

fn region_table(o: &mut String, set: &Settings, cells: &[Cell]) {
    let _ = writeln!(o, "\n### mod_stapling's shared region (size, slots, bytes in responses, resident)\n");
    let _ = writeln!(o, "| N | shared region |\n|---:|---|");
    for &n in &set.ns {
        if let Some(c) = cells.iter().find(|c| c.n == n && c.kind == Kind::Stapling) {
            let cell = match (&c.failed, &c.region) {
                (Some(_), _) => "failed".into(),
                (None, Some(r)) => region_cell(r),
                (None, None) => "–".into(),
            };
            let _ = writeln!(o, "| {n} | {cell} |");
        }
    }
}

/// Failures, client errors, and vhosts the sweep found without a valid staple where
/// one was expected (the first handshakes may legitimately come too early).
fn problems(o: &mut String, cells: &[Cell]) {
    let mut lines = Vec::new();
    for c in cells {
        let who = format!("N={} {}", c.n, c.kind.label());
        if let Some(f) = &c.failed {
            lines.push(format!("- {who}: failed: {f}"));
            continue;
        }
        for (what, h) in [("first handshakes", &c.first), ("sweep", &c.sweep)] {
            if let Some(e) = &h.first_error {
                lines.push(format!("- {who}, {what}: {} client errors, first: {e}", h.errors));
            }
        }
        if c.kind.staples() && c.sweep.valid < c.sweep.tried {
            lines.push(format!("- {who}, sweep: no valid staple for e.g. {}", c.sweep.unstapled.join(", ")));
        }
    }
    if !lines.is_empty() {
        let _ = writeln!(o, "\n## Problems\n");
        for l in lines {
            let _ = writeln!(o, "{l}");
        }
    }
}
