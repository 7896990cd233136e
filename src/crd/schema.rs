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
//! `metadata.namespace` a DNS label, as for every custom resource, and labels, annotations and
//! finalizers have the syntax the API server checks ([`metadata`]). A whole number written as a
//! float (`credits: 5.0`) is an integer, as kubectl sends it ([`whole_numbers`]).

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

/// Removes every `null` object field, at any depth, as the API server prunes them (so that a
/// field whose children are all commented out gets its default, as in the cluster). Call it
/// before parsing into the resource types too.
pub fn prune_nulls(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            fields.retain(|_, v| !v.is_null());
            fields.values_mut().for_each(prune_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(prune_nulls),
        _ => {}
    }
}

/// Every whole number written as a float (`5.0`, `1e3`) within int64 made an integer, at any
/// depth: kubectl converts YAML to JSON through Go's float64, which writes `5`, so the API
/// server never sees the float. Call it before [`Schema::violations`] and before parsing into
/// flowgate's types.
pub fn whole_numbers(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0) {
                // Within int64, as the API server reads integers: a larger one stays a float.
                if (-(2f64.powi(63))..2f64.powi(63)).contains(&f) {
                    *value = Value::from(f as i64);
                }
            }
        }
        Value::Object(fields) => fields.values_mut().for_each(whole_numbers),
        Value::Array(items) => items.iter_mut().for_each(whole_numbers),
        _ => {}
    }
}

/// `metadata.name` and `metadata.namespace`, as the API server checks them. A `generateName`
/// stands in for the name (the API server makes one; `kubectl create` takes it), and an empty
/// namespace is none (the request's is used).
fn names(object: &Value) -> Vec<String> {
    let mut found = Vec::new();
    match object.pointer("/metadata/name") {
        None if object.pointer("/metadata/generateName").is_some() => {}
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
        && !ns.is_empty()
        && let Err(why) = dns_label(ns)
    {
        found.push(format!(
            ".metadata.namespace: {} {why}",
            quoted(&object["metadata"]["namespace"])
        ));
    }
    metadata(object, &mut found);
    found
}

/// The most bytes of annotations, keys and values together (`TotalAnnotationSizeLimitB`).
const ANNOTATIONS_LIMIT: usize = 256 * 1024;

/// Labels, annotations and finalizers, as the API server checks them (`ValidateLabels`,
/// `ValidateAnnotations`, `ValidateFinalizers`): keys and finalizers are qualified names, label
/// values at most 63 characters of the same alphabet.
fn metadata(object: &Value, found: &mut Vec<String>) {
    if let Some(Value::Object(labels)) = object.pointer("/metadata/labels") {
        for (key, value) in labels {
            if let Err(why) = qualified_name(key) {
                found.push(format!(
                    ".metadata.labels: {} {why}",
                    quoted(&Value::from(key.as_str()))
                ));
            }
            if let Value::String(value) = value
                && let Err(why) = label_value(value)
            {
                found.push(format!(
                    ".metadata.labels.{key}: {} {why}",
                    quoted(&Value::from(value.as_str()))
                ));
            }
        }
    }
    if let Some(Value::Object(annotations)) = object.pointer("/metadata/annotations") {
        let mut size = 0;
        for (key, value) in annotations {
            // Annotation keys are checked lowercased (`ValidateAnnotations`): `MyCorp.io/x` is
            // fine; label keys are not.
            if let Err(why) = qualified_name(&key.to_ascii_lowercase()) {
                found.push(format!(
                    ".metadata.annotations: {} {why}",
                    quoted(&Value::from(key.as_str()))
                ));
            }
            size += key.len() + value.as_str().map_or(0, str::len);
        }
        if size > ANNOTATIONS_LIMIT {
            found.push(format!(
                ".metadata.annotations: {size} bytes, more than the {ANNOTATIONS_LIMIT} the API server takes"
            ));
        }
    }
    if let Some(Value::Array(finalizers)) = object.pointer("/metadata/finalizers") {
        for finalizer in finalizers.iter().filter_map(Value::as_str) {
            if let Err(why) = qualified_name(finalizer) {
                found.push(format!(
                    ".metadata.finalizers: {} {why}",
                    quoted(&Value::from(finalizer))
                ));
            }
        }
    }
}

/// `prefix/name` or `name` (`IsQualifiedName`): the prefix a DNS subdomain, the name at most
/// 63 letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit.
pub fn qualified_name(key: &str) -> Result<(), &'static str> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() || dns_subdomain(prefix).is_err() {
                return Err("has a prefix that is not a DNS subdomain");
            }
            name
        }
        None => key,
    };
    if name.is_empty() || !name_characters(name) {
        return Err(
            "is not a qualified name (letters, digits, '-', '_' and '.', starting and ending with a letter or digit, after an optional DNS subdomain prefix and '/')",
        );
    }
    if name.len() > 63 {
        return Err("has a name part longer than 63 characters");
    }
    Ok(())
}

/// A label's value (`IsValidLabelValue`): empty, or at most 63 characters as a qualified name's
/// name part.
pub fn label_value(value: &str) -> Result<(), &'static str> {
    if value.len() > 63 {
        Err("is longer than 63 characters (a label value)")
    } else if value.is_empty() || name_characters(value) {
        Ok(())
    } else {
        Err(
            "is not a label value (empty, or letters, digits, '-', '_' and '.', starting and ending with a letter or digit)",
        )
    }
}

/// Letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit.
fn name_characters(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    edge(bytes.first())
        && edge(bytes.last())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// RFC 1123 subdomain as Kubernetes checks it (`IsDNS1123Subdomain`): at most 253 characters,
/// dot-separated parts of lowercase letters, digits and `-`, each starting and ending with a
/// letter or digit. Unlike a DNS label, a part may be longer than 63.
pub fn dns_subdomain(name: &str) -> Result<(), &'static str> {
    if name.len() > 253 {
        Err("is longer than 253 characters")
    } else if name.split('.').all(label_characters) {
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
    if name.len() > 63 {
        Err("is longer than 63 characters")
    } else if label_characters(name) {
        Ok(())
    } else {
        Err(
            "is not a DNS label (lowercase letters, digits and '-', starting and ending with a letter or digit)",
        )
    }
}

/// Lowercase letters, digits and `-`, starting and ending with a letter or digit.
fn label_characters(label: &str) -> bool {
    let bytes = label.as_bytes();
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    edge(bytes.first())
        && edge(bytes.last())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
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
    fn whole_floats_are_integers_as_kubectl_sends_them() {
        let mut value = json!({"a": 5.0, "b": [1e3, -2.0, 2.5], "c": {"d": 1.0e19}, "e": "5.0"});
        whole_numbers(&mut value);
        assert_eq!(
            value,
            json!({"a": 5, "b": [1000, -2, 2.5], "c": {"d": 1.0e19}, "e": "5.0"})
        );
        let schema = for_kind("CreditPolicy").expect("schema");
        let mut policy = json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "CreditPolicy",
            "metadata": {"name": "p"},
            "spec": {"chatflows": ["*"], "budget": {"credits": 5.0, "period": "Daily"}},
        });
        assert_eq!(
            schema.violations(&policy).len(),
            1,
            "a float is not an integer"
        );
        whole_numbers(&mut policy);
        assert_eq!(schema.violations(&policy), Vec::<String>::new());
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
        object["metadata"] = json!({"generateName": "team-", "namespace": ""});
        assert_eq!(schema.violations(&object), Vec::<String>::new());
        // A part of a subdomain may be longer than a label (the API server takes 253 in one).
        let long = "a".repeat(100);
        object["metadata"] = json!({"name": long, "namespace": "a"});
        assert_eq!(schema.violations(&object), Vec::<String>::new());
        assert!(dns_subdomain("a.b-c.d9").is_ok());
        assert!(dns_subdomain(&"a".repeat(254)).is_err());
        assert!(dns_subdomain("a..b").is_err());
        assert!(dns_label("-a").is_err());
        assert!(dns_label(&"a".repeat(64)).is_err());
    }

    #[test]
    fn labels_annotations_and_finalizers_have_the_api_servers_syntax() {
        let schema = for_kind("ChatflowAccess").expect("schema");
        let mut object = access(json!({"chatflows": ["x"], "subjects": [{"user": "u"}]}));
        object["metadata"] = json!({"name": "team", "namespace": "a",
            "labels": {"app.kubernetes.io/version": "1.2.3", "team": "support", "empty": "",
                       "flowgate.io/imported": "true"},
            "annotations": {"example.com/note": "Anything at all: spaces, / and +.",
                            "MyCorp.io/Owner": "an uppercase prefix is fine here"},
            "finalizers": ["example.com/cleanup"]});
        assert_eq!(schema.violations(&object), Vec::<String>::new());
        object["metadata"]["labels"] = json!({"team": "Support Team", "-x": "a",
            "Example.com/x": "a", "v": "1.2+b3", "long": "a".repeat(64)});
        object["metadata"]["annotations"] =
            json!({"a b": "x", "big": "x".repeat(ANNOTATIONS_LIMIT)});
        object["metadata"]["finalizers"] = json!(["no spaces please"]);
        let found = schema.violations(&object);
        for want in [
            ".metadata.labels: \"-x\" is not a qualified name",
            ".metadata.labels: \"Example.com/x\" has a prefix that is not a DNS subdomain",
            ".metadata.labels.team: \"Support Team\" is not a label value",
            ".metadata.labels.v: \"1.2+b3\" is not a label value",
            ".metadata.labels.long: ",
            ".metadata.annotations: \"a b\" is not a qualified name",
            ".metadata.annotations: 262151 bytes, more than the 262144",
            ".metadata.finalizers: \"no spaces please\" is not a qualified name",
        ] {
            assert!(
                found.iter().any(|f| f.starts_with(want)),
                "{want} not in {found:#?}"
            );
        }
        assert_eq!(found.len(), 8, "{found:#?}");
        assert!(qualified_name(&format!("example.com/{}", "n".repeat(64))).is_err());
    }
}
