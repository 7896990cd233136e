use serde_json::json;

use super::*;

const NOW: i64 = 1_700_000_000;

/// Claims by slot for `mapping`, from a JSON object.
fn slots(mapping: &Mapping, object: Value) -> Vec<Option<Value>> {
    let mut out = vec![None; 16];
    if let Value::Object(map) = object {
        for (name, value) in map {
            let mut names = mapping.names.clone();
            let slot = names.slot(&name);
            out[slot] = Some(value);
        }
    }
    out
}

fn default_mapping() -> Mapping {
    Mapping::new(&ClaimMapping::default())
}

fn user(object: Value) -> Result<Identity, AuthError> {
    let mapping = default_mapping();
    user_identity(slots(&mapping, object), &mapping, Timestamp::UNIX_EPOCH)
}

fn checks() -> Checks<'static> {
    Checks {
        now: NOW,
        leeway: 30,
        issuer: None,
        audience: None,
    }
}

fn check(object: Value, checks: Checks<'_>) -> Result<Timestamp, AuthError> {
    validate(&slots(&default_mapping(), object), checks)
}

#[test]
fn user_claims_are_taken_in_configured_order_and_key_uses_the_first() {
    let id = user(json!({"email": "a@x.io", "sub": "u-1"})).expect("identity");
    assert_eq!(id.users, ["u-1", "a@x.io"]);
    assert_eq!(id.key, "user:u-1");
    assert_eq!(id.service_account, None);

    let id = user(json!({"email": "a@x.io"})).expect("email alone names the user");
    assert_eq!(id.users, ["a@x.io"]);
    assert_eq!(id.key, "user:a@x.io");
}

#[test]
fn an_address_is_also_named_in_lower_case_after_the_values_as_given() {
    let id = user(json!({"sub": "u-1", "email": "Alice@Corp.IO"})).expect("identity");
    assert_eq!(id.users, ["u-1", "Alice@Corp.IO", "alice@corp.io"]);
    assert_eq!(id.key, "user:u-1");
    let id = user(json!({"email": "Alice@Corp.IO"})).expect("identity");
    assert_eq!(id.users, ["Alice@Corp.IO", "alice@corp.io"]);
    assert_eq!(
        id.key, "user:Alice@Corp.IO",
        "the ledger's key is the value as given"
    );
    // Not twice, and an id stays as it is.
    let id = user(json!({"sub": "alice@corp.io", "email": "ALICE@corp.io"})).expect("identity");
    assert_eq!(id.users, ["alice@corp.io", "ALICE@corp.io"]);
    let id = user(json!({"sub": "User-ABC"})).expect("identity");
    assert_eq!(id.users, ["User-ABC"]);
}

#[test]
fn non_string_and_empty_user_claims_are_ignored() {
    let id = user(json!({"sub": 42, "email": "a@x.io"})).expect("identity");
    assert_eq!(id.users, ["a@x.io"]);
    let id = user(json!({"sub": "u-1\0", "email": "a@x.io"})).expect("identity");
    assert_eq!(id.users, ["a@x.io"], "a control character names no one");
    assert_eq!(id.key, "user:a@x.io");
    let id = user(json!({"sub": "u".repeat(1025), "email": "a@x.io"})).expect("identity");
    assert_eq!(id.key, "user:a@x.io", "nor does a value past 1 KiB");
    let id = user(json!({"sub": "u".repeat(1024)})).expect("identity");
    assert_eq!(id.key.len(), "user:".len() + 1024, "1 KiB is kept");
    assert_eq!(
        user(json!({"sub": "", "email": null})),
        Err(AuthError::MissingClaim("sub".into()))
    );
}

#[test]
fn groups_may_be_an_array_or_a_single_string() {
    let id = user(json!({"sub": "u", "groups": ["a", "b", 3, ""]})).expect("identity");
    assert_eq!(id.groups, ["a", "b"]);
    let id = user(json!({"sub": "u", "groups": "support"})).expect("identity");
    assert_eq!(id.groups, ["support"]);
    let id = user(json!({"sub": "u", "groups": {"a": 1}})).expect("identity");
    assert!(id.groups.is_empty());
    let id = user(json!({"sub": "u"})).expect("identity");
    assert!(id.groups.is_empty());
}

#[test]
fn admin_is_the_configured_value_or_an_array_containing_it() {
    let admin = |role: Value| user(json!({"sub": "u", "role": role})).map(|id| id.admin);
    assert_eq!(admin(json!("Admin")), Ok(true));
    assert_eq!(admin(json!(["User", "Admin"])), Ok(true));
    assert_eq!(admin(json!("admin")), Ok(false), "case-sensitive");
    assert_eq!(admin(json!(["User"])), Ok(false));
    assert_eq!(admin(json!({"Admin": true})), Ok(false));
    assert_eq!(user(json!({"sub": "u"})).map(|id| id.admin), Ok(false));
}

#[test]
fn a_custom_mapping_reads_its_own_claims() {
    let mapping = Mapping::new(&ClaimMapping {
        user_claims: vec!["preferred_username".into(), "sub".into()],
        groups_claim: "roles".into(),
        admin_claim: "is_admin".into(),
        admin_value: "true".into(),
    });
    let claims = slots(
        &mapping,
        json!({"sub": "s", "preferred_username": "bob", "roles": "ops", "is_admin": true}),
    );
    let id = user_identity(claims, &mapping, Timestamp::UNIX_EPOCH).expect("identity");
    assert_eq!(id.users, ["bob", "s"]);
    assert_eq!(id.groups, ["ops"]);
    assert!(id.admin, "a boolean claim matches its JSON text");
}

#[test]
fn groups_and_admin_may_share_a_claim() {
    let mapping = Mapping::new(&ClaimMapping {
        groups_claim: "roles".into(),
        admin_claim: "roles".into(),
        ..ClaimMapping::default()
    });
    let claims = slots(&mapping, json!({"sub": "u", "roles": ["Admin", "ops"]}));
    let id = user_identity(claims, &mapping, Timestamp::UNIX_EPOCH).expect("identity");
    assert!(id.admin);
    assert_eq!(id.groups, ["Admin", "ops"]);
}

#[test]
fn exp_is_required_and_must_be_a_number() {
    assert_eq!(
        check(json!({}), checks()),
        Err(AuthError::MissingClaim("exp".into()))
    );
    for exp in [json!("1700000100"), json!(null), json!([1]), json!(true)] {
        assert_eq!(
            check(json!({"exp": exp}), checks()),
            Err(AuthError::InvalidClaim("exp".into())),
            "{exp}"
        );
    }
    let at = check(json!({"exp": 1_700_000_100.9}), checks()).expect("fractions are allowed");
    assert_eq!(at.as_second(), 1_700_000_100);
}

#[test]
fn exp_and_nbf_honour_the_leeway() {
    assert!(check(json!({"exp": NOW - 30}), checks()).is_ok());
    assert_eq!(
        check(json!({"exp": NOW - 31}), checks()),
        Err(AuthError::Expired)
    );
    let strict = Checks {
        leeway: 0,
        ..checks()
    };
    assert_eq!(
        check(json!({"exp": NOW - 1}), strict),
        Err(AuthError::Expired)
    );

    let later = NOW + 3600;
    assert!(check(json!({"exp": later, "nbf": NOW + 30}), checks()).is_ok());
    assert_eq!(
        check(json!({"exp": later, "nbf": NOW + 31}), checks()),
        Err(AuthError::NotYetValid)
    );
    assert_eq!(
        check(json!({"exp": later, "nbf": "soon"}), checks()),
        Err(AuthError::InvalidClaim("nbf".into()))
    );
}

#[test]
fn far_future_exp_saturates() {
    let at = check(json!({"exp": 1e300}), checks()).expect("valid");
    assert_eq!(at, Timestamp::MAX);
    let at = check(json!({"exp": u64::MAX}), checks()).expect("valid");
    assert_eq!(at, Timestamp::MAX);
}

#[test]
fn issuer_and_audience_are_checked_only_when_required() {
    let exp = NOW + 60;
    assert!(check(json!({"exp": exp, "iss": "evil", "aud": "other"}), checks()).is_ok());

    let required = Checks {
        issuer: Some("https://idp"),
        audience: Some("flowgate"),
        ..checks()
    };
    let ok = check(
        json!({"exp": exp, "iss": "https://idp", "aud": ["x", "flowgate"]}),
        required,
    );
    assert!(ok.is_ok());
    let cases = [
        (
            json!({"exp": exp, "aud": "flowgate"}),
            AuthError::MissingClaim("iss".into()),
        ),
        (
            json!({"exp": exp, "iss": "https://other", "aud": "flowgate"}),
            AuthError::WrongIssuer,
        ),
        (
            json!({"exp": exp, "iss": ["https://idp"], "aud": "flowgate"}),
            AuthError::InvalidClaim("iss".into()),
        ),
        (
            json!({"exp": exp, "iss": "https://idp"}),
            AuthError::MissingClaim("aud".into()),
        ),
        (
            json!({"exp": exp, "iss": "https://idp", "aud": "other"}),
            AuthError::WrongAudience,
        ),
        (
            json!({"exp": exp, "iss": "https://idp", "aud": ["a", "b"]}),
            AuthError::WrongAudience,
        ),
        (
            json!({"exp": exp, "iss": "https://idp", "aud": 7}),
            AuthError::InvalidClaim("aud".into()),
        ),
    ];
    for (claims, expected) in cases {
        assert_eq!(check(claims.clone(), required), Err(expected), "{claims}");
    }
}

fn service_account(object: Value) -> Result<Identity, AuthError> {
    service_account_identity(&slots(&default_mapping(), object), Timestamp::UNIX_EPOCH)
}

#[test]
fn service_accounts_map_from_sub_or_the_kubernetes_claim() {
    let expected = Some(ServiceAccountRef {
        namespace: "apps".into(),
        name: "chat-client".into(),
    });
    let kubernetes =
        json!({"namespace": "apps", "serviceaccount": {"name": "chat-client", "uid": "u"}});
    for claims in [
        json!({"sub": "system:serviceaccount:apps:chat-client"}),
        json!({"kubernetes.io": kubernetes}),
        json!({"sub": "system:serviceaccount:apps:chat-client", "kubernetes.io": kubernetes}),
    ] {
        let id = service_account(claims.clone()).expect("service account");
        assert_eq!(id.service_account, expected, "{claims}");
        assert_eq!(id.key, "sa:apps/chat-client");
        assert!(id.users.is_empty() && id.groups.is_empty() && !id.admin);
    }
}

#[test]
fn inconsistent_or_foreign_service_account_claims_are_refused() {
    let cases = [
        (json!({}), "missing_claim"),
        (json!({"sub": "alice"}), "invalid_claim"),
        (
            json!({"sub": "system:serviceaccount:apps"}),
            "invalid_claim",
        ),
        (
            json!({"sub": "system:serviceaccount:apps:a:b"}),
            "invalid_claim",
        ),
        (json!({"sub": "system:serviceaccount::x"}), "invalid_claim"),
        (
            json!({"sub": "system:serviceaccount:apps:a",
                   "kubernetes.io": {"namespace": "apps", "serviceaccount": {"name": "b"}}}),
            "invalid_claim",
        ),
        (
            json!({"kubernetes.io": {"namespace": "apps"}}),
            "invalid_claim",
        ),
    ];
    for (claims, reason) in cases {
        assert_eq!(
            service_account(claims.clone()).map_err(|e| e.reason()),
            Err(reason),
            "{claims}"
        );
    }
}

#[test]
fn service_account_tokens_are_recognised_before_their_keys_are_known() {
    let mapping = default_mapping();
    let looks = |v| looks_like_service_account(&slots(&mapping, v));
    assert!(looks(json!({"sub": "system:serviceaccount:a:b"})));
    assert!(looks(json!({"kubernetes.io": {}})));
    assert!(!looks(json!({"sub": "alice"})));
}

#[test]
fn an_email_the_provider_has_not_verified_names_no_one() {
    for unverified in [json!(false), json!("false")] {
        let id =
            user(json!({"sub": "u-1", "email": "alice@corp.io", "email_verified": unverified}))
                .expect("identity");
        assert_eq!(id.users, ["u-1"], "{unverified}: only the subject");
        assert_eq!(
            user(json!({"email": "alice@corp.io", "email_verified": unverified})),
            Err(AuthError::MissingClaim("sub".into())),
            "{unverified}: no user at all"
        );
    }
    for verified in [json!(true), json!("true"), Value::Null] {
        let mut claims = json!({"sub": "u-1", "email": "alice@corp.io"});
        if !verified.is_null() {
            claims["email_verified"] = verified.clone();
        }
        let id = user(claims).expect("identity");
        assert_eq!(id.users, ["u-1", "alice@corp.io"], "{verified}");
    }
}

#[test]
fn an_email_the_provider_has_not_verified_makes_no_admin() {
    // `email` names the global admin but not users: its verification is still read.
    let mapping = Mapping::new(&ClaimMapping {
        user_claims: vec!["sub".into()],
        admin_claim: "email".into(),
        admin_value: "ops@corp.io".into(),
        ..ClaimMapping::default()
    });
    let admin = |claims: Value| {
        user_identity(slots(&mapping, claims), &mapping, Timestamp::UNIX_EPOCH)
            .expect("identity")
            .admin
    };
    assert!(!admin(
        json!({"sub": "u-1", "email": "ops@corp.io", "email_verified": false})
    ));
    assert!(!admin(
        json!({"sub": "u-1", "email": "ops@corp.io", "email_verified": "false"})
    ));
    assert!(admin(
        json!({"sub": "u-1", "email": "ops@corp.io", "email_verified": true})
    ));
    assert!(
        admin(json!({"sub": "u-1", "email": "ops@corp.io"})),
        "nothing said"
    );
    assert!(
        admin(json!({"sub": "u-1", "email": "Ops@Corp.IO"})),
        "an address whatever its case"
    );
    assert!(!admin(json!({"sub": "u-1", "email": "ops@corp.io.evil"})));
}
