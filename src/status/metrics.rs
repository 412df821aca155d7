//! `?metrics`: Prometheus text exposition format 0.0.4. Each family has its HELP and
//! TYPE lines; per-certificate series carry `cert` (the subject) and `serial` labels.

use std::fmt::Write;

use super::{Row, Snapshot, VERSION};

/// A label value with `\`, `"` and line feeds escaped.
pub(crate) fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes one family: HELP, TYPE, then `name{labels} value` for each sample.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

fn cert_labels(row: &Row) -> String {
    format!("cert=\"{}\",serial=\"{}\"", label(&row.subject), label(&row.serial))
}

/// One sample per certificate for which `value` has one.
fn per_cert(s: &Snapshot, value: impl Fn(&Row) -> Option<String>) -> Vec<(String, String)> {
    s.rows.iter().filter_map(|r| value(r).map(|v| (cert_labels(r), v))).collect()
}

/// The whole exposition; with stapling off, the module's info and zero certificates.
pub(super) fn exposition(snapshot: Option<&Snapshot>) -> String {
    let mut out = String::new();
    let info = [(format!("version=\"{}\"", label(VERSION)), "1".to_string())];
    family(&mut out, "mod_stapling_info", "gauge", "The module's version.", &info);
    let counts: Vec<(String, String)> = ["good", "revoked", "none"]
        .iter()
        .map(|st| (format!("status=\"{st}\""), snapshot.map_or(0, |s| s.count(st)).to_string()))
        .collect();
    let help = "Certificates by the status of the response stapled now (none: nothing is stapled).";
    family(&mut out, "mod_stapling_certificates", "gauge", help, &counts);
    if let Some(s) = snapshot {
        per_certificate(&mut out, s);
    }
    out
}

fn per_certificate(out: &mut String, s: &Snapshot) {
    if let Some((tier, up)) = &s.fleet {
        let help = "1 if the fleet tier (StaplingCache memcache:/redis:) answers, else 0.";
        let value = [(format!("tier=\"{}\"", label(tier)), u8::from(*up).to_string())];
        family(out, "mod_stapling_fleet_up", "gauge", help, &value);
    }
    let help = "Bytes of the shared store's mapping (only the pages in use take memory).";
    family(out, "mod_stapling_shared_store_bytes", "gauge", help, &[(String::new(), s.store.bytes.to_string())]);
    let help = "Slots of the shared store that hold a certificate (a page each).";
    family(
        out,
        "mod_stapling_shared_store_slots_used",
        "gauge",
        help,
        &[(String::new(), s.store.slots_used.to_string())],
    );
    let started = [(String::new(), s.started.secs().to_string())];
    let help = "When this configuration generation started, in seconds since the epoch.";
    family(out, "mod_stapling_generation_start_time_seconds", "gauge", help, &started);
    let stapled = per_cert(s, |r| Some(u8::from(r.stapled(s.now)).to_string()));
    family(out, "mod_stapling_stapled", "gauge", "1 if a response is stapled now, else 0.", &stapled);
    let until = per_cert(s, |r| r.state.next_update.map(|t| s.now.seconds_until(t).to_string()));
    let help = "Seconds until the nextUpdate of the published response (negative once past).";
    family(out, "mod_stapling_seconds_until_next_update", "gauge", help, &until);
    let fetches = per_cert(s, |r| Some(r.state.fetches.to_string()));
    family(out, "mod_stapling_fetches_total", "counter", "Requests made to the OCSP responder.", &fetches);
    let failed = per_cert(s, |r| Some(r.state.failed_fetches.to_string()));
    let help = "Requests to the OCSP responder that failed (unreachable, an error, or an invalid response).";
    family(out, "mod_stapling_failed_fetches_total", "counter", help, &failed);
    let failures = per_cert(s, |r| Some(r.state.failures.to_string()));
    let help = "Consecutive failed requests to the responder (0 after a success).";
    family(out, "mod_stapling_consecutive_failures", "gauge", help, &failures);
    let ok = per_cert(s, |r| r.state.last_ok.map(|t| t.secs().to_string()));
    let help = "When the responder last gave a valid response, in seconds since the epoch.";
    family(out, "mod_stapling_last_success_timestamp_seconds", "gauge", help, &ok);
    let errors: Vec<(String, String)> = s
        .rows
        .iter()
        .filter_map(|r| {
            let (at, f) = r.state.last_error?;
            Some((format!("{},cause=\"{}\"", cert_labels(r), label(&f.to_string())), at.secs().to_string()))
        })
        .collect();
    let help = "When the last request to the responder failed, in seconds since the epoch, with its cause.";
    family(out, "mod_stapling_last_error_timestamp_seconds", "gauge", help, &errors);
}

#[cfg(test)]
mod tests {
    use super::super::tests::{snapshot, NOW};
    use super::*;

    /// A sample: name, labels, value.
    type Sample = (String, Vec<(String, String)>, f64);

    /// A strict reading of the 0.0.4 format: every sample belongs to the family whose
    /// TYPE came last, names and label names are valid, values parse as floats, and
    /// label values end where the escaping says.
    fn check(text: &str) -> Vec<Sample> {
        let mut family = String::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["gauge", "counter"].contains(&kind), "{line}");
                family = name.to_string();
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            samples.push(sample(line, &family));
        }
        samples
    }

    fn sample(line: &str, family: &str) -> Sample {
        let name: String = line.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        assert_eq!(name, family, "{line}");
        let mut rest = &line[name.len()..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            while !rest.starts_with('}') {
                let (key, r) = rest.split_once("=\"").expect(line);
                assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
                let (value, len) = unescape(r);
                labels.push((key.to_string(), value));
                rest = r[len + 1..].trim_start_matches(',');
            }
            rest = &rest[1..];
        }
        let value: f64 = rest.strip_prefix(' ').expect(line).parse().expect(line);
        (name, labels, value)
    }

    /// The value up to the closing quote, and its escaped length.
    fn unescape(r: &str) -> (String, usize) {
        let (mut value, mut chars) = (String::new(), r.char_indices());
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return (value, i),
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('n') => value.push('\n'),
                    Some(c @ ('\\' | '"')) => value.push(c),
                    other => panic!("bad escape {other:?} in {r}"),
                },
                '\n' => panic!("raw line feed in {r}"),
                c => value.push(c),
            }
        }
        panic!("unterminated label value in {r}")
    }

    #[test]
    fn exposition_is_well_formed_and_escaped() {
        let s = snapshot();
        let text = exposition(Some(&s));
        let samples = check(&text);
        let find = |name: &str, serial: &str| {
            samples
                .iter()
                .find(|(n, l, _)| n == name && l.iter().any(|(k, v)| k == "serial" && v == serial))
                .map(|(_, _, v)| *v)
        };
        assert_eq!(find("mod_stapling_stapled", "1001"), Some(1.0));
        assert_eq!(find("mod_stapling_stapled", "ABCD"), Some(0.0));
        assert_eq!(find("mod_stapling_seconds_until_next_update", "1001"), Some(3.0 * 86_400.0));
        assert_eq!(find("mod_stapling_seconds_until_next_update", "ABCD"), None);
        assert_eq!(find("mod_stapling_fetches_total", "ABCD"), Some(4.0));
        assert_eq!(find("mod_stapling_failed_fetches_total", "ABCD"), Some(1.0));
        assert_eq!(find("mod_stapling_last_error_timestamp_seconds", "ABCD"), Some((NOW - 5) as f64));
        let evil = samples.iter().find(|(n, l, _)| n == "mod_stapling_stapled" && l[1].1 == "ABCD").unwrap();
        assert_eq!(evil.1[0].1, s.rows[1].subject);
        let good = samples.iter().find(|(n, l, _)| n == "mod_stapling_certificates" && l[0].1 == "good");
        assert_eq!(good.map(|g| g.2), Some(1.0));
    }

    #[test]
    fn exposition_without_runtime() {
        let samples = check(&exposition(None));
        assert!(samples.iter().all(|(n, _, v)| n == "mod_stapling_info" || *v == 0.0));
        assert_eq!(samples.len(), 4);
    }
}
