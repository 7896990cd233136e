//! A flowgate running in-process against the real API server and real Flowise, with an HS256
//! secret of its own to mint caller tokens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use flowgate::config::{Config, RunArgs};

pub const SECRET: &str = "flowgate-test-secret-of-at-least-32-bytes!";

/// Flowise URL and API key from `scripts/flowise.sh env`; panics with instructions when unset.
pub fn flowise_env() -> (String, String) {
    flowgate::telemetry::install_crypto_provider();
    let url = std::env::var("FLOWGATE_FLOWISE_URL").unwrap_or_default();
    let key_file = std::env::var("FLOWGATE_FLOWISE_API_KEY_FILE").unwrap_or_default();
    assert!(
        !url.is_empty() && !key_file.is_empty(),
        "FLOWGATE_FLOWISE_URL / FLOWGATE_FLOWISE_API_KEY_FILE are not set: this test needs the real \
         Flowise. Run scripts/test.sh, or `scripts/flowise.sh start && eval \"$(scripts/flowise.sh env)\"`."
    );
    let key = std::fs::read_to_string(&key_file).expect("Flowise API key file readable");
    (
        url.trim_end_matches('/').to_string(),
        key.trim().to_string(),
    )
}

/// Creates the offline echo Agentflow in Flowise under `name`; returns its id.
pub async fn create_echo_chatflow(name: &str) -> String {
    let (url, key) = flowise_env();
    let fixture: Value =
        serde_json::from_str(include_str!("../fixtures/flowise-echo-agentflow.json"))
            .expect("fixture is JSON");
    let mut body = fixture.clone();
    body["name"] = json!(name);
    if !body["flowData"].is_string() {
        // Flowise stores flowData as a JSON string and refuses an object.
        body["flowData"] = json!(fixture["flowData"].to_string());
    }
    let created: Value = reqwest::Client::new()
        .post(format!("{url}/api/v1/chatflows"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .expect("Flowise reachable")
        .error_for_status()
        .expect("chatflow created")
        .json()
        .await
        .expect("JSON answer");
    created["id"].as_str().expect("id").to_string()
}

/// Deletes a chatflow from Flowise (best effort, for clean-up).
pub async fn delete_chatflow(id: &str) {
    let (url, key) = flowise_env();
    let _ = reqwest::Client::new()
        .delete(format!("{url}/api/v1/chatflows/{id}"))
        .bearer_auth(&key)
        .send()
        .await;
}

fn free_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], super::process::free_port()))
}

/// A running flowgate; stops when dropped.
pub struct Flowgate {
    pub base: String,
    pub ops: String,
    shutdown: CancellationToken,
    /// Why it stopped, if it stopped with an error. A panic in its task would only be printed
    /// (tokio catches it); the test fails at the drop instead.
    stopped: Arc<std::sync::OnceLock<String>>,
    /// Its files: the ledger, the HS256 secret, `token-client-secret`.
    pub dir: tempfile::TempDir,
}

impl Drop for Flowgate {
    fn drop(&mut self) {
        self.shutdown.cancel();
        match self.stopped.get() {
            Some(error) if std::thread::panicking() => eprintln!("flowgate had stopped: {error}"),
            Some(error) => panic!("flowgate stopped during the test: {error}"),
            None => {}
        }
    }
}

/// Where a test flowgate sends predictions and keeps credits.
#[derive(Default)]
pub struct Options {
    /// Flowise URL; default: the real Flowise from the environment.
    pub flowise_url: Option<String>,
    /// Ledger URL; default: a SQLite file in the test's temp dir.
    pub ledger_url: Option<String>,
    /// Read resources from this directory instead of the cluster.
    pub resources_dir: Option<std::path::PathBuf>,
    /// And from its subdirectories.
    pub resources_recursive: bool,
    /// Accept Kubernetes ServiceAccount tokens with this audience.
    pub service_account_audience: Option<String>,
    /// `--import-namespace` for the admin API's sync pass; default: none.
    pub import_namespace: Option<String>,
    /// A PEM public key accepted besides the HS256 secret.
    pub jwt_public_key_file: Option<std::path::PathBuf>,
    /// Required `iss` of user tokens.
    pub jwt_issuer: Option<String>,
    /// Required `aud` of user tokens.
    pub jwt_audience: Option<String>,
    /// `--upstream-timeout`; default: 300s.
    pub upstream_timeout: Option<String>,
    /// `--ledger-retention`; default: keep everything.
    pub ledger_retention: Option<String>,
    /// `--token-endpoint-url`; default: unset (`/chat/authenticate` answers 404).
    pub token_endpoint_url: Option<String>,
    /// `--token-client-id`, and the secret written to the file `--token-client-secret-file`
    /// names; default: unset.
    pub token_client: Option<(String, Option<String>)>,
    /// `--token-client-auth`; default: basic.
    pub token_client_auth: Option<String>,
    /// `--body-memory`; default: 256Mi.
    pub body_memory: Option<String>,
    /// `--cors-origins`; default: none.
    pub cors_origins: Option<String>,
    /// `--trusted-proxies`; default: none.
    pub trusted_proxies: Option<String>,
    /// `--invalid-policies`; default: skip.
    pub invalid_policies: Option<String>,
    /// `--token-cache-size`; default: 10000.
    pub token_cache_size: Option<String>,
}

impl Flowgate {
    /// Starts the proxy (no controller) against the real Flowise and waits until it is ready.
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    /// Starts the proxy (no controller) against the Flowise at `url` — usually a fake — with the
    /// other options at their defaults.
    pub async fn with_flowise(url: &str) -> Self {
        Self::start_with(Options {
            flowise_url: Some(url.to_string()),
            ..Default::default()
        })
        .await
    }

    /// [`Flowgate::with_flowise`] keeping credits in the ledger at `ledger_url`.
    pub async fn with_flowise_and_ledger(url: &str, ledger_url: String) -> Self {
        Self::start_with(Options {
            flowise_url: Some(url.to_string()),
            ledger_url: Some(ledger_url),
            ..Default::default()
        })
        .await
    }

    /// Starts the proxy (no controller) with `options` and waits until /readyz says ready.
    pub async fn start_with(options: Options) -> Self {
        flowgate::telemetry::install_crypto_provider();
        // Warnings (watch errors, failed settles) show in the output of a failing test.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        let flowise_url = options.flowise_url.unwrap_or_else(|| flowise_env().0);
        let dir = tempfile::tempdir().expect("temp dir");
        let secret = dir.path().join("hs256");
        std::fs::write(&secret, SECRET).expect("write secret");
        let (listen, ops) = (free_port(), free_port());
        let args = RunArgs {
            flowise_url,
            flowise_api_key_file: std::env::var("FLOWGATE_FLOWISE_API_KEY_FILE")
                .ok()
                .map(Into::into),
            listen_addr: listen.to_string(),
            ops_addr: ops.to_string(),
            ledger_url: options
                .ledger_url
                .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("ledger.db").display())),
            ledger_retention: options.ledger_retention,
            jwt_hs256_secret_file: Some(secret),
            jwt_public_key_file: options.jwt_public_key_file,
            jwt_issuer: options.jwt_issuer,
            jwt_audience: options.jwt_audience,
            service_account_audience: options.service_account_audience,
            jwt_leeway: "30s".into(),
            user_claims: "sub,email".into(),
            groups_claim: "groups".into(),
            admin_claim: "role=Admin".into(),
            sync_interval: "60s".into(),
            upstream_timeout: options.upstream_timeout.unwrap_or_else(|| "300s".into()),
            log_format: "text".into(),
            no_controller: true,
            resources_dir: options.resources_dir,
            resources_recursive: options.resources_recursive,
            import_namespace: options.import_namespace,
            token_endpoint_url: options.token_endpoint_url,
            token_client_id: options.token_client.as_ref().map(|(id, _)| id.clone()),
            token_client_auth: options.token_client_auth.unwrap_or_default(),
            token_client_secret_file: options
                .token_client
                .as_ref()
                .and_then(|(_, secret)| secret.as_ref())
                .map(|secret| {
                    let path = dir.path().join("token-client-secret");
                    std::fs::write(&path, secret).expect("write the client secret");
                    path
                }),
            body_memory: options.body_memory.unwrap_or_default(),
            cors_origins: options.cors_origins,
            trusted_proxies: options.trusted_proxies.unwrap_or_default(),
            invalid_policies: options.invalid_policies.unwrap_or_default(),
            token_cache_size: options.token_cache_size.unwrap_or_default(),
            ..Default::default()
        };
        let config = Config::from_args(args).expect("valid test config");
        let shutdown = CancellationToken::new();
        let task_shutdown = shutdown.clone();
        let stopped = Arc::new(std::sync::OnceLock::new());
        let task_stopped = stopped.clone();
        tokio::spawn(async move {
            if let Err(error) = flowgate::run::run(config, task_shutdown).await {
                let _ = task_stopped.set(error.to_string());
            }
        });
        let me = Self {
            base: format!("http://{listen}"),
            ops: format!("http://{ops}"),
            shutdown,
            stopped,
            dir,
        };
        let http = reqwest::Client::new();
        let ready = async {
            loop {
                if let Ok(resp) = http.get(format!("{}/readyz", me.ops)).send().await
                    && resp.status().is_success()
                {
                    return;
                }
                if let Some(error) = me.stopped.get() {
                    panic!("flowgate stopped while starting: {error}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .expect("flowgate ready within 30 s");
        me
    }
}

/// An HS256 caller token with `claims` merged over `sub` and a one-hour `exp`.
pub fn token(sub: &str, claims: Value) -> String {
    let exp = jiff::Timestamp::now().as_second() + 3600;
    let mut body = json!({"sub": sub, "exp": exp});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), claims.as_object()) {
        for (k, v) in extra {
            body.insert(k.clone(), v.clone());
        }
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &body,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token signs")
}

/// POSTs a prediction; returns the status and the JSON body (Null when not JSON).
pub async fn predict(gate: &Flowgate, bearer: &str, id: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/prediction/{id}", gate.base))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .expect("flowgate answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Polls until the prediction answers `want` for the prediction status (the watch is asynchronous).
pub async fn eventually_status(gate: &Flowgate, bearer: &str, id: &str, want: u16) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = predict(gate, bearer, id, json!({"question": "ping"})).await;
        if status == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status {status} (wanted {want}): {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GETs `url` with a bearer token and decodes the JSON answer.
pub async fn get_json(url: &str, bearer: &str) -> Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(bearer)
        .send()
        .await
        .expect("flowgate answers")
        .json()
        .await
        .expect("a JSON answer")
}

/// Credits `used` on `policy` for the caller of flowgate at `base`, from `GET /credits`; None
/// while the policy is not indexed (or flowgate does not answer).
/// Waits (15 s at most) until `policy` is indexed: `bearer`'s `/credits` lists it.
pub async fn indexed(gate: &Flowgate, bearer: &str, policy: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while credits_used(&gate.base, bearer, policy).await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "policy never indexed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn credits_used(base: &str, bearer: &str, policy: &str) -> Option<i64> {
    let credits: Value = reqwest::Client::new()
        .get(format!("{base}/credits"))
        .bearer_auth(bearer)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    credits["balances"]
        .as_array()?
        .iter()
        .find(|b| b["policy"] == policy)?["used"]
        .as_i64()
}

/// Waits until the policy's `used` is `want` (settles and refunds land off the request path).
pub async fn used_becomes(gate: &Flowgate, bearer: &str, policy: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = credits_used(&gate.base, bearer, policy).await;
        if now == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "used: want {want}, got {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asks `gate` for a JSON prediction of `flowise_id` as `bearer`, and gives it up (drops the
/// connection) once `flowise` has received its `nth` prediction and `after` has passed: a client
/// that hangs up before flowgate answers.
pub async fn give_up_in_flowise(
    gate: &Flowgate,
    bearer: &str,
    flowise_id: &str,
    flowise: &super::fake_flowise::FakeFlowise,
    nth: u64,
    after: Duration,
) {
    let asking = tokio::spawn({
        let url = format!("{}/api/v1/prediction/{flowise_id}", gate.base);
        let bearer = bearer.to_string();
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(bearer)
                .json(&serde_json::json!({"question": "a long one"}))
                .send()
                .await
        }
    });
    super::eventually(10, "the prediction in Flowise", || async {
        (flowise.predictions() >= nth).then_some(())
    })
    .await;
    tokio::time::sleep(after).await;
    asking.abort();
    assert!(
        asking.await.is_err(),
        "the client gave up before the answer"
    );
}
