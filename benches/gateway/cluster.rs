//! The run's resources in the API server. The harness stands in for the controller: it writes
//! each Chatflow's Ready status itself, so flowgate runs proxy-only (`--no-controller`).
//!
//! Namespaces carry the label `flowgate.io/bench=true` and are kept (empty) for the next run:
//! [`remove_leftovers`] clears objects left behind by an interrupted run before a new one starts,
//! and [`remove`] clears this run's at the end, so other users of the shared API server never
//! watch 10,000 stale objects.

use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Resource};
use serde_json::{Value, json};

use flowgate::crd::{Chatflow, ChatflowAccess, CreditPolicy};

const MANAGER: &str = "flowgate-bench";
const LABEL: &str = "flowgate.io/bench";
/// Requests in flight while loading objects.
const PARALLEL: usize = 24;

/// Applies the CRDs and waits until they are served.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(MANAGER).force();
    for (_, crd) in flowgate::crd::definitions() {
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        api.patch(&name, &params, &Patch::Apply(&crd)).await?;
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .context("CRD not established within 30 s")??;
    }
    Ok(())
}

/// Creates the namespaces, labelled as the benchmark's.
pub async fn create_namespaces(client: &Client, names: &[String]) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let api = api.clone();
            async move {
                let ns: Namespace = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": name, "labels": {LABEL: "true"}}
                }))?;
                match api.create(&PostParams::default(), &ns).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                    Err(e) => Err(anyhow::Error::from(e)),
                }
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<()>()
        .await
}

/// Creates every object (Chatflows with their status), `PARALLEL` at a time.
pub async fn create(client: &Client, objects: Vec<Value>) -> anyhow::Result<()> {
    futures::stream::iter(objects)
        .map(|object| create_one(client.clone(), object))
        .buffer_unordered(PARALLEL)
        .try_collect::<()>()
        .await
}

async fn create_one(client: Client, mut object: Value) -> anyhow::Result<()> {
    let ns = object["metadata"]["namespace"]
        .as_str()
        .context("object without namespace")?
        .to_string();
    let name = object["metadata"]["name"]
        .as_str()
        .context("object without name")?
        .to_string();
    match object["kind"].as_str() {
        Some("Chatflow") => {
            let status = object
                .as_object_mut()
                .and_then(|o| o.remove("status"))
                .context("Chatflow without status")?;
            let api: Api<Chatflow> = Api::namespaced(client, &ns);
            api.create(&PostParams::default(), &serde_json::from_value(object)?)
                .await?;
            let patch =
                json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow", "status": status});
            api.patch_status(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        }
        Some("ChatflowAccess") => {
            let api: Api<ChatflowAccess> = Api::namespaced(client, &ns);
            api.create(&PostParams::default(), &serde_json::from_value(object)?)
                .await?;
        }
        Some("CreditPolicy") => {
            let api: Api<CreditPolicy> = Api::namespaced(client, &ns);
            api.create(&PostParams::default(), &serde_json::from_value(object)?)
                .await?;
        }
        other => anyhow::bail!("unexpected kind {other:?}"),
    }
    Ok(())
}

/// Server-side applies one ChatflowAccess (create or update).
pub async fn apply_access(client: &Client, object: &Value) -> anyhow::Result<()> {
    let ns = object["metadata"]["namespace"]
        .as_str()
        .context("namespace")?;
    let name = object["metadata"]["name"].as_str().context("name")?;
    let api: Api<ChatflowAccess> = Api::namespaced(client.clone(), ns);
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await?;
    Ok(())
}

/// Deletes one ChatflowAccess.
pub async fn delete_access(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    let api: Api<ChatflowAccess> = Api::namespaced(client.clone(), ns);
    api.delete(name, &DeleteParams::default()).await?;
    Ok(())
}

/// Deletes every flowgate object in `namespaces` (the namespaces stay, for the next run).
pub async fn remove(client: &Client, namespaces: &[String]) -> anyhow::Result<()> {
    futures::stream::iter(namespaces.iter().cloned())
        .map(|ns| remove_namespace(client.clone(), ns))
        .buffer_unordered(8)
        .try_collect::<()>()
        .await
}

async fn remove_namespace(client: Client, ns: String) -> anyhow::Result<()> {
    let params = DeleteParams::default();
    let all = ListParams::default();
    delete_all::<ChatflowAccess>(&client, &ns, &params, &all).await?;
    delete_all::<CreditPolicy>(&client, &ns, &params, &all).await?;
    delete_all::<Chatflow>(&client, &ns, &params, &all).await
}

async fn delete_all<K>(
    client: &Client,
    ns: &str,
    params: &DeleteParams,
    all: &ListParams,
) -> anyhow::Result<()>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match api.delete_collection(params, all).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes the objects of earlier runs that did not get to clean up.
pub async fn remove_leftovers(client: &Client) -> anyhow::Result<usize> {
    let api: Api<Namespace> = Api::all(client.clone());
    let labelled = api
        .list(&ListParams::default().labels(&format!("{LABEL}=true")))
        .await?;
    let names: Vec<String> = labelled
        .items
        .into_iter()
        .filter_map(|ns| ns.metadata.name)
        .collect();
    remove(client, &names).await?;
    Ok(names.len())
}
