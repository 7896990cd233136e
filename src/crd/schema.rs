//! Each kind's OpenAPI schema, checked as the API server checks it: where there is no API
//! server to refuse an object (`flowgate check`, `flowgate run --resources-dir`), an object it
//! would refuse is refused here, with the same bounds (`minItems`, `pattern`, `maximum`, …).
//!
//! The schema is the one generated into the CRDs, compiled once with the `jsonschema` crate
//! (Draft 4, which OpenAPI v3's schema object extends). What differs from JSON Schema is done as
//! the API server does it: a `null` field is pruned before validation (or allowed, where the
//! field is `nullable`: either way it passes), `status` is not validated (the status subresource
//! ignores it on create and update), and formats are not checked here (flowgate's own times
//! carry a pattern, and the types parse the rest). `metadata.name` must be a DNS subdomain and
//! `metadata.namespace` a DNS label, as for every custom resource.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::LocationSegment;
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

/// Longest value quoted in a message.
const QUOTED: usize = 80;

/// One kind's schema.
pub struct Schema {
    openapi: Value,
    validator: Validator,
}

static SCHEMAS: LazyLock<BTreeMap<String, Schema>> = LazyLock::new(|| {
    super::definitions()
        .into_iter()
        .filter_map(|(_, crd)| {
            let version = crd.spec.versions.into_iter().find(|v| v.served)?;
            let openapi = serde_json::to_value(version.schema?.open_api_v3_schema?).ok()?;
            // The schema is generated from flowgate's own types: one that does not compile is
            // a bug the tests of this module catch.
            let validator = jsonschema::draft4::options()
                .should_validate_formats(false)
                .build(&openapi)
                .ok()?;
            Some((crd.spec.names.kind, Schema { openapi, validator }))
        })
        .collect()
});

/// The schema of a flowgate kind (`Chatflow`, `ChatflowAccess`, `CreditPolicy`).
pub fn for_kind(kind: &str) -> Option<&'static Schema> {
    SCHEMAS.get(kind)
}

impl Schema {
    /// The OpenAPI schema, as in the CRD.
    pub fn openapi(&self) -> &Value {
        &self.openapi
    }

    /// What the API server would refuse in `object`, one message per violation, each starting
    /// with the field's path (`.spec.subjects: must have at least 1 item (has 0)`). Fields the
    /// schema does not know are not violations (the API server drops them).
    pub fn violations(&self, object: &Value) -> Vec<String> {
        let mut object = object.clone();
        if let Some(fields) = object.as_object_mut() {
            fields.remove("status");
        }
        prune_nulls(&mut object);
        let mut found = names(&object);
        found.extend(self.validator.iter_errors(&object).map(|error| {
            let mut path = path(&error);
            if let ValidationErrorKind::Required { property } = error.kind() {
                path.push('.');
                path.push_str(property.as_str().unwrap_or_default());
            }
            format!("{path}: {}", message(&error))
        }));
        found
    }
}

/// Removes every `null` object field, at any depth, as the API server prunes them.
fn prune_nulls(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            fields.retain(|_, v| !v.is_null());
            fields.values_mut().for_each(prune_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(prune_nulls),
        _ => {}
    }
}

/// `metadata.name` and `metadata.namespace`, as the API server checks them.
fn names(object: &Value) -> Vec<String> {
    let mut found = Vec::new();
    match object.pointer("/metadata/name") {
        None => found.push(".metadata.name: required".to_string()),
        Some(Value::String(name)) => {
            if let Err(why) = dns_subdomain(name) {
                found.push(format!(
                    ".metadata.name: {} {why}",
                    quoted(&object["metadata"]["name"])
                ));
            }
        }
        Some(_) => {}
    }
    if let Some(Value::String(ns)) = object.pointer("/metadata/namespace")
        && let Err(why) = dns_label(ns)
    {
        found.push(format!(
            ".metadata.namespace: {} {why}",
            quoted(&object["metadata"]["namespace"])
        ));
    }
    found
}

/// RFC 1123 subdomain: at most 253 characters, dot-separated labels of lowercase letters,
/// digits and `-`, starting and ending with a letter or digit.
pub fn dns_subdomain(name: &str) -> Result<(), &'static str> {
    if name.len() > 253 {
        return Err("is longer than 253 characters");
    }
    if name.split('.').all(|label| dns_label(label).is_ok()) {
        Ok(())
    } else {
        Err(
            "is not a DNS subdomain (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)",
        )
    }
}

/// RFC 1123 label: at most 63 lowercase letters, digits and `-`, starting and ending with a
/// letter or digit.
pub fn dns_label(name: &str) -> Result<(), &'static str> {
    let bytes = name.as_bytes();
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if name.len() > 63 {
        Err("is longer than 63 characters")
    } else if edge(bytes.first())
        && edge(bytes.last())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        Ok(())
    } else {
        Err(
            "is not a DNS label (lowercase letters, digits and '-', starting and ending with a letter or digit)",
        )
    }
}

/// The violation's place, as `.spec.subjects[0].user` (empty for the object itself).
fn path(error: &ValidationError<'_>) -> String {
    let mut path = String::new();
    for segment in error.instance_path().iter() {
        match segment {
            LocationSegment::Property(name) => {
                path.push('.');
                path.push_str(&name);
            }
            LocationSegment::Index(i) => path.push_str(&format!("[{i}]")),
        }
    }
    path
}

/// What is wrong, in the API server's terms, quoting at most [`QUOTED`] characters of the value.
fn message(error: &ValidationError<'_>) -> String {
    let value = error.instance();
    let plural = |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let count = |v: &Value| match v {
        Value::Array(items) => items.len() as u64,
        Value::String(s) => s.chars().count() as u64,
        _ => 0,
    };
    match error.kind() {
        ValidationErrorKind::Required { .. } => "required".into(),
        ValidationErrorKind::MinItems { limit } => format!(
            "must have at least {} (has {})",
            plural(*limit, "item"),
            count(value)
        ),
        ValidationErrorKind::MaxItems { limit } => format!(
            "must have at most {} (has {})",
            plural(*limit, "item"),
            count(value)
        ),
        ValidationErrorKind::MinLength { limit } => format!(
            "must be at least {} long (is {})",
            plural(*limit, "character"),
            count(value)
        ),
        ValidationErrorKind::MaxLength { limit } => format!(
            "must be at most {} long (is {})",
            plural(*limit, "character"),
            count(value)
        ),
        ValidationErrorKind::Minimum { limit } => {
            format!("must be at least {} (is {})", number(limit), quoted(value))
        }
        ValidationErrorKind::Maximum { limit } => {
            format!("must be at most {} (is {})", number(limit), quoted(value))
        }
        ValidationErrorKind::Pattern { pattern } => {
            format!("{} does not match {pattern}", quoted(value))
        }
        ValidationErrorKind::Enum { options } => {
            format!("{} is not one of {}", quoted(value), quoted(options))
        }
        ValidationErrorKind::Type {
            kind: TypeKind::Single(kind),
        } => format!("must be of type {kind} (is {})", quoted(value)),
        _ => truncated(error.to_string()),
    }
}

/// A limit as the schema means it: `100`, not the `100.0` the generator writes.
fn number(limit: &Value) -> String {
    match limit.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 2f64.powi(63) => format!("{}", f as i64),
        _ => limit.to_string(),
    }
}

fn quoted(value: &Value) -> String {
    truncated(value.to_string())
}

fn truncated(mut text: String) -> String {
    if let Some((at, _)) = text.char_indices().nth(QUOTED) {
        text.truncate(at);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn access(spec: Value) -> Value {
        json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess",
            "metadata": {"name": "support", "namespace": "team-a"},
            "spec": spec,
        })
    }

    #[test]
    fn every_kind_has_a_schema_that_compiles() {
        for kind in ["Chatflow", "ChatflowAccess", "CreditPolicy"] {
            assert!(for_kind(kind).is_some(), "{kind}");
        }
        assert!(for_kind("Pod").is_none());
    }

    #[test]
    fn bounds_are_reported_with_their_paths() {
        let schema = for_kind("ChatflowAccess").expect("schema");
        let good = access(json!({"chatflows": ["support-bot"], "subjects": [{"user": "a@x"}]}));
        assert_eq!(schema.violations(&good), Vec::<String>::new());
        let bad = access(json!({"chatflows": ["Support_Bot"], "subjects": []}));
        let found = schema.violations(&bad);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found
                .iter()
                .any(|f| f.starts_with(".spec.chatflows[0]: \"Support_Bot\" does not match ^")),
            "{found:?}"
        );
        assert!(
            found.contains(&".spec.subjects: must have at least 1 item (has 0)".to_string()),
            "{found:?}"
        );
        let missing = access(json!({"chatflows": ["support-bot"]}));
        assert_eq!(schema.violations(&missing), [".spec.subjects: required"]);
    }

    #[test]
    fn numbers_and_lengths_name_their_limits() {
        let schema = for_kind("CreditPolicy").expect("schema");
        let policy = json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "CreditPolicy",
            "metadata": {"name": "p"},
            "spec": {
                "chatflows": ["*"],
                "budget": {"credits": 10, "period": "Daily"},
                "alertAtPercent": [150],
            },
        });
        let found = schema.violations(&policy);
        assert_eq!(
            found,
            [".spec.alertAtPercent[0]: must be at most 100 (is 150)"]
        );
        let long = "x".repeat(600);
        let chatflow = json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow",
            "metadata": {"name": "c"},
            "spec": {"flowiseName": long},
        });
        let found = for_kind("Chatflow").expect("schema").violations(&chatflow);
        assert_eq!(
            found,
            [".spec.flowiseName: must be at most 255 characters long (is 600)"]
        );
        let chatflow = json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow",
            "metadata": {"name": "c"},
            "spec": {"flowiseId": long},
        });
        let found = for_kind("Chatflow").expect("schema").violations(&chatflow);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("xxx… does not match"), "{found:?}");
        assert!(found[0].len() < 250, "{found:?}");
    }

    #[test]
    fn nulls_and_status_pass_as_the_api_server_prunes_them() {
        let schema = for_kind("ChatflowAccess").expect("schema");
        let object = json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess",
            "metadata": {"name": "a", "labels": null},
            "spec": {"chatflows": ["x"], "subjects": [{"user": "u", "group": null}], "rateLimit": null},
            "status": {"anything": [1, 2]},
        });
        assert_eq!(schema.violations(&object), Vec::<String>::new());
    }

    #[test]
    fn names_must_be_dns_names() {
        let schema = for_kind("ChatflowAccess").expect("schema");
        let mut object = access(json!({"chatflows": ["x"], "subjects": [{"user": "u"}]}));
        object["metadata"] = json!({"name": "Team_A", "namespace": "a.b"});
        let found = schema.violations(&object);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with(".metadata.name: \"Team_A\" is not a DNS subdomain"));
        assert!(found[1].starts_with(".metadata.namespace: \"a.b\" is not a DNS label"));
        object["metadata"] = json!({"namespace": "a"});
        assert_eq!(schema.violations(&object), [".metadata.name: required"]);
        assert!(dns_subdomain("a.b-c.d9").is_ok());
        assert!(dns_subdomain(&"a".repeat(254)).is_err());
        assert!(dns_subdomain("a..b").is_err());
        assert!(dns_label("-a").is_err());
        assert!(dns_label(&"a".repeat(64)).is_err());
    }
}
