//! `flowgate check PATH...`: the flowgate resources of a GitOps repository checked before they
//! are applied, in CI, without a cluster.
//!
//! The API server checks a resource's shape against its CRD, and drops fields it does not know
//! without a word; what the schema cannot say (one of `flowiseId`/`flowiseName`/`definition`, a
//! subject naming exactly one thing, a known time zone, …) only shows in status once the object
//! is applied. This runs the same checks as the index and the controller on the files:
//!
//! - **errors** (exit status 1): a flowgate object's document that is not YAML or whose shape
//!   does not parse (with the field's path); a value its CRD's schema refuses, as `kubectl
//!   apply` would (a bound such as `minItems`, `pattern` or `maximum`, a missing required field,
//!   a name that is not a DNS name: [`crd::schema`]); a field its CRD or `metadata` does not
//!   know (a typo: the API server drops it, kubectl may refuse it, and a GitOps tool may apply
//!   the rest without it); a spec the index would refuse ([`InvalidSpec`]); an object defined
//!   twice in one namespace; two Chatflows claiming one Flowise chatflow by id or by name
//!   (neither would be served); an `apiVersion` that looks like flowgate's but is not; no
//!   flowgate object at all (a wrong path in CI);
//! - **warnings**: a ChatflowAccess or CreditPolicy naming Chatflows not defined in the files of
//!   its namespace (fine when they exist in the cluster or are imported from Flowise); an object
//!   defined twice without a namespace (fine when they go to different namespaces, as two
//!   kustomize overlays do); a Helm template that mentions `flowgate.io` (check what it renders).
//!
//! Directories are walked recursively as `flowgate run --resources-dir DIR --resources-recursive`
//! reads them (`*.yaml`, `*.yml`; hidden ones skipped; a link out of the directory is reported
//! and not followed); `-` reads standard input, for rendered output (`kustomize build
//! overlays/prod | flowgate check -`).
//! Files that never mention `flowgate.io` are not parsed (Helm templates, other kinds), and other
//! kinds in the files are left alone. `status` is ignored, as the API server ignores it on apply.
//! Objects without a namespace are checked together, as if applied into one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::crd::lenient::read_as;
use crate::crd::{self, API_VERSION, Chatflow, ChatflowAccess, CreditPolicy};
use crate::index::files::ResourcesDir;
use crate::index::files::documents::documents;
use crate::index::rules::{
    AccessRule, ChatflowRule, ChatflowSource, InvalidSpec, PolicyRule, chatflow_source,
    claimed_flowise_id,
};

/// The fields of `metadata` (Kubernetes' ObjectMeta); the API server drops any other.
const METADATA_FIELDS: [&str; 16] = [
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
    "clusterName",
];

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
    /// `file:line` of the document (its first line that is not blank or a comment), or the
    /// file alone.
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

    fn error(&mut self, at: &str, object: Option<&str>, message: String) {
        self.push(Severity::Error, at, object, message);
    }

    fn push(&mut self, severity: Severity, at: &str, object: Option<&str>, message: String) {
        self.findings.push(Finding {
            severity,
            at: at.to_string(),
            object: object.map(str::to_string),
            message,
        });
    }
}

/// A flowgate object of the files, parsed.
enum Object {
    Chatflow(Chatflow),
    Access(ChatflowAccess),
    Policy(CreditPolicy),
}

/// Where an object was defined, and what it is.
struct Place {
    at: String,
    /// `Kind namespace/name`, or `Kind name` without a namespace.
    object: String,
    namespaced: bool,
}

/// Checks every YAML file under `paths` (files, directories walked recursively, `-` for
/// standard input).
pub fn check(paths: &[PathBuf]) -> Report {
    let mut report = Report::default();
    let mut objects: Vec<(Place, Object)> = Vec::new();
    // Where each object was first defined, whether that one is namespaced, and whether it
    // parsed (a later copy stands in for one that did not).
    let mut defined: HashMap<String, (String, bool, bool)> = HashMap::new();
    let mut templates = 0;
    for source in sources(paths, &mut report) {
        report.files += 1;
        let text = match source.read() {
            Ok(Some(text)) => text,
            Ok(None) => continue,
            Err(e) => {
                report.error(&source.name, None, e.to_string());
                continue;
            }
        };
        if !mentions_flowgate(&text) {
            continue;
        }
        // Documents of other kinds that are not YAML: worth a word only beside ours.
        let mut broken_others = Vec::new();
        let objects_before = report.objects;
        for doc in documents(&text) {
            let at = format!("{}:{}", source.name, doc.line);
            let mut value: Value = match serde_saphyr::from_str(doc.text) {
                // A template whose every `{{ }}` is quoted parses, but what it says is not what
                // is applied (`namespace: "{{ .Release.Namespace }}"`): a warning, as any other.
                Ok(value) if names_flowgate_api(doc.text) && templated(&value) => {
                    templates += 1;
                    report.push(
                        Severity::Warning,
                        &at,
                        None,
                        "a template: check what it renders \
                         (`helm template … | flowgate check -`)"
                            .into(),
                    );
                    continue;
                }
                Ok(value) => value,
                Err(_) if !names_flowgate_api(doc.text) => {
                    broken_others.push(at);
                    continue;
                }
                Err(_) if is_template(doc.text) => {
                    templates += 1;
                    report.push(
                        Severity::Warning,
                        &at,
                        None,
                        "a template, not YAML: check what it renders \
                         (`helm template … | flowgate check -`)"
                            .into(),
                    );
                    continue;
                }
                Err(e) => {
                    report.error(&at, None, format!("not YAML: {e}"));
                    continue;
                }
            };
            // A List (as `kubectl get -o yaml` writes, and `kubectl apply` unpacks): each item
            // is checked as a document of its own.
            let list = text_at(&value, "/kind").ends_with("List")
                && value.get("items").is_some_and(Value::is_array);
            let items: Vec<(String, Value)> = if list {
                match value.get_mut("items").map(Value::take) {
                    Some(Value::Array(items)) => items
                        .into_iter()
                        .enumerate()
                        .map(|(i, item)| (format!("{at} (item {})", i + 1), item))
                        .collect(),
                    _ => Vec::new(),
                }
            } else {
                vec![(at, value)]
            };
            for (at, mut value) in items {
                let api_version = text_at(&value, "/apiVersion").to_string();
                if api_version.split('/').next() != Some(crd::GROUP) {
                    // A kind of ours without a group (`v1alpha1`, or none at all) is ours with
                    // a mistake: kubectl refuses it. One of another group is left alone.
                    let ours = crd::schema::for_kind(text_at(&value, "/kind")).is_some()
                        && !api_version.contains('/');
                    if api_version.contains("flowgate") || ours {
                        report.error(
                            &at,
                            None,
                            match api_version.as_str() {
                                "" => format!("no apiVersion: flowgate's is {API_VERSION}"),
                                _ => {
                                    format!("apiVersion {api_version}: flowgate's is {API_VERSION}")
                                }
                            },
                        );
                    }
                    continue;
                }
                report.objects += 1;
                let kind = text_at(&value, "/kind").to_string();
                let schema = match crd::schema::for_kind(&kind) {
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
                        report.error(&at, None, message);
                        continue;
                    }
                };
                // The status subresource: what a file says there is never applied.
                if let Some(fields) = value.as_object_mut() {
                    fields.remove("status");
                }
                let name = text_at(&value, "/metadata/name");
                let named = !name.is_empty();
                if !named && value.pointer("/metadata/generateName").is_some() {
                    report.push(
                        Severity::Warning,
                        &at,
                        None,
                        format!(
                            "{kind} with generateName: only `kubectl create` names it; \
                             `kubectl apply`, Argo CD, Flux and `flowgate run --resources-dir` \
                             refuse an object without a name"
                        ),
                    );
                }
                let place = match text_at(&value, "/metadata/namespace") {
                    "" => Place {
                        object: format!("{kind} {name}"),
                        namespaced: false,
                        at,
                    },
                    ns => Place {
                        object: format!("{kind} {ns}/{name}"),
                        namespaced: true,
                        at,
                    },
                };
                let object = Some(place.object.as_str());
                let mut unknown = Vec::new();
                unknown_fields(&value, schema.openapi(), "", &mut unknown);
                for field in unknown {
                    report.error(
                        &place.at,
                        object,
                        format!(
                            "unknown field {field}: not in the CRD (dropped or refused when applied)"
                        ),
                    );
                }
                crd::schema::whole_numbers(&mut value);
                crd::schema::prune_nulls(&mut value);
                // What the API server would refuse; a shape that does not parse is mostly
                // the same mistake again, so it is only reported when the schema found none.
                let violations = schema.violations(&value);
                for violation in &violations {
                    report.error(
                        &place.at,
                        object,
                        format!("{violation} (refused when applied)"),
                    );
                }
                let parsed = parse(value);
                match &parsed {
                    Ok(parsed) => {
                        if let Err(invalid) = validate(parsed) {
                            report.error(&place.at, object, invalid.to_string());
                        }
                    }
                    Err(e) if violations.is_empty() => {
                        report.error(&place.at, object, format!("invalid: {e}"));
                    }
                    Err(_) => {}
                }
                // An object the API server would refuse never exists in the cluster: it takes
                // no part in the checks across objects (a good copy stands in for it, as for
                // one that does not parse).
                let parsed = parsed.ok().filter(|_| violations.is_empty()).ok_or(());
                // Without a name (`generateName`) each is an object of its own.
                if let Some((first, namespaced, first_parsed)) =
                    defined.get_mut(&place.object).filter(|_| named)
                {
                    let message = format!("also defined at {first}");
                    let stands_in = !*first_parsed && parsed.is_ok();
                    *first_parsed |= parsed.is_ok();
                    // Two documents of one file (or one stream) always go to one namespace.
                    let source = |at: &str| at.rsplit_once(':').map(|(s, _)| s.to_string());
                    let one_source = source(first) == source(&place.at);
                    if *namespaced && place.namespaced {
                        report.error(&place.at, object, message);
                    } else if one_source && !*namespaced && !place.namespaced {
                        report.error(
                            &place.at,
                            object,
                            format!(
                                "{message}, in the same file: applied together, one replaces \
                                 the other"
                            ),
                        );
                    } else {
                        report.push(
                            Severity::Warning,
                            &place.at,
                            object,
                            format!(
                                "{message}, without a namespace (fine if they are applied to \
                                 different namespaces)"
                            ),
                        );
                    }
                    if let (true, Ok(parsed)) = (stands_in, parsed) {
                        objects.push((place, parsed));
                    }
                    continue;
                }
                defined.insert(
                    place.object.clone(),
                    (place.at.clone(), place.namespaced, parsed.is_ok()),
                );
                if let Ok(parsed) = parsed {
                    objects.push((place, parsed));
                }
            }
        }
        if report.objects > objects_before {
            for at in broken_others {
                report.push(
                    Severity::Warning,
                    &at,
                    None,
                    "not YAML, in a file with flowgate objects: `kubectl apply` refuses the \
                     file, and `flowgate run --resources-dir` keeps its last readable version"
                        .into(),
                );
            }
        }
    }
    across(&objects, &mut report);
    if report.objects == 0 {
        let only_templates = if templates > 0 {
            ", only templates that mention them: check what they render"
        } else {
            ""
        };
        report.error(
            &paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" "),
            None,
            format!("no flowgate resources ({API_VERSION}) found{only_templates}"),
        );
    }
    report
}

fn text_at<'a>(doc: &'a Value, pointer: &str) -> &'a str {
    doc.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The object, or what does not parse and where (`spec.budget.credits: invalid type: …`).
fn parse(doc: Value) -> Result<Object, String> {
    Ok(match text_at(&doc, "/kind") {
        "Chatflow" => Object::Chatflow(read_as(&doc)?),
        "ChatflowAccess" => Object::Access(read_as(&doc)?),
        _ => Object::Policy(read_as(&doc)?),
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

/// Findings across objects: Flowise chatflows claimed twice (by id, or by name: both resolve
/// to one chatflow), and names of Chatflows that the files do not define.
fn across(objects: &[(Place, Object)], report: &mut Report) {
    let mut chatflows: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut claims: BTreeMap<String, Vec<&Place>> = BTreeMap::new();
    for (place, object) in objects {
        let Object::Chatflow(cf) = object else {
            continue;
        };
        let ns = cf.metadata.namespace.as_deref().unwrap_or_default();
        chatflows
            .entry(ns)
            .or_default()
            .insert(cf.metadata.name.clone().unwrap_or_default());
        // A definition creates its chatflow under its name, which Flowise then holds: a second
        // definition of that name is refused by the controller ("name taken"), and a Chatflow
        // adopting it by name shares what the first created.
        let claim = match chatflow_source(&cf.spec) {
            Ok(ChatflowSource::Name(name)) => Some(format!("named '{name}'")),
            Ok(ChatflowSource::Definition(def)) => Some(format!(
                "named '{}'",
                def.name
                    .as_deref()
                    .or(cf.metadata.name.as_deref())
                    .unwrap_or_default()
            )),
            _ => claimed_flowise_id(cf),
        };
        if let Some(claim) = claim {
            claims.entry(claim).or_default().push(place);
        }
    }
    for (claim, places) in claims.iter().filter(|(_, places)| places.len() > 1) {
        for place in places {
            let others: Vec<&str> = places
                .iter()
                .filter(|p| p.object != place.object)
                .map(|p| p.object.as_str())
                .collect();
            let message = InvalidSpec::SharedFlowiseId {
                id: claim.clone(),
                others: others.join(", "),
            };
            report.error(&place.at, Some(&place.object), message.to_string());
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
            report.push(
                Severity::Warning,
                &place.at,
                Some(&place.object),
                format!(
                    "names Chatflows these files do not define in its namespace: {} (fine if \
                     they exist in the cluster)",
                    missing.join(", ")
                ),
            );
        }
    }
}

/// The fields of `value` that `schema` (a Kubernetes structural schema) does not know, as
/// paths like `.spec.subjects[0].usr`. Objects without `properties` (free-form maps such as
/// `metadata.labels`) and `x-kubernetes-preserve-unknown-fields` subtrees take anything;
/// `apiVersion` and `kind` are the API server's, and `metadata` is checked against ObjectMeta.
fn unknown_fields(value: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|s| s.is_object());
            for (key, field) in fields {
                let here = format!("{path}.{key}");
                if path.is_empty() {
                    match key.as_str() {
                        "apiVersion" | "kind" => continue,
                        "metadata" => {
                            let meta = field.as_object().into_iter().flatten();
                            out.extend(
                                meta.filter(|(k, _)| !METADATA_FIELDS.contains(&k.as_str()))
                                    .map(|(k, _)| format!("{here}.{k}")),
                            );
                            continue;
                        }
                        _ => {}
                    }
                }
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

/// Whether a text may hold flowgate objects: it names the API, or one of its kinds (a flowgate
/// kind whose apiVersion was forgotten is one of ours too).
fn mentions_flowgate(text: &str) -> bool {
    text.contains("flowgate")
        || text.contains("kind: Chatflow")
        || text.contains("kind: CreditPolicy")
}

/// Whether a text that is not YAML is a Go template (Helm's `{{ .Values.x }}`, `{{- if … }}`,
/// `{{ include … }}`), not a Flowise prompt's `{{question}}` or `{{ question }}`: an action
/// starts with `-`, `.` or `$`, or with one of the template language's words. Flowise's own
/// variables (`{{$vars.company}}`, `{{ $flow.state.step }}`) are not template actions.
fn is_template(text: &str) -> bool {
    const FLOWISE_VARIABLES: [&str; 4] = ["vars", "flow", "form", "iteration"];
    const WORDS: [&str; 16] = [
        "if", "else", "end", "range", "with", "include", "template", "define", "block", "toYaml",
        "tpl", "required", "default", "quote", "printf", "nindent",
    ];
    text.split("{{").skip(1).any(|action| {
        let action = action.trim_start();
        let flowise_variable = action.strip_prefix('$').is_some_and(|rest| {
            let name = rest
                .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .next()
                .unwrap_or_default();
            FLOWISE_VARIABLES.contains(&name)
        });
        (action.starts_with(['-', '.', '$']) && !flowise_variable)
            || WORDS.iter().any(|word| {
                action
                    .strip_prefix(word)
                    .is_some_and(|rest| rest.starts_with([' ', '}']))
            })
    })
}

/// Whether a parsed document holds a Go template action in a key or a value, outside a flow
/// definition's `flowData` (whose prompts may have `{{.}}`, `{{ $json… }}` of their own).
fn templated(value: &Value) -> bool {
    fn walk(value: &Value, at: &mut Vec<String>) -> bool {
        if at
            .iter()
            .map(String::as_str)
            .eq(["spec", "definition", "flowData"])
        {
            return false;
        }
        match value {
            Value::String(s) => is_template(s),
            Value::Array(items) => items.iter().any(|v| walk(v, at)),
            Value::Object(fields) => fields.iter().any(|(k, v)| {
                if is_template(k) {
                    return true;
                }
                at.push(k.clone());
                let found = walk(v, at);
                at.pop();
                found
            }),
            _ => false,
        }
    }
    walk(value, &mut Vec::new())
}

/// Whether a document names the flowgate API (an `apiVersion` line mentioning it), so that
/// failing to parse it is worth reporting; a label such as `flowgate.io/managed-by` is not.
fn names_flowgate_api(text: &str) -> bool {
    text.lines()
        .any(|line| line.contains("apiVersion") && line.contains("flowgate"))
}

/// A file to check, or standard input.
struct Source {
    name: String,
    path: Option<PathBuf>,
}

impl Source {
    /// The text of the source; `None` for one that is not text and names nothing of flowgate's
    /// (an encrypted secret beside the manifests, say): not ours to judge.
    fn read(&self) -> std::io::Result<Option<String>> {
        let bytes = match &self.path {
            Some(path) => std::fs::read(path)?,
            None => {
                let mut bytes = Vec::new();
                std::io::stdin().read_to_end(&mut bytes)?;
                bytes
            }
        };
        // UTF-16 (what Windows PowerShell's `>` writes) starts with a byte-order mark: read as
        // such only to tell whether it is ours, which `kubectl` and `--resources-dir` would
        // refuse too (they read UTF-8).
        // UTF-32 too, by its mark (checked first: its little-endian mark begins as UTF-16's).
        let wide = match bytes.get(..4) {
            Some([0xff, 0xfe, 0, 0]) => Some(u32::from_le_bytes as fn([u8; 4]) -> u32),
            Some([0, 0, 0xfe, 0xff]) => Some(u32::from_be_bytes as fn([u8; 4]) -> u32),
            _ => None,
        };
        let utf16 = match bytes.get(..2) {
            Some([0xff, 0xfe]) => Some(u16::from_le_bytes as fn([u8; 2]) -> u16),
            Some([0xfe, 0xff]) => Some(u16::from_be_bytes as fn([u8; 2]) -> u16),
            _ => None,
        };
        let decoded = match (wide, utf16) {
            (Some(unit), _) => Some(
                bytes[4..]
                    .chunks_exact(4)
                    .filter_map(|c| char::from_u32(unit([c[0], c[1], c[2], c[3]])))
                    .collect::<String>(),
            ),
            (None, Some(unit)) => {
                let units = bytes[2..].chunks_exact(2).map(|c| unit([c[0], c[1]]));
                Some(String::from_utf16_lossy(&units.collect::<Vec<u16>>()))
            }
            (None, None) => None,
        };
        if let Some(text) = decoded {
            if mentions_flowgate(&text) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "UTF-16 or UTF-32 text: save it as UTF-8, which kubectl and flowgate read",
                ));
            }
            return Ok(None);
        }
        match String::from_utf8(bytes) {
            Ok(text) => Ok(Some(text)),
            Err(e) if !e.as_bytes().windows(8).any(|w| w == b"flowgate") => Ok(None),
            Err(e) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e.utf8_error(),
            )),
        }
    }
}

/// The files of `paths`: `-` is standard input, directories are walked recursively for
/// `*.yaml` and `*.yml` as `--resources-recursive` walks them ([`walk`]). A directory that
/// cannot be read is an error.
fn sources(paths: &[PathBuf], report: &mut Report) -> Vec<Source> {
    let mut files = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            if files.iter().all(|f: &Source| f.path.is_some()) {
                files.push(Source {
                    name: "<stdin>".into(),
                    path: None,
                });
            }
        } else if path.is_dir() {
            walk(path, &mut files, report);
        } else {
            files.push(Source {
                name: path.display().to_string(),
                path: Some(path.clone()),
            });
        }
    }
    // A file named twice (or reached through a link) is checked once: its objects are not
    // duplicates of themselves.
    let mut files_seen = BTreeSet::new();
    files.retain(|f| match &f.path {
        Some(path) => files_seen.insert(path.canonicalize().unwrap_or_else(|_| path.clone())),
        None => true,
    });
    files
}

/// The YAML files under `dir` as `flowgate run --resources-dir DIR --resources-recursive` reads
/// them ([`ResourcesDir::yaml_files`]); what it would not read is reported.
fn walk(dir: &Path, files: &mut Vec<Source>, report: &mut Report) {
    let tree = ResourcesDir {
        path: dir.to_path_buf(),
        recursive: true,
    };
    let found = match tree.yaml_files() {
        Ok(found) => found,
        Err(e) => return report.error(&dir.display().to_string(), None, e.to_string()),
    };
    for (sub, error) in found.unlisted {
        report.error(&sub.display().to_string(), None, error.to_string());
    }
    for link in found.outside {
        report.push(
            Severity::Warning,
            &link.display().to_string(),
            None,
            format!(
                "a link that leads out of {}: not checked, and not read by `flowgate run \
                 --resources-dir` either",
                dir.display()
            ),
        );
    }
    files.extend(found.files.into_iter().map(|path| Source {
        name: path.display().to_string(),
        path: Some(path),
    }));
}

#[cfg(test)]
mod tests;
