// Helpers for the access-control tests (tests/e2e/auth*.test.mjs).
//
// `startHerald()` in server.mjs always passes `--dev`; the token mode needs
// the real `herald serve` without it, so `startSecured()` below starts the
// binary the same way (free port, waits for the listen line, stops it with
// SIGTERM then SIGKILL) but without `--dev`. Tokens are minted with npm
// `jose`; nothing here mocks the server.

import { spawn, execFileSync } from 'node:child_process';
import { writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import https from 'node:https';
import assert from 'node:assert/strict';
import * as jose from 'jose';
import { heraldBin, openRaw, waitFor, sleep, startHerald } from './server.mjs';

export { jose };

const running = new Set();
process.on('exit', () => {
  for (const p of running) {
    try { p.kill('SIGKILL'); } catch { /* already gone */ }
  }
});

// A timer that does not keep the test process alive.
const idle = (ms) => new Promise((r) => setTimeout(r, ms, null).unref());

/**
 * Starts `herald serve --memory --listen 127.0.0.1:0 ...args` (no `--dev`)
 * and waits (up to 20 s) for `herald listening on http://...` on stdout.
 * Returns {url, pid, proc, stop(), output(), exited()}.
 */
export function startSecured(args = [], options = {}) {
  return startHerald(args, { ...options, dev: false });
}

/** Runs `herald ...args` to completion (bounded); returns {code, signal, stdout, stderr}. */
export function runHerald(args, { env = {}, timeoutMs = 20_000 } = {}) {
  return new Promise((resolve, reject) => {
    const proc = spawn(heraldBin(), args, {
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    running.add(proc);
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (c) => { stdout += c; });
    proc.stderr.on('data', (c) => { stderr += c; });
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`herald ${args.join(' ')} did not finish within ${timeoutMs} ms\n--- stdout ---\n${stdout}\n--- stderr ---\n${stderr}`));
    }, timeoutMs);
    proc.once('error', (err) => { clearTimeout(timer); running.delete(proc); reject(err); });
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      running.delete(proc);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

// ---------------------------------------------------------------------------
// Tokens

export const nowSecs = () => Math.floor(Date.now() / 1000);

const b64url = (s) => Buffer.from(s).toString('base64url');

/**
 * Claims of a token for `sub` valid for ten minutes, merged with `extra`;
 * a key whose value is `undefined` in `extra` is left out (`{exp: undefined}`
 * gives a token without exp).
 */
export function claims(sub = '7777', extra = {}) {
  const c = { sub, iat: nowSecs(), exp: nowSecs() + 600, ...extra };
  for (const k of Object.keys(c)) if (c[k] === undefined) delete c[k];
  return c;
}

/**
 * Signs `payload` as is (no claim added) with `key` (a string or bytes for
 * the HS algorithms, a KeyObject/CryptoKey otherwise). `header` adds fields
 * to the protected header (`kid`, ...).
 */
export async function sign(key, alg, payload, header = {}) {
  const k = typeof key === 'string' ? new TextEncoder().encode(key) : key;
  return new jose.SignJWT(payload).setProtectedHeader({ alg, typ: 'JWT', ...header }).sign(k);
}

/** An unsigned token: header {"alg":"none"}, the payload, an empty signature. */
export function algNoneToken(payload) {
  return `${b64url(JSON.stringify({ alg: 'none', typ: 'JWT' }))}.${b64url(JSON.stringify(payload))}.`;
}

/** `token` with its payload replaced by `payload` (header and signature kept). */
export function withPayload(token, payload) {
  const [h, , s] = token.split('.');
  return `${h}.${b64url(JSON.stringify(payload))}.${s}`;
}

/** Decodes a token's header and payload without verifying anything. */
export function decodeToken(token) {
  const [h, p] = token.split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url').toString('utf8')),
    payload: JSON.parse(Buffer.from(p, 'base64url').toString('utf8')),
  };
}

/**
 * A key pair for `alg` (RS256, PS256, ES256, ES384, EdDSA, ...), its public
 * key written as an SPKI PEM to `dir/name.pub.pem` and its private key as
 * PKCS#8 PEM to `dir/name.key.pem`.
 * Returns {alg, publicKey, privateKey, pubPem, pubFile, keyFile}.
 */
export async function keyPair(dir, name, alg) {
  const opts = { extractable: true };
  if (alg.startsWith('RS') || alg.startsWith('PS')) opts.modulusLength = 2048;
  if (alg === 'EdDSA') opts.crv = 'Ed25519';
  const { publicKey, privateKey } = await jose.generateKeyPair(alg, opts);
  const pubPem = await jose.exportSPKI(publicKey);
  const keyPem = await jose.exportPKCS8(privateKey);
  const pubFile = join(dir, `${name}.pub.pem`);
  const keyFile = join(dir, `${name}.key.pem`);
  writeFileSync(pubFile, pubPem);
  writeFileSync(keyFile, keyPem);
  return { alg, publicKey, privateKey, pubPem, pubFile, keyFile };
}

/** The public JWK of a key pair, with `kid`, `alg` and `use: "sig"`. */
export async function publicJwk(pair, kid) {
  const jwk = await jose.exportJWK(pair.publicKey);
  return { ...jwk, kid, alg: pair.alg, use: 'sig' };
}

// ---------------------------------------------------------------------------
// Requests

/** Plain-object view of a fetch Headers or node:http headers. */
function headerOf(r, name) {
  const h = r.headers;
  if (!h) return undefined;
  if (typeof h.get === 'function') return h.get(name) ?? undefined;
  const v = h[name.toLowerCase()];
  return Array.isArray(v) ? v.join(', ') : v;
}
export { headerOf };

/** Headers for a token (or API key) in the Authorization header. */
export const bearer = (token) => ({ authorization: `Bearer ${token}` });

/**
 * GET /v1/events?query with the token sent `via` 'header' | 'query' |
 * 'cookie' (or none). Never hangs on a stream that opens: for a 200 it waits
 * for the first bytes (bounded) then closes; otherwise it reads the whole
 * (error) body. Returns {status, headers, text, json, firstBytes}.
 */
export async function trySubscribe(url, query = '', { token, via = 'header', headers = {}, timeoutMs = 5_000 } = {}) {
  const h2 = { ...headers };
  let q = query;
  if (token !== undefined) {
    if (via === 'header') h2.authorization = `Bearer ${token}`;
    else if (via === 'cookie') h2.cookie = `herald_token=${token}`;
    else if (via === 'query') q = `${q ? `${q}&` : ''}access_token=${encodeURIComponent(token)}`;
    else throw new Error(`unknown token source ${via}`);
  }
  const path = `/v1/events${q ? `?${q}` : ''}`;
  const h = await openRaw(url, path, { headers: h2, timeoutMs });
  try {
    if (h.status === 200) {
      await Promise.race([h.firstData, idle(timeoutMs)]);
    } else {
      await waitFor(() => h.closed, timeoutMs, `end of the ${h.status} answer to GET ${path}`);
    }
  } finally {
    h.close();
  }
  let json;
  try { json = h.text.length ? JSON.parse(h.text) : undefined; } catch { json = undefined; }
  return { status: h.status, headers: h.headers, text: h.text, json, firstBytes: h.text, path };
}

/** Asserts a subscribe answer is an open event stream (200, text/event-stream, body starts with `retry:`). */
export function assertStreamOpened(r, what) {
  const ctx = `${what}: got ${r.status} ${(r.text ?? '').slice(0, 300)}`;
  assert.equal(r.status, 200, ctx);
  assert.match(headerOf(r, 'content-type') ?? '', /^text\/event-stream/, ctx);
  assert.ok((r.firstBytes ?? r.text ?? '').startsWith('retry:'), `stream must start with a retry: line; ${ctx}`);
}

// ---------------------------------------------------------------------------
// Error answers and WWW-Authenticate (RFC 6750)

/**
 * Parses a `WWW-Authenticate` value with one challenge:
 * `Scheme k="v", k2=token` -> {scheme, params}. Throws on a malformed value.
 */
export function parseChallenge(value) {
  const m = /^\s*([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)(?:\s+(.*))?$/s.exec(value ?? '');
  if (!m) throw new Error(`malformed WWW-Authenticate ${JSON.stringify(value)}`);
  const params = {};
  const rest = (m[2] ?? '').trim();
  const re = /\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s"]*))\s*(?:,|$)/gy;
  let pos = 0;
  while (pos < rest.length) {
    re.lastIndex = pos;
    const p = re.exec(rest);
    if (!p || re.lastIndex === pos) {
      throw new Error(`malformed WWW-Authenticate ${JSON.stringify(value)} at ${JSON.stringify(rest.slice(pos))}`);
    }
    params[p[1].toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : p[3];
    pos = re.lastIndex;
  }
  return { scheme: m[1], params };
}

/** The WWW-Authenticate `error` each code comes with (null: none). */
const challengeError = {
  token_missing: null,
  token_expired: 'invalid_token',
  token_invalid: 'invalid_token',
  topic_not_allowed: 'insufficient_scope',
  publish_not_allowed: 'insufficient_scope',
  admin_required: 'insufficient_scope',
};
const statusOf = {
  token_missing: 401,
  token_expired: 401,
  token_invalid: 401,
  topic_not_allowed: 403,
  publish_not_allowed: 403,
  admin_required: 403,
  rate_limited: 429,
};

/**
 * Asserts an error answer of Herald's access control: the status of `code`,
 * JSON `{"error":{"code","message"}}` with that code, the message matching
 * every regexp of `message` (one or an array), and the WWW-Authenticate
 * challenge the code comes with: `Bearer realm="herald"` alone for
 * token_missing; with error="invalid_token" or "insufficient_scope" and a
 * non-empty error_description for the others.
 */
export function assertAuthError(r, code, what, { message = [] } = {}) {
  const ctx = `${what}: got ${r.status} ${(r.text ?? '').slice(0, 400)} www-authenticate=${JSON.stringify(headerOf(r, 'www-authenticate'))}`;
  assert.equal(r.status, statusOf[code], ctx);
  assert.match(headerOf(r, 'content-type') ?? '', /^application\/json/, ctx);
  assert.ok(r.json && typeof r.json === 'object' && r.json.error, `error object expected; ${ctx}`);
  assert.equal(r.json.error.code, code, ctx);
  assert.equal(typeof r.json.error.message, 'string', ctx);
  assert.ok(r.json.error.message.trim().length > 0, `message must be non-empty; ${ctx}`);
  for (const re of [message].flat()) {
    assert.match(r.json.error.message, re, `message must match ${re}; ${ctx}`);
  }
  if (code === 'rate_limited') {
    const ra = headerOf(r, 'retry-after');
    assert.match(ra ?? '', /^\d+$/, `Retry-After must be whole seconds; ${ctx}`);
    assert.ok(Number(ra) >= 1, `Retry-After must be >= 1; ${ctx}`);
    return;
  }
  const raw = headerOf(r, 'www-authenticate');
  assert.ok(raw, `WWW-Authenticate header expected; ${ctx}`);
  const ch = parseChallenge(raw);
  assert.equal(ch.scheme.toLowerCase(), 'bearer', `challenge scheme; ${ctx}`);
  assert.equal(ch.params.realm, 'herald', `realm="herald"; ${ctx}`);
  const err = challengeError[code];
  if (err === null) {
    assert.equal(ch.params.error, undefined, `no error= when no credentials were sent (RFC 6750 3.1); ${ctx}`);
  } else {
    assert.equal(ch.params.error, err, `error="${err}"; ${ctx}`);
    assert.ok((ch.params.error_description ?? '').trim().length > 0, `error_description must be non-empty; ${ctx}`);
  }
}

// ---------------------------------------------------------------------------
// TLS material (openssl CLI) and a JWKS server

/**
 * Makes, with the `openssl` command line, a CA (ca.pem) and a server
 * certificate for IP 127.0.0.1 and DNS localhost signed by it (server.pem,
 * server.key) in `dir`. Returns {caFile, certFile, keyFile, ca, cert, key}.
 */
export function makeTlsFiles(dir) {
  const caKey = join(dir, 'ca.key');
  const caFile = join(dir, 'ca.pem');
  const keyFile = join(dir, 'server.key');
  const csr = join(dir, 'server.csr');
  const certFile = join(dir, 'server.pem');
  const ext = join(dir, 'server.ext');
  const ossl = (args) => execFileSync('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: 20_000 });
  ossl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', caKey, '-out', caFile, '-days', '2', '-subj', '/CN=Herald test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    '-addext', 'subjectKeyIdentifier=hash']);
  ossl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', keyFile, '-out', csr, '-subj', '/CN=127.0.0.1']);
  writeFileSync(ext, [
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature',
    'extendedKeyUsage=serverAuth',
    'subjectAltName=IP:127.0.0.1,DNS:localhost',
    'subjectKeyIdentifier=hash',
    'authorityKeyIdentifier=keyid,issuer',
    '',
  ].join('\n'));
  const serial = `0x${Buffer.from(Array.from({ length: 8 }, () => Math.floor(Math.random() * 256))).toString('hex')}`;
  ossl(['x509', '-req', '-in', csr, '-CA', caFile, '-CAkey', caKey, '-set_serial', serial,
    '-days', '2', '-sha256', '-extfile', ext, '-out', certFile]);
  return {
    caFile, certFile, keyFile,
    ca: readFileSync(caFile), cert: readFileSync(certFile), key: readFileSync(keyFile),
  };
}

/**
 * An HTTPS server on 127.0.0.1 (free port) answering GET /jwks.json with
 * the current document (`setDoc`). Counts the JWKS requests (`hits`).
 * `stop()` closes it and every open connection, so the port no longer answers.
 */
export async function startJwksServer(tls, doc = { keys: [] }) {
  let current = JSON.stringify(doc);
  const s = {
    hits: 0,
    setDoc(d) { current = JSON.stringify(d); },
  };
  const server = https.createServer({ key: tls.key, cert: tls.cert }, (req, res) => {
    if (req.method === 'GET' && req.url.split('?')[0] === '/jwks.json') {
      s.hits += 1;
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(current);
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found');
  });
  const sockets = new Set();
  server.on('connection', (sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
  });
  server.on('tlsClientError', () => { /* a client that gave up */ });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  s.port = server.address().port;
  s.url = `https://127.0.0.1:${s.port}/jwks.json`;
  s.stopped = false;
  s.stop = async () => {
    if (s.stopped) return;
    s.stopped = true;
    const closed = new Promise((r) => server.close(() => r()));
    for (const sock of sockets) sock.destroy();
    await Promise.race([closed, idle(5_000)]);
  };
  return s;
}

/** GETs an https URL trusting `ca` only; resolves {status, body}. */
export function httpsGet(url, ca, timeoutMs = 5_000) {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { ca, agent: false, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

/**
 * Retries `fn` (async, returns a result) until `pred(result)` or `timeoutMs`;
 * returns the last result (the caller asserts on it).
 */
export async function retryUntil(fn, pred, { timeoutMs = 5_000, intervalMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let v = await fn();
  while (!pred(v) && Date.now() < deadline) {
    await sleep(intervalMs);
    v = await fn();
  }
  return v;
}
