// The notifications example's backend: keeps each user's messages and what
// they have read, hands the page a Herald token, and publishes every change
// to the user's own topic so each of the user's tabs stays in sync.
//
// Node built-ins only: `node examples/notifications/server.mjs`.
// Talks to Herald over HTTP, as your own app would: it mints subscriber
// tokens (HS256 JWTs) with HERALD_JWT_SECRET and publishes with
// HERALD_API_KEY.
//
// Invariant: every change to a user's state and its publish happen in one
// queue, in order, and the state remembers the id Herald gave the publish.
// So a snapshot (GET /api/state) names the last event already in it, and a
// page that resumes after that id gets exactly the changes it lacks.

import http from 'node:http';
import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';

const HERALD_URL = (process.env.HERALD_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const JWT_SECRET = process.env.HERALD_JWT_SECRET || 'herald-examples-secret-change-me';
const API_KEY = process.env.HERALD_API_KEY || 'herald-examples-publish-key';
const PORT = Number(process.env.PORT || 3001);
const HOST = process.env.HOST || '127.0.0.1';
const TOKEN_TTL_SECS = Number(process.env.TOKEN_TTL_SECS || 300);

const PAGE = readFileSync(new URL('./index.html', import.meta.url), 'utf8');

// ---------------------------------------------------------------------------
// Herald: tokens and publishing

const b64url = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

/** A subscriber token for `user`: its own topic `user/{user}` only. */
function mintToken(user) {
  const head = b64url({ alg: 'HS256', typ: 'JWT' });
  const body = b64url({ sub: user, exp: Math.floor(Date.now() / 1000) + TOKEN_TTL_SECS });
  const signature = crypto.createHmac('sha256', JWT_SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${signature}`;
}

/** Publishes one event to one user; returns the id Herald stored it under. */
async function publishToUser(user, event, data) {
  const res = await fetch(`${HERALD_URL}/v1/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ users: [user], event, data }),
  });
  const answer = await res.json().catch(() => ({}));
  if (res.status !== 201) {
    throw new Error(`Herald refused the publish (${res.status} ${answer.error?.code}: ${answer.error?.message})`);
  }
  return answer.id;
}

// ---------------------------------------------------------------------------
// The app's own state: users' messages (in memory; a real app has a database)

/** user -> {messages: [{id, text, at, read}], lastEventId} */
const users = new Map();
let nextMessageId = 1;
let queue = Promise.resolve();

/** Runs `change` after every change before it (one at a time, in order). */
function serialized(change) {
  const run = queue.then(change);
  queue = run.catch(() => {});
  return run;
}

function stateOf(user) {
  if (!users.has(user)) users.set(user, { messages: [], lastEventId: '' });
  return users.get(user);
}

const unreadCount = (state) => state.messages.filter((m) => !m.read).length;

function snapshot(user) {
  return serialized(async () => {
    const state = stateOf(user);
    // A user nothing was published to yet has no id to resume after: publish
    // the (empty) state once, so the snapshot has one.
    if (!state.lastEventId) state.lastEventId = await publishToUser(user, 'unread', { read: [], unread: 0 });
    return { user, messages: state.messages, unread: unreadCount(state), lastEventId: state.lastEventId };
  });
}

function addMessage(user, text) {
  return serialized(async () => {
    const state = stateOf(user);
    const message = { id: String(nextMessageId++), text, at: new Date().toISOString(), read: false };
    state.messages.unshift(message);
    state.lastEventId = await publishToUser(user, 'notification', { message, unread: unreadCount(state) });
    return message;
  });
}

function markRead(user, ids) {
  return serialized(async () => {
    const state = stateOf(user);
    const read = [];
    for (const m of state.messages) {
      if (!m.read && (ids === 'all' || ids.includes(m.id))) {
        m.read = true;
        read.push(m.id);
      }
    }
    state.lastEventId = await publishToUser(user, 'unread', { read, unread: unreadCount(state) });
    return { read, unread: unreadCount(state) };
  });
}

// ---------------------------------------------------------------------------
// HTTP

class BadRequest extends Error {}

function validUser(value) {
  // Stands in for your app's login: the user comes from ?user= here.
  const user = value || 'alice';
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(user)) throw new BadRequest('user must be 1 to 64 letters, digits, "_" or "-"');
  return user;
}

async function readJson(req) {
  let size = 0;
  const chunks = [];
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new BadRequest('the body is over 64 KiB');
    chunks.push(chunk);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
  } catch {
    throw new BadRequest('the body is not JSON');
  }
}

const send = (res, status, type, body) => res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' }).end(body);
const sendJson = (res, status, value) => send(res, status, 'application/json', JSON.stringify(value));
const sendError = (res, status, code, message) => sendJson(res, status, { error: { code, message } });

async function handle(req, res) {
  const url = new URL(req.url, 'http://localhost');
  const route = `${req.method} ${url.pathname}`;
  if (route === 'GET /') {
    return send(res, 200, 'text/html; charset=utf-8', PAGE.replaceAll('%HERALD_URL%', HERALD_URL));
  }
  if (route === 'GET /token') {
    return send(res, 200, 'text/plain', mintToken(validUser(url.searchParams.get('user'))));
  }
  if (route === 'GET /api/state') {
    return sendJson(res, 200, await snapshot(validUser(url.searchParams.get('user'))));
  }
  if (route === 'POST /api/messages') {
    const body = await readJson(req);
    const text = typeof body.text === 'string' ? body.text.trim() : '';
    if (!text || text.length > 500) throw new BadRequest('text must be 1 to 500 characters');
    return sendJson(res, 201, await addMessage(validUser(body.user), text));
  }
  if (route === 'POST /api/read') {
    const body = await readJson(req);
    const ids = body.ids === 'all' ? 'all' : body.ids;
    if (ids !== 'all' && !(Array.isArray(ids) && ids.every((id) => typeof id === 'string'))) {
      throw new BadRequest('ids must be "all" or a list of message ids');
    }
    return sendJson(res, 200, await markRead(validUser(body.user), ids));
  }
  return sendError(res, 404, 'not_found', `no route ${route}`);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    if (err instanceof BadRequest) return sendError(res, 400, 'bad_request', err.message);
    console.error(err);
    return sendError(res, 502, 'herald_unavailable', err.message);
  });
});
server.listen(PORT, HOST, () => {
  console.log(`notifications example listening on http://${HOST}:${server.address().port} (Herald: ${HERALD_URL})`);
});
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => server.close(() => process.exit(0)).closeAllConnections());
