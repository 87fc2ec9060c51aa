//! What shards say to each other over glommio's channel mesh. Every message
//! that expects an answer carries a oneshot sender: the answer travels back
//! without a second mesh hop, and the waiting task is woken on its own shard.

use crate::controller::CommandError;
use crate::partition::{Acks, Described, Produced};
use fjord_net::ErrorCode;
use fjord_replication::control::{LeaderReport, Proposal};
use fjord_replication::metadata::ClusterMetadata;
use futures::channel::oneshot;
use glommio::channels::channel_mesh::Senders;
use glommio::sync::Semaphore;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// A shard's sending half of the mesh: what it sends to a shard arrives in
/// the order it was sent. glommio's channel wakes senders waiting for room
/// in no set order, so two requests of one connection for a partition on
/// another shard could swap (Kafka keeps a connection's order); a turn per
/// target, taken first come first served, keeps them in line.
pub struct Outbox<T: Send> {
    senders: Senders<T>,
    /// One per shard.
    turns: Vec<Semaphore>,
}

impl<T: Send> Outbox<T> {
    /// Turns for each of the mesh's shards.
    pub fn new(senders: Senders<T>) -> Outbox<T> {
        let turns = (0..senders.nr_consumers())
            .map(|_| Semaphore::new(1))
            .collect();
        Outbox { senders, turns }
    }

    /// Sends `msg` to shard `to` after everything sent to it before;
    /// `Err` when `to` is no shard or has left the mesh.
    pub async fn send_to(&self, to: usize, msg: T) -> Result<(), ()> {
        let turn = self.turns.get(to).ok_or(())?;
        let _turn = turn.acquire_permit(1).await.map_err(|_| ())?;
        self.senders.send_to(to, msg).await.map_err(|_| ())
    }
}

/// A message between shards.
pub enum ShardMsg {
    /// Controller to every shard: converge to this metadata (open new
    /// partitions, close and delete removed ones), then answer.
    Metadata {
        /// The state to converge to.
        metadata: ClusterMetadata,
        /// Answered once converged, with the partitions it could not open.
        done: oneshot::Sender<Vec<NotServed>>,
    },
    /// Any shard to the controller: commit a command.
    Command {
        /// The change.
        proposal: Proposal,
        /// The outcome: the partitions not served, or why it failed.
        reply: oneshot::Sender<Result<Vec<NotServed>, CommandError>>,
    },
    /// Leaders of replicated partitions, as a shard (or the controller)
    /// learned them: every shard answers Metadata.
    Leaders(Vec<LeaderReport>),
    /// Any shard to shard 0: read (`state: None`) or durably record a
    /// replica's Raft hard state.
    HardState {
        /// The group.
        group: fjord_replication::raft::mux::GroupId,
        /// What to record, or `None` to read.
        state: Option<fjord_replication::raft::HardState>,
        /// The state now recorded, or why not.
        reply: oneshot::Sender<Result<fjord_replication::raft::HardState, String>>,
    },
    /// Shard 0 to the others: the nodes live now.
    Live(Vec<u32>),
    /// A peer's Raft frame for the controller quorum's group, which lives
    /// on shard 0, from the shard whose listener took the connection.
    Peer {
        /// The sending node.
        from: fjord_replication::raft::NodeId,
        /// The frame's messages.
        batch: fjord_replication::raft::mux::PeerBatch,
        /// The batches its appends carry.
        payload: fjord_replication::wire::Payload,
    },
    /// The admin listener's shard to every other: a copy of what the shard
    /// counts and owns.
    Metrics {
        /// The copy.
        reply: oneshot::Sender<Box<crate::admin::snapshot::ShardSnapshot>>,
    },
    /// Any shard to a partition's owner.
    Partition {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: i32,
        /// What to do.
        op: PartitionOp,
    },
}

/// A partition the metadata gives a shard that the shard could not open;
/// it tries again every [`crate::shard::RETRY_UNSERVED_INTERVAL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotServed {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// Why, as the storage layer said.
    pub reason: String,
}

impl NotServed {
    /// Partitions named in full in a summary; the rest are counted.
    const LISTED_MAX: usize = 10;

    /// "N partition(s) could not be opened and are not served (…): t-0:
    /// reason; …", for an answer or a log line.
    pub fn summary(not_served: &[NotServed]) -> String {
        let listed: Vec<String> = not_served
            .iter()
            .take(Self::LISTED_MAX)
            .map(|n| format!("{}-{}: {}", n.topic, n.partition, n.reason))
            .collect();
        let more = not_served.len().saturating_sub(Self::LISTED_MAX);
        let tail = if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        };
        format!(
            "{} partition(s) could not be opened and are not served \
             (the broker retries every {} s): {}{tail}",
            not_served.len(),
            crate::shard::RETRY_UNSERVED_INTERVAL.as_secs(),
            listed.join("; ")
        )
    }
}

/// An operation on a partition owned by another shard.
pub enum PartitionOp {
    /// Append the batches at `range` of a request frame, which moved here
    /// whole (no copy); `wait`: answer once durable.
    Produce {
        /// The request frame.
        frame: Arc<Vec<u8>>,
        /// Where the batches lie in it.
        range: Range<usize>,
        /// What the producer waits for, and until when.
        acks: Acks,
        /// The outcome.
        reply: oneshot::Sender<Result<Produced, ErrorCode>>,
    },
    /// Read from `offset`; the bytes are copied out of the owner's buffers,
    /// which cannot leave its shard.
    Fetch {
        /// First offset wanted.
        offset: i64,
        /// Byte budget.
        max_bytes: usize,
        /// Batches, the high watermark and the log start.
        reply: oneshot::Sender<Result<Fetched, ErrorCode>>,
    },
    /// Answer once batches past `offset` are readable, or after `wait`.
    WaitPast {
        /// The offset already seen.
        offset: i64,
        /// The longest wait.
        wait: Duration,
        /// Resolved on either.
        reply: oneshot::Sender<Result<(), ErrorCode>>,
    },
    /// Offsets and size.
    Describe {
        /// The answer.
        reply: oneshot::Sender<Result<Described, ErrorCode>>,
    },
    /// A group request for the coordinator this partition of
    /// `__consumer_offsets` runs.
    Group {
        /// The request and what the coordinator needs with it.
        call: Box<crate::group::Call>,
        /// The answer.
        reply: oneshot::Sender<Result<crate::group::coordinator::GroupReply, ErrorCode>>,
    },
    /// `ListOffsets` for one timestamp.
    OffsetFor {
        /// Timestamp, or EARLIEST/LATEST.
        timestamp: i64,
        /// `(offset, timestamp)`.
        reply: oneshot::Sender<Result<(i64, i64), ErrorCode>>,
    },
}

/// Batches read on another shard.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Whole batches.
    pub records: Vec<u8>,
    /// Offset after the last written batch.
    pub high_watermark: i64,
    /// First offset held.
    pub log_start_offset: i64,
}

impl Fetched {
    /// Copies a read's batches out of the shard's buffers.
    pub fn copied(read: &fjord_storage::LogRead) -> Fetched {
        let mut records = Vec::with_capacity(read.len_bytes());
        for slice in &read.slices {
            records.extend_from_slice(slice);
        }
        Fetched {
            records,
            high_watermark: read.offset_written as i64,
            log_start_offset: read.offset_start as i64,
        }
    }
}

impl PartitionOp {
    /// Answers the operation with `code` without running it: the partition
    /// is not on this shard (anymore).
    pub fn fail(self, code: ErrorCode) {
        // A requester that went away needs no answer.
        match self {
            PartitionOp::Produce { reply, .. } => drop(reply.send(Err(code))),
            PartitionOp::Fetch { reply, .. } => drop(reply.send(Err(code))),
            PartitionOp::WaitPast { reply, .. } => drop(reply.send(Err(code))),
            PartitionOp::Describe { reply } => drop(reply.send(Err(code))),
            PartitionOp::OffsetFor { reply, .. } => drop(reply.send(Err(code))),
            PartitionOp::Group { reply, .. } => drop(reply.send(Err(code))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;
    use glommio::channels::channel_mesh::{Full, MeshBuilder};

    /// Senders that wait for room in a full channel still deliver in the
    /// order they began to send.
    #[test]
    fn what_waits_for_room_arrives_in_send_order() {
        const SENDS: usize = 64;
        let mesh = MeshBuilder::<usize, Full>::full(2, 1);
        let receiver = {
            let mesh = mesh.clone();
            LocalExecutorBuilder::default()
                .spawn(move || async move {
                    let (_, receivers) = mesh.join().await.expect("join");
                    // Ids go by the order of joining: the other one is the sender.
                    let sender = 1 - receivers.peer_id();
                    // Every sender is waiting for room before the first receive.
                    glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
                    let mut got = Vec::new();
                    while got.len() < SENDS {
                        let msg = receivers.recv_from(sender).await.expect("a peer");
                        got.push(msg.expect("a message"));
                    }
                    got
                })
                .expect("executor")
        };
        let sender = LocalExecutorBuilder::default()
            .spawn(move || async move {
                let (senders, _) = mesh.join().await.expect("join");
                let receiver = 1 - senders.peer_id();
                let outbox = std::rc::Rc::new(Outbox::new(senders));
                let sends: Vec<_> = (0..SENDS)
                    .map(|i| {
                        let outbox = outbox.clone();
                        glommio::spawn_local(async move { outbox.send_to(receiver, i).await })
                    })
                    .collect();
                for send in sends {
                    send.await.expect("sent");
                }
            })
            .expect("executor");
        sender.join().expect("sender");
        let got = receiver.join().expect("receiver");
        assert_eq!(got, (0..SENDS).collect::<Vec<_>>());
    }
}
