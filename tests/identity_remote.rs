//! Bearer JWT verification against remote keys, with real signatures: a JWKS URL and OIDC
//! discovery served by an in-process server that counts fetches (refresh on an unknown `kid`,
//! cooldowns, failures that keep the old keys, size limits), and static and remote keys side by
//! side.

mod identity_support;

use std::time::Duration;

use flowgate::config::{ClaimMapping, JwtConfig};
use flowgate::identity::{AuthError, Verifier, VerifierOptions};
use jsonwebtoken::Algorithm;
use serde_json::json;

use identity_support::{
    KeyServer, SECRET, Signer, claims, config, fixture_path, hs256_verifier, jwks, now, reason,
    verifier, with,
};

// --- JWKS URL -------------------------------------------------------------------------------

fn jwks_verifier(server: &KeyServer, cooldown: Duration) -> Verifier {
    let config = JwtConfig {
        jwks_url: Some(server.jwks_url()),
        ..config()
    };
    let options = VerifierOptions {
        refresh_cooldown: cooldown,
        ..VerifierOptions::default()
    };
    Verifier::with_options(&config, &ClaimMapping::default(), None, options).expect("valid")
}

#[tokio::test]
async fn a_jwks_url_serves_rsa_ec_and_ed25519_keys() {
    let signers = [
        Signer::rsa("rsa.key", Algorithm::RS256).with_kid("rsa"),
        Signer::ec256().with_kid("ec"),
        Signer::ed25519().with_kid("ed"),
    ];
    let server = KeyServer::start(jwks(&signers.iter().collect::<Vec<_>>())).await;
    let verifier = jwks_verifier(&server, Duration::from_secs(30));
    for signer in &signers {
        assert_eq!(reason(verifier.verify(&signer.sign(&claims())).await), "ok");
    }
    assert_eq!(server.jwks_fetches(), 1, "keys are fetched once and cached");
    assert!(verifier.keys_loaded());
}

#[tokio::test]
async fn a_token_without_kid_is_checked_against_the_remote_key_when_the_static_one_did_not_sign_it()
{
    // A static RSA key and a provider whose one RSA key has no `kid`.
    let remote = Signer::rsa("rsa2.key", Algorithm::RS256);
    let server = KeyServer::start(jwks(&[&remote])).await;
    let verifier = verifier(&JwtConfig {
        public_key_file: Some(fixture_path("rsa.pub")),
        jwks_url: Some(server.jwks_url()),
        ..config()
    });
    assert_eq!(reason(verifier.verify(&remote.sign(&claims())).await), "ok");
    let local = Signer::rsa("rsa.key", Algorithm::RS256);
    assert_eq!(reason(verifier.verify(&local.sign(&claims())).await), "ok");
    let stranger = Signer::ec256();
    assert_ne!(
        reason(verifier.verify(&stranger.sign(&claims())).await),
        "ok"
    );
}

/// A provider that names no key, mid-rotation: two RSA keys without `kid`, and tokens signed
/// by either, with no `kid` or with one the keys do not carry.
#[tokio::test]
async fn tokens_no_key_is_named_for_are_checked_against_each_unnamed_key_of_their_algorithm() {
    let (old, new) = (
        Signer::rsa("rsa.key", Algorithm::RS256),
        Signer::rsa("rsa2.key", Algorithm::RS256),
    );
    let server = KeyServer::start(jwks(&[&old, &new])).await;
    let verifier = jwks_verifier(&server, Duration::from_secs(30));
    for signer in [&old, &new] {
        assert_eq!(reason(verifier.verify(&signer.sign(&claims())).await), "ok");
    }
    let named = Signer::rsa("rsa2.key", Algorithm::RS256).with_kid("2026-11");
    assert_eq!(reason(verifier.verify(&named.sign(&claims())).await), "ok");
    // Neither signed this one; an EdDSA token has no key of its algorithm.
    let mut forged = old.sign(&claims());
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    assert_eq!(reason(verifier.verify(&forged).await), "bad_signature");
    assert_ne!(
        reason(verifier.verify(&Signer::ed25519().sign(&claims())).await),
        "ok"
    );
}

/// A provider that names no key (or keeps one `kid` through a rotation) signs with its new key
/// as it publishes it: a token the fetched keys refuse has them fetched again, as an unknown
/// `kid` does, within the same cooldown.
#[tokio::test]
async fn a_rotation_by_a_provider_that_names_no_key_is_fetched_at_once() {
    let cooldown = Duration::from_millis(400);
    for kid in [None, Some("main")] {
        let mut old = Signer::rsa("rsa.key", Algorithm::RS256);
        let mut new = Signer::rsa("rsa2.key", Algorithm::RS256);
        if let Some(kid) = kid {
            (old, new) = (old.with_kid(kid), new.with_kid(kid));
        }
        let server = KeyServer::start(jwks(&[&old])).await;
        let verifier = jwks_verifier(&server, cooldown);
        assert_eq!(reason(verifier.verify(&old.sign(&claims())).await), "ok");
        assert_eq!(server.jwks_fetches(), 1);

        server.set_jwks(jwks(&[&new]));
        // Within the cooldown: a token issued after the keys were fetched may be signed by a
        // key published since (503); one issued before cannot (401).
        let newer = new.sign(&with(json!({"iat": now() + 2})));
        assert_eq!(
            verifier.verify(&newer).await,
            Err(AuthError::KeyNotFetchedYet),
            "{kid:?}"
        );
        let older = new.sign(&with(json!({"iat": now() - 10})));
        assert_eq!(
            verifier.verify(&older).await,
            Err(AuthError::BadSignature),
            "{kid:?}"
        );
        assert_eq!(server.jwks_fetches(), 1, "{kid:?}: the cooldown holds");

        tokio::time::sleep(cooldown + Duration::from_millis(100)).await;
        assert_eq!(
            reason(verifier.verify(&new.sign(&claims())).await),
            "ok",
            "{kid:?}: the new key is fetched at once, not at the next scheduled refresh"
        );
        assert_eq!(server.jwks_fetches(), 2, "{kid:?}");
    }
}

#[tokio::test]
async fn an_unknown_kid_is_rejected() {
    let server = KeyServer::start(jwks(&[&Signer::ed25519().with_kid("ed")])).await;
    let verifier = jwks_verifier(&server, Duration::from_secs(30));
    let token = Signer::ed25519().with_kid("someone-else").sign(&claims());
    assert_eq!(verifier.verify(&token).await, Err(AuthError::UnknownKey));
    assert_eq!(server.jwks_fetches(), 1);
}

#[tokio::test]
async fn a_scheduled_refresh_does_not_hold_back_a_key_rotated_just_after_it() {
    let old = Signer::ed25519().with_kid("old");
    let new = Signer::rsa("rsa2.key", Algorithm::RS256).with_kid("new");
    let server = KeyServer::start(jwks(&[&old])).await;
    let verifier = jwks_verifier(&server, Duration::from_secs(30));
    assert!(
        verifier.refresh().await,
        "the scheduled refresh loads the keys"
    );
    assert_eq!(server.jwks_fetches(), 1);

    server.set_jwks(jwks(&[&new]));
    assert_eq!(
        reason(verifier.verify(&new.sign(&claims())).await),
        "ok",
        "the unknown kid is fetched at once, not 30 s later"
    );
    assert_eq!(server.jwks_fetches(), 2);
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_through_its_unknown_kid() {
    let cooldown = Duration::from_millis(400);
    let old = Signer::ed25519().with_kid("old");
    let new = Signer::rsa("rsa2.key", Algorithm::RS256).with_kid("new");
    let server = KeyServer::start(jwks(&[&old])).await;
    let verifier = jwks_verifier(&server, cooldown);
    let old_token = old.sign(&claims());
    assert_eq!(reason(verifier.verify(&old_token).await), "ok");
    assert_eq!(server.jwks_fetches(), 1);

    server.set_jwks(jwks(&[&new]));
    // Issued before the keys were fetched: its key was not in the set then.
    let token = new.sign(&with(json!({"iat": now() - 10})));
    assert_eq!(
        verifier.verify(&token).await,
        Err(AuthError::UnknownKey),
        "within the cooldown the key set is not fetched again"
    );
    assert_eq!(server.jwks_fetches(), 1);
    // Issued after: its key may be one published since, which the cooldown keeps from being
    // fetched. Not known yet is a 503, not a 401 that makes the client drop a good token.
    let newer = new.sign(&with(json!({"iat": now() + 2})));
    assert_eq!(
        verifier.verify(&newer).await,
        Err(AuthError::KeyNotFetchedYet)
    );
    let far_ahead = new.sign(&with(json!({"iat": now() + 3600})));
    assert_eq!(
        verifier.verify(&far_ahead).await,
        Err(AuthError::UnknownKey),
        "an iat an hour ahead is nobody's clock"
    );
    assert_eq!(server.jwks_fetches(), 1);

    tokio::time::sleep(cooldown + Duration::from_millis(100)).await;
    assert_eq!(reason(verifier.verify(&token).await), "ok");
    assert_eq!(server.jwks_fetches(), 2);
    assert_eq!(
        verifier.verify(&old_token).await,
        Err(AuthError::UnknownKey),
        "a key removed from the set is no longer accepted, not even for a cached token"
    );
    assert_eq!(server.jwks_fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_causes_one_shared_fetch() {
    let known = Signer::ed25519().with_kid("known");
    let server = KeyServer::start(jwks(&[&known])).await;
    server.set_delay(Duration::from_millis(300));
    let verifier = jwks_verifier(&server, Duration::from_secs(30));

    let flood = |round: usize| {
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let verifier = verifier.clone();
                // Issued before the keys were fetched (a newer one is a 503 within the
                // cooldown: its key may be new).
                let token = Signer::ed25519()
                    .with_kid(&format!("random-{round}-{i}"))
                    .sign(&with(json!({"iat": now() - 5})));
                tokio::spawn(async move { verifier.verify(&token).await })
            })
            .collect();
        futures::future::join_all(tasks)
    };
    for result in flood(1).await {
        // UnknownKey, not KeysUnavailable: every request waited for the one fetch.
        assert_eq!(result.expect("task"), Err(AuthError::UnknownKey));
    }
    assert_eq!(server.jwks_fetches(), 1);
    for result in flood(2).await {
        assert_eq!(result.expect("task"), Err(AuthError::UnknownKey));
    }
    assert_eq!(
        server.jwks_fetches(),
        1,
        "no second fetch within the cooldown"
    );
    assert_eq!(reason(verifier.verify(&known.sign(&claims())).await), "ok");
    assert_eq!(server.jwks_fetches(), 1);
}

#[tokio::test]
async fn a_failing_key_server_leaves_the_old_keys_in_use() {
    let cooldown = Duration::from_millis(200);
    let signer = Signer::ed25519().with_kid("ed");
    let server = KeyServer::start(jwks(&[&signer])).await;
    let verifier = jwks_verifier(&server, cooldown);
    assert_eq!(reason(verifier.verify(&signer.sign(&claims())).await), "ok");

    server.set_failing(true);
    tokio::time::sleep(cooldown + Duration::from_millis(50)).await;
    // A key the provider added while its key set cannot be fetched: not known yet is a 503, not
    // a 401 that tells the client its token is bad.
    let added = Signer::rsa("rsa2.key", Algorithm::RS256).with_kid("added");
    let error = verifier.verify(&added.sign(&claims())).await;
    assert_eq!(error, Err(AuthError::KeysUnavailable));
    assert_eq!(server.jwks_fetches(), 2, "the refresh was attempted");
    // A token not seen before, so the old key (not the token cache) accepts it.
    let fresh = signer.sign(&with(json!({"sub": "bob"})));
    assert_eq!(reason(verifier.verify(&fresh).await), "ok");
    assert!(
        verifier.refresh().await,
        "keys stay loaded after a failed refresh"
    );
    assert_eq!(server.jwks_fetches(), 3);
    let fresh = signer.sign(&with(json!({"sub": "carol"})));
    assert_eq!(reason(verifier.verify(&fresh).await), "ok");

    // Back, with the added key: it verifies, and a `kid` it does not list is refused.
    server.set_jwks(jwks(&[&signer, &added]));
    server.set_failing(false);
    tokio::time::sleep(cooldown + Duration::from_millis(50)).await;
    assert_eq!(reason(verifier.verify(&added.sign(&claims())).await), "ok");
    tokio::time::sleep(cooldown + Duration::from_millis(50)).await;
    let unknown = Signer::ed25519().with_kid("unknown").sign(&claims());
    assert_eq!(verifier.verify(&unknown).await, Err(AuthError::UnknownKey));
}

#[tokio::test]
async fn an_unreachable_key_server_leaves_the_old_keys_in_use() {
    let cooldown = Duration::from_millis(200);
    let signer = Signer::ed25519().with_kid("ed");
    let server = KeyServer::start(jwks(&[&signer])).await;
    let verifier = jwks_verifier(&server, cooldown);
    assert_eq!(reason(verifier.verify(&signer.sign(&claims())).await), "ok");

    server.stop().await;
    tokio::time::sleep(cooldown + Duration::from_millis(50)).await;
    let unknown = Signer::ed25519().with_kid("unknown").sign(&claims());
    assert_eq!(
        verifier.verify(&unknown).await,
        Err(AuthError::KeysUnavailable)
    );
    assert_eq!(verifier.key_fetches(), 2, "the refresh was attempted");
    let fresh = signer.sign(&with(json!({"sub": "bob"})));
    assert_eq!(reason(verifier.verify(&fresh).await), "ok");
}

#[tokio::test]
async fn the_background_refresh_picks_up_new_keys_by_itself() {
    let old = Signer::ed25519().with_kid("old");
    let new = Signer::ec256().with_kid("new");
    let server = KeyServer::start(jwks(&[&old])).await;
    let config = JwtConfig {
        jwks_url: Some(server.jwks_url()),
        ..config()
    };
    let options = VerifierOptions {
        refresh_interval: Duration::from_millis(100),
        // Long enough that an unknown kid cannot be what fetches the new keys.
        refresh_cooldown: Duration::from_secs(3600),
        ..VerifierOptions::default()
    };
    let verifier =
        Verifier::with_options(&config, &ClaimMapping::default(), None, options).expect("valid");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(verifier.clone().run_refresh(shutdown.clone()));

    server.set_jwks(jwks(&[&new]));
    let fetched_again = async {
        while server.jwks_fetches() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fetched_again)
        .await
        .expect("a periodic fetch");
    assert_eq!(reason(verifier.verify(&new.sign(&claims())).await), "ok");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the refresh loop stops on shutdown")
        .expect("no panic");
}

#[test]
fn a_verifier_can_be_shared_between_threads() {
    fn shared<T: Send + Sync + Clone + 'static>() {}
    shared::<Verifier>();
}

#[tokio::test]
async fn keys_that_never_loaded_are_a_transient_error() {
    let server = KeyServer::start(json!({})).await;
    server.set_failing(true);
    let verifier = jwks_verifier(&server, Duration::from_secs(30));
    let token = Signer::ed25519().with_kid("ed").sign(&claims());
    let error = verifier.verify(&token).await.expect_err("no keys");
    assert_eq!(error, AuthError::KeysUnavailable);
    assert!(error.is_transient());
    assert_eq!(
        verifier.verify(&token).await,
        Err(AuthError::KeysUnavailable)
    );
    assert_eq!(server.jwks_fetches(), 1, "retries wait for the cooldown");
    assert!(!verifier.keys_loaded());
}

#[tokio::test]
async fn an_oversized_key_set_is_refused() {
    let signer = Signer::ed25519().with_kid("ed");
    let mut big = jwks(&[&signer]);
    big["padding"] = json!("x".repeat(10_000));
    let server = KeyServer::start(big).await;
    let config = JwtConfig {
        jwks_url: Some(server.jwks_url()),
        ..config()
    };
    let options = VerifierOptions {
        max_response_bytes: 4096,
        ..VerifierOptions::default()
    };
    let verifier =
        Verifier::with_options(&config, &ClaimMapping::default(), None, options).expect("valid");
    assert!(!verifier.refresh().await);
    assert_eq!(
        verifier.verify(&signer.sign(&claims())).await,
        Err(AuthError::KeysUnavailable)
    );
}

#[tokio::test]
async fn static_and_remote_keys_work_side_by_side() {
    let remote = Signer::ed25519().with_kid("ed");
    let server = KeyServer::start(jwks(&[&remote])).await;
    let (verifier, _file) = hs256_verifier(|c| c.jwks_url = Some(server.jwks_url()));
    assert_eq!(reason(verifier.verify(&remote.sign(&claims())).await), "ok");
    let hs = Signer::hs256(SECRET);
    assert_eq!(reason(verifier.verify(&hs.sign(&claims())).await), "ok");
    // A kid the key set does not know falls back to the static key of the token's family.
    let hs_with_kid = Signer::hs256(SECRET).with_kid("hs-1").sign(&claims());
    assert_eq!(reason(verifier.verify(&hs_with_kid).await), "ok");
}

// --- OIDC discovery -------------------------------------------------------------------------

fn oidc_verifier(server: &KeyServer, issuer: Option<&str>) -> Verifier {
    let config = JwtConfig {
        oidc_issuer_url: Some(reqwest::Url::parse(&server.base()).expect("url")),
        issuer: issuer.map(String::from),
        ..config()
    };
    verifier(&config)
}

#[tokio::test]
async fn oidc_discovery_finds_the_keys_and_requires_the_discovered_issuer() {
    let signer = Signer::rsa("rsa.key", Algorithm::RS256).with_kid("idp-1");
    let server = KeyServer::start(jwks(&[&signer])).await;
    server.set_discovery(&server.base());
    let verifier = oidc_verifier(&server, None);

    let token = signer.sign(&with(json!({"iss": server.base()})));
    assert_eq!(reason(verifier.verify(&token).await), "ok");
    assert_eq!((server.discovery_fetches(), server.jwks_fetches()), (1, 1));

    let other = signer.sign(&with(json!({"iss": "https://elsewhere.example.com"})));
    assert_eq!(verifier.verify(&other).await, Err(AuthError::WrongIssuer));
    let none = signer.sign(&claims());
    assert_eq!(
        verifier.verify(&none).await,
        Err(AuthError::MissingClaim("iss".into()))
    );
}

#[tokio::test]
async fn a_configured_issuer_overrides_the_discovered_one() {
    let signer = Signer::ec256().with_kid("idp-1");
    let server = KeyServer::start(jwks(&[&signer])).await;
    server.set_discovery(&server.base());
    let verifier = oidc_verifier(&server, Some("https://public.example.com"));
    let public = signer.sign(&with(json!({"iss": "https://public.example.com"})));
    assert_eq!(reason(verifier.verify(&public).await), "ok");
    let discovered = signer.sign(&with(json!({"iss": server.base()})));
    assert_eq!(
        verifier.verify(&discovered).await,
        Err(AuthError::WrongIssuer)
    );
}

#[tokio::test]
async fn a_discovery_document_for_another_issuer_is_refused() {
    let signer = Signer::ed25519().with_kid("ed");
    let server = KeyServer::start(jwks(&[&signer])).await;
    server.set_discovery("https://impostor.example.com");
    let verifier = oidc_verifier(&server, None);
    assert!(!verifier.refresh().await);
    assert_eq!(
        server.jwks_fetches(),
        0,
        "the key set of a mismatched issuer is not read"
    );
    let token = signer.sign(&with(json!({"iss": "https://impostor.example.com"})));
    assert_eq!(
        verifier.verify(&token).await,
        Err(AuthError::KeysUnavailable)
    );
}
