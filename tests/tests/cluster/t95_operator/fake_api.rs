//! The fake Kubernetes API server of the operator end to end: a `tower` service given to
//! `kube::Client::new` that stores objects by path and answers the get, list, apply, status patch,
//! delete and event calls the operator makes — and records every kind of request it served, as
//! RBAC names it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

use super::NAMESPACE;

/// Objects by API path, as the fake API server holds them, and the kinds of request it served.
#[derive(Default)]
pub(super) struct Store {
    pub(super) objects: BTreeMap<String, Value>,
    next_uid: u64,
    pub(super) served: BTreeSet<ApiCall>,
    /// A path whose patches are refused as invalid (422), as the API server refuses a change
    /// to a StatefulSet's volume claim templates.
    pub(super) refuse_patches_of: Option<String>,
}

/// A kind of request, as an RBAC rule names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct ApiCall {
    pub(super) verb: &'static str,
    pub(super) group: String,
    /// With its subresource, as in `kvsclusters/status`.
    pub(super) resource: String,
}

impl ApiCall {
    /// Reads `/api/v1/namespaces/{ns}/{resource}[/{name}[/{sub}]]` and its
    /// `/apis/{group}/{version}` counterpart. Anything else is recorded as is, so that a test
    /// comparing the calls shows it.
    fn of(method: &Method, uri: &http::Uri) -> ApiCall {
        Self::parse(method, uri).unwrap_or_else(|| ApiCall {
            verb: "unrecognised",
            group: method.to_string(),
            resource: uri.to_string(),
        })
    }

    fn parse(method: &Method, uri: &http::Uri) -> Option<ApiCall> {
        let segments: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
        let (group, rest) = match segments.as_slice() {
            ["api", _version, rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => return None,
        };
        let ["namespaces", _namespace, resource, named @ ..] = rest else {
            return None;
        };
        let watching = uri
            .query()
            .is_some_and(|query| query.split('&').any(|pair| pair == "watch=true"));
        let verb = match (method.as_str(), named.is_empty()) {
            ("GET", true) if watching => "watch",
            ("GET", true) => "list",
            ("GET", false) => "get",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "deletecollection",
            ("DELETE", false) => "delete",
            _ => return None,
        };
        let resource = match named {
            [_name, subresource] => format!("{resource}/{subresource}"),
            _ => (*resource).to_owned(),
        };
        Some(ApiCall {
            verb,
            group: group.to_owned(),
            resource,
        })
    }
}

pub(super) type SharedStore = Arc<Mutex<Store>>;

pub(super) fn lock(store: &SharedStore) -> MutexGuard<'_, Store> {
    store.lock().expect("no fake API thread panicked")
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
           "status": if code < 300 { "Success" } else { "Failure" },
           "reason": reason, "code": code})
}

/// RFC 7386: `patch` merged into `target`; a null removes the field.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(target) = target {
        for (name, value) in fields {
            if value.is_null() {
                target.remove(name);
            } else {
                merge(target.entry(name.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Answers one API request the way the API server would for the calls the operator and
/// `kubectl kvs` make.
fn answer(
    store: &mut Store,
    method: &Method,
    path: &str,
    merge_patch: bool,
    body: Value,
) -> (StatusCode, Value) {
    if *method == Method::PATCH && store.refuse_patches_of.as_deref() == Some(path) {
        let mut refusal = status(422, "Invalid");
        refusal["message"] = json!(
            "spec: Forbidden: updates to statefulset spec for fields other than 'replicas' are forbidden"
        );
        return (StatusCode::UNPROCESSABLE_ENTITY, refusal);
    }
    if *method == Method::PATCH && merge_patch {
        let Some(object) = store.objects.get_mut(path) else {
            return (StatusCode::NOT_FOUND, status(404, "NotFound"));
        };
        let spec = object["spec"].clone();
        merge(object, &body);
        if object["spec"] != spec {
            let generation = object["metadata"]["generation"].as_i64().unwrap_or(0);
            object["metadata"]["generation"] = json!(generation + 1);
        }
        return (StatusCode::OK, object.clone());
    }
    match *method {
        Method::GET => match store.objects.get(path) {
            Some(object) => (StatusCode::OK, object.clone()),
            None if path.ends_with("/pods") || path.ends_with("/persistentvolumeclaims") => {
                let prefix = format!("{path}/");
                let items: Vec<Value> = store
                    .objects
                    .iter()
                    .filter(|(key, _)| key.starts_with(&prefix))
                    .map(|(_, object)| object.clone())
                    .collect();
                (
                    StatusCode::OK,
                    json!({"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items}),
                )
            }
            None => (StatusCode::NOT_FOUND, status(404, "NotFound")),
        },
        Method::PATCH => {
            if let Some(object_path) = path.strip_suffix("/status") {
                let Some(object) = store.objects.get_mut(object_path) else {
                    return (StatusCode::NOT_FOUND, status(404, "NotFound"));
                };
                object["status"] = body["status"].clone();
                return (StatusCode::OK, object.clone());
            }
            // Server-side apply of a whole owned object: what the operator sends is the object,
            // with the status the controllers wrote kept.
            let mut object = body;
            if let Some(existing) = store.objects.get(path) {
                object["status"] = existing["status"].clone();
                object["metadata"]["uid"] = existing["metadata"]["uid"].clone();
            } else {
                store.next_uid += 1;
                object["metadata"]["uid"] = json!(format!("uid-{}", store.next_uid));
            }
            store.objects.insert(path.to_owned(), object.clone());
            (StatusCode::OK, object)
        }
        Method::DELETE => match store.objects.remove(path) {
            Some(object) => (StatusCode::OK, object),
            None => (StatusCode::NOT_FOUND, status(404, "NotFound")),
        },
        // Events.
        _ => (StatusCode::CREATED, body),
    }
}

/// Records and answers one request: its head and its body's bytes.
fn respond(store: &SharedStore, head: &http::request::Parts, bytes: &[u8]) -> (StatusCode, Value) {
    let call = ApiCall::of(&head.method, &head.uri);
    lock(store).served.insert(call);
    let merge_patch = head
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|kind| kind.as_bytes() == b"application/merge-patch+json");
    let body = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    answer(
        &mut lock(store),
        &head.method,
        head.uri.path(),
        merge_patch,
        body,
    )
}

/// A kube client backed by the fake API server; the server task ends with the test.
pub(super) fn fake_api(store: SharedStore) -> (kube::Client, tokio::task::JoinHandle<()>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        while let Some((request, reply)) = handle.next_request().await {
            let (head, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let (code, answer) = respond(&store, &head, &bytes);
            let response = Response::builder()
                .status(code)
                .body(Body::from(answer.to_string().into_bytes()))
                .expect("a valid response");
            reply.send_response(response);
        }
    });
    (kube::Client::new(service, NAMESPACE), server)
}

/// The same fake API server over HTTP on a loopback port, for programs that read a kubeconfig
/// (`kubectl kvs`); returns its URL. The task ends with the test.
pub(super) async fn serve_http(store: SharedStore) -> (String, tokio::task::JoinHandle<()>) {
    use http_body_util::{BodyExt, Full};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback has free ports");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        async move {
                            let (head, body) = request.into_parts();
                            let bytes = body
                                .collect()
                                .await
                                .map(|body| body.to_bytes())
                                .unwrap_or_default();
                            let (code, answer) = respond(&store, &head, &bytes);
                            Response::builder()
                                .status(code)
                                .header(http::header::CONTENT_TYPE, "application/json")
                                .body(Full::new(bytes::Bytes::from(answer.to_string())))
                        }
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (url, server)
}
