//! A shard's Raft membership, as its replicas carry it out: replace the
//! voter set (`ChangeVoters`), hand leadership to another voter
//! (`TransferLeader`), and stand for election (`Campaign`).
//!
//! The control plane's record of the shard (who should host it) is kept by
//! the caller, `nokv_client::membership`; this module only drives openraft.
//!
//! # Leadership transfer
//! openraft 0.9 has no transfer call. A voter's vote request is granted by
//! a node whose leader lease (the maximum election timeout since it last
//! heard from a leader) has run out and whose log is not longer than the
//! candidate's. The leader itself only touches its vote when it is elected,
//! so once it has led for a lease it grants a vote to an up-to-date voter:
//! that voter and the old leader make a majority of any group of three (and
//! with the lease holders of larger groups, once they too time out). So the
//! leader holds new writes, waits until `to` has every entry it has, and
//! asks `to` to stand. Safety is Raft's own: an election is always legal;
//! the worst case is a failed attempt (another leader, or none for an
//! election timeout), after which writes resume wherever the leader is.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nokv_proto::pb::{self, ErrorDetail};
use nokv_proto::{not_leader_status, status_from_detail, status_with_detail, ErrorCode};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};
use tonic::Status;

use crate::client_service::ClientService;
use crate::typ::NodeId;

/// How long a new voter may take to catch up (a snapshot of a large shard).
const CATCH_UP: Duration = Duration::from_secs(120);
/// How long one membership change may take to commit.
const CHANGE: Duration = Duration::from_secs(30);
/// How long a transfer may hold writes and try before giving up.
const TRANSFER: Duration = Duration::from_secs(5);
/// How long a campaign waits to learn whether it won.
const CAMPAIGN: Duration = Duration::from_secs(1);

fn invalid(message: String) -> Status {
    status_from_detail(ErrorCode::InvalidArgument, message)
}

fn unavailable(message: String) -> Status {
    status_from_detail(ErrorCode::Unavailable, message)
}

/// A failed openraft write, as the client should see it.
fn write_error(
    e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
    leader: Option<(NodeId, String)>,
) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => not_leader_status(leader),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(p),
        )) => status_with_detail(
            tonic::Code::Aborted,
            ErrorDetail {
                code: "MEMBERSHIP_IN_PROGRESS".into(),
                message: format!(
                    "another membership change is still committing ({p}); retry when it is done"
                ),
                ..Default::default()
            },
        ),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => invalid(e.to_string()),
        RaftError::Fatal(f) => unavailable(format!("the shard's Raft stopped: {f}")),
    }
}

impl ClientService {
    /// `ChangeVoters`: makes `voters` exactly the shard's voter set.
    pub async fn change_voters(
        &self,
        request: pb::ChangeVotersRequest,
    ) -> Result<pb::ChangeVotersResponse, Status> {
        let mut wanted: BTreeMap<NodeId, BasicNode> = BTreeMap::new();
        for m in request.voters {
            if m.id == 0 {
                return Err(invalid("node id 0 is reserved".into()));
            }
            if m.addr.is_empty() {
                return Err(invalid(format!("voter {} has no address", m.id)));
            }
            if wanted.insert(m.id, BasicNode { addr: m.addr }).is_some() {
                return Err(invalid(format!("voter {} is listed twice", m.id)));
            }
        }
        if wanted.is_empty() {
            return Err(invalid("a shard needs at least one voter".into()));
        }
        self.must_lead().await?;
        let current = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        // New voters join as learners first and catch up before they count
        // (a learner left by an earlier attempt is added again: that is how
        // openraft waits for it to catch up).
        for (id, node) in &wanted {
            if current.voter_ids().any(|v| v == *id) {
                continue;
            }
            tracing::info!(shard = %self.shard, node = id, addr = %node.addr, "adding a learner");
            match tokio::time::timeout(CATCH_UP, self.raft.add_learner(*id, node.clone(), true))
                .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(write_error(e, self.leader_hint())),
                Err(_) => {
                    return Err(status_from_detail(
                        ErrorCode::UnknownOutcome,
                        format!(
                            "node {id} did not catch up within {CATCH_UP:?}; it stays a learner \
                             (retry to continue)"
                        ),
                    ))
                }
            }
        }
        let ids: BTreeSet<NodeId> = wanted.keys().copied().collect();
        let voters_now: BTreeSet<NodeId> = current.voter_ids().collect();
        let joint = current.get_joint_config().len() > 1;
        if voters_now != ids || joint {
            tracing::info!(shard = %self.shard, from = ?voters_now, to = ?ids, "changing voters");
            match tokio::time::timeout(CHANGE, self.raft.change_membership(ids.clone(), false))
                .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(write_error(e, self.leader_hint())),
                Err(_) => {
                    return Err(status_from_detail(
                        ErrorCode::UnknownOutcome,
                        format!("the voter change did not commit within {CHANGE:?}"),
                    ))
                }
            }
        }
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters = membership
            .voter_ids()
            .map(|id| pb::Member {
                id,
                addr: membership
                    .get_node(&id)
                    .map(|n| n.addr.clone())
                    .unwrap_or_default(),
            })
            .collect();
        let epoch = self
            .state
            .read()
            .map_err(|_| Self::state_error())?
            .holt
            .epoch()
            .0;
        Ok(pb::ChangeVotersResponse { voters, epoch })
    }

    /// `TransferLeader`: see the module docs.
    pub async fn transfer_leader(
        &self,
        request: pb::TransferLeaderRequest,
    ) -> Result<pb::TransferLeaderResponse, Status> {
        let to = request.to;
        if to == self.node_id {
            self.must_lead().await?;
            return Ok(pb::TransferLeaderResponse { leader: to });
        }
        self.must_lead().await?;
        let addr = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            if !membership.voter_ids().any(|v| v == to) {
                return Err(invalid(format!(
                    "node {to} is not a voter of shard {}; only voters can lead",
                    self.shard
                )));
            }
            membership
                .get_node(&to)
                .map(|n| n.addr.clone())
                .unwrap_or_default()
        };
        let _hold = self.hold_writes();
        let deadline = tokio::time::Instant::now() + TRANSFER;
        self.wait_out_own_lease(deadline).await;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            // Wait until `to` holds every entry this leader has.
            let caught_up = self
                .raft
                .wait(Some(
                    deadline.saturating_duration_since(tokio::time::Instant::now()),
                ))
                .metrics(
                    |m| {
                        m.state != ServerState::Leader
                            || m.replication.as_ref().is_some_and(|r| {
                                r.get(&to).is_some_and(|matched| {
                                    matched.as_ref().map(|l| l.index) == m.last_log_index
                                })
                            })
                    },
                    "the transfer target has every entry",
                )
                .await
                .is_ok();
            if !self.is_leader() {
                break;
            }
            if caught_up {
                match self.campaign_on(&addr, to).await {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::info!(shard = %self.shard, to, error = %e, "campaign call failed")
                    }
                }
                // The target's win shows here as a higher term with it leading.
                let _ = self
                    .raft
                    .wait(Some(CAMPAIGN))
                    .metrics(|m| m.state != ServerState::Leader, "deposed by the target")
                    .await;
                if !self.is_leader() {
                    break;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(unavailable(format!(
                    "node {to} did not take over shard {} within {TRANSFER:?} ({attempt} \
                     attempts); this node still leads",
                    self.shard
                )));
            }
        }
        let leader = self
            .raft
            .wait(Some(TRANSFER))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .ok()
            .and_then(|m| m.current_leader)
            .unwrap_or_default();
        tracing::info!(shard = %self.shard, from = self.node_id, to, leader, "leadership handed over");
        Ok(pb::TransferLeaderResponse { leader })
    }

    /// Returns once this leader's own vote is older than the leader lease
    /// (or at `deadline`). openraft grants a vote only to a node whose vote
    /// lease has run out, and a leader's vote dates from its election: asked
    /// sooner, it refuses the target, the target's higher term deposes it
    /// all the same, and the election that follows may well elect this node
    /// again (seen in `cluster.rs` with a 2 s lease: a transfer right after
    /// an election ended with the old leader leading). The lease is a fixed
    /// time, so waiting for it is waiting on the condition itself.
    async fn wait_out_own_lease(&self, deadline: tokio::time::Instant) {
        let voted_at = self
            .raft
            .with_raft_state(|st| st.vote_last_modified())
            .await
            .ok()
            .flatten();
        if let Some(voted_at) = voted_at {
            // `handle_vote_req` refuses while `now <= voted_at + lease`.
            let expired = voted_at + self.timeouts.quorum_lease + Duration::from_millis(1);
            tokio::time::sleep_until(expired.min(deadline)).await;
        }
    }

    /// Asks the replica at `addr` to stand for election.
    async fn campaign_on(&self, addr: &str, to: NodeId) -> Result<(), String> {
        let leads = campaign_call(
            addr,
            u32::from(self.shard.0),
            to,
            self.tls.as_ref(),
            self.auth_token.as_ref(),
        )
        .await?;
        tracing::info!(shard = %self.shard, to, leads, "campaign answered");
        Ok(())
    }

    /// `Campaign`: stand for election now; answers whether this replica leads after.
    pub async fn campaign(&self) -> Result<pb::CampaignResponse, Status> {
        let voter = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.node_id);
        if !voter {
            return Err(invalid(format!(
                "node {} is not a voter of shard {}",
                self.node_id, self.shard
            )));
        }
        if !self.is_leader() {
            self.raft
                .trigger()
                .elect()
                .await
                .map_err(|f| unavailable(format!("the shard's Raft stopped: {f}")))?;
        }
        let leads = self
            .raft
            .wait(Some(CAMPAIGN))
            .state(ServerState::Leader, "won the campaign")
            .await
            .is_ok();
        Ok(pb::CampaignResponse { leads })
    }
}

/// Calls `Campaign` for `shard` on node `to` at `addr`; answers whether it
/// leads after.
///
/// Bounded as a whole, connecting included: the transferring leader holds
/// the shard's writes meanwhile, and a TCP connect to a partitioned peer
/// otherwise waits out the kernel's SYN retries (about two minutes on
/// Linux), so every write of the shard timed out for that long.
async fn campaign_call(
    addr: &str,
    shard: u32,
    to: NodeId,
    tls: Option<&crate::tls::NodeTls>,
    token: Option<&nokv_proto::auth::Token>,
) -> Result<bool, String> {
    let endpoint = crate::tls::peer_endpoint(addr, tls)
        .map_err(|e| format!("node {to}: {e}"))?
        .connect_timeout(CAMPAIGN);
    let call = async move {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot reach node {to} at {addr}: {e}"))?;
        let mut request = tonic::Request::new(pb::CampaignRequest { shard });
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert(nokv_proto::auth::AUTHORIZATION, token.header_value());
        }
        pb::meta_service_client::MetaServiceClient::new(channel)
            .campaign(request)
            .await
            .map_err(|s| s.message().to_string())
    };
    Ok(tokio::time::timeout(CAMPAIGN * 2, call)
        .await
        .map_err(|_| format!("node {to} did not answer the campaign call"))??
        .into_inner()
        .leads)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{campaign_call, CAMPAIGN};

    /// A campaign call to a peer whose SYNs go unanswered (a listener with
    /// a full accept queue that never accepts: Linux drops further SYNs, as
    /// a partition does) gives up within its bound instead of waiting out
    /// the kernel's connect retries.
    #[tokio::test]
    async fn a_campaign_call_to_an_unreachable_peer_is_bounded() {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind("127.0.0.1:0".parse().expect("an address"))
            .expect("bind");
        let listener = socket.listen(0).expect("listen with no backlog");
        let addr = listener.local_addr().expect("local addr");
        // Fill the accept queue; these connections are never accepted.
        let mut held = Vec::new();
        for _ in 0..4 {
            if let Ok(Ok(s)) = tokio::time::timeout(
                Duration::from_millis(300),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                held.push(s);
            }
        }
        let started = Instant::now();
        let result = campaign_call(&addr.to_string(), 0, 2, None, None).await;
        let took = started.elapsed();
        assert!(result.is_err(), "{result:?}");
        assert!(
            took <= CAMPAIGN * 2 + Duration::from_millis(500),
            "the call took {took:?}"
        );
        drop(listener);
    }
}
