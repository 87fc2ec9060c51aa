//! A node in a cluster, on its shard 0: the controller's side (answering the
//! other nodes' follow rounds and forwarded commands) and a follower's side
//! (following the controller's metadata, forwarding commands to it).
//!
//! One node runs the controller (`controller_voters`, or the node without
//! seeds), or a quorum of voters does and the leader of their metadata
//! group is the active one. Every other node — and every voter that does
//! not lead — finds it through its seeds or the voters' listeners (one that
//! is not the controller names it) and then follows it in long-poll rounds that
//! also register the node, report the leaders it knows and learn every
//! other node's. A round's answer carries the controller's whole metadata
//! when it is newer, and the node converges its shards to it, as the
//! controller's own node does after each command.

use crate::controller::CommandError;
use crate::mesh::{NotServed, ShardMsg};
use crate::peer::Caller;
use crate::shard::Shard;
use fjord_net::ErrorCode;
use fjord_replication::control::{ControlRequest, ControlResponse, Follow, Followed, Proposal};
use fjord_replication::metadata::{ClusterMetadata, Command, NodeInfo};
use fjord_replication::raft::NodeId;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Longest a follow round waits at the controller for news.
const FOLLOW_WAIT: Duration = Duration::from_millis(500);
/// Pause before trying the next seed after a failed round.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Longest a forwarded command waits for the controller.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one attempt to reach the controller with a command waits.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest time between two follow rounds cut short to report leaders.
const REPORT_PAUSE: Duration = Duration::from_millis(100);
/// How often shard 0 tells the other shards which nodes are live.
const LIVE_EVERY: Duration = Duration::from_secs(1);

/// This node as it registers.
pub fn node_info(shard: &Shard) -> NodeInfo {
    let first_data_shard = shard.config.first_data_shard() as u16;
    NodeInfo {
        id: shard.node_id(),
        host: shard.config.advertised_host(),
        port: shard.config.advertised().port(),
        shard_ports: shard.shard_ports.clone(),
        first_data_shard,
        data_shards: shard.data_shards(),
        controller: shard.config.runs_controller(),
    }
}

/// Registers the controller's own node when its entry is missing or stale.
pub async fn register_self(shard: &Shard) -> Result<(), CommandError> {
    let me = node_info(shard);
    if shard.metadata().nodes.get(&me.id) == Some(&me) {
        return Ok(());
    }
    shard
        .command(Proposal::of(Command::RegisterNode(Box::new(me))))
        .await
        .map(|_| ())
}

/// The controller's answer to a peer's request (on shard 0).
pub async fn answer(shard: &Rc<Shard>, from: NodeId, request: ControlRequest) -> ControlResponse {
    let Some(controller) = shard.controller().filter(|c| c.is_active()) else {
        return ControlResponse::NotController(controller_hint(shard));
    };
    match request {
        ControlRequest::Follow(follow) => {
            if follow.node.id != from {
                return ControlResponse::Failed(
                    ErrorCode::InvalidRequest.code(),
                    format!("node {from} follows as node {}", follow.node.id),
                );
            }
            controller.heard(from);
            let changed = shard.merge_leaders(&follow.leaders);
            if changed {
                shard.broadcast_leaders(follow.leaders.clone()).await;
                controller.notify();
            }
            if shard.metadata().nodes.get(&from) != Some(&follow.node) {
                let register = Proposal::of(Command::RegisterNode(Box::new(follow.node)));
                if let Err(e) = shard.command(register).await {
                    return failed(&e);
                }
            }
            if shard.metadata().applied_index <= follow.applied_index {
                let wait = Duration::from_millis(u64::from(follow.wait_ms)).min(FOLLOW_WAIT);
                let changed = controller.changed();
                let timeout = std::pin::pin!(glommio::timer::sleep(wait));
                futures::future::select(changed, timeout).await;
            }
            if !controller.is_active() {
                // Deposed while the round waited.
                return ControlResponse::NotController(controller_hint(shard));
            }
            let metadata = shard.metadata();
            ControlResponse::Followed(Followed {
                metadata: if metadata.applied_index > follow.applied_index {
                    metadata.snapshot()
                } else {
                    Vec::new()
                },
                leaders: shard.leaders(),
                live: controller.live(shard.node_id()),
            })
        }
        ControlRequest::Command(proposal) => match shard.command(proposal).await {
            Ok(not_served) if not_served.is_empty() => {
                ControlResponse::Committed(shard.metadata().applied_index)
            }
            Ok(not_served) => ControlResponse::Failed(
                ErrorCode::KafkaStorageError.code(),
                format!("committed, but {}", NotServed::summary(&not_served)),
            ),
            Err(e) => failed(&e),
        },
    }
}

fn failed(error: &CommandError) -> ControlResponse {
    ControlResponse::Failed(
        crate::api::command_error_code(error).code(),
        error.to_string(),
    )
}

/// Sends a command to the cluster's controller and waits until this node
/// has applied it (so that what follows sees it). The controller is looked
/// for as a follower looks for it: where it is known to be, else through
/// the contact points; a deposed controller's refusal sends the command on
/// to the new one.
pub async fn forward(shard: &Shard, proposal: Proposal) -> Result<Vec<NotServed>, CommandError> {
    let request = ControlRequest::Command(proposal);
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let mut caller = Caller::new(shard.node_id());
    let points = contact_points(shard);
    let mut next_point = 0;
    let mut target = controller_addr(shard);
    let mut why = "the controller is not known yet".to_string();
    let index = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CommandError::Remote(ErrorCode::NotController, why));
        }
        let addr = match target.take() {
            Some(addr) => addr,
            None if points.is_empty() => {
                glommio::timer::sleep(RETRY_PAUSE).await;
                target = controller_addr(shard);
                continue;
            }
            None => {
                next_point += 1;
                points[(next_point - 1) % points.len()]
            }
        };
        match caller.call(addr, &request, left.min(ATTEMPT_TIMEOUT)).await {
            Ok(ControlResponse::Committed(index)) => break index,
            Ok(ControlResponse::Failed(code, message))
                if code != ErrorCode::NotController.code() =>
            {
                let code = ErrorCode::try_from_code(code).unwrap_or(ErrorCode::UnknownServerError);
                return Err(CommandError::Remote(code, message));
            }
            Ok(ControlResponse::NotController(Some(at))) => {
                target = resolve(&at).filter(|&named| named != addr);
                if target.is_none() {
                    glommio::timer::sleep(RETRY_PAUSE).await;
                }
            }
            Ok(other) => {
                why = format!("{addr} does not run the active controller ({other:?})");
                glommio::timer::sleep(RETRY_PAUSE).await;
            }
            Err(e) => {
                why = format!("controller: {e}");
                glommio::timer::sleep(RETRY_PAUSE).await;
            }
        }
    };
    while shard.metadata().applied_index < index {
        if Instant::now() >= deadline {
            return Err(CommandError::Remote(
                ErrorCode::RequestTimedOut,
                format!("committed at {index}, not yet applied here"),
            ));
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    Ok(Vec::new())
}

/// The shard-0 address of the node running the active controller, as far
/// as this node knows.
fn controller_addr(shard: &Shard) -> Option<SocketAddr> {
    resolve(&controller_hint_on_0(shard)?)
}

/// Where a peer should ask for the controller: another shard sends it to
/// its own shard 0, which knows.
fn controller_hint(shard: &Shard) -> Option<(String, u16)> {
    if shard.id != 0 {
        return Some((shard.config.advertised_host(), *shard.shard_ports.first()?));
    }
    controller_hint_on_0(shard)
}

/// The active controller's node, by its registered shard 0, or a quorum
/// voter's listener when it has not registered yet; never this node.
fn controller_hint_on_0(shard: &Shard) -> Option<(String, u16)> {
    let id = shard
        .controller_node()
        .filter(|&id| id != shard.node_id())?;
    if let Some(node) = shard.metadata().nodes.get(&id) {
        return Some((node.host.clone(), *node.shard_ports.first()?));
    }
    let voter = shard.config.controller_voters.iter().find(|v| v.id == id)?;
    let addr = voter.addr?;
    Some((addr.ip().to_string(), addr.port()))
}

/// Where to ask for the controller when it is not where it was: the seeds
/// and voters' listeners the node was given, then every node the metadata
/// lists (those that run the controller first) — so a node whose seeds are
/// all down still finds a controller that moved.
fn contact_points(shard: &Shard) -> Vec<SocketAddr> {
    let mut points = shard.config.contact_points();
    let metadata = shard.metadata();
    let mut nodes: Vec<_> = metadata
        .nodes
        .values()
        .filter(|n| n.id != shard.node_id())
        .collect();
    nodes.sort_by_key(|n| !n.controller);
    for node in nodes {
        let addr = node
            .shard_ports
            .first()
            .and_then(|&port| resolve(&(node.host.clone(), port)));
        if let Some(addr) = addr.filter(|a| !points.contains(a)) {
            points.push(addr);
        }
    }
    points
}

fn resolve((host, port): &(String, u16)) -> Option<SocketAddr> {
    Some(SocketAddr::new(host.parse().ok()?, *port))
}

/// Follows the controller for as long as the node runs (shard 0 of a node
/// that does not run it): registers, reports leaders, installs metadata.
pub async fn follow(shard: Rc<Shard>) {
    let mut caller = Caller::new(shard.node_id());
    let mut seeds = contact_points(&shard);
    let mut next_seed = 0;
    let mut target: Option<SocketAddr> = None;
    // After a failed round the seeds are asked: the controller may have
    // come back on other ports, which only it can tell.
    let mut ask_seed = false;
    let failures = crate::logging::Repeated::default();
    let install_failures = crate::logging::Repeated::default();
    let mut last_cut = Instant::now();
    loop {
        if shard.controller().is_some_and(|c| c.is_active()) {
            // A quorum's leader: the controller is this node.
            target = None;
            glommio::timer::sleep(FOLLOW_WAIT).await;
            continue;
        }
        let known = if ask_seed {
            None
        } else {
            target.or_else(|| controller_addr(&shard))
        };
        let addr = match known {
            Some(addr) => addr,
            None => {
                // A seed is a node's listener: any shard behind it tells a
                // peer by its magic, and names the controller if it is not.
                if next_seed % seeds.len() == 0 {
                    // Once round the list: what the metadata names now.
                    seeds = contact_points(&shard);
                }
                let seed = seeds[next_seed % seeds.len()];
                next_seed += 1;
                seed
            }
        };
        let me = shard.node_id();
        let request = ControlRequest::Follow(Follow {
            node: node_info(&shard),
            applied_index: shard.metadata().applied_index,
            wait_ms: FOLLOW_WAIT.as_millis() as u32,
            leaders: shard
                .leaders()
                .into_iter()
                .filter(|r| r.leader == Some(me))
                .collect(),
        });
        // A round parks at the controller; a leader change here ends it at
        // once, so the controller (and every client) learns a new leader
        // now rather than at the round's end. At most every REPORT_PAUSE:
        // a node electing thousands of leaders reports them in batches.
        let changed = if last_cut.elapsed() >= REPORT_PAUSE {
            futures::future::Either::Left(shard.leaders_changed())
        } else {
            futures::future::Either::Right(futures::future::pending())
        };
        let answer = {
            let call = std::pin::pin!(caller.call(addr, &request, FOLLOW_WAIT * 4));
            match futures::future::select(call, changed).await {
                futures::future::Either::Left((answer, _)) => Some(answer),
                futures::future::Either::Right(_) => None,
            }
        };
        let Some(answer) = answer else {
            caller.reset();
            last_cut = Instant::now();
            target = Some(addr);
            continue;
        };
        match answer {
            Ok(ControlResponse::Followed(followed)) => {
                target = Some(addr);
                ask_seed = false;
                if let Err(e) = install(&shard, followed).await {
                    if let Some(count) = install_failures.hit() {
                        tracing::warn!(shard = 0, controller = %addr, error = %e, failures = count, "cannot install the controller's metadata");
                    }
                    glommio::timer::sleep(RETRY_PAUSE).await;
                }
            }
            Ok(ControlResponse::NotController(at)) => {
                target = at.as_ref().and_then(resolve).filter(|&named| named != addr);
                ask_seed = target.is_none();
                if target.is_none() {
                    glommio::timer::sleep(RETRY_PAUSE).await;
                }
            }
            Ok(other) => {
                if let Some(count) = failures.hit() {
                    tracing::warn!(shard = 0, peer = %addr, answer = ?other, failures = count, "controller refused the follow round");
                }
                target = None;
                ask_seed = !ask_seed;
                glommio::timer::sleep(RETRY_PAUSE).await;
            }
            Err(e) => {
                if let Some(count) = failures.hit() {
                    tracing::warn!(shard = 0, peer = %addr, error = %e, failures = count, "cannot reach the controller; trying the seeds");
                }
                target = None;
                ask_seed = !ask_seed;
                glommio::timer::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

async fn install(shard: &Rc<Shard>, followed: Followed) -> Result<(), String> {
    let Followed {
        metadata: snapshot,
        leaders,
        live,
    } = followed;
    if shard.merge_leaders(&leaders) {
        shard.broadcast_leaders(leaders).await;
    }
    shard.set_live(live);
    // A quorum's voter applies the metadata log itself.
    if snapshot.is_empty() || shard.controller().is_some() {
        return Ok(());
    }
    let metadata = ClusterMetadata::restore(&snapshot).map_err(|e| e.to_string())?;
    if metadata.applied_index <= shard.metadata().applied_index {
        return Ok(());
    }
    // Kept for the next start (the node then serves its partitions at once,
    // the controller reachable or not), and kept before any shard serves
    // it: a node killed after serving metadata it had not kept would start
    // again on older metadata, which does not list the partitions it gained
    // since (a topic grown, a replica moved here), and the start would
    // release their staged batches as no longer this node's — acknowledged
    // records lost. Metadata that cannot be kept (a full disk) is not
    // installed; the next round tries again.
    crate::controller::keep_metadata(shard, &followed_snapshot_path(shard), &snapshot).await?;
    let not_served = shard.push_metadata(&metadata).await;
    if !not_served.is_empty() {
        tracing::warn!(shard = 0, "{}", NotServed::summary(&not_served));
    }
    Ok(())
}

/// Where a follower keeps the last metadata it installed.
fn followed_snapshot_path(shard: &Shard) -> std::path::PathBuf {
    shard.data().path().join("cluster").join("followed")
}

/// Installs the metadata a follower kept at its last run, if any, so that
/// it serves its partitions before the controller answers (which may be
/// never, while the controller is down). Newer metadata replaces it once
/// the controller answers.
pub async fn restore_followed(shard: &Rc<Shard>) -> Result<(), String> {
    let path = followed_snapshot_path(shard);
    let parent = path.parent().expect("a file in the data directory");
    // Created if missing (the controller's node creates it for its log).
    fjord_storage::recovery::list_dir(parent)
        .await
        .map_err(|e| e.to_string())?;
    let Some(metadata) = crate::controller::read_snapshot(&path)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(());
    };
    tracing::info!(
        shard = 0,
        applied_index = metadata.applied_index,
        topics = metadata.topics.len(),
        "metadata of the last run restored; following the controller for newer"
    );
    let not_served = shard.push_metadata(&metadata).await;
    if !not_served.is_empty() {
        tracing::warn!(shard = 0, "at start, {}", NotServed::summary(&not_served));
    }
    Ok(())
}

/// Tells every shard which nodes are live, every second, for as long as
/// the node runs (shard 0).
pub async fn share_liveness(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(LIVE_EVERY).await;
        let live = match shard.controller().filter(|c| c.is_active()) {
            Some(controller) => {
                let live = controller.live(shard.node_id());
                shard.set_live(live.clone());
                live
            }
            None => shard.live_nodes(),
        };
        for to in (1..shard.count).filter(|&to| to != shard.id) {
            let _ = shard.send_to(to, ShardMsg::Live(live.clone())).await;
        }
    }
}
