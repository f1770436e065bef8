//! `POST /v1/publish`: store events; the log's tail delivers them.
//!
//! A 2xx means every event of the request is stored; a batch is validated
//! whole before anything is appended, so a bad item stores nothing.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::{Appended, LogError, NewEvent, Topic, RESERVED_EVENT_PREFIX};
use serde::Deserialize;
use serde_json::Value;

use crate::auth::Access;
use crate::error::{ApiError, ErrorCode};
use crate::query::QueryPairs;
use crate::{AppState, ServerConfig};

/// Most events in one batch.
const MAX_BATCH: usize = 10_000;

/// Longest event type, in bytes (400 `invalid_event_type` over it).
pub const MAX_EVENT_TYPE_BYTES: usize = 256;
/// Longest `idempotency_key`, in bytes (400 `invalid_field` over it).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// Most targets of one event, topics and users together: what the durable
/// log's record stores (a `u16` count; a test pins it to herald-log's
/// `record_limits`). `max_topics_per_event` plus `max_users_per_event` may
/// not exceed it.
pub const MAX_TARGETS_PER_EVENT: usize = 65_535;
/// The highest `max_data_bytes` may be set: an event with that much data,
/// [`MAX_TARGETS_PER_EVENT`] targets of the longest topic, and the longest
/// type and key still fits one durable record (a test pins it).
pub const MAX_DATA_BYTES_CEILING: usize = 32 << 20;

/// Bodies over this many bytes are parsed and validated on tokio's blocking
/// pool: the control runtime has one thread, and a few megabytes of JSON
/// with hundreds of thousands of targets take it for hundreds of
/// milliseconds, during which every other publish would wait. Smaller bodies
/// take microseconds, less than the hand-over to another thread costs.
const OFF_THREAD_BODY_BYTES: usize = 64 << 10;

/// What one event may carry (the server's configured limits).
#[derive(Debug, Clone, Copy)]
struct EventLimits {
    max_data_bytes: usize,
    max_topics: usize,
    max_users: usize,
}

impl EventLimits {
    fn of(config: &ServerConfig) -> Self {
        Self {
            max_data_bytes: config.max_data_bytes,
            max_topics: config.max_topics_per_event,
            max_users: config.max_users_per_event,
        }
    }
}

/// One event as a publisher sends it (docs/api.md field names).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    broadcast: bool,
    event: Option<String>,
    data: Option<Value>,
    retry: Option<u64>,
    idempotency_key: Option<String>,
}

/// How the request gives its events; messages name that form's own fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// A JSON object or array (any content type but `text/plain`).
    Json,
    /// `text/plain`: the body is the data, the rest is in the query string.
    Text,
}

impl Form {
    fn of(headers: &HeaderMap) -> Self {
        let is_text = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("text/plain")
            });
        if is_text {
            Self::Text
        } else {
            Self::Json
        }
    }

    /// What to add when an event has no recipient.
    fn how_to_target(self) -> &'static str {
        match self {
            Self::Json => "give `topics`, `users` or `broadcast: true`",
            Self::Text => "add `?topic=…`, `?user=…` or `?broadcast=true` to the URL",
        }
    }
}

/// Stores one event or a batch.
pub(crate) async fn publish(State(state): State<Arc<AppState>>, request: Request) -> Response {
    match handle(&state, request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn handle(state: &AppState, request: Request) -> Result<Response, ApiError> {
    let access = state
        .auth
        .publisher(&QueryPairs::parse(request.uri().query()), request.headers())
        .await?;
    if let (Some(limit), Some(who)) = (&state.publish_rate, access.principal()) {
        limit.take(&who).map_err(|wait| {
            ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "over the publish rate of {} requests a second for {who}; retry after {wait} s, or send events in batches",
                    state.config.publish_rate_per_sec
                ),
            )
            .retry_after(wait)
        })?;
    }
    let (parts, body) = request.into_parts();
    let form = Form::of(&parts.headers);
    let body = crate::body::read(body, &parts.headers, state).await?;
    // After the body is read, so the connection stays usable for the retry.
    refuse_if_overloaded(state)?;
    let limits = EventLimits::of(&state.config);
    let query = parts.uri.query().map(str::to_owned);
    let off_thread = body.len() > OFF_THREAD_BODY_BYTES;
    let prepare = move || new_events(form, query.as_deref(), body, limits, &access);
    let (batch, single) = if off_thread {
        tokio::task::spawn_blocking(prepare).await.map_err(|_| {
            ApiError::unavailable(
                "the request could not be processed; the event was not stored, retry later",
            )
        })??
    } else {
        prepare()?
    };
    let appending = std::time::Instant::now();
    let results = state.log.append(batch).await.map_err(|e| match e {
        // It may be stored: the message says how to learn its id.
        LogError::NotAcknowledged(_) => ApiError::unavailable(e.to_string()),
        _ => ApiError::unavailable(format!("{e}; the event was not stored, retry later")),
    })?;
    state
        .metrics
        .log_append_seconds()
        .record(appending.elapsed().as_secs_f64());
    let stored = results.iter().filter(|r| !r.duplicate).count() as u64;
    state.published.fetch_add(stored, Ordering::Relaxed);
    Ok(answer(&results, single))
}

/// `503 overloaded` while delivery is further behind than the configured
/// bound: acknowledging more would only lengthen the backlog every stream
/// has to work through. `Retry-After` is the excess, 1–5 s.
fn refuse_if_overloaded(state: &AppState) -> Result<(), ApiError> {
    let Some(bound) = state.config.max_delivery_lag else {
        return Ok(());
    };
    let lag = state.hub.delivery_lag().lag_ms();
    let bound_ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
    if lag <= bound_ms {
        return Ok(());
    }
    let wait = (lag - bound_ms).div_ceil(1000).clamp(1, 5) as u32;
    Err(ApiError::new(
        ErrorCode::Overloaded,
        format!(
            "delivery is {:.1} s behind, over max_delivery_lag_ms ({bound_ms}); nothing was stored, retry after {wait} s",
            lag as f64 / 1000.0
        ),
    )
    .retry_after(wait))
}

fn answer(results: &[Appended], single: bool) -> Response {
    let json = |r: &Appended| {
        if r.duplicate {
            serde_json::json!({"id": r.id.to_string(), "duplicate": true})
        } else {
            serde_json::json!({"id": r.id.to_string()})
        }
    };
    match results {
        [only] if single => {
            let status = if only.duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (status, Json(json(only))).into_response()
        }
        _ => {
            let status = if results.iter().all(|r| r.duplicate) {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (
                status,
                Json(Value::Array(results.iter().map(json).collect())),
            )
                .into_response()
        }
    }
}

/// The JSON body: one object (single) or an array of objects (batch).
fn json_requests(body: &[u8]) -> Result<(Vec<PublishRequest>, bool), ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::BadJson,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let (items, single) = match value {
        Value::Array(items) => (items, false),
        other @ Value::Object(_) => (vec![other], true),
        _ => {
            return Err(ApiError::new(
                ErrorCode::BadJson,
                "the body must be a JSON object or an array of objects",
            ))
        }
    };
    if items.is_empty() {
        return Err(ApiError::new(
            ErrorCode::EmptyBatch,
            "the batch is an empty array; send at least one event",
        ));
    }
    if items.len() > MAX_BATCH {
        return Err(ApiError::new(
            ErrorCode::BatchTooLarge,
            format!("a batch holds at most {MAX_BATCH} events"),
        ));
    }
    let requests = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            // By value: the strings move into the request instead of being
            // copied. Only a refusal needs the item again, and then it is
            // read back from the body.
            serde_json::from_value::<PublishRequest>(item).map_err(|e| {
                let item = item_in(body, i, single);
                in_item(
                    ApiError::new(ErrorCode::InvalidField, field_error(&item, &e)),
                    i,
                    single,
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((requests, single))
}

/// Item `index` of the (already parsed once, so valid) JSON `body`.
fn item_in(body: &[u8], index: usize, single: bool) -> Value {
    let value: Value = serde_json::from_slice(body).unwrap_or_default();
    match value {
        Value::Array(mut items) if !single => {
            items.get_mut(index).map(Value::take).unwrap_or_default()
        }
        other => other,
    }
}

/// serde's message for an item that does not fit [`PublishRequest`], made
/// for people: it names the field at fault (serde does so only for an unknown
/// field), and quotes strings with JSON escapes rather than Rust's.
fn field_error(item: &Value, err: &serde_json::Error) -> String {
    let message = json_escapes(&err.to_string());
    // Every field is optional, so the one that fails alone is the culprit.
    let culprit = item.as_object().and_then(|fields| {
        fields.iter().find_map(|(name, value)| {
            let alone = serde_json::Map::from_iter([(name.clone(), value.clone())]);
            PublishRequest::deserialize(&Value::Object(alone))
                .is_err()
                .then_some(name)
        })
    });
    match culprit {
        Some(name) if !message.contains(&format!("`{name}`")) => {
            format!("field `{name}`: {message}")
        }
        _ => message,
    }
}

/// Rewrites Rust's `\u{1f}` escapes (serde quotes strings with `{:?}`) as
/// JSON's `\u001f`, leaving everything else, escaped backslashes included.
fn json_escapes(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let escape = &rest[at..];
        let unicode = escape
            .strip_prefix("\\u{")
            .and_then(|hex| hex.split_once('}'))
            .and_then(|(hex, after)| {
                let c = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
                Some((c, after))
            });
        match unicode {
            Some((c, after)) => {
                // Outside the BMP, JSON writes the UTF-16 surrogate pair.
                for unit in c.encode_utf16(&mut [0u16; 2]) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
                rest = after;
            }
            None => {
                // Any other escape is two characters (`\\`, `\"`, `\n`, ...).
                let len = escape.chars().take(2).map(char::len_utf8).sum();
                out.push_str(&escape[..len]);
                rest = &escape[len..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `POST /v1/publish?topic=news&event=notice` with a text/plain body.
fn simple_form(query: Option<&str>, body: bytes::Bytes) -> Result<PublishRequest, ApiError> {
    let query = QueryPairs::parse(query);
    let data = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::new(ErrorCode::InvalidData, "a text/plain body must be UTF-8"))?;
    let retry = match query.first("retry") {
        None => None,
        Some(r) => Some(r.parse::<u64>().map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidField,
                "retry must be a whole number of milliseconds",
            )
        })?),
    };
    Ok(PublishRequest {
        topics: query.all("topic").map(String::from).collect(),
        users: query.all("user").map(String::from).collect(),
        broadcast: matches!(query.first("broadcast"), Some("true" | "1")),
        event: query.first("event").map(String::from),
        data: Some(Value::String(data)),
        retry,
        idempotency_key: query.first("idempotency_key").map(String::from),
    })
}

/// The events of a request body, validated and checked against `access`,
/// and whether the request was a single event (not a batch).
fn new_events(
    form: Form,
    query: Option<&str>,
    body: bytes::Bytes,
    limits: EventLimits,
    access: &Access,
) -> Result<(Vec<NewEvent>, bool), ApiError> {
    let (requests, single) = match form {
        Form::Text => (vec![simple_form(query, body)?], true),
        Form::Json => json_requests(&body)?,
    };
    let batch = requests
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            validate(r, limits, form)
                .and_then(|event| access.check_publish(&event).map(|()| event))
                .map_err(|e| in_item(e, i, single))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((batch, single))
}

/// 413 `too_many_targets`: `count` targets of one kind over `limit`, the
/// option that sets it named.
fn too_many(count: usize, what: &str, limit: usize, option: &str) -> ApiError {
    ApiError::new(
        ErrorCode::TooManyTargets,
        format!(
            "the event has {count} {what}, over the limit of {limit} per event \
             (`{option}`); split it into several events"
        ),
    )
}

fn validate(
    request: PublishRequest,
    limits: EventLimits,
    form: Form,
) -> Result<NewEvent, ApiError> {
    // Counted as sent, before any is parsed: the refusal costs nothing.
    if request.topics.len() > limits.max_topics {
        return Err(too_many(
            request.topics.len(),
            "topics",
            limits.max_topics,
            "max_topics_per_event",
        ));
    }
    if request.users.len() > limits.max_users {
        return Err(too_many(
            request.users.len(),
            "users",
            limits.max_users,
            "max_users_per_event",
        ));
    }
    // The configuration keeps the two limits' sum within the record format;
    // this holds for a `ServerConfig` built by hand too.
    let targets = request.topics.len() + request.users.len();
    if targets > MAX_TARGETS_PER_EVENT {
        return Err(too_many(
            targets,
            "topics and users together",
            MAX_TARGETS_PER_EVENT,
            "the event log's record format",
        ));
    }
    let mut topics = Vec::with_capacity(request.topics.len() + request.users.len());
    for name in &request.topics {
        let topic = Topic::new(name).map_err(|e| ApiError::invalid_topic(name, e))?;
        topics.push(topic);
    }
    for user in &request.users {
        let topic = Topic::for_user(user).map_err(|e| ApiError::invalid_user(user, e))?;
        topics.push(topic);
    }
    topics.sort();
    topics.dedup();
    if topics.is_empty() && !request.broadcast {
        return Err(ApiError::new(
            ErrorCode::MissingTarget,
            format!("the event has no recipient: {}", form.how_to_target()),
        ));
    }
    if let Some(event) = &request.event {
        if event.len() > MAX_EVENT_TYPE_BYTES {
            return Err(ApiError::new(
                ErrorCode::InvalidEventType,
                format!(
                    "the event type is {} bytes, over the limit of {MAX_EVENT_TYPE_BYTES}",
                    event.len()
                ),
            ));
        }
        herald_sse::validate_event_type(event)
            .map_err(|e| ApiError::new(ErrorCode::InvalidEventType, e.to_string()))?;
        if event.starts_with(RESERVED_EVENT_PREFIX) {
            return Err(ApiError::new(
                ErrorCode::ReservedEventType,
                format!(
                    "event types starting with `{RESERVED_EVENT_PREFIX}` are Herald's own; \
                     choose another"
                ),
            ));
        }
    }
    let data = match request.data {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
    };
    if data.len() > limits.max_data_bytes {
        return Err(ApiError::new(
            ErrorCode::DataTooLarge,
            format!(
                "event data is {} bytes, over the {}-byte limit",
                data.len(),
                limits.max_data_bytes
            ),
        ));
    }
    if let Some(key) = &request.idempotency_key {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                format!("idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes"),
            ));
        }
    }
    Ok(NewEvent {
        topics,
        broadcast: request.broadcast,
        event_type: request.event,
        data,
        retry: request.retry,
        idempotency_key: request.idempotency_key,
    })
}

/// Names the failing item of a batch in the message.
fn in_item(err: ApiError, index: usize, single: bool) -> ApiError {
    if single {
        err
    } else {
        err.within(format_args!("event {index} of the batch"))
    }
}

#[cfg(test)]
mod tests {
    use herald_core::MAX_TOPIC_BYTES;
    use serde_json::json;

    use super::*;

    /// The route's own limits, each at its highest setting.
    fn widest() -> EventLimits {
        EventLimits {
            max_data_bytes: MAX_DATA_BYTES_CEILING,
            max_topics: 1,
            max_users: MAX_TARGETS_PER_EVENT - 1,
        }
    }

    fn request(topics: usize, users: usize, user_bytes: usize) -> PublishRequest {
        let name = |prefix: &str, i: usize, len: usize| {
            let n = format!("{prefix}{i}");
            format!("{n}{}", "x".repeat(len - n.len()))
        };
        PublishRequest {
            topics: (0..topics).map(|i| name("t", i, MAX_TOPIC_BYTES)).collect(),
            users: (0..users).map(|i| name("u", i, user_bytes)).collect(),
            broadcast: false,
            event: Some("e".repeat(MAX_EVENT_TYPE_BYTES)),
            data: Some(Value::String("d".repeat(MAX_DATA_BYTES_CEILING))),
            retry: Some(u64::MAX),
            idempotency_key: Some("k".repeat(MAX_IDEMPOTENCY_KEY_BYTES)),
        }
    }

    /// Compile-time pins: if herald-log's record format shrinks, or a route
    /// limit grows past it, the tests do not build.
    #[test]
    fn the_route_s_limits_are_within_the_record_format() {
        use herald_log::record_limits as record;
        const STRING: usize = record::RECORD_STRING_OVERHEAD;
        const LARGEST: usize = record::RECORD_FIXED_BYTES
            + MAX_TARGETS_PER_EVENT * (STRING + MAX_TOPIC_BYTES)
            + (STRING + MAX_EVENT_TYPE_BYTES)
            + (STRING + MAX_IDEMPOTENCY_KEY_BYTES)
            + MAX_DATA_BYTES_CEILING;
        const {
            assert!(MAX_TARGETS_PER_EVENT <= record::MAX_RECORD_TOPICS);
            assert!(MAX_TOPIC_BYTES <= record::MAX_RECORD_STRING_BYTES);
            assert!(MAX_EVENT_TYPE_BYTES <= record::MAX_RECORD_STRING_BYTES);
            assert!(MAX_IDEMPOTENCY_KEY_BYTES <= record::MAX_RECORD_STRING_BYTES);
            assert!(LARGEST <= record::MAX_BODY);
            assert!(
                ServerConfig::DEFAULT_MAX_TOPICS_PER_EVENT
                    + ServerConfig::DEFAULT_MAX_USERS_PER_EVENT
                    <= MAX_TARGETS_PER_EVENT
            );
            assert!(ServerConfig::DEFAULT_MAX_DATA_BYTES <= MAX_DATA_BYTES_CEILING);
        }
    }

    /// The largest event the route lets through, every field at its limit,
    /// is stored by the real durable log; one more target is refused first.
    #[tokio::test]
    async fn the_largest_event_accepted_is_stored_by_the_durable_log() {
        use herald_core::EventLog;
        let user_bytes = herald_core::topic::MAX_USER_ID_BYTES;
        let event = validate(
            request(1, MAX_TARGETS_PER_EVENT - 1, user_bytes),
            widest(),
            Form::Json,
        )
        .expect("every field at its limit is accepted");
        assert_eq!(event.topics.len(), MAX_TARGETS_PER_EVENT);
        let dir = std::env::temp_dir().join(format!("herald-largest-event-{}", std::process::id()));
        let log = herald_log::DurableLog::open(&dir, herald_log::DurableOptions::default())
            .expect("a durable log");
        let stored = log.append(vec![event]).await;
        drop(log);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(stored.is_ok(), "{stored:?}");

        for (topics, users, limits) in [
            (2, MAX_TARGETS_PER_EVENT - 1, widest()),
            (
                2,
                0,
                EventLimits {
                    max_topics: 1,
                    ..widest()
                },
            ),
            (
                0,
                2,
                EventLimits {
                    max_users: 1,
                    ..widest()
                },
            ),
        ] {
            let err = validate(request(topics, users, 8), limits, Form::Json)
                .expect_err("over a target limit");
            assert_eq!(err.code(), ErrorCode::TooManyTargets, "{err}");
        }
        let long_type = PublishRequest {
            event: Some("e".repeat(MAX_EVENT_TYPE_BYTES + 1)),
            ..request(1, 0, 8)
        };
        let err = validate(long_type, widest(), Form::Json).expect_err("a long type");
        assert_eq!(err.code(), ErrorCode::InvalidEventType);
        assert!(err.message().contains("256"), "{err}");
    }

    #[test]
    fn rust_escapes_become_json_escapes() {
        for (rust, json) in [
            (r#"string "a\u{1}b""#, r#"string "a\u0001b""#),
            (
                r#""\u{7f}\u{200b}\u{1f600}""#,
                r#""\u007f\u200b\ud83d\ude00""#,
            ),
            // Other escapes, and an escaped backslash before `u{`, stay.
            (r#""\n\t\"\\u{1}""#, r#""\n\t\"\\u{1}""#),
            // Not an escape Rust writes: left as it is.
            (r#"\u{zz} \u{110000} \u{1"#, r#"\u{zz} \u{110000} \u{1"#),
            (
                "no escapes, é and a trailing \\",
                "no escapes, é and a trailing \\",
            ),
        ] {
            assert_eq!(json_escapes(rust), json, "{rust}");
        }
    }

    #[test]
    fn field_errors_name_the_field() {
        let message = |item: Value| {
            let err = PublishRequest::deserialize(&item).expect_err("a bad item");
            field_error(&item, &err)
        };
        assert_eq!(
            message(json!({"topics": ["a"], "broadcast": "yes"})),
            r#"field `broadcast`: invalid type: string "yes", expected a boolean"#
        );
        assert_eq!(
            message(json!({"retry": "a\u{1}"})),
            r#"field `retry`: invalid type: string "a\u0001", expected u64"#
        );
        // serde already names an unknown field.
        let unknown = message(json!({"bogus": 1}));
        assert!(
            unknown.starts_with("unknown field `bogus`, expected one of `topics`"),
            "{unknown}"
        );
    }
}
