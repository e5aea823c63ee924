//! The simulator's server loops: RTU framing on a line (a pty master, or a TCP connection for
//! RTU over TCP) and Modbus TCP framing on a connection, plus the TCP accept loop. Replies are
//! written by their own timed tasks, so a late meter does not hold up the next request.

use super::bus::{Answer, LineControl, SimBus};
use crate::protocol::modbus::codec::{self, RtuRequestScan};
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, broadcast};
use tokio::task::JoinSet;

pub(crate) type SharedWriter<W> = Arc<Mutex<W>>;

/// Writes `answer` after its delay, on its own task.
pub(crate) fn schedule<W>(replies: &mut JoinSet<()>, writer: &SharedWriter<W>, answer: Answer)
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let writer = writer.clone();
    replies.spawn(async move {
        tokio::time::sleep(answer.delay).await;
        let mut w = writer.lock().await;
        let _ = w.write_all(&answer.bytes).await;
        let _ = w.flush().await;
    });
}

/// What a line does on [`LineControl::Disconnect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnDisconnect {
    Close,
    Ignore,
}

/// Serves RTU on a line until the reader ends (or a disconnect, for TCP connections).
/// Read requests are found at any offset; a silence of t3.5 ends a frame, and a well-formed
/// frame of another function is then answered by its meter (a write of its holding registers)
/// or refused with an exception.
///
/// `line_matches`, on a serial line, tells whether the gateway's end is set to the bus's own
/// baud rate and framing right now: bytes received while it is not are what a UART at other
/// settings makes of them — garbage no meter answers — so they are dropped.
pub(crate) async fn serve_rtu_line<R, W>(
    bus: Arc<SimBus>,
    mut reader: R,
    writer: W,
    mut control: broadcast::Receiver<LineControl>,
    on_disconnect: OnDisconnect,
    line_matches: Option<Box<dyn Fn() -> bool + Send>>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let writer = Arc::new(Mutex::new(writer));
    let mut replies = JoinSet::new();
    let gap = bus.timing.silence_gap();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        while replies.try_join_next().is_some() {}
        let waiting = !buf.is_empty();
        tokio::select! {
            read = reader.read(&mut chunk) => {
                let n = match read {
                    Ok(n) => n,
                    // A pty master reports EIO while no slave is open; ours keeps one open, but
                    // stay alive whatever happens on the other side.
                    Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if n == 0 {
                    return Ok(());
                }
                if line_matches.as_ref().is_some_and(|matches| !matches()) {
                    buf.clear();
                    continue;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let RtuRequestScan::Read { request, end } = codec::scan_rtu_request(&buf) {
                    buf.drain(..end);
                    if let Some(answer) = bus.answer_rtu(&request) {
                        schedule(&mut replies, &writer, answer);
                    }
                }
            }
            _ = tokio::time::sleep(gap), if waiting => {
                if let Some(answer) = bus.answer_rtu_other(&buf) {
                    schedule(&mut replies, &writer, answer);
                }
                buf.clear();
            }
            msg = control.recv() => match msg {
                Ok(LineControl::Disconnect) if on_disconnect == OnDisconnect::Close => {
                    return Ok(());
                }
                Ok(LineControl::Disconnect) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Ok(LineControl::Inject(bytes)) => {
                    let mut w = writer.lock().await;
                    w.write_all(&bytes).await?;
                    w.flush().await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
    }
}

/// Serves Modbus TCP on one connection until it closes, its framing breaks, or a disconnect.
pub(crate) async fn serve_modbus_tcp(
    bus: Arc<SimBus>,
    stream: TcpStream,
    mut control: broadcast::Receiver<LineControl>,
) -> io::Result<()> {
    let (mut reader, writer) = stream.into_split();
    let writer = Arc::new(Mutex::new(writer));
    let mut replies = JoinSet::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        while replies.try_join_next().is_some() {}
        tokio::select! {
            read = reader.read(&mut chunk) => {
                let n = read?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    match codec::split_tcp_frame(&buf) {
                        Ok(Some((frame, used))) => {
                            buf.drain(..used);
                            if let Some(answer) =
                                bus.answer_tcp(frame.transaction, frame.unit, &frame.pdu)
                            {
                                schedule(&mut replies, &writer, answer);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                        }
                    }
                }
            }
            msg = control.recv() => match msg {
                Ok(LineControl::Disconnect) | Err(broadcast::error::RecvError::Closed) => {
                    return Ok(());
                }
                Ok(LineControl::Inject(bytes)) => writer.lock().await.write_all(&bytes).await?,
                Err(broadcast::error::RecvError::Lagged(_)) => {}
            },
        }
    }
}

/// Accepts connections for a TCP bus, one task per connection; dropping this future (aborting
/// its task) closes them all.
pub(crate) async fn serve_listener(bus: Arc<SimBus>, listener: TcpListener, rtu: bool) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        bus.connections.fetch_add(1, Ordering::Relaxed);
        let control = bus.control.subscribe();
        let bus = bus.clone();
        connections.spawn(async move {
            let _ = if rtu {
                let (reader, writer) = stream.into_split();
                serve_rtu_line(bus, reader, writer, control, OnDisconnect::Close, None).await
            } else {
                serve_modbus_tcp(bus, stream, control).await
            };
        });
    }
}
