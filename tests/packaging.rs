//! The Debian packaging path: `a2enmod stapling` on a copy of the system's /etc/apache2
//! enables ssl too and loads mod_stapling after mod_ssl, which compatibility mode needs.

mod common;

use std::fs;
use std::process::Command;

use common::module_path;

fn run_in_confdir(confdir: &std::path::Path, script: &str) -> (bool, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". {0}/envvars && mkdir -p \"$APACHE_RUN_DIR\" \"$APACHE_LOCK_DIR\" && {script}",
            confdir.display()
        ))
        .env("APACHE_CONFDIR", confdir)
        .output()
        .expect("bash");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a2enmod_stapling_enables_ssl_and_loads_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let confdir = tmp.path().join("apache2");
    let copied = Command::new("cp").arg("-a").arg("/etc/apache2").arg(&confdir).status().unwrap();
    assert!(copied.success());
    let repo = env!("CARGO_MANIFEST_DIR");
    let load = fs::read_to_string(format!("{repo}/apache-conf/stapling.load")).unwrap();
    assert!(load.lines().any(|l| l.trim() == "# Depends: ssl"), "a2enmod reads this line");
    let load = load.replace("/usr/lib/apache2/modules/mod_stapling.so", &module_path().display().to_string());
    fs::write(confdir.join("mods-available/stapling.load"), load).unwrap();
    fs::copy(format!("{repo}/apache-conf/stapling.conf"), confdir.join("mods-available/stapling.conf")).unwrap();

    let (ok, out) = run_in_confdir(&confdir, "a2enmod stapling");
    assert!(ok, "{out}");
    for m in ["ssl.load", "stapling.load", "stapling.conf"] {
        assert!(confdir.join("mods-enabled").join(m).exists(), "{m} enabled:\n{out}");
    }
    let c = confdir.display();
    let (ok, out) = run_in_confdir(&confdir, &format!("apache2 -d {c} -f {c}/apache2.conf -M"));
    assert!(ok, "{out}");
    let ssl = out.find("ssl_module").expect("ssl loaded");
    let stapling = out.find("stapling_module").expect("stapling loaded");
    assert!(ssl < stapling, "mod_stapling must load after mod_ssl:\n{out}");
    let (ok, out) = run_in_confdir(&confdir, &format!("apache2 -d {c} -f {c}/apache2.conf -t"));
    assert!(ok && out.contains("Syntax OK"), "{out}");
}

#[test]
fn rhel_conf_loads_the_module_and_passes_the_config_test() {
    // conf.modules.d/10-stapling.conf sorts after 00-ssl.conf; check its content works.
    let repo = env!("CARGO_MANIFEST_DIR");
    let conf = fs::read_to_string(format!("{repo}/apache-conf/10-stapling.conf")).unwrap();
    let conf = conf.replace("modules/mod_stapling.so", &module_path().display().to_string());
    let (ok, out) = common::apachectl_test(&conf.replace("LoadModule stapling_module", "#"));
    assert!(ok, "{out}");
}
