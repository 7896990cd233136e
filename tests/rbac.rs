//! The chart's RBAC is sufficient and minimal, proven with the chart's own ServiceAccount.
//!
//! Every test installs `charts/flowgate` with real Helm into a fresh namespace, takes a
//! TokenRequest token of the ServiceAccount the chart created, writes a kubeconfig holding only
//! that token (the CA from the admin kubeconfig), and runs flowgate under it against the real
//! Flowise: the `flowgate` binary (`run --no-controller`: proxy, index, admin API) and the
//! controller (see `Stack::start` in tests/rbac_support for why it runs in the test, scoped to
//! the namespace). Whatever flowgate does below, it does with the chart's grants and nothing else.
//!
//! Sufficiency: each rule of the chart is needed by a named test here; remove it (or a verb)
//! and that test fails. Minimality: `expected_cluster_rules()` in tests/chart.rs and the Role
//! check next to it pin the rules exactly, so an added permission fails
//! `a_default_install_creates_the_expected_objects`, and the negative test below shows the
//! token holds nothing beyond the chart's rules.
//!
//! | chart rule (ClusterRole unless noted) | test |
//! | --- | --- |
//! | flowgate.io chatflows, chatflowaccesses, creditpolicies: list, watch | `every_example_reaches_ready_under_the_chart_service_account` (controller and index reflectors) |
//! | flowgate.io chatflows: get | `the_admin_api_grants_revokes_and_deletes_under_the_chart_service_account` (delete reads first); the import's second pass (409, then get) |
//! | flowgate.io chatflows: create | `unclaimed_flowise_chatflows_are_imported_under_the_chart_service_account` |
//! | flowgate.io chatflows: patch | `an_owned_chatflow_is_created_and_cleaned_up_under_the_chart_service_account` (finalizer); the admin API's delete (switch to Retain) |
//! | flowgate.io chatflows: delete | `the_admin_api_grants_revokes_and_deletes_under_the_chart_service_account` |
//! | flowgate.io chatflowaccesses: get, create, update, delete | `the_admin_api_grants_revokes_and_deletes_under_the_chart_service_account` |
//! | flowgate.io */status: patch (server-side apply) | `every_example_reaches_ready_under_the_chart_service_account` (conditions of all three kinds, and `creditsUsed` by the leader) |
//! | events.k8s.io events: create, patch | `credit_alerts_are_recorded_as_events_under_the_chart_service_account` (a second crossing patches the Event's series); controller Events in the examples test |
//! | apiextensions.k8s.io customresourcedefinitions (flowgate's three by name): get | `every_example_reaches_ready_under_the_chart_service_account` (the binary compares them with its own: `flowgate_crd_fields_missing` is 0 for each, and has no series when it cannot read them) |
//! | core secrets: get | `chatflow_api_keys_are_read_from_secrets_under_the_chart_service_account` |
//! | nonResourceURLs /.well-known/openid-configuration, /openid/v1/jwks: get | `service_account_callers_are_verified_under_the_chart_service_account` (needed: without the keys /readyz never opens; but Kubernetes' bootstrap binding `system:service-account-issuer-discovery` grants the same to every ServiceAccount, so on a default cluster only the exact-rules test notices the chart's rule missing) |
//! | authentication.k8s.io tokenreviews: create | `service_account_callers_are_verified_under_the_chart_service_account` (every ServiceAccount token is reviewed before it is accepted; without the rule the caller gets 503) |
//! | Role (release namespace) leases: get, create, update | `the_leader_lease_is_acquired_renewed_and_released_under_the_chart_service_account` |
//! | (nothing else) | `the_chart_service_account_is_refused_what_the_chart_does_not_grant` |

#[allow(dead_code)]
mod chart_support;
mod rbac_support;
mod support;

#[allow(dead_code)]
#[path = "controller/harness.rs"]
mod harness;

#[path = "rbac/examples.rs"]
mod examples;
#[path = "rbac/grants.rs"]
mod grants;
