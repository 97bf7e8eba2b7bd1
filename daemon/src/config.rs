//! Node configuration: every bound the daemon enforces, with its default.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use loomcache_wire::Limits;

use crate::state::StateConfig;

/// A node's configuration. Every queue, buffer and loop in the daemon takes
/// its bound from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Client listen address. Default `127.0.0.1:7070`.
    pub listen_addr: SocketAddr,
    /// Frame and field maxima for client connections (see [`Limits::DEFAULT`]).
    pub limits: Limits,
    /// Most client connections at once. Default 10 000.
    pub connections_max: u32,
    /// Most connections from one client IP. Default 1 000.
    pub connections_per_ip_max: u32,
    /// Most requests in flight on one connection. Default 1 024.
    pub in_flight_per_connection_max: u32,
    /// A connection idle this long is closed, in ms. Default 300 000.
    pub idle_timeout_ms: u64,
    /// A frame must arrive whole within this many ms of its first byte.
    /// Default 10 000.
    pub frame_deadline_ms: u64,
    /// Initial receive buffer per connection; it grows, up to one maximal
    /// frame, only while a larger frame is arriving. Default 16 KiB.
    pub recv_buffer_bytes: u32,
    /// Worker threads applying requests. 0 applies them on the event-loop
    /// thread itself (no hand-off; for a node pinned to one core).
    /// Default: the number of cores.
    pub workers: u32,
    /// Requests queued for the workers at which reading is throttled.
    /// Default 1 024.
    pub work_queue_low: u32,
    /// Requests queued for the workers at which nothing more is admitted
    /// and new connections are refused with `SERVER_BUSY`. Default 4 096.
    pub work_queue_high: u32,
    /// This node's id. Default 1.
    pub node_id: u64,
    /// Unwritten frames on a subscriber's connection beyond which topic
    /// messages for it are dropped (and counted in the next one it gets).
    /// Default 1 024.
    pub subscriber_queue_max: u32,
    /// State-machine bounds: data memory (default 1 GiB), queue capacity,
    /// deduplication.
    pub state: StateConfig,
    /// Replication. `None` (the default) runs a single memory-only node
    /// that applies writes directly; `Some` runs the node as a member of a
    /// Raft group whose writes commit on a majority, durably.
    pub cluster: Option<ClusterConfig>,
}

/// One member of the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Node id (never 0).
    pub id: u64,
    /// Where clients reach it (named in redirects).
    pub client_addr: SocketAddr,
    /// Where peers reach it.
    pub peer_addr: SocketAddr,
}

/// Replication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Every member at bootstrap, this node included.
    pub members: Vec<Member>,
    /// Where the group's log, hard state and snapshots live. Default
    /// `./loomcache-data/node-<id>`.
    pub data_dir: Option<PathBuf>,
    /// Length of a consensus tick in ms. Default 10.
    pub tick_ms: u64,
    /// Election timeout in ticks (randomized up to twice this). Default 30.
    pub election_timeout_ticks: u64,
    /// Heartbeat interval in ticks. Default 3.
    pub heartbeat_interval_ticks: u64,
    /// Lease margin in ticks: the lease lasts the election timeout minus
    /// this. Default 6 (20 % of the election timeout).
    pub lease_margin_ticks: u64,
    /// Snapshot after this many applied entries (raised by up to 3/8 by
    /// node id, so members do not all snapshot at once). Default 100 000.
    pub snapshot_every_entries: u64,
    /// …or after this many bytes of applied entries, whichever comes
    /// first. Default 256 MiB.
    pub snapshot_every_bytes: u64,
    /// Flush the log before acknowledging (group commit). Default true;
    /// false keeps replication but gives up durability on power loss.
    pub fsync: bool,
    /// Start with no configuration, to be added to an existing group
    /// (`loomctl cluster add`); `members` then needs this node's entry and
    /// those of the current members with higher ids, which this node
    /// dials (lower ids dial it). Ignored once the node has state.
    /// Default false.
    pub join: bool,
}

impl ClusterConfig {
    /// Defaults for these members.
    pub fn new(members: Vec<Member>) -> ClusterConfig {
        ClusterConfig {
            members,
            data_dir: None,
            tick_ms: 10,
            election_timeout_ticks: 30,
            heartbeat_interval_ticks: 3,
            lease_margin_ticks: 6,
            snapshot_every_entries: 100_000,
            snapshot_every_bytes: 256 << 20,
            fsync: true,
            join: false,
        }
    }

    /// Parses `id=client_addr/peer_addr` items separated by commas.
    pub fn parse_members(text: &str) -> Result<Vec<Member>, String> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| {
                let bad = || format!("member {item:?} is not id=client_addr/peer_addr");
                let (id, addrs) = item.split_once('=').ok_or_else(bad)?;
                let (client, peer) = addrs.split_once('/').ok_or_else(bad)?;
                Ok(Member {
                    id: id.trim().parse().map_err(|_| bad())?,
                    client_addr: client.trim().parse().map_err(|_| bad())?,
                    peer_addr: peer.trim().parse().map_err(|_| bad())?,
                })
            })
            .collect()
    }

    /// This node's entry.
    pub fn member(&self, id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The data directory for node `id`.
    pub fn dir_for(&self, id: u64) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("loomcache-data").join(format!("node-{id}")))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen_addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7070)),
            limits: Limits::DEFAULT,
            connections_max: 10_000,
            connections_per_ip_max: 1_000,
            in_flight_per_connection_max: 1_024,
            idle_timeout_ms: 300_000,
            frame_deadline_ms: 10_000,
            recv_buffer_bytes: 16 << 10,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get() as u32),
            work_queue_low: 1_024,
            work_queue_high: 4_096,
            node_id: 1,
            subscriber_queue_max: 1_024,
            state: StateConfig::default(),
            cluster: None,
        }
    }
}

/// A configuration value out of its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {field} = {value}: {reason}")]
pub struct ConfigError {
    /// The setting.
    pub field: &'static str,
    /// Its value.
    pub value: u64,
    /// What is allowed.
    pub reason: &'static str,
}

impl Config {
    /// Checks every value against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let checks: [(&'static str, u64, bool, &'static str); 18] = [
            (
                "limits.name_max_bytes",
                u64::from(l.name_max_bytes),
                (1..=255).contains(&l.name_max_bytes),
                "1..=255",
            ),
            (
                "limits.key_max_bytes",
                u64::from(l.key_max_bytes),
                (1..=u32::from(u16::MAX)).contains(&l.key_max_bytes),
                "1..=65535",
            ),
            (
                "limits.value_max_bytes",
                u64::from(l.value_max_bytes),
                l.value_max_bytes >= 1 && l.value_max_bytes < l.payload_max_bytes,
                "at least 1 and below limits.payload_max_bytes",
            ),
            (
                "limits.payload_max_bytes",
                u64::from(l.payload_max_bytes),
                l.payload_max_bytes <= 1 << 30,
                "at most 1 GiB",
            ),
            (
                "limits.items_max",
                u64::from(l.items_max),
                l.items_max >= 1,
                "at least 1",
            ),
            (
                "connections_max",
                u64::from(self.connections_max),
                self.connections_max >= 1,
                "at least 1",
            ),
            (
                "connections_per_ip_max",
                u64::from(self.connections_per_ip_max),
                (1..=self.connections_max).contains(&self.connections_per_ip_max),
                "1..=connections_max",
            ),
            (
                "in_flight_per_connection_max",
                u64::from(self.in_flight_per_connection_max),
                self.in_flight_per_connection_max >= 1,
                "at least 1",
            ),
            (
                "idle_timeout_ms",
                self.idle_timeout_ms,
                self.idle_timeout_ms >= 1,
                "at least 1",
            ),
            (
                "frame_deadline_ms",
                self.frame_deadline_ms,
                self.frame_deadline_ms >= 1,
                "at least 1",
            ),
            (
                "recv_buffer_bytes",
                u64::from(self.recv_buffer_bytes),
                (4096..=l.frame_max_bytes() as u64).contains(&u64::from(self.recv_buffer_bytes)),
                "4096 up to one maximal frame",
            ),
            ("workers", u64::from(self.workers), self.workers <= 1024, "0..=1024"),
            (
                "work_queue_low",
                u64::from(self.work_queue_low),
                self.work_queue_low >= 1 && self.work_queue_low < self.work_queue_high,
                "at least 1 and below work_queue_high",
            ),
            ("node_id", self.node_id, self.node_id >= 1, "at least 1"),
            (
                "state.dedup.window",
                u64::from(self.state.dedup.window),
                self.state.dedup.window >= 1,
                "at least 1",
            ),
            (
                "state.dedup.ttl_ms",
                self.state.dedup.ttl_ms,
                self.state.dedup.ttl_ms >= 1_000,
                "at least 1000 (clients retry within a budget that must stay below it)",
            ),
            (
                "subscriber_queue_max",
                u64::from(self.subscriber_queue_max),
                self.subscriber_queue_max >= 1,
                "at least 1",
            ),
            (
                "state.reclaim_per_apply",
                u64::from(self.state.reclaim_per_apply),
                self.state.reclaim_per_apply >= 1,
                "at least 1",
            ),
        ];
        if let Some((field, value, _, reason)) = checks.into_iter().find(|(_, _, ok, _)| !ok) {
            return Err(ConfigError { field, value, reason });
        }
        match &self.cluster {
            Some(cluster) => {
                cluster.validate(self.node_id)?;
                // Redirects name this member's client address: it must be
                // where the node listens (any interface, or port 0 for
                // tests, aside).
                let named = cluster.member(self.node_id).map(|m| m.client_addr);
                let listen = self.listen_addr;
                let matches = named.is_none_or(|named| {
                    listen.port() == 0
                        || (listen.port() == named.port()
                            && (listen.ip().is_unspecified() || listen.ip() == named.ip()))
                });
                if !matches {
                    return Err(ConfigError {
                        field: "server.listen",
                        value: u64::from(listen.port()),
                        reason:
                            "must be this member's client address in cluster.members (or that port on any interface)",
                    });
                }
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl ClusterConfig {
    fn validate(&self, node_id: u64) -> Result<(), ConfigError> {
        let err = |field, value, reason| Err(ConfigError { field, value, reason });
        let ids: std::collections::BTreeSet<u64> = self.members.iter().map(|m| m.id).collect();
        if self.members.is_empty() {
            return err("cluster.members", 0, "at least one member");
        }
        if ids.len() != self.members.len() || ids.contains(&0) {
            return err(
                "cluster.members",
                self.members.len() as u64,
                "ids must be unique and nonzero",
            );
        }
        if self.member(node_id).is_none() {
            return err("server.node_id", node_id, "must be one of cluster.members");
        }
        if self.tick_ms == 0 {
            return err("cluster.tick_ms", 0, "at least 1");
        }
        if self.heartbeat_interval_ticks == 0 || self.election_timeout_ticks <= self.heartbeat_interval_ticks {
            return err(
                "cluster.election_timeout_ticks",
                self.election_timeout_ticks,
                "above cluster.heartbeat_interval_ticks, which is at least 1",
            );
        }
        if self.lease_margin_ticks == 0 || self.lease_margin_ticks >= self.election_timeout_ticks {
            return err(
                "cluster.lease_margin_ticks",
                self.lease_margin_ticks,
                "1..cluster.election_timeout_ticks",
            );
        }
        if self.snapshot_every_entries == 0 {
            return err("cluster.snapshot_every_entries", 0, "at least 1");
        }
        if self.snapshot_every_bytes == 0 {
            return err("cluster.snapshot_every_bytes", 0, "at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_members_parse_and_are_checked() {
        let members =
            ClusterConfig::parse_members("1=127.0.0.1:7001/127.0.0.1:7101, 2=127.0.0.1:7002/127.0.0.1:7102").unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[1].peer_addr.port(), 7102);
        assert!(ClusterConfig::parse_members("1=127.0.0.1:7001").is_err());
        let mut c = Config {
            cluster: Some(ClusterConfig::new(members)),
            listen_addr: "127.0.0.1:7001".parse().unwrap(),
            ..Config::default()
        };
        c.validate().unwrap();
        // Redirects name the member's client address: the node listens there.
        c.listen_addr = "127.0.0.1:7070".parse().unwrap();
        assert_eq!(c.validate().unwrap_err().field, "server.listen");
        c.listen_addr = "0.0.0.0:7001".parse().unwrap();
        c.validate().unwrap();
        c.listen_addr = "127.0.0.1:7001".parse().unwrap();
        c.node_id = 3;
        assert_eq!(c.validate().unwrap_err().field, "server.node_id");
        c.node_id = 1;
        c.cluster.as_mut().unwrap().lease_margin_ticks = 30;
        assert_eq!(c.validate().unwrap_err().field, "cluster.lease_margin_ticks");
    }

    #[test]
    fn defaults_are_valid_and_local() {
        let c = Config::default();
        c.validate().unwrap();
        assert!(c.listen_addr.ip().is_loopback());
    }

    #[test]
    fn each_bound_is_checked() {
        type Edit = fn(&mut Config);
        let cases: Vec<(&str, Edit)> = vec![
            ("limits.name_max_bytes", |c| c.limits.name_max_bytes = 256),
            ("limits.key_max_bytes", |c| c.limits.key_max_bytes = 0),
            ("limits.value_max_bytes", |c| {
                c.limits.value_max_bytes = c.limits.payload_max_bytes
            }),
            ("limits.payload_max_bytes", |c| c.limits.payload_max_bytes = u32::MAX),
            ("limits.items_max", |c| c.limits.items_max = 0),
            ("connections_max", |c| c.connections_max = 0),
            ("connections_per_ip_max", |c| {
                c.connections_per_ip_max = c.connections_max + 1
            }),
            ("in_flight_per_connection_max", |c| c.in_flight_per_connection_max = 0),
            ("idle_timeout_ms", |c| c.idle_timeout_ms = 0),
            ("frame_deadline_ms", |c| c.frame_deadline_ms = 0),
            ("recv_buffer_bytes", |c| c.recv_buffer_bytes = 100),
            ("workers", |c| c.workers = 1025),
            ("work_queue_low", |c| c.work_queue_low = c.work_queue_high),
            ("node_id", |c| c.node_id = 0),
            ("subscriber_queue_max", |c| c.subscriber_queue_max = 0),
            ("state.dedup.window", |c| c.state.dedup.window = 0),
            ("state.dedup.ttl_ms", |c| c.state.dedup.ttl_ms = 10),
            ("state.reclaim_per_apply", |c| c.state.reclaim_per_apply = 0),
        ];
        for (field, edit) in cases {
            let mut c = Config::default();
            edit(&mut c);
            assert_eq!(c.validate().map_err(|e| e.field), Err(field));
        }
    }
}
