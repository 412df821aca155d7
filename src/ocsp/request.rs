//! The OCSP request for one certificate.

use openssl::hash::MessageDigest;
use openssl::ocsp::{OcspCertId, OcspRequest};

use crate::cert::CertInfo;
use crate::der;

/// A DER OCSPRequest with a SHA-1 CertID (what responders expect, RFC 5019 §2.1.1), and
/// the nonce it carries, if one was asked for.
pub fn build_request(cert: &CertInfo, use_nonce: bool) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
    let id = OcspCertId::from_cert(MessageDigest::sha1(), &cert.leaf, &cert.issuer)
        .map_err(|e| format!("cannot build the OCSP CertID: {e}"))?;
    let mut req = OcspRequest::new().map_err(|e| format!("cannot build the OCSP request: {e}"))?;
    req.add_id(id).map_err(|e| format!("cannot build the OCSP request: {e}"))?;
    let der_req = req.to_der().map_err(|e| format!("cannot encode the OCSP request: {e}"))?;
    if !use_nonce {
        return Ok((der_req, None));
    }
    let mut nonce = vec![0u8; 16];
    openssl::rand::rand_bytes(&mut nonce).map_err(|e| format!("cannot make a nonce: {e}"))?;
    let with_nonce = der::add_request_nonce(&der_req, &nonce).ok_or("cannot add the nonce")?;
    Ok((with_nonce, Some(nonce)))
}
