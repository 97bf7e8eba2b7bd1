//! The `loomctl` binary as a process, against an in-process node.

use std::process::Command;

use loomcache_daemon::server::Server;
use loomcache_daemon::Config;

/// A single in-process node on a free port, with one worker.
fn node() -> Server {
    Server::start(Config {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        ..Config::default()
    })
    .unwrap()
}

fn loomctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loomctl"))
        .args(args)
        .output()
        .expect("run loomctl")
}

#[test]
fn a_reader_that_goes_away_ends_loomctl_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loomctl"))
        .arg("opcodes")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run loomctl");
    // The reading end closes before loomctl writes: its write fails.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(err.is_empty(), "{err}");
}

#[test]
fn partition_matches_the_library() {
    let out = loomctl(&["partition", "user:1"]);
    assert!(out.status.success());
    let want = loomcache_wire::partition_of(b"user:1");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("{want} (of 271)")
    );
}

#[test]
fn opcode_table_lists_every_opcode() {
    let out = loomctl(&["opcodes"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), loomcache_wire::Opcode::ALL.len());
    assert!(text.contains("0x0101  MAP_PUT"));
}

#[test]
fn commands_against_a_node_with_exit_codes() {
    let server = node();
    let addr = server.local_addr().to_string();
    let run = |args: &[&str]| {
        let mut all = vec!["--addr", &addr];
        all.extend_from_slice(args);
        let out = loomctl(&all);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    assert_eq!(run(&["map", "put", "users", "u1", "ann"]), (Some(0), "(none)".into()));
    assert_eq!(run(&["map", "put", "users", "u1", "bob"]), (Some(0), "ann".into()));
    assert_eq!(
        run(&["--json", "map", "get", "users", "u1"]),
        (Some(0), "\"bob\"".into())
    );
    assert_eq!(
        run(&["--json", "map", "get", "users", "nobody"]),
        (Some(0), "null".into())
    );
    assert_eq!(run(&["queue", "offer", "q", "job"]), (Some(0), "true".into()));
    assert_eq!(run(&["queue", "poll", "q"]), (Some(0), "job".into()));
    assert_eq!(run(&["atomic", "add", "n", "5"]), (Some(0), "5".into()));
    assert_eq!(run(&["atomic", "add", "n", "-7"]), (Some(0), "-2".into()));
    assert_eq!(run(&["atomic", "cas", "n", "-2", "-3"]), (Some(0), "true".into()));
    // A TTL of 0 means no expiry, as on the wire.
    assert_eq!(run(&["map", "put", "ttl", "k", "v", "--ttl-ms", "0"]).0, Some(0));
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(run(&["map", "get", "ttl", "k"]), (Some(0), "v".into()));
    assert_eq!(run(&["map", "put", "ttl", "tab", "x\ty"]).0, Some(0));
    assert_eq!(
        run(&["--json", "map", "scan", "ttl"]).1,
        r#"[{"key":"k","value":"v"},{"key":"tab","value":"x\ty"}]"#
    );
    assert_eq!(
        run(&["queue", "poll", "q", "--wait-ms", "50"]),
        (Some(0), "(none)".into())
    );
    // JSON strings are escaped as JSON, control characters included.
    assert_eq!(run(&["map", "put", "esc", "k", "a\u{1b}b\u{7f}"]).0, Some(0));
    let (code, json) = run(&["--json", "map", "scan", "esc"]);
    assert_eq!(code, Some(0));
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(parsed[0]["value"], "a\u{1b}b\u{7f}");
    // `-` reads the value from standard input: larger than one command-line
    // argument may be.
    let big = "x".repeat(300 << 10);
    let mut put = Command::new(env!("CARGO_BIN_EXE_loomctl"))
        .args(["--addr", &addr, "map", "put", "big", "k", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut put.stdin.take().unwrap(), big.as_bytes()).unwrap();
    assert!(put.wait_with_output().unwrap().status.success());
    assert_eq!(run(&["map", "get", "big", "k"]), (Some(0), big));
    assert_eq!(run(&["set", "add", "s", "red"]), (Some(0), "true".into()));
    assert_eq!(run(&["--json", "set", "members", "s"]), (Some(0), "[\"red\"]".into()));
    // Destroy frees the name for another type.
    assert_eq!(run(&["map", "destroy", "s"]).0, Some(1), "a set is not a map");
    assert_eq!(run(&["set", "destroy", "s"]), (Some(0), "true".into()));
    assert_eq!(run(&["set", "destroy", "s"]), (Some(0), "false".into()));
    assert_eq!(run(&["queue", "offer", "s", "now a queue"]), (Some(0), "true".into()));
    assert_eq!(run(&["topic", "publish", "t", "hi"]), (Some(0), "1".into()));
    assert!(run(&["ping"]).1.starts_with("pong"));
    // A server error: exit 1; unsupported: exit 3; usage: exit 2.
    assert_eq!(run(&["queue", "offer", "users", "x"]).0, Some(1));
    let (code, info) = run(&["info"]);
    assert_eq!(code, Some(0));
    assert!(
        info.contains("connections: ") && info.contains("writes_applied: "),
        "{info}"
    );
    assert_eq!(run(&["cluster", "status"]).0, Some(3), "unsupported");
    assert_eq!(run(&["map", "frobnicate"]).0, Some(2));
    server.shutdown();
    // No node: exit 1, quickly.
    assert_eq!(run(&["--timeout-ms", "300", "ping"]).0, Some(1));
}

#[test]
fn a_peer_that_never_answers_the_handshake_fails_a_write_as_not_sent() {
    // Connections are accepted (by the backlog) but nothing ever answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let out = loomctl(&["--addr", &addr, "--timeout-ms", "300", "map", "put", "m", "k", "v"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&addr) && err.contains("handshake"), "{err}");
}

/// Relays the handshake between a client and `server`, then swallows what
/// the client sends: its requests reach nothing and are never answered.
fn swallowing_proxy(server: std::net::SocketAddr) -> std::net::SocketAddr {
    proxy_swallowing_first(server, usize::MAX)
}

/// A proxy to `server` whose first `swallowing` connections relay the
/// handshake and then swallow what the client sends; later connections
/// relay everything.
fn proxy_swallowing_first(server: std::net::SocketAddr, swallowing: usize) -> std::net::SocketAddr {
    proxy(server, swallowing, usize::MAX)
}

/// [`proxy_swallowing_first`] that stops listening after `accepting`
/// connections: later ones are refused.
fn proxy(server: std::net::SocketAddr, swallowing: usize, accepting: usize) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate().take(accepting) {
            let Ok(mut client) = client else { return };
            let swallows = n < swallowing;
            let Ok(mut upstream) = std::net::TcpStream::connect(server) else {
                return;
            };
            let answered = Arc::new(AtomicBool::new(false));
            let (mut client_w, mut upstream_r) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            let flag = Arc::clone(&answered);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = upstream_r.read(&mut buf) {
                    flag.store(true, Ordering::SeqCst);
                    if client_w.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = client.read(&mut buf) {
                    // The handshake goes through; nothing after it does.
                    let relay = !swallows || !answered.load(Ordering::SeqCst);
                    if relay && upstream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_write_sent_and_never_answered_exits_4_and_a_read_exits_1() {
    let server = node();
    let proxy = swallowing_proxy(server.local_addr()).to_string();
    // The timeout also covers connecting and the handshake through the
    // proxy, which must not run out on a loaded machine.
    let write = loomctl(&["--addr", &proxy, "--timeout-ms", "2000", "map", "put", "m", "k", "v"]);
    let err = String::from_utf8_lossy(&write.stderr);
    assert_eq!(write.status.code(), Some(4), "{err}");
    assert!(err.contains("outcome is unknown"), "{err}");
    let read = loomctl(&["--addr", &proxy, "--timeout-ms", "2000", "map", "get", "m", "k"]);
    assert_eq!(read.status.code(), Some(1), "{}", String::from_utf8_lossy(&read.stderr));
    server.shutdown();
}

/// A client of `addr` whose attempts time out after 1 s and that retries
/// for 3 s: room for one swallowed attempt and its retries.
fn retrying_client(addr: std::net::SocketAddr) -> loomcache_client::Client {
    loomcache_client::Client::connect(loomcache_client::ClientConfig {
        addrs: vec![addr],
        request_timeout: std::time::Duration::from_secs(1),
        retry_budget: std::time::Duration::from_secs(3),
        ..loomcache_client::ClientConfig::default()
    })
    .unwrap()
}

/// A member of a two-member group whose other member never starts: it
/// knows no leader and answers every write `NO_LEADER`.
fn member_without_quorum(dir: &std::path::Path) -> Server {
    use loomcache_daemon::config::{ClusterConfig, Member};
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let me = Member {
        id: 1,
        client_addr: free(),
        peer_addr: free(),
    };
    let ghost = Member {
        id: 2,
        client_addr: free(),
        peer_addr: free(),
    };
    let mut cluster = ClusterConfig::new(vec![me, ghost]);
    cluster.data_dir = Some(dir.to_path_buf());
    Server::start(Config {
        listen_addr: me.client_addr,
        cluster: Some(cluster),
        ..Config::default()
    })
    .unwrap()
}

#[test]
fn a_write_that_fails_for_good_after_an_unanswered_attempt_has_an_unknown_outcome() {
    use loomcache_client::ClientError;
    use loomcache_wire::ErrorCode;
    let dir = tempfile::tempdir().unwrap();
    let server = member_without_quorum(dir.path());
    // Straight to the member: NO_LEADER, so the write was not applied.
    let direct = retrying_client(server.local_addr());
    match direct.map("m").put(b"k", b"v") {
        Err(
            e @ ClientError::Server {
                code: ErrorCode::NoLeader,
                ..
            },
        ) => assert!(!e.may_have_applied()),
        other => panic!("a member without quorum: {other:?}"),
    }
    // The first attempt is swallowed (it may have reached a leader), the
    // retries are answered NO_LEADER: the outcome is unknown.
    let proxy = proxy_swallowing_first(server.local_addr(), 1);
    let client = retrying_client(proxy);
    match client.map("m").put(b"k", b"v") {
        Err(e @ ClientError::OutcomeUnknown { .. }) => {
            assert!(e.may_have_applied());
            let ClientError::OutcomeUnknown { last } = e else {
                unreachable!()
            };
            assert!(
                matches!(
                    *last,
                    ClientError::Server {
                        code: ErrorCode::NoLeader,
                        ..
                    }
                ),
                "{last:?}"
            );
        }
        other => panic!("an unanswered attempt, then NO_LEADER: {other:?}"),
    }
    server.shutdown();
}

#[test]
fn a_write_whose_retries_reach_no_node_after_an_unanswered_attempt_has_an_unknown_outcome() {
    use loomcache_client::ClientError;
    let server = node();
    // One connection, whose requests are swallowed; connecting again is
    // refused.
    let client = retrying_client(proxy(server.local_addr(), 1, 1));
    match client.map("m").put(b"k", b"v") {
        Err(ClientError::OutcomeUnknown { last }) => {
            assert!(matches!(*last, ClientError::Connect { .. }), "{last:?}")
        }
        other => panic!("an unanswered attempt, then no node: {other:?}"),
    }
    server.shutdown();
}

#[test]
fn a_write_refused_after_an_unanswered_attempt_is_refused_not_unknown() {
    use loomcache_client::{Client, ClientConfig, ClientError};
    use loomcache_wire::ErrorCode;
    let server = node();
    let direct = Client::connect(ClientConfig {
        addrs: vec![server.local_addr()],
        ..ClientConfig::default()
    })
    .unwrap();
    assert!(direct.queue("q").offer(b"x").unwrap());
    // The first attempt is swallowed; the retry, with the same sequence,
    // reaches the node, whose state machine refuses it: that answer
    // settles the write, whatever the first attempt did.
    let proxy = proxy_swallowing_first(server.local_addr(), 1);
    let client = retrying_client(proxy);
    match client.map("q").put(b"k", b"v") {
        Err(
            e @ ClientError::Server {
                code: ErrorCode::WrongType,
                ..
            },
        ) => assert!(!e.may_have_applied()),
        other => panic!("a map write to a queue's name, retried: {other:?}"),
    }
    server.shutdown();
}

/// Member `i` of `members` in process, its directory under `dir`; with
/// `join`, started empty to be added to the group.
fn cluster_member(members: &[loomcache_daemon::config::Member], i: usize, dir: &std::path::Path, join: bool) -> Server {
    use loomcache_daemon::config::ClusterConfig;
    let me = members[i];
    let mut cluster = ClusterConfig::new(members.to_vec());
    cluster.data_dir = Some(dir.join(format!("node-{}", me.id)));
    cluster.join = join;
    Server::start(Config {
        node_id: me.id,
        listen_addr: me.client_addr,
        workers: 1,
        cluster: Some(cluster),
        ..Config::default()
    })
    .unwrap()
}

/// Runs loomctl until it exits 0 or `within` passes; the last output.
fn loomctl_until_ok(args: &[&str], within: std::time::Duration) -> std::process::Output {
    let deadline = std::time::Instant::now() + within;
    loop {
        let out = loomctl(args);
        if out.status.success() || std::time::Instant::now() >= deadline {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `cluster status` against three members lists them as recorded voters;
/// one whose directory is lost, started empty with `--join`, is brought
/// back by `cluster rebuild` and holds what was written before.
#[test]
fn cluster_status_and_rebuild_against_three_members() {
    use loomcache_daemon::config::Member;
    use std::time::Duration;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let members: Vec<Member> = (1..=3)
        .map(|id| Member {
            id,
            client_addr: free(),
            peer_addr: free(),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut servers: Vec<Option<Server>> = (0..3)
        .map(|i| Some(cluster_member(&members, i, dir.path(), false)))
        .collect();
    let first = members[0].client_addr.to_string();
    let put = loomctl_until_ok(
        &["--addr", &first, "map", "put", "m", "k", "v"],
        Duration::from_secs(20),
    );
    assert!(put.status.success(), "{put:?}");

    // Until `cluster status --json` shows the three as recorded voters.
    let wait_for_recorded_voters = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let status = loomctl(&["--addr", &first, "--json", "cluster", "status"]);
            let text = String::from_utf8_lossy(&status.stdout);
            let voters = members.iter().all(|m| {
                text.contains(&format!(
                    "\"id\":{},\"addrs\":\"{}/{}\",\"membership\":\"voter\"",
                    m.id, m.client_addr, m.peer_addr
                ))
            });
            if status.status.success() && voters && text.matches("\"recorded\":true").count() == 3 {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{status:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for_recorded_voters();
    let text = loomctl(&["--addr", &first, "cluster", "status"]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines().nth(1).is_some_and(|l| l.trim_end().ends_with("recorded")),
        "{text}"
    );

    // Member 3 loses its directory and comes back empty to join.
    servers[2].take().unwrap().shutdown();
    std::fs::remove_dir_all(dir.path().join("node-3")).unwrap();
    servers[2] = Some(cluster_member(&members, 2, dir.path(), true));
    let (client, peer) = (members[2].client_addr.to_string(), members[2].peer_addr.to_string());
    let rebuild = loomctl(&[
        "--addr",
        &first,
        "cluster",
        "rebuild",
        "3",
        &client,
        &peer,
        "--wait-ms",
        "60000",
    ]);
    assert!(rebuild.status.success(), "{rebuild:?}");
    assert!(
        String::from_utf8_lossy(&rebuild.stdout).contains("node 3 rebuilt from its peers"),
        "{rebuild:?}"
    );
    let get = loomctl_until_ok(
        &["--addr", &client, "--stale", "map", "get", "m", "k"],
        Duration::from_secs(20),
    );
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "v", "{get:?}");
    wait_for_recorded_voters();

    // Leadership goes to a member that does not lead, and `cluster status`
    // names it.
    let leader_of = |status: &std::process::Output| {
        let text = String::from_utf8_lossy(&status.stdout);
        let rest = text.split("\"leader\":").nth(1).unwrap_or_default();
        rest.split(',').next().unwrap_or_default().parse::<u64>().ok()
    };
    let status = loomctl_until_ok(
        &["--addr", &first, "--json", "cluster", "status"],
        Duration::from_secs(20),
    );
    let leader = leader_of(&status).expect("a leader in the status");
    let next = members.iter().map(|m| m.id).find(|&id| id != leader).unwrap();
    let next_s = next.to_string();
    let moved = loomctl(&["--addr", &first, "cluster", "transfer-leader", &next_s]);
    assert!(moved.status.success(), "{moved:?}");
    assert!(
        String::from_utf8_lossy(&moved.stdout).contains(&format!("node {next} leads")),
        "{moved:?}"
    );
    let status = loomctl(&["--addr", &first, "--json", "cluster", "status"]);
    assert_eq!(leader_of(&status), Some(next), "{status:?}");
    // A node that is not a voter cannot take over: a clear error, exit 1.
    let refused = loomctl(&["--addr", &first, "cluster", "transfer-leader", "9"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not a voter"),
        "{refused:?}"
    );

    // Member 3 removed, restarted empty to join and added back: it votes
    // again.
    let removed = loomctl(&["--addr", &first, "cluster", "remove", "3"]);
    assert!(removed.status.success(), "{removed:?}");
    servers[2].take().unwrap().shutdown();
    std::fs::remove_dir_all(dir.path().join("node-3")).unwrap();
    servers[2] = Some(cluster_member(&members, 2, dir.path(), true));
    let added = loomctl(&["--addr", &first, "cluster", "add", "3", &client, &peer]);
    assert!(added.status.success(), "{added:?}");
    wait_for_recorded_voters();
    for s in servers.into_iter().flatten() {
        s.shutdown();
    }
}
