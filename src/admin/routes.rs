//! The admin allow-list: every path under `/api/admin`, parsed from segments the proxy router has
//! already split. Only the email segment may carry `@`, `+` or percent-escapes; it is decoded once
//! and must then be a plausible email (no `/`, no control characters, no whitespace), so it can
//! never smuggle a path.

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
        _ => "",
    }
}

/// Routes the segments after `api/admin`.
pub fn route(method: &Method, segments: &[&str]) -> Result<AdminRoute, Miss> {
    let plain = |s: &str| crate::proxy::routes::plain_segment(s);
    let s = |x: &&str| (*x).to_string();
    // Every segment but an email one must be plain.
    let email_at = match segments {
        ["chatflows", _, "users", "email", last] if *last != "bulk" => Some(4),
        _ => None,
    };
    for (i, seg) in segments.iter().enumerate() {
        if Some(i) != email_at && !plain(seg) {
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
        ["chatflows", id, "users", user] => {
            return match *method {
                Method::POST => Ok(AdminRoute::AddUser {
                    chatflow: s(id),
                    user: s(user),
                }),
                Method::DELETE => Ok(AdminRoute::RemoveUser {
                    chatflow: s(id),
                    user: s(user),
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

/// Percent-decodes an email segment once; `None` unless the result is a plausible email.
pub fn decode_email(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = raw.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    let email = String::from_utf8(out).ok()?;
    valid_email(&email).then_some(email)
}

/// One `@` with something on both sides, at most 254 bytes, and none of `/ \ % ?  #`,
/// whitespace or control characters.
pub fn valid_email(email: &str) -> bool {
    let mut parts = email.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && email.len() <= 254
        && !domain.starts_with('.')
        && !email.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '/' | '\\' | '%' | '?' | '#')
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
    fn only_the_email_segment_may_carry_escapes() {
        assert_eq!(
            route(&Method::POST, &segs("chatflows/a%40b/users/x")),
            Err(Miss::NotFound)
        );
        assert_eq!(
            route(&Method::POST, &segs("chatflows/abc/users/a@b")),
            Err(Miss::NotFound)
        );
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
