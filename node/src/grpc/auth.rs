//! Users and roles on the gRPC client port: one tower layer in front of every client service
//! checks each request once, before any handler runs.
//!
//! A request carries `authorization: Basic base64(name:password)`. The layer finds the caller
//! ([`Gate::caller`]), refuses it unless its role allows the method ([`needs`]), and leaves the
//! [`Caller`] in the request's extensions: a `Batch` that clears the keyspace or restores a
//! backup needs more than its method does, which only its body tells ([`batch_needs`]). A
//! follower checks the caller before it forwards, so the leader never sees the password.

use std::sync::Arc;
use std::task::Context;
use std::task::Poll;

use base64::Engine;
use futures::future::BoxFuture;
use kvs_client::proto;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http;

use crate::auth::Caller;
use crate::auth::Denied;
use crate::auth::Gate;
use crate::auth::Password;
use crate::auth::Role;
use crate::error::Error;
use crate::grpc::status::to_status;

/// The least role a method (`/package.Service/Method`) needs; `None` for those open to all:
/// the gRPC health service (probes carry no credentials) and `NodeInfo` (who a node is and
/// who leads: what a client needs to find its way, and no data). A method not listed needs
/// `admin`, so a method added later is closed until someone opens it.
fn needs(path: &str) -> Option<Role> {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return Some(Role::Admin);
    };
    match (service, method) {
        ("grpc.health.v1.Health", _) | ("kvs.v1.Cluster", "NodeInfo") => None,
        ("kvs.v1.Kv", "Get") | ("kvs.v1.Cluster", "Status" | "ListMembers") => Some(Role::ReadOnly),
        ("kvs.v1.Kv", "Put" | "Delete" | "CompareAndSwap" | "Batch") => Some(Role::ReadWrite),
        _ => Some(Role::Admin),
    }
}

/// What a `Batch` needs beyond its method: `admin` to clear the whole keyspace (a `Clear` op,
/// in either branch) or as part of a restore.
pub(crate) fn batch_needs(batch: &proto::BatchRequest) -> Role {
    let clears = batch
        .ops
        .iter()
        .chain(&batch.else_ops)
        .any(|op| matches!(op.op, Some(proto::op::Op::Clear(_))));
    if clears || batch.restore {
        Role::Admin
    } else {
        Role::ReadWrite
    }
}

/// Refuses a request whose caller (left by [`Authorize`]) may not do what needs `needed`.
pub(crate) fn require<T>(
    request: &tonic::Request<T>,
    needed: Role,
    action: &str,
) -> Result<(), Status> {
    // Without a caller the layer did not run: refuse rather than serve unchecked.
    let caller = request
        .extensions()
        .get::<Caller>()
        .ok_or(Denied::NoCredentials);
    caller
        .and_then(|caller| caller.require(needed, action))
        .map_err(|denied| to_status(Error::Denied(denied), None))
}

/// The user name and password of an `authorization: Basic …` header; `Err` when there is one
/// but it cannot be read.
fn basic_credentials(headers: &http::HeaderMap) -> Result<Option<(String, Vec<u8>)>, Denied> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let encoded = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Basic "))
        .ok_or(Denied::WrongCredentials)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| Denied::WrongCredentials)?;
    let colon = decoded
        .iter()
        .position(|&b| b == b':')
        .ok_or(Denied::WrongCredentials)?;
    let name = std::str::from_utf8(&decoded[..colon]).map_err(|_| Denied::WrongCredentials)?;
    Ok(Some((name.to_owned(), decoded[colon + 1..].to_vec())))
}

/// Who sent `request`, if its method allows them.
fn admit(gate: &Gate, path: &str, headers: &http::HeaderMap) -> Result<Caller, Denied> {
    let Some(needed) = needs(path).filter(|_| !gate.is_open()) else {
        return Ok(Caller::Anyone);
    };
    let credentials = basic_credentials(headers)?;
    let password = credentials.as_ref().map(|(_, password)| Password(password));
    let caller = gate.caller(
        credentials
            .as_ref()
            .zip(password.as_ref())
            .map(|((name, _), password)| (name.as_str(), password)),
    )?;
    caller.require(needed, path.trim_start_matches('/'))?;
    Ok(caller)
}

/// The layer that puts [`Authorize`] in front of the client services.
#[derive(Debug, Clone)]
pub(crate) struct AuthorizeLayer {
    gate: Arc<Gate>,
}

impl AuthorizeLayer {
    pub(crate) fn new(gate: Arc<Gate>) -> Self {
        Self { gate }
    }
}

impl<S> tower_layer::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            gate: self.gate.clone(),
        }
    }
}

/// Checks every request's caller before passing it on (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Authorize<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S> Service<http::Request<Body>> for Authorize<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        match admit(&self.gate, request.uri().path(), request.headers()) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(self.inner.call(request))
            }
            Err(denied) => {
                let status = to_status(Error::Denied(denied), None);
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_need_the_roles_of_the_table() {
        let cases = [
            ("/grpc.health.v1.Health/Check", None),
            ("/kvs.v1.Cluster/NodeInfo", None),
            ("/kvs.v1.Kv/Get", Some(Role::ReadOnly)),
            ("/kvs.v1.Cluster/Status", Some(Role::ReadOnly)),
            ("/kvs.v1.Cluster/ListMembers", Some(Role::ReadOnly)),
            ("/kvs.v1.Kv/Put", Some(Role::ReadWrite)),
            ("/kvs.v1.Kv/Delete", Some(Role::ReadWrite)),
            ("/kvs.v1.Kv/CompareAndSwap", Some(Role::ReadWrite)),
            ("/kvs.v1.Kv/Batch", Some(Role::ReadWrite)),
            ("/kvs.v1.Cluster/Initialize", Some(Role::Admin)),
            ("/kvs.v1.Cluster/AddLearner", Some(Role::Admin)),
            ("/kvs.v1.Cluster/PromoteMember", Some(Role::Admin)),
            ("/kvs.v1.Cluster/RemoveMember", Some(Role::Admin)),
            ("/kvs.v1.Cluster/TransferLeader", Some(Role::Admin)),
            ("/kvs.v1.Cluster/Snapshot", Some(Role::Admin)),
            ("/kvs.v1.Kv/SomethingNew", Some(Role::Admin)),
            ("/kvs.peer.v1.Peer/Vote", Some(Role::Admin)),
            ("garbage", Some(Role::Admin)),
        ];
        for (path, role) in cases {
            assert_eq!(needs(path), role, "{path}");
        }
    }

    #[test]
    fn clears_and_restores_need_admin() {
        let clear = proto::Op {
            op: Some(proto::op::Op::Clear(proto::ClearOp {})),
        };
        let put = crate::replica::kv::op(proto::op::Op::Put(proto::PutOp::default()));
        let batch = |ops: Vec<proto::Op>, else_ops: Vec<proto::Op>, restore| proto::BatchRequest {
            ops,
            else_ops,
            restore,
            ..Default::default()
        };
        assert_eq!(
            batch_needs(&batch(vec![put.clone()], vec![], false)),
            Role::ReadWrite
        );
        assert_eq!(
            batch_needs(&batch(vec![put.clone(), clear.clone()], vec![], false)),
            Role::Admin
        );
        assert_eq!(batch_needs(&batch(vec![], vec![clear], false)), Role::Admin);
        assert_eq!(batch_needs(&batch(vec![put], vec![], true)), Role::Admin);
    }

    #[test]
    fn basic_credentials_are_read_and_garbage_is_refused() {
        let header = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::AUTHORIZATION,
                value.parse().expect("a header value"),
            );
            headers
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        assert_eq!(
            basic_credentials(&header(&format!("Basic {encoded}"))),
            Ok(Some(("alice".into(), b"pa:ss".to_vec())))
        );
        assert_eq!(basic_credentials(&http::HeaderMap::new()), Ok(None));
        for bad in ["Bearer x", "Basic !!!", "Basic bm9jb2xvbg=="] {
            assert_eq!(
                basic_credentials(&header(bad)),
                Err(Denied::WrongCredentials),
                "{bad}"
            );
        }
    }
}
