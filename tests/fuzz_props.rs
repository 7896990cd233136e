//! Deterministic property loops over generated inputs for the same entry points as the
//! `cargo fuzz` targets in `fuzz/` (bearer parsing, token verification, routing, session
//! binding). They run in the test command in a few seconds; `fuzz/README.md` documents the
//! longer coverage-guided runs.

use std::io::Write;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use flowgate::config::{ClaimMapping, JwtConfig};
use flowgate::identity::{Verifier, bearer_token};
use flowgate::proxy::routes::{AdminRoute, Route, route};
use flowgate::proxy::session;

#[path = "support/route_spelling.rs"]
mod route_spelling;

/// xorshift64*: small, deterministic, good enough to generate inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

const BUDGET: Duration = Duration::from_secs(3);

#[test]
fn bearer_parsing_returns_a_plain_token_or_an_error() {
    let mut rng = Rng(0x5eed_0001);
    let pieces: [&[u8]; 10] = [
        b"Bearer",
        b"bearer",
        b"BEARER",
        b" ",
        b"\t",
        b"a.b.c",
        b"Basic",
        b"=",
        b",",
        b"\xc3\xa9",
    ];
    let started = Instant::now();
    let (mut tried, mut accepted) = (0u64, 0u64);
    while started.elapsed() < BUDGET && tried < 200_000 {
        let mut raw = Vec::new();
        for _ in 0..rng.below(6) {
            if rng.below(3) == 0 {
                raw.extend(rng.bytes(8));
            } else {
                raw.extend_from_slice(rng.pick::<&[u8]>(&pieces));
            }
        }
        tried += 1;
        let Ok(value) = http::HeaderValue::from_bytes(&raw) else {
            continue;
        };
        if let Ok(token) = bearer_token(Some(&value)) {
            accepted += 1;
            assert!(!token.is_empty(), "{raw:?}");
            assert!(!token.contains([' ', '\t']), "{raw:?}");
            assert!(token.is_ascii(), "{raw:?}");
            let text = value.to_str().expect("ASCII");
            assert!(
                text.trim().to_ascii_lowercase().starts_with("bearer"),
                "{raw:?}"
            );
            assert!(text.trim_end().ends_with(token), "{raw:?}");
        }
    }
    // The checks above ran on enough accepted tokens to mean something.
    assert!(
        tried >= 20_000 && accepted >= 100,
        "{tried} inputs, {accepted} accepted"
    );
    eprintln!("bearer: {tried} inputs, {accepted} accepted");
}

#[test]
fn routing_only_accepts_the_allow_list_spelled_out() {
    let mut rng = Rng(0x5eed_0002);
    let segments = [
        "api",
        "v1",
        "API",
        "prediction",
        "chatflows",
        "chatflows-streaming",
        "public-chatbotConfig",
        "chatmessage",
        "abort",
        "chat",
        "predict",
        "authenticate",
        "refresh",
        "credits",
        "internal-prediction",
        "webhook",
        "apikey",
        "..",
        ".",
        "",
        "%2f",
        "%2e%2e",
        "%2F",
        "3f1c2a7e-0000-4000-8000-000000000001",
        "support-bot",
        "a;b",
        "x\\y",
        "é",
        "a?b",
        "*",
        "admin",
        "users",
        "email",
        "bulk",
        "add-users",
        "add-users-by-email",
        "sync",
        "stats",
        "usage",
        "adjustments",
        "balances",
        "openapi.json",
        "health",
        "a%40b.example",
        "a+b@example.com",
        "%2540",
    ];
    // Every route, spelled as it should be: half the inputs start from one of them, changed a
    // little, so that the long admin paths are reached too, not only by chance.
    let id = || "3f1c2a7e-0000-4000-8000-000000000001".to_string();
    let (user, email) = (|| "user-1".to_string(), || "a+b@example.com".to_string());
    let admin = [
        AdminRoute::AddUsers,
        AdminRoute::AddUsersByEmail,
        AdminRoute::AddUser {
            chatflow: id(),
            user: user(),
        },
        AdminRoute::AddUserByEmail {
            chatflow: id(),
            email: email(),
        },
        AdminRoute::RemoveUser {
            chatflow: id(),
            user: user(),
        },
        AdminRoute::RemoveUserByEmail {
            chatflow: id(),
            email: email(),
        },
        AdminRoute::BulkAddUsers(id()),
        AdminRoute::BulkAddUsersByEmail(id()),
        AdminRoute::Sync,
        AdminRoute::ListChatflows,
        AdminRoute::Stats,
        AdminRoute::GetChatflow(id()),
        AdminRoute::DeleteChatflow(id()),
        AdminRoute::ListUsers(id()),
        AdminRoute::CreditUsage,
        AdminRoute::AdjustCredits,
        AdminRoute::CreditBalances,
    ];
    let mut every = vec![
        Route::ListChatflows,
        Route::GetChatflow(id()),
        Route::Predict(id()),
        Route::ChatflowStreaming(id()),
        Route::ChatbotConfig(id()),
        Route::AbortChat {
            id: id(),
            chat_id: "chat 1".into(),
        },
        Route::CompatListChatflows,
        Route::CompatGetChatflow(id()),
        Route::CompatPredict,
        Route::Authenticate,
        Route::Refresh,
        Route::Credits,
        Route::CreditUsage,
        Route::OpenApi,
        Route::Health,
    ];
    every.extend(admin.into_iter().map(Route::Admin));
    let canonical: Vec<String> = every.iter().map(route_spelling::canonical).collect();
    let mut reached = std::collections::BTreeSet::new();
    let started = Instant::now();
    let (mut tried, mut routed) = (0u64, 0u64);
    while started.elapsed() < BUDGET && tried < 300_000 {
        let mut path = String::new();
        if rng.below(2) == 0 {
            let mut parts: Vec<String> = rng
                .pick(&canonical)
                .split('/')
                .map(str::to_string)
                .collect();
            for _ in 0..rng.below(3) {
                let at = rng.below(parts.len());
                match rng.below(4) {
                    0 => parts[at] = rng.pick::<&str>(&segments).to_string(),
                    1 => parts[at] = parts[at].to_uppercase(),
                    2 => parts.insert(at, String::new()),
                    _ => parts[at] = parts[at].replace('-', "%2D"),
                }
            }
            path = parts.join("/");
        } else {
            if rng.below(20) != 0 {
                path.push('/');
            }
            let n = rng.below(7);
            for i in 0..n {
                if i > 0 {
                    path.push('/');
                }
                path.push_str(rng.pick::<&str>(&segments));
            }
        }
        if rng.below(8) == 0 {
            path.push('/');
        }
        if rng.below(50) == 0 {
            path.push_str(&"z".repeat(rng.below(600)));
        }
        let method = rng.pick(&route_spelling::METHODS);
        tried += 1;
        let Ok(found) = route(method, &path) else {
            continue;
        };
        routed += 1;
        reached.insert(found.label());
        let want = route_spelling::canonical(&found);
        if route_spelling::user_segment(&found).is_some() {
            // A user segment is decoded once: any spelling that routes to the same place.
            assert_eq!(route(method, &want).ok(), Some(found), "{path:?}");
            continue;
        }
        let spelled = if path.len() > 1 {
            path.strip_suffix('/').unwrap_or(&path)
        } else {
            &path
        };
        assert_eq!(spelled, want, "{method} {path:?} -> {found:?}");
        assert!(!path.contains('%') && !path.contains("//"), "{path:?}");
        assert!(path.split('/').all(|s| s != ".." && s != "."), "{path:?}");
    }
    let missed: Vec<&str> = every
        .iter()
        .map(Route::label)
        .filter(|label| !reached.contains(label))
        .collect();
    assert!(missed.is_empty(), "never routed to: {missed:?}");
    eprintln!("routes: {tried} inputs, {routed} routed");
}

#[test]
fn session_binding_never_hands_out_another_subjects_session() {
    let mut rng = Rng(0x5eed_0003);
    let started = Instant::now();
    let mut tried = 0u64;
    while started.elapsed() < BUDGET && tried < 100_000 {
        let a = format!("user:{}", rng.next() % 50);
        let b = format!("user:{}", rng.next() % 50);
        let requested: String = match rng.below(4) {
            0 => session::prefix(&b) + &String::from_utf8_lossy(&rng.bytes(20)),
            1 => session::bind(&b, None),
            2 => String::from_utf8_lossy(&rng.bytes(300)).into_owned(),
            _ => String::new(),
        };
        tried += 1;
        let bound = session::bind(&a, Some(&requested));
        assert!(bound.starts_with(&session::prefix(&a)), "{a} {requested:?}");
        if a != b && !requested.is_empty() {
            assert_ne!(bound, requested, "{a} got {b}'s session");
        }
        let mut body = serde_json::Map::new();
        if rng.below(2) == 0 {
            body.insert("chatId".into(), json!(requested));
        }
        body.insert(
            "overrideConfig".into(),
            json!({"sessionId": requested, "x": 1}),
        );
        let bound = session::bind_body(&mut body, &a);
        assert_eq!(body["chatId"], json!(bound));
        assert_eq!(body["overrideConfig"]["sessionId"], json!(bound));
        assert!(bound.starts_with(&session::prefix(&a)));
    }
    eprintln!("sessions: {tried} inputs");
}

const SECRET: &[u8] = b"fuzz-props-secret-of-at-least-32-bytes!!";

#[tokio::test]
async fn mutated_tokens_never_verify() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(SECRET).expect("writes");
    let config = JwtConfig {
        hs256_secret_file: Some(file.path().to_path_buf()),
        leeway: Duration::from_secs(30),
        ..JwtConfig::default()
    };
    // No token cache: every input goes through parsing and the signature check.
    let verifier = Verifier::with_options(
        &config,
        &ClaimMapping::default(),
        None,
        flowgate::identity::VerifierOptions {
            token_cache_capacity: 0,
            ..Default::default()
        },
    )
    .expect("valid configuration");
    let exp = jiff::Timestamp::now().as_second() + 3600;
    let good = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "exp": exp, "groups": ["g"]}),
        &EncodingKey::from_secret(SECRET),
    )
    .expect("signs");
    assert!(verifier.verify(&good).await.is_ok(), "the seed verifies");
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ %{}\"";
    let mut rng = Rng(0x5eed_0004);
    let started = Instant::now();
    let mut tried = 0u64;
    while started.elapsed() < BUDGET && tried < 50_000 {
        let mut token = good.clone().into_bytes();
        for _ in 0..=rng.below(3) {
            match rng.below(5) {
                0 if !token.is_empty() => {
                    let i = rng.below(token.len());
                    token[i] = *rng.pick(alphabet);
                }
                1 if !token.is_empty() => token.truncate(rng.below(token.len())),
                2 => {
                    let i = rng.below(token.len() + 1);
                    token.insert(i, *rng.pick(alphabet));
                }
                3 if !token.is_empty() => {
                    let i = rng.below(token.len());
                    token.remove(i);
                }
                _ => token.extend(rng.bytes(4)),
            }
        }
        tried += 1;
        let Ok(text) = String::from_utf8(token) else {
            continue;
        };
        if verifier.verify(&text).await.is_ok() {
            assert_eq!(text, good, "a mutated token verified");
        }
    }
    eprintln!("tokens: {tried} mutations");
}

/// The versions the `[[package]]` entries of a lock file name, by crate.
fn locked_versions(path: &std::path::Path) -> std::collections::BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(path).expect("lock file");
    let mut versions = std::collections::BTreeMap::<String, Vec<String>>::new();
    let mut name = None;
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("name = ") {
            name = Some(value.trim_matches('"').to_string());
        } else if let (Some(value), Some(crate_name)) = (line.strip_prefix("version = "), &name) {
            versions
                .entry(crate_name.clone())
                .or_default()
                .push(value.trim_matches('"').to_string());
            name = None;
        }
    }
    versions
}

/// The fuzzers build flowgate against their own lock file: each crate the two share is at the
/// versions the test suite runs, or the fuzzers would test another dependency tree.
#[test]
fn the_fuzzers_lock_the_versions_the_tests_run() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let ours = locked_versions(&root.join("Cargo.lock"));
    let fuzz = locked_versions(&root.join("fuzz/Cargo.lock"));
    assert!(
        ours.contains_key("hyper") && fuzz.contains_key("hyper"),
        "read both"
    );
    let differing: Vec<String> = ours
        .iter()
        .filter_map(|(name, versions)| {
            let theirs = fuzz.get(name)?;
            let (mut a, mut b) = (versions.clone(), theirs.clone());
            a.sort();
            b.sort();
            (a != b).then(|| format!("{name}: {a:?} here, {b:?} in fuzz/Cargo.lock"))
        })
        .collect();
    assert!(
        differing.is_empty(),
        "run 'cargo update --workspace' in fuzz/ (or pin the same versions):\n{}",
        differing.join("\n")
    );
}
