//! Rate limits and roles of a caller named by several grants: their union.

use super::*;

#[test]
fn the_most_generous_rate_limit_of_the_live_grants_applies() {
    let limited = |name: &str, who: &str, limit: &str| {
        access(
            "team-a",
            name,
            &format!("  chatflows: [support-bot]\n  subjects: [{{{who}}}]\n  rateLimit: {limit}\n"),
        )
    };
    let mut resources = team_a();
    resources.accesses = vec![
        limited(
            "slow",
            "user: alice@example.com",
            "{requests: 10, per: Minute}",
        ),
        limited("fast", "group: support", "{requests: 1, per: Second}"),
        limited("bad", "user: bob@example.com", "{requests: 0, per: Second}"),
    ];
    let snap = compile(&resources);
    let cf = snap.chatflow_by_flowise_id(SUPPORT).expect("indexed");
    let rule_name = |access: Option<Access>| {
        let limit = access.and_then(|a| a.limit)?;
        Some(snap.access_rules()[limit.rule as usize].name.clone())
    };
    let alice = ["alice@example.com".to_string()];
    let support = ["support".to_string()];
    let alice_alone = user(&alice);
    let alice_in_support = Caller {
        users: &alice,
        groups: &support,
        service_account: None,
    };
    assert_eq!(
        rule_name(snap.access(&alice_alone, cf, now())).as_deref(),
        Some("slow")
    );
    // 1/s is more than 10/min: the union gives the higher rate, counted against its object.
    assert_eq!(
        rule_name(snap.access(&alice_in_support, cf, now())).as_deref(),
        Some("fast")
    );
    // A grant without a limit lifts it.
    resources.accesses.push(access(
        "team-a",
        "open",
        "  chatflows: ['*']\n  subjects: [{group: support}]\n",
    ));
    let snap = compile(&resources);
    let cf = snap.chatflow_by_flowise_id(SUPPORT).expect("indexed");
    let access = snap.access(&alice_in_support, cf, now()).expect("access");
    assert_eq!(access.limit, None);
    // `requests: 0` is refused (the CRD schema refuses it too), not read as "never".
    assert!(
        snap.invalid.iter().any(|i| i.name == "bad"),
        "{:?}",
        snap.invalid
    );
    let bob = ["bob@example.com".to_string()];
    assert_eq!(snap.access(&user(&bob), cf, now()), None);
}

/// The admin API grants access, not a rate: a caller it adds keeps the limit their other
/// grants give (a chatflow's Admin cannot lift a limit set in GitOps by adding someone, or
/// themselves), and one it alone grants has none.
#[test]
fn an_admin_api_grant_takes_the_rate_limit_of_the_callers_other_grants() {
    let mut resources = team_a();
    resources.accesses = vec![
        access(
            "team-a",
            "members",
            "  chatflows: [support-bot]\n  subjects: [{group: support}]\n  rateLimit: {requests: 10, per: Minute}\n",
        ),
        parse(
            "apiVersion: flowgate.io/v1alpha1\nkind: ChatflowAccess\n\
             metadata: {name: admin-api-support-bot, namespace: team-a, labels: {flowgate.io/managed-by: admin-api}}\n\
             spec: {chatflows: [support-bot], subjects: [{user: alice@example.com}, {user: carol@example.com}]}\n",
        ),
    ];
    let snap = compile(&resources);
    let cf = snap.chatflow_by_flowise_id(SUPPORT).expect("indexed");
    let (alice, support) = (["alice@example.com".to_string()], ["support".to_string()]);
    let member = Caller {
        users: &alice,
        groups: &support,
        service_account: None,
    };
    let limit = snap.access(&member, cf, now()).and_then(|a| a.limit);
    assert_eq!(
        limit
            .map(|l| snap.access_rules()[l.rule as usize].name.clone())
            .as_deref(),
        Some("members")
    );
    let carol = ["carol@example.com".to_string()];
    let alone = snap.access(&user(&carol), cf, now()).expect("granted");
    assert_eq!(alone.limit, None, "no other grant: no limit");
}

#[test]
fn equal_rates_are_settled_by_burst_then_by_object_whatever_grants_the_caller() {
    let limited = |name: &str, chatflows: &str, who: &str, limit: &str| {
        access(
            "team-a",
            name,
            &format!("  chatflows: [{chatflows}]\n  subjects: [{{{who}}}]\n  rateLimit: {limit}\n"),
        )
    };
    let alice = ["alice@example.com".to_string()];
    let support = ["support".to_string()];
    let alice_in_support = Caller {
        users: &alice,
        groups: &support,
        service_account: None,
    };
    let winner = |accesses: Vec<Arc<ChatflowAccess>>| {
        let mut resources = team_a();
        resources.accesses = accesses;
        let snap = compile(&resources);
        let cf = snap.chatflow_by_flowise_id(SUPPORT).expect("indexed");
        let access = snap.access(&alice_in_support, cf, now()).expect("access");
        let limit = access.limit.expect("limited");
        snap.access_rules()[limit.rule as usize].name.clone()
    };
    // 60/min and 1/s are the same rate; 60/min allows a burst of 60. Whether the caller holds it
    // through a `*` grant as a user or a named grant as a group, in either order of objects.
    let by_minute = limited(
        "by-minute",
        "'*'",
        "user: alice@example.com",
        "{requests: 60, per: Minute}",
    );
    let by_second = limited(
        "by-second",
        "support-bot",
        "group: support",
        "{requests: 1, per: Second}",
    );
    assert_eq!(
        winner(vec![by_minute.clone(), by_second.clone()]),
        "by-minute"
    );
    assert_eq!(winner(vec![by_second, by_minute]), "by-minute");
    // The same limit twice: the earlier object counts, through whichever subject.
    let first = limited(
        "first",
        "'*'",
        "group: support",
        "{requests: 5, per: Minute}",
    );
    let second = limited(
        "second",
        "support-bot",
        "user: alice@example.com",
        "{requests: 5, per: Minute}",
    );
    assert_eq!(winner(vec![first.clone(), second.clone()]), "first");
    assert_eq!(winner(vec![second, first]), "second");
}

/// One subject named by many objects on one chatflow is decided from their grants folded into
/// one (those that never expire): the union is what it was grant by grant — the strongest role,
/// the most generous limit, none when one grant has none, the others' when all are the admin
/// API's.
#[test]
fn many_grants_of_one_subject_decide_as_their_union() {
    let grant = |name: &str, who: &str, extra: &str| {
        access(
            "team-a",
            name,
            &format!("  chatflows: [support-bot]\n  subjects: [{{{who}}}]\n{extra}"),
        )
    };
    let admin_api = |name: &str, user: &str| {
        parse(&format!(
            "apiVersion: flowgate.io/v1alpha1\nkind: ChatflowAccess\n\
             metadata: {{name: {name}, namespace: team-a, labels: {{flowgate.io/managed-by: admin-api}}}}\n\
             spec: {{chatflows: [support-bot], subjects: [{{user: {user}}}]}}\n"
        ))
    };
    let mut resources = team_a();
    resources.accesses = vec![
        grant(
            "slow",
            "group: many",
            "  rateLimit: {requests: 10, per: Minute}\n",
        ),
        grant(
            "fast",
            "group: many",
            "  role: Admin\n  rateLimit: {requests: 1, per: Second}\n",
        ),
        grant(
            "slower",
            "group: many",
            "  rateLimit: {requests: 5, per: Minute}\n",
        ),
        grant(
            "brief",
            "group: many",
            "  rateLimit: {requests: 100, per: Second}\n  expiresAt: '2026-06-01T11:00:00Z'\n",
        ),
        grant(
            "members",
            "group: members",
            "  rateLimit: {requests: 10, per: Minute}\n",
        ),
        admin_api("admin-api-one", "carol@example.com"),
        admin_api("admin-api-two", "carol@example.com"),
    ];
    let snap = compile(&resources);
    let cf = snap.chatflow_by_flowise_id(SUPPORT).expect("indexed");
    let limit_of = |access: Option<Access>| {
        let limit = access.and_then(|a| a.limit)?;
        Some(snap.access_rules()[limit.rule as usize].name.clone())
    };
    let (none, many, members) = ([], ["many".to_string()], ["members".to_string()]);
    let in_group = |groups| Caller {
        users: &none,
        groups,
        service_account: None,
    };
    let access = snap.access(&in_group(&many), cf, now()).expect("granted");
    assert_eq!(access.role, Role::Admin, "the strongest role");
    assert_eq!(
        limit_of(Some(access)).as_deref(),
        Some("fast"),
        "expired 'brief' is out"
    );
    // Two admin-API grants and a limited one: the limited one's limit.
    let carol = ["carol@example.com".to_string()];
    let member = Caller {
        users: &carol,
        groups: &members,
        service_account: None,
    };
    let access = snap.access(&member, cf, now());
    assert_eq!(limit_of(access).as_deref(), Some("members"));
    // A lasting grant without a limit lifts every other.
    resources
        .accesses
        .push(grant("open", "group: many", "  role: User\n"));
    let snap = compile(&resources);
    let cf = snap.chatflow_by_flowise_id(SUPPORT).expect("indexed");
    let access = snap.access(&in_group(&many), cf, now()).expect("granted");
    assert_eq!((access.role, access.limit), (Role::Admin, None));
}
