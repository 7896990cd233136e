//! The admin allow-list: every path under `/api/admin`, parsed from segments the proxy router has
//! already split. Only the email segment may carry `@`, `+` or percent-escapes; it is decoded once
//! and must then be a plausible email (no `/`, no control characters, no whitespace), so it can
//! never smuggle a path.

use crate::crd::access::is_address;
use hyper::Method;

/// A request to the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRoute {
    /// `POST /api/admin/chatflows/add-users`.
    AddUsers,
    /// `POST /api/admin/chatflows/add-users-by-email`.
    AddUsersByEmail,
    /// `POST /api/admin/chatflows/{chatflow_id}/users/{user_id}`.
    AddUser { chatflow: String, user: String },
    /// `POST /api/admin/chatflows/{chatflow_id}/users/email/{email}`.
    AddUserByEmail { chatflow: String, email: String },
    /// `DELETE /api/admin/chatflows/{chatflow_id}/users/{user_id}`.
    RemoveUser { chatflow: String, user: String },
    /// `DELETE /api/admin/chatflows/{chatflow_id}/users/email/{email}`.
    RemoveUserByEmail { chatflow: String, email: String },
    /// `POST /api/admin/chatflows/{flowise_id}/users/bulk`.
    BulkAddUsers(String),
    /// `POST /api/admin/chatflows/{flowise_id}/users/email/bulk`.
    BulkAddUsersByEmail(String),
    /// `POST /api/admin/chatflows/sync`.
    Sync,
    /// `GET /api/admin/chatflows`.
    ListChatflows,
    /// `GET /api/admin/chatflows/stats`.
    Stats,
    /// `GET /api/admin/chatflows/{flowise_id}`.
    GetChatflow(String),
    /// `DELETE /api/admin/chatflows/{flowise_id}`.
    DeleteChatflow(String),
    /// `GET /api/admin/chatflows/{flowise_id}/users`.
    ListUsers(String),
    /// `GET /api/admin/credits/usage`.
    CreditUsage,
    /// `POST /api/admin/credits/adjustments`.
    AdjustCredits,
    /// `GET /api/admin/credits/balances`.
    CreditBalances,
}

impl AdminRoute {
    /// The `route` label of the request metric.
    pub fn label(&self) -> &'static str {
        match self {
            Self::AddUsers => "admin_add_users",
            Self::AddUsersByEmail => "admin_add_users_by_email",
            Self::AddUser { .. } => "admin_add_user",
            Self::AddUserByEmail { .. } => "admin_add_user_by_email",
            Self::RemoveUser { .. } => "admin_remove_user",
            Self::RemoveUserByEmail { .. } => "admin_remove_user_by_email",
            Self::BulkAddUsers(_) => "admin_bulk_add_users",
            Self::BulkAddUsersByEmail(_) => "admin_bulk_add_users_by_email",
            Self::Sync => "admin_sync",
            Self::ListChatflows => "admin_list_chatflows",
            Self::Stats => "admin_stats",
            Self::GetChatflow(_) => "admin_get_chatflow",
            Self::DeleteChatflow(_) => "admin_delete_chatflow",
            Self::ListUsers(_) => "admin_list_users",
            Self::CreditUsage => "admin_credit_usage",
            Self::AdjustCredits => "admin_adjust_credits",
            Self::CreditBalances => "admin_credit_balances",
        }
    }
}

/// Why an admin path did not route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    NotFound,
    /// The path exists; the value is its `Allow` header.
    MethodNotAllowed(&'static str),
}

/// The `Allow` header value of a path answering `method` (GET implies HEAD).
pub(crate) fn allow(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET, HEAD",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        _ => "",
    }
}

/// Routes the segments after `api/admin`.
pub fn route(method: &Method, segments: &[&str]) -> Result<AdminRoute, Miss> {
    let plain = |s: &str| crate::proxy::routes::plain_segment(s);
    let s = |x: &&str| (*x).to_string();
    // Every segment but a user's (an email or an id, percent-decoded once) must be plain.
    let user_at = match segments {
        ["chatflows", _, "users", "email", last] if *last != "bulk" => Some(4),
        ["chatflows", _, "users", last] if !matches!(*last, "bulk" | "email") => Some(3),
        _ => None,
    };
    for (i, seg) in segments.iter().enumerate() {
        if Some(i) != user_at && !plain(seg) {
            return Err(Miss::NotFound);
        }
    }
    let (route, allowed) = match segments {
        ["chatflows"] => (AdminRoute::ListChatflows, Method::GET),
        ["chatflows", "add-users"] => (AdminRoute::AddUsers, Method::POST),
        ["chatflows", "add-users-by-email"] => (AdminRoute::AddUsersByEmail, Method::POST),
        ["chatflows", "sync"] => (AdminRoute::Sync, Method::POST),
        ["chatflows", "stats"] => (AdminRoute::Stats, Method::GET),
        ["credits", "usage"] => (AdminRoute::CreditUsage, Method::GET),
        ["credits", "adjustments"] => (AdminRoute::AdjustCredits, Method::POST),
        ["credits", "balances"] => (AdminRoute::CreditBalances, Method::GET),
        ["chatflows", id] => {
            return match *method {
                Method::GET | Method::HEAD => Ok(AdminRoute::GetChatflow(s(id))),
                Method::DELETE => Ok(AdminRoute::DeleteChatflow(s(id))),
                _ => Err(Miss::MethodNotAllowed("GET, HEAD, DELETE")),
            };
        }
        ["chatflows", id, "users"] => (AdminRoute::ListUsers(s(id)), Method::GET),
        ["chatflows", id, "users", "bulk"] => (AdminRoute::BulkAddUsers(s(id)), Method::POST),
        ["chatflows", id, "users", "email", "bulk"] => {
            (AdminRoute::BulkAddUsersByEmail(s(id)), Method::POST)
        }
        ["chatflows", id, "users", "email", raw] => {
            let email = decode_email(raw).ok_or(Miss::NotFound)?;
            return match *method {
                Method::POST => Ok(AdminRoute::AddUserByEmail {
                    chatflow: s(id),
                    email,
                }),
                Method::DELETE => Ok(AdminRoute::RemoveUserByEmail {
                    chatflow: s(id),
                    email,
                }),
                _ => Err(Miss::MethodNotAllowed("POST, DELETE")),
            };
        }
        // An email route whose email is missing (`users/email/` with an empty variable) is no
        // user named `email`.
        ["chatflows", _, "users", "email"] => return Err(Miss::NotFound),
        ["chatflows", id, "users", raw] => {
            let user = decode_user_id(raw).ok_or(Miss::NotFound)?;
            return match *method {
                Method::POST => Ok(AdminRoute::AddUser {
                    chatflow: s(id),
                    user,
                }),
                Method::DELETE => Ok(AdminRoute::RemoveUser {
                    chatflow: s(id),
                    user,
                }),
                _ => Err(Miss::MethodNotAllowed("POST, DELETE")),
            };
        }
        _ => return Err(Miss::NotFound),
    };
    if *method == allowed || (allowed == Method::GET && *method == Method::HEAD) {
        Ok(route)
    } else {
        Err(Miss::MethodNotAllowed(allow(&allowed)))
    }
}

/// Percent-decodes a path segment once; `None` for a `%` not followed by two hex digits (which
/// the decoder would keep as it is, making `%zz` and `%25zz` the same id).
pub(crate) fn decode_segment(raw: &str) -> Option<String> {
    let escapes_valid = raw.split('%').skip(1).all(|escape| {
        escape
            .as_bytes()
            .get(..2)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !escapes_valid {
        return None;
    }
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

/// Percent-decodes an email segment once; `None` unless the result is a plausible email.
pub fn decode_email(raw: &str) -> Option<String> {
    decode_segment(raw).filter(|email| is_address(email))
}

/// Percent-decodes a user id segment once; `None` unless it is an id the admin API accepts in
/// a body (1–512 characters, no control characters, no surrounding whitespace). Identity
/// providers' subjects are not path-safe (`auth0|64f…`, `google-oauth2|10…`).
pub fn decode_user_id(raw: &str) -> Option<String> {
    decode_segment(raw).filter(|id| {
        !id.is_empty() && id.len() <= 512 && id.trim() == id && !id.chars().any(char::is_control)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(path: &str) -> Vec<&str> {
        path.split('/').collect()
    }

    #[test]
    fn emails_may_be_plain_or_percent_encoded() {
        for raw in [
            "bob+x@example.com",
            "bob%2Bx%40example.com",
            "bob+x%40example.com",
        ] {
            let path = format!("chatflows/abc/users/email/{raw}");
            assert_eq!(
                route(&Method::POST, &segs(&path)),
                Ok(AdminRoute::AddUserByEmail {
                    chatflow: "abc".into(),
                    email: "bob+x@example.com".into()
                }),
                "{raw}"
            );
        }
    }

    #[test]
    fn path_tricks_in_the_email_segment_are_not_found() {
        for raw in [
            "a%2Fb@example.com",
            "..%2f..@x",
            "%2e%2e",
            "no-at-sign",
            "a@b@c",
            "a%40",
            "a%zz@x",
            "a%20b@x",
            "a%00@x",
            "a%252F@x",
        ] {
            let path = format!("chatflows/abc/users/email/{raw}");
            assert_eq!(
                route(&Method::DELETE, &segs(&path)),
                Err(Miss::NotFound),
                "{raw}"
            );
        }
    }

    #[test]
    fn an_email_route_without_its_email_is_no_user_named_email() {
        // `…/users/email/$EMAIL` with `$EMAIL` empty, its trailing slash trimmed.
        for method in [Method::POST, Method::DELETE] {
            assert_eq!(
                route(&method, &segs("chatflows/abc/users/email")),
                Err(Miss::NotFound)
            );
        }
    }

    #[test]
    fn only_the_user_segment_may_carry_escapes() {
        assert_eq!(
            route(&Method::POST, &segs("chatflows/a%40b/users/x")),
            Err(Miss::NotFound)
        );
        assert_eq!(
            route(&Method::GET, &segs("chatflows/a%2Fb/users")),
            Err(Miss::NotFound)
        );
    }

    #[test]
    fn user_ids_of_identity_providers_round_trip_through_the_path() {
        for (raw, id) in [
            ("auth0|64f1c2", "auth0|64f1c2"),
            ("auth0%7C64f1c2", "auth0|64f1c2"),
            ("google-oauth2%7C1093", "google-oauth2|1093"),
            ("a@b", "a@b"),
            ("CgNib2I%3D", "CgNib2I="),
            ("plain-id", "plain-id"),
        ] {
            let path = format!("chatflows/abc/users/{raw}");
            assert_eq!(
                route(&Method::DELETE, &segs(&path)),
                Ok(AdminRoute::RemoveUser {
                    chatflow: "abc".into(),
                    user: id.into()
                }),
                "{raw}"
            );
        }
        let long = "x".repeat(513);
        for raw in ["%20bob", "bob%0A", "%zz", "a%2", "%C3%28", long.as_str()] {
            let path = format!("chatflows/abc/users/{raw}");
            assert_eq!(
                route(&Method::POST, &segs(&path)),
                Err(Miss::NotFound),
                "{raw}"
            );
        }
    }

    #[test]
    fn fixed_words_win_over_ids() {
        assert_eq!(
            route(&Method::POST, &segs("chatflows/sync")),
            Ok(AdminRoute::Sync)
        );
        assert_eq!(
            route(&Method::GET, &segs("chatflows/stats")),
            Ok(AdminRoute::Stats)
        );
        assert_eq!(
            route(&Method::POST, &segs("chatflows/x/users/email/bulk")),
            Ok(AdminRoute::BulkAddUsersByEmail("x".into()))
        );
        assert_eq!(
            route(&Method::GET, &segs("chatflows/sync")),
            Err(Miss::MethodNotAllowed("POST"))
        );
    }
}
