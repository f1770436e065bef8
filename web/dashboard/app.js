// The dashboard: figures from the stats stream (`GET /v1/stats/stream`, one
// frame a second, read with ./sse.js), actions through the admin and publish
// routes, and a console that subscribes as a user.
//
// Access: the page first asks `GET /v1/stats` with no credentials. A 200 means
// the admin routes are open (dev mode) and no token is ever asked for; a 401
// means token mode, and the admin token typed in is kept in sessionStorage
// (this tab only, gone when it closes).

import { openEventStream } from './sse.js';

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = 'herald.admin-token';
/** Samples kept for the charts: 5 minutes of one frame a second. */
const WINDOW_MS = 5 * 60 * 1000;
/** The shortest time axis drawn. */
const MIN_SPAN_MS = 60 * 1000;
const MAX_CONSOLE_ROWS = 500;

let token = sessionStorage.getItem(TOKEN_KEY) || '';
let statsStream = null;
let previous = null;       // the last stats frame
let connectOnAccess = false; // a ?user= link: open the console once access is settled
const history = [];        // {t, published, delivered, connections}

const authHeaders = (bearer = token) => (bearer ? { authorization: 'Bearer ' + bearer } : {});

// ---- access ----

async function start() {
  let response;
  try {
    response = await fetch('/v1/stats', { headers: authHeaders(), cache: 'no-store' });
  } catch (err) {
    setLive('CLOSED', 'server unreachable, retrying');
    setTimeout(start, 2000);
    return;
  }
  if (response.ok) {
    $('mode').textContent = token ? 'token mode' : 'dev mode: admin routes open';
    $('sign-out').hidden = !token;
    $('con-token-label').hidden = !token;
    openStats();
    if (connectOnAccess) {
      connectOnAccess = false;
      connectConsole();
    }
    return;
  }
  const body = await response.json().catch(() => null);
  const error = (body && body.error) || {};
  askForToken(token ? error.message || 'this token was refused' : '');
}

function askForToken(problem) {
  token = '';
  sessionStorage.removeItem(TOKEN_KEY);
  $('token-error').hidden = !problem;
  $('token-error').textContent = problem;
  setLive('CLOSED', 'admin token needed');
  const dialog = $('token-dialog');
  if (!dialog.open) dialog.showModal();
  $('token-input').focus();
}

$('token-form').addEventListener('submit', () => {
  token = $('token-input').value.trim();
  $('token-input').value = '';
  sessionStorage.setItem(TOKEN_KEY, token);
  start();
});

$('sign-out').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});

// ---- the stats stream ----

function setLive(state, text) {
  $('live').dataset.state = state;
  $('live-text').textContent = text;
}

function openStats() {
  if (statsStream) statsStream.close();
  statsStream = openEventStream('/v1/stats/stream', {
    headers: authHeaders(),
    onState: (state) => setLive(state, { OPEN: 'live', CONNECTING: 'reconnecting', CLOSED: 'stopped' }[state]),
    onEvent: (event) => {
      if (event.type !== 'stats') return;
      try {
        show(JSON.parse(event.data));
      } catch (err) {
        console.error('a stats frame that is not JSON', err);
      }
    },
    onRefused: (refusal) => {
      if (refusal.status === 401 || refusal.status === 403) askForToken(refusal.message);
      else setLive('CLOSED', 'stats refused: ' + refusal.message);
    },
  });
}

const integer = (n) => Math.round(n).toLocaleString('en-US');
const rate = (n) => (n >= 10 ? integer(n) : n.toFixed(1));

function duration(seconds) {
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds / 3600) % 24;
  const m = Math.floor(seconds / 60) % 60, s = seconds % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

/** One stats frame: rates against the previous frame, then every view. */
function show(frame) {
  let published = 0, delivered = 0;
  if (previous && frame.at_ms > previous.at_ms) {
    const seconds = (frame.at_ms - previous.at_ms) / 1000;
    published = Math.max(0, frame.events_published - previous.events_published) / seconds;
    delivered = Math.max(0, frame.events_delivered - previous.events_delivered) / seconds;
  }
  previous = frame;
  history.push({ t: frame.at_ms, published, delivered, connections: frame.connections });
  while (history.length && history[0].t < frame.at_ms - WINDOW_MS) history.shift();

  $('v-connections').textContent = integer(frame.connections);
  $('v-max').textContent = 'of ' + integer(frame.max_connections) + ' allowed';
  $('v-users').textContent = integer(frame.users_online);
  $('v-topics').textContent = integer(frame.topics);
  $('v-published').textContent = rate(published);
  $('v-published-total').textContent = integer(frame.events_published) + ' since start';
  $('v-delivered').textContent = rate(delivered);
  $('v-delivered-total').textContent = integer(frame.events_delivered) + ' since start';
  $('v-lag').textContent = integer(frame.delivery_lag_ms.median) + ' ms';
  $('v-lag-max').textContent = 'median · max ' + integer(frame.delivery_lag_ms.max) + ' ms';
  $('uptime').textContent = 'up ' + duration(frame.uptime_s);

  showTopics(frame);
  showUsers(frame);
  drawChart($('chart-rates'), frame.at_ms, [
    { key: 'published', color: '#2563eb' },
    { key: 'delivered', color: '#10b981' },
  ]);
  drawChart($('chart-connections'), frame.at_ms, [{ key: 'connections', color: '#8b5cf6' }]);
}

function cell(text, className) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function showTopics(frame) {
  const body = $('topics');
  body.textContent = '';
  for (const t of frame.top_topics) {
    const row = document.createElement('tr');
    row.dataset.topic = t.topic;
    row.append(cell(t.topic, 'mono'), cell(integer(t.subscribers), 'num'));
    body.append(row);
  }
  $('topics-empty').hidden = frame.top_topics.length > 0;
  $('topics-note').textContent = frame.topics > frame.top_topics.length
    ? `top ${frame.top_topics.length} of ${integer(frame.topics)}` : '';
}

// The user rows are rebuilt only when the set of ids changes, so a click on
// a Disconnect button is not lost to a frame that arrives under the pointer.
let shownUsers = '';

function showUsers(frame) {
  const body = $('users');
  const ids = frame.users.map((u) => u.id).join('\n');
  if (ids !== shownUsers) {
    shownUsers = ids;
    body.textContent = '';
    for (const u of frame.users) {
      const row = document.createElement('tr');
      row.dataset.user = u.id;
      const kick = document.createElement('button');
      kick.type = 'button';
      kick.className = 'danger';
      kick.textContent = 'Disconnect';
      kick.addEventListener('click', () => disconnect(u.id));
      const action = document.createElement('td');
      action.append(kick);
      row.append(cell(u.id, 'mono'), cell('', 'num count'), action);
      body.append(row);
    }
  }
  frame.users.forEach((u, i) => { body.children[i].querySelector('.count').textContent = integer(u.connections); });
  $('users-empty').hidden = frame.users.length > 0;
  $('users-note').textContent = frame.users_online > frame.users.length
    ? `first ${frame.users.length} of ${integer(frame.users_online)}` : '';
}

async function disconnect(id) {
  try {
    const response = await fetch(`/v1/users/${encodeURIComponent(id)}/connections`, {
      method: 'DELETE',
      headers: authHeaders(),
    });
    const body = await response.json().catch(() => null);
    if (response.ok) toast(`Closed ${body.closed} stream${body.closed === 1 ? '' : 's'} of ${id}`);
    else toast('Disconnect refused: ' + ((body && body.error && body.error.message) || response.status));
  } catch (err) {
    toast('Disconnect failed: ' + err.message);
  }
}

let toastTimer = null;
function toast(text) {
  const el = $('toast');
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 3500);
}

// ---- charts ----

/** A round number at or above `n` (1, 2, 5 × 10^k), so axis labels read well. */
function niceCeiling(n) {
  if (n <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(n));
  for (const step of [1, 2, 5, 10]) if (step * power >= n) return step * power;
  return 10 * power;
}

/**
 * Draws the last WINDOW_MS of `series` (keys of the history samples) ending at
 * `now`. The largest value shown is kept in the canvas's `data-peak`.
 */
function drawChart(canvas, now, series) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (!width || !height) return;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const g = canvas.getContext('2d');
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);

  let peak = 0;
  for (const s of history) for (const { key } of series) peak = Math.max(peak, s[key]);
  canvas.dataset.peak = String(peak);
  canvas.dataset.points = String(history.length);
  const top = niceCeiling(peak);
  // The time axis spans what the page has seen: a minute at first, growing
  // to the whole window, so a fresh page does not squeeze its points into a
  // corner.
  const span = Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, history.length ? now - history[0].t : 0));
  const left = 44, bottom = height - 18, plotTop = 8, right = width - 6;
  const x = (t) => left + ((t - (now - span)) / span) * (right - left);
  const y = (v) => bottom - (v / top) * (bottom - plotTop);

  g.font = '11px system-ui, sans-serif';
  g.fillStyle = '#6b7280';
  g.strokeStyle = '#eceef1';
  g.lineWidth = 1;
  g.textAlign = 'right';
  g.textBaseline = 'middle';
  // Gridlines at round steps: 5 for a top of 1 or 5 (×10^k), 4 for 2.
  const divisions = String(top)[0] === '2' ? 4 : 5;
  for (let i = 0; i <= divisions; i++) {
    const v = (top * i) / divisions;
    const py = Math.round(y(v)) + 0.5;
    g.beginPath(); g.moveTo(left, py); g.lineTo(right, py); g.stroke();
    g.fillText(Number.isInteger(v) ? integer(v) : v.toFixed(1), left - 6, py);
  }
  g.textAlign = 'center';
  g.textBaseline = 'alphabetic';
  const tick = span <= 2 * 60000 ? 15000 : 60000;
  const ticks = Math.floor(span / tick);
  // Labels that would not fit are skipped (a phone has room for a few).
  const every = Math.max(1, Math.ceil((ticks * 44) / (right - left)));
  for (let i = 0; i <= ticks; i += every) {
    const ago = i * tick;
    const label = ago === 0 ? 'now' : tick < 60000 ? `-${ago / 1000}s` : `-${ago / 60000}m`;
    g.textAlign = ago === 0 ? 'right' : 'center';
    g.fillText(label, ago === 0 ? right : x(now - ago), height - 4);
  }

  for (const { key, color } of series) {
    if (history.length < 1) continue;
    g.beginPath();
    history.forEach((s, i) => (i ? g.lineTo(x(s.t), y(s[key])) : g.moveTo(x(s.t), y(s[key]))));
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.lineJoin = 'round';
    g.stroke();
    // A light fill under the line: the area is what the eye compares.
    g.lineTo(x(history[history.length - 1].t), bottom);
    g.lineTo(x(history[0].t), bottom);
    g.closePath();
    g.globalAlpha = 0.08;
    g.fillStyle = color;
    g.fill();
    g.globalAlpha = 1;
  }
}

window.addEventListener('resize', () => {
  if (!previous) return;
  drawChart($('chart-rates'), previous.at_ms, [
    { key: 'published', color: '#2563eb' },
    { key: 'delivered', color: '#10b981' },
  ]);
  drawChart($('chart-connections'), previous.at_ms, [{ key: 'connections', color: '#8b5cf6' }]);
});

// ---- publish ----

const TARGET_LABELS = { user: 'User id', topic: 'Topic', broadcast: '' };

function showTarget() {
  const target = $('pub-target').value;
  $('pub-to-label').hidden = target === 'broadcast';
  $('pub-to-label').firstChild.textContent = TARGET_LABELS[target] + ' ';
  $('pub-to').placeholder = target === 'user' ? '7777' : 'group/sales';
}
$('pub-target').addEventListener('change', showTarget);

$('pub-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const out = $('pub-result');
  const target = $('pub-target').value;
  const to = $('pub-to').value.trim();
  const body = target === 'broadcast' ? { broadcast: true } : target === 'user' ? { users: [to] } : { topics: [to] };
  const type = $('pub-event').value.trim();
  if (type) body.event = type;
  body.data = $('pub-data').value;
  out.className = 'mono';
  out.textContent = 'sending…';
  try {
    const response = await fetch('/v1/publish', {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...authHeaders() },
      body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => null);
    if (response.ok && answer && answer.id) {
      out.className = 'mono ok';
      out.textContent = 'stored as id ' + answer.id + (answer.duplicate ? ' (a repeat)' : '');
    } else {
      out.className = 'mono bad';
      out.textContent = (answer && answer.error && answer.error.message) || `${response.status} ${response.statusText}`;
    }
  } catch (err) {
    out.className = 'mono bad';
    out.textContent = err.message;
  }
});

// ---- the console ----

let consoleStream = null;
const splitList = (s) => s.split(',').map((t) => t.trim()).filter(Boolean);
const pad = (n, w = 2) => String(n).padStart(w, '0');

function timeOf(d) {
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function addConsoleRow(event) {
  const row = document.createElement('li');
  row.className = 'event' + (event.type.startsWith('herald.') ? ' herald' : '');
  row.dataset.type = event.type;
  row.dataset.id = event.lastEventId;
  for (const [cls, text] of [['time', timeOf(new Date())], ['type', event.type], ['id', event.lastEventId || '–']]) {
    const span = document.createElement('span');
    span.className = cls;
    span.textContent = text;
    row.append(span);
  }
  const data = document.createElement('pre');
  data.className = 'data';
  data.textContent = event.data;
  row.append(data);
  const list = $('con-events');
  list.insertBefore(row, list.firstChild);
  while (list.children.length > MAX_CONSOLE_ROWS) list.lastChild.remove();
  $('con-empty').hidden = true;
}

function setConsoleState(state, opens) {
  $('con-state').dataset.state = state;
  $('con-state').textContent = state;
  if (opens !== undefined) $('con-reconnects').textContent = String(Math.max(0, opens - 1));
}

function closeConsole() {
  if (consoleStream) consoleStream.close();
  consoleStream = null;
  setConsoleState('CLOSED');
}

function connectConsole() {
  closeConsole();
  $('con-error').hidden = true;
  const params = new URLSearchParams();
  const user = $('con-user').value.trim();
  if (user) params.append('user', user);
  for (const t of splitList($('con-topics').value)) params.append('topic', t);
  const types = splitList($('con-types').value);
  if (types.length) params.append('types', types.join(','));
  $('con-last-id').textContent = '–';
  $('con-reconnects').textContent = '0';
  consoleStream = openEventStream('/v1/events?' + params, {
    headers: authHeaders($('con-token').value.trim() || token),
    onState: (state, { opens }) => setConsoleState(state, opens),
    onEvent: (event) => {
      $('con-last-id').textContent = event.lastEventId || '–';
      addConsoleRow(event);
    },
    onRefused: (refusal) => {
      const hint = refusal.code === 'topic_not_allowed' && params.getAll('topic').includes('*')
        ? ' (Topics is * — every topic; clear it or name the topics this token may read)' : '';
      $('con-error').textContent = `${refusal.status} ${refusal.code}: ${refusal.message}${hint}`;
      $('con-error').hidden = false;
    },
  });
}

$('con-form').addEventListener('submit', (e) => { e.preventDefault(); connectConsole(); });
$('con-close').addEventListener('click', closeConsole);
$('con-clear').addEventListener('click', () => { $('con-events').textContent = ''; $('con-empty').hidden = false; });

// ---- start ----

const fromUrl = new URLSearchParams(location.search).get('user');
$('con-user').value = fromUrl || 'u' + pad(Math.floor(Math.random() * 10000), 4);
$('pub-to').value = $('con-user').value;
showTarget();
connectOnAccess = Boolean(fromUrl);
start();
