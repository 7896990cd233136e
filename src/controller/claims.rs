//! Who claims which Flowise chatflow, as the controller sees it: the other claimants a Chatflow
//! reconcile weighs (as the proxy's index does), and the claimants to reconcile again when a
//! claim starts, moves or ends, so their `Conflict` follows at once rather than at their next
//! resync.

use std::collections::HashMap;

use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};

use crate::crd::{Chatflow, Lenient};
use crate::index::rules::{
    claimed_flowise_id, held_before, holds, unreadable_claim, unreadable_held_before,
};

/// What `obj` claims: a readable Chatflow as the index reads it, an unreadable one as far as its
/// stored document says ([`unreadable_claim`]).
fn claim(obj: &Lenient<Chatflow>) -> Option<String> {
    match obj {
        Lenient::Read(cf) => claimed_flowise_id(cf),
        Lenient::Unreadable(bad) => unreadable_claim(bad).map(|(id, _)| id),
    }
}

/// Whether `obj` holds `id` ([`holds`], [`unreadable_claim`]), or with `current` false, whether
/// its status says it held it, whatever spec the status was written for ([`held_before`]).
fn holds_it(obj: &Lenient<Chatflow>, id: &str, current: bool) -> bool {
    match obj {
        Lenient::Read(cf) if current => holds(cf, id),
        Lenient::Read(cf) => held_before(cf, id),
        Lenient::Unreadable(bad) => if current {
            unreadable_claim(bad)
        } else {
            unreadable_held_before(bad)
        }
        .is_some_and(|(claimed, holds)| holds && claimed.eq_ignore_ascii_case(id)),
    }
}

/// Another Chatflow that claims a Flowise chatflow ([`others`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Claimant {
    /// namespace/name
    pub name: String,
    /// It holds the chatflow, as the proxy's index reads it ([`holds`]): it is served.
    pub holds: bool,
    /// Its status says it held the chatflow, also when written for an older spec
    /// ([`held_before`]): it is the holder while the controller has not compared its edited
    /// spec yet, and nothing else writes to the chatflow or deletes it meanwhile.
    pub keeps: bool,
}

/// The other Chatflows, in any namespace, that claim Flowise chatflow `id`, and whether each
/// holds it as the proxy's index reads them ([`claimed_flowise_id`], [`holds`]; one that cannot
/// be read by what its stored document says): one being deleted claims nothing.
pub(super) fn others(store: &Store<Lenient<Chatflow>>, cf: &Chatflow, id: &str) -> Vec<Claimant> {
    let me = (cf.namespace(), cf.metadata.name.as_deref());
    let mut others: Vec<Claimant> = store
        .state()
        .iter()
        .filter(|other| (other.namespace(), other.meta().name.as_deref()) != me)
        .filter(|other| other.meta().deletion_timestamp.is_none())
        .filter(|other| claim(other).is_some_and(|o| o.eq_ignore_ascii_case(id)))
        .map(|other| Claimant {
            name: format!(
                "{}/{}",
                other.namespace().unwrap_or_default(),
                other.name_any()
            ),
            holds: holds_it(other, id, true),
            keeps: holds_it(other, id, false),
        })
        .collect();
    others.sort();
    others
}

/// What each Chatflow claimed at its last watch event, to find the claimants to reconcile again
/// after the next one.
#[derive(Default)]
pub(super) struct Claims {
    claimed: HashMap<ObjectRef<Lenient<Chatflow>>, String>,
}

impl Claims {
    /// The Chatflows to reconcile after `event`: the other claimants of what the Chatflow it
    /// names claims now and of what it claimed before. `store` has already applied the event.
    /// The first listing (and every relist) only records the claims; a relist that no longer
    /// has a Chatflow ends its claim as a deletion does.
    pub fn after(
        &mut self,
        store: &Store<Lenient<Chatflow>>,
        event: &Event<Lenient<Chatflow>>,
    ) -> Vec<ObjectRef<Lenient<Chatflow>>> {
        match event {
            Event::Apply(cf) => self.changed(store, cf, claim(cf)),
            Event::Delete(cf) => self.changed(store, cf, None),
            Event::InitApply(cf) => {
                if let Some(id) = claim(cf) {
                    self.claimed.insert(ObjectRef::from_obj(cf), id);
                }
                Vec::new()
            }
            Event::Init => Vec::new(),
            Event::InitDone => {
                let gone: Vec<ObjectRef<Lenient<Chatflow>>> = self
                    .claimed
                    .keys()
                    .filter(|me| store.get(me).is_none())
                    .cloned()
                    .collect();
                let mut again = Vec::new();
                for me in gone {
                    if let Some(id) = self.claimed.remove(&me) {
                        again.extend(claimants(store, &[id], &me));
                    }
                }
                again
            }
        }
    }

    fn changed(
        &mut self,
        store: &Store<Lenient<Chatflow>>,
        cf: &Lenient<Chatflow>,
        now: Option<String>,
    ) -> Vec<ObjectRef<Lenient<Chatflow>>> {
        let me = ObjectRef::from_obj(cf);
        let before = match &now {
            Some(id) => self.claimed.insert(me.clone(), id.clone()),
            None => self.claimed.remove(&me),
        };
        let ids: Vec<String> = match (before, now) {
            (Some(before), Some(now)) if before == now => vec![now],
            (before, now) => before.into_iter().chain(now).collect(),
        };
        claimants(store, &ids, &me)
    }
}

/// The Chatflows in `store` other than `me` that claim one of `ids`.
fn claimants(
    store: &Store<Lenient<Chatflow>>,
    ids: &[String],
    me: &ObjectRef<Lenient<Chatflow>>,
) -> Vec<ObjectRef<Lenient<Chatflow>>> {
    if ids.is_empty() {
        return Vec::new();
    }
    store
        .state()
        .iter()
        .filter(|other| claim(other).is_some_and(|o| ids.contains(&o)))
        .map(|other| ObjectRef::from_obj(other.as_ref()))
        .filter(|other| other != me)
        .collect()
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector::store::Writer;
    use serde_json::json;

    use super::*;

    fn chatflow(name: &str, id: &str) -> Lenient<Chatflow> {
        serde_json::from_value(json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow",
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {"flowiseId": id},
        }))
        .expect("chatflow literal")
    }

    /// Applies `event` to the store, as the reflector does, then asks `claims`.
    fn after(
        writer: &mut Writer<Lenient<Chatflow>>,
        claims: &mut Claims,
        event: Event<Lenient<Chatflow>>,
    ) -> Vec<String> {
        writer.apply_watcher_event(&event);
        let store = writer.as_reader();
        let mut names: Vec<String> = claims
            .after(&store, &event)
            .into_iter()
            .map(|r| r.name)
            .collect();
        names.sort();
        names
    }

    #[test]
    fn claims_from_the_first_listing_trigger_their_rivals_when_they_end() {
        let mut writer = Writer::<Lenient<Chatflow>>::default();
        let mut claims = Claims::default();
        let (holder, rival, other) = (
            chatflow("holder", "x"),
            chatflow("rival", "x"),
            chatflow("other", "y"),
        );
        for event in [
            Event::Init,
            Event::InitApply(holder.clone()),
            Event::InitApply(rival.clone()),
            Event::InitApply(other.clone()),
        ] {
            assert!(after(&mut writer, &mut claims, event).is_empty());
        }
        assert!(after(&mut writer, &mut claims, Event::InitDone).is_empty());

        // Deleted after a listing: its rival is reconciled, the other claim is not.
        assert_eq!(
            after(&mut writer, &mut claims, Event::Delete(holder.clone())),
            ["rival"]
        );
        // A claim moved: the claimants of the old id and of the new one.
        assert_eq!(
            after(
                &mut writer,
                &mut claims,
                Event::Apply(chatflow("rival", "y"))
            ),
            ["other"]
        );
        assert_eq!(
            after(&mut writer, &mut claims, Event::Apply(holder)),
            Vec::<String>::new(),
            "back on x alone"
        );
        // A relist without `other` (deleted while the watch was away) ends its claim.
        for event in [
            Event::Init,
            Event::InitApply(chatflow("holder", "x")),
            Event::InitApply(chatflow("rival", "y")),
        ] {
            assert!(after(&mut writer, &mut claims, event).is_empty());
        }
        assert_eq!(after(&mut writer, &mut claims, Event::InitDone), ["rival"]);
    }

    #[test]
    fn a_holder_that_cannot_be_read_is_weighed_as_one() {
        let mut writer = Writer::<Lenient<Chatflow>>::default();
        // It held "x" (Ready, its id in status) before a CRD bound made it unreadable.
        let holder: Lenient<Chatflow> = serde_json::from_value(json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow",
            "metadata": {"name": "holder", "namespace": "team-b", "generation": 2},
            "spec": {"flowiseId": "X", "deletionPolicy": "Sometimes"},
            "status": {"flowiseId": "x", "conditions": [{"type": "Ready", "status": "True",
                "reason": "Synced", "message": "in sync", "observedGeneration": 2,
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        }))
        .expect("parses");
        assert!(holder.read().is_none(), "unreadable");
        writer.apply_watcher_event(&Event::Apply(holder));
        let Lenient::Read(rival) = chatflow("rival", "x") else {
            panic!("readable");
        };
        let store = writer.as_reader();
        assert_eq!(
            others(&store, &rival, "x"),
            [Claimant {
                name: "team-b/holder".to_string(),
                holds: true,
                keeps: true
            }]
        );
        assert!(others(&store, &rival, "y").is_empty());
    }

    /// A holder whose spec was edited (its Ready written for the generation before) holds
    /// nothing for the index until the controller has compared the new spec, but keeps the
    /// chatflow from other claims' writes and deletes meanwhile; readable or not.
    #[test]
    fn a_holder_edited_since_its_status_keeps_its_chatflow() {
        let held = |generation: i64, unreadable: bool| -> Lenient<Chatflow> {
            let policy = if unreadable { "Sometimes" } else { "Retain" };
            serde_json::from_value(json!({
                "apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow",
                "metadata": {"name": "holder", "namespace": "team-b", "generation": generation},
                "spec": {"flowiseId": "x", "deletionPolicy": policy},
                "status": {"flowiseId": "x", "conditions": [{"type": "Ready", "status": "True",
                    "reason": "Synced", "message": "in sync", "observedGeneration": 2,
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
            }))
            .expect("parses")
        };
        let Lenient::Read(rival) = chatflow("rival", "x") else {
            panic!("readable");
        };
        for unreadable in [false, true] {
            for (generation, holds) in [(2, true), (3, false)] {
                let mut writer = Writer::<Lenient<Chatflow>>::default();
                let holder = held(generation, unreadable);
                assert_eq!(holder.read().is_none(), unreadable);
                writer.apply_watcher_event(&Event::Apply(holder));
                let claimants = others(&writer.as_reader(), &rival, "x");
                assert_eq!(
                    claimants,
                    [Claimant {
                        name: "team-b/holder".to_string(),
                        holds,
                        keeps: true
                    }],
                    "generation {generation}, unreadable {unreadable}"
                );
            }
        }
    }
}
