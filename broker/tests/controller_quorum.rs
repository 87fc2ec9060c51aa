//! A controller quorum of three real `fjord serve` voters (and a fourth node
//! that is no voter): the metadata log is Raft group 0 over the voters. The
//! active controller is killed with SIGKILL; topic commands go on through
//! the node whose only seed it was, the new topic is served, and
//! the old controller returns, catches up and takes commands again; then
//! every voter restarts in turn.

mod common;

use common::{Broker, Launch, free_port, segment_bytes};
use fjord_client::{
    Admin, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, Seek,
};
use futures::executor::block_on;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Three voters listening where the others were told.
fn start_quorum() -> Vec<Broker> {
    let addrs: Vec<SocketAddr> = (0..3)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let voters: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}@{a}", i + 1))
        .collect();
    let voters = voters.join(",");
    addrs
        .iter()
        .enumerate()
        .map(|(i, &addr)| {
            let id = (i + 1).to_string();
            let launch = Launch {
                listen: Some(addr),
                ..Launch::default()
            };
            Broker::launch(
                1,
                &["--node-id", &id, "--controller-voters", &voters],
                launch,
            )
        })
        .collect()
}

fn client_of(addrs: Vec<SocketAddr>) -> Client {
    let mut config = ClientConfig::with_bootstrap(addrs);
    config.request_timeout = Duration::from_secs(40);
    Client::new(config).expect("client")
}

/// Retries `what` until it succeeds, for up to `within`; the time it took.
fn until<T>(what: &str, within: Duration, mut f: impl FnMut() -> Result<T, String>) -> Duration {
    let started = Instant::now();
    loop {
        match f() {
            Ok(_) => return started.elapsed(),
            Err(e) => assert!(
                started.elapsed() < within,
                "{what}: not within {within:?}: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The active controller's node id, as `addr` answers Metadata.
fn controller_seen_by(addr: SocketAddr) -> Result<i32, String> {
    let status =
        block_on(Admin::new(client_of(vec![addr])).cluster_status()).map_err(|e| e.to_string())?;
    match status.controller {
        id if id > 0 => Ok(id),
        _ => Err(format!("{addr} knows no controller")),
    }
}

fn topics_seen_by(addr: SocketAddr) -> Vec<String> {
    let mut names: Vec<String> = block_on(Admin::new(client_of(vec![addr])).list_topics())
        .expect("list topics")
        .into_iter()
        .map(|t| t.name)
        .collect();
    names.sort();
    names
}

fn metadata_log(node: &Broker) -> PathBuf {
    node.data_dir().join("cluster").join("metadata")
}

#[test]
fn topic_commands_survive_the_active_controller_killed() {
    let mut nodes = start_quorum();
    let all: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let client = client_of(all.clone());
    let admin = Admin::new(client.clone());
    // The voters elect a leader among themselves; the first command waits
    // for it (forwarded by whichever node the client asked).
    until("create before", Duration::from_secs(30), || {
        block_on(admin.create_replicated_topic("before", 2, Some(3), &[]))
            .map_err(|e| e.to_string())
    });

    let mut controller = 0;
    until("a controller known", Duration::from_secs(10), || {
        controller = controller_seen_by(all[0])?;
        Ok(())
    });
    // Every voter logs the command in its copy of the metadata log: a
    // majority before the create is answered, the last one soon after.
    for node in &nodes {
        until("every voter logs `before`", Duration::from_secs(10), || {
            if common::contains(&segment_bytes(&metadata_log(node)), b"before") {
                Ok(())
            } else {
                Err(format!(
                    "node at {} has no `before` in its metadata log",
                    node.addr
                ))
            }
        });
    }

    // A node that is no voter, given the active controller alone as seed:
    // it must find the next one through the metadata it follows.
    let seed = all[(controller - 1) as usize].to_string();
    nodes.push(Broker::start_with(1, &["--node-id", "4", "--seeds", &seed]));
    let member = nodes[3].addr;
    until("node 4 follows", Duration::from_secs(10), || {
        let names = topics_seen_by(member);
        (names == ["before"])
            .then_some(())
            .ok_or(format!("node 4 lists {names:?}"))
    });

    let dead = (controller - 1) as usize;
    nodes[dead].kill();
    let survivors: Vec<SocketAddr> = all
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != dead)
        .map(|(_, &a)| a)
        .collect();
    let client = client_of(survivors.clone());
    // Two voters of three are a quorum: a new controller takes commands,
    // here sent through the node whose only seed is gone.
    let admin = Admin::new(client_of(vec![member]));
    let took = until("create after", Duration::from_secs(30), || {
        match block_on(admin.create_replicated_topic("after", 2, Some(2), &[])) {
            Err(e) if e.to_string().contains("exists") => Ok(()),
            other => other.map_err(|e| e.to_string()),
        }
    });
    eprintln!("topic created {took:?} after the controller was killed");
    let new_controller = controller_seen_by(survivors[0]).expect("controller");
    assert_ne!(new_controller, controller, "a survivor leads the quorum");

    // The new topic is served: acks=all records go in and come back.
    let producer = Producer::new(&client, ProducerConfig::default()).expect("producer");
    let acks: Vec<_> = (0..50)
        .map(|i| {
            let value = format!("after-{i}");
            producer.send("after", Some(i % 2), None, Some(value.as_bytes()), &[])
        })
        .collect();
    for ack in acks {
        block_on(ack).expect("acks=all produce to the topic made after failover");
    }
    let mut consumer = Consumer::new(&client, ConsumerConfig::default());
    block_on(consumer.assign("after", None, Seek::Earliest)).expect("assign");
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while got < 50 {
        assert!(Instant::now() < deadline, "consumed {got} of 50");
        got += block_on(consumer.poll(Duration::from_millis(500)))
            .expect("poll")
            .len();
    }

    // The old controller returns as a follower voter and catches up.
    nodes[dead].restart();
    let back = nodes[dead].addr;
    until(
        "the returned voter has caught up",
        Duration::from_secs(30),
        || {
            let names = topics_seen_by(back);
            (names == ["after", "before"])
                .then_some(())
                .ok_or(format!("{back} lists {names:?}"))
        },
    );
    until(
        "the returned voter logged `after`",
        Duration::from_secs(10),
        || {
            common::contains(&segment_bytes(&metadata_log(&nodes[dead])), b"after")
                .then_some(())
                .ok_or("not yet".to_string())
        },
    );
    // A command sent to it is forwarded to the active controller.
    block_on(Admin::new(client_of(vec![back])).delete_topic("before")).expect("delete");
    for &addr in &all {
        until(
            "every node forgot `before`",
            Duration::from_secs(10),
            || {
                let names = topics_seen_by(addr);
                (names == ["after"])
                    .then_some(())
                    .ok_or(format!("{addr} lists {names:?}"))
            },
        );
    }

    // A rolling restart of every voter (SIGTERM: an active controller hands
    // over first): each comes back with what it applied, and commands work.
    for node in nodes.iter_mut() {
        node.terminate();
        node.restart();
        let back = node.addr;
        until(
            "the restarted voter serves its metadata",
            Duration::from_secs(10),
            || {
                let names = topics_seen_by(back);
                (names == ["after"])
                    .then_some(())
                    .ok_or(format!("{back} lists {names:?}"))
            },
        );
    }
    let admin = Admin::new(client_of(all.clone()));
    until("create last", Duration::from_secs(30), || {
        match block_on(admin.create_replicated_topic("last", 1, Some(3), &[])) {
            Err(e) if e.to_string().contains("exists") => Ok(()),
            other => other.map_err(|e| e.to_string()),
        }
    });
    for &addr in &all {
        until("every node lists `last`", Duration::from_secs(10), || {
            let names = topics_seen_by(addr);
            (names == ["after", "last"])
                .then_some(())
                .ok_or(format!("{addr} lists {names:?}"))
        });
    }
}

/// A voter serves only metadata it has kept (`cluster/snapshot`): started
/// again after a kill, it serves its snapshot at once without replaying
/// the log, so a round served unkept would be forgotten — and the topics
/// it created removed from its disk. While it cannot keep a round, it
/// serves what it had; once it can, it catches up.
#[test]
fn a_voter_serves_no_metadata_it_could_not_keep() {
    let mut nodes = start_quorum();
    let all: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let admin = Admin::new(client_of(all.clone()));
    until("create before", Duration::from_secs(30), || {
        block_on(admin.create_replicated_topic("before", 1, Some(3), &[]))
            .map_err(|e| e.to_string())
    });
    let mut controller = 0;
    until("a controller known", Duration::from_secs(10), || {
        controller = controller_seen_by(all[0])?;
        Ok(())
    });
    // A voter that is not the active controller, which answers commands,
    // nor node 1, to which the metadata group's leadership goes back (its
    // preferred leader) if it moves.
    let blocked_voter = (1..3)
        .find(|&i| i + 1 != controller as usize)
        .expect("a voter");
    let blocked = nodes[blocked_voter].data_dir().join("cluster/snapshot.tmp");
    // The voter's own snapshot.tmp may be there for a moment, between its
    // write and its rename.
    until("the snapshot blocked", Duration::from_secs(10), || {
        std::fs::create_dir(&blocked).map_err(|e| e.to_string())
    });
    // Through the controller: a node answers a command once it has applied
    // it itself, which the blocked voter does not.
    let through_controller = Admin::new(client_of(vec![all[controller as usize - 1]]));
    until("create later", Duration::from_secs(30), || {
        block_on(through_controller.create_replicated_topic("later", 1, Some(3), &[]))
            .map_err(|e| e.to_string())
    });
    let lists_later = |addr: SocketAddr| topics_seen_by(addr).contains(&"later".to_owned());
    for (i, &addr) in all.iter().enumerate().filter(|&(i, _)| i != blocked_voter) {
        until("the others serve `later`", Duration::from_secs(10), || {
            lists_later(addr)
                .then_some(())
                .ok_or(format!("node {} does not list `later`", i + 1))
        });
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !lists_later(all[blocked_voter]),
        "a voter serves metadata it could not keep"
    );
    std::fs::remove_dir(&blocked).expect("rmdir");
    until("the voter catches up", Duration::from_secs(10), || {
        lists_later(all[blocked_voter])
            .then_some(())
            .ok_or("not yet".to_owned())
    });
    // Kept: killed, it starts serving it again.
    nodes[blocked_voter].kill();
    nodes[blocked_voter].restart();
    assert!(lists_later(all[blocked_voter]), "not kept");
    assert_eq!(
        nodes[blocked_voter].partition_dirs("later").len(),
        1,
        "its partition directory is gone"
    );
}

#[test]
fn a_quorum_needs_every_voter_address() {
    let out = std::process::Command::new(common::FJORD)
        .args([
            "serve",
            "--node-id",
            "1",
            "--controller-voters",
            "1@127.0.0.1:1,2,3@127.0.0.1:3",
        ])
        .output()
        .expect("run fjord");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ID@HOST:PORT"), "{stderr}");
}
