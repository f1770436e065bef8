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
use herald_core::{Appended, NewEvent, Topic, RESERVED_EVENT_PREFIX};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};
use crate::query::QueryPairs;
use crate::AppState;

/// Most events in one batch.
const MAX_BATCH: usize = 10_000;

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
                    "over the publish rate of {} requests a second for {who}; retry after                      {wait} s, or send events in batches",
                    state.config.publish_rate_per_sec
                ),
            )
            .retry_after(wait)
        })?;
    }
    let (parts, body) = request.into_parts();
    let form = Form::of(&parts.headers);
    let body = crate::body::read(body, &parts.headers, state).await?;
    let (requests, single) = match form {
        Form::Text => (vec![simple_form(parts.uri.query(), body)?], true),
        Form::Json => json_requests(&body)?,
    };
    let max_data = state.config.max_data_bytes;
    let batch = requests
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            validate(r, max_data, form)
                .and_then(|event| access.check_publish(&event).map(|()| event))
                .map_err(|e| in_item(e, i, single))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let results = state.log.append(batch).await.map_err(|e| {
        ApiError::unavailable(format!("{e}; the event was not stored, retry later"))
    })?;
    let stored = results.iter().filter(|r| !r.duplicate).count() as u64;
    state.published.fetch_add(stored, Ordering::Relaxed);
    Ok(answer(&results, single))
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

fn validate(
    request: PublishRequest,
    max_data_bytes: usize,
    form: Form,
) -> Result<NewEvent, ApiError> {
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
    if data.len() > max_data_bytes {
        return Err(ApiError::new(
            ErrorCode::DataTooLarge,
            format!(
                "event data is {} bytes, over the {max_data_bytes}-byte limit",
                data.len()
            ),
        ));
    }
    if let Some(key) = &request.idempotency_key {
        if key.is_empty() || key.len() > 256 {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                "idempotency_key must be 1 to 256 bytes",
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
    use serde_json::json;

    use super::*;

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
