//! A team namespace for proxy tests: one Ready chatflow, one user and group granted it.

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use flowgate::crd::{Chatflow, ChatflowAccess, CreditPolicy};

use super::gate::{create_echo_chatflow, delete_chatflow, token};

/// A namespace with one adopted, Ready chatflow (`support-bot`) backed by a real Flowise echo flow,
/// and alice@example.com granted it.
pub struct Team {
    pub client: kube::Client,
    pub ns: String,
    pub flowise_id: String,
    /// Whether `flowise_id` was created in the real Flowise (and is deleted by `cleanup`).
    owned: bool,
    /// Deletes the namespace's flowgate objects when the test ends, pass or fail.
    _objects: super::NamespaceCleanup,
}

impl Team {
    /// A team whose chatflow is a real echo flow in the real Flowise.
    pub async fn new(prefix: &str) -> Self {
        let client = super::client().await;
        super::install_crds(&client).await;
        let ns = super::fresh_namespace(&client, prefix).await;
        let flowise_id = create_echo_chatflow(&format!("flowgate-test-{ns}")).await;
        Self::setup(client, ns, flowise_id, true).await
    }

    /// A team whose chatflow id only a fake Flowise answers for.
    pub async fn with_fake_flowise(prefix: &str) -> Self {
        let client = super::client().await;
        super::install_crds(&client).await;
        let ns = super::fresh_namespace(&client, prefix).await;
        let suffix = jiff::Timestamp::now().as_nanosecond().unsigned_abs() & 0xffff_ffff_ffff;
        let flowise_id = format!("00000000-0000-4000-8000-{suffix:012x}");
        Self::setup(client, ns, flowise_id, false).await
    }

    /// [`Team::with_fake_flowise`] with a CreditPolicy `flat` on all its chatflows: 1 credit per
    /// prediction out of 100, never reset. Returns the team and the policy's `namespace/name`.
    pub async fn with_flat_policy(prefix: &str) -> (Self, String) {
        let team = Self::with_fake_flowise(prefix).await;
        team.policy(
            "flat",
            json!({"chatflows": ["*"], "budget": {"credits": 100, "period": "Never"},
                   "cost": {"perPrediction": 1}}),
        )
        .await;
        let policy = format!("{}/flat", team.ns);
        (team, policy)
    }

    async fn setup(client: kube::Client, ns: String, flowise_id: String, owned: bool) -> Self {
        let _objects = super::NamespaceCleanup(ns.clone());
        let team = Self {
            client,
            ns,
            flowise_id,
            owned,
            _objects,
        };
        team.chatflow("support-bot", &team.flowise_id.clone()).await;
        let (user, group) = (team.user(), team.group());
        team.grant("support-team", json!([{"user": user}, {"group": group}]))
            .await;
        team
    }

    pub async fn chatflow(&self, name: &str, flowise_id: &str) {
        let api: Api<Chatflow> = Api::namespaced(self.client.clone(), &self.ns);
        let cf: Chatflow = serde_json::from_value(json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow",
            "metadata": {"name": name}, "spec": {"flowiseId": flowise_id}
        }))
        .expect("chatflow literal");
        api.create(&PostParams::default(), &cf)
            .await
            .expect("chatflow created");
        let status = json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow", "status": {
            "flowiseId": flowise_id, "flowiseName": format!("flowgate-test-{}", self.ns), "type": "AGENTFLOW",
            "deployed": false, "apiKeyBound": false,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Synced", "message": "in sync",
                            "lastTransitionTime": "2026-11-22T00:00:00Z"}]}});
        api.patch_status(
            name,
            &PatchParams::apply("flowgate-tests").force(),
            &Patch::Apply(&status),
        )
        .await
        .expect("status written");
    }

    pub async fn grant(&self, name: &str, subjects: Value) {
        let api: Api<ChatflowAccess> = Api::namespaced(self.client.clone(), &self.ns);
        let access: ChatflowAccess = serde_json::from_value(json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess",
            "metadata": {"name": name}, "spec": {"chatflows": ["support-bot"], "subjects": subjects}
        }))
        .expect("access literal");
        api.create(&PostParams::default(), &access)
            .await
            .expect("access created");
    }

    /// Makes `owner@<namespace>.test` an admin of `support-bot` (ChatflowAccess `owners`,
    /// `role: Admin`) and returns a token for them; callers poll until the proxy sees it.
    pub async fn owner(&self) -> String {
        let owner = format!("owner@{}.test", self.ns);
        let api: Api<ChatflowAccess> = Api::namespaced(self.client.clone(), &self.ns);
        let access: ChatflowAccess = serde_json::from_value(json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess", "metadata": {"name": "owners"},
            "spec": {"chatflows": ["support-bot"], "subjects": [{"user": owner}], "role": "Admin"}
        }))
        .expect("access literal");
        api.create(&PostParams::default(), &access)
            .await
            .expect("owners created");
        token("owner-sub", json!({"email": owner}))
    }

    /// The granted user of this test (unique: other tests grant their own).
    pub fn user(&self) -> String {
        format!("alice@{}.test", self.ns)
    }

    /// The granted group of this test.
    pub fn group(&self) -> String {
        format!("support-{}", self.ns)
    }

    /// A token for the granted user.
    pub fn alice(&self) -> String {
        token("alice-sub", json!({"email": self.user()}))
    }

    /// A token for `name` (subject `<name>-sub`), granted through the team's group.
    pub fn member(&self, name: &str) -> String {
        token(
            &format!("{name}-sub"),
            json!({"email": format!("{name}@{}.test", self.ns), "groups": [self.group()]}),
        )
    }

    /// Applies a CreditPolicy from its `spec` (JSON) and waits for nothing: callers poll.
    pub async fn policy(&self, name: &str, spec: Value) {
        let api: Api<CreditPolicy> = Api::namespaced(self.client.clone(), &self.ns);
        let policy: CreditPolicy = serde_json::from_value(json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "CreditPolicy",
            "metadata": {"name": name}, "spec": spec
        }))
        .expect("policy literal");
        api.create(&PostParams::default(), &policy)
            .await
            .expect("policy created");
    }

    pub async fn cleanup(self) {
        if self.owned {
            delete_chatflow(&self.flowise_id).await;
        }
    }
}
