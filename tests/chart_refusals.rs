//! The values the chart refuses, with real Helm (`scripts/helm.sh`) against the local API
//! server: wrong shapes (values.schema.json) and contradictions (the templates' own checks),
//! each with a message saying what to change.

#[allow(dead_code)]
mod chart_support;
mod support;

use serde_json::json;

use chart_support::refused;

#[tokio::test]
async fn values_of_the_wrong_shape_are_refused_by_the_schema() {
    let client = support::client().await;
    let ns = support::fresh_namespace(&client, "chart-schema").await;
    let cases = [
        (
            json!({"replicas": "three"}),
            "at '/replicas': got string, want integer",
        ),
        (
            json!({"replica": 2}),
            "additional properties 'replica' not allowed",
        ),
        (json!({"ledger": {"type": "mysql"}}), "at '/ledger/type'"),
        (
            json!({"ledger": {"retention": 90}}),
            "at '/ledger/retention': got number, want string",
        ),
        (json!({"logFormat": "xml"}), "at '/logFormat'"),
        (json!({"proxy": {"threads": 0}}), "at '/proxy/threads'"),
        (json!({"proxy": {"threads": "300"}}), "at '/proxy/threads'"),
        (
            json!({"proxy": {"bodyMemory": "256M"}}),
            "at '/proxy/bodyMemory'",
        ),
        (
            json!({"proxy": {"tokenCacheSize": 2000000}}),
            "at '/proxy/tokenCacheSize'",
        ),
        (
            json!({"proxy": {"corsOrigins": ["chat.example.com"]}}),
            "at '/proxy/corsOrigins'",
        ),
        (
            json!({"proxy": {"invalidPolicies": "deny"}}),
            "at '/proxy/invalidPolicies'",
        ),
        (
            json!({"proxy": {"corsOrigins": ["*", "https://chat.example.com"]}}),
            "at '/proxy/corsOrigins'",
        ),
        (
            json!({"proxy": {"corsOrigins": ["https://chat.example.com/app"]}}),
            "at '/proxy/corsOrigins'",
        ),
        (
            json!({"proxy": {"corsOrigins": ["https://chat.example.com:80800"]}}),
            "at '/proxy/corsOrigins'",
        ),
        (
            json!({"auth": {"adminClaim": "role"}}),
            "at '/auth/adminClaim'",
        ),
        (
            json!({"flowise": {"url": "flowise:3000"}}),
            "at '/flowise/url'",
        ),
        (
            json!({"ingress": {"enabled": true, "hosts": [{"host": "a.example.com",
                   "paths": [{"path": "/", "pathType": "Regex"}]}]}}),
            "at '/ingress/hosts/0/paths/0/pathType'",
        ),
        (
            json!({"ingress": {"hosts": [{"host": "a.example.com"}]}}),
            "at '/ingress/hosts/0'",
        ),
        (
            json!({"ingress": {"tls": [{"secretName": 5}]}}),
            "at '/ingress/tls/0/secretName'",
        ),
        // SQLite in WAL mode must never be on a network filesystem or open in two pods.
        (
            json!({"ledger": {"sqlite": {"persistence": {"accessModes": ["ReadWriteMany"]}}}}),
            "at '/ledger/sqlite/persistence/accessModes/0'",
        ),
        (json!({"tmpSizeLimit": "lots"}), "at '/tmpSizeLimit'"),
    ];
    for (values, expected) in cases {
        let error = refused(&ns, &ns, &values);
        assert!(
            error.contains("values don't meet the specifications of the schema"),
            "{values}: {error}"
        );
        assert!(error.contains(expected), "{values}: {error}");
    }
}

#[tokio::test]
async fn contradicting_values_are_refused_with_a_message_saying_what_to_change() {
    let client = support::client().await;
    let ns = support::fresh_namespace(&client, "chart-refuse").await;
    let cases = [
        (
            json!({"ledger": {"type": "postgres"}}),
            "ledger.type=postgres needs the database URL",
        ),
        (
            json!({"ledger": {"postgres": {"existingSecret": "flowgate-ledger"}}}),
            "ledger.postgres is set but ledger.type is sqlite",
        ),
        (
            json!({"ledger": {"type": "postgres",
                              "postgres": {"url": "postgres://flowgate:pw@db:5432/flowgate"}}}),
            "ledger.postgres.url carries a password",
        ),
        (
            json!({"ledger": {"type": "postgres",
                              "postgres": {"url": "postgres://db/flowgate?user=f&password=pw"}}}),
            "ledger.postgres.url carries a password",
        ),
        (
            json!({"controller": {"enabled": false}, "proxy": {"enabled": false}}),
            "nothing would run",
        ),
        (
            json!({"flowise": {"networkPolicy": {"namespace": "flowise"}}}),
            "flowise.networkPolicy.podLabels is empty",
        ),
        (
            json!({"podDisruptionBudget": {"maxUnavailable": null}}),
            "podDisruptionBudget.enabled needs maxUnavailable or minAvailable",
        ),
        (
            json!({"metrics": {"prometheusRule": {"enabled": true}}}),
            "Enable the ServiceMonitor, or set metrics.prometheusRule.selector",
        ),
        (
            json!({"auth": {}}),
            "the proxy needs a way to verify callers' tokens",
        ),
        (
            json!({"serviceAccount": {"create": false}}),
            "serviceAccount.create=false needs serviceAccount.name",
        ),
        (
            json!({"terminationGracePeriodSeconds": 30}),
            "terminationGracePeriodSeconds: 30 is shorter than flowgate's shutdown",
        ),
        (
            json!({"podDisruptionBudget": {"minAvailable": 1}}),
            "would block every node drain",
        ),
        (
            json!({"podDisruptionBudget": {"minAvailable": "1"}}),
            "minAvailable: \"1\" with replicas: 1 would block every node drain",
        ),
        (
            json!({"podDisruptionBudget": {"minAvailable": "100%"}}),
            "minAvailable: \"100%\" of replicas: 1 keeps all 1 pods",
        ),
        (
            json!({"podDisruptionBudget": {"minAvailable": "50%"}}),
            "minAvailable: \"50%\" of replicas: 1 keeps all 1 pods",
        ),
        (
            json!({"podDisruptionBudget": {"maxUnavailable": 0}}),
            "maxUnavailable: 0 would block every node drain",
        ),
        (
            json!({"podDisruptionBudget": {"maxUnavailable": "0%"}}),
            "maxUnavailable: 0% would block every node drain",
        ),
        (
            json!({"ingress": {"enabled": true}}),
            "ingress.enabled needs at least one entry in ingress.hosts",
        ),
        (
            json!({"proxy": {"upstreamTimeout": "30m"}}),
            "proxy.upstreamTimeout: 30m is refused by flowgate (above 0s and at most 14m)",
        ),
        (
            json!({"controller": {"syncInterval": "2s"}}),
            "controller.syncInterval: 2s is refused by flowgate (from 5s to 24h)",
        ),
        (
            json!({"auth": {"serviceAccountAudience": "flowgate", "jwt": {"leeway": "10m"}}}),
            "auth.jwt.leeway: 10m is refused by flowgate (at most 5m)",
        ),
        (
            json!({"logLevel": "info,WARNING"}),
            "logLevel: \"WARNING\" is not a level",
        ),
        (
            json!({"logLevel": "info,flowgate=warning"}),
            "logLevel: \"warning\" is not a level",
        ),
        (
            json!({"ledger": {"retention": "6mo"}}),
            "ledger.retention: 6mo is refused by flowgate: months and years",
        ),
        (
            json!({"ledger": {"retention": "30m"}}),
            "ledger.retention: 30m is refused by flowgate (at least 1h)",
        ),
        (
            json!({"auth": {"serviceAccountAudience": "flowgate"},
                   "proxy": {"tokenCacheSize": 0}}),
            "proxy.tokenCacheSize: 0 with auth.serviceAccountAudience is refused",
        ),
        (
            json!({"auth": {"serviceAccountAudience": "flowgate",
                            "tokenClient": {"id": "chat-ui"}}}),
            "auth.tokenEndpointUrl is empty",
        ),
        (
            json!({"ingress": {"enabled": true, "hosts": [{"host": "a.example.com",
                   "paths": [{"path": "/", "pathType": "Prefix"}]}]},
                   "proxy": {"enabled": false}}),
            "the Ingress would route to a port nothing answers",
        ),
    ];
    for (values, expected) in cases {
        let error = refused(&ns, &ns, &values);
        assert!(error.contains(expected), "{values}: {error}");
    }
}
