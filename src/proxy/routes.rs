//! The allow-list: every path the proxy answers, and nothing else. Routing is on the raw path,
//! segment by segment; percent-encoded or dot segments and empty segments never match, so path
//! tricks (`..`, `%2f`, `//`) cannot reach a route they do not spell out.

use hyper::Method;

use super::error::ProxyError;
pub use crate::admin::routes::AdminRoute;
use crate::admin::routes::Miss;

/// A request the proxy knows how to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /api/v1/chatflows` — Flowise-compatible listing, from the index.
    ListChatflows,
    /// `GET /api/v1/chatflows/{flowiseId}`.
    GetChatflow(String),
    /// `POST /api/v1/prediction/{flowiseId}` — forwarded to Flowise.
    Predict(String),
    /// `GET /api/v1/chatflows-streaming/{flowiseId}` — asked without credentials by the official
    /// Flowise SDKs before every prediction; asked of Flowise for a chatflow the index knows.
    ChatflowStreaming(String),
    /// `GET /api/v1/public-chatbotConfig/{flowiseId}` — the chat window's settings, forwarded
    /// to Flowise (public there; here for a caller the chatflow is granted to).
    ChatbotConfig(String),
    /// `PUT /api/v1/chatmessage/abort/{flowiseId}/{chatId}` — stop generating in one of the
    /// caller's own chats (as Flowise's chat window and embed do).
    AbortChat { id: String, chat_id: String },
    /// `GET /chatflows` — the Python service's listing.
    CompatListChatflows,
    /// `GET /chatflows/{id}` — id is the Chatflow name or the Flowise id.
    CompatGetChatflow(String),
    /// `POST /chat/predict` — the Python service's consolidated prediction.
    CompatPredict,
    /// `POST /chat/authenticate` — password grant at the token endpoint.
    Authenticate,
    /// `POST /chat/refresh` — refresh-token grant at the token endpoint.
    Refresh,
    /// `GET /credits` — the caller's balances.
    Credits,
    /// `GET /credits/usage` — the caller's own usage log.
    CreditUsage,
    /// `GET /openapi.json` — the OpenAPI document of this API, without credentials.
    OpenApi,
    /// `GET /health` — the Python service's health check, without credentials: the proxy
    /// answers. (Readiness is `/readyz` on the ops port.)
    Health,
    /// Everything under `/api/admin` ([`crate::admin`]).
    Admin(AdminRoute),
}

impl Route {
    /// The route's name in metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Route::ListChatflows => "list_chatflows",
            Route::GetChatflow(_) => "get_chatflow",
            Route::Predict(_) => "prediction",
            Route::ChatflowStreaming(_) => "chatflow_streaming",
            Route::ChatbotConfig(_) => "chatbot_config",
            Route::AbortChat { .. } => "abort_chat",
            Route::CompatListChatflows => "compat_list_chatflows",
            Route::CompatGetChatflow(_) => "compat_get_chatflow",
            Route::CompatPredict => "compat_predict",
            Route::Authenticate => "authenticate",
            Route::Refresh => "refresh",
            Route::Credits => "credits",
            Route::CreditUsage => "credits_usage",
            Route::OpenApi => "openapi",
            Route::Health => "health",
            Route::Admin(route) => route.label(),
        }
    }
}

/// Longest path the router looks at.
const MAX_PATH: usize = 512;

/// Maps a method and raw path to a route, or the error to answer with.
pub fn route(method: &Method, path: &str) -> Result<Route, ProxyError> {
    let not_found = || ProxyError::NotFound {
        method: method.to_string(),
        path: truncate(path),
    };
    if path.len() > MAX_PATH || !path.starts_with('/') {
        return Err(not_found());
    }
    let trimmed = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    let segments: Vec<&str> = trimmed[1..].split('/').collect();
    if let ["api", "admin", rest @ ..] = segments.as_slice() {
        return crate::admin::routes::route(method, rest)
            .map(Route::Admin)
            .map_err(|miss| match miss {
                Miss::NotFound => not_found(),
                Miss::MethodNotAllowed(allow) => ProxyError::MethodNotAllowed {
                    method: method.to_string(),
                    path: truncate(path),
                    allow,
                },
            });
    }
    let (route, allowed) = match segments.as_slice() {
        // A chat id is the client's own, as its predictions sent it (an email, the embed's
        // `customer+uuid`, any script): percent-decoded once, not held to the characters of
        // ids and names. Binding it to the caller cleans it as for a prediction, and the path
        // to Flowise encodes it again.
        ["api", "v1", "chatmessage", "abort", id, chat_id] => {
            let chat_id = crate::admin::routes::decode_segment(chat_id)
                .filter(|c| c.chars().any(|c| !c.is_control() && !c.is_whitespace()));
            match chat_id {
                Some(chat_id) if plain_segment(id) => (
                    Route::AbortChat {
                        id: (*id).to_string(),
                        chat_id,
                    },
                    Method::PUT,
                ),
                _ => return Err(not_found()),
            }
        }
        _ if segments.iter().any(|s| !plain_segment(s)) => return Err(not_found()),
        ["api", "v1", "chatflows"] => (Route::ListChatflows, Method::GET),
        ["api", "v1", "chatflows", id] => (Route::GetChatflow((*id).to_string()), Method::GET),
        ["api", "v1", "prediction", id] => (Route::Predict((*id).to_string()), Method::POST),
        ["api", "v1", "chatflows-streaming", id] => {
            (Route::ChatflowStreaming((*id).to_string()), Method::GET)
        }
        ["api", "v1", "public-chatbotConfig", id] => {
            (Route::ChatbotConfig((*id).to_string()), Method::GET)
        }
        ["chatflows"] => (Route::CompatListChatflows, Method::GET),
        ["chatflows", id] => (Route::CompatGetChatflow((*id).to_string()), Method::GET),
        ["chat", "predict"] => (Route::CompatPredict, Method::POST),
        ["chat", "authenticate"] => (Route::Authenticate, Method::POST),
        ["chat", "refresh"] => (Route::Refresh, Method::POST),
        ["credits"] => (Route::Credits, Method::GET),
        ["credits", "usage"] => (Route::CreditUsage, Method::GET),
        ["openapi.json"] => (Route::OpenApi, Method::GET),
        ["health"] => (Route::Health, Method::GET),
        _ => return Err(not_found()),
    };
    if *method == allowed || (allowed == Method::GET && *method == Method::HEAD) {
        Ok(route)
    } else {
        Err(ProxyError::MethodNotAllowed {
            method: method.to_string(),
            path: truncate(path),
            allow: crate::admin::routes::allow(&allowed),
        })
    }
}

/// A segment made only of characters ids and names use: no `%`, no dots-only, not empty.
pub(crate) fn plain_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment.len() <= 253
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn truncate(path: &str) -> String {
    path.chars().take(128).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c2a7e-0000-4000-8000-000000000001";

    #[test]
    fn the_allow_list_routes() {
        assert_eq!(
            route(&Method::GET, "/api/v1/chatflows").ok(),
            Some(Route::ListChatflows)
        );
        assert_eq!(
            route(&Method::GET, "/api/v1/chatflows/").ok(),
            Some(Route::ListChatflows)
        );
        assert_eq!(
            route(&Method::POST, &format!("/api/v1/prediction/{ID}")).ok(),
            Some(Route::Predict(ID.into()))
        );
        assert_eq!(
            route(&Method::GET, "/chatflows/support-bot").ok(),
            Some(Route::CompatGetChatflow("support-bot".into()))
        );
        assert_eq!(
            route(&Method::POST, "/chat/predict").ok(),
            Some(Route::CompatPredict)
        );
        assert_eq!(route(&Method::GET, "/credits").ok(), Some(Route::Credits));
        assert_eq!(
            route(&Method::PUT, &format!("/api/v1/chatmessage/abort/{ID}/c-1")).ok(),
            Some(Route::AbortChat {
                id: ID.into(),
                chat_id: "c-1".into()
            })
        );
    }

    #[test]
    fn an_abort_takes_the_chat_id_a_prediction_takes() {
        let abort = |chat: &str| match route(
            &Method::PUT,
            &format!("/api/v1/chatmessage/abort/{ID}/{chat}"),
        ) {
            Ok(Route::AbortChat { id, chat_id }) if id == ID => Some(chat_id),
            _ => None,
        };
        for (spelled, chat_id) in [
            ("user@example.com", "user@example.com"),
            ("user%40example.com", "user@example.com"),
            ("cust-7+0b0e0c0a", "cust-7+0b0e0c0a"),
            ("%E4%BC%9A%E8%AF%9D%201", "会话 1"),
            ("a%2Fb", "a/b"),
            ("a%0Ab", "a\nb"),
            ("..", ".."),
        ] {
            assert_eq!(abort(spelled).as_deref(), Some(chat_id), "{spelled}");
        }
    }

    #[test]
    fn side_doors_are_not_found() {
        for path in [
            "/api/v1/internal-prediction/x",
            "/api/v1/webhook/x",
            "/api/v1/mcp/x",
            "/api/v1/chatmessage/x",
            "/api/v1/chatmessage/abort/x",
            "/api/v1/chatmessage/abort/x/%zz",
            "/api/v1/chatmessage/abort/x/%20",
            "/api/v1/chatmessage/abort/x/%FF",
            "/api/v1/chatmessage/abort/a%2Fb/c1",
            "/api/v1/attachments/x/y",
            "/api/v1/get-upload-file",
            "/api/v1/feedback/x",
            "/api/v1/leads/x",
            "/api/v1/public-chatflows/x",
            "/api/v1/vector/upsert/x",
            "/api/v1/apikey",
            "/api/v1/prediction",
            "/api/v1/prediction/x/../../apikey",
            "/api/v1/prediction/%2e%2e/apikey",
            "/api/v1/prediction/a%2fb",
            "/api/v1//prediction/x",
            "//api/v1/prediction/x",
            "/API/V1/prediction/x",
            "/api/v1/prediction/x/extra",
            "/",
            "",
            "api/v1/chatflows",
        ] {
            let result = route(&Method::POST, path);
            assert!(
                matches!(result, Err(ProxyError::NotFound { .. })),
                "{path} -> {result:?}"
            );
        }
    }

    #[test]
    fn a_known_path_with_the_wrong_method_is_405_naming_the_allowed_ones() {
        assert!(matches!(
            route(&Method::DELETE, "/api/v1/chatflows/x"),
            Err(ProxyError::MethodNotAllowed {
                allow: "GET, HEAD",
                ..
            })
        ));
        assert!(matches!(
            route(&Method::GET, "/api/v1/prediction/x"),
            Err(ProxyError::MethodNotAllowed { allow: "POST", .. })
        ));
        assert!(matches!(
            route(&Method::PUT, "/api/admin/chatflows/x"),
            Err(ProxyError::MethodNotAllowed {
                allow: "GET, HEAD, DELETE",
                ..
            })
        ));
        assert!(matches!(
            route(&Method::GET, "/api/v1/chatmessage/abort/x/c1"),
            Err(ProxyError::MethodNotAllowed { allow: "PUT", .. })
        ));
        let answer = route(&Method::TRACE, "/credits")
            .err()
            .map(ProxyError::into_response);
        assert_eq!(
            answer.as_ref().and_then(|r| r.headers().get("allow")),
            Some(&hyper::header::HeaderValue::from_static("GET, HEAD"))
        );
    }

    #[test]
    fn admin_paths_route_and_their_tricks_do_not() {
        assert_eq!(
            route(&Method::GET, "/openapi.json").ok(),
            Some(Route::OpenApi)
        );
        assert_eq!(route(&Method::GET, "/health").ok(), Some(Route::Health));
        assert_eq!(route(&Method::HEAD, "/health/").ok(), Some(Route::Health));
        assert!(route(&Method::POST, "/health").is_err());
        assert_eq!(
            route(
                &Method::DELETE,
                "/api/admin/chatflows/x/users/email/a%2Bb%40c.d"
            )
            .ok(),
            Some(Route::Admin(AdminRoute::RemoveUserByEmail {
                chatflow: "x".into(),
                email: "a+b@c.d".into()
            }))
        );
        assert_eq!(
            route(&Method::POST, "/api/admin/credits/adjustments").ok(),
            Some(Route::Admin(AdminRoute::AdjustCredits))
        );
        assert_eq!(
            route(&Method::GET, "/api/admin/credits/balances").ok(),
            Some(Route::Admin(AdminRoute::CreditBalances))
        );
        assert!(matches!(
            route(&Method::GET, "/api/admin/credits/adjustments"),
            Err(ProxyError::MethodNotAllowed { allow: "POST", .. })
        ));
        for path in [
            "/api/admin/chatflows/x/users/email/..%2F..%2Fv1@x",
            "/api/admin/chatflows/x/users/email/a@b/extra",
            "/api/admin/chatflows/%2e%2e/users/x",
            "/api/admin/../v1/chatflows",
            "/api/admin//chatflows",
            "/api/admin",
            "/api/admin/chatflows/x/users/a%2",
            "/api/admin/chatflows/x/users/a%0Ab",
        ] {
            let result = route(&Method::DELETE, path);
            assert!(
                matches!(result, Err(ProxyError::NotFound { .. })),
                "{path} -> {result:?}"
            );
        }
        assert!(matches!(
            route(&Method::PUT, "/api/admin/chatflows/x/users/email/a@b.c"),
            Err(ProxyError::MethodNotAllowed { .. })
        ));
    }
}
