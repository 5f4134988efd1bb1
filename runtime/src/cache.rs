//! The on-disk cache of compiled artifacts (C shared objects, cubins and PTX), shared by both
//! targets.
//!
//! An entry is keyed by a hash of everything that decides its bytes (source, target,
//! compiler version, options). It is written to a temporary file and renamed into place, so
//! readers never see half an entry and concurrent writers of the same key leave one whole
//! entry. Each entry ends with a trailer: the entry's [`Identity`] (its key and what formed
//! it), the identity's length, a magic and a checksum of everything before it. An entry is
//! used only when its checksum verifies *and* it names the key that was asked for: a
//! damaged entry, or a whole entry of another key copied over this one, is rebuilt, never
//! trusted.
//!
//! Only regular files are read, and never in a way that can block: a FIFO, socket, device,
//! directory or symbolic link to one at an entry's path is removed and replaced (a non-empty
//! directory is reported instead). Failures of the file system (a cache directory that cannot
//! be created or written, a full disk) are [`CacheError`]s that name the path and the OS
//! error. Temporary files and build folders that a killed process left next to the entries
//! are removed, an hour after they were last written, by the next build in that folder.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The cache directory: `$SMELT_CACHE_DIR`, else `~/.cache/smelt`.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SMELT_CACHE_DIR") {
        return PathBuf::from(d);
    }
    match std::env::var_os("HOME") {
        Some(h) => Path::new(&h).join(".cache/smelt"),
        None => std::env::temp_dir().join("smelt-cache"),
    }
}

/// 64-bit FNV-1a: stable across platforms and Rust versions (cache keys and checksums).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate parts so that ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A cache key: two independent FNV-1a hashes of the parts, as 32 hex digits.
pub fn key(parts: &[&[u8]]) -> String {
    let a = fnv1a(parts);
    let mut salted: Vec<&[u8]> = vec![b"smelt-cache-key-salt"];
    salted.extend_from_slice(parts);
    format!("{a:016x}{:016x}", fnv1a(&salted))
}

/// The trailer [`seal`] writes: payload · magic · checksum.
const MAGIC: &[u8; 8] = b"SMELTCK1";
/// The trailer of a cache entry: payload · identity · identity length (u32 LE) · magic ·
/// checksum of everything before the magic.
const ENTRY_MAGIC: &[u8; 8] = b"SMELTCK2";
/// Magic and checksum.
const TRAILER: usize = 16;

/// How old a temporary file or build folder must be before another process removes it.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);

/// How an entry was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Already loaded in this process.
    Memory,
    /// Read from disk and verified.
    Disk,
    /// Not in the cache: built.
    Built,
    /// In the cache but failed verification (or failed to load): rebuilt.
    Rebuilt,
}

/// What a cache entry says it is, stored in its trailer and compared on every read: an entry
/// whose identity is not the one asked for is a bad entry (another key's entry copied over
/// this one, or one written by an older smelt), rebuilt and never used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The cache key ([`key`] of everything that decides the entry's bytes).
    pub key: String,
    /// What formed the key, readable: the compiler, its version, the flags or options and
    /// the target. Part of the comparison, so a reader can also tell what an entry is.
    pub about: String,
}

impl Identity {
    /// The identity of the entry with `key`, formed by what `about` says.
    pub fn new(key: impl Into<String>, about: impl Into<String>) -> Identity {
        Identity {
            key: key.into(),
            about: about.into(),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        format!("{}\n{}", self.key, self.about).into_bytes()
    }

    fn from_bytes(b: &[u8]) -> Option<Identity> {
        let text = std::str::from_utf8(b).ok()?;
        let (key, about) = text.split_once('\n')?;
        Some(Identity::new(key, about))
    }
}

/// Why the cache could not give an entry: the file system refused, or something that is not
/// an entry sits at an entry's path. Both are problems of the machine, not of the model.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file system call failed: the cache directory cannot be created or written (it is a
    /// file, it is read-only, the disk is full).
    #[error("{}: {source}", path.display())]
    Io {
        /// The path the call was about.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Something that is not a cache entry (a non-empty directory, say) is at an entry's
    /// path and cannot be removed safely.
    #[error("{}: {what}", path.display())]
    NotAnEntry {
        /// The entry's path.
        path: PathBuf,
        /// What is there, and what to do.
        what: String,
    },
}

impl CacheError {
    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            CacheError::Io { path, .. } | CacheError::NotAnEntry { path, .. } => path,
        }
    }

    fn io(path: &Path, source: std::io::Error) -> CacheError {
        CacheError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

static DISK_HITS: AtomicU64 = AtomicU64::new(0);
static BUILDS: AtomicU64 = AtomicU64::new(0);
static REBUILDS: AtomicU64 = AtomicU64::new(0);

/// Counters since the process started: (disk hits, builds, rebuilds of bad entries).
pub fn counters() -> (u64, u64, u64) {
    (
        DISK_HITS.load(Ordering::Relaxed),
        BUILDS.load(Ordering::Relaxed),
        REBUILDS.load(Ordering::Relaxed),
    )
}

/// Appends the plain trailer [`verify`] checks: the magic and the checksum of `bytes` (for
/// files that are not cache entries, such as bundles).
pub fn seal(bytes: &mut Vec<u8>) {
    let sum = fnv1a(&[bytes]);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&sum.to_le_bytes());
}

/// Appends a cache entry's trailer: `id`, its length, the magic and the checksum of the
/// payload and the identity.
pub fn seal_entry(bytes: &mut Vec<u8>, id: &Identity) {
    let id = id.to_bytes();
    bytes.extend_from_slice(&id);
    bytes.extend_from_slice(&(id.len() as u32).to_le_bytes());
    let sum = fnv1a(&[bytes]);
    bytes.extend_from_slice(ENTRY_MAGIC);
    bytes.extend_from_slice(&sum.to_le_bytes());
}

/// The trailer's magic and whether its checksum matches the bytes before it.
fn check(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let body_len = bytes.len().checked_sub(TRAILER)?;
    let (body, trailer) = bytes.split_at(body_len);
    let (magic, sum) = trailer.split_at(8);
    (sum == fnv1a(&[body]).to_le_bytes()).then_some((body, magic))
}

/// True when `bytes` ends with a trailer (of [`seal`] or [`seal_entry`]) whose checksum
/// matches what precedes it.
pub fn verify(bytes: &[u8]) -> bool {
    match check(bytes) {
        Some((_, magic)) if magic == MAGIC => true,
        Some((body, magic)) if magic == ENTRY_MAGIC => split_identity(body).is_some(),
        _ => false,
    }
}

/// The payload and identity of a body sealed by [`seal_entry`] (without magic and checksum).
fn split_identity(body: &[u8]) -> Option<(&[u8], Identity)> {
    let len_at = body.len().checked_sub(4)?;
    let len = u32::from_le_bytes(body[len_at..].try_into().ok()?) as usize;
    let id_at = len_at.checked_sub(len)?;
    let id = Identity::from_bytes(&body[id_at..len_at])?;
    Some((&body[..id_at], id))
}

/// The payload and identity of a cache entry whose checksum verifies; `None` for anything
/// else (a damaged entry, an entry of an older format, something that is not an entry).
pub fn open_entry(bytes: &[u8]) -> Option<(&[u8], Identity)> {
    match check(bytes)? {
        (body, magic) if magic == ENTRY_MAGIC => split_identity(body),
        _ => None,
    }
}

/// What is at an entry's path.
enum Found {
    /// Nothing (or a path that cannot exist, under a file: creating the folder will say so).
    Missing,
    /// A regular file's bytes.
    File(Vec<u8>),
    /// A regular file that cannot be read (no permission): replaced like a bad entry.
    Unreadable,
    /// Something that is not a regular file: what it is.
    Odd(String),
}

/// What a file type is, in words.
fn kind(t: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_block_device() || t.is_char_device() {
            return "a device";
        }
    }
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading without blocking on a FIFO (`O_NONBLOCK`, which changes nothing
/// for a regular file).
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NONBLOCK);
    }
    o.open(path)
}

/// The bytes of the regular file at `path` (a symbolic link to one is followed). Anything
/// else is an error of kind `InvalidData` that says what it is, found without opening it in
/// a way that can block.
pub fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    let odd = |t: std::fs::FileType| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is {}, not a regular file", path.display(), kind(t)),
        )
    };
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(odd(meta.file_type()));
    }
    let mut f = open_nonblocking(path)?;
    // Checked again on the open file: the path may have been replaced in between.
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(odd(meta.file_type()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn find(path: &Path) -> Found {
    let link = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(_) => return Found::Missing,
    };
    let target = match std::fs::metadata(path) {
        Ok(m) => m,
        // A dangling link.
        Err(_) => return Found::Odd("a dangling symbolic link".into()),
    };
    if !target.is_file() {
        let what = kind(target.file_type());
        return Found::Odd(match link.file_type().is_symlink() {
            true => format!("a symbolic link to {what}"),
            false => what.to_string(),
        });
    }
    match read_regular(path) {
        Ok(bytes) => Found::File(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Found::Odd(e.to_string()),
        Err(_) => Found::Unreadable,
    }
}

/// Removes what is not an entry at `path` so that one can be written there: unlinks a FIFO,
/// socket, device or symbolic link (never opening it, never touching a link's target) and
/// an empty directory; a non-empty directory is an error.
fn clear(path: &Path, what: &str) -> Result<(), CacheError> {
    let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    let removed = match is_dir {
        true => std::fs::remove_dir(path),
        false => std::fs::remove_file(path),
    };
    match removed {
        Ok(()) => {
            eprintln!(
                "warning: {} is {what}, not a cache entry: replaced it",
                path.display()
            );
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CacheError::NotAnEntry {
            path: path.to_path_buf(),
            what: format!("is {what}, not a cache entry, and cannot be removed ({e}): remove it"),
        }),
    }
}

/// The payload of the entry at `path` when it verifies and is `id`'s, counted as a disk
/// hit; `None` when it is missing, damaged, another key's or not a regular file (nothing is
/// removed here: [`get_or_build`] replaces it).
pub fn load(path: &Path, id: &Identity) -> Option<Vec<u8>> {
    let Found::File(bytes) = find(path) else {
        return None;
    };
    let (payload, found) = open_entry(&bytes)?;
    if found != *id {
        return None;
    }
    DISK_HITS.fetch_add(1, Ordering::Relaxed);
    Some(payload.to_vec())
}

/// A unique temporary path next to `path` (same directory, so a rename is atomic):
/// `NAME.tmp.PID.NANOS.SEQ`, the pattern [`remove_stale`] recognizes.
pub fn temp_path(path: &Path) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".tmp.{}.{nanos}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    path.with_file_name(name)
}

/// The process id in a name [`temp_path`] made, `None` for any other name.
fn temp_owner(name: &str) -> Option<u32> {
    let mut parts = name.rsplitn(5, '.');
    let (seq, nanos, pid, tmp) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let named = parts.next().is_some_and(|n| !n.is_empty());
    (tmp == "tmp" && named && digits(seq) && digits(nanos))
        .then(|| pid.parse().ok())
        .flatten()
}

/// Whether process `pid` is alive on this machine, where that can be told.
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    match Path::new("/proc/self").exists() {
        true => Path::new("/proc").join(pid.to_string()).exists(),
        // No way to tell: age alone decides.
        false => false,
    }
}

/// Removes the temporary files and build folders in `dir` (names made by [`temp_path`])
/// last written more than `older_than` ago by a process that is no longer running: what a
/// killed build leaves. Errors are ignored (another process may be removing them too).
/// Returns how many were removed.
pub fn remove_stale(dir: &Path, older_than: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(temp_owner) else {
            continue;
        };
        // Not following links: a link is removed, never what it points at.
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok());
        if age.is_none_or(|a| a < older_than) || alive(pid) {
            continue;
        }
        let r = match meta.is_dir() {
            true => std::fs::remove_dir_all(e.path()),
            false => std::fs::remove_file(e.path()),
        };
        removed += usize::from(r.is_ok());
    }
    removed
}

/// The verified entry `id` at `path`, building it with `build` when it is missing, damaged,
/// another key's, or not a regular file. `build` gets a temporary path to write the artifact
/// to; the trailer is appended and the file renamed into place here. Errors of the file
/// system are [`CacheError`]s, turned into `E` like `build`'s own errors.
pub fn get_or_build<E: From<CacheError>>(
    path: &Path,
    id: &Identity,
    build: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<Outcome, E> {
    let existed = match find(path) {
        Found::File(bytes) if open_entry(&bytes).is_some_and(|(_, found)| found == *id) => {
            DISK_HITS.fetch_add(1, Ordering::Relaxed);
            return Ok(Outcome::Disk);
        }
        Found::File(_) | Found::Unreadable => true,
        Found::Odd(what) => {
            clear(path, &what)?;
            true
        }
        Found::Missing => false,
    };
    write(path, id, existed, build)
}

/// Builds entry `id` at `path` again, over whatever is there (an entry that verified but
/// could not be loaded): [`Outcome::Rebuilt`].
pub fn rebuild<E: From<CacheError>>(
    path: &Path,
    id: &Identity,
    build: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<Outcome, E> {
    if let Found::Odd(what) = find(path) {
        clear(path, &what)?;
    }
    write(path, id, true, build)
}

fn write<E: From<CacheError>>(
    path: &Path,
    id: &Identity,
    existed: bool,
    build: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<Outcome, E> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(|e| CacheError::io(parent, e))?;
    remove_stale(parent, STALE_AFTER);
    let tmp = temp_path(path);
    let result = build(&tmp).and_then(|()| Ok(seal_into_place(&tmp, path, id)?));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    if existed {
        REBUILDS.fetch_add(1, Ordering::Relaxed);
        Ok(Outcome::Rebuilt)
    } else {
        BUILDS.fetch_add(1, Ordering::Relaxed);
        Ok(Outcome::Built)
    }
}

/// Appends `id`'s trailer to the built artifact `tmp`, syncs it and renames it to `path`.
fn seal_into_place(tmp: &Path, path: &Path, id: &Identity) -> Result<(), CacheError> {
    let at_tmp = |e| CacheError::io(tmp, e);
    let mut bytes = read_regular(tmp).map_err(at_tmp)?;
    seal_entry(&mut bytes, id);
    let mut f = std::fs::File::create(tmp).map_err(at_tmp)?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(at_tmp)?;
    std::fs::rename(tmp, path).map_err(|e| CacheError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A fresh directory for one test, removed when dropped.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let d =
                std::env::temp_dir().join(format!("smelt-cache-test-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Scratch(d)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn id(key: &str) -> Identity {
        Identity::new(key, "test compiler 1.0 -O2")
    }

    fn writes(payload: &'static [u8]) -> impl Fn(&Path) -> Result<(), CacheError> {
        move |p: &Path| std::fs::write(p, payload).map_err(|e| CacheError::io(p, e))
    }

    fn payload(path: &Path) -> Vec<u8> {
        let bytes = std::fs::read(path).unwrap();
        open_entry(&bytes).unwrap().0.to_vec()
    }

    /// Runs `f` on another thread and fails (rather than hangs) when it takes over 30 s.
    fn within_30s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("blocked on the entry (opened a FIFO for reading?)")
    }

    fn mkfifo(path: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    }

    #[test]
    fn keys_separate_parts_and_are_stable() {
        assert_ne!(key(&[b"ab", b"c"]), key(&[b"a", b"bc"]));
        assert_eq!(key(&[b"x"]), key(&[b"x"]));
        assert_eq!(key(&[b"x"]).len(), 32);
        // Pinned: a key must not change between builds, or every cache goes cold.
        assert_eq!(fnv1a(&[]), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn a_bad_entry_is_rebuilt_and_a_good_one_is_reused() {
        let dir = Scratch::new("bad");
        let path = dir.0.join("cpu").join("entry.bin");
        let me = id("k1");
        let write = writes(b"payload");
        assert_eq!(get_or_build(&path, &me, &write).unwrap(), Outcome::Built);
        assert_eq!(
            get_or_build(&path, &me, |_| -> Result<(), CacheError> { unreachable!() }).unwrap(),
            Outcome::Disk
        );
        assert_eq!(load(&path, &me).unwrap(), b"payload");
        // Flip a byte of the payload: the checksum no longer matches.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(load(&path, &me).is_none());
        assert_eq!(get_or_build(&path, &me, &write).unwrap(), Outcome::Rebuilt);
        assert!(verify(&std::fs::read(&path).unwrap()));
        // A truncated entry too.
        std::fs::write(&path, b"pay").unwrap();
        assert_eq!(get_or_build(&path, &me, &write).unwrap(), Outcome::Rebuilt);
        // A failed build leaves no entry and no temporary file behind.
        std::fs::remove_file(&path).unwrap();
        let fail = |_: &Path| Err(CacheError::io(Path::new("x"), std::io::Error::other("no")));
        assert!(get_or_build(&path, &me, fail).is_err());
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            0
        );
    }

    #[test]
    fn an_entry_of_another_key_is_never_used() {
        let dir = Scratch::new("swap");
        let (a, b) = (dir.0.join("a.so"), dir.0.join("b.so"));
        get_or_build(&a, &id("a"), writes(b"model a")).unwrap();
        get_or_build(&b, &id("b"), writes(b"model b")).unwrap();
        // B's whole entry, checksum and all, copied over A's.
        std::fs::copy(&b, &a).unwrap();
        assert!(verify(&std::fs::read(&a).unwrap()), "a well-formed entry");
        assert!(load(&a, &id("a")).is_none());
        assert_eq!(
            get_or_build(&a, &id("a"), writes(b"model a")).unwrap(),
            Outcome::Rebuilt
        );
        assert_eq!(payload(&a), b"model a");
        // Same key, other compiler or flags: another identity.
        let other = Identity::new("a", "test compiler 2.0 -O2");
        assert!(load(&a, &other).is_none());
        // An entry from before identities (the plain trailer) is rebuilt, not used.
        let mut old = b"model b".to_vec();
        seal(&mut old);
        std::fs::write(&a, &old).unwrap();
        assert!(verify(&old));
        assert_eq!(
            get_or_build(&a, &id("a"), writes(b"model a")).unwrap(),
            Outcome::Rebuilt
        );
        assert_eq!(payload(&a), b"model a");
    }

    #[test]
    fn fifos_and_links_at_an_entry_are_replaced_without_blocking() {
        let dir = Scratch::new("fifo");
        let path = dir.0.join("e.so");
        mkfifo(&path);
        let p = path.clone();
        assert!(within_30s(move || load(&p, &id("e"))).is_none());
        let p = path.clone();
        let got = within_30s(move || get_or_build(&p, &id("e"), writes(b"entry")).unwrap());
        assert_eq!(got, Outcome::Rebuilt);
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(payload(&path), b"entry");
        // A link to a FIFO: the link is replaced, the FIFO it points at left alone.
        let fifo = dir.0.join("elsewhere");
        mkfifo(&fifo);
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&fifo, &path).unwrap();
        let p = path.clone();
        let got = within_30s(move || get_or_build(&p, &id("e"), writes(b"entry")).unwrap());
        assert_eq!(got, Outcome::Rebuilt);
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert!(!std::fs::symlink_metadata(&fifo).unwrap().is_file());
        // A dangling link.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(dir.0.join("nowhere"), &path).unwrap();
        assert_eq!(
            get_or_build(&path, &id("e"), writes(b"entry")).unwrap(),
            Outcome::Rebuilt
        );
        // A link to a good entry is followed.
        let real = dir.0.join("real.so");
        std::fs::rename(&path, &real).unwrap();
        std::os::unix::fs::symlink(&real, &path).unwrap();
        assert_eq!(load(&path, &id("e")).unwrap(), b"entry");
        // An empty directory is replaced; a non-empty one is reported, not removed.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert_eq!(
            get_or_build(&path, &id("e"), writes(b"entry")).unwrap(),
            Outcome::Rebuilt
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("keep"), b"user data").unwrap();
        let e = get_or_build(&path, &id("e"), writes(b"entry")).unwrap_err();
        assert!(matches!(e, CacheError::NotAnEntry { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("e.so") && msg.contains("a directory"), "{msg}");
        assert!(path.join("keep").exists());
    }

    #[test]
    fn read_regular_refuses_what_is_not_a_file() {
        let dir = Scratch::new("regular");
        let fifo = dir.0.join("pipe");
        mkfifo(&fifo);
        let e = within_30s(move || read_regular(&fifo)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("FIFO"), "{e}");
        let e = read_regular(&dir.0).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        std::fs::write(dir.0.join("f"), b"x").unwrap();
        assert_eq!(read_regular(&dir.0.join("f")).unwrap(), b"x");
    }

    #[test]
    fn an_unusable_cache_directory_is_an_io_error_naming_it() {
        let dir = Scratch::new("unusable");
        // The cache "directory" is a regular file.
        let file = dir.0.join("cache");
        std::fs::write(&file, b"not a directory").unwrap();
        let path = file.join("cpu").join("e.so");
        let e = get_or_build(&path, &id("e"), writes(b"entry")).unwrap_err();
        let CacheError::Io { path: at, source } = &e else {
            panic!("{e:?}")
        };
        assert!(at.starts_with(&file), "{e}");
        assert_eq!(source.raw_os_error(), Some(libc::ENOTDIR), "{e}");
        assert!(e.to_string().contains("Not a directory"), "{e}");
        // A read-only directory (meaningless for root, who may write anyway).
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.0.join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        if std::fs::write(ro.join("probe"), b"").is_err() {
            let e = get_or_build(&ro.join("e.so"), &id("e"), writes(b"entry")).unwrap_err();
            assert!(
                matches!(&e, CacheError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied),
                "{e:?}"
            );
            assert!(e.to_string().contains("ro"), "{e}");
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn stale_temporaries_of_dead_builds_are_removed() {
        let dir = Scratch::new("stale");
        let d = &dir.0;
        let old = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
        let age = |p: &Path| {
            std::fs::File::open(p).unwrap().set_modified(old).unwrap();
        };
        // A killed build's folder and temporary file: an hour old, their process gone.
        let dead = 999_999_999u32;
        let work = d.join(format!("k.build.tmp.{dead}.17.0"));
        std::fs::create_dir_all(work.join("include/smelt")).unwrap();
        std::fs::write(work.join("model0.c"), b"int x;").unwrap();
        age(&work);
        let tmp = d.join(format!("k.so.tmp.{dead}.17.1"));
        std::fs::write(&tmp, b"half").unwrap();
        age(&tmp);
        // Kept: a recent one, one of a live process (this one), and other names.
        let recent = d.join(format!("r.so.tmp.{dead}.18.0"));
        std::fs::write(&recent, b"").unwrap();
        let live = d.join(format!("l.so.tmp.{}.19.0", std::process::id()));
        std::fs::write(&live, b"").unwrap();
        age(&live);
        let entry = d.join("0123.so");
        std::fs::write(&entry, b"").unwrap();
        age(&entry);
        let user = d.join("notes.tmp.txt");
        std::fs::write(&user, b"").unwrap();
        age(&user);
        // Building an entry in the folder cleans it.
        get_or_build(&d.join("n.so"), &id("n"), writes(b"n")).unwrap();
        assert!(!work.exists() && !tmp.exists());
        for kept in [&recent, &live, &entry, &user] {
            assert!(kept.exists(), "{}", kept.display());
        }
        assert_eq!(temp_owner(&format!("k.so.tmp.{dead}.17.1")), Some(dead));
        assert_eq!(temp_owner("a.tmp.1.2"), None);
        assert_eq!(temp_owner(".tmp.1.2.3"), None);
    }

    #[test]
    fn trailers_verify_and_name_their_identity() {
        let mut plain = b"bundle".to_vec();
        seal(&mut plain);
        assert!(verify(&plain));
        assert!(open_entry(&plain).is_none());
        let mut entry = b"code".to_vec();
        seal_entry(&mut entry, &id("k"));
        assert!(verify(&entry));
        let (p, found) = open_entry(&entry).unwrap();
        assert_eq!((p, found), (&b"code"[..], id("k")));
        // Every single-byte change is caught, identity and length included.
        for i in 0..entry.len() {
            let mut x = entry.clone();
            x[i] ^= 0x20;
            assert!(!verify(&x) && open_entry(&x).is_none(), "byte {i}");
        }
        for short in 0..entry.len() {
            assert!(open_entry(&entry[..short]).is_none());
        }
    }
}
