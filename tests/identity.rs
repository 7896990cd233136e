//! Bearer JWT verification with real signatures against static keys: the HS256 secret and PEM
//! public keys (rotated in place too), registered claims, algorithms, token shape and size, and
//! configuration errors. Remote keys (JWKS URL, OIDC discovery) are in `identity_remote.rs`.

mod identity_support;

use std::time::Duration;

use flowgate::config::{ClaimMapping, JwtConfig};
use flowgate::identity::{AuthError, MAX_TOKEN_BYTES, Verifier, VerifierOptions};
use jsonwebtoken::Algorithm;
use serde_json::json;

use identity_support::{
    KeyServer, SECRET, Signer, claims, config, fixture, fixture_path, hs256_verifier, jwks, now,
    pem_verifier, raw_token, reason, verifier, with,
};

// --- static keys --------------------------------------------------------------------------

#[tokio::test]
async fn hs256_secret_file_accepts_a_good_token_and_maps_its_claims() {
    let (verifier, _file) = hs256_verifier(|_| {});
    let exp = now() + 600;
    let token = Signer::hs256(SECRET).sign(&with(json!({"exp": exp})));
    let identity = verifier.verify(&token).await.expect("valid token");
    assert_eq!(identity.users, ["alice", "alice@example.com"]);
    assert_eq!(identity.groups, ["support"]);
    assert!(identity.admin);
    assert_eq!(identity.key, "user:alice");
    assert_eq!(identity.service_account, None);
    assert_eq!(identity.expires_at.as_second(), exp);
}

#[tokio::test]
async fn an_email_marked_unverified_in_the_token_names_no_user() {
    let (verifier, _file) = hs256_verifier(|_| {});
    let exp = now() + 600;
    let token = Signer::hs256(SECRET).sign(&with(json!({"exp": exp, "email_verified": false})));
    let identity = verifier.verify(&token).await.expect("valid token");
    assert_eq!(identity.users, ["alice"], "the subject only");
    let token = Signer::hs256(SECRET).sign(&with(json!({"exp": exp, "email_verified": true})));
    let identity = verifier.verify(&token).await.expect("valid token");
    assert_eq!(identity.users, ["alice", "alice@example.com"]);
}

#[tokio::test]
async fn rsa_public_key_accepts_rs256_and_ps256_tokens() {
    let verifier = pem_verifier("rsa.pub");
    for alg in [Algorithm::RS256, Algorithm::RS512, Algorithm::PS256] {
        let token = Signer::rsa("rsa.key", alg).sign(&claims());
        assert_eq!(reason(verifier.verify(&token).await), "ok", "{alg:?}");
    }
}

#[tokio::test]
async fn ec_p256_public_key_accepts_es256_tokens() {
    let token = Signer::ec256().sign(&claims());
    let identity = pem_verifier("ec256.pub").verify(&token).await;
    assert_eq!(identity.map(|i| i.key), Ok("user:alice".to_string()));
}

#[tokio::test]
async fn ed25519_public_key_accepts_eddsa_tokens() {
    let token = Signer::ed25519().sign(&claims());
    let identity = pem_verifier("ed25519.pub").verify(&token).await;
    assert_eq!(identity.map(|i| i.key), Ok("user:alice".to_string()));
}

#[tokio::test]
async fn a_token_signed_by_another_key_has_a_bad_signature() {
    let token = Signer::rsa("rsa2.key", Algorithm::RS256).sign(&claims());
    assert_eq!(
        reason(pem_verifier("rsa.pub").verify(&token).await),
        "bad_signature"
    );
    let token = Signer::hs256(b"another-secret-of-at-least-32-bytes!!").sign(&claims());
    let (verifier, _file) = hs256_verifier(|_| {});
    assert_eq!(reason(verifier.verify(&token).await), "bad_signature");
}

#[tokio::test]
async fn a_tampered_payload_has_a_bad_signature() {
    let token = Signer::ed25519().sign(&claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = identity_support::b64(with(json!({"sub": "mallory"})).to_string());
    parts[1] = &forged;
    let forged = parts.join(".");
    assert_eq!(
        reason(pem_verifier("ed25519.pub").verify(&forged).await),
        "bad_signature"
    );
}

// --- registered claims ----------------------------------------------------------------------

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_rejected() {
    let (verifier, _file) = hs256_verifier(|_| {});
    let sign = |patch| Signer::hs256(SECRET).sign(&with(patch));
    let cases = [
        (json!({"exp": now() - 120}), "expired"),
        (json!({"nbf": now() + 120}), "not_yet_valid"),
        (json!({"nbf": now() - 120}), "ok"),
    ];
    for (patch, expected) in cases {
        assert_eq!(
            reason(verifier.verify(&sign(patch.clone())).await),
            expected,
            "{patch}"
        );
    }
}

#[tokio::test]
async fn the_leeway_is_honoured() {
    let sign = |patch| Signer::hs256(SECRET).sign(&with(patch));
    let just_expired = sign(json!({"exp": now() - 10}));
    let almost_valid = sign(json!({"nbf": now() + 10}));

    let (lenient, _file) = hs256_verifier(|_| {});
    assert_eq!(reason(lenient.verify(&just_expired).await), "ok");
    assert_eq!(reason(lenient.verify(&almost_valid).await), "ok");

    let (strict, _file) = hs256_verifier(|c| c.leeway = Duration::ZERO);
    assert_eq!(reason(strict.verify(&just_expired).await), "expired");
    assert_eq!(reason(strict.verify(&almost_valid).await), "not_yet_valid");
}

#[tokio::test]
async fn configured_issuer_and_audience_are_required() {
    let (verifier, _file) = hs256_verifier(|c| {
        c.issuer = Some("https://idp.example.com".into());
        c.audience = Some("flowgate".into());
    });
    let sign = |patch| Signer::hs256(SECRET).sign(&with(patch));
    let cases = [
        (
            json!({"iss": "https://idp.example.com", "aud": ["x", "flowgate"]}),
            "ok",
        ),
        (
            json!({"iss": "https://evil.example.com", "aud": "flowgate"}),
            "wrong_issuer",
        ),
        (json!({"aud": "flowgate"}), "missing_claim"),
        (
            json!({"iss": "https://idp.example.com", "aud": "other"}),
            "wrong_audience",
        ),
        (json!({"iss": "https://idp.example.com"}), "missing_claim"),
    ];
    for (patch, expected) in cases {
        assert_eq!(
            reason(verifier.verify(&sign(patch.clone())).await),
            expected,
            "{patch}"
        );
    }
}

#[tokio::test]
async fn exp_is_required_and_must_be_a_number() {
    let (verifier, _file) = hs256_verifier(|_| {});
    let missing = Signer::hs256(SECRET).sign(&with(json!({"exp": null})));
    assert_eq!(
        verifier.verify(&missing).await,
        Err(AuthError::MissingClaim("exp".into()))
    );
    let string = Signer::hs256(SECRET).sign(&with(json!({"exp": (now() + 600).to_string()})));
    assert_eq!(
        verifier.verify(&string).await,
        Err(AuthError::InvalidClaim("exp".into()))
    );
}

#[tokio::test]
async fn a_token_without_any_user_claim_is_rejected() {
    let (verifier, _file) = hs256_verifier(|_| {});
    let token = Signer::hs256(SECRET).sign(&with(json!({"sub": null, "email": null})));
    assert_eq!(
        verifier.verify(&token).await,
        Err(AuthError::MissingClaim("sub".into()))
    );
}

// --- algorithms -----------------------------------------------------------------------------

#[tokio::test]
async fn alg_none_is_rejected_in_every_casing() {
    let (verifier, _file) = hs256_verifier(|_| {});
    let payload = claims().to_string();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
        for signature in ["", "c2ln"] {
            let token = raw_token(&header, &payload, signature);
            assert_eq!(
                verifier.verify(&token).await,
                Err(AuthError::UnsupportedAlgorithm),
                "{alg} with signature {signature:?}"
            );
        }
    }
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_rejected() {
    // The classic algorithm-confusion attack: use the (public) PEM as an HMAC secret.
    let public_pem = fixture("rsa.pub");
    let forged = Signer::hs256(&public_pem).sign(&claims());
    assert_eq!(
        pem_verifier("rsa.pub").verify(&forged).await,
        Err(AuthError::AlgorithmMismatch)
    );

    let server = KeyServer::start(jwks(&[
        &Signer::rsa("rsa.key", Algorithm::RS256).with_kid("r1")
    ]))
    .await;
    let verifier = verifier(&JwtConfig {
        jwks_url: Some(server.jwks_url()),
        ..config()
    });
    let forged = Signer::hs256(&public_pem).with_kid("r1").sign(&claims());
    assert_eq!(
        verifier.verify(&forged).await,
        Err(AuthError::AlgorithmMismatch)
    );
}

#[tokio::test]
async fn a_header_alg_outside_the_keys_family_is_rejected() {
    let es256 = Signer::ec256().sign(&claims());
    assert_eq!(
        pem_verifier("rsa.pub").verify(&es256).await,
        Err(AuthError::AlgorithmMismatch)
    );
    let rs256 = Signer::rsa("rsa.key", Algorithm::RS256).sign(&claims());
    assert_eq!(
        pem_verifier("ec256.pub").verify(&rs256).await,
        Err(AuthError::AlgorithmMismatch)
    );
    let (verifier, _file) = hs256_verifier(|_| {});
    let hs384 = Signer::hs256(SECRET)
        .with_alg(Algorithm::HS384)
        .sign(&claims());
    assert_eq!(
        verifier.verify(&hs384).await,
        Err(AuthError::AlgorithmMismatch)
    );
}

#[tokio::test]
async fn a_cached_token_still_expires() {
    let (verifier, _file) = hs256_verifier(|c| c.leeway = Duration::ZERO);
    let token = Signer::hs256(SECRET).sign(&with(json!({"exp": now() + 1})));
    assert_eq!(reason(verifier.verify(&token).await), "ok");
    assert_eq!(reason(verifier.verify(&token).await), "ok", "served again");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(verifier.verify(&token).await, Err(AuthError::Expired));
}

#[tokio::test]
async fn the_cache_counts_its_hits_and_misses_unless_it_is_off() {
    let (verifier, _file) = hs256_verifier(|_| {});
    let lookups = verifier.token_cache_lookups();
    let token = Signer::hs256(SECRET).sign(&claims());
    for _ in 0..3 {
        assert_eq!(reason(verifier.verify(&token).await), "ok");
    }
    let bad = Signer::hs256(b"another secret").sign(&claims());
    assert_eq!(verifier.verify(&bad).await, Err(AuthError::BadSignature));
    let counts = lookups().expect("the cache is on by default");
    assert_eq!((counts.hits, counts.misses), (2, 2), "{counts:?}");
    drop(verifier);
    assert_eq!(
        lookups(),
        None,
        "the reader does not keep the verifier alive"
    );

    let (_, file) = hs256_verifier(|_| {});
    let config = JwtConfig {
        hs256_secret_file: Some(file.path().to_path_buf()),
        ..config()
    };
    let off = Verifier::with_options(
        &config,
        &ClaimMapping::default(),
        None,
        VerifierOptions {
            token_cache_capacity: 0,
            ..VerifierOptions::default()
        },
    )
    .expect("valid");
    assert_eq!(reason(off.verify(&token).await), "ok");
    assert_eq!(reason(off.verify(&token).await), "ok", "verified again");
    assert_eq!(off.token_cache_lookups()(), None, "no cache, no counts");
}

// --- shape and size -------------------------------------------------------------------------

#[tokio::test]
async fn garbage_truncated_and_extra_segments_are_malformed() {
    let (verifier, _file) = hs256_verifier(|_| {});
    let good = Signer::hs256(SECRET).sign(&claims());
    let (head, signature) = good.rsplit_once('.').expect("three segments");
    assert_eq!(signature.len(), 43, "HS256: 32 bytes of base64url");
    let cases = [
        "garbage".to_string(),
        "a.b.c".to_string(),
        head.to_string(),
        format!("{head}."),
        // 33 signature characters cannot be base64.
        good[..good.len() - 10].to_string(),
        format!("{good}.extra"),
        format!("{head}.!!notbase64!!"),
        format!("{}.{signature}", &head[..head.len() - 3]),
        raw_token(r#"{"alg":"HS256"}"#, "not json", signature),
    ];
    for token in cases {
        let result = verifier.verify(&token).await;
        assert!(
            matches!(result, Err(AuthError::Malformed(_))),
            "{token}: {result:?}"
        );
    }
    assert_eq!(reason(verifier.verify("").await), "missing");

    let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
    let corrupted = format!("{head}.{flipped}{}", &signature[1..]);
    assert_eq!(
        verifier.verify(&corrupted).await,
        Err(AuthError::BadSignature)
    );
}

#[tokio::test]
async fn an_oversized_token_is_rejected_before_decoding() {
    let (verifier, _file) = hs256_verifier(|_| {});
    let big = with(json!({"padding": "x".repeat(MAX_TOKEN_BYTES)}));
    let token = Signer::hs256(SECRET).sign(&big);
    assert_eq!(verifier.verify(&token).await, Err(AuthError::TooLarge));
    let huge_header = format!("{}.e30.c2ln", "A".repeat(2000));
    assert_eq!(
        verifier.verify(&huge_header).await,
        Err(AuthError::TooLarge)
    );
}

// --- configuration --------------------------------------------------------------------------

#[test]
fn bad_key_configuration_names_its_setting() {
    let mapping = ClaimMapping::default();
    let err = Verifier::new(&config(), &mapping, None).expect_err("no key source");
    assert!(err.setting.contains("FLOWGATE_JWKS_URL"), "{err}");

    let cases = [
        (fixture_path("rsa.key"), "private key"),
        (fixture_path("README.md"), "not a PEM"),
        (fixture_path("missing.pub"), "cannot read"),
    ];
    for (path, problem) in cases {
        let config = JwtConfig {
            public_key_file: Some(path),
            ..config()
        };
        let err = Verifier::new(&config, &mapping, None).expect_err("bad key file");
        assert_eq!(err.setting, "FLOWGATE_JWT_PUBLIC_KEY_FILE");
        assert!(err.problem.contains(problem), "{err}");
    }

    let config = JwtConfig {
        service_account_audience: Some("flowgate".into()),
        ..config()
    };
    let err = Verifier::new(&config, &mapping, None).expect_err("needs a cluster");
    assert_eq!(err.setting, "FLOWGATE_SERVICE_ACCOUNT_AUDIENCE");
}

#[tokio::test]
async fn a_rotated_secret_file_is_picked_up_and_a_bad_one_is_ignored() {
    let (verifier, file) = hs256_verifier(|_| {});
    let claims = with(json!({"exp": now() + 600}));
    let old = Signer::hs256(SECRET).sign(&claims);
    assert_eq!(reason(verifier.verify(&old).await), "ok", "and now cached");
    assert!(!verifier.reload_key_files(), "nothing changed yet");

    // A Secret volume swaps the file in place.
    const NEW: &[u8] = b"the-rotated-hs256-secret-32-bytes-or-more";
    std::fs::write(file.path(), NEW).expect("rotate");
    assert!(verifier.reload_key_files());
    let new = Signer::hs256(NEW).sign(&claims);
    assert_eq!(reason(verifier.verify(&new).await), "ok");
    assert_eq!(
        reason(verifier.verify(&old).await),
        "bad_signature",
        "the cached verification of the old secret is forgotten"
    );

    // Rotated into something unusable (empty), or gone: the key in use stays.
    std::fs::write(file.path(), b"\n").expect("empty");
    assert!(!verifier.reload_key_files());
    std::fs::remove_file(file.path()).expect("remove");
    assert!(!verifier.reload_key_files());
    assert_eq!(reason(verifier.verify(&new).await), "ok");
}

#[tokio::test]
async fn the_background_refresh_reads_a_rotated_public_key() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("key.pub");
    std::fs::write(&path, fixture("rsa.pub")).expect("key");
    let config = JwtConfig {
        public_key_file: Some(path.clone()),
        ..config()
    };
    let options = VerifierOptions {
        key_file_interval: Duration::from_millis(20),
        ..VerifierOptions::default()
    };
    let verifier =
        Verifier::with_options(&config, &ClaimMapping::default(), None, options).expect("valid");
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(verifier.clone().run_refresh(shutdown.clone()));
    let claims = with(json!({"exp": now() + 600}));
    let first = Signer::rsa("rsa.key", Algorithm::RS256).sign(&claims);
    let second = Signer::rsa("rsa2.key", Algorithm::RS256).sign(&claims);
    assert_eq!(reason(verifier.verify(&first).await), "ok");
    assert_eq!(reason(verifier.verify(&second).await), "bad_signature");

    std::fs::write(&path, fixture("rsa2.pub")).expect("rotate");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reason(verifier.verify(&second).await) != "ok" {
        assert!(tokio::time::Instant::now() < deadline, "never picked up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reason(verifier.verify(&first).await), "bad_signature");
    shutdown.cancel();
}
