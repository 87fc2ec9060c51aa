//! The simulated network: per-message delay (so reordering), loss,
//! duplication, and partitions that cut a direction between two nodes.

use crate::raft::NodeId;
use crate::sim::disk::Time;
use rand::Rng;
use rand::rngs::StdRng;
use std::collections::BTreeSet;

/// How the network misbehaves.
#[derive(Debug, Clone)]
pub struct Network {
    /// Chance that a message is lost.
    pub drop: f64,
    /// Chance that a message arrives twice.
    pub duplicate: f64,
    /// Longest ordinary delay.
    pub delay_max: Time,
    /// Chance of a long delay (a message overtaken by many later ones).
    pub delay_long: f64,
    /// Directions `(from, to)` that deliver nothing.
    cut: BTreeSet<(NodeId, NodeId)>,
}

impl Network {
    /// A network with these rates and no partition.
    pub fn new(drop: f64, duplicate: f64, delay_max: Time, delay_long: f64) -> Network {
        Network {
            drop,
            duplicate,
            delay_max,
            delay_long,
            cut: BTreeSet::new(),
        }
    }

    /// Cuts `from -> to`.
    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        self.cut.insert((from, to));
    }

    /// Whether `from -> to` is cut.
    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.cut.contains(&(from, to))
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Arrival times of a message sent now: none if lost, two if duplicated.
    pub fn arrivals(&self, from: NodeId, to: NodeId, now: Time, rng: &mut StdRng) -> Vec<Time> {
        if self.is_cut(from, to) || rng.gen_bool(self.drop) {
            return Vec::new();
        }
        let copies = if rng.gen_bool(self.duplicate) { 2 } else { 1 };
        (0..copies)
            .map(|_| {
                let delay = if rng.gen_bool(self.delay_long) {
                    rng.gen_range(self.delay_max..self.delay_max * 8)
                } else {
                    rng.gen_range(1..=self.delay_max)
                };
                now + delay
            })
            .collect()
    }
}
