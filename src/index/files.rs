//! `flowgate run --resources-dir DIR`: the same resources, from YAML files instead of a cluster.
//!
//! The directory (with `--resources-recursive`, its subdirectories too: [`walk`]) is polled
//! (every second, on a blocking thread) and reloaded when a file changes (once the change has
//! held for a poll, so that a file being written is not read half written), and Chatflows are
//! resolved against Flowise on every change and every sync interval ([`poll`]: Flowise is listed
//! beside the loop, so a Flowise that does not answer holds up no reload; a failed listing keeps
//! the last good one and is retried within 5 s). A file that stops parsing keeps what it held when
//! last readable ([`LastReadable`]). An object defined twice keeps its first definition,
//! as a cluster would refuse the second. There is no API server to write status to, so status
//! is only logged. Adopting (`flowiseId`, `flowiseName`) works; owning a `definition` needs the
//! controller and a cluster, so such Chatflows are reported and not served.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::{Resources, Unreadable};
use crate::crd::lenient::read_as;
use crate::crd::{self, schema};

pub mod documents;
mod poll;
mod resolve;
pub mod walk;

#[cfg(test)]
use poll::due;
pub use poll::spawn;
pub use resolve::{Holders, resolve};
pub use walk::ResourcesDir;

/// The largest file read: a dump or a log named `*.yaml` is reported, not read every second.
const MAX_FILE: u64 = 64 << 20;

/// The documents of each file as last read whole: a file that stops parsing (an edit saved
/// half done, a stray tab) keeps them in force, as an API server keeps an object whose new
/// version it refused. Dropping them instead would drop the file's CreditPolicies — every
/// prediction they charge would be free — and its grants.
pub type LastReadable = HashMap<PathBuf, Vec<Value>>;

/// Reads every `*.yaml`/`*.yml` file of `dir` (multi-document files allowed), not those of its
/// subdirectories. Objects without a namespace land in `default`. Returns the resources and one
/// message per unusable document.
pub fn load(dir: &Path) -> (Resources, Vec<String>) {
    load_keeping(&ResourcesDir::flat(dir), &mut LastReadable::new())
}

/// [`load`], with a file that cannot be read standing in with its documents in `kept`, which
/// is updated with every file read whole (and forgets files that are gone).
pub fn load_keeping(dir: &ResourcesDir, kept: &mut LastReadable) -> (Resources, Vec<String>) {
    let mut resources = Resources::default();
    let mut problems = Vec::new();
    // kind/namespace/name → where it was first defined: a second definition is skipped (in a
    // cluster it could not exist; here it would, for a CreditPolicy, charge twice).
    let mut defined: HashMap<(String, String, String), String> = HashMap::new();
    // The files the walk found (not those kept for a directory it could not list).
    let mut listed = std::collections::HashSet::new();
    let files = match dir.yaml_files() {
        Ok(found) => {
            let mut files = found.files;
            listed.extend(files.iter().cloned());
            // A subdirectory that cannot be listed keeps its files, as the directory does.
            for (sub, error) in found.unlisted {
                problems.push(format!(
                    "{}: cannot list the directory ({error}); the files last read under it stay in force",
                    sub.display()
                ));
                files.extend(kept.keys().filter(|p| p.starts_with(&sub)).cloned());
            }
            for link in found.outside {
                problems.push(format!(
                    "{}: a link that leads out of {}; not read",
                    link.display(),
                    dir.path.display()
                ));
            }
            files.sort();
            files.dedup();
            kept.retain(|path, _| files.binary_search(path).is_ok());
            files
        }
        // The directory itself could not be listed (a mount between swaps, a permission):
        // the files last read stay in force, as one that stops parsing does.
        Err(error) => {
            problems.push(format!(
                "{}: cannot list the directory ({error}); the files last read stay in force",
                dir.path.display()
            ));
            let mut files: Vec<PathBuf> = kept.keys().cloned().collect();
            files.sort();
            files
        }
    };
    let now = SystemTime::now();
    for path in files {
        // Gone since it was listed, or a link to nothing (its target deleted, to revoke what
        // it held): nothing is kept for it, as for a file no longer listed.
        if listed.contains(&path)
            && std::fs::metadata(&path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        {
            kept.remove(&path);
            continue;
        }
        // Emptied moments ago (`helm template … > all.yaml` empties it at once, then renders
        // for seconds): what it last held stays in force for [`EMPTIED_GRACE`], rather than
        // its policies (every prediction they charge would be free) and grants for a while.
        let emptied = kept
            .get(&path)
            .filter(|docs| !docs.is_empty() && emptied_lately(&path, now))
            .cloned();
        let docs: Vec<(usize, Value)> = if let Some(docs) = emptied {
            problems.push(format!(
                "{}: empty since it was written less than {} s ago; what it last held stays in \
                 force until it holds something or has been empty that long",
                path.display(),
                EMPTIED_GRACE.as_secs()
            ));
            numbered(docs)
        } else {
            match read_documents(&path) {
                Ok(read) if read.broken.is_empty() => {
                    let docs: Vec<Value> = read.documents.into_iter().map(|(_, doc)| doc).collect();
                    kept.insert(path.clone(), docs.clone());
                    numbered(docs)
                }
                // A document that is not YAML costs the file what it held when last readable,
                // or, never read whole, only itself.
                Ok(read) => match kept.get(&path) {
                    Some(docs) => {
                        for (problem, _) in read.broken {
                            problems.push(kept_instead(&problem));
                        }
                        numbered(docs.clone())
                    }
                    None => {
                        for (problem, text) in read.broken {
                            never_read(&path, problem, &text, &mut resources, &mut problems);
                        }
                        read.documents
                    }
                },
                Err(unread) => match kept.get(&path) {
                    Some(docs) => {
                        problems.push(kept_instead(&unread.problem));
                        numbered(docs.clone())
                    }
                    None => {
                        never_read(
                            &path,
                            unread.problem,
                            &unread.text,
                            &mut resources,
                            &mut problems,
                        );
                        continue;
                    }
                },
            }
        };
        // A List (as `kubectl get -o yaml` writes one, and `kubectl apply` unpacks): each item
        // is an object of its own, as `flowgate check` reads it.
        let objects = docs.into_iter().flat_map(|(n, mut doc)| {
            let at = format!("{} (document {n})", path.display());
            let list = str_at(&doc, "/kind").ends_with("List")
                && doc.get("items").is_some_and(Value::is_array);
            match doc.get_mut("items").map(Value::take) {
                Some(Value::Array(items)) if list => items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| (format!("{at} (item {})", i + 1), item))
                    .collect(),
                _ => vec![(at, doc)],
            }
        });
        for (at, mut doc) in objects {
            if doc.is_null() {
                continue;
            }
            if doc
                .pointer("/metadata/namespace")
                .is_none_or(|ns| ns.is_null() || ns == "")
                && let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut)
            {
                meta.insert("namespace".into(), Value::String("default".into()));
            }
            // Another tool's object beside the resources (a Deployment, a kustomization) is
            // not ours to report, as `flowgate check` leaves it alone. One that names flowgate
            // (or no apiVersion at all, or a flowgate kind with a version but no group) but
            // not its apiVersion is a mistake: invalid, as one that does not parse (a
            // CreditPolicy may refuse).
            let api_version = str_at(&doc, "/apiVersion");
            let kind = str_at(&doc, "/kind");
            let mut wrong_version = None;
            if api_version != crd::API_VERSION {
                let ours = (api_version.is_empty() && !kind.is_empty())
                    || api_version.split('/').next() == Some(crd::GROUP)
                    || api_version.contains("flowgate")
                    || (schema::for_kind(&kind).is_some() && !api_version.contains('/'));
                if !ours {
                    continue;
                }
                wrong_version = Some(format!(
                    "apiVersion '{api_version}': flowgate serves {}",
                    crd::API_VERSION
                ));
            }
            let key = (
                kind.clone(),
                str_at(&doc, "/metadata/namespace"),
                str_at(&doc, "/metadata/name"),
            );
            if let Some(first) = defined.get(&key) {
                problems.push(format!(
                    "{at}: {kind} {}/{} is already defined in {first}; skipped",
                    key.1, key.2
                ));
                continue;
            }
            let Some(schema) = schema::for_kind(&kind) else {
                problems.push(format!(
                    "{at}: kind '{kind}' is not a flowgate resource; skipped"
                ));
                // A misspelt CreditPolicy (`Creditpolicy`) is a policy that does not parse.
                if kind.to_ascii_lowercase().contains("polic") {
                    resources.unreadable.push(Unreadable {
                        kind: "CreditPolicy",
                        namespace: key.1.clone(),
                        name: key.2.clone(),
                        error: format!("kind '{kind}' is not a flowgate resource"),
                        claim: None,
                    });
                }
                continue;
            };
            // What an API server would refuse is refused here too: without one, `subjects: []`
            // or `alertAtPercent: [150]` would otherwise be served.
            schema::whole_numbers(&mut doc);
            schema::prune_nulls(&mut doc);
            let mut violations = schema.violations(&doc);
            violations.splice(0..0, wrong_version);
            if key.2.is_empty() && violations.is_empty() {
                violations.push(
                    ".metadata.name: required (no API server here makes one from generateName)"
                        .into(),
                );
            }
            let parsed = if !violations.is_empty() {
                Err(violations.join("; "))
            } else {
                match kind.as_str() {
                    "Chatflow" => read_as(&doc).map(|o| resources.chatflows.push(Arc::new(o))),
                    "ChatflowAccess" => read_as(&doc).map(|o| resources.accesses.push(Arc::new(o))),
                    _ => read_as(&doc).map(|o| resources.policies.push(Arc::new(o))),
                }
            };
            match parsed {
                Ok(()) => {
                    defined.insert(key, at);
                }
                Err(e) => {
                    problems.push(format!("{at}: invalid {kind}: {e}"));
                    // Counted with the invalid objects (and a CreditPolicy may refuse): a
                    // document is unreadable exactly when it has a typo.
                    // It is the object's definition: a later one is a second definition.
                    let kind = match kind.as_str() {
                        "Chatflow" => "Chatflow",
                        "ChatflowAccess" => "ChatflowAccess",
                        _ => "CreditPolicy",
                    };
                    let namespace = if key.1.is_empty() {
                        "default".to_string()
                    } else {
                        key.1.clone()
                    };
                    resources.unreadable.push(Unreadable {
                        kind,
                        namespace,
                        name: key.2.clone(),
                        error: e,
                        // No controller writes a file's status: nothing to hold.
                        claim: None,
                    });
                    if !key.2.is_empty() {
                        defined.insert(key, at);
                    }
                }
            }
        }
    }
    (resources, problems)
}

/// The namespaces a file that does not parse may hold CreditPolicies in: none unless it names
/// `CreditPolicy` somewhere, else every `namespace:` value it names (block or flow style), or `default`
/// (where an object without one lands) when it names none. Over-inclusive on purpose: each is
/// only refused, and only under `FLOWGATE_INVALID_POLICIES=refuse`.
fn policy_namespaces(text: &str) -> Vec<String> {
    if !text.contains("CreditPolicy") {
        return Vec::new();
    }
    let mut namespaces: Vec<String> = text
        .split("namespace:")
        .skip(1)
        .filter_map(|after| {
            let value = after.trim_start();
            let end = value
                .find(|c: char| c == ',' || c == '}' || c.is_whitespace())
                .unwrap_or(value.len());
            let value = value[..end].trim_matches(['"', '\'']);
            (!value.is_empty()).then(|| value.to_string())
        })
        .collect();
    namespaces.sort();
    namespaces.dedup();
    if namespaces.is_empty() {
        namespaces.push("default".into());
    }
    namespaces
}

/// A file (or a document of it) never read whole since this process started: what it holds
/// is unknown. If it may hold a CreditPolicy, that policy is counted invalid where it would
/// have charged, as one that does not parse (so that FLOWGATE_INVALID_POLICIES=refuse refuses
/// rather than serving free).
fn never_read(
    path: &Path,
    problem: String,
    text: &str,
    resources: &mut Resources,
    problems: &mut Vec<String>,
) {
    for namespace in policy_namespaces(text) {
        resources.unreadable.push(Unreadable {
            kind: "CreditPolicy",
            namespace,
            name: path.display().to_string(),
            error: problem.clone(),
            claim: None,
        });
    }
    problems.push(problem);
}

fn kept_instead(problem: &str) -> String {
    format!("{problem}; what the file held when last readable stays in force")
}

fn numbered(docs: Vec<Value>) -> Vec<(usize, Value)> {
    docs.into_iter()
        .enumerate()
        .map(|(i, doc)| (i + 1, doc))
        .collect()
}

/// A file's YAML documents, each parsed alone ([`documents::documents`]): one that is not
/// YAML (a stray tab) is only itself, and the parser's limits (documents, nodes) are each
/// document's, not the file's.
pub(crate) struct FileDocuments {
    /// Those that parse, with their number in the file.
    pub documents: Vec<(usize, Value)>,
    /// Those that do not: why, and their text.
    pub broken: Vec<(String, String)>,
}

/// A file that cannot be read at all: why, and what of it could be read as text.
pub(crate) struct Unread {
    pub problem: String,
    pub text: String,
}

/// The YAML documents of one file, or why it cannot be read.
pub(crate) fn read_documents(path: &Path) -> Result<FileDocuments, Unread> {
    let bytes = read_file(path).map_err(|problem| Unread {
        problem,
        text: String::new(),
    })?;
    let text = String::from_utf8(bytes).map_err(|e| Unread {
        problem: format!("{}: not UTF-8 text ({})", path.display(), e.utf8_error()),
        text: String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })?;
    let mut read = FileDocuments {
        documents: Vec::new(),
        broken: Vec::new(),
    };
    for (i, doc) in documents::documents(&text).into_iter().enumerate() {
        match serde_saphyr::from_str::<Value>(doc.text) {
            Ok(value) => read.documents.push((i + 1, value)),
            Err(e) => read.broken.push((
                format!(
                    "{}:{} (document {}): not YAML: {e}",
                    path.display(),
                    doc.line,
                    i + 1
                ),
                doc.text.to_string(),
            )),
        }
    }
    Ok(read)
}

/// A file's bytes, unless it is not a regular file (a FIFO would hold the reading thread for
/// good) or is larger than [`MAX_FILE`].
fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let at = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{at}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{at}: not a regular file; not read"));
    }
    if meta.len() > MAX_FILE {
        return Err(format!(
            "{at}: {} bytes, more than the {} MiB a resources file may hold; not read",
            meta.len(),
            MAX_FILE >> 20
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("{at}: {e}"))?;
    Ok(bytes)
}

fn str_at(doc: &Value, pointer: &str) -> String {
    doc.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// One file as the poll sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileState {
    path: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
    /// The inode on Unix: a file written anew and renamed into place (editors, a ConfigMap
    /// mount's swap) is another file even at the same time and length.
    inode: u64,
    /// A hash of the content while the file is recent (modified in the last [`RECENT`]): two
    /// same-length edits within the file system's time granularity, the poll between them,
    /// differ in content only.
    recent: u64,
    /// Empty and written in the last [`EMPTIED_GRACE`]: when that ends, the file changes, and
    /// the load that keeps what it held ([`emptied_lately`]) is done again.
    emptied: bool,
}

/// How long a file emptied by a write keeps what it last held (see `load_keeping`).
const EMPTIED_GRACE: Duration = Duration::from_secs(30);

/// Whether `path` is empty and was written less than [`EMPTIED_GRACE`] before `now` (a time
/// ahead of this clock, another machine's or `touch -d`'s, is no grace).
fn emptied_lately(path: &Path, now: SystemTime) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| {
        meta.len() == 0
            && meta
                .modified()
                .is_ok_and(|at| now.duration_since(at).is_ok_and(|age| age < EMPTIED_GRACE))
    })
}

/// How long after its modification a file's content is part of its fingerprint.
const RECENT: Duration = Duration::from_secs(3);

/// What the directory looks like now: changes when a file is added, removed or written.
fn fingerprint(dir: &ResourcesDir) -> Vec<FileState> {
    fingerprint_at(dir, SystemTime::now())
}

/// [`fingerprint`] as of `now`.
fn fingerprint_at(dir: &ResourcesDir, now: SystemTime) -> Vec<FileState> {
    dir.yaml_files()
        .map(|found| found.files)
        .unwrap_or_default()
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.as_ref().map_or(0, std::fs::Metadata::len);
            #[cfg(unix)]
            let inode = meta.as_ref().map_or(0, std::os::unix::fs::MetadataExt::ino);
            #[cfg(not(unix))]
            let inode = 0;
            let is_recent =
                modified.is_none_or(|at| now.duration_since(at).map_or(true, |age| age < RECENT));
            // Only a regular file is read (a FIFO would hold the thread), and only one that
            // may be served (see `read_file`).
            let readable = meta
                .as_ref()
                .is_some_and(|m| m.is_file() && m.len() <= MAX_FILE);
            // A file that is not read is only its path: it growing does not hold a load back.
            if !readable {
                return FileState {
                    path,
                    modified: None,
                    len: 0,
                    inode: 0,
                    recent: 0,
                    emptied: false,
                };
            }
            let recent = if is_recent {
                std::fs::read(&path).map_or(0, |bytes| {
                    use std::hash::{Hash, Hasher};
                    let mut hasher = std::hash::DefaultHasher::new();
                    bytes.hash(&mut hasher);
                    hasher.finish()
                })
            } else {
                0
            };
            let emptied = len == 0
                && modified
                    .is_some_and(|at| now.duration_since(at).is_ok_and(|age| age < EMPTIED_GRACE));
            FileState {
                path,
                modified,
                len,
                inode,
                recent,
                emptied,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
