//! Connections between nodes, per shard. A shard's Raft traffic to a peer
//! replica's shard travels on a link ([`Links`]): one connection per pair
//! of shards, whichever of the two dialed it, carrying every group between
//! them both ways. Control requests (a node registering, commands for the
//! controller) travel on connections of their own ([`Caller`], answered by
//! [`serve`]). A shard port tells a peer from a native client by the
//! connection's first four bytes ([`wire::LINK_MAGIC`],
//! [`wire::CONNECTION_MAGIC`]).
//!
//! A link never blocks its sender: frames queue (bounded) while the link
//! connects and are dropped when the queue is full or the peer is away —
//! Raft sends again what was not acknowledged.
//!
//! When both shards of a pair dial at once, each is offered the other's
//! connection while it has its own; both keep the one the lower address
//! dialed and close the other, so the pair settles on one.

use crate::logging::Repeated;
use crate::shard::Shard;
use fjord_net::gather::GatherWriter;
use fjord_replication::control::{ControlRequest, ControlResponse, METADATA_GROUP};
use fjord_replication::raft::NodeId;
use fjord_replication::raft::mux::{GroupId, PeerBatch};
use fjord_replication::wire::{self, Body, Frame, WireError};
use fjord_storage::BatchSlice;
use futures::future::Either;
use futures::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use futures::{AsyncRead, FutureExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// Frames queued for one peer shard before new ones are dropped.
const LINK_QUEUE_LEN: usize = 1024;
/// Connections the peer opened, queued for its link (more are closed: the
/// peer dials again).
const OFFER_QUEUE_LEN: usize = 4;
/// Frames read from links waiting for the shard's replicas.
pub const INBOX_LEN: usize = 256;
/// Longest wait for a connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A link whose sent bytes go unacknowledged this long is closed and
/// dialed again (TCP_USER_TIMEOUT): across a network cut TCP's own
/// retransmissions back off to two minutes, and the link would not redial
/// while it holds the connection. Links carry beats, so a healthy one
/// always has something acknowledged well within it.
const UNACKNOWLEDGED_MAX: Duration = Duration::from_secs(5);
/// Pause between attempts to reach a peer that is away.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// The first step in which a frame being read is backed by memory.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Frames a link queued past this many bytes are sent without waiting for
/// more; below it, a tick's frames share a send.
const SEND_BYTES: usize = 256 << 10;

/// Why a peer exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The connection failed or closed.
    #[error("peer {addr}: {source}")]
    Io {
        /// The peer.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The peer sent something that is not a valid frame.
    #[error("peer {addr}: {source}")]
    Wire {
        /// The peer.
        addr: SocketAddr,
        /// The cause.
        source: WireError,
    },
    /// The peer answered with something other than a control response.
    #[error("peer {0}: unexpected frame")]
    Unexpected(SocketAddr),
    /// No answer in time.
    #[error("peer {0}: timed out")]
    TimedOut(SocketAddr),
}

/// A peer's Raft frame as a link read it: sender, batch, payload.
pub type Inbound = (NodeId, PeerBatch, wire::Payload);

/// One shard's links, by peer shard address.
pub struct Links {
    /// This shard's address as its peers know it, named when dialing so
    /// that the peer sends on the same connection. `None` (an advertised
    /// host that is not an IP address): links dial as callers do, and the
    /// peer answers on a link of its own.
    own: Option<SocketAddr>,
    /// Where links put what they read, for [`deliver`].
    inbox: Rc<LocalSender<Inbound>>,
    links: RefCell<HashMap<SocketAddr, Link>>,
    /// Links' failures, for rate-limited log lines.
    failures: Rc<Repeated>,
}

/// A frame as a link writes it: its head, then the payload that follows it
/// on the wire (a leader's batches as it keeps them or its log read them,
/// not copied into the frame; empty for most frames).
struct Outgoing {
    head: Vec<u8>,
    payload: Vec<BatchSlice>,
}

impl fjord_net::gather::Frame for Outgoing {
    fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.head.as_slice()).chain(self.payload.iter().map(|b| &b[..]))
    }
}

/// The shard's side of one link; its task holds the connection.
struct Link {
    frames: LocalSender<Outgoing>,
    offers: LocalSender<Offer>,
    /// A replica here talks to the peer: beats go on the link even while
    /// it has no connection (and so make it dial).
    wanted: Cell<bool>,
    /// Which connection the link has now.
    state: Rc<Cell<Connected>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connected {
    No,
    Dialed,
    /// The peer dialed it: the peer, which wanted it, closes it.
    Adopted,
}

/// A connection the peer shard at `dialer` opened to this one.
struct Offer {
    dialer: SocketAddr,
    stream: TcpStream,
}

impl Links {
    /// Links of the shard at `own`, delivering what they read to `inbox`.
    pub fn new(own: Option<SocketAddr>, inbox: LocalSender<Inbound>) -> Links {
        Links {
            own,
            inbox: Rc::new(inbox),
            links: RefCell::new(HashMap::new()),
            failures: Rc::new(Repeated::default()),
        }
    }

    /// Queues `frame` for the peer shard at `addr`, dialing it if the link
    /// has no connection; dropped if the link's queue is full.
    pub fn send(&self, addr: SocketAddr, frame: Vec<u8>) {
        self.send_parts(addr, frame, Vec::new());
    }

    /// [`Links::send`] of a frame in two parts: `head` ([`wire::encode_head`])
    /// and the `payload` it announces.
    pub fn send_parts(&self, addr: SocketAddr, head: Vec<u8>, payload: Vec<BatchSlice>) {
        let mut links = self.links.borrow_mut();
        let link = links.entry(addr).or_insert_with(|| self.start(addr));
        link.wanted.set(true);
        // Full: the peer is slow or away; Raft sends again.
        let _ = link.frames.try_send(Outgoing { head, payload });
    }

    /// A connection the peer shard at `dialer` opened to this shard: the
    /// link to that shard reads it and sends on it.
    pub fn adopt(&self, dialer: SocketAddr, stream: TcpStream) {
        let mut links = self.links.borrow_mut();
        let link = links.entry(dialer).or_insert_with(|| self.start(dialer));
        // Full: several connections at once from a peer that keeps
        // redialing; this one closes and the peer dials again.
        let _ = link.offers.try_send(Offer { dialer, stream });
    }

    /// Queues `frame` on every link in use: a beat, which tells each peer
    /// shard this node is up even when none of their groups has anything
    /// to say (quiet groups rely on it instead of heartbeats).
    pub fn send_to_all(&self, frame: &[u8]) {
        for link in self.links.borrow().values() {
            if link.wanted.get() || link.state.get() != Connected::No {
                let _ = link.frames.try_send(Outgoing {
                    head: frame.to_vec(),
                    payload: Vec::new(),
                });
            }
        }
    }

    /// Closes the links to peer shards not in `used` (a node moved, a
    /// replica went), but for connections the peer dialed: the peer, which
    /// may still use them, closes those.
    pub fn keep_only(&self, used: &HashSet<SocketAddr>) {
        self.links.borrow_mut().retain(|addr, link| {
            let wanted = used.contains(addr);
            link.wanted.set(wanted);
            wanted || link.state.get() == Connected::Adopted
        });
    }

    /// The link to `addr` and its task, which ends when the link is dropped.
    fn start(&self, addr: SocketAddr) -> Link {
        let (frames, frames_rx) = local_channel::new_bounded(LINK_QUEUE_LEN);
        let (offers, offers_rx) = local_channel::new_bounded(OFFER_QUEUE_LEN);
        let state = Rc::new(Cell::new(Connected::No));
        let task = LinkTask {
            addr,
            own: self.own,
            frames: frames_rx,
            offers: offers_rx,
            state: state.clone(),
            inbox: self.inbox.clone(),
            failures: self.failures.clone(),
        };
        glommio::spawn_local(task.run()).detach();
        Link {
            frames,
            offers,
            wanted: Cell::new(false),
            state,
        }
    }
}

/// What a link's task holds.
struct LinkTask {
    addr: SocketAddr,
    own: Option<SocketAddr>,
    frames: LocalReceiver<Outgoing>,
    offers: LocalReceiver<Offer>,
    state: Rc<Cell<Connected>>,
    inbox: Rc<LocalSender<Inbound>>,
    failures: Rc<Repeated>,
}

/// What a link with a connection waits for.
enum Event {
    Frame(Outgoing),
    Offer(Offer),
    Gone,
}

/// A link's connection.
struct Conn {
    writer: GatherWriter<WriteHalf<TcpStream>, Outgoing>,
    /// Reads what the peer sends on it; finishes when the connection ends.
    /// Dropped, it stops reading, and the connection closes.
    reader: glommio::Task<()>,
    /// The shard that dialed it (`None`: this one, as a caller that cannot
    /// name itself).
    dialer: Option<SocketAddr>,
}

impl LinkTask {
    /// Sends queued frames until the link is dropped: on the connection it
    /// has, else on one the peer offers, else on one it dials when there is
    /// something to send.
    async fn run(self) {
        let mut conn: Option<Conn> = None;
        loop {
            let Some(c) = conn.as_mut() else {
                self.state.set(Connected::No);
                let next = futures::future::select(
                    Box::pin(self.frames.recv()),
                    Box::pin(self.offers.recv()),
                );
                conn = match next.await {
                    Either::Left((Some(frame), _)) => self.dial(frame).await,
                    Either::Right((Some(offer), _)) => Some(self.adopt(offer)),
                    Either::Left((None, _)) | Either::Right((None, _)) => return,
                };
                continue;
            };
            let event = match self.frames.recv().now_or_never() {
                Some(Some(frame)) => Event::Frame(frame),
                Some(None) => return,
                // Frames queued while writing share a send; flushed before
                // waiting for more.
                None if c.writer.flush().await.is_err() => Event::Gone,
                None => {
                    let next = futures::future::select(
                        Box::pin(self.frames.recv()),
                        Box::pin(self.offers.recv()),
                    );
                    match futures::future::select(next, &mut c.reader).await {
                        Either::Left((Either::Left((Some(frame), _)), _)) => Event::Frame(frame),
                        Either::Left((Either::Right((Some(offer), _)), _)) => Event::Offer(offer),
                        Either::Left(_) => return,
                        // The peer's process or connection is gone. Noticed
                        // now, not at the next write, the next frames (an
                        // election's votes after the peer restarts) go on a
                        // new connection instead of vanishing into this one.
                        Either::Right(((), _)) => Event::Gone,
                    }
                }
            };
            match event {
                Event::Frame(frame) => {
                    if c.write(frame).await.is_err() {
                        conn = None;
                    }
                }
                // Else dropped: it closes, and the peer comes over to this
                // link's connection.
                Event::Offer(offer) if prefers(offer.dialer, c.dialer) => {
                    conn = Some(self.adopt(offer));
                }
                Event::Offer(_) => {}
                Event::Gone => conn = None,
            }
        }
    }

    /// Dials the peer to send `frame`; on failure drops what is queued
    /// (stale by the next try: Raft's next round sends what is current) and
    /// pauses, adopting a connection the peer offers meanwhile.
    async fn dial(&self, frame: Outgoing) -> Option<Conn> {
        match connect(self.addr, self.own).await {
            Ok(stream) => {
                // Dialed by this shard's address (`None`: as a caller).
                let mut conn = self.open(stream, self.own, Connected::Dialed);
                if conn.write(frame).await.is_err() {
                    return None;
                }
                Some(conn)
            }
            Err(e) => {
                if let Some(count) = self.failures.hit() {
                    tracing::debug!(peer = %self.addr, error = %e, failures = count, "peer link: cannot connect");
                }
                while let Some(Some(_)) = self.frames.recv().now_or_never() {}
                let pause = Box::pin(glommio::timer::sleep(RECONNECT_PAUSE));
                match futures::future::select(pause, Box::pin(self.offers.recv())).await {
                    Either::Right((Some(offer), _)) => Some(self.adopt(offer)),
                    _ => None,
                }
            }
        }
    }

    fn adopt(&self, offer: Offer) -> Conn {
        self.open(offer.stream, Some(offer.dialer), Connected::Adopted)
    }

    fn open(&self, stream: TcpStream, dialer: Option<SocketAddr>, state: Connected) -> Conn {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        give_up_unacknowledged(fd, UNACKNOWLEDGED_MAX);
        let (reader, writer) = stream.split();
        self.state.set(state);
        let reader = glommio::spawn_local(read_link(
            reader,
            self.addr,
            self.inbox.clone(),
            self.failures.clone(),
        ));
        Conn {
            writer: GatherWriter::new(fd, writer),
            reader,
            dialer,
        }
    }
}

impl Conn {
    /// Queues `frame`, sending what is queued once it is `SEND_BYTES` or
    /// more (the link sends the rest when it has nothing more to queue).
    async fn write(&mut self, frame: Outgoing) -> std::io::Result<()> {
        self.writer.push(frame);
        if self.writer.queued_bytes() >= SEND_BYTES {
            self.writer.flush().await?;
        }
        Ok(())
    }
}

/// Whether a connection dialed by `offered` replaces one dialed by
/// `current`: both shards of a pair keep the one the lower address dialed
/// (a newer one from the same shard replaces the old, which its restarted
/// dialer no longer reads; a caller's one-way dial gives way to any).
fn prefers(offered: SocketAddr, current: Option<SocketAddr>) -> bool {
    current.is_none_or(|current| offered <= current)
}

/// Reads a link's frames into the shard's inbox until the connection ends.
async fn read_link<R: AsyncRead + Unpin>(
    mut reader: R,
    addr: SocketAddr,
    inbox: Rc<LocalSender<Inbound>>,
    failures: Rc<Repeated>,
) {
    loop {
        match read_frame(&mut reader, addr).await {
            Ok(Some(Frame {
                from,
                body: Body::Raft(batch),
                payload,
            })) => {
                if inbox.send((from, batch, payload)).await.is_err() {
                    return; // The shard is gone.
                }
            }
            Ok(Some(_)) => {
                if let Some(count) = failures.hit() {
                    tracing::warn!(peer = %addr, failures = count, "peer link carried a control frame: closing");
                }
                return;
            }
            Ok(None) => return,
            Err(e) => {
                if let Some(count) = failures.hit() {
                    tracing::debug!(peer = %addr, error = %e, failures = count, "peer link closed");
                }
                return;
            }
        }
    }
}

/// Hands what links read to the shard's replicas, for as long as it runs.
pub async fn deliver(shard: Rc<Shard>, inbox: LocalReceiver<Inbound>) {
    while let Some((from, batch, payload)) = inbox.recv().await {
        if !hand_over(&shard, from, batch, payload).await {
            return;
        }
    }
}

/// Gives a peer's Raft frame to the replicas it is for; false once the
/// node is shutting down.
async fn hand_over(
    shard: &Rc<Shard>,
    from: NodeId,
    batch: PeerBatch,
    payload: wire::Payload,
) -> bool {
    // A voter's listener takes the quorum's traffic on any shard; its
    // group lives on shard 0.
    if shard.id != 0 && carries(&batch, METADATA_GROUP) {
        let msg = crate::mesh::ShardMsg::Peer {
            from,
            batch,
            payload,
        };
        return shard.send_to(0, msg).await.is_ok();
    }
    shard.replication().receive(from, batch, payload);
    true
}

/// Sets TCP_USER_TIMEOUT on `fd`: the kernel closes the connection when
/// what it sent stays unacknowledged for `after`. Best effort: a socket
/// that refuses keeps TCP's own (longer) limit.
fn give_up_unacknowledged(fd: std::os::fd::RawFd, after: Duration) {
    let ms = libc::c_uint::try_from(after.as_millis()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: setsockopt on a socket this link owns, with a pointer to a
    // live c_uint and its size.
    let _ = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&ms as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
}

/// Opens a peer connection to `addr` and says what it is: a link from the
/// shard at `link`, or a caller's.
async fn connect(addr: SocketAddr, link: Option<SocketAddr>) -> Result<TcpStream, PeerError> {
    let io = |source| PeerError::Io { addr, source };
    let mut stream = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)
        .await
        .map_err(|e| io(e.into()))?;
    let _ = stream.set_nodelay(true);
    let opening = match link {
        Some(own) => stream.write_all(&wire::encode_link_hello(own)).await,
        None => stream.write_all(&wire::CONNECTION_MAGIC).await,
    };
    opening.map_err(io)?;
    Ok(stream)
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    addr: SocketAddr,
) -> Result<Option<Frame>, PeerError> {
    let io = |source| PeerError::Io { addr, source };
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < prefix.len() {
        match reader.read(&mut prefix[got..]).await.map_err(io)? {
            0 if got == 0 => return Ok(None),
            0 => return Err(io(std::io::ErrorKind::UnexpectedEof.into())),
            n => got += n,
        }
    }
    let len = wire::frame_len(prefix).map_err(|source| PeerError::Wire { addr, source })?;
    // Reserved at the announced length, so it is never moved, but zeroed
    // (and so backed by memory) in doubling steps as bytes arrive: a peer
    // that announces much and sends little holds little. (`read_to_end`
    // grew it by reallocating, copying and zeroing each byte twice more.)
    let mut rest = Vec::with_capacity(len);
    while rest.len() < len {
        let filled = rest.len();
        rest.resize(len.min(filled + filled.max(READ_CHUNK_BYTES)), 0);
        reader.read_exact(&mut rest[filled..]).await.map_err(io)?;
    }
    wire::decode(rest)
        .map(Some)
        .map_err(|source| PeerError::Wire { addr, source })
}

/// Serves a caller's connection to this shard (its magic already read):
/// control requests go to the shard's controller side, answered on the
/// same connection in order; Raft frames (a link of a shard that cannot
/// name itself) to its replicas.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let addr = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (mut reader, mut writer) = stream.split();
    let errors = crate::logging::Repeated::default();
    loop {
        let frame = match read_frame(&mut reader, addr).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(e) => {
                if let Some(count) = errors.hit() {
                    tracing::warn!(shard = shard.id, peer = %addr, error = %e, errors = count, "peer connection closed");
                }
                return;
            }
        };
        match frame.body {
            Body::Raft(batch) => {
                if !hand_over(&shard, frame.from, batch, frame.payload).await {
                    return; // Shutting down.
                }
            }
            Body::Request(request) => {
                let response = crate::cluster::answer(&shard, frame.from, request).await;
                let bytes = wire::encode_response(shard.node_id(), &response);
                if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
                    return;
                }
            }
            Body::Response(_) => {
                tracing::warn!(shard = shard.id, peer = %addr, "peer sent an answer nobody asked for: closing");
                return;
            }
        }
    }
}

/// Whether a frame carries anything for `group`.
fn carries(batch: &PeerBatch, group: GroupId) -> bool {
    batch.heartbeats.iter().any(|(g, _)| *g == group)
        || batch.heartbeat_responses.iter().any(|(g, _)| *g == group)
        || batch.messages.iter().any(|(g, _)| *g == group)
}

/// A connection for control requests to one node, one request at a time.
pub struct Caller {
    from: NodeId,
    conn: Option<(SocketAddr, TcpStream)>,
}

impl Caller {
    /// A caller speaking for node `from`.
    pub fn new(from: NodeId) -> Caller {
        Caller { from, conn: None }
    }

    /// Drops the connection: a call given up midway left it out of step.
    pub fn reset(&mut self) {
        self.conn = None;
    }

    /// Sends `request` to `addr` and waits up to `timeout` for the answer.
    /// The connection is kept for the next call to the same address.
    pub async fn call(
        &mut self,
        addr: SocketAddr,
        request: &ControlRequest,
        timeout: Duration,
    ) -> Result<ControlResponse, PeerError> {
        if self.conn.as_ref().is_none_or(|(a, _)| *a != addr) {
            self.conn = Some((addr, connect(addr, None).await?));
        }
        let Some((_, stream)) = self.conn.as_mut() else {
            unreachable!("connected above");
        };
        let frame = wire::encode_request(self.from, request);
        let exchange = async {
            let io = |source| PeerError::Io { addr, source };
            stream.write_all(&frame).await.map_err(io)?;
            stream.flush().await.map_err(io)?;
            match read_frame(stream, addr).await? {
                Some(Frame {
                    body: Body::Response(response),
                    ..
                }) => Ok(response),
                Some(_) => Err(PeerError::Unexpected(addr)),
                None => Err(PeerError::Io {
                    addr,
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                }),
            }
        };
        let answer = match futures::future::select(
            Box::pin(exchange),
            Box::pin(glommio::timer::sleep(timeout)),
        )
        .await
        {
            futures::future::Either::Left((answer, _)) => answer,
            futures::future::Either::Right(_) => Err(PeerError::TimedOut(addr)),
        };
        if answer.is_err() {
            // Out of step or gone: the next call starts afresh.
            self.conn = None;
        }
        answer
    }
}
