//! Method + raw path → `proxy::routes::route`, and the session binding of the chat id a request
//! asks for. A routed path must be the canonical spelling of its route (an admin user segment,
//! email or id, which the router decodes once: one that routes to the same place; an email never
//! carries a `/`); a bound session always carries the caller's prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;

use flowgate::proxy::routes::{AdminRoute, Route, route};
use flowgate::proxy::session;

#[path = "../../tests/support/route_spelling.rs"]
mod route_spelling;

use route_spelling::{METHODS, canonical, user_segment};

fn is_email_route(route: &Route) -> bool {
    matches!(
        route,
        Route::Admin(AdminRoute::AddUserByEmail { .. } | AdminRoute::RemoveUserByEmail { .. })
    )
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
        if let Some(user) = user_segment(&found) {
            if is_email_route(&found) {
                assert!(!user.contains('/'), "{path:?} -> {found:?}");
            }
            // Fully escaped, a long user can exceed the router's path limit.
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
