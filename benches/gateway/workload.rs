//! The resources of a benchmark run, as Kubernetes objects (JSON). The same generator feeds the
//! API server (`cluster.rs`) and the pure index benchmark (`index.rs`), so both measure the same
//! index.
//!
//! - The **team** namespace: Chatflows `free` (no CreditPolicy) and `paid` (a PerSubject budget,
//!   1 credit per prediction), and 10 ChatflowAccess objects, one of which grants the bench user.
//! - The **bulk** load (for the "10,000 objects" scenarios): `namespaces` × `chatflows`
//!   Chatflows and `namespaces` × `accesses` ChatflowAccess objects, each granting two chatflows
//!   of its namespace to a user and a group; and `team` more in the team namespace, granting
//!   `free` and `paid` (the chatflows measured) to other users and groups, every 10th also to
//!   the bench user's group. A decision looks only at the grants of its chatflow and namespace,
//!   so those are the ones that must grow for the bulk load to weigh on it.

use serde_json::{Value, json};

/// The caller every load scenario authenticates as.
pub const USER: &str = "bench-user";
pub const USER_EMAIL: &str = "bench-user@example.com";
pub const GROUP: &str = "bench";
/// Granted and revoked by the apply-to-enforce measurement.
pub const PROBE_USER: &str = "bench-probe";
/// ChatflowAccess objects in the team namespace.
pub const TEAM_ACCESSES: usize = 10;

/// How big the bulk load is.
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    pub namespaces: usize,
    pub chatflows: usize,
    pub accesses: usize,
    /// ChatflowAccess objects added to the team namespace, on the measured chatflows.
    pub team: usize,
}

impl Bulk {
    /// 1,000 Chatflows and 10,000 ChatflowAccess objects, 1,000 of them on the measured
    /// chatflows.
    pub const FULL: Self = Self {
        namespaces: 100,
        chatflows: 10,
        accesses: 90,
        team: 1_000,
    };
    /// Enough to exercise the path in `--quick` mode.
    pub const QUICK: Self = Self {
        namespaces: 4,
        chatflows: 5,
        accesses: 50,
        team: 20,
    };

    pub fn total_chatflows(&self) -> usize {
        self.namespaces * self.chatflows
    }

    pub fn total_accesses(&self) -> usize {
        self.namespaces * self.accesses + self.team
    }
}

/// Names and ids of a run. They are the same in every run: the namespaces stay (empty) after a
/// run, and the next run reuses them, so runs leave nothing piling up in the API server (which
/// has no namespace controller to finalize deleted namespaces).
#[derive(Debug, Clone)]
pub struct Plan {
    pub bulk: Bulk,
}

impl Plan {
    pub fn new(bulk: Bulk) -> Self {
        Self { bulk }
    }

    pub fn team_namespace(&self) -> String {
        "flowgate-bench-team".into()
    }

    pub fn bulk_namespace(&self, k: usize) -> String {
        format!("flowgate-bench-bulk-{k}")
    }

    /// Every namespace the run creates.
    pub fn namespaces(&self) -> Vec<String> {
        std::iter::once(self.team_namespace())
            .chain((0..self.bulk.namespaces).map(|k| self.bulk_namespace(k)))
            .collect()
    }

    /// Flowise id of the chatflow without a budget.
    pub fn free_id(&self) -> String {
        self.bulk_flowise_id(0xfffe, 0)
    }

    /// Flowise id of the chatflow with a budget.
    pub fn paid_id(&self) -> String {
        self.bulk_flowise_id(0xffff, 0)
    }

    /// A UUID of namespace `k`'s chatflow `j`.
    pub fn bulk_flowise_id(&self, k: usize, j: usize) -> String {
        format!("be4c0000-{:04x}-4000-8000-{j:012x}", k & 0xffff)
    }

    /// The team namespace's Chatflows, ChatflowAccess objects and CreditPolicy.
    pub fn team(&self) -> Vec<Value> {
        let ns = self.team_namespace();
        let mut objects = vec![
            chatflow(&ns, "free", &self.free_id()),
            chatflow(&ns, "paid", &self.paid_id()),
            access(
                &ns,
                "team-0",
                &["free", "paid"],
                json!([{"user": USER}, {"group": "team-leads"}]),
            ),
        ];
        for i in 1..TEAM_ACCESSES {
            let chatflows: &[&str] = if i % 3 == 0 { &["*"] } else { &["free"] };
            let subjects =
                json!([{"user": format!("user-{i}@example.com")}, {"group": format!("group-{i}")}]);
            objects.push(access(&ns, &format!("team-{i}"), chatflows, subjects));
        }
        objects.push(json!({
            "apiVersion": "flowgate.io/v1alpha1", "kind": "CreditPolicy",
            "metadata": {"name": "paid-budget", "namespace": ns},
            "spec": {
                "chatflows": ["paid"],
                "budget": {"credits": 1_000_000_000_000_u64, "period": "Monthly", "timeZone": "UTC", "scope": "PerSubject"},
                "cost": {"perPrediction": 1}
            }
        }));
        objects
    }

    /// The bulk namespaces' Chatflows, then their ChatflowAccess objects.
    pub fn bulk(&self) -> Vec<Value> {
        let Bulk {
            namespaces,
            chatflows,
            accesses,
            team,
        } = self.bulk;
        let mut objects = Vec::with_capacity(namespaces * (chatflows + accesses) + team);
        for k in 0..namespaces {
            let ns = self.bulk_namespace(k);
            for j in 0..chatflows {
                objects.push(chatflow(
                    &ns,
                    &format!("flow-{j}"),
                    &self.bulk_flowise_id(k, j),
                ));
            }
        }
        for k in 0..namespaces {
            let ns = self.bulk_namespace(k);
            for j in 0..accesses {
                let flows = [
                    format!("flow-{}", j % chatflows),
                    format!("flow-{}", (j + 1) % chatflows),
                ];
                let mut subjects = vec![
                    json!({"user": format!("user-{k}-{j}@example.com")}),
                    json!({"group": format!("group-{k}-{}", j % 10)}),
                ];
                if j % 10 == 0 {
                    subjects.push(json!({"group": GROUP}));
                }
                let flows: Vec<&str> = flows.iter().map(String::as_str).collect();
                objects.push(access(
                    &ns,
                    &format!("access-{j}"),
                    &flows,
                    Value::Array(subjects),
                ));
            }
        }
        let ns = self.team_namespace();
        for j in 0..team {
            let flows: &[&str] = if j % 2 == 0 {
                &["free", "paid"]
            } else {
                &["paid"]
            };
            let mut subjects = vec![
                json!({"user": format!("team-user-{j}@example.com")}),
                json!({"group": format!("team-group-{}", j % 100)}),
            ];
            if j % 10 == 0 {
                subjects.push(json!({"group": GROUP}));
            }
            objects.push(access(
                &ns,
                &format!("bulk-{j}"),
                flows,
                Value::Array(subjects),
            ));
        }
        objects
    }

    /// The ChatflowAccess that grants the probe user the `free` chatflow.
    pub fn probe_access(&self) -> Value {
        access(
            &self.team_namespace(),
            "probe",
            &["free"],
            json!([{"user": PROBE_USER}]),
        )
    }
}

/// A Chatflow adopting `flowise_id`, with the status the controller would write once synced.
pub fn chatflow(ns: &str, name: &str, flowise_id: &str) -> Value {
    json!({
        "apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"flowiseId": flowise_id},
        "status": {
            "flowiseId": flowise_id, "flowiseName": format!("bench {ns}/{name}"), "type": "CHATFLOW",
            "deployed": true, "apiKeyBound": false,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Synced",
                            "message": "in sync with Flowise", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
        }
    })
}

fn access(ns: &str, name: &str, chatflows: &[&str], subjects: Value) -> Value {
    json!({
        "apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"chatflows": chatflows, "subjects": subjects, "role": "User"}
    })
}
