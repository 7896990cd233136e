//! `flowgate check PATH...`: the flowgate resources of a GitOps repository checked before they
//! are applied, in CI, without a cluster.
//!
//! The API server checks a resource's shape against its CRD, and drops fields it does not know
//! without a word; what the schema cannot say (one of `flowiseId`/`flowiseName`/`definition`, a
//! subject naming exactly one thing, a known time zone, …) only shows in status once the object
//! is applied. This runs the same checks as the index and the controller on the files:
//!
//! - **errors** (exit status 1): a file that is not YAML; a flowgate object whose shape does not
//!   parse, or that has a field its CRD does not know (a typo: the API server drops it, kubectl
//!   may refuse it, and a GitOps tool may apply the rest without it); a spec
//!   the index would refuse ([`InvalidSpec`]); an object defined twice; two Chatflows claiming
//!   one Flowise chatflow (neither would be served);
//! - **warnings**: a ChatflowAccess or CreditPolicy naming Chatflows not defined in the files of
//!   its namespace (fine when they exist in the cluster or are imported from Flowise).
//!
//! Directories are walked recursively (`*.yaml`, `*.yml`; hidden ones skipped). Other kinds in
//! the files (Deployments, kustomizations, …) are left alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::crd::{self, Chatflow, ChatflowAccess, CreditPolicy};
use crate::index::files::read_documents;
use crate::index::rules::{AccessRule, ChatflowRule, InvalidSpec, PolicyRule, claimed_flowise_id};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// One thing wrong with the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// `file (document n)`, or the file alone.
    pub at: String,
    /// `Kind namespace/name`, when the document is a flowgate object.
    pub object: Option<String>,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{severity}: {}: ", self.at)?;
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// What a check found, and how much it looked at.
#[derive(Debug, Default)]
pub struct Report {
    pub files: usize,
    /// flowgate objects checked.
    pub objects: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    }
}

/// A flowgate object of the files, parsed.
enum Object {
    Chatflow(Chatflow),
    Access(ChatflowAccess),
    Policy(CreditPolicy),
}

/// Where an object was defined, and its `Kind namespace/name`.
struct Place {
    at: String,
    object: String,
}

fn finding(severity: Severity, at: &str, object: Option<&str>, message: String) -> Finding {
    Finding {
        severity,
        at: at.to_string(),
        object: object.map(str::to_string),
        message,
    }
}

/// Checks every YAML file under `paths` (files, or directories walked recursively).
pub fn check(paths: &[PathBuf]) -> Report {
    let schemas = schemas();
    let mut report = Report::default();
    let mut objects: Vec<(Place, Object)> = Vec::new();
    let mut defined: HashMap<String, String> = HashMap::new();
    for path in yaml_files(paths) {
        report.files += 1;
        let docs = match read_documents(&path) {
            Ok(docs) => docs,
            Err(problem) => {
                let (at, message) = problem
                    .split_once(": ")
                    .map_or((problem.as_str(), ""), |(a, m)| (a, m));
                report
                    .findings
                    .push(finding(Severity::Error, at, None, message.to_string()));
                continue;
            }
        };
        for (i, doc) in docs.into_iter().enumerate() {
            let Some(api_version) = flowgate_api_version(&doc) else {
                continue;
            };
            report.objects += 1;
            let at = format!("{} (document {})", path.display(), i + 1);
            let kind = text(&doc, "/kind");
            let schema = match schemas.get(kind) {
                Some(schema) if api_version == API_VERSION => schema,
                known => {
                    let message = if known.is_some() {
                        format!("apiVersion {api_version}: flowgate serves {API_VERSION}")
                    } else {
                        format!(
                            "kind '{kind}' is not a flowgate resource (Chatflow, \
                             ChatflowAccess, CreditPolicy)"
                        )
                    };
                    report
                        .findings
                        .push(finding(Severity::Error, &at, None, message));
                    continue;
                }
            };
            let place = Place {
                object: match text(&doc, "/metadata/namespace") {
                    "" => format!("{kind} {}", text(&doc, "/metadata/name")),
                    ns => format!("{kind} {ns}/{}", text(&doc, "/metadata/name")),
                },
                at,
            };
            let mut unknown = Vec::new();
            unknown_fields(&doc, schema, "", &mut unknown);
            for field in unknown {
                report.findings.push(finding(
                    Severity::Error,
                    &place.at,
                    Some(&place.object),
                    format!(
                        "unknown field {field}: not in the CRD (dropped or refused when applied)"
                    ),
                ));
            }
            if let Some(first) = defined.get(&place.object) {
                report.findings.push(finding(
                    Severity::Error,
                    &place.at,
                    Some(&place.object),
                    format!("already defined in {first}"),
                ));
                continue;
            }
            defined.insert(place.object.clone(), place.at.clone());
            match parse(doc) {
                Ok(object) => {
                    if let Err(invalid) = validate(&object) {
                        report.findings.push(finding(
                            Severity::Error,
                            &place.at,
                            Some(&place.object),
                            invalid.to_string(),
                        ));
                    }
                    objects.push((place, object));
                }
                Err(e) => report.findings.push(finding(
                    Severity::Error,
                    &place.at,
                    Some(&place.object),
                    format!("invalid: {e}"),
                )),
            }
        }
    }
    report.findings.extend(across(&objects));
    report
}

/// The `apiVersion` every flowgate resource has.
const API_VERSION: &str = "flowgate.io/v1alpha1";

/// The `apiVersion` of a document of the flowgate API group; `None` for anything else.
fn flowgate_api_version(doc: &Value) -> Option<&str> {
    let api_version = doc.get("apiVersion")?.as_str()?;
    (api_version.split('/').next() == Some(crd::GROUP)).then_some(api_version)
}

fn text<'a>(doc: &'a Value, pointer: &str) -> &'a str {
    doc.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Each kind's OpenAPI schema, from the CRDs flowgate generates.
fn schemas() -> BTreeMap<String, Value> {
    crd::definitions()
        .into_iter()
        .filter_map(|(_, crd)| {
            let version = crd.spec.versions.into_iter().find(|v| v.served)?;
            let schema = version.schema?.open_api_v3_schema?;
            Some((crd.spec.names.kind, serde_json::to_value(schema).ok()?))
        })
        .collect()
}

fn parse(doc: Value) -> Result<Object, serde_json::Error> {
    Ok(match text(&doc, "/kind") {
        "Chatflow" => Object::Chatflow(serde_json::from_value(doc)?),
        "ChatflowAccess" => Object::Access(serde_json::from_value(doc)?),
        _ => Object::Policy(serde_json::from_value(doc)?),
    })
}

/// What the index would refuse.
fn validate(object: &Object) -> Result<(), InvalidSpec> {
    match object {
        Object::Chatflow(cf) => ChatflowRule::try_from(cf).map(drop),
        Object::Access(access) => AccessRule::try_from(access).map(drop),
        Object::Policy(policy) => PolicyRule::try_from(policy).map(drop),
    }
}

/// Findings across objects: Flowise chatflows claimed twice, and names of Chatflows that the
/// files do not define.
fn across(objects: &[(Place, Object)]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut chatflows: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut claims: BTreeMap<String, Vec<&Place>> = BTreeMap::new();
    for (place, object) in objects {
        if let Object::Chatflow(cf) = object {
            let ns = cf.metadata.namespace.as_deref().unwrap_or_default();
            let name = cf.metadata.name.clone().unwrap_or_default();
            chatflows.entry(ns).or_default().insert(name);
            if let Some(id) = claimed_flowise_id(cf) {
                claims.entry(id).or_default().push(place);
            }
        }
    }
    for (id, places) in &claims {
        for place in places.iter().filter(|_| places.len() > 1) {
            let others: Vec<&str> = places
                .iter()
                .filter(|p| p.object != place.object)
                .map(|p| p.object.as_str())
                .collect();
            findings.push(Finding {
                severity: Severity::Error,
                at: place.at.clone(),
                object: Some(place.object.clone()),
                message: InvalidSpec::SharedFlowiseId {
                    id: id.clone(),
                    others: others.join(", "),
                }
                .to_string(),
            });
        }
    }
    let empty = BTreeSet::new();
    for (place, object) in objects {
        let (meta, names) = match object {
            Object::Chatflow(_) => continue,
            Object::Access(access) => (&access.metadata, &access.spec.chatflows),
            Object::Policy(policy) => (&policy.metadata, &policy.spec.chatflows),
        };
        let ns = meta.namespace.as_deref().unwrap_or_default();
        let existing = chatflows.get(ns).unwrap_or(&empty);
        let (_, missing) = crate::controller::resolve_refs(names, existing);
        if !missing.is_empty() {
            findings.push(Finding {
                severity: Severity::Warning,
                at: place.at.clone(),
                object: Some(place.object.clone()),
                message: format!(
                    "names Chatflows these files do not define in its namespace: {} (fine if \
                     they exist in the cluster)",
                    missing.join(", ")
                ),
            });
        }
    }
    findings
}

/// The fields of `value` that `schema` (a Kubernetes structural schema) does not know, as
/// paths like `.spec.subjects[0].usr`. Objects without `properties` (free-form maps such as
/// `metadata.labels`) and `x-kubernetes-preserve-unknown-fields` subtrees take anything; so does
/// the object's own header (`apiVersion`, `kind`, `metadata`), which the API server checks.
fn unknown_fields(value: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|s| s.is_object());
            for (key, field) in fields {
                if path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&key.as_str()) {
                    continue;
                }
                let here = format!("{path}.{key}");
                match (properties.and_then(|p| p.get(key)), additional) {
                    (Some(inner), _) | (None, Some(inner)) => {
                        unknown_fields(field, inner, &here, out);
                    }
                    (None, None) if properties.is_some() => out.push(here),
                    (None, None) => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(inner) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    unknown_fields(item, inner, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// The `*.yaml` and `*.yml` files of `paths`, directories walked recursively (hidden entries
/// skipped, each directory once however many links lead to it), in order.
fn yaml_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut seen = BTreeSet::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut files, &mut seen);
        } else {
            files.push(path.clone());
        }
    }
    files
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>, seen: &mut BTreeSet<PathBuf>) {
    if !seen.insert(dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())) {
        return;
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'))
        })
        .collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            walk(&entry, files, seen);
        } else if entry.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("directory");
        }
        std::fs::write(&path, text).expect("write");
        path
    }

    /// `severity: object: message` of each finding.
    fn lines(report: &Report) -> Vec<String> {
        report
            .findings
            .iter()
            .map(|f| {
                let object = f.object.as_deref().unwrap_or("-");
                format!("{:?}: {object}: {}", f.severity, f.message)
            })
            .collect()
    }

    #[test]
    fn unknown_fields_are_found_where_the_schema_lists_properties() {
        let schema = json!({"properties": {
            "spec": {"properties": {
                "subjects": {"items": {"properties": {"user": {}, "group": {}}}},
                "labels": {"additionalProperties": {"type": "string"}},
                "flowData": {"x-kubernetes-preserve-unknown-fields": true},
                "free": {"type": "object"},
            }},
        }});
        let doc = json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "X", "metadata": {"anything": 1},
            "spec": {
                "subjects": [{"user": "a"}, {"usr": "b"}],
                "labels": {"any": "thing"},
                "flowData": {"nodes": [{"whatever": 1}]},
                "free": {"any": {"thing": 1}},
                "extra": 1,
            },
            "stray": true,
        });
        let mut unknown = Vec::new();
        unknown_fields(&doc, &schema, "", &mut unknown);
        assert_eq!(unknown, [".spec.extra", ".spec.subjects[1].usr", ".stray"]);
    }

    #[test]
    fn the_examples_are_clean() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let report = check(&[examples]);
        assert_eq!(lines(&report), Vec::<String>::new());
        assert_eq!(report.objects, 6);
    }

    #[test]
    fn each_kind_of_mistake_is_reported_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(
            dir.path(),
            "team/access.yaml",
            "apiVersion: flowgate.io/v1alpha1
kind: ChatflowAccess
metadata: {name: team, namespace: a}
spec:
  chatflows: [bot, missing-bot]
  subjects: [{user: alice, group: g}]
  rateLimit: {requests: 5, per: Minute, burst: 3}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: not-ours}
spec: {anything: 1}
---
apiVersion: flowgate.io/v1alpha1
kind: Chatflow
metadata: {name: bot, namespace: a}
spec: {flowiseId: 3F1C2A7E-0000-4000-8000-000000000000}
",
        );
        write(
            dir.path(),
            "team/more/policies.yml",
            "apiVersion: flowgate.io/v1alpha1
kind: Chatflow
metadata: {name: twin, namespace: a}
spec: {flowiseId: 3f1c2a7e-0000-4000-8000-000000000000}
---
apiVersion: flowgate.io/v1alpha1
kind: CreditPolicy
metadata: {name: monthly, namespace: a}
spec:
  chatflows: [\"*\"]
  budget: {credits: 10, period: Monthly, timeZone: Mars/Olympus}
---
apiVersion: flowgate.io/v1alpha1
kind: CreditPolicy
metadata: {name: monthly, namespace: a}
spec: {chatflows: [bot], budget: {credits: 1}}
---
apiVersion: flowgate.io/v1alpha1
kind: CreditPolicy
metadata: {name: daily, namespace: a}
spec: {chatflows: [bot], budget: {credits: ten}}
---
apiVersion: flowgate.io/v1
kind: Chatflow
metadata: {name: old}
---
apiVersion: flowgate.io/v1alpha1
kind: ChatFlow
metadata: {name: typo}
",
        );
        write(dir.path(), "broken.yaml", "a: [b\n");
        write(dir.path(), ".git/config.yaml", "not: [yaml\n");
        write(dir.path(), "notes.txt", "not: [yaml\n");
        let report = check(&[dir.path().to_path_buf()]);
        assert_eq!(report.files, 3);
        assert_eq!(report.objects, 8);
        let found = lines(&report);
        let shared = "Flowise chatflow 3f1c2a7e-0000-4000-8000-000000000000 is also claimed by";
        let expected = [
            "Error: -: not YAML: ",
            "Error: ChatflowAccess a/team: unknown field .spec.rateLimit.burst: not in the CRD",
            "Error: ChatflowAccess a/team: subjects[0] must set exactly one of user, group, serviceAccount",
            "Error: CreditPolicy a/monthly: budget.timeZone: unknown time zone 'Mars/Olympus'",
            "Error: CreditPolicy a/monthly: already defined in ",
            "Error: CreditPolicy a/daily: invalid: ",
            "Error: -: apiVersion flowgate.io/v1: flowgate serves flowgate.io/v1alpha1",
            "Error: -: kind 'ChatFlow' is not a flowgate resource",
            &format!("Error: Chatflow a/bot: {shared} Chatflow a/twin"),
            &format!("Error: Chatflow a/twin: {shared} Chatflow a/bot"),
            "Warning: ChatflowAccess a/team: names Chatflows these files do not define in its namespace: missing-bot",
        ];
        assert_eq!(found.len(), expected.len(), "{found:#?}");
        for want in expected {
            assert!(
                found.iter().any(|f| f.starts_with(want)),
                "{want} not in {found:#?}"
            );
        }
        assert_eq!((report.errors(), report.warnings()), (10, 1));
    }
}
