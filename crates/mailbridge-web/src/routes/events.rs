//! `/events`: the change feed over the event log — every change a host application cares
//! about, oldest first, in commit order, never skipping one. Read it in pages with a cursor
//! (`GET /events`, optionally holding the request open until something new commits), or as
//! Server-Sent Events (`GET /events/stream`, resuming from `Last-Event-ID`). Users see their
//! own mailboxes' events; admins see all.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use mailbridge_core::{EventType, MailboxId};
use mailbridge_store::{Event, EventPage, EventQuery, Store};

use super::mailboxes::visible_mailbox;
use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::query::ApiQuery;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/events", get(list))
        .route("/events/stream", get(stream))
}

/// The longest `wait` a request may ask for.
const MAX_WAIT_SECS: u64 = 60;
/// How often a waiting reader looks again for events other nodes committed (this node's
/// own commits wake it at once).
const POLL: Duration = Duration::from_millis(250);

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// Where to read on from: the `next_cursor` of the previous answer; `latest` starts at
    /// the newest event (only what happens from now on); absent (or empty): the oldest event
    /// kept.
    #[param(pattern = "^([0-9]{1,18}|latest)?$")]
    after: Option<String>,
    /// Only these event types, comma-separated, e.g. `email.received,email.sent`.
    #[param(
        pattern = r"^((email\.received|email\.sent|email\.send_failed|email\.updated|email\.deleted|mailbox\.signed_in|mailbox\.needs_sign_in|mailbox\.enabled|mailbox\.disabled|mailbox\.tested|alert\.created)(,(email\.received|email\.sent|email\.send_failed|email\.updated|email\.deleted|mailbox\.signed_in|mailbox\.needs_sign_in|mailbox\.enabled|mailbox\.disabled|mailbox\.tested|alert\.created))*)?$"
    )]
    types: Option<String>,
    /// Only this mailbox's events.
    #[param(format = Uuid)]
    mailbox_id: Option<String>,
    /// Events per answer, 1–500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// Seconds (0–60, default 0) to hold the request open until a new event commits; the
    /// answer comes within a fraction of a second of it.
    #[param(minimum = 0, maximum = 60)]
    wait: Option<u64>,
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Where to start when there is no `Last-Event-ID` header: a cursor, `latest`, or absent
    /// for the oldest event kept.
    #[param(pattern = "^([0-9]{1,18}|latest)?$")]
    after: Option<String>,
    /// Only these event types, comma-separated.
    #[param(
        pattern = r"^((email\.received|email\.sent|email\.send_failed|email\.updated|email\.deleted|mailbox\.signed_in|mailbox\.needs_sign_in|mailbox\.enabled|mailbox\.disabled|mailbox\.tested|alert\.created)(,(email\.received|email\.sent|email\.send_failed|email\.updated|email\.deleted|mailbox\.signed_in|mailbox\.needs_sign_in|mailbox\.enabled|mailbox\.disabled|mailbox\.tested|alert\.created))*)?$"
    )]
    types: Option<String>,
    /// Only this mailbox's events.
    #[param(format = Uuid)]
    mailbox_id: Option<String>,
}

/// One event of the log: the same shape in the feed, the stream and webhook deliveries.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EventView {
    /// Stable: the same wherever the event is seen (the `webhook-id` of its deliveries).
    id: String,
    #[serde(rename = "type")]
    #[schema(example = "email.received")]
    kind: String,
    /// When it was committed.
    timestamp: DateTime<Utc>,
    /// The feed's position right after this event.
    cursor: String,
    mailbox_id: Option<String>,
    owner_user_id: Option<String>,
    /// What changed: `email` (id, direction, message_id, conversation_id, subject, from, to,
    /// status), `mailbox` (id, email, enabled, statuses) and a `reason`, or `alert`.
    #[schema(value_type = Object)]
    data: serde_json::Value,
}

impl From<Event> for EventView {
    fn from(e: Event) -> Self {
        Self {
            cursor: e.seq.to_string(),
            id: e.id,
            kind: e.kind,
            timestamp: e.created_at,
            mailbox_id: e.mailbox_id,
            owner_user_id: e.owner_user_id,
            data: e.data,
        }
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EventFeedPage {
    events: Vec<EventView>,
    /// Pass as `after` next time, also when `events` is empty: store it, and no event is
    /// ever read twice or missed, across restarts on either side.
    next_cursor: String,
}

/// The change feed: events after a cursor, oldest first, in commit order.
#[utoipa::path(get, path = "/events", tag = "events", params(FeedQuery), security(("bearer" = [])),
    responses((status = 200, body = EventFeedPage), (status = 403, body = ErrorBody),
        (status = 410, body = ErrorBody, description = "the cursor is older than the events still kept; the message names the oldest cursor available"),
        (status = 422, body = ErrorBody)))]
async fn list(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<FeedQuery>,
) -> Result<Json<EventFeedPage>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be from 1 to 500"));
    }
    let wait = q.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(ApiError::invalid(
            "wait",
            format!("wait must be from 0 to {MAX_WAIT_SECS} seconds"),
        ));
    }
    let query = feed_query(
        &state,
        &caller,
        q.after.as_deref(),
        q.types.as_deref(),
        q.mailbox_id.as_deref(),
        limit,
    )
    .await?;
    let page = read_waiting(&state.store, query, Duration::from_secs(wait)).await?;
    Ok(Json(EventFeedPage {
        next_cursor: page.next.to_string(),
        events: page.events.into_iter().map(Into::into).collect(),
    }))
}

/// The change feed as Server-Sent Events: each event as `id: <cursor>`, `event: <type>`,
/// `data: <the event as JSON>`. Reconnecting with `Last-Event-ID` resumes after the last
/// event received. A comment is sent every 15 s to keep the connection open.
#[utoipa::path(get, path = "/events/stream", tag = "events", params(StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this event's cursor")),
    security(("bearer" = [])),
    responses((status = 200, content_type = "text/event-stream", body = String),
        (status = 410, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn stream(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::invalid("Last-Event-ID", "Last-Event-ID must be a cursor"))
        })
        .transpose()?;
    let after = last_event_id.as_deref().or(q.after.as_deref());
    let mut query = feed_query(
        &state,
        &caller,
        after,
        q.types.as_deref(),
        q.mailbox_id.as_deref(),
        100,
    )
    .await?;
    // The first page is read here, so a cursor older than retention is a 410, not a stream.
    let first = state.store.read_events(&query).await?;
    query.after = first.next;
    let reader = Reader {
        signal: state.store.event_signal(),
        store: state.store.clone(),
        query,
        pending: first.events.into(),
        failed: false,
    };
    let events = futures::stream::unfold(reader, |mut r| async move {
        r.next().await.map(|event| (Ok(event), r))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// An SSE reader's place in the log.
struct Reader {
    store: Store,
    signal: tokio::sync::watch::Receiver<u64>,
    query: EventQuery,
    pending: VecDeque<Event>,
    /// The log could not be read: the stream ends after saying so.
    failed: bool,
}

impl Reader {
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(sse_event(event));
            }
            if self.failed {
                return None;
            }
            self.signal.borrow_and_update();
            match self.store.read_events(&self.query).await {
                Ok(page) => {
                    self.query.after = page.next;
                    if page.events.is_empty() {
                        wait_for_news(&mut self.signal, POLL).await;
                    }
                    self.pending.extend(page.events);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the event stream cannot read the log");
                    self.failed = true;
                    return Some(SseEvent::default().event("error").data(format!(
                        "the event log cannot be read ({}); reconnect with Last-Event-ID to resume",
                        ApiError::from(e).message()
                    )));
                }
            }
        }
    }
}

fn sse_event(event: Event) -> SseEvent {
    let id = event.seq.to_string();
    let kind = event.kind.clone();
    let data = serde_json::to_string(&EventView::from(event)).unwrap_or_default();
    SseEvent::default().id(id).event(kind).data(data)
}

/// Reads a page; with none to read and time left, waits for this node's next commit (or
/// looks again every [`POLL`] for other nodes') until `wait` has passed.
async fn read_waiting(
    store: &Store,
    mut query: EventQuery,
    wait: Duration,
) -> Result<EventPage, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut signal = store.event_signal();
    loop {
        signal.borrow_and_update();
        let page = store.read_events(&query).await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !page.events.is_empty() || left.is_zero() {
            return Ok(page);
        }
        // Everything up to `next` has been looked at.
        query.after = page.next;
        wait_for_news(&mut signal, left.min(POLL)).await;
    }
}

/// Until this node commits events, or `at_most` passes.
async fn wait_for_news(signal: &mut tokio::sync::watch::Receiver<u64>, at_most: Duration) {
    let _ = tokio::time::timeout(at_most, signal.changed()).await;
}

/// The query a request asks for, checked: the cursor, the types, the mailbox (the caller's
/// own, unless an admin), and only the caller's events for a user.
async fn feed_query(
    state: &AppState,
    caller: &Caller,
    after: Option<&str>,
    types: Option<&str>,
    mailbox: Option<&str>,
    limit: i64,
) -> Result<EventQuery, ApiError> {
    let after = match after.map(str::trim) {
        None | Some("") => 0,
        Some("latest") => state.store.event_head().await?,
        Some(raw) => raw.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::invalid(
                "after",
                format!(
                    "'{raw}' is not a cursor: pass the next_cursor of an earlier answer, or latest"
                ),
            )
        })?,
    };
    let types = types
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| {
                    t.parse::<EventType>()
                        .map_err(|e| ApiError::invalid("types", format!("types: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let mailbox = match mailbox {
        Some(raw) => {
            let id: MailboxId = raw.parse().map_err(|_| {
                ApiError::invalid("mailbox_id", format!("'{raw}' is not a mailbox id"))
            })?;
            visible_mailbox(state, caller, id).await?;
            Some(id)
        }
        None => None,
    };
    Ok(EventQuery {
        after,
        types,
        mailbox,
        owner: (!caller.is_admin()).then_some(caller.0.id),
        limit,
    })
}
