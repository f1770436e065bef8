// The ticker page, with a bare EventSource (no client library).
//
// It starts from the backend's snapshot (recent points and the id of the
// newest) and subscribes with `lastEventId` = that id: Herald sends every
// point after it, then live ones, so the chart misses nothing between the
// snapshot and the stream. When the connection drops, EventSource reconnects
// by itself and sends `Last-Event-ID`, and Herald sends what was missed.
// Points whose id is not newer than the newest shown are ignored, so a point
// can never be drawn twice.

const SVG_WIDTH = 600;
const SVG_HEIGHT = 120;

const statusEl = document.getElementById('status');
const chartsEl = document.getElementById('charts');

let session = null;   // {herald_url, token}
let windowSize = 500; // points kept per symbol (the backend says)
let newestId = 0n;    // id of the newest point drawn
let source = null;    // the EventSource
const charts = new Map(); // symbol -> {points: [price], section}

function setStatus(state) {
  statusEl.dataset.state = state;
  statusEl.textContent = state;
}

async function getJson(path, init) {
  const res = await fetch(path, init);
  const body = await res.json();
  if (!res.ok) throw new Error(body?.error?.message ?? `${path}: ${res.status}`);
  return body;
}

function chartFor(symbol) {
  let chart = charts.get(symbol);
  if (!chart) {
    const section = document.createElement('section');
    section.className = 'symbol';
    section.dataset.symbol = symbol;
    section.innerHTML = `<h2><span class="name"></span> <span class="price">–</span>
      <span class="count"></span></h2>
      <svg viewBox="0 0 ${SVG_WIDTH} ${SVG_HEIGHT}" preserveAspectRatio="none"><polyline points=""/></svg>`;
    section.querySelector('.name').textContent = symbol;
    chartsEl.append(section);
    chart = { points: [], section };
    charts.set(symbol, chart);
  }
  return chart;
}

// Redraws at most once a frame, however many points a burst brings.
let drawPending = false;
function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    for (const { points, section } of charts.values()) draw(points, section);
  });
}

function draw(points, section) {
  const min = Math.min(...points);
  const max = Math.max(...points);
  const span = max - min || 1;
  const step = SVG_WIDTH / Math.max(1, windowSize - 1);
  section.querySelector('polyline').setAttribute('points', points
    .map((p, i) => `${(i * step).toFixed(1)},${(SVG_HEIGHT - 5 - ((p - min) / span) * (SVG_HEIGHT - 10)).toFixed(1)}`)
    .join(' '));
  section.querySelector('.price').textContent = points.length ? points[points.length - 1].toFixed(2) : '–';
  section.querySelector('.count').textContent = points.length === 1 ? '1 point' : `${points.length} points`;
}

function addPoint(symbol, price) {
  const { points } = chartFor(symbol);
  points.push(price);
  if (points.length > windowSize) points.splice(0, points.length - windowSize);
}

function onPrice(event) {
  const id = BigInt(event.lastEventId);
  if (id <= newestId) return; // already drawn (from the snapshot)
  newestId = id;
  const { symbol, price } = JSON.parse(event.data);
  addPoint(symbol, price);
  scheduleDraw();
}

const FIRST_RETRY_MS = 1000;
let retryDelayMs = FIRST_RETRY_MS;

/**
 * A new token, and a new stream from the newest point drawn; with no event
 * received yet there is no id to resume from, so the backend is asked again.
 */
async function reopen() {
  if (!newestId) return start();
  session = await getJson('/api/session');
  return connect(String(newestId));
}

/** reopen() after a delay that doubles at each failure, up to 30 s. */
function reopenLater() {
  setStatus('reconnecting');
  setTimeout(() => reopen().catch(reopenLater), retryDelayMs);
  retryDelayMs = Math.min(retryDelayMs * 2, 30_000);
}

function connect(fromId) {
  const query = new URLSearchParams({ topic: 'prices/*', access_token: session.token });
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
    if (source.readyState === EventSource.CLOSED || !newestId) {
      source.close();
      reopenLater();
    }
  });
  source.addEventListener('price', onPrice);
  // The token ran out: the stream ends with this event. Get a new token
  // and carry on from the newest point drawn.
  source.addEventListener('herald.expired', () => {
    source.close();
    setStatus('reconnecting');
    reopen().catch(reopenLater);
  });
  // Herald no longer has the points after our newest one (it was restarted,
  // or we were away longer than its retention): start again from a snapshot.
  // If even the snapshot's id is unknown to Herald, take live points only.
  source.addEventListener('herald.gap', (event) => {
    source.close();
    const { last_event_id: asked } = JSON.parse(event.data);
    start({ resume: asked !== snapshotId }).catch(showError);
  });
}

let snapshotId = '';
async function start({ resume = true } = {}) {
  setStatus('connecting');
  session = await getJson('/api/session');
  const snapshot = await getJson('/api/snapshot');
  windowSize = snapshot.window;
  charts.clear();
  chartsEl.replaceChildren();
  for (const [symbol, points] of Object.entries(snapshot.points)) {
    chartFor(symbol);
    for (const p of points) addPoint(symbol, p.price);
  }
  snapshotId = snapshot.last_event_id;
  newestId = snapshotId ? BigInt(snapshotId) : 0n;
  scheduleDraw();
  connect(resume ? snapshotId : '');
}

function showError(err) {
  setStatus('error');
  statusEl.title = err.message;
}

document.getElementById('burst').addEventListener('click', () => {
  getJson('/api/burst?rounds=50', { method: 'POST' }).catch(showError);
});

start().catch(showError);
