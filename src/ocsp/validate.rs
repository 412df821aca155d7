//! Full validation of a responder's answer before anything is stapled (RFC 6960 §3.2).

use std::fmt;
use std::time::Duration;

use openssl::asn1::Asn1GeneralizedTimeRef;
use openssl::nid::Nid;
use openssl::ocsp::{OcspBasicResponseRef, OcspCertStatus, OcspFlag, OcspResponseStatus, OcspRevokedStatus};
use openssl::pkey::{PKeyRef, Public};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509Ref, X509};

use crate::cert::CertInfo;
use crate::failure::{Failure, Invalid};
use crate::openssl_ext::{self, BasicResponseExt};
use crate::time::UnixTime;

/// What a response must satisfy besides its signature and CertID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Tolerated clock skew.
    pub time_skew: Duration,
    /// Maximum age of thisUpdate.
    pub max_age: Option<Duration>,
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
    /// thisUpdate.
    pub this_update: UnixTime,
    /// nextUpdate; `None` when the responder gave none.
    pub next_update: Option<UnixTime>,
    /// producedAt (shown on the status page); `None` if OpenSSL could not read it.
    pub produced_at: Option<UnixTime>,
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
    NotYetValid(UnixTime),
    /// nextUpdate has passed.
    Expired(UnixTime),
    /// thisUpdate is older than StaplingResponseMaxAge.
    TooOld(UnixTime),
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
            Rejection::NotYetValid(t) => {
                write!(f, "thisUpdate ({}) is in the future beyond the allowed skew", t.date())
            }
            Rejection::Expired(t) => write!(f, "nextUpdate ({}) has passed beyond the allowed skew", t.date()),
            Rejection::TooOld(t) => write!(f, "thisUpdate ({}) is older than StaplingResponseMaxAge", t.date()),
            Rejection::NonceMismatch => f.write_str("response does not echo the request's nonce"),
            Rejection::BadTime => f.write_str("response has an unreadable time field"),
        }
    }
}

impl std::error::Error for Rejection {}

impl Rejection {
    /// The failure cause recorded in the shared store.
    pub fn failure(&self) -> Failure {
        let invalid = match self {
            Rejection::ResponderError(name) => return Failure::OcspStatus(ocsp_status_code(name)),
            Rejection::NotOcsp(_) | Rejection::NotBasic | Rejection::BadTime => Invalid::Malformed,
            Rejection::BadSignature(_) => Invalid::Signature,
            Rejection::WrongCert => Invalid::WrongCert,
            Rejection::Unknown => Invalid::Unknown,
            Rejection::NotYetValid(_) | Rejection::Expired(_) | Rejection::TooOld(_) => Invalid::Time,
            Rejection::NonceMismatch => Invalid::Nonce,
        };
        Failure::Invalid(invalid)
    }
}

/// The OCSPResponseStatus number of a status name from [`response_status_name`].
fn ocsp_status_code(name: &str) -> u8 {
    match name {
        "malformedRequest" => 1,
        "internalError" => 2,
        "tryLater" => 3,
        "sigRequired" => 5,
        "unauthorized" => 6,
        _ => 0,
    }
}

/// Checks `der` as an answer for `cert` at Unix time `now`.
pub fn validate(der_bytes: &[u8], cert: &CertInfo, policy: &Policy, now: UnixTime) -> Result<Verified, Rejection> {
    // Drop errors an earlier call left in this thread's queue (a failed certificate
    // signature check leaves one), so that a rejection names its own reason.
    drop(openssl::error::ErrorStack::get());
    // The whole of `der_bytes`: strict clients refuse bytes after the response.
    let response = openssl_ext::ocsp_response_from_der(der_bytes).map_err(|e| Rejection::NotOcsp(e.to_string()))?;
    let status = response.status();
    if status != OcspResponseStatus::SUCCESSFUL {
        return Err(Rejection::ResponderError(response_status_name(status)));
    }
    let basic = response.basic().map_err(|_| Rejection::NotBasic)?;
    verify_signature(&basic, cert)?;
    let id = cert.cert_id().map_err(|e| Rejection::NotOcsp(first_error(&e)))?;
    let single = basic.find_status(&id).ok_or(Rejection::WrongCert)?;
    let this_update = read_time(single.this_update)?;
    let next_update = single.next_update().map(read_time).transpose()?;
    check_times(this_update, next_update, policy, now)?;
    if let Some(nonce) = &policy.nonce {
        if response_nonce(&basic).as_deref() != Some(nonce.as_slice()) {
            return Err(Rejection::NonceMismatch);
        }
    }
    let status = match single.status {
        OcspCertStatus::GOOD => CertStatus::Good,
        OcspCertStatus::REVOKED => CertStatus::Revoked { reason: reason_name(single.reason).into() },
        _ => return Err(Rejection::Unknown),
    };
    Ok(Verified { status, this_update, next_update, produced_at: basic.produced_at() })
}

/// An OCSP time as Unix seconds, read by OpenSSL.
fn read_time(time: &Asn1GeneralizedTimeRef) -> Result<UnixTime, Rejection> {
    openssl_ext::unix_time(time).map_err(|_| Rejection::BadTime)
}

/// The nonce a response echoes: the content of the OCTET STRING inside the extension's
/// value, or the whole value if a responder sent it unwrapped. OpenSSL parses both.
fn response_nonce(basic: &OcspBasicResponseRef) -> Option<Vec<u8>> {
    let value = basic.extension_value(Nid::ID_PKIX_OCSP_NONCE)?.as_slice();
    match openssl_ext::octet_string_from_der(value) {
        Ok(inner) => Some(inner.as_slice().to_vec()),
        Err(_) => Some(value.to_vec()),
    }
}

fn verify_signature(basic: &OcspBasicResponseRef, cert: &CertInfo) -> Result<(), Rejection> {
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
    basic.verify(&certs, &store, OcspFlag::empty()).map_err(bad)?;
    check_carried_certs(basic, cert)
}

/// Some clients (Go's x/crypto/ocsp, for one) check the response against the certificates
/// it carries rather than the issuer they already know. So every carried certificate must
/// be the issuer itself or one the issuer signed; anything else is refused. The certificates
/// are the ones OpenSSL parsed for the signature check above, not a second reading.
fn check_carried_certs(basic: &OcspBasicResponseRef, cert: &CertInfo) -> Result<(), Rejection> {
    let Some(carried) = basic.carried_certs() else { return Ok(()) };
    let issuer_der = cert.issuer.to_der().map_err(|e| Rejection::BadSignature(first_error(&e)))?;
    let issuer_key = cert.issuer.public_key().map_err(|e| Rejection::BadSignature(first_error(&e)))?;
    if carried.iter().all(|c| is_issuer_or_issued_by_it(c, &issuer_der, &issuer_key)) {
        Ok(())
    } else {
        Err(Rejection::BadSignature("it carries a certificate the issuer did not sign".into()))
    }
}

fn is_issuer_or_issued_by_it(carried: &X509Ref, issuer_der: &[u8], issuer_key: &PKeyRef<Public>) -> bool {
    carried.to_der().is_ok_and(|der| der == issuer_der) || carried.verify(issuer_key).unwrap_or(false)
}

fn check_times(
    this_update: UnixTime,
    next_update: Option<UnixTime>,
    policy: &Policy,
    now: UnixTime,
) -> Result<(), Rejection> {
    if this_update > now.plus(policy.time_skew) {
        return Err(Rejection::NotYetValid(this_update));
    }
    if let Some(next) = next_update {
        if next < now.minus(policy.time_skew) {
            return Err(Rejection::Expired(next));
        }
    }
    if let Some(max_age) = policy.max_age {
        if this_update < now.minus(max_age.saturating_add(policy.time_skew)) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocsp::build_request;
    use crate::testpki::{self, cert_info, cert_info_with_issuer, respond, response_for, Index, Opts};
    use crate::time::{Clock, SystemClock};

    const DAY: Duration = Duration::from_secs(86_400);

    fn unix_now() -> UnixTime {
        SystemClock.now()
    }

    fn policy() -> Policy {
        Policy { time_skew: Duration::from_secs(300), max_age: None, nonce: None }
    }

    fn good_leaf_response() -> Vec<u8> {
        response_for(&cert_info("leaf"), Opts::default())
    }

    fn assert_close(actual: UnixTime, expected: UnixTime, what: &str) {
        let off = actual.seconds_until(expected).abs();
        assert!(off <= 120, "{what} is {actual}, expected about {expected}");
    }

    /// Every accessor of the OpenSSL wrapper, on bytes that may not be a response at all.
    fn read_every_field(bytes: &[u8], id: &openssl::ocsp::OcspCertIdRef) {
        let Ok(basic) = openssl::ocsp::OcspResponse::from_der(bytes).and_then(|r| r.basic()) else { return };
        let _ = response_nonce(&basic);
        let _ = basic.carried_certs().map(|certs| certs.len());
        if let Some(single) = basic.find_status(id) {
            let _ = read_time(single.this_update);
            let _ = single.next_update().map(read_time);
        }
    }

    /// Hostile bytes: thousands of mutations of a real response (flipped bits, cuts,
    /// inserted bytes) never panic and are all refused, including flips inside the
    /// certificate the response carries, which the signature does not cover.
    #[test]
    fn mutated_responses_never_panic_and_never_pass() {
        let good = good_leaf_response();
        let cert = testpki::cert_info("leaf");
        let id = cert.cert_id().unwrap();
        let now = unix_now();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut accepted = 0;
        for _ in 0..3000 {
            let mut bytes = good.clone();
            for _ in 0..1 + next() % 3 {
                let at = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[at] ^= 1 << (next() % 8),
                    1 => bytes.truncate(at.max(1)),
                    _ => bytes.insert(at, next() as u8),
                }
            }
            read_every_field(&bytes, &id);
            if validate(&bytes, &cert, &policy(), now).is_ok() {
                accepted += 1;
            }
        }
        // Signed parts cannot change, and carried certificates must still be the issuer's.
        assert_eq!(accepted, 0, "mutated responses accepted");
    }

    #[test]
    fn good_response_is_accepted() {
        let leaf = cert_info("leaf");
        let der = response_for(&leaf, Opts::default());
        let now = unix_now();
        let v = validate(&der, &leaf, &policy(), now).expect("good response validates");
        assert_eq!(v.status, CertStatus::Good);
        assert_close(v.this_update, now, "thisUpdate");
        assert_close(v.next_update.expect("nextUpdate present"), now.plus(DAY), "nextUpdate");
        assert_close(v.produced_at.expect("producedAt read"), now, "producedAt");
    }

    #[test]
    fn revoked_response_is_accepted_with_reason() {
        let leaf = cert_info("leaf");
        let der = response_for(&leaf, Opts { index: Index::Revoked("leaf"), ..Opts::default() });
        let v = validate(&der, &leaf, &policy(), unix_now()).expect("revoked response validates");
        assert_eq!(v.status, CertStatus::Revoked { reason: "keyCompromise".into() });
    }

    #[test]
    fn revoking_another_certificate_leaves_leaf_good() {
        let leaf = cert_info("leaf");
        let der = response_for(&leaf, Opts { index: Index::Revoked("leaf2"), ..Opts::default() });
        let v = validate(&der, &leaf, &policy(), unix_now()).expect("validates");
        assert_eq!(v.status, CertStatus::Good);
    }

    #[test]
    fn unknown_status_is_rejected() {
        let leaf = cert_info("leaf");
        let der = response_for(&leaf, Opts { index: Index::Empty, ..Opts::default() });
        assert_eq!(validate(&der, &leaf, &policy(), unix_now()), Err(Rejection::Unknown));
    }

    #[test]
    fn response_signed_by_unrelated_ca_is_rejected() {
        let leaf = cert_info("leaf");
        let der = response_for(&leaf, Opts { signer: "other-ca", ..Opts::default() });
        let r = validate(&der, &leaf, &policy(), unix_now());
        assert!(matches!(r, Err(Rejection::BadSignature(_))), "{r:?}");
    }

    #[test]
    fn response_signed_by_unrelated_ca_without_certs_is_rejected() {
        let leaf = cert_info("leaf");
        let der = response_for(&leaf, Opts { signer: "other-ca", no_certs: true, ..Opts::default() });
        let r = validate(&der, &leaf, &policy(), unix_now());
        assert!(matches!(r, Err(Rejection::BadSignature(_))), "{r:?}");
    }

    #[test]
    fn issuer_signed_response_without_certs_is_accepted() {
        let leaf = cert_info("leaf");
        let der = response_for(&leaf, Opts { no_certs: true, ..Opts::default() });
        let v = validate(&der, &leaf, &policy(), unix_now()).expect("validates");
        assert_eq!(v.status, CertStatus::Good);
    }

    #[test]
    fn delegated_responder_with_ocsp_signing_eku_is_accepted() {
        let leaf = cert_info("leaf");
        let der = response_for(&leaf, Opts { signer: "responder", ..Opts::default() });
        let v = validate(&der, &leaf, &policy(), unix_now()).expect("delegated response validates");
        assert_eq!(v.status, CertStatus::Good);
    }

    #[test]
    fn delegated_responder_without_ocsp_signing_eku_is_rejected() {
        let leaf = cert_info("leaf");
        let der = response_for(&leaf, Opts { signer: "responder-noeku", ..Opts::default() });
        let r = validate(&der, &leaf, &policy(), unix_now());
        assert!(matches!(r, Err(Rejection::BadSignature(_))), "{r:?}");
    }

    #[test]
    fn delegated_responder_whose_cert_is_missing_is_rejected() {
        let leaf = cert_info("leaf");
        let der = response_for(&leaf, Opts { signer: "responder", no_certs: true, ..Opts::default() });
        let r = validate(&der, &leaf, &policy(), unix_now());
        assert!(matches!(r, Err(Rejection::BadSignature(_))), "{r:?}");
    }

    #[test]
    fn carried_certificate_the_issuer_did_not_sign_is_rejected() {
        // Signed by the issuer, so the signature verifies; but it also carries another CA.
        let leaf = cert_info("leaf");
        let der = response_for(&leaf, Opts { other_cert: Some("other-ca"), ..Opts::default() });
        let basic = openssl_ext::ocsp_response_from_der(&der).unwrap().basic().unwrap();
        assert_eq!(basic.carried_certs().map(|certs| certs.len()), Some(2));
        let r = validate(&der, &leaf, &policy(), unix_now());
        assert_eq!(r, Err(Rejection::BadSignature("it carries a certificate the issuer did not sign".into())));
    }

    #[test]
    fn carried_certificate_the_issuer_signed_is_accepted() {
        let leaf = cert_info("leaf");
        let der = response_for(&leaf, Opts { other_cert: Some("leaf2"), ..Opts::default() });
        let v = validate(&der, &leaf, &policy(), unix_now()).expect("validates");
        assert_eq!(v.status, CertStatus::Good);
    }

    #[test]
    fn response_for_another_certificate_is_rejected() {
        let der = response_for(&cert_info("leaf2"), Opts::default());
        assert_eq!(validate(&der, &cert_info("leaf"), &policy(), unix_now()), Err(Rejection::WrongCert));
    }

    #[test]
    fn response_checked_against_wrong_issuer_is_rejected() {
        let der = good_leaf_response();
        let wrong = cert_info_with_issuer("leaf", "other-ca");
        let r = validate(&der, &wrong, &policy(), unix_now());
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn expired_response_is_rejected() {
        let leaf = cert_info("leaf");
        let der = response_for(&leaf, Opts::default());
        let r = validate(&der, &leaf, &policy(), unix_now().plus(2 * DAY));
        assert!(matches!(r, Err(Rejection::Expired(_))), "{r:?}");
    }

    #[test]
    fn expiry_within_skew_is_accepted() {
        let leaf = cert_info("leaf");
        let der = response_for(&leaf, Opts::default());
        let next = validate(&der, &leaf, &policy(), unix_now()).unwrap().next_update.unwrap();
        assert!(validate(&der, &leaf, &policy(), next.plus(Duration::from_secs(200))).is_ok());
        assert_eq!(
            validate(&der, &leaf, &policy(), next.plus(Duration::from_secs(400))),
            Err(Rejection::Expired(next))
        );
    }

    #[test]
    fn response_from_the_future_is_rejected() {
        let leaf = cert_info("leaf");
        let der = response_for(&leaf, Opts::default());
        let r = validate(&der, &leaf, &policy(), unix_now().minus(Duration::from_secs(3600)));
        assert!(matches!(r, Err(Rejection::NotYetValid(_))), "{r:?}");
    }

    #[test]
    fn future_this_update_within_skew_is_accepted() {
        let leaf = cert_info("leaf");
        let der = response_for(&leaf, Opts::default());
        let v = validate(&der, &leaf, &policy(), unix_now().minus(Duration::from_secs(100))).expect("within skew");
        assert_eq!(v.status, CertStatus::Good);
    }

    #[test]
    fn response_older_than_max_age_is_rejected() {
        let leaf = cert_info("leaf");
        let der = response_for(&leaf, Opts::default());
        let p = Policy { max_age: Some(Duration::from_secs(60)), ..policy() };
        let r = validate(&der, &leaf, &p, unix_now().plus(Duration::from_secs(3600)));
        assert!(matches!(r, Err(Rejection::TooOld(_))), "{r:?}");
        assert!(validate(&der, &leaf, &p, unix_now()).is_ok());
    }

    #[test]
    fn response_without_next_update_is_accepted() {
        let leaf = cert_info("leaf");
        let der = response_for(&leaf, Opts { ndays: None, ..Opts::default() });
        let now = unix_now();
        let v = validate(&der, &leaf, &policy(), now).expect("validates");
        assert_eq!(v.status, CertStatus::Good);
        assert_eq!(v.next_update, None);
        assert_close(v.this_update, now, "thisUpdate");
        // Without nextUpdate there is nothing to expire.
        assert!(validate(&der, &leaf, &policy(), now.plus(30 * DAY)).is_ok());
    }

    #[test]
    fn truncated_der_is_not_ocsp() {
        let der = good_leaf_response();
        let r = validate(&der[..der.len() / 2], &cert_info("leaf"), &policy(), unix_now());
        assert!(matches!(r, Err(Rejection::NotOcsp(_))), "{r:?}");
    }

    #[test]
    fn html_is_not_ocsp() {
        let html = b"<html><body><h1>502 Bad Gateway</h1></body></html>\n";
        let r = validate(html, &cert_info("leaf"), &policy(), unix_now());
        assert!(matches!(r, Err(Rejection::NotOcsp(_))), "{r:?}");
    }

    #[test]
    fn empty_bytes_are_not_ocsp() {
        let r = validate(&[], &cert_info("leaf"), &policy(), unix_now());
        assert!(matches!(r, Err(Rejection::NotOcsp(_))), "{r:?}");
    }

    #[test]
    fn trailing_garbage_is_not_ocsp() {
        let mut der = good_leaf_response();
        der.extend_from_slice(b"junk");
        let r = validate(&der, &cert_info("leaf"), &policy(), unix_now());
        assert!(matches!(r, Err(Rejection::NotOcsp(_))), "{r:?}");
    }

    #[test]
    fn flipped_signature_byte_is_rejected() {
        let leaf = cert_info("leaf");
        let mut der = response_for(&leaf, Opts { no_certs: true, ..Opts::default() });
        // With no certs, the signature BIT STRING ends the response.
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let r = validate(&der, &leaf, &policy(), unix_now());
        assert!(matches!(r, Err(Rejection::BadSignature(_))), "{r:?}");
    }

    fn status_only(code: u8) -> Vec<u8> {
        vec![0x30, 0x03, 0x0a, 0x01, code]
    }

    #[test]
    fn try_later_is_a_responder_error() {
        let r = validate(&status_only(3), &cert_info("leaf"), &policy(), unix_now());
        assert_eq!(r, Err(Rejection::ResponderError("tryLater")));
    }

    #[test]
    fn unauthorized_is_a_responder_error() {
        let r = validate(&status_only(6), &cert_info("leaf"), &policy(), unix_now());
        assert_eq!(r, Err(Rejection::ResponderError("unauthorized")));
    }

    #[test]
    fn malformed_request_is_a_responder_error() {
        let r = validate(&status_only(1), &cert_info("leaf"), &policy(), unix_now());
        assert_eq!(r, Err(Rejection::ResponderError("malformedRequest")));
    }

    #[test]
    fn internal_error_is_a_responder_error() {
        let r = validate(&status_only(2), &cert_info("leaf"), &policy(), unix_now());
        assert_eq!(r, Err(Rejection::ResponderError("internalError")));
    }

    #[test]
    fn sig_required_is_a_responder_error() {
        let r = validate(&status_only(5), &cert_info("leaf"), &policy(), unix_now());
        assert_eq!(r, Err(Rejection::ResponderError("sigRequired")));
    }

    fn nonce_of(der: &[u8]) -> Option<Vec<u8>> {
        response_nonce(&openssl_ext::ocsp_response_from_der(der).unwrap().basic().unwrap())
    }

    #[test]
    fn echoed_nonce_is_accepted() {
        let leaf = cert_info("leaf");
        let (req, nonce) = build_request(&leaf, true).expect("request");
        let nonce = nonce.expect("nonce requested");
        assert_eq!(nonce.len(), 16);
        let der = respond(&req, Opts::default());
        assert_eq!(nonce_of(&der).as_deref(), Some(nonce.as_slice()));
        let p = Policy { nonce: Some(nonce), ..policy() };
        let v = validate(&der, &leaf, &p, unix_now()).expect("nonce echoed");
        assert_eq!(v.status, CertStatus::Good);
    }

    #[test]
    fn echoed_nonce_is_accepted_with_responder_id_by_key() {
        let leaf = cert_info("leaf");
        let (req, nonce) = build_request(&leaf, true).expect("request");
        let der = respond(&req, Opts { key_id: true, signer: "responder", ..Opts::default() });
        let p = Policy { nonce: nonce.clone(), ..policy() };
        assert_eq!(nonce_of(&der), nonce);
        let v = validate(&der, &leaf, &p, unix_now()).expect("nonce echoed");
        assert_eq!(v.status, CertStatus::Good);
    }

    #[test]
    fn unwrapped_nonce_is_accepted() {
        use crate::openssl_ext::RequestExt;
        let leaf = cert_info("leaf");
        let id = leaf.cert_id().unwrap();
        let mut req = openssl::ocsp::OcspRequest::new().unwrap();
        req.add_id(id).unwrap();
        let nonce = vec![0x5a; 16];
        req.add_unwrapped_nonce(&nonce).unwrap();
        let der = respond(&req.to_der().unwrap(), Opts::default());
        assert_eq!(nonce_of(&der).as_deref(), Some(nonce.as_slice()));
        let p = Policy { nonce: Some(nonce), ..policy() };
        assert!(validate(&der, &leaf, &p, unix_now()).is_ok());
    }

    #[test]
    fn missing_nonce_is_rejected() {
        let leaf = cert_info("leaf");
        let der = response_for(&leaf, Opts::default());
        assert_eq!(nonce_of(&der), None);
        let p = Policy { nonce: Some(vec![0x42; 16]), ..policy() };
        assert_eq!(validate(&der, &leaf, &p, unix_now()), Err(Rejection::NonceMismatch));
    }

    #[test]
    fn different_nonce_is_rejected() {
        let leaf = cert_info("leaf");
        let (req, nonce) = build_request(&leaf, true).expect("request");
        let der = respond(&req, Opts::default());
        let mut other = nonce.expect("nonce");
        other[0] ^= 0xff;
        let p = Policy { nonce: Some(other), ..policy() };
        assert_eq!(validate(&der, &leaf, &p, unix_now()), Err(Rejection::NonceMismatch));
    }

    #[test]
    fn request_without_nonce_carries_none() {
        let (req, nonce) = build_request(&cert_info("leaf"), false).expect("request");
        assert_eq!(nonce, None);
        assert!(openssl::ocsp::OcspRequest::from_der(&req).is_ok());
        // The same PKI directory is reused across the whole test process.
        assert!(testpki::path("index.txt").exists());
    }

    #[test]
    fn rejections_display_their_detail() {
        assert!(Rejection::ResponderError("tryLater").to_string().contains("tryLater"));
        let expired = Rejection::Expired(UnixTime::from_secs(1_795_214_206)).to_string();
        assert!(expired.contains("2026-11-20 22:36:46 UTC"), "{expired}");
    }
}
