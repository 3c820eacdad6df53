//! The `kvs.v1.Kv` service: single-key operations are expressed as one conditional batch each,
//! so every write takes the same path through the replica.

use std::sync::Arc;

use kvs_client::proto;
use kvs_client::proto::kv_server::Kv;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::error::Error;
use crate::grpc::auth;
use crate::grpc::status::refusal_text;
use crate::grpc::status::to_status;
use crate::replica::Replica;
use crate::replica::kv::op;
use crate::replica::kv::outcome_to_proto;
use crate::replica::kv::refusal_to_proto;
use crate::store::command::BatchOutcome;

/// The method named when a `Batch` needs more than its method does.
const BATCH: &str = "kvs.v1.Kv/Batch with a Clear op or as a restore";

/// Serves the key-value API from a replica.
pub(crate) struct KvService {
    replica: Arc<Replica>,
}

impl KvService {
    pub(crate) fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }

    fn fail(&self, err: Error) -> Status {
        to_status(err, self.replica.leader_hint())
    }

    /// A write through the replica. Once the state machine has decided it (applied or refused),
    /// the test-only fault layer may drop the answer, as a lost connection would.
    async fn decide(
        &self,
        req: proto::BatchRequest,
    ) -> Result<Result<BatchOutcome, Error>, Status> {
        let written = self.replica.write(req).await;
        let decided = matches!(written, Ok(_) | Err(Error::Refused { .. }));
        if decided && self.replica.faults().drops_reply() {
            return Err(self.fail(Error::OutcomeUnknown(
                "reply dropped by fault injection".into(),
            )));
        }
        Ok(written)
    }

    /// A single-key write as a batch; a refusal fails the call.
    async fn batch_of(&self, req: proto::BatchRequest) -> Result<BatchOutcome, Status> {
        self.decide(req).await?.map_err(|e| self.fail(e))
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        let resp = self
            .replica
            .get(request.into_inner())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(Response::new(resp))
    }

    async fn put(
        &self,
        request: Request<proto::PutRequest>,
    ) -> Result<Response<proto::PutResponse>, Status> {
        let req = request.into_inner();
        let resp = self
            .batch_of(proto::BatchRequest {
                ops: vec![op(proto::op::Op::Put(proto::PutOp {
                    key: req.key,
                    value: req.value,
                    ttl_ms: req.ttl_ms,
                    keep_ttl: false,
                    expires_at_ms: None,
                }))],
                write_id: req.write_id,
                return_previous: req.return_previous,
                ..Default::default()
            })
            .await?;
        Ok(Response::new(proto::PutResponse {
            index: resp.index,
            previous: resp.results.into_iter().next().and_then(|r| r.previous),
        }))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        let req = request.into_inner();
        let resp = self
            .batch_of(proto::BatchRequest {
                ops: vec![op(proto::op::Op::Delete(proto::DeleteOp { key: req.key }))],
                write_id: req.write_id,
                return_previous: req.return_previous,
                ..Default::default()
            })
            .await?;
        let result = resp.results.into_iter().next().unwrap_or_default();
        Ok(Response::new(proto::DeleteResponse {
            index: resp.index,
            deleted: result.existed,
            previous: result.previous,
        }))
    }

    async fn compare_and_swap(
        &self,
        request: Request<proto::CompareAndSwapRequest>,
    ) -> Result<Response<proto::CompareAndSwapResponse>, Status> {
        use proto::compare_and_swap_request::Action;
        use proto::compare_and_swap_request::Expect;
        let req = request.into_inner();
        let target = match req.expect {
            Some(Expect::ExpectValue(v)) => proto::compare::Target::ValueEquals(v),
            Some(Expect::ExpectAbsent(_)) => proto::compare::Target::Exists(false),
            None => {
                return Err(self.fail(Error::InvalidArgument(
                    "compare-and-swap needs an expectation".into(),
                )));
            }
        };
        let action = match req.action {
            Some(Action::NewValue(value)) => proto::op::Op::Put(proto::PutOp {
                key: req.key.clone(),
                value,
                ttl_ms: None,
                keep_ttl: false,
                expires_at_ms: None,
            }),
            Some(Action::Delete(_)) => proto::op::Op::Delete(proto::DeleteOp {
                key: req.key.clone(),
            }),
            None => {
                return Err(self.fail(Error::InvalidArgument(
                    "compare-and-swap needs a new value or delete".into(),
                )));
            }
        };
        let resp = self
            .batch_of(proto::BatchRequest {
                compares: vec![proto::Compare {
                    key: req.key,
                    target: Some(target),
                }],
                ops: vec![op(action)],
                write_id: req.write_id,
                ..Default::default()
            })
            .await?;
        if !resp.succeeded {
            return Err(self.fail(Error::CompareFailed));
        }
        Ok(Response::new(proto::CompareAndSwapResponse {
            index: resp.index,
        }))
    }

    async fn batch(
        &self,
        request: Request<proto::BatchRequest>,
    ) -> Result<Response<proto::BatchResponse>, Status> {
        auth::require(&request, auth::batch_needs(request.get_ref()), BATCH)?;
        match self.decide(request.into_inner()).await? {
            Ok(outcome) => Ok(Response::new(outcome_to_proto(outcome))),
            // The Batch call answers a refusal in its reply, not as a failed call.
            Err(Error::Refused { refusal, index }) => Ok(Response::new(proto::BatchResponse {
                index,
                error: refusal_text(&refusal),
                refusal: Some(refusal_to_proto(&refusal)),
                ..Default::default()
            })),
            Err(e) => Err(self.fail(e)),
        }
    }
}
