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
use flowgate::identity::{AuthError, Verifier};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};

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
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.to_string()],
                expiration_seconds: Some(600),
                ..TokenRequestSpec::default()
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
}

fn verifier(client: Client, config: JwtConfig) -> Verifier {
    let config = JwtConfig {
        service_account_audience: Some(AUDIENCE.into()),
        leeway: Duration::from_secs(30),
        ..config
    };
    Verifier::new(&config, &ClaimMapping::default(), Some(client)).expect("valid configuration")
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
