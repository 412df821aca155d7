//! Converts OpenSSL's printed ASN.1 times to Unix seconds.
//!
//! The openssl crate exposes OCSP times only as `Asn1GeneralizedTimeRef`, whose one
//! safe accessor is `Display` ("Nov  5 22:36:46.123 2026 GMT").

/// Unix seconds for OpenSSL's `Mon DD HH:MM:SS[.fff] YYYY GMT` form.
pub fn parse_openssl_time(text: &str) -> Option<i64> {
    let mut parts = text.split_whitespace();
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let day: u32 = parts.next()?.parse().ok()?;
    let clock = parts.next()?;
    let year: i64 = parts.next()?.parse().ok()?;
    if parts.next() != Some("GMT") || parts.next().is_some() || !(1..=31).contains(&day) {
        return None;
    }
    let clock = clock.split('.').next()?;
    let mut hms = clock.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day as i64) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openssl_display_forms() {
        assert_eq!(parse_openssl_time("Jan  1 00:00:00 1970 GMT"), Some(0));
        assert_eq!(parse_openssl_time("Nov 20 22:36:46 2026 GMT"), Some(1_795_214_206));
        assert_eq!(parse_openssl_time("Feb 29 12:00:00.5 2024 GMT"), Some(1_709_208_000));
        assert_eq!(parse_openssl_time("Nov 20 22:36:46 2026"), None);
        assert_eq!(parse_openssl_time("Foo 20 22:36:46 2026 GMT"), None);
        assert_eq!(parse_openssl_time("Nov 20 25:36:46 2026 GMT"), None);
        assert_eq!(parse_openssl_time(""), None);
    }

    #[test]
    fn agrees_with_openssl() {
        let t = openssl::asn1::Asn1Time::from_unix(1_700_000_123).unwrap();
        assert_eq!(parse_openssl_time(&t.to_string()), Some(1_700_000_123));
    }
}
