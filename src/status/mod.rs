//! What the `stapling-status` handler and the server-status section show: a
//! [`Snapshot`] of every managed certificate, taken from the [`Runtime`] without a lock
//! (each slot field is one atomic word) and without waiting for any fetch, then rendered
//! as HTML, JSON or Prometheus text. Pure: the renderers are tested without Apache.
//!
//! Nothing secret is shown: certificates, their ids, URLs, vhosts and times are public
//! or known to whoever can read the configuration; no key material is ever read here.

mod html;
mod json;
mod metrics;

use std::ffi::CStr;

use crate::cert::hex;
use crate::engine::Runtime;
use crate::store::{SlotState, SlotStatus, Source, Usage};
use crate::time::UnixTime;

pub use html::{server_status, Section};

/// The module's version, shown on every form of the page.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One managed certificate and the state of its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The leaf's subject, most specific part first ("CN=www.example, O=Example").
    pub subject: String,
    /// The leaf's serial number, upper-case hex.
    pub serial: String,
    /// SHA-1 of the leaf's DER (mod_ssl's id), lower-case hex.
    pub id: String,
    /// The vhosts that use the certificate.
    pub vhosts: Vec<String>,
    /// The responder asked.
    pub url: String,
    /// The certificate requires a staple (RFC 7633 TLS Feature).
    pub must_staple: bool,
    /// `StaplingResponseMaxAge`: never stapled once thisUpdate is older (plus skew).
    pub max_age: Option<std::time::Duration>,
    /// The slot's state, read from the shared store.
    pub state: SlotState,
}

/// Everything one page shows, taken at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The module's version.
    pub version: &'static str,
    /// When the configuration generation started.
    pub started: UnixTime,
    /// When the snapshot was taken.
    pub now: UnixTime,
    /// One row per certificate, in configuration order.
    pub rows: Vec<Row>,
    /// The fleet tier (as configured) and whether it answers, if there is one.
    pub fleet: Option<(String, bool)>,
    /// The shared store's size and use.
    pub store: Usage,
}

/// The outcome of the last request to the responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The responder was never asked by this store.
    Never,
    /// The last request gave a valid response.
    Ok,
    /// The last request failed (the cause is in `last_error`).
    Failed,
}

impl Outcome {
    /// "never", "ok" or "failed".
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Never => "never",
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
        }
    }
}

impl Row {
    /// The row of `runtime.certs[i]`.
    fn of(runtime: &Runtime, i: usize) -> Row {
        let cert = &runtime.certs[i];
        Row {
            subject: cert.info.subject.clone(),
            serial: cert.info.serial.clone(),
            id: hex(&cert.info.key),
            vhosts: cert.vhosts.clone(),
            url: cert.url.clone(),
            must_staple: cert.info.must_staple,
            max_age: cert.settings.max_age,
            state: runtime.store.state(runtime.slots[i]),
        }
    }

    /// True if a response is stapled at `now`.
    pub fn stapled(&self, now: UnixTime) -> bool {
        self.state.stapleable_at(now)
    }

    /// "good" or "revoked" for the response stapled at `now`, "none" if nothing is.
    pub fn status(&self, now: UnixTime) -> &'static str {
        match self.state.status {
            SlotStatus::Good if self.stapled(now) => "good",
            SlotStatus::Revoked if self.stapled(now) => "revoked",
            _ => "none",
        }
    }

    /// Where the published response came from.
    pub fn source(&self) -> &'static str {
        match self.state.source {
            Source::None => "none",
            Source::Responder => "responder",
            Source::Disk => "disk",
            Source::Fleet => "fleet",
        }
    }

    /// How the last request to the responder went (a failure is recorded at the time
    /// of its attempt).
    pub fn outcome(&self) -> Outcome {
        match (self.state.last_attempt, self.state.last_error) {
            (None, _) => Outcome::Never,
            (Some(at), Some((failed_at, _))) if failed_at >= at => Outcome::Failed,
            (Some(_), _) => Outcome::Ok,
        }
    }
}

impl Snapshot {
    /// The state of every certificate of `runtime`, now. Reads atomics only.
    pub fn of(runtime: &Runtime) -> Snapshot {
        Snapshot {
            version: VERSION,
            started: runtime.started,
            now: runtime.clock.now(),
            rows: (0..runtime.certs.len()).map(|i| Row::of(runtime, i)).collect(),
            fleet: runtime.fleet.as_ref().map(|f| (f.tier.describe().to_string(), !runtime.store.fleet_down())),
            store: runtime.store.usage(),
        }
    }

    /// How many certificates have `status` ("good", "revoked", "none") now.
    pub fn count(&self, status: &str) -> usize {
        self.rows.iter().filter(|r| r.status(self.now) == status).count()
    }
}

/// The three forms of the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A page for browsers (the default).
    Html,
    /// `?json`.
    Json,
    /// `?metrics`: Prometheus text exposition format 0.0.4.
    Metrics,
}

impl Format {
    /// The form a query string asks for: `json` or `metrics` among its `&`-separated
    /// parts (a `=value` is ignored), HTML otherwise.
    pub fn from_query(query: Option<&str>) -> Format {
        let parts = query.unwrap_or("").split('&').map(|p| p.split('=').next().unwrap_or(""));
        for part in parts {
            match part {
                "json" => return Format::Json,
                "metrics" => return Format::Metrics,
                _ => {}
            }
        }
        Format::Html
    }

    /// The Content-Type of the form (NUL-terminated and static, as Apache keeps the
    /// pointer for the request).
    pub fn content_type(self) -> &'static CStr {
        match self {
            Format::Html => c"text/html; charset=utf-8",
            Format::Json => c"application/json",
            Format::Metrics => c"text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The page in `format`; `None` when stapling is off in this configuration.
pub fn render(format: Format, snapshot: Option<&Snapshot>) -> String {
    match format {
        Format::Html => html::page(snapshot),
        Format::Json => json::document(snapshot),
        Format::Metrics => metrics::exposition(snapshot),
    }
}

/// A span in seconds as "3d 4h", "4h 5m", "5m 3s" or "12s" (sign dropped).
pub(crate) fn span(secs: i64) -> String {
    let s = secs.unsigned_abs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// "in 4h 5m" or "5m 3s ago", relative to `now`.
pub(crate) fn relative(now: UnixTime, t: UnixTime) -> String {
    let d = now.seconds_until(t);
    if d >= 0 {
        format!("in {}", span(d))
    } else {
        format!("{} ago", span(d))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::failure::Failure;

    pub(crate) const NOW: i64 = 1_800_000_000;

    pub(crate) fn t(offset: i64) -> Option<UnixTime> {
        Some(UnixTime::from_secs(NOW + offset))
    }

    /// A stapled good response, fetched a minute ago.
    pub(crate) fn good_state() -> SlotState {
        SlotState {
            status: SlotStatus::Good,
            this_update: t(-3600),
            next_update: t(3 * 86_400),
            staple_until: t(3 * 86_400 + 300),
            next_fetch: t(86_400),
            failures: 0,
            fetches: 3,
            failed_fetches: 0,
            last_ok: t(-60),
            produced_at: t(-3600),
            source: Source::Responder,
            last_attempt: t(-60),
            last_error: Some((UnixTime::from_secs(NOW - 7200), Failure::Timeout)),
            alert: None,
        }
    }

    /// Two certificates: one stapled, one that never got a response, with text that
    /// needs escaping in every format.
    pub(crate) fn snapshot() -> Snapshot {
        let good = Row {
            subject: "CN=www.example.org, O=Example".into(),
            serial: "1001".into(),
            id: "00".repeat(20),
            vhosts: vec!["www.example.org:443".into()],
            url: "http://ocsp.example.org/".into(),
            must_staple: false,
            max_age: None,
            state: good_state(),
        };
        let empty = SlotState {
            status: SlotStatus::Empty,
            this_update: None,
            next_update: None,
            staple_until: None,
            next_fetch: t(30),
            failures: 4,
            fetches: 4,
            failed_fetches: 1,
            last_ok: None,
            produced_at: None,
            source: Source::None,
            last_attempt: t(-5),
            last_error: Some((UnixTime::from_secs(NOW - 5), Failure::HttpStatus(503))),
            alert: None,
        };
        let evil = Row {
            subject: "CN=<script>alert(\"x\")</script> & \\co\n".into(),
            serial: "ABCD".into(),
            id: "ff".repeat(20),
            vhosts: vec!["a:443".into(), "b\"'<>:8443".into()],
            url: "http://r.example/?a=1&b=<2>".into(),
            must_staple: true,
            max_age: Some(std::time::Duration::from_secs(900)),
            state: empty,
        };
        Snapshot {
            version: VERSION,
            started: UnixTime::from_secs(NOW - 600),
            now: UnixTime::from_secs(NOW),
            rows: vec![good, evil],
            fleet: Some(("memcache:10.0.0.5:11211".into(), false)),
            store: Usage { bytes: 10 << 20, slots: 64, slots_used: 2, large_buffers: 16, large_in_use: 1 },
        }
    }

    #[test]
    fn query_picks_the_format() {
        assert_eq!(Format::from_query(None), Format::Html);
        assert_eq!(Format::from_query(Some("")), Format::Html);
        assert_eq!(Format::from_query(Some("json")), Format::Json);
        assert_eq!(Format::from_query(Some("metrics")), Format::Metrics);
        assert_eq!(Format::from_query(Some("x=1&json=yes")), Format::Json);
        assert_eq!(Format::from_query(Some("jsonx")), Format::Html);
    }

    #[test]
    fn status_outcome_and_counts() {
        let s = snapshot();
        assert_eq!(s.rows[0].status(s.now), "good");
        assert_eq!(s.rows[0].outcome(), Outcome::Ok);
        assert_eq!(s.rows[1].status(s.now), "none");
        assert_eq!(s.rows[1].outcome(), Outcome::Failed);
        assert_eq!((s.count("good"), s.count("revoked"), s.count("none")), (1, 0, 1));
        // Past staple_until, a good response is no longer stapled.
        let later = UnixTime::from_secs(NOW + 4 * 86_400);
        assert_eq!(s.rows[0].status(later), "none");
    }

    #[test]
    fn spans_read_naturally() {
        assert_eq!(span(5), "5s");
        assert_eq!(span(-125), "2m 5s");
        assert_eq!(span(3 * 3600 + 120), "3h 2m");
        assert_eq!(span(2 * 86_400 + 3600), "2d 1h");
        let now = UnixTime::from_secs(NOW);
        assert_eq!(relative(now, UnixTime::from_secs(NOW + 60)), "in 1m 0s");
        assert_eq!(relative(now, UnixTime::from_secs(NOW - 60)), "1m 0s ago");
    }
}
