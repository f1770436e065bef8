// A request pipelined behind `GET /v1/events` on the same HTTP/1.1
// connection (plain TCP and TLS, where the stream is served by the direct
// path): it is answered, in order, once the server ends the stream; a client
// that keeps sending is still disconnected past the bound.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import https from 'node:https';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { selfSignedCert } from './lib/browser.mjs';
import { startHerald, request, waitFor, pollUntil, sleep } from './lib/server.mjs';

let plain;
let secure;
let certDir;

before(async () => {
  certDir = mkdtempSync(join(tmpdir(), 'herald-pipelining-tls-'));
  const { cert, key } = selfSignedCert(certDir);
  const args = ['--heartbeat-secs', '300'];
  [plain, secure] = await Promise.all([
    startHerald(args),
    startHerald([...args, '--tls-cert', cert, '--tls-key', key]),
  ]);
});
after(async () => {
  await Promise.all([plain?.stop(), secure?.stop()]);
  if (certDir) rmSync(certDir, { recursive: true, force: true });
});

const streamHead = (query) => `GET /v1/events?${query} HTTP/1.1\r\nHost: localhost\r\n\r\n`;
const HEALTHZ = 'GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n';

/** A request to either server (the TLS one's certificate is made here, so not checked). */
function admin(url, path, { method = 'GET' } = {}) {
  if (!url.startsWith('https:')) return request(url, path, { method });
  return new Promise((resolve, reject) => {
    const req = https.request(url + path, { method, rejectUnauthorized: false, agent: false, timeout: 10_000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode, text, json: text ? JSON.parse(text) : undefined }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer in 10 s`)));
    req.on('error', reject);
    req.end();
  });
}

/** A raw connection (TCP, or TLS with ALPN http/1.1) that keeps every byte it receives. */
function connect(url) {
  const u = new URL(url);
  const options = { host: u.hostname, port: Number(u.port) };
  const socket = url.startsWith('https:')
    ? tls.connect({ ...options, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] })
    : net.connect(options);
  const c = { socket, received: Buffer.alloc(0), closed: false, ready: null };
  c.ready = new Promise((resolve, reject) => {
    socket.once(url.startsWith('https:') ? 'secureConnect' : 'connect', resolve);
    socket.once('error', reject);
  });
  socket.on('data', (chunk) => { c.received = Buffer.concat([c.received, chunk]); });
  socket.on('close', () => { c.closed = true; });
  socket.on('error', () => {});
  return c;
}

/**
 * Splits what a connection received into the stream's response head, its
 * de-chunked body, whether the terminating chunk arrived, and the bytes after
 * it (the next response). Returns null while the head is incomplete.
 */
function splitStream(buf) {
  const headEnd = buf.indexOf('\r\n\r\n');
  if (headEnd < 0) return null;
  const head = buf.subarray(0, headEnd + 4).toString('latin1');
  let at = headEnd + 4;
  const body = [];
  for (;;) {
    const lineEnd = buf.indexOf('\r\n', at);
    if (lineEnd < 0) return { head, body: Buffer.concat(body).toString('utf8'), ended: false, after: '' };
    const size = parseInt(buf.subarray(at, lineEnd).toString('latin1'), 16);
    assert.ok(Number.isInteger(size), `a chunk size line at ${at}: ${JSON.stringify(buf.subarray(at, lineEnd).toString('latin1'))}`);
    const dataEnd = lineEnd + 2 + size;
    if (buf.length < dataEnd + 2) return { head, body: Buffer.concat(body).toString('utf8'), ended: false, after: '' };
    assert.equal(buf.subarray(dataEnd, dataEnd + 2).toString('latin1'), '\r\n', 'a chunk ends with CRLF');
    at = dataEnd + 2;
    if (size === 0) {
      return { head, body: Buffer.concat(body).toString('utf8'), ended: true, after: buf.subarray(at).toString('latin1') };
    }
    body.push(buf.subarray(lineEnd + 2, dataEnd));
  }
}

/** Waits for the stream's head and its opening lines. */
async function waitStreamOpen(c, what) {
  await waitFor(() => c.closed || splitStream(c.received)?.body.includes(':ok\n'), 10_000, `${what}: the stream opens`);
  const s = splitStream(c.received);
  assert.ok(s, `${what}: a response head (closed: ${c.closed})`);
  assert.match(s.head, /^HTTP\/1\.1 200 OK\r\n/, what);
  assert.match(s.head, /\r\ncontent-type: text\/event-stream/i, what);
  assert.equal(s.ended, false, `${what}: the stream is open`);
}

/** Kicks `user`, then checks the stream ended with the terminating chunk followed by the `/healthz` answer. */
async function kickAndExpectHealthz(url, c, user, what) {
  const kicked = await admin(url, `/v1/users/${user}/connections`, { method: 'DELETE' });
  assert.equal(kicked.status, 200, `${what}: kick: ${kicked.text}`);
  assert.deepEqual(kicked.json, { closed: 1 }, what);
  await waitFor(() => c.closed || /\r\n\r\n\{"status":"ok"\}$/.test(splitStream(c.received)?.after ?? ''), 10_000,
    `${what}: the /healthz answer after the stream (received ${JSON.stringify(c.received.toString('latin1').slice(-300))})`);
  const s = splitStream(c.received);
  assert.equal(s.ended, true, `${what}: the stream ended with the terminating chunk`);
  assert.match(s.after, /^HTTP\/1\.1 200 OK\r\n/, `${what}: the next bytes are the /healthz answer: ${JSON.stringify(s.after)}`);
  assert.match(s.after, /\r\ncontent-type: application\/json\r\n/i, what);
  assert.ok(s.after.endsWith('\r\n\r\n{"status":"ok"}'), `${what}: /healthz body: ${JSON.stringify(s.after)}`);
  // The connection is still usable: hyper serves it now.
  c.socket.write(HEALTHZ);
  await waitFor(() => c.closed || (splitStream(c.received)?.after.split('{"status":"ok"}').length ?? 0) === 3, 10_000,
    `${what}: a third request on the same connection`);
  assert.equal(c.closed, false, `${what}: the connection stays open`);
}

for (const scheme of ['http', 'https']) {
  const server = () => (scheme === 'http' ? plain : secure);

  test(`${scheme}: a request sent in the same write as GET /v1/events is answered after the server ends the stream`, { timeout: 30_000 }, async () => {
    const user = `pipelined-at-once-${scheme}`;
    const c = connect(server().url);
    try {
      await c.ready;
      c.socket.write(streamHead(`user=${user}`) + HEALTHZ);
      await waitStreamOpen(c, 'at once');
      await kickAndExpectHealthz(server().url, c, user, 'at once');
    } finally {
      c.socket.destroy();
    }
  });

  test(`${scheme}: a request sent while the stream is open is answered after the server ends it, not before`, { timeout: 30_000 }, async () => {
    const user = `pipelined-later-${scheme}`;
    const c = connect(server().url);
    try {
      await c.ready;
      c.socket.write(streamHead(`user=${user}`));
      await waitStreamOpen(c, 'later');
      c.socket.write(HEALTHZ);
      // HTTP/1.1 answers in order: nothing comes while the stream is open.
      await sleep(500);
      const s = splitStream(c.received);
      assert.equal(s.ended, false, 'the stream is still open');
      assert.ok(!s.body.includes('HTTP/1.1'), `no answer inside the stream: ${JSON.stringify(s.body)}`);
      await kickAndExpectHealthz(server().url, c, user, 'later');
    } finally {
      c.socket.destroy();
    }
  });

  test(`${scheme}: a stream client that sends more than 16 KiB after its GET is disconnected`, { timeout: 30_000 }, async () => {
    const user = `chatty-${scheme}`;
    const c = connect(server().url);
    try {
      await c.ready;
      c.socket.write(streamHead(`user=${user}`));
      await waitStreamOpen(c, 'chatty');
      // Far over the bound, in pieces; stop as soon as the server closes.
      const piece = Buffer.alloc(8 << 10, 'x');
      for (let sent = 0; sent < 256 << 10 && !c.closed; sent += piece.length) {
        if (!c.socket.write(piece)) await Promise.race([new Promise((r) => c.socket.once('drain', r)), sleep(1_000)]);
      }
      await waitFor(() => c.closed, 10_000, 'the server closes the connection');
      const s = splitStream(c.received);
      assert.equal(s.ended, false, 'closed, not ended with a terminating chunk and handed on');
      const u = await pollUntil(() => admin(server().url, `/v1/users/${user}`), (r) => r.json?.connections === 0);
      assert.equal(u.json.connections, 0, `the stream is gone: ${JSON.stringify(u.json)}`);
    } finally {
      c.socket.destroy();
    }
  });
}
