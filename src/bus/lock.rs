//! Exclusive use of a serial device: two masters must never talk on one RS-485 bus at once.
//!
//! An open serial port holds an exclusive `flock` on its device node (the serialport crate
//! takes it), so the daemon's ports are locked while it polls. The field tools check the lock
//! before opening, so that they can refuse with a message that says what to do.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Held while a serial device is in use; released on drop.
#[derive(Debug)]
pub struct DeviceLock {
    _file: File,
    pub path: PathBuf,
}

/// Why a device could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum DeviceLockError {
    #[error(
        "serial port {0} is in use by another process (is the amr-gateway daemon polling it? stop it with `systemctl stop amr-gateway` or use another port)"
    )]
    InUse(PathBuf),
    #[error("cannot open serial port {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl DeviceLock {
    /// Fails with [`DeviceLockError::InUse`] when another process holds the device.
    pub fn check(path: &Path) -> Result<(), DeviceLockError> {
        Self::acquire(path).map(drop)
    }

    /// Takes the lock without waiting.
    pub fn acquire(path: &Path) -> Result<DeviceLock, DeviceLockError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| DeviceLockError::Open {
                path: path.to_path_buf(),
                source: e,
            })?;
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(DeviceLockError::InUse(path.to_path_buf()));
            }
            return Err(DeviceLockError::Open {
                path: path.to_path_buf(),
                source: err,
            });
        }
        Ok(DeviceLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ttyFAKE");
        std::fs::write(&p, b"").unwrap();
        let first = DeviceLock::acquire(&p).unwrap();
        let err = DeviceLock::acquire(&p).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(first);
        DeviceLock::acquire(&p).unwrap();
    }
}
