//! The HTML forms: the handler's page (a table per certificate, no scripts) and the
//! section in mod_status's server-status page (HTML, or `key: value` lines for `?auto`).

use std::fmt::Write;

use super::{relative, Row, Snapshot};
use crate::time::UnixTime;

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em;min-width:40em}\
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
th{background:#f3f3f3;width:12em}td.good{color:#060;font-weight:bold}\
td.revoked,td.none,td.failed,p.failed{color:#a00;font-weight:bold}code{font-size:.95em}";

/// `text` with `& < > " '` replaced by entities.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// "2026-11-21T11:44:54Z (in 3h 2m)", or `none`.
fn when(now: UnixTime, t: Option<UnixTime>, none: &str) -> String {
    t.map_or_else(|| none.to_string(), |t| format!("{t} ({})", relative(now, t)))
}

/// The handler's page.
pub(super) fn page(snapshot: Option<&Snapshot>) -> String {
    let mut out = String::from("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    let _ = writeln!(out, "<title>OCSP stapling status</title><style>{STYLE}</style></head><body>");
    out.push_str("<h1>OCSP stapling status</h1>\n");
    match snapshot {
        None => out.push_str(
            "<p id=\"off\">OCSP stapling is off: mod_stapling staples no certificate in this configuration.</p>\n",
        ),
        Some(s) => {
            summary(&mut out, s);
            s.rows.iter().for_each(|row| certificate(&mut out, s.now, row));
        }
    }
    out.push_str("</body></html>\n");
    out
}

fn summary(out: &mut String, s: &Snapshot) {
    let _ = writeln!(
        out,
        "<p>mod_stapling {} &middot; configuration started {} &middot; now {} &middot; {} certificates: \
         {} good, {} revoked, {} without a staple</p>",
        escape(s.version),
        when(s.now, Some(s.started), ""),
        s.now,
        s.rows.len(),
        s.count("good"),
        s.count("revoked"),
        s.count("none")
    );
    if let Some((tier, up)) = &s.fleet {
        let (class, state) = if *up {
            ("", "answers")
        } else {
            (" class=\"failed\"", "unreachable: each server fetches its own responses")
        };
        let _ = writeln!(out, "<p{class}>Fleet tier {} &middot; {state}</p>", escape(tier));
    }
}

/// One `<tr>` with a header cell and an already escaped value.
fn tr(out: &mut String, name: &str, class: &str, value: &str) {
    let class = if class.is_empty() { String::new() } else { format!(" class=\"{class}\"") };
    let _ = writeln!(out, "<tr><th>{name}</th><td{class}>{value}</td></tr>");
}

fn certificate(out: &mut String, now: UnixTime, row: &Row) {
    let st = &row.state;
    let _ = writeln!(out, "<h2 class=\"cert\">{}</h2>\n<table>", escape(&row.subject));
    tr(out, "Serial", "", &format!("<code>{}</code>", escape(&row.serial)));
    tr(out, "SHA-1 id", "", &format!("<code>{}</code>", escape(&row.id)));
    tr(out, "Virtual hosts", "", &escape(&row.vhosts.join(", ")));
    tr(out, "Responder", "", &escape(&row.url));
    tr(out, "Status", row.status(now), row.status(now));
    tr(out, "thisUpdate", "", &when(now, st.this_update, "none"));
    tr(out, "nextUpdate", "", &when(now, st.next_update, "none"));
    tr(out, "producedAt", "", &when(now, st.produced_at, "none"));
    tr(out, "Source", "", row.source());
    let outcome = row.outcome().name();
    tr(out, "Last fetch", outcome, &format!("{} &middot; {outcome}", when(now, st.last_attempt, "never")));
    tr(out, "Last success", "", &when(now, st.last_ok, "never"));
    let error = st.last_error.map(|(at, f)| format!("{} &middot; {}", when(now, Some(at), ""), escape(&f.to_string())));
    tr(out, "Last error", "", &error.unwrap_or_else(|| "none".into()));
    tr(out, "Consecutive failures", "", &st.failures.to_string());
    tr(out, "Responder requests", "", &st.fetches.to_string());
    tr(out, "Next refresh", "", &when(now, st.next_fetch, "due now"));
    tr(out, "Must-staple", "", if row.must_staple { "yes" } else { "no" });
    let age_limit = row.max_age.map(|d| format!("{} after thisUpdate (StaplingResponseMaxAge)", crate::time::span(d)));
    tr(out, "Age limit", "", &age_limit.unwrap_or_else(|| "none".into()));
    tr(out, "Stapled until", "", &when(now, st.staple_until, "none"));
    out.push_str("</table>\n");
}

/// The forms of the server-status section, after mod_status's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `?auto` (`AP_STATUS_SHORT`): `Stapling...: value` lines.
    Auto,
    /// The HTML page: a table.
    Table,
    /// `?notable` (`AP_STATUS_NOTABLE`): HTML without tables.
    List,
}

/// The section in mod_status's page, in the form mod_status asks for.
pub fn server_status(snapshot: Option<&Snapshot>, section: Section) -> String {
    match (snapshot, section) {
        (None, Section::Auto) => "StaplingCertificates: 0\n".into(),
        (None, _) => "<hr>\n<h2>OCSP stapling</h2>\n<p>OCSP stapling is off.</p>\n".into(),
        (Some(s), Section::Auto) => auto_lines(s),
        (Some(s), Section::Table) => status_table(s),
        (Some(s), Section::List) => status_list(s),
    }
}

fn counts(s: &Snapshot) -> String {
    format!(
        "<p>{} certificates: {} good, {} revoked, {} without a staple</p>\n",
        s.rows.len(),
        s.count("good"),
        s.count("revoked"),
        s.count("none")
    )
}

fn status_list(s: &Snapshot) -> String {
    let mut out = format!("<hr>\n<h2>OCSP stapling</h2>\n{}", counts(s));
    for row in &s.rows {
        let _ = writeln!(
            out,
            "<p>{} (serial {}, {}): {}, nextUpdate {}, last fetch {} {}, next refresh {}</p>",
            escape(&row.subject),
            escape(&row.serial),
            escape(&row.vhosts.join(", ")),
            row.status(s.now),
            when(s.now, row.state.next_update, "none"),
            when(s.now, row.state.last_attempt, "never"),
            row.outcome().name(),
            when(s.now, row.state.next_fetch, "due now"),
        );
    }
    out
}

fn auto_lines(s: &Snapshot) -> String {
    let mut out = format!(
        "StaplingCertificates: {}\nStaplingGood: {}\nStaplingRevoked: {}\nStaplingNone: {}\n",
        s.rows.len(),
        s.count("good"),
        s.count("revoked"),
        s.count("none")
    );
    for (i, row) in s.rows.iter().enumerate() {
        let next = row.state.next_update.map_or_else(|| "none".into(), |t| t.to_string());
        // ?auto is one `key: value` per line: no line break may come from a name.
        let subject = row.subject.replace(['\r', '\n'], " ");
        let _ = writeln!(
            out,
            "StaplingCertificate{i}: status={} serial={} next_update={next} failures={} subject={subject}",
            row.status(s.now),
            row.serial,
            row.state.failures,
        );
    }
    out
}

fn status_table(s: &Snapshot) -> String {
    let mut out = format!("<hr>\n<h2>OCSP stapling</h2>\n{}", counts(s));
    out.push_str(
        "<table border=\"1\"><tr><th>Certificate</th><th>Serial</th><th>Virtual hosts</th><th>Status</th>\
         <th>nextUpdate</th><th>Last fetch</th><th>Failures</th><th>Next refresh</th></tr>\n",
    );
    for row in &s.rows {
        let st = &row.state;
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td><td>{}</td></tr>",
            escape(&row.subject),
            escape(&row.serial),
            escape(&row.vhosts.join(", ")),
            row.status(s.now),
            when(s.now, st.next_update, "none"),
            when(s.now, st.last_attempt, "never"),
            row.outcome().name(),
            st.failures,
            when(s.now, st.next_fetch, "due now"),
        );
    }
    out.push_str("</table>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::snapshot;
    use super::*;

    /// No raw `<`, `>` or `&` outside the markup we wrote: every tag is one we know.
    fn tags_are_ours(html: &str) {
        let known = [
            "!DOCTYPE", "html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "table", "tr", "th", "td",
            "code", "hr",
        ];
        for piece in html.split('<').skip(1) {
            let name: String =
                piece.trim_start_matches('/').chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '!').collect();
            assert!(known.contains(&name.as_str()), "unexpected tag <{name} in:\n{html}");
        }
    }

    #[test]
    fn escape_replaces_markup() {
        assert_eq!(escape("<a href=\"x\">&'</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
    }

    #[test]
    fn page_shows_every_certificate_escaped() {
        let s = snapshot();
        let html = page(Some(&s));
        tags_are_ours(&html);
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp;"));
        assert!(html.contains("http://r.example/?a=1&amp;b=&lt;2&gt;"));
        assert_eq!(html.matches("<h2 class=\"cert\">").count(), 2);
        for needle in
            ["1001", "ABCD", "good", "responder timed out", "HTTP status 503", "in 30s", "2027-01-15T08:00:00Z"]
        {
            assert!(html.contains(needle), "{needle} missing:\n{html}");
        }
    }

    #[test]
    fn page_without_runtime_says_stapling_is_off() {
        let html = page(None);
        tags_are_ours(&html);
        assert!(html.contains("OCSP stapling is off"));
    }

    #[test]
    fn server_status_section_in_both_forms() {
        let s = snapshot();
        for section in [Section::Table, Section::List] {
            let html = server_status(Some(&s), section);
            tags_are_ours(&html);
            assert!(html.contains("<h2>OCSP stapling</h2>") && html.contains("&lt;script&gt;"), "{html}");
            assert_eq!(html.contains("<table"), section == Section::Table);
            assert!(html.contains("1001") && html.contains("ABCD"));
        }
        let auto = server_status(Some(&s), Section::Auto);
        assert!(auto.starts_with("StaplingCertificates: 2\nStaplingGood: 1\nStaplingRevoked: 0\nStaplingNone: 1\n"));
        // Every line is `Key: value`, even with a line break in a subject.
        assert!(
            auto.lines().all(|l| l.split_once(": ").is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_alphanumeric()))),
            "{auto}"
        );
        assert_eq!(server_status(None, Section::Auto), "StaplingCertificates: 0\n");
        assert!(server_status(None, Section::List).contains("OCSP stapling is off"));
    }
}
