//! A YAML text split into its documents, each to be parsed alone: one document that is not
//! YAML (a stray tab, a template) then costs only itself, and where each starts can be told.

/// One YAML document of a file.
pub struct Document<'a> {
    /// 1-based line of its first line that is not blank, a comment or `---`.
    pub line: usize,
    pub text: &'a str,
}

/// The documents of a YAML text, split where a `---` line starts one and after a `...` line
/// ends one (directives such as `%YAML` stay with the document they precede), with where each
/// starts; those holding nothing but blanks and comments are left out. (A YAML parser skips
/// those too, so counting the documents it returns would point at the wrong one.)
pub fn documents(text: &str) -> Vec<Document<'_>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // Where each document starts: its offset, and the lines before it (counted once here: a
    // count from the start for each would take quadratic time on a file of many documents).
    let mut starts = vec![(0, 0)];
    // The current piece holds directives and nothing else but blanks and comments: they belong
    // to the document the next `---` starts.
    let mut directives_only = false;
    // The current piece holds something but blanks, comments and directives.
    let mut content = false;
    let (mut offset, mut lines) = (0, 0);
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if is_separator(line) {
            if !directives_only {
                starts.push((offset, lines));
            }
            directives_only = false;
            content = true;
        } else if is_end_marker(line) {
            starts.push((
                offset + line.len(),
                lines + usize::from(line.ends_with('\n')),
            ));
            directives_only = false;
            content = false;
        } else if bare.starts_with('%') && !content {
            directives_only = true;
        } else if !(bare.trim().is_empty() || bare.trim_start().starts_with('#')) {
            directives_only = false;
            content = true;
        }
        offset += line.len();
        lines += usize::from(line.ends_with('\n'));
    }
    starts.push((text.len(), lines));
    starts.dedup_by_key(|(offset, _)| *offset);
    starts
        .windows(2)
        .filter_map(|w| {
            let ((start, before), (end, _)) = (w[0], w[1]);
            let chunk = &text[start..end];
            let (skip, _) = chunk.split_inclusive('\n').enumerate().find(|(_, line)| {
                let trimmed = line.trim();
                !(trimmed.is_empty()
                    || trimmed.starts_with('#')
                    || trimmed.starts_with('%')
                    || is_end_marker(line)
                    || is_bare_separator(line))
            })?;
            Some(Document {
                line: before + skip + 1,
                text: chunk,
            })
        })
        .collect()
}

/// A line that starts a new document: `---` alone or followed by a space or tab (`--- # a
/// comment`, `--- {kind: …}`).
pub(crate) fn is_separator(line: &str) -> bool {
    let line = line.trim_end_matches(['\n', '\r']);
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t")
}

/// A line that ends a document: `...` alone or followed by a space or tab (`... # end`).
fn is_end_marker(line: &str) -> bool {
    let line = line.trim_end_matches(['\n', '\r']);
    line == "..." || line.starts_with("... ") || line.starts_with("...\t")
}

/// A separator with nothing after it but blanks or a comment.
fn is_bare_separator(line: &str) -> bool {
    is_separator(line) && {
        let rest = line.trim_end_matches(['\n', '\r'])[3..].trim();
        rest.is_empty() || rest.starts_with('#')
    }
}

#[cfg(test)]
mod tests;
