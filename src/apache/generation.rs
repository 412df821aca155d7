//! One configuration generation in the parent: what the configuration pass collects
//! (kept in the config pool, so the dry run and every replaced generation leave
//! nothing behind), and starting it: the shared store, the disk store, the runtime,
//! and the startup helper that fills them before the children fork.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{debug, error, info, warn};

use super::conftree::{self, CertFiles, Tree};
use super::handles::{text, Pool, Server, Userdata};
use super::socache::SocacheTier;
use super::{ffi, process, shm};
use crate::cert::{CertInfo, CertKey, Issuers};
use crate::config::ServerConfig;
use crate::diagnose::{self, Finding};
use crate::engine::{bounded, Fleet, ManagedCert, PrimeDecision, Registry, Runtime};
use crate::ocsp::proxy::ProxyPolicy;
use crate::ocsp::tls::read_ca_file;
use crate::ocsp::Client;
use crate::store::disk::RootPart;
use crate::store::{DiskStore, Layout, SharedStore};
use crate::time::SystemClock;
use crate::transport::{Abandonable, HttpTransport, Stop};

/// How long the parent waits for the helper to restore stored responses at a start.
/// Local files only: the parent never waits for a responder, since the listeners
/// already queue connections that only the children can serve.
const RESTORE_WAIT: Duration = Duration::from_secs(1);
/// The same at a restart, when new children wait for post_config.
const RESTART_WAIT: Duration = Duration::from_millis(500);
/// How often the helper checks that Apache and its generation still want it.
const HELPER_WATCH: Duration = Duration::from_millis(100);
/// Stored files of certificates no longer configured are kept this long.
const STORE_GRACE: Duration = Duration::from_secs(7 * 86_400);

/// What one configuration pass collects between pre_config and post_config.
#[derive(Default)]
struct Pass {
    registry: Registry,
    issuers: Issuers,
    /// When the first certificate was primed, and the time spent priming.
    priming: Option<(std::time::Instant, Duration)>,
    notes: Vec<String>,
    compat_warnings: Vec<String>,
}

/// The pass of the configuration being read, in its config pool.
static PASS: Userdata<Mutex<Pass>> = Userdata::new(c"mod_stapling.pass");

fn with_pass<T>(pconf: Pool<'_>, f: impl FnOnce(&mut Pass) -> T) -> T {
    let pass = pconf.get(&PASS).unwrap_or_else(|| pconf.put(&PASS, Mutex::default()));
    f(&mut pass.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Remembers a line to log once at startup (a setting that does nothing here).
pub(super) fn note(pconf: Pool<'_>, line: String) {
    with_pass(pconf, |p| {
        if !p.notes.contains(&line) {
            p.notes.push(line)
        }
    })
}

/// Remembers a line to warn about once at startup, if compatibility mode is on: a
/// mod_ssl value used differently from how it is written.
pub(super) fn compat_warning(pconf: Pool<'_>, line: String) {
    with_pass(pconf, |p| p.compat_warnings.push(line))
}

/// Registers a certificate mod_ssl hands over for `server`; true if we staple it.
pub(super) fn prime(server: &Server<'_>, key: CertKey, pem: &str) -> bool {
    let Some(cfg) = server.config() else { return false };
    let settings = cfg.settings.effective(cfg.settings.compatibility());
    if !settings.enabled {
        return false;
    }
    if is_dry_run() {
        // Its SSL contexts are thrown away: nothing to parse, nothing to decide.
        return true;
    }
    let started = std::time::Instant::now();
    let vhost = server.label();
    let decision = with_pass(server.config_pool(), |p| {
        let mut info = match CertInfo::from_pem_chain_sharing(pem.as_bytes(), &mut p.issuers) {
            Ok(info) => info,
            Err(e) => {
                error!("vhost {vhost}: {e}; this certificate is not stapled");
                return PrimeDecision::Off;
            }
        };
        info.key = key;
        p.registry.prime(info, settings, &vhost, server.as_ptr() as usize)
    });
    with_pass(server.config_pool(), |p| p.priming.get_or_insert((started, Duration::ZERO)).1 += started.elapsed());
    decision == PrimeDecision::Take
}

/// The configuration cannot start (the reason is logged).
#[derive(Debug)]
pub(super) struct StartFailed;

/// post_config of the real pass: report what the pass found, start the runtime and
/// hand it to every server's config.
pub(super) fn finish(main: Server<'_>) -> Result<(), StartFailed> {
    let pass = with_pass(main.config_pool(), std::mem::take);
    let tree = conftree::read();
    let compatibility = main.config().is_none_or(|c| c.settings.compatibility());
    report_load_order(compatibility, &tree);
    pass.notes.iter().chain(pass.registry.no_url.iter().map(|(_, line)| line)).for_each(|n| info!("{n}"));
    if compatibility {
        pass.compat_warnings.iter().for_each(|w| warn!("{w}"));
    }
    let started = std::time::Instant::now();
    let unprimed = report_certificates(main, &pass.registry, &tree);
    let diagnosed = started.elapsed();
    let priming = pass.priming;
    let Some(runtime) = start_generation(&main, pass.registry)? else {
        report_ready(0, unprimed);
        return Ok(());
    };
    report_ready(runtime.stapled_count(), runtime.certs.len() + unprimed);
    if let Some((first, spent)) = priming {
        debug!(
            "startup cost: {:.3}s priming {} certificates ({:.3}s from the first to the end), {:.3}s diagnosing, \
             {:.3}s starting the generation (the restore wait included)",
            spent.as_secs_f64(),
            runtime.certs.len(),
            first.elapsed().as_secs_f64() - started.elapsed().as_secs_f64(),
            diagnosed.as_secs_f64(),
            (started.elapsed() - diagnosed).as_secs_f64()
        );
    }
    for server in main.with_following() {
        if let Some(cfg) = server.config() {
            let _ = cfg.runtime.set(Arc::clone(&runtime));
        }
    }
    Ok(())
}

/// Modules loaded later are searched first for a directive, so compatibility mode
/// only sees mod_ssl's directives when we are loaded after mod_ssl. Said only when the
/// configuration has such directives (which then went to mod_ssl alone).
fn report_load_order(compatibility: bool, tree: &Tree) {
    // SAFETY: ap_top_module heads the list of loaded modules, which Apache does not
    // change during post_config; names are NUL-terminated.
    let names: Vec<String> = unsafe {
        let mut names = Vec::new();
        let mut m = ffi::ap_top_module;
        while !m.is_null() {
            names.push(text((*m).name));
            m = (*m).next;
        }
        names
    };
    let ours = names.iter().position(|n| n == "mod_stapling.c");
    // mod_tls uses the same core hooks, so it works too (without compatibility mode).
    let tls = names.iter().any(|n| n == "mod_tls.c");
    let unseen = !tree.compat_directives.is_empty();
    match (ours, names.iter().position(|n| n == "mod_ssl.c")) {
        (_, None) if !tls => {
            error!("mod_ssl is not loaded: mod_stapling has nothing to staple. Enable it (a2enmod ssl)")
        }
        (_, None) => {}
        (Some(o), Some(ssl)) if ssl < o && compatibility && unseen => warn!(
            "mod_stapling is loaded before mod_ssl, so compatibility mode cannot read {}: only mod_ssl \
             sees them. Load mod_stapling after mod_ssl (on Debian: a2enmod stapling does this), or use \
             Stapling and the Stapling* directives",
            bounded(&tree.compat_directives)
        ),
        _ => {}
    }
}

/// Why a configured certificate was not handed to us, per certificate file of every
/// vhost with stapling on (mod_ssl never primes a certificate whose issuer it cannot
/// find). One line per finding, naming its vhosts. Returns how many certificates
/// lack their chain, for the ready line's total.
fn report_certificates(main: Server<'_>, registry: &Registry, tree: &Tree) -> usize {
    let primed = |key: &CertKey| registry.handed_over.contains_key(key);
    let main_files = tree.certs.get(&None).cloned().unwrap_or_default();
    let mut findings: Vec<(Finding, bool, Vec<String>)> = Vec::new();
    for server in main.with_following().filter(stapling_switched_on) {
        let own = tree.certs.get(&server.definition()).filter(|c| !c.files.is_empty());
        let files = own.unwrap_or(&main_files);
        let primed_here = registry.primed_servers.get(&(server.as_ptr() as usize)).copied().unwrap_or(0);
        let any_primed = primed_here > 0;
        // One leaf per file: a server with as many certificates handed over as files
        // has nothing to diagnose, and its files are not read again.
        if primed_here >= files.files.len() && any_primed {
            continue;
        }
        if files.files.is_empty() && !any_primed {
            info!(
                "vhost {}: Stapling is on, but mod_ssl handed over no certificate and no SSLCertificateFile \
                 is set for it: its certificate comes from another module (mod_md staples with MDStapling on) \
                 or SSL is off there",
                server.label()
            );
        }
        for finding in diagnose_files(&main, files, primed) {
            match findings.iter_mut().find(|(f, _, _)| *f == finding) {
                Some((_, none_primed, vhosts)) => {
                    *none_primed &= !any_primed;
                    vhosts.push(server.label());
                }
                None => findings.push((finding, !any_primed, vec![server.label()])),
            }
        }
    }
    for (finding, none_primed, vhosts) in &findings {
        let Some(line) = finding.line(&bounded(vhosts)) else { continue };
        match finding {
            Finding::NoIssuer { .. } if *none_primed => error!("{line}"),
            Finding::NoIssuer { .. } => warn!("{line}"),
            _ => info!("{line}"),
        }
    }
    findings.iter().filter(|(f, _, _)| f.is_missing_chain()).count()
}

/// Stapling is on for this server, in its own section.
fn stapling_switched_on(s: &Server<'_>) -> bool {
    s.config().is_some_and(|c| c.settings.effective(c.settings.compatibility()).enabled && c.settings.switch_in_vhost)
}

/// The findings for each certificate file (read as root, like mod_ssl does).
fn diagnose_files(main: &Server<'_>, files: &CertFiles, primed: impl Fn(&CertKey) -> bool) -> Vec<Finding> {
    let diagnose_one = |f: &String| {
        let pem = std::fs::read(server_root_relative(main, f)).ok()?;
        Some(diagnose::diagnose(&pem, f, files.chain_file, &primed))
    };
    files.files.iter().filter_map(diagnose_one).collect()
}

/// "OCSP stapling ready: 1 of 2", counting certificates mod_ssl could not hand over.
/// The helper goes on fetching what it could not restore from disk.
fn report_ready(stapled: usize, total: usize) {
    if total > 0 {
        let rest = if stapled < total { "; fetching the rest in the background" } else { "" };
        info!("OCSP stapling ready: {stapled} of {total} certificates have a verified response{rest}");
    }
}

/// The runtime for the certificates mod_ssl primed in this pass, with responses fetched
/// (or restored) before it returns; `None` when there is nothing to staple.
fn start_generation(main: &Server<'_>, registry: Registry) -> Result<Option<Arc<Runtime>>, StartFailed> {
    let Some(main_cfg) = main.config().map(|c| &c.settings) else { return Ok(None) };
    let mut certs = registry.certs;
    if certs.is_empty() {
        return Ok(None);
    }
    let layout = plan_layout(&mut certs, main_cfg.cache_spec().and_then(|c| c.size))?;
    if certs.is_empty() {
        return Ok(None);
    }
    let count = certs.len();
    let mapped = shm::region(main.process_pool(), layout.words(), |old| SharedStore::adoptable(old, count).is_some());
    let store = mapped
        .map_err(|e| e.to_string())
        .and_then(|words| SharedStore::attach(words, layout, count).map_err(|e| format!("{e} ({count} certificates)")));
    let store = match store {
        Ok(store) => store,
        Err(e) => {
            error!("{e}; OCSP stapling is off until the next restart");
            return Ok(None);
        }
    };
    let disk = disk_store(main, main_cfg);
    let runtime = match Runtime::new(store, certs, disk, Arc::new(SystemClock)) {
        Ok(mut r) => {
            r.http = HttpTransport(Arc::new(responder_client(main_cfg)));
            r.fleet = fleet_tier(main, main_cfg);
            r.responder_rate = main_cfg.responder_rate();
            Arc::new(r)
        }
        Err(e) => {
            error!("{e}: cannot place every certificate; OCSP stapling is off until the next restart");
            return Ok(None);
        }
    };
    run_startup_helper(&runtime, is_restart());
    Ok(Some(runtime))
}

/// The fleet tier, if `StaplingCache` (or, in compatibility mode, `SSLStaplingCache`)
/// names a provider shared between machines. Its instance lives in the config pool.
fn fleet_tier(main: &Server<'_>, cfg: &ServerConfig) -> Option<Fleet> {
    let spec = cfg.fleet_spec()?;
    match SocacheTier::open(spec, main, main.config_pool()) {
        Ok(tier) => {
            info!(
                "fleet tier {}: responses are shared with the other servers that use it; each is verified \
                 before it is stapled",
                spec.describe()
            );
            Some(Fleet::new(Arc::new(tier)))
        }
        Err(e) => {
            error!("fleet tier {}: cannot start it ({e}); this server fetches its own responses", spec.describe());
            None
        }
    }
}

/// How responders are reached: the proxy (said at startup) and the extra CAs.
fn responder_client(cfg: &ServerConfig) -> Client {
    let (proxies, warnings) = ProxyPolicy::new(cfg.global.proxy.clone(), |var| std::env::var(var).ok());
    warnings.iter().for_each(|w| warn!("{w}"));
    if let Some(line) = proxies.describe() {
        info!("{line}");
    }
    let cas = match cfg.global.responder_ca_file.as_deref().map(read_ca_file) {
        Some(Ok(cas)) => cas,
        Some(Err(e)) => {
            error!("StaplingResponderCAFile: {e}; https:// responders are verified against the system's CAs only");
            Vec::new()
        }
        None => Vec::new(),
    };
    Client::new(proxies, cas)
}

/// The shared store's layout: sized from the certificates, and capped by the size in
/// `StaplingCache` if one is given. A cap too small for every certificate fails the
/// start, naming the certificates that do not fit; at a restart, which must not take
/// the server down, those certificates are left unstapled instead.
fn plan_layout(certs: &mut Vec<ManagedCert>, cap_bytes: Option<usize>) -> Result<Layout, StartFailed> {
    let Some(cap) = cap_bytes else { return Ok(Layout::for_certs(certs.len())) };
    let too_small = match Layout::capped(certs.len(), cap) {
        Ok(layout) => return Ok(layout),
        Err(too_small) => too_small,
    };
    let configured = certs.len();
    let left_out: Vec<String> = certs.drain(too_small.fit..).map(|c| c.info.label).collect();
    let consequence =
        if is_restart() { "Apache keeps running, without stapling for those" } else { "Apache does not start" };
    error!(
        "StaplingCache size {cap} is too small: it holds {} of the {configured} certificates. Not stapled: {}. \
         Raise the size to at least {} bytes ({} bytes also leave room for large responses and for certificates a \
         graceful restart adds), or leave the size out to size the store from the certificates. {consequence}",
        too_small.fit,
        left_out.join(", "),
        too_small.needed_bytes,
        too_small.planned_bytes
    );
    if !is_restart() {
        return Err(StartFailed);
    }
    Layout::capped(certs.len(), cap).map_err(|_| StartFailed)
}

fn server_user() -> (u32, u32) {
    // SAFETY: ap_unixd_config is filled in by mod_unixd while reading the config.
    unsafe { (ffi::ap_unixd_config.user_id, ffi::ap_unixd_config.group_id) }
}

/// The disk store: created and handed to the server's User by root where only root can
/// change the path to it, else left to the startup helper (as that user); None if refused.
fn disk_store(main: &Server<'_>, cfg: &ServerConfig) -> Option<DiskStore> {
    let dir = match &cfg.global.store {
        Some(None) => return None,
        Some(Some(dir)) => server_root_relative(main, dir),
        None => default_store_dir(main),
    };
    // SAFETY: plain queries of the process's effective ids.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid != 0 {
        // Apache runs as one user throughout: the helper creates and checks the store.
        return Some(DiskStore::for_user(dir, euid, egid));
    }
    let (uid, gid) = server_user();
    let store = DiskStore::for_user(dir, uid, gid);
    match store.prepare_as_root() {
        Ok(RootPart::HandedOver) => Some(store),
        Ok(RootPart::LeftToServerUser(why)) => {
            info!(
                "StaplingStore {}: {why}, so root leaves it alone; the startup helper creates and checks it \
                 as the server user",
                store.dir().display()
            );
            Some(store)
        }
        Err(e) => {
            warn!(
                "StaplingStore {}: {e}; responses are kept in memory only and will be fetched again \
                 after a restart. Fix the directory or set StaplingStore none",
                store.dir().display()
            );
            None
        }
    }
}

fn server_root_relative(main: &Server<'_>, path: &str) -> String {
    if path.starts_with('/') {
        return path.to_string();
    }
    let c = std::ffi::CString::new(path).unwrap_or_default();
    // SAFETY: the config pool is live; ap_server_root_relative copies into it and
    // returns NULL only on a bad path.
    let full = unsafe { ffi::ap_server_root_relative(main.config_pool().as_ptr(), c.as_ptr()) };
    if full.is_null() {
        path.to_string()
    } else {
        // SAFETY: a NUL-terminated string in the config pool.
        unsafe { text(full) }
    }
}

/// Debian keeps state under /var/cache/apache2; RHEL's ServerRoot has a `state` link
/// to /var/lib/httpd; anything else gets a directory under ServerRoot.
fn default_store_dir(main: &Server<'_>) -> String {
    let root = server_root_relative(main, "");
    let root = root.trim_end_matches('/');
    if root == "/etc/apache2" {
        "/var/cache/apache2/mod_stapling".into()
    } else if std::path::Path::new(&format!("{root}/state")).is_dir() {
        format!("{root}/state/mod_stapling")
    } else {
        format!("{root}/stapling")
    }
}

/// True in the first configuration pass at startup, which Apache throws away.
pub(super) fn is_dry_run() -> bool {
    // SAFETY: a plain query of Apache's state.
    unsafe { ffi::ap_state_query(ffi::AP_SQ_MAIN_STATE as std::ffi::c_int) == ffi::AP_SQ_MS_CREATE_PRE_CONFIG as i32 }
}

/// True for every configuration pass after the first real one (graceful or full restart).
fn is_restart() -> bool {
    // SAFETY: a plain query of Apache's state.
    unsafe { ffi::ap_state_query(ffi::AP_SQ_CONFIG_GEN as std::ffi::c_int) > 1 }
}

fn run_startup_helper(runtime: &Arc<Runtime>, restart: bool) {
    let (uid, gid) = server_user();
    let wait = if restart { RESTART_WAIT } else { RESTORE_WAIT };
    let apache = std::process::id();
    // The helper, as the server user, creates or checks the store and prunes it: its
    // entries are that user's, so root never acts on them.
    let waiting = std::time::Instant::now();
    let helper = process::start_helper(uid, gid, wait, |restored| {
        if runtime.prepare_disk() {
            runtime.prune_disk(STORE_GRACE);
        }
        let stop = Stop::default();
        std::thread::scope(|scope| {
            scope.spawn(|| stop_when_unwanted(runtime, apache, &stop));
            let transport = Abandonable::new(Arc::new(runtime.http.clone()), stop.clone());
            runtime.startup_pass(restored, &transport, &stop);
            stop.request();
        });
    });
    match helper.start {
        process::HelperStart::Ready => {}
        process::HelperStart::Ended => {
            warn!("the startup helper ended early (see the lines above); the children fetch in the background")
        }
        process::HelperStart::TimedOut => info!(
            "restoring stored responses takes longer than {:.1}s; the helper goes on in the background",
            wait.as_secs_f64()
        ),
        process::HelperStart::ForkFailed(e) => {
            warn!("cannot start the startup helper ({e}); the children fetch in the background")
        }
    }
    if let Some(pid) = helper.pid {
        debug!("startup helper: pid {pid}; the parent waited {:.3}s for its restore", waiting.elapsed().as_secs_f64());
    }
}

/// In the helper: stops the startup pass once Apache is gone or a newer configuration
/// took over the store, so that no helper outlives its generation.
fn stop_when_unwanted(runtime: &Runtime, apache: u32, stop: &Stop) {
    let gone = || !std::path::Path::new(&format!("/proc/{apache}")).exists();
    while !stop.requested() {
        if gone() || runtime.superseded() {
            stop.request();
            return;
        }
        stop.sleep(HELPER_WATCH);
    }
}
