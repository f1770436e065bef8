// The ticker example's backend: it makes up prices for a few symbols,
// publishes each price point to Herald (topic `prices/<symbol>`), keeps the
// recent points with the ids Herald gave them, and serves the page.
//
// A page starts from a snapshot (the recent points and the id of the newest
// one) and subscribes with `lastEventId` set to that id, so between the
// snapshot and the live stream nothing is missed and nothing is doubled; when
// its connection drops, EventSource resumes with `Last-Event-ID` by itself.
//
// Node built-ins only; it talks to Herald over HTTP, as your own app would:
// it publishes with an API key and mints each page a short-lived subscriber
// token (HS256, signed with Herald's `jwt_secret`).
//
// Environment (defaults in brackets):
//   PORT [3004]                    port of this backend (0: any free port)
//   HERALD_URL [http://127.0.0.1:8080]    where this backend reaches Herald
//   HERALD_PUBLIC_URL [HERALD_URL] where the browser reaches Herald
//   HERALD_JWT_SECRET              Herald's `jwt_secret` (signs page tokens)
//   HERALD_API_KEY                 an API key with `publish=prices/*`
//   TICK_MS [1000]                 one point per symbol this often; 0: only bursts
//   TOKEN_TTL_SECS [3600]          lifetime of a page's token

import http from 'node:http';
import { createHmac, randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';

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
  port: intFromEnv('PORT', 3004, 0, 65535),
  heraldUrl: (process.env.HERALD_URL ?? 'http://127.0.0.1:8080').replace(/\/+$/, ''),
  jwtSecret: process.env.HERALD_JWT_SECRET ?? 'herald-examples-secret-change-me',
  apiKey: process.env.HERALD_API_KEY ?? 'herald-examples-publish-key',
  tickMs: intFromEnv('TICK_MS', 1000, 0, 3_600_000),
  // Lifetime of a page's token; the page asks for a new one when it expires.
  tokenTtlSecs: intFromEnv('TOKEN_TTL_SECS', 3600, 1, 86_400),
};
config.publicHeraldUrl = (process.env.HERALD_PUBLIC_URL ?? config.heraldUrl).replace(/\/+$/, '');

/** The symbols and their opening prices. */
const SYMBOLS = { ACME: 120, GLOBEX: 45, INITECH: 310 };
/** Points kept per symbol: what a page's chart shows. */
const WINDOW = 500;
/** Most points per symbol one burst may ask for. */
const MAX_BURST = 1000;

/** symbol -> [{id, price, t}], oldest first, at most WINDOW. */
const history = Object.fromEntries(Object.keys(SYMBOLS).map((s) => [s, []]));
const lastPrice = { ...SYMBOLS };
/** Id of the newest point Herald acknowledged ("" before the first). */
let lastEventId = '';

const b64url = (buf) => Buffer.from(buf).toString('base64url');

/** An HS256 JWT for Herald, signed with its `jwt_secret`. */
function mintToken(claims) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const exp = Math.floor(Date.now() / 1000) + config.tokenTtlSecs;
  const payload = b64url(JSON.stringify({ ...claims, exp }));
  const signature = createHmac('sha256', config.jwtSecret).update(`${header}.${payload}`).digest();
  return `${header}.${payload}.${b64url(signature)}`;
}

/** A random walk step, rounded to cents, never below one cent. */
function nextPrice(symbol) {
  const p = lastPrice[symbol] * (1 + (Math.random() - 0.5) * 0.01);
  lastPrice[symbol] = Math.max(0.01, Math.round(p * 100) / 100);
  return lastPrice[symbol];
}

// Publishes run one after another, so points are recorded in id order.
let publishing = Promise.resolve();

/**
 * Publishes `rounds` points for every symbol as one batch and records them
 * with their ids once Herald has acknowledged them.
 */
function publishRounds(rounds) {
  const run = async () => {
    const points = [];
    for (let i = 0; i < rounds; i += 1) {
      for (const symbol of Object.keys(SYMBOLS)) {
        points.push({ symbol, price: nextPrice(symbol), t: Date.now() });
      }
    }
    const batch = points.map((p) => ({ topics: [`prices/${p.symbol}`], event: 'price', data: p }));
    const res = await fetch(`${config.heraldUrl}/v1/publish`, {
      method: 'POST',
      headers: { authorization: `Bearer ${config.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify(batch),
      signal: AbortSignal.timeout(10_000),
    });
    const answer = await res.json().catch(() => null);
    if (res.status !== 201 || !Array.isArray(answer)) {
      throw new Error(`Herald answered ${res.status}: ${answer?.error?.message ?? 'no JSON'}`);
    }
    answer.forEach(({ id }, i) => {
      const { symbol, price, t } = points[i];
      const kept = history[symbol];
      kept.push({ id, price, t });
      if (kept.length > WINDOW) kept.splice(0, kept.length - WINDOW);
      lastEventId = id;
    });
    return { published: points.length, last_event_id: lastEventId };
  };
  const result = publishing.then(run);
  publishing = result.catch(() => {});
  return result;
}

function sendJson(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

const sendError = (res, status, code, message) => sendJson(res, status, { error: { code, message } });

async function sendFile(res, name, type) {
  const body = await readFile(new URL(name, import.meta.url));
  res.writeHead(200, { 'content-type': type, 'cache-control': 'no-cache' });
  res.end(body);
}

async function route(req, res) {
  const url = new URL(req.url, 'http://localhost');
  const key = `${req.method} ${url.pathname}`;
  switch (key) {
    case 'GET /':
      return sendFile(res, 'index.html', 'text/html; charset=utf-8');
    case 'GET /app.js':
      return sendFile(res, 'app.js', 'text/javascript; charset=utf-8');
    case 'GET /api/session':
      // Anyone may watch prices: each page gets a token of its own (an
      // anonymous visitor id) that may read `prices/*` only.
      return sendJson(res, 200, {
        herald_url: config.publicHeraldUrl,
        token: mintToken({ sub: `visitor-${randomUUID()}`, 'herald.subscribe': ['prices/*'] }),
      });
    case 'GET /api/snapshot':
      return sendJson(res, 200, { window: WINDOW, points: history, last_event_id: lastEventId });
    case 'POST /api/burst': {
      const raw = url.searchParams.get('rounds') ?? '50';
      const rounds = Number(raw);
      if (!Number.isInteger(rounds) || rounds < 1 || rounds > MAX_BURST) {
        return sendError(res, 400, 'invalid_rounds', `rounds must be a whole number from 1 to ${MAX_BURST}, not ${JSON.stringify(raw)}`);
      }
      try {
        return sendJson(res, 201, await publishRounds(rounds));
      } catch (err) {
        return sendError(res, 502, 'herald_unavailable', `publishing to Herald failed: ${err.message}`);
      }
    }
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
  console.log(`ticker example listening on http://127.0.0.1:${port} (Herald at ${config.heraldUrl})`);
});

if (config.tickMs > 0) {
  // A failure is logged when it starts or changes, not once a tick.
  let lastError = '';
  setInterval(() => {
    publishRounds(1).then(() => { lastError = ''; }, (err) => {
      if (err.message !== lastError) console.error(`ticks not published: ${err.message}`);
      lastError = err.message;
    });
  }, config.tickMs).unref();
}

for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
