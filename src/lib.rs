//! flowgate: GitOps-managed access control and credit budgets in front of Flowise.
//!
//! ```text
//!  Chatflow ─┐                                   ┌─ controller ── Flowise REST API (sync, status)
//!  ChatflowAccess ─┼─ watch ─▶ index::Snapshot ─┤
//!  CreditPolicy ─┘            (compiled, immutable) └─ proxy: authenticate → resolve → authorize
//!                                                          → reserve credits → forward → settle
//! ```
//!
//! Dependencies point one way: [`crd`] (wire types) is used by everything; the proxy and the
//! controller read compiled lookups, never raw objects; Flowise and the ledger sit behind traits.

pub mod admin;
pub mod check;
pub mod config;
pub mod controller;
pub mod crd;
pub mod flowise;
pub mod identity;
pub mod index;
pub mod ledger;
pub mod metrics;
pub mod ops;
pub mod proxy;
pub mod run;
pub mod secret_file;
pub mod server;
pub mod telemetry;
