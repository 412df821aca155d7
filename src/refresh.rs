//! When to fetch: pure scheduling decisions, tested without a clock or a network.

use crate::config::RenewWindow;

/// Never fetch one certificate more often than this after a success.
pub const MIN_REFRESH_INTERVAL: i64 = 5;
/// Refresh interval for responses without nextUpdate.
pub const NO_NEXT_UPDATE_REFRESH: i64 = 3600;
/// How long a response without nextUpdate may be stapled after it was fetched.
pub const NO_NEXT_UPDATE_LIFETIME: i64 = 86_400;
/// Longest wait between retries while a responder fails.
pub const MAX_BACKOFF: i64 = 3600;
/// First retry delay after a failure.
pub const BASE_BACKOFF: i64 = 30;
/// Must-staple certificates: clients refuse the site without a staple, so retry sooner.
pub const MUST_STAPLE_BASE_BACKOFF: i64 = 5;
/// ... and cap the wait lower.
pub const MUST_STAPLE_MAX_BACKOFF: i64 = 300;

/// The times that govern a freshly validated response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Staple only before this time: nextUpdate plus skew.
    pub staple_until: i64,
    /// When to fetch again.
    pub next_fetch: i64,
}

/// Plans the life of a response fetched at `now`. `jitter` is uniform in [0, 1).
pub fn plan_success(
    this_update: i64,
    next_update: Option<i64>,
    now: i64,
    skew: i64,
    window: RenewWindow,
    jitter: f64,
) -> Plan {
    let Some(next) = next_update.filter(|n| *n > this_update) else {
        let base = this_update.max(now);
        return Plan {
            staple_until: base + NO_NEXT_UPDATE_LIFETIME,
            next_fetch: now + NO_NEXT_UPDATE_REFRESH - spread(NO_NEXT_UPDATE_REFRESH, jitter),
        };
    };
    let validity = next - this_update;
    let renew_before = match window {
        RenewWindow::Percent(p) => validity * p as i64 / 100,
        RenewWindow::Fixed(d) => (d.as_secs() as i64).min(validity),
    };
    let renew_at = next - renew_before - spread(renew_before, jitter);
    // A response whose thisUpdate is far in the past is already inside its window:
    // refresh part-way through what is left, not at once and not in a loop.
    let remaining = next - now;
    let earliest = now + (remaining / 4).clamp(MIN_REFRESH_INTERVAL, 3600);
    Plan { staple_until: next + skew, next_fetch: renew_at.max(earliest) }
}

/// Up to 10% of `span` (at most 15 minutes), so that many servers do not fetch in step.
fn spread(span: i64, jitter: f64) -> i64 {
    let max = (span / 10).clamp(0, 900);
    (max as f64 * jitter.clamp(0.0, 1.0)) as i64
}

/// When to retry after `failures` consecutive failures (1 for the first).
pub fn retry_after_failure(failures: u32, now: i64, must_staple: bool, jitter: f64) -> i64 {
    let (base, cap) =
        if must_staple { (MUST_STAPLE_BASE_BACKOFF, MUST_STAPLE_MAX_BACKOFF) } else { (BASE_BACKOFF, MAX_BACKOFF) };
    let exp = failures.saturating_sub(1).min(20);
    let delay = base.saturating_mul(1i64 << exp).min(cap);
    now + delay + spread(delay, jitter)
}

/// True if a fetch is due: never fetched, or its time has come.
pub fn is_due(next_fetch: i64, now: i64) -> bool {
    next_fetch == 0 || now >= next_fetch
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const DAY: i64 = 86_400;

    #[test]
    fn renews_at_half_validity_by_default() {
        let p = plan_success(0, Some(7 * DAY), 60, 300, RenewWindow::Percent(50), 0.0);
        assert_eq!(p.staple_until, 7 * DAY + 300);
        assert_eq!(p.next_fetch, 7 * DAY / 2);
    }

    #[test]
    fn jitter_only_brings_refresh_earlier_and_by_at_most_ten_percent() {
        let a = plan_success(0, Some(DAY), 0, 0, RenewWindow::Percent(50), 0.0);
        let b = plan_success(0, Some(DAY), 0, 0, RenewWindow::Percent(50), 0.999);
        assert!(b.next_fetch < a.next_fetch);
        assert!(a.next_fetch - b.next_fetch <= 900);
    }

    #[test]
    fn fixed_window_in_seconds() {
        let p = plan_success(0, Some(DAY), 0, 0, RenewWindow::Fixed(Duration::from_secs(3600)), 0.0);
        assert_eq!(p.next_fetch, DAY - 3600);
    }

    #[test]
    fn old_this_update_does_not_cause_a_fetch_loop() {
        // Validity 7 days, but thisUpdate 6 days ago: already inside the 50% window.
        let now = 6 * DAY;
        let p = plan_success(0, Some(7 * DAY), now, 0, RenewWindow::Percent(50), 0.0);
        assert_eq!(p.next_fetch, now + 3600);
        let almost = plan_success(0, Some(100), 99, 0, RenewWindow::Percent(50), 0.0);
        assert_eq!(almost.next_fetch, 99 + MIN_REFRESH_INTERVAL);
    }

    #[test]
    fn missing_next_update_is_refreshed_hourly_and_stapled_for_a_day() {
        let p = plan_success(1000, None, 1000, 300, RenewWindow::Percent(50), 0.0);
        assert_eq!(p.next_fetch, 1000 + 3600);
        assert_eq!(p.staple_until, 1000 + DAY);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let delays: Vec<i64> = (1..=10).map(|f| retry_after_failure(f, 0, false, 0.0)).collect();
        assert_eq!(&delays[..4], &[30, 60, 120, 240]);
        assert_eq!(delays[9], MAX_BACKOFF);
        assert_eq!(retry_after_failure(u32::MAX, 0, false, 0.0), MAX_BACKOFF);
        assert_eq!(retry_after_failure(1, 0, true, 0.0), 5);
        assert_eq!(retry_after_failure(30, 0, true, 0.0), MUST_STAPLE_MAX_BACKOFF);
    }

    #[test]
    fn due() {
        assert!(is_due(0, 5));
        assert!(is_due(5, 5));
        assert!(!is_due(6, 5));
    }
}
