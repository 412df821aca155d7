//! The OCSP request for one certificate.

use openssl::ocsp::OcspRequest;

use crate::cert::CertInfo;
use crate::openssl_ext::RequestExt;

/// Bytes of the nonce a request carries when asked to (RFC 8954 recommends 32 at most).
const NONCE_LEN: usize = 16;

/// A DER OCSPRequest with a SHA-1 CertID (what responders expect, RFC 5019 §2.1.1), and
/// the nonce it carries, if one was asked for.
pub fn build_request(cert: &CertInfo, use_nonce: bool) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
    let id = cert.cert_id().map_err(|e| format!("cannot build the OCSP CertID: {e}"))?;
    let mut req = OcspRequest::new().map_err(|e| format!("cannot build the OCSP request: {e}"))?;
    req.add_id(id).map_err(|e| format!("cannot build the OCSP request: {e}"))?;
    let nonce = if use_nonce { Some(add_random_nonce(&mut req)?) } else { None };
    let der_req = req.to_der().map_err(|e| format!("cannot encode the OCSP request: {e}"))?;
    Ok((der_req, nonce))
}

/// Adds a fresh random nonce to `req` and returns it.
fn add_random_nonce(req: &mut OcspRequest) -> Result<Vec<u8>, String> {
    let mut nonce = vec![0u8; NONCE_LEN];
    openssl::rand::rand_bytes(&mut nonce).map_err(|e| format!("cannot make a nonce: {e}"))?;
    req.add_nonce(&nonce).map_err(|e| format!("cannot add the nonce: {e}"))?;
    Ok(nonce)
}
