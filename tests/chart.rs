//! The Helm chart (`charts/flowgate`) with real Helm — Helm v4's library through
//! `scripts/helm.sh` — against the local API server: lint, install, upgrade, uninstall, the
//! RBAC it grants. The refusals of values.schema.json and of the templates: chart_refusals.rs.
//!
//! A bare API server runs no Pods and never finishes deleting a namespace, so nothing here waits
//! for either: the objects are stored and validated by the API server, and that is what is
//! checked. Each test installs into a namespace of its own; the release is named after it.

mod chart_support;
mod support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use chart_support::{
    CHART, env_of, env_value, exists, get, helm, install, install_monitoring_crd,
    monitoring_objects, pdb, refused, release_json, template, unique_release, upgrade,
};

/// The rules the chart's ClusterRole grants with the tests' default values (the proxy on, with
/// `auth.serviceAccountAudience` set by `chart_support`) — every one of them. Any added rule or
/// verb fails `a_default_install_creates_the_expected_objects`; tests/rbac.rs shows each one is
/// needed, running flowgate under the chart's ServiceAccount. The last three are the proxy's
/// only: Secrets, then the two for ServiceAccount tokens (see
/// `rules_only_the_proxy_needs_are_rendered_only_when_it_needs_them`).
fn expected_cluster_rules() -> Value {
    json!([
        {"apiGroups": ["flowgate.io"], "resources": ["chatflows", "chatflowaccesses", "creditpolicies"],
         "verbs": ["list", "watch"]},
        {"apiGroups": ["flowgate.io"], "resources": ["chatflows"],
         "verbs": ["get", "create", "patch", "delete"]},
        {"apiGroups": ["flowgate.io"], "resources": ["chatflowaccesses"],
         "verbs": ["get", "create", "update", "delete"]},
        {"apiGroups": ["flowgate.io"],
         "resources": ["chatflows/status", "chatflowaccesses/status", "creditpolicies/status"],
         "verbs": ["patch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
         "resourceNames": ["chatflows.flowgate.io", "chatflowaccesses.flowgate.io",
                           "creditpolicies.flowgate.io"],
         "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
        {"nonResourceURLs": ["/.well-known/openid-configuration", "/openid/v1/jwks"], "verbs": ["get"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
    ])
}

#[test]
fn the_chart_lints_clean() {
    let out = helm(&["lint", CHART]).unwrap_or_else(|e| panic!("helm lint fails: {e}"));
    let result: Value = serde_json::from_str(&out).expect("lint prints JSON");
    assert_eq!(result["ok"], true, "{result}");
    let findings: Vec<&Value> = result["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["severity"] != "INFO")
        .collect();
    assert!(findings.is_empty(), "lint warnings or errors: {findings:?}");
}

#[tokio::test]
async fn a_default_install_creates_the_expected_objects() {
    let client = support::client().await;
    let ns = support::fresh_namespace(&client, "chart-default").await;
    let release = install(&ns, &ns, &json!({})).unwrap_or_else(|e| panic!("install: {e}"));
    assert_eq!(release.json["status"], "deployed", "{}", release.json);
    let name = format!("{ns}-flowgate");

    // The CRDs come with the chart (or were there already).
    for crd in [
        "chatflows.flowgate.io",
        "chatflowaccesses.flowgate.io",
        "creditpolicies.flowgate.io",
    ] {
        support::kubectl(&["get", "crd", crd]);
    }

    let deploy = get(Api::<Deployment>::namespaced(client.clone(), &ns), &name).await;
    assert_eq!(
        deploy["metadata"]["annotations"]["meta.helm.sh/release-name"],
        json!(ns)
    );
    // No Ingress unless asked for: the proxy is not exposed outside the cluster by default.
    assert!(!exists(Api::<Ingress>::namespaced(client.clone(), &ns), &name).await);
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert_eq!(
        deploy["spec"]["strategy"]["type"], "Recreate",
        "one SQLite writer at a time"
    );
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], json!(name));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(pod["securityContext"]["fsGroup"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"],
        format!("ghcr.io/flowgate/flowgate:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(container["args"], json!(["run"]));
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(pod["terminationGracePeriodSeconds"], 65);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "ops");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "ops");
    assert_eq!(
        container["ports"],
        json!([
            {"name": "http", "containerPort": 8080, "protocol": "TCP"},
            {"name": "ops", "containerPort": 9090, "protocol": "TCP"},
        ])
    );
    assert_eq!(container["resources"]["requests"]["memory"], "128Mi");
    let env = env_of(container);
    for (var, value) in [
        (
            "FLOWGATE_FLOWISE_URL",
            "http://flowise.flowise.svc.cluster.local:3000",
        ),
        ("FLOWGATE_LISTEN_ADDR", "[::]:8080"),
        ("FLOWGATE_OPS_ADDR", "[::]:9090"),
        (
            "FLOWGATE_LEDGER_URL",
            "sqlite:///var/lib/flowgate/ledger.db",
        ),
        ("FLOWGATE_JWT_LEEWAY", "30s"),
        ("FLOWGATE_USER_CLAIMS", "sub,email"),
        ("FLOWGATE_GROUPS_CLAIM", "groups"),
        ("FLOWGATE_ADMIN_CLAIM", "role=Admin"),
        ("FLOWGATE_SYNC_INTERVAL", "60s"),
        ("FLOWGATE_LOG_FORMAT", "json"),
        // A stopping pod serves on, unready, while endpoints drop it.
        ("FLOWGATE_SHUTDOWN_DELAY", "5s"),
        ("FLOWGATE_BODY_MEMORY", "256Mi"),
        ("FLOWGATE_TOKEN_CACHE_SIZE", "10000"),
        ("FLOWGATE_INVALID_POLICIES", "skip"),
    ] {
        assert_eq!(env_value(&env, var), value, "{var}");
    }
    for unset in [
        "FLOWGATE_FLOWISE_API_KEY_FILE",
        "FLOWGATE_JWT_HS256_SECRET_FILE",
        "FLOWGATE_NO_CONTROLLER",
        "FLOWGATE_NO_PROXY",
        "FLOWGATE_IMPORT_NAMESPACE",
        "FLOWGATE_LEDGER_RETENTION",
        "FLOWGATE_CORS_ORIGINS",
    ] {
        assert!(!env.contains_key(unset), "{unset} is not set by default");
    }
    // The ledger directory is the writable PersistentVolumeClaim.
    let mounts = container["volumeMounts"].as_array().expect("mounts");
    assert!(
        mounts
            .iter()
            .any(|m| m["name"] == "data" && m["mountPath"] == "/var/lib/flowgate")
    );
    let data = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "data")
        .expect("data volume");
    assert_eq!(
        data["persistentVolumeClaim"]["claimName"],
        format!("{name}-ledger")
    );
    // /tmp (SQLite's temporary files) is bounded.
    let tmp = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "tmp")
        .expect("tmp volume");
    assert_eq!(tmp["emptyDir"], json!({"sizeLimit": "1Gi"}));

    let pvc = get(
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns),
        &format!("{name}-ledger"),
    )
    .await;
    assert_eq!(pvc["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "1Gi");
    assert_eq!(
        pvc["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );

    let svc = get(Api::<Service>::namespaced(client.clone(), &ns), &name).await;
    let ports: Vec<(Value, Value, Value)> = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].clone(),
                p["port"].clone(),
                p["targetPort"].clone(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        vec![
            (json!("http"), json!(8080), json!("http")),
            (json!("metrics"), json!(9090), json!("ops")),
        ]
    );
    assert_eq!(svc["spec"]["type"], "ClusterIP");

    assert!(
        exists(
            Api::<ServiceAccount>::namespaced(client.clone(), &ns),
            &name
        )
        .await
    );

    let cluster_role = get(Api::<ClusterRole>::all(client.clone()), &name).await;
    assert_eq!(cluster_role["rules"], expected_cluster_rules());
    let binding = get(Api::<ClusterRoleBinding>::all(client.clone()), &name).await;
    assert_eq!(binding["roleRef"]["name"], json!(name));
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": name, "namespace": ns}])
    );

    let lease_role = format!("{name}-leader-election");
    let role = get(Api::<Role>::namespaced(client.clone(), &ns), &lease_role).await;
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
               {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                "resourceNames": ["flowgate-controller"], "verbs": ["get", "update"]}])
    );
    let role_binding = get(
        Api::<RoleBinding>::namespaced(client.clone(), &ns),
        &lease_role,
    )
    .await;
    assert_eq!(
        role_binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": name, "namespace": ns}])
    );

    let budget = pdb(&ns, &name).expect("PodDisruptionBudget stored");
    assert_eq!(budget["spec"]["maxUnavailable"], 1);

    // Opt-in objects stay out of a default install.
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("list ConfigMaps");
    assert!(configmaps.items.iter().all(|c| {
        !c.metadata
            .name
            .as_deref()
            .unwrap_or("")
            .ends_with("-dashboard")
    }));

    // Dropping the release uninstalls it: the Service's cluster IP and the cluster-wide RBAC
    // are freed (nothing else would free them on this API server).
    drop(release);
    let services = Api::<Service>::namespaced(client.clone(), &ns);
    assert!(
        services
            .get_opt(&name)
            .await
            .expect("get Service")
            .is_none()
    );
    let cluster_roles = Api::<ClusterRole>::all(client.clone());
    assert!(
        cluster_roles
            .get_opt(&name)
            .await
            .expect("get ClusterRole")
            .is_none()
    );
}

#[tokio::test]
async fn three_replicas_on_postgresql_install_without_a_volume_claim() {
    let client = support::client().await;
    let ns = support::fresh_namespace(&client, "chart-postgres").await;
    let values = json!({
        "replicas": 3,
        // Names and keys YAML would read as numbers are rendered as strings.
        "ledger": {"type": "postgres", "postgres": {"existingSecret": "2026", "key": "1",
                   "tls": {"existingSecret": "0123"}}},
    });
    let _release = install(&ns, &ns, &values).unwrap_or_else(|e| panic!("install: {e}"));
    let name = format!("{ns}-flowgate");

    let deploy = get(Api::<Deployment>::namespaced(client.clone(), &ns), &name).await;
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert_eq!(deploy["spec"]["strategy"]["type"], "RollingUpdate");
    let pod = &deploy["spec"]["template"]["spec"];
    let env = env_of(&pod["containers"][0]);
    assert_eq!(
        env["FLOWGATE_LEDGER_URL"]["valueFrom"]["secretKeyRef"],
        json!({"name": "2026", "key": "1"}),
        "the URL (with its password) comes from the Secret"
    );
    let data = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "data")
        .expect("data volume");
    assert!(data.get("emptyDir").is_some(), "{data}");
    // The TLS Secret whole, where the URL's sslrootcert, sslcert and sslkey can name its files.
    let tls = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "postgres-tls")
        .expect("postgres-tls volume");
    assert_eq!(
        tls["secret"],
        json!({"secretName": "0123", "defaultMode": 0o440})
    );
    let mounts = pod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("mounts");
    assert!(
        mounts.contains(
            &json!({"name": "postgres-tls", "mountPath": "/etc/flowgate/postgres-tls",
                                "readOnly": true})
        ),
        "{mounts:?}"
    );

    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("list claims");
    assert!(claims.items.is_empty(), "no PVC with PostgreSQL");
}

#[tokio::test]
async fn three_replicas_on_sqlite_are_refused_with_a_clear_message() {
    let client = support::client().await;
    let ns = support::fresh_namespace(&client, "chart-sqlite3").await;
    let error = refused(&ns, &ns, &json!({"replicas": 3}));
    assert!(
        error.contains("replicas: 3 with the embedded SQLite ledger is refused"),
        "{error}"
    );
    assert!(
        error.contains("ledger.type=postgres") && error.contains("replicas: 1"),
        "says how to fix it: {error}"
    );
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("list");
    assert!(deployments.items.is_empty(), "nothing was created");
    assert!(helm(&["status", &ns, "-n", &ns]).is_err(), "no release");
}

#[tokio::test]
async fn an_upgrade_with_changed_values_updates_the_deployment() {
    let client = support::client().await;
    let ns = support::fresh_namespace(&client, "chart-upgrade").await;
    // Values without auth.tokenClient and ledger.postgres.tls, as `--reuse-values` keeps a
    // release's from before them.
    let old = json!({"auth": {"serviceAccountAudience": "flowgate", "tokenClient": null},
                     "ledger": {"postgres": {"tls": null}}});
    let _release = install(&ns, &ns, &old).unwrap_or_else(|e| panic!("install: {e}"));
    let name = format!("{ns}-flowgate");
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let before = get(deployments.clone(), &name).await;

    let values = json!({
        "flowise": {"url": "http://flowise.ai-tools.svc:3000",
                    "apiKey": {"existingSecret": "flowise-admin"}},
        "auth": {"jwt": {"hs256Secret": {"existingSecret": "flowgate-jwt"}, "issuer": "https://id.example.com"},
                 "tokenEndpointUrl": "https://id.example.com/token",
                 "tokenClient": {"id": "chat-ui", "secret": {"existingSecret": "chat-ui-client"}}},
        "controller": {"importNamespace": "flowise-imported", "syncInterval": "5m"},
        "logFormat": "text",
        "ledger": {"retention": "90d"},
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "proxy": {"bodyMemory": "512Mi", "invalidPolicies": "refuse", "tokenCacheSize": 1000000,
                  "corsOrigins": ["https://chat.example.com", "http://localhost:5173"]},
        "tmpSizeLimit": "2Gi",
    });
    let release = upgrade(&ns, &ns, &values).unwrap_or_else(|e| panic!("upgrade: {e}"));
    assert_eq!(release["revision"], 2);
    assert_eq!(release["status"], "deployed");

    let after = get(deployments, &name).await;
    assert!(
        after["metadata"]["generation"].as_i64() > before["metadata"]["generation"].as_i64(),
        "the pod template changed"
    );
    let container = &after["spec"]["template"]["spec"]["containers"][0];
    let env = env_of(container);
    assert_eq!(
        env_value(&env, "FLOWGATE_FLOWISE_URL"),
        "http://flowise.ai-tools.svc:3000"
    );
    assert_eq!(env_value(&env, "FLOWGATE_LOG_FORMAT"), "text");
    assert_eq!(env_value(&env, "FLOWGATE_SYNC_INTERVAL"), "5m");
    assert_eq!(env_value(&env, "FLOWGATE_LEDGER_RETENTION"), "90d");
    assert_eq!(env_value(&env, "FLOWGATE_BODY_MEMORY"), "512Mi");
    // The largest, which Helm holds as a float (quote alone would write 1e+06).
    assert_eq!(env_value(&env, "FLOWGATE_TOKEN_CACHE_SIZE"), "1000000");
    assert_eq!(env_value(&env, "FLOWGATE_INVALID_POLICIES"), "refuse");
    assert_eq!(
        env_value(&env, "FLOWGATE_CORS_ORIGINS"),
        "https://chat.example.com,http://localhost:5173"
    );
    assert_eq!(
        env_value(&env, "FLOWGATE_IMPORT_NAMESPACE"),
        "flowise-imported"
    );
    assert_eq!(
        env_value(&env, "FLOWGATE_JWT_ISSUER"),
        "https://id.example.com"
    );
    assert_eq!(
        env_value(&env, "FLOWGATE_JWT_HS256_SECRET_FILE"),
        "/etc/flowgate/jwt-hs256/secret"
    );
    assert_eq!(
        env_value(&env, "FLOWGATE_FLOWISE_API_KEY_FILE"),
        "/etc/flowgate/flowise-api-key/apiKey"
    );
    assert_eq!(container["resources"]["limits"]["memory"], "1Gi");
    // The Secrets are mounted as files readable through the pod's fsGroup (0440).
    let volumes = after["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes");
    let tmp = volumes
        .iter()
        .find(|v| v["name"] == "tmp")
        .expect("tmp volume");
    assert_eq!(tmp["emptyDir"]["sizeLimit"], "2Gi");
    let jwt = volumes
        .iter()
        .find(|v| v["name"] == "jwt-hs256")
        .expect("jwt volume");
    assert_eq!(
        jwt["secret"],
        json!({"secretName": "flowgate-jwt", "items": [{"key": "secret", "path": "secret"}],
               "defaultMode": 0o440})
    );
    let api_key = volumes
        .iter()
        .find(|v| v["name"] == "flowise-api-key")
        .expect("Flowise key volume");
    assert_eq!(api_key["secret"]["secretName"], "flowise-admin");
    assert_eq!(env_value(&env, "FLOWGATE_TOKEN_CLIENT_ID"), "chat-ui");
    assert_eq!(
        env_value(&env, "FLOWGATE_TOKEN_CLIENT_SECRET_FILE"),
        "/etc/flowgate/token-client-secret/client-secret"
    );
    let client_secret = volumes
        .iter()
        .find(|v| v["name"] == "token-client-secret")
        .expect("client secret volume");
    assert_eq!(client_secret["secret"]["secretName"], "chat-ui-client");
    assert!(
        container["volumeMounts"]
            .as_array()
            .is_some_and(
                |mounts| mounts.iter().any(|m| m["name"] == "token-client-secret"
                    && m["mountPath"] == "/etc/flowgate/token-client-secret"
                    && m["readOnly"] == true)
            ),
        "{container}"
    );
}

#[tokio::test]
async fn uninstall_removes_what_install_created_and_keeps_the_ledger() {
    let client = support::client().await;
    let ns = support::fresh_namespace(&client, "chart-uninstall").await;
    let flowise_ns = support::fresh_namespace(&client, "chart-uninstall-flowise").await;
    let team_ns = support::fresh_namespace(&client, "chart-uninstall-team").await;
    let values = json!({
        "flowise": {"networkPolicy": {"namespace": flowise_ns, "podLabels": {"app": "flowise"}}},
        "rbac": {"secretNamespaces": [team_ns]},
        "dashboard": {"enabled": true},
    });
    let _release = install(&ns, &ns, &values).unwrap_or_else(|e| panic!("install: {e}"));
    let name = format!("{ns}-flowgate");
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let services = Api::<Service>::namespaced(client.clone(), &ns);
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &ns);
    let cluster_roles = Api::<ClusterRole>::all(client.clone());
    let cluster_bindings = Api::<ClusterRoleBinding>::all(client.clone());
    let roles = Api::<Role>::namespaced(client.clone(), &ns);
    let team_roles = Api::<Role>::namespaced(client.clone(), &team_ns);
    let team_bindings = Api::<RoleBinding>::namespaced(client.clone(), &team_ns);
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), &flowise_ns);
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
    let lease_role = format!("{name}-leader-election");
    let key_role = format!("{name}-chatflow-api-keys");
    let policy = format!("{name}-flowise-ingress");
    let dashboard = format!("{name}-dashboard");
    let claim = format!("{name}-ledger");

    assert!(exists(deployments.clone(), &name).await);
    assert!(exists(team_roles.clone(), &key_role).await);
    assert!(exists(policies.clone(), &policy).await);
    assert!(exists(configmaps.clone(), &dashboard).await);
    assert!(pdb(&ns, &name).is_some());

    let out = helm(&["uninstall", &ns, "-n", &ns]).unwrap_or_else(|e| panic!("uninstall: {e}"));
    assert_eq!(release_json(out)["status"], "uninstalled");

    assert!(!exists(deployments, &name).await, "Deployment");
    assert!(!exists(services, &name).await, "Service");
    assert!(!exists(accounts, &name).await, "ServiceAccount");
    assert!(!exists(cluster_roles, &name).await, "ClusterRole");
    assert!(!exists(cluster_bindings, &name).await, "ClusterRoleBinding");
    assert!(!exists(roles, &lease_role).await, "lease Role");
    assert!(!exists(team_roles, &key_role).await, "Secret Role");
    assert!(
        !exists(team_bindings, &key_role).await,
        "Secret RoleBinding"
    );
    assert!(!exists(policies, &policy).await, "NetworkPolicy");
    assert!(!exists(configmaps, &dashboard).await, "dashboard ConfigMap");
    assert!(pdb(&ns, &name).is_none(), "PodDisruptionBudget");
    assert!(helm(&["status", &ns, "-n", &ns]).is_err(), "release gone");
    // The ledger survives an uninstall on purpose (helm.sh/resource-policy: keep).
    assert!(exists(claims, &claim).await, "the ledger's claim is kept");
}

#[tokio::test]
async fn secret_namespaces_replace_the_cluster_wide_secret_rule_with_roles() {
    let client = support::client().await;
    let ns = support::fresh_namespace(&client, "chart-secrets").await;
    let team_a = support::fresh_namespace(&client, "chart-secrets-a").await;
    let team_b = support::fresh_namespace(&client, "chart-secrets-b").await;
    let values = json!({"rbac": {"secretNamespaces": [team_a, team_b]}});
    let _release = install(&ns, &ns, &values).unwrap_or_else(|e| panic!("install: {e}"));
    let name = format!("{ns}-flowgate");

    let cluster_role = get(Api::<ClusterRole>::all(client.clone()), &name).await;
    let rules = cluster_role["rules"].as_array().expect("rules");
    assert!(
        rules
            .iter()
            .all(|r| !r["resources"].to_string().contains("secrets")),
        "no cluster-wide Secret access: {rules:?}"
    );
    assert_eq!(
        rules.len(),
        expected_cluster_rules().as_array().map_or(0, Vec::len) - 1
    );
    for team in [&team_a, &team_b] {
        let role_name = format!("{name}-chatflow-api-keys");
        let role = get(Api::<Role>::namespaced(client.clone(), team), &role_name).await;
        assert_eq!(
            role["rules"],
            json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}])
        );
        let binding = get(
            Api::<RoleBinding>::namespaced(client.clone(), team),
            &role_name,
        )
        .await;
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": name, "namespace": ns}])
        );
    }
}

#[tokio::test]
async fn the_service_monitor_and_the_dashboard_are_rendered_when_enabled() {
    let client = support::client().await;
    install_monitoring_crd(&client, "ServiceMonitor").await;
    let ns = support::fresh_namespace(&client, "chart-monitoring").await;
    let values = json!({
        "metrics": {"serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}}},
        "dashboard": {"enabled": true, "annotations": {"grafana_folder": "flowgate"}},
    });
    let _release = install(&ns, &ns, &values).unwrap_or_else(|e| panic!("install: {e}"));
    let name = format!("{ns}-flowgate");

    let monitors = monitoring_objects(&client, &ns, "ServiceMonitor");
    let monitor = monitors.get(&name).await.expect("ServiceMonitor stored");
    assert_eq!(
        monitor
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("release")),
        Some(&"prometheus".to_string())
    );
    assert_eq!(
        monitor.data["spec"]["endpoints"],
        json!([{"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}])
    );
    // Prometheus's job is the Service's name, whichever Service carries the metrics port.
    assert_eq!(monitor.data["spec"]["jobLabel"], "flowgate.io/metrics-job");
    let service = get(Api::<Service>::namespaced(client.clone(), &ns), &name).await;
    assert_eq!(
        service["metadata"]["labels"]["flowgate.io/metrics-job"],
        json!(name)
    );
    assert_eq!(
        monitor.data["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        json!(ns)
    );

    let dashboard = get(
        Api::<ConfigMap>::namespaced(client.clone(), &ns),
        &format!("{name}-dashboard"),
    )
    .await;
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(
        dashboard["metadata"]["annotations"]["grafana_folder"],
        "flowgate"
    );
    let json_text = dashboard["data"]["flowgate.json"].as_str().expect("JSON");
    let parsed: Value = serde_json::from_str(json_text).expect("the dashboard is JSON");
    assert_eq!(parsed["uid"], "flowgate-overview");
}

/// Rules only the proxy needs follow what runs: Secrets (`get` cluster-wide, or the Roles of
/// `rbac.secretNamespaces`) only with `proxy.enabled`, and the rules for ServiceAccount tokens
/// (discovery URLs, TokenReview) only with `auth.serviceAccountAudience` set too.
#[test]
fn rules_only_the_proxy_needs_are_rendered_only_when_it_needs_them() {
    let expected = expected_cluster_rules();
    let all = expected.as_array().expect("rules");
    // The rules left out, picked by what they grant, not by place (a rule added before them
    // would shift places).
    const SECRETS: &str = r#""secrets""#;
    const SERVICE_ACCOUNT_TOKENS: [&str; 2] = ["nonResourceURLs", r#""tokenreviews""#];
    let without = |skip: &[&str]| -> Value {
        let kept: Vec<Value> = all
            .iter()
            .filter(|rule| !skip.iter().any(|s| rule.to_string().contains(s)))
            .cloned()
            .collect();
        assert_eq!(
            kept.len(),
            all.len() - skip.len(),
            "one rule each: {skip:?}"
        );
        Value::Array(kept)
    };
    let cases = [
        // chart_support sets auth.serviceAccountAudience when `auth` is not given.
        (json!({}), without(&[]), 0),
        (
            json!({"auth": {"jwt": {"jwksUrl": "https://id.example.com/jwks"}}}),
            without(&SERVICE_ACCOUNT_TOKENS),
            0,
        ),
        (
            json!({"rbac": {"secretNamespaces": ["default"]}}),
            without(&[SECRETS]),
            1,
        ),
        (
            json!({"proxy": {"enabled": false}, "rbac": {"secretNamespaces": ["default"]}}),
            without(&[
                SECRETS,
                SERVICE_ACCOUNT_TOKENS[0],
                SERVICE_ACCOUNT_TOKENS[1],
            ]),
            0,
        ),
    ];
    for (values, rules, key_roles) in cases {
        let docs = template(&unique_release("rbac"), &values);
        let cluster_role = docs
            .iter()
            .find(|d| d["kind"] == "ClusterRole")
            .expect("a ClusterRole");
        assert_eq!(cluster_role["rules"], rules, "{values}");
        for kind in ["Role", "RoleBinding"] {
            let granting_secrets = docs
                .iter()
                .filter(|d| {
                    d["kind"] == kind
                        && d["metadata"]["name"]
                            .as_str()
                            .is_some_and(|n| n.ends_with("-chatflow-api-keys"))
                })
                .count();
            assert_eq!(granting_secrets, key_roles, "{values}: {kind}s for Secrets");
        }
    }
}

#[test]
fn the_rendered_rbac_grants_no_wildcards() {
    for values in [
        json!({}),
        json!({"rbac": {"secretNamespaces": ["default"]}}),
    ] {
        let docs = template(&unique_release("rbac"), &values);
        let roles: Vec<&Value> = docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
            .collect();
        assert!(
            roles.iter().any(|r| r["kind"] == "ClusterRole"),
            "renders a ClusterRole"
        );
        for role in roles {
            let name = &role["metadata"]["name"];
            for rule in role["rules"].as_array().expect("rules") {
                for field in [
                    "apiGroups",
                    "resources",
                    "verbs",
                    "nonResourceURLs",
                    "resourceNames",
                ] {
                    let items = rule[field]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    assert!(
                        items
                            .iter()
                            .all(|v| !v.as_str().unwrap_or("").contains('*')),
                        "{name}: wildcard in {field}: {rule}"
                    );
                }
                let verbs = rule["verbs"].to_string();
                for broad in ["escalate", "bind", "impersonate", "deletecollection"] {
                    assert!(!verbs.contains(broad), "{name}: {broad} in {rule}");
                }
                if rule["resources"].to_string().contains("secrets") {
                    assert_eq!(
                        rule["verbs"],
                        json!(["get"]),
                        "{name}: Secrets are only read by name"
                    );
                }
            }
        }
    }
}
