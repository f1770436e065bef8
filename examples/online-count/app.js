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

function connect(fromId) {
  const query = new URLSearchParams({ topic: session.topic, access_token: session.token });
  if (fromId) query.set('lastEventId', fromId);
  source = new EventSource(`${session.herald_url}/v1/events?${query}`);
  source.addEventListener('open', () => setStatus('live'));
  source.addEventListener('error', () => {
    setStatus(source.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting');
  });
  source.addEventListener('online', (event) => {
    const id = BigInt(event.lastEventId);
    if (id <= shownId) return;
    shownId = id;
    show(JSON.parse(event.data).users);
  });
  source.addEventListener('herald.expired', async () => {
    source.close();
    setStatus('reconnecting');
    session = await getJson('/api/session');
    connect(shownId ? String(shownId) : '');
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
