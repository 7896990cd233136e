//! `Authorization` header values → `identity::bearer_token`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = http::HeaderValue::from_bytes(data)
        && let Ok(token) = flowgate::identity::bearer_token(Some(&value))
    {
        assert!(!token.is_empty() && !token.contains([' ', '\t']));
    }
});
