//! Who claims which Flowise chatflow, as the controller sees it: the other claimants a Chatflow
//! reconcile weighs (as the proxy's index does), and the claimants to reconcile again when a
//! claim starts, moves or ends, so their `Conflict` follows at once rather than at their next
//! resync.

use std::collections::HashMap;

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;

use crate::crd::Chatflow;
use crate::index::rules::{claimed_flowise_id, holds};

/// The other Chatflows (namespace/name), in any namespace, that claim Flowise chatflow `id`, and
/// whether each holds it, as the proxy's index reads them ([`claimed_flowise_id`], [`holds`]):
/// one being deleted claims nothing.
pub(super) fn others(store: &Store<Chatflow>, cf: &Chatflow, id: &str) -> Vec<(String, bool)> {
    let me = (cf.namespace(), cf.metadata.name.as_deref());
    let mut others: Vec<(String, bool)> = store
        .state()
        .iter()
        .filter(|other| (other.namespace(), other.metadata.name.as_deref()) != me)
        .filter(|other| other.metadata.deletion_timestamp.is_none())
        .filter(|other| claimed_flowise_id(other).is_some_and(|o| o.eq_ignore_ascii_case(id)))
        .map(|other| {
            let name = format!(
                "{}/{}",
                other.namespace().unwrap_or_default(),
                other.name_any()
            );
            (name, holds(other, id))
        })
        .collect();
    others.sort();
    others
}

/// What each Chatflow claimed at its last watch event, to find the claimants to reconcile again
/// after the next one.
#[derive(Default)]
pub(super) struct Claims {
    claimed: HashMap<ObjectRef<Chatflow>, String>,
}

impl Claims {
    /// The Chatflows to reconcile after `event`: the other claimants of what the Chatflow it
    /// names claims now and of what it claimed before. `store` has already applied the event.
    /// The first listing (and every relist) only records the claims; a relist that no longer
    /// has a Chatflow ends its claim as a deletion does.
    pub fn after(
        &mut self,
        store: &Store<Chatflow>,
        event: &Event<Chatflow>,
    ) -> Vec<ObjectRef<Chatflow>> {
        match event {
            Event::Apply(cf) => self.changed(store, cf, claimed_flowise_id(cf)),
            Event::Delete(cf) => self.changed(store, cf, None),
            Event::InitApply(cf) => {
                if let Some(id) = claimed_flowise_id(cf) {
                    self.claimed.insert(ObjectRef::from_obj(cf), id);
                }
                Vec::new()
            }
            Event::Init => Vec::new(),
            Event::InitDone => {
                let gone: Vec<ObjectRef<Chatflow>> = self
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
        store: &Store<Chatflow>,
        cf: &Chatflow,
        now: Option<String>,
    ) -> Vec<ObjectRef<Chatflow>> {
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
    store: &Store<Chatflow>,
    ids: &[String],
    me: &ObjectRef<Chatflow>,
) -> Vec<ObjectRef<Chatflow>> {
    if ids.is_empty() {
        return Vec::new();
    }
    store
        .state()
        .iter()
        .filter(|other| claimed_flowise_id(other).is_some_and(|o| ids.contains(&o)))
        .map(|other| ObjectRef::from_obj(other.as_ref()))
        .filter(|other| other != me)
        .collect()
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector::store::Writer;
    use serde_json::json;

    use super::*;

    fn chatflow(name: &str, id: &str) -> Chatflow {
        serde_json::from_value(json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow",
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {"flowiseId": id},
        }))
        .expect("chatflow literal")
    }

    /// Applies `event` to the store, as the reflector does, then asks `claims`.
    fn after(
        writer: &mut Writer<Chatflow>,
        claims: &mut Claims,
        event: Event<Chatflow>,
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
        let mut writer = Writer::<Chatflow>::default();
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
}
