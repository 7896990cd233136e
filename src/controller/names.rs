//! Which namespaces' ChatflowAccess and CreditPolicy objects to reconcile after a Chatflow
//! event. Their status says which of the Chatflows they name exist in their namespace, so only a
//! Chatflow that comes or goes changes it: not an update (a status write at every sync), which
//! in a namespace of thousands of Chatflows and grants would reconcile every grant many times a
//! second. A Chatflow being deleted counts as gone (the proxy serves it no more), whatever
//! finalizer keeps it.

use std::collections::{BTreeSet, HashSet};

use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};

use crate::crd::{Chatflow, Lenient};

/// A Chatflow's namespace and name.
type Key = (String, String);

/// The Chatflows known to exist, by namespace and name.
#[derive(Default)]
pub struct Names {
    known: HashSet<Key>,
    /// During a (re)list: the names it listed, and the namespaces that gained one.
    relisting: Option<(HashSet<Key>, BTreeSet<String>)>,
}

impl Names {
    /// The namespaces whose set of Chatflow names `event` changed. A (re)list reports them once
    /// it is done, each once: those that gained a Chatflow, and those that lost one while the
    /// watch was down.
    pub fn after(&mut self, event: &Event<Lenient<Chatflow>>) -> Vec<String> {
        match event {
            Event::Apply(cf) if deleting(cf) => {
                let key = key(cf);
                if self.known.remove(&key) {
                    vec![key.0]
                } else {
                    Vec::new()
                }
            }
            Event::Apply(cf) => {
                let key = key(cf);
                let namespace = key.0.clone();
                if self.known.insert(key) {
                    vec![namespace]
                } else {
                    Vec::new()
                }
            }
            Event::Delete(cf) => {
                let key = key(cf);
                if self.known.remove(&key) {
                    vec![key.0]
                } else {
                    Vec::new()
                }
            }
            Event::Init => {
                self.relisting = Some((HashSet::new(), BTreeSet::new()));
                Vec::new()
            }
            Event::InitApply(cf) if deleting(cf) => Vec::new(),
            Event::InitApply(cf) => {
                let key = key(cf);
                if let Some((listed, gained)) = &mut self.relisting {
                    if !self.known.contains(&key) {
                        gained.insert(key.0.clone());
                    }
                    listed.insert(key);
                }
                Vec::new()
            }
            Event::InitDone => {
                let Some((listed, mut changed)) = self.relisting.take() else {
                    return Vec::new();
                };
                changed.extend(self.known.difference(&listed).map(|(ns, _)| ns.clone()));
                self.known = listed;
                changed.into_iter().collect()
            }
        }
    }
}

fn key(cf: &Lenient<Chatflow>) -> Key {
    (cf.namespace().unwrap_or_default(), cf.name_any())
}

/// Whether `cf` is being deleted (a finalizer keeps it until its cleanup is done).
pub fn deleting(cf: &Lenient<Chatflow>) -> bool {
    cf.meta().deletion_timestamp.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chatflow(ns: &str, name: &str, generation: i64) -> Lenient<Chatflow> {
        let mut cf = Chatflow::new(
            name,
            serde_json::from_value(serde_json::json!({"flowiseName": name})).expect("spec"),
        );
        cf.metadata.namespace = Some(ns.into());
        cf.metadata.generation = Some(generation);
        Lenient::Read(std::sync::Arc::new(cf))
    }

    #[test]
    fn only_a_chatflow_that_comes_or_goes_changes_its_namespace() {
        let mut names = Names::default();
        // The first list: each namespace once, when it is done.
        assert!(names.after(&Event::Init).is_empty());
        for cf in [
            chatflow("a", "x", 1),
            chatflow("a", "y", 1),
            chatflow("b", "z", 1),
        ] {
            assert!(names.after(&Event::InitApply(cf)).is_empty());
        }
        assert_eq!(names.after(&Event::InitDone), ["a", "b"]);
        // An update (a status write) changes nothing; a new one, or one gone, does.
        assert!(names.after(&Event::Apply(chatflow("a", "x", 2))).is_empty());
        assert_eq!(names.after(&Event::Apply(chatflow("c", "w", 1))), ["c"]);
        assert_eq!(names.after(&Event::Delete(chatflow("a", "y", 1))), ["a"]);
        assert!(
            names
                .after(&Event::Delete(chatflow("a", "y", 1)))
                .is_empty()
        );
        // Being deleted (its cleanup may be stuck for long): gone at once, and once only.
        let mut leaving = chatflow("a", "x", 2);
        if let Lenient::Read(cf) = &mut leaving {
            std::sync::Arc::make_mut(cf).metadata.deletion_timestamp = Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
            );
        }
        assert_eq!(names.after(&Event::Apply(leaving.clone())), ["a"]);
        assert!(names.after(&Event::Apply(leaving.clone())).is_empty());
        assert!(names.after(&Event::Delete(leaving.clone())).is_empty());
        names.after(&Event::Apply(chatflow("a", "x", 3)));
        // A relist after the watch was down: `b`'s Chatflow went meanwhile, `d` gained one,
        // and what was known before changes nothing.
        names.after(&Event::Init);
        for cf in [
            chatflow("a", "x", 3),
            chatflow("c", "w", 1),
            chatflow("d", "v", 1),
        ] {
            names.after(&Event::InitApply(cf));
        }
        assert_eq!(names.after(&Event::InitDone), ["b", "d"]);
    }
}
