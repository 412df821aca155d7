//! The few OpenSSL calls the openssl crate lacks, wrapped once, so that OpenSSL stays the
//! only ASN.1 parser of the crate.
//!
//! Everything here either borrows the openssl crate's own types (`OcspBasicResponseRef`,
//! `OcspRequestRef`, `X509Ref`, `Asn1OctetStringRef`...) or adds an owned/borrowed pair of
//! the same `foreign-types` kind ([`TlsFeatures`] / [`TlsFeaturesRef`]), so the rest of the
//! crate stays safe. Return codes and NULL pointers are checked in one place ([`cvt`],
//! [`cvt_p`]), which drain OpenSSL's error queue into the error on failure.
//!
//! What is wrapped:
//! - exact DER parsing (`d2i_*`, then a check that nothing follows the element):
//!   [`ocsp_response_from_der`], [`octet_string_from_der`];
//! - an ASN.1 time to Unix seconds, by OpenSSL's `ASN1_TIME_diff` from the epoch: [`unix_time`];
//! - on a basic response, the certificates it carries, its extensions and its producedAt
//!   ([`BasicResponseExt`]);
//! - on a request, `OCSP_request_add1_nonce` ([`RequestExt`]);
//! - on a certificate, the TLS Feature extension through `X509_get_ext_d2i` ([`CertificateExt`]).

#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::{c_int, c_long, c_uchar, c_void};
use std::fmt;
use std::ptr;

use foreign_types::{ForeignType, ForeignTypeRef};
use openssl::asn1::{
    Asn1GeneralizedTimeRef, Asn1IntegerRef, Asn1OctetString, Asn1OctetStringRef, Asn1Time, Asn1TimeRef,
};
use openssl::bn::BigNum;
use openssl::error::ErrorStack;
use openssl::nid::Nid;
use openssl::ocsp::{OcspBasicResponseRef, OcspRequestRef, OcspResponse};
use openssl::stack::StackRef;
use openssl::x509::{X509Ref, X509};
use openssl_sys as ffi;

use crate::time::UnixTime;

/// Declarations openssl-sys does not carry. libcrypto has had each of them since 1.1.0.
mod sys {
    use std::ffi::{c_int, c_long, c_uchar};

    use openssl_sys::{
        stack_st_X509, ASN1_GENERALIZEDTIME, ASN1_OCTET_STRING, OCSP_BASICRESP, OCSP_REQUEST, X509_EXTENSION,
    };

    extern "C" {
        /// The `producedAt` of a basic response, owned by the response.
        pub fn OCSP_resp_get0_produced_at(bs: *const OCSP_BASICRESP) -> *const ASN1_GENERALIZEDTIME;
        /// The `certs` of a basic response (NULL when absent), owned by the response.
        pub fn OCSP_resp_get0_certs(bs: *const OCSP_BASICRESP) -> *const stack_st_X509;
        /// Index of the first extension `nid` after `lastpos`, or negative.
        pub fn OCSP_BASICRESP_get_ext_by_NID(bs: *mut OCSP_BASICRESP, nid: c_int, lastpos: c_int) -> c_int;
        /// Extension `loc`, owned by the response.
        pub fn OCSP_BASICRESP_get_ext(bs: *mut OCSP_BASICRESP, loc: c_int) -> *mut X509_EXTENSION;
        /// Adds a nonce extension holding `val` (copied) wrapped in an OCTET STRING.
        pub fn OCSP_request_add1_nonce(req: *mut OCSP_REQUEST, val: *mut c_uchar, len: c_int) -> c_int;
        /// Adds a copy of extension `ex` at `loc` (-1: at the end).
        #[cfg(test)]
        pub fn OCSP_REQUEST_add_ext(x: *mut OCSP_REQUEST, ex: *mut X509_EXTENSION, loc: c_int) -> c_int;
        /// Parses one DER OCTET STRING.
        pub fn d2i_ASN1_OCTET_STRING(
            a: *mut *mut ASN1_OCTET_STRING,
            pp: *mut *const c_uchar,
            length: c_long,
        ) -> *mut ASN1_OCTET_STRING;
    }
}

/// NID of id-pe-tlsfeature (RFC 7633), which the openssl crate does not name.
const NID_TLS_FEATURE: Nid = Nid::from_raw(1020);

/// Why a call in this module failed.
#[derive(Debug, Clone)]
pub enum Error {
    /// OpenSSL refused; what it queued as the reasons.
    Openssl(ErrorStack),
    /// The input is longer than the C call can take (`usize` bytes).
    TooLong(usize),
    /// A whole DER element was read, but this many bytes follow it.
    TrailingBytes(usize),
}

impl From<ErrorStack> for Error {
    fn from(e: ErrorStack) -> Error {
        Error::Openssl(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Openssl(e) => {
                let reason = e.errors().first().map(|err| err.reason().unwrap_or("unknown error"));
                f.write_str(reason.unwrap_or("no detail"))
            }
            Error::TooLong(n) => write!(f, "{n} bytes are too many for OpenSSL"),
            Error::TrailingBytes(n) => write!(f, "{n} bytes of trailing data after the DER element"),
        }
    }
}

impl std::error::Error for Error {}

/// OpenSSL's usual convention: a positive code is success; zero or less is failure, with the
/// reasons on the thread's error queue, which this drains.
fn cvt(code: c_int) -> Result<c_int, ErrorStack> {
    if code > 0 {
        Ok(code)
    } else {
        Err(ErrorStack::get())
    }
}

/// A NULL pointer is failure, as with [`cvt`].
fn cvt_p<T>(pointer: *mut T) -> Result<*mut T, ErrorStack> {
    if pointer.is_null() {
        Err(ErrorStack::get())
    } else {
        Ok(pointer)
    }
}

/// An OpenSSL `d2i_*` function: parses one DER element and advances the input pointer past it.
type D2i<C> = unsafe extern "C" fn(*mut *mut C, *mut *const c_uchar, c_long) -> *mut C;

/// Parses all of `der` as exactly one element with `d2i`: bytes after the element are an error.
fn from_der_exact<T: ForeignType>(der: &[u8], d2i: D2i<T::CType>) -> Result<T, Error> {
    openssl::init();
    let len = c_long::try_from(der.len()).map_err(|_| Error::TooLong(der.len()))?;
    let start = der.as_ptr();
    let mut next = start;
    // SAFETY: `next` points at `len` readable bytes (all of `der`, which outlives the call);
    // `d2i` reads at most `len` of them, moves `next` past the element it read, and returns a
    // new object that the caller owns, or NULL. A NULL first argument asks for a new object.
    let parsed = unsafe { d2i(ptr::null_mut(), &mut next, len) };
    let parsed = cvt_p(parsed)?;
    // SAFETY: `parsed` is non-NULL and fresh from `d2i`: nothing else owns it.
    let value = unsafe { T::from_ptr(parsed) };
    let consumed = (next as usize).saturating_sub(start as usize);
    match der.len().saturating_sub(consumed) {
        0 => Ok(value),
        trailing => Err(Error::TrailingBytes(trailing)),
    }
}

/// A DER OCSPResponse that is all of `der`. (`OcspResponse::from_der` ignores whatever follows
/// the response; strict clients do not.)
pub fn ocsp_response_from_der(der: &[u8]) -> Result<OcspResponse, Error> {
    from_der_exact(der, ffi::d2i_OCSP_RESPONSE)
}

/// A DER OCTET STRING that is all of `der`.
pub fn octet_string_from_der(der: &[u8]) -> Result<Asn1OctetString, Error> {
    from_der_exact(der, sys::d2i_ASN1_OCTET_STRING)
}

/// `time` viewed as the `ASN1_TIME` (UTCTime or GeneralizedTime) that OpenSSL's time calls take.
fn as_asn1_time(time: &Asn1GeneralizedTimeRef) -> &Asn1TimeRef {
    // SAFETY: ASN1_GENERALIZEDTIME and ASN1_TIME are both typedefs of `struct asn1_string_st`
    // in OpenSSL's headers, and the ASN1_TIME calls accept a GeneralizedTime (the struct's
    // type field says which it is). The view borrows `time`, so it cannot outlive it.
    unsafe { Asn1TimeRef::from_ptr(time.as_ptr().cast()) }
}

/// The instant `time` names, as OpenSSL reads it: `ASN1_TIME_diff` from 1970-01-01T00:00:00Z.
/// Fractions of a second are dropped. OpenSSL refuses a malformed time.
pub fn unix_time(time: &Asn1GeneralizedTimeRef) -> Result<UnixTime, Error> {
    let epoch = Asn1Time::from_unix(0)?;
    let since_epoch = epoch.diff(as_asn1_time(time))?;
    // Days fit an i32, so neither step can overflow; saturating all the same.
    let seconds = i64::from(since_epoch.days).saturating_mul(86_400).saturating_add(i64::from(since_epoch.secs));
    Ok(UnixTime::from_secs(seconds))
}

/// Calls on a parsed basic OCSP response that the openssl crate lacks.
pub trait BasicResponseExt {
    /// The certificates the response carries (its `certs` field), exactly as OpenSSL parsed
    /// them for its signature check; `None` when the field is absent.
    fn carried_certs(&self) -> Option<&StackRef<X509>>;

    /// The value (the content of extnValue) of the response's first extension `nid`.
    fn extension_value(&self, nid: Nid) -> Option<&Asn1OctetStringRef>;

    /// The response's `producedAt`, read by OpenSSL; `None` if it cannot be read.
    fn produced_at(&self) -> Option<UnixTime>;
}

impl BasicResponseExt for OcspBasicResponseRef {
    fn carried_certs(&self) -> Option<&StackRef<X509>> {
        // SAFETY: `self` is a valid OCSP_BASICRESP; the call only reads a field of it.
        let certs = unsafe { sys::OCSP_resp_get0_certs(self.as_ptr()) };
        // SAFETY: a non-NULL `certs` is the response's own STACK_OF(X509), which lives as long
        // as the response; the returned reference borrows `self`, and nothing here mutates it.
        (!certs.is_null()).then(|| unsafe { StackRef::from_ptr(certs.cast_mut()) })
    }

    fn extension_value(&self, nid: Nid) -> Option<&Asn1OctetStringRef> {
        // SAFETY: `self` is a valid OCSP_BASICRESP; the call only searches its extensions.
        let index = unsafe { sys::OCSP_BASICRESP_get_ext_by_NID(self.as_ptr(), nid.as_raw(), -1) };
        if index < 0 {
            return None;
        }
        // SAFETY: `index` is the position of an existing extension, just found.
        let extension = cvt_p(unsafe { sys::OCSP_BASICRESP_get_ext(self.as_ptr(), index) }).ok()?;
        // SAFETY: `extension` is non-NULL and owned by the response, which outlives this call.
        let value = cvt_p(unsafe { ffi::X509_EXTENSION_get_data(extension) }).ok()?;
        // SAFETY: `value` is the extension's own, non-NULL OCTET STRING; the reference borrows
        // `self`, which owns it.
        Some(unsafe { Asn1OctetStringRef::from_ptr(value) })
    }

    fn produced_at(&self) -> Option<UnixTime> {
        // SAFETY: `self` is a valid OCSP_BASICRESP; the call only reads a field of it.
        let time = unsafe { sys::OCSP_resp_get0_produced_at(self.as_ptr()) };
        // SAFETY: a non-NULL `time` is the response's own GeneralizedTime, which lives as
        // long as the response; it is only read, within this call.
        (!time.is_null()).then(|| unix_time(unsafe { Asn1GeneralizedTimeRef::from_ptr(time.cast_mut()) }).ok())?
    }
}

/// Calls on an OCSP request that the openssl crate lacks.
pub trait RequestExt {
    /// Adds the nonce extension (RFC 8954), holding `nonce` wrapped in an OCTET STRING.
    fn add_nonce(&mut self, nonce: &[u8]) -> Result<(), Error>;

    /// Adds a nonce extension whose value is `nonce` itself, unwrapped, as some old clients
    /// sent it (for tests: a responder echoes it as it came).
    #[cfg(test)]
    fn add_unwrapped_nonce(&mut self, nonce: &[u8]) -> Result<(), Error>;
}

impl RequestExt for OcspRequestRef {
    fn add_nonce(&mut self, nonce: &[u8]) -> Result<(), Error> {
        let len = c_int::try_from(nonce.len()).map_err(|_| Error::TooLong(nonce.len()))?;
        // SAFETY: `self` is a valid OCSP_REQUEST we may change (`&mut`); OpenSSL copies `len`
        // bytes from `nonce` and never writes through the pointer, which it takes as non-const
        // only for historical reasons.
        cvt(unsafe { sys::OCSP_request_add1_nonce(self.as_ptr(), nonce.as_ptr().cast_mut(), len) })?;
        Ok(())
    }

    #[cfg(test)]
    fn add_unwrapped_nonce(&mut self, nonce: &[u8]) -> Result<(), Error> {
        let oid = openssl::asn1::Asn1Object::from_str("1.3.6.1.5.5.7.48.1.2")?;
        let value = Asn1OctetString::new_from_bytes(nonce)?;
        let extension = openssl::x509::X509Extension::new_from_der(&oid, false, &value)?;
        // SAFETY: both pointers are valid; OpenSSL adds a copy of `extension` to the request,
        // which we may change (`&mut`).
        cvt(unsafe { sys::OCSP_REQUEST_add_ext(self.as_ptr(), extension.as_ptr(), -1) })?;
        Ok(())
    }
}

/// Frees a STACK_OF(ASN1_INTEGER) and the integers in it.
///
/// # Safety
/// `stack` is a valid STACK_OF(ASN1_INTEGER) that the caller owns and never uses again.
unsafe fn free_integer_stack(stack: *mut ffi::OPENSSL_STACK) {
    // SAFETY: per this function's contract; each element is an ASN1_INTEGER, which
    // `free_asn1_integer` frees.
    unsafe { ffi::OPENSSL_sk_pop_free(stack, Some(free_asn1_integer)) }
}

/// Frees one element of a STACK_OF(ASN1_INTEGER), for `OPENSSL_sk_pop_free`.
unsafe extern "C" fn free_asn1_integer(integer: *mut c_void) {
    // SAFETY: `OPENSSL_sk_pop_free` hands over each element of the stack once; each is an
    // ASN1_INTEGER the stack owned.
    unsafe { ffi::ASN1_INTEGER_free(integer.cast()) }
}

foreign_types::foreign_type! {
    type CType = ffi::OPENSSL_STACK;
    fn drop = free_integer_stack;
    /// A certificate's TLS Feature extension (RFC 7633): the TLS extensions it requires, as a
    /// STACK_OF(ASN1_INTEGER) that OpenSSL decoded.
    pub struct TlsFeatures;
    /// A borrowed [`TlsFeatures`].
    pub struct TlsFeaturesRef;
}

impl TlsFeaturesRef {
    /// The TLS extension numbers, in the certificate's order.
    pub fn numbers(&self) -> impl Iterator<Item = &Asn1IntegerRef> + '_ {
        let stack = self.as_ptr();
        // SAFETY: `stack` is a valid stack for as long as `self` is borrowed.
        let count = unsafe { ffi::OPENSSL_sk_num(stack) };
        (0..count).filter_map(move |i| {
            // SAFETY: 0 <= i < count, so `i` is an index of the stack.
            let integer = unsafe { ffi::OPENSSL_sk_value(stack, i) };
            // SAFETY: a non-NULL element is an ASN1_INTEGER the stack owns; the reference borrows
            // `self`, which owns the stack.
            (!integer.is_null()).then(|| unsafe { Asn1IntegerRef::from_ptr(integer.cast()) })
        })
    }

    /// Whether TLS extension `number` is among them.
    pub fn contains(&self, number: u32) -> bool {
        let Ok(wanted) = BigNum::from_u32(number) else { return false };
        self.numbers().any(|n| n.to_bn().is_ok_and(|value| value == wanted))
    }
}

/// Calls on a certificate that the openssl crate lacks.
pub trait CertificateExt {
    /// The certificate's TLS Feature extension, decoded by OpenSSL; `Ok(None)` when it has none.
    /// An extension OpenSSL cannot decode, or one that appears twice, is an error.
    fn tls_features(&self) -> Result<Option<TlsFeatures>, Error>;
}

impl CertificateExt for X509Ref {
    fn tls_features(&self) -> Result<Option<TlsFeatures>, Error> {
        let mut critical: c_int = 0;
        // SAFETY: `self` is a valid X509; `critical` is a valid out-parameter; a NULL index
        // asks for the only occurrence. The result, when not NULL, is a new
        // STACK_OF(ASN1_INTEGER) (the TLS_FEATURE type) that the caller owns.
        let decoded =
            unsafe { ffi::X509_get_ext_d2i(self.as_ptr(), NID_TLS_FEATURE.as_raw(), &mut critical, ptr::null_mut()) };
        if !decoded.is_null() {
            // SAFETY: non-NULL, owned by us alone, and a STACK_OF(ASN1_INTEGER) as said above.
            return Ok(Some(unsafe { TlsFeatures::from_ptr(decoded.cast()) }));
        }
        // -1: absent. Anything else: present twice (-2), or present but undecodable.
        match critical {
            -1 => Ok(None),
            _ => Err(Error::Openssl(ErrorStack::get())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testpki::{cert_info, pem, respond, response_for, Opts};
    use openssl::asn1::Asn1GeneralizedTime;
    use openssl::ocsp::OcspRequest;

    fn seconds_of(generalized_time: &str) -> i64 {
        let time = Asn1GeneralizedTime::from_str(generalized_time).expect("valid time");
        unix_time(&time).expect("OpenSSL reads it").secs()
    }

    #[test]
    fn times_are_read_by_openssl() {
        assert_eq!(seconds_of("19700101000000Z"), 0);
        assert_eq!(seconds_of("19691231235959Z"), -1);
        assert_eq!(seconds_of("20261120223646Z"), 1_795_214_206);
        // Leap day, and a fraction of a second (dropped).
        assert_eq!(seconds_of("20240229120000Z"), 1_709_208_000);
        assert_eq!(seconds_of("20240229120000.5Z"), 1_709_208_000);
        // GeneralizedTime from 2050 on, where UTCTime ends.
        assert_eq!(seconds_of("20500101000000Z"), 2_524_608_000);
        assert_eq!(seconds_of("99991231235959Z"), 253_402_300_799);
    }

    /// YYYYMMDDHHMMSSZ of `secs`, through the crate's own RFC 3339 formatting of log lines.
    fn generalized_of(secs: i64) -> String {
        let rfc3339 = UnixTime::from_secs(secs).to_string();
        rfc3339.chars().filter(char::is_ascii_digit).collect::<String>() + "Z"
    }

    #[test]
    fn times_round_trip_with_the_log_format() {
        for secs in [0, 951_825_600, 1_700_000_123, 2_524_607_999, 4_102_444_800, 253_402_300_799] {
            assert_eq!(seconds_of(&generalized_of(secs)), secs);
        }
    }

    #[test]
    fn exact_der_parsing_refuses_trailing_bytes() {
        let der = response_for(&cert_info("leaf"), Opts::default());
        assert!(ocsp_response_from_der(&der).is_ok());
        let mut with_junk = der.clone();
        with_junk.extend_from_slice(b"junk");
        // The openssl crate's own from_der takes the response and ignores the junk.
        assert!(OcspResponse::from_der(&with_junk).is_ok());
        assert!(matches!(ocsp_response_from_der(&with_junk), Err(Error::TrailingBytes(4))));
        assert!(matches!(ocsp_response_from_der(&der[..der.len() - 1]), Err(Error::Openssl(_))));
        assert!(matches!(ocsp_response_from_der(&[]), Err(Error::Openssl(_))));
        assert!(matches!(ocsp_response_from_der(b"<html>"), Err(Error::Openssl(_))));
    }

    #[test]
    fn octet_strings_are_parsed_whole() {
        assert_eq!(octet_string_from_der(&[0x04, 0x02, 7, 8]).unwrap().as_slice(), &[7, 8]);
        assert!(matches!(octet_string_from_der(&[0x04, 0x01, 7, 8]), Err(Error::TrailingBytes(1))));
        assert!(octet_string_from_der(&[0x04, 0x03, 7, 8]).is_err());
        assert!(octet_string_from_der(&[0x02, 0x01, 7]).is_err());
    }

    #[test]
    fn octet_strings_with_long_form_lengths_are_parsed_whole() {
        let headers: [(usize, &[u8]); 5] = [
            (0, &[0x04, 0x00]),
            (127, &[0x04, 0x7f]),
            (128, &[0x04, 0x81, 0x80]),
            (256, &[0x04, 0x82, 0x01, 0x00]),
            (70_000, &[0x04, 0x83, 0x01, 0x11, 0x70]),
        ];
        for (len, header) in headers {
            let der = [header, &vec![7u8; len]].concat();
            assert_eq!(octet_string_from_der(&der).unwrap().len(), len);
            assert!(octet_string_from_der(&der[..der.len() - 1]).is_err(), "{len} bytes, cut");
        }
    }

    fn basic_of(der: &[u8]) -> openssl::ocsp::OcspBasicResponse {
        ocsp_response_from_der(der).unwrap().basic().unwrap()
    }

    fn der_of(certs: &StackRef<X509>) -> Vec<Vec<u8>> {
        certs.iter().map(|c| c.to_der().unwrap()).collect()
    }

    fn cert_der(name: &str) -> Vec<u8> {
        X509::from_pem(&pem(name)).unwrap().to_der().unwrap()
    }

    #[test]
    fn carried_certs_are_those_openssl_parsed() {
        let leaf = cert_info("leaf");
        let issuer_signed = basic_of(&response_for(&leaf, Opts::default()));
        assert_eq!(der_of(issuer_signed.carried_certs().unwrap()), [cert_der("issuer")]);
        let delegated = basic_of(&response_for(&leaf, Opts { signer: "responder", ..Opts::default() }));
        assert_eq!(der_of(delegated.carried_certs().unwrap()), [cert_der("responder")]);
        let with_other = basic_of(&response_for(&leaf, Opts { other_cert: Some("other-ca"), ..Opts::default() }));
        assert_eq!(der_of(with_other.carried_certs().unwrap()), [cert_der("issuer"), cert_der("other-ca")]);
        let bare = basic_of(&response_for(&leaf, Opts { no_certs: true, ..Opts::default() }));
        assert!(bare.carried_certs().is_none_or(|certs| certs.is_empty()));
    }

    #[test]
    fn nonce_round_trips_through_a_responder() {
        let leaf = cert_info("leaf");
        let id = leaf.cert_id().unwrap();
        let mut request = OcspRequest::new().unwrap();
        request.add_id(id).unwrap();
        let nonce: Vec<u8> = (1..=16).collect();
        request.add_nonce(&nonce).unwrap();
        let basic = basic_of(&respond(&request.to_der().unwrap(), Opts::default()));
        let value = basic.extension_value(Nid::ID_PKIX_OCSP_NONCE).expect("nonce echoed");
        // OpenSSL wraps the nonce in an OCTET STRING inside extnValue.
        assert_eq!(value.as_slice(), [&[0x04, 16][..], &nonce].concat());
        assert_eq!(octet_string_from_der(value.as_slice()).unwrap().as_slice(), nonce);
    }

    #[test]
    fn response_without_nonce_has_no_nonce_extension() {
        let basic = basic_of(&response_for(&cert_info("leaf"), Opts::default()));
        assert!(basic.extension_value(Nid::ID_PKIX_OCSP_NONCE).is_none());
    }

    #[test]
    fn must_staple_feature_is_read_by_openssl() {
        let must_staple = X509::from_pem(&pem("muststaple")).unwrap();
        let features = must_staple.tls_features().unwrap().expect("TLS Feature present");
        assert!(features.contains(5));
        assert!(!features.contains(17));
        let numbers: Vec<String> =
            features.numbers().map(|n| n.to_bn().unwrap().to_dec_str().unwrap().to_string()).collect();
        assert_eq!(numbers, ["5"]);
        assert!(X509::from_pem(&pem("leaf")).unwrap().tls_features().unwrap().is_none());
    }

    #[test]
    fn errors_say_what_failed() {
        assert!(Error::TrailingBytes(4).to_string().contains("4 bytes"));
        let unreadable = ocsp_response_from_der(b"<html>").err().expect("refused").to_string();
        assert!(!unreadable.is_empty() && unreadable != "no detail", "{unreadable}");
    }
}
