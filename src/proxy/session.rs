//! Binding Flowise chat sessions to callers.
//!
//! Flowise continues whatever session the request's `chatId` (or `overrideConfig.sessionId`)
//! names, so a client choosing another user's id would read and continue that user's memory.
//! The proxy therefore rewrites the id to `fg-<caller prefix>-<client id>`, where the prefix is
//! derived from the caller's identity. A client that sends an id it got back from Flowise (already
//! carrying its own prefix) keeps its session; any other id — including another caller's — lands
//! in a fresh session of the caller's own. Stateless, so every replica agrees.
//!
//! In the client's part `/`, `\`, `%`, `?` and `#` become `_`. Flowise uses the chat id as a
//! segment of where it stores a chat's uploads, and not every storage it offers cleans it:
//! `/../` in a chat id would reach another chatflow's, or another caller's, files. (The mapping
//! is its own fixed point, so a bound id sent back is unchanged, and ids without those
//! characters — emails, the embed widget's `customer+uuid` — bind as they always did.)

use sha2::{Digest, Sha256};

/// The session prefix of the caller with subject `key`: `fg-` and 16 hex digits of its SHA-256.
pub fn prefix(subject_key: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(subject_key.as_bytes());
    // Room for a new session's uuid too: one allocation per request.
    let mut prefix = String::with_capacity(PREFIX_LEN + uuid::fmt::Hyphenated::LENGTH);
    prefix.push_str("fg-");
    for byte in &digest[..8] {
        prefix.push(char::from(HEX[usize::from(byte >> 4)]));
        prefix.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    prefix.push('-');
    prefix
}

/// `fg-`, 16 hex digits, `-`.
const PREFIX_LEN: usize = 20;
/// Characters of the client's own id kept after the prefix.
const MAX_CLIENT_ID: usize = 200;

/// The chat id Flowise gets for a client's requested id (`None`: a new session).
pub fn bind(subject_key: &str, requested: Option<&str>) -> String {
    let mut bound = prefix(subject_key);
    // Control characters are dropped: no chat id needs one, and a NUL (which PostgreSQL
    // refuses in text) would fail the shared chat turns of every chat asked with it. Ends are
    // trimmed after that and after the cut, so that an id sent back is bound to itself.
    let cleaned = requested.map(str::trim).map(|id| {
        if id.chars().all(kept) {
            std::borrow::Cow::Borrowed(id)
        } else {
            std::borrow::Cow::Owned(
                id.chars()
                    .filter(|c| !c.is_control())
                    .map(|c| if kept(c) { c } else { '_' })
                    .collect(),
            )
        }
    });
    match cleaned.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
        Some(id) if id.starts_with(&bound) => {
            return truncate(id, PREFIX_LEN + MAX_CLIENT_ID).trim_end().into();
        }
        Some(id) => bound.push_str(truncate(id, MAX_CLIENT_ID).trim_end()),
        None => bound.push_str(
            uuid::Uuid::new_v4()
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer()),
        ),
    }
    bound
}

/// Whether a character of the client's chat id is kept as it is (else it becomes `_`, or is
/// dropped if it is a control character).
fn kept(c: char) -> bool {
    !c.is_control() && !matches!(c, '/' | '\\' | '%' | '?' | '#')
}

/// Flowise's abort endpoint for a chat. The chat id carries the client's own id, so it is one
/// percent-encoded path segment whatever it holds (`/`, `?`, `..`).
pub fn abort_path(flowise_id: &str, chat_id: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let chat_id = percent_encoding::utf8_percent_encode(chat_id, SEGMENT);
    format!("/api/v1/chatmessage/abort/{flowise_id}/{chat_id}")
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Rewrites a JSON prediction body so its session belongs to the caller; returns the bound id.
pub fn bind_body(
    body: &mut serde_json::Map<String, serde_json::Value>,
    subject_key: &str,
) -> String {
    fn given(v: &serde_json::Value) -> Option<&str> {
        v.as_str().filter(|s| !s.trim().is_empty())
    }
    let requested = body
        .get("chatId")
        .and_then(given)
        .or_else(|| body.get("overrideConfig")?.get("sessionId").and_then(given))
        .map(str::to_string);
    let bound = bind(subject_key, requested.as_deref());
    body.insert("chatId".into(), serde_json::Value::String(bound.clone()));
    // Flowise 3.1 reads no top-level sessionId; an earlier one resumed an Agentflow's execution
    // by it. Bound too, whatever reads it.
    if body.contains_key("sessionId") {
        body.insert("sessionId".into(), serde_json::Value::String(bound.clone()));
    }
    // Flowise spreads overrideConfig over its own chatId and sessionId: bind both there too.
    if let Some(config) = body
        .get_mut("overrideConfig")
        .and_then(|v| v.as_object_mut())
    {
        for key in ["sessionId", "chatId"] {
            if config.contains_key(key) {
                config.insert(key.into(), serde_json::Value::String(bound.clone()));
            }
        }
    }
    bound
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        value.as_object().cloned().expect("object")
    }

    #[test]
    fn an_empty_chat_id_gives_way_and_a_top_level_session_id_is_bound_too() {
        let mut b = body(json!({"chatId": " ", "sessionId": "fg-victim-s-1",
                                "overrideConfig": {"sessionId": "memory-1"}}));
        let id = bind_body(&mut b, "user:alice");
        assert_eq!(
            id,
            bind("user:alice", Some("memory-1")),
            "the session's id, bound"
        );
        assert_eq!(b["sessionId"], json!(id), "never someone else's");
        assert_eq!(b["overrideConfig"]["sessionId"], json!(id));
    }

    #[test]
    fn control_characters_are_dropped_from_a_chat_id() {
        assert_eq!(
            bind("user:alice", Some("a\0b\n")),
            bind("user:alice", Some("ab"))
        );
        let own = bind("user:alice", Some("c1"));
        assert_eq!(bind("user:alice", Some(&format!("{own}\0"))), own);
        // Nothing left: a new session, as for an empty id.
        assert!(bind("user:alice", Some("\0\t")).len() == PREFIX_LEN + 36);
        assert!(bind("user:alice", Some("\u{1} \u{1}")).len() == PREFIX_LEN + 36);
    }

    #[test]
    fn a_new_conversation_gets_a_fresh_id_of_the_callers_own() {
        let mut b = body(json!({"question": "hi"}));
        let id = bind_body(&mut b, "user:alice");
        assert!(id.starts_with(&prefix("user:alice")));
        assert_eq!(b["chatId"], json!(id));
        assert_ne!(bind("user:alice", None), bind("user:alice", None));
    }

    #[test]
    fn the_prefix_is_stable_across_versions() {
        // Sessions already in Flowise carry it: it must never change.
        assert_eq!(prefix("user:alice"), "fg-dabd1db8d35ab131-");
        assert_eq!(prefix("user:alice").len(), PREFIX_LEN);
        let id = bind("user:alice", None);
        assert_eq!(id.len(), PREFIX_LEN + 36, "{id}");
        assert!(uuid::Uuid::parse_str(&id[PREFIX_LEN..]).is_ok(), "{id}");
    }

    #[test]
    fn a_caller_continues_its_own_session() {
        let first = bind("user:alice", None);
        assert_eq!(bind("user:alice", Some(&first)), first);
    }

    #[test]
    fn another_callers_session_id_lands_in_a_session_of_ones_own() {
        let alices = bind("user:alice", None);
        let mallory = bind("user:mallory", Some(&alices));
        assert_ne!(mallory, alices);
        assert!(mallory.starts_with(&prefix("user:mallory")));
    }

    /// Flowise stores a chat's uploads under its id, on storage that may not clean it: the
    /// bound id is never more than one path segment, and sent back it is kept.
    #[test]
    fn a_bound_id_is_one_path_segment_whatever_the_client_sent() {
        for sent in [
            "/../../other-chatflow",
            "..\\..\\x",
            "a%2Fb",
            "a?b#c",
            "x/../会话",
        ] {
            let id = bind("user:alice", Some(sent));
            assert!(!id.contains(['/', '\\', '%', '?', '#']), "{sent} → {id}");
            assert_eq!(bind("user:alice", Some(&id)), id, "kept when sent back");
        }
        assert_eq!(
            bind("user:alice", Some("/../x")),
            format!("{}_.._x", prefix("user:alice"))
        );
        // What was bound before stays bound the same: emails, the embed's `customer+uuid`.
        for kept_as_is in ["user@example.com:1", "cust-7+0b0e0c0a", "会话 1"] {
            assert_eq!(
                bind("user:alice", Some(kept_as_is)),
                format!("{}{kept_as_is}", prefix("user:alice"))
            );
        }
    }

    #[test]
    fn the_abort_path_holds_the_chat_id_as_one_segment() {
        // Bound ids hold no `/` or `?` any more; whatever a chat id holds, it is one segment.
        let path = abort_path("f1", "fg-x-/../apikey?x=1");
        assert_eq!(
            path,
            "/api/v1/chatmessage/abort/f1/fg-x-%2F..%2Fapikey%3Fx%3D1"
        );
        let plain = bind("user:alice", None);
        assert_eq!(
            abort_path("f1", &plain),
            format!("/api/v1/chatmessage/abort/f1/{plain}")
        );
    }

    #[test]
    fn a_chat_id_in_override_config_is_bound_too() {
        let mut b = body(json!({"question": "hi", "overrideConfig": {"chatId": "victim"}}));
        let id = bind_body(&mut b, "user:mallory");
        assert_eq!(b["overrideConfig"]["chatId"], json!(id));
        assert_eq!(b["chatId"], json!(id));
    }

    /// Flowise answers with the bound id and the client sends it back: it must bind to itself,
    /// or the conversation continues in another chat.
    #[test]
    fn a_bound_id_sent_back_is_the_same_chat() {
        let long = format!("{} b", "a".repeat(MAX_CLIENT_ID - 1));
        for sent in [long.as_str(), "a \u{1}", " c\td ", "x \0"] {
            let first = bind("user:alice", Some(sent));
            assert_eq!(first, first.trim(), "{sent:?}");
            assert_eq!(bind("user:alice", Some(&first)), first, "{sent:?}");
        }
        // Sent with the caller's prefix already, it is cut the same way.
        let own = format!("{}{long}", prefix("user:alice"));
        assert_eq!(
            bind("user:alice", Some(&own)),
            bind("user:alice", Some(&long))
        );
    }

    #[test]
    fn a_long_id_is_cut_whether_or_not_it_carries_the_prefix() {
        let long = "x".repeat(10_000);
        let first = bind("user:alice", Some(&long));
        assert_eq!(first.len(), PREFIX_LEN + MAX_CLIENT_ID);
        let own = format!("{}{long}", prefix("user:alice"));
        assert_eq!(bind("user:alice", Some(&own)), first);
    }

    #[test]
    fn session_id_in_override_config_is_bound_too() {
        let mut b = body(
            json!({"question": "hi", "overrideConfig": {"sessionId": "abc", "temperature": 0}}),
        );
        let id = bind_body(&mut b, "user:bob");
        assert_eq!(id, format!("{}abc", prefix("user:bob")));
        assert_eq!(b["overrideConfig"]["sessionId"], json!(id));
        assert_eq!(b["overrideConfig"]["temperature"], json!(0));
    }
}
