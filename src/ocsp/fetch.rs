//! HTTP transport to the responder (RFC 6960 appendix A.1, POST).

use std::fmt;
use std::io::Read;
use std::time::Duration;

/// Largest response body we read. Real responses are a few KiB.
pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// Why a fetch produced no bytes to validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError(pub String);

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FetchError {}

impl FetchError {
    /// The failure cause recorded in the shared store.
    pub fn failure(&self) -> crate::failure::Failure {
        use crate::failure::Failure;
        let text = self.0.as_str();
        if let Some(code) = text.strip_prefix("HTTP ").and_then(|r| r.split(' ').next()).and_then(|c| c.parse().ok()) {
            Failure::HttpStatus(code)
        } else if text.contains("timed out") || text.contains("Timeout") || text.contains("timeout") {
            Failure::Timeout
        } else if text.starts_with("transport error") {
            Failure::Unreachable
        } else {
            Failure::NotOcsp
        }
    }
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
            ureq::Error::Status(code, r) => FetchError(format!("HTTP {code} {}", r.status_text())),
            ureq::Error::Transport(t) => FetchError(format!("transport error: {t}")),
        })?;
    if response.status() != 200 {
        // Redirects are not followed: a responder URL is configuration, not a hint.
        return Err(FetchError(format!("HTTP {} {}", response.status(), response.status_text())));
    }
    let content_type = response.content_type().to_ascii_lowercase();
    if content_type != "application/ocsp-response" {
        return Err(FetchError(format!("wrong Content-Type '{content_type}', expected application/ocsp-response")));
    }
    let mut body = Vec::new();
    response
        .into_reader()
        .take(MAX_RESPONSE_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| FetchError(format!("reading the response body: {e}")))?;
    if body.len() as u64 > MAX_RESPONSE_BYTES {
        return Err(FetchError(format!("response larger than {MAX_RESPONSE_BYTES} bytes")));
    }
    Ok(body)
}
