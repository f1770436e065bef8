// The phone-to-pc example's backend: the PC page gets a session and shows a
// QR code of the session's upload URL; the phone opens it and uploads a
// photo here; the backend keeps the photo and publishes an event carrying
// its URL to the PC page's session. The image itself never goes over SSE.
//
// Node built-ins only: `node examples/phone-to-pc/server.mjs`.
// Talks to Herald over HTTP, as your own app would: it mints subscriber
// tokens (HS256 JWTs) with HERALD_JWT_SECRET and publishes with
// HERALD_API_KEY.
//
// A session id is 128 random bits and is the only key to its upload form
// and its Herald topic (`user/{session}`); photo URLs are random too.
// Memory is bounded: at most MAX_SESSIONS sessions and MAX_PHOTOS photos
// are kept, the oldest go first.

import http from 'node:http';
import crypto from 'node:crypto';
import os from 'node:os';
import { readFileSync } from 'node:fs';

const HERALD_URL = (process.env.HERALD_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const JWT_SECRET = process.env.HERALD_JWT_SECRET || 'herald-examples-secret-change-me';
const API_KEY = process.env.HERALD_API_KEY || 'herald-examples-publish-key';
const PORT = Number(process.env.PORT || 3003);
// The phone must reach this backend: listen on every interface by default.
const HOST = process.env.HOST || '0.0.0.0';
const TOKEN_TTL_SECS = Number(process.env.TOKEN_TTL_SECS || 300);
const MAX_UPLOAD_BYTES = Number(process.env.MAX_UPLOAD_BYTES || 10 * 1024 * 1024);
const MAX_SESSIONS = 1000;
const MAX_PHOTOS = 200;

const PC_PAGE = readFileSync(new URL('./index.html', import.meta.url), 'utf8');
const PHONE_PAGE = readFileSync(new URL('./upload.html', import.meta.url), 'utf8');
const QR_JS = readFileSync(new URL('./qr.js', import.meta.url), 'utf8');

/** This machine's first LAN IPv4 address, which a phone on the same network can reach. */
function lanAddress() {
  for (const addresses of Object.values(os.networkInterfaces())) {
    for (const a of addresses || []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return '127.0.0.1';
}

/** Where the phone reaches this backend: PUBLIC_URL, or http://PUBLIC_HOST (default: the LAN address):PORT. */
function publicUrl(port) {
  if (process.env.PUBLIC_URL) return process.env.PUBLIC_URL.replace(/\/+$/, '');
  return `http://${process.env.PUBLIC_HOST || lanAddress()}:${port}`;
}

// ---------------------------------------------------------------------------
// Herald: tokens and publishing

const b64url = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

/** A subscriber token for a session: its own topic `user/{session}` only. */
function mintToken(sub) {
  const head = b64url({ alg: 'HS256', typ: 'JWT' });
  const body = b64url({ sub, exp: Math.floor(Date.now() / 1000) + TOKEN_TTL_SECS });
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
// Sessions and photos (in memory, bounded; Map keeps insertion order)

const sessions = new Map(); // session id -> {created}
const photos = new Map(); // photo id -> {type, bytes}

function remember(map, key, value, max) {
  map.set(key, value);
  while (map.size > max) map.delete(map.keys().next().value);
}

const newId = () => crypto.randomBytes(16).toString('hex');

// What an image file starts with, by type: a photo is checked to be one.
const SIGNATURES = {
  'image/png': (b) => b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])),
  'image/jpeg': (b) => b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff,
  'image/gif': (b) => b.subarray(0, 4).toString('latin1') === 'GIF8',
  'image/webp': (b) => b.subarray(0, 4).toString('latin1') === 'RIFF' && b.subarray(8, 12).toString('latin1') === 'WEBP',
};

// ---------------------------------------------------------------------------
// HTTP

class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function readBody(req, limit) {
  const declared = Number(req.headers['content-length']);
  if (declared > limit) throw new HttpError(413, 'too_large', `the photo is over ${limit} bytes`);
  let size = 0;
  const chunks = [];
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new HttpError(413, 'too_large', `the photo is over ${limit} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

function sessionOf(id) {
  if (!sessions.has(id)) throw new HttpError(404, 'unknown_session', 'this upload link is not valid (any more): scan the QR code on the PC again');
  return id;
}

const send = (res, status, headers, body) => res.writeHead(status, { 'cache-control': 'no-store', ...headers }).end(body);
const sendJson = (res, status, value) => send(res, status, { 'content-type': 'application/json' }, JSON.stringify(value));

async function handle(req, res) {
  const url = new URL(req.url, 'http://localhost');
  const route = `${req.method} ${url.pathname}`;
  let m;
  if (route === 'GET /') {
    return send(res, 200, { 'content-type': 'text/html; charset=utf-8' }, PC_PAGE.replaceAll('%HERALD_URL%', HERALD_URL));
  }
  if (route === 'GET /qr.js') {
    return send(res, 200, { 'content-type': 'text/javascript; charset=utf-8' }, QR_JS);
  }
  if (route === 'POST /api/sessions') {
    const session = newId();
    remember(sessions, session, { created: Date.now() }, MAX_SESSIONS);
    return sendJson(res, 201, { session, uploadUrl: `${publicUrl(server.address().port)}/upload/${session}` });
  }
  if (req.method === 'GET' && url.pathname === '/token') {
    return send(res, 200, { 'content-type': 'text/plain' }, mintToken(sessionOf(url.searchParams.get('session'))));
  }
  if (req.method === 'GET' && (m = /^\/upload\/([0-9a-f]{32})$/.exec(url.pathname))) {
    sessionOf(m[1]);
    return send(res, 200, { 'content-type': 'text/html; charset=utf-8' }, PHONE_PAGE);
  }
  if (req.method === 'POST' && (m = /^\/api\/upload\/([0-9a-f]{32})$/.exec(url.pathname))) {
    const session = sessionOf(m[1]);
    const type = String(req.headers['content-type'] || '').split(';')[0].trim().toLowerCase();
    if (!SIGNATURES[type]) {
      throw new HttpError(415, 'not_an_image', `send a PNG, JPEG, GIF or WebP photo (got ${JSON.stringify(type || 'no content type')})`);
    }
    const bytes = await readBody(req, MAX_UPLOAD_BYTES);
    if (!SIGNATURES[type](bytes)) throw new HttpError(415, 'not_an_image', `the file is not a ${type} image`);
    const photo = newId();
    remember(photos, photo, { type, bytes }, MAX_PHOTOS);
    const name = decodeURIComponent(String(req.headers['x-file-name'] || 'photo')).slice(0, 200);
    const event = { url: `/photos/${photo}`, name, type, bytes: bytes.length, at: new Date().toISOString() };
    await publishToUser(session, 'photo', event);
    return sendJson(res, 201, event);
  }
  if (req.method === 'GET' && (m = /^\/photos\/([0-9a-f]{32})$/.exec(url.pathname))) {
    const photo = photos.get(m[1]);
    if (!photo) throw new HttpError(404, 'unknown_photo', 'no such photo (old photos are dropped)');
    return send(res, 200, { 'content-type': photo.type, 'x-content-type-options': 'nosniff', 'cache-control': 'private, max-age=3600' }, photo.bytes);
  }
  throw new HttpError(404, 'not_found', `no route ${route}`);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    if (err instanceof URIError) err = new HttpError(400, 'bad_request', 'x-file-name is not URL-encoded');
    if (!(err instanceof HttpError)) {
      console.error(err);
      err = new HttpError(502, 'herald_unavailable', err.message);
    }
    if (!res.headersSent) sendJson(res, err.status, { error: { code: err.code, message: err.message } });
  });
});
server.listen(PORT, HOST, () => {
  console.log(`phone-to-pc example listening on http://${HOST}:${server.address().port}; phones upload via ${publicUrl(server.address().port)} (Herald: ${HERALD_URL})`);
});
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => server.close(() => process.exit(0)).closeAllConnections());
