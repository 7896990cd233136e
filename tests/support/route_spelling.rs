//! How each allow-listed route is spelled: the oracle shared by the property test
//! (`tests/fuzz_props.rs`) and the coverage-guided fuzz target (`fuzz/fuzz_targets/route.rs`),
//! both included with `#[path]`, so a new route is spelled in one place.

use hyper::Method;

use flowgate::proxy::routes::{AdminRoute, Route};

/// Every method a caller may send.
pub const METHODS: [Method; 7] = [
    Method::GET,
    Method::POST,
    Method::HEAD,
    Method::PUT,
    Method::DELETE,
    Method::OPTIONS,
    Method::PATCH,
];

/// The one path that routes to `route` (admin user ids and emails fully percent-encoded).
pub fn canonical(route: &Route) -> String {
    match route {
        Route::ListChatflows => "/api/v1/chatflows".into(),
        Route::GetChatflow(id) => format!("/api/v1/chatflows/{id}"),
        Route::Predict(id) => format!("/api/v1/prediction/{id}"),
        Route::ChatflowStreaming(id) => format!("/api/v1/chatflows-streaming/{id}"),
        Route::ChatbotConfig(id) => format!("/api/v1/public-chatbotConfig/{id}"),
        Route::AbortChat { id, chat_id } => {
            format!("/api/v1/chatmessage/abort/{id}/{}", percent_encode(chat_id))
        }
        Route::CompatListChatflows => "/chatflows".into(),
        Route::CompatGetChatflow(id) => format!("/chatflows/{id}"),
        Route::CompatPredict => "/chat/predict".into(),
        Route::Authenticate => "/chat/authenticate".into(),
        Route::Refresh => "/chat/refresh".into(),
        Route::Credits => "/credits".into(),
        Route::CreditUsage => "/credits/usage".into(),
        Route::OpenApi => "/openapi.json".into(),
        Route::Health => "/health".into(),
        Route::Admin(admin) => format!("/api/admin{}", admin_path(admin)),
    }
}

fn admin_path(route: &AdminRoute) -> String {
    match route {
        AdminRoute::ListChatflows => "/chatflows".into(),
        AdminRoute::AddUsers => "/chatflows/add-users".into(),
        AdminRoute::AddUsersByEmail => "/chatflows/add-users-by-email".into(),
        AdminRoute::Sync => "/chatflows/sync".into(),
        AdminRoute::Stats => "/chatflows/stats".into(),
        AdminRoute::GetChatflow(id) | AdminRoute::DeleteChatflow(id) => format!("/chatflows/{id}"),
        AdminRoute::ListUsers(id) => format!("/chatflows/{id}/users"),
        AdminRoute::BulkAddUsers(id) => format!("/chatflows/{id}/users/bulk"),
        AdminRoute::BulkAddUsersByEmail(id) => format!("/chatflows/{id}/users/email/bulk"),
        AdminRoute::AddUser { chatflow, user } | AdminRoute::RemoveUser { chatflow, user } => {
            format!("/chatflows/{chatflow}/users/{}", percent_encode(user))
        }
        AdminRoute::AddUserByEmail { chatflow, email }
        | AdminRoute::RemoveUserByEmail { chatflow, email } => {
            format!(
                "/chatflows/{chatflow}/users/email/{}",
                percent_encode(email)
            )
        }
        AdminRoute::CreditUsage => "/credits/usage".into(),
        AdminRoute::AdjustCredits => "/credits/adjustments".into(),
        AdminRoute::CreditBalances => "/credits/balances".into(),
    }
}

/// The user a route names in its last segment (decoded once by the router): an email or an id.
pub fn user_segment(route: &Route) -> Option<&str> {
    match route {
        Route::Admin(
            AdminRoute::AddUserByEmail { email: user, .. }
            | AdminRoute::RemoveUserByEmail { email: user, .. }
            | AdminRoute::AddUser { user, .. }
            | AdminRoute::RemoveUser { user, .. },
        ) => Some(user),
        Route::AbortChat { chat_id, .. } => Some(chat_id),
        _ => None,
    }
}

/// Every byte but ASCII letters, digits, `.`, `-` and `_` as `%XX`.
pub fn percent_encode(s: &str) -> String {
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
