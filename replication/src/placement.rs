//! Where a new partition's replicas go: (node, shard) pairs, spread so that
//! replicas and preferred leaders balance over nodes first and over each
//! node's cores second.
//!
//! A replica is a (node, shard) pair because replication never crosses a
//! core: the leader's shard talks straight to each follower's shard. The
//! first replica of each assignment is the preferred leader (Kafka's
//! convention), which is what leader balancing aims for.

use std::collections::BTreeMap;

/// A replica's home.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Replica {
    /// The node.
    pub node: u32,
    /// The shard (core) on that node.
    pub shard: u16,
}

/// A node that can take replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSlots {
    /// The node.
    pub node: u32,
    /// Its partition-hosting shards, `0..data_shards` offset by `first_shard`.
    pub first_shard: u16,
    /// How many shards host partitions.
    pub data_shards: u16,
}

/// Why replicas cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Fewer live nodes than the replication factor (Kafka:
    /// INVALID_REPLICATION_FACTOR).
    #[error("replication factor {factor} is larger than the {nodes} available nodes")]
    NotEnoughNodes {
        /// Asked.
        factor: usize,
        /// Available.
        nodes: usize,
    },
    /// A replication factor of zero.
    #[error("replication factor must be at least 1")]
    ZeroFactor,
}

/// What is placed already, so new partitions even it out.
#[derive(Debug, Clone, Default)]
pub struct Load {
    replicas: BTreeMap<Replica, u32>,
    leaders: BTreeMap<Replica, u32>,
    node_replicas: BTreeMap<u32, u32>,
    node_leaders: BTreeMap<u32, u32>,
}

impl Load {
    /// Counts an existing assignment (first replica = preferred leader).
    pub fn add(&mut self, replicas: &[Replica]) {
        for (i, r) in replicas.iter().enumerate() {
            *self.replicas.entry(*r).or_default() += 1;
            *self.node_replicas.entry(r.node).or_default() += 1;
            if i == 0 {
                *self.leaders.entry(*r).or_default() += 1;
                *self.node_leaders.entry(r.node).or_default() += 1;
            }
        }
    }

    /// Replicas counted on one shard of a node.
    pub fn replicas_on(&self, node: u32, shard: u16) -> u32 {
        Self::of(&self.replicas, &Replica { node, shard })
    }

    fn of<K: Ord>(map: &BTreeMap<K, u32>, key: &K) -> u32 {
        map.get(key).copied().unwrap_or(0)
    }
}

/// Places `partitions` partitions of `factor` replicas each on `nodes`,
/// counting them into `load` as it goes. Deterministic: the same inputs give
/// the same answer on every controller.
pub fn place(
    nodes: &[NodeSlots],
    factor: usize,
    partitions: u32,
    load: &mut Load,
) -> Result<Vec<Vec<Replica>>, PlacementError> {
    if factor == 0 {
        return Err(PlacementError::ZeroFactor);
    }
    if factor > nodes.len() {
        return Err(PlacementError::NotEnoughNodes {
            factor,
            nodes: nodes.len(),
        });
    }
    let mut assignments = Vec::with_capacity(partitions as usize);
    for _ in 0..partitions {
        let mut chosen: Vec<Replica> = Vec::with_capacity(factor);
        for slot in 0..factor {
            let leader = slot == 0;
            // The node with the fewest leaders (for the first replica) or
            // replicas, not already holding one; ties by id.
            let node = nodes
                .iter()
                .filter(|n| !chosen.iter().any(|r| r.node == n.node))
                .min_by_key(|n| {
                    let weight = if leader {
                        (
                            Load::of(&load.node_leaders, &n.node),
                            Load::of(&load.node_replicas, &n.node),
                        )
                    } else {
                        (
                            Load::of(&load.node_replicas, &n.node),
                            Load::of(&load.node_leaders, &n.node),
                        )
                    };
                    (weight, n.node)
                })
                .copied()
                .expect("factor <= nodes leaves a node for every replica");
            let shard = (node.first_shard..node.first_shard + node.data_shards)
                .min_by_key(|&shard| {
                    let r = Replica {
                        node: node.node,
                        shard,
                    };
                    let weight = if leader {
                        (Load::of(&load.leaders, &r), Load::of(&load.replicas, &r))
                    } else {
                        (Load::of(&load.replicas, &r), Load::of(&load.leaders, &r))
                    };
                    (weight, shard)
                })
                .expect("a node hosts partitions on at least one shard");
            let replica = Replica {
                node: node.node,
                shard,
            };
            chosen.push(replica);
            // Count as we go so the next replica sees this one.
            *load.replicas.entry(replica).or_default() += 1;
            *load.node_replicas.entry(replica.node).or_default() += 1;
            if leader {
                *load.leaders.entry(replica).or_default() += 1;
                *load.node_leaders.entry(replica.node).or_default() += 1;
            }
        }
        assignments.push(chosen);
    }
    Ok(assignments)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(count: u32, shards: u16) -> Vec<NodeSlots> {
        (1..=count)
            .map(|node| NodeSlots {
                node,
                first_shard: 0,
                data_shards: shards,
            })
            .collect()
    }

    #[test]
    fn replicas_land_on_distinct_nodes_and_balance() {
        let mut load = Load::default();
        let placed = place(&nodes(3, 2), 3, 12, &mut load).expect("fits");
        let mut leaders = BTreeMap::<Replica, u32>::new();
        let mut replicas = BTreeMap::<Replica, u32>::new();
        for assignment in &placed {
            let mut seen: Vec<u32> = assignment.iter().map(|r| r.node).collect();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), 3, "one replica per node: {assignment:?}");
            *leaders.entry(assignment[0]).or_default() += 1;
            for r in assignment {
                *replicas.entry(*r).or_default() += 1;
            }
        }
        // 12 leaders over 6 (node, shard) pairs: 2 each; 36 replicas over
        // 6: 6 each, give or take one placement's tie.
        assert!(leaders.values().all(|&n| n == 2), "{leaders:?}");
        assert_eq!(replicas.len(), 6);
        assert!(
            replicas.values().all(|&n| (5..=7).contains(&n)),
            "{replicas:?}"
        );
    }

    #[test]
    fn a_new_topic_evens_out_an_existing_load() {
        let mut load = Load::default();
        load.add(&[Replica { node: 1, shard: 0 }]);
        load.add(&[Replica { node: 1, shard: 1 }]);
        let placed = place(&nodes(2, 2), 1, 2, &mut load).expect("fits");
        assert!(
            placed.iter().all(|a| a[0].node == 2),
            "node 2 was empty: {placed:?}"
        );
    }

    #[test]
    fn too_few_nodes_is_refused() {
        let mut load = Load::default();
        assert_eq!(
            place(&nodes(2, 1), 3, 1, &mut load),
            Err(PlacementError::NotEnoughNodes {
                factor: 3,
                nodes: 2
            })
        );
        assert_eq!(
            place(&nodes(2, 1), 0, 1, &mut load),
            Err(PlacementError::ZeroFactor)
        );
    }
}
