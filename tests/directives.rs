//! Numeric directives at the edges of their ranges, through a real `apache2 -t` and a
//! real start: the largest value in range passes, one beyond fails with one line that
//! names the directive and the range, and in-range extremes still staple. (mod_ssl's
//! twins take whatever mod_ssl takes, clamped with a warn line: tests/reach.rs.)

mod common;

use common::*;

/// Every numeric directive of ours with the largest value in range, one just beyond, and the
/// text of its range as the error line gives it.
const NUMERIC: &[(&str, &str, &str, &str)] = &[
    ("StaplingResponderTimeout", "300", "301", "from 1 to 300"),
    ("StaplingResponseTimeSkew", "2592000", "2592001", "from 0 to 2592000 (30 days)"),
    ("StaplingResponseMaxAge", "2592000", "2592001", "-1 (no limit) or a whole number of seconds from 1 to 2592000"),
    ("StaplingRenewWindow", "99%", "100%", "from 1% to 99% or a whole number of seconds from 1 to 2592000"),
    ("StaplingRenewWindow", "2592000", "2592001", "from 1% to 99% or a whole number of seconds from 1 to 2592000"),
    (
        "StaplingCache",
        "shmcb:stapling(68719476736)",
        "shmcb:stapling(68719476737)",
        "from 8192 to 68719476736 (64 GiB)",
    ),
];

/// Runs `apache2 -t` on `line` and asserts it fails with exactly one line naming
/// `name`, which also names `value` and `range`.
fn assert_refused(line: &str, name: &str, value: &str, range: &str) {
    let (ok, out) = apachectl_test(line);
    assert!(!ok, "{line}: the config test passed:\n{out}");
    let naming: Vec<&str> = out.lines().filter(|l| l.contains(name)).collect();
    assert_eq!(naming.len(), 1, "{line}: one line names {name}:\n{out}");
    let msg = naming[0];
    assert!(msg.starts_with(&format!("{name}: ")), "{line}: {msg}");
    assert!(msg.contains(range) && msg.contains(&format!("'{value}'")), "{line}: names range and value: {msg}");
    assert!(out.lines().filter(|l| !l.trim().is_empty()).count() <= 2, "{line}: nothing else:\n{out}");
}

#[test]
fn the_largest_value_in_range_passes_the_config_test() {
    for (name, max, _, _) in NUMERIC {
        let (ok, out) = apachectl_test(&format!("{name} {max}\n"));
        assert!(ok, "{name} {max}:\n{out}");
    }
}

#[test]
fn a_value_just_beyond_the_range_fails_with_one_line() {
    for (name, _, beyond, range) in NUMERIC {
        let value = beyond.to_string();
        assert_refused(&format!("{name} {beyond}\n"), name, &value, range);
    }
}

#[test]
fn huge_negative_signed_spaced_and_suffixed_numbers_fail_with_one_line() {
    let range = "from 0 to 2592000 (30 days)";
    for value in ["9223372036854775807", "18446744073709551615", "-5", "+5", " 5", "5s", "0x10"] {
        let line = format!("StaplingResponseTimeSkew \"{value}\"\n");
        assert_refused(&line, "StaplingResponseTimeSkew", value, range);
    }
    // An empty value never reaches the module: Apache refuses it, naming the directive.
    let (ok, out) = apachectl_test("StaplingResponseTimeSkew \"\"\n");
    assert!(!ok && out.lines().filter(|l| l.starts_with("StaplingResponseTimeSkew ")).count() == 1, "{out}");
    let max_age = "-1 (no limit) or a whole number of seconds from 1 to 2592000";
    assert_refused(
        "StaplingResponseMaxAge 9223372036854775807\n",
        "StaplingResponseMaxAge",
        "9223372036854775807",
        max_age,
    );
    let window = "from 1% to 99%";
    let huge = "18446744073709551615";
    assert_refused(&format!("StaplingRenewWindow {huge}\n"), "StaplingRenewWindow", huge, window);
}

/// Starts Apache with `global` and `vhost` lines and asserts a verified good staple,
/// with nothing rejected on the way.
fn assert_staples(fx: &Fixture, global: &str, vhost: &str) -> Apache {
    let mut opts = ApacheOptions::for_pki(&fx.pki);
    opts.global_conf = global.into();
    opts.vhost_conf = vhost.into();
    let apache = Apache::start(opts).expect("apache");
    let r = fx.staple(&apache);
    assert!(r.stapled && r.verify_ok, "{global}{vhost}: no verified staple:\n{}\n{}", r.raw, apache.error_log());
    assert_eq!(r.cert_status.as_deref(), Some("good"));
    assert!(!apache.error_log().contains("rejected"), "{}", apache.error_log());
    apache
}

/// Seconds from now to the "next refresh at <date> UTC" of the first published response.
fn next_refresh_secs(apache: &Apache) -> i64 {
    let log = apache.error_log();
    let after = log.split("next refresh at ").nth(1).unwrap_or_else(|| panic!("no refresh line:\n{log}"));
    let date = after.get(..23).unwrap_or_else(|| panic!("{after}"));
    let out = std::process::Command::new("date").args(["-u", "-d", date, "+%s"]).output().unwrap();
    let at: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("{date}"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    at - now
}

#[test]
fn the_upper_extremes_staple_and_refresh_an_hour_later() {
    let fx = Fixture::openssl();
    let apache = assert_staples(
        &fx,
        "",
        "Stapling on\nStaplingResponderTimeout 300\nStaplingResponseTimeSkew 2592000\n\
         StaplingResponseMaxAge 2592000\nStaplingRenewWindow 99%\n",
    );
    // 99% of a one-day response is already due: the next fetch comes an hour later.
    let next = next_refresh_secs(&apache);
    assert!((3300..=3600).contains(&next), "next refresh in {next}s");
}

#[test]
fn the_upper_extremes_of_the_mod_ssl_twins_staple() {
    let fx = Fixture::openssl();
    assert_staples(
        &fx,
        "SSLStaplingCache shmcb:ssl_stapling(65536)\n",
        "SSLUseStapling on\nSSLStaplingResponderTimeout 300\nSSLStaplingResponseTimeSkew 2592000\n\
         SSLStaplingResponseMaxAge 2592000\nStaplingRenewWindow 2592000\n",
    );
}

#[test]
fn the_lower_extremes_staple() {
    let fx = Fixture::openssl();
    let apache = assert_staples(
        &fx,
        "",
        "Stapling on\nStaplingResponderTimeout 1\nStaplingResponseTimeSkew 0\n\
         StaplingResponseMaxAge -1\nStaplingRenewWindow 1%\n",
    );
    // 1% of a day before nextUpdate (less up to a fifth of that as spread).
    let next = next_refresh_secs(&apache);
    assert!((86_400 - 864 - 173 - 60..=86_400 - 864 + 5).contains(&next), "next refresh in {next}s");
}
