//! Per-group settings of the core. Time is counted in ticks: the driver
//! calls `tick` at a fixed interval, and every timeout is a tick count.

use crate::error::Error;
use crate::{GroupId, NodeId};

/// Settings of one Raft group on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node; never 0.
    pub id: NodeId,
    /// The group.
    pub group: GroupId,
    /// A follower that hears from no leader for a randomized timeout in
    /// `[election_timeout_ticks, 2 * election_timeout_ticks)` starts an
    /// election. A leader that has not heard from a quorum within
    /// `election_timeout_ticks` steps down (check-quorum).
    pub election_timeout_ticks: u64,
    /// A leader sends heartbeats this often.
    pub heartbeat_interval_ticks: u64,
    /// The leader lease is `election_timeout_ticks - lease_margin_ticks`
    /// from the send time of the newest heartbeat round a quorum
    /// acknowledged. The margin must cover clock drift between nodes and
    /// tick granularity: with tick rates differing by at most a fraction
    /// `d`, `lease * (1 + d) < (election_timeout - 1) * (1 - d)` must hold.
    pub lease_margin_ticks: u64,
    /// Serve linearizable reads from the lease (otherwise every read takes
    /// a ReadIndex round).
    pub lease_reads: bool,
    /// Pre-vote (thesis §9.6): a node first asks whether it could win
    /// before it raises its term.
    pub pre_vote: bool,
    /// Check-quorum (thesis §6.2): leaders step down without majority
    /// contact, and nodes that heard from a leader within the election
    /// timeout refuse votes. Required for lease reads.
    pub check_quorum: bool,
    /// Most entry bytes in one append message (at least one entry is sent).
    pub max_message_bytes: u64,
    /// Most entries in one append message; must not exceed what receivers
    /// decode (the wire's peer `items_max`, 16 384).
    pub max_message_entries: usize,
    /// Most unacknowledged appends per follower in the replicate state.
    pub max_inflight_messages: usize,
    /// Most bytes of proposed, uncommitted entries a leader holds before it
    /// refuses proposals as busy.
    pub max_uncommitted_bytes: u64,
    /// Most committed entry bytes handed out in one Ready.
    pub max_committed_bytes_per_ready: u64,
    /// Size of one snapshot chunk.
    pub snapshot_chunk_bytes: u64,
    /// Largest snapshot a follower accepts.
    pub snapshot_max_bytes: u64,
    /// Most reads waiting for a ReadIndex round or the term's first commit.
    pub max_pending_reads: usize,
    /// Seed of the election-timeout randomization.
    pub seed: u64,
}

impl Config {
    /// Defaults for node `id` in `group`: a 10-tick election timeout,
    /// heartbeats every tick, a 3-tick lease margin (10% drift), 1 MiB
    /// messages, a window of 256 appends, 64 MiB uncommitted, 16 MiB of
    /// committed entries per Ready, 1 MiB snapshot chunks, 4 GiB snapshots
    /// and 65 536 pending reads; appends carry at most 4096 entries.
    pub fn new(id: NodeId, group: GroupId) -> Config {
        Config {
            id,
            group,
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 1,
            lease_margin_ticks: 3,
            lease_reads: true,
            pre_vote: true,
            check_quorum: true,
            max_message_bytes: 1 << 20,
            max_message_entries: 4096,
            max_inflight_messages: 256,
            max_uncommitted_bytes: 64 << 20,
            max_committed_bytes_per_ready: 16 << 20,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_max_bytes: 4 << 30,
            max_pending_reads: 65_536,
            seed: id,
        }
    }

    /// Ticks a lease lasts.
    pub fn lease_ticks(&self) -> u64 {
        self.election_timeout_ticks - self.lease_margin_ticks
    }

    /// Checks the settings are usable together.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |why: &str| Err(Error::Config(why.to_string()));
        if self.id == 0 {
            return bad("id must not be 0");
        }
        if self.heartbeat_interval_ticks == 0 {
            return bad("heartbeat_interval_ticks must be at least 1");
        }
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks {
            return bad("election_timeout_ticks must exceed heartbeat_interval_ticks");
        }
        if self.lease_margin_ticks == 0 || self.lease_margin_ticks >= self.election_timeout_ticks {
            return bad("lease_margin_ticks must be in 1..election_timeout_ticks");
        }
        if self.lease_reads && !self.check_quorum {
            return bad("lease_reads requires check_quorum");
        }
        if self.max_message_entries == 0 || self.max_message_entries > loomcache_wire::Limits::PEER.items_max as usize {
            return bad("max_message_entries must be in 1..=16384 (the peer items_max)");
        }
        if self.max_inflight_messages == 0 {
            return bad("max_inflight_messages must be at least 1");
        }
        if self.max_message_bytes == 0 || self.snapshot_chunk_bytes == 0 || self.max_committed_bytes_per_ready == 0 {
            return bad("byte limits must be at least 1");
        }
        if self.max_pending_reads == 0 {
            return bad("max_pending_reads must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_settings_are_named() {
        assert_eq!(Config::new(1, 0).validate(), Ok(()));
        let cases: [(fn(&mut Config), &str); 5] = [
            (|c| c.id = 0, "id"),
            (
                |c| c.heartbeat_interval_ticks = 10,
                "election_timeout_ticks must exceed",
            ),
            (|c| c.lease_margin_ticks = 10, "lease_margin_ticks"),
            (|c| c.check_quorum = false, "lease_reads requires"),
            (|c| c.max_inflight_messages = 0, "max_inflight_messages"),
        ];
        for (change, expect) in cases {
            let mut c = Config::new(1, 0);
            change(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(expect), "{err}");
        }
    }
}
