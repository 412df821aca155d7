//! Full validation of a responder's answer before anything is stapled (RFC 6960 §3.2).

use std::fmt;

use openssl::hash::MessageDigest;
use openssl::ocsp::{OcspCertId, OcspCertStatus, OcspFlag, OcspResponse, OcspResponseStatus, OcspRevokedStatus};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::X509;

use super::time::parse_openssl_time;
use crate::cert::CertInfo;
use crate::der;

/// What a response must satisfy besides its signature and CertID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Tolerated clock skew, seconds.
    pub time_skew: i64,
    /// Maximum age of thisUpdate, seconds.
    pub max_age: Option<i64>,
    /// The nonce the request carried, which the response must echo.
    pub nonce: Option<Vec<u8>>,
}

/// The status a valid response asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertStatus {
    /// Not revoked.
    Good,
    /// Revoked, with the reason's name.
    Revoked {
        /// CRL reason, e.g. "keyCompromise".
        reason: String,
    },
}

/// A response that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Good or revoked.
    pub status: CertStatus,
    /// Unix seconds.
    pub this_update: i64,
    /// Unix seconds; `None` when the responder gave no nextUpdate.
    pub next_update: Option<i64>,
}

/// Why a response must not be stapled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The bytes are not a DER OCSPResponse.
    NotOcsp(String),
    /// responseStatus is not successful (tryLater, unauthorized, ...).
    ResponderError(&'static str),
    /// No basic response inside.
    NotBasic,
    /// Signature or signer authorisation failed.
    BadSignature(String),
    /// No SingleResponse for our CertID.
    WrongCert,
    /// The responder does not know the certificate.
    Unknown,
    /// thisUpdate is in the future.
    NotYetValid(i64),
    /// nextUpdate has passed.
    Expired(i64),
    /// thisUpdate is older than StaplingResponseMaxAge.
    TooOld(i64),
    /// The nonce was missing or different.
    NonceMismatch,
    /// A time field could not be read.
    BadTime,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NotOcsp(e) => write!(f, "not a DER OCSP response ({e})"),
            Rejection::ResponderError(s) => write!(f, "responder answered '{s}' instead of a response"),
            Rejection::NotBasic => f.write_str("response carries no basic OCSP response"),
            Rejection::BadSignature(e) => write!(f, "signature does not verify against the issuer ({e})"),
            Rejection::WrongCert => f.write_str("response is for a different certificate (CertID mismatch)"),
            Rejection::Unknown => f.write_str("responder says the certificate status is 'unknown'"),
            Rejection::NotYetValid(t) => write!(f, "thisUpdate ({t}) is in the future beyond the allowed skew"),
            Rejection::Expired(t) => write!(f, "nextUpdate ({t}) has passed beyond the allowed skew"),
            Rejection::TooOld(t) => write!(f, "thisUpdate ({t}) is older than StaplingResponseMaxAge"),
            Rejection::NonceMismatch => f.write_str("response does not echo the request's nonce"),
            Rejection::BadTime => f.write_str("response has an unreadable time field"),
        }
    }
}

impl std::error::Error for Rejection {}

/// Checks `der` as an answer for `cert` at Unix time `now`.
pub fn validate(der_bytes: &[u8], cert: &CertInfo, policy: &Policy, now: i64) -> Result<Verified, Rejection> {
    let response = OcspResponse::from_der(der_bytes).map_err(|e| Rejection::NotOcsp(first_error(&e)))?;
    let status = response.status();
    if status != OcspResponseStatus::SUCCESSFUL {
        return Err(Rejection::ResponderError(response_status_name(status)));
    }
    let basic = response.basic().map_err(|_| Rejection::NotBasic)?;
    verify_signature(&basic, cert)?;
    let id = OcspCertId::from_cert(MessageDigest::sha1(), &cert.leaf, &cert.issuer)
        .map_err(|e| Rejection::NotOcsp(first_error(&e)))?;
    let single = basic.find_status(&id).ok_or(Rejection::WrongCert)?;
    let this_update = parse_openssl_time(&single.this_update.to_string()).ok_or(Rejection::BadTime)?;
    let next_update = match single.next_update() {
        Some(t) => Some(parse_openssl_time(&t.to_string()).ok_or(Rejection::BadTime)?),
        None => None,
    };
    check_times(this_update, next_update, policy, now)?;
    if let Some(nonce) = &policy.nonce {
        if der::response_nonce(der_bytes).as_deref() != Some(nonce.as_slice()) {
            return Err(Rejection::NonceMismatch);
        }
    }
    let status = match single.status {
        OcspCertStatus::GOOD => CertStatus::Good,
        OcspCertStatus::REVOKED => CertStatus::Revoked { reason: reason_name(single.reason).into() },
        _ => return Err(Rejection::Unknown),
    };
    Ok(Verified { status, this_update, next_update })
}

fn verify_signature(basic: &openssl::ocsp::OcspBasicResponseRef, cert: &CertInfo) -> Result<(), Rejection> {
    let bad = |e: openssl::error::ErrorStack| Rejection::BadSignature(first_error(&e));
    // The issuer is the trust anchor: it either signed the response itself or issued
    // the delegated responder certificate (which OpenSSL then requires to carry the
    // OCSPSigning EKU and to be issued by the CertID's issuer).
    let mut store = X509StoreBuilder::new().map_err(bad)?;
    store.add_cert(cert.issuer.clone()).map_err(bad)?;
    store.set_flags(X509VerifyFlags::PARTIAL_CHAIN).map_err(bad)?;
    let store = store.build();
    let mut certs: Stack<X509> = Stack::new().map_err(bad)?;
    certs.push(cert.issuer.clone()).map_err(bad)?;
    basic.verify(&certs, &store, OcspFlag::empty()).map_err(bad)
}

fn check_times(this_update: i64, next_update: Option<i64>, policy: &Policy, now: i64) -> Result<(), Rejection> {
    if this_update > now + policy.time_skew {
        return Err(Rejection::NotYetValid(this_update));
    }
    if let Some(next) = next_update {
        if next < now - policy.time_skew {
            return Err(Rejection::Expired(next));
        }
    }
    if let Some(max_age) = policy.max_age {
        if now - this_update > max_age + policy.time_skew {
            return Err(Rejection::TooOld(this_update));
        }
    }
    Ok(())
}

fn first_error(e: &openssl::error::ErrorStack) -> String {
    e.errors()
        .first()
        .map(|err| err.reason().unwrap_or("unknown error").to_string())
        .unwrap_or_else(|| "no detail".into())
}

fn response_status_name(status: OcspResponseStatus) -> &'static str {
    match status {
        OcspResponseStatus::MALFORMED_REQUEST => "malformedRequest",
        OcspResponseStatus::INTERNAL_ERROR => "internalError",
        OcspResponseStatus::TRY_LATER => "tryLater",
        OcspResponseStatus::SIG_REQUIRED => "sigRequired",
        OcspResponseStatus::UNAUTHORIZED => "unauthorized",
        _ => "unrecognised status",
    }
}

fn reason_name(reason: OcspRevokedStatus) -> &'static str {
    match reason {
        OcspRevokedStatus::KEY_COMPROMISE => "keyCompromise",
        OcspRevokedStatus::CA_COMPROMISE => "cACompromise",
        OcspRevokedStatus::AFFILIATION_CHANGED => "affiliationChanged",
        OcspRevokedStatus::STATUS_SUPERSEDED => "superseded",
        OcspRevokedStatus::STATUS_CESSATION_OF_OPERATION => "cessationOfOperation",
        OcspRevokedStatus::STATUS_CERTIFICATE_HOLD => "certificateHold",
        OcspRevokedStatus::REMOVE_FROM_CRL => "removeFromCRL",
        OcspRevokedStatus::UNSPECIFIED => "unspecified",
        _ => "no reason given",
    }
}
