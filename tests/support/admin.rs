//! Helpers for the admin API tests: a global admin token and a request helper.

use serde_json::{Value, json};

use super::gate::{Flowgate, token};

/// A global admin (the `role=Admin` claim).
pub fn root() -> String {
    token("root", json!({"role": "Admin"}))
}

/// GETs `path` with `bearer` (an admin's, or a caller's own routes); the status and the JSON
/// body.
pub async fn admin_get(gate: &Flowgate, path: String, bearer: String) -> (u16, Value) {
    call(gate, reqwest::Method::GET, &path, Some(&bearer), None).await
}

/// Sends a request; returns the status and the JSON body (Null when not JSON).
pub async fn call(
    gate: &Flowgate,
    method: reqwest::Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", gate.base));
    if let Some(bearer) = bearer {
        req = req.bearer_auth(bearer);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("flowgate answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A request for the OpenAPI check: method, path, documented path, bearer, body.
pub type Probe<'a> = (
    reqwest::Method,
    String,
    String,
    Option<&'a str>,
    Option<Value>,
);

/// An email as a path segment (`@` and `+` percent-encoded).
pub fn encode(email: &str) -> String {
    email.replace('@', "%40").replace('+', "%2B")
}
