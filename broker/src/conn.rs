//! Client connections, native and Kafka: accept, then per connection a
//! reader that decodes frames and starts each request's handler at once
//! (pipelining), and a writer that sends the answers in request order. Both
//! protocols frame requests with the same size prefix, read under the same
//! limits; they differ in how a request is served ([`api::handle`],
//! [`crate::kafka::handle`]) and in what a frame that cannot be read gets.
//!
//! Limits: a shard holds at most `max_connections_per_shard` connections
//! (more are closed on accept); a connection has at most
//! `max_inflight_bytes` of requests being served and [`PIPELINE_MAX`]
//! requests queued — beyond either the reader stops reading, and TCP pushes
//! back on the client. A connection that stops reading its answers stalls
//! only its own writer.

use crate::api::{self, Reply};
use crate::logging::Repeated;
use crate::shard::Shard;
use fjord_net::frame::Limits;
use fjord_net::gather::GatherWriter;
use fjord_net::io::{FrameReader, ReadError};
use fjord_net::{ErrorCode, frame};
use futures::FutureExt;
use futures::future::{Either, Shared, select};
use futures::io::AsyncReadExt;
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use glommio::task::JoinHandle;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

/// Requests of one connection being served or waiting to be answered.
pub const PIPELINE_MAX: usize = 128;
/// Answers queued past this many bytes are sent without waiting for the
/// next to be ready; below it, pipelined answers share a send.
const SEND_BYTES: usize = 64 << 10;

/// Fires when the node shuts down.
pub type Stop = Shared<futures::channel::oneshot::Receiver<()>>;

/// First pause after a failed accept; it doubles while accepts keep failing.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause between accepts that fail.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Fjord's own protocol (and, recognised by their magic, peer links).
    Native,
    /// Kafka's protocol.
    Kafka,
}

/// Accepts connections until `stop` fires. An accept that fails — out of
/// descriptors (EMFILE, ENFILE), of socket buffers (ENOBUFS) — pauses this
/// loop only, 5 ms doubling to 1 s as Go's net/http does, while existing
/// connections go on; it is logged once per interval with a count.
pub async fn accept(shard: Rc<Shard>, listener: TcpListener, stop: Stop, protocol: Protocol) {
    let failures = Repeated::default();
    let refused = Repeated::default();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = match select(Box::pin(listener.accept()), stop.clone()).await {
            Either::Left((accepted, _)) => accepted,
            Either::Right(_) => return,
        };
        let stream = match accepted {
            Ok(stream) => {
                backoff = ACCEPT_BACKOFF_MIN;
                stream
            }
            Err(e) => {
                if let Some(count) = failures.hit() {
                    tracing::warn!(
                        shard = shard.id,
                        error = %e,
                        failed_accepts = count,
                        backoff_ms = backoff.as_millis() as u64,
                        "accept failing: backing off, existing connections are served"
                    );
                }
                let pause = std::pin::pin!(glommio::timer::sleep(backoff));
                if let Either::Right(_) = select(pause, stop.clone()).await {
                    return;
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        if shard.connections.get() >= shard.config.max_connections_per_shard {
            drop(stream);
            if let Some(count) = refused.hit() {
                tracing::warn!(
                    shard = shard.id,
                    max_connections_per_shard = shard.config.max_connections_per_shard,
                    refused_connections = count,
                    "connection limit reached: new connections closed"
                );
            }
            continue;
        }
        shard.connections.set(shard.connections.get() + 1);
        let shard = shard.clone();
        let stop = stop.clone();
        glommio::spawn_local(async move {
            serve(&shard, stream, stop, protocol).await;
            shard.connections.set(shard.connections.get() - 1);
        })
        .detach();
    }
}

type Pending = (JoinHandle<Option<Reply>>, usize);

async fn serve(shard: &Rc<Shard>, mut stream: TcpStream, stop: Stop, protocol: Protocol) {
    let _ = stream.set_nodelay(true);
    if protocol == Protocol::Native {
        // Not a client: a stopping node's drain does not wait for a peer's
        // connection (Raft traffic flows until the process ends, leadership
        // handovers included).
        // A link that called this shard's own port is the pair's one link;
        // one that came through the node's listener (a controller voter's
        // traffic, which reaches shard 0 from any shard) is read here and
        // answered on a link of this node's own, or a shard's two links to
        // the same peer shard would keep replacing each other.
        let own_port = stream
            .local_addr()
            .is_ok_and(|a| Some(&a.port()) == shard.shard_ports.get(shard.id));
        match peer_opening(&mut stream).await {
            Some(PeerOpening::Link(dialer)) if own_port => {
                shard.replication().adopt(dialer, stream);
                return;
            }
            Some(PeerOpening::Link(_) | PeerOpening::Caller) => {
                shard.connections.set(shard.connections.get() - 1);
                crate::peer::serve(shard.clone(), stream).await;
                shard.connections.set(shard.connections.get() + 1);
                return;
            }
            None => {}
        }
    }
    let fd = stream.as_raw_fd();
    let (reader, writer) = stream.split();
    let mut frames = FrameReader::new(reader, fd);
    let budget = Rc::new(Semaphore::new(shard.config.max_inflight_bytes as u64));
    let (tx, rx) = local_channel::new_bounded::<Pending>(PIPELINE_MAX);
    let limits = Limits {
        frame_bytes_max: shard.config.max_frame_bytes,
        ..Limits::default()
    };
    let writing = glommio::spawn_local(write_replies(fd, writer, rx, budget.clone()));
    loop {
        let reading = frames.read_frame(&limits);
        let read = match select(Box::pin(reading), stop.clone()).await {
            Either::Left((read, _)) => read,
            Either::Right(_) => break,
        };
        let buf = match read {
            Ok(Some(buf)) => buf,
            Ok(None) | Err(ReadError::Io(_)) => break,
            Err(ReadError::Frame(e)) if protocol == Protocol::Kafka => {
                // Kafka has no answer without a request header: close.
                crate::kafka::refused(shard, &e.to_string());
                break;
            }
            Err(ReadError::Frame(e)) => {
                // The stream is out of step: say why, then close.
                let code = match e {
                    frame::FrameError::TooLarge { .. } => ErrorCode::MessageTooLarge,
                    _ => ErrorCode::InvalidRequest,
                };
                let reply = glommio::spawn_local(async move { Some(Reply::fatal(0, code)) });
                let _ = tx.send((reply.detach(), 0)).await;
                break;
            }
        };
        // Charged now, released once answered: with the budget spent the
        // loop waits here, and unread bytes back up into the client. A frame
        // larger than the whole budget (its prefix can tip a maximal frame
        // over) takes all of it rather than waiting forever.
        let len = buf.len().min(shard.config.max_inflight_bytes);
        if budget.acquire(len as u64).await.is_err() {
            break;
        }
        let handler = match protocol {
            Protocol::Native => glommio::spawn_local(api::handle(shard.clone(), buf)).detach(),
            Protocol::Kafka => {
                glommio::spawn_local(crate::kafka::handle(shard.clone(), buf)).detach()
            }
        };
        if tx.send((handler, len)).await.is_err() {
            break;
        }
    }
    drop(tx);
    writing.await;
}

/// What another node's connection is.
enum PeerOpening {
    /// A link from the peer shard at this address.
    Link(std::net::SocketAddr),
    /// A caller's, for control requests.
    Caller,
}

/// Whether the connection is another node's: it opens with a peer magic,
/// which it then has consumed (and a link's hello). A native client's first
/// bytes are a frame length, which never equals either (over a gigabyte).
async fn peer_opening(stream: &mut TcpStream) -> Option<PeerOpening> {
    use fjord_replication::wire::{CONNECTION_MAGIC, LINK_HELLO_BYTES, LINK_MAGIC};
    let mut first = [0u8; 4];
    let magic = match stream.peek(&mut first).await {
        Ok(4) if first == CONNECTION_MAGIC || first == LINK_MAGIC => first,
        _ => return None,
    };
    // A peer gone before its opening is whole: served as a caller, whose
    // first read ends the connection (not as a native client).
    if stream.read_exact(&mut first).await.is_err() || magic == CONNECTION_MAGIC {
        return Some(PeerOpening::Caller);
    }
    let mut hello = [0u8; LINK_HELLO_BYTES];
    if stream.read_exact(&mut hello).await.is_err() {
        return Some(PeerOpening::Caller);
    }
    Some(PeerOpening::Link(
        fjord_replication::wire::decode_link_hello(hello),
    ))
}

/// Sends the answers in request order, each from where its pieces lie
/// (the batch cache's buffers for a fetch): see [`GatherWriter`].
async fn write_replies<W: futures::io::AsyncWrite + Unpin>(
    fd: std::os::fd::RawFd,
    writer: W,
    rx: local_channel::LocalReceiver<Pending>,
    budget: Rc<Semaphore>,
) {
    let mut writer = GatherWriter::new(fd, writer);
    loop {
        // Answers already done are sent back to back, in one send; before
        // waiting on anything, what is queued is sent.
        let next = match rx.recv().now_or_never() {
            Some(next) => next,
            None => {
                if writer.flush().await.is_err() {
                    break;
                }
                rx.recv().await
            }
        };
        let Some((mut handler, len)) = next else {
            break;
        };
        let reply = match (&mut handler).now_or_never() {
            Some(reply) => reply,
            None => {
                if writer.flush().await.is_err() {
                    break;
                }
                handler.await
            }
        };
        budget.signal(len as u64);
        let Some(reply) = reply.flatten() else {
            continue;
        };
        let close = reply.close;
        writer.push(reply);
        if close {
            let _ = writer.flush().await;
            break;
        }
        if writer.queued_bytes() >= SEND_BYTES && writer.flush().await.is_err() {
            break;
        }
    }
    // A reader waiting for budget must not wait for a writer that is gone.
    budget.close();
    let _ = writer.close().await;
}
