//! Directive parsing and per-server configuration merge. Pure Rust: no FFI types.
//!
//! Each server (the main server and every vhost) has a [`ServerConfig`]. Values set by
//! our own `Stapling*` directives and values read from mod_ssl's `SSLStapling*`
//! directives (compatibility mode) are kept apart, so that our own always win and so
//! that compatibility mode can be switched off after the fact.

use std::fmt;
use std::time::Duration;

/// Default seconds to wait for a responder.
pub const DEFAULT_RESPONDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default tolerated clock skew.
pub const DEFAULT_TIME_SKEW: Duration = Duration::from_secs(300);
/// Default renew window: refresh when half of the validity is left.
pub const DEFAULT_RENEW_WINDOW: RenewWindow = RenewWindow::Percent(50);
/// Largest responder timeout we accept: a longer one would stall startup.
const MAX_RESPONDER_TIMEOUT_SECS: u64 = 300;

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
}

/// A parsed `StaplingCache` / `SSLStaplingCache` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSpec {
    /// Provider name, e.g. `shmcb`.
    pub provider: String,
    /// Size in bytes, when given as `(N)`.
    pub size: Option<usize>,
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
        }
    }

    /// Compatibility mode is on unless `StaplingCompatibility Off` was given.
    pub fn compatibility(&self) -> bool {
        self.global.compatibility.unwrap_or(true)
    }

    /// The `StaplingCache` spec that caps the shared store (`SSLStaplingCache` does not).
    pub fn cache_spec(&self) -> Option<&CacheSpec> {
        self.global.cache.as_ref()
    }

    /// Apply one directive. `name` is matched case-insensitively, as Apache does.
    pub fn apply(&mut self, name: &str, arg: &str, ctx: Context) -> Result<Outcome, ConfigError> {
        let arg = arg.trim();
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
            "staplingresponsetimeskew" => self.own.time_skew = Some(parse_seconds(name, arg)?),
            "staplingresponsemaxage" => self.own.max_age = Some(parse_max_age(name, arg)?),
            "staplingforceurl" => self.own.force_url = Some(parse_url(name, arg)?),
            "staplingrenewwindow" => self.own.renew_window = Some(parse_renew_window(name, arg)?),
            "staplingusenonce" => self.own.use_nonce = Some(parse_on_off(name, arg)?),
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

    /// mod_ssl's directives. mod_ssl validates them itself; we record what we can use
    /// and leave the rest to it, so a value it accepts never breaks our parse.
    fn apply_compat(&mut self, name: &str, rest: &str, arg: &str, ctx: Context) -> Result<Outcome, ConfigError> {
        let lenient = |r: Result<(), ConfigError>| {
            // mod_ssl reports bad values with its own message.
            let _ = r;
            Ok(Outcome::PassToModSsl)
        };
        match rest {
            "usestapling" => lenient(parse_on_off(name, arg).map(|v| self.compat.enabled = Some(v))),
            "staplingrespondertimeout" => {
                lenient(parse_timeout(name, arg).map(|v| self.compat.responder_timeout = Some(v)))
            }
            "staplingresponsetimeskew" => lenient(parse_seconds(name, arg).map(|v| self.compat.time_skew = Some(v))),
            "staplingresponsemaxage" => lenient(parse_max_age(name, arg).map(|v| self.compat.max_age = Some(v))),
            "staplingforceurl" => lenient(parse_url(name, arg).map(|v| self.compat.force_url = Some(v))),
            "staplingcache" => {
                if ctx == Context::Global {
                    let _ = parse_cache(name, arg).map(|v| self.global.compat_cache = Some(v));
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
        _ => Err(ConfigError(format!("{name}: expected On or Off, got '{arg}'"))),
    }
}

fn parse_seconds(name: &str, arg: &str) -> Result<Duration, ConfigError> {
    arg.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| ConfigError(format!("{name}: expected a whole number of seconds (0 or more), got '{arg}'")))
}

fn parse_timeout(name: &str, arg: &str) -> Result<Duration, ConfigError> {
    match arg.parse::<u64>() {
        Ok(n) if (1..=MAX_RESPONDER_TIMEOUT_SECS).contains(&n) => Ok(Duration::from_secs(n)),
        _ => Err(ConfigError(format!(
            "{name}: expected a number of seconds from 1 to {MAX_RESPONDER_TIMEOUT_SECS}, got '{arg}'"
        ))),
    }
}

fn parse_max_age(name: &str, arg: &str) -> Result<Option<Duration>, ConfigError> {
    match arg.parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(n) if n > 0 => Ok(Some(Duration::from_secs(n as u64))),
        _ => Err(ConfigError(format!(
            "{name}: expected a number of seconds greater than 0, or -1 for no limit, got '{arg}'"
        ))),
    }
}

fn parse_url(name: &str, arg: &str) -> Result<String, ConfigError> {
    let lower = arg.to_ascii_lowercase();
    // OCSP is fetched over plain HTTP (RFC 6960 A.1): the response is signed.
    match lower.strip_prefix("http://") {
        Some(h) if !h.is_empty() && !h.starts_with('/') && !arg.contains(char::is_whitespace) => Ok(arg.to_string()),
        _ => Err(ConfigError(format!("{name}: expected an http:// URL of an OCSP responder, got '{arg}'"))),
    }
}

fn parse_renew_window(name: &str, arg: &str) -> Result<RenewWindow, ConfigError> {
    let bad =
        || ConfigError(format!("{name}: expected a percentage from 1% to 99% or a number of seconds, got '{arg}'"));
    if let Some(p) = arg.strip_suffix('%') {
        return match p.trim().parse::<u8>() {
            Ok(n) if (1..=99).contains(&n) => Ok(RenewWindow::Percent(n)),
            _ => Err(bad()),
        };
    }
    match arg.parse::<u64>() {
        Ok(n) if n > 0 => Ok(RenewWindow::Fixed(Duration::from_secs(n))),
        _ => Err(bad()),
    }
}

fn parse_store(name: &str, arg: &str) -> Result<Option<String>, ConfigError> {
    if arg.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    if arg.is_empty() || arg.contains('\0') {
        return Err(ConfigError(format!("{name}: expected a directory or 'none', got '{arg}'")));
    }
    Ok(Some(arg.to_string()))
}

/// Providers that `SSLStaplingCache` accepts; only the size of `shmcb`/`shmht` matters to us.
const CACHE_PROVIDERS: &[&str] = &["shmcb", "shmht", "dbm", "dc", "memcache", "redis", "socache", "default"];

fn parse_cache(name: &str, arg: &str) -> Result<CacheSpec, ConfigError> {
    let bad = |why: &str| {
        ConfigError(format!(
            "{name}: {why}; expected TYPE[:ARGS], e.g. shmcb:/run/apache2/stapling(128000), got '{arg}'"
        ))
    };
    let (provider, args) = match arg.split_once(':') {
        Some((p, a)) => (p.to_ascii_lowercase(), a),
        None => (arg.to_ascii_lowercase(), ""),
    };
    if !CACHE_PROVIDERS.contains(&provider.as_str()) {
        return Err(bad(&format!("unknown cache type '{provider}'")));
    }
    let size = match (args.rfind('('), args.ends_with(')')) {
        (Some(open), true) if provider.starts_with("shm") => {
            let digits = &args[open + 1..args.len() - 1];
            match digits.trim().parse::<usize>() {
                Ok(n) if n >= 8192 => Some(n),
                _ => return Err(bad("the size in parentheses must be a number of bytes, at least 8192")),
            }
        }
        (None, false) | (Some(_), true) | (Some(_), false) => None,
        (None, true) => return Err(bad("unbalanced parentheses")),
    };
    Ok(CacheSpec { provider, size })
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
        assert_eq!(apply(&mut base, "SSLStaplingResponderTimeout", "junk"), Ok(Outcome::PassToModSsl));
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
}
