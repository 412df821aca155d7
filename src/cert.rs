//! A certificate handed to us by mod_ssl: the leaf, its issuer, and what we need to
//! ask about it.

use std::collections::HashMap;
use std::fmt;

use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::ocsp::OcspCertId;
use openssl::x509::{X509Ref, X509};

use crate::openssl_ext::CertificateExt;

/// TLS extension number of status_request, which a must-staple certificate requires.
const STATUS_REQUEST: u32 = 5;

/// The id mod_ssl uses for a certificate: SHA-1 of its DER.
pub type CertKey = [u8; 20];

/// A map keyed by [`CertKey`]. The keys are SHA-1 digests of configured certificates,
/// uniformly spread and not chosen by clients, so the hash is just their first 8 bytes:
/// the handshake path does no SipHash rounds.
pub type KeyMap<V> = std::collections::HashMap<CertKey, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// The hasher of [`KeyMap`].
#[derive(Default)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        match bytes.first_chunk::<8>() {
            Some(first) => self.0 ^= u64::from_ne_bytes(*first),
            None => bytes.iter().for_each(|b| self.0 = self.0.rotate_left(8) ^ u64::from(*b)),
        }
    }
}

/// Why a primed PEM could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertError(pub String);

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CertError {}

/// A leaf certificate and its issuer, kept small: a server with thousands of
/// certificates holds one of these per certificate in every process.
#[derive(Clone)]
pub struct CertInfo {
    /// SHA-1 of the leaf's DER.
    pub key: CertKey,
    /// The leaf's DER. It is parsed again only to ask about it or to check an answer
    /// (a few times a day), so that no parsed X509 is kept per certificate.
    leaf_der: Box<[u8]>,
    /// Its issuer: one parsed object shared by every certificate it issued (see
    /// [`Issuers`]).
    pub issuer: X509,
    /// First OCSP URL from the AIA extension.
    pub aia_ocsp_url: Option<String>,
    /// Carries TLS Feature status_request (RFC 7633).
    pub must_staple: bool,
    /// Subject and serial, for log lines.
    pub label: String,
    /// The leaf's subject, most specific part first ("CN=www.example, O=Example").
    pub subject: String,
    /// The leaf's serial number, upper-case hex.
    pub serial: String,
}

impl fmt::Debug for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// The issuers parsed so far in one configuration pass, by a SHA-256 of their PEM
/// text: hosting servers have thousands of certificates from a handful of CAs, and
/// each issuer is parsed and kept once.
#[derive(Default)]
pub struct Issuers(HashMap<[u8; 32], X509>);

impl Issuers {
    /// The issuer whose PEM text is `pem`, parsed once.
    fn get_or_parse(&mut self, pem: &[u8]) -> Result<X509, ErrorStack> {
        let digest: [u8; 32] = openssl::sha::sha256(pem);
        if let Some(issuer) = self.0.get(&digest) {
            return Ok(issuer.clone());
        }
        let issuer = X509::from_pem(pem)?;
        self.0.insert(digest, issuer.clone());
        Ok(issuer)
    }
}

impl CertInfo {
    /// Parses mod_ssl's PEM: the leaf first, then its issuer.
    pub fn from_pem_chain(pem: &[u8]) -> Result<CertInfo, CertError> {
        CertInfo::from_pem_chain_sharing(pem, &mut Issuers::default())
    }

    /// As [`from_pem_chain`](Self::from_pem_chain), taking the issuer from `issuers`
    /// when it was parsed before.
    pub fn from_pem_chain_sharing(pem: &[u8], issuers: &mut Issuers) -> Result<CertInfo, CertError> {
        let (leaf_pem, rest) = split_first_pem(pem);
        let leaf = X509::from_pem(leaf_pem)
            .map_err(|e| CertError(format!("cannot parse the certificate PEM from mod_ssl: {e}")))?;
        if !rest.windows(PEM_BEGIN.len()).any(|w| w == PEM_BEGIN) {
            return Err(CertError(format!("{}: mod_ssl passed no issuer certificate", label_of(&leaf))));
        }
        let issuer = issuers.get_or_parse(rest).map_err(|e| {
            CertError(format!("{}: cannot parse the issuer certificate from mod_ssl: {e}", label_of(&leaf)))
        })?;
        let leaf_der = leaf.to_der().map_err(|e| CertError(format!("cannot encode the certificate: {e}")))?;
        let key: CertKey = openssl::sha::sha1(&leaf_der);
        let aia_ocsp_url = leaf.ocsp_responders().ok().and_then(|urls| urls.iter().next().map(|u| u.to_string()));
        Ok(CertInfo {
            key,
            must_staple: requires_status_request(&leaf),
            label: label_of(&leaf),
            subject: subject_of(&leaf),
            serial: serial_of(&leaf),
            leaf_der: leaf_der.into_boxed_slice(),
            issuer,
            aia_ocsp_url,
        })
    }

    /// The leaf, parsed from its DER.
    pub fn leaf(&self) -> Result<X509, ErrorStack> {
        X509::from_der(&self.leaf_der)
    }

    /// The SHA-1 CertID of the leaf (what responders expect, RFC 5019 §2.1.1).
    pub fn cert_id(&self) -> Result<OcspCertId, ErrorStack> {
        let leaf = self.leaf()?;
        OcspCertId::from_cert(MessageDigest::sha1(), &leaf, &self.issuer)
    }

    /// The hex form of the key, as used for store file names.
    pub fn key_hex(&self) -> String {
        hex(&self.key)
    }
}

const PEM_BEGIN: &[u8] = b"-----BEGIN";
const PEM_END: &[u8] = b"-----END CERTIFICATE-----";

/// The first PEM block of `pem` and what follows it.
fn split_first_pem(pem: &[u8]) -> (&[u8], &[u8]) {
    match pem.windows(PEM_END.len()).position(|w| w == PEM_END) {
        Some(at) => pem.split_at(at + PEM_END.len()),
        None => (pem, &[]),
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// True if the certificate's TLS Feature extension requires status_request (RFC 7633
/// must-staple). An extension OpenSSL cannot decode counts as none.
fn requires_status_request(cert: &X509Ref) -> bool {
    matches!(cert.tls_features(), Ok(Some(features)) if features.contains(STATUS_REQUEST))
}

/// "certificate CN=… serial=…", for log lines.
pub(crate) fn label_of(cert: &X509) -> String {
    let cn = cert
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_else(|| "(no CN)".into());
    let serial = cert
        .serial_number()
        .to_bn()
        .ok()
        .and_then(|bn| bn.to_hex_str().ok().map(|s| s.to_string()))
        .unwrap_or_default();
    format!("certificate CN={cn} serial={serial}")
}

/// The subject, most specific part first ("CN=www.example, O=Example").
fn subject_of(cert: &X509Ref) -> String {
    let parts: Vec<String> = cert
        .subject_name()
        .entries()
        .map(|e| {
            let name = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().map(|s| s.to_string()).unwrap_or_else(|_| "?".into());
            format!("{name}={value}")
        })
        .collect();
    parts.into_iter().rev().collect::<Vec<_>>().join(", ")
}

/// The serial number, upper-case hex.
fn serial_of(cert: &X509Ref) -> String {
    let bn = cert.serial_number().to_bn().ok();
    bn.and_then(|b| b.to_hex_str().ok().map(|s| s.to_string())).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testpki::{cert_info, pem, OCSP_URL};

    #[test]
    fn must_staple_is_detected() {
        assert!(cert_info("muststaple").must_staple);
        assert!(!cert_info("leaf").must_staple);
        assert!(!cert_info("noaia").must_staple);
    }

    #[test]
    fn aia_ocsp_url_is_read() {
        assert_eq!(cert_info("leaf").aia_ocsp_url.as_deref(), Some(OCSP_URL));
        assert_eq!(cert_info("muststaple").aia_ocsp_url.as_deref(), Some(OCSP_URL));
        assert_eq!(cert_info("noaia").aia_ocsp_url, None);
    }

    #[test]
    fn key_is_sha1_of_the_leaf_der() {
        let info = cert_info("leaf");
        let leaf = X509::from_pem(&pem("leaf")).unwrap();
        let digest = openssl::hash::hash(MessageDigest::sha1(), &leaf.to_der().unwrap()).unwrap();
        assert_eq!(&info.key[..], &digest[..]);
        assert_eq!(info.key_hex(), hex(&digest));
        assert_eq!(info.key_hex().len(), 40);
        assert_eq!(info.issuer.to_der().unwrap(), X509::from_pem(&pem("issuer")).unwrap().to_der().unwrap());
        assert!(info.label.contains("CN=localhost"), "{}", info.label);
        assert_ne!(cert_info("leaf2").key, info.key);
        assert_eq!(info.leaf().unwrap().to_der().unwrap(), leaf.to_der().unwrap());
    }

    #[test]
    fn subject_and_serial_are_read() {
        let info = cert_info("leaf");
        assert!(info.subject.starts_with("CN="), "{}", info.subject);
        let serial = &info.serial;
        assert!(!serial.is_empty() && serial.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
        assert!(info.label.contains(serial.as_str()), "{} vs {serial}", info.label);
    }

    #[test]
    fn an_issuer_is_parsed_once_and_shared() {
        let mut issuers = Issuers::default();
        let chain = |name: &str| [pem(name), pem("issuer")].concat();
        let a = CertInfo::from_pem_chain_sharing(&chain("leaf"), &mut issuers).unwrap();
        let b = CertInfo::from_pem_chain_sharing(&chain("leaf2"), &mut issuers).unwrap();
        assert_eq!(issuers.0.len(), 1);
        assert!(std::ptr::eq::<X509Ref>(&*a.issuer, &*b.issuer), "one parsed issuer for both");
        let other = CertInfo::from_pem_chain_sharing(&[pem("leaf"), pem("other-ca")].concat(), &mut issuers).unwrap();
        assert_eq!(issuers.0.len(), 2);
        assert!(!std::ptr::eq::<X509Ref>(&*other.issuer, &*a.issuer));
    }

    #[test]
    fn a_bad_issuer_is_named() {
        let bad = [pem("leaf"), b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec()].concat();
        let err = CertInfo::from_pem_chain(&bad).unwrap_err();
        assert!(err.0.contains("cannot parse the issuer"), "{err}");
    }

    #[test]
    fn leaf_alone_is_refused() {
        let err = CertInfo::from_pem_chain(&pem("leaf")).unwrap_err();
        assert!(err.0.contains("no issuer"), "{err}");
    }

    #[test]
    fn garbage_is_refused() {
        assert!(CertInfo::from_pem_chain(b"this is not a certificate").is_err());
        assert!(CertInfo::from_pem_chain(b"").is_err());
        assert!(CertInfo::from_pem_chain(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x00, 0xab, 0x0f]), "00ab0f");
    }
}

#[cfg(test)]
mod key_map_tests {
    use super::*;

    #[test]
    fn key_map_finds_every_key_and_only_those() {
        let keys: Vec<CertKey> = (0..500u32)
            .map(|i| {
                let d = openssl::hash::hash(MessageDigest::sha1(), &i.to_le_bytes()).unwrap();
                d.as_ref().try_into().unwrap()
            })
            .collect();
        let map: KeyMap<usize> = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(map.get(k), Some(&i));
        }
        assert_eq!(map.get(&[0u8; 20]), None);
    }
}
