//! Kafka's DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for
//! topics, on the native handlers' cores (`api::admin::{topic_configs,
//! alter_topic_config}`): a topic's configs live in the controller's
//! metadata, and a change is one `AlterTopicConfig` command, so all of a
//! resource's changes apply or none. Broker configs are the node's static
//! settings: described as an empty list, never altered over the wire.

use super::str_bytes;
use crate::api::admin::{TopicConfigEntry, alter_topic_config, topic_configs};
use crate::shard::Shard;
use fjord_core::TopicConfig;
use fjord_core::topic::CONFIG_KEYS;
use fjord_net::ErrorCode;
use fjord_net::kafka::kafka_protocol::messages::alter_configs_request::{
    AlterConfigsRequest, AlterConfigsResource as LegacyResource,
};
use fjord_net::kafka::kafka_protocol::messages::alter_configs_response::{
    AlterConfigsResourceResponse as LegacyResult, AlterConfigsResponse,
};
use fjord_net::kafka::kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use fjord_net::kafka::kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
    DescribeConfigsSynonym,
};
use fjord_net::kafka::kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig, IncrementalAlterConfigsRequest,
};
use fjord_net::kafka::kafka_protocol::messages::incremental_alter_configs_response::{
    AlterConfigsResourceResponse, IncrementalAlterConfigsResponse,
};
use fjord_net::kafka::kafka_protocol::protocol::StrBytes;
use fjord_replication::metadata::ClusterMetadata;

/// Kafka's resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// Kafka's config sources: set on the topic, or the default.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

/// Kafka's config types (DescribeConfigs v3+).
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_DOUBLE: i8 = 6;
const TYPE_LIST: i8 = 7;

/// IncrementalAlterConfigs' operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// Topic configs whose value is a comma-separated list (APPEND and
/// SUBTRACT apply to them alone).
const LIST_KEYS: [&str; 1] = ["cleanup.policy"];

/// Why a resource's change was refused before reaching the controller.
type Refusal = (ErrorCode, String);

pub(super) fn describe_configs(
    shard: &Shard,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let metadata = shard.metadata();
    let results = request
        .resources
        .into_iter()
        .map(|resource| describe_resource(&metadata, resource, request.include_synonyms))
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn describe_resource(
    metadata: &ClusterMetadata,
    resource: DescribeConfigsResource,
    synonyms: bool,
) -> DescribeConfigsResult {
    let result = DescribeConfigsResult::default()
        .with_resource_type(resource.resource_type)
        .with_resource_name(resource.resource_name.clone());
    let name = resource.resource_name.as_str();
    if let Err((code, message)) = check_resource(resource.resource_type, name, true) {
        return result
            .with_error_code(code.code())
            .with_error_message(Some(str_bytes(message)));
    }
    if resource.resource_type == RESOURCE_BROKER {
        // No broker config is dynamic: the node's settings are its own.
        return result;
    }
    let Some(topic) = metadata.topics.get(name) else {
        return result
            .with_error_code(ErrorCode::UnknownTopicOrPartition.code())
            .with_error_message(Some(str_bytes(format!("unknown topic {name:?}"))));
    };
    let wanted = |key: &str| {
        resource
            .configuration_keys
            .as_ref()
            .is_none_or(|keys| keys.iter().any(|k| k.as_str() == key))
    };
    let defaults = TopicConfig::default().pairs();
    let configs = topic_configs(topic)
        .into_iter()
        .filter(|entry| wanted(entry.key))
        .map(|entry| described(entry, synonyms, &defaults))
        .collect();
    result.with_configs(configs)
}

/// One config as DescribeConfigs shows it: never read-only nor sensitive;
/// with synonyms (the topic's setting, then the default) when asked.
fn described(
    entry: TopicConfigEntry,
    synonyms: bool,
    defaults: &[(&'static str, String)],
) -> DescribeConfigsResourceResult {
    let source = if entry.overridden {
        SOURCE_TOPIC
    } else {
        SOURCE_DEFAULT
    };
    let mut listed = Vec::new();
    if synonyms {
        let synonym = |value: &str, source| {
            DescribeConfigsSynonym::default()
                .with_name(str_bytes(entry.key))
                .with_value(Some(str_bytes(value)))
                .with_source(source)
        };
        if entry.overridden {
            listed.push(synonym(&entry.value, SOURCE_TOPIC));
        }
        if let Some((_, default)) = defaults.iter().find(|(k, _)| *k == entry.key) {
            listed.push(synonym(default, SOURCE_DEFAULT));
        }
    }
    DescribeConfigsResourceResult::default()
        .with_name(str_bytes(entry.key))
        .with_config_type(config_type(entry.key))
        .with_value(Some(str_bytes(entry.value)))
        .with_read_only(false)
        .with_is_sensitive(false)
        .with_config_source(source)
        .with_synonyms(listed)
}

fn config_type(key: &str) -> i8 {
    match key {
        "segment.bytes" | "max.message.bytes" => TYPE_INT,
        "fsync" => TYPE_STRING,
        "cleanup.policy" => TYPE_LIST,
        "min.cleanable.dirty.ratio" => TYPE_DOUBLE,
        _ => TYPE_LONG,
    }
}

/// Whether a resource can be described (`describe`) or altered: topics
/// both, brokers described only (their settings are static), any other
/// type neither.
fn check_resource(resource_type: i8, name: &str, describe: bool) -> Result<(), Refusal> {
    match resource_type {
        RESOURCE_TOPIC => fjord_core::topic::validate_name(name)
            .map_err(|e| (ErrorCode::InvalidTopicException, e.to_string())),
        RESOURCE_BROKER if describe => Ok(()),
        RESOURCE_BROKER => Err((
            ErrorCode::InvalidRequest,
            "broker configs are static in Fjord: set them in the node's settings".to_owned(),
        )),
        other => Err((
            ErrorCode::InvalidRequest,
            format!("resource type {other} has no configs in Fjord (topics and brokers do)"),
        )),
    }
}

pub(super) async fn incremental_alter_configs(
    shard: &Shard,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let (error_code, error_message) =
            alter_incrementally(shard, &resource, request.validate_only).await;
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name)
                .with_error_code(error_code)
                .with_error_message(error_message.map(str_bytes)),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

async fn alter_incrementally(
    shard: &Shard,
    resource: &AlterConfigsResource,
    validate_only: bool,
) -> (i16, Option<String>) {
    let name = resource.resource_name.as_str();
    let changes = check_resource(resource.resource_type, name, false)
        .and_then(|()| unique_keys(resource.configs.iter().map(|c| &c.name)))
        .and_then(|()| incremental_changes(shard, name, &resource.configs));
    match changes {
        Ok(changes) => alter_topic_config(shard, name, changes, validate_only).await,
        Err((code, message)) => (code.code(), Some(message)),
    }
}

/// The `key=value` changes (an empty value: back to the default) of a
/// resource's operations.
fn incremental_changes(
    shard: &Shard,
    topic: &str,
    configs: &[AlterableConfig],
) -> Result<Vec<(String, String)>, Refusal> {
    let mut changes = Vec::with_capacity(configs.len());
    for config in configs {
        let key = config.name.as_str();
        let value = config.value.as_ref().map_or("", StrBytes::as_str);
        let change = match config.config_operation {
            OP_SET if value.is_empty() => {
                return Err((
                    ErrorCode::InvalidConfig,
                    format!("{key}: a value is required"),
                ));
            }
            OP_SET => value.to_owned(),
            OP_DELETE => String::new(),
            OP_APPEND | OP_SUBTRACT if !LIST_KEYS.contains(&key) => {
                return Err((
                    ErrorCode::InvalidRequest,
                    format!("{key} is not a list: APPEND and SUBTRACT do not apply"),
                ));
            }
            OP_APPEND | OP_SUBTRACT => {
                let current = current_value(shard, topic, key)?;
                let list = list_change(&current, value, config.config_operation == OP_APPEND);
                // Empty would read as "back to the default".
                if list.is_empty() {
                    return Err((
                        ErrorCode::InvalidConfig,
                        format!("{key}: the list would be empty"),
                    ));
                }
                list
            }
            op => {
                return Err((
                    ErrorCode::InvalidRequest,
                    format!("unknown operation {op} on {key}"),
                ));
            }
        };
        changes.push((key.to_owned(), change));
    }
    Ok(changes)
}

/// A topic's effective value of `key`.
fn current_value(shard: &Shard, topic: &str, key: &str) -> Result<String, Refusal> {
    let metadata = shard.metadata();
    let meta = metadata.topics.get(topic).ok_or_else(|| {
        (
            ErrorCode::UnknownTopicOrPartition,
            format!("unknown topic {topic:?}"),
        )
    })?;
    Ok(topic_configs(meta)
        .into_iter()
        .find(|entry| entry.key == key)
        .map(|entry| entry.value)
        .unwrap_or_default())
}

/// A list value with `items` appended (those not in it yet) or taken out.
fn list_change(current: &str, items: &str, append: bool) -> String {
    let items: Vec<&str> = items
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect();
    let mut list: Vec<&str> = current
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect();
    if append {
        for item in items {
            if !list.contains(&item) {
                list.push(item);
            }
        }
    } else {
        list.retain(|i| !items.contains(i));
    }
    list.join(",")
}

/// Kafka refuses a resource that names a key twice.
fn unique_keys<'a>(keys: impl Iterator<Item = &'a StrBytes>) -> Result<(), Refusal> {
    let mut seen = std::collections::BTreeSet::new();
    for key in keys {
        if !seen.insert(key.as_str()) {
            return Err((
                ErrorCode::InvalidRequest,
                format!("config {} given twice", key.as_str()),
            ));
        }
    }
    Ok(())
}

pub(super) async fn alter_configs(
    shard: &Shard,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let (error_code, error_message) =
            replace_configs(shard, &resource, request.validate_only).await;
        responses.push(
            LegacyResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name)
                .with_error_code(error_code)
                .with_error_message(error_message.map(str_bytes)),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

/// Kafka's legacy AlterConfigs: the configs given become the topic's whole
/// set; every key not given goes back to its default.
async fn replace_configs(
    shard: &Shard,
    resource: &LegacyResource,
    validate_only: bool,
) -> (i16, Option<String>) {
    let name = resource.resource_name.as_str();
    let checked = check_resource(resource.resource_type, name, false)
        .and_then(|()| unique_keys(resource.configs.iter().map(|c| &c.name)));
    if let Err((code, message)) = checked {
        return (code.code(), Some(message));
    }
    let given = resource.configs.iter().map(|c| {
        let value = c.value.as_ref().map_or("", StrBytes::as_str);
        (c.name.as_str().to_owned(), value.to_owned())
    });
    let reset = CONFIG_KEYS
        .iter()
        .filter(|key| !resource.configs.iter().any(|c| c.name.as_str() == **key))
        .map(|key| ((*key).to_owned(), String::new()));
    let changes = given.chain(reset).collect();
    alter_topic_config(shard, name, changes, validate_only).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_append_and_subtract() {
        assert_eq!(list_change("delete", "compact", true), "delete,compact");
        assert_eq!(
            list_change("delete,compact", "compact", true),
            "delete,compact"
        );
        assert_eq!(list_change("compact, delete", "delete", false), "compact");
        assert_eq!(list_change("delete", "delete", false), "");
    }

    #[test]
    fn every_key_has_a_type_and_only_topics_and_brokers_have_configs() {
        assert!(CONFIG_KEYS.iter().all(|k| config_type(k) != 0));
        assert!(check_resource(RESOURCE_TOPIC, "orders", false).is_ok());
        assert!(check_resource(RESOURCE_BROKER, "0", true).is_ok());
        assert_eq!(
            check_resource(RESOURCE_BROKER, "0", false).map_err(|(c, _)| c),
            Err(ErrorCode::InvalidRequest)
        );
        assert_eq!(
            check_resource(8, "x", true).map_err(|(c, _)| c),
            Err(ErrorCode::InvalidRequest)
        );
    }
}
