//! Topic administration: create, delete, describe, list.

use crate::client::Client;
use crate::error::{ClientError, Result, check, error_code};
use crate::transport::Lane;
use fjord_net::{ErrorCode, wire};

/// Administers a cluster's topics.
#[derive(Clone)]
pub struct Admin {
    client: Client,
}

/// A topic's settings and partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// Name.
    pub name: String,
    /// Every config with its effective value.
    pub configs: Vec<(String, String)>,
    /// Partitions in order.
    pub partitions: Vec<PartitionDescription>,
}

/// One partition's offsets and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionDescription {
    /// Number.
    pub partition: i32,
    /// First offset held.
    pub log_start_offset: i64,
    /// Next offset to be written.
    pub log_end_offset: i64,
    /// Bytes on disk.
    pub size_bytes: i64,
    /// Set when the partition could not be described.
    pub error: Option<ErrorCode>,
}

/// A topic in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicListing {
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: usize,
}

fn unexpected() -> ClientError {
    ClientError::Protocol("unexpected response type".into())
}

impl Admin {
    /// An admin over `client`.
    pub fn new(client: Client) -> Admin {
        Admin { client }
    }

    async fn ask(&self, body: wire::RequestT) -> Result<wire::ResponseT> {
        let response = self
            .client
            .request(
                self.client.config().bootstrap,
                Lane::Prompt,
                body,
                Vec::new(),
            )
            .await?;
        Ok(response.unpack()?.0)
    }

    /// Creates a topic with `partitions` partitions and `key=value` configs.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &[(String, String)],
    ) -> Result<()> {
        let topic = wire::NewTopicT {
            name: Some(name.to_owned()),
            partitions,
            configs: Some(
                configs
                    .iter()
                    .map(|(k, v)| wire::TopicConfigT {
                        key: Some(k.clone()),
                        value: Some(v.clone()),
                    })
                    .collect(),
            ),
        };
        let body = wire::RequestT::CreateTopicsRequest(Box::new(wire::CreateTopicsRequestT {
            topics: Some(vec![topic]),
            timeout_ms: 30_000,
        }));
        let wire::ResponseT::CreateTopicsResponse(response) = self.ask(body).await? else {
            return Err(unexpected());
        };
        topic_result(response.results, name)
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let body = wire::RequestT::DeleteTopicsRequest(Box::new(wire::DeleteTopicsRequestT {
            names: Some(vec![name.to_owned()]),
            timeout_ms: 30_000,
        }));
        let wire::ResponseT::DeleteTopicsResponse(response) = self.ask(body).await? else {
            return Err(unexpected());
        };
        topic_result(response.results, name)
    }

    /// Changes a topic's configs: `(key, value)` sets, an empty value
    /// removes the key (back to the default). All or nothing.
    pub async fn alter_topic_config(&self, name: &str, configs: &[(String, String)]) -> Result<()> {
        let configs = configs
            .iter()
            .map(|(key, value)| wire::TopicConfigT {
                key: Some(key.clone()),
                value: Some(value.clone()),
            })
            .collect();
        let body = wire::RequestT::AlterConfigsRequest(Box::new(wire::AlterConfigsRequestT {
            topics: Some(vec![wire::AlterTopicConfigsT {
                name: Some(name.to_owned()),
                configs: Some(configs),
            }]),
        }));
        let wire::ResponseT::AlterConfigsResponse(response) = self.ask(body).await? else {
            return Err(unexpected());
        };
        topic_result(response.results, name)
    }

    /// A topic's configs and its partitions' offsets and sizes.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let body = wire::RequestT::DescribeTopicsRequest(Box::new(wire::DescribeTopicsRequestT {
            names: Some(vec![name.to_owned()]),
        }));
        let wire::ResponseT::DescribeTopicsResponse(response) = self.ask(body).await? else {
            return Err(unexpected());
        };
        let topic = response
            .topics
            .into_iter()
            .flatten()
            .find(|t| t.name.as_deref() == Some(name))
            .ok_or_else(|| ClientError::Protocol(format!("no description of {name}")))?;
        check(topic.error_code, || format!("topic {name}"))?;
        Ok(TopicDescription {
            name: name.to_owned(),
            configs: topic
                .configs
                .into_iter()
                .flatten()
                .map(|c| (c.key.unwrap_or_default(), c.value.unwrap_or_default()))
                .collect(),
            partitions: topic
                .partitions
                .into_iter()
                .flatten()
                .map(|p| PartitionDescription {
                    partition: p.partition,
                    log_start_offset: p.log_start_offset,
                    log_end_offset: p.log_end_offset,
                    size_bytes: p.size_bytes,
                    error: error_code(p.error_code),
                })
                .collect(),
        })
    }

    /// Every topic, by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicListing>> {
        let metadata = self.client.metadata(None).await?;
        let mut topics: Vec<TopicListing> = metadata
            .topics
            .into_iter()
            .flatten()
            .map(|t| TopicListing {
                name: t.name.unwrap_or_default(),
                partitions: t.partitions.map_or(0, |p| p.len()),
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }
}

fn topic_result(results: Option<Vec<wire::TopicResultT>>, name: &str) -> Result<()> {
    let result = results
        .into_iter()
        .flatten()
        .find(|r| r.name.as_deref() == Some(name))
        .ok_or_else(|| ClientError::Protocol(format!("no result for {name}")))?;
    check(result.error_code, || {
        result
            .error_message
            .clone()
            .unwrap_or_else(|| format!("topic {name}"))
    })
}
