//! The `kvs.v1.Cluster` service: identity, status and membership administration.

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use kvs_client::proto;
use kvs_client::proto::cluster_server::Cluster;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::error::Error;
use crate::grpc::status::to_status;
use crate::replica::Replica;

/// Serves cluster administration from a replica.
pub(crate) struct ClusterService {
    replica: Arc<Replica>,
}

impl ClusterService {
    pub(crate) fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }

    fn answer<T>(&self, result: Result<T, Error>) -> Result<Response<T>, Status> {
        result
            .map(Response::new)
            .map_err(|e| to_status(e, self.replica.leader_hint()))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    type SnapshotStream = BoxStream<'static, Result<proto::SnapshotChunk, Status>>;

    async fn snapshot(
        &self,
        _: Request<proto::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let streamed = self.replica.backup().await.map(|backup| {
            let mut expected_bytes = backup.expected_bytes;
            ReceiverStream::new(backup.chunks)
                .map(move |chunk| {
                    // An error mid-stream has no leader to hint at: the backup was the leader's.
                    let chunk = chunk.map_err(|e| to_status(e, None))?;
                    Ok(proto::SnapshotChunk {
                        data: chunk,
                        expected_bytes: std::mem::take(&mut expected_bytes),
                    })
                })
                .boxed()
        });
        self.answer(streamed)
    }

    async fn node_info(
        &self,
        _: Request<proto::NodeInfoRequest>,
    ) -> Result<Response<proto::NodeInfoResponse>, Status> {
        Ok(Response::new(self.replica.node_info()))
    }

    async fn initialize(
        &self,
        _: Request<proto::InitializeRequest>,
    ) -> Result<Response<proto::InitializeResponse>, Status> {
        self.answer(self.replica.initialize().await)
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        if request.into_inner().linearizable {
            return self.answer(self.replica.linearizable_status().await);
        }
        Ok(Response::new(self.replica.status()))
    }

    async fn list_members(
        &self,
        _: Request<proto::ListMembersRequest>,
    ) -> Result<Response<proto::ListMembersResponse>, Status> {
        self.answer(self.replica.list_members().await)
    }

    async fn add_learner(
        &self,
        request: Request<proto::AddLearnerRequest>,
    ) -> Result<Response<proto::AddLearnerResponse>, Status> {
        self.answer(self.replica.add_learner(request.into_inner().address).await)
    }

    async fn promote_member(
        &self,
        request: Request<proto::PromoteMemberRequest>,
    ) -> Result<Response<proto::PromoteMemberResponse>, Status> {
        let result = self.replica.promote(request.into_inner().id).await;
        self.answer(result.map(|()| proto::PromoteMemberResponse {}))
    }

    async fn remove_member(
        &self,
        request: Request<proto::RemoveMemberRequest>,
    ) -> Result<Response<proto::RemoveMemberResponse>, Status> {
        let proto::RemoveMemberRequest { id, force } = request.into_inner();
        let result = self.replica.remove(id, force).await;
        self.answer(result.map(|()| proto::RemoveMemberResponse {}))
    }

    async fn transfer_leader(
        &self,
        request: Request<proto::TransferLeaderRequest>,
    ) -> Result<Response<proto::TransferLeaderResponse>, Status> {
        self.answer(self.replica.transfer_leader(request.into_inner().to).await)
    }
}
