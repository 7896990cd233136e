use serde_json::json;

use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("directory");
    }
    std::fs::write(&path, text).expect("write");
    path
}

/// `Severity line object: message` of each finding, the line without the directory.
fn lines(report: &Report, dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    report
        .findings
        .iter()
        .map(|f| {
            let object = f.object.as_deref().unwrap_or("-");
            let at = f.at.strip_prefix(&prefix).unwrap_or(&f.at);
            let message = f.message.replace(&prefix, "");
            format!("{:?} {at} {object}: {message}", f.severity)
        })
        .collect()
}

/// `found` is `expected`, line for line in any order, each expected line the start of one found.
fn same_findings(found: &[String], expected: &[impl AsRef<str>]) {
    for want in expected.iter().map(AsRef::as_ref) {
        assert!(
            found.iter().any(|f| f.starts_with(want)),
            "{want}\nnot in {found:#?}"
        );
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn unknown_fields_are_found_where_the_schema_lists_properties() {
    let schema = json!({"properties": {
        "spec": {"properties": {
            "subjects": {"items": {"properties": {"user": {}, "group": {}}}},
            "labels": {"additionalProperties": {"type": "string"}},
            "flowData": {"x-kubernetes-preserve-unknown-fields": true},
            "free": {"type": "object"},
        }},
    }});
    let doc = json!({
        "apiVersion": "flowgate.io/v1alpha1", "kind": "X",
        "metadata": {"name": "n", "labels": {"any": "thing"}, "namesapce": "typo"},
        "spec": {
            "subjects": [{"user": "a"}, {"usr": "b"}],
            "labels": {"any": "thing"},
            "flowData": {"nodes": [{"whatever": 1}]},
            "free": {"any": {"thing": 1}},
            "extra": 1,
        },
        "stray": true,
    });
    let mut unknown = Vec::new();
    unknown_fields(&doc, &schema, "", &mut unknown);
    assert_eq!(
        unknown,
        [
            ".metadata.namesapce",
            ".spec.extra",
            ".spec.subjects[1].usr",
            ".stray"
        ]
    );
}

#[test]
fn templates_and_documents_naming_the_api_are_told_apart() {
    assert!(is_template("{{- if .Values.x }}\nkind: A\n"));
    assert!(is_template("metadata:\n  name: {{.Values.name}}\n"));
    assert!(names_flowgate_api("apiVersion: flowgate.io/v1alpha1\n"));
    assert!(names_flowgate_api(
        "--- {apiVersion: flowgate.io/v1alpha1, kind: [\n"
    ));
    assert!(!names_flowgate_api(
        "metadata:\n  labels: {flowgate.io/managed-by: x}\n"
    ));
    assert!(is_template("metadata:\n  name: {{ include \"x\" . }}\n"));
    assert!(!is_template("template: \"Answer {{question}}\"\nkind: [\n"));
    // A Flowise variable with spaces, as examples/chatflow-faq-bot.yaml writes one, in a
    // document that does not parse: an error, not a template.
    assert!(!is_template("message: 'Echo: {{ question }}'\n edges: [\n"));
    assert!(is_template("{{ end }}\n"));
    assert!(is_template("name: {{ $name }}\n"));
    assert!(is_template("name: {{ $.Values.name }}\n"));
    // Flowise's variables in a node's text, in a document that does not parse: an error.
    assert!(!is_template("reply: 'Hi {{$vars.company}}'\n\tedges: [\n"));
    assert!(!is_template("reply: '{{ $flow.state.step }}'\nedges: [\n"));
    assert!(!is_template("reply: '{{$iteration}}'\nedges: [\n"));
}

#[test]
fn the_examples_are_clean() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let report = check(std::slice::from_ref(&examples));
    assert_eq!(lines(&report, &examples), Vec::<String>::new());
    assert_eq!(report.objects, 6);
}

#[test]
fn each_kind_of_mistake_is_reported_where_it_is() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "team/access.yaml",
        "# team a
---
apiVersion: flowgate.io/v1alpha1
kind: ChatflowAccess
metadata: {name: team, namespace: a, namesapce: b}
spec:
  chatflows: [bot, missing-bot]
  subjects: [{user: alice, group: g}]
  rateLimit: {requests: 5, per: Minute, burst: 3}
status: {anything: 1}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: not-ours}
spec: {anything: 1}
---
apiVersion: flowgate.io/v1alpha1
kind: Chatflow
metadata: {name: bot, namespace: a}
spec: {flowiseId: 3F1C2A7E-0000-4000-8000-000000000000}
",
    );
    write(
        dir.path(),
        "team/more/policies.yml",
        "apiVersion: flowgate.io/v1alpha1
kind: Chatflow
metadata: {name: twin, namespace: a}
spec: {flowiseId: 3f1c2a7e-0000-4000-8000-000000000000}
---
apiVersion: flowgate.io/v1alpha1
kind: CreditPolicy
metadata: {name: monthly, namespace: a}
spec:
  chatflows: [\"*\"]
  budget: {credits: 10, period: Monthly, timeZone: Mars/Olympus}
---
apiVersion: flowgate.io/v1alpha1
kind: CreditPolicy
metadata: {name: monthly, namespace: a}
spec: {chatflows: [bot], budget: {credits: ten}}
---
apiVersion: flowgate.io/v1
kind: Chatflow
metadata: {name: old}
---
apiVersion: flowgate.io/v1alpha1
kind: ChatFlow
metadata: {name: typo}
---
apiVersion: flowgate/v1alpha1
kind: Chatflow
metadata: {name: group-typo}
",
    );
    write(
        dir.path(),
        "overlays/one.yaml",
        "apiVersion: flowgate.io/v1alpha1
kind: Chatflow
metadata: {name: faq}
spec: {flowiseName: FAQ}
---
apiVersion: flowgate.io/v1alpha1
kind: Chatflow
metadata: {name: drawn, namespace: c}
spec: {definition: {flowData: {nodes: []}}}
",
    );
    write(
        dir.path(),
        "overlays/two.yaml",
        "apiVersion: flowgate.io/v1alpha1
kind: Chatflow
metadata: {name: faq}
spec: {flowiseName: FAQ}
---
apiVersion: flowgate.io/v1alpha1
kind: Chatflow
metadata: {name: faq-again, namespace: b}
spec: {flowiseName: FAQ}
",
    );
    write(
        dir.path(),
        "broken.yaml",
        "apiVersion: flowgate.io/v1alpha1\nkind: [Chatflow\n",
    );
    write(
        dir.path(),
        "chart/templates/deployment.yaml",
        "{{- if .Values.x }}\nkind: Deployment\n{{- end }}\n",
    );
    write(
        dir.path(),
        "chart/templates/policy.yaml",
        "{{- if .Values.x }}\napiVersion: flowgate.io/v1alpha1\n{{- end }}\n",
    );
    write(dir.path(), ".git/config.yaml", "flowgate.io: [\n");
    write(dir.path(), "notes.txt", "flowgate.io: [\n");
    let report = check(&[dir.path().to_path_buf()]);
    assert_eq!(report.files, 7);
    assert_eq!(report.objects, 11);
    let shared = "Flowise chatflow 3f1c2a7e-0000-4000-8000-000000000000 is also claimed by";
    let faq = "Flowise chatflow named 'FAQ' is also claimed by";
    let expected = [
        "Error broken.yaml:1 -: not YAML: ",
        "Warning chart/templates/policy.yaml:1 -: a template, not YAML: ",
        "Error team/access.yaml:3 ChatflowAccess a/team: unknown field .metadata.namesapce: ",
        "Error team/access.yaml:3 ChatflowAccess a/team: unknown field .spec.rateLimit.burst: ",
        "Error team/access.yaml:3 ChatflowAccess a/team: subjects[0] must set exactly one of",
        "Error team/more/policies.yml:6 CreditPolicy a/monthly: budget.timeZone: unknown time zone 'Mars/Olympus'",
        "Error team/more/policies.yml:13 CreditPolicy a/monthly: .spec.budget.period: required (refused when applied)",
        "Error team/more/policies.yml:13 CreditPolicy a/monthly: .spec.budget.credits: must be of type integer (is \"ten\") (refused when applied)",
        "Error team/more/policies.yml:13 CreditPolicy a/monthly: also defined at team/more/policies.yml:6",
        "Error team/more/policies.yml:18 -: apiVersion flowgate.io/v1: flowgate serves flowgate.io/v1alpha1",
        "Error team/more/policies.yml:22 -: kind 'ChatFlow' is not a flowgate resource",
        "Error team/more/policies.yml:26 -: apiVersion flowgate/v1alpha1: flowgate's is flowgate.io/v1alpha1",
        "Warning overlays/two.yaml:1 Chatflow faq: also defined at overlays/one.yaml:1, without a namespace (fine if they are applied to different namespaces)",
        &format!("Error team/access.yaml:17 Chatflow a/bot: {shared} Chatflow a/twin"),
        &format!("Error team/more/policies.yml:1 Chatflow a/twin: {shared} Chatflow a/bot"),
        &format!("Error overlays/one.yaml:1 Chatflow faq: {faq} Chatflow b/faq-again"),
        "Error overlays/one.yaml:6 Chatflow c/drawn: definition.flowData must be an object with an array 'edges'",
        &format!("Error overlays/two.yaml:6 Chatflow b/faq-again: {faq} Chatflow faq"),
        "Warning team/access.yaml:3 ChatflowAccess a/team: names Chatflows these files do not define in its namespace: missing-bot",
    ];
    same_findings(&lines(&report, dir.path()), &expected);
}

#[test]
fn what_the_schema_refuses_is_an_error_as_kubectl_apply_would_make_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "bounds.yaml",
        "apiVersion: flowgate.io/v1alpha1
kind: ChatflowAccess
metadata: {name: Team_A, namespace: a}
spec: {chatflows: [Support_Bot], subjects: []}
---
apiVersion: flowgate.io/v1alpha1
kind: Chatflow
metadata: {name: bot, namespace: a}
spec: {flowiseId: abc}
---
apiVersion: flowgate.io/v1alpha1
kind: CreditPolicy
metadata: {name: daily, namespace: a}
spec:
  chatflows: [\"*\"]
  budget: {credits: 10, period: Daily}
  alertAtPercent: [150]
---
apiVersion: flowgate.io/v1alpha1
kind: Chatflow
metadata: {namespace: a}
spec: {flowiseName: FAQ}
---
# `kubectl create` makes two objects of these.
apiVersion: flowgate.io/v1alpha1
kind: ChatflowAccess
metadata: {generateName: gen-, namespace: a}
spec: {chatflows: [\"*\"], subjects: [{user: u}]}
---
apiVersion: flowgate.io/v1alpha1
kind: ChatflowAccess
metadata: {generateName: gen-, namespace: a}
spec: {chatflows: [\"*\"], subjects: [{user: v}]}
---
# What the API server takes: a name part longer than a DNS label, a whole float.
apiVersion: flowgate.io/v1alpha1
kind: CreditPolicy
metadata: {name: marketing-and-sales-monthly-budget-for-support-chatflows-eu-region, namespace: a}
spec: {chatflows: [\"*\"], budget: {credits: 5.0, period: Daily}}
",
    );
    let report = check(&[dir.path().to_path_buf()]);
    let found = lines(&report, dir.path());
    let expected = [
        "Error bounds.yaml:1 ChatflowAccess a/Team_A: .metadata.name: \"Team_A\" is not a DNS subdomain",
        "Error bounds.yaml:1 ChatflowAccess a/Team_A: .spec.chatflows[0]: \"Support_Bot\" does not match ^",
        "Error bounds.yaml:1 ChatflowAccess a/Team_A: .spec.subjects: must have at least 1 item (has 0) (refused when applied)",
        "Error bounds.yaml:6 Chatflow a/bot: .spec.flowiseId: \"abc\" does not match ^[0-9a-fA-F]{8}-",
        "Error bounds.yaml:11 CreditPolicy a/daily: .spec.alertAtPercent[0]: must be at most 100 (is 150) (refused when applied)",
        "Error bounds.yaml:19 Chatflow a/: .metadata.name: required (refused when applied)",
        "Warning bounds.yaml:25 -: ChatflowAccess with generateName: only `kubectl create` names it",
        "Warning bounds.yaml:30 -: ChatflowAccess with generateName: only `kubectl create` names it",
    ];
    same_findings(&found, &expected);
    assert_eq!(report.errors(), expected.len() - 2);
}

#[test]
fn a_file_named_twice_is_checked_once_and_a_good_copy_stands_in_for_a_broken_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write(
        dir.path(),
        "flows.yaml",
        "apiVersion: flowgate.io/v1alpha1
kind: Chatflow
metadata: {name: x, namespace: a}
spec: {flowiseId: 5}
---
apiVersion: flowgate.io/v1alpha1
kind: Chatflow
metadata: {name: x, namespace: a}
spec: {flowiseId: 3f1c2a7e-0000-4000-8000-000000000000}
---
apiVersion: flowgate.io/v1alpha1
kind: Chatflow
metadata: {name: twin, namespace: a}
spec: {flowiseId: 3f1c2a7e-0000-4000-8000-000000000000}
---
apiVersion: flowgate.io/v1alpha1
kind: ChatflowAccess
metadata: {name: team, namespace: a}
spec: {chatflows: [x, twin], subjects: [{group: g}]}
",
    );
    let link = dir.path().join("link.yaml");
    std::os::unix::fs::symlink(&file, &link).expect("symlink");
    let report = check(&[dir.path().to_path_buf(), file, link]);
    assert_eq!(report.files, 1, "one file, however it is named");
    let found = lines(&report, dir.path());
    let shared = "Flowise chatflow 3f1c2a7e-0000-4000-8000-000000000000 is also claimed by";
    let expected = [
        "Error flows.yaml:1 Chatflow a/x: .spec.flowiseId: must be of type string (is 5) \
         (refused when applied)"
            .to_string(),
        "Error flows.yaml:6 Chatflow a/x: also defined at flows.yaml:1".into(),
        format!(
            "Error flows.yaml:6 Chatflow a/x: {shared} Chatflow a/twin: none of them is served \
             until only one claims it"
        ),
        format!(
            "Error flows.yaml:11 Chatflow a/twin: {shared} Chatflow a/x: none of them is served \
             until only one claims it"
        ),
    ];
    // The second x is the one checked across objects: its claim counts, and team finds it.
    assert_eq!(found, expected);
}

#[test]
fn the_items_of_a_list_are_checked_as_documents() {
    // As `kubectl get chatflowaccesses -o yaml` writes them, and `kubectl apply` unpacks them.
    let dir = tempfile::tempdir().expect("dir");
    write(
        dir.path(),
        "list.yaml",
        "apiVersion: v1\nkind: List\nitems:\n\
         - apiVersion: flowgate.io/v1alpha1\n  kind: ChatflowAccess\n  metadata: {name: good, namespace: a}\n  \
           spec: {chatflows: [x], subjects: [{user: u}]}\n\
         - apiVersion: flowgate.io/v1alpha1\n  kind: ChatflowAccess\n  metadata: {name: bad, namespace: a}\n  \
           spec: {chatflows: [x], subjects: [{usr: u}]}\n",
    );
    let report = check(&[dir.path().to_path_buf()]);
    assert_eq!(report.objects, 2, "{:?}", lines(&report, dir.path()));
    let found = lines(&report, dir.path());
    assert!(
        found.iter().any(
            |l| l.starts_with("Error list.yaml:1 (item 2) ChatflowAccess a/bad: unknown field")
        ),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .all(|l| !(l.starts_with("Error") && l.contains("a/good"))),
        "the good item has no error: {found:?}"
    );
}

#[test]
fn null_fields_get_their_defaults_and_a_kind_without_its_api_version_is_an_error() {
    let dir = tempfile::tempdir().expect("dir");
    // Every child of `cost` and `alertAtPercent` commented out: the API server drops the nulls
    // and defaults them.
    write(
        dir.path(),
        "policy.yaml",
        "apiVersion: flowgate.io/v1alpha1\nkind: CreditPolicy\nmetadata: {name: monthly, namespace: a}\n\
         spec:\n  chatflows: [\"*\"]\n  budget: {credits: 100, period: Monthly}\n  cost:\n    \
         # perPrediction: 2\n  alertAtPercent:\n    # - 80\n",
    );
    write(
        dir.path(),
        "access.yaml",
        "kind: ChatflowAccess\nmetadata: {name: team, namespace: a}\n\
         spec: {chatflows: [\"*\"], subjects: [{group: g}]}\n",
    );
    let report = check(&[dir.path().to_path_buf()]);
    let found = lines(&report, dir.path());
    assert_eq!(
        found,
        ["Error access.yaml:1 -: no apiVersion: flowgate's is flowgate.io/v1alpha1"],
        "{found:?}"
    );
}

#[test]
fn no_flowgate_resource_at_all_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\n",
    );
    let report = check(&[dir.path().to_path_buf()]);
    assert_eq!((report.files, report.objects, report.errors()), (1, 0, 1));
    let found = lines(&report, dir.path());
    assert!(found[0].ends_with("no flowgate resources (flowgate.io/v1alpha1) found"));
    // A template that mentions flowgate is not an object; a label is not even that.
    write(
        dir.path(),
        "templates/policy.yaml",
        "apiVersion: flowgate.io/v1alpha1\nkind: CreditPolicy\nmetadata: {name: {{.Values.x}}}\n",
    );
    write(
        dir.path(),
        "broken-other.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {labels: {flowgate.io/managed-by: x}\n",
    );
    let report = check(&[dir.path().to_path_buf()]);
    assert_eq!((report.files, report.objects, report.errors()), (3, 0, 1));
    let found = lines(&report, dir.path());
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].starts_with("Warning templates/policy.yaml:1 -: a template"));
    assert!(
        found[1].ends_with(
            "no flowgate resources (flowgate.io/v1alpha1) found, only templates that mention \
             them: check what they render"
        ),
        "{found:#?}"
    );
}

#[test]
fn a_link_out_of_a_checked_directory_is_a_warning_as_run_does_not_read_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let access = "apiVersion: flowgate.io/v1alpha1\nkind: ChatflowAccess\n\
                  metadata: {name: team, namespace: a}\n\
                  spec: {chatflows: ['*'], subjects: [{group: g}]}\n";
    write(dir.path(), "teams/a/access.yaml", access);
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let stray = write(elsewhere.path(), "stray.yaml", access);
    std::os::unix::fs::symlink(&stray, dir.path().join("stray.yaml")).expect("symlink");
    std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("more")).expect("symlink");
    let report = check(&[dir.path().to_path_buf()]);
    // Read, the stray copy would have been a second definition of a/team.
    assert_eq!((report.files, report.objects, report.errors()), (1, 1, 0));
    let found = lines(&report, dir.path());
    assert_eq!(found.len(), 2, "{found:#?}");
    for (line, link) in found.iter().zip(["more", "stray.yaml"]) {
        assert!(
            line.starts_with(&format!("Warning {link} -: a link that leads out of")),
            "{found:#?}"
        );
    }
}

#[test]
fn two_copies_without_a_namespace_in_one_file_are_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "policies.yaml",
        "apiVersion: flowgate.io/v1alpha1
kind: CreditPolicy
metadata: {name: monthly}
spec: {chatflows: [\"*\"], budget: {credits: 10, period: Monthly}}
---
apiVersion: flowgate.io/v1alpha1
kind: CreditPolicy
metadata: {name: monthly}
spec: {chatflows: [\"*\"], budget: {credits: 5, period: Weekly}}
",
    );
    let report = check(&[dir.path().to_path_buf()]);
    let found = lines(&report, dir.path());
    assert_eq!(
        found,
        [
            "Error policies.yaml:6 CreditPolicy monthly: also defined at policies.yaml:1, in the same \
          file: applied together, one replaces the other"
        ],
        "{found:#?}"
    );
    assert_eq!(report.errors(), 1);
}

#[test]
fn a_file_that_is_not_text_is_skipped_unless_it_names_flowgate() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A git-crypt'ed secret beside the manifests.
    std::fs::write(
        dir.path().join("secret.yaml"),
        b"\x00GITCRYPT\x00\xff\xfe\x80",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("latin1.yaml"),
        b"apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\nmetadata: {name: caf\xe9}\n",
    )
    .expect("write");
    write(
        dir.path(),
        "bot.yaml",
        "apiVersion: flowgate.io/v1alpha1
kind: Chatflow
metadata: {name: bot, namespace: a}
spec: {flowiseName: Bot}
",
    );
    // `text` encoded after the byte-order mark `bom`, written as `name`.
    let marked = |name: &str, bom: &[u8], text: Vec<u8>| {
        std::fs::write(dir.path().join(name), [bom, &text].concat()).expect("write");
    };
    let utf16 = |text: &str, bytes: fn(u16) -> [u8; 2]| -> Vec<u8> {
        text.encode_utf16().flat_map(bytes).collect()
    };
    // What Windows PowerShell's `>` writes: UTF-16, its mark first.
    marked(
        "utf16.yaml",
        &[0xff, 0xfe],
        utf16("kind: CreditPolicy\n", u16::to_le_bytes),
    );
    // Another's UTF-16 file (big-endian here) is not ours to judge.
    marked(
        "other16.yaml",
        &[0xfe, 0xff],
        utf16("kind: ConfigMap\n", u16::to_be_bytes),
    );
    // UTF-32, whose little-endian mark begins as UTF-16's.
    let utf32 = "kind: Chatflow\n"
        .chars()
        .flat_map(|c| u32::from(c).to_le_bytes());
    marked("utf32.yaml", &[0xff, 0xfe, 0, 0], utf32.collect());
    let report = check(&[dir.path().to_path_buf()]);
    let found = lines(&report, dir.path());
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(
        found[0].starts_with("Error latin1.yaml -: invalid utf-8"),
        "{found:#?}"
    );
    for (i, file) in [(1, "utf16.yaml"), (2, "utf32.yaml")] {
        assert!(
            found[i].starts_with(&format!(
                "Error {file} -: UTF-16 or UTF-32 text: save it as UTF-8"
            )),
            "{found:#?}"
        );
    }
    assert_eq!(report.objects, 1);
}

#[test]
fn a_broken_document_of_another_kind_beside_ours_is_a_warning() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "team.yaml",
        "apiVersion: flowgate.io/v1alpha1
kind: ChatflowAccess
metadata: {name: team, namespace: a}
spec: {chatflows: [\"*\"], subjects: [{user: u}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: notes
data: {a: b}
",
    );
    // Alone, another kind's broken document is none of flowgate's business.
    write(
        dir.path(),
        "other/config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [\n# flowgate\n",
    );
    let report = check(&[dir.path().to_path_buf()]);
    let found = lines(&report, dir.path());
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("Warning team.yaml:6 -: not YAML, in a file with flowgate objects"),
        "{found:#?}"
    );
    assert_eq!(report.errors(), 0);
}

/// A definition creates its chatflow under a name Flowise then holds: a second definition of
/// that name (another Chatflow's, here in another namespace, as Flowise's names are global) is
/// refused by the controller, and a Chatflow adopting that name shares the first's chatflow.
#[test]
fn a_definition_claims_its_name_in_flowise() {
    let dir = tempfile::tempdir().expect("temp dir");
    let flow = "flowData: {nodes: [], edges: []}";
    write(
        dir.path(),
        "bots.yaml",
        &format!(
            "apiVersion: flowgate.io/v1alpha1
kind: Chatflow
metadata: {{name: faq, namespace: a}}
spec: {{definition: {{name: FAQ Bot, {flow}}}}}
---
apiVersion: flowgate.io/v1alpha1
kind: Chatflow
metadata: {{name: faq-v2, namespace: b}}
spec: {{definition: {{name: FAQ Bot, {flow}}}}}
---
apiVersion: flowgate.io/v1alpha1
kind: Chatflow
metadata: {{name: helper, namespace: a}}
spec: {{definition: {{{flow}}}}}
---
apiVersion: flowgate.io/v1alpha1
kind: Chatflow
metadata: {{name: adopter, namespace: c}}
spec: {{flowiseName: helper}}
---
apiVersion: flowgate.io/v1alpha1
kind: Chatflow
metadata: {{name: other, namespace: a}}
spec: {{definition: {{name: Other, {flow}}}}}
"
        ),
    );
    let report = check(&[dir.path().to_path_buf()]);
    let found = lines(&report, dir.path());
    let faq = "Flowise chatflow named 'FAQ Bot' is also claimed by";
    let helper = "Flowise chatflow named 'helper' is also claimed by";
    let expected = [
        format!("Error bots.yaml:1 Chatflow a/faq: {faq} Chatflow b/faq-v2"),
        format!("Error bots.yaml:6 Chatflow b/faq-v2: {faq} Chatflow a/faq"),
        format!("Error bots.yaml:11 Chatflow a/helper: {helper} Chatflow c/adopter"),
        format!("Error bots.yaml:16 Chatflow c/adopter: {helper} Chatflow a/helper"),
    ];
    same_findings(&found, &expected);
}

/// A Helm template whose every `{{ }}` is quoted parses as YAML; it is still a template, and
/// warned about as one instead of being checked as what it says before rendering.
#[test]
fn a_template_that_parses_is_still_a_template() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "chart/templates/access.yaml",
        "apiVersion: flowgate.io/v1alpha1
kind: ChatflowAccess
metadata: {name: team, namespace: \"{{ .Release.Namespace }}\"}
spec: {chatflows: [\"*\"], subjects: [{user: u}]}
",
    );
    let report = check(&[dir.path().to_path_buf()]);
    let found = lines(&report, dir.path());
    assert_eq!(report.errors(), 1, "{found:#?}");
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].starts_with("Warning chart/templates/access.yaml:1 -: a template: check what"),
        "{found:#?}"
    );
    assert!(
        found[1].contains("only templates that mention them"),
        "{found:#?}"
    );
    // A flow definition's own `{{.}}` is a prompt's, checked as the rest of the object.
    write(
        dir.path(),
        "chart/templates/access.yaml",
        "apiVersion: flowgate.io/v1alpha1
kind: Chatflow
metadata: {name: bot, namespace: a}
spec:
  definition:
    flowData: {nodes: [{id: node1, data: {prompt: \"{{.}} and {{ .x }}\"}}], edges: []}
  flowiseIdd: typo
",
    );
    let report = check(&[dir.path().to_path_buf()]);
    let found = lines(&report, dir.path());
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].contains("unknown field .spec.flowiseIdd"),
        "{found:#?}"
    );
}
