//! `Authorization: Bearer <token>` — the only place a token is taken from.

use http::HeaderValue;

use super::AuthError;

/// The token of an `Authorization: Bearer <token>` header.
///
/// The scheme is case-insensitive and surrounding whitespace is tolerated; anything else (another
/// scheme, no token, a token with spaces in it, non-ASCII bytes) is refused.
pub fn bearer_token(header: Option<&HeaderValue>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Missing)?;
    let value = value
        .to_str()
        .map_err(|_| AuthError::Malformed("authorization header is not visible ASCII"))?
        .trim();
    if value.is_empty() {
        return Err(AuthError::Missing);
    }
    let (scheme, token) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed("authorization scheme is not Bearer"));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.contains([' ', '\t']) {
        return Err(AuthError::Malformed("bearer token contains whitespace"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<String, AuthError> {
        let value = HeaderValue::from_str(raw).expect("valid header value");
        bearer_token(Some(&value)).map(String::from)
    }

    #[test]
    fn the_token_after_bearer_is_returned() {
        assert_eq!(parse("Bearer abc.def.ghi").as_deref(), Ok("abc.def.ghi"));
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_whitespace_tolerated() {
        for raw in [
            "bearer t",
            "BEARER t",
            "BeArEr t",
            "  Bearer   t  ",
            "Bearer\tt",
        ] {
            assert_eq!(parse(raw).as_deref(), Ok("t"), "{raw:?}");
        }
    }

    #[test]
    fn no_header_or_no_token_is_missing() {
        assert_eq!(bearer_token(None), Err(AuthError::Missing));
        for raw in ["", "   ", "Bearer", "Bearer   "] {
            assert_eq!(parse(raw), Err(AuthError::Missing), "{raw:?}");
        }
    }

    #[test]
    fn other_schemes_and_shapes_are_malformed() {
        for raw in [
            "Basic dXNlcjpwYXNz",
            "Token abc",
            "Bearerabc",
            "Bearer a b",
            "abc.def.ghi",
        ] {
            assert_eq!(
                parse(raw).map_err(|e| e.reason()),
                Err("malformed"),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn non_ascii_header_bytes_are_malformed() {
        let value =
            HeaderValue::from_bytes(b"Bearer \xe2\x82\xac").expect("opaque bytes are allowed");
        assert_eq!(
            bearer_token(Some(&value)).map_err(|e| e.reason()),
            Err("malformed")
        );
    }
}
