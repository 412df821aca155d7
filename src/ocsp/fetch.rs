//! HTTP transport to the responder (RFC 6960 appendix A.1, POST).

use std::fmt;
use std::io::Read;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use openssl::x509::X509;

use super::proxy::{Proxy, ProxyPolicy};
use super::tls::{ResponderTls, TlsRefused};
use crate::failure::Failure;

/// Largest response body we read. Real responses are a few KiB.
pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// Why a fetch produced no bytes to validate. Typed, so that the cause recorded in the
/// shared store (and the advice in the log) is exact, not guessed from text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// DNS, connect refused, reset: the responder could not be reached (the detail).
    Unreachable(String),
    /// No answer within `StaplingResponderTimeout`.
    Timeout,
    /// The responder answered with a status other than 200.
    HttpStatus(u16, String),
    /// The answer is not labelled application/ocsp-response (its Content-Type).
    WrongContentType(String),
    /// The body is larger than [`MAX_RESPONSE_BYTES`].
    TooLarge,
    /// Reading the body failed (the detail).
    Body(String),
    /// This process is stopping: the fetch was abandoned.
    Abandoned,
    /// The proxy (shown without its password) could not be reached or refused (why).
    Proxy(String, String),
    /// The TLS handshake with an https:// responder failed (why).
    Tls(String),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Unreachable(e) => write!(f, "transport error ({e})"),
            FetchError::Timeout => f.write_str("no answer within StaplingResponderTimeout"),
            FetchError::HttpStatus(code, text) if text.is_empty() => write!(f, "HTTP {code}"),
            FetchError::HttpStatus(code, text) => write!(f, "HTTP {code} {text}"),
            FetchError::WrongContentType(ct) => {
                write!(f, "wrong Content-Type '{ct}', expected application/ocsp-response")
            }
            FetchError::TooLarge => write!(f, "response larger than {MAX_RESPONSE_BYTES} bytes"),
            FetchError::Body(e) => write!(f, "reading the response body: {e}"),
            FetchError::Abandoned => f.write_str("abandoned: this process is stopping"),
            FetchError::Proxy(proxy, why) => write!(f, "proxy {proxy}: {why}"),
            FetchError::Tls(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for FetchError {}

impl FetchError {
    /// The failure cause recorded in the shared store.
    pub fn failure(&self) -> Failure {
        match self {
            FetchError::Unreachable(_) | FetchError::Abandoned => Failure::Unreachable,
            FetchError::Timeout => Failure::Timeout,
            FetchError::HttpStatus(code, _) => Failure::HttpStatus(*code),
            FetchError::WrongContentType(_) | FetchError::TooLarge | FetchError::Body(_) => Failure::NotOcsp,
            FetchError::Proxy(..) => Failure::Proxy,
            FetchError::Tls(_) => Failure::Tls,
        }
    }

    /// Classifies ureq's error; `proxy` is the proxy the request went through, if any.
    fn from_ureq(e: ureq::Error, proxy: Option<&Proxy>) -> FetchError {
        match (e, proxy) {
            (ureq::Error::Status(407, _), Some(p)) => FetchError::Proxy(
                p.to_string(),
                "HTTP 407: the proxy wants a user and password; give them in the proxy URL".into(),
            ),
            (ureq::Error::Status(code, r), _) => FetchError::HttpStatus(code, r.status_text().to_string()),
            (ureq::Error::Transport(t), proxy) => FetchError::from_transport(&t, proxy),
        }
    }

    /// Classifies a ureq transport error: timeouts surface as I/O errors of kind
    /// TimedOut/WouldBlock; everything else before an answer is "unreachable".
    fn from_transport(t: &ureq::Transport, proxy: Option<&Proxy>) -> FetchError {
        let io = std::error::Error::source(t).and_then(|e| e.downcast_ref::<std::io::Error>());
        if let Some(refused) = io.and_then(|io| io.get_ref()).and_then(|e| e.downcast_ref::<TlsRefused>()) {
            return FetchError::Tls(refused.0.clone());
        }
        if let Some(p) = proxy {
            let why = match t.kind() {
                ureq::ErrorKind::ProxyUnauthorized => Some("it refused the credentials (HTTP 407)".to_string()),
                ureq::ErrorKind::ProxyConnect => Some("it refused to CONNECT to the responder".to_string()),
                ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns => {
                    Some(format!("cannot connect to the proxy ({})", transport_detail(t)))
                }
                _ => None,
            };
            if let Some(why) = why {
                return FetchError::Proxy(p.to_string(), why);
            }
        }
        let timed_out = std::error::Error::source(t)
            .and_then(|e| e.downcast_ref::<std::io::Error>())
            .is_some_and(|io| is_timeout(io.kind()));
        if timed_out {
            return FetchError::Timeout;
        }
        FetchError::Unreachable(transport_detail(t))
    }
}

/// ureq's Display repeats the kind ("Network Error: Network Error: ..."), also inside
/// the cause; say the kind once, then what is left of the cause.
fn transport_detail(t: &ureq::Transport) -> String {
    let kind = t.kind().to_string();
    let detail = std::error::Error::source(t).map(|e| e.to_string()).or_else(|| t.message().map(str::to_string));
    match detail.as_deref().map(|d| without_prefix(d, &kind)) {
        Some(rest) if !rest.is_empty() && rest != kind => format!("{kind}: {rest}"),
        _ => kind,
    }
}

/// `text` without any number of leading "`kind`: " repetitions.
fn without_prefix<'a>(mut text: &'a str, kind: &str) -> &'a str {
    while let Some(rest) = text.strip_prefix(kind).and_then(|r| r.strip_prefix(": ")) {
        text = rest;
    }
    text
}

fn is_timeout(kind: std::io::ErrorKind) -> bool {
    matches!(kind, std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
}

/// How a request is sent (`StaplingRequestMethod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestMethod {
    /// GET when the base64 of the request is under 255 bytes (RFC 5019 §5), else POST.
    #[default]
    Auto,
    /// Always GET (RFC 6960 A.1), whatever the size.
    Get,
    /// Always POST.
    Post,
}

impl fmt::Display for RequestMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestMethod::Auto => "auto",
            RequestMethod::Get => "get",
            RequestMethod::Post => "post",
        })
    }
}

/// RFC 5019 §5: GET only for requests whose base64 encoding is shorter than this.
const GET_LIMIT: usize = 255;

/// One request to a responder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The responder URL (`http://` or `https://`).
    pub url: String,
    /// The DER OCSPRequest.
    pub request: Vec<u8>,
    /// Bounds the connect and the whole exchange.
    pub timeout: Duration,
    /// GET, POST, or chosen by size.
    pub method: RequestMethod,
}

impl Exchange {
    /// The GET URL (`url/` + URL-encoded base64 of the request) when the request goes
    /// as GET; `None` for POST.
    pub fn get_url(&self) -> Option<String> {
        let b64 = openssl::base64::encode_block(&self.request);
        let get = match self.method {
            RequestMethod::Get => true,
            RequestMethod::Post => false,
            RequestMethod::Auto => b64.len() < GET_LIMIT,
        };
        get.then(|| {
            let slash = if self.url.ends_with('/') { "" } else { "/" };
            format!("{}{slash}{}", self.url, url_encode(&b64))
        })
    }
}

/// base64's `+`, `/` and `=` are reserved in a URL path.
fn url_encode(b64: &str) -> String {
    b64.chars()
        .map(|c| match c {
            '+' => "%2B".to_string(),
            '/' => "%2F".to_string(),
            '=' => "%3D".to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// Reaches responders: the proxy choice and the TLS trust of one generation. The TLS
/// context is made on the first `https://` fetch, in the process that fetches.
pub struct Client {
    proxies: ProxyPolicy,
    extra_cas: Vec<X509>,
    tls: OnceLock<Result<Arc<ResponderTls>, String>>,
}

impl Default for Client {
    fn default() -> Client {
        Client::new(ProxyPolicy::default(), Vec::new())
    }
}

impl Client {
    /// A client that goes through `proxies` and trusts the system's CAs plus `extra_cas`.
    pub fn new(proxies: ProxyPolicy, extra_cas: Vec<X509>) -> Client {
        Client { proxies, extra_cas, tls: OnceLock::new() }
    }

    fn tls(&self) -> Result<Arc<ResponderTls>, FetchError> {
        let made = self.tls.get_or_init(|| ResponderTls::new(&self.extra_cas).map(Arc::new));
        made.clone().map_err(|e| FetchError::Tls(format!("cannot set up TLS: {e}")))
    }

    /// Sends `x` and returns the body of a 200 application/ocsp-response answer.
    pub fn fetch(&self, x: &Exchange) -> Result<Vec<u8>, FetchError> {
        let target = url::Url::parse(&x.url).map_err(|e| FetchError::Unreachable(format!("bad URL: {e}")))?;
        let host = target.host_str().unwrap_or_default();
        let proxy = self.proxies.for_target(target.scheme(), host);
        let mut builder = ureq::AgentBuilder::new()
            .timeout_connect(x.timeout)
            .timeout(x.timeout)
            .redirects(0)
            .user_agent(concat!("mod_stapling/", env!("CARGO_PKG_VERSION")));
        if target.scheme() == "https" {
            builder = builder.tls_connector(self.tls()?);
        }
        if let Some(p) = proxy {
            let parsed = ureq::Proxy::new(p.for_ureq()).map_err(|e| FetchError::Proxy(p.to_string(), e.to_string()))?;
            builder = builder.proxy(parsed);
        }
        let agent = builder.build();
        let sent = match x.get_url() {
            Some(url) => with_proxy_auth(agent.get(&url), proxy, &target).call(),
            None => with_proxy_auth(agent.post(&x.url), proxy, &target)
                .set("Content-Type", "application/ocsp-request")
                .send_bytes(&x.request),
        };
        let response = sent.map_err(|e| FetchError::from_ureq(e, proxy))?;
        read_ocsp_body(response)
    }
}

/// An http:// request through a proxy goes to the proxy itself (absolute form), so it
/// carries the proxy's credentials; an https:// one gets them only in the CONNECT.
fn with_proxy_auth(req: ureq::Request, proxy: Option<&Proxy>, target: &url::Url) -> ureq::Request {
    match proxy.and_then(Proxy::authorization) {
        Some(auth) if target.scheme() == "http" => req.set("Proxy-Authorization", &auth),
        _ => req,
    }
}

fn read_ocsp_body(response: ureq::Response) -> Result<Vec<u8>, FetchError> {
    if response.status() != 200 {
        // Redirects are not followed: a responder URL is configuration, not a hint.
        return Err(FetchError::HttpStatus(response.status(), response.status_text().to_string()));
    }
    let content_type = response.content_type().to_ascii_lowercase();
    if content_type != "application/ocsp-response" {
        return Err(FetchError::WrongContentType(content_type));
    }
    let mut body = Vec::new();
    response.into_reader().take(MAX_RESPONSE_BYTES + 1).read_to_end(&mut body).map_err(|e| {
        if is_timeout(e.kind()) {
            FetchError::Timeout
        } else {
            FetchError::Body(e.to_string())
        }
    })?;
    if body.len() as u64 > MAX_RESPONSE_BYTES {
        return Err(FetchError::TooLarge);
    }
    Ok(body)
}

/// POSTs `request` to `url`, directly. `timeout` bounds the connect and the exchange.
pub fn fetch(url: &str, request: &[u8], timeout: Duration) -> Result<Vec<u8>, FetchError> {
    let x = Exchange { url: url.to_string(), request: request.to_vec(), timeout, method: RequestMethod::Post };
    Client::default().fetch(&x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn ask(url: &str, timeout: Duration) -> FetchError {
        fetch(url, b"req", timeout).expect_err("no responder")
    }

    #[test]
    fn a_refused_connection_is_unreachable_and_said_once() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = ask(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(2));
        assert_eq!(e.failure(), Failure::Unreachable, "{e}");
        let text = e.to_string();
        assert!(!text.contains("Network Error: Network Error"), "{text}");
    }

    #[test]
    fn a_repeated_kind_is_said_once() {
        let kind = "Network Error";
        let text = "Network Error: Network Error: Error encountered in the status line: reset";
        assert_eq!(without_prefix(text, kind), "Error encountered in the status line: reset");
        assert_eq!(without_prefix("Network Error", kind), "Network Error");
    }

    #[test]
    fn a_silent_responder_is_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        assert_eq!(ask(&url, Duration::from_millis(300)), FetchError::Timeout);
        drop(listener);
    }

    #[test]
    fn statuses_and_content_types_are_typed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let answers = [
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 2\r\n\r\nhi",
        ];
        let server = std::thread::spawn(move || {
            for answer in answers {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut s, &mut buf);
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        let e = ask(&url, Duration::from_secs(5));
        assert_eq!((e.failure(), e.to_string()), (Failure::HttpStatus(503), "HTTP 503 Service Unavailable".into()));
        let e = ask(&url, Duration::from_secs(5));
        assert_eq!(e, FetchError::WrongContentType("text/html".into()));
        assert_eq!(e.failure(), Failure::NotOcsp);
        server.join().unwrap();
    }

    fn exchange(url: &str, request: &[u8], method: RequestMethod) -> Exchange {
        Exchange { url: url.into(), request: request.to_vec(), timeout: Duration::from_secs(5), method }
    }

    #[test]
    fn small_requests_go_as_get_large_ones_as_post() {
        let small = exchange("http://ocsp.example", &[0xfb; 100], RequestMethod::Auto);
        let url = small.get_url().expect("GET");
        let b64 = openssl::base64::encode_block(&[0xfb; 100]);
        assert!(b64.contains('+') || b64.contains('/'), "the test needs reserved characters: {b64}");
        assert_eq!(
            url,
            format!("http://ocsp.example/{}", b64.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D"))
        );
        assert_eq!(
            exchange("http://o/x/", &[1; 10], RequestMethod::Auto).get_url().unwrap(),
            "http://o/x/AQEBAQEBAQEBAQ%3D%3D"
        );
        // 190 bytes encode to 256 characters: too long for GET under RFC 5019.
        assert_eq!(exchange("http://o/", &[1; 190], RequestMethod::Auto).get_url(), None);
        assert!(exchange("http://o/", &[1; 190], RequestMethod::Get).get_url().is_some());
        assert_eq!(exchange("http://o/", &[1; 10], RequestMethod::Post).get_url(), None);
    }

    /// Accepts one connection, records what arrives until the blank line, answers `answer`.
    fn one_answer(answer: &'static str) -> (u16, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match std::io::Read::read(&mut s, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });
        (port, seen)
    }

    fn through(proxy_port: u16) -> Client {
        let proxy = Proxy::parse(&format!("http://al%40ce:pw@127.0.0.1:{proxy_port}"), None).unwrap();
        Client::new(ProxyPolicy::new(Some(proxy), |_| None).0, Vec::new())
    }

    #[test]
    fn http_through_a_proxy_is_absolute_form_with_credentials() {
        let (port, seen) =
            one_answer("HTTP/1.1 200 OK\r\ncontent-type: application/ocsp-response\r\ncontent-length: 3\r\n\r\nabc");
        let body = through(port).fetch(&exchange("http://ocsp.example:8080/", &[1; 10], RequestMethod::Auto));
        assert_eq!(body.unwrap(), b"abc");
        let request = seen.join().unwrap();
        assert!(request.starts_with("GET http://ocsp.example:8080/AQEBAQEBAQEBAQ%3D%3D HTTP/1.1\r\n"), "{request}");
        let auth = format!("proxy-authorization: Basic {}", openssl::base64::encode_block(b"al@ce:pw"));
        assert!(request.to_ascii_lowercase().contains(&auth.to_ascii_lowercase()), "{request}");
    }

    #[test]
    fn https_through_a_proxy_is_a_connect_and_refusals_name_the_proxy() {
        let (port, seen) = one_answer("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n");
        let e = through(port).fetch(&exchange("https://ocsp.example/", &[1; 10], RequestMethod::Auto)).unwrap_err();
        assert!(seen.join().unwrap().starts_with("CONNECT ocsp.example:443 HTTP/1.1\r\n"));
        assert_eq!(e.failure(), Failure::Proxy, "{e}");
        assert!(
            e.to_string().starts_with(&format!("proxy http://al%40ce:***@127.0.0.1:{port}"))
                || e.to_string().contains("127.0.0.1"),
            "{e}"
        );
    }

    #[test]
    fn a_proxy_that_is_down_is_named() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = through(port).fetch(&exchange("http://ocsp.example/", &[1; 10], RequestMethod::Post)).unwrap_err();
        assert_eq!(e.failure(), Failure::Proxy, "{e}");
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}: cannot connect to the proxy")), "{e}");
    }

    #[test]
    fn an_https_responder_with_an_unknown_ca_is_refused_by_tls() {
        // A TLS server whose certificate no system CA signed.
        use crate::testpki::path;
        use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor.set_certificate_chain_file(path("leaf-chain.crt")).unwrap();
        acceptor.set_private_key_file(path("leaf.key"), SslFiletype::PEM).unwrap();
        let acceptor = acceptor.build();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let _ = acceptor.accept(s);
        });
        let url = format!("https://127.0.0.1:{port}/");
        let e = Client::default().fetch(&exchange(&url, &[1; 10], RequestMethod::Post)).unwrap_err();
        assert_eq!(e.failure(), Failure::Tls, "{e}");
        assert!(e.to_string().contains("does not verify for 127.0.0.1"), "{e}");
        server.join().unwrap();
    }
}
