//! The disk store against an attacker with the server user's rights (issue #9): a
//! compromised web application runs as `www-data`, owns the store, and may own the
//! directory above it (RHEL's `/var/lib/httpd`). Root must never act on anything that
//! user can change.
//!
//! Each layout runs one Apache through three phases:
//! 1. a first start: every certificate stapled and stored;
//! 2. 40 graceful restarts while the attacker (tests/fixtures/store_attacker.py, as
//!    www-data) exchanges the store with a symbolic link to a root-owned victim directory
//!    (and, on RHEL, with a root-owned directory beside it) using
//!    `renameat2(RENAME_EXCHANGE)` as fast as it can, and a watcher polls the victims'
//!    owner, mode, link count and ctime;
//! 3. a full restart with the responder down, after planting a FIFO, a symbolic link, a
//!    hard link and a root-owned file as `<key>.der` (each a valid response for its
//!    certificate, so reading one would staple it).
//!
//! The victims keep owner, mode, content and ctime; no restart is slow; nothing planted is
//! stapled; every planted entry is refused, logged and deleted, and the one honest file
//! is still stapled from disk.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::{chown, symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const RESTARTS: usize = 40;
const SERVER_USER: &str = "www-data";
/// Longest acceptable graceful restart or start (the helper waits at most 0.5 s at a
/// restart; a FIFO that blocked it would cost the responder timeout, 3 s, plus 2 s).
const SLOW: Duration = Duration::from_secs(4);

/// The attacker spins a core and the tests time restarts: one layout at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// ServerRoot /etc/httpd with `state -> ../../var/lib/httpd`, which belongs to the
    /// server user (0700): the store's parent is the attacker's.
    Rhel,
    /// The store under a root-owned directory (ServerRoot here).
    Debian,
}

#[test]
fn rhel_layout_store_parent_owned_by_the_server_user() {
    attack(Layout::Rhel);
}

#[test]
fn debian_layout_store_parent_owned_by_root() {
    attack(Layout::Debian);
}

// ---------------------------------------------------------------------------
// the directories
// ---------------------------------------------------------------------------

fn server_user_ids() -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id").arg(flag).arg(SERVER_USER).output().expect("id");
        String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().expect("the server user exists")
    };
    (id("-u"), id("-g"))
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A file name that looks like a stored response (so the victims look like a store).
fn fake_name(byte: char) -> String {
    format!("{}.der", byte.to_string().repeat(40))
}

/// Where everything of one run lives, under one temporary directory.
struct Site {
    server_root: PathBuf,
    /// The store, and a directory the attacker can write (for its decoy link).
    store: PathBuf,
    attacker_dir: PathBuf,
    /// Root's directory outside the store's reach (0755, files 0644).
    victim: PathBuf,
    /// RHEL: root's directory beside the store, in the server user's directory.
    beside: Option<PathBuf>,
}

impl Site {
    fn new(top: &Path, layout: Layout) -> Site {
        let (uid, gid) = server_user_ids();
        set_mode(top, 0o755);
        let server_root = top.join("etc/httpd");
        fs::create_dir_all(&server_root).unwrap();
        set_mode(&top.join("etc"), 0o755);
        set_mode(&server_root, 0o755);
        let victim = top.join("victim");
        fs::create_dir(&victim).unwrap();
        set_mode(&victim, 0o755);
        root_file(&victim.join(fake_name('a')), b"root's own file\n");
        match layout {
            Layout::Rhel => {
                let lib = top.join("var/lib/httpd");
                fs::create_dir_all(&lib).unwrap();
                set_mode(&top.join("var"), 0o755);
                set_mode(&top.join("var/lib"), 0o755);
                chown(&lib, Some(uid), Some(gid)).unwrap();
                set_mode(&lib, 0o700);
                symlink("../../var/lib/httpd", server_root.join("state")).unwrap();
                let beside = lib.join("victim-beside");
                fs::create_dir(&beside).unwrap();
                set_mode(&beside, 0o755);
                root_file(&beside.join(fake_name('b')), b"root's file beside the store\n");
                Site { store: lib.join("mod_stapling"), attacker_dir: lib, victim, beside: Some(beside), server_root }
            }
            Layout::Debian => {
                // The harness makes ServerRoot/var the server user's.
                let attacker_dir = server_root.join("var");
                fs::create_dir(&attacker_dir).unwrap();
                chown(&attacker_dir, Some(uid), Some(gid)).unwrap();
                Site { store: server_root.join("stapling"), attacker_dir, victim, beside: None, server_root }
            }
        }
    }

    fn stored(&self, name: &str) -> PathBuf {
        self.store.join(name)
    }
}

fn root_file(path: &Path, content: &[u8]) {
    fs::write(path, content).unwrap();
    set_mode(path, 0o644);
}

/// `<sha1 of the certificate>.der`, the store's name for the first certificate in `chain`.
fn store_name(chain: &Path) -> String {
    let cert = openssl::x509::X509::from_pem(&fs::read(chain).unwrap()).unwrap();
    let digest = openssl::sha::sha1(&cert.to_der().unwrap());
    format!("{}.der", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

// ---------------------------------------------------------------------------
// the attacker and the watcher
// ---------------------------------------------------------------------------

/// `store_attacker.py ARGS`, run as the server user.
fn as_server_user() -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={SERVER_USER}"))
        .arg(format!("--regid={SERVER_USER}"))
        .arg("--clear-groups")
        .arg("/usr/bin/python3")
        .arg(manifest_dir().join("tests/fixtures/store_attacker.py"))
        .current_dir("/");
    cmd
}

/// The exchange loop, running until [`Attacker::finish`]; killed (by pid) on drop.
struct Attacker {
    child: Child,
    stop: PathBuf,
    out: PathBuf,
}

impl Attacker {
    fn start(scratch: &Path, links: &[(PathBuf, PathBuf)], pairs: &[(PathBuf, PathBuf)]) -> Attacker {
        let (stop, out) = (scratch.join("attacker.stop"), scratch.join("attacker.out"));
        let mut cmd = as_server_user();
        cmd.arg("swap").arg(&stop);
        for (link, target) in links {
            cmd.arg(format!("{}={}", link.display(), target.display()));
        }
        cmd.arg("--");
        for (a, b) in pairs {
            cmd.arg(format!("{}:{}", a.display(), b.display()));
        }
        let log = File::create(&out).unwrap();
        cmd.stdin(Stdio::null()).stdout(Stdio::from(log.try_clone().unwrap())).stderr(Stdio::from(log));
        let child = cmd.spawn().expect("start the attacker");
        Attacker { child, stop, out }
    }

    /// Stops the loop (it exchanges back what it left swapped) and returns its counts.
    fn finish(mut self) -> String {
        File::create(&self.stop).unwrap();
        let ended = wait_until(Duration::from_secs(20), || matches!(self.child.try_wait(), Ok(Some(_))));
        assert!(ended, "the attacker did not stop");
        fs::read_to_string(&self.out).unwrap()
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `"key": N` in the attacker's JSON line.
fn count(report: &str, key: &str) -> u64 {
    let pat = format!("\"{key}\": ");
    let at = report.find(&pat).unwrap_or_else(|| panic!("no {key} in {report:?}")) + pat.len();
    report[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
}

/// Plants `path` (removing what is there) as the server user; true if it could.
fn plant(kind: &str, path: &Path, target: Option<&Path>) -> bool {
    let _ = fs::remove_file(path);
    let mut cmd = as_server_user();
    cmd.arg("plant").arg(kind).arg(path);
    if let Some(t) = target {
        cmd.arg(t);
    }
    let out = run_with_timeout(&mut cmd, Duration::from_secs(10));
    match out.stdout.trim() {
        "planted" => true,
        s if s.starts_with("refused") => false,
        _ => panic!("plant {kind} {}: {}", path.display(), out.combined()),
    }
}

/// What must not change about a victim, read on an open descriptor (so it follows the
/// inode wherever the attacker renames it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    uid: u32,
    gid: u32,
    mode: u32,
    nlink: u64,
    ctime: Option<(i64, i64)>,
}

struct Victim {
    name: String,
    file: File,
    /// Whether ctime must stay (not for a directory the attacker itself renames).
    ctime: bool,
    before: Shape,
    content: Option<Vec<u8>>,
}

impl Victim {
    fn new(path: &Path, ctime: bool) -> Victim {
        let file = File::open(path).unwrap();
        let content = file.metadata().unwrap().is_file().then(|| fs::read(path).unwrap());
        let mut v = Victim { name: path.display().to_string(), file, ctime, before: Shape::none(), content };
        v.before = v.shape();
        v
    }

    fn shape(&self) -> Shape {
        let m = self.file.metadata().unwrap();
        Shape {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode(),
            nlink: m.nlink(),
            ctime: self.ctime.then(|| (m.ctime(), m.ctime_nsec())),
        }
    }

    /// What changed since it was first seen, if anything.
    fn change(&self) -> Option<String> {
        let now = self.shape();
        if now != self.before {
            return Some(format!("{}: {:?} became {:?}", self.name, self.before, now));
        }
        let content = self.content.as_ref()?;
        let mut buf = vec![0u8; content.len() + 1];
        let n = self.file.read_at(&mut buf, 0).unwrap();
        (&buf[..n] != content.as_slice()).then(|| format!("{}: content changed", self.name))
    }
}

impl Shape {
    fn none() -> Shape {
        Shape { uid: 0, gid: 0, mode: 0, nlink: 0, ctime: None }
    }
}

/// Polls the victims until stopped; returns every change seen (at most one per victim).
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<String>, u64)>,
}

impl Watcher {
    fn start(victims: Vec<Victim>) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut changes, mut polls) = (Vec::new(), 0u64);
            while !flag.load(Ordering::Relaxed) {
                for v in &victims {
                    if let Some(c) = v.change() {
                        if !changes.iter().any(|seen: &String| seen.starts_with(&v.name)) {
                            changes.push(c);
                        }
                    }
                }
                polls += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            for v in &victims {
                if !changes.iter().any(|seen| seen.starts_with(&v.name)) {
                    changes.extend(v.change());
                }
            }
            (changes, polls)
        });
        Watcher { stop, thread }
    }

    fn finish(self) -> (Vec<String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

// ---------------------------------------------------------------------------
// the run
// ---------------------------------------------------------------------------

fn good(r: &StapleResult) -> bool {
    r.stapled && r.cert_status.as_deref() == Some("good") && r.verify_ok
}

fn attack(layout: Layout) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let top = tempfile::Builder::new().prefix("stapling-hardening.").tempdir().unwrap();
    let site = Site::new(top.path(), layout);
    let s = Fixture::new("mode=good");
    s.responder.set("unknown_serials=good");
    let leaves = issue_leaves(&s.pki, "plant", 4);
    let mut o = ApacheOptions::for_pki(&s.pki);
    o.server_root = Some(site.server_root.clone());
    o.children = 1;
    let port = free_port();
    o.port = Some(port);
    o.vhost_conf = "Stapling on\nStaplingResponderTimeout 3\n".into();
    o.extra_vhosts = sni_vhosts(port, &leaves, &o.vhost_conf);
    let started = Instant::now();
    let mut apache = Apache::start(o).expect("apache");
    eprintln!("{layout:?}: first start {:.2}s", started.elapsed().as_secs_f64());
    let ca = s.pki.path("root.crt");
    let mut names: Vec<String> = leaves.iter().map(|l| l.server_name.clone()).collect();
    names.push("localhost".into());
    for n in &names {
        let r = handshake_sni(apache.port(), n, &ca);
        assert!(good(&r), "{layout:?}: {n} not stapled at the first start:\n{}", r.raw);
    }
    first_start_checks(layout, &site, &apache, &leaves);

    // Valid responses, as root's files in the victim directory: the planted link and
    // hard link of phase 3 point at them.
    root_file(&site.victim.join(fake_name('d')), &fs::read(site.stored(&store_name(&leaves[1].chain))).unwrap());
    root_file(&site.victim.join(fake_name('e')), &fs::read(site.stored(&store_name(&leaves[2].chain))).unwrap());

    swap_during_restarts(layout, &site, &apache, &s, top.path());
    plant_and_restart(layout, &site, &mut apache, &s, &leaves);
}

fn first_start_checks(layout: Layout, site: &Site, apache: &Apache, leaves: &[Leaf]) {
    let (uid, _) = server_user_ids();
    let store = fs::symlink_metadata(&site.store).expect("the store exists");
    assert!(store.is_dir() && store.uid() == uid && store.mode() & 0o777 == 0o700, "{layout:?}: {store:?}");
    for l in leaves {
        let f = fs::symlink_metadata(site.stored(&store_name(&l.chain))).expect("stored");
        assert_eq!((f.uid(), f.mode() & 0o777, f.nlink()), (uid, 0o600, 1));
    }
    let log = apache.error_log();
    let deferred = log.contains("root leaves it alone");
    assert_eq!(deferred, layout == Layout::Rhel, "{layout:?}: who made the store?\n{log}");
}

fn swap_during_restarts(layout: Layout, site: &Site, apache: &Apache, s: &Fixture, scratch: &Path) {
    let decoy = site.attacker_dir.join("decoy");
    let mut links = vec![(decoy.clone(), site.victim.clone())];
    let mut pairs = vec![(site.store.clone(), decoy)];
    let mut victims = vec![
        Victim::new(&site.victim, true),
        Victim::new(&site.victim.join(fake_name('a')), true),
        Victim::new(&site.victim.join(fake_name('d')), true),
    ];
    match &site.beside {
        Some(beside) => {
            pairs.push((site.store.clone(), beside.clone()));
            victims.push(Victim::new(beside, false)); // its ctime moves with every exchange
            victims.push(Victim::new(&beside.join(fake_name('b')), true));
        }
        None => {
            // The store itself is out of reach here: swap a stored file with a link instead.
            let stored = site.stored(&store_name(&s.pki.path("leaf-chain.crt")));
            let tmp_like = site.store.join(format!(".{}.1.tmp", "c".repeat(40)));
            links.push((tmp_like.clone(), site.victim.join(fake_name('a'))));
            pairs.push((stored, tmp_like));
        }
    }
    let logged_before = apache.error_log().len();
    let watcher = Watcher::start(victims);
    let attacker = Attacker::start(scratch, &links, &pairs);
    std::thread::sleep(Duration::from_millis(300));
    let mut times = Vec::with_capacity(RESTARTS);
    for i in 0..RESTARTS {
        let t = Instant::now();
        apache.graceful();
        times.push(t.elapsed());
        let r = s.staple(apache);
        assert!(good(&r), "{layout:?}: restart {}: no good staple:\n{}", i + 1, r.raw);
    }
    let report = attacker.finish();
    let (changes, polls) = watcher.finish();
    eprintln!("{layout:?}: restart times {:.2?}", times);
    times.sort();
    // Restarts at which the helper found something else than the store at its name.
    let refused = apache.error_log()[logged_before..].matches("responses are not kept on disk").count();
    eprintln!(
        "{layout:?}: {RESTARTS} graceful restarts under attack: median {:.2}s, longest {:.2}s; attacker: {}; \
         the helper refused a swapped store at {refused} restarts; watcher: {polls} polls, {} changes",
        times[RESTARTS / 2].as_secs_f64(),
        times[RESTARTS - 1].as_secs_f64(),
        report.trim(),
        changes.len()
    );
    assert!(changes.is_empty(), "{layout:?}: the victims changed:\n{}", changes.join("\n"));
    assert!(times[RESTARTS - 1] < SLOW, "{layout:?}: a restart took {:?}", times[RESTARTS - 1]);
    assert!(count(&report, "rounds") > 0, "{report}");
    if layout == Layout::Rhel {
        assert!(count(&report, "exchanged") > 1000, "the attack ran: {report}");
    } else {
        assert!(report.contains("EACCES"), "the store's parent is root's: {report}");
    }
    let store = fs::symlink_metadata(&site.store).unwrap();
    assert!(store.is_dir() && store.uid() == server_user_ids().0, "{layout:?}: the store is back");
}

fn plant_and_restart(layout: Layout, site: &Site, apache: &mut Apache, s: &Fixture, leaves: &[Leaf]) {
    apache.stop();
    s.responder.set("mode=http500");
    let keys: Vec<String> = leaves.iter().map(|l| store_name(&l.chain)).collect();
    let (link_target, hard_target) = (site.victim.join(fake_name('d')), site.victim.join(fake_name('e')));
    let victims = [Victim::new(&link_target, true), Victim::new(&hard_target, false)];
    assert!(plant("fifo", &site.stored(&keys[0]), None));
    assert!(plant("symlink", &site.stored(&keys[1]), Some(&link_target)));
    if !plant("hardlink", &site.stored(&keys[2]), Some(&hard_target)) {
        // fs.protected_hardlinks=1 stops the server user; root plants it instead, as the
        // attacker could where that is 0.
        eprintln!("{layout:?}: fs.protected_hardlinks refused the server user's hard link; root plants it");
        fs::hard_link(&hard_target, site.stored(&keys[2])).unwrap();
    }
    // A file of root's (an admin's copy, say), valid and alone: not the server user's.
    let foreign = site.stored(&keys[3]);
    let valid = fs::read(&foreign).unwrap();
    fs::remove_file(&foreign).unwrap();
    root_file(&foreign, &valid);

    let t = Instant::now();
    apache.start_again();
    let startup = t.elapsed();
    eprintln!("{layout:?}: start with a FIFO, a link, a hard link and root's file planted: {startup:.2?}");
    assert!(startup < SLOW, "{layout:?}: start took {startup:?}:\n{}", apache.error_log());
    let ca = s.pki.path("root.crt");
    for l in leaves {
        let r = handshake_sni(apache.port(), &l.server_name, &ca);
        assert!(r.response_der_hex.is_none(), "{layout:?}: {} stapled a planted file:\n{}", l.server_name, r.raw);
    }
    assert!(good(&s.staple(apache)), "{layout:?}: the honest stored file is stapled");
    let log = apache.error_log();
    for (key, what) in keys.iter().zip(["a FIFO", "a symbolic link", "a hard link", "owned by uid 0"]) {
        let line = log.lines().find(|l| l.contains(key.as_str()) && l.contains("not used")).unwrap_or_else(|| {
            panic!("{layout:?}: no log line for {what} {key}:\n{log}");
        });
        assert!(line.contains("[stapling:warn]") && line.contains(what) && line.contains("deleted it"), "{line}");
        assert!(fs::symlink_metadata(site.stored(key)).is_err(), "{layout:?}: {what} deleted");
    }
    for v in &victims {
        assert_eq!(v.change(), None);
    }
    assert_eq!(fs::metadata(&hard_target).unwrap().nlink(), 1, "only the store's name for it went");

    // A full restart (a graceful one would keep the 30 s backoff of the failed fetches).
    s.responder.set("mode=good");
    apache.stop();
    apache.start_again();
    for l in leaves {
        let r = handshake_sni(apache.port(), &l.server_name, &ca);
        assert!(good(&r), "{layout:?}: {} stapled again once the responder is back:\n{}", l.server_name, r.raw);
    }
}
