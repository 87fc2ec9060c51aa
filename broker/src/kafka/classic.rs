//! Kafka's classic group protocol — JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup — mapped onto the coordinator's classic groups
//! (`crate::group::classic`): the clients bring their own assignors (range,
//! round-robin, cooperative-sticky), the coordinator runs the barrier and
//! hands the leader's assignment to every member without reading it.

use super::{str_bytes, text};
use crate::api::groups::coordinate_request;
use crate::group::classic::{Join, Joined};
use crate::group::coordinator::{ClassicCall, ClassicReply, GroupReply, GroupRequest};
use crate::shard::Shard;
use fjord_net::ErrorCode;
use fjord_net::kafka::kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use fjord_net::kafka::kafka_protocol::messages::heartbeat_response::HeartbeatResponse;
use fjord_net::kafka::kafka_protocol::messages::join_group_request::JoinGroupRequest;
use fjord_net::kafka::kafka_protocol::messages::join_group_response::{
    JoinGroupResponse, JoinGroupResponseMember,
};
use fjord_net::kafka::kafka_protocol::messages::leave_group_request::LeaveGroupRequest;
use fjord_net::kafka::kafka_protocol::messages::leave_group_response::{
    LeaveGroupResponse, MemberResponse,
};
use fjord_net::kafka::kafka_protocol::messages::sync_group_request::SyncGroupRequest;
use fjord_net::kafka::kafka_protocol::messages::sync_group_response::SyncGroupResponse;

/// JoinGroup v4 and later: a first join without a member id is answered
/// MEMBER_ID_REQUIRED with one (KIP-394).
const KNOWN_MEMBER_ID_VERSION: i16 = 4;

/// One classic call on the group's coordinator.
async fn call(shard: &Shard, group: &str, call: ClassicCall) -> Result<ClassicReply, ErrorCode> {
    match coordinate_request(shard, group, GroupRequest::Classic(group.to_owned(), call)).await? {
        GroupReply::Classic(reply) => Ok(reply),
        _ => Err(ErrorCode::UnknownServerError),
    }
}

pub(super) async fn join_group(
    shard: &Shard,
    request: JoinGroupRequest,
    version: i16,
    client_id: Option<String>,
) -> JoinGroupResponse {
    let group = request.group_id.as_str().to_owned();
    let join = Join {
        member_id: text(&request.member_id),
        instance_id: request.group_instance_id.as_ref().map(text),
        client_id: client_id.unwrap_or_default(),
        client_host: String::new(),
        session_timeout_ms: i64::from(request.session_timeout_ms),
        // v0 has no rebalance timeout: the session timeout stands in.
        rebalance_timeout_ms: i64::from(if version == 0 {
            request.session_timeout_ms
        } else {
            request.rebalance_timeout_ms
        }),
        protocol_type: text(&request.protocol_type),
        protocols: request
            .protocols
            .iter()
            .map(|p| (text(&p.name), p.metadata.to_vec()))
            .collect(),
        require_known_member_id: version >= KNOWN_MEMBER_ID_VERSION,
    };
    let failed = |code: ErrorCode, member: String| {
        JoinGroupResponse::default()
            .with_error_code(code.code())
            .with_generation_id(-1)
            .with_member_id(str_bytes(member))
            .with_protocol_name(Some(str_bytes("")))
    };
    // As Kafka: a session the coordinator would not keep is refused, not
    // expired at the next tick into a rebalance without end.
    let limits = shard.config.group_limits();
    let session = limits.session_timeout_min_ms..=limits.session_timeout_max_ms;
    if !session.contains(&join.session_timeout_ms) {
        return failed(ErrorCode::InvalidSessionTimeout, text(&request.member_id));
    }
    match call(shard, &group, ClassicCall::Join(join)).await {
        Ok(ClassicReply::Joined(joined)) => joined_response(joined),
        Ok(ClassicReply::MemberIdRequired(id)) => failed(ErrorCode::MemberIdRequired, id),
        Ok(_) => failed(ErrorCode::UnknownServerError, String::new()),
        Err(code) => failed(code, text(&request.member_id)),
    }
}

fn joined_response(joined: Joined) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_generation_id(joined.generation)
        .with_protocol_type(Some(str_bytes(joined.protocol_type)))
        .with_protocol_name(Some(str_bytes(joined.protocol)))
        .with_leader(str_bytes(joined.leader))
        .with_member_id(str_bytes(joined.member_id))
        .with_members(
            joined
                .members
                .into_iter()
                .map(|(id, instance, metadata)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(id))
                        .with_group_instance_id(instance.map(str_bytes))
                        .with_metadata(metadata.into())
                })
                .collect(),
        )
}

pub(super) async fn sync_group(shard: &Shard, request: SyncGroupRequest) -> SyncGroupResponse {
    let group = request.group_id.as_str().to_owned();
    let sync = ClassicCall::Sync {
        member_id: text(&request.member_id),
        generation: request.generation_id,
        instance_id: request.group_instance_id.as_ref().map(text),
        assignments: request
            .assignments
            .iter()
            .map(|a| (text(&a.member_id), a.assignment.to_vec()))
            .collect(),
        protocol: (
            request.protocol_type.as_ref().map(text),
            request.protocol_name.as_ref().map(text),
        ),
    };
    let response = SyncGroupResponse::default()
        .with_protocol_type(request.protocol_type.clone())
        .with_protocol_name(request.protocol_name.clone());
    match call(shard, &group, sync).await {
        Ok(ClassicReply::Synced(assignment)) => response.with_assignment(assignment.into()),
        Ok(_) => response.with_error_code(ErrorCode::UnknownServerError.code()),
        Err(code) => response.with_error_code(code.code()),
    }
}

pub(super) async fn heartbeat(shard: &Shard, request: HeartbeatRequest) -> HeartbeatResponse {
    let group = request.group_id.as_str().to_owned();
    let beat = ClassicCall::Heartbeat {
        member_id: text(&request.member_id),
        generation: request.generation_id,
        instance_id: request.group_instance_id.as_ref().map(text),
    };
    let code = match call(shard, &group, beat).await {
        Ok(_) => 0,
        Err(code) => code.code(),
    };
    HeartbeatResponse::default().with_error_code(code)
}

pub(super) async fn leave_group(shard: &Shard, request: LeaveGroupRequest) -> LeaveGroupResponse {
    let group = request.group_id.as_str().to_owned();
    // v3 and later name members in a list; earlier, one member id.
    let leaving: Vec<(String, Option<String>)> = if request.members.is_empty() {
        vec![(text(&request.member_id), None)]
    } else {
        request
            .members
            .iter()
            .map(|m| (text(&m.member_id), m.group_instance_id.as_ref().map(text)))
            .collect()
    };
    let mut members = Vec::with_capacity(leaving.len());
    let mut first_error = 0;
    for (member_id, instance) in leaving {
        let code = match call(
            shard,
            &group,
            ClassicCall::Leave {
                member_id: member_id.clone(),
                instance_id: instance.clone(),
            },
        )
        .await
        {
            Ok(_) => 0,
            Err(code) => code.code(),
        };
        if first_error == 0 {
            first_error = code;
        }
        members.push(
            MemberResponse::default()
                .with_member_id(str_bytes(member_id))
                .with_group_instance_id(instance.map(str_bytes))
                .with_error_code(code),
        );
    }
    // Members are listed from v3 on; earlier the one error is the answer.
    if request.members.is_empty() {
        LeaveGroupResponse::default().with_error_code(first_error)
    } else {
        LeaveGroupResponse::default().with_members(members)
    }
}
