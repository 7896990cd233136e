//! One request's access decision, as the proxy takes it from the index: the chatflow by Flowise
//! id, `Snapshot::role`, `Snapshot::policies_for`. Shared by the harness's hand loop
//! (`flowgate-bench index`) and the Criterion bench (`cargo bench --bench decision`), so both
//! time the same work on the same index.

use std::hint::black_box;
use std::sync::Arc;

use flowgate::crd::{Chatflow, ChatflowAccess, CreditPolicy};
use flowgate::index::{Caller, Resources, Snapshot};
use serde_json::Value;

use crate::workload::{GROUP, Plan, USER, USER_EMAIL};

/// A caller (its users and groups) and the Flowise id of a chatflow it is granted.
pub type Asking = (Vec<String>, Vec<String>, String);

/// The bench user on `paid`: the caller every load scenario sends.
pub fn bench_user(plan: &Plan) -> Asking {
    (
        vec![USER.to_string(), USER_EMAIL.to_string()],
        vec![GROUP.to_string()],
        plan.paid_id(),
    )
}

/// Every bulk namespace's first 10 users, each with its group, on a chatflow it is granted.
pub fn bulk_callers(plan: &Plan) -> Vec<Asking> {
    let bulk = plan.bulk;
    (0..bulk.namespaces)
        .flat_map(|k| (0..bulk.accesses.min(10)).map(move |j| (k, j)))
        .map(|(k, j)| {
            (
                vec![format!("user-{k}-{j}@example.com")],
                vec![format!("group-{k}-{}", j % 10)],
                plan.bulk_flowise_id(k, j % bulk.chatflows),
            )
        })
        .collect()
}

/// One decision for `asking`; panics if the caller is not granted (the figures would then time
/// a refusal, not the decision a served request takes).
pub fn decide(snap: &Snapshot, asking: &Asking, now: jiff::Timestamp) {
    let (users, groups, flowise_id) = asking;
    let caller = Caller {
        users,
        groups,
        service_account: None,
    };
    let cf = snap
        .chatflow_by_flowise_id(black_box(flowise_id))
        .expect("the chatflow is in the index");
    let role = snap.role(black_box(&caller), cf, now);
    assert!(role.is_some(), "the caller is granted its chatflow");
    let policies = snap.policies_for(&caller, cf);
    black_box((role, policies));
}

/// Typed resources from the workload's JSON objects.
pub fn resources(objects: Vec<Value>) -> Resources {
    let mut res = Resources::default();
    for object in objects {
        match object["kind"].as_str() {
            Some("Chatflow") => res.chatflows.push(Arc::new(typed::<Chatflow>(object))),
            Some("ChatflowAccess") => res.accesses.push(Arc::new(typed::<ChatflowAccess>(object))),
            Some("CreditPolicy") => res.policies.push(Arc::new(typed::<CreditPolicy>(object))),
            other => panic!("unexpected kind {other:?}"),
        }
    }
    res
}

fn typed<T: serde::de::DeserializeOwned>(object: Value) -> T {
    serde_json::from_value(object).expect("workload objects match the CRD types")
}
