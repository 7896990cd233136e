//! Statuses as this replica wrote them, where the API server kept less.
//!
//! An older CRD than the binary's (Helm never upgrades a chart's CRDs) has no place for a
//! status field added since, and the API server drops it from every write without an error.
//! The stored status then never equals the one a reconcile computes, so every reconcile would
//! read a change and write again: a Chatflow's `lastSyncTime` moved each time, a watch event,
//! another reconcile and an index recompile per object per sync interval. [`Written`] keeps what
//! was sent to an object whose stored status came back without part of it, and a reconcile
//! compares against that while the object is still at the version the write made.
//! `flowgate_crd_fields_missing` (see [`crate::crd::installed`]) says which fields are lost.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;

use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Per object (`object_key`): the resourceVersion a status write made, and the status sent.
#[derive(Default)]
pub(crate) struct Written(Mutex<HashMap<String, (String, Value)>>);

impl Written {
    /// After a status write of `sent` to the object at `key`, which the API server answered
    /// with `stored`: remembers `sent` when the stored status lacks part of it, and forgets the
    /// object otherwise.
    pub(crate) fn after_write(&self, key: String, stored: &Value, sent: Value) {
        let mut written = self.lock();
        let version = stored
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        match (version, stored.get("status")) {
            (Some(version), Some(status)) if !contains(status, &sent) => {
                written.insert(key, (version.to_string(), sent));
            }
            (Some(version), None) => {
                written.insert(key, (version.to_string(), sent));
            }
            _ => {
                written.remove(&key);
            }
        }
    }

    /// `obj` with the status last written to it laid over the stored one, while it is at the
    /// version that write made; `obj` itself otherwise (and when nothing was lost).
    pub(crate) fn as_written<'a, K>(&self, key: &str, obj: &'a K) -> Cow<'a, K>
    where
        K: Resource + Clone + Serialize + DeserializeOwned,
    {
        let sent = {
            let mut written = self.lock();
            match written.get(key) {
                Some((version, sent))
                    if obj.meta().resource_version.as_deref() == Some(version) =>
                {
                    sent.clone()
                }
                // Written since by someone else, or gone and made again: forgotten.
                Some(_) => {
                    written.remove(key);
                    return Cow::Borrowed(obj);
                }
                None => return Cow::Borrowed(obj),
            }
        };
        let Ok(mut json) = serde_json::to_value(obj) else {
            return Cow::Borrowed(obj);
        };
        if let Some(fields) = json.as_object_mut() {
            let status = fields.entry("status").or_insert(Value::Null);
            overlay(status, sent);
        }
        serde_json::from_value(json).map_or(Cow::Borrowed(obj), Cow::Owned)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Value)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether `stored` holds everything of `sent`: each field of an object (a `null` one counts as
/// absent), each element of an array of the same length, equal scalars.
fn contains(stored: &Value, sent: &Value) -> bool {
    match (stored, sent) {
        (_, Value::Null) => true,
        (Value::Object(stored), Value::Object(sent)) => sent.iter().all(|(name, value)| {
            value.is_null() || stored.get(name).is_some_and(|s| contains(s, value))
        }),
        (Value::Array(stored), Value::Array(sent)) => {
            stored.len() == sent.len() && stored.iter().zip(sent).all(|(s, v)| contains(s, v))
        }
        (stored, sent) => stored == sent,
    }
}

/// `sent` laid over `stored`: an object's fields merged one by one, anything else replaced.
fn overlay(stored: &mut Value, sent: Value) {
    match (stored, sent) {
        (Value::Object(stored), Value::Object(sent)) => {
            for (name, value) in sent {
                overlay(stored.entry(name).or_insert(Value::Null), value);
            }
        }
        (stored, sent) => *stored = sent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Chatflow, ChatflowStatus};
    use serde_json::json;

    fn chatflow(version: &str, status: Value) -> Chatflow {
        serde_json::from_value(json!({
            "apiVersion": "flowgate.io/v1alpha1",
            "kind": "Chatflow",
            "metadata": {"name": "a", "namespace": "team", "resourceVersion": version},
            "spec": {"flowiseId": "x"},
            "status": status,
        }))
        .expect("a chatflow")
    }

    fn stored(version: &str, status: Value) -> Value {
        json!({"metadata": {"resourceVersion": version}, "status": status})
    }

    const KEY: &str = "Chatflow/team/a";

    #[test]
    fn a_status_kept_whole_is_not_remembered() {
        let written = Written::default();
        let sent = json!({"flowiseId": "x", "conditions": [{"type": "Ready", "status": "True", "reason": "Synced", "message": "",
            "lastTransitionTime": "2026-11-26T09:00:00Z"}]});
        // Other managers' fields beside ours are kept too.
        let kept = json!({"flowiseId": "x", "createSentAt": "2026-11-26T09:00:00Z",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Synced", "message": "",
            "lastTransitionTime": "2026-11-26T09:00:00Z"}]});
        written.after_write(KEY.into(), &stored("7", kept.clone()), sent);
        let cf = chatflow("7", kept);
        assert!(matches!(written.as_written(KEY, &cf), Cow::Borrowed(_)));
    }

    #[test]
    fn a_field_the_server_dropped_reads_as_written_until_the_object_changes() {
        let written = Written::default();
        let sent = json!({"flowiseId": "x", "flowiseCreatedAt": "2026-11-26T10:00:00Z"});
        let dropped = json!({"flowiseId": "x", "createSentAt": "2026-11-26T09:00:00Z"});
        written.after_write(KEY.into(), &stored("7", dropped.clone()), sent);

        let cf = chatflow("7", dropped.clone());
        let seen = written.as_written(KEY, &cf);
        let status: &ChatflowStatus = seen.status.as_ref().expect("a status");
        assert_eq!(status.flowise_id.as_deref(), Some("x"));
        assert!(status.flowise_created_at.is_some(), "{status:?}");
        // Another manager's field is still read from the server.
        assert!(status.create_sent_at.is_some(), "{status:?}");

        // A later version (another writer, an edit) is read as stored.
        let later = chatflow("8", dropped);
        assert!(matches!(written.as_written(KEY, &later), Cow::Borrowed(_)));
        assert!(
            matches!(written.as_written(KEY, &cf), Cow::Borrowed(_)),
            "forgotten once the object moved on"
        );
        assert!(written.as_written("Chatflow/team/b", &cf).status.as_ref() == cf.status.as_ref());
    }

    #[test]
    fn a_write_kept_whole_forgets_an_earlier_loss() {
        let written = Written::default();
        let sent = json!({"flowiseId": "x", "flowiseCreatedAt": "t"});
        written.after_write(
            KEY.into(),
            &stored("7", json!({"flowiseId": "x"})),
            sent.clone(),
        );
        written.after_write(KEY.into(), &stored("9", sent.clone()), sent);
        let cf = chatflow("9", json!({"flowiseId": "x"}));
        assert!(matches!(written.as_written(KEY, &cf), Cow::Borrowed(_)));
    }

    #[test]
    fn containment_compares_objects_by_field_and_arrays_by_element() {
        let stored = json!({"a": 1, "b": [{"c": 2, "d": 3}], "e": "other manager"});
        assert!(contains(
            &stored,
            &json!({"a": 1, "b": [{"c": 2}], "z": null})
        ));
        assert!(!contains(&stored, &json!({"a": 2})));
        assert!(!contains(&stored, &json!({"f": 1})));
        assert!(!contains(&stored, &json!({"b": [{"c": 2}, {"c": 2}]})));
        assert!(!contains(&stored, &json!({"b": [{"x": 1}]})));
    }

    #[test]
    fn overlay_merges_objects_and_replaces_the_rest() {
        let mut stored = json!({"a": {"b": 1, "c": 2}, "d": [1, 2], "e": 5});
        overlay(&mut stored, json!({"a": {"c": 3, "x": 4}, "d": [9]}));
        assert_eq!(
            stored,
            json!({"a": {"b": 1, "c": 3, "x": 4}, "d": [9], "e": 5})
        );
    }
}
