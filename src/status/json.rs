//! `?json`: the same fields as the HTML page, times in RFC 3339 (UTC), `null` for none.
//! Written by hand: a few fixed objects need no serializer crate.

use std::fmt::Write;

use super::{Row, Snapshot, VERSION};
use crate::store::Usage;
use crate::time::UnixTime;

/// `text` as a JSON string literal, quotes included.
pub(crate) fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // `<` too, so that the document can never close a <script> it is put in.
            c if (c as u32) < 0x20 || c == '<' || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn time(t: Option<UnixTime>) -> String {
    t.map_or_else(|| "null".into(), |t| string(&t.to_string()))
}

/// The document; with stapling off, `"stapling": false` and no certificates.
pub(super) fn document(snapshot: Option<&Snapshot>) -> String {
    let Some(s) = snapshot else {
        return format!("{{\"version\":{},\"stapling\":false,\"certificates\":[]}}\n", string(VERSION));
    };
    let rows: Vec<String> = s.rows.iter().map(|r| certificate(s.now, r)).collect();
    format!(
        "{{\"version\":{},\"stapling\":true,\"started\":{},\"now\":{},\"fleet\":{},\"shared_store\":{},\
         \"certificates\":[{}]}}\n",
        string(s.version),
        time(Some(s.started)),
        time(Some(s.now)),
        s.fleet
            .as_ref()
            .map_or_else(|| "null".into(), |(tier, up)| format!("{{\"tier\":{},\"reachable\":{up}}}", string(tier))),
        shared_store(&s.store),
        rows.join(",")
    )
}

fn shared_store(u: &Usage) -> String {
    format!(
        "{{\"bytes\":{},\"slots\":{},\"slots_used\":{},\"large_buffers\":{},\"large_in_use\":{}}}",
        u.bytes, u.slots, u.slots_used, u.large_buffers, u.large_in_use
    )
}

fn certificate(now: UnixTime, row: &Row) -> String {
    let st = &row.state;
    let vhosts: Vec<String> = row.vhosts.iter().map(|v| string(v)).collect();
    let last_error = st.last_error.map_or_else(
        || "null".into(),
        |(at, f)| format!("{{\"time\":{},\"message\":{}}}", time(Some(at)), string(&f.to_string())),
    );
    let fields = [
        ("subject", string(&row.subject)),
        ("serial", string(&row.serial)),
        ("sha1", string(&row.id)),
        ("vhosts", format!("[{}]", vhosts.join(","))),
        ("responder", string(&row.url)),
        ("must_staple", row.must_staple.to_string()),
        ("max_age", row.max_age.map_or_else(|| "null".into(), |d| d.as_secs().to_string())),
        ("status", string(row.status(now))),
        ("stapled", row.stapled(now).to_string()),
        ("this_update", time(st.this_update)),
        ("next_update", time(st.next_update)),
        ("produced_at", time(st.produced_at)),
        ("staple_until", time(st.staple_until)),
        ("source", string(row.source())),
        ("last_fetch", time(st.last_attempt)),
        ("last_fetch_outcome", string(row.outcome().name())),
        ("last_success", time(st.last_ok)),
        ("last_error", last_error),
        ("consecutive_failures", st.failures.to_string()),
        ("fetches", st.fetches.to_string()),
        ("next_refresh", time(st.next_fetch)),
    ];
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}:{v}", string(k))).collect();
    format!("{{{}}}", body.join(","))
}

#[cfg(test)]
mod tests {
    use super::super::tests::snapshot;
    use super::*;
    use serde_json::Value;

    #[test]
    fn strings_are_escaped() {
        assert_eq!(string("a\"b\\c\n\u{1}<"), "\"a\\\"b\\\\c\\n\\u0001\\u003c\"");
        let back: String = serde_json::from_str(&string("x\u{7f}\u{2028}é\t<\"")).unwrap();
        assert_eq!(back, "x\u{7f}\u{2028}é\t<\"");
    }

    #[test]
    fn document_parses_and_carries_every_field() {
        let s = snapshot();
        let doc: Value = serde_json::from_str(&document(Some(&s))).expect("valid JSON");
        assert_eq!(doc["version"], VERSION);
        assert_eq!(doc["stapling"], true);
        assert_eq!(doc["fleet"]["tier"], "memcache:10.0.0.5:11211");
        assert_eq!(doc["fleet"]["reachable"], false);
        assert_eq!(doc["shared_store"]["bytes"], 10 << 20);
        assert_eq!(doc["shared_store"]["slots_used"], 2);
        assert_eq!(doc["shared_store"]["large_in_use"], 1);
        assert_eq!(doc["started"], "2027-01-15T07:50:00Z");
        let certs = doc["certificates"].as_array().unwrap();
        assert_eq!(certs.len(), 2);
        let good = &certs[0];
        assert_eq!(good["serial"], "1001");
        assert_eq!(good["status"], "good");
        assert_eq!(good["stapled"], true);
        assert_eq!(good["next_update"], "2027-01-18T08:00:00Z");
        assert_eq!(good["source"], "responder");
        assert_eq!(good["last_fetch_outcome"], "ok");
        assert_eq!(good["last_error"]["message"], "responder timed out");
        assert_eq!(good["fetches"], 3);
        let evil = &certs[1];
        assert_eq!(evil["subject"], "CN=<script>alert(\"x\")</script> & \\co\n");
        assert_eq!(evil["vhosts"][1], "b\"'<>:8443");
        assert_eq!(evil["status"], "none");
        assert_eq!(evil["next_update"], Value::Null);
        assert_eq!(evil["consecutive_failures"], 4);
        assert_eq!(evil["must_staple"], true);
        assert_eq!(evil["max_age"], 900);
        assert_eq!(good["max_age"], Value::Null);
        assert_eq!(evil["last_fetch_outcome"], "failed");
    }

    #[test]
    fn document_without_runtime() {
        let doc: Value = serde_json::from_str(&document(None)).unwrap();
        assert_eq!(doc["stapling"], false);
        assert_eq!(doc["certificates"].as_array().map(Vec::len), Some(0));
    }
}
