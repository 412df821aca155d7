//! A certificate handed to us by mod_ssl: the leaf, its issuer, and what we need to
//! ask about it.

use std::fmt;

use openssl::hash::MessageDigest;
use openssl::nid::Nid;
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

/// A leaf certificate and its issuer.
#[derive(Clone)]
pub struct CertInfo {
    /// SHA-1 of the leaf's DER.
    pub key: CertKey,
    /// The leaf.
    pub leaf: X509,
    /// Its issuer.
    pub issuer: X509,
    /// First OCSP URL from the AIA extension.
    pub aia_ocsp_url: Option<String>,
    /// Carries TLS Feature status_request (RFC 7633).
    pub must_staple: bool,
    /// Subject and serial, for log lines.
    pub label: String,
}

impl fmt::Debug for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

impl CertInfo {
    /// Parses mod_ssl's PEM: the leaf first, then its issuer.
    pub fn from_pem_chain(pem: &[u8]) -> Result<CertInfo, CertError> {
        let chain = X509::stack_from_pem(pem)
            .map_err(|e| CertError(format!("cannot parse the certificate PEM from mod_ssl: {e}")))?;
        let mut certs = chain.into_iter();
        let leaf = certs.next().ok_or_else(|| CertError("mod_ssl passed no certificate".into()))?;
        let issuer = certs
            .next()
            .ok_or_else(|| CertError(format!("{}: mod_ssl passed no issuer certificate", label_of(&leaf))))?;
        let digest =
            leaf.digest(MessageDigest::sha1()).map_err(|e| CertError(format!("cannot hash the certificate: {e}")))?;
        let mut key = [0u8; 20];
        key.copy_from_slice(&digest);
        let aia_ocsp_url = leaf.ocsp_responders().ok().and_then(|urls| urls.iter().next().map(|u| u.to_string()));
        Ok(CertInfo {
            key,
            must_staple: requires_status_request(&leaf),
            label: label_of(&leaf),
            leaf,
            issuer,
            aia_ocsp_url,
        })
    }

    /// The hex form of the key, as used for store file names.
    pub fn key_hex(&self) -> String {
        hex(&self.key)
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
