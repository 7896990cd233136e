//! `sync` against an in-process Flowise: what is created, found, updated or refused.

use std::sync::atomic::Ordering;

use super::tests::{HOUR, at, first_synced, in_flowise, owned, ready, synced};
use super::*;
use crate::flowise::fake::FakeFlowise;

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// `desired` synced into `flowise`, where it was not: the chatflow created.
fn created(flowise: &FakeFlowise, desired: &Desired) -> FlowiseChatflow {
    match block_on(sync(flowise, desired, None, &unheld)) {
        Ok(Outcome::Synced { chatflow, .. }) => chatflow,
        other => panic!("expected a chatflow, got {other:?}"),
    }
}

/// No other Chatflow holds anything.
fn unheld(_: &str) -> Option<String> {
    None
}

#[test]
fn a_lost_status_write_finds_the_chatflow_again_instead_of_creating_a_second() {
    let flowise = FakeFlowise::default();
    let desired = Desired::Own(owned());
    let first = block_on(sync(&flowise, &desired, None, &unheld)).expect("synced");
    let Outcome::Synced {
        chatflow,
        change: Change::Created,
    } = first
    else {
        panic!("expected a creation, got {first:?}")
    };
    // The status write with the id was lost: the next reconcile knows no id.
    let second = block_on(sync(&flowise, &desired, None, &unheld)).expect("synced");
    assert_eq!(second, synced(chatflow));
    assert_eq!(flowise.creates.load(Ordering::SeqCst), 1);
    assert_eq!(flowise.all().len(), 1);
}

#[tokio::test]
async fn an_unanswered_create_is_found_where_it_landed_instead_of_sent_again() {
    let fake = std::sync::Arc::new(FakeFlowise::default());
    let flowise = crate::flowise::CreatesInDoubt::new(fake.clone(), HOUR);
    let desired = Desired::Own(owned());
    fake.set_late(true);
    let first = sync(&flowise, &desired, None, &unheld).await;
    assert!(
        matches!(
            first,
            Err(Unsynced {
                error: FlowiseError::Timeout(_),
                absent: false
            })
        ),
        "{first:?}"
    );
    fake.set_late(false);
    // The next reconcile comes at once (the status write): nothing is listed yet.
    let second = sync(&flowise, &desired, None, &unheld).await;
    assert!(
        matches!(
            second,
            Err(Unsynced {
                error: FlowiseError::CreateInDoubt { .. },
                ..
            })
        ),
        "{second:?}"
    );
    fake.land();
    let third = sync(&flowise, &desired, None, &unheld)
        .await
        .expect("synced");
    assert!(
        matches!(
            &third,
            Outcome::Synced {
                change: Change::None,
                ..
            }
        ),
        "{third:?}"
    );
    assert_eq!(fake.creates.load(Ordering::SeqCst), 1);
    assert_eq!(fake.all().len(), 1, "no duplicate");
}

/// A Flowise user took the marker off an owned chatflow (the UI edits the category's tags): the
/// status says this spec found it, so it is still this Chatflow's and the marker is put back,
/// rather than the chatflow read as someone else's (offline) or, renamed too, made twice.
#[test]
fn an_owned_chatflow_whose_marker_was_taken_off_gets_it_back() {
    let flowise = FakeFlowise::default();
    let desired = Desired::Own(owned());
    let chatflow = created(&flowise, &desired);
    for name in [chatflow.name.as_str(), "renamed in the UI"] {
        let untagged = ChatflowWrite {
            name: Some(name.into()),
            category: Some("team-tag".into()),
            ..ChatflowWrite::default()
        };
        block_on(flowise.update(&chatflow.id, &untagged)).expect("untagged");
        let known = Known {
            id: &chatflow.id,
            ours: true,
        };
        let outcome = block_on(sync(&flowise, &desired, Some(known), &unheld)).expect("synced");
        let Outcome::Synced {
            chatflow: repaired,
            change: Change::Updated(fields),
        } = outcome
        else {
            panic!("expected the marker put back, got {outcome:?}")
        };
        assert_eq!(repaired.id, chatflow.id);
        assert!(fields.contains("category"), "{fields}");
        assert!(has_marker(&repaired, &owned().marker), "{repaired:?}");
        assert_eq!(flowise.all().len(), 1, "no second chatflow");
    }
    // Another Chatflow's marker is not taken over, whatever the status says.
    let elsewhere = ChatflowWrite {
        category: Some(marker("team-b", "theirs")),
        ..ChatflowWrite::default()
    };
    block_on(flowise.update(&chatflow.id, &elsewhere)).expect("retagged");
    let known = Known {
        id: &chatflow.id,
        ours: true,
    };
    let outcome = block_on(sync(&flowise, &desired, Some(known), &unheld)).expect("synced");
    assert!(
        !matches!(&outcome, Outcome::Synced { chatflow: c, .. } if c.id == chatflow.id),
        "{outcome:?}"
    );
}

/// Only a status `Synced` at the object's generation says the spec as it is found the chatflow
/// it records (for a definition: by its marker, or created): not one written for an earlier
/// spec (adopted, then turned into a definition), nor one of Flowise away or in conflict.
#[test]
fn only_a_status_synced_for_this_spec_vouches_for_its_chatflow() {
    let ours = |status: &ChatflowStatus, generation: i64| {
        Known::from_status(status, Some(generation)).map(|known| (known.id.to_owned(), known.ours))
    };
    let found = synced(in_flowise("id-1", "Support Bot", None));
    let status = next_status(
        &ChatflowStatus::default(),
        &found,
        Some(3),
        false,
        at(0),
        HOUR,
    );
    assert_eq!(ours(&status, 3), Some(("id-1".into(), true)));
    assert_eq!(
        ours(&status, 4),
        Some(("id-1".into(), false)),
        "an edit since"
    );
    let down = Outcome::Unreachable("refused".into());
    let away = next_status(&status, &down, Some(3), false, at(10), HOUR);
    assert_eq!(ours(&away, 3), Some(("id-1".into(), false)));
    let ambiguous = Outcome::FlowiseConflict("the name is taken".into());
    let taken = next_status(&status, &ambiguous, Some(4), false, at(10), HOUR);
    assert_eq!(ours(&taken, 4), Some(("id-1".into(), false)));
    assert_eq!(ours(&ChatflowStatus::default(), 3), None);
}

#[test]
fn an_adopted_chatflow_in_status_is_not_taken_over_when_the_spec_turns_to_a_definition() {
    let flowise = FakeFlowise::default();
    // Someone else's chatflow, adopted before: its id is in status, it carries no marker.
    let theirs = flowise.insert("their bot", "CHATFLOW", Some("their-tag"));
    let found = flowise
        .all()
        .into_iter()
        .find(|c| c.id == theirs)
        .expect("listed");
    // Synced when the spec adopted it (generation 1); the spec is a definition now.
    let adopted = next_status(
        &ChatflowStatus::default(),
        &synced(found),
        Some(1),
        false,
        at(0),
        HOUR,
    );
    let known = Known::from_status(&adopted, Some(2));
    let desired = Desired::Own(owned());
    let outcome = block_on(sync(&flowise, &desired, known, &unheld)).expect("synced");
    let Outcome::Synced {
        chatflow,
        change: Change::Created,
    } = outcome
    else {
        panic!("expected a chatflow of its own, got {outcome:?}")
    };
    assert_ne!(chatflow.id, theirs);
    assert_eq!(
        flowise.updates.load(Ordering::SeqCst),
        0,
        "theirs untouched"
    );
    let kept = flowise
        .all()
        .into_iter()
        .find(|c| c.id == theirs)
        .expect("kept");
    assert_eq!(
        (kept.name.as_str(), kept.category.as_deref()),
        ("their bot", Some("their-tag"))
    );
}

#[test]
fn a_chatflow_with_its_marker_that_another_chatflow_holds_is_not_written() {
    let flowise = FakeFlowise::default();
    let owned = owned();
    // Left by a namesake retained, then adopted by another namespace, which holds it now.
    let kept = flowise.insert("someone's bot", "AGENTFLOW", Some(&owned.marker));
    let held = |id: &str| (id == kept).then(|| "team-b/adopted".to_string());
    let outcome = block_on(sync(&flowise, &Desired::Own(owned), None, &held)).expect("synced");
    let Outcome::Conflict(message) = outcome else {
        panic!("expected a conflict, got {outcome:?}")
    };
    assert!(message.contains("team-b/adopted"), "{message}");
    assert_eq!(flowise.updates.load(Ordering::SeqCst), 0, "nothing written");
    assert_eq!(flowise.creates.load(Ordering::SeqCst), 0);
}

#[test]
fn an_owned_chatflow_is_not_renamed_to_a_name_another_chatflow_has() {
    let flowise = FakeFlowise::default();
    let desired = Desired::Own(owned());
    let chatflow = created(&flowise, &desired);
    // Someone else's chatflow, which another Chatflow may adopt by this name.
    flowise.insert("their bot", "CHATFLOW", None);
    let Desired::Own(mut renamed) = desired else {
        unreachable!()
    };
    renamed.name = "their bot".into();
    let renamed = Desired::Own(renamed);
    let outcome = block_on(sync(
        &flowise,
        &renamed,
        Some(Known::id(&chatflow.id)),
        &unheld,
    ))
    .expect("ok");
    let Outcome::FlowiseConflict(message) = outcome else {
        panic!("expected a conflict, got {outcome:?}")
    };
    assert!(message.contains("their bot"), "{message}");
    assert_eq!(flowise.updates.load(Ordering::SeqCst), 0, "not renamed");
    // A name no one has is taken.
    let Desired::Own(mut free) = renamed else {
        unreachable!()
    };
    free.name = "a name of its own".into();
    let outcome = block_on(sync(
        &flowise,
        &Desired::Own(free),
        Some(Known::id(&chatflow.id)),
        &unheld,
    ));
    assert!(matches!(outcome, Ok(Outcome::Synced { .. })), "{outcome:?}");
    assert_eq!(flowise.updates.load(Ordering::SeqCst), 1);
}

#[test]
fn a_chatflow_deleted_in_flowise_is_created_again() {
    let flowise = FakeFlowise::default();
    let desired = Desired::Own(owned());
    let chatflow = created(&flowise, &desired);
    block_on(flowise.delete(&chatflow.id)).expect("deleted");
    let again = block_on(sync(
        &flowise,
        &desired,
        Some(Known::id(&chatflow.id)),
        &unheld,
    ))
    .expect("ok");
    assert!(
        matches!(
            again,
            Outcome::Synced {
                change: Change::Created,
                ..
            }
        ),
        "{again:?}"
    );
    assert_eq!(flowise.all().len(), 1);
}

#[test]
fn an_unchanged_definition_is_not_sent_again() {
    let flowise = FakeFlowise::default();
    let desired = Desired::Own(owned());
    let chatflow = created(&flowise, &desired);
    for _ in 0..3 {
        block_on(sync(
            &flowise,
            &desired,
            Some(Known::id(&chatflow.id)),
            &unheld,
        ))
        .expect("ok");
    }
    assert_eq!(
        flowise.updates.load(Ordering::SeqCst),
        0,
        "PUT only when different"
    );
}

#[test]
fn a_chatflow_gone_from_flowise_that_cannot_be_made_again_is_not_ready() {
    let flowise = FakeFlowise::default();
    let desired = Desired::Own(owned());
    let chatflow = created(&flowise, &desired);
    let was = first_synced(chatflow.clone());
    assert_eq!(ready(&was).0, "True");
    // Deleted in Flowise, and the create that would make it again fails.
    block_on(flowise.delete(&chatflow.id)).expect("deleted");
    flowise.set_late(true);
    let failed = block_on(sync(
        &flowise,
        &desired,
        Some(Known::id(&chatflow.id)),
        &unheld,
    ))
    .expect_err("the create times out");
    let (outcome, error) = failed.outcome();
    assert!(error.is_some_and(|e| e.transient()), "retried");
    let now = next_status(&was, &outcome, Some(3), false, at(60), HOUR);
    assert_eq!(
        ready(&now),
        (
            "False".to_string(),
            reason::NOT_FOUND_IN_FLOWISE.to_string()
        )
    );
}

#[test]
fn flowise_down_is_a_transient_error_and_creates_nothing() {
    let flowise = FakeFlowise::default();
    flowise.set_down(true);
    let failed = block_on(sync(&flowise, &Desired::Own(owned()), None, &unheld)).expect_err("down");
    assert!(failed.error.transient());
    assert!(!failed.absent, "nothing was learnt");
    flowise.set_down(false);
    assert!(flowise.all().is_empty());
}

#[test]
fn adoption_by_name_finds_the_single_chatflow_of_that_name() {
    let flowise = FakeFlowise::default();
    let id = flowise.insert("Support Bot", "CHATFLOW", None);
    flowise.insert("Other", "CHATFLOW", None);
    let outcome = block_on(sync(
        &flowise,
        &Desired::AdoptName("Support Bot".into()),
        None,
        &unheld,
    ))
    .expect("ok");
    assert!(matches!(&outcome, Outcome::Synced { chatflow, .. } if chatflow.id == id));
    flowise.insert("Support Bot", "AGENTFLOW", None);
    let outcome = block_on(sync(
        &flowise,
        &Desired::AdoptName("Support Bot".into()),
        None,
        &unheld,
    ))
    .expect("ok");
    assert!(
        matches!(outcome, Outcome::FlowiseConflict(_)),
        "{outcome:?}"
    );
}

/// Two Chatflows whose definitions name one Flowise chatflow, synced together (each listing
/// before the other created): one creates it, the other finds it and reports the conflict.
#[tokio::test]
async fn two_definitions_of_one_name_synced_together_create_it_once() {
    let flowise = FakeFlowise::default();
    let names = FlowiseNames::default();
    let (a, b) = (
        Desired::Own(owned()),
        Desired::Own(Owned {
            marker: marker("team-b", "support-bot"),
            ..owned()
        }),
    );
    flowise.set_hung(true);
    let release = async {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        flowise.set_hung(false);
    };
    let (first, second, ()) = tokio::join!(
        sync_named(&names, &flowise, &a, None, &unheld),
        sync_named(&names, &flowise, &b, None, &unheld),
        release,
    );
    assert!(
        matches!(
            first,
            Ok(Outcome::Synced {
                change: Change::Created,
                ..
            })
        ),
        "{first:?}"
    );
    assert!(
        matches!(second, Ok(Outcome::FlowiseConflict(_))),
        "{second:?}"
    );
    assert_eq!(flowise.creates.load(Ordering::SeqCst), 1);
}
