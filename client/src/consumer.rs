//! The consumer: assigned partitions, a position in each, and `poll`, which
//! long-polls every partition's shard and returns the records after the
//! positions. While the application handles one poll's records, the next
//! fetch is already in flight (pipelined), unless a seek invalidates it.

use crate::client::{Client, Route};
use crate::error::{ClientError, Result};
use crate::transport::{Lane, Response};
use fjord_core::batch;
use fjord_net::{ErrorCode, api, wire};
use futures::FutureExt;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seek {
    /// This offset.
    Offset(i64),
    /// The first offset held.
    Earliest,
    /// The end: only records produced from now on.
    Latest,
    /// The first record at or after this timestamp (ms since the epoch);
    /// the end when none is that recent.
    Timestamp(i64),
}

/// How a consumer fetches.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Bytes per partition per fetch.
    pub partition_bytes_max: i32,
    /// Bytes per fetch response.
    pub fetch_bytes_max: i32,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            partition_bytes_max: 1 << 20,
            fetch_bytes_max: 50 << 20,
        }
    }
}

/// A record as consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp, ms since the epoch.
    pub timestamp: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

struct Assigned {
    topic: String,
    partition: i32,
    route: Route,
    position: i64,
}

type Fetching = BoxFuture<'static, Vec<Result<Response>>>;

/// Reads assigned partitions.
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    assigned: Vec<Assigned>,
    /// The fetch sent ahead, with the positions it was sent for and its
    /// long-poll wait.
    fetching: Option<(Fetching, Vec<i64>)>,
}

impl Consumer {
    /// A consumer with nothing assigned.
    pub fn new(client: &Client, config: ConsumerConfig) -> Consumer {
        Consumer {
            client: client.clone(),
            config,
            assigned: Vec::new(),
            fetching: None,
        }
    }

    /// Assigns partitions of `topic` (all when `partitions` is `None`),
    /// each starting at `seek`.
    pub async fn assign(
        &mut self,
        topic: &str,
        partitions: Option<&[i32]>,
        seek: Seek,
    ) -> Result<()> {
        let routes = self.client.routes(topic).await?;
        let all: Vec<i32> = (0..routes.partitions.len() as i32).collect();
        for &p in partitions.unwrap_or(&all) {
            let route = usize::try_from(p)
                .ok()
                .and_then(|i| routes.partitions.get(i).copied().flatten())
                .ok_or_else(|| {
                    ClientError::broker(ErrorCode::UnknownTopicOrPartition, format!("{topic}-{p}"))
                })?;
            self.assigned
                .retain(|a| !(a.topic == topic && a.partition == p));
            self.assigned.push(Assigned {
                topic: topic.to_owned(),
                partition: p,
                route,
                position: 0,
            });
            self.seek(topic, p, seek).await?;
        }
        Ok(())
    }

    /// The next offset to be read from a partition.
    pub fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        self.assigned
            .iter()
            .find(|a| a.topic == topic && a.partition == partition)
            .map(|a| a.position)
    }

    /// Moves a partition's position.
    pub async fn seek(&mut self, topic: &str, partition: i32, seek: Seek) -> Result<()> {
        self.fetching = None;
        let index = self
            .assigned
            .iter()
            .position(|a| a.topic == topic && a.partition == partition)
            .ok_or_else(|| ClientError::Protocol(format!("{topic}-{partition} is not assigned")))?;
        let timestamp = match seek {
            Seek::Offset(offset) => {
                self.assigned[index].position = offset;
                return Ok(());
            }
            Seek::Earliest => api::EARLIEST,
            Seek::Latest => api::LATEST,
            Seek::Timestamp(t) => t,
        };
        let (offset, _) = self.list_offset(index, timestamp).await?;
        self.assigned[index].position = if offset < 0 {
            self.list_offset(index, api::LATEST).await?.0
        } else {
            offset
        };
        Ok(())
    }

    async fn list_offset(&self, index: usize, timestamp: i64) -> Result<(i64, i64)> {
        let a = &self.assigned[index];
        let body = wire::RequestT::ListOffsetsRequest(Box::new(wire::ListOffsetsRequestT {
            topics: Some(vec![wire::ListOffsetsTopicT {
                name: Some(a.topic.clone()),
                partitions: Some(vec![wire::ListOffsetsPartitionT {
                    partition: a.partition,
                    timestamp,
                }]),
            }]),
        }));
        let response = self
            .client
            .request(a.route.addr, Lane::Prompt, body, Vec::new())
            .await?;
        let wire::ResponseT::ListOffsetsResponse(body) = response.unpack()?.0 else {
            return Err(ClientError::Protocol(
                "expected a ListOffsets response".into(),
            ));
        };
        let result = body
            .topics
            .into_iter()
            .flatten()
            .flat_map(|t| t.partitions.into_iter().flatten())
            .next()
            .ok_or_else(|| ClientError::Protocol("empty ListOffsets response".into()))?;
        match ErrorCode::try_from_code(result.error_code) {
            None => Ok((result.offset, result.timestamp)),
            Some(code) => Err(ClientError::broker(
                code,
                format!("{}-{}", a.topic, a.partition),
            )),
        }
    }

    /// Records after the positions, waiting up to `timeout` for the first;
    /// empty when none came. Advances the positions past what it returns.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        if self.assigned.is_empty() {
            return Ok(Vec::new());
        }
        let positions: Vec<i64> = self.assigned.iter().map(|a| a.position).collect();
        let (fetching, sent_for) = match self.fetching.take() {
            Some((fetching, sent_for)) if sent_for == positions => (fetching, sent_for),
            _ => (self.fetch(timeout), positions),
        };
        let responses = fetching.await;
        let records = self.take_records(&responses, &sent_for)?;
        // Pipelining: the next fetch travels while the caller works.
        let positions: Vec<i64> = self.assigned.iter().map(|a| a.position).collect();
        self.fetching = Some((self.fetch(timeout), positions));
        Ok(records)
    }

    /// One fetch request per shard address, all sent now.
    fn fetch(&self, wait: Duration) -> Fetching {
        let mut by_addr: HashMap<SocketAddr, Vec<&Assigned>> = HashMap::new();
        for a in &self.assigned {
            by_addr.entry(a.route.addr).or_default().push(a);
        }
        let calls: Vec<_> = by_addr
            .into_iter()
            .map(|(addr, assigned)| {
                let mut topics: Vec<wire::FetchTopicT> = Vec::new();
                for a in assigned {
                    let partition = wire::FetchPartitionT {
                        partition: a.partition,
                        fetch_offset: a.position,
                        max_bytes: self.config.partition_bytes_max,
                    };
                    match topics
                        .iter_mut()
                        .find(|t| t.name.as_deref() == Some(a.topic.as_str()))
                    {
                        Some(t) => t.partitions.get_or_insert_default().push(partition),
                        None => topics.push(wire::FetchTopicT {
                            name: Some(a.topic.clone()),
                            partitions: Some(vec![partition]),
                        }),
                    }
                }
                let body = wire::RequestT::FetchRequest(Box::new(wire::FetchRequestT {
                    max_wait_ms: wait.as_millis().min(i32::MAX as u128) as i32,
                    min_bytes: 1,
                    max_bytes: self.config.fetch_bytes_max,
                    topics: Some(topics),
                }));
                self.client.request(addr, Lane::LongPoll, body, Vec::new())
            })
            .collect();
        futures::future::join_all(calls).boxed()
    }

    fn take_records(
        &mut self,
        responses: &[Result<Response>],
        sent_for: &[i64],
    ) -> Result<Vec<ConsumerRecord>> {
        let mut records = Vec::new();
        for response in responses {
            let response = response.as_ref().map_err(Clone::clone)?;
            let (body, payload) = response.unpack()?;
            let wire::ResponseT::FetchResponse(body) = body else {
                return Err(ClientError::Protocol("expected a Fetch response".into()));
            };
            for topic in body.topics.into_iter().flatten() {
                let name = topic.name.unwrap_or_default();
                for p in topic.partitions.into_iter().flatten() {
                    let Some(index) = self
                        .assigned
                        .iter()
                        .position(|a| a.topic == name && a.partition == p.partition)
                    else {
                        continue;
                    };
                    if let Some(code) = ErrorCode::try_from_code(p.error_code) {
                        return Err(ClientError::broker(code, format!("{name}-{}", p.partition)));
                    }
                    let position = sent_for[index];
                    let bytes = Response::range(payload, p.records.as_ref())?;
                    let mut next = position;
                    for batch in batch::batches(bytes) {
                        let batch_records = batch.records().map_err(|e| {
                            ClientError::Protocol(format!(
                                "bad batch from {name}-{}: {e}",
                                p.partition
                            ))
                        })?;
                        for record in batch_records {
                            let record = record.map_err(|e| {
                                ClientError::Protocol(format!(
                                    "bad record from {name}-{}: {e}",
                                    p.partition
                                ))
                            })?;
                            // A batch starts before the position when the
                            // position is inside it: skip what was read.
                            if record.offset < position {
                                continue;
                            }
                            records.push(ConsumerRecord {
                                topic: name.clone(),
                                partition: p.partition,
                                offset: record.offset,
                                timestamp: record.timestamp,
                                key: record.key.map(<[u8]>::to_vec),
                                value: record.value.map(<[u8]>::to_vec),
                                headers: record
                                    .headers
                                    .iter()
                                    .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                                    .collect(),
                            });
                        }
                        next = next.max(batch.last_offset() + 1);
                    }
                    self.assigned[index].position = next;
                }
            }
        }
        Ok(records)
    }
}
