//! The one time type of the crate, and the clock it is read from.
//!
//! Every instant is a [`UnixTime`] (whole seconds since the epoch); every span is a
//! [`Duration`]; "no time" is `Option::None`, never 0. The clock is injected
//! ([`Clock`]), so that schedules, backoff, expiry and leases are tested in
//! milliseconds on a [`ManualClock`].

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An instant: whole seconds since 1970-01-01T00:00:00Z. Arithmetic saturates, so a
/// huge configured span can never wrap into the past.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixTime(i64);

/// Whole seconds of `d`, saturated to `i64`.
fn secs_of(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl UnixTime {
    /// The epoch itself.
    pub const EPOCH: UnixTime = UnixTime(0);

    /// `secs` seconds after the epoch.
    pub const fn from_secs(secs: i64) -> UnixTime {
        UnixTime(secs)
    }

    /// Seconds since the epoch.
    pub const fn secs(self) -> i64 {
        self.0
    }

    /// `d` later (saturating).
    pub fn plus(self, d: Duration) -> UnixTime {
        UnixTime(self.0.saturating_add(secs_of(d)))
    }

    /// `d` earlier (saturating).
    pub fn minus(self, d: Duration) -> UnixTime {
        UnixTime(self.0.saturating_sub(secs_of(d)))
    }

    /// Signed seconds from `self` to `later` (negative if `later` is earlier).
    pub fn seconds_until(self, later: UnixTime) -> i64 {
        later.0.saturating_sub(self.0)
    }

    /// The span from `earlier` to `self`, or zero if `earlier` is later.
    pub fn since(self, earlier: UnixTime) -> Duration {
        Duration::from_secs(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    /// The time as a store word (0 for the epoch and anything before it).
    pub fn to_word(self) -> u64 {
        u64::try_from(self.0).unwrap_or(0)
    }

    /// The time as a log-line date, "2026-11-21 12:00:00 UTC".
    pub fn date(self) -> Date {
        Date(self)
    }

    /// A store word back to a time; 0 means "none".
    pub fn from_word(word: u64) -> Option<UnixTime> {
        (word != 0).then(|| UnixTime(i64::try_from(word).unwrap_or(i64::MAX)))
    }
}

impl fmt::Display for UnixTime {
    /// RFC 3339 in UTC, for log lines an admin reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (days, rem) = (self.0.div_euclid(86_400), self.0.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        write!(f, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
    }
}

/// A time shown as an admin reads it in a log line: "2026-11-21 12:00:00 UTC".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date(UnixTime);

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (days, rem) = (self.0 .0.div_euclid(86_400), self.0 .0.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        write!(f, "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
    }
}

/// A span as an admin reads it: "3 h 20 min", "45 s", "2 days 4 h".
pub fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} days {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Where "now" comes from.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> UnixTime;
}

/// The system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(secs_of).unwrap_or(0);
        UnixTime(secs)
    }
}

/// A clock that moves only when told to: for tests of schedules and faults.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock that reads `start`.
    pub fn at(start: UnixTime) -> ManualClock {
        ManualClock(AtomicI64::new(start.0))
    }

    /// Moves the clock by `d` (forwards; saturating, like [`UnixTime::plus`]).
    pub fn advance(&self, d: Duration) {
        let step = secs_of(d);
        let _ = self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| Some(t.saturating_add(step)));
    }

    /// Sets the clock to `t` (which may be earlier: clocks step back too).
    pub fn set(&self, t: UnixTime) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixTime {
        UnixTime(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        let t = UnixTime::from_secs(100);
        assert_eq!(t.plus(Duration::from_secs(u64::MAX)), UnixTime::from_secs(i64::MAX));
        assert_eq!(t.minus(Duration::from_secs(u64::MAX)), UnixTime::from_secs(100 - i64::MAX));
        assert_eq!(t.seconds_until(UnixTime::from_secs(40)), -60);
        assert_eq!(UnixTime::from_secs(40).since(t), Duration::ZERO);
    }

    #[test]
    fn thirty_days_either_side_of_the_ends_of_time_saturate() {
        let month = Duration::from_secs(crate::config::MAX_SPAN_SECS);
        let (min, max) = (UnixTime::from_secs(i64::MIN), UnixTime::from_secs(i64::MAX));
        assert_eq!(UnixTime::from_secs(i64::MAX - 1).plus(month), max);
        assert_eq!(UnixTime::from_secs(i64::MIN + 1).minus(month), min);
        assert_eq!(max.minus(month).plus(month), max);
        assert_eq!(min.seconds_until(max), i64::MAX);
        assert_eq!(max.seconds_until(min), i64::MIN);
        assert_eq!(max.since(min), Duration::from_secs(i64::MAX as u64));
        assert_eq!(min.since(max), Duration::ZERO);
        assert_eq!(UnixTime::from_word(u64::MAX), Some(max));
        assert!(!max.to_string().is_empty() && !min.to_string().is_empty());
        let clock = ManualClock::at(UnixTime::from_secs(i64::MAX - 5));
        clock.advance(month);
        assert_eq!(clock.now(), max, "the test clock saturates too");
    }

    #[test]
    fn words_use_zero_for_none() {
        assert_eq!(UnixTime::from_word(0), None);
        assert_eq!(UnixTime::from_word(UnixTime::from_secs(7).to_word()), Some(UnixTime::from_secs(7)));
        assert_eq!(UnixTime::from_secs(-5).to_word(), 0);
    }

    #[test]
    fn displays_as_rfc3339() {
        assert_eq!(UnixTime::from_secs(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(UnixTime::from_secs(1_795_214_206).to_string(), "2026-11-20T22:36:46Z");
        assert_eq!(UnixTime::from_secs(1_709_208_000).to_string(), "2024-02-29T12:00:00Z");
    }

    #[test]
    fn dates_and_spans_read_as_an_admin_expects() {
        assert_eq!(UnixTime::from_secs(1_795_262_400).date().to_string(), "2026-11-21 12:00:00 UTC");
        assert_eq!(span(Duration::from_secs(45)), "45 s");
        assert_eq!(span(Duration::from_secs(600)), "10 min");
        assert_eq!(span(Duration::from_secs(3 * 3600 + 20 * 60)), "3 h 20 min");
        assert_eq!(span(Duration::from_secs(2 * 86_400 + 4 * 3600)), "2 days 4 h");
    }

    #[test]
    fn manual_clock_moves_both_ways() {
        let c = ManualClock::at(UnixTime::from_secs(1000));
        c.advance(Duration::from_secs(5));
        assert_eq!(c.now(), UnixTime::from_secs(1005));
        c.set(UnixTime::from_secs(10));
        assert_eq!(c.now(), UnixTime::from_secs(10));
    }
}
