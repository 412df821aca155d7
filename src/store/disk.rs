//! Responses on disk, so that a restart or a reboot staples from the first handshake.
//!
//! One file per certificate, `<sha1-of-cert>.der`, holding the DER exactly as the
//! responder sent it (so `openssl ocsp -respin FILE -resp_text` reads it). Files are
//! written atomically (temp file, fsync, rename, fsync of the directory) and are always
//! validated again before use, so a torn or hostile file is never stapled.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
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

/// `dir` itself, opened as a directory without following a symbolic link.
fn open_dir_nofollow(dir: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(dir).map_err(|e| {
        match e.raw_os_error() {
            Some(libc::ELOOP | libc::ENOTDIR) => io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a symbolic link or not a directory; refusing to follow or take it over",
            ),
            _ => e,
        }
    })
}

/// Refuses a directory that holds anything but our files. Reads the open directory
/// (through /proc/self/fd), not its path, which another user may have swapped meanwhile.
fn check_ours(dir: &File) -> io::Result<()> {
    let foreign = fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?
        .flatten()
        .find(|e| !is_our_file(&e.file_name().to_string_lossy()));
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
    ///
    /// This runs as root while the server user may own the directory above (RHEL's
    /// /var/lib/httpd) or the store itself: the directory is opened once without
    /// following a symbolic link, and every later step (the check, chmod, chown) acts on
    /// that open directory, never on the path again. Entries are never chowned: one may
    /// be a hard link to a file of root's.
    pub fn prepare(&self, owner: Option<(u32, u32)>) -> io::Result<()> {
        match fs::create_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = self.dir.parent() {
                    fs::create_dir_all(parent)?;
                }
                fs::create_dir(&self.dir)?;
            }
            Err(e) => return Err(e),
        }
        let dir = open_dir_nofollow(&self.dir)?;
        let meta = dir.metadata()?;
        if let Some((uid, _)) = owner {
            if meta.uid() != 0 && meta.uid() != uid {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "belongs to uid {}, neither root nor the server's User; refusing to take it over",
                        meta.uid()
                    ),
                ));
            }
        }
        check_ours(&dir)?;
        dir.set_permissions(fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&dir, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// The file for `key`.
    pub fn path(&self, key: &CertKey) -> PathBuf {
        self.dir.join(format!("{}.der", hex(key)))
    }

    /// The stored bytes for `key`, if any. Oversized files are refused unread; so is
    /// anything but a plain file with one link (a symbolic link, a FIFO, which is
    /// opened without waiting for a writer, a device, a hard link).
    pub fn load(&self, key: &CertKey) -> io::Result<Option<Vec<u8>>> {
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(self.path(key));
        let file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "a symbolic link, not a stored response"))
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if !meta.is_file() || meta.nlink() != 1 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a regular file with a single link"));
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

    /// Our effective uid, read off a file we just made (no libc call needed).
    fn my_uid(dir: &Path) -> u32 {
        let probe = dir.join("uid-probe");
        fs::write(&probe, b"").unwrap();
        let uid = fs::metadata(&probe).unwrap().uid();
        fs::remove_file(probe).unwrap();
        uid
    }

    #[test]
    fn a_symlinked_store_is_refused_and_its_target_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::create_dir(&target).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
        let link = dir.path().join("store");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = DiskStore::new(&link).prepare(Some((65534, 65534))).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let meta = fs::metadata(&target).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755, "mode untouched");
        assert_ne!(meta.uid(), 65534, "owner untouched");
    }

    #[test]
    fn prepare_hands_over_the_directory_but_never_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let me = my_uid(dir.path());
        let store = DiskStore::new(dir.path().join("s"));
        store.prepare(None).unwrap();
        store.save(&[5; 20], b"x").unwrap();
        if me != 0 {
            return; // handing over needs root; the rest is covered above
        }
        store.prepare(Some((65534, 65534))).unwrap();
        assert_eq!(fs::metadata(store.dir()).unwrap().uid(), 65534);
        // An entry may be a hard link to a file of root's: it keeps its owner.
        assert_eq!(fs::metadata(store.path(&[5; 20])).unwrap().uid(), 0);
        // A store that belongs to some third user is not taken over.
        std::os::unix::fs::chown(store.dir(), Some(4242), Some(4242)).unwrap();
        assert!(store.prepare(Some((65534, 65534))).is_err());
    }

    #[test]
    fn links_fifos_and_devices_are_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::new(dir.path());
        let (fifo, link, hard) = ([1u8; 20], [2u8; 20], [3u8; 20]);
        let made = std::process::Command::new("mkfifo").arg(store.path(&fifo)).status().unwrap();
        assert!(made.success());
        let started = std::time::Instant::now();
        assert!(store.load(&fifo).is_err(), "a FIFO is not a response");
        assert!(started.elapsed() < Duration::from_secs(1), "opening a FIFO must not wait for a writer");
        let secret = dir.path().join("secret");
        fs::write(&secret, b"not yours").unwrap();
        std::os::unix::fs::symlink(&secret, store.path(&link)).unwrap();
        assert!(store.load(&link).unwrap_err().to_string().contains("symbolic link"));
        fs::hard_link(&secret, store.path(&hard)).unwrap();
        assert!(store.load(&hard).is_err(), "a hard link is refused");
        std::os::unix::fs::symlink("/dev/zero", store.path(&[4; 20])).unwrap();
        assert!(store.load(&[4; 20]).is_err());
    }
}
