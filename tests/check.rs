//! `flowgate check`, the binary, on files — and the real API server on the same files, to show
//! that what it reports as errors is what the server lets through: an unknown field dropped
//! without a word, a time zone no one checks until the controller writes status.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

/// Runs `flowgate check ARGS` with `stdin`: success, and stdout.
fn check_input(args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .arg("check")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("flowgate runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin written");
    let out = child.wait_with_output().expect("flowgate ends");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn check(args: &[&str]) -> (bool, String) {
    check_input(args, "")
}

#[test]
fn the_examples_pass() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let (ok, out) = check(&[examples]);
    assert!(ok, "{out}");
    assert_eq!(
        out.trim(),
        "6 files, 6 flowgate objects: 0 errors, 0 warnings"
    );
    // The same as one stream on standard input, as `kustomize build` or `helm template` write.
    let rendered: String = support::examples()
        .iter()
        .map(|(_, doc)| format!("---\n{}\n", serde_json::to_string(doc).expect("JSON")))
        .collect();
    let (ok, out) = check_input(&["-"], &rendered);
    assert!(ok, "{out}");
    assert_eq!(
        out.trim(),
        "1 file, 6 flowgate objects: 0 errors, 0 warnings"
    );
    // Nothing of flowgate's where CI looked is an error too: most likely a wrong path.
    let (ok, out) = check_input(&["-"], "apiVersion: v1\nkind: ConfigMap\n");
    assert!(!ok, "{out}");
    assert!(
        out.contains("error: -: no flowgate resources (flowgate.io/v1alpha1) found"),
        "{out}"
    );
}

#[tokio::test]
async fn what_check_refuses_the_api_server_lets_through() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::fresh_namespace(&client, "check").await;
    // The invalid policy would stay, and every later flowgate would warn of it.
    let _objects = support::NamespaceCleanup(ns.clone());
    let dir = tempfile::tempdir().expect("temp dir");
    let access = dir.path().join("access.yaml");
    // `expiresat` for `expiresAt`: a typo that makes a grant meant to end last for good.
    std::fs::write(
        &access,
        format!(
            "apiVersion: flowgate.io/v1alpha1
kind: ChatflowAccess
metadata: {{name: team, namespace: {ns}}}
spec:
  chatflows: [\"*\"]
  subjects: [{{group: contractors}}]
  expiresat: \"2026-01-01T00:00:00Z\"
"
        ),
    )
    .expect("write");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: flowgate.io/v1alpha1
kind: CreditPolicy
metadata: {{name: monthly, namespace: {ns}}}
spec:
  chatflows: [\"*\"]
  budget: {{credits: 100, period: Monthly, timeZone: Europe/Pariss}}
"
        ),
    )
    .expect("write");

    let dir_arg = dir.path().to_string_lossy().into_owned();
    let (ok, out) = check(&[&dir_arg]);
    assert!(!ok, "exit status 1 on errors: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("error: ")
            && lines[0].ends_with(&format!(
                "access.yaml:1: ChatflowAccess {ns}/team: unknown field .spec.expiresat: \
                 not in the CRD (dropped or refused when applied)"
            )),
        "{out}"
    );
    assert!(
        lines[1].ends_with(&format!(
            "policy.yaml:1: CreditPolicy {ns}/monthly: budget.timeZone: unknown time \
             zone 'Europe/Pariss'"
        )),
        "{out}"
    );
    assert_eq!(
        lines[2],
        "2 files, 2 flowgate objects: 2 errors, 0 warnings"
    );

    // The API server takes both, as a client that does not validate sends them (GitOps tools
    // applying with their own clients): the typo is gone, the time zone is stored.
    for file in [&access, &policy] {
        support::kubectl(&["create", "--validate=false", "-f", &file.to_string_lossy()]);
    }
    let stored: Value = serde_json::from_str(&support::kubectl(&[
        "get",
        "chatflowaccess",
        "team",
        "-n",
        &ns,
        "-o",
        "json",
    ]))
    .expect("JSON");
    assert_eq!(
        stored["spec"]["subjects"],
        serde_json::json!([{"group": "contractors"}])
    );
    assert!(stored["spec"].get("expiresat").is_none(), "{stored}");
    assert!(stored["spec"].get("expiresAt").is_none(), "{stored}");
    let stored: Value = serde_json::from_str(&support::kubectl(&[
        "get",
        "creditpolicy",
        "monthly",
        "-n",
        &ns,
        "-o",
        "json",
    ]))
    .expect("JSON");
    assert_eq!(stored["spec"]["budget"]["timeZone"], "Europe/Pariss");
}
