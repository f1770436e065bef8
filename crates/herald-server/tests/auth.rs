//! Token mode through the router (`oneshot`): which credentials open which
//! doors, and that nothing a client sends as a credential — a malformed
//! token, `Authorization` header, cookie or query string — panics or gets a
//! 5xx. Tokens from independent libraries (PyJWT, npm `jose`) are the e2e
//! suite's job (tests/e2e/auth*.test.mjs, tests/python/test_tokens.py); here
//! they are minted with jsonwebtoken.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use herald_core::{EventLog, Hub, HubConfig};
use herald_log::{MemoryLog, Retention};
use herald_server::{AppState, Auth, AuthConfig, ServerConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{json, Value};
use tower::ServiceExt;

const SECRET: &str = "0123456789abcdef-test-secret";
const API_KEY: &str = "orders-backend-key-0123456789";
const ADMIN_KEY: &str = "admin-backend-key-0123456789";

fn auth_config() -> AuthConfig {
    AuthConfig {
        jwt_secrets: vec![SECRET.into()],
        jwt_public_keys: vec![],
        jwks: None,
        jwks_refresh: Duration::from_secs(300),
        jwks_ca_file: None,
        audience: None,
        issuer: None,
        leeway: Duration::from_secs(0),
        public_topics: vec!["ticker/*".into()],
        api_keys: vec![
            format!("{API_KEY};publish=orders/*").parse().expect("spec"),
            format!("{ADMIN_KEY};admin").parse().expect("spec"),
        ],
    }
}

async fn app() -> Router {
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(Retention::default()));
    let auth = Auth::tokens(&auth_config())
        .await
        .expect("valid auth config");
    herald_server::router(AppState::new(
        Hub::new(log.clone(), HubConfig::default()),
        log,
        ServerConfig {
            max_connections_per_user: 2,
            ..ServerConfig::default()
        },
        auth,
    ))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).expect("key"),
    )
    .expect("signs")
}

fn user_token(sub: &str, subscribe: &[&str], publish: &[&str]) -> String {
    token(json!({
        "sub": sub,
        "exp": now() + 3600,
        "herald.subscribe": subscribe,
        "herald.publish": publish,
    }))
}

async fn status_code_and_challenge(
    app: &Router,
    request: Request<Body>,
) -> (StatusCode, String, Option<String>) {
    let response = app.clone().oneshot(request).await.expect("router");
    let status = response.status();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let code = if status.is_success() {
        String::new()
    } else {
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let json: Value = serde_json::from_slice(&body).expect("JSON error");
        json["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    (status, code, challenge)
}

fn subscribe(query: &str, bearer: Option<&str>) -> Request<Body> {
    let mut request = Request::get(format!("/v1/events?{query}"));
    if let Some(token) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    request.body(Body::empty()).expect("request")
}

fn publish(body: Value, bearer: Option<&str>) -> Request<Body> {
    let mut request = Request::post("/v1/publish").header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    request.body(Body::from(body.to_string())).expect("request")
}

#[tokio::test]
async fn a_user_token_opens_its_own_topics_only() {
    let app = app().await;
    let t = user_token("7777", &["orders/*"], &[]);
    for (query, want) in [
        ("", (StatusCode::OK, "")),
        ("topic=user/7777", (StatusCode::OK, "")),
        ("topic=orders/42", (StatusCode::OK, "")),
        ("topic=orders/4*", (StatusCode::OK, "")),
        ("topic=ticker/eur", (StatusCode::OK, "")),
        (
            "topic=user/7778",
            (StatusCode::FORBIDDEN, "topic_not_allowed"),
        ),
        (
            "topic=orders*",
            (StatusCode::FORBIDDEN, "topic_not_allowed"),
        ),
        ("topic=*", (StatusCode::FORBIDDEN, "topic_not_allowed")),
        ("user=7778", (StatusCode::FORBIDDEN, "topic_not_allowed")),
    ] {
        let (status, code, challenge) =
            status_code_and_challenge(&app, subscribe(query, Some(&t))).await;
        assert_eq!((status, code.as_str()), want, "?{query}");
        if status == StatusCode::FORBIDDEN {
            assert!(
                challenge.is_some_and(|c| c.contains(r#"error="insufficient_scope""#)),
                "?{query}"
            );
        }
    }
}

#[tokio::test]
async fn without_credentials_only_public_topics_open() {
    let app = app().await;
    let (status, _, _) = status_code_and_challenge(&app, subscribe("topic=ticker/eur", None)).await;
    assert_eq!(status, StatusCode::OK);
    for query in ["topic=news", "", "user=7777", "topic=ticker/eur&topic=news"] {
        let (status, code, challenge) =
            status_code_and_challenge(&app, subscribe(query, None)).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::UNAUTHORIZED, "token_missing"),
            "?{query}"
        );
        assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="herald""#));
    }
}

#[tokio::test]
async fn the_token_may_come_from_the_query_or_the_cookie_but_the_cookie_cannot_publish() {
    let app = app().await;
    let t = user_token("7777", &[], &["*"]);
    let (status, _, _) =
        status_code_and_challenge(&app, subscribe(&format!("access_token={t}"), None)).await;
    assert_eq!(status, StatusCode::OK);
    let by_cookie = Request::get("/v1/events")
        .header(header::COOKIE, format!("theme=dark; herald_token={t}"))
        .body(Body::empty())
        .expect("request");
    assert_eq!(
        status_code_and_challenge(&app, by_cookie).await.0,
        StatusCode::OK
    );
    let publish_by_cookie = Request::post("/v1/publish")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::COOKIE, format!("herald_token={t}"))
        .body(Body::from(
            json!({"topics": ["a"], "data": "x"}).to_string(),
        ))
        .expect("request");
    let (status, code, _) = status_code_and_challenge(&app, publish_by_cookie).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "token_missing")
    );
}

#[tokio::test]
async fn publish_needs_a_grant_covering_every_target() {
    let app = app().await;
    let orders = user_token("backend", &[], &["orders/*"]);
    let users = user_token("notifier", &[], &["user/*"]);
    let event = |target: Value| {
        let mut body = json!({"data": "x"});
        if let (Some(b), Some(t)) = (body.as_object_mut(), target.as_object()) {
            b.extend(t.clone());
        }
        body
    };
    let forbidden = (StatusCode::FORBIDDEN, "publish_not_allowed");
    for (bearer, target, want) in [
        (
            orders.as_str(),
            json!({"topics": ["orders/1"]}),
            (StatusCode::CREATED, ""),
        ),
        (orders.as_str(), json!({"topics": ["news"]}), forbidden),
        (
            orders.as_str(),
            json!({"topics": ["orders/1", "news"]}),
            forbidden,
        ),
        (orders.as_str(), json!({"users": ["7777"]}), forbidden),
        (orders.as_str(), json!({"broadcast": true}), forbidden),
        (
            users.as_str(),
            json!({"users": ["7777"]}),
            (StatusCode::CREATED, ""),
        ),
        (users.as_str(), json!({"broadcast": true}), forbidden),
        (
            API_KEY,
            json!({"topics": ["orders/9"]}),
            (StatusCode::CREATED, ""),
        ),
        (API_KEY, json!({"topics": ["news"]}), forbidden),
        // Admin rights are the admin routes only.
        (ADMIN_KEY, json!({"broadcast": true}), forbidden),
    ] {
        let (status, code, _) =
            status_code_and_challenge(&app, publish(event(target.clone()), Some(bearer))).await;
        assert_eq!((status, code.as_str()), want, "{target}");
    }
    let (status, code, _) =
        status_code_and_challenge(&app, publish(event(json!({"topics": ["a"]})), None)).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "token_missing")
    );
    let (status, code, _) = status_code_and_challenge(
        &app,
        publish(
            event(json!({"topics": ["a"]})),
            Some("not-a-configured-key-000"),
        ),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "token_invalid")
    );
}

#[tokio::test]
async fn admin_routes_need_admin_rights() {
    let app = app().await;
    let plain = user_token("7777", &[], &["*"]);
    let admin = token(json!({"sub": "ops", "exp": now() + 60, "herald.admin": true}));
    let get = |bearer: Option<&str>| {
        let mut r = Request::get("/v1/stats");
        if let Some(t) = bearer {
            r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        r.body(Body::empty()).expect("request")
    };
    assert_eq!(
        status_code_and_challenge(&app, get(Some(&admin))).await.0,
        StatusCode::OK
    );
    assert_eq!(
        status_code_and_challenge(&app, get(Some(ADMIN_KEY)))
            .await
            .0,
        StatusCode::OK
    );
    let (status, code, _) = status_code_and_challenge(&app, get(Some(&plain))).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "admin_required")
    );
    let (status, code, _) = status_code_and_challenge(&app, get(Some(API_KEY))).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "admin_required")
    );
    let (status, code, _) = status_code_and_challenge(&app, get(None)).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "token_missing")
    );
}

#[tokio::test]
async fn bad_tokens_are_refused_with_their_reason() {
    let app = app().await;
    let past = now() - 10;
    for (bad, code) in [
        (token(json!({"sub": "7777", "exp": past})), "token_expired"),
        (token(json!({"sub": "7777"})), "token_invalid"),
        (
            token(json!({"sub": "7777", "exp": now() + 60, "nbf": now() + 600})),
            "token_invalid",
        ),
        (
            token(json!({"sub": 7777, "exp": now() + 60})),
            "token_invalid",
        ),
        (
            token(json!({"sub": "7777", "exp": now() + 60, "herald.subscribe": "news"})),
            "token_invalid",
        ),
        ("a.b.c".to_owned(), "token_invalid"),
    ] {
        let (status, got, challenge) =
            status_code_and_challenge(&app, subscribe("", Some(&bad))).await;
        assert_eq!(
            (status, got.as_str()),
            (StatusCode::UNAUTHORIZED, code),
            "{bad}"
        );
        assert!(
            challenge.is_some_and(|c| c.contains(r#"error="invalid_token""#)),
            "{bad}"
        );
    }
    // Signed with another secret.
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "7777", "exp": now() + 60}),
        &EncodingKey::from_secret(b"another-secret-entirely-000").expect("key"),
    )
    .expect("signs");
    let (status, code, _) = status_code_and_challenge(&app, subscribe("", Some(&forged))).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "token_invalid")
    );
    // The payload of a valid token swapped for another user's.
    let valid = user_token("7777", &[], &[]);
    let other = user_token("1", &["*"], &[]);
    let parts: Vec<&str> = valid.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).unwrap_or(""),
        parts[2]
    );
    let (status, code, _) = status_code_and_challenge(&app, subscribe("", Some(&tampered))).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "token_invalid")
    );
}

#[tokio::test]
async fn a_user_over_its_stream_limit_is_told_to_come_back_later() {
    let app = app().await;
    let t = user_token("7777", &[], &[]);
    let mut open = Vec::new();
    for _ in 0..2 {
        let response = app
            .clone()
            .oneshot(subscribe("", Some(&t)))
            .await
            .expect("router");
        assert_eq!(response.status(), StatusCode::OK);
        open.push(response);
    }
    let third = app
        .clone()
        .oneshot(subscribe("", Some(&t)))
        .await
        .expect("router");
    assert_eq!(third.status(), StatusCode::OK);
    let body = axum::body::to_bytes(third.into_body(), 4096)
        .await
        .expect("a short body");
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("retry: "), "{text}");
    // Another user is not affected.
    let other = user_token("7778", &[], &[]);
    let response = app
        .clone()
        .oneshot(subscribe("", Some(&other)))
        .await
        .expect("router");
    assert_eq!(response.status(), StatusCode::OK);
    drop(open);
    assert!(
        metrics(&app)
            .await
            .contains("herald_streams_turned_away_total{limit=\"max_connections_per_user\"} 1"),
        "the refusal is counted"
    );
}

async fn metrics(app: &Router) -> String {
    let response = app
        .clone()
        .oneshot(
            Request::get("/metrics")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("router");
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn refusals_are_counted_by_code() {
    let app = app().await;
    for _ in 0..2 {
        let _ = status_code_and_challenge(&app, subscribe("topic=news", None)).await;
    }
    let _ = status_code_and_challenge(&app, subscribe("", Some("a.b.c"))).await;
    let text = metrics(&app).await;
    assert!(
        text.contains("herald_refusals_total{code=\"token_missing\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("herald_refusals_total{code=\"token_invalid\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("herald_refusals_total{code=\"admin_required\"} 0"),
        "{text}"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever arrives as a credential, the answer is a 2xx, 401 or 403
    /// with a JSON body — never a panic, never a 5xx.
    #[test]
    fn hostile_credentials_never_fail_the_server(
        authorization in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
        cookie in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
        access_token in proptest::option::of(".{0,300}"),
        jwt_like in proptest::option::of("[A-Za-z0-9_=-]{0,40}\\.[A-Za-z0-9_=-]{0,80}\\.[A-Za-z0-9_=-]{0,40}"),
        route in 0usize..3,
    ) {
        runtime().block_on(async {
            let app = app().await;
            let mut query = String::from("topic=news");
            if let Some(t) = access_token.as_ref().or(jwt_like.as_ref()) {
                query.push_str("&access_token=");
                query.extend(percent_encoding::utf8_percent_encode(t, percent_encoding::NON_ALPHANUMERIC));
            }
            let mut request = match route {
                0 => Request::get(format!("/v1/events?{query}")),
                1 => Request::post(format!("/v1/publish?{query}")).header(header::CONTENT_TYPE, "application/json"),
                _ => Request::get(format!("/v1/stats?{query}")),
            };
            if let Some(bytes) = &authorization {
                if let Ok(value) = header::HeaderValue::from_bytes(bytes) {
                    request = request.header(header::AUTHORIZATION, value);
                }
            }
            if let Some(bytes) = &cookie {
                if let Ok(value) = header::HeaderValue::from_bytes(bytes) {
                    request = request.header(header::COOKIE, value);
                }
            }
            let body = if route == 1 { json!({"topics": ["news"], "data": "x"}).to_string() } else { String::new() };
            let request = request.body(Body::from(body)).expect("request");
            let response = app.oneshot(request).await.expect("router");
            let status = response.status();
            prop_assert!(!status.is_server_error(), "{status}");
            prop_assert!(
                status.is_success() || matches!(status.as_u16(), 400 | 401 | 403),
                "{status}"
            );
            Ok(())
        })?;
    }
}
