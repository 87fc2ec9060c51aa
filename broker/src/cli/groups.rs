//! `fjord group …`: list, describe, delete and reset-offsets, as Kafka's
//! `kafka-consumer-groups.sh` does them.

use super::{CliError, print_table};
use fjord_client::{Admin, Client, ResetTo};
use futures::executor::block_on;

/// `group list`.
pub fn list(client: &Client) -> Result<(), CliError> {
    let groups = block_on(Admin::new(client.clone()).list_groups())?;
    let rows: Vec<Vec<String>> = groups
        .into_iter()
        .map(|g| vec![g.group_id, g.group_type, g.state, g.members.to_string()])
        .collect();
    print_table(&["GROUP", "TYPE", "STATE", "MEMBERS"], &rows);
    Ok(())
}

/// `group describe`: members and what they own, then per partition the
/// committed offset, log end and lag.
pub fn describe(client: &Client, group: &str) -> Result<(), CliError> {
    let described = block_on(Admin::new(client.clone()).describe_group(group))?;
    println!(
        "group {} ({}, epoch {}, {} members)\n",
        described.group_id,
        described.state,
        described.epoch,
        described.members.len()
    );
    let partitions = |set: &std::collections::BTreeSet<(String, i32)>| {
        set.iter()
            .map(|(t, p)| format!("{t}-{p}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    if !described.members.is_empty() {
        let rows: Vec<Vec<String>> = described
            .members
            .iter()
            .map(|m| {
                vec![
                    m.member_id.clone(),
                    m.instance_id.clone().unwrap_or_else(|| "-".into()),
                    m.client_id.clone(),
                    m.member_epoch.to_string(),
                    partitions(&m.assignment),
                    if m.target == m.assignment {
                        "-".into()
                    } else {
                        partitions(&m.target)
                    },
                ]
            })
            .collect();
        print_table(
            &[
                "MEMBER",
                "INSTANCE",
                "CLIENT",
                "EPOCH",
                "ASSIGNED",
                "MOVING TO",
            ],
            &rows,
        );
        println!();
    }
    let known = |n: i64| {
        if n < 0 {
            "-".to_string()
        } else {
            n.to_string()
        }
    };
    let rows: Vec<Vec<String>> = described
        .offsets
        .iter()
        .map(|o| {
            vec![
                o.topic.clone(),
                o.partition.to_string(),
                o.committed.to_string(),
                known(o.log_end),
                known(o.lag),
                o.owner.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print_table(
        &[
            "TOPIC",
            "PARTITION",
            "COMMITTED",
            "LOG-END",
            "LAG",
            "MEMBER",
        ],
        &rows,
    );
    Ok(())
}

/// `group delete`.
pub fn delete(client: &Client, group: &str) -> Result<(), CliError> {
    block_on(Admin::new(client.clone()).delete_group(group))?;
    println!("deleted group {group}");
    Ok(())
}

/// `group reset-offsets`: prints the plan; commits it with `execute`.
pub fn reset_offsets(
    client: &Client,
    group: &str,
    topic: &str,
    to: ResetTo,
    execute: bool,
) -> Result<(), CliError> {
    let plan = block_on(Admin::new(client.clone()).reset_offsets(group, topic, to, execute))?;
    let rows: Vec<Vec<String>> = plan
        .iter()
        .map(|r| {
            vec![
                topic.to_owned(),
                r.partition.to_string(),
                r.before.map_or("-".into(), |b| b.to_string()),
                r.after.to_string(),
            ]
        })
        .collect();
    print_table(&["TOPIC", "PARTITION", "CURRENT", "NEW"], &rows);
    if !execute {
        println!("\ndry run: nothing committed (add --execute)");
    }
    Ok(())
}

/// An ISO 8601 date-time (`2026-12-03T10:00:00Z`, `2026-12-03T10:00:00.250`,
/// UTC when no zone is given) in ms since the epoch.
pub fn parse_datetime(text: &str) -> Result<i64, CliError> {
    let time = humantime::parse_rfc3339_weak(text).map_err(|e| {
        CliError::Invalid(format!(
            "invalid date-time {text:?} ({e}): expected YYYY-MM-DDTHH:MM:SS[.sss][Z], UTC"
        ))
    })?;
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| CliError::Invalid(format!("date-time {text:?} is before 1970")))?;
    Ok(since.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn datetimes_parse_as_utc() {
        assert_eq!(super::parse_datetime("1970-01-01T00:00:01Z").unwrap(), 1000);
        assert_eq!(
            super::parse_datetime("2026-12-03T10:00:00.250").unwrap(),
            1_796_292_000_250
        );
        assert!(super::parse_datetime("yesterday").is_err());
    }
}
