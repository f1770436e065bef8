// Why TLS matters to a browser: over HTTP/1.1 Chromium opens at most six
// connections per origin, and an open EventSource holds one for as long as it
// lives, so a page (or all tabs of one origin together) gets six live streams
// and every further EventSource waits, CONNECTING, until one closes. Over
// HTTP/2 — which browsers speak only over TLS, chosen by ALPN — every stream
// is a stream of one connection. Herald with a certificate made here, in
// Debian's headless Chromium (driven by playwright-core): 20 EventSources
// over h2 all open and all receive their topic's event; the same page from a
// plain-HTTP Herald opens 6 and leaves 14 waiting.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startHerald, publishOk, stats, sleep } from './lib/server.mjs';
import { launchChromium, noChromium, selfSignedCert } from './lib/browser.mjs';

const STREAMS = 20;
/** Chromium's (and every current browser's) HTTP/1.1 connections per origin. */
const H1_CONNECTIONS_PER_ORIGIN = 6;
const skip = noChromium;

let dir;
let tlsServer;
let plainServer;
let browser;
let chromium;

before(async () => {
  if (skip) return;
  dir = mkdtempSync(join(tmpdir(), 'herald-h2-browser-'));
  const { cert, key } = selfSignedCert(dir);
  tlsServer = await startHerald(['--tls-cert', cert, '--tls-key', key, '--heartbeat-secs', '300']);
  plainServer = await startHerald(['--heartbeat-secs', '300']);
  assert.match(tlsServer.url, /^https:\/\//);
  assert.match(plainServer.url, /^http:\/\//);
  chromium = await launchChromium({ ignoreCertificates: true });
  browser = chromium.browser;
});

after(async () => {
  await chromium?.close();
  await tlsServer?.stop();
  await plainServer?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Loads `${url}/healthz` and opens STREAMS EventSources to /v1/events?topic=t{i}, same-origin. */
async function openPage(url) {
  const page = await browser.newPage();
  await page.goto(`${url}/healthz`);
  await page.evaluate((n) => {
    window.opened = new Array(n).fill(false);
    window.received = Array.from({ length: n }, () => []);
    window.sources = [];
    for (let i = 0; i < n; i++) {
      const es = new EventSource(`/v1/events?topic=t${i}`);
      es.onopen = () => { window.opened[i] = true; };
      es.onmessage = (e) => { window.received[i].push(e.data); };
      window.sources.push(es);
    }
  }, STREAMS);
  return page;
}

/** {open: onopen fired and readyState OPEN, waiting: readyState CONNECTING, received}. */
const state = (page) => page.evaluate(() => ({
  open: window.sources.filter((es, i) => window.opened[i] && es.readyState === 1).length,
  waiting: window.sources.filter((es) => es.readyState === 0).length,
  received: window.received.map((r) => r.slice()),
}));

test('over TLS the browser speaks HTTP/2: 20 EventSources on one origin all open and all receive', { timeout: 60_000, skip }, async () => {
  const page = await openPage(tlsServer.url);
  const protocol = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
  assert.equal(protocol, 'h2', 'the page came over HTTP/2 (ALPN h2)');
  await page.waitForFunction((n) => window.opened.filter(Boolean).length === n, STREAMS, { timeout: 20_000 });
  const s = await page.evaluate(() => fetch('/v1/stats').then((r) => r.json()));
  assert.equal(s.connections, STREAMS, 'the server holds all 20 streams');

  // Published from the page itself: a 21st request on the same h2 connection.
  const ids = await page.evaluate(async (n) => {
    const out = [];
    for (let i = 0; i < n; i++) {
      const r = await fetch('/v1/publish', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ topics: [`t${i}`], data: `to t${i}` }),
      });
      out.push((await r.json()).id);
    }
    return out;
  }, STREAMS);
  assert.equal(ids.length, STREAMS);
  await page.waitForFunction((n) => window.received.every((r) => r.length >= 1) && window.received.length === n, STREAMS, { timeout: 20_000 });
  const { open, waiting, received } = await state(page);
  assert.equal(open, STREAMS);
  assert.equal(waiting, 0);
  received.forEach((events, i) => assert.deepEqual(events, [`to t${i}`], `stream t${i} got exactly its event`));
  const publishProtocols = await page.evaluate(() => performance.getEntriesByType('resource')
    .filter((e) => e.name.endsWith('/v1/publish')).map((e) => e.nextHopProtocol));
  assert.ok(publishProtocols.length >= 1 && publishProtocols.every((p) => p === 'h2'), `publishes went over h2: ${publishProtocols}`);
  await page.close();
});

test('over plain HTTP/1.1 the same page gets 6 open streams and 14 waiting (six connections per origin)', { timeout: 60_000, skip }, async () => {
  const page = await openPage(plainServer.url);
  const protocol = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
  assert.equal(protocol, 'http/1.1');
  await page.waitForFunction((n) => window.opened.filter(Boolean).length === n, H1_CONNECTIONS_PER_ORIGIN, { timeout: 20_000 });
  // Give the other 14 every chance to open: they do not, the browser holds them.
  await sleep(2_000);
  const s = await stats(plainServer.url);
  assert.equal(s.connections, H1_CONNECTIONS_PER_ORIGIN, 'the server sees only six streams');

  // Published from here: the page has no connection left to publish on.
  for (let i = 0; i < STREAMS; i++) {
    await publishOk(plainServer.url, { topics: [`t${i}`], data: `to t${i}` });
  }
  await page.waitForFunction((n) => window.received.filter((r) => r.length > 0).length === n, H1_CONNECTIONS_PER_ORIGIN, { timeout: 20_000 });
  await sleep(500);
  const { open, waiting, received } = await state(page);
  assert.equal(open, H1_CONNECTIONS_PER_ORIGIN);
  assert.equal(waiting, STREAMS - H1_CONNECTIONS_PER_ORIGIN);
  assert.equal(received.filter((r) => r.length > 0).length, H1_CONNECTIONS_PER_ORIGIN, 'only the open streams received');
  await page.close();
});
