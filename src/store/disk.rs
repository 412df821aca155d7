//! Responses on disk, so that a restart or a reboot staples from the first handshake.
//!
//! One file per certificate, `<sha1-of-cert>.der`, holding the DER exactly as the
//! responder sent it (so `openssl ocsp -respin FILE -resp_text` reads it). Files are
//! written atomically (temp file, fsync, rename, fsync of the directory) and are always
//! validated again before use, so a torn or hostile file is never stapled.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::cert::{hex, CertKey};
use crate::ocsp::MAX_RESPONSE_BYTES;

/// `<40 hex digits>.der`, or a temp file `.<40 hex>.<pid>.tmp`.
fn is_our_file(name: &str) -> bool {
    let hex40 = |h: &str| h.len() == 40 && h.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(h) = name.strip_suffix(".der") {
        return hex40(h);
    }
    name.strip_prefix('.')
        .and_then(|n| n.strip_suffix(".tmp"))
        .and_then(|n| n.split_once('.'))
        .is_some_and(|(h, pid)| hex40(h) && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// A directory of stored responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskStore {
    dir: PathBuf,
}

impl DiskStore {
    /// A store in `dir` (not created here).
    pub fn new(dir: impl Into<PathBuf>) -> DiskStore {
        DiskStore { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory (mode 0700) and hands it to `owner` (uid, gid) if given.
    /// An existing directory is only taken over if it holds nothing but our files, so a
    /// mistyped `StaplingStore /var/www` never re-owns someone else's data.
    pub fn prepare(&self, owner: Option<(u32, u32)>) -> io::Result<()> {
        match fs::create_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => self.check_ours()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(&self.dir)?,
            Err(e) => return Err(e),
        }
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&self.dir, Some(uid), Some(gid))?;
            for entry in fs::read_dir(&self.dir)?.flatten() {
                std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))?;
            }
        }
        Ok(())
    }

    fn check_ours(&self) -> io::Result<()> {
        if !fs::symlink_metadata(&self.dir)?.is_dir() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a directory"));
        }
        let foreign = fs::read_dir(&self.dir)?.flatten().find(|e| !is_our_file(&e.file_name().to_string_lossy()));
        match foreign {
            None => Ok(()),
            Some(e) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "holds {:?}, which is not a stored response; refusing to take the directory over. \
                     Point StaplingStore at a directory of its own",
                    e.file_name()
                ),
            )),
        }
    }

    /// The file for `key`.
    pub fn path(&self, key: &CertKey) -> PathBuf {
        self.dir.join(format!("{}.der", hex(key)))
    }

    /// The stored bytes for `key`, if any. Oversized files are refused unread.
    pub fn load(&self, key: &CertKey) -> io::Result<Option<Vec<u8>>> {
        let file = match File::open(self.path(key)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a regular file"));
        }
        let mut bytes = Vec::new();
        file.take(MAX_RESPONSE_BYTES + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_RESPONSE_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "file larger than any OCSP response"));
        }
        Ok(Some(bytes))
    }

    /// Writes `der` for `key` atomically, mode 0600.
    pub fn save(&self, key: &CertKey, der: &[u8]) -> io::Result<()> {
        let target = self.path(key);
        let tmp = self.dir.join(format!(".{}.{}.tmp", hex(key), std::process::id()));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(der)?;
            f.sync_all()?;
            fs::rename(&tmp, &target)?;
            File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Deletes the file for `key`.
    pub fn remove(&self, key: &CertKey) -> io::Result<()> {
        match fs::remove_file(self.path(key)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes files of certificates not in `keep` that were last written more than
    /// `grace` ago, and stale temp files. Returns the names removed.
    pub fn prune(&self, keep: &[CertKey], grace: Duration) -> Vec<String> {
        let keep: Vec<String> = keep.iter().map(|k| format!("{}.der", hex(k))).collect();
        let now = SystemTime::now();
        let mut removed = Vec::new();
        let Ok(entries) = fs::read_dir(&self.dir) else { return removed };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = name.ends_with(".der") || name.ends_with(".tmp");
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if ours && !keep.contains(&name) && age >= grace && fs::remove_file(entry.path()).is_ok() {
                removed.push(name);
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::new(dir.path().join("s"));
        store.prepare(None).unwrap();
        let key = [7u8; 20];
        assert_eq!(store.load(&key).unwrap(), None);
        store.save(&key, b"der").unwrap();
        assert_eq!(store.load(&key).unwrap().as_deref(), Some(&b"der"[..]));
        let mode = fs::metadata(store.path(&key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(store.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        store.remove(&key).unwrap();
        assert_eq!(store.load(&key).unwrap(), None);
    }

    #[test]
    fn a_directory_with_foreign_files_is_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("index.html"), b"someone's data").unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let err = DiskStore::new(dir.path()).prepare(None).unwrap_err();
        assert!(err.to_string().contains("index.html"), "{err}");
        let mode = fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "left alone");
        // Our own files (and an empty directory) are fine.
        let ours = tempfile::tempdir().unwrap();
        let store = DiskStore::new(ours.path());
        store.prepare(None).unwrap();
        store.save(&[3; 20], b"x").unwrap();
        fs::write(ours.path().join(format!(".{}.123.tmp", hex(&[4; 20]))), b"").unwrap();
        store.prepare(None).unwrap();
        assert!(DiskStore::new(dir.path().join("index.html")).prepare(None).is_err(), "a file is not a directory");
    }

    #[test]
    fn oversized_and_odd_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::new(dir.path());
        let key = [1u8; 20];
        fs::write(store.path(&key), vec![0u8; MAX_RESPONSE_BYTES as usize + 10]).unwrap();
        assert!(store.load(&key).is_err());
        fs::remove_file(store.path(&key)).unwrap();
        fs::create_dir(store.path(&key)).unwrap();
        assert!(store.load(&key).is_err());
    }

    #[test]
    fn prune_keeps_configured_and_recent_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::new(dir.path());
        store.save(&[1; 20], b"a").unwrap();
        store.save(&[2; 20], b"b").unwrap();
        assert!(store.prune(&[[1; 20]], Duration::from_secs(3600)).is_empty(), "grace period");
        let removed = store.prune(&[[1; 20]], Duration::ZERO);
        assert_eq!(removed, vec![format!("{}.der", hex(&[2; 20]))]);
        assert!(store.load(&[1; 20]).unwrap().is_some());
    }
}
