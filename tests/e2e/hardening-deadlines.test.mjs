// Every wait has a deadline: a client that connects and goes silent, or
// stops half-way through a request body, or stops reading its stream, is
// disconnected within the configured time, and the memory it held comes
// back. Each test runs the real binary with short deadlines given as flags.
//
// - HTTP/2 preface (or half of it) and then silence: closed by the
//   header-read deadline; an HTTP/2 connection with a stream open outlives
//   the idle timeout, and is closed by it once the stream has ended.
// - `Content-Length: 4194304`, 10 bytes, silence: `408 body_timeout`; the
//   stalled bodies do not cost their declared length; a publish still goes
//   through; the body budget refuses with `503 body_capacity_full`.
// - A subscriber that stops reading (direct HTTP/1.1, h2c, TLS) is closed by
//   the write deadline; one that reads, under the same deadline, is not.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import http2 from 'node:http2';
import https from 'node:https';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { selfSignedCert } from './lib/browser.mjs';
import {
  startHerald, rssKiB, publish, publishOk, stats, sleep, waitFor, rawTcpSse, pollUntil,
} from './lib/server.mjs';

const servers = [];
let certDir;
after(async () => {
  for (const s of servers) await s.stop();
  if (certDir) rmSync(certDir, { recursive: true, force: true });
});

async function start(args, opts) {
  const s = await startHerald(args, opts);
  servers.push(s);
  return s;
}

/** Time the machine's noise may add to a deadline (2 shared cores). */
const SLACK_MS = 8_000;
const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

/** Loopback source addresses, so many sockets do not share one port range. */
const source = (i) => `127.0.0.${2 + (i % 50)}`;

/** Opens `n` raw sockets, each sending `first(i)` once connected. */
async function openSilent(port, n, first) {
  const sockets = [];
  const connected = [];
  for (let i = 0; i < n; i++) {
    const s = net.connect({ host: '127.0.0.1', port, localAddress: source(i) });
    const h = { socket: s, closedAt: null, data: Buffer.alloc(0) };
    s.on('data', (d) => { if (h.data.length < 4096) h.data = Buffer.concat([h.data, d]); });
    s.on('close', () => { h.closedAt = Date.now(); });
    s.on('error', () => {});
    connected.push(new Promise((resolve) => {
      s.once('connect', () => { s.write(first(i)); resolve(); });
      s.once('close', resolve);
    }));
    sockets.push(h);
  }
  await Promise.all(connected);
  return sockets;
}

/** Waits (bounded) until the server's RSS is at most `limitKiB`; returns it. */
async function rssSettles(pid, limitKiB, ms = 10_000) {
  return pollUntil(async () => rssKiB(pid), (kib) => kib <= limitKiB, { timeoutMs: ms, intervalMs: 200 });
}

test('silent HTTP/2 connections are closed by the handshake deadline and their memory comes back', async () => {
  const HEADER_SECS = 2;
  const N = 300;
  const server = await start(['--header-read-timeout-secs', String(HEADER_SECS), '--idle-timeout-secs', '4']);
  const port = Number(new URL(server.url).port);

  /** N silent connections: most send the whole preface; every tenth only its
   * first line, which leaves the server not even knowing the protocol yet. */
  async function round() {
    const sockets = await openSilent(port, N, (i) => (i % 10 === 0 ? PREFACE.subarray(0, 16) : PREFACE));
    const allOpen = Date.now();
    await sleep(500);
    const held = rssKiB(server.pid);
    const openAfterHalfASecond = sockets.filter((s) => s.closedAt === null).length;
    await waitFor(() => sockets.every((s) => s.closedAt !== null), HEADER_SECS * 1000 + SLACK_MS, 'the silent connections to close')
      .catch(() => {});
    const open = sockets.filter((s) => s.closedAt === null).length;
    const latest = Math.max(...sockets.map((s) => s.closedAt ?? Infinity)) - allOpen;
    for (const s of sockets) s.socket.destroy();
    return { held, open, openAfterHalfASecond, latest };
  }

  // A first round makes what the server keeps once grown (the reactor's
  // registration slab, allocator arenas); the second must give back all it takes.
  const warm = await round();
  const before = await rssSettles(server.pid, 0, 3_000);
  const measured = await round();
  for (const r of [warm, measured]) {
    assert.equal(r.open, 0, `${r.open} of ${N} silent HTTP/2 connections still open after ${HEADER_SECS} s + ${SLACK_MS} ms`);
    // Closed by the deadline, not refused at once.
    assert.equal(r.openAfterHalfASecond, N, 'every connection was accepted and held until its deadline');
    assert.ok(r.latest <= HEADER_SECS * 1000 + SLACK_MS, `last closed ${r.latest} ms after all were open`);
  }
  const margin = Math.max(512, (measured.held - before) / 5);
  const settled = await rssSettles(server.pid, before + margin, 15_000);
  assert.ok(settled <= before + margin,
    `RSS ${before} KiB before, ${measured.held} KiB with ${N} silent connections, ${settled} KiB after they closed`);
  console.log(`# h2 silent: RSS ${before} -> ${measured.held} -> ${settled} KiB; all ${N} closed within ${measured.latest} ms`);
});

test('an HTTP/2 connection with an open stream outlives the idle timeout, and is closed idle after it ends', async () => {
  const IDLE_SECS = 2;
  const server = await start(['--header-read-timeout-secs', '2', '--idle-timeout-secs', String(IDLE_SECS)]);
  const session = http2.connect(server.url);
  let sessionClosedAt = null;
  session.on('close', () => { sessionClosedAt = Date.now(); });
  session.on('error', () => {});
  const stream = session.request({ ':path': '/v1/events?topic=h2-idle' });
  let body = '';
  stream.setEncoding('utf8');
  stream.on('data', (d) => { body += d; });
  stream.on('error', () => {});
  await waitFor(() => body.includes(':ok'), 10_000, 'the stream to open');

  // Three idle timeouts (and more than the header-read deadline) with the stream open.
  await sleep(IDLE_SECS * 3 * 1000);
  assert.equal(sessionClosedAt, null, 'the connection carrying a stream was closed');
  await publishOk(server.url, { topics: ['h2-idle'], data: 'still here' });
  await waitFor(() => body.includes('data: still here'), 10_000, 'the event on the long-open stream');

  const ended = Date.now();
  stream.close();
  await waitFor(() => sessionClosedAt !== null, IDLE_SECS * 1000 + SLACK_MS, 'the idle connection to be closed')
    .catch(() => {});
  session.destroy();
  assert.ok(sessionClosedAt !== null, `the connection was not closed within ${IDLE_SECS} s + ${SLACK_MS} ms of its last stream`);
  assert.ok(sessionClosedAt - ended >= IDLE_SECS * 1000 * 0.9,
    `closed ${sessionClosedAt - ended} ms after its stream ended, before the idle timeout`);
});

/** `POST /v1/publish` head with `contentLength`, then `sent` bytes of body. */
function stalledPublish(contentLength, sent) {
  return Buffer.concat([
    Buffer.from(`POST /v1/publish HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\ncontent-length: ${contentLength}\r\n\r\n`),
    Buffer.alloc(sent, 'x'),
  ]);
}

/** Status, headers (lowercase) and JSON body of a raw HTTP/1.1 answer. */
function parseAnswer(raw) {
  const text = raw.toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  if (end < 0) return null;
  const [statusLine, ...lines] = text.slice(0, end).split('\r\n');
  const headers = Object.fromEntries(lines.map((l) => {
    const i = l.indexOf(':');
    return [l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim()];
  }));
  let json;
  try { json = JSON.parse(text.slice(end + 4)); } catch { json = undefined; }
  return { status: Number(statusLine.split(' ')[1]), headers, json };
}

test('stalled publish bodies get 408 within the body deadline, do not cost their declared length, and leave publishing open', async () => {
  const BODY_SECS = 3;
  const N = 200;
  const DECLARED = 4_194_304;
  const server = await start(['--body-read-timeout-secs', String(BODY_SECS)]);
  const port = Number(new URL(server.url).port);

  async function round() {
    const base = rssKiB(server.pid);
    const sockets = await openSilent(port, N, () => stalledPublish(DECLARED, 10));
    const allOpen = Date.now();
    await sleep(1000);
    const stalled = rssKiB(server.pid);
    const answeredEarly = sockets.filter((s) => s.data.length > 0 || s.closedAt !== null).length;
    // Publishing goes on while they stall.
    const t0 = Date.now();
    const ok = await publish(server.url, { topics: ['news'], data: 'while stalled' });
    const publishMs = Date.now() - t0;
    await waitFor(() => sockets.every((s) => s.closedAt !== null), BODY_SECS * 1000 + SLACK_MS,
      'every stalled publish to be answered and closed').catch(() => {});
    const latest = Math.max(...sockets.map((s) => s.closedAt ?? Infinity)) - allOpen;
    const answers = sockets.map((s) => parseAnswer(s.data));
    for (const s of sockets) s.socket.destroy();
    return { base, stalled, answeredEarly, ok, publishMs, latest, answers };
  }

  // As above: a first round grows what the server keeps; the second is measured.
  const warm = await round();
  const before = await rssSettles(server.pid, 0, 3_000);
  const measured = await round();
  for (const r of [warm, measured]) {
    assert.equal(r.ok.status, 201, `a publish during the stall: ${r.ok.status} ${r.ok.text}`);
    assert.equal(r.answeredEarly, 0, 'a stalled body was answered before its deadline');
    assert.ok(r.latest <= BODY_SECS * 1000 + SLACK_MS, `the last stalled publish was closed ${r.latest} ms after all were open`);
    const timedOut = r.answers.filter((a) => a?.status === 408 && a.json?.error?.code === 'body_timeout');
    assert.equal(timedOut.length, N, `answers: ${JSON.stringify(r.answers.find((a) => a?.status !== 408) ?? null)}`);
    assert.equal(timedOut[0].headers.connection, 'close');
    assert.match(timedOut[0].json.error.message, /body_read_timeout_secs/);
    // Far less than the declared 4 MiB each (the first round includes the server's growth).
    const grewKiB = r.stalled - r.base;
    assert.ok(grewKiB < N * 256, `RSS grew ${grewKiB} KiB for ${N} stalled bodies (declared ${DECLARED} bytes each)`);
  }
  const grewKiB = measured.stalled - before;
  const margin = Math.max(512, grewKiB / 5);
  const settled = await rssSettles(server.pid, before + margin, 15_000);
  assert.ok(settled <= before + margin, `RSS ${before} KiB before, ${measured.stalled} KiB stalled, ${settled} KiB after`);
  console.log(`# stalled bodies: RSS ${before} -> ${measured.stalled} (${(grewKiB / N).toFixed(1)} KiB each) -> ${settled} KiB; all 408 within ${measured.latest} ms; a publish meanwhile took ${measured.publishMs} ms`);
});

test('bodies over the in-flight budget get 503 body_capacity_full, and the budget comes back', async () => {
  const MAX_BODY = 1_048_576;
  const server = await start([
    '--max-body-bytes', String(MAX_BODY), '--max-body-bytes-in-flight', String(2 * MAX_BODY),
    '--body-read-timeout-secs', '60',
  ]);
  const port = Number(new URL(server.url).port);
  // Two bodies hold 2 × 1,000,000 of the 2 MiB budget and stall.
  const holders = await openSilent(port, 2, () => stalledPublish(MAX_BODY, 1_000_000));
  await sleep(1500);
  const [third] = await openSilent(port, 1, () => stalledPublish(200_000, 200_000));
  await waitFor(() => third.closedAt !== null, 10_000, 'the answer over the budget').catch(() => {});
  const answer = parseAnswer(third.data);
  third.socket.destroy();
  assert.equal(answer?.status, 503, `over the budget: ${third.data.toString('latin1').slice(0, 300)}`);
  assert.equal(answer.json.error.code, 'body_capacity_full');
  assert.equal(answer.headers['retry-after'], '1');
  assert.equal(holders.filter((h) => h.closedAt !== null).length, 0, 'the bodies within the budget are still being read');

  // The holders leave: their share is given back, and a large body fits again.
  for (const h of holders) h.socket.destroy();
  const big = JSON.stringify({ topics: ['news'], data: 'y'.repeat(200_000) });
  const after = await pollUntil(() => publish(server.url, big), (r) => r.status === 201, { timeoutMs: 5_000, intervalMs: 200 });
  assert.equal(after.status, 201, `after the holders left: ${after.status} ${after.text}`);
});

/** A raw h2c subscriber that opens a huge flow-control window and then never reads. */
function h2cNeverReads(port, path) {
  const frame = (type, flags, streamId, payload) => {
    const head = Buffer.alloc(9);
    head.writeUIntBE(payload.length, 0, 3);
    head[3] = type;
    head[4] = flags;
    head.writeUInt32BE(streamId, 5);
    return Buffer.concat([head, payload]);
  };
  const settings = Buffer.alloc(6);
  settings.writeUInt16BE(0x4, 0); // SETTINGS_INITIAL_WINDOW_SIZE
  settings.writeUInt32BE(0x7fffffff, 2);
  const windowUpdate = Buffer.alloc(4);
  windowUpdate.writeUInt32BE(0x7fffffff - 65_535, 0);
  // HPACK: :method GET, :scheme http (static table), :path and :authority as literals.
  const literal = (nameIndex, value) => Buffer.concat([Buffer.from([0x40 | nameIndex, value.length]), Buffer.from(value)]);
  const headers = Buffer.concat([Buffer.from([0x82, 0x86]), literal(4, path), literal(1, 'localhost')]);
  const socket = net.connect({ host: '127.0.0.1', port }, () => {
    socket.write(Buffer.concat([
      PREFACE, frame(0x4, 0, 0, settings), frame(0x8, 0, 0, windowUpdate), frame(0x1, 0x5, 1, headers),
    ]));
    socket.pause();
  });
  socket.on('error', () => {});
  return socket;
}

/** A subscriber over TLS (HTTP/1.1 by ALPN) that stops reading after the first bytes. */
function tlsNeverReads(url, path) {
  const u = new URL(url);
  const socket = tls.connect({ host: u.hostname, port: Number(u.port), rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] }, () => {
    socket.write(`GET ${path} HTTP/1.1\r\nHost: localhost\r\n\r\n`);
  });
  socket.once('data', () => socket.pause());
  socket.on('error', () => {});
  return socket;
}

/** A request to the TLS server (its certificate is made here, so not checked). */
function overTls(url, path, { method = 'GET', body } = {}) {
  return new Promise((resolve, reject) => {
    const req = https.request(url + path, {
      method, rejectUnauthorized: false, agent: false, timeout: 30_000,
      headers: body ? { 'content-type': 'application/json' } : {},
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode, text, json: text ? JSON.parse(text) : undefined }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer in 30 s`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** Publishes `count` events of `size` bytes to `topic`, in batches under the body limit. */
async function flood(url, topic, count, size) {
  const data = 'z'.repeat(size);
  for (let sent = 0; sent < count; sent += 10) {
    const batch = Array.from({ length: Math.min(10, count - sent) }, (_, i) => ({ topics: [topic], data: `${sent + i} ${data}` }));
    const r = url.startsWith('https:')
      ? await overTls(url, '/v1/publish', { method: 'POST', body: JSON.stringify(batch) })
      : await publish(url, batch);
    assert.equal(r.status, 201, `flood publish: ${r.status} ${r.text.slice(0, 200)}`);
  }
}

const tlsStats = async (url) => (await overTls(url, '/v1/stats')).json;

test('subscribers that stop reading are closed by the write deadline (direct, h2c, TLS); a reading one is not', async () => {
  const WRITE_SECS = 2;
  const EVENTS = 60;
  const SIZE = 200_000; // 12 MB in all: more than any socket buffers hold
  certDir = mkdtempSync(join(tmpdir(), 'herald-deadlines-tls-'));
  const { cert, key } = selfSignedCert(certDir);
  const args = ['--write-timeout-secs', String(WRITE_SECS), '--heartbeat-secs', '300'];
  const plain = await start(args);
  const secure = await start([...args, '--tls-cert', cert, '--tls-key', key]);
  const port = Number(new URL(plain.url).port);

  const reader = rawTcpSse(plain.url, '/v1/events?topic=flood', { keepBody: false });
  const directStalled = rawTcpSse(plain.url, '/v1/events?topic=flood', { pauseAfterHead: true, keepBody: false });
  const h2cStalled = h2cNeverReads(port, '/v1/events?topic=flood');
  const tlsStalled = tlsNeverReads(secure.url, '/v1/events?topic=flood');
  const idleReader = rawTcpSse(plain.url, '/v1/events?topic=other', { keepBody: false });
  try {
    const opened = await pollUntil(() => stats(plain.url), (s) => s.connections === 4, { timeoutMs: 10_000 });
    assert.equal(opened.connections, 4, 'the plain server holds the four streams');
    const openedTls = await pollUntil(() => tlsStats(secure.url), (s) => s.connections === 1, { timeoutMs: 10_000 });
    assert.equal(openedTls.connections, 1, 'the TLS server holds its stream');

    await Promise.all([flood(plain.url, 'flood', EVENTS, SIZE), flood(secure.url, 'flood', EVENTS, SIZE)]);
    const flooded = Date.now();

    // The reader gets everything; the stalled ones are gone within the deadline.
    await waitFor(() => reader.events.length >= EVENTS, 30_000, `the reader's ${EVENTS} events (has ${reader.events.length})`);
    const closed = await pollUntil(() => stats(plain.url), (s) => s.connections === 2, { timeoutMs: WRITE_SECS * 1000 + SLACK_MS, intervalMs: 100 });
    const closedTls = await pollUntil(() => tlsStats(secure.url), (s) => s.connections === 0, { timeoutMs: WRITE_SECS * 1000 + SLACK_MS, intervalMs: 100 });
    const took = Date.now() - flooded;
    assert.equal(closed.connections, 2, 'the stalled direct and h2c streams were closed (the two readers remain)');
    assert.equal(closedTls.connections, 0, 'the stalled TLS stream was closed');
    assert.equal(closed.write_timeouts, 2, 'both closes are counted in /v1/stats');
    assert.equal(closedTls.write_timeouts, 1);

    // The readers, under the same deadline, stay and keep receiving.
    await sleep(WRITE_SECS * 2 * 1000);
    await publishOk(plain.url, { topics: ['flood', 'other'], data: 'after' });
    await waitFor(() => reader.events.some((e) => e.data === 'after'), 10_000, 'the reader\'s event after the stalls');
    await waitFor(() => idleReader.events.some((e) => e.data === 'after'), 10_000, 'the idle reader\'s event');
    assert.equal(reader.closed, false);
    assert.equal(idleReader.closed, false);
    const ids = reader.events.slice(0, EVENTS).map((e) => Number(e.data.split(' ')[0]));
    assert.deepEqual(ids, Array.from({ length: EVENTS }, (_, i) => i), 'the reader got every event in order');
    console.log(`# write deadline: stalled streams closed ${took} ms after the flood ended`);
  } finally {
    for (const h of [reader, directStalled, idleReader]) h.close();
    h2cStalled.destroy();
    tlsStalled.destroy();
  }
});
