//! Splitting and decoding a compact JWS before its signature is checked.
//!
//! Sizes are checked before any base64 or JSON work; header and payload are decoded into stack
//! buffers; of the payload, only the claims flowgate reads are kept (the rest is skipped without
//! allocating). Nothing here is trusted until [`super::Verifier`] has checked the signature.

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::AuthError;
use super::keys::parse_alg;

/// Largest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Largest encoded header segment accepted, in bytes.
pub const MAX_HEADER_BYTES: usize = 1024;

/// A token split and decoded, signature not yet checked.
#[derive(Debug)]
pub(crate) struct Parsed<'t> {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
    /// `header.payload`: what the signature covers.
    pub(crate) signed: &'t str,
    pub(crate) signature: &'t str,
    /// Values of the claims named in [`ClaimNames`], by slot.
    pub(crate) claims: Vec<Option<Value>>,
}

/// The claim names whose values are kept, each at a fixed slot.
#[derive(Debug, Clone)]
pub(crate) struct ClaimNames(Vec<Box<str>>);

impl ClaimNames {
    pub(crate) const EXP: usize = 0;
    pub(crate) const NBF: usize = 1;
    pub(crate) const ISS: usize = 2;
    pub(crate) const AUD: usize = 3;
    pub(crate) const SUB: usize = 4;
    pub(crate) const KUBERNETES: usize = 5;
    pub(crate) const IAT: usize = 6;

    pub(crate) fn new() -> Self {
        Self(
            ["exp", "nbf", "iss", "aud", "sub", "kubernetes.io", "iat"]
                .into_iter()
                .map(Box::from)
                .collect(),
        )
    }

    /// The slot of `name`, added if new.
    pub(crate) fn slot(&mut self, name: &str) -> usize {
        match self.0.iter().position(|n| &**n == name) {
            Some(i) => i,
            None => {
                self.0.push(name.into());
                self.0.len() - 1
            }
        }
    }

    pub(crate) fn name(&self, slot: usize) -> &str {
        self.0.get(slot).map_or("", |n| n)
    }
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(default, borrow)]
    kid: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

/// Splits `token` into its three segments and decodes header and payload.
pub(crate) fn parse<'t>(token: &'t str, names: &ClaimNames) -> Result<Parsed<'t>, AuthError> {
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge);
    }
    let (header, rest) = token
        .split_once('.')
        .ok_or(AuthError::Malformed("not three dot-separated segments"))?;
    let (payload, signature) = rest
        .split_once('.')
        .ok_or(AuthError::Malformed("not three dot-separated segments"))?;
    if signature.contains('.') {
        return Err(AuthError::Malformed("more than three segments"));
    }
    if header.len() > MAX_HEADER_BYTES {
        return Err(AuthError::TooLarge);
    }

    let mut buf = [0u8; MAX_HEADER_BYTES / 4 * 3 + 3];
    let len = URL_SAFE_NO_PAD
        .decode_slice(header, &mut buf)
        .map_err(|_| AuthError::Malformed("header is not base64url"))?;
    let header: Header<'_> = serde_json::from_slice(&buf[..len])
        .map_err(|_| AuthError::Malformed("header is not a JSON object with alg"))?;
    if header.crit.is_some() {
        return Err(AuthError::Malformed(
            "critical header extensions are not supported",
        ));
    }
    let alg = parse_alg(&header.alg).ok_or(AuthError::UnsupportedAlgorithm)?;
    let kid = header.kid.map(Cow::into_owned);

    if signature.is_empty() {
        return Err(AuthError::Malformed("empty signature"));
    }
    let mut buf = [0u8; MAX_TOKEN_BYTES / 4 * 3 + 3];
    let len = URL_SAFE_NO_PAD
        .decode_slice(payload, &mut buf)
        .map_err(|_| AuthError::Malformed("payload is not base64url"))?;
    let mut de = serde_json::Deserializer::from_slice(&buf[..len]);
    let claims = ClaimsSeed(names)
        .deserialize(&mut de)
        .and_then(|claims| de.end().map(|()| claims))
        .map_err(|_| AuthError::Malformed("payload is not a JSON object of unique claims"))?;

    Ok(Parsed {
        alg,
        kid,
        signed: &token[..token.len() - signature.len() - 1],
        signature,
        claims,
    })
}

/// Reads a claims object, keeping the values of the named claims and skipping the rest.
/// A named claim that appears twice is an error (no parser differentials).
struct ClaimsSeed<'n>(&'n ClaimNames);

impl<'de> DeserializeSeed<'de> for ClaimsSeed<'_> {
    type Value = Vec<Option<Value>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ClaimsSeed<'_> {
    type Value = Vec<Option<Value>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of claims")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let names = &self.0.0;
        let mut slots = vec![None; names.len()];
        while let Some(key) = map.next_key::<ClaimName<'de>>()? {
            match names.iter().position(|n| **n == *key.0) {
                Some(i) => {
                    if slots[i].is_some() {
                        return Err(A::Error::custom("duplicate claim"));
                    }
                    slots[i] = Some(map.next_value::<Value>()?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(slots)
    }
}

/// A claim name, borrowed from the payload when it has no escapes.
struct ClaimName<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for ClaimName<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ClaimName<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a claim name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(ClaimName(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ClaimName(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.c2ln", b64(header), b64(payload))
    }

    fn reason(token: &str) -> &'static str {
        match parse(token, &ClaimNames::new()) {
            Ok(_) => "ok",
            Err(e) => e.reason(),
        }
    }

    #[test]
    fn named_claims_are_kept_by_slot_and_others_skipped() {
        let mut names = ClaimNames::new();
        let email = names.slot("email");
        assert_eq!(
            names.slot("sub"),
            ClaimNames::SUB,
            "known names keep their slot"
        );
        let t = token(
            r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#,
            r#"{"sub":"alice","email":"a@x","exp":1,"other":{"deep":[1,2]}}"#,
        );
        let parsed = parse(&t, &names).expect("parses");
        assert_eq!(parsed.alg, Algorithm::RS256);
        assert_eq!(parsed.kid.as_deref(), Some("k1"));
        assert_eq!(parsed.claims[ClaimNames::SUB], Some(Value::from("alice")));
        assert_eq!(parsed.claims[email], Some(Value::from("a@x")));
        assert_eq!(parsed.claims[ClaimNames::EXP], Some(Value::from(1)));
        assert_eq!(parsed.claims[ClaimNames::ISS], None);
        assert_eq!(parsed.signature, "c2ln");
        assert_eq!(format!("{}.c2ln", parsed.signed), t);
    }

    #[test]
    fn alg_none_in_any_case_is_unsupported() {
        for alg in ["none", "None", "NONE", "nOnE"] {
            let t = format!("{}.{}.", b64(&format!(r#"{{"alg":"{alg}"}}"#)), b64("{}"));
            assert_eq!(reason(&t), "unsupported_algorithm", "{alg}");
        }
    }

    #[test]
    fn sizes_are_checked_before_decoding() {
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(reason(&huge), "too_large");
        let long_header = format!("{}.e30.c2ln", "a".repeat(MAX_HEADER_BYTES + 1));
        assert_eq!(reason(&long_header), "too_large");
    }

    #[test]
    fn shapes_other_than_three_segments_are_malformed() {
        let good = token(r#"{"alg":"HS256"}"#, "{}");
        assert_eq!(reason(&good), "ok");
        assert_eq!(reason(""), "missing");
        for bad in [
            "abc".to_string(),
            "a.b".to_string(),
            format!("{good}.extra"),
            format!("{}.!!!.c2ln", b64(r#"{"alg":"HS256"}"#)),
            format!("{}.{}.", b64(r#"{"alg":"HS256"}"#), b64("{}")),
            token("[]", "{}"),
            token(r#"{"kid":"x"}"#, "{}"),
            token(r#"{"alg":"HS256","crit":["b64"]}"#, "{}"),
            token(r#"{"alg":"HS256","alg":"none"}"#, "{}"),
            token(r#"{"alg":"HS256"}"#, "[1]"),
            token(r#"{"alg":"HS256"}"#, r#"{"exp":1,"exp":2}"#),
            token(r#"{"alg":"HS256"}"#, r#"{"a":1} trailing"#),
        ] {
            assert_eq!(reason(&bad), "malformed", "{bad}");
        }
    }

    #[test]
    fn escaped_claim_names_are_matched() {
        let t = token(r#"{"alg":"HS256"}"#, r#"{"s\u0075b":"bob"}"#);
        let parsed = parse(&t, &ClaimNames::new()).expect("parses");
        assert_eq!(parsed.claims[ClaimNames::SUB], Some(Value::from("bob")));
    }
}
