//! The chart's network objects with real Helm against the local API server: the NetworkPolicy
//! that lets only flowgate reach Flowise, and the optional Ingress that lets callers outside the
//! cluster reach the proxy (and nothing else).

#[allow(dead_code)]
mod chart_support;
mod support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use kube::api::Api;
use serde_json::json;

use chart_support::{get, install};

#[tokio::test]
async fn the_network_policy_lets_only_flowgate_reach_flowise() {
    let client = support::client().await;
    let ns = support::fresh_namespace(&client, "chart-netpol").await;
    let flowise_ns = support::fresh_namespace(&client, "chart-netpol-flowise").await;
    let ingress_peer = json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}});
    let values = json!({
        "flowise": {"networkPolicy": {
            "namespace": flowise_ns,
            "podLabels": {"app.kubernetes.io/name": "flowise"},
            "allowFrom": [ingress_peer],
        }},
    });
    let _release = install(&ns, &ns, &values).unwrap_or_else(|e| panic!("install: {e}"));
    let policy = get(
        Api::<NetworkPolicy>::namespaced(client.clone(), &flowise_ns),
        &format!("{ns}-flowgate-flowise-ingress"),
    )
    .await;
    assert_eq!(
        policy["spec"],
        json!({
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "flowise"}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                     "podSelector": {"matchLabels": {"app.kubernetes.io/name": "flowgate",
                                                      "app.kubernetes.io/instance": ns}}},
                    ingress_peer,
                ],
                "ports": [{"protocol": "TCP", "port": 3000}],
            }],
        })
    );
    // The flowgate pods carry the labels the policy admits.
    let deploy = get(
        Api::<Deployment>::namespaced(client.clone(), &ns),
        &format!("{ns}-flowgate"),
    )
    .await;
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/name"], "flowgate");
    assert_eq!(labels["app.kubernetes.io/instance"], json!(ns));
}

#[tokio::test]
async fn an_ingress_routes_outside_callers_to_the_proxy_port_only() {
    let client = support::client().await;
    let ns = support::fresh_namespace(&client, "chart-ingress").await;
    let name = format!("{ns}-flowgate");
    let values = json!({"ingress": {
        "enabled": true,
        "className": "nginx",
        "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "50m"},
        "hosts": [
            {"host": "chat-api.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]},
            {"paths": [{"path": "/api/v1/", "pathType": "Prefix"},
                       {"path": "/chat/predict", "pathType": "Exact"}]},
        ],
        "tls": [
            {"secretName": "chat-api-tls", "hosts": ["chat-api.example.com"]},
            {"hosts": ["other.example.com"]},
        ],
    }});
    let _release = install(&ns, &ns, &values).unwrap_or_else(|e| panic!("install: {e}"));
    let ingress = get(Api::<Ingress>::namespaced(client.clone(), &ns), &name).await;
    assert_eq!(
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"],
        "50m"
    );
    let to_proxy = json!({"service": {"name": name, "port": {"name": "http"}}});
    assert_eq!(
        ingress["spec"],
        json!({
            "ingressClassName": "nginx",
            "tls": [
                {"secretName": "chat-api-tls", "hosts": ["chat-api.example.com"]},
                {"hosts": ["other.example.com"]},
            ],
            "rules": [
                {"host": "chat-api.example.com", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": to_proxy},
                ]}},
                {"http": {"paths": [
                    {"path": "/api/v1/", "pathType": "Prefix", "backend": to_proxy},
                    {"path": "/chat/predict", "pathType": "Exact", "backend": to_proxy},
                ]}},
            ],
        })
    );
    // The port it names is the Service's proxy port, not the ops port.
    let service = get(Api::<Service>::namespaced(client.clone(), &ns), &name).await;
    let http = service["spec"]["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == "http"))
        .unwrap_or_else(|| panic!("no port named http: {service}"));
    assert_eq!(http["targetPort"], "http");
    assert_eq!(http["port"], 8080);
}

#[test]
fn a_service_reachable_from_outside_leaves_the_metrics_port_inside() {
    let names = |svc: &serde_json::Value| -> Vec<String> {
        svc["spec"]["ports"]
            .as_array()
            .map(|ports| {
                ports
                    .iter()
                    .map(|p| p["name"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    for (kind, main_ports, metrics_service) in [
        ("ClusterIP", vec!["http", "metrics"], false),
        ("NodePort", vec!["http"], true),
        ("LoadBalancer", vec!["http"], true),
    ] {
        let release = chart_support::unique_release("chart-svc");
        let objects = chart_support::template(&release, &json!({"service": {"type": kind}}));
        let services: Vec<_> = objects.iter().filter(|o| o["kind"] == "Service").collect();
        let main = format!("{release}-flowgate");
        let Some(svc) = services
            .iter()
            .find(|s| s["metadata"]["name"] == main.as_str())
        else {
            panic!("no Service {main}: {services:?}");
        };
        assert_eq!(svc["spec"]["type"], kind);
        assert_eq!(names(svc), main_ports, "{kind}");
        let metrics = services
            .iter()
            .find(|s| s["metadata"]["name"] == format!("{main}-metrics").as_str());
        assert_eq!(metrics.is_some(), metrics_service, "{kind}: {services:?}");
        if let Some(metrics) = metrics {
            assert_eq!(metrics["spec"]["type"], "ClusterIP");
            assert_eq!(names(metrics), ["metrics"]);
            assert_eq!(metrics["spec"]["ports"][0]["targetPort"], "ops");
            // The ServiceMonitor selects it by the same labels, and names the job as before.
            assert_eq!(metrics["spec"]["selector"], svc["spec"]["selector"]);
            assert_eq!(
                metrics["metadata"]["labels"]["flowgate.io/metrics-job"],
                json!(main)
            );
        }
    }
}
