//! Where a node's configuration comes from: built-in defaults, then an
//! optional TOML file, then `LOOMD_*` environment variables, then
//! command-line flags, each overriding the one before. Unknown keys are
//! errors, so a misspelt setting never silently keeps its default.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:7070"
//! workers = 2            # 0 = apply requests on the event-loop thread
//! node_id = 1
//! log_level = "info"     # error, warn, info, debug, trace
//!
//! [connections]
//! max = 10000
//! per_ip_max = 1000
//! in_flight_max = 1024
//! idle_timeout_ms = 300000
//! frame_deadline_ms = 10000
//! recv_buffer_bytes = 16384
//! subscriber_queue_max = 1024
//!
//! [limits]
//! payload_max_bytes = 4194304
//! key_max_bytes = 16384
//! value_max_bytes = 1048576
//! items_max = 1024
//!
//! [backpressure]
//! low = 1024
//! high = 4096
//!
//! [state]
//! data_memory_max_bytes = 1073741824
//! queue_capacity = 0     # 0 = unbounded (up to the memory limit)
//! reclaim_per_apply = 64
//! dedup_clients_max = 10000
//! dedup_ttl_ms = 60000
//! dedup_window = 16
//! dedup_answer_max_bytes = 1024
//!
//! # Replication: absent = a single memory-only node.
//! [cluster]
//! members = "1=127.0.0.1:7001/127.0.0.1:7101,2=127.0.0.1:7002/127.0.0.1:7102,3=127.0.0.1:7003/127.0.0.1:7103"
//! data_dir = "loomcache-data/node-1"   # default loomcache-data/node-<id>
//! tick_ms = 10
//! election_timeout_ticks = 30
//! heartbeat_interval_ticks = 3
//! lease_margin_ticks = 6
//! snapshot_every_entries = 100000
//! snapshot_every_bytes = 268435456
//! fsync = true
//! join = false   # true: start empty, to be added with `loomctl cluster add`
//! ```
//! The environment variable for a key is `LOOMD_<SECTION>_<KEY>` in
//! capitals, e.g. `LOOMD_SERVER_LISTEN`, `LOOMD_STATE_QUEUE_CAPACITY`.

use std::path::Path;

use serde::Deserialize;

use crate::config::Config;

/// The log level, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The default.
    #[default]
    Info,
    /// Verbose.
    Debug,
    /// Everything.
    Trace,
}

impl std::str::FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<LogLevel, String> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Ok(LogLevel::Error),
            "warn" => Ok(LogLevel::Warn),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            "trace" => Ok(LogLevel::Trace),
            other => Err(format!("unknown log level {other:?} (error, warn, info, debug, trace)")),
        }
    }
}

macro_rules! sections {
    ($( $section:ident : $ty:ident { $( $key:ident : $kty:ty => |$c:ident, $v:ident| $apply:expr ),* $(,)? } )*) => {
        $(
            #[derive(Debug, Default, Deserialize)]
            #[serde(deny_unknown_fields)]
            struct $ty {
                $( $key: Option<$kty>, )*
            }

            impl $ty {
                fn apply(self, settings: &mut Settings) -> Result<(), String> {
                    $(
                        if let Some(value) = self.$key {
                            let $c = &mut *settings;
                            let $v = value;
                            $apply;
                        }
                    )*
                    Ok(())
                }

                fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<$ty, String> {
                    let mut out = $ty::default();
                    $(
                        let name = concat!("LOOMD_", stringify!($section), "_", stringify!($key)).to_ascii_uppercase();
                        if let Some(raw) = env(&name) {
                            out.$key = Some(raw.trim().parse::<$kty>().map_err(|e| format!("{name}={raw:?}: {e}"))?);
                        }
                    )*
                    Ok(out)
                }
            }
        )*

        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            $( #[serde(default)] $section: $ty, )*
        }

        impl File {
            fn apply(self, settings: &mut Settings) -> Result<(), String> {
                $( self.$section.apply(settings)?; )*
                Ok(())
            }

            fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<File, String> {
                Ok(File { $( $section: $ty::from_env(env)?, )* })
            }
        }
    };
}

/// A node's full settings: its configuration and its log level.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    /// Everything the node enforces.
    pub config: Config,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// Run without the log: writes apply directly in memory and nothing
    /// survives a restart. Default false: a node with no members
    /// configured runs as a replicated group of one on the durable log.
    pub memory_only: bool,
}

sections! {
    server: ServerSection {
        listen: std::net::SocketAddr => |s, v| s.config.listen_addr = v,
        workers: u32 => |s, v| s.config.workers = v,
        node_id: u64 => |s, v| s.config.node_id = v,
        log_level: LogLevel => |s, v| s.log_level = v,
        memory_only: bool => |s, v| s.memory_only = v,
    }
    connections: ConnectionsSection {
        max: u32 => |s, v| s.config.connections_max = v,
        per_ip_max: u32 => |s, v| s.config.connections_per_ip_max = v,
        in_flight_max: u32 => |s, v| s.config.in_flight_per_connection_max = v,
        idle_timeout_ms: u64 => |s, v| s.config.idle_timeout_ms = v,
        frame_deadline_ms: u64 => |s, v| s.config.frame_deadline_ms = v,
        recv_buffer_bytes: u32 => |s, v| s.config.recv_buffer_bytes = v,
        subscriber_queue_max: u32 => |s, v| s.config.subscriber_queue_max = v,
    }
    limits: LimitsSection {
        payload_max_bytes: u32 => |s, v| s.config.limits.payload_max_bytes = v,
        key_max_bytes: u32 => |s, v| s.config.limits.key_max_bytes = v,
        value_max_bytes: u32 => |s, v| s.config.limits.value_max_bytes = v,
        items_max: u32 => |s, v| s.config.limits.items_max = v,
    }
    backpressure: BackpressureSection {
        low: u32 => |s, v| s.config.work_queue_low = v,
        high: u32 => |s, v| s.config.work_queue_high = v,
    }
    cluster: ClusterSection {
        members: String => |s, v| cluster(s).members = crate::config::ClusterConfig::parse_members(&v)?,
        data_dir: std::path::PathBuf => |s, v| cluster(s).data_dir = Some(v),
        tick_ms: u64 => |s, v| cluster(s).tick_ms = v,
        election_timeout_ticks: u64 => |s, v| cluster(s).election_timeout_ticks = v,
        heartbeat_interval_ticks: u64 => |s, v| cluster(s).heartbeat_interval_ticks = v,
        lease_margin_ticks: u64 => |s, v| cluster(s).lease_margin_ticks = v,
        snapshot_every_entries: u64 => |s, v| cluster(s).snapshot_every_entries = v,
        snapshot_every_bytes: u64 => |s, v| cluster(s).snapshot_every_bytes = v,
        fsync: bool => |s, v| cluster(s).fsync = v,
        join: bool => |s, v| cluster(s).join = v,
    }
    state: StateSection {
        data_memory_max_bytes: u64 => |s, v| s.config.state.data_memory_max_bytes = v,
        queue_capacity: u32 => |s, v| s.config.state.queue_capacity = v,
        reclaim_per_apply: u32 => |s, v| s.config.state.reclaim_per_apply = v,
        dedup_clients_max: u32 => |s, v| s.config.state.dedup.clients_max = v,
        dedup_ttl_ms: u64 => |s, v| s.config.state.dedup.ttl_ms = v,
        dedup_window: u32 => |s, v| s.config.state.dedup.window = v,
        dedup_answer_max_bytes: u32 => |s, v| s.config.state.dedup.answer_max_bytes = v,
    }
}

/// The cluster settings, created with defaults when a first cluster key
/// is set.
fn cluster(s: &mut Settings) -> &mut crate::config::ClusterConfig {
    s.config
        .cluster
        .get_or_insert_with(|| crate::config::ClusterConfig::new(Vec::new()))
}

impl Settings {
    /// Defaults, then `file` (if any), then the environment as read by
    /// `env`. The state machine sees the same limits as the wire.
    pub fn load(file: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let mut settings = Settings::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let parsed: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            parsed.apply(&mut settings)?;
        }
        File::from_env(env)?.apply(&mut settings)?;
        settings.config.state.limits = settings.config.limits;
        Ok(settings)
    }

    /// Settles the mode once every source is applied. Memory-only takes
    /// no cluster settings. Otherwise a node with no members configured is
    /// a group of one: itself, at its client address, with its peer
    /// transport on a free loopback port (members with higher ids that
    /// join later dial nothing below them, so none dials it there).
    pub fn settle_mode(&mut self) -> Result<(), String> {
        if self.memory_only {
            if self.config.cluster.is_some() {
                return Err("memory_only cannot be combined with cluster settings (members, data_dir, join…)".into());
            }
            return Ok(());
        }
        let (id, listen) = (self.config.node_id, self.config.listen_addr);
        let cluster = cluster(self);
        if cluster.members.is_empty() {
            if cluster.join {
                return Err("join needs members naming at least this node's client and peer addresses".into());
            }
            cluster.members.push(crate::config::Member {
                id,
                client_addr: listen,
                peer_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn with_no_members_a_node_is_a_group_of_one_unless_memory_only() {
        let mut s = Settings::default();
        s.settle_mode().unwrap();
        let c = s.config.cluster.as_ref().expect("a group of one");
        assert_eq!(c.members.len(), 1);
        assert_eq!((c.members[0].id, c.members[0].client_addr), (1, s.config.listen_addr));
        assert_eq!(c.members[0].peer_addr.port(), 0);
        s.config.validate().unwrap();

        let mut s = Settings {
            memory_only: true,
            ..Settings::default()
        };
        s.settle_mode().unwrap();
        assert!(s.config.cluster.is_none());
        let env = |k: &str| (k == "LOOMD_CLUSTER_TICK_MS").then(|| "5".to_string());
        let mut s = Settings::load(None, &env).unwrap();
        s.memory_only = true;
        assert!(s.settle_mode().is_err(), "memory-only with cluster settings");
        let env = |k: &str| (k == "LOOMD_CLUSTER_JOIN").then(|| "true".to_string());
        let mut s = Settings::load(None, &env).unwrap();
        assert!(s.settle_mode().is_err(), "join with no members");
    }

    #[test]
    fn defaults_without_file_or_environment() {
        assert_eq!(Settings::load(None, &no_env).unwrap(), Settings::default());
    }

    #[test]
    fn file_then_environment_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loomd.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"127.0.0.1:9000\"\nworkers = 3\nlog_level = \"debug\"\n[state]\nqueue_capacity = 10\n",
        )
        .unwrap();
        let env = |k: &str| (k == "LOOMD_SERVER_WORKERS").then(|| "5".to_string());
        let s = Settings::load(Some(&path), &env).unwrap();
        assert_eq!(s.config.listen_addr.to_string(), "127.0.0.1:9000");
        assert_eq!(s.config.workers, 5, "the environment overrides the file");
        assert_eq!(s.config.state.queue_capacity, 10);
        assert_eq!(s.log_level, LogLevel::Debug);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loomd.toml");
        std::fs::write(&path, "[server]\nworkrs = 3\n").unwrap();
        let err = Settings::load(Some(&path), &no_env).unwrap_err();
        assert!(err.contains("workrs"), "{err}");
        std::fs::write(&path, "[nonsense]\n").unwrap();
        assert!(Settings::load(Some(&path), &no_env).is_err());
        let env = |k: &str| (k == "LOOMD_CONNECTIONS_MAX").then(|| "many".to_string());
        let err = Settings::load(None, &env).unwrap_err();
        assert!(err.contains("LOOMD_CONNECTIONS_MAX"), "{err}");
    }

    #[test]
    fn cluster_settings_come_from_the_file_or_the_environment() {
        let env = |k: &str| match k {
            "LOOMD_CLUSTER_MEMBERS" => Some("1=127.0.0.1:7001/127.0.0.1:7101,2=127.0.0.1:7002/127.0.0.1:7102".into()),
            "LOOMD_CLUSTER_TICK_MS" => Some("5".into()),
            _ => None,
        };
        let s = Settings::load(None, &env).unwrap();
        let cluster = s.config.cluster.unwrap();
        assert_eq!(cluster.members.len(), 2);
        assert_eq!(cluster.tick_ms, 5);
        assert!(cluster.fsync);
        let env = |k: &str| (k == "LOOMD_CLUSTER_MEMBERS").then(|| "1=nonsense".to_string());
        assert!(Settings::load(None, &env).is_err());
    }
}
