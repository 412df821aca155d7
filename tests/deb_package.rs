//! The Debian package, as an admin uses it: `scripts/package-deb.sh` builds it, `dpkg -i`
//! installs and enables it on a Debian 12 with Debian's apache2, Apache staples from a real
//! responder, an upgrade with a graceful reload keeps stapling without asking the responder
//! again, `dpkg -r` disables it and leaves a config that still passes `apachectl -t`, and
//! `dpkg --purge` removes the response store. And lintian finds no errors in it.
//!
//! Nothing is installed on this machine: other tests use its /etc/apache2 and apache2 at the
//! same time. The package goes into a throwaway Debian 12 root made by `debootstrap` (minbase
//! plus apache2 and openssl), cached as a tarball in `target/pkgtest/`, unpacked afresh for
//! each run and entered with `chroot`. The chroot shares the loopback, so the responder and the
//! TLS client run here.

mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{free_port, handshake, ocsp_url, port_listening, run_with_timeout, wait_until, CmdOutput, Pki, Responder};

/// Bump when the base root needs other packages: the old tarball is then left unused.
const BASE_TARBALL: &str = "bookworm-minbase-apache2-v1.tar";
const PACKAGE: &str = "libapache2-mod-stapling";
const STORE: &str = "/var/cache/apache2/mod_stapling";

/// The cargo target directory this test binary was built into (target/release/deps/..).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

fn pkgtest_dir() -> PathBuf {
    let d = target_dir().join("pkgtest");
    fs::create_dir_all(&d).unwrap();
    d
}

fn must(out: CmdOutput, what: &str) -> String {
    assert!(out.success(), "{what} failed:\n{}", out.combined());
    out.combined()
}

/// `scripts/package-deb.sh` for the module under test (`common::module_path`), so nothing is
/// compiled here. `version`: DEB_VERSION, or None for the changelog's. Built once per version.
fn build_deb(version: Option<&str>) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let key = version.unwrap_or("").to_string();
    if let Some(p) = built.get_or_insert_with(HashMap::new).get(&key) {
        return p.clone();
    }
    let mut cmd = Command::new(common::manifest_dir().join("scripts/package-deb.sh"));
    cmd.env("MOD_STAPLING_SO", common::module_path()).env("CARGO_TARGET_DIR", target_dir());
    if let Some(v) = version {
        cmd.env("DEB_VERSION", v);
    }
    let out = run_with_timeout(&mut cmd, Duration::from_secs(300));
    assert!(out.success(), "scripts/package-deb.sh failed:\n{}", out.combined());
    let deb = PathBuf::from(out.stdout.trim());
    assert!(deb.is_file(), "package-deb.sh printed {:?}, which is no file:\n{}", out.stdout, out.stderr);
    assert!(deb.starts_with(target_dir().join("debian")), "the .deb belongs under target/debian/: {deb:?}");
    built.as_mut().unwrap().insert(key, deb.clone());
    deb
}

fn deb_field(deb: &Path, field: &str) -> String {
    let out = run_with_timeout(Command::new("dpkg-deb").arg("-f").arg(deb).arg(field), Duration::from_secs(30));
    must(out, "dpkg-deb -f").trim().to_string()
}

/// The cached tarball of a Debian 12 root with apache2 and openssl, made with debootstrap on
/// first use (about a minute), with a policy-rc.d that keeps maintainer scripts from starting
/// services (each run replaces it, see [`Chroot::new`]).
fn base_tarball() -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let tar = pkgtest_dir().join(BASE_TARBALL);
    if tar.is_file() {
        return tar;
    }
    let dir = pkgtest_dir().join("debootstrap.tmp");
    remove_tree(&dir);
    let mirror = std::env::var("DEBOOTSTRAP_MIRROR").unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let started = Instant::now();
    let out = run_with_timeout(
        Command::new("debootstrap")
            .args(["--variant=minbase", "--include=apache2,openssl", "bookworm"])
            .arg(&dir)
            .arg(&mirror),
        Duration::from_secs(900),
    );
    let log = fs::read_to_string(dir.join("debootstrap/debootstrap.log")).unwrap_or_default();
    assert!(out.success(), "debootstrap failed (is scripts/deps.sh run?):\n{}\n{log}", out.combined());
    eprintln!("debootstrap of the test root took {:.1} s", started.elapsed().as_secs_f64());
    fs::write(dir.join("usr/sbin/policy-rc.d"), "#!/bin/sh\n# No services are started in this test root.\nexit 101\n")
        .unwrap();
    fs::set_permissions(dir.join("usr/sbin/policy-rc.d"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    must(
        run_with_timeout(Command::new("chroot").arg(&dir).args(["apt-get", "clean"]), Duration::from_secs(60)),
        "apt-get clean",
    );
    let part = tar.with_extension("tar.part");
    let out = run_with_timeout(
        Command::new("tar").arg("--numeric-owner").arg("-C").arg(&dir).arg("-cf").arg(&part).arg("."),
        Duration::from_secs(300),
    );
    must(out, "tar of the test root");
    fs::rename(&part, &tar).unwrap();
    remove_tree(&dir);
    tar
}

/// Paths mounted at or below `dir`, from /proc/self/mountinfo.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().filter_map(|l| l.split(' ').nth(4).map(PathBuf::from)).filter(|m| m.starts_with(dir)).collect()
}

/// `rm -rf --one-file-system`, and only if nothing is mounted inside.
fn remove_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let mounted = mounts_under(dir);
    if !mounted.is_empty() {
        eprintln!("not removing {}: still mounted there: {mounted:?}", dir.display());
        return;
    }
    let _ = Command::new("rm").arg("-rf").arg("--one-file-system").arg(dir).status();
}

/// A throwaway Debian root, unpacked from the base tarball, with /proc mounted. Dropping it
/// stops what runs inside (by PID), unmounts /proc and removes the tree, also on a panic.
struct Chroot {
    dir: PathBuf,
}

impl Chroot {
    fn new(tar: &Path) -> Chroot {
        let dir = pkgtest_dir().join(format!("root.{}", std::process::id()));
        remove_tree(&dir);
        fs::create_dir_all(&dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        // From here on, Drop cleans up whatever happens.
        let root = Chroot { dir };
        let out = run_with_timeout(
            Command::new("tar").arg("--numeric-owner").arg("-C").arg(&root.dir).arg("-xf").arg(tar),
            Duration::from_secs(300),
        );
        must(out, "unpacking the test root");
        let out = run_with_timeout(
            Command::new("mount").args(["-t", "proc", "proc"]).arg(root.dir.join("proc")),
            Duration::from_secs(30),
        );
        must(out, "mount proc");
        // Maintainer scripts may reload Apache (`invoke-rc.d apache2 reload`, as the package's
        // do), nothing else: no restart, no other service.
        fs::write(
            root.path("/usr/sbin/policy-rc.d"),
            "#!/bin/sh\n[ \"$1\" = apache2 ] && [ \"$2\" = reload ] && exit 0\nexit 101\n",
        )
        .unwrap();
        root
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p.trim_start_matches('/'))
    }

    fn run(&self, script: &str) -> CmdOutput {
        run_with_timeout(
            Command::new("chroot")
                .arg(&self.dir)
                .args(["/bin/sh", "-c", script])
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("LANG", "C")
                .env("DEBIAN_FRONTEND", "noninteractive"),
            Duration::from_secs(120),
        )
    }

    /// Runs `script` in the root and returns its output; panics with it if it fails.
    fn ok(&self, script: &str) -> String {
        let out = self.run(script);
        assert!(out.success(), "in the test root, `{script}` failed:\n{}\n{}", out.combined(), self.error_log());
        out.combined()
    }

    fn error_log(&self) -> String {
        let log = fs::read_to_string(self.path("/var/log/apache2/error.log")).unwrap_or_default();
        format!("--- error.log of the test root ---\n{log}")
    }

    fn log_count(&self, needle: &str) -> usize {
        fs::read_to_string(self.path("/var/log/apache2/error.log")).unwrap_or_default().matches(needle).count()
    }

    /// PIDs of the processes whose root is this tree.
    fn processes(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if fs::read_link(e.path().join("root")).map(|r| r == self.dir).unwrap_or(false) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Runs `script`, which must make Apache reload gracefully, and waits until it has.
    fn reloads(&self, script: &str) -> String {
        let before = self.log_count(common::RESUMING);
        let out = self.ok(script);
        assert!(
            wait_until(Duration::from_secs(30), || self.log_count(common::RESUMING) > before),
            "`{script}` did not reload Apache gracefully:\n{out}\n{}",
            self.error_log()
        );
        out
    }

    fn stop_apache(&self) {
        let _ = self.run("apache2ctl stop");
        wait_until(Duration::from_secs(15), || self.processes().is_empty());
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.error_log());
        }
        if !self.processes().is_empty() {
            self.stop_apache();
        }
        for pid in self.processes() {
            common::send_signal(pid, "KILL");
        }
        wait_until(Duration::from_secs(5), || self.processes().is_empty());
        let proc_dir = self.dir.join("proc");
        if !mounts_under(&proc_dir).is_empty() {
            let ok = Command::new("umount").arg(&proc_dir).status().map(|s| s.success()).unwrap_or(false);
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&proc_dir).status();
            }
        }
        remove_tree(&self.dir);
    }
}

fn dpkg_status(root: &Chroot) -> String {
    root.run(&format!("dpkg-query -W -f='${{Status}} ${{Version}}' {PACKAGE}")).stdout
}

#[test]
fn deb_installs_enables_staples_upgrades_and_removes_cleanly() {
    let started = Instant::now();
    let v1 = build_deb(None);
    let version1 = deb_field(&v1, "Version");
    // Always newer than the changelog's version.
    let version2 = format!("{version1}+upgrade1");
    let v2 = build_deb(Some(&version2));
    let depends = deb_field(&v1, "Depends");
    for d in ["apache2-api-20120211", "libssl3", "apache2-bin (>= 2.4.48)"] {
        assert!(depends.contains(d), "Depends lacks {d}: {depends}");
    }
    let built = started.elapsed();

    let tar = base_tarball();
    let root = Chroot::new(&tar);
    let unpacked = started.elapsed();
    fs::copy(&v1, root.path("/tmp/v1.deb")).unwrap();
    fs::copy(&v2, root.path("/tmp/v2.deb")).unwrap();

    // Install: the module, its load/conf files as conffiles, enabled (with ssl, which it needs).
    root.ok("dpkg -i /tmp/v1.deb");
    assert!(dpkg_status(&root).starts_with("install ok installed"), "{}", dpkg_status(&root));
    for m in ["stapling.load", "stapling.conf", "ssl.load"] {
        let link = root.path(&format!("/etc/apache2/mods-enabled/{m}"));
        assert!(link.symlink_metadata().is_ok(), "installing did not enable {m}");
    }
    let conffiles = root.ok(&format!("dpkg-query -W -f='${{Conffiles}}' {PACKAGE}"));
    for f in ["/etc/apache2/mods-available/stapling.load", "/etc/apache2/mods-available/stapling.conf"] {
        assert!(conffiles.contains(f), "{f} is no conffile: {conffiles}");
    }
    let so = root.path("/usr/lib/apache2/modules/mod_stapling.so");
    let sections = run_with_timeout(Command::new("readelf").args(["-S", "-W"]).arg(&so), Duration::from_secs(30));
    let sections = must(sections, "readelf");
    assert!(!sections.contains(".debug_info"), "mod_stapling.so is not stripped");
    let so_size = fs::metadata(&so).unwrap().size();

    // A vhost that staples, with the module's lines inside <IfModule stapling_module>.
    let rport = free_port();
    let port = free_port();
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(pki_dir.path(), &ocsp_url(rport));
    let responder = Responder::fixture(&pki, rport);
    fs::create_dir_all(root.path("/etc/ssl/stapling-test")).unwrap();
    for f in ["leaf-chain.crt", "leaf.key"] {
        fs::copy(pki.path(f), root.path(&format!("/etc/ssl/stapling-test/{f}"))).unwrap();
    }
    fs::write(root.path("/etc/apache2/ports.conf"), format!("Listen 127.0.0.1:{port}\n")).unwrap();
    fs::write(
        root.path("/etc/apache2/sites-available/stapling-test.conf"),
        format!(
            "<VirtualHost 127.0.0.1:{port}>\n    ServerName localhost\n    SSLEngine on\n    \
             SSLCertificateFile /etc/ssl/stapling-test/leaf-chain.crt\n    \
             SSLCertificateKeyFile /etc/ssl/stapling-test/leaf.key\n    \
             <IfModule stapling_module>\n        Stapling on\n        LogLevel stapling:info\n    \
             </IfModule>\n</VirtualHost>\n"
        ),
    )
    .unwrap();
    root.ok("a2dissite -q 000-default && a2ensite -q stapling-test");
    let t = root.ok("apache2ctl -t");
    assert!(t.contains("Syntax OK"), "{t}");
    let modules = root.ok("apache2ctl -M");
    assert!(modules.contains("stapling_module"), "the installed package does not load the module:\n{modules}");

    root.ok("apache2ctl start");
    assert!(
        wait_until(Duration::from_secs(30), || port_listening(port)),
        "Apache in the test root did not listen on {port}\n{}",
        root.error_log()
    );
    let cafile = pki.path("root.crt");
    let first = handshake(port, &cafile, None);
    assert!(first.stapled, "no staple from the packaged module:\n{}\n{}", first.raw, root.error_log());
    assert_eq!(first.cert_status.as_deref(), Some("good"), "{}", first.raw);
    let store = root.path(STORE);
    let stored = || {
        fs::read_dir(&store).into_iter().flatten().flatten().any(|e| e.path().extension().is_some_and(|x| x == "der"))
    };
    assert!(wait_until(Duration::from_secs(10), stored), "no response in the store {STORE}\n{}", root.error_log());

    // Upgrade to the newer package, which reloads Apache gracefully: the store and the shared
    // memory carry over, so the same response is stapled and the responder is not asked again.
    let requests = responder.requests();
    let so_inode = fs::metadata(&so).unwrap().ino();
    root.reloads("dpkg -i /tmp/v2.deb");
    let status = dpkg_status(&root);
    assert_eq!(status, format!("install ok installed {version2}"));
    assert_ne!(fs::metadata(&so).unwrap().ino(), so_inode, "the upgrade did not replace mod_stapling.so");
    assert!(root.path("/etc/apache2/mods-enabled/stapling.load").symlink_metadata().is_ok(), "upgrade disabled it");
    let after = handshake(port, &cafile, None);
    assert!(after.stapled, "no staple after the upgrade:\n{}\n{}", after.raw, root.error_log());
    assert_eq!(after.der(), first.der(), "the upgrade changed the stapled response");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(responder.requests(), requests, "the upgrade made a new responder request\n{}", root.error_log());

    // Removal: disabled, the module gone, and Apache reloaded gracefully: the vhost passes the
    // config test and serves without a staple. The conffiles and the store stay until purge.
    root.reloads(&format!("dpkg -r {PACKAGE}"));
    assert!(
        root.path("/etc/apache2/mods-enabled/stapling.load").symlink_metadata().is_err(),
        "dpkg -r left it enabled"
    );
    assert!(!so.exists(), "dpkg -r left mod_stapling.so");
    assert!(root.path("/etc/apache2/mods-available/stapling.conf").exists(), "dpkg -r removed a conffile");
    let t = root.ok("apache2ctl -t");
    assert!(t.contains("Syntax OK"), "{t}");
    // Without the <IfModule> wrapper, the same line would break the config test.
    let bare = root.run(". /etc/apache2/envvars && apache2 -t -c 'Stapling on'");
    assert!(!bare.success() && bare.combined().contains("Stapling"), "{}", bare.combined());
    let plain = handshake(port, &cafile, None);
    assert!(!plain.stapled, "stapled after removal:\n{}", plain.raw);
    root.stop_apache();
    assert!(store.is_dir(), "dpkg -r removed the store");

    // Purge: the conffiles and the store go.
    root.ok(&format!("dpkg --purge {PACKAGE}"));
    assert!(!store.exists(), "dpkg --purge left {STORE}");
    assert!(!root.path("/etc/apache2/mods-available/stapling.conf").exists(), "dpkg --purge left stapling.conf");
    assert!(!dpkg_status(&root).contains("installed"), "{}", dpkg_status(&root));

    eprintln!(
        ".deb {} bytes, mod_stapling.so {so_size} bytes stripped; packages built in {:.1} s, \
         test root ready after {:.1} s, whole test {:.1} s",
        fs::metadata(&v1).unwrap().size(),
        built.as_secs_f64(),
        unpacked.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn lintian_reports_no_errors() {
    let deb = build_deb(None);
    let out = run_with_timeout(
        Command::new("lintian").arg("--info").arg("--display-info").arg(&deb),
        Duration::from_secs(300),
    );
    let text = out.combined();
    eprintln!("lintian {}:\n{text}", deb.display());
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty() && out.success(), "lintian reports errors:\n{text}");
}
