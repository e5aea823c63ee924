//! Pseudo-terminals for simulated serial buses: a raw pty pair, the slave kept open by the
//! simulator (so the master never sees EIO while the gateway closes and reopens its end), a
//! symlink at the configured path, the master as a tokio byte stream, and the line settings the
//! gateway put on its end ([`LineSettings::of`]), so that the simulated meters answer only at
//! their own, as on a real line.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A pty pair: the master (the simulator's side of the line) and the slave the gateway opens.
pub(crate) struct Pty {
    pub master: OwnedFd,
    /// Held open for the simulator's lifetime; never read.
    pub slave: OwnedFd,
    /// `/dev/pts/N`.
    pub slave_path: PathBuf,
}

fn check(r: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if r < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(r)
    }
}

impl Pty {
    /// Opens a pty pair with the slave in raw mode (no echo, no line editing) and the master
    /// non-blocking.
    pub fn open() -> io::Result<Pty> {
        // SAFETY: plain libc calls on fds we own; buffers are sized and NUL-terminated.
        unsafe {
            let master = check(
                libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC),
                "posix_openpt",
            )?;
            let master = OwnedFd::from_raw_fd(master);
            check(libc::grantpt(master.as_raw_fd()), "grantpt")?;
            check(libc::unlockpt(master.as_raw_fd()), "unlockpt")?;
            let mut name = [0 as libc::c_char; 128];
            let r = libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len());
            if r != 0 {
                return Err(io::Error::from_raw_os_error(r));
            }
            let slave_path = CStr::from_ptr(name.as_ptr());
            let slave = check(
                libc::open(
                    slave_path.as_ptr(),
                    libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
                ),
                "open pty slave",
            )?;
            let slave = OwnedFd::from_raw_fd(slave);
            let mut tio: libc::termios = std::mem::zeroed();
            check(libc::tcgetattr(slave.as_raw_fd(), &mut tio), "tcgetattr")?;
            libc::cfmakeraw(&mut tio);
            check(
                libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &tio),
                "tcsetattr",
            )?;
            let flags = check(libc::fcntl(master.as_raw_fd(), libc::F_GETFL), "fcntl")?;
            check(
                libc::fcntl(master.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK),
                "fcntl",
            )?;
            Ok(Pty {
                master,
                slave,
                slave_path: PathBuf::from(slave_path.to_string_lossy().into_owned()),
            })
        }
    }
}

/// Creates a symlink at `link` pointing to `target`, replacing a stale link or file there and
/// creating missing parent directories.
pub(crate) fn create_link(link: &Path, target: &Path) -> io::Result<()> {
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::symlink_metadata(link).is_ok() {
        std::fs::remove_file(link)?;
    }
    std::os::unix::fs::symlink(target, link)
}

/// Removes `link` if it still points at `target` (another simulator may have taken it over).
pub(crate) fn remove_link(link: &Path, target: &Path) {
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        let _ = std::fs::remove_file(link);
    }
}

/// The pty master as a tokio byte stream.
pub(crate) struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    /// Wraps a non-blocking master fd; needs a tokio runtime.
    pub fn new(master: OwnedFd) -> io::Result<PtyMaster> {
        // SAFETY: an OwnedFd's fd is valid, open and unchanging until it is dropped with the
        // AsyncFd that owns it.
        let fd = unsafe { AsyncFd::register(master) }?;
        Ok(PtyMaster { fd })
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: fd is open; buf is a valid writable buffer of buf.len() bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: fd is open; buf is a valid buffer of buf.len() bytes.
    let n = unsafe { libc::write(fd, buf.as_ptr() as *const libc::c_void, buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl AsyncRead for PtyMaster {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| read_fd(fd.as_raw_fd(), unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyMaster {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| write_fd(fd.as_raw_fd(), buf)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The character framing and speed of a serial line, as its termios says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LineSettings {
    pub baud: u32,
    pub data_bits: u8,
    /// `None`, or `Some(true)` for odd parity and `Some(false)` for even.
    pub parity_odd: Option<bool>,
    pub stop_bits: u8,
}

impl LineSettings {
    /// Whether a line set to `self` reads what a UART at `own` sends. Baud rate and stop bits
    /// are compared; a pty carries no parity and only 8 data bits (the kernel refuses the
    /// others), so parity and data bits are compared only where the gateway's end has them.
    pub fn reaches(&self, own: &LineSettings) -> bool {
        self.baud == own.baud
            && self.stop_bits == own.stop_bits
            && (self.parity_odd.is_none() || self.parity_odd == own.parity_odd)
            && (self.data_bits == 8 || self.data_bits == own.data_bits)
    }

    /// What the terminal `fd` is set to now (the pty's two ends share one termios, so the
    /// simulator reads on its slave what the gateway set on its own open of it).
    pub fn of(fd: RawFd) -> io::Result<LineSettings> {
        // termios2 (TCGETS2): a port set to any rate with BOTHER — as the serial crate sets
        // every rate — has it in c_ospeed; a classic Bxxx rate is in the CBAUD bits.
        // SAFETY: TCGETS2 on an open fd into a zeroed termios2.
        let tio = unsafe {
            let mut tio: libc::termios2 = std::mem::zeroed();
            check(libc::ioctl(fd, libc::TCGETS2, &mut tio), "TCGETS2")?;
            tio
        };
        let data_bits = match tio.c_cflag & libc::CSIZE {
            libc::CS5 => 5,
            libc::CS6 => 6,
            libc::CS7 => 7,
            _ => 8,
        };
        let baud = if tio.c_cflag & libc::CBAUD == libc::BOTHER {
            tio.c_ospeed
        } else {
            baud_of(tio.c_cflag & libc::CBAUD)
        };
        Ok(LineSettings {
            baud,
            data_bits,
            parity_odd: (tio.c_cflag & libc::PARENB != 0)
                .then_some(tio.c_cflag & libc::PARODD != 0),
            stop_bits: if tio.c_cflag & libc::CSTOPB != 0 {
                2
            } else {
                1
            },
        })
    }
}

/// Bit/s of a termios speed constant (0 for one not listed).
fn baud_of(speed: libc::speed_t) -> u32 {
    const RATES: &[(libc::speed_t, u32)] = &[
        (libc::B300, 300),
        (libc::B600, 600),
        (libc::B1200, 1200),
        (libc::B2400, 2400),
        (libc::B4800, 4800),
        (libc::B9600, 9600),
        (libc::B19200, 19200),
        (libc::B38400, 38400),
        (libc::B57600, 57600),
        (libc::B115200, 115200),
        (libc::B230400, 230400),
    ];
    RATES
        .iter()
        .find(|(s, _)| *s == speed)
        .map_or(0, |(_, b)| *b)
}

#[cfg(test)]
mod line_tests {
    use super::*;

    #[test]
    fn the_simulator_reads_what_the_other_end_set() {
        let pty = Pty::open().unwrap();
        let other = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&pty.slave_path)
            .unwrap();
        // SAFETY: termios calls on an open fd.
        unsafe {
            let mut tio: libc::termios = std::mem::zeroed();
            libc::tcgetattr(other.as_raw_fd(), &mut tio);
            libc::cfsetispeed(&mut tio, libc::B2400);
            libc::cfsetospeed(&mut tio, libc::B2400);
            tio.c_cflag |= libc::CSTOPB;
            assert_eq!(libc::tcsetattr(other.as_raw_fd(), libc::TCSANOW, &tio), 0);
        }
        let seen = LineSettings::of(pty.slave.as_raw_fd()).unwrap();
        assert_eq!(
            seen,
            LineSettings {
                baud: 2400,
                data_bits: 8,
                parity_odd: None,
                stop_bits: 2
            }
        );
    }
}
