//! Test-only fixtures: a throwaway PKI made by `scripts/mkpki.sh` once per test process,
//! and real OCSP responses made by `openssl ocsp` on demand.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tempfile::TempDir;

use crate::cert::CertInfo;

/// The OCSP URL the test certificates carry in their AIA extension.
pub const OCSP_URL: &str = "http://127.0.0.1:9/";

static PKI: OnceLock<TempDir> = OnceLock::new();

/// The directory holding the PKI; made on first use and kept for the whole process.
pub fn dir() -> &'static Path {
    PKI.get_or_init(|| {
        let tmp = tempfile::Builder::new().prefix("mod_stapling-testpki").tempdir().expect("tempdir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mkpki.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(tmp.path())
            .arg(OCSP_URL)
            .output()
            .expect("cannot run scripts/mkpki.sh");
        assert!(
            out.status.success(),
            "mkpki.sh failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        tmp
    })
    .path()
}

/// A file of the PKI, e.g. `path("leaf.crt")`.
pub fn path(file: &str) -> PathBuf {
    dir().join(file)
}

/// The PEM of `<name>.crt`.
pub fn pem(name: &str) -> Vec<u8> {
    fs::read(path(&format!("{name}.crt"))).unwrap_or_else(|e| panic!("cannot read {name}.crt: {e}"))
}

/// `<name>.crt` followed by `<issuer>.crt`, parsed as mod_ssl would hand it over.
pub fn cert_info_with_issuer(name: &str, issuer: &str) -> CertInfo {
    let chain = [pem(name), pem(issuer)].concat();
    CertInfo::from_pem_chain(&chain).expect("test chain parses")
}

/// `<name>.crt` with its real issuer.
pub fn cert_info(name: &str) -> CertInfo {
    cert_info_with_issuer(name, "issuer")
}

/// Which database the responder answers from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    /// `index.txt` as made by mkpki.sh: everything valid.
    Valid,
    /// `index.txt` with this certificate's line marked revoked (keyCompromise).
    Revoked(&'static str),
    /// An empty database: every certificate is unknown.
    Empty,
}

/// How `openssl ocsp` should answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opts {
    /// The signing certificate/key (`<signer>.crt`, `<signer>.key`).
    pub signer: &'static str,
    /// The database to answer from.
    pub index: Index,
    /// `-ndays`; `None` omits nextUpdate.
    pub ndays: Option<u32>,
    /// `-resp_no_certs`.
    pub no_certs: bool,
    /// `-resp_key_id`: responderID byKey instead of byName.
    pub key_id: bool,
    /// `-rother`: one more certificate (`<name>.crt`) for the response to carry.
    pub other_cert: Option<&'static str>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts { signer: "issuer", index: Index::Valid, ndays: Some(1), no_certs: false, key_id: false, other_cert: None }
    }
}

/// The serial of `<name>.crt` as upper-case hex, as `openssl ca` writes it in index.txt.
fn serial_hex(name: &str) -> String {
    let cert = openssl::x509::X509::from_pem(&pem(name)).expect("cert parses");
    let hex = cert.serial_number().to_bn().unwrap().to_hex_str().unwrap().to_string();
    hex.to_uppercase()
}

fn write_index(target: &Path, index: Index) {
    let valid = fs::read_to_string(path("index.txt")).expect("index.txt");
    let text = match index {
        Index::Valid => valid,
        Index::Empty => String::new(),
        Index::Revoked(name) => {
            let serial = serial_hex(name);
            let mut found = false;
            let mut out = String::new();
            for line in valid.lines() {
                let mut fields: Vec<String> = line.split('\t').map(str::to_string).collect();
                // Fields: status, expiry, revocation, serial, file, subject.
                let matches = fields
                    .get(3)
                    .is_some_and(|s| s.trim_start_matches('0').eq_ignore_ascii_case(serial.trim_start_matches('0')));
                if matches && fields.len() >= 6 {
                    fields[0] = "R".into();
                    fields[2] = "240101000000Z,keyCompromise".into();
                    found = true;
                }
                out.push_str(&fields.join("\t"));
                out.push('\n');
            }
            assert!(found, "{name} (serial {serial}) is not in index.txt:\n{valid}");
            out
        }
    };
    fs::write(target, text).expect("write index");
    fs::write(target.with_extension("txt.attr"), "unique_subject = no\n").expect("write index attr");
}

/// The DER OCSPResponse `openssl ocsp` gives for `request_der`.
pub fn respond(request_der: &[u8], opts: Opts) -> Vec<u8> {
    let work = tempfile::Builder::new().prefix("mod_stapling-ocsp").tempdir().expect("tempdir");
    let index = work.path().join("index.txt");
    write_index(&index, opts.index);
    let req = work.path().join("req.der");
    let resp = work.path().join("resp.der");
    fs::write(&req, request_der).expect("write request");
    let mut cmd = Command::new("openssl");
    cmd.arg("ocsp")
        .arg("-index")
        .arg(&index)
        .arg("-rsigner")
        .arg(path(&format!("{}.crt", opts.signer)))
        .arg("-rkey")
        .arg(path(&format!("{}.key", opts.signer)))
        .arg("-CA")
        .arg(path("issuer.crt"))
        .arg("-reqin")
        .arg(&req)
        .arg("-respout")
        .arg(&resp);
    if let Some(days) = opts.ndays {
        cmd.arg("-ndays").arg(days.to_string());
    }
    if opts.no_certs {
        cmd.arg("-resp_no_certs");
    }
    if opts.key_id {
        cmd.arg("-resp_key_id");
    }
    if let Some(other) = opts.other_cert {
        cmd.arg("-rother").arg(path(&format!("{other}.crt")));
    }
    let out = cmd.output().expect("cannot run openssl ocsp");
    assert!(
        out.status.success(),
        "openssl ocsp failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read(&resp).expect("openssl ocsp wrote no response")
}

/// A request for `cert` (without nonce) answered with `opts`.
pub fn response_for(cert: &CertInfo, opts: Opts) -> Vec<u8> {
    let (req, _) = crate::ocsp::build_request(cert, false).expect("request");
    respond(&req, opts)
}
