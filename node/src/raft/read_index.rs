//! Linearizable reads: the leader confirms with a quorum that it still leads (ReadIndex) and
//! names the log index a read must see; any member that has applied up to that index may then
//! serve the read from its own state. Followers ask the leader for the index over the peer API,
//! so a read never moves key-value data across the network twice.

use openraft::ReadPolicy;
use openraft::errors::LinearizableReadError;
use openraft::errors::RaftError;

use crate::error::Error;
use crate::peer_proto::ReadIndexResponse;
use crate::replica::Deadline;
use crate::replica::Leadership;
use crate::replica::Replica;

/// The index a linearizable read started now must observe, confirmed by a quorum.
pub(crate) async fn leader_read_index(
    replica: &Replica,
    deadline: &Deadline,
) -> Result<u64, Error> {
    let read = deadline
        .run(replica.raft.get_read_log_id(ReadPolicy::ReadIndex))
        .await
        .map_err(|()| Error::ReadTimeout(deadline.total_ms()))?;
    match read {
        Ok((read_log_id, _applied)) => Ok(read_log_id.index()),
        Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => {
            Err(replica.not_leader())
        }
        Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(e))) => {
            Err(Error::NoQuorum(e.to_string()))
        }
        Err(RaftError::Fatal(e)) => Err(Error::Fatal(e.to_string())),
    }
}

/// Waits until this node has applied everything a linearizable read started now must see.
pub(crate) async fn await_linearizable(
    replica: &Replica,
    deadline: &Deadline,
) -> Result<(), Error> {
    let index = match replica.leadership() {
        Leadership::Here => leader_read_index(replica, deadline).await?,
        Leadership::There { id, addr } => {
            ask_leader(replica, id, &addr.peer_addr, deadline).await?
        }
        Leadership::Unknown => return Err(replica.not_leader()),
    };
    replica
        .raft
        .wait(Some(deadline.remaining()))
        .applied_index_at_least(Some(index), "linearizable read")
        .await
        .map_err(|_| Error::ReadTimeout(deadline.total_ms()))?;
    Ok(())
}

async fn ask_leader(
    replica: &Replica,
    leader: u64,
    peer_addr: &str,
    deadline: &Deadline,
) -> Result<u64, Error> {
    let unreachable = || Error::NotLeader {
        leader: replica.leader_hint(),
    };
    if replica.peers.faults().blocks(leader) {
        return Err(unreachable());
    }
    let mut client = replica.peers.client(peer_addr).ok_or_else(unreachable)?;
    let mut req = tonic::Request::new(replica.peers.message(leader, bytes::Bytes::new()));
    req.set_timeout(deadline.remaining());
    let held = replica.peers.faults().hold(leader);
    let call = async move {
        held.await;
        client.read_index(req).await
    };
    match deadline.run(call).await {
        Ok(Ok(resp)) => {
            let ReadIndexResponse { index } = resp.into_inner();
            Ok(index)
        }
        Ok(Err(status)) => {
            tracing::debug!(%status, "leader refused read index");
            Err(unreachable())
        }
        Err(()) => Err(Error::ReadTimeout(deadline.total_ms())),
    }
}
