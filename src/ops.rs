//! The ops listener: `/healthz` (the process runs), `/readyz` (every component has synced) and
//! `/metrics` (Prometheus text format).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::metrics::Metrics;
use crate::server::Body;

/// Readiness of the process: ready once every registered gate is open.
#[derive(Default)]
pub struct Health {
    gates: Mutex<Vec<(String, Arc<AtomicBool>)>>,
    /// Set on SIGTERM: not ready any more, whatever the gates say.
    stopping: AtomicBool,
}

/// One component's readiness; open it once the component has synced.
#[derive(Clone)]
pub struct Gate(Arc<AtomicBool>);

impl Gate {
    /// Marks the component ready.
    pub fn open(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Marks the component not ready (again).
    pub fn close(&self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Health {
    /// Registers a component that is not ready until its gate is opened.
    pub fn gate(&self, name: &str) -> Gate {
        let flag = Arc::new(AtomicBool::new(false));
        self.gates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((name.to_string(), flag.clone()));
        Gate(flag)
    }

    /// Marks the process as stopping: `/readyz` answers 503 from now on.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Names of the components that are not ready yet.
    pub fn pending(&self) -> Vec<String> {
        self.gates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .filter(|(_, flag)| !flag.load(Ordering::Acquire))
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// Answers one ops request.
pub async fn handle(
    req: Request<Incoming>,
    _peer: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let pending = health.pending();
            if health.stopping.load(Ordering::Acquire) {
                text(StatusCode::SERVICE_UNAVAILABLE, "stopping\n".into())
            } else if pending.is_empty() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("waiting for: {}\n", pending.join(", ")),
                )
            }
        }
        "/metrics" => match metrics.encode() {
            Ok(body) => {
                let mut resp = text(StatusCode::OK, body);
                resp.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                resp
            }
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics encoding failed\n".into(),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_gate_is_open() {
        let health = Health::default();
        let index = health.gate("index");
        let ledger = health.gate("ledger");
        assert_eq!(health.pending(), vec!["index", "ledger"]);
        index.open();
        assert_eq!(health.pending(), vec!["ledger"]);
        ledger.open();
        assert!(health.pending().is_empty());
    }
}
