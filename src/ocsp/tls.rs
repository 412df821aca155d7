//! TLS to `https://` responders with the system OpenSSL (the one mod_ssl links): the
//! system trust store plus `StaplingResponderCAFile`, and host name verification.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;

use openssl::ssl::{HandshakeError, SslConnector, SslMethod, SslStream, SslVersion};
use openssl::x509::{X509VerifyResult, X509};
use ureq::ReadWrite;

/// Why the TLS handshake with a responder failed; carried inside ureq's error so that
/// the fetch can say it in words of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRefused(pub String);

impl fmt::Display for TlsRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsRefused {}

/// A TLS client for responders; built once per process, on the first https fetch.
pub struct ResponderTls {
    connector: SslConnector,
}

impl ResponderTls {
    /// Trusts OpenSSL's default paths (`/etc/ssl/certs`) and `extra_cas`.
    pub fn new(extra_cas: &[X509]) -> Result<ResponderTls, String> {
        let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
        builder.set_min_proto_version(Some(SslVersion::TLS1_2)).map_err(|e| e.to_string())?;
        for ca in extra_cas {
            builder.cert_store_mut().add_cert(ca.clone()).map_err(|e| e.to_string())?;
        }
        Ok(ResponderTls { connector: builder.build() })
    }
}

impl ureq::TlsConnector for ResponderTls {
    fn connect(&self, host: &str, io: Box<dyn ReadWrite>) -> Result<Box<dyn ReadWrite>, ureq::Error> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match self.connector.connect(host, io) {
            Ok(stream) => Ok(Box::new(TlsStream(stream))),
            Err(HandshakeError::WouldBlock(_)) => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out").into())
            }
            Err(HandshakeError::SetupFailure(e)) => Err(refused(format!("TLS setup failed: {e}"))),
            Err(HandshakeError::Failure(mid)) => {
                let verify = mid.ssl().verify_result();
                let why = if verify != X509VerifyResult::OK {
                    format!("the responder's TLS certificate does not verify for {host}: {}", verify.error_string())
                } else {
                    format!("TLS handshake with {host} failed: {}", mid.error())
                };
                Err(refused(why))
            }
        }
    }
}

fn refused(why: String) -> ureq::Error {
    io::Error::other(TlsRefused(why)).into()
}

/// The TLS stream ureq reads and writes; its socket is the TCP connection underneath,
/// so ureq's timeouts still apply.
#[derive(Debug)]
struct TlsStream(SslStream<Box<dyn ReadWrite>>);

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl ReadWrite for TlsStream {
    fn socket(&self) -> Option<&TcpStream> {
        self.0.get_ref().socket()
    }
}

/// Largest `StaplingResponderCAFile`: far above a full system bundle (about 200 KiB).
const MAX_CA_FILE_BYTES: u64 = 16 << 20;

/// Reads the certificates of a PEM file (`StaplingResponderCAFile`): a regular file, at
/// most 16 MiB, holding at least one certificate.
pub fn read_ca_file(path: &str) -> Result<Vec<X509>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking: opening a FIFO named by mistake must not hang `apachectl -t`.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read {path}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read {path}: {e}"))?;
    if !meta.is_file() || meta.len() > MAX_CA_FILE_BYTES {
        return Err(format!("{path} is not a regular file of at most {MAX_CA_FILE_BYTES} bytes"));
    }
    let mut pem = Vec::new();
    file.take(MAX_CA_FILE_BYTES).read_to_end(&mut pem).map_err(|e| format!("cannot read {path}: {e}"))?;
    let certs = X509::stack_from_pem(&pem).map_err(|e| format!("{path} is not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path} holds no PEM certificate"));
    }
    Ok(certs)
}
