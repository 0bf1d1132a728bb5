//! The role matrix: every operator route × no token and each role. Below the route's role the
//! answer is 401 (no token) or 403 (too low); at or above it, the request gets past the access
//! check (whatever the handler then says about the placeholder ids and empty bodies).

mod common;

use allot_origin::http::ops::ROUTES;
use allot_origin::ops::operators::Role;
use common::{TestApp, concrete, operator_token};

#[tokio::test]
async fn every_route_refuses_each_role_below_its_own_and_admits_the_rest() {
    let app = TestApp::spawn().await;
    let mut tokens = Vec::new();
    for role in Role::ALL {
        tokens.push((role, operator_token(&app, role.as_str()).await));
    }
    assert!(ROUTES.len() >= 5, "the table lists the operator routes");
    let mut checked = 0;
    for route in ROUTES {
        let path = concrete(route.path);
        let body = (route.method != "GET").then(|| serde_json::json!({}));
        let anonymous = app.ops(route.method, &path, None, body.clone()).await;
        assert_eq!(anonymous.status, 401, "{} {} without a token", route.method, route.path);
        assert_eq!(anonymous.error_code(), "UNAUTHORIZED");
        for (role, token) in &tokens {
            let r = app.ops(route.method, &path, Some(token), body.clone()).await;
            let what = format!("{} {} as {}: {} {:?}", route.method, route.path, role.as_str(), r.status, r.body);
            if role.allows(route.role) {
                assert!(![401, 403, 405].contains(&r.status) && r.status < 500, "{what}");
                if r.status == 404 {
                    assert_ne!(
                        r.json()["error"]["message"].as_str().unwrap_or("").get(..12),
                        Some("no route for"),
                        "{what}"
                    );
                }
            } else {
                assert_eq!(r.status, 403, "{what}");
                assert_eq!(r.error_code(), "FORBIDDEN", "{what}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, ROUTES.len() * Role::ALL.len());
    app.finish().await;
}
