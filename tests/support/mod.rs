//! Shared set-up for tests that run against the real local API server (scripts/local-cluster.sh).
#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};

/// A header's value as text (`None` when absent or not visible ASCII).
pub fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A client for the local API server named by `KUBECONFIG`.
///
/// Panics with instructions when it is not set: these tests never pass without the real thing.
pub async fn client() -> Client {
    flowgate::telemetry::install_crypto_provider();
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: this test needs the local API server. \
         Run the whole suite with scripts/test.sh, or `eval \"$(scripts/local-cluster.sh env)\"` after \
         `scripts/local-cluster.sh start`."
    );
    Client::try_default()
        .await
        .expect("KUBECONFIG names a reachable API server")
}

/// Applies the generated CRDs (server-side apply, idempotent) and waits until they are served.
pub async fn install_crds(client: &Client) {
    for (_, crd) in flowgate::crd::definitions() {
        apply_crd(client, &crd).await;
    }
}

/// Applies `crd` (server-side apply, idempotent) and waits until it is served.
pub async fn apply_crd(client: &Client, crd: &CustomResourceDefinition) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().expect("CRD has a name");
    api.patch(
        &name,
        &PatchParams::apply("flowgate-tests").force(),
        &Patch::Apply(crd),
    )
    .await
    .unwrap_or_else(|e| panic!("CRD {name} applies: {e}"));
    let established = await_condition(api, &name, conditions::is_crd_established());
    tokio::time::timeout(Duration::from_secs(30), established)
        .await
        .expect("CRD established within 30 s")
        .expect("watching the CRD works");
}

/// A namespace of its own for one test: `<prefix>-<unique suffix>`.
pub async fn fresh_namespace(client: &Client, prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!("{prefix}-{:x}", nanos & 0xffff_ffff_ffff);
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))
    .expect("namespace literal");
    api.create(&PostParams::default(), &ns)
        .await
        .expect("namespace created");
    name
}

/// Runs kubectl against the local API server and returns stdout; panics with stderr on failure.
///
/// Each call uses a fresh discovery cache: CRDs installed moments ago must be visible.
pub fn kubectl(args: &[&str]) -> String {
    let cache = tempfile::tempdir().expect("temp dir");
    let out = std::process::Command::new("kubectl")
        .arg("--cache-dir")
        .arg(cache.path())
        .args(args)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The files of `examples/`, as (file name, parsed YAML document).
pub fn examples() -> Vec<(String, serde_json::Value)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("readable example");
            let doc: serde_json::Value = serde_saphyr::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
            (
                path.file_name()
                    .expect("file name")
                    .to_string_lossy()
                    .into_owned(),
                doc,
            )
        })
        .collect()
}

pub mod admin;
pub mod fake_flowise;
pub mod gate;
pub mod process;
pub mod team;

/// The real Flowise started by `scripts/flowise.sh`: base URL and API key.
///
/// Panics with instructions when the environment does not name one.
pub fn flowise_env() -> (String, String) {
    let url = std::env::var("FLOWGATE_FLOWISE_URL");
    let key_file = std::env::var("FLOWGATE_FLOWISE_API_KEY_FILE");
    let (Ok(url), Ok(key_file)) = (url, key_file) else {
        panic!(
            "FLOWGATE_FLOWISE_URL / FLOWGATE_FLOWISE_API_KEY_FILE are not set: this test needs the \
             real Flowise. Run the whole suite with scripts/test.sh, or `scripts/flowise.sh start` \
             and `eval \"$(scripts/flowise.sh env)\"`."
        )
    };
    let key = std::fs::read_to_string(&key_file)
        .unwrap_or_else(|e| panic!("cannot read the Flowise API key from {key_file}: {e}"));
    (url, key.trim().to_string())
}

/// A client for the real Flowise (see [`flowise_env`]).
pub fn flowise() -> flowgate::flowise::FlowiseClient {
    let (url, key) = flowise_env();
    flowgate::flowise::FlowiseClient::new(
        url.parse().expect("FLOWGATE_FLOWISE_URL is a URL"),
        Some(key),
        flowgate::flowise::Timeouts::default(),
    )
    .expect("Flowise client builds")
}

/// A name no other test (or earlier run) uses: `<prefix>-<unique suffix>`.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{seq:x}", nanos & 0xff_ffff_ffff)
}

/// The `flowData` of tests/fixtures/flowise-echo-agentflow.json (an AGENTFLOW answering "Echo: …").
pub fn echo_flow_data() -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/flowise-echo-agentflow.json");
    let text = std::fs::read_to_string(&path).expect("echo fixture readable");
    let fixture: serde_json::Value = serde_json::from_str(&text).expect("echo fixture is JSON");
    fixture["flowData"].clone()
}

/// Deletes every Flowise chatflow whose name starts with `prefix` (test clean-up).
pub async fn delete_flowise_chatflows(prefix: &str) {
    use flowgate::flowise::FlowiseApi;
    let flowise = flowise();
    let Ok(all) = flowise.list().await else {
        return;
    };
    for chatflow in all.into_iter().filter(|c| c.name.starts_with(prefix)) {
        let _ = flowise.delete(&chatflow.id).await;
    }
}

/// Edits a flowgate object where the API server keeps it, in etcd, past the CRD's validation:
/// as an object stored before its CRD had a bound or pattern is. The API server's watch sees
/// the write as a change of the object.
pub async fn edit_in_etcd(
    plural: &str,
    ns: &str,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let etcd = std::env::var("FLOWGATE_TEST_ETCD_URL").expect(
        "FLOWGATE_TEST_ETCD_URL is not set: run scripts/test.sh, or \
         `eval \"$(scripts/local-cluster.sh env)\"`",
    );
    let key = b64.encode(format!("/registry/flowgate.io/{plural}/{ns}/{name}"));
    let http = reqwest::Client::new();
    let found: serde_json::Value = http
        .post(format!("{etcd}/v3/kv/range"))
        .json(&serde_json::json!({"key": key}))
        .send()
        .await
        .expect("etcd answers")
        .json()
        .await
        .expect("etcd's JSON");
    let stored = found["kvs"][0]["value"]
        .as_str()
        .unwrap_or_else(|| panic!("{plural}/{ns}/{name} is in etcd: {found}"));
    let mut object: serde_json::Value =
        serde_json::from_slice(&b64.decode(stored).expect("base64")).expect("stored as JSON");
    edit(&mut object);
    let value = b64.encode(serde_json::to_vec(&object).expect("JSON"));
    http.post(format!("{etcd}/v3/kv/put"))
        .json(&serde_json::json!({"key": key, "value": value}))
        .send()
        .await
        .expect("etcd answers")
        .error_for_status()
        .expect("etcd stored it");
}

/// Waits up to `secs` seconds for `check` to return `Some`, polling every 100 ms.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One series of the `/metrics` of the ops listener at `ops` (`name{labels}`, as the page prints
/// it): its value, or `None` while it is not exported.
pub async fn metric(ops: &str, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("{ops}/metrics"))
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics body");
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().parse().expect("a number"))
}

/// Deletes the Flowise chatflows named `<prefix>…` when dropped, also when the test panics.
pub struct FlowiseCleanup(pub String);

impl Drop for FlowiseCleanup {
    fn drop(&mut self) {
        let prefix = self.0.clone();
        // Drop cannot await; a thread with its own runtime does the clean-up.
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(delete_flowise_chatflows(&prefix));
            }
        })
        .join();
    }
}

/// A TCP forwarder in front of the real Flowise that a test can close and open again: closed,
/// its port refuses connections (and open connections are cut), as when Flowise is stopped; the
/// shared Flowise itself keeps running for other tests.
pub struct FlowiseGate {
    addr: std::net::SocketAddr,
    target: String,
    forwarding: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Cancelled by [`FlowiseGate::freeze`] for the connections open then.
    thaw: std::sync::Arc<std::sync::Mutex<tokio_util::sync::CancellationToken>>,
}

impl FlowiseGate {
    /// An open gate to the Flowise of [`flowise_env`].
    pub async fn open_to_flowise() -> Self {
        let (url, _) = flowise_env();
        let target = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        Self::open_to(&target).await
    }

    /// An open gate to any TCP `host:port` (PostgreSQL, the API server, …).
    pub async fn open_to(target: &str) -> Self {
        let target = target.to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a port");
        let addr = listener.local_addr().expect("local address");
        let gate = Self {
            addr,
            target,
            forwarding: std::sync::Mutex::new(None),
            thaw: Default::default(),
        };
        gate.serve(listener);
        gate
    }

    /// The gate's base URL, to use instead of Flowise's.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Refuses connections from now on and cuts the open ones.
    pub fn close(&self) {
        if let Some(task) = self.forwarding.lock().expect("gate lock").take() {
            task.abort();
        }
    }

    /// The connections open now pass nothing more either way, and stay open: a peer frozen, or
    /// gone behind a route that still takes the packets. New connections pass as before.
    pub fn freeze(&self) {
        let mut current = self.thaw.lock().expect("gate lock");
        current.cancel();
        *current = tokio_util::sync::CancellationToken::new();
    }

    /// Forwards again, on the same port.
    pub async fn reopen(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot bind {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (target, thaw) = (self.target.clone(), self.thaw.clone());
        let task = tokio::spawn(async move {
            // Dropping this set (when the task is aborted) cuts every open connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let frozen = thaw.lock().expect("gate lock").clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            () = frozen.cancelled() => std::future::pending().await,
                        }
                    }
                });
            }
        });
        *self.forwarding.lock().expect("gate lock") = Some(task);
    }
}

impl Drop for FlowiseGate {
    fn drop(&mut self) {
        self.close();
    }
}

/// The PostgreSQL URL of the tests, routed through a gate the test can close and reopen.
pub async fn gated_postgres() -> (FlowiseGate, String) {
    let pg = postgres_url();
    // postgres://user@host:port/db — route host:port through a relay we can close.
    let (scheme_user, rest) = pg.split_once('@').expect("postgres URL with user@");
    let (host_port, db) = rest.split_once('/').expect("postgres URL with a database");
    let relay = FlowiseGate::open_to(host_port).await;
    let relayed = format!(
        "{scheme_user}@{}/{db}",
        relay.url().trim_start_matches("http://")
    );
    (relay, relayed)
}

/// Sends the code's logs to the test's output, filtered by `RUST_LOG` (default: warnings).
pub fn logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Deletes the flowgate objects (and Leases) of a test's namespace when dropped (also when the test panics),
/// removing finalizers first: the bare API server has no namespace controller, and a later
/// cluster-wide controller must not act on a finished test's Chatflows.
pub struct NamespaceCleanup(pub String);

impl Drop for NamespaceCleanup {
    fn drop(&mut self) {
        let ns = self.0.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                use flowgate::crd::{Chatflow, ChatflowAccess, CreditPolicy};
                use kube::api::{DeleteParams, ListParams};
                let Ok(client) = Client::try_default().await else {
                    return;
                };
                // Read leniently: a test may leave one flowgate cannot read (edit_in_etcd).
                let chatflows: Api<flowgate::crd::Lenient<Chatflow>> =
                    Api::namespaced(client.clone(), &ns);
                if let Ok(list) = chatflows.list(&ListParams::default()).await {
                    let no_finalizers = serde_json::json!({"metadata": {"finalizers": null}});
                    for cf in list.items {
                        let name = kube::ResourceExt::name_any(&cf);
                        let _ = chatflows
                            .patch(
                                &name,
                                &PatchParams::default(),
                                &Patch::Merge(&no_finalizers),
                            )
                            .await;
                        let _ = chatflows.delete(&name, &DeleteParams::default()).await;
                    }
                }
                let params = (DeleteParams::default(), ListParams::default());
                let accesses: Api<ChatflowAccess> = Api::namespaced(client.clone(), &ns);
                let _ = accesses.delete_collection(&params.0, &params.1).await;
                let policies: Api<CreditPolicy> = Api::namespaced(client.clone(), &ns);
                let _ = policies.delete_collection(&params.0, &params.1).await;
                let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
                    Api::namespaced(client, &ns);
                let _ = leases.delete_collection(&params.0, &params.1).await;
            });
        })
        .join();
    }
}

/// The PostgreSQL URL of the tests.
pub fn postgres_url() -> String {
    let pg = std::env::var("FLOWGATE_TEST_POSTGRES_URL").unwrap_or_default();
    assert!(
        !pg.is_empty(),
        "FLOWGATE_TEST_POSTGRES_URL is not set: run scripts/test.sh, or \
         `scripts/postgres.sh start && eval \"$(scripts/postgres.sh env)\"`"
    );
    pg
}
