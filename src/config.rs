//! Directive parsing and per-server configuration merge. Pure Rust: no FFI types.
//!
//! Each server (the main server and every vhost) has a [`ServerConfig`]. Values set by
//! our own `Stapling*` directives and values read from mod_ssl's `SSLStapling*`
//! directives (compatibility mode) are kept apart, so that our own always win and so
//! that compatibility mode can be switched off after the fact.

use std::fmt;
use std::time::Duration;

pub use crate::ocsp::proxy::Proxy;
pub use crate::ocsp::RequestMethod;

/// Default seconds to wait for a responder.
pub const DEFAULT_RESPONDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default tolerated clock skew.
pub const DEFAULT_TIME_SKEW: Duration = Duration::from_secs(300);
/// How long a handshake may wait for a certificate's first response by default.
pub const DEFAULT_STARTUP_WAIT: Duration = Duration::from_secs(1);
/// The longest `StaplingStartupWait`: each waiting handshake holds a worker this long.
const MAX_STARTUP_WAIT_SECS: u64 = 10;
/// Default renew window: refresh when half of the validity is left.
pub const DEFAULT_RENEW_WINDOW: RenewWindow = RenewWindow::Percent(50);
/// Largest responder timeout we accept: a longer one would stall startup.
pub const MAX_RESPONDER_TIMEOUT_SECS: u64 = 300;
/// Largest time skew, maximum response age and fixed renew window: 30 days. Real
/// responses are valid for days, never months, and the bound keeps every sum of times
/// far from overflowing.
pub const MAX_SPAN_SECS: u64 = 30 * 86_400;
/// Default `StaplingResponderRate`: requests a second to one responder host.
pub const DEFAULT_RESPONDER_RATE: u32 = 20;
/// Largest `StaplingResponderRate`.
pub const MAX_RESPONDER_RATE: u32 = 10_000;
/// Smallest `StaplingCache` size in bytes (mod_ssl's shmcb refuses less, too).
pub const MIN_CACHE_BYTES: usize = 8192;
/// Largest `StaplingCache` size in bytes: 64 GiB. The size only caps the shared store
/// (which is sized from the certificates), so a large value allocates nothing.
pub const MAX_CACHE_BYTES: usize = 1 << 36;

/// A directive error, shown by `apachectl -t` as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Where a directive appeared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// Main server config, outside any `<VirtualHost>`.
    Global,
    /// Inside a `<VirtualHost>`.
    VirtualHost,
}

/// What the directive handler should tell Apache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The directive is ours and fully handled.
    Handled,
    /// A mod_ssl directive: recorded, and mod_ssl must parse it too (`DECLINE_CMD`).
    PassToModSsl,
    /// A mod_ssl directive that has no meaning for us; passed on, with an info line.
    IgnoredPassToModSsl(String),
    /// A mod_ssl value we use differently (outside our range, or not a plain number);
    /// passed on, with a warn line that names the value used.
    AdjustedPassToModSsl(String),
}

/// When to refresh a response, relative to its validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewWindow {
    /// Refresh when less than this percentage of the validity is left.
    Percent(u8),
    /// Refresh when less than this much time is left.
    Fixed(Duration),
}

/// Settings that apply to one server (main or vhost) and inherit from the main server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// `Stapling` / `SSLUseStapling`.
    pub enabled: Option<bool>,
    /// `StaplingResponderTimeout` / `SSLStaplingResponderTimeout`.
    pub responder_timeout: Option<Duration>,
    /// `StaplingResponseTimeSkew` / `SSLStaplingResponseTimeSkew`.
    pub time_skew: Option<Duration>,
    /// `StaplingResponseMaxAge` / `SSLStaplingResponseMaxAge`; `Some(None)` is "no limit".
    pub max_age: Option<Option<Duration>>,
    /// `StaplingForceURL` / `SSLStaplingForceURL`.
    pub force_url: Option<String>,
    /// `StaplingRenewWindow` (no mod_ssl equivalent).
    pub renew_window: Option<RenewWindow>,
    /// `StaplingUseNonce` (no mod_ssl equivalent).
    pub use_nonce: Option<bool>,
    /// `StaplingStartupWait` (no mod_ssl equivalent).
    pub startup_wait: Option<Duration>,
    /// `StaplingRequestMethod` (no mod_ssl equivalent).
    pub request_method: Option<RequestMethod>,
}

impl Settings {
    /// `self` where set, otherwise `base`.
    fn or(&self, base: &Settings) -> Settings {
        Settings {
            enabled: self.enabled.or(base.enabled),
            responder_timeout: self.responder_timeout.or(base.responder_timeout),
            time_skew: self.time_skew.or(base.time_skew),
            max_age: self.max_age.or(base.max_age),
            force_url: self.force_url.clone().or_else(|| base.force_url.clone()),
            renew_window: self.renew_window.or(base.renew_window),
            use_nonce: self.use_nonce.or(base.use_nonce),
            startup_wait: self.startup_wait.or(base.startup_wait),
            request_method: self.request_method.or(base.request_method),
        }
    }
}

/// Settings that are only meaningful once, for the whole server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlobalSettings {
    /// `StaplingCache`, else `SSLStaplingCache` in compatibility mode.
    pub cache: Option<CacheSpec>,
    /// `SSLStaplingCache`, recorded but left to mod_ssl.
    pub compat_cache: Option<CacheSpec>,
    /// `StaplingStore`: `Some(None)` means `none`.
    pub store: Option<Option<String>>,
    /// `StaplingCompatibility`.
    pub compatibility: Option<bool>,
    /// `StaplingProxy`: every responder request goes through it.
    pub proxy: Option<Proxy>,
    /// `StaplingResponderCAFile`: CAs trusted for https:// responders, besides the system's.
    pub responder_ca_file: Option<String>,
    /// `StaplingResponderRate`: requests a second to one responder host; 0 for no limit.
    pub responder_rate: Option<u32>,
}

/// A parsed `StaplingCache` / `SSLStaplingCache` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSpec {
    /// Provider name, e.g. `shmcb`.
    pub provider: String,
    /// Size in bytes, when given as `(N)`.
    pub size: Option<usize>,
    /// Everything after `TYPE:`, e.g. `127.0.0.1:11211` for memcache.
    pub args: String,
}

/// socache providers shared between machines: as `StaplingCache` (or, in compatibility
/// mode, `SSLStaplingCache`) they become the fleet tier.
pub const FLEET_PROVIDERS: &[&str] = &["memcache", "redis", "dc"];

impl CacheSpec {
    /// True for a provider shared between machines (the fleet tier).
    pub fn is_shared(&self) -> bool {
        FLEET_PROVIDERS.contains(&self.provider.as_str())
    }

    /// `TYPE:ARGS` as written (lower-case type).
    pub fn describe(&self) -> String {
        if self.args.is_empty() {
            self.provider.clone()
        } else {
            format!("{}:{}", self.provider, self.args)
        }
    }

    /// The module an admin loads for this provider.
    pub fn module(&self) -> String {
        format!("socache_{0}_module (LoadModule socache_{0}_module modules/mod_socache_{0}.so)", self.provider)
    }
}

/// The whole configuration of one server record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerConfig {
    /// Set by `Stapling*` directives.
    pub own: Settings,
    /// Set by mod_ssl's `SSLStapling*` directives.
    pub compat: Settings,
    /// Only meaningful on the main server.
    pub global: GlobalSettings,
    /// `Stapling`/`SSLUseStapling` appeared inside this `<VirtualHost>` itself.
    pub switch_in_vhost: bool,
}

/// The values that govern one certificate, after inheritance and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// Stapling is on.
    pub enabled: bool,
    /// Connect + exchange timeout.
    pub responder_timeout: Duration,
    /// Tolerated skew.
    pub time_skew: Duration,
    /// Maximum response age.
    pub max_age: Option<Duration>,
    /// Responder URL override.
    pub force_url: Option<String>,
    /// When to refresh.
    pub renew_window: RenewWindow,
    /// Send a nonce.
    pub use_nonce: bool,
    /// How long a handshake may wait for the certificate's first response.
    pub startup_wait: Duration,
    /// GET, POST, or GET when small.
    pub request_method: RequestMethod,
}

impl ServerConfig {
    /// Inherit: the vhost's values win, the main server's fill the gaps.
    ///
    /// `Stapling` and `SSLUseStapling` are treated as one switch: a vhost that sets
    /// either one overrides whatever the main server set.
    pub fn merge(base: &ServerConfig, vhost: &ServerConfig) -> ServerConfig {
        let mut own = vhost.own.or(&base.own);
        let mut compat = vhost.compat.or(&base.compat);
        if vhost.own.enabled.is_some() || vhost.compat.enabled.is_some() {
            own.enabled = vhost.own.enabled;
            compat.enabled = vhost.compat.enabled;
        }
        // Global-only directives are refused inside <VirtualHost>, so the main server's
        // globals are the ones that count everywhere.
        ServerConfig { own, compat, global: base.global.clone(), switch_in_vhost: vhost.switch_in_vhost }
    }

    /// Resolve defaults; `compatibility` says whether mod_ssl's values count.
    pub fn effective(&self, compatibility: bool) -> Effective {
        let s = if compatibility { self.own.or(&self.compat) } else { self.own.clone() };
        Effective {
            enabled: s.enabled.unwrap_or(false),
            responder_timeout: s.responder_timeout.unwrap_or(DEFAULT_RESPONDER_TIMEOUT),
            time_skew: s.time_skew.unwrap_or(DEFAULT_TIME_SKEW),
            max_age: s.max_age.unwrap_or(None),
            force_url: s.force_url,
            renew_window: s.renew_window.unwrap_or(DEFAULT_RENEW_WINDOW),
            use_nonce: s.use_nonce.unwrap_or(false),
            startup_wait: s.startup_wait.unwrap_or(DEFAULT_STARTUP_WAIT),
            request_method: s.request_method.unwrap_or_default(),
        }
    }

    /// Compatibility mode is on unless `StaplingCompatibility Off` was given.
    pub fn compatibility(&self) -> bool {
        self.global.compatibility.unwrap_or(true)
    }

    /// The `StaplingCache` spec that caps the shared store (`SSLStaplingCache` does not).
    pub fn cache_spec(&self) -> Option<&CacheSpec> {
        self.global.cache.as_ref().filter(|c| !c.is_shared())
    }

    /// `StaplingResponderRate`, or its default.
    pub fn responder_rate(&self) -> u32 {
        self.global.responder_rate.unwrap_or(DEFAULT_RESPONDER_RATE)
    }

    /// The fleet tier: `StaplingCache memcache:…`/`redis:…`, else in compatibility mode
    /// the same in `SSLStaplingCache` (what the admin asked mod_ssl to share).
    pub fn fleet_spec(&self) -> Option<&CacheSpec> {
        let own = self.global.cache.as_ref().filter(|c| c.is_shared());
        let compat = self.global.compat_cache.as_ref().filter(|c| c.is_shared() && self.compatibility());
        own.or(compat)
    }

    /// Apply one directive. `name` is matched case-insensitively, as Apache does. `arg`
    /// is taken as written: Apache has already removed the spaces around it, so a space
    /// left inside (a quoted `" 5"`) makes the value wrong, not ignored.
    pub fn apply(&mut self, name: &str, arg: &str, ctx: Context) -> Result<Outcome, ConfigError> {
        let lname = name.to_ascii_lowercase();
        if ctx == Context::VirtualHost && (lname == "stapling" || lname == "sslusestapling") {
            self.switch_in_vhost = true;
        }
        if let Some(rest) = lname.strip_prefix("ssl") {
            return self.apply_compat(name, rest, arg, ctx);
        }
        match lname.as_str() {
            "stapling" => self.own.enabled = Some(parse_on_off(name, arg)?),
            "staplingrespondertimeout" => self.own.responder_timeout = Some(parse_timeout(name, arg)?),
            "staplingresponsetimeskew" => self.own.time_skew = Some(parse_skew(name, arg)?),
            "staplingresponsemaxage" => self.own.max_age = Some(parse_max_age(name, arg)?),
            "staplingforceurl" => self.own.force_url = Some(parse_url(name, arg)?),
            "staplingrenewwindow" => self.own.renew_window = Some(parse_renew_window(name, arg)?),
            "staplingusenonce" => self.own.use_nonce = Some(parse_on_off(name, arg)?),
            "staplingstartupwait" => self.own.startup_wait = Some(parse_startup_wait(name, arg)?),
            "staplingrequestmethod" => self.own.request_method = Some(parse_method(name, arg)?),
            "staplingproxy" => {
                global_only(name, ctx)?;
                self.global.proxy =
                    Some(Proxy::parse(arg, None).map_err(|e| ConfigError(format!("{name} '{}': {e}", shown(arg))))?);
            }
            "staplingresponderrate" => {
                global_only(name, ctx)?;
                let rate = digits(arg).and_then(|n| u32::try_from(n).ok()).filter(|n| *n <= MAX_RESPONDER_RATE);
                self.global.responder_rate = Some(rate.ok_or_else(|| {
                    ConfigError(format!(
                        "{name}: expected requests a second from 0 (no limit) to {MAX_RESPONDER_RATE}, got '{}'",
                        shown(arg)
                    ))
                })?);
            }
            "staplingrespondercafile" => {
                global_only(name, ctx)?;
                crate::ocsp::tls::read_ca_file(arg).map_err(|e| ConfigError(format!("{name}: {e}")))?;
                self.global.responder_ca_file = Some(arg.to_string());
            }
            "staplingcache" => {
                global_only(name, ctx)?;
                self.global.cache = Some(parse_cache(name, arg)?);
            }
            "staplingstore" => {
                global_only(name, ctx)?;
                self.global.store = Some(parse_store(name, arg)?);
            }
            "staplingcompatibility" => {
                global_only(name, ctx)?;
                self.global.compatibility = Some(parse_on_off(name, arg)?);
            }
            _ => return Err(ConfigError(format!("{name}: not a mod_stapling directive"))),
        }
        Ok(Outcome::Handled)
    }

    /// mod_ssl's directives, which mod_ssl parses as well. Every value mod_ssl accepts
    /// is accepted (mod_ssl reports the ones it refuses); where our range is narrower,
    /// or the text is not a plain number, the value used is said in a warn line.
    fn apply_compat(&mut self, name: &str, rest: &str, arg: &str, ctx: Context) -> Result<Outcome, ConfigError> {
        let seconds = |min: u64, max: u64, what: &str| compat_seconds(name, arg, min, max, what);
        match rest {
            "usestapling" => {
                if let Ok(v) = parse_on_off(name, arg) {
                    self.compat.enabled = Some(v);
                }
                Ok(Outcome::PassToModSsl)
            }
            "staplingrespondertimeout" => {
                let (v, note) = seconds(1, MAX_RESPONDER_TIMEOUT_SECS, "responder timeout");
                self.compat.responder_timeout = v.map(Duration::from_secs).or(self.compat.responder_timeout);
                Ok(note.map_or(Outcome::PassToModSsl, Outcome::AdjustedPassToModSsl))
            }
            "staplingresponsetimeskew" => {
                let (v, note) = seconds(0, MAX_SPAN_SECS, "time skew");
                self.compat.time_skew = v.map(Duration::from_secs).or(self.compat.time_skew);
                Ok(note.map_or(Outcome::PassToModSsl, Outcome::AdjustedPassToModSsl))
            }
            "staplingresponsemaxage" if arg == "-1" => {
                self.compat.max_age = Some(None);
                Ok(Outcome::PassToModSsl)
            }
            "staplingresponsemaxage" => {
                let (v, note) = seconds(1, MAX_SPAN_SECS, "maximum response age");
                self.compat.max_age = v.map(|v| Some(Duration::from_secs(v))).or(self.compat.max_age);
                Ok(note.map_or(Outcome::PassToModSsl, Outcome::AdjustedPassToModSsl))
            }
            "staplingforceurl" => match parse_url(name, arg) {
                Ok(v) => {
                    self.compat.force_url = Some(v);
                    Ok(Outcome::PassToModSsl)
                }
                Err(_) => Ok(Outcome::AdjustedPassToModSsl(format!(
                    "{name} '{}' is not an http:// or https:// URL: mod_stapling asks each certificate's own \
                     OCSP responder instead",
                    shown(arg)
                ))),
            },
            "staplingcache" => {
                let parsed = parse_cache(name, arg).ok().filter(|_| ctx == Context::Global);
                if let Some(spec) = parsed.as_ref().filter(|c| c.is_shared()) {
                    let shared = format!(
                        "{name} {}: mod_stapling shares responses through it too (the fleet tier), \
                         unless StaplingCompatibility is Off",
                        spec.describe()
                    );
                    self.global.compat_cache = parsed;
                    return Ok(Outcome::IgnoredPassToModSsl(shared));
                }
                if parsed.is_some() {
                    self.global.compat_cache = parsed;
                }
                // Its size was chosen for mod_ssl's cache format: capping our store by
                // it could drop certificates from a config that worked before.
                Ok(Outcome::IgnoredPassToModSsl(format!(
                    "{name} stays mod_ssl's: mod_stapling keeps responses in its own shared store, \
                     sized from the number of certificates (StaplingCache can cap it)"
                )))
            }
            "staplingstandardcachetimeout" | "staplingerrorcachetimeout" => Ok(Outcome::IgnoredPassToModSsl(format!(
                "{name} has no effect with mod_stapling: responses are kept until they \
                 are renewed or expire, and responder errors are never cached or stapled"
            ))),
            "staplingreturnrespondererrors" | "staplingfaketrylater" => Ok(Outcome::IgnoredPassToModSsl(format!(
                "{name} has no effect with mod_stapling: it never staples responder \
                 errors or fake tryLater answers, only verified good or revoked responses"
            ))),
            _ => Ok(Outcome::PassToModSsl),
        }
    }
}

fn global_only(name: &str, ctx: Context) -> Result<(), ConfigError> {
    match ctx {
        Context::Global => Ok(()),
        Context::VirtualHost => {
            Err(ConfigError(format!("{name} applies to the whole server: move it outside <VirtualHost>")))
        }
    }
}

fn parse_on_off(name: &str, arg: &str) -> Result<bool, ConfigError> {
    match arg.to_ascii_lowercase().as_str() {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(ConfigError(format!("{name}: expected On or Off, got '{}'", shown(arg)))),
    }
}

/// `arg` for an error line: control characters escaped, at most 60 characters.
fn shown(arg: &str) -> String {
    const MAX_CHARS: usize = 60;
    let mut out = String::new();
    for c in arg.chars().take(MAX_CHARS) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if arg.chars().nth(MAX_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// A whole number written as decimal digits only: no sign, space, unit, point or
/// prefix. `None` for anything else, and for a number too large for `u64`.
fn digits(arg: &str) -> Option<u64> {
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    arg.parse().ok()
}

/// `arg` as whole seconds from `min` to `max`.
fn seconds_in(arg: &str, min: u64, max: u64) -> Option<Duration> {
    digits(arg).filter(|n| (min..=max).contains(n)).map(Duration::from_secs)
}

/// "a whole number of seconds from 1 to 2592000 (30 days)".
fn seconds_range(min: u64) -> String {
    format!("a whole number of seconds from {min} to {MAX_SPAN_SECS} (30 days)")
}

fn parse_skew(name: &str, arg: &str) -> Result<Duration, ConfigError> {
    seconds_in(arg, 0, MAX_SPAN_SECS)
        .ok_or_else(|| ConfigError(format!("{name}: expected {}, got '{}'", seconds_range(0), shown(arg))))
}

fn parse_startup_wait(name: &str, arg: &str) -> Result<Duration, ConfigError> {
    seconds_in(arg, 0, MAX_STARTUP_WAIT_SECS).ok_or_else(|| {
        ConfigError(format!(
            "{name}: expected a whole number of seconds from 0 to {MAX_STARTUP_WAIT_SECS}, got '{}'",
            shown(arg)
        ))
    })
}

fn parse_timeout(name: &str, arg: &str) -> Result<Duration, ConfigError> {
    seconds_in(arg, 1, MAX_RESPONDER_TIMEOUT_SECS).ok_or_else(|| {
        ConfigError(format!(
            "{name}: expected a whole number of seconds from 1 to {MAX_RESPONDER_TIMEOUT_SECS}, got '{}'",
            shown(arg)
        ))
    })
}

fn parse_max_age(name: &str, arg: &str) -> Result<Option<Duration>, ConfigError> {
    if arg == "-1" {
        return Ok(None);
    }
    seconds_in(arg, 1, MAX_SPAN_SECS).map(Some).ok_or_else(|| {
        ConfigError(format!("{name}: expected -1 (no limit) or {}, got '{}'", seconds_range(1), shown(arg)))
    })
}

fn parse_url(name: &str, arg: &str) -> Result<String, ConfigError> {
    let bad = || {
        ConfigError(format!("{name}: expected an http:// or https:// URL of an OCSP responder, got '{}'", shown(arg)))
    };
    let lower = arg.to_ascii_lowercase();
    let rest = lower.strip_prefix("http://").or_else(|| lower.strip_prefix("https://")).ok_or_else(bad)?;
    if rest.is_empty() || rest.starts_with('/') || arg.contains(char::is_whitespace) {
        return Err(bad());
    }
    url::Url::parse(arg).map_err(|_| bad())?;
    Ok(arg.to_string())
}

fn parse_method(name: &str, arg: &str) -> Result<RequestMethod, ConfigError> {
    match arg.to_ascii_lowercase().as_str() {
        "auto" => Ok(RequestMethod::Auto),
        "get" => Ok(RequestMethod::Get),
        "post" => Ok(RequestMethod::Post),
        _ => Err(ConfigError(format!("{name}: expected auto, get or post, got '{}'", shown(arg)))),
    }
}

/// What C's `atoi` (mod_ssl's parser for these directives) reads from `arg`: leading
/// blanks, a sign, then digits up to the first other character; 0 if there are none.
fn atoi(arg: &str) -> i64 {
    let t = arg.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let n = t
        .bytes()
        .take_while(u8::is_ascii_digit)
        .fold(0i64, |n, d| n.saturating_mul(10).saturating_add(i64::from(d - b'0')));
    if negative {
        -n
    } else {
        n
    }
}

/// A mod_ssl seconds value, as mod_ssl reads it, held to `min..=max`. Returns the
/// seconds to use (`None` if mod_ssl itself refuses the value: it says so) and, if the
/// value used is not the one written, the warn line that says which it is.
fn compat_seconds(name: &str, arg: &str, min: u64, max: u64, what: &str) -> (Option<u64>, Option<String>) {
    let read = atoi(arg);
    if read < 0 || read > i64::from(i32::MAX) {
        return (None, None);
    }
    let read = read as u64;
    let used = read.clamp(min, max);
    let unit = |n: u64| if n == 1 { format!("{n} second") } else { format!("{n} seconds") };
    let limit = if used == min { "shortest" } else { "longest" };
    let note = match (digits(arg) == Some(read), used == read) {
        (true, true) => None,
        (true, false) => {
            Some(format!("{name} {read}: mod_stapling uses {}, its {limit} {what}, for this setting", unit(used)))
        }
        (false, same) => Some(format!(
            "{name} '{}' is not a whole number of seconds: mod_ssl reads it as {read}, and mod_stapling uses {}{}",
            shown(arg),
            unit(used),
            if same { String::new() } else { format!(", its {limit} {what}") }
        )),
    };
    (Some(used), note)
}

fn parse_renew_window(name: &str, arg: &str) -> Result<RenewWindow, ConfigError> {
    let window = match arg.strip_suffix('%') {
        Some(p) => {
            digits(p).and_then(|n| u8::try_from(n).ok()).filter(|n| (1..=99).contains(n)).map(RenewWindow::Percent)
        }
        None => seconds_in(arg, 1, MAX_SPAN_SECS).map(RenewWindow::Fixed),
    };
    window.ok_or_else(|| {
        ConfigError(format!(
            "{name}: expected a percentage from 1% to 99% or {}, got '{}'",
            seconds_range(1),
            shown(arg)
        ))
    })
}

fn parse_store(name: &str, arg: &str) -> Result<Option<String>, ConfigError> {
    if arg.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    if arg.is_empty() || arg.contains('\0') || arg.trim() != arg {
        return Err(ConfigError(format!("{name}: expected a directory or 'none', got '{}'", shown(arg))));
    }
    Ok(Some(arg.to_string()))
}

/// Providers that `SSLStaplingCache` accepts; only the size of `shmcb`/`shmht` matters to us.
const CACHE_PROVIDERS: &[&str] = &["shmcb", "shmht", "dbm", "dc", "memcache", "redis", "socache", "default"];

fn parse_cache(name: &str, arg: &str) -> Result<CacheSpec, ConfigError> {
    let bad = |why: &str| {
        ConfigError(format!(
            "{name}: {why}; expected TYPE[:ARGS], e.g. shmcb:/run/apache2/stapling(1048576), got '{}'",
            shown(arg)
        ))
    };
    let (provider, args) = match arg.split_once(':') {
        Some((p, a)) => (p.to_ascii_lowercase(), a),
        None => (arg.to_ascii_lowercase(), ""),
    };
    if !CACHE_PROVIDERS.contains(&provider.as_str()) {
        return Err(bad(&format!("unknown cache type '{}'", shown(&provider))));
    }
    let size = match (args.rfind('('), args.strip_suffix(')')) {
        (Some(open), Some(inner)) if provider.starts_with("shm") => {
            match digits(&inner[open + 1..]).and_then(|n| usize::try_from(n).ok()) {
                Some(n) if (MIN_CACHE_BYTES..=MAX_CACHE_BYTES).contains(&n) => Some(n),
                _ => {
                    return Err(bad(&format!(
                        "the size in parentheses must be a whole number of bytes from {MIN_CACHE_BYTES} \
                         to {MAX_CACHE_BYTES} (64 GiB)"
                    )))
                }
            }
        }
        (None, Some(_)) => return Err(bad("unbalanced parentheses")),
        _ => None,
    };
    Ok(CacheSpec { provider, size, args: args.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(cfg: &mut ServerConfig, name: &str, arg: &str) -> Result<Outcome, ConfigError> {
        cfg.apply(name, arg, Context::Global)
    }

    #[test]
    fn defaults() {
        let e = ServerConfig::default().effective(true);
        assert!(!e.enabled);
        assert_eq!(e.responder_timeout, Duration::from_secs(10));
        assert_eq!(e.time_skew, Duration::from_secs(300));
        assert_eq!(e.max_age, None);
        assert_eq!(e.force_url, None);
        assert_eq!(e.renew_window, RenewWindow::Percent(50));
        assert!(!e.use_nonce);
    }

    #[test]
    fn every_directive_parses() {
        let mut c = ServerConfig::default();
        for (n, a) in [
            ("Stapling", "on"),
            ("StaplingResponderTimeout", "3"),
            ("StaplingResponseTimeSkew", "60"),
            ("StaplingResponseMaxAge", "3600"),
            ("StaplingForceURL", "http://127.0.0.1:8888/ocsp"),
            ("StaplingRenewWindow", "25%"),
            ("StaplingUseNonce", "On"),
            ("StaplingCache", "shmcb:/run/apache2/stapling(256000)"),
            ("StaplingStore", "/var/cache/apache2/stapling"),
            ("StaplingCompatibility", "off"),
        ] {
            assert_eq!(apply(&mut c, n, a), Ok(Outcome::Handled), "{n}");
        }
        let e = c.effective(false);
        assert!(e.enabled && e.use_nonce);
        assert_eq!(e.responder_timeout, Duration::from_secs(3));
        assert_eq!(e.time_skew, Duration::from_secs(60));
        assert_eq!(e.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(e.force_url.as_deref(), Some("http://127.0.0.1:8888/ocsp"));
        assert_eq!(e.renew_window, RenewWindow::Percent(25));
        assert_eq!(c.cache_spec().unwrap().size, Some(256000));
        assert_eq!(c.global.store, Some(Some("/var/cache/apache2/stapling".into())));
        assert!(!c.compatibility());
        apply(&mut c, "StaplingRenewWindow", "7200").unwrap();
        apply(&mut c, "StaplingStore", "None").unwrap();
        apply(&mut c, "StaplingResponseMaxAge", "-1").unwrap();
        assert_eq!(c.effective(false).renew_window, RenewWindow::Fixed(Duration::from_secs(7200)));
        assert_eq!(c.global.store, Some(None));
        assert_eq!(c.effective(false).max_age, None);
    }

    #[test]
    fn every_bad_value_names_the_directive() {
        for (n, a) in [
            ("Stapling", "yes"),
            ("Stapling", ""),
            ("StaplingUseNonce", "1"),
            ("StaplingCompatibility", "maybe"),
            ("StaplingResponderTimeout", "0"),
            ("StaplingResponderTimeout", "-5"),
            ("StaplingResponderTimeout", "ten"),
            ("StaplingResponderTimeout", "301"),
            ("StaplingResponseTimeSkew", "-1"),
            ("StaplingResponseTimeSkew", "1.5"),
            ("StaplingResponseMaxAge", "0"),
            ("StaplingResponseMaxAge", "-2"),
            ("StaplingResponseMaxAge", "old"),
            ("StaplingForceURL", "ocsp.example.com"),
            ("StaplingForceURL", "ftp://x"),
            ("StaplingForceURL", "http://"),
            ("StaplingRenewWindow", "0%"),
            ("StaplingRenewWindow", "100%"),
            ("StaplingRenewWindow", "half"),
            ("StaplingRenewWindow", "0"),
            ("StaplingCache", "bogus:/x"),
            ("StaplingCache", "shmcb:/x(12)"),
            ("StaplingCache", "shmcb:/x(abc)"),
            ("StaplingCache", "shmcb:/x)"),
            ("StaplingStore", ""),
        ] {
            let err = apply(&mut ServerConfig::default(), n, a).expect_err(&format!("{n} {a}"));
            assert!(err.0.starts_with(&format!("{n}: ")), "{err}");
            assert!(!err.0.contains('\n'));
        }
    }

    #[test]
    fn global_only_directives_refuse_vhost_context() {
        for n in ["StaplingCache", "StaplingStore", "StaplingCompatibility"] {
            let err = ServerConfig::default().apply(n, "none", Context::VirtualHost).unwrap_err();
            assert!(err.0.starts_with(n) && err.0.contains("<VirtualHost>"), "{err}");
        }
        let mut v = ServerConfig::default();
        assert_eq!(v.apply("Stapling", "on", Context::VirtualHost), Ok(Outcome::Handled));
    }

    #[test]
    fn vhost_inherits_and_overrides() {
        let mut base = ServerConfig::default();
        apply(&mut base, "Stapling", "on").unwrap();
        apply(&mut base, "StaplingResponderTimeout", "4").unwrap();
        let mut vhost = ServerConfig::default();
        let merged = ServerConfig::merge(&base, &vhost).effective(true);
        assert!(merged.enabled);
        assert_eq!(merged.responder_timeout, Duration::from_secs(4));
        vhost.apply("Stapling", "off", Context::VirtualHost).unwrap();
        vhost.apply("StaplingForceURL", "http://r.example/", Context::VirtualHost).unwrap();
        let merged = ServerConfig::merge(&base, &vhost).effective(true);
        assert!(!merged.enabled);
        assert_eq!(merged.responder_timeout, Duration::from_secs(4));
        assert_eq!(merged.force_url.as_deref(), Some("http://r.example/"));
    }

    #[test]
    fn compat_directives_are_read_and_passed_on() {
        let mut base = ServerConfig::default();
        assert!(matches!(
            apply(&mut base, "SSLStaplingCache", "shmcb:/run/ocsp(32768)"),
            Ok(Outcome::IgnoredPassToModSsl(_))
        ));
        assert_eq!(apply(&mut base, "SSLStaplingResponderTimeout", "5"), Ok(Outcome::PassToModSsl));
        assert_eq!(apply(&mut base, "SSLUseStapling", "junk"), Ok(Outcome::PassToModSsl), "mod_ssl's to refuse");
        let mut vhost = ServerConfig::default();
        assert_eq!(vhost.apply("SSLUseStapling", "on", Context::VirtualHost), Ok(Outcome::PassToModSsl));
        let merged = ServerConfig::merge(&base, &vhost);
        let e = merged.effective(true);
        assert!(e.enabled);
        assert_eq!(e.responder_timeout, Duration::from_secs(5));
        assert_eq!(base.global.compat_cache.as_ref().unwrap().size, Some(32768));
        assert_eq!(base.cache_spec(), None, "SSLStaplingCache never caps our store");
        assert!(!merged.effective(false).enabled, "compatibility off ignores SSLUseStapling");
        for n in [
            "SSLStaplingStandardCacheTimeout",
            "SSLStaplingErrorCacheTimeout",
            "SSLStaplingReturnResponderErrors",
            "SSLStaplingFakeTryLater",
        ] {
            match apply(&mut base, n, "off") {
                Ok(Outcome::IgnoredPassToModSsl(why)) => assert!(why.starts_with(n)),
                other => panic!("{n}: {other:?}"),
            }
        }
    }

    #[test]
    fn own_directive_beats_compat() {
        let mut c = ServerConfig::default();
        apply(&mut c, "StaplingResponderTimeout", "2").unwrap();
        apply(&mut c, "SSLStaplingResponderTimeout", "9").unwrap();
        apply(&mut c, "SSLUseStapling", "on").unwrap();
        apply(&mut c, "Stapling", "off").unwrap();
        let e = c.effective(true);
        assert_eq!(e.responder_timeout, Duration::from_secs(2));
        assert!(!e.enabled);
    }

    #[test]
    fn vhost_ssl_use_stapling_beats_global_stapling_off() {
        let mut base = ServerConfig::default();
        apply(&mut base, "Stapling", "off").unwrap();
        let mut vhost = ServerConfig::default();
        vhost.apply("SSLUseStapling", "on", Context::VirtualHost).unwrap();
        assert!(ServerConfig::merge(&base, &vhost).effective(true).enabled);
    }
    /// Every numeric directive of ours, with the text of its range as the error line
    /// gives it. (mod_ssl's twins take whatever mod_ssl takes; see below.)
    const NUMERIC: &[(&str, &str)] = &[
        ("StaplingResponderTimeout", "from 1 to 300"),
        ("StaplingResponseTimeSkew", "from 0 to 2592000 (30 days)"),
        ("StaplingResponseMaxAge", "-1 (no limit) or a whole number of seconds from 1 to 2592000 (30 days)"),
        ("StaplingRenewWindow", "from 1% to 99% or a whole number of seconds from 1 to 2592000 (30 days)"),
        ("StaplingCache", "from 8192 to 68719476736 (64 GiB)"),
    ];

    /// The argument for `name` with `n` in the place of the number.
    fn numeric_arg(name: &str, n: &str) -> String {
        if name == "StaplingCache" {
            format!("shmcb:/run/stapling({n})")
        } else {
            n.to_string()
        }
    }

    fn assert_refused(name: &str, arg: &str, range: &str) {
        let err = apply(&mut ServerConfig::default(), name, arg).expect_err(&format!("{name} '{arg}' accepted"));
        assert!(err.0.starts_with(&format!("{name}: ")), "{err}");
        assert!(err.0.contains(range), "names the range: {err}");
        assert!(err.0.contains(&format!("'{}'", shown(arg))), "names the value: {err}");
        assert!(!err.0.contains('\n') && err.0.len() < 300, "one short line: {err}");
    }

    #[test]
    fn numeric_directives_accept_their_bounds() {
        let secs = Duration::from_secs;
        let check = |name: &str, arg: &str, want: &dyn Fn(&Effective) -> bool| {
            let mut c = ServerConfig::default();
            apply(&mut c, name, arg).unwrap_or_else(|e| panic!("{name} {arg}: {e}"));
            assert!(want(&c.effective(true)), "{name} {arg}: {:?}", c.effective(true));
        };
        for prefix in ["", "SSL"] {
            let n = |base: &str| format!("{prefix}{base}");
            check(&n("StaplingResponderTimeout"), "1", &|e| e.responder_timeout == secs(1));
            check(&n("StaplingResponderTimeout"), "300", &|e| e.responder_timeout == secs(300));
            check(&n("StaplingResponseTimeSkew"), "0", &|e| e.time_skew == secs(0));
            check(&n("StaplingResponseTimeSkew"), "2592000", &|e| e.time_skew == secs(MAX_SPAN_SECS));
            check(&n("StaplingResponseMaxAge"), "-1", &|e| e.max_age.is_none());
            check(&n("StaplingResponseMaxAge"), "1", &|e| e.max_age == Some(secs(1)));
            check(&n("StaplingResponseMaxAge"), "2592000", &|e| e.max_age == Some(secs(MAX_SPAN_SECS)));
        }
        check("StaplingRenewWindow", "1%", &|e| e.renew_window == RenewWindow::Percent(1));
        check("StaplingRenewWindow", "99%", &|e| e.renew_window == RenewWindow::Percent(99));
        check("StaplingRenewWindow", "1", &|e| e.renew_window == RenewWindow::Fixed(secs(1)));
        check("StaplingRenewWindow", "2592000", &|e| e.renew_window == RenewWindow::Fixed(secs(MAX_SPAN_SECS)));
        check("StaplingRenewWindow", "007%", &|e| e.renew_window == RenewWindow::Percent(7));
        for (arg, size) in [("shmcb:/x(8192)", MIN_CACHE_BYTES), ("shmht:/x(68719476736)", MAX_CACHE_BYTES)] {
            let mut c = ServerConfig::default();
            apply(&mut c, "StaplingCache", arg).unwrap();
            assert_eq!(c.cache_spec().unwrap().size, Some(size));
        }
    }

    #[test]
    fn numeric_directives_refuse_values_just_beyond_their_bounds() {
        for (name, range) in NUMERIC {
            let beyond: &[&str] = match name.trim_start_matches("SSL") {
                "StaplingResponderTimeout" => &["0", "301"],
                "StaplingResponseTimeSkew" => &["2592001"],
                "StaplingResponseMaxAge" => &["0", "-2", "2592001"],
                "StaplingRenewWindow" => &["0%", "100%", "0", "2592001"],
                _ => &["8191", "68719476737"],
            };
            for n in beyond {
                assert_refused(name, &numeric_arg(name, n), range);
            }
        }
    }

    #[test]
    fn malformed_and_huge_numbers_are_refused_never_wrapped() {
        let odd = [
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999999999999",
            "-5",
            "-0",
            "+5",
            " 5",
            "5 ",
            "5s",
            "5m",
            "0x10",
            "1e3",
            "5.0",
            "",
            "\u{0665}",
            "5\t",
        ];
        for (name, range) in NUMERIC {
            for n in odd {
                assert_refused(name, &numeric_arg(name, n), range);
            }
        }
        for p in ["+5%", " 5%", "5 %", "-5%", "256%", "18446744073709551617%", "%", "5%%"] {
            assert_refused("StaplingRenewWindow", p, "from 1% to 99%");
        }
    }

    /// Applies a mod_ssl directive; the warn line it gives, if any, and the effective values.
    fn compat(name: &str, arg: &str) -> (Option<String>, Effective) {
        let mut c = ServerConfig::default();
        let line = match apply(&mut c, name, arg).unwrap_or_else(|e| panic!("{name} {arg} refused: {e}")) {
            Outcome::PassToModSsl => None,
            Outcome::AdjustedPassToModSsl(line) => Some(line),
            other => panic!("{name} {arg}: {other:?}"),
        };
        (line, c.effective(true))
    }

    #[test]
    fn compat_values_beyond_our_range_are_clamped_and_said() {
        let secs = Duration::from_secs;
        type Check<'a> = dyn Fn(&Effective) -> bool + 'a;
        let cases: &[(&str, &str, &str, &Check<'_>)] = &[
            ("SSLStaplingResponderTimeout", "600", "uses 300 seconds", &|e| e.responder_timeout == secs(300)),
            ("SSLStaplingResponderTimeout", "0", "uses 1 second", &|e| e.responder_timeout == secs(1)),
            ("SSLStaplingResponderTimeout", "ten", "reads it as 0, and mod_stapling uses 1 second", &|e| {
                e.responder_timeout == secs(1)
            }),
            ("SSLStaplingResponderTimeout", "5s", "reads it as 5, and mod_stapling uses 5 seconds", &|e| {
                e.responder_timeout == secs(5)
            }),
            ("SSLStaplingResponseTimeSkew", "9999999", "uses 2592000 seconds", &|e| e.time_skew == secs(MAX_SPAN_SECS)),
            ("SSLStaplingResponseMaxAge", "0", "uses 1 second", &|e| e.max_age == Some(secs(1))),
            ("SSLStaplingResponseMaxAge", "2147483647", "uses 2592000 seconds", &|e| {
                e.max_age == Some(secs(MAX_SPAN_SECS))
            }),
            ("SSLStaplingForceURL", "ftp://x/", "each certificate's own OCSP responder", &|e| e.force_url.is_none()),
        ];
        for (name, arg, says, check) in cases {
            let (line, e) = compat(name, arg);
            let line = line.unwrap_or_else(|| panic!("{name} {arg}: no warn line"));
            assert!(line.starts_with(name) && line.contains(says), "{name} {arg}: {line}");
            assert!(!line.contains('\n') && line.len() < 300, "one line: {line}");
            assert!(check(&e), "{name} {arg}: {e:?}");
        }
    }

    #[test]
    fn compat_values_in_our_range_are_quiet_and_mod_ssl_refusals_are_left_to_it() {
        let (line, e) = compat("SSLStaplingResponderTimeout", "300");
        assert_eq!((line, e.responder_timeout), (None, Duration::from_secs(300)));
        let (line, e) = compat("SSLStaplingForceURL", "https://ocsp.example/");
        assert_eq!((line, e.force_url.as_deref()), (None, Some("https://ocsp.example/")));
        // mod_ssl refuses negatives itself ("invalid argument"): nothing recorded, no line.
        for (name, arg) in [("SSLStaplingResponseTimeSkew", "-5"), ("SSLStaplingResponderTimeout", "99999999999")] {
            let mut c = ServerConfig::default();
            assert_eq!(apply(&mut c, name, arg), Ok(Outcome::PassToModSsl));
            assert_eq!(c, ServerConfig::default(), "{name} {arg}");
        }
        // SSLStaplingCache is mod_ssl's: its size is not ours to judge.
        assert!(matches!(
            apply(&mut ServerConfig::default(), "SSLStaplingCache", "shmcb:/x(4000000000)"),
            Ok(Outcome::IgnoredPassToModSsl(_))
        ));
    }

    #[test]
    fn atoi_reads_as_c_does() {
        for (text, n) in [("5", 5), (" 5", 5), ("+5", 5), ("-5", -5), ("5s", 5), ("ten", 0), ("", 0), ("0x10", 0)] {
            assert_eq!(atoi(text), n, "{text:?}");
        }
        assert_eq!(atoi("99999999999999999999999"), i64::MAX);
    }

    #[test]
    fn reach_directives() {
        let mut c = ServerConfig::default();
        apply(&mut c, "StaplingProxy", "http://u:p@proxy.example:3128").unwrap();
        assert_eq!(c.global.proxy.as_ref().unwrap().to_string(), "http://u:***@proxy.example:3128");
        let err = apply(&mut c, "StaplingProxy", "proxy.example").unwrap_err();
        assert!(err.0.contains("no port"), "{err}");
        assert!(c.apply("StaplingProxy", "http://p:1", Context::VirtualHost).is_err(), "server-wide only");
        apply(&mut c, "StaplingRequestMethod", "POST").unwrap();
        assert_eq!(c.effective(true).request_method, RequestMethod::Post);
        assert!(apply(&mut c, "StaplingRequestMethod", "put").is_err());
        assert_eq!(ServerConfig::default().effective(true).request_method, RequestMethod::Auto);
        let err = apply(&mut c, "StaplingResponderCAFile", "/nonexistent/ca.pem").unwrap_err();
        assert!(err.0.starts_with("StaplingResponderCAFile: cannot read /nonexistent/ca.pem"), "{err}");
        apply(&mut c, "StaplingForceURL", "https://ocsp.example:8443/").unwrap();
    }

    #[test]
    fn a_long_or_odd_value_is_shown_short_on_one_line() {
        let long = "9".repeat(5000);
        let err = apply(&mut ServerConfig::default(), "StaplingResponseTimeSkew", &long).unwrap_err();
        assert!(err.0.len() < 200 && err.0.ends_with("...'"), "{err}");
        let err = apply(&mut ServerConfig::default(), "StaplingStore", " /x\r\n").unwrap_err();
        assert!(!err.0.contains(['\r', '\n']) && err.0.contains("\\r\\n"), "{err}");
    }
}
