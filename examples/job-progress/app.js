// The job-progress page, with a bare EventSource (no client library).
//
// On load it asks the backend for the job's current state and shows it at
// once; the state comes with the id of the event that reported it, and the
// page subscribes with `lastEventId` = that id, so every step reported after
// it arrives (and none before it is shown twice). Herald sends this user's
// events only: the token's `sub` is the visitor, and the backend publishes
// to `users: [visitor]`.

const statusEl = document.getElementById('status');
const startEl = document.getElementById('start');
const barEl = document.getElementById('bar');
const stageEl = document.getElementById('stage');
const percentEl = document.getElementById('percent');
const messageEl = document.getElementById('message');

let session = null; // {herald_url, token, user}
let shownId = 0n;   // id of the event whose state is shown
let source = null;
let running = false;

function setStatus(state) {
  statusEl.dataset.state = state;
  statusEl.textContent = state;
  startEl.disabled = running || state !== 'live';
}

async function getJson(path, init) {
  const res = await fetch(path, init);
  const body = await res.json();
  if (!res.ok) throw new Error(body?.error?.message ?? `${path}: ${res.status}`);
  return body;
}

function show(job) {
  running = Boolean(job?.running);
  barEl.value = job ? job.percent : 0;
  percentEl.textContent = `${job ? job.percent : 0}%`;
  stageEl.textContent = job ? job.stage : 'no job yet';
  startEl.disabled = running || statusEl.dataset.state !== 'live';
}

function onProgress(event) {
  const id = BigInt(event.lastEventId);
  if (id <= shownId) return; // older than what is shown
  shownId = id;
  show(JSON.parse(event.data));
}

const FIRST_RETRY_MS = 1000;
let retryDelayMs = FIRST_RETRY_MS;

/**
 * A new token, and a new stream from the state shown; with no event
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
  // No topic: a subscriber with a token gets its personal topic, user/<sub>.
  const query = new URLSearchParams({ access_token: session.token });
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
  source.addEventListener('job.progress', onProgress);
  // The token ran out: get a new one and go on from the state shown.
  source.addEventListener('herald.expired', () => {
    source.close();
    setStatus('reconnecting');
    reopen().catch(reopenLater);
  });
  // Herald no longer has the events after ours: ask the backend again.
  source.addEventListener('herald.gap', () => {
    source.close();
    start({ resume: false }).catch(showError);
  });
}

async function start({ resume = true } = {}) {
  setStatus('connecting');
  session = await getJson('/api/session');
  const current = await getJson('/api/jobs/current');
  show(current.job);
  shownId = current.last_event_id ? BigInt(current.last_event_id) : 0n;
  connect(resume ? current.last_event_id : '');
}

function showError(err) {
  messageEl.textContent = err.message;
}

startEl.addEventListener('click', () => {
  messageEl.textContent = '';
  startEl.disabled = true;
  getJson('/api/jobs', { method: 'POST' }).catch((err) => {
    showError(err);
    startEl.disabled = running;
  });
});

start().catch(showError);
