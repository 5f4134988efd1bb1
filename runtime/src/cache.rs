//! The on-disk cache of compiled artifacts (C shared objects now, cubins with the CUDA
//! runtime), shared by both targets.
//!
//! An entry is keyed by a hash of everything that decides its bytes (source, target,
//! compiler version, options). It is written to a temporary file and renamed into place, so
//! readers never see half an entry and concurrent writers of the same key leave one whole
//! entry. Each entry ends with a trailer (magic + checksum of the bytes before it); an entry
//! whose trailer does not verify is rebuilt, never trusted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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

const MAGIC: &[u8; 8] = b"SMELTCK1";

/// How an entry was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Already loaded in this process.
    Memory,
    /// Read from disk and verified.
    Disk,
    /// Not in the cache: built.
    Built,
    /// In the cache but failed verification: rebuilt.
    Rebuilt,
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

/// Appends the trailer [`verify`] checks: the magic and the checksum of `bytes`.
pub fn seal(bytes: &mut Vec<u8>) {
    let sum = fnv1a(&[bytes]);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&sum.to_le_bytes());
}

/// True when `bytes` ends with a trailer whose checksum matches what precedes it.
pub fn verify(bytes: &[u8]) -> bool {
    let Some(body_len) = bytes.len().checked_sub(16) else {
        return false;
    };
    let (body, trailer) = bytes.split_at(body_len);
    trailer[..8] == MAGIC[..] && trailer[8..] == fnv1a(&[body]).to_le_bytes()
}

/// The payload of the verified entry at `path` (its bytes without the trailer), counted as a
/// disk hit; `None` when it is missing or does not verify.
pub fn load(path: &Path) -> Option<Vec<u8>> {
    let mut bytes = std::fs::read(path).ok()?;
    if !verify(&bytes) {
        return None;
    }
    bytes.truncate(bytes.len() - 16);
    DISK_HITS.fetch_add(1, Ordering::Relaxed);
    Some(bytes)
}

/// A unique temporary path next to `path` (same directory, so a rename is atomic).
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

/// The verified entry at `path`, building it with `build` when it is missing or bad.
/// `build` gets a temporary path to write the artifact to; the trailer is appended and the
/// file renamed into place here.
pub fn get_or_build(
    path: &Path,
    build: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<Outcome, String> {
    let existed = match std::fs::read(path) {
        Ok(bytes) if verify(&bytes) => {
            DISK_HITS.fetch_add(1, Ordering::Relaxed);
            return Ok(Outcome::Disk);
        }
        Ok(_) => true,
        Err(_) => false,
    };
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let tmp = temp_path(path);
    let result = build(&tmp).and_then(|()| {
        let mut bytes = std::fs::read(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        seal(&mut bytes);
        let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
    });
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let dir = std::env::temp_dir().join(format!("smelt-cache-test-{}", std::process::id()));
        let path = dir.join("entry.bin");
        let _ = std::fs::remove_dir_all(&dir);
        let write = |p: &Path| std::fs::write(p, b"payload").map_err(|e| e.to_string());
        assert_eq!(get_or_build(&path, write).unwrap(), Outcome::Built);
        assert_eq!(
            get_or_build(&path, |_| unreachable!()).unwrap(),
            Outcome::Disk
        );
        // Flip a byte of the payload: the checksum no longer matches.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(get_or_build(&path, write).unwrap(), Outcome::Rebuilt);
        assert!(verify(&std::fs::read(&path).unwrap()));
        // A truncated entry too.
        std::fs::write(&path, b"pay").unwrap();
        assert_eq!(get_or_build(&path, write).unwrap(), Outcome::Rebuilt);
        // A failed build leaves no entry and no temporary file behind.
        std::fs::remove_file(&path).unwrap();
        assert!(get_or_build(&path, |_| Err("no".into())).is_err());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
