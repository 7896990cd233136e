//! `multipart/form-data` prediction bodies → `proxy::multipart` (parse, bind the session, encode
//! again with a boundary of our own). What Flowise parses from the re-encoded body must carry the
//! caller's session in every session field, and every other part unchanged: a hostile body must
//! not smuggle a `chatId` past the binding.
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

use flowgate::proxy::multipart::{Form, parse};
use flowgate::proxy::session;

/// The proxy's boundaries are `flowgate-<random uuid>`, which a client cannot guess; inputs that
/// contain this fixed one are skipped rather than treated as a collision.
const BOUNDARY: &str = "flowgate-5f1e0c2a9b7d4e6f8a3c1b0d2e4f6a8c";
const SUBJECT: &str = "user:mallory";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fn is_session_field(name: &str) -> bool {
    matches!(name, "chatId" | "sessionId")
        || name.ends_with("[sessionId]")
        || name.ends_with("[chatId]")
}

/// multer, the oracle here for what Flowise parses, finds `filename` after a `;` or a space even
/// inside a quoted name (`name="x; filename=y"`), where Flowise's busboy, which reads quoted
/// strings, sees one name and no file. Such a name (a client's own, passed through quoted) is
/// left out of the file-name check only.
fn hides_a_file_name(name: &str) -> bool {
    name.match_indices("filename").any(|(i, _)| {
        i > 0 && (name.as_bytes()[i - 1] == b';' || name.as_bytes()[i - 1].is_ascii_whitespace())
    })
}

/// The input is a body sent with a fixed boundary, or (first byte 0) a Content-Type line and
/// then the body.
fn split(data: &[u8]) -> Option<(String, Bytes)> {
    match data.split_first() {
        Some((0, rest)) => {
            let at = rest.iter().position(|&b| b == b'\n')?;
            let content_type = std::str::from_utf8(&rest[..at]).ok()?.to_string();
            Some((content_type, Bytes::copy_from_slice(&rest[at + 1..])))
        }
        _ => Some((
            "multipart/form-data; boundary=fuzz".into(),
            Bytes::copy_from_slice(data),
        )),
    }
}

fuzz_target!(|data: &[u8]| {
    if data
        .windows(BOUNDARY.len())
        .any(|w| w == BOUNDARY.as_bytes())
    {
        return;
    }
    let Some((content_type, body)) = split(data) else {
        return;
    };
    let rt = runtime();
    let Ok(mut form) = rt.block_on(parse(&content_type, body)) else {
        return;
    };
    let bound = form.bind_session(SUBJECT);
    assert!(bound.starts_with(&session::prefix(SUBJECT)));
    let (encoded, encoded_type) = form.encode(BOUNDARY);
    let again: Form = rt
        .block_on(parse(&encoded_type, encoded.clone()))
        .unwrap_or_else(|e| panic!("our own encoding does not parse: {e:?}\n{encoded:?}"));
    assert_eq!(again.parts.len(), form.parts.len(), "{encoded:?}");
    assert_eq!(again.text("chatId"), Some(bound.as_str()));
    for (ours, theirs) in form.parts.iter().zip(&again.parts) {
        if is_session_field(&theirs.name) {
            assert_eq!(theirs.data, bound.as_bytes(), "{encoded:?}");
            if !hides_a_file_name(&theirs.name) {
                assert_eq!(theirs.file_name, None, "{encoded:?}");
            }
        } else {
            assert_eq!(theirs.data, ours.data, "{encoded:?}");
        }
    }
});
