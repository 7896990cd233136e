//! The cluster's CRDs against this binary's.
//!
//! Helm installs a chart's CRDs on the first install only and never upgrades them, so a new
//! flowgate can run on its older CRDs. The API server then drops every field those CRDs do not
//! know from every object, without an error: a new setting a user writes (a `rateLimit`, a
//! budget override) is simply not there when flowgate reads the object, and a status field
//! flowgate writes is lost. flowgate cannot see a dropped field in an object, but it can see its
//! place missing from the installed schema: [`spawn`] compares the two at start and every
//! [`EVERY`], logs an error naming the fields and the fix, and sets
//! `flowgate_crd_fields_missing{crd}`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::Api;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How often the installed CRDs are compared again (they change only when someone applies them).
pub const EVERY: Duration = Duration::from_secs(300);

/// The fields of `ours` that `theirs` (a CRD of the same name, as installed) has no place for,
/// as paths (`spec.rateLimit.burst`, `spec.subjects[].serviceAccount`), or the versions of ours
/// it does not serve at all. Empty when `theirs` knows everything `ours` does.
pub fn missing_fields(
    ours: &CustomResourceDefinition,
    theirs: &CustomResourceDefinition,
) -> Vec<String> {
    let mut missing = Vec::new();
    for version in &ours.spec.versions {
        let installed = theirs
            .spec
            .versions
            .iter()
            .find(|v| v.name == version.name && v.served);
        let Some(installed) = installed else {
            missing.push(format!("version {} (not served)", version.name));
            continue;
        };
        let schema = |v: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion| {
            v.schema.as_ref().and_then(|s| s.open_api_v3_schema.clone())
        };
        if let (Some(ours), Some(theirs)) = (schema(version), schema(installed)) {
            compare(&ours, &theirs, "", &mut missing);
        }
    }
    missing
}

/// Adds to `missing` the paths under `path` that `ours` has and `theirs` does not. Where
/// `theirs` keeps unknown fields (`x-kubernetes-preserve-unknown-fields`, or any key as
/// `additionalProperties: true`) a field it does not list is kept, and one it lists is
/// compared with its schema there (the API server prunes inside it); where it is a map, each
/// of our fields is compared with its values' schema; where ours keeps unknown fields and
/// theirs does not, they are dropped.
fn compare(
    ours: &JSONSchemaProps,
    theirs: &JSONSchemaProps,
    path: &str,
    missing: &mut Vec<String>,
) {
    let keeps_unknown = |s: &JSONSchemaProps| {
        s.x_kubernetes_preserve_unknown_fields == Some(true)
            || matches!(
                s.additional_properties,
                Some(JSONSchemaPropsOrBool::Bool(true))
            )
    };
    let open = keeps_unknown(theirs);
    if keeps_unknown(ours) && !open {
        missing.push(format!("{path} (fields of any name)"));
    }
    let empty = BTreeMap::new();
    let their_properties = theirs.properties.as_ref().unwrap_or(&empty);
    let their_values = match &theirs.additional_properties {
        Some(JSONSchemaPropsOrBool::Schema(values)) => Some(values.as_ref()),
        _ => None,
    };
    for (name, schema) in ours.properties.iter().flatten() {
        let at = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        match their_properties.get(name).or(their_values) {
            Some(installed) => compare(schema, installed, &at, missing),
            None if !open => missing.push(at),
            None => {}
        }
    }
    if let (
        Some(JSONSchemaPropsOrArray::Schema(ours)),
        Some(JSONSchemaPropsOrArray::Schema(theirs)),
    ) = (&ours.items, &theirs.items)
    {
        compare(ours, theirs, &format!("{path}[]"), missing);
    }
    if let (
        Some(JSONSchemaPropsOrBool::Schema(ours)),
        Some(JSONSchemaPropsOrBool::Schema(theirs)),
    ) = (&ours.additional_properties, &theirs.additional_properties)
    {
        compare(ours, theirs, &format!("{path}{{}}"), missing);
    }
}

/// What the cluster's copy of `ours` lacks ([`missing_fields`]); a CRD not installed lacks
/// everything, reported as such.
pub async fn check(
    client: &kube::Client,
    ours: &CustomResourceDefinition,
) -> Result<Vec<String>, kube::Error> {
    let name = ours.metadata.name.clone().unwrap_or_default();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    Ok(match api.get_opt(&name).await? {
        Some(theirs) => missing_fields(ours, &theirs),
        None => vec!["the whole CRD (not installed)".to_string()],
    })
}

/// Compares the cluster's three CRDs with this binary's now and every [`EVERY`] until
/// `shutdown` ([`report`]).
pub fn spawn(client: kube::Client, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let ours = super::definitions();
        let mut readable = vec![None; ours.len()];
        loop {
            for ((_, crd), was) in ours.iter().zip(readable.iter_mut()) {
                let name = crd.metadata.name.clone().unwrap_or_default();
                let result = check(&client, crd).await;
                *was = Some(report(&metrics, &name, &result, *was));
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(EVERY) => {}
            }
        }
    });
}

/// Reports one comparison of `crd`: missing fields are logged as an error (with the fix) at
/// every round and counted in `flowgate_crd_fields_missing{crd}`; a CRD that cannot be read
/// (no `get` on it, the API server unreachable) is logged as a warning when it stops being
/// readable (`was_readable` not `Some(false)`), has no such series while unreadable, and
/// `flowgate_crd_readable{crd}` says which. Returns whether it was read.
fn report(
    metrics: &Metrics,
    crd: &str,
    result: &Result<Vec<String>, kube::Error>,
    was_readable: Option<bool>,
) -> bool {
    match result {
        Ok(missing) => {
            metrics.crd_fields_missing(crd, Some(missing.len()));
            if !missing.is_empty() {
                tracing::error!(
                    crd,
                    missing = %missing.join(", "),
                    "the installed CRD is older than this flowgate: the API server drops these \
                     fields from every object it stores (an apply that validates strictly, as \
                     kubectl's does, is refused instead); apply this version's CRDs (kubectl \
                     apply --server-side --force-conflicts -f crds/, or flowgate crd | kubectl \
                     apply --server-side --force-conflicts -f -), then the objects again"
                );
            } else if was_readable == Some(false) {
                tracing::info!(crd, "the installed CRD can be read again; it is current");
            }
            true
        }
        Err(error) => {
            metrics.crd_fields_missing(crd, None);
            if was_readable != Some(false) {
                tracing::warn!(
                    crd,
                    error = %crate::telemetry::report(error),
                    "cannot read the installed CRD to compare it with this flowgate's (the \
                     chart grants get on flowgate's three); tried again every 5 min"
                );
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    use crate::crd::{ChatflowAccess, CreditPolicy};

    /// `crd` with the field at `path` (dot-separated, `[]` into arrays) removed.
    fn without(crd: CustomResourceDefinition, path: &str) -> CustomResourceDefinition {
        let mut json = serde_json::to_value(&crd).expect("json");
        let mut at = &mut json["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let parts: Vec<&str> = path.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            let (name, into_items) = match part.strip_suffix("[]") {
                Some(name) => (name, true),
                None => (*part, false),
            };
            at = &mut at["properties"][name];
            if into_items {
                at = &mut at["items"];
            }
        }
        let last = parts[parts.len() - 1];
        let removed = at["properties"]
            .as_object_mut()
            .and_then(|p| p.remove(last));
        assert!(removed.is_some(), "{path} is in the CRD");
        serde_json::from_value(json).expect("a CRD still")
    }

    #[test]
    fn an_unreadable_crd_has_no_count_of_missing_fields_until_it_is_read_again() {
        let metrics = Metrics::new();
        let crd = "chatflowaccesses.flowgate.io";
        let scrape = || metrics.encode().expect("encodes");
        let series = |name: &str, value: u8| format!("{name}{{crd=\"{crd}\"}} {value}");
        let forbidden = || {
            Err(kube::Error::Api(
                kube::core::Status::failure("forbidden", "Forbidden")
                    .with_code(403)
                    .boxed(),
            ))
        };
        let stale = Ok(vec!["spec.rateLimit".to_string()]);
        assert!(report(&metrics, crd, &stale, None));
        assert!(scrape().contains(&series("flowgate_crd_fields_missing", 1)));
        assert!(scrape().contains(&series("flowgate_crd_readable", 1)));
        assert!(!report(&metrics, crd, &forbidden(), Some(true)));
        assert!(
            !scrape().contains("flowgate_crd_fields_missing{"),
            "{}",
            scrape()
        );
        assert!(scrape().contains(&series("flowgate_crd_readable", 0)));
        assert!(report(&metrics, crd, &Ok(Vec::new()), Some(false)));
        assert!(scrape().contains(&series("flowgate_crd_fields_missing", 0)));
        assert!(scrape().contains(&series("flowgate_crd_readable", 1)));
    }

    #[test]
    fn the_same_crd_lacks_nothing() {
        for (_, crd) in crate::crd::definitions() {
            assert_eq!(missing_fields(&crd, &crd), Vec::<String>::new());
        }
    }

    #[test]
    fn an_older_crd_lacks_the_fields_it_never_had() {
        let ours = ChatflowAccess::crd();
        let older = without(
            without(ours.clone(), "spec.rateLimit"),
            "spec.subjects[].serviceAccount",
        );
        assert_eq!(
            missing_fields(&ours, &older),
            ["spec.rateLimit", "spec.subjects[].serviceAccount"]
        );
        let older = without(ours.clone(), "status.conditions[].reason");
        assert_eq!(
            missing_fields(&ours, &older),
            ["status.conditions[].reason"]
        );
        // The other way round (a newer CRD installed under an older flowgate) drops nothing.
        assert!(missing_fields(&older, &ours).is_empty());
    }

    #[test]
    fn a_version_not_served_is_missing_whole_and_kept_unknown_fields_are_not() {
        let ours = CreditPolicy::crd();
        let mut other = ours.clone();
        other.spec.versions[0].name = "v1alpha0".to_string();
        assert_eq!(
            missing_fields(&ours, &other),
            ["version v1alpha1 (not served)"]
        );
        // `crd` keeping unknown fields under `spec`.
        let open_spec = |mut crd: CustomResourceDefinition| {
            let spec = crd.spec.versions[0]
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
                .and_then(|s| s.properties.as_mut())
                .and_then(|p| p.get_mut("spec"))
                .expect("a spec");
            spec.x_kubernetes_preserve_unknown_fields = Some(true);
            crd
        };
        let kept = open_spec(without(ours.clone(), "spec.budget"));
        assert!(missing_fields(&ours, &kept).is_empty());
        // ...but what it lists there is pruned by its own schema.
        let listed = open_spec(without(ours.clone(), "spec.budget.credits"));
        assert_eq!(missing_fields(&ours, &listed), ["spec.budget.credits"]);
        // A map in theirs (any key, values of one schema) drops none of our fields there.
        let access = ChatflowAccess::crd();
        let mut map = serde_json::to_value(&access).expect("json");
        let limit = &mut map["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["rateLimit"];
        assert!(
            limit["properties"].is_object(),
            "rateLimit lists its fields"
        );
        limit["properties"] = serde_json::Value::Null;
        limit["additionalProperties"] = serde_json::json!({"type": "string"});
        let map: CustomResourceDefinition = serde_json::from_value(map).expect("a CRD");
        assert!(missing_fields(&access, &map).is_empty());
        // The other way round: a place that keeps any field in ours (Flowise's flowData), a
        // fixed list of fields in theirs.
        let flowise = crate::crd::Chatflow::crd();
        let mut fixed = serde_json::to_value(&flowise).expect("json");
        let flow_data = &mut fixed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"]["definition"]["properties"]["flowData"];
        assert_eq!(flow_data["x-kubernetes-preserve-unknown-fields"], true);
        flow_data["x-kubernetes-preserve-unknown-fields"] = serde_json::Value::Null;
        let fixed: CustomResourceDefinition = serde_json::from_value(fixed).expect("a CRD");
        assert_eq!(
            missing_fields(&flowise, &fixed),
            ["spec.definition.flowData (fields of any name)"]
        );
    }
}
