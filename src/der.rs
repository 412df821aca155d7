//! A minimal DER reader and writer for the few fields the openssl crate does not expose:
//! the TLS Feature extension, the request nonce and the response nonce.

/// One DER element: its tag byte, its content, and the whole encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The identifier octet (single-byte tags only, which is all X.509/OCSP use here).
    pub tag: u8,
    /// The content octets.
    pub content: &'a [u8],
    /// Tag, length and content together.
    pub whole: &'a [u8],
}

/// Tag of a SEQUENCE.
pub const SEQUENCE: u8 = 0x30;
/// Tag of an OCTET STRING.
pub const OCTET_STRING: u8 = 0x04;
/// Tag of an OBJECT IDENTIFIER.
pub const OID: u8 = 0x06;
/// Tag of an INTEGER.
pub const INTEGER: u8 = 0x02;

/// Reads the first element of `input`, returning it and the rest.
pub fn read(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some((Tlv { tag, content: &rest[..len], whole: &input[..header + len] }, &rest[len..]))
}

/// All elements of a constructed element's content, in order.
pub fn children(content: &[u8]) -> Option<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    let mut rest = content;
    while !rest.is_empty() {
        let (tlv, r) = read(rest)?;
        out.push(tlv);
        rest = r;
    }
    Some(out)
}

/// Encodes one element.
pub fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().iter().copied().skip_while(|&b| b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

/// The DER content of OID 1.3.6.1.5.5.7.48.1.2 (id-pkix-ocsp-nonce).
pub const OID_OCSP_NONCE: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02];
/// The DER content of OID 1.3.6.1.5.5.7.1.24 (id-pe-tlsfeature).
pub const OID_TLS_FEATURE: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x18];

/// The value (inner OCTET STRING content) of the extension `oid` in an Extensions SEQUENCE.
pub fn find_extension<'a>(extensions: &'a [u8], oid: &[u8]) -> Option<&'a [u8]> {
    let (seq, _) = read(extensions)?;
    for ext in children(seq.content)? {
        let parts = children(ext.content)?;
        let id = parts.first()?;
        if id.tag == OID && id.content == oid {
            return parts.iter().rev().find(|p| p.tag == OCTET_STRING).map(|p| p.content);
        }
    }
    None
}

/// True if the certificate (DER) carries TLS Feature status_request (RFC 7633 must-staple).
pub fn has_must_staple(cert_der: &[u8]) -> bool {
    must_staple(cert_der).unwrap_or(false)
}

fn must_staple(cert_der: &[u8]) -> Option<bool> {
    let (cert, _) = read(cert_der)?;
    let (tbs, _) = read(cert.content)?;
    // Extensions are the [3] EXPLICIT element, the last one in TBSCertificate.
    let ext_wrapper = children(tbs.content)?.into_iter().find(|t| t.tag == 0xa3)?;
    let value = find_extension(ext_wrapper.content, OID_TLS_FEATURE)?;
    let (features, _) = read(value)?;
    // status_request is TLS extension 5.
    Some(children(features.content)?.iter().any(|f| f.tag == INTEGER && f.content == [5]))
}

/// Adds a nonce extension to a DER OCSPRequest built without extensions.
pub fn add_request_nonce(request_der: &[u8], nonce: &[u8]) -> Option<Vec<u8>> {
    let (req, _) = read(request_der)?;
    let (tbs, after_tbs) = read(req.content)?;
    let nonce_value = encode(OCTET_STRING, &encode(OCTET_STRING, nonce));
    let ext = encode(SEQUENCE, &[encode(OID, OID_OCSP_NONCE), nonce_value].concat());
    let extensions = encode(0xa2, &encode(SEQUENCE, &ext));
    let tbs_new = encode(SEQUENCE, &[tbs.content, &extensions].concat());
    Some(encode(SEQUENCE, &[&tbs_new[..], after_tbs].concat()))
}

/// The BasicOCSPResponse inside a DER OCSPResponse, as its SEQUENCE's content.
fn basic_response(response_der: &[u8]) -> Option<&[u8]> {
    let (resp, _) = read(response_der)?;
    let parts = children(resp.content)?;
    let bytes = parts.iter().find(|t| t.tag == 0xa0)?; // [0] EXPLICIT ResponseBytes
    let (rb, _) = read(bytes.content)?;
    let rb_parts = children(rb.content)?;
    let (basic, _) = read(rb_parts.get(1)?.content)?;
    Some(basic.content)
}

/// The DER of each certificate a response carries (BasicOCSPResponse `certs`).
pub fn response_certs(response_der: &[u8]) -> Option<Vec<&[u8]>> {
    let parts = children(basic_response(response_der)?)?;
    let Some(wrapper) = parts.iter().find(|t| t.tag == 0xa0) else { return Some(Vec::new()) };
    let (seq, _) = read(wrapper.content)?;
    Some(children(seq.content)?.into_iter().map(|c| c.whole).collect())
}

/// The nonce a response echoes, as raw bytes (the inner OCTET STRING's content, or the
/// whole value if a responder sent it unwrapped).
pub fn response_nonce(response_der: &[u8]) -> Option<Vec<u8>> {
    let (tbs, _) = read(basic_response(response_der)?)?;
    // ResponseData: [0] version?, responderID ([1] byName or [2] byKey), producedAt,
    // responses, [1] responseExtensions?. byName shares the [1] tag with the
    // extensions, so find them by position: two after producedAt (GeneralizedTime).
    let fields = children(tbs.content)?;
    let produced_at = fields.iter().position(|t| t.tag == 0x18)?;
    let ext_wrapper = fields.get(produced_at + 2).filter(|t| t.tag == 0xa1)?;
    let value = find_extension(ext_wrapper.content, OID_OCSP_NONCE)?;
    match read(value) {
        Some((inner, rest)) if inner.tag == OCTET_STRING && rest.is_empty() => Some(inner.content.to_vec()),
        _ => Some(value.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_and_read_round_trip_long_lengths() {
        for len in [0usize, 1, 127, 128, 255, 256, 70000] {
            let content = vec![7u8; len];
            let enc = encode(OCTET_STRING, &content);
            let (tlv, rest) = read(&enc).unwrap();
            assert_eq!(tlv.content.len(), len);
            assert!(rest.is_empty());
            assert_eq!(tlv.whole, &enc[..]);
        }
    }

    #[test]
    fn truncated_and_hostile_input_is_refused() {
        assert!(read(&[]).is_none());
        assert!(read(&[0x30]).is_none());
        assert!(read(&[0x30, 0x05, 1, 2]).is_none());
        assert!(read(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        assert!(read(&[0x1f, 0x01, 0x00]).is_none());
        assert!(!has_must_staple(b"<html>"));
        assert!(response_nonce(&[0x30, 0x03, 0x0a, 0x01, 0x03]).is_none());
    }

    #[test]
    fn request_nonce_is_added_as_extension() {
        // OCSPRequest { TBSRequest { requestList { } } }
        let req = encode(SEQUENCE, &encode(SEQUENCE, &encode(SEQUENCE, &[])));
        let with = add_request_nonce(&req, &[1, 2, 3]).unwrap();
        let (outer, _) = read(&with).unwrap();
        let (tbs, _) = read(outer.content).unwrap();
        let wrapper = children(tbs.content).unwrap().into_iter().find(|t| t.tag == 0xa2).unwrap();
        let value = find_extension(wrapper.content, OID_OCSP_NONCE).unwrap();
        assert_eq!(value, encode(OCTET_STRING, &[1, 2, 3]));
    }
}
