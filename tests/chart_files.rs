//! The chart's files against the rest of the repository, without a cluster: the CRDs are the
//! generated ones, the versions agree, every `FLOWGATE_*` setting and every value is mapped and
//! documented, and the dashboard asks for flowgate's metrics.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn chart() -> PathBuf {
    repo().join("charts/flowgate")
}

#[test]
fn the_chart_ships_the_generated_crds_through_a_link_not_a_copy() {
    let link = chart().join("crds");
    let target = std::fs::read_link(&link)
        .expect("charts/flowgate/crds is a symbolic link to the generated crds/");
    assert_eq!(target, Path::new("../../crds"));
    let mut through_link: Vec<String> = std::fs::read_dir(&link)
        .expect("the link resolves")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    through_link.sort();
    assert_eq!(
        through_link,
        [
            "chatflowaccesses.flowgate.io.yaml",
            "chatflows.flowgate.io.yaml",
            "creditpolicies.flowgate.io.yaml",
        ]
    );
}

#[test]
fn the_chart_app_version_is_the_crate_version() {
    let chart: Value = serde_saphyr::from_str(&read("charts/flowgate/Chart.yaml")).expect("YAML");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "flowgate");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
}

/// Every `env = "FLOWGATE_…"` in src/config.rs.
fn settings() -> BTreeSet<String> {
    let source = read("src/config.rs");
    let found: BTreeSet<String> = source
        .split("env = \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|name| name.starts_with("FLOWGATE_"))
        .map(String::from)
        .collect();
    assert!(
        found.len() >= 20,
        "src/config.rs reads its settings: {found:?}"
    );
    found
}

/// Settings that make no sense in a cluster, so the chart never sets them.
const NOT_FOR_THE_CHART: [&str; 2] = ["FLOWGATE_RESOURCES_DIR", "FLOWGATE_RESOURCES_RECURSIVE"];

#[test]
fn every_flowgate_setting_is_mapped_by_the_chart_and_documented() {
    let deployment = read("charts/flowgate/templates/deployment.yaml");
    let docs = read("docs/install.md");
    for setting in settings() {
        assert!(
            docs.contains(&format!("`{setting}`")),
            "docs/install.md does not document {setting}"
        );
        if NOT_FOR_THE_CHART.contains(&setting.as_str()) {
            continue;
        }
        assert!(
            deployment.contains(&format!("name: {setting}\n")),
            "charts/flowgate/templates/deployment.yaml does not set {setting}: add a value for it"
        );
    }
}

/// The documented paths of a values tree (`a.b.c`), walked along the schema: where the schema
/// stops describing properties (free-form maps such as `resources`), the path stops too.
fn value_paths(prefix: &str, value: &Value, schema: &Value, out: &mut Vec<String>) {
    match (value.as_object(), schema["properties"].as_object()) {
        (Some(map), Some(properties)) if !map.is_empty() => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                let child_schema = properties
                    .get(key)
                    .unwrap_or_else(|| panic!("values.schema.json does not describe {path}"));
                value_paths(&path, child, child_schema, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

#[test]
fn every_value_is_known_to_the_schema_and_documented() {
    let values: Value =
        serde_saphyr::from_str(&read("charts/flowgate/values.yaml")).expect("values.yaml is YAML");
    let schema: Value = serde_json::from_str(&read("charts/flowgate/values.schema.json"))
        .expect("values.schema.json is JSON");
    let docs = read("docs/install.md");
    let mut paths = Vec::new();
    value_paths("", &values, &schema, &mut paths);
    assert!(paths.len() > 40, "{paths:?}");
    for path in paths {
        assert!(
            docs.contains(&format!("`{path}`")),
            "docs/install.md has no row for `{path}`"
        );
    }
}

#[test]
fn the_dashboard_charts_flowgates_own_metrics() {
    let dashboard: Value = serde_json::from_str(&read("charts/flowgate/dashboards/flowgate.json"))
        .expect("the dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("expr").to_string())
        .collect();
    for metric in [
        "flowgate_proxy_requests_total",
        "flowgate_proxy_request_duration_seconds_bucket",
        "flowgate_proxy_decisions_total",
        "flowgate_upstream_errors_total",
        "flowgate_stream_hangups_total",
        "flowgate_body_buffer_bytes",
        "flowgate_credits_charged_total",
        "flowgate_credits_adjusted_total",
        "flowgate_ledger_operation_duration_seconds_bucket",
        "flowgate_ledger_pruned_rows_total",
        "flowgate_reconciles_total",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no panel shows {metric}"
        );
    }
    let ids: BTreeSet<i64> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .map(|p| p["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(
        ids.len(),
        dashboard["panels"].as_array().map_or(0, Vec::len),
        "panel ids are unique"
    );
}
