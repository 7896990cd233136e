//! schemathesis (PyPI, scripts/schemathesis.sh) fuzzes a running flowgate from its own
//! `GET /openapi.json`: no answer may be a 5xx, and every answer (status, content type, headers,
//! body) must be one the document describes.
//!
//! The caller is an admin of this test's chatflow only (`role: Admin` in a fresh namespace), not a
//! global admin: the admin API then lists, writes and deletes nothing outside that namespace, so
//! the fuzzer cannot touch other tests' objects (a global admin could delete any Chatflow whose
//! id it learns from a listing). What it writes there — the admin API's own ChatflowAccess
//! `admin-api-support-bot`, the deletion of the Chatflow — goes with the namespace clean-up.

mod support;

use std::time::Instant;

use kube::api::{Api, PostParams};
use serde_json::json;

use flowgate::crd::ChatflowAccess;
use reqwest::Method as M;
use support::admin::call;
use support::gate::{Flowgate, token};
use support::team::Team;

/// Test cases per operation and phase; with a fixed seed the run is repeatable.
const MAX_EXAMPLES: &str = "150";
/// What schemathesis prints when hypothesis trips over CPython 3.11's parser (not a finding).
const TOOL_FLAKE: &str = "AST constructor recursion depth mismatch";
const SEED: &str = "20261122";

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let team = Team::new("api-fuzz").await;
    let admin_email = format!("fuzz-admin@{}.test", team.ns);
    let access: ChatflowAccess = serde_json::from_value(json!({
        "apiVersion": "flowgate.io/v1alpha1", "kind": "ChatflowAccess",
        "metadata": {"name": "fuzz-admins"},
        "spec": {"chatflows": ["support-bot"], "subjects": [{"user": admin_email}], "role": "Admin"}
    }))
    .expect("access literal");
    let accesses = Api::<ChatflowAccess>::namespaced(team.client.clone(), &team.ns);
    accesses
        .create(&PostParams::default(), &access)
        .await
        .expect("admin grant created");
    let gate = Flowgate::start().await;
    let admin = token("fuzz-admin", json!({"email": admin_email}));
    support::eventually(15, "the fuzz admin administers the chatflow", || async {
        let (status, list) = call(&gate, M::GET, "/api/admin/chatflows", Some(&admin), None).await;
        (status == 200 && list.as_array().is_some_and(|l| l.len() == 1)).then_some(())
    })
    .await;

    // The GitOps objects, which the admin API must never modify however it is called.
    let versions = || async {
        let mut out = Vec::new();
        for name in ["support-team", "fuzz-admins"] {
            let object = accesses.get(name).await.expect("GitOps object exists");
            out.push((name, object.metadata.resource_version));
        }
        out
    };
    let before = versions().await;

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/schemathesis.sh");
    let report = tempfile::tempdir().expect("temp dir");
    // Every path parameter that names a chatflow names this test's, so operations get past 404
    // into their real work (grants, removals, predictions, the Chatflow's deletion).
    let config = report.path().join("schemathesis.toml");
    let id = &team.flowise_id;
    std::fs::write(
        &config,
        format!(
            "[parameters]\n\"path.chatflow_id\" = \"{id}\"\n\"path.flowise_id\" = \"{id}\"\n\"path.id\" = \"{id}\"\n"
        ),
    )
    .expect("write config");
    // The document as served, but for the multipart prediction body: Flowise answers 500 for an
    // upload its chatflow does not accept (a MIME type without an extension mapping), which
    // flowgate passes on as a 502, and the fuzzer's uploads are such. Uploads have their own
    // test (tests/uploads.rs).
    let mut document: serde_json::Value = reqwest::get(format!("{}/openapi.json", gate.base))
        .await
        .expect("openapi.json")
        .json()
        .await
        .expect("a JSON document");
    let prediction = &mut document["paths"]["/api/v1/prediction/{id}"]["post"];
    let content = prediction["requestBody"]["content"]
        .as_object_mut()
        .expect("the prediction's body");
    assert!(
        content.remove("multipart/form-data").is_some(),
        "documented"
    );
    let document_file = report.path().join("openapi.json");
    std::fs::write(&document_file, document.to_string()).expect("write the document");
    let args = [
        format!("--config-file={}", config.display()),
        "run".to_string(),
        document_file.display().to_string(),
        format!("--url={}", gate.base),
        format!("--header=Authorization: Bearer {admin}"),
        "--checks=all".into(),
        format!("--max-examples={MAX_EXAMPLES}"),
        format!("--seed={SEED}"),
        "--workers=2".into(),
        "--request-timeout=15".into(),
        "--suppress-health-check=all".into(),
        format!("--report-dir={}", report.path().display()),
    ];
    let workdir = report.path().to_path_buf();
    let started = Instant::now();
    // The gate runs on this test's runtime: wait for schemathesis off it.
    let out = tokio::task::spawn_blocking(move || {
        let run = || {
            std::process::Command::new(&script)
                .args(&args)
                // schemathesis keeps a cache in `.schemathesis/` of its working directory.
                .current_dir(&workdir)
                .output()
                .expect("scripts/schemathesis.sh runs (needs python3 with venv; PyPI on first run)")
        };
        // An error of the tool itself is run again, up to twice: CPython 3.11's AST
        // constructor, called by hypothesis (on schemathesis's worker threads) to describe a
        // lambda, now and then fails with this (cpython#106905, fixed after 3.11; seen in runs of
        // the suite sessions apart, in the coverage phase, once twice in a row). The seed is
        // fixed, so a finding of flowgate's shows again.
        let mut out = run();
        for _ in 0..2 {
            if out.status.success() || !String::from_utf8_lossy(&out.stdout).contains(TOOL_FLAKE) {
                break;
            }
            eprintln!("schemathesis failed inside hypothesis ({TOOL_FLAKE}); running it again");
            out = run();
        }
        out
    })
    .await
    .expect("schemathesis finished");
    let after = versions().await;
    // Clean up before judging: the Flowise chatflow goes also when the run failed.
    team.cleanup().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found answers outside the document (exit {:?}):\n{stdout}\n{stderr}",
        out.status.code()
    );
    // "  722 generated, 722 passed, 28 skipped": the run must have tried a real number of cases.
    let generated: u64 = stdout
        .lines()
        .find_map(|l| l.trim().split_once(" generated")?.0.parse().ok())
        .unwrap_or(0);
    assert!(
        generated >= 500,
        "schemathesis generated only {generated} test cases:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        before, after,
        "the fuzzed admin API modified GitOps objects"
    );
    eprintln!(
        "schemathesis: {generated} test cases passed in {:.0?}",
        started.elapsed()
    );
}
