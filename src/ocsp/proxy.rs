//! Which HTTP proxy a responder request goes through: `StaplingProxy` for every
//! request, else the environment's `http_proxy`/`https_proxy` and `no_proxy`, read the
//! way curl reads them. Pure: the environment is passed in.

use std::fmt;
use std::net::IpAddr;

/// Port of a proxy URL from the environment that names none (curl's default).
const DEFAULT_ENV_PROXY_PORT: u16 = 1080;

/// An HTTP proxy: `http://[user[:password]@]host[:port]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    user: Option<String>,
    password: Option<String>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string())
    }
}

/// The proxy's URL for log lines: the password is never shown.
impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("http://")?;
        if let Some(user) = &self.user {
            write!(f, "{user}{}@", if self.password.is_some() { ":***" } else { "" })?;
        }
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => write!(f, "[{}]:{}", self.host, self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

impl Proxy {
    /// Parses a proxy URL. `default_port` is used when the URL names no port; `None`
    /// makes the port required (`StaplingProxy`, where a guess would hide a mistake).
    pub fn parse(text: &str, default_port: Option<u16>) -> Result<Proxy, String> {
        let with_scheme = if text.contains("://") { text.to_string() } else { format!("http://{text}") };
        let url = url::Url::parse(&with_scheme).map_err(|e| format!("not a URL ({e})"))?;
        if url.scheme() != "http" {
            return Err(format!("the proxy must be an http:// URL, not {}://", url.scheme()));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err("a proxy URL has no path: give http://host:port".into());
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => return Err("no host".into()),
        };
        // Url drops a port equal to the scheme's default, so look at what was written.
        let authority = with_scheme.split("://").nth(1).unwrap_or("").split('/').next().unwrap_or("");
        let written_port = url.port().or_else(|| authority.ends_with(":80").then_some(80));
        let port = written_port.or(default_port).ok_or("no port: give http://host:port")?;
        let decode = |s: &str| percent_decode(s).ok_or_else(|| "bad %-escape in the user or password".to_string());
        let user = (!url.username().is_empty()).then(|| decode(url.username())).transpose()?;
        let password = url.password().map(decode).transpose()?;
        Ok(Proxy { host, port, user, password })
    }

    /// The `Proxy-Authorization` value, if the URL carries credentials.
    pub fn authorization(&self) -> Option<String> {
        let user = self.user.as_deref()?;
        let credentials = format!("{user}:{}", self.password.as_deref().unwrap_or(""));
        Some(format!("Basic {}", openssl::base64::encode_block(credentials.as_bytes())))
    }

    /// The URL ureq's proxy parser reads (credentials as given, for CONNECT).
    pub fn for_ureq(&self) -> String {
        let host = match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{}]", self.host),
            _ => self.host.clone(),
        };
        match (&self.user, &self.password) {
            (Some(u), Some(p)) => format!("http://{u}:{p}@{host}:{}", self.port),
            _ => format!("http://{host}:{}", self.port),
        }
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Where the proxy setting came from, for the startup line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `StaplingProxy`.
    Directive,
    /// This environment variable.
    Environment(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Directive => f.write_str("StaplingProxy"),
            Origin::Environment(var) => write!(f, "{var} in Apache's environment"),
        }
    }
}

/// The proxy choice for every responder request of a generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyPolicy {
    http: Option<(Proxy, Origin)>,
    https: Option<(Proxy, Origin)>,
    no_proxy: Vec<String>,
}

/// Environment variables read for each responder scheme, in order.
const HTTP_VARS: [&str; 2] = ["http_proxy", "HTTP_PROXY"];
const HTTPS_VARS: [&str; 2] = ["https_proxy", "HTTPS_PROXY"];
const NO_PROXY_VARS: [&str; 2] = ["no_proxy", "NO_PROXY"];

impl ProxyPolicy {
    /// `StaplingProxy` if given (for every request); else the environment through
    /// `env`: `http_proxy` for http:// responders, `https_proxy` (else `http_proxy`)
    /// for https:// ones, minus the hosts in `no_proxy`. Returns the lines to warn
    /// about (an environment proxy that cannot be used).
    pub fn new(directive: Option<Proxy>, env: impl Fn(&str) -> Option<String>) -> (ProxyPolicy, Vec<String>) {
        if let Some(p) = directive {
            let both = Some((p, Origin::Directive));
            return (ProxyPolicy { http: both.clone(), https: both, no_proxy: Vec::new() }, Vec::new());
        }
        let mut warnings = Vec::new();
        let mut from = |vars: [&'static str; 2]| {
            let (var, value) = vars.iter().find_map(|v| env(v).filter(|s| !s.trim().is_empty()).map(|s| (*v, s)))?;
            match Proxy::parse(value.trim(), Some(DEFAULT_ENV_PROXY_PORT)) {
                Ok(p) => Some((p, Origin::Environment(var))),
                Err(e) => {
                    warnings.push(format!(
                        "{var} in Apache's environment is not usable ({e}); responders are asked directly. \
                         Fix it, or set StaplingProxy"
                    ));
                    None
                }
            }
        };
        let http = from(HTTP_VARS);
        let https = from(HTTPS_VARS).or_else(|| http.clone());
        let no_proxy = NO_PROXY_VARS
            .iter()
            .find_map(|v| env(v))
            .map(|list| list.split(',').map(|e| e.trim().to_ascii_lowercase()).filter(|e| !e.is_empty()).collect())
            .unwrap_or_default();
        (ProxyPolicy { http, https, no_proxy }, warnings)
    }

    /// The proxy for a request to `host` over `scheme` (`http` or `https`).
    pub fn for_target(&self, scheme: &str, host: &str) -> Option<&Proxy> {
        let chosen = if scheme.eq_ignore_ascii_case("https") { &self.https } else { &self.http };
        let (proxy, origin) = chosen.as_ref()?;
        if *origin != Origin::Directive && self.bypassed(host) {
            return None;
        }
        Some(proxy)
    }

    fn bypassed(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase();
        self.no_proxy.iter().any(|entry| no_proxy_matches(entry, &host))
    }

    /// The line said at startup (info), or `None` when responders are asked directly.
    pub fn describe(&self) -> Option<String> {
        let said = |(p, o): &(Proxy, Origin)| format!("{p} (from {o})");
        let what = match (&self.http, &self.https) {
            (None, None) => return None,
            (Some(a), Some(b)) if a == b => format!("responder requests go through the HTTP proxy {}", said(a)),
            (a, b) => format!(
                "http:// responders are asked {}; https:// responders {}",
                a.as_ref().map_or("directly".into(), |a| format!("through {}", said(a))),
                b.as_ref().map_or("directly".into(), |b| format!("through {}", said(b)))
            ),
        };
        Some(if self.no_proxy.is_empty() {
            what
        } else {
            format!("{what}; except hosts in no_proxy ({})", self.no_proxy.join(","))
        })
    }
}

/// curl's no_proxy rules: `*` is every host; an address or CIDR block matches
/// addresses; a name matches itself and its subdomains (a leading dot is optional);
/// a `:port` suffix is ignored.
fn no_proxy_matches(entry: &str, host: &str) -> bool {
    if entry == "*" {
        return true;
    }
    if let Some((net, bits)) = entry.split_once('/') {
        return match (net.parse::<IpAddr>(), bits.parse::<u8>(), host.parse::<IpAddr>()) {
            (Ok(net), Ok(bits), Ok(addr)) => in_block(addr, net, bits),
            _ => false,
        };
    }
    let entry = entry.trim_start_matches('[');
    let entry = match entry.split_once(']') {
        Some((v6, _)) => v6,
        None if entry.matches(':').count() == 1 => entry.split(':').next().unwrap_or(entry),
        None => entry,
    };
    let entry = entry.trim_start_matches('.');
    if let (Ok(a), Ok(b)) = (entry.parse::<IpAddr>(), host.parse::<IpAddr>()) {
        return a == b;
    }
    host == entry || host.strip_suffix(entry).is_some_and(|rest| rest.ends_with('.'))
}

fn in_block(addr: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (a, n, width) = match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u128::from(u32::from(a)), u128::from(u32::from(n)), 32),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        _ => return false,
    };
    if bits > width {
        return false;
    }
    let shift = u32::from(width - bits);
    bits == 0 || (a >> shift) == (n >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn proxy_urls_parse_and_hide_the_password() {
        let p = Proxy::parse("http://alice:s%40cret@proxy.example:3128/", None).unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.example", 3128));
        assert_eq!(p.to_string(), "http://alice:***@proxy.example:3128");
        assert_eq!(p.authorization().unwrap(), format!("Basic {}", openssl::base64::encode_block(b"alice:s@cret")));
        assert_eq!(Proxy::parse("10.0.0.1:8080", None).unwrap().to_string(), "http://10.0.0.1:8080");
        assert_eq!(Proxy::parse("http://[::1]:3128", None).unwrap().to_string(), "http://[::1]:3128");
        assert_eq!(Proxy::parse("http://proxy:80", None).unwrap().port, 80);
        assert_eq!(Proxy::parse("http://proxy", Some(1080)).unwrap().port, 1080);
        for bad in ["http://proxy", "https://proxy:443", "socks5://p:1", "http://p:3128/path", "http://:3128", "::"] {
            assert!(Proxy::parse(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_directive_wins_over_the_environment_and_ignores_no_proxy() {
        let directive = Proxy::parse("http://d:1", None).unwrap();
        let (p, w) = ProxyPolicy::new(Some(directive), env(&[("http_proxy", "http://e:2"), ("no_proxy", "*")]));
        assert!(w.is_empty());
        assert_eq!(p.for_target("http", "ocsp.ca").unwrap().host, "d");
        assert_eq!(p.for_target("https", "ocsp.ca").unwrap().host, "d");
        assert!(p.describe().unwrap().contains("http://d:1 (from StaplingProxy)"));
    }

    #[test]
    fn the_environment_is_read_per_scheme_with_no_proxy() {
        let vars = [("HTTP_PROXY", "e:3128"), ("no_proxy", "internal.example, .corp,10.0.0.0/8,[::1],localhost:80")];
        let (p, _) = ProxyPolicy::new(None, env(&vars));
        assert_eq!(p.for_target("http", "ocsp.ca").unwrap().to_string(), "http://e:3128");
        assert_eq!(p.for_target("https", "ocsp.ca").unwrap().host, "e", "https falls back to http_proxy");
        for direct in ["internal.example", "ocsp.internal.example", "a.corp", "10.1.2.3", "::1", "[::1]", "localhost"] {
            assert!(p.for_target("http", direct).is_none(), "{direct}");
        }
        for proxied in ["notinternal.example", "corp.example", "11.0.0.1", "127.0.0.1"] {
            assert!(p.for_target("http", proxied).is_some(), "{proxied}");
        }
        let (p, _) = ProxyPolicy::new(None, env(&[("http_proxy", "h:1"), ("https_proxy", "s:2")]));
        assert_eq!(p.for_target("https", "x").unwrap().host, "s");
        assert!(p.describe().unwrap().contains("https:// responders through http://s:2 (from https_proxy"));
    }

    #[test]
    fn no_proxy_star_and_nothing_set() {
        let (p, _) = ProxyPolicy::new(None, env(&[("http_proxy", "h:1"), ("NO_PROXY", "*")]));
        assert!(p.for_target("http", "anything").is_none());
        let (p, w) = ProxyPolicy::new(None, env(&[]));
        assert!(p.for_target("http", "x").is_none() && p.describe().is_none() && w.is_empty());
    }

    #[test]
    fn an_unusable_environment_proxy_is_said_and_skipped() {
        let (p, w) = ProxyPolicy::new(None, env(&[("http_proxy", "socks5://s:1")]));
        assert!(p.for_target("http", "x").is_none());
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("http_proxy in Apache's environment is not usable"), "{w:?}");
    }
}
