//! The resources directory's own tests: loading, what a broken file keeps, the fingerprint.

use super::*;
use crate::flowise::fake::FakeFlowise;
use crate::index::compile;
use crate::index::watch::SnapshotHandle;
use tokio_util::sync::CancellationToken;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write fixture");
}

#[test]
fn multi_document_files_load_and_bad_documents_are_reported_not_fatal() {
    let dir = tempfile::tempdir().expect("dir");
    write(
        dir.path(),
        "team.yaml",
        "apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\nmetadata: {name: a}\nspec: {flowiseName: A}\n---\n\
        apiVersion: flowgate.io/v1alpha1\nkind: ChatflowAccess\nmetadata: {name: r, namespace: team}\nspec: {chatflows: ['*'], subjects: [{user: u}]}\n---\n\
        apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n\
        apiVersion: flowgate.io/v1alpha1\nkind: CreditPolicy\nmetadata: {name: p}\nspec: {chatflows: ['*'], budget: {credits: -5, period: Daily}}\n",
    );
    write(dir.path(), "broken.yml", "kind: [unclosed\n");
    write(dir.path(), "notes.txt", "ignored");
    // What an API server would refuse (its CRD's `minItems`) is not served either.
    write(
        dir.path(),
        "bounds.yaml",
        "apiVersion: flowgate.io/v1alpha1\nkind: ChatflowAccess\nmetadata: {name: none, namespace: team}\nspec: {chatflows: ['*'], subjects: []}\n",
    );
    // The unreadable policy is its definition: this one, read later, is a second one.
    write(
        dir.path(),
        "z.yaml",
        "apiVersion: flowgate.io/v1alpha1\nkind: CreditPolicy\nmetadata: {name: p}\nspec: {chatflows: ['*'], budget: {credits: 5, period: Daily}}\n",
    );
    let (res, problems) = load(dir.path());
    assert_eq!(res.chatflows.len(), 1);
    assert_eq!(
        res.chatflows[0].metadata.namespace.as_deref(),
        Some("default")
    );
    assert_eq!(res.accesses.len(), 1);
    assert_eq!(res.policies.len(), 0, "a negative budget does not parse");
    // The ConfigMap beside them is no one's problem.
    assert_eq!(problems.len(), 4, "{problems:?}");
    assert!(problems[3].contains("already defined"), "{problems:?}");
    // ... and is kept as unreadable, so that the index counts it (and may refuse).
    let unreadable: Vec<_> = res
        .unreadable
        .iter()
        .map(|u| (u.kind, u.namespace.as_str(), u.name.as_str()))
        .collect();
    assert_eq!(
        unreadable,
        vec![
            ("ChatflowAccess", "team", "none"),
            ("CreditPolicy", "default", "p")
        ]
    );
    assert_eq!(
        res.unreadable[0].error,
        ".spec.subjects: must have at least 1 item (has 0)"
    );
    assert!(
        res.unreadable[1].error.contains("-5"),
        "{:?}",
        res.unreadable[1]
    );
}

#[test]
fn recursive_reads_the_subdirectories_and_names_a_link_out_of_the_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let access = |name: &str| {
        format!(
            "apiVersion: flowgate.io/v1alpha1\nkind: ChatflowAccess\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  chatflows: [bot]\n  subjects: [{{user: u}}]\n"
        )
    };
    write(dir.path(), "top.yaml", &access("top"));
    std::fs::create_dir_all(dir.path().join("teams/a")).expect("mkdir");
    write(&dir.path().join("teams/a"), "grant.yaml", &access("nested"));
    let outside = tempfile::tempdir().expect("tempdir");
    write(outside.path(), "stray.yaml", &access("stray"));
    std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).expect("link");
    let names = |dir: &ResourcesDir| {
        let (res, problems) = load_keeping(dir, &mut LastReadable::new());
        let mut names: Vec<String> = res
            .accesses
            .iter()
            .map(|a| a.metadata.name.clone().unwrap_or_default())
            .collect();
        names.sort();
        (names, problems)
    };
    let (flat, problems) = names(&ResourcesDir::flat(dir.path()));
    assert_eq!(flat, ["top"]);
    assert!(problems.is_empty(), "{problems:?}");
    let (tree, problems) = names(&ResourcesDir {
        path: dir.path().to_path_buf(),
        recursive: true,
    });
    assert_eq!(tree, ["nested", "top"]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("leads out of"), "{problems:?}");
}

#[test]
fn other_tools_objects_are_left_alone_and_wrong_api_versions_reported() {
    let dir = tempfile::tempdir().expect("dir");
    let access = |api_version: &str, name: &str| {
        format!(
            "apiVersion: {api_version}\nkind: ChatflowAccess\nmetadata: {{name: {name}, namespace: t}}\nspec: {{chatflows: ['*'], subjects: [{{user: u}}]}}\n"
        )
    };
    write(
        dir.path(),
        "all.yaml",
        &[
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n".to_string(),
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n".into(),
            access("flowgate.io/v1", "a"),
            access("flowgate/v1alpha1", "b"),
            "kind: ChatflowAccess\nmetadata: {name: c}\n".into(),
            "apiVersion: flowgate.io/v1alpha1\nkind: ChatFlow\nmetadata: {name: d}\n".into(),
            access("flowgate.io/v1alpha1", "e"),
            // A flowgate kind whose group was forgotten is ours, as `flowgate check` says.
            access("v1alpha1", "f"),
            // Neither apiVersion nor kind: another tool's file (a compose file).
            "services: {web: {image: x}}\n".into(),
            // A List, as `kubectl get -o yaml` writes one: its items are objects of their own.
            format!(
                "apiVersion: v1\nkind: List\nitems:\n- {}\n- {{apiVersion: v1, kind: ConfigMap}}\n",
                serde_json::to_string(
                    &serde_saphyr::from_str::<Value>(&access("flowgate.io/v1alpha1", "g"))
                        .expect("yaml")
                )
                .expect("json")
            ),
        ]
        .join("---\n"),
    );
    let (res, problems) = load(dir.path());
    let served: Vec<&str> = res
        .accesses
        .iter()
        .filter_map(|a| a.metadata.name.as_deref())
        .collect();
    assert_eq!(served, ["e", "g"]);
    // Counted invalid, as objects that do not parse.
    let unreadable: Vec<&str> = res.unreadable.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(unreadable, ["a", "b", "c", "f"]);
    assert_eq!(problems.len(), 5, "{problems:?}");
    for (problem, want) in problems.iter().zip([
        "(document 3): invalid ChatflowAccess: apiVersion 'flowgate.io/v1'",
        "(document 4): invalid ChatflowAccess: apiVersion 'flowgate/v1alpha1'",
        "(document 5): invalid ChatflowAccess: apiVersion ''",
        "(document 6): kind 'ChatFlow' is not a flowgate resource",
        "(document 8): invalid ChatflowAccess: apiVersion 'v1alpha1'",
    ]) {
        assert!(problem.contains(want), "{want} not in {problem}");
    }
}

#[test]
fn an_object_named_only_by_generate_name_is_refused_without_an_api_server() {
    let dir = tempfile::tempdir().expect("dir");
    write(
        dir.path(),
        "gen.yaml",
        "apiVersion: flowgate.io/v1alpha1\nkind: ChatflowAccess\nmetadata: {generateName: team-}\nspec: {chatflows: ['*'], subjects: [{user: u}]}\n",
    );
    let (res, _) = load(dir.path());
    assert!(res.accesses.is_empty());
    assert_eq!(res.unreadable.len(), 1);
    assert!(
        res.unreadable[0].error.contains("generateName"),
        "{:?}",
        res.unreadable[0]
    );
}

#[test]
fn a_file_that_stops_parsing_keeps_what_it_held_until_it_is_fixed_or_gone() {
    let dir = tempfile::tempdir().expect("dir");
    let budgets = "apiVersion: flowgate.io/v1alpha1\nkind: CreditPolicy\nmetadata: {name: p, namespace: team}\n\
                   spec: {chatflows: ['*'], budget: {credits: 5, period: Daily}}\n";
    write(dir.path(), "budgets.yaml", budgets);
    let mut kept = LastReadable::new();
    let (res, problems) = load_keeping(&ResourcesDir::flat(dir.path()), &mut kept);
    assert_eq!((res.policies.len(), problems.len()), (1, 0), "{problems:?}");
    // Saved half edited: the budget stays, and the problem says so.
    write(
        dir.path(),
        "budgets.yaml",
        "kind: CreditPolicy\n\tspec: [unclosed\n",
    );
    let (res, problems) = load_keeping(&ResourcesDir::flat(dir.path()), &mut kept);
    assert_eq!(
        res.policies.len(),
        1,
        "the last readable budget stays in force"
    );
    assert_eq!(res.policies[0].spec.budget.credits, 5);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("stays in force"), "{problems:?}");
    // Fixed: the new content counts.
    write(
        dir.path(),
        "budgets.yaml",
        &budgets.replace("credits: 5", "credits: 7"),
    );
    let (res, _) = load_keeping(&ResourcesDir::flat(dir.path()), &mut kept);
    assert_eq!(res.policies[0].spec.budget.credits, 7);
    // The directory cannot be listed for a moment (a mount between swaps): every file last
    // read stays in force, rather than none.
    let moved = dir.path().with_extension("away");
    std::fs::rename(dir.path(), &moved).expect("move away");
    let (res, problems) = load_keeping(&ResourcesDir::flat(dir.path()), &mut kept);
    assert_eq!(res.policies.len(), 1, "{problems:?}");
    assert_eq!(res.policies[0].spec.budget.credits, 7);
    assert!(
        problems[0].contains("cannot list the directory"),
        "{problems:?}"
    );
    std::fs::rename(&moved, dir.path()).expect("move back");
    // Removed: nothing is kept for it.
    std::fs::remove_file(dir.path().join("budgets.yaml")).expect("remove");
    let (res, _) = load_keeping(&ResourcesDir::flat(dir.path()), &mut kept);
    assert!(res.policies.is_empty());
    assert!(kept.is_empty());
}

/// One document that is not YAML costs only itself in a file never read whole (and a
/// CreditPolicy in it counts invalid in its namespace), not the file's other objects; in a
/// file read whole before, the file keeps what it held. The parser's limits are a document's:
/// a file of more objects than it allows in one text is read.
#[test]
fn a_document_that_is_not_yaml_costs_only_itself() {
    let dir = tempfile::tempdir().expect("dir");
    let policy = |ns: &str, credits: i64| {
        format!(
            "apiVersion: flowgate.io/v1alpha1\nkind: CreditPolicy\nmetadata: {{name: p, namespace: {ns}}}\n\
             spec: {{chatflows: ['*'], budget: {{credits: {credits}, period: Daily}}}}\n"
        )
    };
    let broken = "apiVersion: flowgate.io/v1alpha1\nkind: CreditPolicy\nmetadata: {name: q, namespace: b}\n\tspec: [\n";
    write(
        dir.path(),
        "all.yaml",
        &[policy("a", 5), broken.into(), policy("c", 7)].join("---\n"),
    );
    let mut kept = LastReadable::new();
    let (res, problems) = load_keeping(&ResourcesDir::flat(dir.path()), &mut kept);
    let served: Vec<&str> = res
        .policies
        .iter()
        .filter_map(|p| p.metadata.namespace.as_deref())
        .collect();
    assert_eq!(served, ["a", "c"], "{problems:?}");
    let invalid: Vec<&str> = res
        .unreadable
        .iter()
        .map(|u| u.namespace.as_str())
        .collect();
    assert_eq!(invalid, ["b"], "only the broken document's namespace");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("all.yaml:6 (document 2): not YAML"),
        "{problems:?}"
    );
    assert!(kept.is_empty(), "not read whole");
    // Read whole once, then broken: the file keeps what it held.
    write(
        dir.path(),
        "all.yaml",
        &[policy("a", 5), policy("c", 7)].join("---\n"),
    );
    load_keeping(&ResourcesDir::flat(dir.path()), &mut kept);
    write(
        dir.path(),
        "all.yaml",
        &[policy("a", 9), broken.into()].join("---\n"),
    );
    let (res, problems) = load_keeping(&ResourcesDir::flat(dir.path()), &mut kept);
    let served: Vec<(&str, u64)> = res
        .policies
        .iter()
        .map(|p| {
            (
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.spec.budget.credits,
            )
        })
        .collect();
    assert_eq!(served, [("a", 5), ("c", 7)]);
    assert!(problems[0].contains("stays in force"), "{problems:?}");
    // 1,100 objects in one file: more documents than the parser takes in one text.
    let many: Vec<String> = (0..1_100)
        .map(|i| {
            format!(
                "apiVersion: flowgate.io/v1alpha1\nkind: ChatflowAccess\nmetadata: {{name: a{i}, namespace: t}}\nspec: {{chatflows: ['*'], subjects: [{{user: u}}]}}\n"
            )
        })
        .collect();
    write(dir.path(), "all.yaml", &many.join("---\n"));
    let (res, problems) = load(dir.path());
    assert_eq!(res.accesses.len(), 1_100, "{problems:?}");
}

/// What is not a regular file is not read: a FIFO would hold the reading thread for good.
#[cfg(unix)]
#[test]
fn a_fifo_named_yaml_is_reported_not_read() {
    let dir = tempfile::tempdir().expect("dir");
    let fifo = dir.path().join("pipe.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let (_, problems) = load(dir.path());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("not a regular file"), "{problems:?}");
    // Nor is it read for the fingerprint, however recent.
    let states = fingerprint(&ResourcesDir::flat(dir.path()));
    assert_eq!(states.len(), 1);
}

/// A policy file that has not parsed since the process started (a restart with a typo in
/// it), or a policy whose kind is misspelt, is a CreditPolicy that does not parse: counted
/// invalid in the namespaces it names, so that FLOWGATE_INVALID_POLICIES=refuse refuses
/// rather than serving free.
#[test]
fn a_policy_file_never_read_whole_counts_as_an_invalid_policy() {
    let dir = tempfile::tempdir().expect("dir");
    write(
        dir.path(),
        "bots.yaml",
        "apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\nmetadata: {name: bot, namespace: team}\nspec: {flowiseName: Bot}\n---\n\
         apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\nmetadata: {name: bot, namespace: other}\nspec: {flowiseName: Other}\n",
    );
    write(
        dir.path(),
        "budgets.yaml",
        "apiVersion: flowgate.io/v1alpha1\nkind: CreditPolicy\nmetadata: {name: p, namespace: team}\n\tspec: [unclosed\n",
    );
    write(
        dir.path(),
        "typo.yaml",
        "apiVersion: flowgate.io/v1alpha1\nkind: Creditpolicy\nmetadata:\n  name: q\n  namespace: third\nspec: {}\n",
    );
    write(dir.path(), "notes.yaml", "title: [unclosed\n");
    let (res, problems) = load_keeping(&ResourcesDir::flat(dir.path()), &mut LastReadable::new());
    assert_eq!(problems.len(), 3, "{problems:?}");
    let mut invalid: Vec<(&str, &str)> = res
        .unreadable
        .iter()
        .map(|u| (u.kind, u.namespace.as_str()))
        .collect();
    invalid.sort();
    assert_eq!(
        invalid,
        [("CreditPolicy", "team"), ("CreditPolicy", "third")],
        "a file that names no CreditPolicy is no policy"
    );
    let snap = compile(&res);
    let caller = crate::index::Caller::default();
    let team = snap.chatflow_by_name("team", "bot").expect("team's bot");
    let other = snap.chatflow_by_name("other", "bot").expect("other's bot");
    assert!(snap.invalid_policy_for(&caller, team).is_some());
    assert!(snap.invalid_policy_for(&caller, other).is_none());
}

/// `user: alice` → `user: bobby` written in place within the file system's time
/// granularity: same length, same modification time, same inode. The content tells.
#[test]
fn a_same_length_edit_in_the_same_instant_changes_the_fingerprint() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("access.yaml");
    write(dir.path(), "access.yaml", "user: alice\n");
    let at = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .expect("mtime");
    let before = fingerprint(&ResourcesDir::flat(dir.path()));
    write(dir.path(), "access.yaml", "user: bobby\n");
    std::fs::File::options()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_modified(at))
        .expect("set the time back");
    let after = fingerprint(&ResourcesDir::flat(dir.path()));
    assert_eq!(after[0].modified, Some(at));
    assert_eq!(
        (after[0].len, after[0].inode),
        (before[0].len, before[0].inode)
    );
    assert_ne!(after, before);
}

#[test]
fn a_second_definition_of_an_object_is_skipped_and_reported() {
    let dir = tempfile::tempdir().expect("dir");
    let policy = |credits: u32| {
        format!(
            "apiVersion: flowgate.io/v1alpha1\nkind: CreditPolicy\nmetadata: {{name: p, namespace: team}}\n\
             spec: {{chatflows: ['*'], budget: {{credits: {credits}, period: Daily}}}}\n"
        )
    };
    write(dir.path(), "a.yaml", &policy(10));
    write(
        dir.path(),
        "b.yaml",
        &format!("{}---\n{}", policy(20), policy(30)),
    );
    // Another kind, or another namespace, with the same name is another object.
    write(
        dir.path(),
        "c.yaml",
        "apiVersion: flowgate.io/v1alpha1\nkind: ChatflowAccess\nmetadata: {name: p, namespace: team}\nspec: {chatflows: ['*'], subjects: [{user: u}]}\n---\n\
         apiVersion: flowgate.io/v1alpha1\nkind: CreditPolicy\nmetadata: {name: p, namespace: other}\nspec: {chatflows: ['*'], budget: {credits: 5, period: Daily}}\n",
    );
    let (res, problems) = load(dir.path());
    let credits: Vec<u64> = res.policies.iter().map(|p| p.spec.budget.credits).collect();
    assert_eq!(credits, vec![10, 5], "the first definition wins");
    assert_eq!(res.accesses.len(), 1);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems
            .iter()
            .all(|p| p.contains("CreditPolicy team/p is already defined in")
                && p.contains("a.yaml (document 1)")),
        "{problems:?}"
    );
}

/// A Chatflow `team/name` adopting Flowise's chatflow `flowise` by name, as a file holds it.
fn chatflow_file(name: &str, flowise: &str) -> String {
    format!(
        "apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\nmetadata: {{name: {name}, namespace: team}}\nspec: {{flowiseName: {flowise}}}\n"
    )
}

/// The poll loop over a new directory holding Chatflow `team/bot` (adopting `Bot`, which the
/// fake Flowise has), synced every `resync`: the directory, Flowise, the published snapshots,
/// the shutdown, and the health its gate belongs to.
fn polled(
    resync: Duration,
) -> (
    tempfile::TempDir,
    Arc<FakeFlowise>,
    SnapshotHandle,
    CancellationToken,
    crate::ops::Health,
) {
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "bot.yaml", &chatflow_file("bot", "Bot"));
    let fake = Arc::new(FakeFlowise::default());
    fake.insert("Bot", "CHATFLOW", None);
    let health = crate::ops::Health::default();
    let shutdown = CancellationToken::new();
    let handle = spawn(
        ResourcesDir::flat(dir.path()),
        fake.clone(),
        resync,
        health.gate("resources"),
        shutdown.clone(),
    );
    (dir, fake, handle, shutdown, health)
}

#[tokio::test]
async fn a_failed_flowise_listing_keeps_the_last_one() {
    let (dir, fake, handle, shutdown, _health) = polled(Duration::from_secs(600));
    let mut published = handle.subscribe();
    let ready = |handle: &SnapshotHandle| {
        handle
            .load()
            .chatflow_by_name("team", "bot")
            .is_some_and(|cf| cf.rule.ready)
    };
    while !ready(&handle) {
        published.changed().await.expect("publisher alive");
    }
    fake.set_down(true);
    // A file change reloads, and lists Flowise again.
    write(dir.path(), "more.yaml", "# nothing yet\n");
    published.changed().await.expect("publisher alive");
    assert!(ready(&handle), "still served from the last listing");
    // A Flowise that does not answer at all holds a change up for a moment, not for its
    // request timeout: what the files take away is taken away.
    fake.set_down(false);
    fake.set_hung(true);
    std::fs::remove_file(dir.path().join("bot.yaml")).expect("remove");
    tokio::time::timeout(Duration::from_secs(10), async {
        while handle.load().chatflow_by_name("team", "bot").is_some() {
            published.changed().await.expect("publisher alive");
        }
    })
    .await
    .expect("the removal served without Flowise's listing");
    shutdown.cancel();
}

/// A sync lists Flowise beside the poll loop: a listing Flowise never answers (it waits for the
/// client's timeout, 30 s) holds up no change of the files meanwhile.
#[tokio::test]
async fn a_sync_waiting_for_flowise_holds_up_no_change_of_the_files() {
    let (dir, fake, handle, shutdown, _health) = polled(Duration::from_secs(1));
    let mut published = handle.subscribe();
    while handle.load().chatflow_by_name("team", "bot").is_none() {
        published.changed().await.expect("publisher alive");
    }
    // Every sync from now on waits for ever; let one start.
    fake.set_hung(true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    std::fs::remove_file(dir.path().join("bot.yaml")).expect("remove");
    tokio::time::timeout(Duration::from_secs(8), async {
        while handle.load().chatflow_by_name("team", "bot").is_some() {
            published.changed().await.expect("publisher alive");
        }
    })
    .await
    .expect("the removal served while a sync waits for Flowise");
    shutdown.cancel();
}

/// A change made while a listing is under way (begun before it, so it may predate a chatflow
/// the change names) is resolved again against a listing begun after it.
#[tokio::test]
async fn a_change_during_a_listing_is_resolved_against_a_later_one() {
    let (dir, fake, handle, shutdown, _health) = polled(Duration::from_secs(600));
    let mut published = handle.subscribe();
    let ready = |handle: &SnapshotHandle, name: &str| {
        handle
            .load()
            .chatflow_by_name("team", name)
            .is_some_and(|cf| cf.rule.ready)
    };
    while !ready(&handle, "bot") {
        published.changed().await.expect("publisher alive");
    }
    // A change starts a listing that Flowise holds on to: it lists what Flowise had then.
    fake.set_hung(true);
    write(dir.path(), "other.yaml", "# nothing yet\n");
    published
        .changed()
        .await
        .expect("served from the last listing");
    // Meanwhile a chatflow is created in Flowise, and a file names it.
    fake.insert("New", "CHATFLOW", None);
    write(dir.path(), "new.yaml", &chatflow_file("new", "New"));
    while handle.load().chatflow_by_name("team", "new").is_none() {
        published.changed().await.expect("publisher alive");
    }
    assert!(
        !ready(&handle, "new"),
        "not in the listing it was resolved against"
    );
    // Past the while a file written counts as recent (its end is a change of its own, which
    // lists again too), still with the first listing under way.
    tokio::time::sleep(RECENT + Duration::from_secs(1)).await;
    fake.set_hung(false);
    tokio::time::timeout(Duration::from_secs(5), async {
        while !ready(&handle, "new") {
            published.changed().await.expect("publisher alive");
        }
    })
    .await
    .expect("listed again after the listing that began before the change");
    shutdown.cancel();
}

#[test]
fn a_change_is_loaded_once_it_has_held_for_a_poll() {
    let (a, b, c) = (Some(1), Some(2), Some(3));
    let settled = |seen, previous, now| due(seen, previous, now, false);
    assert!(settled(&None, &None, &a), "the first load at once");
    assert!(!settled(&a, &a, &a), "nothing changed");
    assert!(
        !settled(&a, &a, &b),
        "changed since the poll before: maybe half written"
    );
    assert!(settled(&a, &b, &b), "and held since");
    assert!(!settled(&a, &b, &c), "still being written");
    assert!(!settled(&a, &b, &None), "the directory could not be read");
    // A sync reloads what did not change, but not what is being written.
    assert!(due(&a, &a, &a, true));
    assert!(
        !due(&a, &a, &b, true),
        "a sync waits for the change to hold"
    );
    assert!(!due(&a, &a, &None, true));
}

/// A file a write is emptying first (`helm template … > all.yaml` empties it at once, then
/// renders for seconds) keeps what it held for a while, and the end of that while is a change
/// the poll loads again; emptied longer ago, it holds nothing.
#[test]
fn a_file_emptied_lately_keeps_what_it_held_for_a_while() {
    let dir = tempfile::tempdir().expect("dir");
    let budgets = "apiVersion: flowgate.io/v1alpha1\nkind: CreditPolicy\nmetadata: {name: p, namespace: team}\n\
                   spec: {chatflows: ['*'], budget: {credits: 5, period: Daily}}\n";
    write(dir.path(), "all.yaml", budgets);
    let flat = ResourcesDir::flat(dir.path());
    let mut kept = LastReadable::new();
    let (res, _) = load_keeping(&flat, &mut kept);
    assert_eq!(res.policies.len(), 1);
    write(dir.path(), "all.yaml", "");
    let (res, problems) = load_keeping(&flat, &mut kept);
    assert_eq!(res.policies.len(), 1, "kept while it may be being written");
    assert!(problems[0].contains("empty since"), "{problems:?}");
    // Empty for 10 s, then 31 s: the end of the grace alone changes the file's state.
    let written = std::fs::metadata(dir.path().join("all.yaml"))
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_ne!(
        fingerprint_at(&flat, written + Duration::from_secs(10)),
        fingerprint_at(&flat, written + EMPTIED_GRACE + Duration::from_secs(1)),
        "the grace's end is a change"
    );
    std::fs::File::options()
        .write(true)
        .open(dir.path().join("all.yaml"))
        .and_then(|f| f.set_modified(SystemTime::now() - EMPTIED_GRACE - Duration::from_secs(1)))
        .expect("set the time");
    let (res, problems) = load_keeping(&flat, &mut kept);
    assert!(res.policies.is_empty(), "empty long enough: {problems:?}");
}

/// A link whose target is deleted (to revoke what it held) holds nothing from then on.
#[cfg(unix)]
#[test]
fn a_link_to_a_deleted_file_holds_nothing() {
    let (dir, elsewhere) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let grants = "apiVersion: flowgate.io/v1alpha1\nkind: ChatflowAccess\nmetadata: {name: a, namespace: team}\n\
                  spec: {chatflows: ['*'], subjects: [{user: alice@example.com}]}\n";
    write(elsewhere.path(), "grants.yaml", grants);
    std::os::unix::fs::symlink(
        elsewhere.path().join("grants.yaml"),
        dir.path().join("grants.yaml"),
    )
    .expect("link");
    let flat = ResourcesDir::flat(dir.path());
    let mut kept = LastReadable::new();
    let (res, problems) = load_keeping(&flat, &mut kept);
    assert_eq!(res.accesses.len(), 1, "{problems:?}");
    std::fs::remove_file(elsewhere.path().join("grants.yaml")).expect("remove");
    let (res, problems) = load_keeping(&flat, &mut kept);
    assert!(res.accesses.is_empty(), "{problems:?}");
    assert!(kept.is_empty());
}
