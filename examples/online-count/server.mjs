// The online-count example's backend: it asks Herald how many users have a
// stream open (`GET /v1/stats`, `users_online`, with an admin API key) once
// a second, and when the number changes publishes it to the topic
// `site/online`, which every page subscribes to.
//
// Why polling: Herald already keeps the exact count (a closed stream leaves
// it within a second) and has no presence callbacks; one request a second
// costs the same for ten users or a hundred thousand, and the pages hear of
// a change only when there is one. A page that opens first asks this
// backend for the last count it published and the id of that event, and
// subscribes with `lastEventId` = that id, so it misses no change.
//
// A visitor is a random id in a `uid` cookie; the page's token carries it as
// `sub`. That is what makes the visitor count: Herald counts users by their
// token's subject (an anonymous subscriber of a public topic has none), and
// two tabs of one visitor are one user.
//
// Node built-ins only; it talks to Herald over HTTP, as your own app would.
//
// Environment (defaults in brackets):
//   PORT [3006]                    port of this backend (0: any free port)
//   HERALD_URL [http://127.0.0.1:8080]    where this backend reaches Herald
//   HERALD_PUBLIC_URL [HERALD_URL] where the browser reaches Herald
//   HERALD_JWT_SECRET              Herald's `jwt_secret` (signs page tokens)
//   HERALD_API_KEY                 an API key with `admin` and `publish=site/*`
//   POLL_MS [1000]                 how often Herald's count is read

import http from 'node:http';
import { createHmac, randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * A whole number from the environment, or the default; anything else stops
 * the backend with a message naming the variable (exit 64, like Herald).
 */
function intFromEnv(name, fallback, min, max) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || value < min || value > max) {
    console.error(`${name}=${JSON.stringify(raw)}: expected a whole number from ${min} to ${max}`);
    process.exit(64);
  }
  return value;
}

const config = {
  port: intFromEnv('PORT', 3006, 0, 65535),
  heraldUrl: (process.env.HERALD_URL ?? 'http://127.0.0.1:8080').replace(/\/+$/, ''),
  jwtSecret: process.env.HERALD_JWT_SECRET ?? 'herald-examples-secret-change-me',
  apiKey: process.env.HERALD_API_KEY ?? 'herald-examples-publish-key',
  pollMs: intFromEnv('POLL_MS', 1000, 10, 3_600_000),
};
config.publicHeraldUrl = (process.env.HERALD_PUBLIC_URL ?? config.heraldUrl).replace(/\/+$/, '');

/** The topic the count is published to. */
const COUNT_TOPIC = 'site/online';
/** Lifetime of a page's token; the page asks for a new one when it expires. */
const TOKEN_TTL_SECS = 3600;

/** The last count published and its event id (null before the first). */
let published = { users: null, last_event_id: '' };

const b64url = (buf) => Buffer.from(buf).toString('base64url');

/** An HS256 JWT for Herald, signed with its `jwt_secret`. */
function mintToken(claims) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const exp = Math.floor(Date.now() / 1000) + TOKEN_TTL_SECS;
  const payload = b64url(JSON.stringify({ ...claims, exp }));
  const signature = createHmac('sha256', config.jwtSecret).update(`${header}.${payload}`).digest();
  return `${header}.${payload}.${b64url(signature)}`;
}

/** A request to Herald with the API key; returns the parsed JSON answer. */
async function herald(method, path, body) {
  const res = await fetch(`${config.heraldUrl}${path}`, {
    method,
    headers: { authorization: `Bearer ${config.apiKey}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(5_000),
  });
  const answer = await res.json().catch(() => null);
  if (!res.ok) throw new Error(`${method} ${path}: Herald answered ${res.status}: ${answer?.error?.message ?? 'no JSON'}`);
  return answer;
}

/** Reads Herald's count and publishes it if it changed. */
async function pollOnce() {
  const { users_online: users } = await herald('GET', '/v1/stats');
  if (users === published.users) return;
  const { id } = await herald('POST', '/v1/publish', { topics: [COUNT_TOPIC], event: 'online', data: { users } });
  published = { users, last_event_id: id };
}

/** Polls for ever, one request at a time; a failure is logged (once per kind) and retried. */
async function pollLoop() {
  let lastError = '';
  for (;;) {
    try {
      await pollOnce();
      lastError = '';
    } catch (err) {
      if (err.message !== lastError) console.error(`online count not updated: ${err.message}`);
      lastError = err.message;
    }
    await sleep(config.pollMs);
  }
}

function sendJson(res, status, body, headers = {}) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers });
  res.end(JSON.stringify(body));
}

const sendError = (res, status, code, message) => sendJson(res, status, { error: { code, message } });

async function sendFile(res, name, type, headers = {}) {
  const body = await readFile(new URL(name, import.meta.url));
  res.writeHead(200, { 'content-type': type, 'cache-control': 'no-cache', ...headers });
  res.end(body);
}

/** The visitor's id from the `uid` cookie (only ids this backend could have set). */
function visitor(req) {
  const m = /(?:^|;\s*)uid=([0-9a-f-]{36})(?:;|$)/.exec(req.headers.cookie ?? '');
  return m ? m[1] : null;
}

async function route(req, res) {
  const url = new URL(req.url, 'http://localhost');
  const key = `${req.method} ${url.pathname}`;
  switch (key) {
    case 'GET /': {
      const cookie = visitor(req) ? {} : { 'set-cookie': `uid=${randomUUID()}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax` };
      return sendFile(res, 'index.html', 'text/html; charset=utf-8', cookie);
    }
    case 'GET /app.js':
      return sendFile(res, 'app.js', 'text/javascript; charset=utf-8');
    case 'GET /api/session': {
      const uid = visitor(req);
      if (!uid) return sendError(res, 401, 'no_visitor', 'no visitor id: open the page first (it sets the `uid` cookie)');
      return sendJson(res, 200, {
        herald_url: config.publicHeraldUrl,
        topic: COUNT_TOPIC,
        token: mintToken({ sub: uid, 'herald.subscribe': [COUNT_TOPIC] }),
      });
    }
    case 'GET /api/count':
      return sendJson(res, 200, published);
    default:
      return sendError(res, 404, 'not_found', `no route ${key}`);
  }
}

const server = http.createServer((req, res) => {
  route(req, res).catch((err) => {
    if (!res.headersSent) sendError(res, 500, 'internal', err.message);
    else res.destroy();
  });
});

server.on('error', (err) => {
  console.error(`cannot listen on 127.0.0.1:${config.port}: ${err.message}`);
  process.exit(1);
});
server.listen(config.port, '127.0.0.1', () => {
  const { port } = server.address();
  console.log(`online-count example listening on http://127.0.0.1:${port} (Herald at ${config.heraldUrl})`);
  pollLoop();
});

for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
