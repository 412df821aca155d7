//! Why mod_ssl handed a configured certificate to nobody (or to someone else): read
//! from the vhost's own `SSLCertificateFile`, so that the log names the certificate,
//! the file and the directive where the fix belongs. Pure; tested without Apache.

use openssl::hash::MessageDigest;
use openssl::x509::X509;

use crate::cert::{label_of, CertKey};

/// What one `SSLCertificateFile` of a vhost with stapling on tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// mod_ssl handed the certificate over: nothing to say.
    Primed,
    /// Self-signed (Debian's snakeoil): no CA, so no responder.
    SelfSigned {
        /// The certificate's label.
        label: String,
    },
    /// The issuer is in the file or in `SSLCertificateChainFile`, yet mod_ssl did not
    /// hand the certificate to us: another OCSP provider (mod_md's `MDStapling`) took it.
    OtherProvider {
        /// The certificate's label.
        label: String,
    },
    /// mod_ssl found no issuer: the chain is missing.
    NoIssuer {
        /// The certificate's label.
        label: String,
        /// The `SSLCertificateFile` it came from.
        file: String,
    },
    /// The file could not be read as PEM (an engine or PKCS#11 URI, say): unknown.
    Unreadable,
}

impl Finding {
    /// True for a certificate we should have stapled and cannot.
    pub fn is_missing_chain(&self) -> bool {
        matches!(self, Finding::NoIssuer { .. })
    }

    /// The log line for vhost `vhost`, if there is one to log.
    pub fn line(&self, vhost: &str) -> Option<String> {
        Some(match self {
            Finding::Primed | Finding::Unreadable => return None,
            Finding::SelfSigned { label } => {
                format!("{label} (vhost {vhost}) is self-signed: there is no responder to ask, so it is not stapled")
            }
            Finding::OtherProvider { label } => format!(
                "{label} (vhost {vhost}) is stapled by another module (mod_ssl handed it to another OCSP \
                 provider, such as mod_md with MDStapling on), not by mod_stapling"
            ),
            Finding::NoIssuer { label, file } => format!(
                "{label} (vhost {vhost}) cannot be stapled: mod_ssl found no issuer for it. Add the issuing \
                 (intermediate) CA certificate to {file} after the server certificate (SSLCertificateFile), \
                 or name a file holding it in SSLCertificateChainFile"
            ),
        })
    }
}

/// Diagnoses the PEM text `pem` of an `SSLCertificateFile` (`file`) of a vhost with
/// stapling on. `chain_file` is true if the vhost sets `SSLCertificateChainFile`;
/// `primed` tells whether mod_ssl handed a certificate over (to anyone who asked us).
pub fn diagnose(pem: &[u8], file: &str, chain_file: bool, primed: impl Fn(&CertKey) -> bool) -> Finding {
    let Ok(certs) = X509::stack_from_pem(pem) else { return Finding::Unreadable };
    let Some(leaf) = certs.first() else { return Finding::Unreadable };
    let Some(key) = key_of(leaf) else { return Finding::Unreadable };
    let label = label_of(leaf);
    if primed(&key) {
        Finding::Primed
    } else if self_signed(leaf) {
        Finding::SelfSigned { label }
    } else if chain_file || certs.iter().skip(1).any(|c| leaf.issued_by(c)) {
        Finding::OtherProvider { label }
    } else {
        Finding::NoIssuer { label, file: file.to_string() }
    }
}

fn key_of(cert: &X509) -> Option<CertKey> {
    cert.digest(MessageDigest::sha1()).ok()?.as_ref().try_into().ok()
}

fn self_signed(cert: &X509) -> bool {
    cert.issued_by(cert) && cert.public_key().and_then(|k| cert.verify(&k)).unwrap_or(false)
}

/// `X509_check_issued` through the safe API: `issuer`'s subject is `self`'s issuer and
/// its key verifies `self`'s signature.
trait IssuedBy {
    fn issued_by(&self, issuer: &X509) -> bool;
}

impl IssuedBy for X509 {
    fn issued_by(&self, issuer: &X509) -> bool {
        let names_match = matches!(self.issuer_name().try_cmp(issuer.subject_name()), Ok(std::cmp::Ordering::Equal));
        names_match && issuer.public_key().and_then(|k| self.verify(&k)).unwrap_or(false)
    }
}

/// How a vhost's certificates add up: the findings, and how many of them are missing
/// their chain (for the ready line's total).
pub fn missing_chains(findings: &[Finding]) -> usize {
    findings.iter().filter(|f| f.is_missing_chain()).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testpki;

    fn never(_: &CertKey) -> bool {
        false
    }

    fn chain(names: &[&str]) -> Vec<u8> {
        names.iter().flat_map(|n| testpki::pem(n)).collect()
    }

    #[test]
    fn a_self_signed_certificate_has_no_responder() {
        let f = diagnose(&testpki::pem("root"), "/etc/ssl/certs/ssl-cert-snakeoil.pem", false, never);
        let line = f.line("localhost:443").unwrap();
        assert!(
            line.ends_with("(vhost localhost:443) is self-signed: there is no responder to ask, so it is not stapled")
        );
        assert!(!f.is_missing_chain());
    }

    #[test]
    fn a_leaf_alone_names_the_file_and_the_directives() {
        let f = diagnose(&testpki::pem("leaf"), "/etc/ssl/leaf.pem", false, never);
        assert!(f.is_missing_chain());
        let line = f.line("a:443").unwrap();
        assert!(line.starts_with("certificate CN=localhost serial="), "{line}");
        assert!(line.ends_with(
            "(vhost a:443) cannot be stapled: mod_ssl found no issuer for it. Add the issuing (intermediate) CA \
             certificate to /etc/ssl/leaf.pem after the server certificate (SSLCertificateFile), or name a file \
             holding it in SSLCertificateChainFile"
        ));
    }

    #[test]
    fn a_full_chain_we_were_not_given_belongs_to_another_provider() {
        let f = diagnose(&chain(&["leaf", "issuer"]), "x", false, never);
        assert!(matches!(f, Finding::OtherProvider { .. }), "{f:?}");
        assert!(f.line("a:443").unwrap().contains("stapled by another module"));
        let f = diagnose(&testpki::pem("leaf"), "x", true, never);
        assert!(matches!(f, Finding::OtherProvider { .. }), "a chain file holds the issuer");
        // An unrelated certificate after the leaf is no issuer.
        assert!(diagnose(&chain(&["leaf", "other-ca"]), "x", false, never).is_missing_chain());
    }

    #[test]
    fn primed_and_unreadable_say_nothing() {
        assert_eq!(diagnose(&chain(&["leaf", "issuer"]), "x", false, |_| true), Finding::Primed);
        assert_eq!(diagnose(b"pkcs11:token=x", "x", false, never), Finding::Unreadable);
        assert_eq!(Finding::Primed.line("a"), None);
        assert_eq!(missing_chains(&[Finding::Primed, diagnose(&testpki::pem("leaf"), "x", false, never)]), 1);
    }
}
