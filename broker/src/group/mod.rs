//! Consumer groups: committed offsets kept in `__consumer_offsets`, and
//! membership with server-side, incremental assignment. A group's
//! coordinator is the leader of partition `hash(group) % N` of that topic
//! (Kafka's `abs(groupId.hashCode()) % offsets.topic.num.partitions`, so a
//! group lands on the partition Kafka would choose).

pub mod assign;
pub mod classic;
pub mod coordinator;
pub mod members;
pub mod records;

pub use coordinator::{Call, Coordinator};

/// The internal topic of committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Whether clients are refused appends and record deletion on `topic`
/// (Kafka's internal topics): its records are written by the coordinator
/// alone, which would otherwise take a client's records as commits at its
/// next load, or lose commits below a moved log start.
pub fn is_internal(topic: &str) -> bool {
    topic == OFFSETS_TOPIC
}

/// A new member's id, `<client id>-<random UUID>` as Kafka makes it.
/// Random, not counted: a group's state is rebuilt empty when it is
/// dropped or its coordinator moves, and a counter would then hand a new
/// member the id of a member fenced before, whose heartbeats and commits
/// would pass as the new one's.
pub fn new_member_id(client_id: &str) -> String {
    let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    format!("{client_id}-{uuid}")
}

/// The `__consumer_offsets` partition coordinating `group`: Java's
/// `String.hashCode` (over UTF-16 units), made positive by Kafka's
/// `Utils.abs` (`i32::MIN` becomes 0), modulo the partition count.
pub fn partition_for(group: &str, partitions: u32) -> i32 {
    assert!(partitions > 0, "the offsets topic has partitions");
    let hash = group.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    (hash.checked_abs().unwrap_or(0) as u32 % partitions) as i32
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_land_where_kafka_puts_them() {
        // Java: "my-group".hashCode() == -1_906_497_762; abs, then % 50.
        assert_eq!(super::partition_for("my-group", 50), 12);
        // "polygenelubricants".hashCode() == i32::MIN, which Kafka's abs
        // maps to 0.
        assert_eq!(super::partition_for("polygenelubricants", 50), 0);
    }

    #[test]
    fn member_ids_name_the_client_and_never_repeat() {
        let (a, b) = (super::new_member_id("app"), super::new_member_id("app"));
        assert!(a.starts_with("app-") && a.len() == "app-".len() + 36, "{a}");
        assert_ne!(a, b);
    }
}
