//! The stapling engine: which certificates we serve, and how one refresh goes.
//! Safe Rust; Apache reaches it through `apache::entry`.

use std::sync::Arc;
use std::time::Duration;

use log::{debug, error, info, warn};

use crate::alert::{self, Kind, ALERT_EVERY};
use crate::cert::{CertInfo, CertKey, KeyMap};
use crate::config::Effective;
use crate::failure::Failure;
use crate::fleet::{self, FleetTier, TierError};
use crate::ocsp::{self, CertStatus, Exchange, FetchError, Policy, Rejection, Verified};
use crate::refresh;
use crate::store::{
    DiskStore, Lease, Publish, Published, Schedule, SharedStore, SlotStatus, Source, StapleBuffer, StoreError,
};
use crate::time::{Clock, UnixTime};
use crate::transport::{HttpTransport, Stop, Transport};

/// Fetches the startup helper runs at once.
const STARTUP_PARALLELISM: usize = 32;
/// How long a startup worker holds back while a wanted certificate waits for a permit.
const WANTED_YIELD: Duration = Duration::from_millis(5);
/// How often a handshake waiting for a first response looks at the slot.
const FIRST_RESPONSE_POLL: Duration = Duration::from_millis(10);
/// A lease outlives the responder timeout by this much.
const LEASE_SLACK: Duration = Duration::from_secs(10);
/// Requests in flight to one responder host from the whole server.
pub const IN_FLIGHT_PER_HOST: usize = 4;
/// How soon the startup helper tries throttled certificates again.
const THROTTLE_POLL: Duration = Duration::from_millis(50);
/// How long restoring one stored response may hold its slot's lease.
const RESTORE_LEASE: Duration = Duration::from_secs(10);

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
    /// "CN=… serial=… (vhost a:443, b:443, c:443 and 2 more)", for log lines: the
    /// vhosts are bounded, so that one line stays readable on a server with hundreds.
    pub fn describe(&self) -> String {
        match self.vhosts.len() {
            0 => self.info.label.clone(),
            1 => format!("{} (vhost {})", self.info.label, self.vhosts[0]),
            _ => format!("{} (vhosts {})", self.info.label, bounded(&self.vhosts)),
        }
    }
}

/// How many items a log line lists before "and N more".
const LISTED: usize = 3;

/// "a, b, c and 2 more": the first few of `items`, and how many are left out.
pub fn bounded(items: &[String]) -> String {
    let shown = items[..items.len().min(LISTED)].join(", ");
    match items.len().saturating_sub(LISTED) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// Whether the bytes of a stored file may be stapled for `cert` at `now`: the same
/// validation as a fresh response (signature, CertID, times, status) under the
/// certificate's settings, without a nonce, since the request that carried one is gone.
pub fn accept_stored(bytes: &[u8], cert: &ManagedCert, now: UnixTime) -> Result<Verified, Rejection> {
    ocsp::validate(bytes, &cert.info, &Runtime::policy(cert, None), now)
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
/// Each prime costs O(1) amortised: thousands of vhosts prime thousands of times.
#[derive(Debug, Default)]
pub struct Registry {
    /// In prime order.
    pub certs: Vec<ManagedCert>,
    /// Index into `certs` by key.
    index: KeyMap<usize>,
    /// Servers (by address) for which mod_ssl handed over certificates, and how many.
    pub primed_servers: std::collections::HashMap<usize, usize>,
    /// Certificates without a responder URL, with the line to log once at startup.
    pub no_url: Vec<(CertKey, String)>,
    no_url_keys: KeyMap<()>,
    /// Every certificate mod_ssl handed over, whatever we decided.
    pub handed_over: KeyMap<()>,
}

impl Registry {
    /// Records a primed certificate for vhost `vhost` (server address `server`).
    pub fn prime(&mut self, info: CertInfo, settings: Effective, vhost: &str, server: usize) -> PrimeDecision {
        self.handed_over.insert(info.key, ());
        if !settings.enabled {
            return PrimeDecision::Off;
        }
        *self.primed_servers.entry(server).or_default() += 1;
        let Some(url) = settings.force_url.clone().or_else(|| info.aia_ocsp_url.clone()) else {
            if self.no_url_keys.insert(info.key, ()).is_none() {
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
        match self.index.get(&info.key).map(|&i| &mut self.certs[i]) {
            // A certificate's vhosts are few (a vhost primes each certificate once).
            Some(existing) if !existing.vhosts.iter().any(|v| v == vhost) => existing.vhosts.push(vhost.to_string()),
            Some(_) => {}
            None => {
                self.index.insert(info.key, self.certs.len());
                self.certs.push(ManagedCert { info, settings, url, vhosts: vec![vhost.to_string()] });
            }
        }
        PrimeDecision::Take
    }
}

/// Largest response stapled in a TLS 1.2 handshake. OpenSSL clients (curl, wget,
/// `openssl s_client`) refuse a CertificateStatus message over 16 KiB with a fatal
/// alert, so a larger response goes only into TLS 1.3 handshakes, where it travels in
/// the Certificate message.
pub const MAX_TLS12_STAPLE: usize = 16 * 1024 - 4;

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
    /// Lookup from a slot to the index in `certs`.
    by_slot: std::collections::HashMap<usize, usize>,
    /// On-disk copies, unless `StaplingStore none` or unwritable.
    pub disk: Option<DiskStore>,
    /// The store generation this runtime belongs to.
    pub generation: u64,
    /// Where "now" comes from.
    pub clock: Arc<dyn Clock>,
    /// When this generation started (for the status handler).
    pub started: UnixTime,
    /// How this generation reaches responders (proxy, TLS trust).
    pub http: HttpTransport,
    /// The tier shared with other servers, if one is configured.
    pub fleet: Option<Fleet>,
    /// `StaplingResponderRate`: requests a second to one responder host (0: no limit).
    pub responder_rate: u32,
    /// Certificate indices in the order to fetch them: must-staple first.
    order: Vec<usize>,
    /// Each certificate's responder host, hashed alike in every process (the key of
    /// the per-host limits).
    hosts: Vec<u64>,
}

/// The fleet tier of a generation, and this server's name as a fleet lease holder.
pub struct Fleet {
    /// The shared tier (Apache's socache provider in production).
    pub tier: Arc<dyn FleetTier>,
    holder_base: String,
}

impl Fleet {
    /// Uses `tier`; every process of this server holds fleet leases under its own name.
    pub fn new(tier: Arc<dyn FleetTier>) -> Fleet {
        Fleet { tier, holder_base: fleet::holder_base() }
    }

    /// This process's name: the children and the helper fork from one parent.
    fn holder(&self) -> String {
        format!("{}:{}", self.holder_base, std::process::id())
    }
}

/// What the fleet tier says about a due refresh.
enum FleetStep {
    /// Handled without the responder: a response was taken from the tier, or another
    /// server is fetching and this one waits for its result.
    Done(Attempt),
    /// Ask the responder (this process holds the fleet lease, or the tier is down).
    Fetch(Lease),
}

/// The result of one refresh attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Not due, or another process holds the lease.
    Skipped,
    /// A new response was published.
    Published(SlotStatus),
    /// The fetched response was valid, but the store already holds a newer one.
    KeptNewer,
    /// The fetch or the validation failed; the old response (if any) stays.
    Failed(String),
    /// The lease expired while fetching and another process took over: the result
    /// was dropped.
    LostLease,
    /// This process is stopping: the fetch was abandoned.
    Stopped,
    /// Another server holds the fleet lease: its result is awaited from the tier.
    WaitingForFleet,
    /// The responder host has all the requests it may get now; asked again shortly.
    Throttled,
}

impl Runtime {
    /// Builds the runtime and assigns store slots to certificates.
    pub fn new(
        store: SharedStore<'static>,
        certs: Vec<ManagedCert>,
        disk: Option<DiskStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Runtime, StoreError> {
        let keys: Vec<CertKey> = certs.iter().map(|c| c.info.key).collect();
        let slots = store.assign(&keys, clock.now())?;
        let by_key = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
        let by_slot = slots.iter().enumerate().map(|(i, &slot)| (slot, i)).collect();
        let generation = store.bump_generation();
        let started = clock.now();
        let http = HttpTransport::default();
        let mut order: Vec<usize> = (0..certs.len()).collect();
        order.sort_by_key(|&i| !certs[i].info.must_staple);
        let responder_rate = crate::config::DEFAULT_RESPONDER_RATE;
        let hosts = certs.iter().map(|c| fixed_hash(&responder_host(&c.url))).collect();
        Ok(Runtime {
            store,
            certs,
            slots,
            by_key,
            by_slot,
            disk,
            generation,
            clock,
            started,
            http,
            fleet: None,
            responder_rate,
            order,
            hosts,
        })
    }

    /// The handshake path: copy the stapleable response for `key` into `out`.
    /// Returns `None` if the certificate is not ours; `Some(false)` if it is ours but
    /// there is nothing to staple right now.
    pub fn staple(&self, key: &CertKey, out: &mut StapleBuffer) -> Option<bool> {
        let i = *self.by_key.get(key)?;
        Some(self.store.read(self.slots[i], key, self.clock.now(), out).is_some())
    }

    /// Like [`staple`](Self::staple), but a certificate that has never had a response,
    /// while its first fetch is pending or in flight, is polled for up to
    /// `StaplingStartupWait` (must-staple: up to the responder timeout, since without a
    /// staple its handshakes fail anyway). A bounded poll of the shared slot, in this
    /// handshake only: no lock that a writer holds.
    pub fn staple_or_wait(&self, key: &CertKey, out: &mut StapleBuffer) -> Option<bool> {
        let i = *self.by_key.get(key)?;
        let (cert, slot) = (&self.certs[i], self.slots[i]);
        if self.store.read(slot, key, self.clock.now(), out).is_some() {
            return Some(true);
        }
        let wait = if cert.info.must_staple { cert.settings.responder_timeout } else { cert.settings.startup_wait };
        if wait.is_zero() || !self.awaits_first_response(slot) {
            return Some(false);
        }
        // The fetcher takes it next, so that the wait is short even in a cold start of
        // thousands of certificates held to the responder rate.
        self.store.want(slot);
        let deadline = std::time::Instant::now() + wait;
        while self.awaits_first_response(slot) && std::time::Instant::now() < deadline {
            std::thread::sleep(FIRST_RESPONSE_POLL);
            if self.store.read(slot, key, self.clock.now(), out).is_some() {
                return Some(true);
            }
        }
        Some(false)
    }

    /// The next certificate a handshake is waiting for that still has nothing to staple.
    fn next_wanted(&self) -> Option<usize> {
        while let Some(slot) = self.store.next_wanted() {
            let Some(&i) = self.by_slot.get(&slot) else { continue };
            if !self.store.state(slot).stapleable_at(self.clock.now()) {
                return Some(i);
            }
        }
        None
    }

    /// True while `slot` has never held a response and its first fetch has not failed.
    fn awaits_first_response(&self, slot: usize) -> bool {
        let state = self.store.state(slot);
        state.status == SlotStatus::Empty && state.last_ok.is_none() && state.failures == 0
    }

    /// True once a newer configuration generation took over the store.
    pub fn superseded(&self) -> bool {
        self.store.generation() != self.generation
    }

    /// How many certificates have a response that may be stapled now.
    pub fn stapled_count(&self) -> usize {
        let now = self.clock.now();
        self.slots.iter().filter(|&&slot| self.store.state(slot).stapleable_at(now)).count()
    }

    fn policy(cert: &ManagedCert, nonce: Option<Vec<u8>>) -> Policy {
        Policy { time_skew: cert.settings.time_skew, max_age: cert.settings.max_age, nonce }
    }

    /// Makes certificate `i` due at once, keeping its response until a new one comes.
    fn fetch_again_now(&self, i: usize) {
        let (cert, slot) = (&self.certs[i], self.slots[i]);
        let Some(lease) = self.store.try_lease(slot, self.clock.now(), RESTORE_LEASE) else { return };
        let state = self.store.state(slot);
        if !self.store.holds(slot, &cert.info.key) {
            self.store.abandon(lease);
            return;
        }
        info!("{}: its stored response was removed; asking the responder again now", cert.info.label);
        let _ = self.store.release(lease, Schedule { next_fetch: None, ..state.schedule() });
    }

    /// Loads and re-validates the stored response for certificate `i` if the shared
    /// store has none. Runs unprivileged (in the startup helper). Returns true if a
    /// stored response was published.
    pub fn restore_from_disk(&self, i: usize) -> bool {
        let (cert, slot) = (&self.certs[i], self.slots[i]);
        let now = self.clock.now();
        let Some(disk) = &self.disk else { return false };
        if self.store.state(slot).stapleable_at(now) {
            // Removing the stored file and reloading is how an admin asks for a fresh
            // response (README, "Force a refresh").
            if !disk.path(&cert.info.key).exists() {
                self.fetch_again_now(i);
            }
            return false;
        }
        // A refresher of the previous generation may be publishing into this slot.
        let Some(lease) = self.store.try_lease(slot, now, RESTORE_LEASE) else { return false };
        if !self.store.holds(slot, &cert.info.key) {
            self.store.abandon(lease);
            return false;
        }
        match self.load_stored(i) {
            Some((der, verified)) => {
                let failures = self.store.state(slot).failures;
                matches!(self.publish(i, lease, &der, &verified, failures, Source::Disk), Attempt::Published(_))
            }
            None => {
                self.store.abandon(lease);
                false
            }
        }
    }

    /// The stored file of certificate `i`, validated; deletes it if it is not usable.
    fn load_stored(&self, i: usize) -> Option<(Vec<u8>, Verified)> {
        let cert = &self.certs[i];
        let disk = self.disk.as_ref()?;
        let path = disk.path(&cert.info.key);
        let bytes = match disk.load(&cert.info.key) {
            Ok(b) => b?,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                // load() has deleted what it refused; the error says what and where.
                warn!(
                    "stored response for {} not used: {e}. Only mod_stapling should write into {}; check what \
                     else runs as the server user",
                    cert.describe(),
                    disk.dir().display()
                );
                return None;
            }
            Err(e) => {
                warn!("cannot read the stored response for {} ({e}); fetching it from the responder", cert.describe());
                return None;
            }
        };
        match accept_stored(&bytes, cert, self.clock.now()) {
            Ok(v) => Some((bytes, v)),
            Err(why) => {
                warn!("stored response {} for {} is not usable ({why}); deleting it", path.display(), cert.describe());
                let _ = disk.remove(&cert.info.key);
                None
            }
        }
    }

    /// One refresh attempt for certificate `i` if it is due and no other process is on
    /// it. `stop` abandons it (releasing the lease) when this process is stopping.
    pub fn refresh_if_due(&self, i: usize, transport: &dyn Transport, stop: &Stop) -> Attempt {
        let (cert, slot) = (&self.certs[i], self.slots[i]);
        if !refresh::is_due(self.store.state(slot).next_fetch, self.clock.now()) {
            return Attempt::Skipped;
        }
        let lease_for = cert.settings.responder_timeout.saturating_add(LEASE_SLACK);
        let Some(lease) = self.store.try_lease(slot, self.clock.now(), lease_for) else { return Attempt::Skipped };
        // Another process may have finished a refresh between our check and the lease,
        // or a new configuration may have given the slot to another certificate.
        let state = self.store.state(slot);
        if !self.store.holds(slot, &cert.info.key) || !refresh::is_due(state.next_fetch, self.clock.now()) {
            self.store.abandon(lease);
            return Attempt::Skipped;
        }
        let lease = match self.consult_fleet(i, lease) {
            FleetStep::Done(attempt) => return attempt,
            FleetStep::Fetch(lease) => lease,
        };
        let now = self.clock.now();
        let permit =
            self.store.begin_request(self.hosts[i], now, now.plus(lease_for), IN_FLIGHT_PER_HOST, self.responder_rate);
        let Some(permit) = permit else {
            // The responder has as many requests from this server as it should get now:
            // still due, for the next pass (or the helper's next round).
            self.store.abandon(lease);
            return Attempt::Throttled;
        };
        let fetched = self.fetch_and_validate(cert, slot, transport);
        self.store.end_request(permit);
        match fetched {
            _ if stop.requested() => {
                // Let another process take over at once rather than after the lease.
                self.store.abandon(lease);
                Attempt::Stopped
            }
            Ok((der, verified)) => {
                let attempt = self.publish(i, lease, &der, &verified, 0, Source::Responder);
                if attempt == Attempt::Published(slot_status(&verified)) {
                    self.share_with_fleet(i, &der);
                }
                attempt
            }
            Err((failure, why)) => self.record_failure(i, lease, state.failures, failure, why),
        }
    }

    /// Before asking the responder: take a newer valid response from the fleet tier,
    /// or wait while another server fetches one, or take the fleet lease and fetch.
    fn consult_fleet(&self, i: usize, lease: Lease) -> FleetStep {
        let cert = &self.certs[i];
        // A nonce is for this server's request alone: such responses are not shared.
        let Some(fleet) = self.fleet.as_ref().filter(|_| !cert.settings.use_nonce) else {
            return FleetStep::Fetch(lease);
        };
        let keys = fleet::Keys::of(&cert.info);
        let shared = match self.tier_call(fleet, || fleet.tier.get(&keys.response), Option::is_some) {
            Some(found) => found,
            None => return FleetStep::Fetch(lease),
        };
        if let Some(bytes) = shared {
            match accept_stored(&bytes, cert, self.clock.now()) {
                Ok(v) if self.is_newer(i, &v) => {
                    let failures = self.store.state(lease.slot()).failures;
                    return FleetStep::Done(self.publish(i, lease, &bytes, &v, failures, Source::Fleet));
                }
                Ok(_) => {}
                Err(why) => warn!(
                    "fleet tier {}: the shared response for {} is not usable ({why}); it is replaced once \
                     a valid one is fetched",
                    fleet.tier.describe(),
                    cert.describe()
                ),
            }
        }
        self.take_fleet_lease(i, lease, fleet, &keys)
    }

    /// True if `v` should replace what certificate `i`'s slot holds now.
    fn is_newer(&self, i: usize, v: &Verified) -> bool {
        let state = self.store.state(self.slots[i]);
        let revoked_over_good = matches!(v.status, CertStatus::Revoked { .. }) && state.status == SlotStatus::Good;
        !state.stapleable_at(self.clock.now())
            || state.this_update.is_none_or(|t| v.this_update > t)
            || revoked_over_good
    }

    /// Writes this process's fleet lease and reads it back; fetch if it stuck, else wait
    /// for the holder's result (a rare race costs one extra request, never a miss).
    fn take_fleet_lease(&self, i: usize, lease: Lease, fleet: &Fleet, keys: &fleet::Keys) -> FleetStep {
        let now = self.clock.now();
        let me = fleet.holder();
        let held = match self.tier_call(fleet, || fleet.tier.get(&keys.lease), Option::is_some) {
            Some(held) => held.and_then(|b| fleet::LeaseEntry::decode(&b)),
            None => return FleetStep::Fetch(lease),
        };
        if held.is_some_and(|h| h.held_by_other(&me, now)) {
            return FleetStep::Done(self.wait_for_fleet(lease));
        }
        let lease_for = self.certs[i].settings.responder_timeout.saturating_add(LEASE_SLACK);
        let mine = fleet::LeaseEntry { holder: me.clone(), until: now.plus(lease_for) };
        let stuck = self
            .tier_call(fleet, || fleet.tier.put(&keys.lease, &mine.encode(), mine.until), |_| true)
            .and_then(|()| self.tier_call(fleet, || fleet.tier.get(&keys.lease), Option::is_some));
        match stuck {
            Some(Some(b)) if fleet::LeaseEntry::decode(&b).is_some_and(|e| e.holder != me) => {
                FleetStep::Done(self.wait_for_fleet(lease))
            }
            _ => FleetStep::Fetch(lease),
        }
    }

    /// Another server is fetching: look in the tier again shortly.
    fn wait_for_fleet(&self, lease: Lease) -> Attempt {
        let state = self.store.state(lease.slot());
        let wait = fleet::FLEET_WAIT.mul_f64(1.0 + jitter());
        let schedule = Schedule { next_fetch: Some(self.clock.now().plus(wait)), ..state.schedule() };
        let _ = self.store.release(lease, schedule);
        Attempt::WaitingForFleet
    }

    /// After a fetch: the response for the other servers, and the fleet lease let go.
    fn share_with_fleet(&self, i: usize, der: &[u8]) {
        let Some(fleet) = self.fleet.as_ref().filter(|_| !self.certs[i].settings.use_nonce) else { return };
        let keys = fleet::Keys::of(&self.certs[i].info);
        let Some(until) = self.store.state(self.slots[i]).staple_until else { return };
        if self.tier_call(fleet, || fleet.tier.put(&keys.response, der, until), |_| true).is_some() {
            let _ = self.tier_call(fleet, || fleet.tier.remove(&keys.lease), |_| false);
        }
    }

    /// One call into the tier; `None` if it failed. The first failure, and the first
    /// answer after it that `proves_up` (a provider whose server is down may say "not
    /// found" without trying it), are said once for the whole server.
    fn tier_call<T>(
        &self,
        fleet: &Fleet,
        call: impl FnOnce() -> Result<T, TierError>,
        proves_up: impl FnOnce(&T) -> bool,
    ) -> Option<T> {
        match call() {
            Ok(v) => {
                if proves_up(&v) && self.store.mark_fleet_down(false) {
                    warn!(
                        "fleet tier {} answers again: responses are shared with the fleet again",
                        fleet.tier.describe()
                    );
                }
                Some(v)
            }
            Err(e) => {
                if self.store.mark_fleet_down(true) {
                    warn!(
                        "fleet tier {} is unreachable ({e}): this server keeps stapling from its own store and asks \
                         the responder itself until it answers again; check that it runs and that this server \
                         reaches it",
                        fleet.tier.describe()
                    );
                }
                None
            }
        }
    }

    fn fetch_and_validate(
        &self,
        cert: &ManagedCert,
        slot: usize,
        transport: &dyn Transport,
    ) -> Result<(Vec<u8>, Verified), (Failure, String)> {
        let (request, nonce) =
            ocsp::build_request(&cert.info, cert.settings.use_nonce).map_err(|e| (Failure::NoIssuer, e))?;
        self.store.count_fetch(slot);
        debug!("{}: asking {}", cert.info.label, cert.url);
        let exchange = Exchange {
            url: cert.url.clone(),
            request,
            timeout: cert.settings.responder_timeout,
            method: cert.settings.request_method,
        };
        let der = transport.fetch(&exchange).map_err(|e| (e.failure(), fetch_failed(&cert.url, &e)))?;
        let verified = ocsp::validate(&der, &cert.info, &Self::policy(cert, nonce), self.clock.now())
            .map_err(|e| (e.failure(), format!("response from {} rejected: {e}", cert.url)))?;
        Ok((der, verified))
    }

    /// Publishes a validated response under `lease`, schedules the next fetch and
    /// releases the lease. `source` says where the response came from.
    fn publish(&self, i: usize, lease: Lease, der: &[u8], v: &Verified, failures: u32, source: Source) -> Attempt {
        let fresh = source == Source::Responder;
        let cert = &self.certs[i];
        let now = self.clock.now();
        let skew = cert.settings.time_skew;
        let limits = refresh::Limits { skew, max_age: cert.settings.max_age, window: cert.settings.renew_window };
        let plan = refresh::plan_success(v.this_update, v.next_update, now, limits, jitter());
        let previous = self.store.state(lease.slot());
        let status = slot_status(v);
        let publish = Publish {
            der,
            status,
            this_update: v.this_update,
            next_update: v.next_update,
            staple_until: plan.staple_until,
            produced_at: v.produced_at,
            source,
        };
        let outcome = match self.store.publish(&lease, &publish, now) {
            Ok(Published::Replaced) => Attempt::Published(status),
            Ok(Published::KeptNewer) => Attempt::KeptNewer,
            Err(StoreError::LostLease) => return self.lost_lease(cert),
            Err(e) => return self.record_failure(i, lease, previous.failures, Failure::Store, e.to_string()),
        };
        let schedule = Schedule {
            next_fetch: Some(plan.next_fetch),
            failures,
            fetched_ok_at: fresh.then_some(now),
            attempted_at: fresh.then_some(now),
            failure: None,
        };
        if self.store.release(lease, schedule).is_err() {
            return self.lost_lease(cert);
        }
        match outcome {
            Attempt::Published(_) => {
                if source != Source::Disk {
                    self.save_to_disk(cert, der);
                }
                match source {
                    Source::Responder => self.log_published(cert, v, &previous, plan.next_fetch),
                    Source::Fleet => self.log_from_fleet(cert, v, &previous, plan.next_fetch),
                    _ => self.log_restored(cert, v, plan.next_fetch),
                }
                if der.len() > MAX_TLS12_STAPLE && previous.status == SlotStatus::Empty {
                    warn!(
                        "{}: the response from {} is {} bytes, too large for TLS 1.2 clients built on OpenSSL \
                         (at most {MAX_TLS12_STAPLE}), so it is stapled in TLS 1.3 handshakes only",
                        cert.describe(),
                        cert.url,
                        der.len()
                    );
                }
            }
            _ => debug!("{}: the store holds a newer response than the one just fetched; keeping it", cert.info.label),
        }
        self.check_alert(i, now, None);
        outcome
    }

    fn lost_lease(&self, cert: &ManagedCert) -> Attempt {
        debug!(
            "{}: the refresh took longer than its lease and another process took over; dropping this result",
            cert.info.label
        );
        Attempt::LostLease
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

    fn log_published(&self, cert: &ManagedCert, v: &Verified, previous: &crate::store::SlotState, next: UnixTime) {
        let until = v.next_update.map_or_else(String::new, |t| format!(", valid until {}", t.date()));
        match &v.status {
            CertStatus::Revoked { reason } => error!(
                "{} is REVOKED ({reason}) according to {}: stapling the revoked status. \
                 Replace this certificate now",
                cert.describe(),
                cert.url
            ),
            CertStatus::Good if previous.status == SlotStatus::Empty || previous.failures > 0 => {
                info!(
                    "{}: stapling a good response from {}{until}; next refresh at {}",
                    cert.describe(),
                    cert.url,
                    next.date()
                )
            }
            CertStatus::Good => {
                debug!("{}: response refreshed{until}; next refresh at {}", cert.info.label, next.date())
            }
        }
    }

    /// A response restored from disk: say until when it is stapled and when the
    /// responder is asked next (often hours away, inside the response's validity).
    fn log_from_fleet(&self, cert: &ManagedCert, v: &Verified, previous: &crate::store::SlotState, next: UnixTime) {
        if let CertStatus::Revoked { .. } = v.status {
            if previous.status != SlotStatus::Revoked {
                error!(
                    "{} is REVOKED according to the response shared by the fleet tier: stapling it",
                    cert.describe()
                );
            }
            return;
        }
        let until = v.next_update.map_or_else(String::new, |t| format!(" (valid until {})", t.date()));
        let level = if previous.status == SlotStatus::Empty { log::Level::Info } else { log::Level::Debug };
        log::log!(
            level,
            "{}: stapling the response the fleet tier shares{until}; next look at {}",
            cert.info.label,
            next.date()
        );
    }

    fn log_restored(&self, cert: &ManagedCert, v: &Verified, next: UnixTime) {
        let until = v.next_update.map_or_else(String::new, |t| format!(" (valid until {})", t.date()));
        info!(
            "{}: stapling the stored response{until} until a fresh one is fetched at {}",
            cert.info.label,
            next.date()
        );
    }

    fn record_failure(&self, i: usize, lease: Lease, previous_failures: u32, failure: Failure, why: String) -> Attempt {
        let cert = &self.certs[i];
        let failures = previous_failures.saturating_add(1);
        let now = self.clock.now();
        let next = refresh::retry_after_failure(failures, now, cert.info.must_staple, jitter());
        let schedule = Schedule {
            next_fetch: Some(next),
            failures,
            attempted_at: Some(now),
            failure: Some(failure),
            ..Schedule::default()
        };
        if self.store.release(lease, schedule).is_err() {
            return self.lost_lease(cert);
        }
        self.check_alert(i, now, Some(&why));
        Attempt::Failed(why)
    }

    /// Logs the alert the state of certificate `i` calls for, if no process logged it
    /// within [`ALERT_EVERY`], or the recovery line if an alert just ended. `why` is the
    /// detail of a failure just recorded: when the alert is not due, it goes to debug.
    fn check_alert(&self, i: usize, now: UnixTime, why: Option<&str>) {
        let (cert, slot) = (&self.certs[i], self.slots[i]);
        let state = self.store.state(slot);
        let Some(kind) = alert::kind_for(&state, now) else {
            if let Some(ended) = self.store.clear_alert(slot).and_then(Kind::from_code) {
                let line = alert::recovery_line(ended, &cert.describe(), &state);
                if self.store.claim_group(self.alert_group(i, 0, 0), now, ALERT_EVERY) {
                    warn!("{line} (more certificates of this responder that recover within the hour: at info level)");
                } else {
                    info!("{line}");
                }
            }
            return;
        };
        let claimed = self.store.claim_alert(slot, kind as u8, now, ALERT_EVERY);
        if !claimed && why.is_none() {
            return;
        }
        let line = alert::line(kind, &cert.describe(), cert.info.must_staple, &state, now, why);
        if !claimed {
            debug!("{line}");
            return;
        }
        // One responder down means the same alert for each of its certificates: say it
        // once per responder and cause, with how many share it.
        let failure = state.last_error.map_or(0, |(_, f)| f.to_word());
        if !self.store.claim_group(self.alert_group(i, kind as u64, failure), now, ALERT_EVERY) {
            info!("{line}");
            return;
        }
        let alike = self.count_alike(i, kind, failure, now);
        let line = if alike == 0 {
            line
        } else {
            format!(
                "{line}. {alike} more certificate{} of {} {} the same (each at info level, and on the status page)",
                if alike == 1 { "" } else { "s" },
                responder_host(&cert.url),
                if alike == 1 { "has" } else { "have" }
            )
        };
        let unstapled_must_staple = cert.info.must_staple && !state.stapleable_at(now);
        match kind {
            Kind::Expired => error!("{line}"),
            _ if unstapled_must_staple => error!("{line}"),
            _ => warn!("{line}"),
        }
    }

    /// The group of certificate `i`'s alert: its responder host, the alert and the
    /// failure, and whether it is must-staple (whose lines are errors of their own).
    fn alert_group(&self, i: usize, kind: u64, failure: u64) -> u64 {
        let cert = &self.certs[i];
        fixed_hash(&(responder_host(&cert.url), kind, failure, cert.info.must_staple))
    }

    /// How many other certificates of certificate `i`'s responder have the same alert
    /// for the same failure now.
    fn count_alike(&self, i: usize, kind: Kind, failure: u64, now: UnixTime) -> usize {
        (0..self.certs.len())
            .filter(|&j| j != i && self.hosts[j] == self.hosts[i])
            .filter(|&j| {
                let state = self.store.state(self.slots[j]);
                alert::kind_for(&state, now) == Some(kind)
                    && state.last_error.map_or(0, |(_, f)| f.to_word()) == failure
            })
            .count()
    }

    /// Looks at every certificate's state and logs what is due: a response may expire
    /// between two fetches, and that must be said within a pass of it.
    pub fn check_alerts(&self) {
        let now = self.clock.now();
        (0..self.certs.len()).for_each(|i| self.check_alert(i, now, None));
    }

    /// The startup pass, in the unprivileged helper: restore every stored response
    /// (then `restored` tells the parent it may go on), then fetch what is due, all in
    /// parallel, while the children already serve. Ends early at `stop`.
    pub fn startup_pass(&self, restored: impl FnOnce(), transport: &dyn Transport, stop: &Stop) {
        self.in_parallel(&self.order, stop, false, |i, _| {
            self.restore_from_disk(i);
        });
        restored();
        // Must-staple first; what the per-host limits hold back goes in the next round.
        let mut todo = self.order.clone();
        while !todo.is_empty() && !stop.requested() {
            let throttled = std::sync::Mutex::new(Vec::new());
            self.in_parallel(&todo, stop, true, |i, wanted| {
                if self.refresh_if_due(i, transport, stop) == Attempt::Throttled {
                    // A handshake waits for it: first again in the next round.
                    if wanted {
                        self.store.want(self.slots[i]);
                    }
                    throttled.lock().unwrap_or_else(|e| e.into_inner()).push(i);
                }
            });
            todo = throttled.into_inner().unwrap_or_else(|e| e.into_inner());
            todo.sort_by_key(|&i| !self.certs[i].info.must_staple);
            if !todo.is_empty() {
                stop.sleep(THROTTLE_POLL);
            }
        }
        if stop.requested() {
            return;
        }
        let now = self.clock.now();
        let unstapled = |i: &usize| !self.store.state(self.slots[*i]).stapleable_at(now);
        let missing: Vec<String> = (0..self.certs.len()).filter(unstapled).map(|i| self.certs[i].describe()).collect();
        for i in (0..self.certs.len()).filter(unstapled).filter(|&i| self.certs[i].info.must_staple) {
            error!(
                "{} is must-staple but has no valid OCSP response at startup: clients that honour \
                 must-staple will refuse connections until the responder {} answers",
                self.certs[i].describe(),
                self.certs[i].url
            );
        }
        if !missing.is_empty() {
            info!("no response yet for {}; retrying in the background", bounded(&missing));
        }
    }

    /// Runs `work` for each of `indices` on a bounded number of threads, until `stop`;
    /// with `wanted_first`, a certificate a handshake waits for goes before the next one.
    fn in_parallel(&self, indices: &[usize], stop: &Stop, wanted_first: bool, work: impl Fn(usize, bool) + Sync) {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let workers = indices.len().min(STARTUP_PARALLELISM);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    if wanted_first && self.take_wanted_turn(stop, &work) {
                        continue;
                    }
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= indices.len() || stop.requested() {
                        return;
                    }
                    work(indices[n], false);
                });
            }
        });
    }

    /// With a certificate a handshake waits for, works on it, or (when another worker
    /// has it) holds back, so that the responder rate goes to it first; false when
    /// nobody waits.
    fn take_wanted_turn(&self, stop: &Stop, work: &impl Fn(usize, bool)) -> bool {
        if let Some(i) = self.next_wanted() {
            work(i, true);
        } else if !self.store.has_wanted() {
            return false;
        }
        // Still wanted: throttled, or another worker has it.
        if self.store.has_wanted() {
            stop.sleep(WANTED_YIELD);
        }
        true
    }

    /// Creates or checks the store directory as the server user (in the startup helper;
    /// see [`DiskStore::prepare`]). Logs and returns false if it cannot be used.
    pub fn prepare_disk(&self) -> bool {
        let Some(disk) = &self.disk else { return false };
        match disk.prepare() {
            Ok(()) => true,
            Err(e) => {
                warn!(
                    "StaplingStore {}: {e}; responses are not kept on disk and will be fetched again after a \
                     restart. Fix the directory or set StaplingStore none",
                    disk.dir().display()
                );
                false
            }
        }
    }

    /// Removes stored responses of certificates no longer configured, once unused for
    /// `grace`. Runs unprivileged (in the startup helper).
    pub fn prune_disk(&self, grace: Duration) {
        let Some(disk) = &self.disk else { return };
        let keys: Vec<CertKey> = self.certs.iter().map(|c| c.info.key).collect();
        for name in disk.prune(&keys, grace) {
            info!("removed stored response {name}: its certificate is no longer configured");
        }
    }

    /// One pass of the background refresher over the due certificates, most urgent
    /// first. It returns early when `stop` is requested or a newer generation took
    /// over, between certificates and during a fetch.
    ///
    /// Once a responder host's limits hold a certificate back, the pass leaves that
    /// host's less urgent certificates for the next one: a permit freed meanwhile goes
    /// to the most urgent, so that no certificate starves while renewals outrun
    /// `StaplingResponderRate`.
    pub fn refresh_pass(&self, transport: &dyn Transport, stop: &Stop) {
        let mut held_back = std::collections::HashSet::new();
        for i in self.due_by_urgency() {
            if stop.requested() || self.superseded() {
                return;
            }
            self.refresh_wanted(transport, stop);
            if held_back.contains(&self.hosts[i]) {
                continue;
            }
            if self.refresh_if_due(i, transport, stop) == Attempt::Throttled {
                held_back.insert(self.hosts[i]);
            }
        }
        self.check_alerts();
    }

    /// Refreshes the certificates handshakes wait for, until one is held back (then it
    /// is wanted again, for the next turn).
    fn refresh_wanted(&self, transport: &dyn Transport, stop: &Stop) {
        while let Some(wanted) = self.next_wanted() {
            if self.refresh_if_due(wanted, transport, stop) == Attempt::Throttled {
                self.store.want(self.slots[wanted]);
                return;
            }
        }
    }

    /// The certificates due now, most urgent first: those with nothing to staple
    /// (must-staple first), then those whose staple ends soonest, then those due the
    /// longest. A certificate held back keeps its place at the front.
    fn due_by_urgency(&self) -> Vec<usize> {
        let now = self.clock.now();
        let mut due: Vec<_> = self
            .order
            .iter()
            .filter_map(|&i| {
                let state = self.store.state(self.slots[i]);
                let must_staple = self.certs[i].info.must_staple;
                refresh::is_due(state.next_fetch, now)
                    .then_some(((state.stapleable_at(now), !must_staple, state.staple_until, state.next_fetch), i))
            })
            .collect();
        due.sort_unstable();
        due.into_iter().map(|(_, i)| i).collect()
    }
}

/// `scheme://host:port` of a responder URL, for grouping and for log lines.
fn responder_host(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!("{}://{}:{}", u.scheme(), u.host_str().unwrap_or(""), u.port_or_known_default().unwrap_or(0)),
        Err(_) => url.to_string(),
    }
}

/// A hash of `text` that every process computes alike (std's hasher with fixed keys).
fn fixed_hash(text: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// A failed fetch in words: an answer the responder gave, or why there was none.
fn fetch_failed(url: &str, e: &FetchError) -> String {
    match e {
        FetchError::HttpStatus(..) => format!("the responder {url} answered {e}"),
        _ => format!("fetching from {url} failed: {e}"),
    }
}

fn slot_status(v: &Verified) -> SlotStatus {
    match v.status {
        CertStatus::Good => SlotStatus::Good,
        CertStatus::Revoked { .. } => SlotStatus::Revoked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use crate::store::Layout;
    use crate::testpki::{self, Index, Opts};
    use crate::time::{ManualClock, SystemClock};
    use crate::transport::Abandonable;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Mutex;

    const HOUR: Duration = Duration::from_secs(3600);

    /// Answers with the queued results, in order, and counts the calls.
    struct Scripted {
        answers: Mutex<Vec<Result<Vec<u8>, FetchError>>>,
        calls: AtomicUsize,
    }

    impl Scripted {
        fn new(answers: Vec<Result<Vec<u8>, FetchError>>) -> Scripted {
            Scripted { answers: Mutex::new(answers), calls: AtomicUsize::new(0) }
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl Transport for Scripted {
        fn fetch(&self, _x: &Exchange) -> Result<Vec<u8>, FetchError> {
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
        managed_with(name, enabled())
    }

    fn managed_with(name: &str, settings: Effective) -> ManagedCert {
        ManagedCert { info: testpki::cert_info(name), settings, url: "http://127.0.0.1:9/".into(), vhosts: vec![] }
    }

    /// A runtime for `leaf` on a fresh region, with a clock that starts at real time
    /// (the test responses are valid for a day from now).
    fn runtime_with_clock(disk: Option<DiskStore>) -> (Runtime, Arc<ManualClock>) {
        runtime_for(managed("leaf"), disk)
    }

    /// A runtime for `cert` on a fresh region, with a clock that starts at real time.
    fn runtime_for(cert: ManagedCert, disk: Option<DiskStore>) -> (Runtime, Arc<ManualClock>) {
        let words: &'static [AtomicU64] =
            Box::leak((0..Layout::for_certs(4).words()).map(|_| AtomicU64::new(0)).collect());
        let store = SharedStore::attach(words, Layout::for_certs(4), 4).unwrap();
        let clock = Arc::new(ManualClock::at(SystemClock.now()));
        (Runtime::new(store, vec![cert], disk, clock.clone()).unwrap(), clock)
    }

    fn runtime(disk: Option<DiskStore>) -> Runtime {
        runtime_with_clock(disk).0
    }

    fn good() -> Vec<u8> {
        testpki::response_for(&testpki::cert_info("leaf"), Opts::default())
    }

    fn refresh(rt: &Runtime, transport: &dyn Transport) -> Attempt {
        rt.refresh_if_due(0, transport, &Stop::default())
    }

    /// Moves the clock to the slot's next fetch time.
    fn until_due(rt: &Runtime, clock: &ManualClock) {
        let next = rt.store.state(rt.slots[0]).next_fetch.expect("scheduled");
        clock.set(next.max(clock.now()));
    }

    fn stapled(rt: &Runtime) -> Option<Vec<u8>> {
        let mut out = StapleBuffer::default();
        rt.staple(&rt.certs[0].info.key, &mut out).filter(|&s| s).map(|_| out.bytes().to_vec())
    }

    /// Records this thread's log lines, so a test reads exactly what it logged.
    struct Capture;

    thread_local! {
        static LINES: std::cell::RefCell<Vec<(log::Level, String)>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, r: &log::Record<'_>) {
            LINES.with(|l| l.borrow_mut().push((r.level(), r.args().to_string())));
        }
        fn flush(&self) {}
    }

    /// Starts capturing this thread's log lines afresh.
    fn capture() {
        static CAPTURE: Capture = Capture;
        static INIT: std::sync::Once = std::sync::Once::new();
        INIT.call_once(|| {
            log::set_logger(&CAPTURE).unwrap();
            log::set_max_level(log::LevelFilter::Trace);
        });
        LINES.with(|l| l.borrow_mut().clear());
    }

    /// The captured lines at `level` or more severe, taken out.
    fn logged(level: log::Level) -> Vec<(log::Level, String)> {
        LINES.with(|l| std::mem::take(&mut *l.borrow_mut())).into_iter().filter(|(lv, _)| *lv <= level).collect()
    }

    #[test]
    fn a_dying_staple_warns_hourly_then_errors_at_expiry_then_recovers() {
        capture();
        let (rt, clock) = runtime_with_clock(None);
        let down = || Err(FetchError::HttpStatus(503, "Service Unavailable".into()));
        let transport = Scripted::new(vec![Ok(good()), down(), down(), down()]);
        refresh(&rt, &transport);
        logged(log::Level::Warn);
        until_due(&rt, &clock);
        assert!(matches!(refresh(&rt, &transport), Attempt::Failed(_)));
        let lines = logged(log::Level::Warn);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let (level, line) = &lines[0];
        assert_eq!(*level, log::Level::Warn);
        assert!(line.contains("answered HTTP 503 Service Unavailable (the responder is failing"), "{line}");
        assert!(line.contains("the last good response stays stapled, but it expires in "), "{line}");
        assert!(line.contains(" UTC"), "dates, not Unix seconds: {line}");
        // The retry 30 s later fails again: said at debug only, within the hour.
        until_due(&rt, &clock);
        refresh(&rt, &transport);
        assert_eq!(logged(log::Level::Warn), vec![], "one expiring warning an hour");
        // An hour on, the next failure warns again.
        clock.advance(HOUR);
        refresh(&rt, &transport);
        assert_eq!(logged(log::Level::Warn).len(), 1, "again after an hour");
        // The response expires between two fetches: the pass notices it, once.
        clock.set(rt.store.state(rt.slots[0]).staple_until.unwrap());
        rt.check_alerts();
        rt.check_alerts();
        let lines = logged(log::Level::Warn);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0].0, log::Level::Error);
        assert!(lines[0].1.contains("the OCSP response expired at ") && lines[0].1.contains("nothing is stapled"));
        assert!(lines[0].1.contains("Last failure: the responder answered HTTP 503"), "{}", lines[0].1);
        clock.advance(HOUR);
        rt.check_alerts();
        assert_eq!(logged(log::Level::Warn).len(), 1, "repeated hourly while it lasts");
        // The responder is back: one recovery line at warn.
        clock.set(rt.store.state(rt.slots[0]).next_fetch.unwrap().max(clock.now()));
        // The test responses start at real time: go back to within their validity.
        clock.set(SystemClock.now());
        let back = Scripted::new(vec![Ok(good())]);
        let st = rt.store.state(rt.slots[0]);
        let lease = rt.store.try_lease(rt.slots[0], clock.now(), HOUR).unwrap();
        rt.store.release(lease, Schedule { next_fetch: None, ..st.schedule() }).unwrap();
        assert!(matches!(refresh(&rt, &back), Attempt::Published(_)));
        let lines = logged(log::Level::Warn);
        let recovered: Vec<_> = lines.iter().filter(|(_, l)| l.contains("recovered:")).collect();
        assert_eq!(recovered.len(), 1, "{lines:?}");
        assert_eq!(recovered[0].0, log::Level::Warn);
        rt.check_alerts();
        assert_eq!(logged(log::Level::Warn), vec![], "recovery said once");
    }

    #[test]
    fn try_later_and_unreachable_give_different_advice() {
        capture();
        // An OCSPResponse with responseStatus tryLater (3) and no body.
        let try_later = vec![0x30, 0x03, 0x0a, 0x01, 0x03];
        let (rt, _) = runtime_with_clock(None);
        refresh(&rt, &Scripted::new(vec![Ok(try_later)]));
        let (rt2, _) = runtime_with_clock(None);
        refresh(&rt2, &Scripted::new(vec![Err(FetchError::Unreachable("Connection Failed: refused".into()))]));
        let lines = logged(log::Level::Warn);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].1.contains("tryLater") && lines[0].1.contains("overloaded or still preparing"), "{lines:?}");
        assert!(lines[1].1.contains("check that this server can reach the responder"), "{lines:?}");
        assert!(!lines[0].1.contains("reach the responder"), "{lines:?}");
        assert!(lines[1].1.contains("nothing is stapled for it"), "{lines:?}");
    }

    #[test]
    fn vhost_lists_are_bounded() {
        let mut cert = managed("leaf");
        cert.vhosts = (1..=5).map(|i| format!("v{i}:443")).collect();
        assert!(cert.describe().ends_with("(vhosts v1:443, v2:443, v3:443 and 2 more)"), "{}", cert.describe());
        cert.vhosts.truncate(1);
        assert!(cert.describe().ends_with("(vhost v1:443)"));
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
        assert_eq!(reg.primed_servers, [(1, 1), (2, 1), (4, 1), (5, 1), (6, 1)].into_iter().collect());
    }

    #[test]
    fn a_certificate_a_handshake_waits_for_is_fetched_first() {
        let words: &'static [AtomicU64] =
            Box::leak((0..Layout::for_certs(4).words()).map(|_| AtomicU64::new(0)).collect());
        let store = SharedStore::attach(words, Layout::for_certs(4), 4).unwrap();
        let mut waiting = managed("leaf2");
        waiting.settings.startup_wait = Duration::from_millis(30);
        let clock = Arc::new(ManualClock::at(SystemClock.now()));
        let rt = Runtime::new(store, vec![managed("leaf"), waiting], None, clock).unwrap();
        assert_eq!(rt.next_wanted(), None);
        let key2 = rt.certs[1].info.key;
        assert_eq!(rt.staple_or_wait(&key2, &mut StapleBuffer::default()), Some(false), "nothing yet");
        assert_eq!(rt.next_wanted(), Some(1), "the handshake asked for it");
        rt.store.want(rt.slots[1]);
        // The refresher takes it before the certificate that comes first in order.
        let asked = Mutex::new(Vec::new());
        struct Recording<'a>(&'a Mutex<Vec<Vec<u8>>>);
        impl Transport for Recording<'_> {
            fn fetch(&self, x: &Exchange) -> Result<Vec<u8>, FetchError> {
                self.0.lock().unwrap().push(x.request.clone());
                Err(FetchError::Timeout)
            }
        }
        rt.refresh_pass(&Recording(&asked), &Stop::default());
        let asked = asked.into_inner().unwrap();
        let request_for = |i: usize| crate::ocsp::build_request(&rt.certs[i].info, false).unwrap().0;
        assert_eq!(asked.first(), Some(&request_for(1)), "{} requests", asked.len());
        assert!(asked.contains(&request_for(0)));
        // Once it has a response, a wish for it is dropped.
        let (rt1, _) = runtime_with_clock(None);
        refresh(&rt1, &Scripted::new(vec![Ok(good())]));
        rt1.store.want(rt1.slots[0]);
        assert_eq!(rt1.next_wanted(), None);
    }

    #[test]
    fn a_good_fetch_is_published_once_then_not_due() {
        let rt = runtime(None);
        let der = good();
        let transport = Scripted::new(vec![Ok(der.clone())]);
        assert_eq!(refresh(&rt, &transport), Attempt::Published(SlotStatus::Good));
        assert_eq!(refresh(&rt, &transport), Attempt::Skipped);
        assert_eq!(transport.calls(), 1);
        assert_eq!(stapled(&rt), Some(der));
        assert_eq!(rt.staple(&[0; 20], &mut StapleBuffer::default()), None, "not ours");
    }

    #[test]
    fn refresh_comes_at_half_the_validity_and_not_before() {
        let (rt, clock) = runtime_with_clock(None);
        let start = clock.now();
        let transport = Scripted::new(vec![Ok(good()), Ok(good())]);
        refresh(&rt, &transport);
        let next = rt.store.state(rt.slots[0]).next_fetch.unwrap();
        // A one-day response: renew 12 h before it ends, spread up to a fifth of that earlier.
        let wait = start.seconds_until(next);
        assert!((12 * 3600 - 12 * 3600 / 5 - 120..=12 * 3600 + 120).contains(&wait), "next fetch in {wait}s");
        clock.set(next.minus(Duration::from_secs(1)));
        assert_eq!(refresh(&rt, &transport), Attempt::Skipped);
        clock.set(next);
        assert_eq!(refresh(&rt, &transport), Attempt::Published(SlotStatus::Good));
        assert_eq!(transport.calls(), 2);
    }

    #[test]
    fn failures_back_off_and_keep_the_good_response_until_it_expires() {
        let (rt, clock) = runtime_with_clock(None);
        let first = good();
        let bad_sig =
            testpki::response_for(&testpki::cert_info("leaf"), Opts { signer: "other-ca", ..Opts::default() });
        let down = || Err(FetchError::HttpStatus(500, String::new()));
        let transport = Scripted::new(vec![Ok(first.clone()), Ok(bad_sig), down(), down(), down()]);
        refresh(&rt, &transport);
        let mut waits = vec![];
        for _ in 0..4 {
            until_due(&rt, &clock);
            assert!(matches!(refresh(&rt, &transport), Attempt::Failed(_)));
            assert_eq!(stapled(&rt).as_ref(), Some(&first), "the last good response stays");
            waits.push(clock.now().seconds_until(rt.store.state(rt.slots[0]).next_fetch.unwrap()));
        }
        for (wait, base) in waits.iter().zip([30, 60, 120, 240]) {
            assert!((base..=base + base / 10 + 1).contains(wait), "waits {waits:?}");
        }
        assert_eq!(rt.store.state(rt.slots[0]).failures, 4);
        // nextUpdate is a day after the fetch; with 300 s of skew it is stapled until then.
        let until = rt.store.state(rt.slots[0]).staple_until.unwrap();
        clock.set(until.minus(Duration::from_secs(1)));
        assert!(stapled(&rt).is_some());
        clock.set(until);
        assert_eq!(stapled(&rt), None, "never stapled after nextUpdate plus skew");
    }

    #[test]
    fn revoked_replaces_good() {
        let rt = runtime(None);
        let clock_start = rt.clock.now();
        let revoked = testpki::response_for(
            &testpki::cert_info("leaf"),
            Opts { index: Index::Revoked("leaf"), ..Opts::default() },
        );
        let transport = Scripted::new(vec![Ok(good()), Ok(revoked.clone())]);
        refresh(&rt, &transport);
        let st = rt.store.state(rt.slots[0]);
        let lease = rt.store.try_lease(rt.slots[0], clock_start, HOUR).unwrap();
        rt.store.release(lease, Schedule { next_fetch: None, ..st.schedule() }).unwrap();
        assert_eq!(refresh(&rt, &transport), Attempt::Published(SlotStatus::Revoked));
        assert_eq!(stapled(&rt), Some(revoked));
    }

    #[test]
    fn a_held_lease_means_no_fetch() {
        let rt = runtime(None);
        let _other = rt.store.try_lease(rt.slots[0], rt.clock.now(), Duration::from_secs(60)).unwrap();
        let transport = Scripted::new(vec![]);
        assert_eq!(refresh(&rt, &transport), Attempt::Skipped);
        assert_eq!(transport.calls(), 0);
    }

    /// A fetch so slow that its lease expires and another process refreshes meanwhile.
    struct Overtaken<'a> {
        rt: &'a Runtime,
        clock: &'a ManualClock,
        newer: Vec<u8>,
    }

    impl Transport for Overtaken<'_> {
        fn fetch(&self, _x: &Exchange) -> Result<Vec<u8>, FetchError> {
            self.clock.advance(HOUR);
            let slot = self.rt.slots[0];
            let lease = self.rt.store.try_lease(slot, self.clock.now(), Duration::from_secs(60)).expect("expired");
            let v = ocsp::validate(
                &self.newer,
                &self.rt.certs[0].info,
                &Runtime::policy(&self.rt.certs[0], None),
                self.clock.now(),
            )
            .unwrap();
            let p = Publish {
                der: &self.newer,
                status: SlotStatus::Good,
                this_update: v.this_update,
                next_update: v.next_update,
                staple_until: v.next_update.unwrap(),
                produced_at: None,
                source: Source::Responder,
            };
            self.rt.store.publish(&lease, &p, self.clock.now()).unwrap();
            self.rt
                .store
                .release(lease, Schedule { next_fetch: None, failures: 0, fetched_ok_at: None, ..Schedule::default() })
                .unwrap();
            Err(FetchError::Timeout)
        }
    }

    #[test]
    fn a_refresher_that_lost_its_lease_records_nothing() {
        let (rt, clock) = runtime_with_clock(None);
        let newer = good();
        let overtaken = Overtaken { rt: &rt, clock: &clock, newer: newer.clone() };
        assert_eq!(refresh(&rt, &overtaken), Attempt::LostLease);
        let st = rt.store.state(rt.slots[0]);
        assert_eq!(st.failures, 0, "the stale failure is dropped");
        assert_eq!(st.next_fetch, None, "the new holder's schedule stays");
        assert_eq!(stapled(&rt), Some(newer));
    }

    #[test]
    fn a_stopping_process_abandons_its_fetch_and_frees_the_lease() {
        struct Hang;
        impl Transport for Hang {
            fn fetch(&self, _: &Exchange) -> Result<Vec<u8>, FetchError> {
                std::thread::sleep(Duration::from_secs(30));
                Err(FetchError::Timeout)
            }
        }
        let rt = runtime(None);
        let stop = Stop::default();
        let transport = Abandonable::new(Arc::new(Hang), stop.clone());
        let stopper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                stop.request();
            })
        };
        let started = std::time::Instant::now();
        assert_eq!(rt.refresh_if_due(0, &transport, &stop), Attempt::Stopped);
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        assert_eq!(rt.store.state(rt.slots[0]).failures, 0, "a stop is not a failure");
        assert!(rt.store.try_lease(rt.slots[0], rt.clock.now(), HOUR).is_some(), "lease freed at once");
        stopper.join().unwrap();
    }

    /// Answers each request with a fresh response for its certificate and records
    /// which of `certs` it was for.
    struct Answering {
        requests: Vec<Vec<u8>>,
        certs: Vec<CertInfo>,
        asked: Mutex<Vec<usize>>,
    }

    impl Answering {
        fn new(certs: Vec<CertInfo>) -> Answering {
            let requests = certs.iter().map(|c| crate::ocsp::build_request(c, false).unwrap().0).collect();
            Answering { requests, certs, asked: Mutex::new(Vec::new()) }
        }

        fn asked(&self) -> Vec<usize> {
            std::mem::take(&mut *self.asked.lock().unwrap())
        }
    }

    impl Transport for Answering {
        fn fetch(&self, x: &Exchange) -> Result<Vec<u8>, FetchError> {
            let i = self.requests.iter().position(|r| *r == x.request).expect("a request for a known certificate");
            self.asked.lock().unwrap().push(i);
            Ok(testpki::response_for(&self.certs[i], Opts::default()))
        }
    }

    #[test]
    fn renewals_that_outrun_the_rate_are_shared_fairly_not_starved() {
        // Three certificates that each need a new response every 2 s, one request a
        // second allowed: a refresh order that starts from the top every pass would
        // refresh the first two for ever and never the third.
        let names = ["leaf", "leaf2", "noaia"];
        let words: &'static [AtomicU64] =
            Box::leak((0..Layout::for_certs(4).words()).map(|_| AtomicU64::new(0)).collect());
        let store = SharedStore::attach(words, Layout::for_certs(4), 4).unwrap();
        let clock = Arc::new(ManualClock::at(SystemClock.now()));
        let mut rt = Runtime::new(store, names.iter().map(|n| managed(n)).collect(), None, clock.clone()).unwrap();
        rt.responder_rate = 1;
        let transport = Answering::new(names.iter().map(|n| testpki::cert_info(n)).collect());
        let renew_every = Duration::from_secs(2);
        let mut fetched = [0usize; 3];
        for _ in 0..24 {
            rt.refresh_pass(&transport, &Stop::default());
            for i in transport.asked() {
                fetched[i] += 1;
                let lease = rt.store.try_lease(rt.slots[i], clock.now(), HOUR).expect("free after the pass");
                let due = Schedule {
                    next_fetch: Some(clock.now().plus(renew_every)),
                    ..rt.store.state(rt.slots[i]).schedule()
                };
                rt.store.release(lease, due).unwrap();
            }
            clock.advance(Duration::from_secs(1));
        }
        assert_eq!(fetched.iter().sum::<usize>(), 24, "one a second: {fetched:?}");
        assert!(fetched.iter().all(|&n| n >= 7), "each certificate gets its share: {fetched:?}");
    }

    #[test]
    fn a_refresh_pass_stops_between_certificates() {
        let rt = runtime(None);
        let stop = Stop::default();
        stop.request();
        let transport = Scripted::new(vec![]);
        rt.refresh_pass(&transport, &stop);
        assert_eq!(transport.calls(), 0);
    }

    #[test]
    fn responses_survive_in_the_disk_store_and_bad_files_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskStore::new(dir.path());
        let rt = runtime(Some(disk.clone()));
        refresh(&rt, &Scripted::new(vec![Ok(good())]));
        let stored = disk.load(&rt.certs[0].info.key).unwrap().expect("saved");
        // A new process with an empty shared store staples the stored response.
        let fresh = runtime(Some(disk.clone()));
        assert!(fresh.restore_from_disk(0));
        assert_eq!(stapled(&fresh), Some(stored.clone()));
        assert_eq!(refresh(&fresh, &Scripted::new(vec![])), Attempt::Skipped, "inside its renew window");
        // A torn file is never stapled, and is deleted.
        std::fs::write(disk.path(&rt.certs[0].info.key), &stored[..stored.len() / 2]).unwrap();
        let torn = runtime(Some(disk.clone()));
        assert!(!torn.restore_from_disk(0));
        assert_eq!(disk.load(&rt.certs[0].info.key).unwrap(), None);
        assert_eq!(torn.staple(&torn.certs[0].info.key, &mut StapleBuffer::default()), Some(false));
    }
    /// `Stapling on` and the given directives, as Apache would apply them.
    fn configured(directives: &[(&str, &str)]) -> Effective {
        let mut cfg = ServerConfig::default();
        for (name, arg) in [("Stapling", "on")].iter().chain(directives) {
            cfg.apply(name, arg, crate::config::Context::Global).unwrap();
        }
        cfg.effective(true)
    }

    #[test]
    fn thirty_days_of_skew_and_max_age_staple_exactly_that_long() {
        let settings = configured(&[
            ("StaplingResponseTimeSkew", "2592000"),
            ("StaplingResponseMaxAge", "2592000"),
            ("StaplingRenewWindow", "99%"),
        ]);
        let (rt, clock) = runtime_for(managed_with("leaf", settings), None);
        let start = clock.now();
        let der = good();
        assert_eq!(refresh(&rt, &Scripted::new(vec![Ok(der.clone())])), Attempt::Published(SlotStatus::Good));
        let st = rt.store.state(rt.slots[0]);
        let month = Duration::from_secs(crate::config::MAX_SPAN_SECS);
        let until = st.next_update.unwrap().plus(month);
        assert_eq!(st.staple_until, Some(until), "nextUpdate plus 30 days");
        // 99% of a one-day response: due at once, so an hour later (never a loop).
        let wait = start.seconds_until(st.next_fetch.unwrap());
        assert!((3600 - 120..=3600 + 120).contains(&wait), "next fetch in {wait}s");
        clock.set(until.minus(Duration::from_secs(1)));
        assert_eq!(stapled(&rt), Some(der.clone()));
        clock.set(until);
        assert_eq!(stapled(&rt), None);
        // The same bytes from disk: accepted up to the last second of the skew, not after.
        assert!(accept_stored(&der, &rt.certs[0], until.minus(Duration::from_secs(1))).is_ok());
        assert!(matches!(
            accept_stored(&der, &rt.certs[0], until.plus(Duration::from_secs(1))),
            Err(Rejection::Expired(_))
        ));
    }

    #[test]
    fn a_thirty_day_fixed_window_and_the_longest_timeout_never_wrap() {
        let settings = configured(&[
            ("StaplingRenewWindow", "2592000"),
            ("StaplingResponderTimeout", "300"),
            ("StaplingResponseTimeSkew", "0"),
            ("StaplingResponseMaxAge", "1"),
        ]);
        let (rt, clock) = runtime_for(managed_with("leaf", settings), None);
        let start = clock.now();
        assert_eq!(refresh(&rt, &Scripted::new(vec![Ok(good())])), Attempt::Published(SlotStatus::Good));
        let st = rt.store.state(rt.slots[0]);
        let this_update = st.this_update.unwrap();
        assert_eq!(st.staple_until, Some(this_update.plus(Duration::from_secs(1))), "max age 1 s, no skew");
        let wait = start.seconds_until(st.next_fetch.unwrap());
        assert!((5..=6).contains(&wait), "the max age brings the next fetch to the shortest interval: {wait}s");
        // A max age of 1 s (plus no skew) refuses the same response a few seconds later.
        clock.advance(Duration::from_secs(5));
        assert!(matches!(accept_stored(&good(), &rt.certs[0], clock.now()), Err(Rejection::TooOld(_))));
    }

    /// An in-memory shared tier for the fleet logic (the real one is memcached or Redis,
    /// through Apache's socache providers: tests/fleet.rs).
    #[derive(Default)]
    struct MemTier {
        map: Mutex<std::collections::HashMap<String, Vec<u8>>>,
        down: std::sync::atomic::AtomicBool,
    }

    impl MemTier {
        fn check(&self) -> Result<(), TierError> {
            if self.down.load(Ordering::SeqCst) {
                Err(TierError("connection refused".into()))
            } else {
                Ok(())
            }
        }
    }

    impl FleetTier for MemTier {
        fn describe(&self) -> &str {
            "mem:"
        }
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, TierError> {
            self.check()?;
            Ok(self.map.lock().unwrap().get(key).cloned())
        }
        fn put(&self, key: &str, value: &[u8], _expires: UnixTime) -> Result<(), TierError> {
            self.check()?;
            self.map.lock().unwrap().insert(key.into(), value.to_vec());
            Ok(())
        }
        fn remove(&self, key: &str) -> Result<(), TierError> {
            self.check()?;
            self.map.lock().unwrap().remove(key);
            Ok(())
        }
    }

    /// A server (its own shared store) of a fleet that shares `tier`.
    fn server_of(tier: &Arc<MemTier>) -> Runtime {
        let (mut rt, _clock) = runtime_with_clock(None);
        rt.fleet = Some(Fleet::new(tier.clone()));
        rt
    }

    #[test]
    fn one_fetch_serves_the_fleet_and_the_others_take_it_from_the_tier() {
        let tier = Arc::new(MemTier::default());
        let (first, second) = (server_of(&tier), server_of(&tier));
        let der = good();
        let transport = Scripted::new(vec![Ok(der.clone())]);
        assert_eq!(refresh(&first, &transport), Attempt::Published(SlotStatus::Good));
        assert_eq!(refresh(&second, &transport), Attempt::Published(SlotStatus::Good));
        assert_eq!(transport.calls(), 1, "one responder request for two servers");
        assert_eq!(stapled(&second), Some(der));
        assert_eq!(second.store.state(second.slots[0]).source, Source::Fleet);
        let keys = fleet::Keys::of(&first.certs[0].info);
        assert!(!tier.map.lock().unwrap().contains_key(&keys.lease), "the lease is let go after the fetch");
    }

    #[test]
    fn a_lease_held_by_another_server_means_waiting_not_fetching() {
        let tier = Arc::new(MemTier::default());
        let rt = server_of(&tier);
        let keys = fleet::Keys::of(&rt.certs[0].info);
        let other = fleet::LeaseEntry { holder: "other:1:2".into(), until: rt.clock.now().plus(HOUR) };
        tier.map.lock().unwrap().insert(keys.lease.clone(), other.encode());
        let transport = Scripted::new(vec![]);
        assert_eq!(refresh(&rt, &transport), Attempt::WaitingForFleet);
        assert_eq!(transport.calls(), 0);
        let next = rt.store.state(rt.slots[0]).next_fetch.unwrap();
        assert!(rt.clock.now().seconds_until(next) <= 4, "looks again within seconds");
    }

    #[test]
    fn poisoned_entries_are_never_stapled_and_are_replaced() {
        let tier = Arc::new(MemTier::default());
        let rt = server_of(&tier);
        let keys = fleet::Keys::of(&rt.certs[0].info);
        // Another certificate's valid response (expired ones: tests/fleet.rs).
        let other_cert = testpki::response_for(&testpki::cert_info("leaf2"), Opts::default());
        for poison in [b"garbage".to_vec(), other_cert] {
            let (rt, _clock) = runtime_with_clock(None);
            let rt = Runtime { fleet: Some(Fleet::new(tier.clone())), ..rt };
            tier.map.lock().unwrap().insert(keys.response.clone(), poison.clone());
            let der = good();
            assert_eq!(refresh(&rt, &Scripted::new(vec![Ok(der.clone())])), Attempt::Published(SlotStatus::Good));
            assert_eq!(stapled(&rt), Some(der.clone()), "the poison is not stapled");
            assert_eq!(tier.map.lock().unwrap().get(&keys.response), Some(&der), "replaced by a valid one");
        }
    }

    #[test]
    fn a_tier_that_is_down_means_fetching_alone_and_saying_so_once() {
        let tier = Arc::new(MemTier::default());
        tier.down.store(true, Ordering::SeqCst);
        let rt = server_of(&tier);
        let transport = Scripted::new(vec![Ok(good())]);
        assert_eq!(refresh(&rt, &transport), Attempt::Published(SlotStatus::Good));
        assert_eq!(transport.calls(), 1);
        assert!(rt.store.fleet_down());
        assert!(!rt.store.mark_fleet_down(true), "already said");
        tier.down.store(false, Ordering::SeqCst);
        let second = Runtime { fleet: Some(Fleet::new(tier.clone())), ..runtime_with_clock(None).0 };
        let _ = refresh(&second, &Scripted::new(vec![Ok(good())]));
        assert!(!second.store.fleet_down());
    }

    #[test]
    fn one_responder_down_is_said_once_for_all_its_certificates() {
        capture();
        let certs: Vec<ManagedCert> = ["leaf", "leaf2", "leaf-ec"].into_iter().map(managed).collect();
        let n = certs.len();
        let words: &'static [AtomicU64] =
            Box::leak((0..Layout::for_certs(n).words()).map(|_| AtomicU64::new(0)).collect());
        let store = SharedStore::attach(words, Layout::for_certs(n), n).unwrap();
        let clock = Arc::new(ManualClock::at(SystemClock.now()));
        let rt = Runtime::new(store, certs, None, clock.clone()).unwrap();
        let refused = || Err(FetchError::Unreachable("Connection Failed: Connection refused".into()));
        let transport = Scripted::new((0..n).map(|_| refused()).collect());
        (0..n).for_each(|i| assert!(matches!(rt.refresh_if_due(i, &transport, &Stop::default()), Attempt::Failed(_))));
        let lines = logged(log::Level::Info);
        let warned: Vec<_> = lines.iter().filter(|(l, _)| *l <= log::Level::Warn).collect();
        assert_eq!(warned.len(), 1, "one line for the responder, not one per certificate: {lines:?}");
        let detail = lines.iter().filter(|(l, t)| *l == log::Level::Info && t.contains("OCSP refresh failed")).count();
        assert_eq!(detail, n - 1, "the others at info: {lines:?}");
        // An hour later, the line says how many share the failure.
        clock.advance(HOUR);
        rt.check_alerts();
        let warned = logged(log::Level::Warn);
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(warned[0].1.contains("2 more certificates of http://127.0.0.1:9 have the same"), "{warned:?}");
    }
}
