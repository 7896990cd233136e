//! Wire types: the three custom resources of `flowgate.io/v1alpha1`.
//!
//! Everything here is data as the API server stores it. Meaning (which chatflows a rule resolves
//! to, whether a spec is valid) is decided later, in `index` and `controller`.

pub mod access;
pub mod chatflow;
pub mod conditions;
pub mod installed;
pub mod lenient;
pub mod policy;
pub mod schema;

pub use access::{
    ChatflowAccess, ChatflowAccessSpec, ChatflowAccessStatus, RateLimit, RatePeriod, Role,
    ServiceAccountRef, Subject,
};
pub use chatflow::{
    Chatflow, ChatflowDefinition, ChatflowSpec, ChatflowStatus, ChatflowType, DeletionPolicy,
    SecretKeyRef,
};
pub use lenient::Lenient;
pub use policy::{
    Budget, BudgetOverride, BudgetScope, Cost, CreditPolicy, CreditPolicySpec, CreditPolicyStatus,
    Period,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of every flowgate resource.
pub const GROUP: &str = "flowgate.io";
/// The `apiVersion` every flowgate resource has.
pub const API_VERSION: &str = "flowgate.io/v1alpha1";

/// The times flowgate reads (RFC 3339, at most nanoseconds, before the year 9999). The API
/// server's `date-time` format also takes ten or more fractional digits and the last day of
/// 9999 (`9999-12-31`, a common "never"), which flowgate cannot read (its latest time is
/// 9999-12-30T22:00Z): such an object would grant nothing, or fail the whole watch of its kind.
pub const TIME_PATTERN: &str = r"^([0-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})$";
/// Field manager for every server-side apply flowgate makes.
pub const FIELD_MANAGER: &str = "flowgate";
/// Finalizer on Chatflows that own a chatflow in Flowise.
pub const FINALIZER: &str = "flowgate.io/cleanup";
/// Label on Chatflows created by `--import-namespace`.
pub const LABEL_IMPORTED: &str = "flowgate.io/imported";
/// Label on ChatflowAccess objects written by the admin API (`flowgate.io/managed-by=admin-api`).
pub const LABEL_MANAGED_BY: &str = "flowgate.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`] for objects the admin API owns.
pub const MANAGED_BY_ADMIN_API: &str = "admin-api";

/// kubectl's copy of the last object it applied (client-side apply, as Argo CD and `kubectl apply`
/// do by default): the whole spec again, as a JSON string.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What a reflector of one of the kinds (the index's, the controller's) needs of it.
pub trait Watched:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// Drops what a watch delivers but flowgate never reads from a watched object: `managedFields` (a
/// tree as large as the fields each manager set) and kubectl's last-applied annotation. Each
/// reflector store holds every object, so with 10,000 ChatflowAccess objects these copies are
/// most of the store. Objects flowgate writes back are read fresh from the API server, never from
/// a store.
pub fn trim<K: kube::Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// The CRDs, each with the file name it has under `crds/`, in file-name order.
///
/// `flowgate crd` prints them in this order, so its output equals `cat crds/*.yaml`.
pub fn definitions() -> Vec<(String, CustomResourceDefinition)> {
    let mut crds: Vec<(String, CustomResourceDefinition)> =
        [Chatflow::crd(), ChatflowAccess::crd(), CreditPolicy::crd()]
            .into_iter()
            .map(|crd| {
                (
                    format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default()),
                    crd,
                )
            })
            .collect();
    crds.sort_by(|a, b| a.0.cmp(&b.0));
    crds
}

/// One CRD as the YAML document committed under `crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::ser::Error> {
    Ok(format!("---\n{}", serde_saphyr::to_string(crd)?))
}

/// A schema for free-form JSON the API server must keep as-is (Flowise `flowData`).
pub(crate) fn preserve_unknown_fields(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crds_match_the_generated_ones() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        for (file, crd) in definitions() {
            let generated = to_yaml(&crd).expect("CRD serializes");
            let committed = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
            assert!(
                committed == generated,
                "crds/{file} differs from `flowgate crd`; regenerate with `cargo run -- crd --out-dir crds`"
            );
        }
        let files = std::fs::read_dir(&dir).expect("crds/ exists").count();
        assert_eq!(
            files,
            definitions().len(),
            "crds/ holds exactly one file per kind"
        );
    }

    #[test]
    fn every_kind_is_in_the_flowgate_category_with_its_short_name() {
        let expected = [
            ("Chatflow", "cf"),
            ("ChatflowAccess", "cfa"),
            ("CreditPolicy", "cpol"),
        ];
        for (_, crd) in definitions() {
            let names = &crd.spec.names;
            let short = expected
                .iter()
                .find(|(kind, _)| *kind == names.kind)
                .map(|(_, short)| *short);
            assert_eq!(
                names.short_names.as_deref(),
                short.map(|s| vec![s.to_string()]).as_deref()
            );
            assert_eq!(
                names.categories.as_deref(),
                Some(&["flowgate".to_string()][..])
            );
            assert_eq!(crd.spec.scope, "Namespaced");
        }
    }

    #[test]
    fn trim_drops_managed_fields_and_the_last_applied_copy_only() {
        let mut access: ChatflowAccess = serde_json::from_value(serde_json::json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess",
            "metadata": {
                "name": "a", "namespace": "team", "uid": "u-1", "resourceVersion": "7",
                "labels": {"team": "x"},
                "annotations": {LAST_APPLIED: "{\"spec\":{}}", "owner": "ops"},
                "managedFields": [{"manager": "kubectl", "operation": "Update",
                                   "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {"chatflows": ["c"], "subjects": [{"user": "alice"}]}
        }))
        .expect("a valid ChatflowAccess");
        let untouched = access.spec.clone();
        trim(&mut access);
        let meta = &access.metadata;
        assert_eq!(meta.managed_fields, None);
        assert_eq!(
            meta.annotations
                .as_ref()
                .map(|a| a.keys().collect::<Vec<_>>()),
            Some(vec![&"owner".to_string()])
        );
        assert_eq!(meta.labels.as_ref().map(|l| l.len()), Some(1));
        assert_eq!(meta.resource_version.as_deref(), Some("7"));
        assert_eq!(access.spec, untouched);
    }
}
