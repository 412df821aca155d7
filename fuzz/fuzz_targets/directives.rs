//! Directive parsing: `ServerConfig::apply` with any name, value and context, then the
//! merge and the effective settings. The input is text, one directive a line:
//! `Name value`, where everything after the first space is the value as written (it
//! may be empty or hold spaces); a line that starts with `@` is inside <VirtualHost>.
//!
//! Checked: nothing panics; an error is one short line that starts with the directive's
//! name and escapes whatever came from the value; every accepted value lies inside its
//! documented range; and the schedule those settings give never wraps, whatever the
//! response's times.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mod_stapling::config::{Context, ServerConfig, MAX_CACHE_BYTES, MIN_CACHE_BYTES};
use mod_stapling::time::UnixTime;
use mod_stapling_fuzz::{check_plan, check_ranges, now};

/// Longest error line: the fixed text plus two shortened, escaped echoes.
const MAX_ERROR_BYTES: usize = 1200;

fn apply_line(main: &mut ServerConfig, vhost: &mut ServerConfig, line: &str) {
    let (cfg, ctx, line) = match line.strip_prefix('@') {
        Some(rest) => (vhost, Context::VirtualHost, rest),
        None => (main, Context::Global, line),
    };
    let (name, arg) = line.split_once(' ').unwrap_or((line, ""));
    if let Err(e) = cfg.apply(name, arg, ctx) {
        let msg = &e.0;
        assert!(msg.starts_with(name), "names the directive: {msg:?}");
        let rest = &msg[name.len()..];
        assert!(!rest.chars().any(char::is_control), "one line, control characters escaped: {msg:?}");
        assert!(msg.len() <= name.len() + MAX_ERROR_BYTES, "short: {} bytes", msg.len());
    }
}

/// Response times around the edges: ordinary, ASN.1's last second, and i64's ends.
const TIMES: [(i64, Option<i64>); 4] =
    [(0, Some(86_400)), (i64::MIN, Some(i64::MAX)), (253_402_300_000, Some(253_402_300_799)), (86_400, None)];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (mut main, mut vhost) = (ServerConfig::default(), ServerConfig::default());
    for line in text.split('\n') {
        apply_line(&mut main, &mut vhost, line);
    }
    if let Some(size) = main.cache_spec().and_then(|c| c.size) {
        assert!((MIN_CACHE_BYTES..=MAX_CACHE_BYTES).contains(&size), "cache size {size}");
    }
    let merged = ServerConfig::merge(&main, &vhost);
    for settings in [merged.effective(true), merged.effective(false), main.effective(true)] {
        check_ranges(&settings);
        for (this, next) in TIMES {
            let now = now();
            check_plan(UnixTime::from_secs(this), next.map(UnixTime::from_secs), &settings, now);
        }
    }
});
