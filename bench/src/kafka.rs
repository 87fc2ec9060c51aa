//! `bench --kafka`: the load generator speaking Kafka's protocol to a
//! broker's Kafka listener, so the Kafka path is measured with the same
//! open-loop generator as the native one. Only what the generator needs:
//! Metadata (each partition's leader), Produce and Fetch, pipelined on one
//! connection per broker. Codecs are the `kafka-protocol` crate's.
//!
//! Written here rather than taken from a Kafka client crate: the generator
//! owns its batches (built once, in Kafka's RecordBatch v2) and its timing
//! (due time to acknowledgement); a client library would re-batch and
//! schedule them itself, and measure its own queueing instead.

use crate::produce::Failed;
use bytes::Bytes;
use fjord_net::kafka::kafka_protocol::messages::fetch_request::{
    FetchPartition, FetchRequest, FetchTopic,
};
use fjord_net::kafka::kafka_protocol::messages::metadata_request::{
    MetadataRequest, MetadataRequestTopic,
};
use fjord_net::kafka::kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use fjord_net::kafka::kafka_protocol::messages::{
    ApiKey, FetchResponse, MetadataResponse, ProduceResponse, RequestHeader, ResponseHeader,
    TopicName,
};
use fjord_net::kafka::kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use futures::channel::oneshot;
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

/// The versions spoken: the newest Fjord's listener serves that still name
/// topics (Produce 9 and Fetch 12 are flexible, as current clients send).
const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;
const METADATA_VERSION: i16 = 12;
/// How long the broker may take to replicate an acks=all produce.
const PRODUCE_TIMEOUT_MS: i32 = 30_000;
/// The largest response frame read (a fetch answers with at most its
/// `max_bytes` of records).
const RESPONSE_MAX: usize = 256 << 20;
const CLIENT_ID: &str = "fjord-bench";
/// glommio's registered I/O memory of a Kafka generator's or consumer's
/// thread (its sockets need little; the machine locks 8 MiB in all).
pub const IO_MEMORY: usize = 1 << 20;

/// Connections to a cluster's Kafka listeners, one per broker address,
/// opened on first use. Lives on one glommio executor thread.
#[derive(Default)]
pub struct KafkaClient {
    conns: RefCell<HashMap<SocketAddr, Rc<Conn>>>,
}

/// One connection: requests written in order by a writer task, responses
/// (Kafka answers a connection's requests in order) handed to the waiters
/// in the same order by a reader task.
struct Conn {
    frames: LocalSender<Vec<u8>>,
    waiting: RefCell<VecDeque<oneshot::Sender<Bytes>>>,
    next_id: Cell<i32>,
}

impl KafkaClient {
    async fn conn(&self, addr: SocketAddr) -> Result<Rc<Conn>, String> {
        if let Some(conn) = self.conns.borrow().get(&addr) {
            return Ok(conn.clone());
        }
        let stream = TcpStream::connect_timeout(addr, Duration::from_secs(10))
            .await
            .map_err(|e| format!("kafka {addr}: cannot connect: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("kafka {addr}: {e}"))?;
        // Another task may have connected while this one waited: keep one.
        if let Some(conn) = self.conns.borrow().get(&addr) {
            return Ok(conn.clone());
        }
        let (mut reader, mut writer) = stream.split();
        let (frames, outgoing) = local_channel::new_unbounded::<Vec<u8>>();
        let conn = Rc::new(Conn {
            frames,
            waiting: RefCell::new(VecDeque::new()),
            next_id: Cell::new(0),
        });
        let answers = Rc::downgrade(&conn);
        let writing = async move {
            while let Some(frame) = outgoing.recv().await {
                if writer.write_all(&frame).await.is_err() || writer.flush().await.is_err() {
                    break;
                }
            }
        };
        let reading = async move {
            // Ends at the first error: the waiters' senders drop with the
            // connection, and each gets a closed channel.
            while let Ok(frame) = read_frame(&mut reader).await {
                let Some(conn) = answers.upgrade() else {
                    break;
                };
                let Some(waiter) = conn.waiting.borrow_mut().pop_front() else {
                    break;
                };
                let _ = waiter.send(frame);
            }
            if let Some(conn) = answers.upgrade() {
                conn.waiting.borrow_mut().clear();
            }
        };
        glommio::spawn_local(async move {
            futures::future::select(Box::pin(writing), Box::pin(reading)).await;
        })
        .detach();
        self.conns.borrow_mut().insert(addr, conn.clone());
        Ok(conn)
    }

    /// Sends a request; its response body (header read) when one is due.
    async fn call<T: Encodable>(
        &self,
        addr: SocketAddr,
        api: ApiKey,
        version: i16,
        body: &T,
        answered: bool,
    ) -> Result<Option<Bytes>, String> {
        let conn = self.conn(addr).await?;
        let id = conn.next_id.get();
        conn.next_id.set(id.wrapping_add(1));
        let frame = encode_request(api, version, id, body)?;
        let answer = answered.then(|| {
            let (tx, rx) = oneshot::channel();
            conn.waiting.borrow_mut().push_back(tx);
            rx
        });
        if conn.frames.try_send(frame).is_err() {
            self.conns.borrow_mut().remove(&addr);
            return Err(format!("kafka {addr}: connection closed"));
        }
        let Some(answer) = answer else {
            return Ok(None);
        };
        let Ok(mut frame) = answer.await else {
            self.conns.borrow_mut().remove(&addr);
            return Err(format!("kafka {addr}: connection closed"));
        };
        let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))
            .map_err(|e| format!("kafka {addr}: bad response header: {e}"))?;
        if header.correlation_id != id {
            return Err(format!(
                "kafka {addr}: response {} to request {id}",
                header.correlation_id
            ));
        }
        Ok(Some(frame))
    }

    /// Each partition's leader as a Kafka address, asked of `bootstrap`;
    /// waits (up to 15 s) for every partition to have one.
    pub async fn leaders(
        &self,
        bootstrap: SocketAddr,
        topic: &str,
    ) -> Result<Vec<SocketAddr>, String> {
        let request = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
                TopicName(StrBytes::from_string(topic.to_owned())),
            ))]));
        let mut last = String::new();
        for _ in 0..150 {
            let body = self
                .call(
                    bootstrap,
                    ApiKey::Metadata,
                    METADATA_VERSION,
                    &request,
                    true,
                )
                .await?
                .unwrap_or_default();
            let response = decode::<MetadataResponse>(body, METADATA_VERSION)?;
            match leaders_of(&response, topic) {
                Ok(found) => return Ok(found),
                Err(why) => last = why,
            }
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("kafka {bootstrap}: {last}"))
    }

    /// Produces one batch; `Ok` once acknowledged (at once for acks 0).
    pub async fn produce(
        &self,
        addr: SocketAddr,
        topic: &str,
        partition: i32,
        acks: i16,
        batch: Vec<u8>,
    ) -> Result<(), Failed> {
        let request = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(PRODUCE_TIMEOUT_MS)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(partition)
                            .with_records(Some(Bytes::from(batch))),
                    ]),
            ]);
        let answered = acks != fjord_net::api::ACKS_NONE;
        let fatal = |why: String| Failed {
            why,
            retriable: false,
        };
        // A request that got no answer (a dropped connection, a timeout)
        // may succeed again.
        let answer = self
            .call(addr, ApiKey::Produce, PRODUCE_VERSION, &request, answered)
            .await
            .map_err(|why| Failed {
                why,
                retriable: true,
            })?;
        let Some(body) = answer else {
            return Ok(());
        };
        let response = decode::<ProduceResponse>(body, PRODUCE_VERSION).map_err(fatal)?;
        let code = response
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .map(|p| p.error_code)
            .ok_or_else(|| fatal("produce response without the partition".into()))?;
        match fjord_client::error::error_code(code) {
            None => Ok(()),
            Some(error) => Err(Failed {
                why: format!("produce: Kafka error {code} ({error:?})"),
                retriable: error.is_retriable(),
            }),
        }
    }

    /// Fetches from `offset` of one partition: the record batches as the
    /// broker sent them (possibly none), and the high watermark.
    pub async fn fetch(
        &self,
        addr: SocketAddr,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
        max_wait: Duration,
    ) -> Result<(Bytes, i64), String> {
        let request = FetchRequest::default()
            .with_replica_id((-1).into())
            .with_max_wait_ms(i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX))
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_session_epoch(-1)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partitions(vec![
                        FetchPartition::default()
                            .with_partition(partition)
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(max_bytes),
                    ]),
            ]);
        let body = self
            .call(addr, ApiKey::Fetch, FETCH_VERSION, &request, true)
            .await?
            .unwrap_or_default();
        let response = decode::<FetchResponse>(body, FETCH_VERSION)?;
        if response.error_code != 0 {
            return Err(format!("fetch: Kafka error {}", response.error_code));
        }
        let data = response
            .responses
            .into_iter()
            .next()
            .and_then(|t| t.partitions.into_iter().next())
            .ok_or("fetch response without the partition")?;
        if data.error_code != 0 {
            return Err(format!("fetch: Kafka error {}", data.error_code));
        }
        Ok((data.records.unwrap_or_default(), data.high_watermark))
    }
}

/// Each partition's leader's address, or why not every partition has one.
fn leaders_of(response: &MetadataResponse, topic: &str) -> Result<Vec<SocketAddr>, String> {
    let brokers: HashMap<i32, SocketAddr> = response
        .brokers
        .iter()
        .filter_map(|b| {
            let addr = (b.host.as_str(), u16::try_from(b.port).ok()?)
                .to_socket_addrs()
                .ok()?
                .next()?;
            Some((b.node_id.0, addr))
        })
        .collect();
    let found = response
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic))
        .ok_or(format!("no topic {topic} in the metadata"))?;
    if found.error_code != 0 {
        return Err(format!("topic {topic}: Kafka error {}", found.error_code));
    }
    let mut partitions: Vec<_> = found.partitions.iter().collect();
    partitions.sort_by_key(|p| p.partition_index);
    partitions
        .iter()
        .map(|p| {
            brokers
                .get(&p.leader_id.0)
                .copied()
                .ok_or(format!("partition {} has no leader", p.partition_index))
        })
        .collect()
}

fn encode_request<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0; 4]);
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)))
        .encode(&mut out, api.request_header_version(version))
        .map_err(|e| format!("{api:?} header: {e}"))?;
    body.encode(&mut out, version)
        .map_err(|e| format!("{api:?} request: {e}"))?;
    let size = i32::try_from(out.len() - 4).map_err(|e| e.to_string())?;
    out[..4].copy_from_slice(&size.to_be_bytes());
    Ok(out)
}

fn decode<T: Decodable>(mut body: Bytes, version: i16) -> Result<T, String> {
    T::decode(&mut body, version).map_err(|e| format!("bad response: {e}"))
}

async fn read_frame(reader: &mut (impl futures::AsyncRead + Unpin)) -> std::io::Result<Bytes> {
    let mut size = [0u8; 4];
    reader.read_exact(&mut size).await?;
    let size = usize::try_from(i32::from_be_bytes(size))
        .ok()
        .filter(|&s| s <= RESPONSE_MAX)
        .ok_or_else(|| std::io::Error::other("response frame size out of bounds"))?;
    let mut frame = vec![0; size];
    reader.read_exact(&mut frame).await?;
    Ok(Bytes::from(frame))
}
