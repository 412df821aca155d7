//! The stapling engine: which certificates we serve, and how one refresh goes.
//! Safe Rust; Apache reaches it through `apache::entry`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{debug, error, info, warn};

use crate::cert::{CertInfo, CertKey, KeyMap};
use crate::config::Effective;
use crate::ocsp::{self, CertStatus, FetchError, Policy, Verified};
use crate::refresh;
use crate::store::{DiskStore, Publish, SharedStore, SlotStatus, StapleBuffer};

/// Fetches the startup helper runs at once.
const STARTUP_PARALLELISM: usize = 32;

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A uniform value in [0, 1) for jitter.
fn jitter() -> f64 {
    let mut b = [0u8; 4];
    if openssl::rand::rand_bytes(&mut b).is_err() {
        return 0.5;
    }
    u32::from_le_bytes(b) as f64 / (u32::MAX as f64 + 1.0)
}

/// A certificate we staple, with the settings of the first vhost that primed it.
#[derive(Debug, Clone)]
pub struct ManagedCert {
    /// Leaf and issuer.
    pub info: CertInfo,
    /// Effective settings.
    pub settings: Effective,
    /// The responder we ask.
    pub url: String,
    /// The vhosts that use it, for log lines.
    pub vhosts: Vec<String>,
}

impl ManagedCert {
    /// "certificate CN=… serial=… (vhost host:port, …)", for log lines.
    pub fn describe(&self) -> String {
        if self.vhosts.is_empty() {
            self.info.label.clone()
        } else {
            format!("{} (vhost {})", self.info.label, self.vhosts.join(", "))
        }
    }
}

/// What the prime hook decided for one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimeDecision {
    /// We staple it.
    Take,
    /// Not ours: stapling is off for this vhost.
    Off,
    /// No responder URL: skipped, with a reason to log once.
    NoUrl,
}

/// Certificates primed during one configuration pass (between pre_config and post_config).
#[derive(Debug, Default)]
pub struct Registry {
    /// In prime order.
    pub certs: Vec<ManagedCert>,
    /// Servers (by address) for which mod_ssl handed over at least one certificate.
    pub primed_servers: Vec<usize>,
    /// Certificates without a responder URL, with the line to log once at startup.
    pub no_url: Vec<(CertKey, String)>,
}

impl Registry {
    /// Records a primed certificate for vhost `vhost` (server address `server`).
    pub fn prime(&mut self, info: CertInfo, settings: Effective, vhost: &str, server: usize) -> PrimeDecision {
        if !settings.enabled {
            return PrimeDecision::Off;
        }
        if !self.primed_servers.contains(&server) {
            self.primed_servers.push(server);
        }
        let Some(url) = settings.force_url.clone().or_else(|| info.aia_ocsp_url.clone()) else {
            if !self.no_url.iter().any(|(k, _)| *k == info.key) {
                self.no_url.push((
                    info.key,
                    format!(
                        "{} (vhost {vhost}) has no OCSP responder URL and no StaplingForceURL is set: it is \
                         not stapled. Many CAs, Let's Encrypt among them, stopped running OCSP in 2025",
                        info.label
                    ),
                ));
            }
            return PrimeDecision::NoUrl;
        };
        match self.certs.iter_mut().find(|c| c.info.key == info.key) {
            Some(existing) if !existing.vhosts.iter().any(|v| v == vhost) => existing.vhosts.push(vhost.to_string()),
            Some(_) => {}
            None => self.certs.push(ManagedCert { info, settings, url, vhosts: vec![vhost.to_string()] }),
        }
        PrimeDecision::Take
    }
}

/// Everything one process needs to staple and refresh, for one configuration generation.
pub struct Runtime {
    /// The shared store.
    pub store: SharedStore<'static>,
    /// Managed certificates; `slots[i]` is the slot of `certs[i]`.
    pub certs: Vec<ManagedCert>,
    /// Slot of each certificate.
    pub slots: Vec<usize>,
    /// Lookup from mod_ssl's id to the index in `certs`.
    pub by_key: KeyMap<usize>,
    /// On-disk copies, unless `StaplingStore none` or unwritable.
    pub disk: Option<DiskStore>,
    /// The store generation this runtime belongs to.
    pub generation: u64,
}

/// Fetches the bytes of a response. The real one is HTTP; tests may substitute.
pub trait Transport: Sync {
    /// POSTs `request` to `url` within `timeout`.
    fn fetch(&self, url: &str, request: &[u8], timeout: Duration) -> Result<Vec<u8>, FetchError>;
}

/// HTTP/1.1 to the responder.
pub struct HttpTransport;

impl Transport for HttpTransport {
    fn fetch(&self, url: &str, request: &[u8], timeout: Duration) -> Result<Vec<u8>, FetchError> {
        ocsp::fetch(url, request, timeout)
    }
}

/// The result of one refresh attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Not due, or another process holds the lease.
    Skipped,
    /// A new response was published.
    Published(SlotStatus),
    /// The fetch or the validation failed; the old response (if any) stays.
    Failed(String),
}

impl Runtime {
    /// Builds the runtime and assigns store slots to certificates.
    pub fn new(
        store: SharedStore<'static>,
        certs: Vec<ManagedCert>,
        disk: Option<DiskStore>,
    ) -> Result<Runtime, crate::store::StoreError> {
        let keys: Vec<CertKey> = certs.iter().map(|c| c.info.key).collect();
        let slots = store.assign(&keys, unix_now_ms())?;
        let by_key = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
        let generation = store.bump_generation();
        Ok(Runtime { store, certs, slots, by_key, disk, generation })
    }

    /// The handshake path: copy the stapleable response for `key` into `out`.
    /// Returns `None` if the certificate is not ours; `Some(false)` if it is ours but
    /// there is nothing to staple right now.
    pub fn staple(&self, key: &CertKey, out: &mut StapleBuffer) -> Option<bool> {
        let i = *self.by_key.get(key)?;
        Some(self.store.read(self.slots[i], key, unix_now(), out).is_some())
    }

    /// True once a newer configuration generation took over the store.
    pub fn superseded(&self) -> bool {
        self.store.generation() != self.generation
    }

    fn policy(cert: &ManagedCert, nonce: Option<Vec<u8>>) -> Policy {
        Policy {
            time_skew: cert.settings.time_skew.as_secs() as i64,
            max_age: cert.settings.max_age.map(|d| d.as_secs() as i64),
            nonce,
        }
    }

    /// Loads and re-validates the stored response for certificate `i` if the shared
    /// store has none. Runs unprivileged (in the startup helper). Returns true if a
    /// stored response was published.
    pub fn restore_from_disk(&self, i: usize) -> bool {
        let (cert, slot) = (&self.certs[i], self.slots[i]);
        if self.disk.is_none() || self.store.state(slot).staple_until > unix_now() {
            return false;
        }
        // A refresher of the previous generation may be publishing into this slot.
        let now_ms = unix_now_ms();
        if !self.store.try_lease(slot, now_ms, now_ms + 10_000) {
            return false;
        }
        let restored = self.store.holds(slot, &cert.info.key) && self.load_stored(i);
        if !restored {
            let state = self.store.state(slot);
            self.store.release(slot, state.next_fetch, state.failures, None);
        }
        restored
    }

    /// Validates the stored file of certificate `i` and publishes it (releasing the
    /// lease); deletes it if it is not usable.
    fn load_stored(&self, i: usize) -> bool {
        let cert = &self.certs[i];
        let Some(disk) = &self.disk else { return false };
        let now = unix_now();
        let path = disk.path(&cert.info.key);
        let bytes = match disk.load(&cert.info.key) {
            Ok(Some(b)) => b,
            Ok(None) => return false,
            Err(e) => {
                warn!("stored response {} for {} is unreadable ({e}); deleting it", path.display(), cert.describe());
                let _ = disk.remove(&cert.info.key);
                return false;
            }
        };
        match ocsp::validate(&bytes, &cert.info, &Self::policy(cert, None), now) {
            Ok(v) => {
                let published = self.publish(i, &bytes, &v, now, false).is_ok();
                if published {
                    info!(
                        "{}: stapling the stored response from {} until a fresh one is fetched",
                        cert.info.label,
                        path.display()
                    );
                }
                published
            }
            Err(why) => {
                warn!("stored response {} for {} is not usable ({why}); deleting it", path.display(), cert.describe());
                let _ = disk.remove(&cert.info.key);
                false
            }
        }
    }

    /// One refresh attempt for certificate `i` if it is due and no other process is on it.
    pub fn refresh_if_due(&self, i: usize, transport: &dyn Transport) -> Attempt {
        let (cert, slot) = (&self.certs[i], self.slots[i]);
        let now = unix_now();
        if !refresh::is_due(self.store.state(slot).next_fetch, now) {
            return Attempt::Skipped;
        }
        let lease_ms = (cert.settings.responder_timeout + Duration::from_secs(10)).as_millis() as u64;
        let now_ms = unix_now_ms();
        if !self.store.try_lease(slot, now_ms, now_ms + lease_ms) {
            return Attempt::Skipped;
        }
        // Another process may have finished a refresh between our check and the lease,
        // or a new configuration may have given the slot to another certificate.
        let state = self.store.state(slot);
        if !self.store.holds(slot, &cert.info.key) {
            self.store.release(slot, state.next_fetch, state.failures, None);
            return Attempt::Skipped;
        }
        if !refresh::is_due(state.next_fetch, unix_now()) {
            self.store.release(slot, state.next_fetch, state.failures, None);
            return Attempt::Skipped;
        }
        match self.fetch_and_validate(cert, slot, transport) {
            Ok((der, verified)) => {
                let now = unix_now();
                match self.publish(i, &der, &verified, now, true) {
                    Ok(status) => Attempt::Published(status),
                    Err(why) => self.record_failure(i, state.failures, why),
                }
            }
            Err(why) => self.record_failure(i, state.failures, why),
        }
    }

    fn fetch_and_validate(
        &self,
        cert: &ManagedCert,
        slot: usize,
        transport: &dyn Transport,
    ) -> Result<(Vec<u8>, Verified), String> {
        let (request, nonce) = ocsp::build_request(&cert.info, cert.settings.use_nonce)?;
        self.store.count_fetch(slot);
        debug!("{}: asking {}", cert.info.label, cert.url);
        let der = transport
            .fetch(&cert.url, &request, cert.settings.responder_timeout)
            .map_err(|e| format!("fetch from {} failed: {e}", cert.url))?;
        let verified = ocsp::validate(&der, &cert.info, &Self::policy(cert, nonce), unix_now())
            .map_err(|e| format!("response from {} rejected: {e}", cert.url))?;
        Ok((der, verified))
    }

    /// Publishes a validated response, schedules the next fetch and releases the lease.
    fn publish(&self, i: usize, der: &[u8], v: &Verified, now: i64, fresh: bool) -> Result<SlotStatus, String> {
        let (cert, slot) = (&self.certs[i], self.slots[i]);
        let skew = cert.settings.time_skew.as_secs() as i64;
        let plan = refresh::plan_success(v.this_update, v.next_update, now, skew, cert.settings.renew_window, jitter());
        let status = match &v.status {
            CertStatus::Good => SlotStatus::Good,
            CertStatus::Revoked { .. } => SlotStatus::Revoked,
        };
        let previous = self.store.state(slot);
        self.store
            .publish(
                slot,
                &Publish {
                    der,
                    status,
                    this_update: v.this_update,
                    next_update: v.next_update.unwrap_or(0),
                    staple_until: plan.staple_until,
                },
            )
            .map_err(|e| e.to_string())?;
        if fresh {
            self.store.release(slot, plan.next_fetch, 0, Some(now));
            self.save_to_disk(cert, der);
        } else {
            // A restored response: keep the schedule it implies, without a lease.
            self.store.release(slot, plan.next_fetch, previous.failures, None);
        }
        self.log_published(cert, v, &previous, plan.next_fetch - now, fresh);
        Ok(status)
    }

    fn save_to_disk(&self, cert: &ManagedCert, der: &[u8]) {
        if let Some(disk) = &self.disk {
            if let Err(e) = disk.save(&cert.info.key, der) {
                warn!(
                    "cannot write the response for {} to {}: {e}. Stapling continues from memory; \
                     check StaplingStore's directory permissions",
                    cert.describe(),
                    disk.dir().display()
                );
            }
        }
    }

    fn log_published(
        &self,
        cert: &ManagedCert,
        v: &Verified,
        previous: &crate::store::SlotState,
        next_in: i64,
        fresh: bool,
    ) {
        match &v.status {
            CertStatus::Revoked { reason } => error!(
                "{} is REVOKED ({reason}) according to {}: stapling the revoked status. \
                 Replace this certificate now",
                cert.describe(),
                cert.url
            ),
            CertStatus::Good if fresh && (previous.status == SlotStatus::Empty || previous.failures > 0) => {
                info!("{}: stapling a good response from {} (next refresh in {next_in}s)", cert.describe(), cert.url)
            }
            CertStatus::Good => debug!("{}: response refreshed (next refresh in {next_in}s)", cert.info.label),
        }
    }

    fn record_failure(&self, i: usize, previous_failures: u32, why: String) -> Attempt {
        let (cert, slot) = (&self.certs[i], self.slots[i]);
        let failures = previous_failures.saturating_add(1);
        let now = unix_now();
        let next = refresh::retry_after_failure(failures, now, cert.info.must_staple, jitter());
        self.store.release(slot, next, failures, None);
        let state = self.store.state(slot);
        let keeping = if state.staple_until > now {
            format!("the last good response stays stapled until it expires in {}s", state.staple_until - now)
        } else {
            "nothing is stapled for it".to_string()
        };
        let line = format!(
            "{}: {why}; {keeping}; retrying in {}s. Check that this server can reach the responder, \
             or set StaplingForceURL",
            cert.describe(),
            next - now
        );
        if cert.info.must_staple && state.staple_until <= now {
            error!("{line}. This certificate is must-staple: clients that honour it will refuse connections");
        } else if previous_failures == 0 {
            warn!("{line}");
        } else {
            debug!("{line}");
        }
        Attempt::Failed(why)
    }

    /// The startup pass: restore from disk, then fetch what is due, all in parallel.
    /// Runs in the unprivileged helper before the server accepts connections.
    pub fn startup_pass(&self) {
        // Parallel, but with a bounded number of threads for servers with many certificates.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let workers = self.certs.len().min(STARTUP_PARALLELISM);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= self.certs.len() {
                        return;
                    }
                    self.restore_from_disk(i);
                    self.refresh_if_due(i, &HttpTransport);
                });
            }
        });
        let missing: Vec<String> = (0..self.certs.len())
            .filter(|&i| self.store.state(self.slots[i]).staple_until <= unix_now())
            .map(|i| self.certs[i].describe())
            .collect();
        for (i, cert) in self.certs.iter().enumerate() {
            if cert.info.must_staple && self.store.state(self.slots[i]).staple_until <= unix_now() {
                error!(
                    "{} is must-staple but has no valid OCSP response at startup: clients that honour \
                     must-staple will refuse connections until the responder {} answers",
                    cert.describe(),
                    cert.url
                );
            }
        }
        if !missing.is_empty() {
            info!("no response yet for {}; retrying in the background", missing.join(", "));
        }
    }

    /// One pass of the background refresher over every certificate.
    pub fn refresh_pass(&self, transport: &dyn Transport) {
        for i in 0..self.certs.len() {
            self.refresh_if_due(i, transport);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use crate::store::{region_words, DEFAULT_SLOT_DER_BYTES};
    use crate::testpki::{self, Index, Opts};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Answers with the queued results, in order, and counts the calls.
    struct Scripted {
        answers: Mutex<Vec<Result<Vec<u8>, FetchError>>>,
        calls: AtomicUsize,
    }

    impl Scripted {
        fn new(answers: Vec<Result<Vec<u8>, FetchError>>) -> Scripted {
            Scripted { answers: Mutex::new(answers), calls: AtomicUsize::new(0) }
        }
    }

    impl Transport for Scripted {
        fn fetch(&self, _url: &str, _request: &[u8], _timeout: Duration) -> Result<Vec<u8>, FetchError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.answers.lock().unwrap().remove(0)
        }
    }

    fn enabled() -> Effective {
        let mut cfg = ServerConfig::default();
        cfg.apply("Stapling", "on", crate::config::Context::Global).unwrap();
        cfg.effective(true)
    }

    fn managed(name: &str) -> ManagedCert {
        ManagedCert {
            info: testpki::cert_info(name),
            settings: enabled(),
            url: "http://127.0.0.1:9/".into(),
            vhosts: vec![],
        }
    }

    fn runtime(disk: Option<DiskStore>) -> Runtime {
        let words: &'static [AtomicU64] =
            Box::leak((0..region_words(4, DEFAULT_SLOT_DER_BYTES)).map(|_| AtomicU64::new(0)).collect());
        let store = SharedStore::attach(words, DEFAULT_SLOT_DER_BYTES).unwrap();
        Runtime::new(store, vec![managed("leaf")], disk).unwrap()
    }

    fn good() -> Vec<u8> {
        testpki::response_for(&testpki::cert_info("leaf"), Opts::default())
    }

    fn make_due(rt: &Runtime) {
        let st = rt.store.state(rt.slots[0]);
        rt.store.release(rt.slots[0], 1, st.failures, None);
    }

    #[test]
    fn registry_dedupes_and_explains_missing_urls() {
        let mut reg = Registry::default();
        let leaf = testpki::cert_info("leaf");
        assert_eq!(reg.prime(leaf.clone(), enabled(), "a:443", 1), PrimeDecision::Take);
        assert_eq!(reg.prime(leaf.clone(), enabled(), "b:443", 2), PrimeDecision::Take);
        assert_eq!(reg.certs.len(), 1);
        assert_eq!(reg.certs[0].vhosts, vec!["a:443", "b:443"]);
        assert_eq!(reg.prime(leaf, ServerConfig::default().effective(true), "c:443", 3), PrimeDecision::Off);
        let noaia = testpki::cert_info("noaia");
        assert_eq!(reg.prime(noaia.clone(), enabled(), "d:443", 4), PrimeDecision::NoUrl);
        assert_eq!(reg.prime(noaia.clone(), enabled(), "e:443", 5), PrimeDecision::NoUrl);
        assert_eq!(reg.no_url.len(), 1, "one line per certificate");
        let mut forced = enabled();
        forced.force_url = Some("http://forced.example/".into());
        assert_eq!(reg.prime(noaia, forced, "f:443", 6), PrimeDecision::Take);
        assert_eq!(reg.certs[1].url, "http://forced.example/");
        assert_eq!(reg.primed_servers, vec![1, 2, 4, 5, 6]);
    }

    #[test]
    fn a_good_fetch_is_published_once_then_not_due() {
        let rt = runtime(None);
        let der = good();
        let transport = Scripted::new(vec![Ok(der.clone())]);
        assert_eq!(rt.refresh_if_due(0, &transport), Attempt::Published(SlotStatus::Good));
        assert_eq!(rt.refresh_if_due(0, &transport), Attempt::Skipped);
        assert_eq!(transport.calls.load(Ordering::SeqCst), 1);
        let mut out = StapleBuffer::default();
        assert_eq!(rt.staple(&rt.certs[0].info.key, &mut out), Some(true));
        assert_eq!(out.bytes(), &der[..]);
        assert_eq!(rt.staple(&[0; 20], &mut out), None, "not ours");
    }

    fn good_bytes_of(rt: &Runtime) -> Vec<u8> {
        let mut out = StapleBuffer::default();
        rt.store.read(rt.slots[0], &rt.certs[0].info.key, unix_now(), &mut out);
        out.bytes().to_vec()
    }

    #[test]
    fn a_failure_keeps_the_good_response_and_backs_off() {
        let rt = runtime(None);
        let first = good();
        let bad_sig =
            testpki::response_for(&testpki::cert_info("leaf"), Opts { signer: "other-ca", ..Opts::default() });
        let transport = Scripted::new(vec![Ok(first.clone()), Ok(bad_sig), Err(FetchError("HTTP 500".into()))]);
        rt.refresh_if_due(0, &transport);
        for _ in 0..2 {
            make_due(&rt);
            assert!(matches!(rt.refresh_if_due(0, &transport), Attempt::Failed(_)));
            let mut out = StapleBuffer::default();
            assert_eq!(rt.staple(&rt.certs[0].info.key, &mut out), Some(true));
            assert_eq!(out.bytes(), &first[..], "the last good response stays");
        }
        let st = rt.store.state(rt.slots[0]);
        assert_eq!(st.failures, 2);
        let wait = st.next_fetch - unix_now();
        assert!((59..=66).contains(&wait), "second failure waits about 60 s, got {wait}");
    }

    #[test]
    fn revoked_replaces_good() {
        let rt = runtime(None);
        let revoked = testpki::response_for(
            &testpki::cert_info("leaf"),
            Opts { index: Index::Revoked("leaf"), ..Opts::default() },
        );
        let transport = Scripted::new(vec![Ok(good()), Ok(revoked.clone())]);
        rt.refresh_if_due(0, &transport);
        make_due(&rt);
        assert_eq!(rt.refresh_if_due(0, &transport), Attempt::Published(SlotStatus::Revoked));
        assert_eq!(good_bytes_of(&rt), revoked);
    }

    #[test]
    fn a_held_lease_means_no_fetch() {
        let rt = runtime(None);
        let now_ms = unix_now_ms();
        assert!(rt.store.try_lease(rt.slots[0], now_ms, now_ms + 60_000));
        let transport = Scripted::new(vec![]);
        assert_eq!(rt.refresh_if_due(0, &transport), Attempt::Skipped);
        assert_eq!(transport.calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn responses_survive_in_the_disk_store_and_bad_files_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskStore::new(dir.path());
        let rt = runtime(Some(disk.clone()));
        rt.refresh_if_due(0, &Scripted::new(vec![Ok(good())]));
        let stored = disk.load(&rt.certs[0].info.key).unwrap().expect("saved");
        // A new process with an empty shared store staples the stored response.
        let fresh = runtime(Some(disk.clone()));
        assert!(fresh.restore_from_disk(0));
        assert_eq!(good_bytes_of(&fresh), stored);
        assert_eq!(fresh.refresh_if_due(0, &Scripted::new(vec![])), Attempt::Skipped, "inside its renew window");
        // A torn file is never stapled, and is deleted.
        std::fs::write(disk.path(&rt.certs[0].info.key), &stored[..stored.len() / 2]).unwrap();
        let torn = runtime(Some(disk.clone()));
        assert!(!torn.restore_from_disk(0));
        assert_eq!(disk.load(&rt.certs[0].info.key).unwrap(), None);
        let mut out = StapleBuffer::default();
        assert_eq!(torn.staple(&torn.certs[0].info.key, &mut out), Some(false));
    }
}
