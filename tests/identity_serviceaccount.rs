//! Kubernetes ServiceAccount tokens against a real API server: tokens come from the TokenRequest
//! API, keys from the server's issuer discovery, read through the Kubernetes client.
//!
//! Needs KUBECONFIG: `bash scripts/local-cluster.sh start` then
//! `eval "$(bash scripts/local-cluster.sh env)"`. Without it these tests fail, never skip.

mod identity_support;

use std::io::Write;
use std::time::Duration;

use flowgate::config::{ClaimMapping, JwtConfig};
use flowgate::crd::ServiceAccountRef;
use flowgate::identity::{AuthError, Verifier, VerifierOptions};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, ServiceAccount};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};

use futures::FutureExt;
use identity_support::{SECRET, Signer, claims};

/// Never deleted: without a controller-manager a deleted namespace stays Terminating forever.
const NAMESPACE: &str = "flowgate-identity-test";
const AUDIENCE: &str = "flowgate";
async fn cluster() -> Client {
    // Key-fetch failures are logged; show them in a failing test's output.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    if std::env::var_os("KUBECONFIG").is_none() {
        panic!(
            "KUBECONFIG is not set. These tests need the local API server: run \
             `bash scripts/local-cluster.sh start` and \
             `eval \"$(bash scripts/local-cluster.sh env)\"`, then run them again."
        );
    }
    Client::try_default()
        .await
        .expect("a Kubernetes client from KUBECONFIG (is scripts/local-cluster.sh started?)")
}

/// A fresh ServiceAccount in [`NAMESPACE`]; [`ServiceAccountFixture::delete`] removes it.
struct ServiceAccountFixture {
    api: Api<ServiceAccount>,
    name: String,
}

impl ServiceAccountFixture {
    async fn create(client: &Client, prefix: &str) -> Self {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(NAMESPACE.into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        match namespaces.create(&PostParams::default(), &namespace).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => panic!("cannot create namespace {NAMESPACE}: {e}"),
        }
        let name = format!(
            "{prefix}-{}",
            jiff::Timestamp::now().as_nanosecond() % 1_000_000_000
        );
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        api.create(&PostParams::default(), &account)
            .await
            .expect("creates the ServiceAccount");
        Self { api, name }
    }

    /// A bound token for `audience`, from the TokenRequest API.
    async fn token(&self, audience: &str) -> String {
        self.token_bound_to(audience, None).await
    }

    /// A token for `audience` bound to `object` too (a pod), as the kubelet's are.
    async fn token_bound_to(&self, audience: &str, object: Option<BoundObjectReference>) -> String {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.to_string()],
                expiration_seconds: Some(600),
                bound_object_ref: object,
            },
            ..TokenRequest::default()
        };
        self.api
            .create_token_request(&self.name, &PostParams::default(), &request)
            .await
            .expect("TokenRequest")
            .status
            .expect("TokenRequest status")
            .token
    }

    fn reference(&self) -> ServiceAccountRef {
        ServiceAccountRef {
            namespace: NAMESPACE.into(),
            name: self.name.clone(),
        }
    }

    async fn delete(self) {
        let _ = self.api.delete(&self.name, &DeleteParams::default()).await;
    }

    /// Deletes the ServiceAccount and creates it again under the same name (a new uid).
    async fn recreate(&self) {
        self.api
            .delete(&self.name, &DeleteParams::default())
            .await
            .expect("deletes the ServiceAccount");
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        self.api
            .create(&PostParams::default(), &account)
            .await
            .expect("creates the ServiceAccount again");
    }
}

/// A verifier that reviews ServiceAccount tokens again after 1 s, not 30.
fn reviewing_verifier(client: Client) -> Verifier {
    let options = VerifierOptions {
        review_interval: Duration::from_secs(1),
        ..VerifierOptions::default()
    };
    verifier_with(client, JwtConfig::default(), options)
}

/// Verifies `token` every 100 ms until it is refused as revoked; how long that took. Panics
/// after 25 s (expected: the 1 s interval plus the API server's own 10 s token cache), or on
/// any other outcome than success or `Revoked`.
async fn until_revoked(verifier: &Verifier, token: &str) -> Duration {
    let started = std::time::Instant::now();
    loop {
        match verifier.verify(token).await {
            Err(AuthError::Revoked(_)) => return started.elapsed(),
            Ok(_) => {}
            Err(other) => panic!("expected success or Revoked, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "the token was still accepted 25 s later"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn verifier(client: Client, config: JwtConfig) -> Verifier {
    verifier_with(client, config, VerifierOptions::default())
}

/// A verifier of ServiceAccount tokens for [`AUDIENCE`] (and whatever else `config` sets).
fn verifier_with(client: Client, config: JwtConfig, options: VerifierOptions) -> Verifier {
    let config = JwtConfig {
        service_account_audience: Some(AUDIENCE.into()),
        leeway: Duration::from_secs(30),
        ..config
    };
    Verifier::with_options(&config, &ClaimMapping::default(), Some(client), options)
        .expect("valid configuration")
}

#[tokio::test]
async fn a_service_account_token_is_verified_and_mapped_to_its_account() {
    let client = cluster().await;
    let account = ServiceAccountFixture::create(&client, "chat-client").await;
    let verifier = verifier(client, JwtConfig::default());
    assert!(
        verifier.refresh().await,
        "issuer and keys load through the client"
    );

    let token = account.token(AUDIENCE).await;
    let identity = verifier
        .verify(&token)
        .await
        .expect("a valid ServiceAccount token");
    assert_eq!(identity.service_account, Some(account.reference()));
    assert_eq!(identity.key, format!("sa:{NAMESPACE}/{}", account.name));
    assert!(identity.users.is_empty() && identity.groups.is_empty() && !identity.admin);
    let remaining = identity.expires_at.as_second() - jiff::Timestamp::now().as_second();
    assert!(
        (500..=660).contains(&remaining),
        "exp from the token: {remaining}s left"
    );
    account.delete().await;
}

#[tokio::test]
async fn requests_that_see_a_new_token_together_share_one_review() {
    let client = cluster().await;
    let account = ServiceAccountFixture::create(&client, "burst").await;
    for capacity in [10_000, 0] {
        let options = VerifierOptions {
            token_cache_capacity: capacity,
            ..VerifierOptions::default()
        };
        let verifier = verifier_with(client.clone(), JwtConfig::default(), options);
        assert!(verifier.refresh().await, "keys load through the client");
        let token = account.token(AUDIENCE).await;

        // A client's burst on a new token: every request waits for the one review.
        let burst = futures::future::join_all((0..16).map(|_| verifier.verify(&token))).await;
        for identity in burst {
            let identity = identity.expect("the reviewed token is accepted");
            assert_eq!(identity.service_account, Some(account.reference()));
        }
        assert_eq!(
            verifier.token_reviews_sent(),
            1,
            "cache capacity {capacity}"
        );

        // Then: from the cache without a review, or (no cache) one review per request.
        verifier.verify(&token).await.expect("accepted again");
        let expected = if capacity == 0 { 2 } else { 1 };
        assert_eq!(
            verifier.token_reviews_sent(),
            expected,
            "cache capacity {capacity}"
        );
    }

    // A first review whose requests all hung up is not lost: the next request gets its verdict
    // and sends no review of its own.
    let verifier = verifier(client.clone(), JwtConfig::default());
    assert!(verifier.refresh().await, "keys load through the client");
    let token = account.token(AUDIENCE).await;
    let gone = verifier.verify(&token).now_or_never();
    assert!(
        gone.is_none(),
        "the request hung up before the review answered"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(verifier.token_reviews_sent(), 1, "the review went on alone");
    verifier.verify(&token).await.expect("accepted");
    assert_eq!(verifier.token_reviews_sent(), 1, "the verdict was recorded");

    // A first review whose runtime shut down before it ran (a proxy thread ending) leaves no
    // dead flight behind: the next request starts a review of its own and is accepted.
    let verifier = verifier_with(
        client.clone(),
        JwtConfig::default(),
        VerifierOptions::default(),
    );
    assert!(verifier.refresh().await, "keys load through the client");
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            let pending = runtime.block_on(async { verifier.verify(&token).now_or_never() });
            assert!(pending.is_none(), "the review was spawned, not answered");
            // The runtime, and the review spawned on it, are dropped here.
        });
    });
    verifier
        .verify(&token)
        .await
        .expect("reviewed again and accepted");
    assert_eq!(
        verifier.token_reviews_sent(),
        1,
        "the dropped review never ran"
    );
    account.delete().await;
}

/// A token unused for over two review intervals waits for a review: a burst after the pause
/// shares one, and a token revoked during the pause is refused on its first request, not
/// served while a review runs in the background.
#[tokio::test]
async fn a_token_back_from_a_pause_waits_for_one_review() {
    let client = cluster().await;
    let account = ServiceAccountFixture::create(&client, "paused").await;
    let verifier = reviewing_verifier(client);
    assert!(verifier.refresh().await, "keys load through the client");
    let token = account.token(AUDIENCE).await;
    verifier
        .verify(&token)
        .await
        .expect("reviewed and accepted");
    assert_eq!(verifier.token_reviews_sent(), 1);

    // Past 2 s (twice the 1 s interval, in whole seconds): a burst waits for one review.
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let burst = futures::future::join_all((0..16).map(|_| verifier.verify(&token))).await;
    assert!(burst.iter().all(Result::is_ok), "{burst:?}");
    assert_eq!(verifier.token_reviews_sent(), 2, "one review for the burst");

    // Revoked during a pause longer than the API server's own 10 s cache of its answers.
    account.delete().await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(
        matches!(verifier.verify(&token).await, Err(AuthError::Revoked(_))),
        "the first request after the pause is refused"
    );
}

#[tokio::test]
async fn a_service_account_token_for_another_audience_is_rejected() {
    let client = cluster().await;
    let account = ServiceAccountFixture::create(&client, "other-audience").await;
    let verifier = verifier(client, JwtConfig::default());
    let token = account.token("not-flowgate").await;
    assert_eq!(verifier.verify(&token).await, Err(AuthError::WrongAudience));
    account.delete().await;
}

#[tokio::test]
async fn a_tampered_service_account_token_is_rejected() {
    let client = cluster().await;
    let account = ServiceAccountFixture::create(&client, "tampered").await;
    let verifier = verifier(client, JwtConfig::default());
    let token = account.token(AUDIENCE).await;
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    let payload = String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &parts[1])
            .expect("base64url payload"),
    )
    .expect("utf-8");
    let forged = payload.replace(&account.name, "cluster-admin-ish");
    parts[1] = identity_support::b64(forged);
    assert_eq!(
        verifier.verify(&parts.join(".")).await,
        Err(AuthError::BadSignature)
    );
    account.delete().await;
}

#[tokio::test]
async fn user_tokens_and_service_account_tokens_are_told_apart() {
    let client = cluster().await;
    let account = ServiceAccountFixture::create(&client, "side-by-side").await;
    let mut secret = tempfile::NamedTempFile::new().expect("temp file");
    secret.write_all(SECRET).expect("writes");
    let verifier = verifier(
        client,
        JwtConfig {
            hs256_secret_file: Some(secret.path().to_path_buf()),
            ..JwtConfig::default()
        },
    );

    let user = verifier
        .verify(&Signer::hs256(SECRET).sign(&claims()))
        .await
        .expect("user token");
    assert_eq!(
        (user.key.as_str(), user.service_account),
        ("user:alice", None)
    );

    // Keys load lazily: the first ServiceAccount token fetches them.
    let token = account.token(AUDIENCE).await;
    let sa = verifier.verify(&token).await.expect("ServiceAccount token");
    assert_eq!(sa.service_account, Some(account.reference()));

    // A user token cannot claim to be a ServiceAccount: its issuer is not the cluster's.
    let mut impostor = claims();
    impostor["sub"] = format!("system:serviceaccount:{NAMESPACE}:{}", account.name).into();
    let impostor = verifier
        .verify(&Signer::hs256(SECRET).sign(&impostor))
        .await
        .expect("still a valid user token");
    assert_eq!(impostor.service_account, None);
    assert!(impostor.key.starts_with("user:system:serviceaccount:"));
    account.delete().await;
}

#[tokio::test]
async fn a_token_of_a_deleted_or_recreated_service_account_is_refused() {
    let client = cluster().await;
    let account = ServiceAccountFixture::create(&client, "recreated").await;
    let verifier = reviewing_verifier(client);
    let token = account.token(AUDIENCE).await;
    let identity = verifier
        .verify(&token)
        .await
        .expect("accepted while it exists");
    assert_eq!(identity.service_account, Some(account.reference()));

    // The signature still verifies and `exp` is ten minutes away: only the API server knows.
    account.recreate().await;
    let took = until_revoked(&verifier, &token).await;
    eprintln!("refused {took:?} after the ServiceAccount was recreated");
    assert!(
        matches!(verifier.verify(&token).await, Err(AuthError::Revoked(_))),
        "and stays refused"
    );
    // Refusals are answered at once for 5 s (whole seconds: 5-6 s); then the API server is
    // asked again. (Either way the answer stays a refusal; the unit tests of `review::decide`
    // and `TokenCache` show which requests ask.)
    tokio::time::sleep(Duration::from_millis(6_100)).await;
    assert!(matches!(
        verifier.verify(&token).await,
        Err(AuthError::Revoked(reason)) if reason.contains("does not match")
    ));

    let fresh = account.token(AUDIENCE).await;
    let again = verifier
        .verify(&fresh)
        .await
        .expect("the new account's token");
    assert_eq!(again.service_account, Some(account.reference()));
    account.delete().await;
}

#[tokio::test]
async fn a_pod_bound_token_is_refused_once_its_pod_is_gone() {
    let client = cluster().await;
    let account = ServiceAccountFixture::create(&client, "pod-bound").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    // No kubelet here: the pod is never scheduled, which the API server does not mind.
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(account.name.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            service_account_name: Some(account.name.clone()),
            automount_service_account_token: Some(false),
            containers: vec![Container {
                name: "app".into(),
                image: Some("example.invalid/app".into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    };
    let pod = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("creates the pod");
    let bound = BoundObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
    };
    let token = account.token_bound_to(AUDIENCE, Some(bound)).await;
    let verifier = reviewing_verifier(client);
    verifier
        .verify(&token)
        .await
        .expect("accepted while the pod exists");

    pods.delete(&account.name, &DeleteParams::default().grace_period(0))
        .await
        .expect("deletes the pod");
    let took = until_revoked(&verifier, &token).await;
    eprintln!("refused {took:?} after the pod was deleted");
    account.delete().await;
}

/// A TCP relay to the API server that can be cut (every connection dropped, new ones refused)
/// and restored: the API server unreachable without stopping it.
struct Relay {
    port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let port = listener.local_addr().expect("bound").port();
        let relay = Self {
            port,
            down: Default::default(),
            connections: Default::default(),
        };
        let (down, connections) = (relay.down.clone(), relay.connections.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if down.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let upstream = upstream.clone();
                let copy = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections.lock().expect("not poisoned").push(copy);
            }
        });
        relay
    }

    fn cut(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
        if down {
            for copy in self.connections.lock().expect("not poisoned").drain(..) {
                copy.abort();
            }
        }
    }

    /// A client of the API server through this relay.
    async fn client(&self) -> Client {
        let mut config = kube::Config::infer()
            .await
            .expect("a config from KUBECONFIG");
        let url = format!("https://127.0.0.1:{}", self.port);
        config.cluster_url = url.parse().expect("a URL");
        Client::try_from(config).expect("a client")
    }
}

/// `host:port` of the API server KUBECONFIG names.
async fn api_server_address() -> String {
    let config = kube::Config::infer()
        .await
        .expect("a config from KUBECONFIG");
    let url = config.cluster_url;
    format!(
        "{}:{}",
        url.host().expect("a host"),
        url.port_u16().unwrap_or(443)
    )
}

/// Waits, within 10 s, until each of `tokens` is accepted again once the API server answers;
/// meanwhile only `ReviewUnavailable` (503) is expected.
async fn accepted_again(verifier: &Verifier, tokens: &[&String]) {
    let back = std::time::Instant::now();
    for token in tokens {
        loop {
            match verifier.verify(token).await {
                Ok(_) => break,
                Err(AuthError::ReviewUnavailable) => {}
                Err(other) => panic!("expected success or ReviewUnavailable, got {other:?}"),
            }
            assert!(
                back.elapsed() < Duration::from_secs(10),
                "not reviewed again within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A relay to the API server and a verifier reviewing through it: tokens in use every second,
/// an acceptance served for 4 s while reviews fail, a review given 2 s; its keys loaded.
async fn reviewing_often_through_a_relay() -> (Relay, Verifier) {
    let relay = Relay::start(api_server_address().await).await;
    let options = VerifierOptions {
        review_interval: Duration::from_secs(1),
        review_grace: Duration::from_secs(4),
        fetch_timeout: Duration::from_secs(2),
        ..VerifierOptions::default()
    };
    let verifier = verifier_with(relay.client().await, JwtConfig::default(), options);
    assert!(verifier.refresh().await, "keys load through the relay");
    (relay, verifier)
}

#[tokio::test]
async fn while_the_api_server_cannot_be_asked_only_recently_reviewed_tokens_pass() {
    let admin = cluster().await;
    let account = ServiceAccountFixture::create(&admin, "outage").await;
    let (relay, verifier) = reviewing_often_through_a_relay().await;
    let seen = account.token(AUDIENCE).await;
    // Tokens have no `jti` here: one requested in the same second would be the same token.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let unseen = account.token(AUDIENCE).await;
    assert_ne!(seen, unseen);
    verifier.verify(&seen).await.expect("reviewed and accepted");
    let reviewed = std::time::Instant::now();

    relay.cut(true);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Due for review: served from the last review, while the review in the background fails.
    verifier
        .verify(&seen)
        .await
        .expect("accepted 1.5 s after its review");
    assert_eq!(
        verifier.verify(&unseen).await,
        Err(AuthError::ReviewUnavailable),
        "a token never reviewed is not accepted"
    );
    // Past the grace (whole seconds: 4-5 s after the review).
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(reviewed.elapsed())).await;
    assert_eq!(
        verifier.verify(&seen).await,
        Err(AuthError::ReviewUnavailable)
    );

    // Back: answered 503 at once until the failed review's claim (fetch timeout + 1 s) ends.
    relay.cut(false);
    accepted_again(&verifier, &[&seen, &unseen]).await;
    account.delete().await;
}

/// A refused token whose next reviews cannot be made (the API server unreachable): refused at
/// every request all the same (401), never a 503 that its holder retries on.
#[tokio::test]
async fn a_refused_token_stays_refused_while_the_api_server_cannot_be_asked() {
    let admin = cluster().await;
    let account = ServiceAccountFixture::create(&admin, "refused-outage").await;
    let (relay, verifier) = reviewing_often_through_a_relay().await;
    let token = account.token(AUDIENCE).await;
    verifier
        .verify(&token)
        .await
        .expect("accepted while it exists");
    account.recreate().await;
    until_revoked(&verifier, &token).await;

    relay.cut(true);
    // Past the refusal's 5 s its reviews are due again, and fail.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        let answer = verifier.verify(&token).await;
        assert!(
            matches!(answer, Err(AuthError::Revoked(_))),
            "{:?} after the cut: {answer:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    relay.cut(false);
    account.delete().await;
}

#[tokio::test]
async fn a_rotated_user_key_keeps_service_account_reviews() {
    let admin = cluster().await;
    let account = ServiceAccountFixture::create(&admin, "rotation").await;
    let relay = Relay::start(api_server_address().await).await;
    let mut secret = tempfile::NamedTempFile::new().expect("temp file");
    secret.write_all(SECRET).expect("writes");
    let jwt = JwtConfig {
        hs256_secret_file: Some(secret.path().to_path_buf()),
        ..JwtConfig::default()
    };
    let options = VerifierOptions {
        fetch_timeout: Duration::from_secs(2),
        ..VerifierOptions::default()
    };
    let verifier = verifier_with(relay.client().await, jwt, options);
    assert!(verifier.refresh().await, "keys load through the relay");
    let token = account.token(AUDIENCE).await;
    verifier
        .verify(&token)
        .await
        .expect("reviewed and accepted");
    let user = Signer::hs256(SECRET).sign(&claims());
    verifier.verify(&user).await.expect("a user token");

    // The HS256 secret is rotated while the API server cannot be asked.
    relay.cut(true);
    std::fs::write(secret.path(), b"another-hs256-secret-of-32-bytes-or-more").expect("rewrites");
    assert!(verifier.reload_key_files(), "the new secret is read");
    assert_eq!(
        verifier.verify(&user).await,
        Err(AuthError::BadSignature),
        "the old secret's tokens stop"
    );
    let served = verifier.verify(&token).await;
    assert!(
        served.is_ok(),
        "the ServiceAccount token's review outlives a user-key change: {served:?}"
    );
    account.delete().await;
}

/// The cluster's key set changing (here: loading for the first time, while the first token is
/// verified) does not throw away the reviews made before: a token reviewed a moment ago is
/// served from that review while the API server cannot be asked.
#[tokio::test]
async fn a_review_outlives_a_change_of_the_cluster_keys() {
    let admin = cluster().await;
    let account = ServiceAccountFixture::create(&admin, "epoch").await;
    let relay = Relay::start(api_server_address().await).await;
    let options = VerifierOptions {
        fetch_timeout: Duration::from_secs(2),
        ..VerifierOptions::default()
    };
    let verifier = verifier_with(relay.client().await, JwtConfig::default(), options);
    let token = account.token(AUDIENCE).await;
    // The keys load on demand, inside this verification: the key set changes under it.
    verifier
        .verify(&token)
        .await
        .expect("reviewed and accepted");
    assert_eq!(verifier.token_reviews_sent(), 1);

    relay.cut(true);
    let served = verifier.verify(&token).await;
    assert!(
        served.is_ok(),
        "verified again under the new keys, served from its review: {served:?}"
    );
    assert_eq!(verifier.token_reviews_sent(), 1, "no second review");
    account.delete().await;
}

/// While the API server cannot be asked, reviews back off together: tokens never seen are
/// answered 503 at once, without a review each every second, and the first review after it
/// answers again brings them back.
#[tokio::test]
async fn reviews_back_off_together_while_the_api_server_cannot_be_asked() {
    let admin = cluster().await;
    let relay = Relay::start(api_server_address().await).await;
    let options = VerifierOptions {
        fetch_timeout: Duration::from_secs(2),
        ..VerifierOptions::default()
    };
    let verifier = verifier_with(relay.client().await, JwtConfig::default(), options);
    assert!(verifier.refresh().await, "keys load through the relay");
    let mut accounts = Vec::new();
    let mut tokens = Vec::new();
    for n in 0..6 {
        let account = ServiceAccountFixture::create(&admin, &format!("backoff{n}")).await;
        tokens.push(account.token(AUDIENCE).await);
        accounts.push(account);
    }

    relay.cut(true);
    let before = verifier.token_reviews_sent();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        for token in &tokens {
            assert_eq!(
                verifier.verify(token).await,
                Err(AuthError::ReviewUnavailable)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Backing off 1 s, 2 s, 4 s: a probe at 0, 1 and 3 s (and the first round's, sent
    // together); each token retried every second would be about 6 × 4.
    let sent = verifier.token_reviews_sent() - before;
    assert!(sent <= 9, "{sent} reviews in 4 s of outage");

    relay.cut(false);
    accepted_again(&verifier, &tokens.iter().collect::<Vec<_>>()).await;
    for account in accounts {
        account.delete().await;
    }
}
