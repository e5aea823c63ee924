//! One daemon per store: `run` holds an exclusive `flock` on `{data_dir}/gateway.lock` for as
//! long as it runs, with its process id written in the file.
//!
//! A second `run` on the same data directory would poll the same buses as a second master and
//! fight the first over the broker's client id; it is refused at once with the first one's pid.
//! The lock dies with its process (a SIGKILL or a power cut leaves no stale lock), so `status`
//! can tell a running daemon from a dead one by trying it ([`StoreLock::holder`]).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "gateway.lock";

/// Held by the running daemon; released on drop (or when the process ends, however it ends).
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
    pub path: PathBuf,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum StoreLockError {
    #[error(
        "another amr-gateway{} is already running on data_dir {data_dir}: two daemons would poll \
         the same meters as two masters and fight over the broker's client id; stop it first \
         (`systemctl stop amr-gateway`), or give this one its own [gateway] data_dir",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Held { data_dir: String, pid: Option<u32> },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl StoreLock {
    /// Takes the lock of `data_dir` without waiting, and writes this process's id into it.
    pub fn acquire(data_dir: &Path) -> Result<StoreLock, StoreLockError> {
        let path = data_dir.join(LOCK_FILE);
        let io = |source| StoreLockError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        if !try_flock(&file, libc::LOCK_EX).map_err(io)? {
            return Err(StoreLockError::Held {
                data_dir: data_dir.display().to_string(),
                pid: read_pid(&mut file),
            });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(StoreLock { _file: file, path })
    }

    /// The process id of the daemon running on `data_dir`, if one runs (`Some(None)`: one
    /// runs, its pid unreadable); `None` when none does.
    pub fn holder(data_dir: &Path) -> Option<Option<u32>> {
        let mut file = File::open(data_dir.join(LOCK_FILE)).ok()?;
        match try_flock(&file, libc::LOCK_SH) {
            Ok(true) => None,
            Ok(false) => Some(read_pid(&mut file)),
            Err(_) => None,
        }
    }
}

/// `flock` without waiting: `Ok(false)` when another holds it.
fn try_flock(file: &File, kind: libc::c_int) -> std::io::Result<bool> {
    // SAFETY: flock on a valid, owned file descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), kind | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_daemon_is_refused_with_the_first_ones_pid_until_it_stops() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(StoreLock::holder(dir.path()), None);
        let first = StoreLock::acquire(dir.path()).unwrap();
        let err = StoreLock::acquire(dir.path()).unwrap_err();
        let me = std::process::id();
        assert!(
            err.to_string().starts_with(&format!(
                "another amr-gateway (pid {me}) is already running"
            )),
            "{err}"
        );
        assert_eq!(StoreLock::holder(dir.path()), Some(Some(me)));
        drop(first);
        assert_eq!(StoreLock::holder(dir.path()), None);
        let again = StoreLock::acquire(dir.path()).unwrap();
        assert_eq!(StoreLock::holder(dir.path()), Some(Some(me)));
        drop(again);
    }
}
