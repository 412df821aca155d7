//! When to fetch: pure scheduling decisions, tested without a clock or a network.

use std::time::Duration;

use crate::config::RenewWindow;
use crate::time::UnixTime;

/// Never fetch one certificate more often than this after a success.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Refresh interval for responses without nextUpdate.
pub const NO_NEXT_UPDATE_REFRESH: Duration = Duration::from_secs(3600);
/// How long a response without nextUpdate may be stapled after it was fetched.
pub const NO_NEXT_UPDATE_LIFETIME: Duration = Duration::from_secs(86_400);
/// Longest wait between retries while a responder fails.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// First retry delay after a failure.
pub const BASE_BACKOFF: Duration = Duration::from_secs(30);
/// Must-staple certificates: clients refuse the site without a staple, so retry sooner.
pub const MUST_STAPLE_BASE_BACKOFF: Duration = Duration::from_secs(5);
/// ... and cap the wait lower.
pub const MUST_STAPLE_MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The times that govern a freshly validated response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Staple only before this time: nextUpdate plus skew.
    pub staple_until: UnixTime,
    /// When to fetch again.
    pub next_fetch: UnixTime,
}

/// The settings that bound a response's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `StaplingResponseTimeSkew`: tolerated past nextUpdate (and the max age).
    pub skew: Duration,
    /// `StaplingResponseMaxAge`: never staple once thisUpdate is older than this.
    pub max_age: Option<Duration>,
    /// `StaplingRenewWindow`.
    pub window: RenewWindow,
}

/// Plans the life of a response fetched at `now`. `jitter` is uniform in [0, 1).
///
/// With a max age, the response ends (for stapling and for the renew window) at
/// `thisUpdate + max age` if that comes before nextUpdate, so that a healthy responder
/// replaces it before it may no longer be stapled.
pub fn plan_success(
    this_update: UnixTime,
    next_update: Option<UnixTime>,
    now: UnixTime,
    limits: Limits,
    jitter: f64,
) -> Plan {
    let aged_out = limits.max_age.map(|age| this_update.plus(age));
    let plan = plan_validity(this_update, next_update, now, limits.skew, limits.window, jitter);
    match aged_out {
        Some(end) if end.plus(limits.skew) < plan.staple_until => {
            let capped = plan_validity(this_update, Some(end), now, limits.skew, limits.window, jitter);
            Plan { staple_until: end.plus(limits.skew), next_fetch: capped.next_fetch.min(plan.next_fetch) }
        }
        _ => plan,
    }
}

fn plan_validity(
    this_update: UnixTime,
    next_update: Option<UnixTime>,
    now: UnixTime,
    skew: Duration,
    window: RenewWindow,
    jitter: f64,
) -> Plan {
    let Some(next) = next_update.filter(|n| *n > this_update) else {
        return Plan {
            staple_until: this_update.max(now).plus(NO_NEXT_UPDATE_LIFETIME),
            next_fetch: now.plus(NO_NEXT_UPDATE_REFRESH).minus(spread(NO_NEXT_UPDATE_REFRESH, jitter)),
        };
    };
    let validity = next.since(this_update);
    let renew_before = match window {
        RenewWindow::Percent(p) => Duration::from_secs(validity.as_secs().saturating_mul(u64::from(p.min(100))) / 100),
        RenewWindow::Fixed(d) => d.min(validity),
    };
    let renew_at = next.minus(renew_before).minus(spread(renew_before, jitter));
    // A response whose thisUpdate is far in the past is already inside its window:
    // refresh part-way through what is left, not at once and not in a loop.
    let remaining = next.since(now);
    let earliest = now.plus((remaining / 4).clamp(MIN_REFRESH_INTERVAL, Duration::from_secs(3600)));
    Plan { staple_until: next.plus(skew), next_fetch: renew_at.max(earliest) }
}

/// Up to a fifth of `span`: certificates fetched in the same second (a cold start with
/// thousands of them) refresh spread over the renew window, not in one burst, and
/// servers of a fleet do not fetch in step.
fn spread(span: Duration, jitter: f64) -> Duration {
    let max = span / 5;
    Duration::from_secs((max.as_secs() as f64 * jitter.clamp(0.0, 1.0)) as u64)
}

/// When to retry after `failures` consecutive failures (1 for the first).
pub fn retry_after_failure(failures: u32, now: UnixTime, must_staple: bool, jitter: f64) -> UnixTime {
    let (base, cap) =
        if must_staple { (MUST_STAPLE_BASE_BACKOFF, MUST_STAPLE_MAX_BACKOFF) } else { (BASE_BACKOFF, MAX_BACKOFF) };
    let exp = failures.saturating_sub(1).min(20);
    let delay = base.saturating_mul(1 << exp).min(cap);
    // A tenth of the delay: retries of certificates that failed together drift apart.
    let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
    now.plus(delay).plus(Duration::from_secs_f64(delay.as_secs_f64() / 10.0 * jitter))
}

/// True if a fetch is due: never scheduled, or its time has come.
pub fn is_due(next_fetch: Option<UnixTime>, now: UnixTime) -> bool {
    next_fetch.is_none_or(|t| now >= t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn t(secs: i64) -> UnixTime {
        UnixTime::from_secs(secs)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn plan(this: UnixTime, next: Option<UnixTime>, now: UnixTime, skew: Duration, w: RenewWindow, j: f64) -> Plan {
        plan_success(this, next, now, Limits { skew, max_age: None, window: w }, j)
    }

    fn aged(max_age: u64, skew: u64) -> Limits {
        Limits { skew: secs(skew), max_age: Some(secs(max_age)), window: RenewWindow::Percent(50) }
    }

    #[test]
    fn a_max_age_ends_the_staple_and_brings_the_refresh_before_it() {
        // A 7-day response with MaxAge 30 s and 5 s of skew, fetched when issued.
        let p = plan_success(t(1000), Some(t(1000 + 7 * DAY)), t(1000), aged(30, 5), 0.0);
        assert_eq!(p.staple_until, t(1035));
        assert_eq!(p.next_fetch, t(1015), "half of the 30 s");
        // Fetched 20 s after thisUpdate (a cached answer): refresh soon, still before the end.
        let p = plan_success(t(1000), Some(t(1000 + 7 * DAY)), t(1020), aged(30, 5), 0.0);
        assert_eq!(p.staple_until, t(1035));
        assert!(p.next_fetch < t(1030) && p.next_fetch >= t(1020).plus(MIN_REFRESH_INTERVAL), "{p:?}");
        // Without nextUpdate the max age bounds the day-long default too.
        let p = plan_success(t(1000), None, t(1000), aged(900, 0), 0.0);
        assert_eq!((p.staple_until, p.next_fetch), (t(1900), t(1450)));
    }

    #[test]
    fn a_max_age_longer_than_the_validity_changes_nothing() {
        let with = plan_success(t(0), Some(t(DAY)), t(0), aged(2 * DAY as u64, 300), 0.3);
        assert_eq!(with, plan(t(0), Some(t(DAY)), t(0), secs(300), RenewWindow::Percent(50), 0.3));
    }

    #[test]
    fn renews_at_half_validity_by_default() {
        let p = plan(t(0), Some(t(7 * DAY)), t(60), secs(300), RenewWindow::Percent(50), 0.0);
        assert_eq!(p.staple_until, t(7 * DAY + 300));
        assert_eq!(p.next_fetch, t(7 * DAY / 2));
    }

    #[test]
    fn jitter_only_brings_refresh_earlier_and_by_at_most_a_fifth_of_the_window() {
        let a = plan(t(0), Some(t(DAY)), t(0), secs(0), RenewWindow::Percent(50), 0.0);
        let b = plan(t(0), Some(t(DAY)), t(0), secs(0), RenewWindow::Percent(50), 0.999);
        assert!(b.next_fetch < a.next_fetch);
        assert!(b.next_fetch.seconds_until(a.next_fetch) <= DAY / 2 / 5);
    }

    #[test]
    fn a_thousand_certificates_fetched_in_one_second_refresh_spread_over_the_window() {
        // A 7-day response, renewed in its last 50% (3.5 days), for 1,000 certificates
        // fetched at the same second of a cold start.
        let window = 7 * DAY / 2;
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next_rounds: Vec<i64> = (0..1000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let jitter = (seed >> 11) as f64 / (1u64 << 53) as f64;
                let p = plan(t(0), Some(t(7 * DAY)), t(0), secs(300), RenewWindow::Percent(50), jitter);
                p.next_fetch.secs()
            })
            .collect();
        next_rounds.sort_unstable();
        let span = next_rounds[999] - next_rounds[0];
        assert!(span * 10 >= window, "spread over {span} s, less than 10% of the {window} s window");
        // No burst: about one a minute on average, and never ten within a minute.
        let busiest = next_rounds.windows(10).map(|w| w[9] - w[0]).min().unwrap();
        assert!(busiest >= 60, "ten refreshes within {busiest} s");
        assert!(next_rounds.iter().all(|&t| t <= 7 * DAY / 2), "never after the window opens");
    }

    #[test]
    fn fixed_window_in_seconds() {
        let p = plan(t(0), Some(t(DAY)), t(0), secs(0), RenewWindow::Fixed(secs(3600)), 0.0);
        assert_eq!(p.next_fetch, t(DAY - 3600));
    }

    #[test]
    fn old_this_update_does_not_cause_a_fetch_loop() {
        // Validity 7 days, but thisUpdate 6 days ago: already inside the 50% window.
        let now = t(6 * DAY);
        let p = plan(t(0), Some(t(7 * DAY)), now, secs(0), RenewWindow::Percent(50), 0.0);
        assert_eq!(p.next_fetch, now.plus(secs(3600)));
        let almost = plan(t(0), Some(t(100)), t(99), secs(0), RenewWindow::Percent(50), 0.0);
        assert_eq!(almost.next_fetch, t(99).plus(MIN_REFRESH_INTERVAL));
    }

    #[test]
    fn missing_next_update_is_refreshed_hourly_and_stapled_for_a_day() {
        let p = plan(t(1000), None, t(1000), secs(300), RenewWindow::Percent(50), 0.0);
        assert_eq!(p.next_fetch, t(1000 + 3600));
        assert_eq!(p.staple_until, t(1000 + DAY));
    }

    #[test]
    fn huge_skew_and_window_saturate_instead_of_wrapping() {
        let p = plan(t(0), Some(t(DAY)), t(0), Duration::MAX, RenewWindow::Fixed(Duration::MAX), 0.5);
        assert_eq!(p.staple_until, t(i64::MAX));
        assert!(p.next_fetch >= t(0).plus(MIN_REFRESH_INTERVAL), "never in the past: {:?}", p.next_fetch);
    }

    #[test]
    fn thirty_days_of_skew_and_window_give_exact_times() {
        let month = secs(crate::config::MAX_SPAN_SECS);
        // A 7-day response, fetched when it was issued.
        let p = plan(t(0), Some(t(7 * DAY)), t(0), month, RenewWindow::Fixed(month), 0.0);
        assert_eq!(p.staple_until, t(37 * DAY), "nextUpdate plus 30 days");
        assert_eq!(p.next_fetch, t(3600), "a window wider than the validity refreshes an hour later");
        let p = plan(t(0), Some(t(100 * DAY)), t(0), month, RenewWindow::Percent(99), 0.0);
        assert_eq!(p.next_fetch, t(DAY), "99%: refresh once 1% of the validity has passed");
        let p = plan(t(0), Some(t(100 * DAY)), t(0), month, RenewWindow::Percent(1), 0.0);
        assert_eq!(p.next_fetch, t(99 * DAY));
    }

    #[test]
    fn extreme_in_range_settings_never_wrap_whatever_the_times() {
        let month = secs(crate::config::MAX_SPAN_SECS);
        let (min, max) = (t(i64::MIN), t(i64::MAX));
        // A response may carry any time; the clock reads at most the end of year 9999
        // (the last time ASN.1 can write), so "an hour from now" still fits.
        let y9999 = t(253_402_300_799);
        let windows =
            [RenewWindow::Percent(1), RenewWindow::Percent(99), RenewWindow::Fixed(secs(1)), RenewWindow::Fixed(month)];
        let times = [
            (t(0), Some(t(DAY)), t(0)),
            (t(0), Some(max), t(0)),
            (min, Some(max), t(0)),
            (min, Some(max), y9999),
            (t(i64::MAX - 10), Some(max), y9999),
            (t(0), Some(t(DAY)), min),
            (t(0), Some(t(DAY)), y9999),
            (max, Some(min), t(0)),
            (t(0), None, y9999),
            (min, None, min),
        ];
        for window in windows {
            for (this, next, now) in times {
                for (skew, jitter) in [(secs(0), 0.0), (month, 0.999), (month, f64::NAN)] {
                    let p = plan(this, next, now, skew, window, jitter);
                    let case = format!("{window:?} {this:?} {next:?} {now:?} {skew:?}: {p:?}");
                    assert!(p.next_fetch >= now.plus(MIN_REFRESH_INTERVAL), "never at once: {case}");
                    match next.filter(|n| *n > this) {
                        Some(n) => {
                            assert_eq!(p.staple_until, n.plus(skew), "{case}");
                            assert!(p.next_fetch <= n.max(now.plus(secs(3600))), "not after nextUpdate: {case}");
                        }
                        None => assert!(p.next_fetch <= now.plus(NO_NEXT_UPDATE_REFRESH), "{case}"),
                    }
                }
            }
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let delays: Vec<i64> = (1..=10).map(|f| t(0).seconds_until(retry_after_failure(f, t(0), false, 0.0))).collect();
        assert_eq!(&delays[..4], &[30, 60, 120, 240]);
        assert_eq!(delays[9], MAX_BACKOFF.as_secs() as i64);
        assert_eq!(retry_after_failure(u32::MAX, t(0), false, 0.0), t(0).plus(MAX_BACKOFF));
        assert_eq!(retry_after_failure(1, t(0), true, 0.0), t(5));
        assert_eq!(retry_after_failure(30, t(0), true, 0.0), t(0).plus(MUST_STAPLE_MAX_BACKOFF));
    }

    #[test]
    fn due() {
        assert!(is_due(None, t(5)));
        assert!(is_due(Some(t(5)), t(5)));
        assert!(!is_due(Some(t(6)), t(5)));
    }
}
