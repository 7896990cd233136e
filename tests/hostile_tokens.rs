//! Hostile bearer tokens end to end through the proxy: every one is answered 401 with a JSON error
//! before any ledger or Flowise work. A fake Flowise counts predictions (it must stay at 0) and a
//! CreditPolicy's balance must stay untouched; a valid token afterwards proves the set-up would have
//! let a good request through (one prediction, one credit).

mod support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::{Value, json};

use support::fake_flowise::{FakeFlowise, Mode};
use support::gate::{Flowgate, Options, SECRET};
use support::team::Team;

const ISS: &str = "https://issuer.flowgate.test";
const AUD: &str = "flowgate-proxy";
const SA_AUD: &str = "flowgate-hostile-sa";

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token from raw header and claims text and a raw signature segment.
fn raw(header: &str, claims: &str, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.as_bytes()),
        b64(claims.as_bytes())
    )
}

/// Signs raw header and claims text with HMAC-SHA256 over `secret` (any header, any claims text).
fn hs256_raw(secret: &[u8], header: &str, claims: &str) -> String {
    let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .expect("signs");
    format!("{signing_input}.{signature}")
}

fn rs256_raw(key: &str, header: &str, claims: &str) -> String {
    let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let key = EncodingKey::from_rsa_pem(fixture(key).as_bytes()).expect("RSA key");
    let signature = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, Algorithm::RS256)
        .expect("signs");
    format!("{signing_input}.{signature}")
}

fn sign(header: Header, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&header, claims, key).expect("token signs")
}

fn rsa(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(fixture(name).as_bytes()).expect("RSA key")
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Claims a good token for `email` carries; `patch` is merged over them (null removes).
fn claims(email: &str, patch: Value) -> Value {
    let mut body = json!({"sub": "alice-sub", "email": email, "iss": ISS, "aud": AUD,
                          "exp": now() + 3600, "iat": now()});
    let map = body.as_object_mut().expect("object");
    for (k, v) in patch.as_object().expect("patch object") {
        if v.is_null() {
            map.remove(k);
        } else {
            map.insert(k.clone(), v.clone());
        }
    }
    body
}

fn good_rs256(email: &str) -> String {
    sign(
        Header::new(Algorithm::RS256),
        &rsa("rsa.key"),
        &claims(email, json!({})),
    )
}

/// A Kubernetes ServiceAccount token for `audience`, from the TokenRequest API.
async fn service_account_token(client: &kube::Client, ns: &str, audience: &str) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let account: ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "hostile"}
    }))
    .expect("literal");
    api.create(&PostParams::default(), &account)
        .await
        .expect("ServiceAccount created");
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_string()],
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    api.create_token_request("hostile", &PostParams::default(), &request)
        .await
        .expect("TokenRequest")
        .status
        .expect("TokenRequest status")
        .token
}

/// One hostile request: a name and the Authorization header values to send (none, one or more).
struct Case {
    name: String,
    headers: Vec<Vec<u8>>,
}

fn case(name: impl Into<String>, headers: Vec<Vec<u8>>) -> Case {
    Case {
        name: name.into(),
        headers,
    }
}

fn bearer(name: impl Into<String>, token: &str) -> Case {
    case(name, vec![format!("Bearer {token}").into_bytes()])
}

fn cases(email: &str, sa_wrong_audience: &str, sa_user_audience: &str) -> Vec<Case> {
    let good = good_rs256(email);
    let good_hs = sign(
        Header::new(Algorithm::HS256),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &claims(email, json!({})),
    );
    let body = claims(email, json!({})).to_string();
    let rs_header = r#"{"alg":"RS256","typ":"JWT"}"#;
    let public_pem = fixture("rsa.pub");
    let mut out = vec![
        // Headers and schemes.
        case("no Authorization header", vec![]),
        case("empty Authorization", vec![b"".to_vec()]),
        case("Bearer without token", vec![b"Bearer".to_vec()]),
        case("Bearer and spaces", vec![b"Bearer    ".to_vec()]),
        case("Basic scheme", vec![b"Basic YWxpY2U6c2VjcmV0".to_vec()]),
        case(
            "valid token under another scheme",
            vec![format!("Token {good}").into_bytes()],
        ),
        case(
            "valid token without a scheme",
            vec![good.clone().into_bytes()],
        ),
        case(
            "valid token followed by junk",
            vec![format!("Bearer {good} junk").into_bytes()],
        ),
        case(
            "non-ASCII bytes in the header",
            vec![format!("Bearer {good}\u{e9}").into_bytes()],
        ),
        case(
            "two Authorization headers, garbage first",
            vec![
                b"Bearer garbage".to_vec(),
                format!("Bearer {good}").into_bytes(),
            ],
        ),
        case(
            "two Authorization headers, valid first",
            vec![
                format!("Bearer {good}").into_bytes(),
                b"Bearer garbage".to_vec(),
            ],
        ),
        case(
            "two Authorization headers, both valid",
            vec![
                format!("Bearer {good}").into_bytes(),
                format!("Bearer {good_hs}").into_bytes(),
            ],
        ),
        // Shapes.
        bearer("one segment", "abc"),
        bearer("two segments", &good[..good.rfind('.').expect("dot")]),
        bearer("truncated signature", &good[..good.len() - 10]),
        bearer("truncated in the claims", &good[..good.len() / 2]),
        bearer("non-base64 segments", "!!!.@@@.###"),
        bearer(
            "non-base64 signature",
            &format!("{}*", &good[..good.len() - 1]),
        ),
        bearer("padded base64", &good.replacen('.', "==.", 1)),
        bearer("extra segment", &format!("{good}.x")),
        bearer("five segments (JWE shape)", &format!("{good}.a.b")),
        bearer("leading dot", &format!(".{good}")),
        bearer("empty segments", ".."),
        bearer("header is not JSON", &raw("not json", &body, "c2ln")),
        bearer("header is an array", &raw("[]", &body, "c2ln")),
        bearer(
            "claims are an array",
            &hs256_raw(SECRET.as_bytes(), r#"{"alg":"HS256"}"#, "[]"),
        ),
        bearer(
            "claims are null",
            &hs256_raw(SECRET.as_bytes(), r#"{"alg":"HS256"}"#, "null"),
        ),
    ];
    // alg none in several casings, with and without a signature.
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
        out.push(bearer(
            format!("alg {alg}, no signature"),
            &raw(&header, &body, ""),
        ));
        let stolen = good.rsplit('.').next().expect("signature");
        out.push(bearer(
            format!("alg {alg}, stolen signature"),
            &raw(&header, &body, stolen),
        ));
    }
    // Algorithm confusion: HMAC with the RSA public key as the secret.
    for (alg, name) in [
        (Algorithm::HS256, "HS256"),
        (Algorithm::HS384, "HS384"),
        (Algorithm::HS512, "HS512"),
    ] {
        out.push(bearer(
            format!("{name} signed with the RSA public key"),
            &sign(
                Header::new(alg),
                &EncodingKey::from_secret(public_pem.as_bytes()),
                &claims(email, json!({})),
            ),
        ));
    }
    out.push(bearer(
        "HS256 signed with the RSA public key, trimmed",
        &sign(
            Header::new(Algorithm::HS256),
            &EncodingKey::from_secret(public_pem.trim().as_bytes()),
            &claims(email, json!({})),
        ),
    ));
    // Keys and issuers.
    let mut unknown_kid = Header::new(Algorithm::RS256);
    unknown_kid.kid = Some("no-such-kid".into());
    out.push(bearer(
        "unknown kid, another key",
        &sign(
            unknown_kid.clone(),
            &rsa("rsa2.key"),
            &claims(email, json!({})),
        ),
    ));
    let mut traversal_kid = Header::new(Algorithm::RS256);
    traversal_kid.kid = Some("../../../../etc/passwd".into());
    out.push(bearer(
        "path traversal kid, another key",
        &sign(traversal_kid, &rsa("rsa2.key"), &claims(email, json!({}))),
    ));
    out.push(bearer(
        "RS256 signed by another key",
        &sign(
            Header::new(Algorithm::RS256),
            &rsa("rsa2.key"),
            &claims(email, json!({})),
        ),
    ));
    out.push(bearer(
        "jku pointing elsewhere, another key",
        &rs256_raw(
            "rsa2.key",
            r#"{"alg":"RS256","jku":"http://127.0.0.1:9/jwks.json","kid":"x"}"#,
            &body,
        ),
    ));
    out.push(bearer(
        "ES256 header over the RSA key family",
        &sign(
            Header::new(Algorithm::ES256),
            &EncodingKey::from_ec_pem(fixture("ec256.key").as_bytes()).expect("EC key"),
            &claims(email, json!({})),
        ),
    ));
    out.push(bearer(
        "valid token of another issuer (HS256 secret)",
        &sign(
            Header::new(Algorithm::HS256),
            &EncodingKey::from_secret(SECRET.as_bytes()),
            &claims(email, json!({"iss": "https://evil.example"})),
        ),
    ));
    out.push(bearer(
        "valid token of another issuer (its own key)",
        &sign(
            Header::new(Algorithm::RS256),
            &rsa("rsa2.key"),
            &claims(email, json!({"iss": "https://evil.example"})),
        ),
    ));
    out.push(bearer(
        "ServiceAccount token, wrong audience",
        sa_wrong_audience,
    ));
    out.push(bearer(
        "ServiceAccount token for the user audience",
        sa_user_audience,
    ));
    // Claims, each otherwise validly signed with the RSA key.
    let signed = |patch: Value| {
        sign(
            Header::new(Algorithm::RS256),
            &rsa("rsa.key"),
            &claims(email, patch),
        )
    };
    for (name, patch) in [
        ("expired", json!({"exp": now() - 3600})),
        ("expired past the leeway", json!({"exp": now() - 90})),
        ("nbf in the future", json!({"nbf": now() + 3600})),
        (
            "wrong iss",
            json!({"iss": "https://issuer.flowgate.test.evil"}),
        ),
        ("missing iss", json!({"iss": null})),
        ("iss as an array", json!({"iss": [ISS]})),
        ("wrong aud", json!({"aud": "someone-else"})),
        ("missing aud", json!({"aud": null})),
        ("aud list without ours", json!({"aud": ["a", "b"]})),
        (
            "exp as a string",
            json!({"exp": (now() + 3600).to_string()}),
        ),
        ("exp as a far-future string", json!({"exp": "99999999999"})),
        ("exp as a bool", json!({"exp": true})),
        ("exp as an object", json!({"exp": {"$gt": 0}})),
        ("missing exp", json!({"exp": null})),
        ("negative exp", json!({"exp": -1})),
        (
            "nbf as a string",
            json!({"nbf": (now() + 3600).to_string()}),
        ),
        ("no user claims", json!({"sub": null, "email": null})),
        (
            "user claims of the wrong type",
            json!({"sub": 7, "email": [email]}),
        ),
    ] {
        out.push(bearer(name, &signed(patch)));
    }
    out.push(bearer(
        "huge header",
        &rs256_raw(
            "rsa.key",
            &format!(r#"{{"alg":"RS256","pad":"{}"}}"#, "x".repeat(4000)),
            &body,
        ),
    ));
    out.push(bearer(
        "huge token",
        &signed(json!({"pad": "y".repeat(20_000)})),
    ));
    out.push(bearer("huge garbage token", &"a".repeat(60_000)));
    let nesting = 2000;
    let bomb = format!(
        r#"{{"sub":"alice-sub","email":"{email}","iss":"{ISS}","aud":"{AUD}","exp":{},"deep":{}{}}}"#,
        now() + 3600,
        "[".repeat(nesting),
        "]".repeat(nesting)
    );
    // A deeply nested claim flowgate reads (the groups claim) is refused by the parser's depth
    // limit; an unknown claim is skipped without recursion, so a bomb there only matters unsigned.
    out.push(bearer(
        "JSON bomb in a claim flowgate reads (groups)",
        &rs256_raw(
            "rsa.key",
            rs_header,
            &bomb.replace("\"deep\"", "\"groups\""),
        ),
    ));
    out.push(bearer(
        "JSON bomb in an unknown claim, another key",
        &rs256_raw("rsa2.key", rs_header, &bomb),
    ));
    out.push(bearer(
        "JSON bomb in an unknown claim, alg none",
        &raw(r#"{"alg":"none"}"#, &bomb, ""),
    ));
    let header_bomb = format!(
        r#"{{"alg":"RS256","x":{}{}}}"#,
        "{\"a\":".repeat(200),
        "1}".repeat(200)
    );
    out.push(bearer(
        "JSON bomb in the header",
        &rs256_raw("rsa.key", &header_bomb, &body),
    ));
    let raw_control = format!(
        "{{\"sub\":\"alice\u{1}-sub\",\"email\":\"{email}\",\"iss\":\"{ISS}\",\"aud\":\"{AUD}\",\"exp\":{}}}",
        now() + 3600
    );
    out.push(bearer(
        "raw control character in the claims",
        &rs256_raw("rsa.key", rs_header, &raw_control),
    ));
    out.push(bearer(
        "NUL byte after the claims",
        &rs256_raw("rsa.key", rs_header, &format!("{body}\u{0}")),
    ));
    out.push(bearer(
        "trailing garbage after the claims",
        &rs256_raw("rsa.key", rs_header, &format!("{body}{{}}")),
    ));
    let dup = |first: &str, second: &str| {
        let inner = body.trim_start_matches('{').trim_end_matches('}');
        format!("{{{first},{inner},{second}}}")
    };
    out.push(bearer(
        "duplicate exp (expired last)",
        &rs256_raw(
            "rsa.key",
            rs_header,
            &dup("\"exp\":1", &format!("\"exp\":{}", now() - 3600)),
        ),
    ));
    out.push(bearer(
        "duplicate iss (foreign last)",
        &rs256_raw(
            "rsa.key",
            rs_header,
            &dup("\"iss\":\"x\"", "\"iss\":\"https://evil.example\""),
        ),
    ));
    out.push(bearer(
        "duplicate alg in the header",
        &rs256_raw("rsa.key", r#"{"alg":"RS256","alg":"none"}"#, &body),
    ));
    out
}

async fn send(
    http: &reqwest::Client,
    url: &str,
    headers: &[Vec<u8>],
    body: &Value,
) -> (u16, Option<String>, Value) {
    let mut request = http.post(url).json(body);
    for value in headers {
        request = request.header(
            AUTHORIZATION,
            HeaderValue::from_bytes(value).expect("valid header bytes"),
        );
    }
    let resp = request.send().await.expect("flowgate answers");
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    (status, challenge, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn hostile_tokens_are_refused_before_any_ledger_or_flowise_work() {
    tokio::time::timeout(Duration::from_secs(120), run())
        .await
        .expect("hostile token test bounded to 120 s");
}

async fn run() {
    let team = Team::with_fake_flowise("hostile-tokens").await;
    let policy = format!("{}/ten", team.ns);
    team.policy(
        "ten",
        json!({"chatflows": ["*"], "budget": {"credits": 10, "period": "Never"}}),
    )
    .await;
    let fake = FakeFlowise::start(Mode::Answer { tokens: 10 }).await;
    let gate = Flowgate::start_with(Options {
        flowise_url: Some(fake.url.clone()),
        jwt_public_key_file: Some(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/rsa.pub"),
        ),
        jwt_issuer: Some(ISS.into()),
        jwt_audience: Some(AUD.into()),
        service_account_audience: Some(SA_AUD.into()),
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::new();
    let email = team.user();
    let good = good_rs256(&email);

    // The policy is indexed before the first hostile request: the ledger would be asked.
    let used = || async {
        let credits: Value = http
            .get(format!("{}/credits", gate.base))
            .bearer_auth(&good)
            .send()
            .await
            .expect("credits answer")
            .json()
            .await
            .expect("credits JSON");
        credits["balances"]
            .as_array()
            .and_then(|b| b.iter().find(|x| x["policy"] == policy.as_str()))
            .map(|b| b["used"].as_i64().unwrap_or(-1))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while used().await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "policy never indexed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let sa_wrong = service_account_token(&team.client, &team.ns, "someone-elses-audience").await;
    let sa_user = {
        // A second account: one per name.
        let api: Api<ServiceAccount> = Api::namespaced(team.client.clone(), &team.ns);
        let account: ServiceAccount = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "hostile2"}
        }))
        .expect("literal");
        api.create(&PostParams::default(), &account)
            .await
            .expect("created");
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![AUD.to_string()],
                expiration_seconds: Some(600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        api.create_token_request("hostile2", &PostParams::default(), &request)
            .await
            .expect("TokenRequest")
            .status
            .expect("status")
            .token
    };

    let id = &team.flowise_id;
    let targets = [
        (
            format!("{}/api/v1/prediction/{id}", gate.base),
            json!({"question": "steal"}),
        ),
        (
            format!("{}/api/v1/prediction/{id}", gate.base),
            json!({"question": "steal", "streaming": true}),
        ),
        (
            format!("{}/chat/predict", gate.base),
            json!({"chatflow_id": "support-bot", "question": "steal"}),
        ),
    ];
    let all = cases(&email, &sa_wrong, &sa_user);
    assert!(all.len() >= 40, "{} cases", all.len());
    let mut failures = Vec::new();
    let mut sent = 0;
    for case in &all {
        for (url, body) in &targets {
            sent += 1;
            let (status, challenge, answer) = send(&http, url, &case.headers, body).await;
            let code = answer["error"]["code"].as_str().unwrap_or_default();
            if status != 401
                || !matches!(code, "unauthenticated" | "invalid_token")
                || challenge.is_none()
            {
                failures.push(format!("{} -> {url}: {status} {answer}", case.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {sent} hostile requests not refused with 401:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{} hostile cases, {sent} requests refused", all.len());
    assert_eq!(fake.predictions(), 0, "no hostile request reached Flowise");
    assert_eq!(
        used().await,
        Some(0),
        "no hostile request touched the ledger"
    );

    // The control: the same set-up lets a good token through, and charges it.
    let (status, _, answer) = send(
        &http,
        &targets[0].0,
        &[format!("Bearer {good}").into_bytes()],
        &targets[0].1,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(fake.predictions(), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while used().await != Some(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "good request charged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    team.cleanup().await;
}
