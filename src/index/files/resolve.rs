//! A Chatflow's status from what Flowise holds, as the controller would write it, for the
//! resources of a directory (no API server keeps a status there).
//!
//! Of several Chatflows claiming one Flowise chatflow one holds it and the others are in
//! Conflict, as in a cluster: the one that held it at the last load keeps it while it claims it
//! still — also while its file does not parse, as a cluster's unreadable holder does — and a new
//! claim goes to the first defined (path order). Without that memory a file added or fixed
//! before the holder's path would take the chatflow over: another namespace's grants on it,
//! the holder's budgets no longer charged. A holder whose name Flowise makes ambiguous (a second
//! chatflow of that name) keeps what it held too, unserved until the name is one chatflow's.

use std::collections::HashMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::super::Resources;
use super::super::rules::{ChatflowSource, chatflow_source};
use crate::crd::ChatflowStatus;
use crate::crd::conditions::{self, READY, reason};
use crate::flowise::FlowiseChatflow;

/// Who holds each Flowise chatflow: its id (lowercase) → `namespace/name` of the Chatflow. Kept
/// from one load of the directory to the next.
pub type Holders = HashMap<String, String>;

/// Fills each Chatflow's status from Flowise's listing (or why there is none), and updates
/// `held`. An unreadable Chatflow that held a chatflow keeps holding it (its `claim` is set),
/// so that a typo in its file does not hand the chatflow to another claimant.
pub fn resolve(
    resources: &mut Resources,
    flowise: Result<&[FlowiseChatflow], String>,
    now: Timestamp,
    held: &mut Holders,
) {
    let key = |ns: Option<&str>, name: Option<&str>| {
        format!("{}/{}", ns.unwrap_or_default(), name.unwrap_or_default())
    };
    // What each Chatflow finds in Flowise: the one chatflow, or why not (and, for a name
    // several chatflows carry, those chatflows).
    type Failure<'f> = (bool, &'static str, String, Vec<&'f FlowiseChatflow>);
    let found: Vec<Result<&FlowiseChatflow, Failure<'_>>> = resources
        .chatflows
        .iter()
        .map(|cf| match (chatflow_source(&cf.spec), &flowise) {
            (Err(e), _) => Err((false, reason::INVALID_SPEC, e.to_string(), Vec::new())),
            (Ok(ChatflowSource::Definition(_)), _) => Err((
                false,
                reason::INVALID_SPEC,
                "owning a definition needs the controller and a cluster; use flowiseId or flowiseName with --resources-dir".into(),
                Vec::new(),
            )),
            (Ok(_), Err(why)) => Err((
                false,
                reason::FLOWISE_UNREACHABLE,
                why.clone(),
                Vec::new(),
            )),
            (Ok(source), Ok(list)) => {
                let found: Vec<&FlowiseChatflow> = match &source {
                    ChatflowSource::Id(id) => {
                        list.iter().filter(|c| c.id.eq_ignore_ascii_case(id)).collect()
                    }
                    ChatflowSource::Name(name) => {
                        list.iter().filter(|c| &c.name == name).collect()
                    }
                    ChatflowSource::Definition(_) => Vec::new(),
                };
                match found.as_slice() {
                    [one] => Ok(*one),
                    [] => Err((
                        false,
                        reason::NOT_FOUND_IN_FLOWISE,
                        "no such chatflow in Flowise".into(),
                        Vec::new(),
                    )),
                    many => Err((
                        false,
                        reason::FLOWISE_CONFLICT,
                        format!("{} Flowise chatflows carry this name", many.len()),
                        many.to_vec(),
                    )),
                }
            }
        })
        .collect();

    // Without a listing nothing is known of who claims what: the holders stand.
    if flowise.is_ok() {
        let mut claims: HashMap<String, Vec<String>> = HashMap::new();
        for (cf, found) in resources.chatflows.iter().zip(&found) {
            let me = key(
                cf.metadata.namespace.as_deref(),
                cf.metadata.name.as_deref(),
            );
            // An ambiguous name still claims the one of its chatflows its Chatflow held.
            let claimed = match found {
                Ok(one) => Some(*one),
                Err((.., matches)) => held_of(held, matches, &me),
            };
            if let Some(one) = claimed {
                claims
                    .entry(one.id.to_ascii_lowercase())
                    .or_default()
                    .push(me);
            }
        }
        let unreadable: Vec<String> = resources
            .unreadable
            .iter()
            .filter(|u| u.kind == "Chatflow")
            .map(|u| format!("{}/{}", u.namespace, u.name))
            .collect();
        // A holder that finds nothing under what it claims (its flowiseId, or the name it
        // adopted by: re-imported in Flowise, renamed and back) still claims what it held, as
        // the controller keeps its status's id: it is not handed to a rival meanwhile. (By
        // name, whatever its spec's name now: the files keep no status to compare with.)
        let mut lost: Vec<(String, String)> = Vec::new();
        for (cf, found) in resources.chatflows.iter().zip(&found) {
            let Err((_, reason::NOT_FOUND_IN_FLOWISE, ..)) = found else {
                continue;
            };
            let me = key(
                cf.metadata.namespace.as_deref(),
                cf.metadata.name.as_deref(),
            );
            for (id, old) in held.iter().filter(|(_, old)| **old == me) {
                let still = match chatflow_source(&cf.spec) {
                    Ok(ChatflowSource::Id(wanted)) => wanted.eq_ignore_ascii_case(id),
                    Ok(ChatflowSource::Name(_)) => true,
                    _ => false,
                };
                if still {
                    lost.push((id.clone(), old.clone()));
                }
            }
        }
        let mut next = Holders::new();
        for (id, claimants) in &claims {
            let holder = match held.get(id) {
                Some(old)
                    if claimants.contains(old)
                        || unreadable.contains(old)
                        || lost.iter().any(|(i, h)| i == id && h == old) =>
                {
                    old.clone()
                }
                _ => claimants[0].clone(),
            };
            next.insert(id.clone(), holder);
        }
        // A holder whose file does not parse keeps what it held, claimed by others or not.
        for (id, old) in held.iter() {
            if unreadable.contains(old) {
                next.entry(id.clone()).or_insert_with(|| old.clone());
            }
        }
        for (id, old) in lost {
            next.entry(id).or_insert(old);
        }
        for bad in resources.unreadable.iter_mut() {
            let me = format!("{}/{}", bad.namespace, bad.name);
            if bad.kind == "Chatflow"
                && let Some((id, _)) = next.iter().find(|(_, holder)| **holder == me)
            {
                bad.claim = Some((id.clone(), true));
            }
        }
        *held = next;
    }

    for (cf, found) in resources.chatflows.iter_mut().zip(found) {
        let me = key(
            cf.metadata.namespace.as_deref(),
            cf.metadata.name.as_deref(),
        );
        let mut status = ChatflowStatus::default();
        let generation = cf.metadata.generation;
        let ready = |ok, why: &str, message: String| {
            conditions::new(READY, ok, why, message, generation, now)
        };
        let condition = match found {
            Err((ok, why, message, matches)) => {
                // Recorded as held, so that the index keeps the chatflow from the other claims.
                if let Some(one) = held_of(held, &matches, &me) {
                    status.flowise_id = Some(one.id.clone());
                    status.flowise_name = Some(one.name.clone());
                } else if why == reason::NOT_FOUND_IN_FLOWISE {
                    // Still claimed while not found (see `lost` above), as the controller's
                    // status keeps its id.
                    if let Some((id, _)) = held.iter().find(|(_, holder)| **holder == me) {
                        status.flowise_id = Some(id.clone());
                        if let Ok(ChatflowSource::Name(name)) = chatflow_source(&cf.spec) {
                            status.flowise_name = Some(name.to_string());
                        }
                    }
                }
                ready(ok, why, message)
            }
            Ok(one) => {
                status.flowise_id = Some(one.id.clone());
                status.flowise_name = Some(one.name.clone());
                status.flow_type = Some(one.flow_type.clone()).filter(|t| !t.is_empty());
                status.deployed = one.deployed;
                status.api_key_bound = Some(one.api_key_bound());
                status.flowise_created_at = one.created_date.map(Time);
                status.flowise_updated_at = one.updated_date.map(Time);
                status.last_sync_time = Some(Time(now));
                let holder = held
                    .get(&one.id.to_ascii_lowercase())
                    .cloned()
                    .unwrap_or_else(|| me.clone());
                if holder != me {
                    ready(
                        false,
                        reason::CONFLICT,
                        format!("Flowise chatflow {} is held by {holder}", one.id),
                    )
                } else if cf.spec.api_key_secret_ref.is_some() {
                    // Every prediction would be a 503: the key is read from a Secret. Invalid,
                    // as in a cluster an invalid spec is, and holding what it claims.
                    ready(
                        false,
                        reason::INVALID_SPEC,
                        "apiKeySecretRef needs a cluster to read the Secret from; with \
                         --resources-dir use a chatflow without an API key"
                            .into(),
                    )
                } else if cf.spec.suspended {
                    ready(false, reason::SUSPENDED, "suspended by its spec".into())
                } else {
                    ready(true, reason::SYNCED, "found in Flowise".into())
                }
            }
        };
        status.conditions.push(condition);
        let mut updated = (**cf).clone();
        updated.status = Some(status);
        *cf = std::sync::Arc::new(updated);
    }
}

/// The one of `matches` (the chatflows an ambiguous name matches) that `me` holds.
fn held_of<'f>(
    held: &Holders,
    matches: &[&'f FlowiseChatflow],
    me: &str,
) -> Option<&'f FlowiseChatflow> {
    matches
        .iter()
        .find(|c| held.get(&c.id.to_ascii_lowercase()).map(String::as_str) == Some(me))
        .copied()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::super::{Unreadable, compile};
    use super::*;
    use crate::crd::Chatflow;
    use crate::flowise::FlowiseApi;
    use crate::flowise::fake::FakeFlowise;

    fn chatflow(yaml_spec: &str) -> Arc<Chatflow> {
        Arc::new(
            serde_saphyr::from_str(&format!(
                "apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\nmetadata: {{name: c, namespace: n}}\nspec: {yaml_spec}\n"
            ))
            .expect("fixture"),
        )
    }

    fn named(ns: &str, spec: &str) -> Arc<Chatflow> {
        let mut cf = (*chatflow(spec)).clone();
        cf.metadata.namespace = Some(ns.into());
        Arc::new(cf)
    }

    fn ready_reason(cf: &Chatflow) -> (String, String) {
        let c = &cf.status.as_ref().expect("status").conditions[0];
        (c.status.clone(), c.reason.clone())
    }

    fn of(chatflows: Vec<Arc<Chatflow>>) -> Resources {
        Resources {
            chatflows,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn chatflows_resolve_by_id_and_name_like_the_controller_would() {
        let fake = FakeFlowise::default();
        let support = fake.insert("Support Bot", "CHATFLOW", None);
        fake.insert("Twin", "CHATFLOW", None);
        fake.insert("Twin", "AGENTFLOW", None);
        let list = fake.list().await.expect("list");
        let mut res = of(vec![
            chatflow(&format!("{{flowiseId: {support}}}")),
            chatflow("{flowiseName: Support Bot}"),
            chatflow("{flowiseName: Twin}"),
            chatflow("{flowiseName: Nobody}"),
            chatflow("{definition: {type: CHATFLOW, flowData: {nodes: []}}}"),
            chatflow("{flowiseName: Support Bot, suspended: true}"),
        ]);
        resolve(&mut res, Ok(&list), Timestamp::now(), &mut Holders::new());
        let reasons: Vec<(String, String)> =
            res.chatflows.iter().map(|c| ready_reason(c)).collect();
        let expect = |s: &str, r: &str| (s.to_string(), r.to_string());
        assert_eq!(
            reasons,
            vec![
                expect("True", "Synced"),
                expect("True", "Synced"),
                expect("False", "FlowiseConflict"),
                expect("False", "NotFoundInFlowise"),
                expect("False", "InvalidSpec"),
                expect("False", "Suspended"),
            ]
        );
        assert_eq!(
            res.chatflows[1]
                .status
                .as_ref()
                .and_then(|s| s.flowise_id.clone()),
            Some(support)
        );
        let snap = compile(&res);
        assert!(snap.chatflow_by_name("n", "c").is_some());
    }

    #[tokio::test]
    async fn a_second_claim_on_a_served_chatflow_is_a_conflict_not_an_outage() {
        let fake = FakeFlowise::default();
        let support = fake.insert("Support Bot", "CHATFLOW", None);
        let list = fake.list().await.expect("list");
        let mut res = of(vec![
            named("team-a", &format!("{{flowiseId: {support}}}")),
            named("team-b", "{flowiseName: Support Bot}"),
        ]);
        resolve(&mut res, Ok(&list), Timestamp::now(), &mut Holders::new());
        assert_eq!(
            ready_reason(&res.chatflows[0]),
            ("True".into(), "Synced".into())
        );
        assert_eq!(
            ready_reason(&res.chatflows[1]),
            ("False".into(), "Conflict".into())
        );
        let snap = compile(&res);
        let served = snap.chatflow_by_flowise_id(&support).expect("still served");
        assert_eq!(served.rule.namespace, "team-a");
    }

    /// A listing that lacks the held chatflow for a moment (re-imported in Flowise, or renamed
    /// and back) leaves it with its holder, by id or by adopted name, not with the first rival.
    #[tokio::test]
    async fn the_holder_keeps_its_chatflow_through_a_listing_that_lacks_it() {
        let fake = FakeFlowise::default();
        let support = fake.insert("Support Bot", "CHATFLOW", None);
        let list = fake.list().await.expect("list");
        let served = |res: &Resources| {
            compile(res)
                .chatflow_by_flowise_id(&support)
                .map(|cf| cf.rule.namespace.clone())
        };
        for holder in [
            format!("{{flowiseId: {support}}}"),
            "{flowiseName: Support Bot}".into(),
        ] {
            let mut held = Holders::new();
            let rival = named("team-a", &format!("{{flowiseId: {support}}}"));
            let mut res = of(vec![named("team-b", &holder)]);
            resolve(&mut res, Ok(&list), Timestamp::now(), &mut held);
            assert_eq!(served(&res).as_deref(), Some("team-b"), "{holder}");
            let mut res = of(vec![rival.clone(), named("team-b", &holder)]);
            resolve(&mut res, Ok(&[]), Timestamp::now(), &mut held);
            assert_eq!(
                ready_reason(&res.chatflows[1]),
                ("False".into(), "NotFoundInFlowise".into())
            );
            let mut res = of(vec![rival, named("team-b", &holder)]);
            resolve(&mut res, Ok(&list), Timestamp::now(), &mut held);
            assert_eq!(served(&res).as_deref(), Some("team-b"), "{holder}");
        }
        // Renamed in Flowise, and back: the holder by name finds nothing meanwhile, the rival
        // by id finds it and is in Conflict, not served.
        let renamed: Vec<FlowiseChatflow> = list
            .iter()
            .cloned()
            .map(|mut c| {
                c.name = "Support Bot 2".into();
                c
            })
            .collect();
        let mut held = Holders::new();
        let (rival, holder) = (
            named("team-a", &format!("{{flowiseId: {support}}}")),
            named("team-b", "{flowiseName: Support Bot}"),
        );
        let mut res = of(vec![holder.clone()]);
        resolve(&mut res, Ok(&list), Timestamp::now(), &mut held);
        for (listing, want) in [(&renamed, "NotFoundInFlowise"), (&list, "Synced")] {
            let mut res = of(vec![rival.clone(), holder.clone()]);
            resolve(&mut res, Ok(listing), Timestamp::now(), &mut held);
            assert_eq!(ready_reason(&res.chatflows[0]).1, "Conflict");
            assert_eq!(ready_reason(&res.chatflows[1]).1, want);
            assert_ne!(served(&res).as_deref(), Some("team-a"));
        }
    }

    /// A Chatflow with an API key Secret is invalid without a cluster, and, as an invalid spec
    /// in a cluster, still holds what it claims: a rival is in Conflict.
    #[tokio::test]
    async fn an_api_key_secret_is_invalid_without_a_cluster_and_keeps_its_claim() {
        let fake = FakeFlowise::default();
        let support = fake.insert("Support Bot", "CHATFLOW", None);
        let list = fake.list().await.expect("list");
        let mut held = Holders::new();
        let keyed = named(
            "team-b",
            &format!("{{flowiseId: {support}, apiKeySecretRef: {{name: s, key: k}}}}"),
        );
        let mut res = of(vec![keyed.clone()]);
        resolve(&mut res, Ok(&list), Timestamp::now(), &mut held);
        assert_eq!(ready_reason(&res.chatflows[0]).1, "InvalidSpec");
        let rival = named("team-a", &format!("{{flowiseId: {support}}}"));
        let mut res = of(vec![rival, keyed]);
        resolve(&mut res, Ok(&list), Timestamp::now(), &mut held);
        assert_eq!(ready_reason(&res.chatflows[0]).1, "Conflict");
    }

    /// The holder keeps its chatflow when a claim defined before it (path order) is added, and
    /// while its own file does not parse; the chatflow passes on only once it is gone.
    #[tokio::test]
    async fn the_holder_keeps_its_chatflow_against_a_claim_added_before_it() {
        let fake = FakeFlowise::default();
        let support = fake.insert("Support Bot", "CHATFLOW", None);
        let list = fake.list().await.expect("list");
        let mut held = Holders::new();
        let claim = |ns: &str| named(ns, &format!("{{flowiseId: {support}}}"));
        let served = |res: &Resources| {
            compile(res)
                .chatflow_by_flowise_id(&support)
                .map(|cf| cf.rule.namespace.clone())
        };
        let mut res = of(vec![claim("team-b")]);
        resolve(&mut res, Ok(&list), Timestamp::now(), &mut held);
        assert_eq!(served(&res).as_deref(), Some("team-b"));

        // team-a's file comes first in path order: it does not take the chatflow.
        let mut res = of(vec![claim("team-a"), claim("team-b")]);
        resolve(&mut res, Ok(&list), Timestamp::now(), &mut held);
        assert_eq!(
            ready_reason(&res.chatflows[0]),
            ("False".into(), "Conflict".into())
        );
        assert_eq!(served(&res).as_deref(), Some("team-b"));

        // team-b's file stops parsing: it still holds it, and nobody is served.
        let mut res = of(vec![claim("team-a")]);
        res.unreadable.push(Unreadable {
            kind: "Chatflow",
            namespace: "team-b".into(),
            name: "c".into(),
            error: "a typo".into(),
            claim: None,
        });
        resolve(&mut res, Ok(&list), Timestamp::now(), &mut held);
        assert_eq!(
            ready_reason(&res.chatflows[0]),
            ("False".into(), "Conflict".into())
        );
        assert_eq!(served(&res), None);

        // team-b gone: team-a holds it now.
        let mut res = of(vec![claim("team-a")]);
        resolve(&mut res, Ok(&list), Timestamp::now(), &mut held);
        assert_eq!(served(&res).as_deref(), Some("team-a"));
    }

    /// A second Flowise chatflow of the holder's adopted name makes the holder unserved, not
    /// the rival served: once the name is one chatflow's again, the holder has it back.
    #[tokio::test]
    async fn a_holder_whose_name_turns_ambiguous_keeps_its_chatflow() {
        let fake = FakeFlowise::default();
        let support = fake.insert("Support Bot", "CHATFLOW", None);
        let mut held = Holders::new();
        let resources = || {
            of(vec![
                named("team-a", "{flowiseName: Support Bot}"),
                named("team-b", &format!("{{flowiseId: {support}}}")),
            ])
        };
        // Whose the chatflow is in the index, and whether predictions may use it.
        let served = |res: &Resources| {
            compile(res)
                .chatflow_by_flowise_id(&support)
                .map(|cf| (cf.rule.namespace.clone(), cf.rule.ready))
        };
        let list = fake.list().await.expect("list");
        let mut res = resources();
        resolve(&mut res, Ok(&list), Timestamp::now(), &mut held);
        assert_eq!(served(&res), Some(("team-a".into(), true)));

        let twin = fake.insert("Support Bot", "CHATFLOW", None);
        let list = fake.list().await.expect("list");
        let mut res = resources();
        resolve(&mut res, Ok(&list), Timestamp::now(), &mut held);
        assert_eq!(
            ready_reason(&res.chatflows[0]),
            ("False".into(), "FlowiseConflict".into())
        );
        assert_eq!(
            ready_reason(&res.chatflows[1]),
            ("False".into(), "Conflict".into()),
            "the rival is still not the holder"
        );
        assert_eq!(
            served(&res),
            Some(("team-a".into(), false)),
            "held, not ready"
        );

        let list: Vec<_> = list.into_iter().filter(|c| c.id != twin).collect();
        let mut res = resources();
        resolve(&mut res, Ok(&list), Timestamp::now(), &mut held);
        assert_eq!(
            ready_reason(&res.chatflows[0]),
            ("True".into(), "Synced".into())
        );
        assert_eq!(served(&res), Some(("team-a".into(), true)));
    }

    #[tokio::test]
    async fn flowise_down_makes_chatflows_unavailable_not_invalid() {
        let mut res = of(vec![chatflow("{flowiseName: Support Bot}")]);
        let mut held = Holders::from([("x".to_string(), "n/c".to_string())]);
        resolve(
            &mut res,
            Err("connection refused".into()),
            Timestamp::now(),
            &mut held,
        );
        assert_eq!(
            ready_reason(&res.chatflows[0]),
            ("False".into(), "FlowiseUnreachable".into())
        );
        assert_eq!(held.len(), 1, "who holds what stands while Flowise is down");
    }
}
