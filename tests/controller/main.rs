//! The controller against the real local API server (scripts/local-cluster.sh) and the real
//! Flowise (scripts/flowise.sh). Every test has its own namespace, its own Lease, its own
//! controller watching only that namespace, and Flowise chatflows named with its own prefix,
//! deleted when the test ends (also on failure).

#[path = "../support/mod.rs"]
mod support;

mod chatflows;
mod harness;
mod leader;
mod older_crd;
mod rules;
mod sync;
mod unreadable;
