//! `GET /v1/events`: open a stream.
//!
//! Any answer but 200 + `text/event-stream` makes EventSource give up for
//! good, so only a request that can never succeed gets a 4xx; a subscriber
//! over the connection limit gets a 200 that tells it when to come back.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::{EventId, Filter, Resume, Subscriber, Topic, TopicPattern};

use crate::error::{ApiError, ErrorCode};
use crate::limits::{StreamSlot, TurnedAway};
use crate::query::QueryPairs;
use crate::AppState;

/// Whether a valid subscription request gets a stream now.
#[derive(Debug)]
// A return value, used at once and never stored: boxing the subscriber would
// only add an allocation per subscribe.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Admission {
    /// Open it; the slot is held for as long as the stream is open.
    Open(Subscriber, StreamSlot),
    /// Over a connection limit: tell the client to come back later.
    ComeBackLater(TurnedAway),
}

/// Opens an event stream for the caller.
pub(crate) async fn subscribe(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let version = request.version();
    // Put there by the accept loop (absent when the router is driven in-process).
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    match admit(&state, request.uri().query(), request.headers(), peer).await {
        Ok(Admission::Open(subscriber, slot)) => {
            let connection = state.hub.connect(subscriber);
            // The slot lives in the body's state: freed when the stream ends.
            let stream = futures_util::stream::unfold(
                (connection, slot),
                |(mut connection, slot)| async move {
                    let chunk = connection.next_chunk().await?;
                    Some((
                        Ok::<Bytes, std::convert::Infallible>(chunk),
                        (connection, slot),
                    ))
                },
            );
            let mut response = Response::new(Body::from_stream(stream));
            set_stream_headers(response.headers_mut(), version);
            response
        }
        Ok(Admission::ComeBackLater(why)) => {
            state.refusals.turned_away(why);
            come_back_later(&state, version)
        }
        Err(err) => err.into_response(),
    }
}

/// Validates a subscription request (identity, topics, types, resume point)
/// and takes a stream slot under the connection limits (`peer`: the client's
/// address, for the per-address cap). Its only side effect is the slot, given
/// back when dropped; a refusal is counted by the caller that answers it.
/// Both the hyper route and the direct HTTP/1.1 path (`crate::direct`) call
/// it before connecting.
pub(crate) async fn admit(
    state: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Result<Admission, ApiError> {
    if state.config.dev {
        // The direct HTTP/1.1 path does not go through the router's guard.
        crate::cors::check_dev_host(
            &state.config.allowed_hosts,
            headers.get(header::HOST).and_then(|h| h.to_str().ok()),
        )?;
    }
    let query = QueryPairs::parse(query);
    let limit = state.config.max_topics_per_subscription;
    let mut patterns = Vec::new();
    for spec in query.all("topic") {
        // Counted as given (repeats too) and before any is parsed further
        // than this: the cap bounds the work a request can ask for.
        if patterns.len() == limit {
            return Err(ApiError::too_many_topics(limit));
        }
        let pattern = TopicPattern::parse(spec).map_err(|e| ApiError::invalid_topic(spec, e))?;
        patterns.push(pattern);
    }
    let (access, expires_at) = state.auth.subscriber(&query, headers, &patterns).await?;
    if let Some(user) = &access.user {
        let personal = Topic::for_user(user).map_err(|e| ApiError::invalid_user(user, e))?;
        patterns.push(TopicPattern::Exact(personal));
    }
    if patterns.is_empty() {
        return Err(ApiError::new(
            ErrorCode::MissingTopic,
            "a stream needs a `topic` query parameter (repeat it for several topics), \
             or a user identity (a token's `sub`; `?user=` in dev mode)",
        ));
    }
    let types = query.first("types").map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect::<Vec<_>>()
    });
    // Taken, not checked: concurrent subscribes cannot overshoot the caps.
    let slot = match state.stream_slots.take(peer, access.user.as_ref()) {
        Ok(slot) => slot,
        Err(why) => return Ok(Admission::ComeBackLater(why)),
    };
    let subscriber = Subscriber {
        user: access.user,
        filter: Filter::new(patterns, types),
        resume: resume_point(headers, &query),
        expires_at,
    };
    Ok(Admission::Open(subscriber, slot))
}

/// `Last-Event-ID` header, else the `lastEventId` query parameter.
fn resume_point(headers: &HeaderMap, query: &QueryPairs) -> Resume {
    let raw = headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or_else(|| query.first("lastEventId").map(String::from));
    match raw {
        None => Resume::Live,
        Some(raw) if raw.is_empty() => Resume::Live,
        Some(raw) => match raw.parse::<EventId>() {
            Ok(id) => Resume::After(id),
            Err(_) => Resume::Unknown(raw),
        },
    }
}

/// The headers of every event stream response.
pub(crate) fn set_stream_headers(headers: &mut HeaderMap, version: Version) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // HTTP/2 forbids connection-specific headers.
    if version == Version::HTTP_11 {
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    }
}

/// Over a connection limit: a valid, empty stream whose `retry:` (with
/// jitter, so refused clients do not return together) asks the client to
/// reconnect later. HTTP/1.1 connections are closed after it: a refused
/// client's descriptor is what the limit is there to save.
fn come_back_later(state: &AppState, version: Version) -> Response {
    let base = state.hub.config().retry_ms.max(1000);
    let retry = base.saturating_add(rand_jitter(base));
    let body = Body::from(herald_sse::encode_notice(
        Some(retry),
        "over capacity, come back later",
    ));
    let mut response = (StatusCode::OK, body).into_response();
    set_stream_headers(response.headers_mut(), version);
    if version == Version::HTTP_11 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn rand_jitter(base: u64) -> u64 {
    // Sub-second clock noise is jitter enough here, without a RNG dependency.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or(0);
    nanos % base.max(1)
}
