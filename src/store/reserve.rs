//! Space kept in reserve on the store's filesystem, so that a full disk can be recovered from.
//!
//! When the filesystem fills up, SQLite cannot even checkpoint its WAL or delete rows: both
//! need free pages. So the gateway keeps a file of zeros, `store.reserve`, next to the store
//! (an eighth of the filesystem, at most 2 MiB). The first commit refused with SQLITE_FULL
//! deletes it ([`Reserve::release`]): that room lets the WAL checkpoint and truncate, the
//! `disk_full` alarm be stored, and acknowledged rows be deleted. When the store accepts
//! batches again and the filesystem has room for it twice over, the reserve is written again
//! ([`Reserve::restore`]). Written with real zeros (not a sparse file), so it holds the space
//! on every filesystem (tmpfs included).

use std::io::Write;
use std::path::{Path, PathBuf};

/// The reserve file's name in the data directory.
pub const RESERVE_FILE: &str = "store.reserve";

/// The most space kept in reserve.
const MAX_RESERVE: u64 = 2 * 1024 * 1024;

/// The reserve file of one data directory.
#[derive(Debug, Clone)]
pub struct Reserve {
    path: PathBuf,
}

impl Reserve {
    /// The reserve of `data_dir` (nothing is written until [`Reserve::restore`]).
    pub fn new(data_dir: &Path) -> Reserve {
        Reserve {
            path: data_dir.join(RESERVE_FILE),
        }
    }

    /// The directory the reserve is in.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// True when the reserve file is in place.
    pub fn held(&self) -> bool {
        self.path.exists()
    }

    /// Deletes the reserve file, freeing its space. True when there was one.
    pub fn release(&self) -> bool {
        std::fs::remove_file(&self.path).is_ok()
    }

    /// Writes the reserve file when it is missing and the filesystem has room for it twice
    /// over. True when the reserve is in place afterwards.
    pub fn restore(&self) -> bool {
        if self.held() {
            return true;
        }
        let Some((size, free)) = filesystem_space(self.path.parent().unwrap_or(Path::new(".")))
        else {
            return false;
        };
        let want = (size / 8).min(MAX_RESERVE);
        if want == 0 || free < want * 2 {
            return false;
        }
        let written = (|| {
            let mut f = std::fs::File::create(&self.path)?;
            let zeros = vec![0u8; 64 * 1024];
            let mut left = want;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                f.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            f.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&self.path);
            return false;
        }
        true
    }
}

/// (size, bytes available to this user) of the filesystem holding `dir`.
pub fn filesystem_space(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_written_released_and_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reserve::new(dir.path());
        assert!(!r.held());
        assert!(r.restore(), "a roomy filesystem takes the reserve");
        let len = std::fs::metadata(dir.path().join(RESERVE_FILE))
            .unwrap()
            .len();
        assert!(len > 0 && len <= MAX_RESERVE);
        assert!(r.release());
        assert!(!r.held());
        assert!(!r.release(), "nothing left to release");
        assert!(r.restore());
    }
}
