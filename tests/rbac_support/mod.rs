//! Helpers of tests/rbac.rs: the chart installed with real Helm, a kubeconfig holding a
//! TokenRequest token of the chart's own ServiceAccount, and flowgate running under it — the
//! real binary for the proxy and admin API, the controller in the test (scoped to the test's
//! namespace, see [`Stack::start`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};

use flowgate::controller::{Controller, LAST_SYNC_REFRESH, LeaseSettings, Settings};
use flowgate::ledger::{self, CreditLedger};
use flowgate::metrics::Metrics;

use crate::chart_support::{Release, install};
use crate::support;
use crate::support::process::{KillOnDrop, free_port};

/// The audience chat clients' ServiceAccount tokens are minted for.
pub const AUDIENCE: &str = "flowgate-rbac-test";

/// The chart installed into a namespace of its own (release = namespace), and a client that
/// authenticates as the chart's ServiceAccount with a TokenRequest token. Uninstalled on drop.
pub struct ChartAccount {
    pub ns: String,
    /// `<release>-flowgate`: the ServiceAccount, ClusterRole and bindings the chart rendered.
    pub name: String,
    /// The admin client (the test's own, for set-up and checks).
    pub admin: Client,
    /// A client holding only the chart ServiceAccount's token.
    pub client: Client,
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
    _release: Release,
}

impl ChartAccount {
    pub async fn install(prefix: &str) -> Self {
        let admin = support::client().await;
        support::install_crds(&admin).await;
        let ns = support::fresh_namespace(&admin, prefix).await;
        let release = install(&ns, &ns, &json!({})).unwrap_or_else(|e| panic!("install: {e}"));
        assert_eq!(release.json["status"], "deployed", "{}", release.json);
        let name = format!("{ns}-flowgate");
        let token = token_request(&admin, &ns, &name, None).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(&kubeconfig, &token, &ns);
        let options = KubeConfigOptions::default();
        let config = Kubeconfig::read_from(&kubeconfig).expect("the kubeconfig reads back");
        let config = Config::from_custom_kubeconfig(config, &options)
            .await
            .expect("a client config from the ServiceAccount kubeconfig");
        let client = Client::try_from(config).expect("a client for the ServiceAccount");
        Self {
            ns,
            name,
            admin,
            client,
            kubeconfig,
            _dir: dir,
            _release: release,
        }
    }
}

/// A bound token of `namespace/name` from the TokenRequest API (the API server's own audience
/// when `audience` is None).
pub async fn token_request(
    admin: &Client,
    namespace: &str,
    name: &str,
    audience: Option<&str>,
) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.map(str::to_string).into_iter().collect(),
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"))
        .status
        .expect("TokenRequest status")
        .token
}

/// A kubeconfig for the admin kubeconfig's cluster (server and CA copied) whose only
/// credential is `token`; its default namespace is `namespace`.
fn write_kubeconfig(path: &Path, token: &str, namespace: &str) {
    let admin: Value = serde_json::from_str(&support::kubectl(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "--flatten",
        "-o",
        "json",
    ]))
    .expect("kubectl config view prints JSON");
    let mut cluster = admin["clusters"][0]["cluster"].clone();
    assert!(cluster["server"].is_string(), "admin kubeconfig: {admin}");
    assert!(
        cluster["certificate-authority-data"].is_string(),
        "the admin kubeconfig carries the CA"
    );
    if let Some(fields) = cluster.as_object_mut() {
        fields.remove("insecure-skip-tls-verify");
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "chart-sa", "user": {"token": token}}],
        "contexts": [{"name": "chart-sa",
                      "context": {"cluster": "local", "user": "chart-sa", "namespace": namespace}}],
        "current-context": "chart-sa",
    });
    std::fs::write(path, config.to_string()).expect("write the kubeconfig");
}

/// The `flowgate` binary (proxy + admin API, `--no-controller`) under a kubeconfig; killed on drop.
pub struct Binary {
    _child: KillOnDrop,
    pub base: String,
    pub ops: String,
    _dir: tempfile::TempDir,
}

/// The PostgreSQL ledger the binary and the controller share (`FLOWGATE_TEST_POSTGRES_URL`).
pub fn postgres_url() -> String {
    let url = std::env::var("FLOWGATE_TEST_POSTGRES_URL").unwrap_or_default();
    assert!(
        !url.is_empty(),
        "FLOWGATE_TEST_POSTGRES_URL is not set: run scripts/test.sh, or \
         `scripts/postgres.sh start && eval \"$(scripts/postgres.sh env)\"`"
    );
    url
}

impl Binary {
    /// Starts `flowgate run --no-controller` with `KUBECONFIG=kubeconfig`; waits for /readyz
    /// (index synced, ledger open, the cluster's ServiceAccount keys loaded).
    pub async fn start(kubeconfig: &Path) -> Self {
        let (flowise_url, _) = support::flowise_env();
        let key_file = std::env::var("FLOWGATE_FLOWISE_API_KEY_FILE").expect("Flowise key file");
        let dir = tempfile::tempdir().expect("temp dir");
        let secret = dir.path().join("hs256");
        std::fs::write(&secret, support::gate::SECRET).expect("secret");
        let (port, ops) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_flowgate"))
            .args(["run", "--no-controller"])
            .env("KUBECONFIG", kubeconfig)
            .env("FLOWGATE_FLOWISE_URL", flowise_url)
            .env("FLOWGATE_FLOWISE_API_KEY_FILE", key_file)
            .env("FLOWGATE_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("FLOWGATE_OPS_ADDR", format!("127.0.0.1:{ops}"))
            .env("FLOWGATE_LEDGER_URL", postgres_url())
            .env("FLOWGATE_JWT_HS256_SECRET_FILE", &secret)
            .env("FLOWGATE_SERVICE_ACCOUNT_AUDIENCE", AUDIENCE)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the flowgate binary starts");
        let binary = Self {
            _child: KillOnDrop(child),
            base: format!("http://127.0.0.1:{port}"),
            ops: format!("http://127.0.0.1:{ops}"),
            _dir: dir,
        };
        let ready = format!("{}/readyz", binary.ops);
        support::eventually(30, "flowgate (ServiceAccount token) /readyz", || async {
            let resp = reqwest::get(&ready).await.ok()?;
            resp.status().is_success().then_some(())
        })
        .await;
        binary
    }
}

/// Everything under the chart's ServiceAccount: the binary (proxy + admin API) and the
/// controller (with the shared ledger, so it reports credits usage).
pub struct Stack {
    controller: Option<crate::harness::Running>,
    pub binary: Binary,
    /// Flowise chatflows of this test are named `<prefix>…` (deleted on drop).
    pub prefix: String,
    _flowise: support::FlowiseCleanup,
    _objects: support::NamespaceCleanup,
    pub account: ChartAccount,
}

impl Stack {
    /// Installs the chart into a fresh namespace and runs flowgate there under its
    /// ServiceAccount's token.
    ///
    /// The controller runs in the test, built by `Controller::new` as `flowgate run` builds it,
    /// but watching only the test's namespace: the API server is shared with other tests, whose
    /// Chatflows a cluster-wide controller would reconcile. The chart's rules are cluster-wide,
    /// so the namespace-scoped watches ask for nothing more than the real deployment does. Its
    /// Lease lives in the release namespace, the only place the chart's Role grants Leases.
    pub async fn start(prefix: &str, import: bool) -> Self {
        support::logs();
        let account = ChartAccount::install(prefix).await;
        let objects = support::NamespaceCleanup(account.ns.clone());
        let flowise_prefix = support::unique("fgrbac");
        let flowise_cleanup = support::FlowiseCleanup(flowise_prefix.clone());
        let mut lease = LeaseSettings::new(&account.ns);
        lease.duration = Duration::from_secs(3);
        lease.renew_every = Duration::from_secs(1);
        lease.retry_every = Duration::from_millis(300);
        let settings = Settings {
            namespace: Some(account.ns.clone()),
            import_namespace: import.then(|| account.ns.clone()),
            import_name_prefix: Some(flowise_prefix.clone()),
            sync_interval: Duration::from_secs(60),
            last_sync_refresh: LAST_SYNC_REFRESH,
            lease,
            create_window: flowgate::controller::CREATE_WINDOW,
        };
        let ledger: Arc<dyn CreditLedger> =
            ledger::open(&flowgate::config::LedgerUrl::Postgres(postgres_url()))
                .await
                .expect("the PostgreSQL ledger opens");
        let metrics = Arc::new(Metrics::new());
        let controller = Controller::new(
            account.client.clone(),
            Arc::new(support::flowise()),
            settings,
            metrics.clone(),
        )
        .with_ledger(ledger);
        let controller = crate::harness::Running::spawn(controller, metrics);
        let binary = Binary::start(&account.kubeconfig).await;
        Self {
            controller: Some(controller),
            binary,
            prefix: flowise_prefix,
            _flowise: flowise_cleanup,
            _objects: objects,
            account,
        }
    }

    /// Stops the controller as SIGTERM does (in-flight work finishes, the Lease is released).
    pub async fn controller_stop(&mut self) {
        if let Some(controller) = self.controller.take() {
            controller.stop().await;
        }
    }

    /// One sync pass now (import and counts), as the admin API's `POST .../sync` runs it.
    pub async fn sync_now(&self) -> flowgate::controller::ChatflowSyncResult {
        self.controller
            .as_ref()
            .expect("the controller runs")
            .sync
            .sync_now()
            .await
    }

    pub fn ns(&self) -> &str {
        &self.account.ns
    }

    /// POSTs a prediction to the binary; the status and the JSON body (Null when not JSON).
    pub async fn predict(&self, bearer: &str, id: &str) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .post(format!("{}/api/v1/prediction/{id}", self.binary.base))
            .bearer_auth(bearer)
            .json(&json!({"question": "ping"}))
            .send()
            .await
            .expect("flowgate answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Polls until a prediction answers `want` (the index follows the API server asynchronously).
    pub async fn eventually_predicts(&self, bearer: &str, id: &str, want: u16) -> Value {
        let mut last = (0, Value::Null);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            last = self.predict(bearer, id).await;
            if last.0 == want {
                return last.1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("prediction on {id}: {} (wanted {want}): {}", last.0, last.1)
    }

    /// Sends an admin API request to the binary; the status and the JSON body.
    pub async fn call(&self, method: reqwest::Method, path: &str, bearer: &str) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .request(method, format!("{}{path}", self.binary.base))
            .bearer_auth(bearer)
            .send()
            .await
            .expect("flowgate answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A Flowise chatflow of this test (the offline echo flow) named `<prefix>-<suffix>`.
    pub async fn flowise_chatflow(&self, suffix: &str) -> (String, String) {
        let name = format!("{}-{suffix}", self.prefix);
        let id = support::gate::create_echo_chatflow(&name).await;
        (name, id)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Before the namespace is emptied: no reconcile may race the clean-up.
        if let Some(controller) = self.controller.take() {
            controller.shutdown.cancel();
            controller.task.abort();
        }
    }
}
