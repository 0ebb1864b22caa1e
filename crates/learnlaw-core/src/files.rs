//! Writing files so that a kill or a full disk never leaves half of one: every output goes to a
//! hidden temporary beside it, is flushed to the disk, and is renamed into place; files that belong
//! together (curves.csv and summary.json, a report's figures) are renamed together once all of them
//! are written, so a failed write leaves every old file as it was.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Error, Result};

/// What a temporary's name holds between the file's name and the process id.
const TEMP_MARK: &str = ".tmp-";

/// Files staged in temporaries and renamed into place by `commit`, in the order they were staged
/// (so the one that marks the set as complete, like summary.json, goes last). Temporaries that are
/// not committed are removed when the `Staged` is dropped.
#[derive(Default)]
pub struct Staged {
    /// (temporary, destination) of every staged file.
    files: Vec<(PathBuf, PathBuf)>,
}

impl Staged {
    pub fn new() -> Self {
        Staged::default()
    }

    /// Registers `path` and returns the temporary to write its content to (for writers that take
    /// a path, like the figure backends, which also read the format from its extension): hidden,
    /// unique per process and call, and ending in `path`'s name.
    pub fn path(&mut self, path: &Path) -> Result<PathBuf> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = path.file_name().ok_or_else(|| Error::io(path, std::io::Error::other("path has no file name")))?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_file_name(format!("{TEMP_MARK}{}-{n}-{}", std::process::id(), name.to_string_lossy()));
        self.files.push((tmp.clone(), path.to_path_buf()));
        Ok(tmp)
    }

    /// Writes `bytes` as the content `path` will have once committed.
    pub fn write(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = self.path(path)?;
        std::fs::write(&tmp, bytes).map_err(|e| Error::io(path, e))
    }

    /// Flushes every temporary to the disk (a full disk shows here at the latest), then renames
    /// them into place in the order they were staged.
    pub fn commit(mut self) -> Result<()> {
        for (tmp, path) in &self.files {
            File::open(tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(path, e))?;
        }
        for (tmp, path) in std::mem::take(&mut self.files) {
            if let Err(e) = std::fs::rename(&tmp, &path) {
                let _ = std::fs::remove_file(&tmp);
                return Err(Error::io(path, e));
            }
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (tmp, _) in &self.files {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Writes `bytes` to `path` through a temporary, so a reader (or a resumed run after a crash)
/// sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut staged = Staged::new();
    staged.write(path, bytes)?;
    staged.commit()
}

/// Whether a file name is one of `Staged`'s temporaries (`.tmp-PID-N-NAME`, or `.NAME.tmp-PID-N`
/// as earlier versions named them).
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(TEMP_MARK)
}

/// Removes the temporaries that killed writers left in `dir` (none if it does not exist). Only
/// for a folder this process owns: a live writer's temporary would go too.
pub fn remove_stale_temporaries(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other.map_err(|e| Error::io(dir, e))?,
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.file_name().to_str().is_some_and(is_temporary) {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn staged_files_appear_together_on_commit_and_not_at_all_when_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a.csv"), tmp.path().join("b.json"));
        std::fs::write(&a, "old a").unwrap();
        let mut staged = Staged::new();
        staged.write(&a, b"new a").unwrap();
        let b_tmp = staged.path(&b).unwrap();
        assert!(is_temporary(&b_tmp.file_name().unwrap().to_string_lossy()), "{b_tmp:?}");
        std::fs::write(&b_tmp, "new b").unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "old a", "nothing moves before the commit");
        drop(staged);
        assert_eq!(names(tmp.path()), ["a.csv"], "a dropped set leaves the old files and no temporaries");

        let mut staged = Staged::new();
        staged.write(&a, b"new a").unwrap();
        staged.write(&b, b"new b").unwrap();
        staged.commit().unwrap();
        assert_eq!(names(tmp.path()), ["a.csv", "b.json"]);
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "new b");
    }

    #[test]
    fn stale_temporaries_are_removed_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        for name in [".policy.safetensors.tmp-123-0", ".tmp-9-1-summary.json", "policy.safetensors", ".lock", "notes.tmp-1"] {
            std::fs::write(tmp.path().join(name), "x").unwrap();
        }
        remove_stale_temporaries(tmp.path()).unwrap();
        assert_eq!(names(tmp.path()), [".lock", "notes.tmp-1", "policy.safetensors"]);
        remove_stale_temporaries(&tmp.path().join("missing")).unwrap();
    }
}
