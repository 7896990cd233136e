//! A controller whose status writes lose fields, as on an API server whose CRDs are older than
//! the binary (Helm never upgrades a chart's CRDs): the server keeps the rest and answers
//! without them. Reconciles must not read the loss as a change and write again each time.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use kube::Client;
use kube::client::Body;
use serde_json::json;

use crate::harness::*;
use crate::support;

/// A client to the real API server that leaves `fields` out of every Chatflow status write.
#[derive(Clone)]
struct DroppingStatusFields {
    real: Client,
    fields: &'static [&'static str],
}

impl tower_service::Service<http::Request<Body>> for DroppingStatusFields {
    type Response = http::Response<Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let path = parts.uri.path();
            let status_write = parts.method == http::Method::PATCH
                && path.contains("/chatflows/")
                && path.ends_with("/status");
            let body = if status_write {
                let mut doc: serde_json::Value =
                    serde_json::from_slice(&body.collect_bytes().await?)
                        .expect("a status write is JSON");
                if let Some(status) = doc.get_mut("status").and_then(|s| s.as_object_mut()) {
                    for field in this.fields {
                        status.remove(*field);
                    }
                }
                Body::from(serde_json::to_vec(&doc).expect("JSON"))
            } else {
                body
            };
            this.real.send(http::Request::from_parts(parts, body)).await
        })
    }
}

#[tokio::test]
async fn status_fields_an_older_crd_drops_are_not_rewritten_at_every_reconcile() {
    let (real, ns, api, _objects) = setup("cf-older-crd").await;
    let client = Client::new(
        DroppingStatusFields {
            real: real.clone(),
            fields: &["flowiseCreatedAt", "flowiseUpdatedAt"],
        },
        real.default_namespace(),
    );
    let name = support::unique("fgtest-older-crd");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let existing = flowise_chatflow(&name, None).await;
    let mut settings = settings(&ns);
    // A reconcile every second: each one would move lastSyncTime if it read a change.
    settings.sync_interval = Duration::from_secs(1);
    let controller = start(&client, settings);

    create(
        &api,
        chatflow_doc("older", json!({"flowiseId": existing.id})),
    )
    .await;
    let cf = wait_ready(&api, "older", "True", "Synced").await;
    let status = cf.status.expect("status");
    assert_eq!(status.flowise_id.as_deref(), Some(existing.id.as_str()));
    assert!(
        status.flowise_created_at.is_none(),
        "the server kept no flowiseCreatedAt: {status:?}"
    );

    // Settled: the create's reconciles and the write they made are over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = controller.metrics.controller.status_writes("Chatflow");
    let reconciles = controller.reconciles();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        controller.reconciles() >= reconciles + 2,
        "the chatflow was reconciled meanwhile ({reconciles} → {})",
        controller.reconciles()
    );
    assert_eq!(
        controller.metrics.controller.status_writes("Chatflow"),
        writes,
        "no status write: nothing changed but what the server drops"
    );
    let after = api.get("older").await.expect("readable");
    assert_eq!(
        after.status.and_then(|s| s.last_sync_time),
        status.last_sync_time,
        "lastSyncTime did not move"
    );
    controller.stop().await;
}
