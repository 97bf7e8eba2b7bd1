//! Node configuration: every bound the daemon enforces, with its default.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

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
        match checks.into_iter().find(|(_, _, ok, _)| !ok) {
            Some((field, value, _, reason)) => Err(ConfigError { field, value, reason }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
