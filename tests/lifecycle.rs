//! The module across the server's life: graceful restarts (memory, leaks), stop and
//! graceful with a fetch in flight, a responder that never answers, and a startup
//! helper that dies. These are the acceptance tests of the lifecycle issue (see
//! DESIGN.md, "What running it like production taught us").

mod common;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// These tests measure time and memory, so they run one at a time, not beside each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fixture whose responder also answers "good" for the leaves the tests issue.
fn fixture(initial: &str) -> Fixture {
    let s = Fixture::new(initial);
    s.responder.set("unknown_serials=good");
    s
}

/// Options with the default vhost (leaf) plus one SNI vhost per leaf, all with
/// `Stapling on` and `extra` inside.
fn opts_with_leaves(pki: &Pki, leaves: &[Leaf], mpm: Mpm, children: u32, extra: &str) -> ApacheOptions {
    let mut o = ApacheOptions::for_pki(pki);
    o.mpm = mpm;
    o.children = children;
    let port = free_port();
    o.port = Some(port);
    let vhost = format!("Stapling on\n{extra}");
    o.vhost_conf = vhost.clone();
    o.extra_vhosts = sni_vhosts(port, leaves, &vhost);
    o
}

fn assert_good(r: &StapleResult, what: &str) {
    assert!(r.stapled && r.cert_status.as_deref() == Some("good"), "{what}: no good staple:\n{}", r.raw);
}

// ---------------------------------------------------------------------------
// 1. memory of the parent over graceful restarts
// ---------------------------------------------------------------------------

#[test]
fn graceful_restarts_do_not_grow_the_parent() {
    let _serial = one_at_a_time();
    const WARMUP: u32 = 5;
    const MEASURED: u32 = 30;
    let s = fixture("mode=good");
    let leaves = issue_leaves(&s.pki, "site", 50);
    let apache = Apache::start(opts_with_leaves(&s.pki, &leaves, Mpm::Prefork, 2, "StaplingResponderTimeout 5\n"))
        .expect("apache");
    let ca = s.pki.path("root.crt");
    // 51 certificates at StaplingResponderRate's 20 a second: all stapled within seconds.
    let all_fetched = wait_until(Duration::from_secs(20), || s.responder.requests() >= 51);
    assert!(all_fetched, "{} of 51 fetched", s.responder.requests());
    assert_good(&handshake_sni(apache.port(), &leaves[0].server_name, &ca), "before the restarts");

    for _ in 0..WARMUP {
        apache.graceful();
    }
    let parent = apache.pid();
    let before = vm_rss_kb(parent).expect("VmRSS");
    let started = Instant::now();
    for _ in 0..MEASURED {
        apache.graceful();
    }
    let after = vm_rss_kb(parent).expect("VmRSS");
    let per_restart = (after as f64 - before as f64) / MEASURED as f64;
    eprintln!(
        "parent VmRSS: {before} KiB after {WARMUP} warm-up restarts, {after} KiB after {MEASURED} more \
         ({per_restart:.1} KiB per graceful restart, 51 certificates; {:.1}s for the restarts)",
        started.elapsed().as_secs_f64()
    );
    for l in [&leaves[0], &leaves[24], &leaves[49]] {
        assert_good(&handshake_sni(apache.port(), &l.server_name, &ca), &format!("{} at the end", l.server_name));
    }
    assert_good(&s.staple(&apache), "default vhost at the end");
    assert!(
        per_restart <= 2.0,
        "the parent grew by {per_restart:.1} KiB per graceful restart ({before} -> {after} KiB over {MEASURED} \
         restarts with 51 certificates); at most 2 KiB allowed"
    );
}

// ---------------------------------------------------------------------------
// 2. valgrind: no definite leak from the module in the parent
// ---------------------------------------------------------------------------

/// Apache in the foreground under valgrind; killed by PID (and every process of its
/// ServerRoot) on drop.
struct ValgrindApache {
    child: Child,
    root: PathBuf,
}

impl ValgrindApache {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn error_log(&self) -> String {
        fs::read_to_string(self.root.join("logs/error_log")).unwrap_or_default()
    }

    fn resuming(&self) -> usize {
        self.error_log().matches(RESUMING).count()
    }

    /// Waits for the process to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> bool {
        wait_until(timeout, || matches!(self.child.try_wait(), Ok(Some(_))))
    }
}

impl Drop for ValgrindApache {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            send_signal(self.child.id(), "TERM");
            if !self.wait_exit(Duration::from_secs(60)) {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
        for p in server_root_processes(&self.root) {
            send_signal(p, "KILL");
        }
        if std::thread::panicking() {
            eprintln!("===== Apache error_log (valgrind run) =====\n{}===== end =====", self.error_log());
        }
    }
}

/// Valgrind records (a first line for which `starts` holds, then its stack up to the
/// next blank line), without the "==PID== " prefix.
fn valgrind_records(log: &str, starts: impl Fn(&str) -> bool) -> Vec<String> {
    let mut records = Vec::new();
    let mut cur: Option<String> = None;
    for line in log.lines() {
        let body = line.strip_prefix("==").and_then(|rest| rest.split_once("== ")).map_or(line, |(_, b)| b);
        if let Some(r) = cur.as_mut() {
            if body.trim().is_empty() {
                records.push(cur.take().unwrap());
            } else {
                r.push_str(body);
                r.push('\n');
            }
            continue;
        }
        if starts(body) {
            cur = Some(format!("{body}\n"));
        }
    }
    records.extend(cur);
    records
}

/// Loss records ("N bytes in M blocks are definitely lost ...") with their stacks.
fn definitely_lost_records(log: &str) -> Vec<String> {
    valgrind_records(log, |body| body.contains("are definitely lost in loss record"))
}

/// Memcheck error records (invalid reads and writes, uninitialised values, bad frees)
/// with their stacks.
fn memcheck_error_records(log: &str) -> Vec<String> {
    const STARTS: [&str; 8] = [
        "Invalid read",
        "Invalid write",
        "Invalid free",
        "Mismatched free",
        "uninitialised",
        "Syscall param",
        "Source and destination overlap",
        "Argument 'size' of function",
    ];
    valgrind_records(log, |body| STARTS.iter().any(|s| body.contains(s)))
}

fn mentions_module(record: &str) -> bool {
    ["mod_stapling", "libmod_stapling", "stapling_rs_", "stapling_shim_"].iter().any(|m| record.contains(m))
}

/// Every process valgrind followed (the parent, the startup helpers, the children that
/// fetched and handshook) is free of memcheck errors with the module on the stack.
fn assert_no_memcheck_errors_from_the_module(root: &std::path::Path) {
    let logs: Vec<PathBuf> = fs::read_dir(root.join("logs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("valgrind.")))
        .collect();
    assert!(logs.len() >= 3, "expected logs of the parent, helper and children: {logs:?}");
    let mut ours = Vec::new();
    for path in &logs {
        let log = fs::read_to_string(path).unwrap_or_default();
        let errors = memcheck_error_records(&log);
        eprintln!("{}: {} memcheck error records", path.display(), errors.len());
        ours.extend(errors.into_iter().filter(|r| mentions_module(r)).map(|r| format!("{}:\n{r}", path.display())));
    }
    assert!(ours.is_empty(), "memcheck errors with mod_stapling on the stack:\n{}", ours.join("\n"));
}

#[test]
fn valgrind_finds_no_leak_from_the_module_over_graceful_restarts() {
    let _serial = one_at_a_time();
    const RESTARTS: usize = 4;
    if Command::new("valgrind").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        let out = run_with_timeout(
            Command::new("bash").arg(manifest_dir().join("scripts/deps.sh")),
            Duration::from_secs(600),
        );
        assert!(out.success(), "scripts/deps.sh failed (needed for valgrind):\n{}", out.combined());
    }
    let s = fixture("mode=good");
    let leaves = issue_leaves(&s.pki, "site", 5);
    let tmp = tempfile::Builder::new().prefix("stapling-valgrind.").tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let mut o = opts_with_leaves(&s.pki, &leaves, Mpm::Prefork, 1, "StaplingResponderTimeout 20\n");
    o.server_root = Some(root.clone());
    let (port, apache) = prepare_server_root(&root, &o);
    let vg_log = root.join("logs/valgrind.%p.log");
    let mut cmd = Command::new("valgrind");
    cmd.args([
        "--tool=memcheck",
        "--leak-check=full",
        "--show-leak-kinds=definite",
        "--keep-debuginfo=yes",
        "--trace-children=no",
        "--num-callers=50",
    ])
    .arg(format!("--log-file={}", vg_log.display()))
    .arg(apache.get_program())
    .args(apache.get_args())
    .arg("-DFOREGROUND")
    .env_clear()
    // Its own process group: in the foreground, Apache signals its whole group at
    // stop and restart, which would otherwise include this test process.
    .process_group(0)
    .current_dir(&root)
    .stdin(Stdio::null())
    .stdout(Stdio::from(fs::File::create(root.join("logs/stdout")).unwrap()))
    .stderr(Stdio::from(fs::File::create(root.join("logs/stderr")).unwrap()));
    for (k, v) in apache.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let started = Instant::now();
    let mut vg = ValgrindApache { child: cmd.spawn().expect("valgrind"), root: root.clone() };
    let pid = vg.pid();
    let timeout = Duration::from_secs(180);
    assert!(wait_until(timeout, || vg.resuming() >= 1), "not ready under valgrind within {timeout:?}");
    eprintln!("ready under valgrind after {:.1}s", started.elapsed().as_secs_f64());
    for i in 1..=RESTARTS {
        let t = Instant::now();
        send_signal(pid, "USR1");
        assert!(wait_until(timeout, || vg.resuming() > i), "graceful restart {i} not done within {timeout:?}");
        eprintln!("graceful restart {i} under valgrind took {:.1}s", t.elapsed().as_secs_f64());
        // Handshakes in the (valgrind'ed) children of each generation.
        let r = handshake_sni(port, &leaves[i % leaves.len()].server_name, &s.pki.path("root.crt"));
        assert_good(&r, &format!("handshake after graceful restart {i} under valgrind"));
    }
    let r = handshake_sni(port, &leaves[0].server_name, &s.pki.path("root.crt"));
    assert_good(&r, "after the restarts under valgrind");
    send_signal(pid, "TERM");
    assert!(vg.wait_exit(Duration::from_secs(300)), "valgrind'ed Apache did not exit within 300 s of SIGTERM");
    eprintln!("whole valgrind run: {:.1}s", started.elapsed().as_secs_f64());

    assert_no_memcheck_errors_from_the_module(&root);
    let log_path = root.join(format!("logs/valgrind.{pid}.log"));
    let log = fs::read_to_string(&log_path).unwrap_or_else(|e| panic!("{}: {e}", log_path.display()));
    let summary: String = log
        .lines()
        .skip_while(|l| !l.contains("LEAK SUMMARY"))
        .take(7)
        .chain(log.lines().filter(|l| l.contains("ERROR SUMMARY")))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("valgrind (parent, pid {pid}):\n{summary}");
    let records = definitely_lost_records(&log);
    let ours: Vec<&String> = records.iter().filter(|r| mentions_module(r)).collect();
    eprintln!("{} definitely-lost records in the parent, {} of them from mod_stapling", records.len(), ours.len());
    assert!(
        log.contains("LEAK SUMMARY") || log.contains("All heap blocks were freed"),
        "no leak check in {}:\n{log}",
        log_path.display()
    );
    let ours_bytes: u64 = ours
        .iter()
        .filter_map(|r| r.split_whitespace().next().map(|n| n.replace(',', "")).and_then(|n| n.parse::<u64>().ok()))
        .sum();
    assert!(
        ours.is_empty(),
        "valgrind: {} definitely-lost records ({ours_bytes} bytes, indirect included) with mod_stapling on the stack after {RESTARTS} \
         graceful restarts; the first ones:\n{}",
        ours.len(),
        ours.iter().take(3).map(|r| r.as_str()).collect::<Vec<_>>().join("\n")
    );
}

// ---------------------------------------------------------------------------
// 3. stop and graceful with a fetch in flight
// ---------------------------------------------------------------------------

/// A server whose refresher (in one child) is inside a fetch that the responder will
/// answer only after 30 s, with StaplingResponderTimeout 60.
fn server_with_a_fetch_in_flight() -> (Fixture, Apache) {
    // validity=80: nextUpdate 20 s after the fetch, so the renew schedule asks again
    // after 5 s (see tests/refresh.rs).
    let s = Fixture::new("mode=good&validity=80");
    let mut o = ApacheOptions::for_pki(&s.pki);
    o.children = 2;
    o.vhost_conf = "Stapling on\nStaplingResponderTimeout 60\n".into();
    let apache = Apache::start(o).expect("apache");
    assert_good(&s.staple(&apache), "first staple");
    let first = s.responder.requests();
    s.responder.set("delay=30");
    assert!(
        s.responder.wait_requests(first + 1, Duration::from_secs(20)),
        "no refresh request within 20 s:\n{}",
        apache.error_log()
    );
    // The request is counted before the responder starts sleeping: the fetch is now
    // in flight and stays so for 30 s.
    std::thread::sleep(Duration::from_millis(300));
    (s, apache)
}

#[test]
fn stop_with_a_slow_responder_is_prompt() {
    let _serial = one_at_a_time();
    let (_s, mut apache) = server_with_a_fetch_in_flight();
    let parent = apache.pid();
    let t = Instant::now();
    let out = apache.k_command("stop");
    let returned = t.elapsed();
    assert!(out.success(), "apache2 -k stop: {}", out.combined());
    let gone = wait_until(Duration::from_secs(40), || !process_alive(parent));
    let took = t.elapsed();
    let log = apache.error_log();
    let slow_lines: Vec<&str> = log.lines().filter(|l| l.contains("AH00045") || l.contains("AH00046")).collect();
    eprintln!(
        "apache2 -k stop returned after {:.2}s; parent gone after {:.2}s; AH00045/AH00046 lines: {}",
        returned.as_secs_f64(),
        took.as_secs_f64(),
        slow_lines.len()
    );
    assert!(gone, "the parent is still running 40 s after apache2 -k stop");
    assert!(
        took <= Duration::from_secs(3) && slow_lines.is_empty(),
        "stop with a fetch in flight took {:.2}s (at most 3 s allowed); the parent had to insist:\n{}",
        took.as_secs_f64(),
        slow_lines.join("\n")
    );
}

#[test]
fn graceful_restart_with_a_slow_responder_is_prompt() {
    let _serial = one_at_a_time();
    let (_s, mut apache) = server_with_a_fetch_in_flight();
    let old = apache.child_pids();
    assert!(!old.is_empty());
    let t = Instant::now();
    let out = apache.k_command("graceful");
    assert!(out.success(), "apache2 -k graceful: {}", out.combined());
    let mut exited: Vec<(u32, f64)> = Vec::new();
    let gone = wait_until(Duration::from_secs(40), || {
        for &p in &old {
            if !process_alive(p) && !exited.iter().any(|e| e.0 == p) {
                exited.push((p, t.elapsed().as_secs_f64()));
            }
        }
        exited.len() == old.len()
    });
    let took = t.elapsed();
    let each: Vec<String> = exited.iter().map(|(p, s)| format!("{p} after {s:.2}s")).collect();
    eprintln!("old children gone after apache2 -k graceful: {}", each.join(", "));
    assert!(gone, "old children {old:?} still running 40 s after apache2 -k graceful");
    assert!(
        took <= Duration::from_secs(3),
        "graceful restart with a fetch in flight: the old children took {:.2}s to exit (at most 3 s allowed): {}",
        took.as_secs_f64(),
        each.join(", ")
    );
    assert!(apache.wait_log_count(RESUMING, 2, Duration::from_secs(70)), "no new generation");
}

// ---------------------------------------------------------------------------
// 4. a black-holed responder and a graceful reload
// ---------------------------------------------------------------------------

/// What a client saw around one graceful reload.
struct Reload {
    /// Longest time without a successful handshake, from 1 s before the reload to the
    /// end of the window (a gap still open at the end counts), and when it began
    /// relative to the reload (negative: before).
    gap: Duration,
    gap_start: f64,
    /// Successful handshakes after the reload.
    after: usize,
    /// When the last old-generation child was gone, if within the window.
    old_gone: Option<Duration>,
    old: Vec<u32>,
    last_err: String,
}

/// Plain TLS handshakes in a loop (SNI cycling through `names`) while
/// `apache2 -k graceful` runs, for `window` after it.
fn handshakes_across_a_graceful(apache: &mut Apache, names: &[String], window: Duration) -> Reload {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let port = apache.port();
    let names = names.to_vec();
    let stop = Arc::new(AtomicBool::new(false));
    let successes = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let client = {
        let (stop, successes) = (Arc::clone(&stop), Arc::clone(&successes));
        std::thread::spawn(move || {
            let mut i = 0;
            let mut last_err = String::new();
            while !stop.load(Ordering::Relaxed) {
                match tls_handshake(port, &names[i % names.len()], Duration::from_secs(3)) {
                    Ok(()) => successes.lock().unwrap().push(Instant::now()),
                    Err(e) => {
                        last_err = e;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                i += 1;
            }
            last_err
        })
    };
    let stop_client = |stop: &AtomicBool| {
        stop.store(true, Ordering::Relaxed);
    };
    // Handshakes work before the reload.
    let warm = wait_until(Duration::from_secs(10), || successes.lock().unwrap().len() >= 5);
    if !warm {
        stop_client(&stop);
        let err = client.join().unwrap();
        panic!("no handshakes before the reload: {err}");
    }
    std::thread::sleep(Duration::from_secs(1));
    let old = apache.child_pids();
    let graceful_at = Instant::now();
    let out = apache.k_command("graceful");
    // Watch the old generation for the whole window (not longer: with the current
    // code it may take minutes).
    let mut old_gone = None;
    wait_until(window, || {
        if old_gone.is_none() && old.iter().all(|&p| !process_alive(p)) {
            old_gone = Some(graceful_at.elapsed());
        }
        false
    });
    stop_client(&stop);
    let end = Instant::now();
    let last_err = client.join().unwrap();
    assert!(out.success(), "apache2 -k graceful: {}", out.combined());

    let times = successes.lock().unwrap().clone();
    let from = graceful_at - Duration::from_secs(1);
    let mut prev = times.iter().copied().rfind(|&t| t <= from).unwrap_or(from);
    let (mut gap, mut gap_start) = (Duration::ZERO, 0.0);
    for &t in times.iter().filter(|&&t| t > from).chain(std::iter::once(&end)) {
        if t - prev > gap {
            gap = t - prev;
            gap_start = if prev >= graceful_at {
                (prev - graceful_at).as_secs_f64()
            } else {
                -(graceful_at - prev).as_secs_f64()
            };
        }
        prev = t;
    }
    let after = times.iter().filter(|&&t| t > graceful_at).count();
    Reload { gap, gap_start, after, old_gone, old, last_err }
}

#[test]
fn black_holed_responder_does_not_block_a_graceful_reload() {
    let _serial = one_at_a_time();
    const CERTS: usize = 300;
    const WINDOW: Duration = Duration::from_secs(15);
    let hole = BlackHole::start(free_port());
    let pki = Pki::temp(&ocsp_url(hole.port));
    let leaves = issue_leaves(&pki, "site", CERTS);
    let o = opts_with_leaves(&pki, &leaves, Mpm::Event, 2, "StaplingResponderTimeout 10\n");
    let t = Instant::now();
    let mut apache = Apache::start(o).expect("apache");
    eprintln!(
        "start with {} certificates and a black-holed responder took {:.1}s",
        CERTS + 1,
        t.elapsed().as_secs_f64()
    );
    let names: Vec<String> = leaves.iter().map(|l| l.server_name.clone()).collect();
    let r = handshakes_across_a_graceful(&mut apache, &names, WINDOW);
    eprintln!(
        "black hole: {} handshakes after the reload; longest gap {:.2}s (starting {:.2}s after the graceful); \
         old children gone after {}; responder connections accepted: {}",
        r.after,
        r.gap.as_secs_f64(),
        r.gap_start,
        secs_or_more(r.old_gone, WINDOW),
        hole.accepted()
    );
    assert!(
        r.gap <= Duration::from_secs(2),
        "no successful handshake for {:.2}s around a graceful reload with a black-holed responder (at most 2 s \
         allowed); last client error: {}",
        r.gap.as_secs_f64(),
        r.last_err
    );
    assert!(
        r.old_gone.is_some_and(|d| d <= Duration::from_secs(5)),
        "old-generation children {:?} took {} to exit after the graceful (at most 5 s allowed)",
        r.old,
        secs_or_more(r.old_gone, WINDOW)
    );
}

/// "1.23s", or "more than 15s" when it did not happen within `limit`.
fn secs_or_more(d: Option<Duration>, limit: Duration) -> String {
    match d {
        Some(d) => format!("{:.2}s", d.as_secs_f64()),
        None => format!("more than {}s", limit.as_secs()),
    }
}

// ---------------------------------------------------------------------------
// 5. a startup helper killed mid-fetch
// ---------------------------------------------------------------------------

#[test]
fn killed_startup_helper_leaves_no_lease_behind() {
    let _serial = one_at_a_time();
    let s = Fixture::new("mode=good&delay=30");
    let mut o = ApacheOptions::for_pki(&s.pki);
    o.vhost_conf = "Stapling on\nStaplingResponderTimeout 40\n".into();
    let mut apache = Apache::begin_start(o).expect("apache2 -k start");
    assert!(
        s.responder.wait_requests(1, Duration::from_secs(20)),
        "the startup helper did not ask the responder within 20 s:\n{}",
        apache.error_log()
    );
    s.responder.set("delay=0");
    let helper = apache.startup_helper_pid().unwrap_or_else(|| {
        panic!("no startup helper found; processes of the ServerRoot: {:?}", apache.server_processes())
    });
    let comm = process_comm(helper).unwrap_or_default();
    send_signal(helper, "KILL");
    let killed_at = Instant::now();
    apache.wait_started().expect("Apache ready after the helper was killed");
    let ready_after = killed_at.elapsed();

    let ca = s.pki.path("root.crt");
    let mut tries = 0;
    let stapled = wait_until(Duration::from_secs(60), || {
        tries += 1;
        let r = s_client_status(apache.port(), &ca, None);
        let good = r.stapled && r.cert_status.as_deref() == Some("good");
        if !good {
            std::thread::sleep(Duration::from_millis(150));
        }
        good
    });
    let took = killed_at.elapsed();
    eprintln!(
        "startup helper {helper} (comm {comm:?}) killed; server ready {:.2}s later; first good staple {:.2}s \
         after the kill ({tries} handshakes)",
        ready_after.as_secs_f64(),
        took.as_secs_f64()
    );
    assert!(stapled, "no good staple within 60 s of killing the startup helper:\n{}", apache.error_log());
    assert!(
        took <= Duration::from_secs(5),
        "the first good staple came {:.2}s after the startup helper was killed (at most 5 s allowed)",
        took.as_secs_f64()
    );
}

#[test]
fn memcheck_error_records_are_recognised() {
    let log = "==7== Memcheck\n==7== \n==7== Invalid read of size 8\n==7==    at 0x1: stapling_rs_ocsp_get_resp (hooks.rs:1)\n\
               ==7== \n==7== Conditional jump or move depends on uninitialised value(s)\n==7==    at 0x2: ssl_x (mod_ssl.so)\n==7== \n";
    let records = memcheck_error_records(log);
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(mentions_module(&records[0]) && !mentions_module(&records[1]));
}
