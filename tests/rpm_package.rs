//! The RPM: `scripts/package-rpm.sh` makes the source tarball and runs `rpmbuild -bb` on
//! packaging/rpm/mod_stapling.spec (Debian's rpm package), with the module under test as the
//! prebuilt .so. The package holds the RHEL paths, a config file and httpd's module ABI.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::run_with_timeout;

fn rpm_query(rpm: &PathBuf, args: &[&str]) -> String {
    let out = run_with_timeout(Command::new("rpm").arg("-qp").args(args).arg(rpm), Duration::from_secs(60));
    assert!(out.success(), "rpm -qp {args:?} failed:\n{}", out.combined());
    out.stdout
}

#[test]
fn rpmbuild_makes_a_package_with_the_rhel_layout() {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let out = run_with_timeout(
        Command::new(common::manifest_dir().join("scripts/package-rpm.sh"))
            .env("MOD_STAPLING_SO", common::module_path())
            .env("CARGO_TARGET_DIR", &target),
        Duration::from_secs(300),
    );
    assert!(out.success(), "scripts/package-rpm.sh failed:\n{}", out.combined());
    let rpm = PathBuf::from(out.stdout.trim());
    assert!(rpm.is_file() && rpm.starts_with(target.join("rpm")), "no .rpm at {:?}:\n{}", out.stdout, out.stderr);

    let files = rpm_query(&rpm, &["-l"]);
    for f in ["/usr/lib64/httpd/modules/mod_stapling.so", "/etc/httpd/conf.modules.d/10-stapling.conf"] {
        assert!(files.lines().any(|l| l == f), "{f} missing from the rpm:\n{files}");
    }
    let config = rpm_query(&rpm, &["-c"]);
    assert!(config.contains("/etc/httpd/conf.modules.d/10-stapling.conf"), "not a config file:\n{config}");

    let requires = rpm_query(&rpm, &["--requires"]);
    for r in ["httpd >= 2.4.48", "httpd-mmn = 20120211", "libssl.so.3", "mod_ssl"] {
        assert!(requires.contains(r), "Requires lacks {r}:\n{requires}");
    }

    // --dump: path size mtime digest mode owner group ...; the .so is stripped.
    let dump = rpm_query(&rpm, &["--dump"]);
    let so_size: u64 = dump
        .lines()
        .find(|l| l.starts_with("/usr/lib64/httpd/modules/mod_stapling.so "))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("mod_stapling.so in --dump");
    let built = fs::metadata(common::module_path()).unwrap().len();
    assert!(so_size * 2 < built, "the packaged .so ({so_size} bytes) is not stripped ({built} bytes built)");
    eprintln!("{}: {} bytes, mod_stapling.so {so_size} bytes", rpm.display(), fs::metadata(&rpm).unwrap().len());
}
