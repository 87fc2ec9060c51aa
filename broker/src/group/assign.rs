//! The target assignment of a group: every partition of the topics its
//! members subscribe to goes to exactly one subscribed member, uniformly
//! (members' counts differ by at most one where subscriptions allow), and
//! stickily (a member keeps what it had unless balance needs it elsewhere),
//! as KIP-848's `uniform` assignor promises.

use std::collections::{BTreeMap, BTreeSet};

/// A topic partition.
pub type TopicPartition = (String, i32);

/// What the assignor knows of one member.
#[derive(Debug, Clone)]
pub struct MemberSpec<'a> {
    /// Member id.
    pub id: &'a str,
    /// Topics it subscribes to (regexes already resolved).
    pub topics: &'a BTreeSet<String>,
    /// Its previous target.
    pub previous: &'a BTreeSet<TopicPartition>,
}

/// Each member's target, by member id (every member present, maybe empty).
pub fn assign(
    members: &[MemberSpec<'_>],
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let mut target: BTreeMap<String, BTreeSet<TopicPartition>> = members
        .iter()
        .map(|m| (m.id.to_owned(), BTreeSet::new()))
        .collect();
    let eligible = |m: &MemberSpec<'_>, tp: &TopicPartition| {
        m.topics.contains(&tp.0) && partitions.get(&tp.0).is_some_and(|&n| tp.1 < n)
    };
    // Stickiness: what each member had, where it still may have it (the
    // first claimant wins should two have claimed one partition).
    let mut taken: BTreeSet<TopicPartition> = BTreeSet::new();
    for m in members {
        for tp in m.previous {
            if eligible(m, tp) && taken.insert(tp.clone()) {
                target
                    .get_mut(m.id)
                    .expect("every member has a target")
                    .insert(tp.clone());
            }
        }
    }
    let wanted: BTreeSet<&String> = members.iter().flat_map(|m| m.topics.iter()).collect();
    for topic in wanted {
        let Some(&count) = partitions.get(topic) else {
            continue;
        };
        for p in 0..count {
            let tp = (topic.clone(), p);
            if taken.contains(&tp) {
                continue;
            }
            let least = members
                .iter()
                .filter(|m| m.topics.contains(topic))
                .min_by_key(|m| (target[m.id].len(), m.id));
            if let Some(m) = least {
                target
                    .get_mut(m.id)
                    .expect("every member has a target")
                    .insert(tp.clone());
                taken.insert(tp);
            }
        }
    }
    balance(members, &mut target);
    target
}

/// Moves partitions from the most loaded members to eligible members with
/// at least two fewer, until no such move exists. Each move lowers the sum
/// of squared counts, so the loop ends.
fn balance(members: &[MemberSpec<'_>], target: &mut BTreeMap<String, BTreeSet<TopicPartition>>) {
    loop {
        let mut by_load: Vec<&MemberSpec<'_>> = members.iter().collect();
        by_load.sort_by_key(|m| (std::cmp::Reverse(target[m.id].len()), m.id));
        let step = by_load.iter().find_map(|from| {
            let from_len = target[from.id].len();
            target[from.id].iter().rev().find_map(|tp| {
                members
                    .iter()
                    .filter(|to| to.topics.contains(&tp.0) && target[to.id].len() + 2 <= from_len)
                    .min_by_key(|to| (target[to.id].len(), to.id))
                    .map(|to| (from.id, to.id, tp.clone()))
            })
        });
        let Some((from, to, tp)) = step else {
            return;
        };
        target.get_mut(from).expect("member").remove(&tp);
        target.get_mut(to).expect("member").insert(tp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn counts(target: &BTreeMap<String, BTreeSet<TopicPartition>>) -> Vec<usize> {
        target.values().map(BTreeSet::len).collect()
    }

    fn check_exclusive(target: &BTreeMap<String, BTreeSet<TopicPartition>>, total: usize) {
        let all: Vec<&TopicPartition> = target.values().flatten().collect();
        let unique: BTreeSet<_> = all.iter().collect();
        assert_eq!(all.len(), unique.len(), "a partition given twice");
        assert_eq!(all.len(), total, "a partition not given");
    }

    #[test]
    fn uniform_then_sticky_when_a_member_joins_and_leaves() {
        let t = topics(&["a"]);
        let partitions = BTreeMap::from([("a".to_string(), 6)]);
        let none = BTreeSet::new();
        let first = assign(
            &[
                MemberSpec {
                    id: "m1",
                    topics: &t,
                    previous: &none,
                },
                MemberSpec {
                    id: "m2",
                    topics: &t,
                    previous: &none,
                },
            ],
            &partitions,
        );
        assert_eq!(counts(&first), [3, 3]);
        check_exclusive(&first, 6);
        let second = assign(
            &[
                MemberSpec {
                    id: "m1",
                    topics: &t,
                    previous: &first["m1"],
                },
                MemberSpec {
                    id: "m2",
                    topics: &t,
                    previous: &first["m2"],
                },
                MemberSpec {
                    id: "m3",
                    topics: &t,
                    previous: &none,
                },
            ],
            &partitions,
        );
        assert_eq!(counts(&second), [2, 2, 2]);
        check_exclusive(&second, 6);
        // Sticky: the old members only gave partitions away.
        assert!(second["m1"].is_subset(&first["m1"]));
        assert!(second["m2"].is_subset(&first["m2"]));
        let third = assign(
            &[
                MemberSpec {
                    id: "m1",
                    topics: &t,
                    previous: &second["m1"],
                },
                MemberSpec {
                    id: "m3",
                    topics: &t,
                    previous: &second["m3"],
                },
            ],
            &partitions,
        );
        assert_eq!(counts(&third), [3, 3]);
        assert!(second["m1"].is_subset(&third["m1"]));
        assert!(second["m3"].is_subset(&third["m3"]));
    }

    #[test]
    fn different_subscriptions_get_only_their_topics() {
        let ab = topics(&["a", "b"]);
        let b = topics(&["b"]);
        let none = BTreeSet::new();
        let partitions = BTreeMap::from([("a".to_string(), 4), ("b".to_string(), 2)]);
        let target = assign(
            &[
                MemberSpec {
                    id: "m1",
                    topics: &ab,
                    previous: &none,
                },
                MemberSpec {
                    id: "m2",
                    topics: &b,
                    previous: &none,
                },
            ],
            &partitions,
        );
        check_exclusive(&target, 6);
        assert!(target["m2"].iter().all(|(t, _)| t == "b"));
        assert_eq!(counts(&target), [4, 2]);
    }

    #[test]
    fn partitions_that_vanish_or_appear_are_followed() {
        let t = topics(&["a"]);
        let had: BTreeSet<TopicPartition> = [("a".to_string(), 5), ("gone".to_string(), 0)].into();
        let target = assign(
            &[MemberSpec {
                id: "m1",
                topics: &t,
                previous: &had,
            }],
            &BTreeMap::from([("a".to_string(), 3)]),
        );
        assert_eq!(target["m1"], (0..3).map(|p| ("a".to_string(), p)).collect());
    }
}
