//! The router driven in-process with `tower::ServiceExt::oneshot`: status,
//! error code, content type and the fields of every route's answers, without
//! a socket or the e2e suite.
//!
//! Only [`test_state`] builds an `AppState`; everything else goes through
//! the router, as a client would.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use herald_core::{EventLog, Hub, HubConfig};
use herald_log::{MemoryLog, Retention};
use herald_server::{AppState, Auth, ServerConfig};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const MAX_BODY: usize = 4096;
const MAX_DATA: usize = 1024;
const MAX_CONNECTIONS: usize = 8;
const ALLOWED_ORIGIN: &str = "https://app.example.com";

/// The one place a test `AppState` is built: an in-memory log, small limits
/// (so over-limit requests stay small), one allowed CORS origin.
fn test_state(dev: bool) -> Arc<AppState> {
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(Retention::default()));
    AppState::new(
        Hub::new(log.clone(), HubConfig::default()),
        log,
        ServerConfig {
            dev,
            max_body_bytes: MAX_BODY,
            max_data_bytes: MAX_DATA,
            max_connections: MAX_CONNECTIONS,
            allowed_origins: vec![ALLOWED_ORIGIN.into()],
            ..ServerConfig::default()
        },
        Auth::Dev,
    )
}

fn app() -> Router {
    herald_server::router(test_state(true))
}

async fn send(app: &Router, request: Request<Body>) -> Response {
    app.clone()
        .oneshot(request)
        .await
        .expect("the router never fails")
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri)
        .body(Body::empty())
        .expect("valid request")
}

fn publish_json(body: impl Into<Body>) -> Request<Body> {
    Request::post("/v1/publish")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .expect("valid request")
}

fn publish_text(query: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(format!("/v1/publish{query}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(body.into())
        .expect("valid request")
}

/// A finished answer: status, headers and the body as JSON.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

async fn answer(app: &Router, request: Request<Body>) -> Answer {
    let response = send(app, request).await;
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("a whole body");
    let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{status}: body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body)
        )
    });
    Answer {
        status,
        headers,
        json,
    }
}

async fn publish_value(app: &Router, body: Value) -> Answer {
    answer(app, publish_json(body.to_string())).await
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Asserts an error answer, and that its message is a plain sentence: no
/// Rust debug forms, no doubled backticks. Returns the message.
#[track_caller]
fn assert_error(answer: &Answer, status: StatusCode, code: &str) -> String {
    assert_eq!(answer.status, status, "{answer:?}");
    assert!(
        content_type(&answer.headers).starts_with("application/json"),
        "{answer:?}"
    );
    assert_eq!(answer.json["error"]["code"], code, "{answer:?}");
    let message = answer.json["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("message must be a string: {answer:?}"));
    assert!(!message.trim().is_empty(), "{answer:?}");
    for debug_form in ["``", "Some(", "None", "EventId(", "\\u{", "Error {"] {
        assert!(
            !message.contains(debug_form),
            "{debug_form:?} in the message: {message}"
        );
    }
    message.to_string()
}

/// An open event stream: its response and the first chunk of its body.
struct Stream {
    response: Response,
    first: String,
}

impl Stream {
    /// The next body frame, `None` once the stream ended.
    async fn next(&mut self) -> Option<String> {
        let frame = tokio::time::timeout(Duration::from_secs(5), self.response.body_mut().frame())
            .await
            .expect("a frame or the end within 5 s")?
            .expect("the body never fails");
        frame
            .into_data()
            .ok()
            .map(|data| String::from_utf8_lossy(&data).into_owned())
    }
}

/// Subscribes and reads the first chunk only (the body never ends by itself).
async fn subscribe(app: &Router, uri: &str) -> Stream {
    let response = send(app, get(uri)).await;
    assert_eq!(response.status(), StatusCode::OK, "GET {uri}");
    let mut stream = Stream {
        response,
        first: String::new(),
    };
    stream.first = stream.next().await.expect("a first chunk");
    stream
}

// ---- publish ----

#[tokio::test]
async fn publish_one_event() {
    let app = app();
    let a = publish_value(&app, json!({"topics": ["news"], "data": "hello"})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    assert!(content_type(&a.headers).starts_with("application/json"));
    let id = a.json["id"].as_str().expect("an id string");
    assert!(!id.is_empty());
    assert_eq!(a.json.get("duplicate"), None);
}

#[tokio::test]
async fn publish_a_batch_in_order() {
    let app = app();
    let a = publish_value(
        &app,
        json!([
            {"topics": ["a"], "data": "1"},
            {"users": ["7777"], "event": "note", "data": {"k": [1, 2]}},
            {"broadcast": true, "data": null, "retry": 5000},
        ]),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    let ids: Vec<u64> = a
        .json
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| {
            r["id"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .expect("an id")
        })
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

#[tokio::test]
async fn publish_again_with_an_idempotency_key() {
    let app = app();
    let body = json!({"topics": ["news"], "data": "once", "idempotency_key": "k1"});
    let first = publish_value(&app, body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = publish_value(&app, body).await;
    assert_eq!(again.status, StatusCode::OK, "{again:?}");
    assert_eq!(again.json["id"], first.json["id"]);
    assert_eq!(again.json["duplicate"], true);
}

#[tokio::test]
async fn publish_text_plain_to_a_topic() {
    let app = app();
    for content_type in ["text/plain", "text/plain; charset=utf-8", " Text/Plain"] {
        let request = Request::post("/v1/publish?topic=orders%2F42&event=notice&retry=100")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from("shipped"))
            .expect("valid request");
        let a = answer(&app, request).await;
        assert_eq!(a.status, StatusCode::CREATED, "{content_type}: {a:?}");
        // Stored under the decoded topic name.
        let info = answer(&app, get("/v1/topics/orders%2F42")).await;
        assert_eq!(info.json["last_event_id"], a.json["id"], "{content_type}");
    }
    let a = answer(&app, publish_text("?user=7777&broadcast=1", "x")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
}

#[tokio::test]
async fn publish_refusals() {
    let app = app();
    let bad = StatusCode::BAD_REQUEST;
    let cases = [
        (
            bad,
            "bad_json",
            vec![json!("hello"), json!(42), json!(null)],
        ),
        (
            bad,
            "invalid_field",
            vec![
                json!({"topics": ["a"], "bogus": 1}),
                json!({"topics": "a"}),
                json!({"topics": ["a"], "retry": "soon"}),
                json!({"topics": ["a"], "retry": "a\u{1}b"}),
                json!({"broadcast": "yes"}),
                json!([{"topics": ["a"]}, 3]),
                json!({"topics": ["a"], "idempotency_key": ""}),
                json!({"topics": ["a"], "idempotency_key": "k".repeat(257)}),
            ],
        ),
        (
            bad,
            "missing_target",
            vec![
                json!({"data": "x"}),
                json!({"broadcast": false, "data": "x"}),
            ],
        ),
        (
            bad,
            "invalid_topic",
            vec![
                json!({"topics": [""]}),
                json!({"topics": ["a\u{1}b"]}),
                json!({"topics": ["t".repeat(257)]}),
            ],
        ),
        (
            bad,
            "invalid_user",
            vec![json!({"users": [""]}), json!({"users": ["a\nb"]})],
        ),
        (
            bad,
            "invalid_event_type",
            vec![
                json!({"topics": ["a"], "event": "a\nb"}),
                json!({"topics": ["a"], "event": ""}),
            ],
        ),
        (
            bad,
            "reserved_event_type",
            vec![json!({"topics": ["a"], "event": "herald.gap"})],
        ),
        (bad, "empty_batch", vec![json!([])]),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "data_too_large",
            vec![
                json!({"topics": ["a"], "data": "x".repeat(MAX_DATA + 1)}),
                json!({"topics": ["a"], "data": {"s": "x".repeat(MAX_DATA)}}),
            ],
        ),
    ];
    for (status, code, bodies) in cases {
        for body in bodies {
            let a = publish_value(&app, body).await;
            assert_error(&a, status, code);
        }
    }
}

#[tokio::test]
async fn publish_refusals_of_raw_bodies() {
    let app = app();
    for body in ["{not json", "{\"topics\":[\"a\"]", ""] {
        let a = answer(&app, publish_json(body)).await;
        assert_error(&a, StatusCode::BAD_REQUEST, "bad_json");
    }
    let a = answer(&app, publish_json("x".repeat(MAX_BODY + 1))).await;
    let message = assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    assert!(message.contains(&MAX_BODY.to_string()), "{message}");
    // The body limit holds for the text form as well.
    let a = answer(&app, publish_text("?topic=a", "x".repeat(MAX_BODY + 1))).await;
    assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
}

#[tokio::test]
async fn a_bad_batch_item_is_named_and_nothing_is_stored() {
    let app = app();
    let a = publish_value(
        &app,
        json!([{"topics": ["batchcheck"], "data": "ok"}, {"topics": [""], "data": "bad"}]),
    )
    .await;
    let message = assert_error(&a, StatusCode::BAD_REQUEST, "invalid_topic");
    assert!(message.starts_with("event 1 of the batch: "), "{message}");
    let info = answer(&app, get("/v1/topics/batchcheck")).await;
    assert_eq!(info.json["last_event_id"], Value::Null);
}

#[tokio::test]
async fn missing_target_names_the_fields_of_the_form_used() {
    let app = app();
    let json_form = publish_value(&app, json!({"data": "x"})).await;
    let message = assert_error(&json_form, StatusCode::BAD_REQUEST, "missing_target");
    for field in ["`topics`", "`users`", "`broadcast"] {
        assert!(message.contains(field), "{field} in {message}");
    }
    let text_form = answer(&app, publish_text("?event=notice", "x")).await;
    let message = assert_error(&text_form, StatusCode::BAD_REQUEST, "missing_target");
    for parameter in ["?topic=", "?user=", "?broadcast=true"] {
        assert!(message.contains(parameter), "{parameter} in {message}");
    }
    assert!(!message.contains("`topics`"), "{message}");
}

#[tokio::test]
async fn text_plain_refusals() {
    let app = app();
    let a = answer(&app, publish_text("?topic=a", vec![0xffu8, 0xfe])).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_data");
    let a = answer(&app, publish_text("?topic=a&retry=soon", "x")).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_field");
    let a = answer(&app, publish_text("?topic=", "x")).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_topic");
    let a = answer(&app, publish_text("?topic=a&event=herald.x", "x")).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "reserved_event_type");
    let a = answer(&app, publish_text("?topic=a", "x".repeat(MAX_DATA + 1))).await;
    assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "data_too_large");
}

#[tokio::test]
async fn messages_quote_the_value_as_json_and_cut_long_ones() {
    let app = app();
    let a = publish_value(&app, json!({"topics": ["a\u{1}b"]})).await;
    let message = assert_error(&a, StatusCode::BAD_REQUEST, "invalid_topic");
    assert!(message.starts_with(r#"topic "a\u0001b": "#), "{message}");
    let a = publish_value(&app, json!({"users": ["x".repeat(MAX_BODY / 2)]})).await;
    let message = assert_error(&a, StatusCode::BAD_REQUEST, "invalid_user");
    assert!(message.len() < 300, "{message}");
    assert!(
        message.contains(&format!("… ({} bytes)", MAX_BODY / 2)),
        "{message}"
    );
    let a = answer(&app, get("/v1/events?user=a%0Db")).await;
    let message = assert_error(&a, StatusCode::BAD_REQUEST, "invalid_user");
    assert!(message.starts_with(r#"user "a\rb": "#), "{message}");
}

// ---- subscribe ----

#[tokio::test]
async fn subscribe_refusals() {
    let app = app();
    for (uri, code) in [
        ("/v1/events", "missing_topic"),
        ("/v1/events?types=a", "missing_topic"),
        ("/v1/events?user=", "missing_topic"),
        ("/v1/events?topic=", "invalid_topic"),
        ("/v1/events?topic=a%01b", "invalid_topic"),
        ("/v1/events?topic=ok&topic=a%0Ab", "invalid_topic"),
        ("/v1/events?user=a%0Db", "invalid_user"),
    ] {
        let a = answer(&app, get(uri)).await;
        assert_error(&a, StatusCode::BAD_REQUEST, code);
    }
}

#[tokio::test]
async fn a_subscription_may_name_at_most_the_configured_number_of_topics() {
    let app = app();
    let limit = ServerConfig::DEFAULT_MAX_TOPICS_PER_SUBSCRIPTION;
    let topics = |n: usize| {
        (0..n)
            .map(|i| format!("topic=t{i}/*"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let over_uri = format!("/v1/events?{}", topics(limit + 1));
    // The status first: an admitted stream's body would never end.
    let status = send(&app, get(&over_uri)).await.status();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{} topics", limit + 1);
    let over = answer(&app, get(&over_uri)).await;
    let message = assert_error(&over, StatusCode::BAD_REQUEST, "too_many_topics");
    assert!(
        message.contains(&format!("at most {limit} "))
            && message.contains("max_topics_per_subscription"),
        "{message}"
    );
    // Repeats count: the cap bounds the request, not the distinct set.
    let repeated = vec!["topic=a"; limit + 1].join("&");
    let status = send(&app, get(&format!("/v1/events?{repeated}")))
        .await
        .status();
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{} repeats of one topic",
        limit + 1
    );
    // At the limit, with the personal topic on top, the stream opens.
    let at = subscribe(&app, &format!("/v1/events?user=u&{}", topics(limit))).await;
    assert_eq!(at.response.status(), StatusCode::OK);
}

#[tokio::test]
async fn subscribe_opens_a_stream() {
    let app = app();
    let stream = subscribe(&app, "/v1/events?topic=news&types=a,b").await;
    let headers = stream.response.headers();
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert_eq!(headers[header::CONNECTION], "keep-alive");
    // The prelude: a retry line and a comment, so the browser fires `open`,
    // and no blank line, so no lenient client dispatches an empty event.
    assert_eq!(stream.first, "retry: 3000\n:ok\n");
}

#[tokio::test]
async fn a_resume_point_never_refuses_a_stream() {
    let app = app();
    for id in ["garbage", "", "-5", "%FF", "18446744073709551616"] {
        let request = Request::get("/v1/events?user=7777")
            .header("last-event-id", id)
            .body(Body::empty())
            .expect("valid request");
        let response = send(&app, request).await;
        assert_eq!(response.status(), StatusCode::OK, "Last-Event-ID {id:?}");
    }
    subscribe(&app, "/v1/events?user=7777&lastEventId=garbage").await;
}

#[tokio::test]
async fn over_the_connection_limit_a_stream_says_come_back_later() {
    let app = app();
    let mut open = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        open.push(subscribe(&app, "/v1/events?topic=full").await);
    }
    let mut refused = subscribe(&app, "/v1/events?topic=full").await;
    assert_eq!(
        refused.response.headers()[header::CONTENT_TYPE],
        "text/event-stream; charset=utf-8"
    );
    assert!(refused.first.starts_with("retry: "), "{:?}", refused.first);
    assert!(
        refused.first.contains(":over capacity"),
        "{:?}",
        refused.first
    );
    assert_eq!(refused.next().await, None, "the refusal ends the stream");
}

// ---- admin ----

#[tokio::test]
async fn stats_shape() {
    let app = app();
    let _a = subscribe(&app, "/v1/events?user=u1&topic=news").await;
    let _b = subscribe(&app, "/v1/events?topic=sport").await;
    let a = answer(&app, get("/v1/stats")).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.json["connections"], 2);
    assert_eq!(a.json["users_online"], 1);
    for counter in ["topics", "events_published", "events_delivered", "uptime_s"] {
        assert!(a.json[counter].is_u64(), "{counter} in {}", a.json);
    }
    assert_eq!(a.json["nodes"], json!(["local"]));
}

#[tokio::test]
async fn users_are_paged_by_id() {
    let app = app();
    let mut open = Vec::new();
    for user in ["carol", "alice", "bob", "alice"] {
        open.push(subscribe(&app, &format!("/v1/events?user={user}")).await);
    }
    let page = answer(&app, get("/v1/users?limit=2")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.json,
        json!({"users": [{"id": "alice", "connections": 2}, {"id": "bob", "connections": 1}], "next": "bob"})
    );
    let rest = answer(&app, get("/v1/users?limit=2&cursor=bob")).await;
    assert_eq!(
        rest.json,
        json!({"users": [{"id": "carol", "connections": 1}], "next": null})
    );
    let all = answer(&app, get("/v1/users")).await;
    assert_eq!(all.json["users"].as_array().map(Vec::len), Some(3));
    assert_eq!(all.json["next"], Value::Null);
}

#[tokio::test]
async fn users_limit_must_be_1_to_1000() {
    let app = app();
    for limit in ["0", "1001", "-1", "ten", ""] {
        let a = answer(&app, get(&format!("/v1/users?limit={limit}"))).await;
        let message = assert_error(&a, StatusCode::BAD_REQUEST, "invalid_limit");
        assert!(message.contains("1000"), "{message}");
    }
    let a = answer(&app, get("/v1/users?limit=1000")).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn a_user_with_no_stream_is_offline() {
    let app = app();
    let a = answer(&app, get("/v1/users/nobody")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.json,
        json!({"id": "nobody", "online": false, "connections": 0})
    );
    let _s = subscribe(&app, "/v1/events?user=7777").await;
    let a = answer(&app, get("/v1/users/7777")).await;
    assert_eq!(
        a.json,
        json!({"id": "7777", "online": true, "connections": 1})
    );
}

#[tokio::test]
async fn kick_closes_every_stream_of_the_user() {
    let app = app();
    let mut first = subscribe(&app, "/v1/events?user=7777").await;
    let mut second = subscribe(&app, "/v1/events?user=7777&topic=news").await;
    let _other = subscribe(&app, "/v1/events?user=8888").await;
    let delete = Request::delete("/v1/users/7777/connections")
        .body(Body::empty())
        .expect("valid request");
    let a = answer(&app, delete).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json, json!({"closed": 2}));
    assert_eq!(first.next().await, None);
    assert_eq!(second.next().await, None);
    drop((first, second));
    let a = answer(&app, get("/v1/users/7777")).await;
    assert_eq!(a.json["online"], false);
    let a = answer(&app, get("/v1/users/8888")).await;
    assert_eq!(a.json["online"], true);
}

#[tokio::test]
async fn topic_info() {
    let app = app();
    let empty = answer(&app, get("/v1/topics/orders%2F42")).await;
    assert_eq!(
        empty.json,
        json!({"topic": "orders/42", "subscribers": 0, "last_event_id": null})
    );
    let _s = subscribe(&app, "/v1/events?topic=orders%2F42").await;
    let published = publish_value(&app, json!({"topics": ["orders/42"], "data": "x"})).await;
    // URL-encoded and with a raw `/`: the same topic.
    for uri in ["/v1/topics/orders%2F42", "/v1/topics/orders/42"] {
        let a = answer(&app, get(uri)).await;
        assert_eq!(a.status, StatusCode::OK, "{uri}");
        assert_eq!(
            a.json,
            json!({"topic": "orders/42", "subscribers": 1, "last_event_id": published.json["id"]}),
            "{uri}"
        );
    }
    let a = answer(&app, get("/v1/topics/a%01b")).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_topic");
}

// ---- unknown routes, methods, CORS, ops ----

#[tokio::test]
async fn unknown_routes_are_404_json() {
    let app = app();
    for (method, uri) in [
        (Method::GET, "/v1/nope"),
        (Method::GET, "/v2/events"),
        (Method::GET, "/v1/publish/extra"),
        (Method::POST, "/nope"),
    ] {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("valid request");
        let a = answer(&app, request).await;
        let message = assert_error(&a, StatusCode::NOT_FOUND, "not_found");
        assert!(message.contains("docs/api.md"), "{message}");
    }
}

#[tokio::test]
async fn wrong_methods_are_405_json_with_allow() {
    let app = app();
    for (method, uri, allowed) in [
        (Method::GET, "/v1/publish", "POST"),
        (Method::PUT, "/v1/publish", "POST"),
        (Method::DELETE, "/v1/events", "GET"),
        (Method::POST, "/v1/events", "GET"),
        (Method::POST, "/v1/stats", "GET"),
        (Method::GET, "/v1/users/7777/connections", "DELETE"),
    ] {
        let request = Request::builder()
            .method(method.clone())
            .uri(uri)
            .body(Body::empty())
            .expect("valid request");
        let a = answer(&app, request).await;
        assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        let allow = a.headers.get(header::ALLOW).and_then(|v| v.to_str().ok());
        assert!(
            allow.is_some_and(|a| a.contains(allowed)),
            "{method} {uri}: Allow {allow:?}"
        );
    }
}

#[tokio::test]
async fn cors_preflight_and_origin_echo() {
    let app = app();
    let preflight = Request::builder()
        .method(Method::OPTIONS)
        .uri("/v1/events?user=7777")
        .header(header::ORIGIN, ALLOWED_ORIGIN)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .header(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "authorization,last-event-id",
        )
        .body(Body::empty())
        .expect("valid request");
    let response = send(&app, preflight).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let h = response.headers();
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], ALLOWED_ORIGIN);
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert_eq!(h[header::VARY], "Origin");
    let methods = h[header::ACCESS_CONTROL_ALLOW_METHODS]
        .to_str()
        .expect("ASCII");
    for method in ["GET", "POST", "DELETE"] {
        assert!(methods.contains(method), "{methods}");
    }
    let allowed_headers = h[header::ACCESS_CONTROL_ALLOW_HEADERS]
        .to_str()
        .expect("ASCII");
    for name in ["authorization", "last-event-id", "content-type"] {
        assert!(allowed_headers.contains(name), "{allowed_headers}");
    }

    // An ordinary answer echoes an allowed origin exactly, and only that one.
    let with_origin = |origin: &str| {
        Request::get("/healthz")
            .header(header::ORIGIN, origin)
            .body(Body::empty())
            .expect("valid request")
    };
    let response = send(&app, with_origin(ALLOWED_ORIGIN)).await;
    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        ALLOWED_ORIGIN
    );
    let response = send(&app, with_origin("https://evil.example.com")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN),
        None
    );
    assert_eq!(response.headers()[header::VARY], "Origin");
    // Error answers carry the CORS headers too, so browsers can read them.
    let request = Request::get("/v1/events")
        .header(header::ORIGIN, ALLOWED_ORIGIN)
        .body(Body::empty())
        .expect("valid request");
    let response = send(&app, request).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        ALLOWED_ORIGIN
    );
}

/// Dev mode refuses requests that name it by a host name that is not a
/// loopback name: a page that re-points its own name at 127.0.0.1 (DNS
/// rebinding) would otherwise be same-origin with an open Herald.
#[tokio::test]
async fn dev_mode_refuses_foreign_host_names() {
    let app = app();
    let with_host = |method: Method, uri: &str, host: &str, body: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, host)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .expect("valid request")
    };
    let publish = r#"{"topics":["news"],"data":"x"}"#;
    for host in ["rebind.evil.example", "rebind.evil.example:8080"] {
        for (method, uri, body) in [
            (Method::POST, "/v1/publish", publish),
            (Method::GET, "/v1/stats", ""),
            (Method::DELETE, "/v1/users/7777/connections", ""),
            (Method::GET, "/v1/events?user=7777", ""),
        ] {
            let a = answer(&app, with_host(method.clone(), uri, host, body)).await;
            let message = assert_error(&a, StatusCode::FORBIDDEN, "host_not_allowed");
            assert!(
                message.contains("allowed_hosts"),
                "{method} {uri}: {message}"
            );
        }
    }
    // HTTP/2 names the host in the URI's authority, not in `Host`.
    let a = answer(&app, get("http://rebind.evil.example/v1/stats")).await;
    assert_error(&a, StatusCode::FORBIDDEN, "host_not_allowed");
    for host in [
        "localhost:8080",
        "127.0.0.1:8080",
        "[::1]:8080",
        "app.localhost",
    ] {
        let a = answer(&app, with_host(Method::POST, "/v1/publish", host, publish)).await;
        assert_eq!(a.status, StatusCode::CREATED, "{host}: {a:?}");
    }
    // Token mode does not check the name (it is meant to be reached by any).
    let token_mode = herald_server::router(test_state(false));
    let response = send(
        &token_mode,
        with_host(Method::GET, "/healthz", "herald.example", ""),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn health_and_readiness() {
    let app = app();
    let a = answer(&app, get("/healthz")).await;
    assert_eq!(
        (a.status, a.json),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let a = answer(&app, get("/readyz")).await;
    assert_eq!(
        (a.status, a.json),
        (StatusCode::OK, json!({"status": "ready"}))
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let app = app();
    let _s = subscribe(&app, "/v1/events?topic=news").await;
    let response = send(&app, get("/metrics")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/plain; version=0.0.4"
    );
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("a whole body");
    let text = String::from_utf8(body.to_vec()).expect("UTF-8");
    assert!(
        text.contains("# TYPE herald_connections gauge\nherald_connections 1\n"),
        "{text}"
    );
    for name in [
        "herald_users_online",
        "herald_topics",
        "herald_events_published_total",
        "herald_events_delivered_total",
        "herald_uptime_seconds",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
    }
}

#[tokio::test]
async fn the_stats_stream_ends_when_the_server_closes_its_streams() {
    let state = test_state(true);
    let app = herald_server::router(state.clone());
    let mut stats = send(&app, get("/v1/stats/stream")).await;
    assert_eq!(stats.status(), StatusCode::OK);
    // Shutdown ends the hub's streams; the stats stream ends with them, so
    // it holds no graceful shutdown up.
    state.hub.close_all();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(frame) = stats.body_mut().frame().await {
            frame.expect("the body never fails");
        }
    })
    .await;
    assert!(ended.is_ok(), "the stats stream ended after close_all");
}

#[tokio::test]
async fn the_dashboard_is_served_in_both_modes_and_the_demo_points_to_it() {
    for dev in [true, false] {
        let app = herald_server::router(test_state(dev));
        let page = send(&app, get("/")).await;
        assert_eq!(page.status(), StatusCode::OK, "dev {dev}");
        assert!(content_type(page.headers()).starts_with("text/html"));
        let policy = page.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ASCII");
        assert!(policy.contains("default-src 'self'") && policy.contains("frame-ancestors 'none'"));
        let html = axum::body::to_bytes(page.into_body(), usize::MAX)
            .await
            .expect("a whole body");
        let html = String::from_utf8_lossy(&html);
        // Every file the page loads is served, with its type (app.js
        // imports sse.js).
        for (file, kind) in [
            ("/dashboard/app.js", "text/javascript"),
            ("/dashboard/sse.js", "text/javascript"),
            ("/dashboard/style.css", "text/css"),
        ] {
            if !file.ends_with("sse.js") {
                assert!(html.contains(file), "the page loads {file}");
            }
            let response = send(&app, get(file)).await;
            assert_eq!(response.status(), StatusCode::OK, "{file}");
            assert!(content_type(response.headers()).starts_with(kind), "{file}");
        }
        let a = answer(&app, get("/dashboard/nope.js")).await;
        assert_error(&a, StatusCode::NOT_FOUND, "not_found");

        let demo = send(&app, get("/demo?user=7777")).await;
        assert_eq!(demo.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(demo.headers()[header::LOCATION], "/?user=7777#console");
        let demo = send(&app, get("/demo")).await;
        assert_eq!(demo.headers()[header::LOCATION], "/#console");
    }
}

#[tokio::test]
async fn the_browser_client_is_served_in_every_mode() {
    for dev in [true, false] {
        let app = herald_server::router(test_state(dev));
        let response = send(&app, get("/herald.js")).await;
        assert_eq!(response.status(), StatusCode::OK, "dev={dev}");
        assert_eq!(
            content_type(response.headers()),
            "text/javascript; charset=utf-8"
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a whole body");
        let text = String::from_utf8(body.to_vec()).expect("UTF-8");
        assert!(
            text.contains("window.HeraldClient = HeraldClient;"),
            "dev={dev}"
        );
    }
}

#[tokio::test]
async fn topics_are_listed_as_subscribed_with_their_streams_by_name() {
    let app = app();
    let mut open = Vec::new();
    for uri in [
        "/v1/events?topic=news&topic=orders/*",
        "/v1/events?topic=news",
        "/v1/events?user=7777&topic=*",
    ] {
        open.push(subscribe(&app, uri).await);
    }
    let page = answer(&app, get("/v1/topics?limit=2")).await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    assert_eq!(
        page.json,
        json!({"topics": [{"topic": "*", "subscribers": 1}, {"topic": "news", "subscribers": 2}], "next": "news"})
    );
    let rest = answer(&app, get("/v1/topics?limit=2&cursor=news")).await;
    assert_eq!(
        rest.json,
        json!({"topics": [{"topic": "orders/*", "subscribers": 1}, {"topic": "user/7777", "subscribers": 1}], "next": null})
    );
    for limit in ["0", "1001", "x", ""] {
        let a = answer(&app, get(&format!("/v1/topics?limit={limit}"))).await;
        assert_error(&a, StatusCode::BAD_REQUEST, "invalid_limit");
    }
    drop(open);
    let gone = answer(&app, get("/v1/topics")).await;
    assert_eq!(gone.json, json!({"topics": [], "next": null}));
}

/// The `data` of every `stats` event in `text`.
fn stats_frames(text: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    for block in text.split("\n\n") {
        if !block.lines().any(|l| l == "event: stats") {
            continue;
        }
        assert!(
            !block.contains("\nid:") && !block.starts_with("id:"),
            "no id: {block}"
        );
        let data: String = block
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        frames.push(serde_json::from_str(&data).expect("a stats frame is JSON"));
    }
    frames
}

#[tokio::test(start_paused = true)]
async fn the_stats_stream_sends_a_frame_at_once_and_then_every_second() {
    let app = app();
    let _s = subscribe(&app, "/v1/events?user=7777&topic=news").await;
    let _t = subscribe(&app, "/v1/events?topic=news").await;
    publish_value(&app, json!({"topics": ["news"], "data": "x"})).await;
    let mut stats = send(&app, get("/v1/stats/stream")).await;
    assert_eq!(stats.status(), StatusCode::OK);
    assert!(content_type(stats.headers()).starts_with("text/event-stream"));
    let mut text = String::new();
    let mut frames = Vec::new();
    // The preamble, then one frame at once, then one per (paused) second.
    while frames.len() < 3 {
        let frame = tokio::time::timeout(Duration::from_secs(5), stats.body_mut().frame())
            .await
            .expect("a frame within 5 s")
            .expect("the stream goes on")
            .expect("the body never fails");
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
        frames = stats_frames(&text);
    }
    assert!(text.starts_with("retry: "), "{text}");
    let first = &frames[0];
    assert_eq!(first["connections"], 2);
    assert_eq!(first["users_online"], 1);
    assert_eq!(first["events_published"], 1);
    assert_eq!(
        first["top_topics"][0],
        json!({"topic": "news", "subscribers": 2})
    );
    assert_eq!(first["users"], json!([{"id": "7777", "connections": 1}]));
    let at: Vec<u64> = frames.iter().filter_map(|f| f["at_ms"].as_u64()).collect();
    assert_eq!(at.len(), 3, "each frame has at_ms");
}

mod fuzz {
    //! Arbitrary requests through the whole router: whatever the method,
    //! path, query, headers and body, the answer is never a 5xx and nothing
    //! panics (a handler panic would fail `oneshot`'s task).

    use super::*;
    use proptest::prelude::*;

    const PATHS: &[&str] = &[
        "/v1/events",
        "/v1/publish",
        "/v1/stats",
        "/v1/users",
        "/v1/users/7777",
        "/v1/users/7777/connections",
        "/v1/topics/news",
        "/v1/topics/a/b/*",
        "/v1/topics",
        "/dashboard/app.js",
        "/healthz",
        "/readyz",
        "/metrics",
        "/herald.js",
        "/demo",
        "/",
        "/v1/",
        "/v1/users/%FF",
        "/v1/users/%00/connections",
        "//v1//events",
    ];
    const METHODS: &[&str] = &[
        "GET", "POST", "DELETE", "OPTIONS", "PUT", "HEAD", "PATCH", "X",
    ];
    const HEADERS: &[&str] = &[
        "content-type",
        "content-length",
        "last-event-id",
        "accept",
        "authorization",
        "cookie",
        "origin",
        "host",
        "idempotency-key",
        "access-control-request-method",
        "x-any",
    ];
    const QUERY_KEYS: &[&str] = &[
        "user",
        "topic",
        "types",
        "lastEventId",
        "limit",
        "access_token",
        "broadcast",
        "type",
        "id",
    ];
    const CONTENT_TYPES: &[&str] = &[
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "text/plain; charset=latin1",
        "multipart/form-data",
    ];
    const BODIES: &[&str] = &[
        r#"{"topics":["news"],"data":"x"}"#,
        r#"[{"users":["7777"],"data":{"a":1}},{"broadcast":true,"data":null}]"#,
        r#"{"topics":["a/*"],"data":"x","type":"herald.x","id":"1","idempotency_key":""}"#,
        r#"{"topics":[],"users":[],"data":1e999}"#,
        "[]",
        "{",
        "",
    ];

    /// A request built from pieces that reach deep into the routes, mixed
    /// with raw arbitrary text.
    fn request() -> impl Strategy<Value = Request<Body>> {
        let text = "[ -~]{0,24}|\\PC{0,12}";
        let query = proptest::collection::vec((proptest::sample::select(QUERY_KEYS), text), 0..6);
        let headers = proptest::collection::vec(
            (
                proptest::sample::select(HEADERS),
                proptest::collection::vec(any::<u8>(), 0..40),
            ),
            0..6,
        );
        let body = prop_oneof![
            proptest::sample::select(BODIES).prop_map(|b| b.as_bytes().to_vec()),
            proptest::collection::vec(any::<u8>(), 0..300),
            (
                proptest::sample::select(BODIES),
                any::<prop::sample::Index>(),
                any::<u8>()
            )
                .prop_map(|(b, at, byte)| {
                    let mut b = b.as_bytes().to_vec();
                    if !b.is_empty() {
                        let i = at.index(b.len());
                        b[i] = byte;
                    }
                    b
                }),
        ];
        let content_type = proptest::option::of(proptest::sample::select(CONTENT_TYPES));
        (
            proptest::sample::select(METHODS),
            proptest::sample::select(PATHS),
            text,
            query,
            (content_type, headers),
            body,
        )
            .prop_filter_map(
                "a request the http crate can represent",
                |(method, path, suffix, query, (content_type, headers), body)| {
                    let query: Vec<String> = query
                        .into_iter()
                        .map(|(k, v)| format!("{k}={}", urlencode(&v)))
                        .collect();
                    let uri = format!("{path}{}?{}", urlencode(&suffix), query.join("&"));
                    let mut builder = Request::builder().method(method).uri(uri);
                    if let Some(content_type) = content_type {
                        builder = builder.header(header::CONTENT_TYPE, content_type);
                    }
                    for (name, value) in headers {
                        let value = axum::http::HeaderValue::from_bytes(&value).ok()?;
                        builder = builder.header(name, value);
                    }
                    builder.body(Body::from(body)).ok()
                },
            )
    }

    /// Percent-encodes everything but unreserved characters and `/`, `*`, `%`
    /// (kept so paths and escapes stay interesting).
    fn urlencode(text: &str) -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z'
                | b'a'..=b'z'
                | b'0'..=b'9'
                | b'-'
                | b'_'
                | b'.'
                | b'~'
                | b'/'
                | b'*'
                | b'%' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

        #[test]
        fn no_request_gets_a_server_error(request in request(), dev in any::<bool>()) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            let described = format!("{} {}", request.method(), request.uri());
            let status = runtime.block_on(async {
                let app = herald_server::router(test_state(dev));
                let response = tokio::time::timeout(Duration::from_secs(5), app.oneshot(request))
                    .await
                    .expect("every answer starts within 5 s")
                    .expect("the router never fails");
                response.status()
            });
            prop_assert!(!status.is_server_error(), "{described}: {status}");
        }
    }
}
