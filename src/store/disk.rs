//! Responses on disk, so that a restart or a reboot staples from the first handshake.
//!
//! One file per certificate, `<sha1-of-cert>.der`, holding the DER exactly as the
//! responder sent it (so `openssl ocsp -respin FILE -resp_text` reads it). Files are
//! written atomically (temp file, fsync, rename, fsync of the directory) and are always
//! validated again before use, so a torn or hostile file is never stapled.
//!
//! # Who acts on the store
//!
//! The server user (`User`, e.g. `www-data` or `apache`) owns the store and everything
//! in it, and a compromised web application runs as that user. So:
//!
//! - **Root** (the parent) acts only where that user cannot change anything: it walks
//!   the path from `/` one directory at a time without following symbolic links (except
//!   root's own, in directories only root can write, such as RHEL's
//!   `/etc/httpd/state`), and creates the store (and hands it over with `fchown` on the
//!   open directory) only if every directory on the way and the one above the store can
//!   be changed by root alone. Otherwise it leaves the store to the server user
//!   ([`DiskStore::prepare_as_root`]). It never reads, chowns or deletes an entry.
//! - **The server user** (the startup helper, then the children) creates the store
//!   where root left it to them, checks it ([`DiskStore::prepare`]), and does every
//!   read, write, rename and delete, relative to the open store directory.
//!
//! Every call that names an entry goes through `/proc/self/fd/N/NAME`: N is the open
//! directory, whose magic link the kernel follows to that very directory whatever
//! happened to its path meanwhile, and the last component is never followed. That is
//! `openat`/`mkdirat`/`unlinkat`/`renameat` relative to a directory descriptor, without
//! any `unsafe` here. It needs /proc, which every Linux system running Apache has.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::cert::{hex, CertKey};
use crate::ocsp::MAX_RESPONSE_BYTES;

/// The most symbolic links one walk follows (the kernel's own limit).
const MAX_LINKS: usize = 40;
/// The sticky bit: in such a directory only an entry's owner (or the directory's, or
/// root) may rename or delete it.
const STICKY: u32 = 0o1000;

// ---------------------------------------------------------------------------
// fd-relative calls
// ---------------------------------------------------------------------------

/// `name` inside the open directory `dir`, as a path the kernel resolves through the
/// descriptor (see the module documentation). `name` is one path component.
fn at(dir: &File, name: impl AsRef<OsStr>) -> PathBuf {
    let mut path = fd_path(dir);
    path.push(name.as_ref());
    path
}

/// The open directory `dir` itself, as a path.
fn fd_path(dir: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// `openat(dir, name, O_DIRECTORY|O_NOFOLLOW)`.
fn open_dir_at(dir: &File, name: impl AsRef<OsStr>) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(at(dir, name))
}

/// `mkdirat(dir, name, mode)`; an existing entry is fine (it is checked when opened).
fn make_dir_at(dir: &File, name: impl AsRef<OsStr>, mode: u32) -> io::Result<()> {
    match DirBuilder::new().mode(mode).create(at(dir, name)) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// `unlinkat(dir, name)`, with `AT_REMOVEDIR` for an (empty) directory.
fn remove_at(dir: &File, name: impl AsRef<OsStr>) -> io::Result<()> {
    let path = at(dir, name);
    match fs::remove_file(&path) {
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => fs::remove_dir(&path),
        other => other,
    }
}

// ---------------------------------------------------------------------------
// walking a path without following what others can change
// ---------------------------------------------------------------------------

/// Only root can add, rename or delete entries here: root's, with no group or other
/// write bit.
fn root_private(dir: &Metadata) -> bool {
    dir.uid() == 0 && dir.mode() & 0o022 == 0
}

/// Whether only root can replace `child`, an entry of `parent`: `parent` is root's
/// alone, or it is root's sticky directory (like /tmp) and `child` is root's.
fn entry_fixed(parent: &Metadata, child: &Metadata) -> bool {
    root_private(parent) || (parent.uid() == 0 && parent.mode() & STICKY != 0 && child.uid() == 0)
}

/// A directory reached by [`walk`].
struct Reached {
    dir: File,
    meta: Metadata,
    /// The path it was reached by, with links resolved (for messages).
    path: PathBuf,
    /// No one but root can change where the path leads (every step was [`entry_fixed`]).
    fixed: bool,
}

/// What [`walk`] does about a missing directory on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    /// Fail with `NotFound`.
    Fail,
    /// Create it (0755) where the walk so far is fixed and the directory is root's alone
    /// (root's walk); fail with `NotFound` elsewhere.
    CreateWhereRootPrivate,
    /// Create it (0755) wherever the caller may (the server user's walk).
    Create,
}

/// One step of a walk.
enum Step {
    Dir(Reached),
    Link(PathBuf),
}

/// Opens the absolute directory `path` one component at a time from `/`, each with
/// `O_DIRECTORY|O_NOFOLLOW` relative to the one before, so no swap of a component for
/// a link can redirect it. A symbolic link is followed only if the link is root's and
/// sits in a directory that only root can write (RHEL's `/etc/httpd/state`); any other
/// link is refused. `..` goes back to the directory the walk came from. A link met
/// where others could have changed the way to it leaves the result not `fixed`, even
/// if it leads back to directories that are.
fn walk(path: &Path, missing: Missing) -> io::Result<Reached> {
    if !path.is_absolute() {
        return Err(invalid(format!("{} is not an absolute path", path.display())));
    }
    let top = OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open("/")?;
    let meta = top.metadata()?;
    let fixed = root_private(&meta);
    let mut stack = vec![Reached { dir: top, meta, path: PathBuf::from("/"), fixed }];
    let mut todo: VecDeque<OsString> = names(path).into();
    let (mut links, mut tainted) = (0, false);
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let here = stack.last().expect("the walk always holds /");
        match step(here, &name, missing)? {
            Step::Dir(next) => stack.push(next),
            Step::Link(target) => {
                tainted |= !here.fixed;
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{}: more than {MAX_LINKS} symbolic links on the way", path.display()),
                    ));
                }
                if target.is_absolute() {
                    stack.truncate(1);
                }
                for n in names(&target).into_iter().rev() {
                    todo.push_front(n);
                }
            }
        }
    }
    let mut reached = stack.pop().expect("the walk always holds /");
    reached.fixed &= !tainted;
    Ok(reached)
}

/// The components of `path` that move: names and `..`.
fn names(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

fn step(here: &Reached, name: &OsStr, missing: Missing) -> io::Result<Step> {
    let path = here.path.join(name);
    let at_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let opened = match open_dir_at(&here.dir, name) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && may_create(here, missing) => {
            make_dir_at(&here.dir, name, 0o755).map_err(at_path)?;
            open_dir_at(&here.dir, name)
        }
        other => other,
    };
    match opened {
        Ok(dir) => {
            let meta = dir.metadata()?;
            let fixed = here.fixed && entry_fixed(&here.meta, &meta);
            Ok(Step::Dir(Reached { dir, meta, path, fixed }))
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => follow(here, name, &path),
        Err(e) => Err(at_path(e)),
    }
}

fn may_create(here: &Reached, missing: Missing) -> bool {
    match missing {
        Missing::Fail => false,
        Missing::CreateWhereRootPrivate => here.fixed && root_private(&here.meta),
        Missing::Create => true,
    }
}

/// The target of the link `name` in `here`, if it is root's link in root's directory.
fn follow(here: &Reached, name: &OsStr, path: &Path) -> io::Result<Step> {
    let link = fs::symlink_metadata(at(&here.dir, name))?;
    if !link.file_type().is_symlink() {
        return Err(invalid(format!("{} is not a directory", path.display())));
    }
    if !(root_private(&here.meta) && link.uid() == 0) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is a symbolic link that a user other than root can change (the link belongs to uid {}, \
                 its directory to uid {} with mode {:04o}); refusing to follow it. Point StaplingStore at \
                 the real directory",
                path.display(),
                link.uid(),
                here.meta.uid(),
                here.meta.mode() & 0o7777
            ),
        ));
    }
    let target = fs::read_link(at(&here.dir, name))?;
    if target.as_os_str().is_empty() {
        return Err(invalid(format!("{} is an empty symbolic link", path.display())));
    }
    Ok(Step::Link(target))
}

// ---------------------------------------------------------------------------
// the store directory
// ---------------------------------------------------------------------------

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

/// Refuses a directory that holds anything but our files. Reads the open directory,
/// not its path, which another user may have swapped meanwhile.
fn check_ours(dir: &File) -> io::Result<()> {
    let foreign = fs::read_dir(fd_path(dir))?.flatten().find(|e| !is_our_file(&e.file_name().to_string_lossy()));
    match foreign {
        None => Ok(()),
        Some(e) => Err(invalid(format!(
            "holds {:?}, which is not a stored response; refusing to take the directory over. \
             Point StaplingStore at a directory of its own",
            e.file_name()
        ))),
    }
}

/// Opens the store `name` in `above` without following a link.
fn open_store_at(above: &File, name: &OsStr) -> io::Result<File> {
    open_dir_at(above, name).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP | libc::ENOTDIR) => invalid(
            "is a symbolic link or not a directory; refusing to follow or take it over. \
             Point StaplingStore at a directory of its own",
        ),
        _ => e,
    })
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

/// The effective uid and gid of this process, from /proc/self/status.
fn effective_ids() -> (u32, u32) {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    // "Uid:\treal\teffective\tsaved\tfs"; a process that cannot read it owns nothing.
    let effective = |tag: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(tag))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u32::MAX)
    };
    (effective("Uid:"), effective("Gid:"))
}

/// What root did in [`DiskStore::prepare_as_root`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootPart {
    /// The store exists, is mode 0700 and belongs to the server user.
    HandedOver,
    /// Root did nothing: the path above the store is not root's alone (the reason is
    /// given). The server user creates and checks it ([`DiskStore::prepare`]).
    LeftToServerUser(String),
}

/// Why a file in the store is not read.
enum Unread {
    /// There is none.
    Absent,
    /// It is not a plain file of ours: what it is.
    Refused(String),
    /// Reading it failed.
    Failed(io::Error),
}

impl From<io::Error> for Unread {
    fn from(e: io::Error) -> Unread {
        Unread::Failed(e)
    }
}

/// What `meta` is if it is not a stored response `user` may read: a plain file with
/// one link, owned by `user`, no larger than any OCSP response.
fn refusal(meta: &Metadata, user: u32) -> Option<String> {
    if let Some(kind) = odd_kind(meta.file_type()) {
        return Some(kind.to_string());
    }
    if meta.nlink() != 1 {
        return Some(format!("a hard link ({} names for one file)", meta.nlink()));
    }
    if meta.uid() != user {
        return Some(format!("owned by uid {}, not by the server user (uid {user})", meta.uid()));
    }
    (meta.len() > MAX_RESPONSE_BYTES)
        .then(|| format!("{} bytes, larger than any OCSP response ({MAX_RESPONSE_BYTES} at most)", meta.len()))
}

/// What a file of type `t` is, unless it is a regular file.
fn odd_kind(t: fs::FileType) -> Option<&'static str> {
    if t.is_file() {
        None
    } else if t.is_symlink() {
        Some("a symbolic link")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_char_device() || t.is_block_device() {
        Some("a device")
    } else if t.is_dir() {
        Some("a directory")
    } else {
        Some("not a regular file")
    }
}

/// Reads `name` in `dir` if it is a stored response `user` may read: checked with
/// `fstatat(AT_SYMLINK_NOFOLLOW)` before it is opened (so a FIFO or device is never
/// opened), opened with `O_NOFOLLOW|O_NONBLOCK`, and checked again on the descriptor.
fn read_stored(dir: &File, name: &str, user: u32) -> Result<Vec<u8>, Unread> {
    let before = match fs::symlink_metadata(at(dir, name)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Unread::Absent),
        other => other?,
    };
    if let Some(what) = refusal(&before, user) {
        return Err(Unread::Refused(what));
    }
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(at(dir, name));
    let file = match opened {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Unread::Absent),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(Unread::Refused("a symbolic link".into())),
        other => other?,
    };
    let meta = file.metadata()?;
    if (meta.dev(), meta.ino()) != (before.dev(), before.ino()) {
        return Err(Unread::Refused("a file that was replaced while it was being opened".into()));
    }
    if let Some(what) = refusal(&meta, user) {
        return Err(Unread::Refused(what));
    }
    let mut bytes = Vec::new();
    file.take(MAX_RESPONSE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_RESPONSE_BYTES {
        return Err(Unread::Refused("a file that grew larger than any OCSP response".into()));
    }
    Ok(bytes)
}

/// Creates `name` in `dir` (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600) holding `bytes`,
/// synced. A leftover of that name (a crashed writer with our pid, or something
/// planted) is deleted first, never written through.
fn write_new_at(dir: &File, name: &str, bytes: &[u8]) -> io::Result<()> {
    let create = || {
        OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(at(dir, name))
    };
    let mut file = match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            remove_at(dir, name)?;
            create()?
        }
        other => other?,
    };
    file.write_all(bytes)?;
    file.sync_all()
}

/// A directory of stored responses, owned by the server user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskStore {
    dir: PathBuf,
    /// The server user (uid, gid): the store's owner, and the only one who reads,
    /// writes and deletes its entries.
    user: (u32, u32),
}

impl DiskStore {
    /// A store in `dir` (not created here) for this process's effective user.
    pub fn new(dir: impl Into<PathBuf>) -> DiskStore {
        DiskStore { dir: dir.into(), user: effective_ids() }
    }

    /// A store in `dir` (not created here) owned by the server user `uid`/`gid`.
    pub fn for_user(dir: impl Into<PathBuf>, uid: u32, gid: u32) -> DiskStore {
        DiskStore { dir: dir.into(), user: (uid, gid) }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory above the store, and the store's name in it.
    fn split(&self) -> io::Result<(&Path, &OsStr)> {
        match (self.dir.parent(), self.dir.components().next_back()) {
            (Some(parent), Some(Component::Normal(name))) => Ok((parent, name)),
            _ => Err(invalid(format!("{} cannot be a store directory", self.dir.display()))),
        }
    }

    /// Root's part, in the parent before the helper runs: creates the store (mode 0700)
    /// and hands it to the server user, but only where no one else can change the path:
    /// every directory on the way (see [`walk`]) and the one above the store must be
    /// root's alone. Anywhere else (RHEL's `/var/lib/httpd` belongs to `apache`) root does
    /// nothing and returns [`RootPart::LeftToServerUser`]; the helper then calls
    /// [`DiskStore::prepare`] as that user.
    ///
    /// An existing store is only taken over if it belongs to root or the server user and
    /// holds nothing but our files, so a mistyped `StaplingStore /var/www` never re-owns
    /// someone else's data. Root sets mode and owner on the open directory, never on a
    /// path, and never touches an entry: one may be a hard link to a file of root's.
    pub fn prepare_as_root(&self) -> io::Result<RootPart> {
        let (parent, name) = self.split()?;
        let above = match walk(parent, Missing::CreateWhereRootPrivate) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(RootPart::LeftToServerUser(format!("{e}, and root creates nothing where others write")))
            }
            other => other?,
        };
        if !above.fixed {
            return Ok(RootPart::LeftToServerUser(format!(
                "a user other than root can change the directories on the way to {}",
                above.path.display()
            )));
        }
        if !root_private(&above.meta) {
            return Ok(RootPart::LeftToServerUser(format!(
                "the directory above it, {}, belongs to uid {} with mode {:04o}",
                above.path.display(),
                above.meta.uid(),
                above.meta.mode() & 0o7777
            )));
        }
        make_dir_at(&above.dir, name, 0o700)?;
        let store = open_store_at(&above.dir, name)?;
        let owner = store.metadata()?.uid();
        if owner != 0 && owner != self.user.0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("belongs to uid {owner}, neither root nor the server's User; refusing to take it over"),
            ));
        }
        check_ours(&store)?;
        store.set_permissions(fs::Permissions::from_mode(0o700))?;
        std::os::unix::fs::fchown(&store, Some(self.user.0), Some(self.user.1))?;
        Ok(RootPart::HandedOver)
    }

    /// The server user's part, in the startup helper: creates the store (mode 0700, and
    /// any missing directory above it) where root left that to the server user, and
    /// checks it in any case: a directory (not a link) of the server user's, holding
    /// nothing but our files.
    pub fn prepare(&self) -> io::Result<()> {
        let (parent, name) = self.split()?;
        let above = walk(parent, Missing::Create)?;
        make_dir_at(&above.dir, name, 0o700)?;
        let store = self.open_checked(&above.dir, name)?;
        check_ours(&store)?;
        if store.metadata()?.mode() & 0o777 != 0o700 {
            store.set_permissions(fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }

    /// The store, opened by [`walk`]: a directory (not a link) of the server user's.
    fn open(&self) -> io::Result<File> {
        let (parent, name) = self.split()?;
        let above = walk(parent, Missing::Fail)?;
        self.open_checked(&above.dir, name)
    }

    fn open_checked(&self, above: &File, name: &OsStr) -> io::Result<File> {
        let store = open_store_at(above, name)?;
        let owner = store.metadata()?.uid();
        if owner != self.user.0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "belongs to uid {owner}, not to the server user (uid {}); chown it to the server user or \
                     point StaplingStore elsewhere",
                    self.user.0
                ),
            ));
        }
        Ok(store)
    }

    /// The file name for `key`.
    fn name(key: &CertKey) -> String {
        format!("{}.der", hex(key))
    }

    /// The file for `key`.
    pub fn path(&self, key: &CertKey) -> PathBuf {
        self.dir.join(Self::name(key))
    }

    /// The stored bytes for `key`, if any; run as the server user. Only a plain file with
    /// one link, owned by the server user and no larger than any OCSP response, is read.
    /// Anything else (a symbolic link, a hard link, a FIFO, which is never opened, a
    /// device, a file of another user's) is deleted and the error names the file and
    /// what it was. A store that does not exist (yet) holds nothing.
    pub fn load(&self, key: &CertKey) -> io::Result<Option<Vec<u8>>> {
        let store = match self.open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            other => other.map_err(|e| self.context(e))?,
        };
        let name = Self::name(key);
        match read_stored(&store, &name, self.user.0) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(Unread::Absent) => Ok(None),
            Err(Unread::Failed(e)) => Err(io::Error::new(e.kind(), format!("{}: {e}", self.path(key).display()))),
            Err(Unread::Refused(what)) => {
                let done = match remove_at(&store, &name) {
                    Ok(()) => "deleted it".to_string(),
                    Err(e) => format!("could not delete it ({e})"),
                };
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is {what}, not a stored response; {done}", self.path(key).display()),
                ))
            }
        }
    }

    /// Writes `der` for `key` atomically, mode 0600; run as the server user: a new temp
    /// file in the open store, fsync, rename over the old file, fsync of the directory.
    pub fn save(&self, key: &CertKey, der: &[u8]) -> io::Result<()> {
        let store = self.open()?;
        let tmp = format!(".{}.{}.tmp", hex(key), std::process::id());
        let result = write_new_at(&store, &tmp, der)
            .and_then(|()| fs::rename(at(&store, &tmp), at(&store, Self::name(key))))
            .and_then(|()| store.sync_all());
        if result.is_err() {
            let _ = remove_at(&store, &tmp);
        }
        result
    }

    /// Deletes the file for `key`; run as the server user.
    pub fn remove(&self, key: &CertKey) -> io::Result<()> {
        let removed = self.open().and_then(|store| remove_at(&store, Self::name(key)));
        match removed {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes files of certificates not in `keep` that were last written more than
    /// `grace` ago, and stale temp files; run as the server user (in the helper). Ages
    /// come from `fstatat(AT_SYMLINK_NOFOLLOW)` and removal is `unlinkat`, both relative
    /// to the open store. Returns the names removed.
    pub fn prune(&self, keep: &[CertKey], grace: Duration) -> Vec<String> {
        let keep: Vec<String> = keep.iter().map(Self::name).collect();
        let now = SystemTime::now();
        let mut removed = Vec::new();
        let Ok(store) = self.open() else { return removed };
        let Ok(entries) = fs::read_dir(fd_path(&store)) else { return removed };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let shown = name.to_string_lossy().into_owned();
            if !(shown.ends_with(".der") || shown.ends_with(".tmp")) || keep.contains(&shown) {
                continue;
            }
            let age = fs::symlink_metadata(at(&store, &name))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age >= grace && remove_at(&store, &name).is_ok() {
                removed.push(shown);
            }
        }
        removed
    }

    /// `e`, prefixed with the store directory.
    fn context(&self, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("store directory {}: {e}", self.dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{chown, symlink};

    /// The uid the server user has in these tests when they run as root.
    const NOBODY: u32 = 65534;

    fn as_root() -> bool {
        effective_ids().0 == 0
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn set_mode(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mkfifo(path: &Path) {
        let made = std::process::Command::new("mkfifo").arg(path).status().unwrap();
        assert!(made.success());
    }

    /// A temp dir that the walk may cross: mode 0755 (tempfile makes 0700 ones).
    fn tempdir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        set_mode(dir.path(), 0o755);
        dir
    }

    #[test]
    fn save_load_remove() {
        let dir = tempdir();
        let store = DiskStore::new(dir.path().join("s"));
        store.prepare().unwrap();
        let key = [7u8; 20];
        assert_eq!(store.load(&key).unwrap(), None);
        store.save(&key, b"der").unwrap();
        assert_eq!(store.load(&key).unwrap().as_deref(), Some(&b"der"[..]));
        assert_eq!(mode(&store.path(&key)), 0o600);
        assert_eq!(mode(store.dir()), 0o700);
        store.remove(&key).unwrap();
        assert_eq!(store.load(&key).unwrap(), None);
    }

    #[test]
    fn missing_directories_are_created_and_a_missing_store_holds_nothing() {
        let dir = tempdir();
        let store = DiskStore::new(dir.path().join("a/b/s"));
        assert_eq!(store.load(&[1; 20]).unwrap(), None, "not there yet");
        assert!(store.prune(&[], Duration::ZERO).is_empty());
        store.prepare().unwrap();
        assert_eq!(mode(&dir.path().join("a/b")), 0o755);
        store.save(&[1; 20], b"x").unwrap();
        assert!(DiskStore::new("relative/s").prepare().is_err(), "paths are absolute");
        assert!(DiskStore::new("/").prepare().is_err(), "/ is no store");
    }

    #[test]
    fn a_directory_with_foreign_files_is_not_taken_over() {
        let top = tempdir();
        let dir = top.path().join("www");
        fs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o755);
        fs::write(dir.join("index.html"), b"someone's data").unwrap();
        let err = DiskStore::new(&dir).prepare().unwrap_err();
        assert!(err.to_string().contains("index.html"), "{err}");
        assert_eq!(mode(&dir), 0o755, "left alone");
        if as_root() {
            let err = DiskStore::for_user(&dir, NOBODY, NOBODY).prepare_as_root().unwrap_err();
            assert!(err.to_string().contains("index.html"), "{err}");
            assert_eq!((mode(&dir), fs::metadata(&dir).unwrap().uid()), (0o755, 0), "left alone");
        }
        // Our own files (and an empty directory) are fine.
        let ours = tempdir();
        let store = DiskStore::new(ours.path());
        store.prepare().unwrap();
        store.save(&[3; 20], b"x").unwrap();
        fs::write(ours.path().join(format!(".{}.123.tmp", hex(&[4; 20]))), b"").unwrap();
        store.prepare().unwrap();
        assert!(DiskStore::new(dir.join("index.html")).prepare().is_err(), "a file is not a directory");
    }

    #[test]
    fn oversized_and_odd_files_are_refused_and_deleted() {
        let dir = tempdir();
        let store = DiskStore::new(dir.path());
        let key = [1u8; 20];
        fs::write(store.path(&key), vec![0u8; MAX_RESPONSE_BYTES as usize + 10]).unwrap();
        let err = store.load(&key).unwrap_err().to_string();
        assert!(err.contains("larger than any OCSP response") && err.contains("deleted it"), "{err}");
        assert!(!store.path(&key).exists());
        fs::create_dir(store.path(&key)).unwrap();
        let err = store.load(&key).unwrap_err().to_string();
        assert!(err.contains("a directory") && err.contains(&hex(&key)), "{err}");
        assert!(!store.path(&key).exists(), "an empty directory is removed too");
    }

    #[test]
    fn prune_keeps_configured_and_recent_files() {
        let dir = tempdir();
        let store = DiskStore::new(dir.path());
        store.save(&[1; 20], b"a").unwrap();
        store.save(&[2; 20], b"b").unwrap();
        assert!(store.prune(&[[1; 20]], Duration::from_secs(3600)).is_empty(), "grace period");
        let removed = store.prune(&[[1; 20]], Duration::ZERO);
        assert_eq!(removed, vec![format!("{}.der", hex(&[2; 20]))]);
        assert!(store.load(&[1; 20]).unwrap().is_some());
    }

    #[test]
    fn prune_removes_a_link_never_its_target() {
        let dir = tempdir();
        let store = DiskStore::new(dir.path().join("s"));
        store.prepare().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep me").unwrap();
        symlink(&victim, store.path(&[9; 20])).unwrap();
        assert_eq!(store.prune(&[], Duration::ZERO), vec![format!("{}.der", hex(&[9; 20]))]);
        assert_eq!(fs::read(&victim).unwrap(), b"keep me");
    }

    #[test]
    fn a_symlinked_store_is_refused_and_its_target_left_alone() {
        let dir = tempdir();
        let target = dir.path().join("target");
        fs::create_dir(&target).unwrap();
        set_mode(&target, 0o755);
        let link = dir.path().join("store");
        symlink(&target, &link).unwrap();
        let err = DiskStore::new(&link).prepare().unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        if as_root() {
            let err = DiskStore::for_user(&link, NOBODY, NOBODY).prepare_as_root().unwrap_err();
            assert!(err.to_string().contains("symbolic link"), "{err}");
        }
        let meta = fs::metadata(&target).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o755, "mode untouched");
        assert_ne!(meta.uid(), NOBODY, "owner untouched");
    }

    #[test]
    fn a_link_on_the_way_is_refused_unless_root_alone_can_change_it() {
        let dir = tempdir();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        set_mode(&open, 0o777); // anyone may swap entries here
        symlink(&real, open.join("link")).unwrap();
        let store = DiskStore::new(open.join("link/s"));
        let err = store.prepare().unwrap_err().to_string();
        assert!(err.contains("refusing to follow") && err.contains("open/link"), "{err}");
        assert!(!real.join("s").exists(), "nothing created through the link");
        if as_root() {
            assert!(DiskStore::for_user(open.join("link/s"), NOBODY, NOBODY).prepare_as_root().is_err());
            // A link that is not root's, in root's own directory, is refused too.
            symlink(&real, dir.path().join("theirs")).unwrap();
            std::os::unix::fs::lchown(dir.path().join("theirs"), Some(NOBODY), Some(NOBODY)).unwrap();
            let err = DiskStore::new(dir.path().join("theirs/s")).prepare().unwrap_err();
            assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
            assert!(!real.join("s").exists());
        }
    }

    #[test]
    fn roots_link_in_roots_directory_is_followed_like_rhels_state_link() {
        if !as_root() {
            return; // the link must be root's
        }
        // <tmp>/etc/httpd/state -> ../../var/lib/httpd, as on RHEL.
        let dir = tempdir();
        let lib = dir.path().join("var/lib/httpd");
        fs::create_dir_all(&lib).unwrap();
        fs::create_dir_all(dir.path().join("etc/httpd")).unwrap();
        symlink("../../var/lib/httpd", dir.path().join("etc/httpd/state")).unwrap();
        let store = DiskStore::for_user(dir.path().join("etc/httpd/state/mod_stapling"), NOBODY, NOBODY);
        // /var/lib/httpd is root's here: root creates the store and hands it over.
        assert_eq!(store.prepare_as_root().unwrap(), RootPart::HandedOver);
        let made = fs::metadata(lib.join("mod_stapling")).unwrap();
        assert_eq!((made.uid(), made.mode() & 0o777), (NOBODY, 0o700));
        // With /var/lib/httpd the server user's (RHEL), root leaves it alone.
        fs::remove_dir(lib.join("mod_stapling")).unwrap();
        chown(&lib, Some(NOBODY), Some(NOBODY)).unwrap();
        set_mode(&lib, 0o700);
        match store.prepare_as_root().unwrap() {
            RootPart::LeftToServerUser(why) => assert!(why.contains("uid 65534"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(!lib.join("mod_stapling").exists(), "root created nothing there");
        assert_eq!(fs::metadata(&lib).unwrap().uid(), NOBODY);
    }

    #[test]
    fn a_link_reached_through_a_directory_others_can_write_taints_the_rest_of_the_walk() {
        if !as_root() {
            return;
        }
        // dir/open (0777) / roots (root's, 0755) / link -> ../../real: the link is root's, in
        // a directory of root's alone, but whoever writes `open` chose which `roots` it is.
        let dir = tempdir();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        set_mode(&real, 0o755);
        let roots = dir.path().join("open/roots");
        fs::create_dir_all(&roots).unwrap();
        set_mode(&dir.path().join("open"), 0o777);
        set_mode(&roots, 0o755);
        symlink("../../real", roots.join("link")).unwrap();
        let store = DiskStore::for_user(roots.join("link/s"), NOBODY, NOBODY);
        assert!(matches!(store.prepare_as_root().unwrap(), RootPart::LeftToServerUser(_)));
        assert!(!real.join("s").exists(), "root created nothing");
        // Reached directly, `real` is root's alone.
        let direct = DiskStore::for_user(real.join("s"), NOBODY, NOBODY);
        assert_eq!(direct.prepare_as_root().unwrap(), RootPart::HandedOver);
    }

    #[test]
    fn root_leaves_a_store_under_a_directory_others_can_write_to_the_server_user() {
        if !as_root() {
            return;
        }
        let dir = tempdir();
        // (directory, its mode, whether a directory of root's inside it is root's alone)
        for (name, mode, inner_fixed) in [("sticky", 0o1777, true), ("group", 0o775, false), ("other", 0o757, false)] {
            let above = dir.path().join(name);
            fs::create_dir(&above).unwrap();
            set_mode(&above, mode);
            let store = DiskStore::for_user(above.join("s"), NOBODY, NOBODY);
            assert!(matches!(store.prepare_as_root().unwrap(), RootPart::LeftToServerUser(_)), "{name}");
            assert!(!above.join("s").exists(), "{name}: root created nothing");
            // Below such a directory, a directory of root's is root's alone only in the
            // sticky case (like the tests' ServerRoots in /tmp): there, no one else may
            // rename it. Elsewhere someone could have put it there.
            fs::create_dir(above.join("roots")).unwrap();
            let deeper = DiskStore::for_user(above.join("roots/s"), NOBODY, NOBODY);
            let part = deeper.prepare_as_root().unwrap();
            assert_eq!(part == RootPart::HandedOver, inner_fixed, "{name}: {part:?}");
            assert_eq!(above.join("roots/s").exists(), inner_fixed, "{name}");
        }
    }

    #[test]
    fn a_symlink_loop_ends() {
        let dir = tempdir();
        if !as_root() {
            return; // links are only followed when root's
        }
        symlink("b", dir.path().join("a")).unwrap();
        symlink("a", dir.path().join("b")).unwrap();
        let err = DiskStore::new(dir.path().join("a/s")).prepare().unwrap_err();
        assert!(err.to_string().contains("symbolic links on the way"), "{err}");
    }

    #[test]
    fn prepare_as_root_hands_over_the_directory_but_never_its_entries() {
        if !as_root() {
            return; // handing over needs root
        }
        let dir = tempdir();
        let mine = DiskStore::new(dir.path().join("s"));
        mine.prepare().unwrap();
        mine.save(&[5; 20], b"x").unwrap();
        let store = DiskStore::for_user(dir.path().join("s"), NOBODY, NOBODY);
        assert_eq!(store.prepare_as_root().unwrap(), RootPart::HandedOver);
        assert_eq!(fs::metadata(store.dir()).unwrap().uid(), NOBODY);
        // An entry may be a hard link to a file of root's: it keeps its owner.
        assert_eq!(fs::metadata(store.path(&[5; 20])).unwrap().uid(), 0);
        // ... and the server user does not read it: it is not theirs.
        let err = store.load(&[5; 20]).unwrap_err().to_string();
        assert!(err.contains("owned by uid 0") && err.contains("deleted it"), "{err}");
        // A store that belongs to some third user is not taken over.
        chown(store.dir(), Some(4242), Some(4242)).unwrap();
        assert!(store.prepare_as_root().is_err());
        assert!(store.prepare().is_err(), "nor used by the server user");
        assert_eq!(fs::metadata(store.dir()).unwrap().uid(), 4242);
    }

    #[test]
    fn links_fifos_and_foreign_files_are_never_read_and_are_deleted() {
        let dir = tempdir();
        let store = DiskStore::new(dir.path().join("s"));
        store.prepare().unwrap();
        let secret = dir.path().join("secret");
        fs::write(&secret, b"not yours").unwrap();
        let (fifo, link, hard, dev) = ([1u8; 20], [2u8; 20], [3u8; 20], [4u8; 20]);
        mkfifo(&store.path(&fifo));
        symlink(&secret, store.path(&link)).unwrap();
        fs::hard_link(&secret, store.path(&hard)).unwrap();
        symlink("/dev/zero", store.path(&dev)).unwrap();
        let started = std::time::Instant::now();
        for (key, what) in
            [(fifo, "a FIFO"), (link, "a symbolic link"), (hard, "a hard link"), (dev, "a symbolic link")]
        {
            let err = store.load(&key).unwrap_err().to_string();
            assert!(err.contains(what) && err.contains(&hex(&key)) && err.contains("deleted it"), "{err}");
            assert!(fs::symlink_metadata(store.path(&key)).is_err(), "{what} deleted");
        }
        assert!(started.elapsed() < Duration::from_secs(1), "a FIFO is never opened, so never waited on");
        assert_eq!(fs::read(&secret).unwrap(), b"not yours");
        assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1, "only the store's name went");
        if as_root() {
            fs::write(store.path(&[6; 20]), b"a file of another user's").unwrap();
            chown(store.path(&[6; 20]), Some(4242), None).unwrap();
            let err = store.load(&[6; 20]).unwrap_err().to_string();
            assert!(err.contains("owned by uid 4242"), "{err}");
        }
    }

    #[test]
    fn save_never_writes_through_a_planted_link() {
        let dir = tempdir();
        let store = DiskStore::new(dir.path().join("s"));
        store.prepare().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep me").unwrap();
        let key = [8u8; 20];
        // At the temp file's name and at the final name.
        symlink(&victim, store.dir().join(format!(".{}.{}.tmp", hex(&key), std::process::id()))).unwrap();
        store.save(&key, b"response").unwrap();
        symlink(&victim, store.path(&[9; 20])).unwrap();
        store.save(&[9; 20], b"response").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep me");
        assert_eq!(store.load(&key).unwrap().as_deref(), Some(&b"response"[..]));
        assert_eq!(store.load(&[9; 20]).unwrap().as_deref(), Some(&b"response"[..]));
        let mut names: Vec<String> =
            fs::read_dir(store.dir()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        names.sort();
        assert_eq!(names, vec![format!("{}.der", hex(&key)), format!("{}.der", hex(&[9; 20]))]);
    }
}
