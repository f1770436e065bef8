// Bounded subscriptions: many distinct prefix patterns held by other clients
// do not slow an ordinary subscriber's delivery (the index looks a topic up
// by its own prefixes instead of scanning every pattern on the server), and a
// subscription over `max_topics_per_subscription` is refused with
// `400 too_many_topics` on the direct HTTP/1.1 path and over HTTP/2 alike.
//
// The rates are measured, not asserted against a fixed number: the machine is
// shared, so each side is the median of a few bounded bursts and only their
// ratio is checked, with room (2×) for noise.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import { spawn } from 'node:child_process';
import { heraldBin, startHerald, publish, stats, pollUntil } from './lib/server.mjs';

const HOLDERS = 40;
const PATTERNS_PER_HOLDER = 400;
const BURST_EVENTS = 20_000;
const BATCH = 1_000;
const BATCHES_IN_FLIGHT = 4;
const RUNS = 3;
/** Longest a burst may take to arrive before the run counts what it got. */
const BURST_DEADLINE_MS = 20_000;

const servers = [];
after(async () => { await Promise.all(servers.map((s) => s.stop())); });

/**
 * Opens `GET /v1/events?query` over HTTP/1.1 on its own socket; resolves once
 * the response head is in. `count()` is how many events arrived so far (an
 * event frame starts with an `id:` line; the stream's preamble ends in a
 * newline, so every frame is a `\nid:`).
 */
function openStream(url, query, localAddress) {
  return new Promise((resolve, reject) => {
    const req = http.get(`${url}/v1/events?${query}`, { agent: false, localAddress }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        reject(new Error(`GET /v1/events: ${res.statusCode}`));
        return;
      }
      let events = 0;
      let tail = '';
      res.setEncoding('latin1');
      res.on('data', (chunk) => {
        const text = tail + chunk;
        for (let at = text.indexOf('\nid:'); at !== -1; at = text.indexOf('\nid:', at + 1)) events += 1;
        tail = text.slice(-3); // a `\nid:` split between two chunks
      });
      res.on('error', () => {});
      resolve({ count: () => events, close: () => req.destroy() });
    });
    req.on('error', reject);
    req.setTimeout(30_000, () => req.destroy(new Error('no response head within 30 s')));
  });
}

/** One burst of `BURST_EVENTS` events on topic `b`, published in batches
 * with a few in flight; returns the rate at which `stream` received them. */
async function deliveryRate(url, stream) {
  const start = performance.now();
  const already = stream.count();
  const batch = JSON.stringify(Array.from({ length: BATCH }, () => ({ topics: ['b'], data: 'x' })));
  let next = 0;
  const publisher = async () => {
    while (next < BURST_EVENTS / BATCH) {
      next += 1;
      const r = await publish(url, batch);
      assert.equal(r.status, 201, r.text);
    }
  };
  await Promise.all(Array.from({ length: BATCHES_IN_FLIGHT }, publisher));
  const got = () => stream.count() - already;
  await pollUntil(async () => got(), (n) => n >= BURST_EVENTS, {
    timeoutMs: Math.max(0, BURST_DEADLINE_MS - (performance.now() - start)),
    intervalMs: 5,
  });
  const seconds = (performance.now() - start) / 1000;
  return { rate: got() / seconds, received: got(), seconds };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function medianRate(t, url, stream, label) {
  const runs = [];
  for (let i = 0; i < RUNS; i += 1) runs.push(await deliveryRate(url, stream));
  const rates = runs.map((r) => r.rate);
  t.diagnostic(`${label}: ${rates.map((r) => Math.round(r)).join(', ')} events/s (median ${Math.round(median(rates))}); received ${runs.map((r) => r.received).join(', ')} of ${BURST_EVENTS}`);
  return median(rates);
}

test(`${HOLDERS} × ${PATTERNS_PER_HOLDER} distinct prefix patterns on other connections keep an ordinary subscriber within 2× of its rate`, { timeout: 240_000 }, async (t) => {
  const server = await startHerald(['--max-topics-per-subscription', String(PATTERNS_PER_HOLDER), '--heartbeat-secs', '300']);
  servers.push(server);
  const ordinary = await openStream(server.url, 'topic=b');
  // Warm-up: connections, allocator and the log's first arena buffers.
  await deliveryRate(server.url, ordinary);
  const without = await medianRate(t, server.url, ordinary, 'without the patterns');

  const holders = [];
  for (let h = 0; h < HOLDERS; h += 1) {
    const query = Array.from({ length: PATTERNS_PER_HOLDER }, (_, i) => `topic=a${h * PATTERNS_PER_HOLDER + i}/*`).join('&');
    holders.push(await openStream(server.url, query, `127.0.0.${2 + h}`));
  }
  const distinct = HOLDERS * PATTERNS_PER_HOLDER;
  const counts = await pollUntil(() => stats(server.url), (s) => s.connections === HOLDERS + 1, { timeoutMs: 10_000 });
  assert.equal(counts.connections, HOLDERS + 1);
  assert.equal(counts.topics, distinct + 1, 'every pattern is registered, distinct, with `b`');

  const withPatterns = await medianRate(t, server.url, ordinary, `with ${distinct} patterns`);
  t.diagnostic(`ratio without/with: ${(without / withPatterns).toFixed(2)}`);
  assert.ok(
    withPatterns * 2 >= without,
    `with ${distinct} prefix patterns held elsewhere the rate fell from ${Math.round(without)} to ${Math.round(withPatterns)} events/s (more than 2×)`,
  );
  assert.equal(holders.reduce((n, s) => n + s.count(), 0), 0, 'no pattern of the holders matches topic b');
  holders.forEach((s) => s.close());
  ordinary.close();
});

/** The query of a subscription with `n` distinct topics. */
const topics = (n) => Array.from({ length: n }, (_, i) => `topic=t${i}`).join('&');

/** GET /v1/events?query over plain HTTP/1.1 (the direct path's kind of
 * request); resolves with the status and, for a refusal, the JSON body. */
function http1Get(url, query) {
  return new Promise((resolve, reject) => {
    const req = http.get(`${url}/v1/events?${query}`, { agent: false }, (res) => {
      if (res.statusCode === 200) {
        req.destroy();
        resolve({ status: 200 });
        return;
      }
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode, json: JSON.parse(body) }));
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error('no answer within 10 s')));
  });
}

/** The same over HTTP/2 without TLS (prior knowledge): hyper's path. */
function http2Get(url, query) {
  return new Promise((resolve, reject) => {
    const client = http2.connect(url);
    const done = (v, err) => { client.close(); if (err) reject(err); else resolve(v); };
    client.on('error', (err) => done(null, err));
    const req = client.request({ ':path': `/v1/events?${query}` });
    req.setTimeout(10_000, () => done(null, new Error('no answer within 10 s')));
    req.once('response', (headers) => {
      const status = headers[':status'];
      if (status === 200) { req.close(); done({ status }); return; }
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (c) => { body += c; });
      req.on('end', () => done({ status, json: JSON.parse(body) }));
    });
    req.on('error', (err) => done(null, err));
  });
}

let defaults;
for (const [name, get] of [['HTTP/1.1 (the direct path)', http1Get], ['HTTP/2 (hyper)', http2Get]]) {
  test(`${name}: a subscription over the default 128 topics gets 400 too_many_topics`, { timeout: 60_000 }, async () => {
    if (!defaults) {
      defaults = await startHerald(['--heartbeat-secs', '300']);
      servers.push(defaults);
    }
    const over = await get(defaults.url, topics(129));
    assert.equal(over.status, 400, JSON.stringify(over.json));
    assert.equal(over.json.error.code, 'too_many_topics');
    assert.match(over.json.error.message, /at most 128 /, 'the message names the limit');
    assert.match(over.json.error.message, /max_topics_per_subscription/, 'the message names the option');
    const at = await get(defaults.url, topics(128));
    assert.equal(at.status, 200, '128 topics are within the limit');
  });
}

/** `herald serve ...args` run to its exit (bounded); {code, stderr}. */
function serveExit(args, timeoutMs = 20_000) {
  return new Promise((resolve, reject) => {
    const proc = spawn(heraldBin(), ['serve', '--dev', '--memory', '--listen', '127.0.0.1:0', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    proc.stderr.on('data', (c) => { stderr += c; });
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`serve ${args.join(' ')} still running after ${timeoutMs} ms`)); }, timeoutMs);
    proc.on('exit', (code) => { clearTimeout(timer); resolve({ code, stderr }); });
  });
}

test('max_topics_per_subscription outside 1..=100000 stops start-up with exit 64 naming the option', { timeout: 60_000 }, async () => {
  for (const value of ['0', '100001']) {
    const r = await serveExit(['--max-topics-per-subscription', value]);
    assert.equal(r.code, 64, r.stderr);
    assert.match(r.stderr, /max_topics_per_subscription/);
    assert.match(r.stderr, /at least 1 and at most 100000/);
  }
});
