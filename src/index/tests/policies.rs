//! CreditPolicy rules in the index: which apply, overrides, invalid and unreadable ones.

use super::*;

#[test]
fn a_budget_override_gives_the_subjects_it_names_their_own_credits() {
    let mut res = team_a();
    res.policies = vec![
        policy(
            "team-a",
            "monthly",
            "  chatflows: ['*']\n  budget:\n    credits: 100\n    period: Monthly\n    overrides:\n    - {subjects: [{user: alice@example.com}], credits: 500}\n    - {subjects: [{group: support}, {user: bob}], credits: 10}\n    - {subjects: [{group: leads}], credits: 1000}\n",
        ),
        policy(
            "team-a",
            "shared",
            "  chatflows: ['*']\n  budget: {credits: 5, period: Never, scope: Shared, overrides: [{subjects: [{user: x}], credits: 9}]}\n",
        ),
        policy(
            "team-a",
            "two-things",
            "  chatflows: ['*']\n  budget: {credits: 5, period: Never, overrides: [{subjects: [{user: x}], credits: 1}, {subjects: [{user: y, group: z}], credits: 2}]}\n",
        ),
    ];
    let snap = compile(&res);
    let monthly = snap
        .policy_rules()
        .iter()
        .find(|p| &*p.id == "team-a/monthly")
        .expect("monthly compiled");
    let credits = |users: &[&str], groups: &[&str]| {
        let users: Vec<String> = users.iter().map(|u| u.to_string()).collect();
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        monthly.credits_for(&Caller {
            users: &users,
            groups: &groups,
            service_account: None,
        })
    };
    assert_eq!(credits(&["carol"], &[]), (100, false), "the policy's");
    assert_eq!(credits(&["sub-1", "alice@example.com"], &[]), (500, true));
    assert_eq!(
        credits(&["bob"], &[]),
        (10, true),
        "smaller than the policy's"
    );
    assert_eq!(
        credits(&["bob"], &["support", "leads"]),
        (1000, true),
        "the largest that names the caller"
    );
    let invalid: Vec<(String, String)> = snap
        .invalid
        .iter()
        .map(|i| (i.name.clone(), i.error.to_string()))
        .collect();
    assert_eq!(
        invalid,
        [
            (
                "shared".to_string(),
                "budget.overrides need scope PerSubject: a Shared budget is one for all its \
                 subjects"
                    .to_string()
            ),
            (
                "two-things".to_string(),
                "budget.overrides[1].subjects[0] must set exactly one of user, group, \
                 serviceAccount"
                    .to_string()
            ),
        ]
    );
}

#[test]
fn policies_apply_by_chatflow_and_subject() {
    let mut res = team_a();
    res.accesses.push(access(
        "team-a",
        "all",
        "  chatflows: ['*']\n  subjects: [{group: staff}]\n",
    ));
    res.policies = vec![
        policy(
            "team-a",
            "monthly",
            "  chatflows: ['*']\n  budget: {credits: 1000, period: Monthly}\n",
        ),
        policy(
            "team-a",
            "support-daily",
            "  chatflows: [faq-bot]\n  subjects: [{group: support}]\n  budget: {credits: 50, period: Daily, scope: Shared}\n  cost: {perPrediction: 2}\n",
        ),
        policy(
            "team-b",
            "elsewhere",
            "  chatflows: ['*']\n  budget: {credits: 1, period: Never}\n",
        ),
    ];
    let snap = compile(&res);
    let faq = snap.chatflow_by_flowise_id(FAQ).expect("faq");
    let groups = ["staff".to_string(), "support".to_string()];
    let support_member = Caller {
        users: &[],
        groups: &groups,
        service_account: None,
    };
    let ids: Vec<&str> = snap
        .policies_for(&support_member, faq)
        .iter()
        .map(|p| &*p.id)
        .collect();
    assert_eq!(ids, vec!["team-a/monthly", "team-a/support-daily"]);
    let staff = ["staff".to_string()];
    let other_member = Caller {
        users: &[],
        groups: &staff,
        service_account: None,
    };
    let ids: Vec<&str> = snap
        .policies_for(&other_member, faq)
        .iter()
        .map(|p| &*p.id)
        .collect();
    assert_eq!(ids, vec!["team-a/monthly"]);
    // A policy naming an address charges it whatever the case the token writes it in.
    let mut named = res.clone();
    named.policies.push(policy(
        "team-a",
        "carol",
        "  chatflows: [faq-bot]\n  subjects: [{user: Carol@Example.com}]\n  budget: {credits: 5, period: Daily}\n",
    ));
    let snap_named = compile(&named);
    let faq_named = snap_named.chatflow_by_flowise_id(FAQ).expect("faq");
    let carol = ["c-sub".to_string(), "carol@example.com".to_string()];
    let carol = Caller {
        users: &carol,
        groups: &staff,
        service_account: None,
    };
    let ids: Vec<&str> = snap_named
        .policies_for(&carol, faq_named)
        .iter()
        .map(|p| &*p.id)
        .collect();
    assert_eq!(ids, vec!["team-a/carol", "team-a/monthly"]);
    let daily = snap
        .policy_rules()
        .iter()
        .find(|p| p.name == "support-daily")
        .expect("policy");
    assert_eq!((daily.credits, daily.per_prediction), (50, 2));
    let names = |id: &str| -> Vec<String> {
        snap.chatflows_of_policy(id)
            .iter()
            .map(|cf| cf.rule.name.clone())
            .collect()
    };
    assert_eq!(names("team-a/support-daily"), vec!["faq-bot"]);
    assert_eq!(names("team-a/monthly"), vec!["support-bot", "faq-bot"]);
    assert_eq!(names("team-b/elsewhere"), vec!["other-bot"]);
    assert!(names("team-a/nope").is_empty());
}

#[test]
fn an_invalid_policy_is_kept_with_whom_and_where_it_would_have_charged() {
    let mut res = team_a();
    res.policies = vec![
        // Its chatflow list does not parse: it reaches the whole namespace. Listed first, it
        // still comes after `interns` (by id).
        policy(
            "team-a",
            "mixed",
            "  chatflows: ['*', support-bot]\n  budget: {credits: 5, period: Daily}\n",
        ),
        policy(
            "team-a",
            "interns",
            "  chatflows: [faq-bot]\n  subjects: [{group: interns}]\n  budget: {credits: 5, period: Daily, timeZone: Europe/Pariss}\n",
        ),
        // Its subject list does not parse: it reaches everyone.
        policy(
            "team-b",
            "two-things",
            "  chatflows: [other-bot]\n  subjects: [{user: u, group: g}]\n  budget: {credits: 5, period: Daily}\n",
        ),
        policy(
            "team-b",
            "fine",
            "  chatflows: ['*']\n  budget: {credits: 5, period: Daily}\n",
        ),
    ];
    let snap = compile(&res);
    let (interns, staff) = (["interns".to_string()], ["staff".to_string()]);
    let intern = Caller {
        users: &[],
        groups: &interns,
        service_account: None,
    };
    let other = Caller {
        users: &[],
        groups: &staff,
        service_account: None,
    };
    let on = |caller: &Caller<'_>, id: &str| {
        let cf = snap.chatflow_by_flowise_id(id).expect("chatflow indexed");
        snap.invalid_policy_for(caller, cf)
            .map(|p| (p.id.to_string(), p.error.clone()))
    };
    let interns_policy = (
        "team-a/interns".to_string(),
        InvalidSpec::TimeZone("Europe/Pariss".into()),
    );
    let mixed = ("team-a/mixed".to_string(), InvalidSpec::MixedWildcard);
    assert_eq!(on(&intern, FAQ), Some(interns_policy), "the first by id");
    assert_eq!(on(&other, FAQ), Some(mixed.clone()), "not an intern");
    assert_eq!(on(&other, SUPPORT), Some(mixed));
    let two_things = Some((
        "team-b/two-things".to_string(),
        InvalidSpec::Subject { index: 0 },
    ));
    assert_eq!(on(&intern, OTHER), two_things, "everyone");
    assert_eq!(on(&other, OTHER), two_things);
    assert_eq!(snap.policy_rules().len(), 1, "the invalid ones are skipped");
    assert_eq!(snap.invalid.len(), 3);
}

#[test]
fn an_unreadable_policy_reaches_its_whole_namespace() {
    let mut res = team_a();
    res.unreadable = vec![Unreadable {
        kind: "CreditPolicy",
        namespace: "team-a".into(),
        name: "typo".into(),
        error: "unknown variant `Dialy`".into(),
        claim: None,
    }];
    let snap = compile(&res);
    let nobody = Caller::default();
    for (id, reached) in [(SUPPORT, true), (FAQ, true), (OTHER, false)] {
        let cf = snap.chatflow_by_flowise_id(id).expect("chatflow indexed");
        assert_eq!(
            snap.invalid_policy_for(&nobody, cf)
                .map(|p| p.id.to_string()),
            reached.then(|| "team-a/typo".to_string()),
            "{id}"
        );
    }
    assert_eq!(
        snap.invalid,
        vec![Invalid {
            kind: "CreditPolicy",
            namespace: "team-a".into(),
            name: "typo".into(),
            error: InvalidSpec::Unreadable("unknown variant `Dialy`".into()),
        }]
    );
}

#[test]
fn a_number_past_the_ledger_names_its_field() {
    let mut res = team_a();
    res.policies = vec![policy(
        "team-a",
        "huge",
        "  chatflows: ['*']\n  budget:\n    credits: 10\n    period: Daily\n    overrides:\n    \
         - {subjects: [{user: a}], credits: 5}\n    \
         - {subjects: [{user: b}], credits: 9223372036854775808}\n",
    )];
    let snap = compile(&res);
    let errors: Vec<String> = snap.invalid.iter().map(|i| i.error.to_string()).collect();
    assert_eq!(
        errors,
        vec![
            "budget.overrides[1].credits must be at most 9223372036854775807 (the ledger counts \
             in signed 64 bits)"
        ]
    );
}

#[test]
fn a_hold_past_the_ledger_is_invalid() {
    let mut res = team_a();
    res.policies = vec![policy(
        "team-a",
        "huge-hold",
        "  chatflows: ['*']\n  budget: {credits: 10, period: Daily}\n  \
         cost: {perPrediction: 9223372036854775807, perThousandTokens: 1000, reserveTokens: 1}\n",
    )];
    let errors: Vec<String> = compile(&res)
        .invalid
        .iter()
        .map(|i| i.error.to_string())
        .collect();
    assert_eq!(
        errors,
        vec![
            "perPrediction + reserveTokens × perThousandTokens / 1000 (the hold of \
             cost.reserveTokens) must be at most 9223372036854775807 (the ledger counts in \
             signed 64 bits)"
        ]
    );
}

#[test]
fn the_snapshot_knows_whether_some_valid_policy_prices_tokens() {
    let mut res = team_a();
    res.policies.push(policy(
        "team-a",
        "flat",
        "  chatflows: ['*']\n  budget: {credits: 5, period: Daily}\n  cost: {perPrediction: 2}\n",
    ));
    // Invalid: it charges nothing, tokens or not.
    res.policies.push(policy(
        "team-a",
        "bad-zone",
        "  chatflows: ['*']\n  budget: {credits: 5, period: Daily, timeZone: Mars/Olympus}\n  cost: {perThousandTokens: 3}\n",
    ));
    assert!(!compile(&res).prices_tokens());
    res.policies.push(policy(
        "team-b",
        "priced",
        "  chatflows: ['*']\n  budget: {credits: 5, period: Daily}\n  cost: {perThousandTokens: 3}\n",
    ));
    assert!(compile(&res).prices_tokens());
}

#[test]
fn a_policy_being_deleted_neither_charges_nor_refuses_while_a_finalizer_keeps_it() {
    let mut res = team_a();
    let deleting = |body: &str| {
        let mut object = (*policy("team-a", "going", body)).clone();
        object.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        object.metadata.finalizers = Some(vec!["backup.example.com/keep".into()]);
        Arc::new(object)
    };
    res.policies = vec![
        deleting("  chatflows: ['*']\n  budget: {credits: 10, period: Monthly}\n"),
        // Invalid too (no such time zone): it would refuse under FLOWGATE_INVALID_POLICIES=refuse.
        deleting(
            "  chatflows: ['*']\n  budget: {credits: 5, period: Daily, timeZone: Europe/Pariss}\n",
        ),
    ];
    let snap = compile(&res);
    let support = snap.chatflow_by_flowise_id(SUPPORT).expect("support");
    let alice = ["alice@example.com".to_string()];
    assert!(snap.policies_for(&user(&alice), support).is_empty());
    assert!(snap.policy_rules().is_empty());
    assert!(snap.invalid_policy_for(&user(&alice), support).is_none());
}
