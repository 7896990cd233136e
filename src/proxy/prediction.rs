//! A prediction body on its way to Flowise: read (JSON or multipart, counted in the body
//! budget), checked, its session bound to the caller, and encoded again.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde_json::Value;

use super::body::{read_json_body, read_limited};
use super::{
    MAX_JSON_BODY, MAX_MULTIPART_BODY, ProxyError, buffers, multipart, session, turns, usage,
};
use crate::identity::Identity;

/// A prediction ready to forward.
pub(super) struct Prediction {
    pub(super) body: Payload,
    pub(super) chat_id: String,
    /// The run it continues (`humanInput`), for counting only its own nodes' tokens.
    pub(super) resume: usage::Resume,
    /// Its chat's turn, taken before it is charged.
    pub(super) turn: Option<turns::Turn>,
    /// Its body's bytes in [`Buffers`](buffers::Buffers), until it is written to Flowise.
    pub(super) held: Option<buffers::Held>,
    /// Whose it is (the identity key): a stream it leaves counts in that caller's readings
    /// ([`super::drain`]).
    pub(super) caller: String,
}

/// A prediction body as it will be sent to Flowise.
pub(super) enum Payload {
    Json(serde_json::Map<String, Value>),
    Multipart(multipart::Form),
}

impl Payload {
    /// The encoded body and its Content-Type. Once encoded the parsed body is gone: `held` then
    /// counts the encoded body's allocation, until the last reference to it is dropped (once it
    /// is written to Flowise's connection).
    pub(super) fn encode(self, held: Option<buffers::Held>) -> (Bytes, HeaderValue) {
        match self {
            Payload::Json(map) => {
                let json = serde_json::to_vec(&Value::Object(map)).unwrap_or_default();
                let size = json.capacity();
                (
                    counted(json, size, held),
                    HeaderValue::from_static("application/json"),
                )
            }
            Payload::Multipart(form) => {
                let (body, content_type) =
                    form.encode(&format!("flowgate-{}", uuid::Uuid::new_v4().simple()));
                let content_type = HeaderValue::from_str(&content_type)
                    .unwrap_or_else(|_| HeaderValue::from_static("multipart/form-data"));
                let size = body.len();
                (counted(body, size, held), content_type)
            }
        }
    }
}

/// `data` (`size` bytes allocated) counted in `held`, shrunk to it.
fn counted<T>(data: T, size: usize, held: Option<buffers::Held>) -> Bytes
where
    T: AsRef<[u8]> + Send + 'static,
{
    match held {
        Some(mut held) => {
            held.shrink_to(size);
            buffers::owning(data, held)
        }
        None => Bytes::from_owner(data),
    }
}

/// Checks a Flowise prediction body and binds its session to the caller.
pub(super) fn prepare(
    mut body: serde_json::Map<String, Value>,
    identity: &Identity,
) -> Result<Prediction, ProxyError> {
    let has_input = ["question", "form", "humanInput", "uploads"]
        .iter()
        .any(|k| body.contains_key(*k));
    if !has_input {
        return Err(ProxyError::BadRequest(
            "a prediction needs 'question' (or 'form', 'uploads', 'humanInput')".into(),
        ));
    }
    if body.get("question").is_some_and(|q| !q.is_string()) {
        return Err(ProxyError::BadRequest("'question' must be a string".into()));
    }
    // The session binding reads both; a value of another type would be silently replaced.
    if body
        .get("overrideConfig")
        .is_some_and(|c| !c.is_object() && !c.is_null())
    {
        return Err(ProxyError::BadRequest(
            "'overrideConfig' must be an object".into(),
        ));
    }
    if body
        .get("chatId")
        .is_some_and(|c| !c.is_string() && !c.is_null())
    {
        return Err(ProxyError::BadRequest("'chatId' must be a string".into()));
    }
    if body.get("overrideConfig").is_some_and(names_stored_files) {
        return Err(stored_files_refused());
    }
    if body
        .get("uploads")
        .is_some_and(|u| !u.is_array() && !u.is_null())
    {
        return Err(ProxyError::BadRequest("'uploads' must be an array".into()));
    }
    if let Some(Value::Array(uploads)) = body.get("uploads")
        && let Some(name) = uploads
            .iter()
            .filter_map(|u| u.get("name").and_then(Value::as_str))
            .find(|name| !plain_file_name(name))
    {
        return Err(not_plain(name));
    }
    // Flowise streams for `true` and for the string "true" (form-style clients send strings).
    // Whether it did is read from its answer (`forward`), so only the type is checked here.
    let flag =
        |v: &Value| v.is_boolean() || v.is_null() || matches!(v.as_str(), Some("true" | "false"));
    if body.get("streaming").is_some_and(|v| !flag(v)) {
        return Err(ProxyError::BadRequest(
            "'streaming' must be true or false (or \"true\" or \"false\")".into(),
        ));
    }
    let chat_id = session::bind_body(&mut body, &identity.key);
    let resume = usage::Resume::of(&body);
    Ok(Prediction {
        body: Payload::Json(body),
        chat_id,
        resume,
        turn: None,
        held: None,
        caller: identity.key.clone(),
    })
}

/// What Flowise reads a stored upload by (`FILE-STORAGE::["name"]`). Flowise keeps a chatflow's
/// multipart uploads in one folder of the chatflow, not of the chat, so a caller naming a file
/// there would read (or feed its chatflow) another caller's upload: only Flowise writes these.
const STORED: &str = "FILE-STORAGE::";

/// Whether a value names a stored upload anywhere in it (a string holding [`STORED`], however
/// deep, a JSON string inside a string included).
fn names_stored_files(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains(STORED),
        Value::Array(items) => items.iter().any(names_stored_files),
        Value::Object(fields) => fields.values().any(names_stored_files),
        _ => false,
    }
}

fn stored_files_refused() -> ProxyError {
    ProxyError::BadRequest(format!(
        "'{STORED}' references are Flowise's own: send the file itself (a 'files' part, or \
         'uploads')"
    ))
}

/// The form fields Flowise turns into references to a chatflow's stored files (its
/// `mapExtToInputField`), adding an uploaded file's name to what such a field already names.
const FILE_FIELDS: [&str; 7] = [
    "txtFile",
    "pdfFile",
    "jsonFile",
    "csvFile",
    "jsonlinesFile",
    "docxFile",
    "yamlFile",
];

/// Whether a form's text part names stored files: one of [`FILE_FIELDS`], or [`STORED`] in
/// its text (UTF-8, as it is forwarded: see [`multipart::Form::encode`]). The question is the
/// caller's text, not a setting.
fn names_stored_part(part: &multipart::Part) -> bool {
    FILE_FIELDS.contains(&part.name.as_str())
        || (part.name != "question"
            && part
                .data
                .windows(STORED.len())
                .any(|w| w == STORED.as_bytes()))
}

/// A file name that stays one path segment wherever Flowise stores it.
fn plain_file_name(name: &str) -> bool {
    !name.contains(['/', '\\']) && name != ".." && name != "."
}

/// A form file's name: plain, and one Flowise's form parser reads as a file's (an empty one
/// makes the part a text field; a control character, a part it skips).
fn form_file_name(name: &str) -> bool {
    plain_file_name(name) && !name.is_empty() && !name.chars().any(char::is_control)
}

/// Longest text part Flowise's form parser takes (busboy's `fieldSize`): a longer one fails
/// the prediction inside Flowise (500, or no answer at all once `streaming` was read).
const MAX_FORM_FIELD: usize = 1024 * 1024;

/// Whether a form part is an input Flowise runs on, as the JSON body's keys
/// (`question`, `form[…]`, `humanInput[…]`, `uploads[…]`).
fn input_part(name: &str) -> bool {
    name == "question"
        || ["form", "humanInput", "uploads"].iter().any(|input| {
            name.strip_prefix(input)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('['))
        })
}

fn not_plain(name: &str) -> ProxyError {
    ProxyError::BadRequest(format!(
        "file name '{name}' is not a plain file name (not empty, no '/', '\\' or control characters, not '..')"
    ))
}

/// A Flowise prediction body: JSON, or `multipart/form-data` with file uploads, counted in
/// `held` as it arrives.
pub(super) async fn read_prediction(
    headers: &hyper::HeaderMap,
    body: Incoming,
    identity: &Identity,
    held: &mut buffers::Held,
) -> Result<Prediction, ProxyError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let multipart = "multipart/form-data";
    if !content_type
        .get(..multipart.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(multipart))
    {
        return prepare(
            read_json_body(headers, body, MAX_JSON_BODY, held).await?,
            identity,
        );
    }
    super::body::uncompressed(headers)?;
    let body = read_limited(body, MAX_MULTIPART_BODY, held).await?;
    let mut form = multipart::parse(content_type, body).await?;
    if !form
        .parts
        .iter()
        .any(|p| p.file_name.is_some() || input_part(&p.name))
    {
        return Err(ProxyError::BadRequest(
            "a prediction needs 'question' or files (or 'form', 'uploads', 'humanInput' fields)"
                .into(),
        ));
    }
    for part in &form.parts {
        match &part.file_name {
            Some(name) if !form_file_name(name) => return Err(not_plain(name)),
            Some(_) => {}
            None if part.data.len() > MAX_FORM_FIELD => {
                return Err(ProxyError::PayloadTooLarge {
                    limit: MAX_FORM_FIELD,
                });
            }
            None if std::str::from_utf8(&part.data).is_err() => {
                return Err(ProxyError::BadRequest(format!(
                    "form field '{}' is not UTF-8 text",
                    part.name
                )));
            }
            None if part.name.starts_with("uploads[")
                && part.name.ends_with("[name]")
                && !plain_file_name(&String::from_utf8_lossy(&part.data)) =>
            {
                return Err(not_plain(&String::from_utf8_lossy(&part.data)));
            }
            None => {}
        }
    }
    // Flowise's form parser takes files under `files` only, and answers 500 for any other: a
    // client's mistake that would read as Flowise failing.
    if let Some(part) = form
        .parts
        .iter()
        .find(|p| p.file_name.is_some() && p.name != "files")
    {
        return Err(ProxyError::BadRequest(format!(
            "a file is sent under '{}': Flowise takes uploads under 'files' only",
            part.name
        )));
    }
    if form
        .parts
        .iter()
        .any(|p| p.file_name.is_none() && p.name == "files")
    {
        return Err(ProxyError::BadRequest(
            "'files' parts must be files (with a filename)".into(),
        ));
    }
    // As for a JSON body.
    if let Some(part) = form
        .parts
        .iter()
        .find(|p| p.file_name.is_none() && names_stored_part(p))
    {
        return Err(ProxyError::BadRequest(format!(
            "form field '{}': {}",
            part.name,
            stored_files_refused()
        )));
    }
    if form
        .text("streaming")
        .is_some_and(|v| !matches!(v, "true" | "false"))
    {
        return Err(ProxyError::BadRequest(
            "'streaming' must be \"true\" or \"false\"".into(),
        ));
    }
    let chat_id = form.bind_session(&identity.key);
    let resume = usage::Resume::of_form(&form);
    Ok(Prediction {
        body: Payload::Multipart(form),
        chat_id,
        resume,
        turn: None,
        held: None,
        caller: identity.key.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alice() -> Identity {
        Identity {
            users: vec!["alice".into()],
            groups: Vec::new(),
            service_account: None,
            admin: false,
            key: "user:alice".into(),
            expires_at: jiff::Timestamp::UNIX_EPOCH,
        }
    }

    fn prepared(body: Value) -> Result<Prediction, ProxyError> {
        let Value::Object(body) = body else {
            panic!("an object");
        };
        prepare(body, &alice())
    }

    /// Flowise keeps a chatflow's multipart uploads in one folder, read by `FILE-STORAGE::`
    /// names: a caller naming one would read another caller's upload. And an upload's name is
    /// a path segment where Flowise stores it.
    #[test]
    fn stored_file_references_and_upload_names_that_are_paths_are_refused() {
        for refused in [
            json!({"question": "x", "overrideConfig": {"pdfFile": "FILE-STORAGE::[\"q3.pdf\"]"}}),
            json!({"question": "x", "overrideConfig": {"nodes": {"a": ["FILE-STORAGE::x"]}}}),
            json!({"question": "x", "uploads": [{"type": "file", "name": "../../x.pdf", "data": ""}]}),
            json!({"question": "x", "uploads": [{"type": "stored-file", "name": "..", "mime": ""}]}),
            // Flowise walks `uploads.length`: an object would pass unchecked.
            json!({"question": "x", "uploads": {"length": 1, "0": {"type": "file", "name": "../x"}}}),
        ] {
            assert!(
                matches!(prepared(refused.clone()), Err(ProxyError::BadRequest(_))),
                "{refused}"
            );
        }
        for fine in [
            json!({"question": "what is FILE-STORAGE:: in Flowise?"}),
            json!({"question": "x", "uploads": [{"type": "file", "name": "q3 (final).pdf", "data": ""}]}),
        ] {
            assert!(prepared(fine.clone()).is_ok(), "{fine}");
        }
    }

    /// In a form, Flowise merges an uploaded file into a `*File` field's stored names, and a
    /// reference may be anywhere in a field's text. (A field's charset no longer matters: it
    /// is forwarded as the UTF-8 checked here, without it.)
    #[test]
    fn form_fields_naming_stored_files_are_refused_however_written() {
        let part = |name: &str, content_type: Option<&str>, data: &[u8]| multipart::Part {
            name: name.into(),
            file_name: None,
            content_type: content_type.map(Into::into),
            data: Bytes::copy_from_slice(data),
        };
        let mut hidden = b"FILE-STORAGE::[\"q3.pdf\"]".to_vec();
        hidden.push(0xff);
        for refused in [
            part("pdfFile", None, b"[\"q3.pdf\"]"),
            part("overrideConfig", None, &hidden),
        ] {
            assert!(names_stored_part(&refused), "{refused:?}");
        }
        for fine in [
            part("question", None, b"what does FILE-STORAGE:: mean?"),
            part("chatId", Some("text/plain; charset=UTF-8; x=y"), b"c1"),
            part("overrideConfig", None, b"{\"temperature\": 0}"),
        ] {
            assert!(!names_stored_part(&fine), "{fine:?}");
        }
    }

    /// A form is an input as a JSON body is: by a question, a file, or an Agentflow's form,
    /// human input or uploads fields.
    #[test]
    fn a_form_runs_on_the_inputs_a_json_body_does() {
        for input in [
            "question",
            "form",
            "form[email]",
            "humanInput[type]",
            "uploads[0][name]",
        ] {
            assert!(input_part(input), "{input}");
        }
        for other in [
            "questions",
            "formula",
            "chatId",
            "overrideConfig[form]",
            "uploadsX",
        ] {
            assert!(!input_part(other), "{other}");
        }
    }

    #[test]
    fn a_form_file_name_is_one_segment_flowise_reads_as_a_file() {
        for fine in ["q3 (final).pdf", "résumé.pdf", "..x", "a.b"] {
            assert!(form_file_name(fine), "{fine}");
        }
        for refused in ["", "a/b", "a\\b", "..", ".", "a\u{1}.pdf", "a\n.pdf"] {
            assert!(!form_file_name(refused), "{refused:?}");
        }
        // A JSON upload's name only has to stay one segment: a URL upload's may be empty.
        assert!(plain_file_name(""));
        assert!(!plain_file_name("../x"));
    }
}
