//! Method + raw path → `proxy::routes::route`, and the session binding of the chat id a request
//! asks for. A routed path must be the canonical spelling of its route; a bound session always
//! carries the caller's prefix.
#![no_main]

use hyper::Method;
use libfuzzer_sys::fuzz_target;

use flowgate::proxy::routes::{Route, route};
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
        #[allow(unreachable_patterns)]
        other => format!("{other:?}"),
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
        assert_eq!(spelled, canonical(&found));
    }
    let subject = format!("user:{}", first % 7);
    let bound = session::bind(&subject, Some(path));
    assert!(bound.starts_with(&session::prefix(&subject)));
});
