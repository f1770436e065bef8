// What a page on another origin can make a visitor's browser do with the
// visitor's `herald_token` cookie, in headless Chromium: under the default
// configuration (`allowed_origins = ["*"]`) it can neither read a
// credentialed stream nor publish; an origin listed by name can read it.
// The page and Herald are on the same site (127.0.0.1) on different ports,
// so the browser does send the cookie (SameSite does not stop it): CORS is
// the only guard being tested. Also dev mode's Host check (DNS rebinding) on
// the direct HTTP/1.1 stream path, with raw bytes.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { connect } from 'node:net';
import { startHerald, openES, waitOpen, request, sleep } from './lib/server.mjs';
import { startSecured, sign, claims, bearer } from './lib/auth.mjs';
import { launchChromium, noChromium } from './lib/browser.mjs';

const SECRET = 'cors-test-secret-0123456789abcdef';

let chromium;
let browser;
let site; // the other origin's web server
let siteOrigin;

before(async () => {
  site = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>another site</title><p>another site</p>');
  });
  await new Promise((r) => site.listen(0, '127.0.0.1', r));
  siteOrigin = `http://127.0.0.1:${site.address().port}`;
  if (noChromium) return;
  chromium = await launchChromium();
  browser = chromium.browser;
});

after(async () => {
  await chromium?.close();
  await new Promise((r) => (site ? site.close(r) : r()));
});

/** The visitor's token: subscribes to `news`, publishes to `news`. */
const visitorToken = () => sign(SECRET, 'HS256', claims('7777', {
  'herald.subscribe': ['news'], 'herald.publish': ['news'],
}));
/** The backend's token, used by the test itself outside the browser. */
const backendToken = () => sign(SECRET, 'HS256', claims('backend', {
  'herald.subscribe': ['news'], 'herald.publish': ['*'], 'herald.admin': true,
}));

/**
 * Runs in the page: a credentialed EventSource and a credentialed fetch of
 * the stream, then three publishes with the visitor's cookies (JSON, which
 * needs a preflight; a "simple" text/plain post, which does not; and one
 * with the token the page was given). Publishes `trigger()` (from outside)
 * while the stream is held, so an opened stream would have something to show.
 */
async function probeFromPage(page, herald, pageToken) {
  return page.evaluate(async ({ herald, pageToken }) => {
    const out = { opened: false, messages: [], errors: 0 };
    const es = new EventSource(`${herald}/v1/events?topic=news`, { withCredentials: true });
    es.onopen = () => { out.opened = true; };
    es.onmessage = (e) => { out.messages.push(e.data); };
    es.onerror = () => { out.errors += 1; };
    window.__herald_es = es;
    const attempt = async (fn) => {
      try { return await fn(); } catch (e) { return `blocked: ${e.name}`; }
    };
    out.fetchStream = await attempt(async () => {
      const ctl = new AbortController();
      const r = await fetch(`${herald}/v1/events?topic=news`, { credentials: 'include', signal: ctl.signal });
      ctl.abort();
      return r.status;
    });
    out.publishJson = await attempt(async () => {
      const r = await fetch(`${herald}/v1/publish`, {
        method: 'POST', credentials: 'include',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ topics: ['news'], data: 'forged json' }),
      });
      return { status: r.status, body: await r.text() };
    });
    out.publishSimple = await attempt(async () => {
      const r = await fetch(`${herald}/v1/publish?topic=news`, {
        method: 'POST', credentials: 'include', mode: 'no-cors',
        headers: { 'content-type': 'text/plain' }, body: 'forged simple',
      });
      return r.type; // 'opaque': the page learns nothing of the answer
    });
    out.publishWithToken = await attempt(async () => {
      const r = await fetch(`${herald}/v1/publish`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${pageToken}` },
        body: JSON.stringify({ topics: ['news'], data: 'published with the page token' }),
      });
      return r.status;
    });
    return out;
  }, { herald, pageToken });
}

/** Every `news` event a backend subscriber (outside the browser) received. */
async function newsWatcher(url, token) {
  const es = openES(url, 'topic=news', { init: { fetch: (u, init) => fetch(u, { ...init, headers: { ...init.headers, ...bearer(token) } }) } });
  await waitOpen(es);
  return { es, seen: () => es.received.map((e) => e.data) };
}

async function withVisitorCookie(server) {
  await browser.addCookies([{ name: 'herald_token', value: await visitorToken(), url: server.url, sameSite: 'Lax' }]);
}

test('default CORS: a page on another origin can neither read a credentialed stream nor publish with the cookie', { timeout: 60_000, skip: noChromium }, async () => {
  const server = await startSecured(['--jwt-secret', SECRET]);
  const backend = await backendToken();
  const watcher = await newsWatcher(server.url, backend);
  try {
    await withVisitorCookie(server);
    const page = await browser.newPage();
    // The cookie works where it is meant to: same origin, the page reads its stream.
    await page.goto(`${server.url}/healthz`);
    const sameOrigin = page.evaluate(() => new Promise((resolve) => {
      const es = new EventSource('/v1/events?topic=news');
      es.onmessage = (e) => { es.close(); resolve(e.data); };
      setTimeout(() => { es.close(); resolve(null); }, 8_000);
    }));
    await sleep(500);
    await request(server.url, '/v1/publish', { method: 'POST', headers: { 'content-type': 'application/json', ...bearer(backend) }, body: JSON.stringify({ topics: ['news'], data: 'same origin' }) });
    assert.equal(await sameOrigin, 'same origin', 'the cookie is set and accepted on the same origin');

    // Another origin, same site: the browser sends the cookie; CORS must hide the answers.
    await page.goto(siteOrigin);
    const out = await probeFromPage(page, server.url, await visitorToken());
    await sleep(300);
    const published = await request(server.url, '/v1/publish', { method: 'POST', headers: { 'content-type': 'application/json', ...bearer(backend) }, body: JSON.stringify({ topics: ['news'], data: 'while the page listens' }) });
    assert.equal(published.status, 201);
    await sleep(1_000);
    const late = await page.evaluate(() => ({ state: window.__herald_es.readyState }));
    assert.equal(out.opened, false, `the credentialed EventSource must not open: ${JSON.stringify(out)}`);
    assert.deepEqual(out.messages, [], 'no event reached the page');
    assert.equal(late.state, 2, 'the EventSource failed for good (CLOSED)');
    assert.match(String(out.fetchStream), /^blocked/, `a credentialed fetch of the stream is blocked: ${JSON.stringify(out)}`);
    assert.match(String(out.publishJson), /^blocked/, `a credentialed JSON publish fails its preflight: ${JSON.stringify(out)}`);
    assert.equal(out.publishSimple, 'opaque');
    // A page holding a token may publish with it; it needs no cookie.
    assert.equal(out.publishWithToken, 201);
    await sleep(500);
    const seen = watcher.seen();
    assert.ok(seen.includes('while the page listens'), `the watcher works: ${seen}`);
    assert.ok(!seen.includes('forged json'), `forged JSON publish stored: ${seen}`);
    assert.ok(!seen.includes('forged simple'), `forged simple publish stored: ${seen}`);
    assert.ok(seen.includes('published with the page token'), `${seen}`);
    await page.close();
  } finally {
    watcher.es.close();
    await server.stop();
  }
});

test('an origin listed by name reads a credentialed stream with the cookie', { timeout: 60_000, skip: noChromium }, async () => {
  const server = await startSecured(['--jwt-secret', SECRET, '--allowed-origin', siteOrigin]);
  const backend = await backendToken();
  try {
    await withVisitorCookie(server);
    const page = await browser.newPage();
    await page.goto(siteOrigin);
    const out = page.evaluate(({ herald }) => new Promise((resolve) => {
      const es = new EventSource(`${herald}/v1/events?topic=news`, { withCredentials: true });
      es.onmessage = (e) => { es.close(); resolve({ data: e.data, id: e.lastEventId }); };
      setTimeout(() => { es.close(); resolve(null); }, 8_000);
    }), { herald: server.url });
    await sleep(700);
    const r = await request(server.url, '/v1/publish', { method: 'POST', headers: { 'content-type': 'application/json', ...bearer(backend) }, body: JSON.stringify({ topics: ['news'], data: 'for the listed site' }) });
    assert.equal(r.status, 201);
    const got = await out;
    assert.ok(got, 'the listed origin received the event');
    assert.equal(got.data, 'for the listed site');
    assert.equal(got.id, r.json.id);
    // It can read answers with credentials too: a publish with only the
    // cookie is refused (the cookie is for streams), and the page can see why.
    const refused = await page.evaluate(async ({ herald }) => {
      const res = await fetch(`${herald}/v1/publish`, {
        method: 'POST', credentials: 'include',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ topics: ['news'], data: 'cookie only' }),
      });
      return { status: res.status, code: (await res.json()).error.code };
    }, { herald: server.url });
    assert.deepEqual(refused, { status: 401, code: 'token_missing' });
    await page.close();
  } finally {
    await server.stop();
  }
});

/** Sends `head` on a raw socket; resolves with the status line and the rest. */
function rawRequest(url, head) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    let got = '';
    const timer = setTimeout(() => { socket.destroy(); resolve(got); }, 3_000);
    socket.on('data', (c) => {
      got += c;
      if (got.includes('\r\n\r\n') && (got.includes('"error"') || got.includes('text/event-stream'))) {
        clearTimeout(timer);
        socket.destroy();
        resolve(got);
      }
    });
    socket.on('error', (e) => { clearTimeout(timer); reject(e); });
    socket.write(head);
  });
}

test('dev mode answers a stream request only for a loopback host name (DNS rebinding)', { timeout: 30_000 }, async () => {
  const server = await startHerald(['--allowed-host', 'herald.test']);
  try {
    const ask = (host) => rawRequest(server.url, `GET /v1/events?user=7777 HTTP/1.1\r\nHost: ${host}\r\nAccept: text/event-stream\r\n\r\n`);
    const refused = await ask('rebind.evil.example:8080');
    assert.match(refused, /^HTTP\/1\.1 403/, refused);
    assert.match(refused, /"host_not_allowed"/, refused);
    for (const host of ['localhost:8080', '127.0.0.1', 'herald.test']) {
      const opened = await ask(host);
      assert.match(opened, /^HTTP\/1\.1 200/, `${host}: ${opened}`);
      assert.match(opened, /text\/event-stream/, `${host}: ${opened}`);
    }
  } finally {
    await server.stop();
  }
});
