//! [`Lenient`]: an object of a flowgate kind as the API server hands it over, read or not.
//!
//! The API server checks an object against its CRD when it is written, never again: an object
//! stored before a bound or pattern was added (an older flowgate's CRD, a hand-edited one) may be
//! one flowgate cannot read. Read strictly, that one object fails every list of its kind, and
//! with it the index's and the controller's view of all the others. Read through `Lenient`, it
//! is kept with its metadata and the reason, reported, and skipped.

use std::borrow::Cow;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::Resource;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

/// An object of kind `K`, or its metadata and why the rest could not be read.
#[derive(Debug, Clone)]
pub enum Lenient<K> {
    Read(Arc<K>),
    Unreadable(Box<Unreadable>),
}

/// What is known of an object that does not read as its kind.
#[derive(Debug, Clone)]
pub struct Unreadable {
    pub metadata: ObjectMeta,
    /// Where and why it does not read (`spec.budget.credits: invalid value: ...`).
    pub error: String,
    /// Its `status.conditions` and `status.observedGeneration`, where those read: what the
    /// controller last reported, so that it reports an unchanged problem only once.
    pub conditions: Vec<Condition>,
    pub observed_generation: Option<i64>,
    /// Its `spec` and `status` as stored (`null` when absent): what can still be said about it,
    /// such as the Flowise chatflow a Chatflow claims.
    pub spec: serde_json::Value,
    pub status: serde_json::Value,
}

/// `doc` read as `T`, or where and why not (`spec.budget.credits: invalid type: ...`).
pub fn read_as<T: DeserializeOwned>(doc: &serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(doc).map_err(|e| match e.path().to_string() {
        path if path == "." => e.inner().to_string(),
        path => format!("{path}: {}", e.inner()),
    })
}

impl<K> Lenient<K> {
    /// The object, when it reads.
    pub fn read(&self) -> Option<&Arc<K>> {
        match self {
            Self::Read(obj) => Some(obj),
            Self::Unreadable(_) => None,
        }
    }
}

impl<K: Resource<DynamicType = ()> + Clone> Resource for Lenient<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }

    fn api_version(dt: &()) -> Cow<'_, str> {
        K::api_version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Read(obj) => obj.meta(),
            Self::Unreadable(unreadable) => &unreadable.metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            // Fresh from the API server the Arc is not shared, and nothing is cloned.
            Self::Read(obj) => Arc::make_mut(obj).meta_mut(),
            Self::Unreadable(unreadable) => &mut unreadable.metadata,
        }
    }
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Lenient<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through a `Value`: a watch event may have been buffered by serde already, and a
        // second attempt needs the document again. Lists are rare; a watch event is one object.
        let mut value = serde_json::Value::deserialize(deserializer)?;
        let error = match read_as::<K>(&value) {
            Ok(obj) => return Ok(Self::Read(Arc::new(obj))),
            Err(error) => error,
        };
        // A status flowgate cannot read (another version's shape) is no reason to skip the
        // object: its controller writes the status again. Meanwhile the fields that do read
        // stand (a Chatflow's `flowiseId` and `conditions` are its claim on its Flowise
        // chatflow, which another namespace's claim must not take over): the fields that do
        // not are dropped one by one, and only a status that still does not read goes whole.
        if error.starts_with("status") {
            let stored = value.get("status").cloned();
            let mut last = error.clone();
            for _ in 0..MAX_STATUS_FIELDS_DROPPED {
                let Some(field) = status_field(&last) else {
                    break;
                };
                let dropped = value
                    .get_mut("status")
                    .and_then(serde_json::Value::as_object_mut)
                    .and_then(|status| status.remove(field));
                if dropped.is_none() {
                    break;
                }
                match read_as::<K>(&value) {
                    Ok(obj) => return Ok(Self::Read(Arc::new(obj))),
                    Err(next) if next.starts_with("status.") => last = next,
                    Err(_) => break,
                }
            }
            if let (Some(object), Some(stored)) = (value.as_object_mut(), stored) {
                object.insert("status".into(), stored);
            }
            let status = value.as_object_mut().and_then(|o| o.remove("status"));
            if let Ok(obj) = read_as::<K>(&value) {
                return Ok(Self::Read(Arc::new(obj)));
            }
            if let (Some(object), Some(status)) = (value.as_object_mut(), status) {
                object.insert("status".into(), status);
            }
        }
        // Metadata the API server wrote is always readable; without it there is nothing to
        // report, and the list fails as it would have.
        let metadata = value
            .get("metadata")
            .map(ObjectMeta::deserialize)
            .transpose()
            .map_err(D::Error::custom)?
            .ok_or_else(|| D::Error::custom(format!("no metadata ({error})")))?;
        let mut take = |name: &str| {
            value
                .as_object_mut()
                .and_then(|o| o.remove(name))
                .unwrap_or_default()
        };
        let (spec, status) = (take("spec"), take("status"));
        let field = |name| status.get(name);
        Ok(Self::Unreadable(Box::new(Unreadable {
            metadata,
            error,
            conditions: field("conditions")
                .and_then(|c| Vec::<Condition>::deserialize(c).ok())
                .unwrap_or_default(),
            observed_generation: field("observedGeneration").and_then(|g| g.as_i64()),
            spec,
            status,
        })))
    }
}

/// Most status fields dropped one by one before the whole status is.
const MAX_STATUS_FIELDS_DROPPED: usize = 8;

/// The top-level status field a [`read_as`] error names (`status.creditsUsed: invalid type…`
/// names `creditsUsed`; `status.conditions[0].type: …` names `conditions`).
fn status_field(error: &str) -> Option<&str> {
    let (path, _) = error.split_once(": ")?;
    let rest = path.strip_prefix("status.")?;
    let end = rest.find(['.', '[']).unwrap_or(rest.len());
    Some(&rest[..end]).filter(|field| !field.is_empty())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::crd::CreditPolicy;

    fn policy(credits: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "flowgate.io/v1alpha1",
            "kind": "CreditPolicy",
            "metadata": {"name": "budget", "namespace": "team-a", "generation": 3},
            "spec": {
                "chatflows": ["*"],
                "budget": {"credits": credits, "period": "Monthly"},
                "cost": {"perPrediction": 1},
            },
        })
    }

    #[test]
    fn a_readable_object_reads_as_its_kind() {
        let lenient: Lenient<CreditPolicy> =
            serde_json::from_value(policy(json!(100))).expect("parses");
        let read = lenient.read().expect("read");
        assert_eq!(read.spec.budget.credits, 100);
        assert_eq!(lenient.meta().generation, Some(3));
    }

    #[test]
    fn an_unreadable_object_keeps_its_metadata_and_why() {
        let list: kube::core::ObjectList<Lenient<CreditPolicy>> = serde_json::from_value(json!({
            "apiVersion": "flowgate.io/v1alpha1",
            "kind": "CreditPolicyList",
            "metadata": {"resourceVersion": "7"},
            "items": [policy(json!(-5)), policy(json!(5))],
        }))
        .expect("one bad object does not fail the list");
        let Lenient::Unreadable(bad) = &list.items[0] else {
            panic!("read a negative budget: {:?}", list.items[0]);
        };
        assert_eq!(bad.metadata.name.as_deref(), Some("budget"));
        assert!(
            bad.error.starts_with("spec.budget.credits: ") && bad.error.contains("-5"),
            "{}",
            bad.error
        );
        assert!(list.items[1].read().is_some());
    }

    #[test]
    fn a_watch_event_of_an_unreadable_object_is_delivered() {
        let event: kube::core::WatchEvent<Lenient<CreditPolicy>> =
            serde_json::from_value(json!({"type": "MODIFIED", "object": policy(json!("many"))}))
                .expect("parses");
        let kube::core::WatchEvent::Modified(Lenient::Unreadable(bad)) = event else {
            panic!("{event:?}");
        };
        assert!(bad.error.contains("many"), "{}", bad.error);
    }

    #[test]
    fn a_status_flowgate_cannot_read_is_dropped_not_the_object() {
        let mut doc = policy(json!(10));
        doc["status"] = json!({"creditsUsed": "lots", "conditions": "none"});
        let lenient: Lenient<CreditPolicy> = serde_json::from_value(doc).expect("parses");
        let read = lenient.read().expect("read without what does not read");
        let status = read.status.as_ref().expect("what reads of it");
        assert_eq!((status.credits_used, status.conditions.len()), (0, 0));
        let mut doc = policy(json!(10));
        doc["status"] = json!("not an object");
        let lenient: Lenient<CreditPolicy> = serde_json::from_value(doc).expect("parses");
        assert!(lenient.read().expect("read").status.is_none());

        let mut both = policy(json!(-1));
        both["status"] = json!({"creditsUsed": "lots"});
        let Ok(Lenient::Unreadable(bad)) = serde_json::from_value::<Lenient<CreditPolicy>>(both)
        else {
            panic!("a spec flowgate cannot read");
        };
        assert_eq!(bad.status["creditsUsed"], "lots", "kept as stored");
        assert_eq!(bad.spec["budget"]["credits"], -1);
    }

    /// A Chatflow whose status has a field of another version's shape keeps the rest of it:
    /// its `flowiseId` and Ready, its claim on the Flowise chatflow it holds.
    #[test]
    fn a_status_field_flowgate_cannot_read_costs_only_itself() {
        let doc = json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow",
            "metadata": {"name": "bot", "namespace": "team-b", "generation": 2},
            "spec": {"definition": {"flowData": {"nodes": [], "edges": []}}},
            "status": {"flowiseId": "x", "deployed": "yes", "apiKeyBound": {"new": "shape"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "Synced",
                    "message": "in sync", "observedGeneration": 2,
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        });
        let lenient: Lenient<crate::crd::Chatflow> = serde_json::from_value(doc).expect("parses");
        let read = lenient.read().expect("read");
        assert!(crate::index::rules::holds(read, "x"), "{read:?}");
        assert_eq!(
            crate::index::rules::claimed_flowise_id(read).as_deref(),
            Some("x")
        );
        assert_eq!(
            status_field("status.conditions[0].type: bad"),
            Some("conditions")
        );
        assert_eq!(status_field("status: invalid type"), None);
    }

    #[test]
    fn without_metadata_it_fails_as_before() {
        let error = serde_json::from_value::<Lenient<CreditPolicy>>(json!({"spec": 1}))
            .expect_err("nothing to report");
        assert!(error.to_string().contains("metadata"), "{error}");
    }
}
