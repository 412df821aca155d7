//! HTTP transport to the responder (RFC 6960 appendix A.1, POST).

use std::fmt;
use std::io::Read;
use std::time::Duration;

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
        }
    }

    /// Classifies a ureq transport error: timeouts surface as I/O errors of kind
    /// TimedOut/WouldBlock; everything else before an answer is "unreachable".
    fn from_transport(t: &ureq::Transport) -> FetchError {
        let timed_out = std::error::Error::source(t)
            .and_then(|e| e.downcast_ref::<std::io::Error>())
            .is_some_and(|io| is_timeout(io.kind()));
        if timed_out {
            return FetchError::Timeout;
        }
        // ureq's Display repeats the kind ("Network Error: Network Error: ..."), also
        // inside the cause; say the kind once, then what is left of the cause.
        let kind = t.kind().to_string();
        let detail = std::error::Error::source(t).map(|e| e.to_string()).or_else(|| t.message().map(str::to_string));
        match detail.as_deref().map(|d| without_prefix(d, &kind)) {
            Some(rest) if !rest.is_empty() && rest != kind => FetchError::Unreachable(format!("{kind}: {rest}")),
            _ => FetchError::Unreachable(kind),
        }
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

/// POSTs `request` to `url`. `timeout` bounds the connect and the whole exchange.
pub fn fetch(url: &str, request: &[u8], timeout: Duration) -> Result<Vec<u8>, FetchError> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(timeout)
        .timeout(timeout)
        .redirects(0)
        .user_agent(concat!("mod_stapling/", env!("CARGO_PKG_VERSION")))
        .build();
    let response =
        agent.post(url).set("Content-Type", "application/ocsp-request").send_bytes(request).map_err(|e| match e {
            ureq::Error::Status(code, r) => FetchError::HttpStatus(code, r.status_text().to_string()),
            ureq::Error::Transport(t) => FetchError::from_transport(&t),
        })?;
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
}
