//! Helpers for the identity tests: key fixtures, a token signer, and an in-process key server
//! that counts what it serves.

#![allow(dead_code)] // each test crate uses a different part

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use flowgate::config::{ClaimMapping, JwtConfig};
use flowgate::identity::{AuthError, Verifier};

/// Bytes of `tests/fixtures/keys/<name>`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn fixture_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

// --- verifiers and claims ---------------------------------------------------------------

/// The HS256 secret the tests sign with.
pub const SECRET: &[u8] = b"an-hs256-secret-of-at-least-32-bytes!";

/// Verification settings with the default leeway and no key source.
pub fn config() -> JwtConfig {
    JwtConfig {
        leeway: Duration::from_secs(30),
        ..JwtConfig::default()
    }
}

/// A verifier of `config`, default claim mapping, no cluster.
pub fn verifier(config: &JwtConfig) -> Verifier {
    Verifier::new(config, &ClaimMapping::default(), None).expect("valid configuration")
}

/// A verifier for the HS256 secret, written to a file with a trailing newline.
pub fn hs256_verifier(adjust: impl FnOnce(&mut JwtConfig)) -> (Verifier, tempfile::NamedTempFile) {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(SECRET)
        .and_then(|()| file.write_all(b"\n"))
        .expect("writes");
    let mut config = JwtConfig {
        hs256_secret_file: Some(file.path().to_path_buf()),
        ..config()
    };
    adjust(&mut config);
    (verifier(&config), file)
}

/// A verifier of the PEM public key fixture `public_key`.
pub fn pem_verifier(public_key: &str) -> Verifier {
    verifier(&JwtConfig {
        public_key_file: Some(fixture_path(public_key)),
        ..config()
    })
}

/// [`claims`] with `claims_patch` applied (a null removes the claim).
pub fn with(claims_patch: Value) -> Value {
    let mut claims = claims();
    for (name, value) in claims_patch.as_object().expect("object") {
        if value.is_null() {
            claims.as_object_mut().expect("object").remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

/// `ok`, or the reason of the refusal.
pub fn reason(result: Result<flowgate::identity::Identity, AuthError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.reason(),
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Claims of a valid token for `alice`, ten minutes to go.
pub fn claims() -> Value {
    json!({
        "sub": "alice",
        "email": "alice@example.com",
        "groups": ["support"],
        "role": "Admin",
        "iat": now(),
        "exp": now() + 600,
    })
}

/// Signs tokens with one private key.
pub struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    kid: Option<String>,
}

impl Signer {
    pub fn rsa(file: &str, alg: Algorithm) -> Self {
        let key = EncodingKey::from_rsa_pem(&fixture(file)).expect("RSA private key");
        Self {
            key,
            alg,
            kid: None,
        }
    }

    pub fn ec256() -> Self {
        let key = EncodingKey::from_ec_pem(&fixture("ec256.key")).expect("EC private key");
        Self {
            key,
            alg: Algorithm::ES256,
            kid: None,
        }
    }

    pub fn ed25519() -> Self {
        let key = EncodingKey::from_ed_pem(&fixture("ed25519.key")).expect("Ed25519 private key");
        Self {
            key,
            alg: Algorithm::EdDSA,
            kid: None,
        }
    }

    pub fn hs256(secret: &[u8]) -> Self {
        Self {
            key: EncodingKey::from_secret(secret),
            alg: Algorithm::HS256,
            kid: None,
        }
    }

    pub fn with_kid(mut self, kid: &str) -> Self {
        self.kid = Some(kid.to_string());
        self
    }

    pub fn with_alg(mut self, alg: Algorithm) -> Self {
        self.alg = alg;
        self
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid.clone_from(&self.kid);
        jsonwebtoken::encode(&header, claims, &self.key).expect("signs")
    }

    /// The public JWK of this key, with its `kid`.
    pub fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).expect("public JWK");
        jwk.common.key_id.clone_from(&self.kid);
        serde_json::to_value(jwk).expect("serializes")
    }
}

/// A JWKS document of these signers' public keys.
pub fn jwks(signers: &[&Signer]) -> Value {
    json!({ "keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>() })
}

/// base64url without padding.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token assembled by hand: `b64(header).b64(payload).signature`.
pub fn raw_token(header: &str, payload: &str, signature: &str) -> String {
    format!("{}.{}.{signature}", b64(header), b64(payload))
}

#[derive(Default)]
struct ServerState {
    jwks: Mutex<Value>,
    discovery: Mutex<Option<Value>>,
    failing: AtomicBool,
    delay: Mutex<Duration>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
}

/// An HTTP server on 127.0.0.1 serving `/jwks` and `/.well-known/openid-configuration`,
/// counting each fetch.
pub struct KeyServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    task: JoinHandle<()>,
}

impl KeyServer {
    pub async fn start(jwks: Value) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(ServerState::default());
        *state.jwks.lock().expect("lock") = jwks;
        let task = tokio::spawn(accept(listener, state.clone()));
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:<port>`
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn jwks_url(&self) -> reqwest::Url {
        reqwest::Url::parse(&format!("{}/jwks", self.base())).expect("url")
    }

    pub fn set_jwks(&self, jwks: Value) {
        *self.state.jwks.lock().expect("lock") = jwks;
    }

    /// Serve a discovery document naming `issuer` and this server's `/jwks`.
    pub fn set_discovery(&self, issuer: &str) {
        let doc = json!({"issuer": issuer, "jwks_uri": format!("{}/jwks", self.base())});
        *self.state.discovery.lock().expect("lock") = Some(doc);
    }

    /// Answer every request with HTTP 500.
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// Wait this long before answering.
    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().expect("lock") = delay;
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }

    /// Closes the listener and every connection: further fetches are refused.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn accept(listener: TcpListener, state: Arc<ServerState>) {
    // Connections live in this set, so aborting the accept task closes them too.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| respond(state.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(
    state: Arc<ServerState>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let delay = *state.delay.lock().expect("lock");
    let body = match req.uri().path() {
        "/jwks" => {
            state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            Some(state.jwks.lock().expect("lock").clone())
        }
        "/.well-known/openid-configuration" => {
            state.discovery_fetches.fetch_add(1, Ordering::SeqCst);
            state.discovery.lock().expect("lock").clone()
        }
        _ => None,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (status, body) = match body {
        _ if state.failing.load(Ordering::SeqCst) => (StatusCode::INTERNAL_SERVER_ERROR, json!({})),
        Some(body) => (StatusCode::OK, body),
        None => (StatusCode::NOT_FOUND, json!({})),
    };
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response");
    Ok(response)
}
