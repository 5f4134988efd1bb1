//! Writing a command's files all or nothing: each is written to a temporary file beside its
//! destination and renamed into place only once every one of them is written, so a command
//! that fails (a bad path, a full disk) leaves no half-written output behind.

use super::{io_error, Error};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Refuses, before any work, a destination that cannot be written: `path` is an existing
/// directory (when `dir` is false) or an existing non-directory (when `dir` is true), or its
/// nearest existing ancestor is not a directory. `what` names the option in the error.
pub fn check_destination(path: &Path, dir: bool, what: &str) -> Result<(), Error> {
    let bad = |why: String| Error::Usage(format!("{what} {}: {why}", path.display()));
    if let Ok(meta) = std::fs::metadata(path) {
        return match (dir, meta.is_dir()) {
            (true, false) => Err(bad("exists and is not a directory".into())),
            (false, true) => Err(bad("is a directory".into())),
            _ => Ok(()),
        };
    }
    let mut up = path.parent();
    while let Some(p) = up {
        let p = if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        };
        if let Ok(meta) = std::fs::metadata(p) {
            if !meta.is_dir() {
                return Err(bad(format!("{} is not a directory", p.display())));
            }
            return Ok(());
        }
        up = p.parent();
    }
    Ok(())
}

/// A fresh hidden name beside `path` (same directory, so renaming it onto `path` is atomic).
fn temp_beside(path: &Path) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(
        ".{name}.smelt-tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Writes every `(destination, bytes)`, creating missing directories, all or nothing: on
/// an error the temporary files and the directories this call created are removed and the
/// first error is returned, naming its path.
pub fn write_all(files: &[(PathBuf, Vec<u8>)]) -> Result<(), Error> {
    let mut created: Vec<PathBuf> = Vec::new();
    let mut temps: Vec<PathBuf> = Vec::new();
    let result = write_staged(files, &mut created, &mut temps);
    if result.is_err() {
        for t in &temps {
            let _ = std::fs::remove_file(t);
        }
        // Innermost first; a directory this call created holds only what it put there.
        for d in created.iter().rev() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    result
}

fn write_staged(
    files: &[(PathBuf, Vec<u8>)],
    created: &mut Vec<PathBuf>,
    temps: &mut Vec<PathBuf>,
) -> Result<(), Error> {
    // A directory in a file's place would stop the renames halfway.
    for (path, _) in files {
        if path.is_dir() {
            return Err(io_error(
                path,
                std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory"),
            ));
        }
    }
    for (path, bytes) in files {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_dirs(dir, created)?;
        }
        let tmp = temp_beside(path);
        temps.push(tmp.clone());
        std::fs::write(&tmp, bytes).map_err(|e| io_error(path, e))?;
    }
    for ((path, _), tmp) in files.iter().zip(temps.iter()) {
        std::fs::rename(tmp, path).map_err(|e| io_error(path, e))?;
    }
    temps.clear();
    Ok(())
}

/// `create_dir_all`, recording each directory it creates (outermost first).
fn create_dirs(dir: &Path, created: &mut Vec<PathBuf>) -> Result<(), Error> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent, created)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {
            created.push(dir.to_path_buf());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(io_error(dir, e)),
    }
}
