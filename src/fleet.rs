//! The fleet tier: a cache shared by several servers (Apache's memcache or redis socache
//! provider), so that one responder request serves the whole fleet. Pure: the tier is
//! behind the [`FleetTier`] trait; the engine decides what to read, trust and write.
//!
//! Nothing read from the tier is trusted: a response is validated exactly like a
//! responder's answer before it is used. The tier has no atomic add, so the fleet-wide
//! lease is best effort: write it, read it back, and a rare race costs one extra request.

use std::fmt;
use std::time::Duration;

use openssl::hash::{Hasher, MessageDigest};

use crate::cert::CertInfo;
use crate::time::UnixTime;

/// Version of the keys and values this module writes into the tier. Keys are short:
/// the memcache provider hex-encodes them after a tag, within memcached's 250 bytes.
const KEY_PREFIX: &str = "s1";
/// How long a server waits before looking again while another one holds the lease.
pub const FLEET_WAIT: Duration = Duration::from_secs(2);

/// Why a call into the tier failed (the provider's words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierError(pub String);

impl fmt::Display for TierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A shared key-value tier with expiry. Calls may block up to the provider's own
/// timeout; they are never made on the handshake path.
pub trait FleetTier: Send + Sync {
    /// How the admin wrote it, e.g. `memcache:10.0.0.5:11211`.
    fn describe(&self) -> &str;
    /// The value under `key`, `None` if there is none.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, TierError>;
    /// Stores `value` under `key` until `expires`.
    fn put(&self, key: &str, value: &[u8], expires: UnixTime) -> Result<(), TierError>;
    /// Removes `key` (absent is fine).
    fn remove(&self, key: &str) -> Result<(), TierError>;
}

/// The keys of one certificate: its identity is a SHA-256 over the issuer's name, the
/// issuer's public key and the serial (what a CertID names), so servers with different
/// certificates never collide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The validated DER response.
    pub response: String,
    /// The fleet-wide lease of the next fetch.
    pub lease: String,
}

impl Keys {
    /// The keys for `cert`.
    pub fn of(cert: &CertInfo) -> Keys {
        // The leaf's SHA-1 stands in should hashing ever fail: still one key per certificate.
        let id = identity(cert).unwrap_or_else(|| cert.key.iter().map(|b| format!("{b:02x}")).collect());
        Keys { response: format!("{KEY_PREFIX}:r:{id}"), lease: format!("{KEY_PREFIX}:l:{id}") }
    }
}

fn identity(cert: &CertInfo) -> Option<String> {
    let mut h = Hasher::new(MessageDigest::sha256()).ok()?;
    h.update(&cert.issuer.subject_name().to_der().ok()?).ok()?;
    h.update(&cert.issuer.public_key().ok()?.public_key_to_der().ok()?).ok()?;
    h.update(&cert.leaf().ok()?.serial_number().to_bn().ok()?.to_vec()).ok()?;
    Some(h.finish().ok()?.iter().map(|b| format!("{b:02x}")).collect())
}

/// A fleet lease as stored: who holds it and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseEntry {
    /// The holder: host, process and a random number, so that no two processes match.
    pub holder: String,
    /// When it lapses.
    pub until: UnixTime,
}

impl LeaseEntry {
    /// `holder until` as bytes.
    pub fn encode(&self) -> Vec<u8> {
        format!("{} {}", self.holder, self.until.secs()).into_bytes()
    }

    /// Reads an entry; `None` for anything else (a garbage lease counts as no lease).
    pub fn decode(bytes: &[u8]) -> Option<LeaseEntry> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (holder, until) = text.rsplit_once(' ')?;
        let until = UnixTime::from_secs(until.parse().ok()?);
        (!holder.is_empty() && holder.len() <= 200).then(|| LeaseEntry { holder: holder.to_string(), until })
    }

    /// True if someone other than `me` holds it at `now`.
    pub fn held_by_other(&self, me: &str, now: UnixTime) -> bool {
        self.holder != me && now < self.until
    }
}

/// A server's name as a lease holder (host and a random number), to which each
/// process adds its pid.
pub fn holder_base() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut random = [0u8; 8];
    let _ = openssl::rand::rand_bytes(&mut random);
    format!("{}:{:016x}", host.trim(), u64::from_ne_bytes(random))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testpki;

    #[test]
    fn keys_name_the_issuer_and_serial_and_differ_per_certificate() {
        let (leaf, leaf2) = (Keys::of(&testpki::cert_info("leaf")), Keys::of(&testpki::cert_info("leaf2")));
        assert!(leaf.response.starts_with("s1:r:"), "{leaf:?}");
        assert_eq!(leaf.response.len(), 5 + 64);
        assert_ne!(leaf.response, leaf2.response);
        assert_eq!(leaf.response.replace(":r:", ":l:"), leaf.lease);
        assert_eq!(Keys::of(&testpki::cert_info("leaf")), leaf, "stable");
        // mod_socache_memcache writes "TAG:" and the key in hex; memcached allows 250 bytes.
        assert!("mod_stapling:".len() + 2 * leaf.response.len() < 250);
        assert!(leaf.response.bytes().all(|b| b.is_ascii_graphic()), "no spaces or controls");
    }

    #[test]
    fn lease_entries_round_trip_and_garbage_is_no_lease() {
        let e = LeaseEntry { holder: "web1:42:00ff".into(), until: UnixTime::from_secs(1000) };
        assert_eq!(LeaseEntry::decode(&e.encode()), Some(e.clone()));
        assert!(e.held_by_other("web2:1:1", UnixTime::from_secs(999)));
        assert!(!e.held_by_other("web2:1:1", UnixTime::from_secs(1000)), "lapsed");
        assert!(!e.held_by_other("web1:42:00ff", UnixTime::from_secs(10)), "our own");
        for junk in [&b""[..], b"nospace", b" 5", b"x notanumber", &[0xff, 0x20, 0x31]] {
            assert_eq!(LeaseEntry::decode(junk), None, "{junk:?}");
        }
        assert_ne!(holder_base(), holder_base());
    }
}
