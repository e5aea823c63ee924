//! A small MQTT 3.1.1 broker for `amr-gateway demo`: no setup, loopback only.
//!
//! It does what the demo and a headend-side `mosquitto_sub` need — CONNECT with will messages
//! (published when a client goes away without DISCONNECT), PUBLISH at QoS 0 and 1 (QoS 2 is
//! accepted and forwarded at most at QoS 1), SUBSCRIBE with `+` and `#` (granted QoS at most 1;
//! delivery at the lower of publish and subscription QoS), UNSUBSCRIBE, PINGREQ, DISCONNECT,
//! retained messages (sent on subscribe; an empty payload clears), and the keep-alive timeout
//! (1.5 × the client's keep-alive).
//!
//! It is not a production broker: sessions are not kept after a client disconnects
//! (CONNACK always says "no session present"), nothing is persisted, there is no
//! authentication (credentials are ignored), and a subscriber that does not read lets its
//! queue grow. Production gateways talk to the utility's broker.
//!
//! ```ignore
//! let broker = Broker::bind("127.0.0.1:1883".parse()?).await?;
//! tokio::spawn(broker.run(shutdown_rx));
//! ```

pub mod codec;
pub mod topic;

use bytes::{Bytes, BytesMut};
use codec::{Connect, Packet, Publish, connack};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

/// How long a new connection may take to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound, not yet running broker.
pub struct Broker {
    listener: TcpListener,
    registry: Arc<Mutex<Registry>>,
}

/// Who is connected, what they subscribed to, and the retained messages.
#[derive(Default)]
struct Registry {
    clients: HashMap<String, Client>,
    retained: BTreeMap<String, Retained>,
    next_connection: u64,
}

struct Client {
    connection: u64,
    tx: mpsc::UnboundedSender<Command>,
    /// Filter → granted QoS.
    subscriptions: BTreeMap<String, u8>,
}

struct Retained {
    payload: Bytes,
    qos: u8,
}

/// What other connections ask of a connection's task.
enum Command {
    /// Send this message (QoS already decided; the task assigns the packet id).
    Deliver(Publish),
    /// Another connection took over this client id.
    TakenOver,
}

impl Broker {
    /// Binds the listener. Only loopback addresses are accepted: the demo broker has no
    /// authentication and must not be reachable from the network.
    pub async fn bind(addr: SocketAddr) -> io::Result<Broker> {
        if !addr.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the embedded broker listens on loopback only, not {addr}"),
            ));
        }
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            io::Error::new(e.kind(), format!("embedded MQTT broker on {addr}: {e}"))
        })?;
        Ok(Broker {
            listener,
            registry: Arc::default(),
        })
    }

    /// The address it listens on (useful after binding port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts and serves clients until `shutdown` turns true; then closes every connection
    /// (without publishing wills).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        info!(
            "embedded MQTT broker listening on {}",
            self.local_addr().map_or("?".into(), |a| a.to_string())
        );
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let registry = Arc::clone(&self.registry);
                        let shutdown = shutdown.clone();
                        tokio::spawn(async move {
                            if let Err(e) = serve(stream, registry, shutdown).await {
                                debug!("MQTT client {peer}: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        debug!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        return;
                    }
                }
            }
        }
    }
}

/// How a connection ended.
enum End {
    /// DISCONNECT received: no will.
    Clean,
    /// Anything else: the will is published.
    Abnormal(String),
    /// The broker is shutting down.
    Shutdown,
}

/// Serves one client connection from CONNECT to its end.
async fn serve(
    stream: TcpStream,
    registry: Arc<Mutex<Registry>>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let (mut reader, mut writer) = stream.into_split();
    let mut buf = BytesMut::with_capacity(4096);
    let first = tokio::time::timeout(CONNECT_TIMEOUT, read_packet(&mut reader, &mut buf))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no CONNECT"))??;
    let Some(Packet::Connect(connect)) = first else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "first packet is not CONNECT",
        ));
    };
    if connect.protocol_level != 4 && connect.protocol_level != 3 {
        send(&mut writer, &connack_packet(connack::BAD_PROTOCOL)).await?;
        return Ok(());
    }
    if connect.client_id.is_empty() && !connect.clean_session {
        send(&mut writer, &connack_packet(connack::IDENTIFIER_REJECTED)).await?;
        return Ok(());
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (connection, client_id) = register(&registry, &connect, tx);
    send(&mut writer, &connack_packet(connack::ACCEPTED)).await?;
    debug!("MQTT client {client_id} connected");

    let mut session = Session {
        registry: &registry,
        client_id: &client_id,
        writer,
        next_pkid: 0,
    };
    let keep_alive = (connect.keep_alive_s > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive_s) * 1500));
    let end = loop {
        let idle = async {
            match keep_alive {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            packet = read_packet(&mut reader, &mut buf) => match packet {
                Ok(Some(packet)) => match session.handle(packet).await {
                    Ok(None) => {}
                    Ok(Some(end)) => break end,
                    Err(e) => break End::Abnormal(e.to_string()),
                },
                Ok(None) => break End::Abnormal("connection closed".into()),
                Err(e) => break End::Abnormal(e.to_string()),
            },
            command = rx.recv() => match command {
                Some(Command::Deliver(publish)) => {
                    if let Err(e) = session.deliver(publish).await {
                        break End::Abnormal(e.to_string());
                    }
                }
                Some(Command::TakenOver) | None => {
                    break End::Abnormal("client id taken over by a new connection".into());
                }
            },
            _ = idle => break End::Abnormal("keep-alive timeout".into()),
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    break End::Shutdown;
                }
            }
        }
    };
    {
        let mut reg = registry.lock().unwrap_or_else(|p| p.into_inner());
        if reg
            .clients
            .get(&client_id)
            .is_some_and(|c| c.connection == connection)
        {
            reg.clients.remove(&client_id);
        }
    }
    let _ = session.writer.shutdown().await;
    match end {
        End::Abnormal(reason) => {
            debug!("MQTT client {client_id} lost: {reason}");
            if let Some(will) = connect.will {
                route(
                    &registry,
                    Publish {
                        topic: will.topic,
                        payload: will.payload,
                        qos: will.qos,
                        retain: will.retain,
                        dup: false,
                        pkid: 0,
                    },
                );
            }
        }
        End::Clean => debug!("MQTT client {client_id} disconnected"),
        End::Shutdown => {}
    }
    Ok(())
}

/// Registers a connected client (taking over an older connection with the same id); returns
/// the connection number and the client id (generated when the client sent none).
fn register(
    registry: &Mutex<Registry>,
    connect: &Connect,
    tx: mpsc::UnboundedSender<Command>,
) -> (u64, String) {
    let mut reg = registry.lock().unwrap_or_else(|p| p.into_inner());
    reg.next_connection += 1;
    let connection = reg.next_connection;
    let client_id = if connect.client_id.is_empty() {
        format!("amr-broker-auto-{connection}")
    } else {
        connect.client_id.clone()
    };
    let client = Client {
        connection,
        tx,
        subscriptions: BTreeMap::new(),
    };
    if let Some(old) = reg.clients.insert(client_id.clone(), client) {
        let _ = old.tx.send(Command::TakenOver);
    }
    (connection, client_id)
}

/// One connected client's protocol state.
struct Session<'a> {
    registry: &'a Mutex<Registry>,
    client_id: &'a str,
    writer: OwnedWriteHalf,
    next_pkid: u16,
}

impl Session<'_> {
    /// Handles one packet from the client; `Some(end)` when the connection must end.
    async fn handle(&mut self, packet: Packet) -> io::Result<Option<End>> {
        match packet {
            Packet::Publish(publish) => {
                if !topic::valid_topic(&publish.topic) {
                    return Ok(Some(End::Abnormal(format!(
                        "invalid topic name {:?}",
                        publish.topic
                    ))));
                }
                let (qos, pkid) = (publish.qos, publish.pkid);
                route(self.registry, publish);
                match qos {
                    1 => send(&mut self.writer, &Packet::PubAck(pkid)).await?,
                    2 => send(&mut self.writer, &Packet::PubRec(pkid)).await?,
                    _ => {}
                }
            }
            Packet::PubRel(pkid) => send(&mut self.writer, &Packet::PubComp(pkid)).await?,
            Packet::Subscribe { pkid, filters } => self.subscribe(pkid, filters).await?,
            Packet::Unsubscribe { pkid, filters } => {
                {
                    let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(client) = reg.clients.get_mut(self.client_id) {
                        for f in &filters {
                            client.subscriptions.remove(f);
                        }
                    }
                }
                send(&mut self.writer, &Packet::UnsubAck(pkid)).await?;
            }
            Packet::PingReq => send(&mut self.writer, &Packet::PingResp).await?,
            Packet::Disconnect => return Ok(Some(End::Clean)),
            // Acknowledgements of our deliveries: TCP already got them there; nothing to do.
            Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => {}
            other => {
                return Ok(Some(End::Abnormal(format!(
                    "unexpected packet from a client: {other:?}"
                ))));
            }
        }
        Ok(None)
    }

    async fn subscribe(&mut self, pkid: u16, filters: Vec<(String, u8)>) -> io::Result<()> {
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        {
            let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            let Registry {
                clients,
                retained: stored,
                ..
            } = &mut *reg;
            let Some(client) = clients.get_mut(self.client_id) else {
                return Ok(());
            };
            for (filter, requested) in filters {
                if !topic::valid_filter(&filter) {
                    codes.push(0x80);
                    continue;
                }
                let granted = requested.min(1);
                codes.push(granted);
                for (topic, message) in stored.iter() {
                    if topic::matches(&filter, topic) {
                        retained.push(Publish {
                            topic: topic.clone(),
                            payload: message.payload.clone(),
                            qos: message.qos.min(granted),
                            retain: true,
                            dup: false,
                            pkid: 0,
                        });
                    }
                }
                client.subscriptions.insert(filter, granted);
            }
        }
        send(&mut self.writer, &Packet::SubAck { pkid, codes }).await?;
        for publish in retained {
            self.deliver(publish).await?;
        }
        Ok(())
    }

    /// Sends a message to this client, giving QoS 1 messages a packet id.
    async fn deliver(&mut self, mut publish: Publish) -> io::Result<()> {
        if publish.qos > 0 {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            publish.pkid = self.next_pkid;
        }
        send(&mut self.writer, &Packet::Publish(publish)).await
    }
}

/// Stores or clears a retained message and hands a copy to every client with a matching
/// subscription (once per client, at the lower of the publish QoS and the highest granted).
fn route(registry: &Mutex<Registry>, publish: Publish) {
    let mut reg = registry.lock().unwrap_or_else(|p| p.into_inner());
    if publish.retain {
        if publish.payload.is_empty() {
            reg.retained.remove(&publish.topic);
        } else {
            reg.retained.insert(
                publish.topic.clone(),
                Retained {
                    payload: publish.payload.clone(),
                    qos: publish.qos.min(1),
                },
            );
        }
    }
    for client in reg.clients.values() {
        let granted = client
            .subscriptions
            .iter()
            .filter(|(filter, _)| topic::matches(filter, &publish.topic))
            .map(|(_, qos)| *qos)
            .max();
        if let Some(granted) = granted {
            let _ = client.tx.send(Command::Deliver(Publish {
                topic: publish.topic.clone(),
                payload: publish.payload.clone(),
                qos: publish.qos.min(granted),
                retain: false,
                dup: false,
                pkid: 0,
            }));
        }
    }
}

fn connack_packet(code: u8) -> Packet {
    Packet::ConnAck {
        session_present: false,
        code,
    }
}

/// Reads until one whole packet is buffered; `Ok(None)` on a clean end of stream.
/// Cancel-safe: bytes read so far stay in `buf`.
async fn read_packet(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
) -> io::Result<Option<Packet>> {
    loop {
        if let Some(packet) =
            codec::decode(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            return Ok(Some(packet));
        }
        if reader.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a packet",
                ))
            };
        }
    }
}

async fn send(writer: &mut OwnedWriteHalf, packet: &Packet) -> io::Result<()> {
    let mut out = BytesMut::new();
    codec::encode(packet, &mut out);
    writer.write_all(&out).await
}
