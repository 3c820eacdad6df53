//! The operator's Prometheus metrics and the HTTP endpoint that serves them.
//!
//! Counted per reconcile: its outcome, its duration and the step it took, which is what tells an
//! operator of the operator whether clusters converge. Served by hyper (already in the tree under
//! tonic) on an already-bound listener, so tests bind port 0.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::error::{Error, Result};

type Labels = Vec<(&'static str, &'static str)>;

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<Labels, Counter>,
    steps: Family<Labels, Counter>,
    duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kvs_operator");
        let reconciles = Family::<Labels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles of KvsClusters by result",
            reconciles.clone(),
        );
        let steps = Family::<Labels, Counter>::default();
        registry.register(
            "steps",
            "Planned steps by reason (waits included)",
            steps.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Time from observing a KvsCluster to its status written",
            duration.clone(),
        );
        Metrics {
            registry,
            reconciles,
            steps,
            duration,
        }
    }
}

impl Metrics {
    pub(crate) fn reconciled(&self, step: &'static str, took: Duration) {
        self.reconciles.get_or_create(&vec![("result", "ok")]).inc();
        self.steps.get_or_create(&vec![("step", step)]).inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub(crate) fn failed(&self) {
        self.reconciles
            .get_or_create(&vec![("result", "error")])
            .inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes; connections in flight are
/// dropped with it.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted.map_err(Error::Metrics)?,
        };
        let metrics = metrics.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let response = if request.uri().path() == "/metrics" {
                Response::new(Full::new(Bytes::from(metrics.render())))
            } else {
                let mut missing = Response::new(Full::new(Bytes::from_static(b"not found\n")));
                *missing.status_mut() = StatusCode::NOT_FOUND;
                missing
            };
            std::future::ready(Ok::<_, std::convert::Infallible>(response))
        });
        connections.spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = served {
                tracing::debug!(%err, "metrics connection ended with an error");
            }
        });
        // Reap finished connections so the set does not grow with every scrape.
        while connections.try_join_next().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(address: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("the endpoint accepts");
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("request sent");
        let mut response = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            stream.read_to_string(&mut response),
        )
        .await
        .expect("the endpoint answers in time")
        .expect("a readable response");
        response
    }

    #[tokio::test]
    async fn reconciles_are_served_as_prometheus_text() {
        let metrics = Arc::new(Metrics::default());
        metrics.reconciled("AddingLearner", Duration::from_millis(30));
        metrics.failed();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let address = listener.local_addr().expect("bound");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, metrics, async {
            let _ = stopped.await;
        }));

        let response = get(address, "/metrics").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains(r#"kvs_operator_reconciles_total{result="ok"} 1"#));
        assert!(response.contains(r#"kvs_operator_reconciles_total{result="error"} 1"#));
        assert!(response.contains(r#"kvs_operator_steps_total{step="AddingLearner"} 1"#));
        assert!(response.contains("kvs_operator_reconcile_duration_seconds_count 1"));
        assert!(get(address, "/").await.starts_with("HTTP/1.1 404"));

        drop(stop);
        let stopped = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server stops on shutdown")
            .expect("the server task did not panic");
        assert!(stopped.is_ok(), "{stopped:?}");
    }
}
