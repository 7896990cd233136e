//! Helpers of the chart tests (tests/chart*.rs, tests/rbac.rs): real Helm through
//! scripts/helm.sh, and reading back what it stored in the local API server.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use kube::api::Api;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::support;

pub const CHART: &str = "charts/flowgate";

/// Runs `scripts/helm.sh ARGS`: stdout on success, stderr on failure.
pub fn helm(args: &[&str]) -> Result<String, String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(repo.join("scripts/helm.sh"))
        .args(args)
        .current_dir(repo)
        .output()
        .expect("scripts/helm.sh runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn release_json(out: String) -> Value {
    serde_json::from_str(&out).expect("scripts/helm.sh prints the release as JSON")
}

/// An installed release; `helm uninstall`ed when dropped, also when the test panics. The bare
/// API server has no namespace controller: a release left behind keeps its Service's cluster IP
/// (the local cluster has 253) and its cluster-wide ClusterRole for good.
pub struct Release {
    name: String,
    ns: String,
    /// What `helm install -o json` printed.
    pub json: Value,
}

impl Drop for Release {
    fn drop(&mut self) {
        // A test that uninstalled on purpose gets "not found" here; anything else is worth seeing.
        if let Err(error) = helm(&["uninstall", &self.name, "-n", &self.ns])
            && !error.contains("not found")
        {
            eprintln!("helm uninstall {}: {error}", self.name);
        }
    }
}

/// `values` with a way to verify callers when they give none: the chart refuses a proxy without
/// one, and most tests here are about something else. `auth.serviceAccountAudience` needs no
/// Secret. A test that sets `auth` itself (even `{}`) gets exactly its own.
fn with_auth(values: &Value) -> Value {
    let mut values = values.clone();
    if values.get("auth").is_none() {
        values["auth"] = serde_json::json!({"serviceAccountAudience": "flowgate"});
    }
    values
}

/// `helm install RELEASE charts/flowgate -n NS` with `values` (see [`with_auth`]); the release,
/// or Helm's error.
pub fn install(release: &str, ns: &str, values: &Value) -> Result<Release, String> {
    let values = with_auth(values).to_string();
    let json =
        helm(&["install", release, CHART, "-n", ns, "--set-json", &values]).map(release_json)?;
    Ok(Release {
        name: release.to_owned(),
        ns: ns.to_owned(),
        json,
    })
}

/// Helm's error for an install that must be refused; panics (briefly) when it succeeds.
pub fn refused(release: &str, ns: &str, values: &Value) -> String {
    match install(release, ns, values) {
        Err(error) => error,
        Ok(release) => panic!(
            "{values} was installed (revision {}) but must be refused",
            release.json["revision"]
        ),
    }
}

pub fn upgrade(release: &str, ns: &str, values: &Value) -> Result<Value, String> {
    let values = with_auth(values).to_string();
    helm(&["upgrade", release, CHART, "-n", ns, "--set-json", &values]).map(release_json)
}

/// The manifest `values` render to (rendered by a throwaway install on the local API server).
pub fn template(release: &str, values: &Value) -> Vec<Value> {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: rendering the chart needs the local API server. Run \
         scripts/test.sh, or `eval \"$(scripts/local-cluster.sh env)\"` after `scripts/local-cluster.sh start`."
    );
    let values = with_auth(values).to_string();
    let manifest = helm(&[
        "template",
        CHART,
        "--release",
        release,
        "--set-json",
        &values,
    ])
    .unwrap_or_else(|e| panic!("the chart renders: {e}"));
    serde_saphyr::from_multiple::<Value>(&manifest)
        .expect("the manifest is YAML")
        .into_iter()
        .filter(|doc| doc.is_object())
        .collect()
}

/// A unique release name for tests that do not install (cluster-scoped names must not clash).
pub fn unique_release(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{:x}", nanos & 0xffff_ffff_ffff)
}

pub async fn get<K>(api: Api<K>, name: &str) -> Value
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    let obj = api
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("{name} is stored: {e}"));
    serde_json::to_value(obj).expect("object as JSON")
}

pub async fn exists<K>(api: Api<K>, name: &str) -> bool
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.expect("GET works").is_some()
}

/// The PodDisruptionBudget through kubectl, which picks the version the server serves
/// (policy/v1beta1 on Kubernetes 1.20, policy/v1 from 1.21).
pub fn pdb(ns: &str, name: &str) -> Option<Value> {
    let out = support::kubectl(&["get", "pdb", "-n", ns, "-o", "json"]);
    let list: Value = serde_json::from_str(&out).expect("kubectl prints JSON");
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|p| p["metadata"]["name"] == name)
        .cloned()
}

/// The container's environment as name → EnvVar.
pub fn env_of(container: &Value) -> BTreeMap<String, Value> {
    container["env"]
        .as_array()
        .expect("env is a list")
        .iter()
        .map(|e| (e["name"].as_str().expect("name").to_string(), e.clone()))
        .collect()
}

pub fn env_value(env: &BTreeMap<String, Value>, name: &str) -> String {
    env.get(name)
        .unwrap_or_else(|| panic!("{name} is set: {env:?}"))["value"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} has a plain value"))
        .to_string()
}

/// The prometheus-operator objects of `kind` (`ServiceMonitor`, `PrometheusRule`) in `ns`.
pub fn monitoring_objects(
    client: &kube::Client,
    ns: &str,
    kind: &str,
) -> Api<kube::api::DynamicObject> {
    let resource = kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
        "monitoring.coreos.com",
        "v1",
        kind,
    ));
    Api::namespaced_with(client.clone(), ns, &resource)
}

/// A stand-in for one of prometheus-operator's CRDs (`ServiceMonitor`, `PrometheusRule`; not
/// available offline): enough for the API server to serve the kind, so the chart's object is
/// stored and read back.
pub async fn install_monitoring_crd(client: &kube::Client, kind: &str) {
    let singular = kind.to_lowercase();
    let plural = format!("{singular}s");
    let name = format!("{plural}.monitoring.coreos.com");
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": singular,
                      "listKind": format!("{kind}List")},
            "versions": [{"name": "v1", "served": true, "storage": true,
                          "schema": {"openAPIV3Schema": {"type": "object",
                                     "x-kubernetes-preserve-unknown-fields": true}}}],
        },
    }))
    .expect("CRD literal");
    support::apply_crd(client, &crd).await;
}
