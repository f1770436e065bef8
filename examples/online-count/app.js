// The online-count page, with a bare EventSource (no client library).
//
// It shows the backend's last published count at once, then subscribes to
// the count's topic with `lastEventId` = that count's event id, so any
// change published since arrives first; a dropped connection resumes by
// itself with `Last-Event-ID`. Being subscribed is also what makes this
// visitor count: the token's `sub` is the visitor.

const statusEl = document.getElementById('status');
const countEl = document.getElementById('count');
const labelEl = document.getElementById('label');

let session = null; // {herald_url, topic, token}
let shownId = 0n;   // id of the event whose count is shown
let source = null;

function setStatus(state) {
  statusEl.dataset.state = state;
  statusEl.textContent = state;
}

async function getJson(path) {
  const res = await fetch(path);
  const body = await res.json();
  if (!res.ok) throw new Error(body?.error?.message ?? `${path}: ${res.status}`);
  return body;
}

function show(users) {
  countEl.textContent = users === null ? '–' : String(users);
  labelEl.textContent = users === 1 ? 'user online' : 'users online';
}

const FIRST_RETRY_MS = 1000;
let retryDelayMs = FIRST_RETRY_MS;

/**
 * A new token, and a new stream from the count shown; with no event
 * received yet there is no id to resume from, so the backend is asked again.
 */
async function reopen() {
  if (!shownId) return start();
  session = await getJson('/api/session');
  return connect(String(shownId));
}

/** reopen() after a delay that doubles at each failure, up to 30 s. */
function reopenLater() {
  setStatus('reconnecting');
  setTimeout(() => reopen().catch(reopenLater), retryDelayMs);
  retryDelayMs = Math.min(retryDelayMs * 2, 30_000);
}

function connect(fromId) {
  const query = new URLSearchParams({ topic: session.topic, access_token: session.token });
  if (fromId) query.set('lastEventId', fromId);
  source = new EventSource(`${session.herald_url}/v1/events?${query}`);
  source.addEventListener('open', () => {
    retryDelayMs = FIRST_RETRY_MS;
    setStatus('live');
  });
  source.addEventListener('error', () => {
    setStatus('reconnecting');
    // CLOSED: Herald refused the reconnection (EventSource gives up for
    // good on any answer but 200), most often because the token ran out
    // while the page was away. And before the first event EventSource has
    // no id to send when it reconnects, so what is published meanwhile
    // would be missed. Either way: close, and reopen() ourselves.
    if (source.readyState === EventSource.CLOSED || !shownId) {
      source.close();
      reopenLater();
    }
  });
  source.addEventListener('online', (event) => {
    const id = BigInt(event.lastEventId);
    if (id <= shownId) return;
    shownId = id;
    show(JSON.parse(event.data).users);
  });
  source.addEventListener('herald.expired', () => {
    source.close();
    setStatus('reconnecting');
    reopen().catch(reopenLater);
  });
  // Only the newest count matters: after a gap, ask the backend again.
  source.addEventListener('herald.gap', () => {
    source.close();
    start({ resume: false }).catch(showError);
  });
}

async function start({ resume = true } = {}) {
  setStatus('connecting');
  session = await getJson('/api/session');
  const last = await getJson('/api/count');
  show(last.users);
  shownId = last.last_event_id ? BigInt(last.last_event_id) : 0n;
  connect(resume ? last.last_event_id : '');
}

function showError(err) {
  setStatus('error');
  statusEl.title = err.message;
}

start().catch(showError);
