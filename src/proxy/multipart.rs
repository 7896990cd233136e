//! `multipart/form-data` predictions (file uploads). The body is parsed so its session fields can
//! be bound to the caller, then encoded again with a boundary of our own.
//!
//! Flowise takes the session from `chatId`, and in multipart mode also from `sessionId` and
//! `overrideConfig[sessionId]` (its form parser nests bracketed names): every field with such a
//! key in its name is replaced by those three, once each, bound to the caller. A form has at
//! most [`MAX_PARTS`] parts.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::ProxyError;
use super::session;

/// One form field or file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub file_name: Option<String>,
    pub content_type: Option<String>,
    pub data: Bytes,
}

/// A parsed multipart prediction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form {
    pub parts: Vec<Part>,
}

/// Most parts a prediction form may have: a question, its settings and files. Each part costs
/// an allocation and its re-encoding, so a body of a million empty parts is refused.
pub const MAX_PARTS: usize = 1000;

/// Longest name, file name or content type a part may give, in bytes. Flowise's parser keeps
/// only a field name's first 100 bytes; a header as long as the body would be copied several
/// times over while the body's count covers it once.
pub const MAX_PART_HEADER: usize = 1024;

/// Parses `body` sent with `content_type` (which carries the boundary).
pub async fn parse(content_type: &str, body: Bytes) -> Result<Form, ProxyError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| ProxyError::BadRequest(format!("multipart body: {e}")))?;
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut parts = Vec::new();
    let bad = |e: multer::Error| ProxyError::BadRequest(format!("multipart body: {e}"));
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        if parts.len() == MAX_PARTS {
            return Err(ProxyError::BadRequest(format!(
                "multipart body: more than {MAX_PARTS} parts"
            )));
        }
        let header_values = [
            field.name(),
            field.file_name(),
            field
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .map(|v| v.as_bytes())
                .and_then(|v| std::str::from_utf8(v).ok()),
        ];
        if header_values
            .iter()
            .flatten()
            .any(|value| value.len() > MAX_PART_HEADER)
            || field
                .headers()
                .get(hyper::header::CONTENT_DISPOSITION)
                .is_some_and(|v| v.len() > 4 * MAX_PART_HEADER)
        {
            return Err(ProxyError::BadRequest(format!(
                "multipart body: a part's name, file name or content type is longer than \
                 {MAX_PART_HEADER} bytes"
            )));
        }
        let name = field
            .name()
            .map(str::to_string)
            .ok_or_else(|| ProxyError::BadRequest("multipart body: a part has no name".into()))?;
        // RFC 6266: `filename*` first, when both are given and it can be read.
        let file_name = match extended_file_name(field.headers()) {
            Some(Ok(name)) => Some(name),
            Some(Err(raw)) => field.file_name().map(str::to_string).or(Some(raw)),
            None => field.file_name().map(str::to_string),
        };
        if file_name
            .as_ref()
            .is_some_and(|f| f.len() > MAX_PART_HEADER)
        {
            return Err(ProxyError::BadRequest(format!(
                "multipart body: a part's file name is longer than {MAX_PART_HEADER} bytes"
            )));
        }
        let content_type = field.content_type().map(|m| m.to_string());
        let data = field.bytes().await.map_err(bad)?;
        parts.push(Part {
            name,
            file_name,
            content_type,
            data,
        });
    }
    Ok(Form { parts })
}

/// The file name a part gives as RFC 5987's `filename*=UTF-8''r%C3%A9sum%C3%A9.pdf` (as older
/// clients do for names outside ASCII), which multer does not read: without it a part named only
/// so would go on as a text field, and Flowise, whose parser reads it, would get no file. `None`
/// without one; the value as sent (`Err`) when it names a charset other than UTF-8 or
/// ISO-8859-1, or is not what it says.
fn extended_file_name(headers: &hyper::HeaderMap) -> Option<Result<String, String>> {
    let disposition = headers
        .get(hyper::header::CONTENT_DISPOSITION)?
        .to_str()
        .ok()?;
    let value = disposition.split(';').find_map(|param| {
        let (key, value) = param.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("filename*")
            .then(|| value.trim().trim_matches('"'))
    })?;
    let raw = || Err(value.to_string());
    let Some((charset, rest)) = value.split_once('\'') else {
        return Some(raw());
    };
    let Some((_language, encoded)) = rest.split_once('\'') else {
        return Some(raw());
    };
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(encoded).collect();
    Some(if charset.eq_ignore_ascii_case("utf-8") {
        String::from_utf8(bytes).or_else(|_| raw())
    } else if charset.eq_ignore_ascii_case("iso-8859-1") {
        Ok(bytes.into_iter().map(char::from).collect())
    } else {
        raw()
    })
}

impl Form {
    /// A text field's value.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.parts
            .iter()
            .find(|p| p.name == name && p.file_name.is_none())
            .and_then(|p| std::str::from_utf8(&p.data).ok())
    }

    /// Replaces the session fields with one `chatId` of the caller's own (and one `sessionId`
    /// and `overrideConfig[sessionId]` where the form had such fields); returns the bound id.
    /// Each field once and unbracketed: Flowise's form parser turns a repeated name into an array
    /// and a bracketed one into an object, which Flowise would read as another chat id (`a,a`,
    /// `[object Object]`) than the one bound. A blank field asks for nothing, as in a JSON
    /// body: a form's empty `chatId` does not hide its `sessionId`.
    pub fn bind_session(&mut self, subject_key: &str) -> String {
        let requested = ["chatId", "sessionId", "overrideConfig[sessionId]"]
            .iter()
            .find_map(|name| self.text(name).filter(|id| !id.trim().is_empty()))
            .map(str::to_string);
        let bound = session::bind(subject_key, requested.as_deref());
        let (mut session_id, mut override_session) = (false, false);
        self.parts.retain(|part| {
            if !is_session_field(&part.name) {
                return true;
            }
            if part.name.starts_with("overrideConfig") {
                override_session = true;
            } else if !part.name.starts_with("chatId") {
                session_id = true;
            }
            false
        });
        let fields = [
            ("chatId", true),
            ("sessionId", session_id),
            ("overrideConfig[sessionId]", override_session),
        ];
        for (name, present) in fields {
            if present {
                self.parts.push(Part {
                    name: name.into(),
                    file_name: None,
                    content_type: None,
                    data: Bytes::from(bound.clone()),
                });
            }
        }
        bound
    }

    /// The form encoded with `boundary`, and the matching Content-Type.
    pub fn encode(&self, boundary: &str) -> (Bytes, String) {
        let size: usize = self.parts.iter().map(|p| p.data.len() + 200).sum();
        let mut out = BytesMut::with_capacity(size + boundary.len() + 8);
        for part in &self.parts {
            out.put_slice(format!("--{boundary}\r\n").as_bytes());
            let mut disposition = format!(
                "Content-Disposition: form-data; name=\"{}\"",
                quote(&part.name)
            );
            if let Some(file) = &part.file_name {
                disposition.push_str(&format!("; filename=\"{}\"", quote(file)));
            }
            out.put_slice(disposition.as_bytes());
            out.put_slice(b"\r\n");
            // A text part goes without its Content-Type: Flowise's parser then reads it as the
            // UTF-8 it was checked as (a charset, or a type it takes for a file's, would have
            // it read something else).
            if let (Some(ct), Some(_)) = (&part.content_type, &part.file_name) {
                out.put_slice(format!("Content-Type: {}\r\n", strip_newlines(ct)).as_bytes());
            }
            out.put_slice(b"\r\n");
            out.put_slice(&part.data);
            out.put_slice(b"\r\n");
        }
        out.put_slice(format!("--{boundary}--\r\n").as_bytes());
        (
            out.freeze(),
            format!("multipart/form-data; boundary={boundary}"),
        )
    }
}

/// A field Flowise may read a session from: any name with a `chatId` or `sessionId` key in its
/// bracket path (`chatId`, `sessionId[]`, `overrideConfig[sessionId][0]`, …). Flowise's multer
/// turns `sessionId[]` into an array that memory nodes turn back into the id, so every spelling
/// is bound, not only the plain ones.
fn is_session_field(name: &str) -> bool {
    name.split(['[', ']'])
        .any(|key| matches!(key, "chatId" | "sessionId"))
}

/// Quoting as browsers do for form-data names: `"` → `%22`, line breaks → `%0D`/`%0A`; and `\`
/// → `%5C`, which browsers leave alone but parsers (multer, Flowise's busboy) read as an escape:
/// a name ending in `\` would swallow its closing quote and the rest of the header.
fn quote(s: &str) -> String {
    s.replace('\\', "%5C")
        .replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn strip_newlines(s: &str) -> String {
    s.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, Option<&str>, &str)]) -> (Bytes, String) {
        let form = Form {
            parts: parts
                .iter()
                .map(|(name, file, data)| Part {
                    name: (*name).into(),
                    file_name: file.map(Into::into),
                    content_type: file.map(|_| "text/plain".into()),
                    data: Bytes::from(data.to_string()),
                })
                .collect(),
        };
        form.encode("client-boundary-123")
    }

    #[tokio::test]
    async fn a_form_survives_parse_and_encode() {
        let (body, ct) = form(&[
            ("question", None, "hi"),
            ("files", Some("a \"b\".txt"), "line1\r\nline2"),
        ]);
        let parsed = parse(&ct, body).await.expect("parses");
        assert_eq!(parsed.text("question"), Some("hi"));
        assert_eq!(parsed.parts[1].file_name.as_deref(), Some("a %22b%22.txt"));
        assert_eq!(&parsed.parts[1].data[..], b"line1\r\nline2");
        let (again, ct2) = parsed.encode("flowgate-x");
        let reparsed = parse(&ct2, again).await.expect("re-parses");
        assert_eq!(reparsed, parsed);
    }

    /// A part's name, file name or content type past 1 KiB is refused, not copied over and over.
    #[tokio::test]
    async fn a_part_header_past_its_bound_is_refused() {
        let long = "n".repeat(MAX_PART_HEADER + 1);
        let most = "n".repeat(MAX_PART_HEADER);
        let refused = |parts: &[(&str, Option<&str>, &str)]| {
            let (body, ct) = form(parts);
            async move { parse(&ct, body).await }
        };
        for parts in [
            [("question", None, "hi"), (long.as_str(), None, "x")],
            [
                ("question", None, "hi"),
                ("files", Some(long.as_str()), "x"),
            ],
        ] {
            let error = refused(&parts).await.expect_err("too long");
            assert!(
                matches!(&error, ProxyError::BadRequest(m) if m.contains("longer than 1024")),
                "{error:?}"
            );
        }
        let typed = format!(
            "--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.txt\"\r\n\
             Content-Type: text/{long}\r\n\r\nx\r\n--b--\r\n"
        );
        let parsed = parse("multipart/form-data; boundary=b", Bytes::from(typed)).await;
        assert!(parsed.is_err(), "a long content type");
        // A `filename*` of 1025 decoded bytes, in a Content-Disposition under 4 KiB.
        let extended = format!(
            "--b\r\nContent-Disposition: form-data; name=\"files\"; \
             filename*=UTF-8''{}\r\n\r\nx\r\n--b--\r\n",
            "%C3%A9".repeat(512) + "x"
        );
        let parsed = parse("multipart/form-data; boundary=b", Bytes::from(extended)).await;
        assert!(
            matches!(&parsed, Err(ProxyError::BadRequest(m)) if m.contains("file name is longer")),
            "a long filename*: {parsed:?}"
        );
        let parsed = refused(&[(most.as_str(), Some(most.as_str()), "x")])
            .await
            .expect("at the bound");
        assert_eq!(parsed.parts[0].name, most);
    }

    #[tokio::test]
    async fn a_file_named_only_by_filename_star_stays_a_file() {
        let body = "--b\r\nContent-Disposition: form-data; name=\"files\"; \
                    filename*=UTF-8''r%C3%A9sum%C3%A9.pdf\r\n\r\nPDF\r\n\
                    --b\r\nContent-Disposition: form-data; name=\"files\"; \
                    filename*=iso-8859-1'en'caf%E9.txt\r\n\r\ntext\r\n\
                    --b\r\nContent-Disposition: form-data; name=\"files\"; \
                    filename*=koi8-r''x\r\n\r\nunknown charset\r\n\
                    --b\r\nContent-Disposition: form-data; name=\"files\"; \
                    filename=\"resume.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf\r\n\r\nPDF\r\n\
                    --b--\r\n";
        let parsed = parse("multipart/form-data; boundary=b", Bytes::from(body))
            .await
            .expect("parses");
        let names: Vec<Option<&str>> = parsed
            .parts
            .iter()
            .map(|p| p.file_name.as_deref())
            .collect();
        let want = ["résumé.pdf", "café.txt", "koi8-r''x", "résumé.pdf"];
        assert_eq!(names, want.map(Some));
        // Sent on as Flowise's parser reads it best: a plain filename.
        let (body, ct) = parsed.encode("flowgate-x");
        let again = parse(&ct, body).await.expect("parses");
        assert_eq!(again.parts[0].file_name.as_deref(), Some("résumé.pdf"));
    }

    #[tokio::test]
    async fn a_name_ending_in_a_backslash_does_not_swallow_the_header() {
        // Found by the `multipart` fuzz target: `name="-\"` left the quoted name unterminated.
        let form = Form {
            parts: vec![
                Part {
                    name: "-\\".into(),
                    file_name: Some("a\\".into()),
                    content_type: None,
                    data: Bytes::from_static(b"x"),
                },
                Part {
                    name: "question".into(),
                    file_name: None,
                    content_type: None,
                    data: Bytes::from_static(b"hi"),
                },
            ],
        };
        let (body, ct) = form.encode("flowgate-x");
        let parsed = parse(&ct, body).await.expect("parses");
        assert_eq!(parsed.parts.len(), 2);
        assert_eq!(parsed.parts[0].name, "-%5C");
        assert_eq!(parsed.parts[0].file_name.as_deref(), Some("a%5C"));
        assert_eq!(parsed.text("question"), Some("hi"));
    }

    /// A file keeps its type; a text part goes without one, read by Flowise as the UTF-8 that
    /// was checked.
    #[tokio::test]
    async fn only_files_keep_their_content_type() {
        let part = |name: &str, file: Option<&str>| Part {
            name: name.into(),
            file_name: file.map(Into::into),
            content_type: Some("text/plain; charset=utf-16le".into()),
            data: Bytes::from_static(b"x"),
        };
        let form = Form {
            parts: vec![part("files", Some("a.txt")), part("question", None)],
        };
        let (body, ct) = form.encode("flowgate-x");
        let parsed = parse(&ct, body).await.expect("parses");
        let types: Vec<Option<&str>> = parsed
            .parts
            .iter()
            .map(|p| p.content_type.as_deref())
            .collect();
        assert_eq!(types, [Some("text/plain; charset=utf-16le"), None]);
    }

    #[tokio::test]
    async fn every_session_field_is_bound_to_the_caller() {
        let (body, ct) = form(&[
            ("question", None, "hi"),
            ("chatId", None, "victim-session"),
            ("overrideConfig[sessionId]", None, "victim-session"),
            ("sessionId[]", None, "victim-session"),
            ("chatId[]", None, "victim-session"),
            ("overrideConfig[sessionId][0]", None, "victim-session"),
            ("overrideConfig[chatId]", None, "victim-session"),
            ("streaming", None, "true"),
        ]);
        let mut parsed = parse(&ct, body).await.expect("parses");
        let bound = parsed.bind_session("user:mallory");
        assert!(bound.starts_with(&session::prefix("user:mallory")));
        // Once each, unbracketed: Flowise reads each as the one string bound.
        let session: Vec<(&str, &[u8])> = parsed
            .parts
            .iter()
            .filter(|p| is_session_field(&p.name))
            .map(|p| (p.name.as_str(), p.data.as_ref()))
            .collect();
        assert_eq!(
            session,
            vec![
                ("chatId", bound.as_bytes()),
                ("sessionId", bound.as_bytes()),
                ("overrideConfig[sessionId]", bound.as_bytes()),
            ]
        );
        assert_eq!(parsed.text("question"), Some("hi"));
        assert_eq!(parsed.text("streaming"), Some("true"));
        assert!(!is_session_field("overrideConfig[temperature]"));
        assert!(!is_session_field("chatIdea"));
    }

    #[tokio::test]
    async fn a_form_of_too_many_parts_is_refused() {
        let fields: Vec<(&str, Option<&str>, &str)> =
            (0..MAX_PARTS).map(|_| ("x", None, "")).collect();
        let (body, ct) = form(&fields);
        assert!(parse(&ct, body).await.is_ok(), "{MAX_PARTS} parts are fine");
        let fields: Vec<(&str, Option<&str>, &str)> =
            (0..=MAX_PARTS).map(|_| ("x", None, "")).collect();
        let (body, ct) = form(&fields);
        let refused = parse(&ct, body).await;
        assert!(
            matches!(&refused, Err(ProxyError::BadRequest(m)) if m.contains("parts")),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_blank_chat_id_does_not_hide_the_session_asked_for() {
        for blank in ["", "  "] {
            let (body, ct) = form(&[
                ("question", None, "hi"),
                ("chatId", None, blank),
                ("overrideConfig[sessionId]", None, "my-chat"),
            ]);
            let mut parsed = parse(&ct, body).await.expect("parses");
            let bound = parsed.bind_session("user:alice");
            assert_eq!(bound, session::bind("user:alice", Some("my-chat")));
            assert_eq!(parsed.text("chatId"), Some(bound.as_str()));
        }
    }

    #[tokio::test]
    async fn a_chat_id_is_added_when_the_client_sent_none() {
        let (body, ct) = form(&[("question", None, "hi")]);
        let mut parsed = parse(&ct, body).await.expect("parses");
        let bound = parsed.bind_session("user:alice");
        assert_eq!(parsed.text("chatId"), Some(bound.as_str()));
    }

    #[tokio::test]
    async fn a_body_that_is_not_multipart_is_a_bad_request() {
        let result = parse(
            "multipart/form-data; boundary=zzz",
            Bytes::from_static(b"garbage"),
        )
        .await;
        assert!(matches!(result, Err(ProxyError::BadRequest(_))));
        let result = parse("multipart/form-data", Bytes::new()).await;
        assert!(matches!(result, Err(ProxyError::BadRequest(_))));
    }
}
