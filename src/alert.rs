//! The alert lines an admin must see at the default `LogLevel warn`: which alert a
//! slot's state calls for, and its words. Pure; the engine claims each alert in the
//! shared store (one process logs it, at most hourly) and logs the line.

use std::time::Duration;

use crate::failure::{Failure, Invalid};
use crate::store::{SlotState, SlotStatus};
use crate::time::{span, UnixTime};

/// A repeated alert is logged again after this long at the earliest.
pub const ALERT_EVERY: Duration = Duration::from_secs(3600);
/// A failure this close to the end of the response (or within [`EXPIRING_FRACTION`]
/// of its validity, if that is longer) is "expiring".
const EXPIRING_WITHIN: Duration = Duration::from_secs(86_400);
/// The share of the validity, in percent, that counts as "expiring".
const EXPIRING_PERCENT: u64 = 25;

/// The alert a slot is in, as stored in the shared alert word (non-zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Refreshing fails while the stapled response nears its end.
    Expiring = 1,
    /// The response expired: nothing is stapled.
    Expired = 2,
    /// Refreshing fails, with time to spare or with nothing ever stapled.
    Failing = 3,
}

impl Kind {
    /// The kind a stored alert word holds.
    pub fn from_code(code: u8) -> Option<Kind> {
        [Kind::Expiring, Kind::Expired, Kind::Failing].into_iter().find(|k| *k as u8 == code)
    }
}

/// Which alert `state` calls for at `now`; `None` when all is well (a raised alert
/// then ends, with a recovery line).
pub fn kind_for(state: &SlotState, now: UnixTime) -> Option<Kind> {
    let stapled = state.stapleable_at(now);
    if !stapled && state.status != SlotStatus::Empty {
        return Some(Kind::Expired);
    }
    if state.failures == 0 {
        return None;
    }
    match state.staple_until {
        Some(until) if stapled && expiring(state.this_update, until, now) => Some(Kind::Expiring),
        _ => Some(Kind::Failing),
    }
}

/// True if `until` is within a day of `now`, or within the last quarter of the
/// response's validity.
fn expiring(this_update: Option<UnixTime>, until: UnixTime, now: UnixTime) -> bool {
    let left = until.since(now);
    let quarter = this_update.map_or(Duration::ZERO, |t| until.since(t) * EXPIRING_PERCENT as u32 / 100);
    left <= EXPIRING_WITHIN.max(quarter)
}

/// What went wrong, and what the admin can do about it, for a failure cause.
pub fn advice(failure: Failure) -> &'static str {
    match failure {
        Failure::Unreachable | Failure::Timeout => {
            "check that this server can reach the responder: firewall, proxy, DNS"
        }
        Failure::HttpStatus(_) => "the responder is failing; it will be asked again",
        Failure::NotOcsp => "the URL does not serve OCSP: check the AIA URL or StaplingForceURL",
        Failure::OcspStatus(3) => "the responder is overloaded or still preparing; it will be asked again",
        Failure::OcspStatus(6) => {
            "the responder does not serve this certificate: check the AIA URL or StaplingForceURL"
        }
        Failure::OcspStatus(_) => "the responder refused the request; it will be asked again",
        Failure::Invalid(Invalid::Time) => "check this server's clock, or StaplingResponseTimeSkew",
        Failure::Invalid(Invalid::Signature | Invalid::WrongCert) => {
            "check that the issuer in the chain file is the one that signed the certificate"
        }
        Failure::Invalid(_) => "the responder's answer cannot be used; it will be asked again",
        Failure::NoUrl => "set StaplingForceURL, or switch stapling off for this certificate",
        Failure::NoIssuer => "add the issuer certificate to the chain",
        Failure::Store => "raise the StaplingCache size",
        Failure::Proxy => {
            "check that the proxy runs and lets this server reach the responder (StaplingProxy, http_proxy)"
        }
        Failure::Tls => {
            "check the URL's host name, or add the CA of the responder's certificate with StaplingResponderCAFile"
        }
    }
}

/// The cause in words, when no detailed reason is at hand (a pass that notices an
/// expiry without fetching).
pub fn cause(failure: Failure) -> String {
    match failure {
        Failure::Unreachable => "the responder could not be reached".into(),
        Failure::Proxy => "the proxy could not be reached or refused the request".into(),
        Failure::Tls => "the TLS handshake with the responder failed".into(),
        Failure::Timeout => "the responder did not answer in time".into(),
        Failure::HttpStatus(code) => format!("the responder answered HTTP {code}"),
        Failure::OcspStatus(3) => "the responder answered tryLater".into(),
        Failure::OcspStatus(6) => "the responder answered unauthorized".into(),
        other => other.to_string(),
    }
}

/// "cause: advice", or an empty text if nothing failed yet.
fn last_failure(state: &SlotState, why: Option<&str>) -> String {
    match (state.last_error, why) {
        (Some((_, f)), Some(why)) => format!("{why} ({})", advice(f)),
        (Some((at, f)), None) => format!("{} at {} ({})", cause(f), at.date(), advice(f)),
        (None, Some(why)) => why.to_string(),
        (None, None) => "no refresh was possible".into(),
    }
}

/// "next attempt at …", if one is scheduled.
fn next_attempt(state: &SlotState) -> String {
    state.next_fetch.map_or_else(String::new, |t| format!("; next attempt at {}", t.date()))
}

/// The line for alert `kind` of certificate `who` (label and vhosts). `why` is the
/// detailed reason of the failure just recorded, if any.
pub fn line(kind: Kind, who: &str, must_staple: bool, state: &SlotState, now: UnixTime, why: Option<&str>) -> String {
    let failed = last_failure(state, why);
    let next = next_attempt(state);
    match kind {
        Kind::Expiring => {
            let until = state.staple_until.unwrap_or(now);
            format!(
                "{who}: OCSP refresh failed: {failed}; the last good response stays stapled, but it expires in {} \
                 (at {}){next}",
                span(until.since(now)),
                until.date()
            )
        }
        Kind::Expired => {
            let ended = state.staple_until.map_or_else(String::new, |t| format!(" at {}", t.date()));
            let must = if must_staple {
                "; this certificate is must-staple: clients that require a staple will fail"
            } else {
                ""
            };
            format!(
                "{who}: the OCSP response expired{ended} and nothing is stapled{must}. Last failure: {failed}{next}"
            )
        }
        Kind::Failing => {
            let keeping = match state.staple_until.filter(|_| state.stapleable_at(now)) {
                Some(until) => format!("the last good response stays stapled until {}", until.date()),
                None if must_staple => {
                    "nothing is stapled; this certificate is must-staple: clients that require a staple will fail"
                        .into()
                }
                None => "nothing is stapled for it".into(),
            };
            format!("{who}: OCSP refresh failed: {failed}; {keeping}{next}")
        }
    }
}

/// The line when alert `kind` ends because a fresh response is stapled.
pub fn recovery_line(kind: Kind, who: &str, state: &SlotState) -> String {
    let until = state.staple_until.map_or_else(String::new, |t| format!(", valid until {}", t.date()));
    let after = match kind {
        Kind::Expired => "after the response had expired",
        Kind::Expiring | Kind::Failing => "after failed refreshes",
    };
    format!("{who}: recovered: a fresh OCSP response is stapled again {after}{until}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3600;

    fn t(s: i64) -> UnixTime {
        UnixTime::from_secs(1_795_262_400 + s)
    }

    fn state(validity_h: u64, failures: u32) -> SlotState {
        SlotState {
            status: SlotStatus::Good,
            this_update: Some(t(0)),
            next_update: Some(t(0).plus(Duration::from_secs(validity_h * H))),
            staple_until: Some(t(0).plus(Duration::from_secs(validity_h * H))),
            next_fetch: Some(t(7200)),
            failures,
            fetches: 1,
            failed_fetches: 0,
            last_ok: Some(t(0)),
            produced_at: None,
            source: crate::store::Source::Responder,
            last_attempt: None,
            last_error: (failures > 0).then_some((t(3600), Failure::OcspStatus(3))),
            alert: None,
        }
    }

    #[test]
    fn expiring_means_within_a_day_or_the_last_quarter() {
        let week = state(7 * 24, 1);
        assert_eq!(kind_for(&week, t(0)), Some(Kind::Failing), "a week left");
        assert_eq!(kind_for(&week, t((7 * 24 - 42) * 3600)), Some(Kind::Expiring), "the last quarter: 42 h");
        assert_eq!(kind_for(&week, t((7 * 24 - 43) * 3600)), Some(Kind::Failing));
        let day = state(24, 1);
        assert_eq!(kind_for(&day, t(0)), Some(Kind::Expiring), "a day-long response always is");
        assert_eq!(kind_for(&day, t(24 * 3600)), Some(Kind::Expired), "at its end");
        assert_eq!(kind_for(&state(24, 0), t(3600)), None, "no failure, no alert");
        assert_eq!(kind_for(&state(24, 0), t(24 * 3600)), Some(Kind::Expired), "expired without a failure too");
        let empty = SlotState { status: SlotStatus::Empty, staple_until: None, ..state(24, 0) };
        assert_eq!(kind_for(&empty, t(0)), None, "not fetched yet");
        assert_eq!(kind_for(&SlotState { failures: 2, ..empty }, t(0)), Some(Kind::Failing));
    }

    #[test]
    fn lines_name_the_cause_the_advice_and_dates() {
        let s = state(24, 1);
        let l = line(Kind::Expiring, "CN=a (vhost a:443)", false, &s, t(20 * 3600), None);
        assert_eq!(
            l,
            "CN=a (vhost a:443): OCSP refresh failed: the responder answered tryLater at 2026-11-21 13:00:00 UTC \
             (the responder is overloaded or still preparing; it will be asked again); the last good response \
             stays stapled, but it expires in 4 h 0 min (at 2026-11-22 12:00:00 UTC); next attempt at \
             2026-11-21 14:00:00 UTC"
        );
        let down = SlotState { last_error: Some((t(3600), Failure::HttpStatus(503))), ..s };
        let l = line(Kind::Expired, "CN=a", true, &down, t(25 * 3600), Some("HTTP 503 Service Unavailable"));
        assert!(l.starts_with("CN=a: the OCSP response expired at 2026-11-22 12:00:00 UTC and nothing is stapled; "));
        assert!(l.contains("clients that require a staple will fail"), "{l}");
        assert!(l.contains("Last failure: HTTP 503 Service Unavailable (the responder is failing"), "{l}");
        let r = recovery_line(Kind::Expired, "CN=a", &s);
        assert_eq!(
            r,
            "CN=a: recovered: a fresh OCSP response is stapled again after the response had expired, valid \
             until 2026-11-22 12:00:00 UTC"
        );
    }

    #[test]
    fn each_cause_has_its_own_advice() {
        let causes = [
            Failure::Unreachable,
            Failure::HttpStatus(503),
            Failure::NotOcsp,
            Failure::OcspStatus(3),
            Failure::OcspStatus(6),
            Failure::OcspStatus(1),
            Failure::Invalid(Invalid::Time),
            Failure::Invalid(Invalid::Signature),
            Failure::Invalid(Invalid::Malformed),
            Failure::NoUrl,
            Failure::NoIssuer,
            Failure::Store,
        ];
        let texts: std::collections::HashSet<_> = causes.iter().map(|f| advice(*f)).collect();
        assert_eq!(texts.len(), causes.len());
        assert_eq!(advice(Failure::Timeout), advice(Failure::Unreachable));
        assert_ne!(cause(Failure::Timeout), cause(Failure::Unreachable));
    }
}
