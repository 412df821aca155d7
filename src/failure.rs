//! Why a refresh failed, as one shared-memory word: every process (the status page, the
//! alert lines) reads the cause the lease holder recorded, without any string in shared
//! memory.

use std::fmt;

/// The cause of a failed refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The responder could not be reached (DNS, connect refused, reset).
    Unreachable,
    /// The responder did not answer within `StaplingResponderTimeout`.
    Timeout,
    /// The responder answered with this HTTP status.
    HttpStatus(u16),
    /// The answer was not an OCSP response (Content-Type, size, body).
    NotOcsp,
    /// The responder answered with this OCSPResponseStatus (3: tryLater, 6: unauthorized...).
    OcspStatus(u8),
    /// The response failed validation; the reason is the [`Invalid`] kind.
    Invalid(Invalid),
    /// The certificate has no OCSP URL (and no `StaplingForceURL`).
    NoUrl,
    /// mod_ssl handed over no issuer for the certificate.
    NoIssuer,
    /// The response could not be kept in the shared store.
    Store,
    /// The HTTP proxy could not be reached, or refused the request.
    Proxy,
    /// The TLS certificate of an https:// responder did not verify, or TLS failed.
    Tls,
}

/// Why a response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Invalid {
    /// Not a DER OCSP response, or no basic response inside.
    Malformed = 1,
    /// The signature or the signer's authorisation failed.
    Signature = 2,
    /// No answer for this certificate in it.
    WrongCert = 3,
    /// The responder says "unknown".
    Unknown = 4,
    /// thisUpdate in the future, nextUpdate past, or older than the max age.
    Time = 5,
    /// The nonce was missing or different.
    Nonce = 6,
}

impl Invalid {
    fn from_code(code: u8) -> Option<Invalid> {
        [Invalid::Malformed, Invalid::Signature, Invalid::WrongCert, Invalid::Unknown, Invalid::Time, Invalid::Nonce]
            .into_iter()
            .find(|k| *k as u8 == code)
    }
}

impl Failure {
    /// The word stored in shared memory (never 0, which means "no failure").
    pub fn to_word(self) -> u64 {
        let (kind, detail): (u64, u64) = match self {
            Failure::Unreachable => (1, 0),
            Failure::Timeout => (2, 0),
            Failure::HttpStatus(code) => (3, u64::from(code)),
            Failure::NotOcsp => (4, 0),
            Failure::OcspStatus(status) => (5, u64::from(status)),
            Failure::Invalid(kind) => (6, kind as u64),
            Failure::NoUrl => (7, 0),
            Failure::NoIssuer => (8, 0),
            Failure::Store => (9, 0),
            Failure::Proxy => (10, 0),
            Failure::Tls => (11, 0),
        };
        kind | (detail << 8)
    }

    /// The failure a word stands for; `None` for 0 or a word no version wrote.
    pub fn from_word(word: u64) -> Option<Failure> {
        let detail = word >> 8;
        Some(match word & 0xff {
            1 => Failure::Unreachable,
            2 => Failure::Timeout,
            3 => Failure::HttpStatus(u16::try_from(detail).ok()?),
            4 => Failure::NotOcsp,
            5 => Failure::OcspStatus(u8::try_from(detail).ok()?),
            6 => Failure::Invalid(Invalid::from_code(u8::try_from(detail).ok()?)?),
            7 => Failure::NoUrl,
            8 => Failure::NoIssuer,
            9 => Failure::Store,
            10 => Failure::Proxy,
            11 => Failure::Tls,
            _ => return None,
        })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Unreachable => f.write_str("responder unreachable"),
            Failure::Timeout => f.write_str("responder timed out"),
            Failure::HttpStatus(code) => write!(f, "HTTP status {code}"),
            Failure::NotOcsp => f.write_str("not an OCSP response"),
            Failure::OcspStatus(3) => f.write_str("responder said tryLater"),
            Failure::OcspStatus(6) => f.write_str("responder said unauthorized"),
            Failure::OcspStatus(status) => write!(f, "responder error status {status}"),
            Failure::Invalid(Invalid::Malformed) => f.write_str("invalid response: malformed"),
            Failure::Invalid(Invalid::Signature) => f.write_str("invalid response: signature"),
            Failure::Invalid(Invalid::WrongCert) => f.write_str("invalid response: for another certificate"),
            Failure::Invalid(Invalid::Unknown) => f.write_str("responder does not know the certificate"),
            Failure::Invalid(Invalid::Time) => f.write_str("invalid response: out of its validity period"),
            Failure::Invalid(Invalid::Nonce) => f.write_str("invalid response: nonce"),
            Failure::NoUrl => f.write_str("no OCSP responder URL"),
            Failure::NoIssuer => f.write_str("no issuer certificate"),
            Failure::Store => f.write_str("cannot keep the response in the shared store"),
            Failure::Proxy => f.write_str("proxy failed"),
            Failure::Tls => f.write_str("responder TLS failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_round_trips_through_its_word() {
        let all = [
            Failure::Unreachable,
            Failure::Timeout,
            Failure::HttpStatus(503),
            Failure::NotOcsp,
            Failure::OcspStatus(3),
            Failure::Invalid(Invalid::Nonce),
            Failure::Invalid(Invalid::Malformed),
            Failure::NoUrl,
            Failure::NoIssuer,
            Failure::Store,
            Failure::Proxy,
            Failure::Tls,
        ];
        for f in all {
            assert_ne!(f.to_word(), 0);
            assert_eq!(Failure::from_word(f.to_word()), Some(f), "{f}");
        }
        assert_eq!(Failure::from_word(0), None);
        assert_eq!(Failure::from_word(0xff), None);
        assert_eq!(Failure::from_word(6 | (99 << 8)), None);
    }
}
