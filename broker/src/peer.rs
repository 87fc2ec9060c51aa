//! Connections between nodes, per shard: a shard sends Raft traffic to a
//! peer replica's shard over one connection of its own per peer shard
//! ([`Links`]), and answers what peers send it on connections they opened
//! ([`serve`]). A shard port tells a peer from a native client by the
//! connection's first four bytes ([`wire::CONNECTION_MAGIC`]).
//!
//! A link never blocks its sender: frames queue (bounded) while the link
//! (re)connects and are dropped when the queue is full or the peer is
//! away — Raft sends again what was not acknowledged.

use crate::shard::Shard;
use fjord_replication::control::{ControlRequest, ControlResponse, METADATA_GROUP};
use fjord_replication::raft::NodeId;
use fjord_replication::raft::mux::{GroupId, PeerBatch};
use fjord_replication::wire::{self, Body, Frame, WireError};
use futures::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use futures::{AsyncRead, FutureExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// Frames queued for one peer shard before new ones are dropped.
const LINK_QUEUE_LEN: usize = 1024;
/// Longest wait for a connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between attempts to reach a peer that is away.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// Initial buffer of a frame being read.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Socket write buffer of a link: a tick's frames share a send.
const WRITE_BUFFER_BYTES: usize = 256 << 10;

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

/// One shard's outgoing links, by peer shard address.
#[derive(Default)]
pub struct Links {
    links: RefCell<HashMap<SocketAddr, LocalSender<Vec<u8>>>>,
}

impl Links {
    /// Queues `frame` for the peer shard at `addr`, starting its link on
    /// first use; dropped if the link's queue is full.
    pub fn send(&self, addr: SocketAddr, frame: Vec<u8>) {
        let mut links = self.links.borrow_mut();
        let link = links.entry(addr).or_insert_with(|| {
            let (tx, rx) = local_channel::new_bounded(LINK_QUEUE_LEN);
            glommio::spawn_local(run_link(addr, rx)).detach();
            tx
        });
        // Full: the peer is slow or away; Raft sends again.
        let _ = link.try_send(frame);
    }
}

impl Links {
    /// Queues `frame` on every open link: a beat, which tells each peer
    /// shard this node is up even when none of their groups has anything
    /// to say (quiet groups rely on it instead of heartbeats).
    pub fn send_to_all(&self, frame: &[u8]) {
        for link in self.links.borrow().values() {
            let _ = link.try_send(frame.to_vec());
        }
    }

    /// Closes the links to peer shards not in `used`: their sending tasks
    /// end with them (a node moved, a replica went).
    pub fn keep_only(&self, used: &std::collections::HashSet<SocketAddr>) {
        self.links
            .borrow_mut()
            .retain(|addr, _| used.contains(addr));
    }
}

/// Sends queued frames to `addr` until its link is dropped, reconnecting
/// whenever the connection fails.
async fn run_link(addr: SocketAddr, frames: LocalReceiver<Vec<u8>>) {
    let failures = crate::logging::Repeated::default();
    loop {
        let stream = match connect(addr).await {
            Ok(stream) => stream,
            Err(e) => {
                if let Some(count) = failures.hit() {
                    tracing::debug!(peer = %addr, error = %e, failures = count, "peer link: cannot connect");
                }
                // Frames for a peer that is away are dropped, not kept
                // stale: Raft's next round sends what is current.
                loop {
                    match frames.recv().now_or_never() {
                        Some(Some(_)) => {}
                        Some(None) => return, // The link was dropped.
                        None => break,
                    }
                }
                glommio::timer::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        let (mut reader, writer) = stream.split();
        let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, writer);
        // A peer never writes on a link: a read ends only when the peer's
        // process or connection is gone. Noticed then, the link reconnects
        // at once; noticed at the next write instead, the first frames to a
        // restarted peer (an election's votes) would vanish into the dead
        // connection and cost a whole election timeout.
        let mut gone = Box::pin(async move {
            let mut byte = [0u8; 1];
            let _ = reader.read(&mut byte).await;
        });
        loop {
            let frame = match frames.recv().now_or_never() {
                Some(Some(frame)) => frame,
                Some(None) => return,
                None => {
                    if writer.flush().await.is_err() {
                        break;
                    }
                    match futures::future::select(Box::pin(frames.recv()), &mut gone).await {
                        futures::future::Either::Left((Some(frame), _)) => frame,
                        futures::future::Either::Left((None, _)) => return,
                        futures::future::Either::Right(_) => break,
                    }
                }
            };
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
    }
}

/// Opens a peer connection to `addr` and says it is one.
async fn connect(addr: SocketAddr) -> Result<TcpStream, PeerError> {
    let io = |source| PeerError::Io { addr, source };
    let mut stream = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)
        .await
        .map_err(|e| io(e.into()))?;
    let _ = stream.set_nodelay(true);
    stream
        .write_all(&wire::CONNECTION_MAGIC)
        .await
        .map_err(io)?;
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
    // Grown as bytes arrive, not allocated at the announced length: a peer
    // that announces much and sends little holds little.
    let mut rest = Vec::with_capacity(len.min(READ_CHUNK_BYTES));
    let read = (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut rest)
        .await
        .map_err(io)?;
    if read != len {
        return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    wire::decode(&rest)
        .map(Some)
        .map_err(|source| PeerError::Wire { addr, source })
}

/// Serves a peer's connection to this shard (its magic already read):
/// Raft frames go to the shard's replicas, control requests to its
/// controller side, answered on the same connection in order.
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
            // A voter's listener takes the quorum's traffic on any shard;
            // its group lives on shard 0.
            Body::Raft(batch) if shard.id != 0 && carries(&batch, METADATA_GROUP) => {
                let msg = crate::mesh::ShardMsg::Peer {
                    from: frame.from,
                    batch,
                    payload: frame.payload,
                };
                if shard.send_to(0, msg).await.is_err() {
                    return; // Shutting down.
                }
            }
            Body::Raft(batch) => shard
                .replication()
                .receive(frame.from, batch, frame.payload),
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
            self.conn = Some((addr, connect(addr).await?));
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
