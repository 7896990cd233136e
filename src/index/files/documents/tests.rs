use serde_json::Value;

use super::*;

#[test]
fn documents_start_where_their_first_line_is_and_empty_ones_are_skipped() {
    let text = "\u{feff}# a header\n---\n# only a comment\n---\n\napiVersion: v1\nkind: A\n--- # b\nkind: B\n---\n---\n";
    let docs = documents(text);
    let found: Vec<(usize, &str)> = docs.iter().map(|d| (d.line, d.text.trim())).collect();
    assert_eq!(
        found,
        [
            (6, "---\n\napiVersion: v1\nkind: A"),
            (9, "--- # b\nkind: B")
        ]
    );
    // Many documents: the lines before each are counted once, not again from the start.
    let many = format!("{}kind: A\n", "---\n".repeat(100_000));
    let found: Vec<usize> = documents(&many).iter().map(|d| d.line).collect();
    assert_eq!(found, [100_001]);
    // An object on its separator line (flow style, as PyYAML's explicit_start writes it).
    let docs = documents("--- {kind: A}\n--- {kind: B}\n");
    let found: Vec<(usize, &str)> = docs.iter().map(|d| (d.line, d.text.trim())).collect();
    assert_eq!(found, [(1, "--- {kind: A}"), (2, "--- {kind: B}")]);
    // `...` ends a document; a directive belongs to the one after it.
    let docs = documents("%YAML 1.2\n---\na: 1\n...\n%YAML 1.2\n---\nb: 2\n...\n");
    let found: Vec<(usize, &str)> = docs.iter().map(|d| (d.line, d.text)).collect();
    assert_eq!(
        found,
        [
            (3, "%YAML 1.2\n---\na: 1\n...\n"),
            (7, "%YAML 1.2\n---\nb: 2\n...\n")
        ]
    );
    let docs = documents("a: 1\n... # end\nb: 2\n");
    assert_eq!(docs.iter().map(|d| d.line).collect::<Vec<_>>(), [1, 3]);
    // An indented comment between a directive and its document keeps them together.
    let docs = documents("a: 1\n...\n%TAG !e! tag:example.com,2026:\n  # note\n---\nb: !e!x 2\n");
    assert_eq!(docs.iter().map(|d| d.line).collect::<Vec<_>>(), [1, 6]);
    assert!(docs[1].text.starts_with("%TAG"), "{}", docs[1].text);
    for doc in &docs {
        serde_saphyr::from_str::<Value>(doc.text).expect("each parses alone");
    }
    // A line that only starts with dashes is content, not a separator.
    let docs = documents("a: |\n  ---x\n----\nb: 1\n");
    assert_eq!(docs.len(), 1);
    assert!(is_separator("---\r\n"));
}
