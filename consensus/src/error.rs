//! Errors the core answers to its driver.

use crate::confchange::ConfChangeError;
use crate::{GroupId, NodeId};

/// Why a request to the core was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Only the leader proposes and serves reads; `leader` is the one this
    /// node knows of, if any.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// Known leader.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is under way; proposals wait for the new
    /// leader.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// A configured bound is reached; retry later.
    #[error("busy: {0}")]
    Busy(&'static str),
    /// A membership change is proposed but not yet applied.
    #[error("a membership change is still pending")]
    ConfChangePending,
    /// The membership change cannot apply to the current configuration.
    #[error("invalid membership change: {0}")]
    InvalidConfChange(#[from] ConfChangeError),
    /// Leadership can only go to a voter.
    #[error("node {0} is not a voter")]
    NotAVoter(NodeId),
    /// A message for another group or node reached this one.
    #[error("message for group {group} node {to} delivered to group {expected_group} node {expected_to}")]
    Misdelivered {
        /// The message's group.
        group: GroupId,
        /// The message's recipient.
        to: NodeId,
        /// This group.
        expected_group: GroupId,
        /// This node.
        expected_to: NodeId,
    },
    /// No such group on this node.
    #[error("no group {0} on this node")]
    UnknownGroup(GroupId),
    /// The group already runs on this node.
    #[error("group {0} already exists on this node")]
    GroupExists(GroupId),
    /// Settings that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
}
