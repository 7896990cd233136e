//! Method + raw path → `proxy::routes::route`, and the session binding of the chat id a request
//! asks for. A routed path must be the canonical spelling of its route (an admin email segment:
//! one that routes to the same place, and the email never carries a `/`); a bound session always
//! carries the caller's prefix.
#![no_main]

use hyper::Method;
use libfuzzer_sys::fuzz_target;

use flowgate::proxy::routes::{AdminRoute, Route, route};
use flowgate::proxy::session;

const METHODS: [Method; 7] = [
    Method::GET,
    Method::POST,
    Method::HEAD,
    Method::PUT,
    Method::DELETE,
    Method::OPTIONS,
    Method::PATCH,
];

fn canonical(route: &Route) -> String {
    match route {
        Route::ListChatflows => "/api/v1/chatflows".into(),
        Route::GetChatflow(id) => format!("/api/v1/chatflows/{id}"),
        Route::Predict(id) => format!("/api/v1/prediction/{id}"),
        Route::ChatflowStreaming(id) => format!("/api/v1/chatflows-streaming/{id}"),
        Route::CompatListChatflows => "/chatflows".into(),
        Route::CompatGetChatflow(id) => format!("/chatflows/{id}"),
        Route::CompatPredict => "/chat/predict".into(),
        Route::Authenticate => "/chat/authenticate".into(),
        Route::Refresh => "/chat/refresh".into(),
        Route::Credits => "/credits".into(),
        Route::OpenApi => "/openapi.json".into(),
        Route::Admin(admin) => format!("/api/admin/chatflows{}", admin_suffix(admin)),
    }
}

fn admin_suffix(route: &AdminRoute) -> String {
    match route {
        AdminRoute::ListChatflows => String::new(),
        AdminRoute::AddUsers => "/add-users".into(),
        AdminRoute::AddUsersByEmail => "/add-users-by-email".into(),
        AdminRoute::Sync => "/sync".into(),
        AdminRoute::Stats => "/stats".into(),
        AdminRoute::GetChatflow(id) | AdminRoute::DeleteChatflow(id) => format!("/{id}"),
        AdminRoute::ListUsers(id) => format!("/{id}/users"),
        AdminRoute::BulkAddUsers(id) => format!("/{id}/users/bulk"),
        AdminRoute::BulkAddUsersByEmail(id) => format!("/{id}/users/email/bulk"),
        AdminRoute::AddUser { chatflow, user } | AdminRoute::RemoveUser { chatflow, user } => {
            format!("/{chatflow}/users/{user}")
        }
        AdminRoute::AddUserByEmail { chatflow, email }
        | AdminRoute::RemoveUserByEmail { chatflow, email } => {
            format!("/{chatflow}/users/email/{}", percent_encode(email))
        }
    }
}

/// Every byte but ASCII letters, digits, `.`, `-` and `_` as `%XX`.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn email(route: &Route) -> Option<&str> {
    match route {
        Route::Admin(
            AdminRoute::AddUserByEmail { email, .. } | AdminRoute::RemoveUserByEmail { email, .. },
        ) => Some(email),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    let method = &METHODS[first as usize % METHODS.len()];
    if let Ok(found) = route(method, path) {
        let spelled = if path.len() > 1 {
            path.strip_suffix('/').unwrap_or(path)
        } else {
            path
        };
        let canonical = canonical(&found);
        if let Some(email) = email(&found) {
            assert!(!email.contains('/'), "{path:?} -> {found:?}");
            // Fully escaped, a long email can exceed the router's path limit.
            if canonical.len() <= 512 {
                assert_eq!(route(method, &canonical).ok(), Some(found), "{path:?}");
            }
        } else {
            assert_eq!(spelled, canonical);
        }
    }
    let subject = format!("user:{}", first % 7);
    let bound = session::bind(&subject, Some(path));
    assert!(bound.starts_with(&session::prefix(&subject)));
});
