//! The one place where errors become HTTP answers.
//!
//! Every error is JSON `{"error": {"code": "...", "message": "..."}}` with the
//! status docs/api.md gives for it; nothing a client sends can produce a 500.
//!
//! Invariants: an [`ErrorCode`] decides the status and the `Retry-After`
//! header, so a code is never sent with another status; code strings are part
//! of the contract (clients match on them) and are never renamed.

use std::fmt;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The stable, machine-readable `code` of an error answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: a publish body is not JSON, or not an object or an array of objects.
    BadJson,
    /// 400: a publish field has the wrong type, is unknown, or is out of range.
    InvalidField,
    /// 400: a topic (published to, subscribed to, or looked up) is not a valid topic.
    InvalidTopic,
    /// 400: a user id (a publish's `users`, a subscriber's `user`) is not valid.
    InvalidUser,
    /// 400: an event type is empty or contains CR or LF.
    InvalidEventType,
    /// 400: an event type starts with `herald.`, which names Herald's own events.
    ReservedEventType,
    /// 400: a `text/plain` publish body is not UTF-8.
    InvalidData,
    /// 400: a publish names no topic, no user and no broadcast.
    MissingTarget,
    /// 400: a publish batch is an empty array.
    EmptyBatch,
    /// 400: a subscription has neither a topic nor an identity.
    MissingTopic,
    /// 400: `GET /v1/users` was given a `limit` out of range.
    InvalidLimit,
    /// 400: a subscription names more topics than `max_topics_per_subscription`.
    TooManyTopics,
    /// 404: no such route.
    NotFound,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 413: a request body is over the configured limit.
    BodyTooLarge,
    /// 413: an event's data is over the configured limit.
    DataTooLarge,
    /// 413: a batch holds more events than one request may.
    BatchTooLarge,
    /// 413: an event names more topics or users than one event may.
    TooManyTargets,
    /// 503: the event log cannot take or serve events now; nothing was stored.
    LogUnavailable,
    /// 401: the route needs a token (or an API key) and the request has none.
    TokenMissing,
    /// 401: the token's `exp` (plus the leeway) has passed.
    TokenExpired,
    /// 401: the token or API key is not accepted; the message says why.
    TokenInvalid,
    /// 403: a subscription names a topic the token does not cover.
    TopicNotAllowed,
    /// 403: a publish targets a topic, users or broadcast the caller may not publish to.
    PublishNotAllowed,
    /// 403: an admin route without admin rights.
    AdminRequired,
    /// 429: the caller publishes faster than its configured rate.
    RateLimited,
    /// 403: dev mode, and the request names Herald by a host name that is not
    /// a loopback name (DNS rebinding).
    HostNotAllowed,
    /// 400: a request body ended before its declared length, or its framing
    /// was malformed.
    BodyIncomplete,
    /// 408: a request body did not arrive within the body read timeout.
    BodyTimeout,
    /// 503: the server is reading as many request body bytes as it allows at
    /// once; retry shortly.
    BodyCapacityFull,
    /// 503: delivery is further behind than `max_delivery_lag_ms`; nothing
    /// was stored; retry after `Retry-After`.
    Overloaded,
}

impl ErrorCode {
    /// Every code, in declaration order (for checks that must cover them all,
    /// such as the API reference test).
    pub const ALL: [Self; 31] = [
        Self::BadJson,
        Self::InvalidField,
        Self::InvalidTopic,
        Self::InvalidUser,
        Self::InvalidEventType,
        Self::ReservedEventType,
        Self::InvalidData,
        Self::MissingTarget,
        Self::EmptyBatch,
        Self::MissingTopic,
        Self::InvalidLimit,
        Self::TooManyTopics,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::BodyTooLarge,
        Self::DataTooLarge,
        Self::BatchTooLarge,
        Self::TooManyTargets,
        Self::LogUnavailable,
        Self::TokenMissing,
        Self::TokenExpired,
        Self::TokenInvalid,
        Self::TopicNotAllowed,
        Self::PublishNotAllowed,
        Self::AdminRequired,
        Self::RateLimited,
        Self::HostNotAllowed,
        Self::BodyIncomplete,
        Self::BodyTimeout,
        Self::BodyCapacityFull,
        Self::Overloaded,
    ];

    /// The code as clients see it (snake_case).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::InvalidField => "invalid_field",
            Self::InvalidTopic => "invalid_topic",
            Self::InvalidUser => "invalid_user",
            Self::InvalidEventType => "invalid_event_type",
            Self::ReservedEventType => "reserved_event_type",
            Self::InvalidData => "invalid_data",
            Self::MissingTarget => "missing_target",
            Self::EmptyBatch => "empty_batch",
            Self::MissingTopic => "missing_topic",
            Self::InvalidLimit => "invalid_limit",
            Self::TooManyTopics => "too_many_topics",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BodyTooLarge => "body_too_large",
            Self::DataTooLarge => "data_too_large",
            Self::BatchTooLarge => "batch_too_large",
            Self::TooManyTargets => "too_many_targets",
            Self::LogUnavailable => "log_unavailable",
            Self::TokenMissing => "token_missing",
            Self::TokenExpired => "token_expired",
            Self::TokenInvalid => "token_invalid",
            Self::TopicNotAllowed => "topic_not_allowed",
            Self::PublishNotAllowed => "publish_not_allowed",
            Self::AdminRequired => "admin_required",
            Self::RateLimited => "rate_limited",
            Self::HostNotAllowed => "host_not_allowed",
            Self::BodyIncomplete => "body_incomplete",
            Self::BodyTimeout => "body_timeout",
            Self::BodyCapacityFull => "body_capacity_full",
            Self::Overloaded => "overloaded",
        }
    }

    /// The HTTP status every answer with this code has.
    pub const fn status(self) -> StatusCode {
        match self {
            Self::BadJson
            | Self::InvalidField
            | Self::InvalidTopic
            | Self::InvalidUser
            | Self::InvalidEventType
            | Self::ReservedEventType
            | Self::InvalidData
            | Self::MissingTarget
            | Self::EmptyBatch
            | Self::MissingTopic
            | Self::InvalidLimit
            | Self::BodyIncomplete
            | Self::TooManyTopics => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge
            | Self::DataTooLarge
            | Self::BatchTooLarge
            | Self::TooManyTargets => StatusCode::PAYLOAD_TOO_LARGE,
            Self::LogUnavailable | Self::BodyCapacityFull | Self::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::TokenMissing | Self::TokenExpired | Self::TokenInvalid => {
                StatusCode::UNAUTHORIZED
            }
            Self::TopicNotAllowed
            | Self::PublishNotAllowed
            | Self::AdminRequired
            | Self::HostNotAllowed => StatusCode::FORBIDDEN,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Seconds for `Retry-After`: set for the answers a client should retry
    /// (a rate-limit refusal may say a longer wait, see [`ApiError::retry_after`]).
    pub const fn retry_after(self) -> Option<u32> {
        match self {
            Self::LogUnavailable
            | Self::RateLimited
            | Self::BodyCapacityFull
            | Self::Overloaded => Some(1),
            _ => None,
        }
    }

    /// Whether the answer closes the connection (`Connection: close` on
    /// HTTP/1.1; hyper drops the header on HTTP/2, where the stream ends
    /// alone): set when the request's body was not read to its end, so the
    /// connection cannot carry another request.
    pub const fn closes_connection(self) -> bool {
        matches!(
            self,
            Self::BodyIncomplete | Self::BodyTimeout | Self::BodyCapacityFull
        )
    }

    /// The RFC 6750 `error` of the `WWW-Authenticate: Bearer` challenge sent
    /// with this code: `Some("")` for a request that carried no credentials
    /// (the challenge names no error then), `None` for codes that are not
    /// about credentials.
    pub const fn bearer_error(self) -> Option<&'static str> {
        match self {
            Self::TokenMissing => Some(""),
            Self::TokenExpired | Self::TokenInvalid => Some("invalid_token"),
            Self::TopicNotAllowed | Self::PublishNotAllowed | Self::AdminRequired => {
                Some("insufficient_scope")
            }
            _ => None,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answer: a code (which fixes the status) and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    /// A `Retry-After` longer than the code's (rate limits know how long).
    retry_after: Option<u32>,
}

impl ApiError {
    /// An error with `code`; `message` says what went wrong and what to do.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, asking the client to wait `seconds` (at least 1) before
    /// retrying.
    pub(crate) fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// 400 `invalid_topic`, naming the topic as the client sent it.
    pub(crate) fn invalid_topic(topic: &str, why: impl fmt::Display) -> Self {
        Self::new(
            ErrorCode::InvalidTopic,
            format!("topic {}: {why}", quoted(topic)),
        )
    }

    /// 400 `invalid_user`, naming the user id as the client sent it.
    pub(crate) fn invalid_user(user: &str, why: impl fmt::Display) -> Self {
        Self::new(
            ErrorCode::InvalidUser,
            format!("user {}: {why}", quoted(user)),
        )
    }

    /// 400 `too_many_topics`, naming the limit and the option that sets it.
    pub(crate) fn too_many_topics(limit: usize) -> Self {
        Self::new(
            ErrorCode::TooManyTopics,
            format!(
                "a subscription may name at most {limit} topics or patterns \
                 (`max_topics_per_subscription`); subscribe to a wider pattern \
                 (`orders/*`) or open several streams"
            ),
        )
    }

    /// 503 `log_unavailable`: the event log cannot take the event now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::LogUnavailable, message)
    }

    /// 405 `method_not_allowed`.
    pub fn method_not_allowed() -> Self {
        Self::new(
            ErrorCode::MethodNotAllowed,
            "this route does not accept that HTTP method; the Allow header lists the ones it does",
        )
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The HTTP status (the code's).
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// What went wrong and what to do about it.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error, its message prefixed with where it happened.
    pub(crate) fn within(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

/// Longest part of a client's value a message repeats, in characters.
const QUOTED_MAX_CHARS: usize = 64;

/// A value the client sent, for a message: in double quotes with JSON escapes
/// (`"a\u0001b"`, not Rust's `"a\u{1}b"`), and cut short with `…` when long.
fn quoted(value: &str) -> String {
    match value.char_indices().nth(QUOTED_MAX_CHARS) {
        None => serde_json::Value::from(value).to_string(),
        Some((cut, _)) => {
            let shown = serde_json::Value::from(&value[..cut]).to_string();
            format!("{shown}… ({} bytes)", value.len())
        }
    }
}

/// `Bearer realm="herald"`, with `error` and `error_description` when the
/// request carried credentials (RFC 6750, section 3). The description is the
/// message made safe for a quoted header value: printable ASCII without `"`
/// and `\\`, which is all RFC 6750 allows there.
fn bearer_challenge(error: &str, message: &str) -> HeaderValue {
    let mut value = String::from("Bearer realm=\"herald\"");
    if !error.is_empty() {
        let description: String = message
            .chars()
            .map(|c| match c {
                '"' | '\\' => '\'',
                ' '..='~' => c,
                _ => '?',
            })
            .take(200)
            .collect();
        value.push_str(&format!(
            ", error=\"{error}\", error_description=\"{description}\""
        ));
    }
    HeaderValue::from_str(&value)
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"herald\""))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "code": self.code.as_str(), "message": self.message }
        });
        let mut response = (self.code.status(), axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after.or(self.code.retry_after()) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.code.closes_connection() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(error) = self.code.bearer_error() {
            headers.insert(
                header::WWW_AUTHENTICATE,
                bearer_challenge(error, &self.message),
            );
        }
        // Counted by the refusal counters (see `crate::refusals`).
        response.extensions_mut().insert(self.code);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_answer_is_the_code_s_status_and_json() {
        let response = ApiError::unavailable("the disk is full").into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a whole body");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "log_unavailable", "message": "the disk is full"}})
        );

        let response = ApiError::new(ErrorCode::MissingTopic, "x").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers().get(header::RETRY_AFTER), None);
    }

    /// The contract (docs/api.md, tests/e2e/errors.test.mjs): never renamed.
    #[test]
    fn codes_and_statuses_are_the_contract() {
        use ErrorCode::*;
        let bad = StatusCode::BAD_REQUEST;
        let too_large = StatusCode::PAYLOAD_TOO_LARGE;
        for (code, text, status) in [
            (BadJson, "bad_json", bad),
            (InvalidField, "invalid_field", bad),
            (InvalidTopic, "invalid_topic", bad),
            (InvalidUser, "invalid_user", bad),
            (InvalidEventType, "invalid_event_type", bad),
            (ReservedEventType, "reserved_event_type", bad),
            (InvalidData, "invalid_data", bad),
            (MissingTarget, "missing_target", bad),
            (EmptyBatch, "empty_batch", bad),
            (MissingTopic, "missing_topic", bad),
            (InvalidLimit, "invalid_limit", bad),
            (NotFound, "not_found", StatusCode::NOT_FOUND),
            (
                MethodNotAllowed,
                "method_not_allowed",
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (BodyTooLarge, "body_too_large", too_large),
            (DataTooLarge, "data_too_large", too_large),
            (BatchTooLarge, "batch_too_large", too_large),
            (TooManyTargets, "too_many_targets", too_large),
            (
                LogUnavailable,
                "log_unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (TokenMissing, "token_missing", StatusCode::UNAUTHORIZED),
            (TokenExpired, "token_expired", StatusCode::UNAUTHORIZED),
            (TokenInvalid, "token_invalid", StatusCode::UNAUTHORIZED),
            (TopicNotAllowed, "topic_not_allowed", StatusCode::FORBIDDEN),
            (
                PublishNotAllowed,
                "publish_not_allowed",
                StatusCode::FORBIDDEN,
            ),
            (AdminRequired, "admin_required", StatusCode::FORBIDDEN),
            (RateLimited, "rate_limited", StatusCode::TOO_MANY_REQUESTS),
            (HostNotAllowed, "host_not_allowed", StatusCode::FORBIDDEN),
            (BodyIncomplete, "body_incomplete", bad),
            (BodyTimeout, "body_timeout", StatusCode::REQUEST_TIMEOUT),
            (
                BodyCapacityFull,
                "body_capacity_full",
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (Overloaded, "overloaded", StatusCode::SERVICE_UNAVAILABLE),
        ] {
            assert_eq!((code.as_str(), code.status()), (text, status));
            assert_eq!(code.to_string(), text);
            // Retry-After exactly on the answers that ask for a retry.
            assert_eq!(
                code.retry_after().is_some(),
                matches!(status.as_u16(), 503 | 429),
                "{text}"
            );
        }
    }

    #[test]
    fn credential_refusals_carry_a_bearer_challenge() {
        let missing = ApiError::new(ErrorCode::TokenMissing, "no token").into_response();
        assert_eq!(
            missing.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="herald""#
        );
        let invalid =
            ApiError::new(ErrorCode::TokenInvalid, "bad \"signature\"\n\u{e9}").into_response();
        assert_eq!(
            invalid.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="herald", error="invalid_token", error_description="bad 'signature'??""#
        );
        let scope = ApiError::new(ErrorCode::AdminRequired, "no").into_response();
        assert!(scope.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .is_ok_and(|v| v.contains(r#"error="insufficient_scope""#)));
        let other = ApiError::new(ErrorCode::BadJson, "x").into_response();
        assert_eq!(other.headers().get(header::WWW_AUTHENTICATE), None);
        let limited = ApiError::new(ErrorCode::RateLimited, "slow down")
            .retry_after(7)
            .into_response();
        assert_eq!(limited.headers()[header::RETRY_AFTER], "7");
    }

    #[test]
    fn quoted_values_are_json_strings_cut_when_long() {
        assert_eq!(quoted("news"), r#""news""#);
        assert_eq!(quoted(""), r#""""#);
        assert_eq!(quoted("a\u{1}b\n\"c\""), r#""a\u0001b\n\"c\"""#);
        let long = "é".repeat(100);
        let cut = format!("\"{}\"… (200 bytes)", "é".repeat(QUOTED_MAX_CHARS));
        assert_eq!(quoted(&long), cut);
        // Exactly at the limit: whole.
        let exact = "t".repeat(QUOTED_MAX_CHARS);
        assert_eq!(quoted(&exact), format!("\"{exact}\""));
    }

    #[test]
    fn within_prefixes_the_message_only() {
        let err = ApiError::new(ErrorCode::InvalidTopic, "a topic must not be empty")
            .within("event 3 of the batch");
        assert_eq!(err.code(), ErrorCode::InvalidTopic);
        assert_eq!(
            err.message(),
            "event 3 of the batch: a topic must not be empty"
        );
        assert_eq!(
            err.to_string(),
            "invalid_topic: event 3 of the batch: a topic must not be empty"
        );
    }
}
