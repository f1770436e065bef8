// herald.js (served by Herald at /herald.js) in headless Chromium, against
// the real binary in token mode. The page comes from a small site of the
// test's own (another origin, as a user's site would be) that hands out
// short-lived tokens at /token; the test decides what each token request
// gets and when. Events are published with an API key.
//
// Checked: a token refresh on `herald.expired` loses and repeats nothing
// (events published while the page waits for its new token arrive once, in
// order); a 401 gets a fresh token; a refusal retrying cannot fix is
// reported; typed events arrive through the catch-all `onEvent`; `herald.gap`
// reaches `onGap`; the connection state goes through its changes. And the
// README's version of the same with a bare EventSource, run as written
// (with Herald's and the token's URLs put in), refreshes its token on
// `herald.expired` with nothing lost either.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { publish, request, waitFor } from './lib/server.mjs';
import { startSecured, sign, claims, nowSecs, bearer } from './lib/auth.mjs';
import { launchChromium, noChromium } from './lib/browser.mjs';
import { screenshot } from './lib/examples.mjs';

const SECRET = 'herald-js-secret-of-the-browser-tests';
const KEY = 'herald-js-publisher-key-0123456789';

let herald;
let site;
let chromium;
// What the n-th (1-based) token request of the current test gets: an async
// function (n) => token. Set by each test.
let tokenPlan = null;
let tokenRequests = 0;

function pageHtml(heraldUrl) {
  return `<!doctype html>
<meta charset="utf-8"><title>herald.js</title>
<script src="${heraldUrl}/herald.js"></script>
<pre id="out"></pre>
<script>
  window.log = { events: [], gaps: [], states: [], errors: [] };
  const renderLog = () => { document.getElementById('out').textContent = JSON.stringify(window.log, null, 1); };
  window.start = (options) => {
    window.client = new HeraldClient({
      getToken: () => fetch('/token').then((r) => r.text()),
      onEvent: (e) => { log.events.push(e); renderLog(); },
      onGap: (g) => { log.gaps.push(g); renderLog(); },
      onStateChange: (s, p) => { log.states.push(s); renderLog(); },
      onError: (e) => { log.errors.push(e); renderLog(); },
      ...options,
    });
  };
</script>`;
}

function startSite(heraldUrl) {
  const server = http.createServer(async (req, res) => {
    if (req.url === '/token') {
      tokenRequests += 1;
      const token = await tokenPlan(tokenRequests);
      res.writeHead(200, { 'content-type': 'text/plain' }).end(token);
    } else if (req.url === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(pageHtml(heraldUrl));
    } else {
      res.writeHead(404).end();
    }
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve({ server, url: `http://127.0.0.1:${server.address().port}` }));
  });
}

const token = (sub, ttlSecs, extra = {}) => sign(SECRET, 'HS256', claims(sub, { exp: nowSecs() + ttlSecs, ...extra }));

async function pub(server, user, body) {
  const r = await publish(server.url, { users: [user], ...body }, { headers: bearer(KEY) });
  assert.equal(r.status, 201, `publish: ${r.status} ${r.text}`);
  return r.json.id;
}

async function openPage(name, options) {
  const page = await chromium.browser.newPage();
  page.on('pageerror', (err) => { throw new Error(`${name}: page error ${err.message}`); });
  await page.goto(site.url + '/');
  await page.evaluate((o) => window.start(o), options);
  return page;
}

const pageLog = (page) => page.evaluate(() => window.log);

async function waitLog(page, pred, what, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  let log = await pageLog(page);
  while (!pred(log)) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; page log: ${JSON.stringify(log)}`);
    await new Promise((r) => setTimeout(r, 50));
    log = await pageLog(page);
  }
  return log;
}

before(async () => {
  herald = await startSecured([
    '--jwt-secret', SECRET, '--jwt-leeway-secs', '0', '--retry-ms', '500', '--heartbeat-secs', '300',
    '--api-key', `${KEY};publish=*;admin`,
  ]);
  site = await startSite(herald.url);
  if (!noChromium) chromium = await launchChromium();
});

after(async () => {
  await chromium?.close();
  site?.server.closeAllConnections();
  site?.server.close();
  await herald?.stop();
});

test('herald.expired: getToken() is called and the stream resumes with no event lost or repeated', { timeout: 60_000, skip: noChromium }, async () => {
  tokenRequests = 0;
  let release;
  const refreshHeld = new Promise((r) => { release = r; });
  // The first token lives 4 s; the refresh is held until the test has
  // published what the page must get on its new stream.
  tokenPlan = async (n) => {
    if (n === 1) return token('exp-user', 4);
    await refreshHeld;
    return token('exp-user', 600);
  };
  const page = await openPage('expired', {});
  await waitLog(page, (l) => l.states.includes('open'), 'the stream to open');

  const sent = [];
  // `retry: 60000`: if the page relied on EventSource's own reconnect (which
  // would also fail on the expired token) it would wait a minute, past this test.
  for (let i = 1; i <= 3; i += 1) sent.push({ id: await pub(herald, 'exp-user', { data: `e${i}`, retry: 60000 }), data: `e${i}` });
  await waitLog(page, (l) => l.events.length >= 3, 'the first three events');

  await waitFor(() => tokenRequests >= 2, 10_000, 'the page to ask for a fresh token at expiry');
  for (let i = 4; i <= 6; i += 1) sent.push({ id: await pub(herald, 'exp-user', { data: `e${i}` }), data: `e${i}` });
  release();
  for (let i = 7; i <= 9; i += 1) sent.push({ id: await pub(herald, 'exp-user', { data: `e${i}` }), data: `e${i}` });

  const log = await waitLog(page, (l) => l.events.length >= 9, 'all nine events', 20_000);
  await new Promise((r) => setTimeout(r, 300)); // a duplicate would come right after
  const final = await pageLog(page);
  assert.deepEqual(final.events.map((e) => ({ id: e.id, data: e.data })), sent, 'every event exactly once, in order');
  assert.ok(log.events.every((e) => e.type === 'message'));
  assert.deepEqual(final.states, ['open', 'connecting', 'open'], 'one refresh, seen as connecting then open');
  assert.equal(tokenRequests, 2, 'one token at start, one at expiry');
  assert.deepEqual(final.errors, []);
  await screenshot(page, 'herald-js-expired');
  await page.evaluate(() => window.client.close());
  await page.close();
});

test('a 401 (the token had expired before the stream opened) gets a fresh token', { timeout: 30_000, skip: noChromium }, async () => {
  tokenRequests = 0;
  tokenPlan = async (n) => (n === 1 ? token('late-user', -60) : token('late-user', 600));
  const page = await openPage('401', {});
  await waitLog(page, (l) => l.states.includes('open'), 'the stream to open with the second token');
  const id = await pub(herald, 'late-user', { data: 'after the 401' });
  const log = await waitLog(page, (l) => l.events.length >= 1, 'the event');
  assert.deepEqual(log.events, [{ type: 'message', id, data: 'after the 401' }]);
  assert.equal(tokenRequests, 2);
  assert.deepEqual(log.errors, []);
  await page.evaluate(() => window.client.close());
  await page.close();
});

test('a refusal a new token cannot fix (403 topic_not_allowed) is reported and the client closes', { timeout: 30_000, skip: noChromium }, async () => {
  tokenRequests = 0;
  tokenPlan = async () => token('nosy-user', 600);
  const page = await openPage('403', { topics: ['secret/plans'] });
  const log = await waitLog(page, (l) => l.errors.length >= 1, 'the error');
  assert.equal(log.errors[0].status, 403);
  assert.equal(log.errors[0].code, 'topic_not_allowed');
  assert.match(log.errors[0].message, /secret\/plans/);
  assert.deepEqual(log.states, ['closed']);
  assert.equal(await page.evaluate(() => window.client.state), 'closed');
  await page.close();
});

test('typed events reach the catch-all onEvent; the types filter keeps unlisted types away', { timeout: 30_000, skip: noChromium }, async () => {
  tokenRequests = 0;
  tokenPlan = async () => token('typed-user', 600);
  const page = await openPage('types', { types: ['message', 'order.updated'] });
  await waitLog(page, (l) => l.states.includes('open'), 'the stream to open');
  const typed = await pub(herald, 'typed-user', { event: 'order.updated', data: { order: 42, status: 'shipped' } });
  await pub(herald, 'typed-user', { event: 'not.listed', data: 'filtered out by Herald' });
  const plain = await pub(herald, 'typed-user', { data: 'untyped' });
  const log = await waitLog(page, (l) => l.events.length >= 2, 'two events');
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual((await pageLog(page)).events, [
    { type: 'order.updated', id: typed, data: '{"order":42,"status":"shipped"}' },
    { type: 'message', id: plain, data: 'untyped' },
  ]);
  assert.match(await page.evaluate(() => window.client.streamUrl()), /types=message%2Corder\.updated/);
  assert.deepEqual(log.errors, []);

  // A type added later: on() widens the filter, reconnecting after the last id.
  await page.evaluate(() => {
    window.late = [];
    window.client.on('invoice.paid', (e) => window.late.push(e.data));
  });
  await waitLog(page, (l) => l.states.filter((s) => s === 'open').length >= 2, 'the reconnection with the wider filter');
  const paid = await pub(herald, 'typed-user', { event: 'invoice.paid', data: 'paid' });
  const after = await waitLog(page, (l) => l.events.length >= 3, 'the event of the added type');
  assert.deepEqual(after.events[2], { type: 'invoice.paid', id: paid, data: 'paid' });
  assert.equal(after.events.length, 3, 'nothing replayed twice by the reconnection');
  assert.deepEqual(await page.evaluate(() => window.late), ['paid']);
  await screenshot(page, 'herald-js-types');
  await page.evaluate(() => window.client.close());
  await page.close();
});

test('state: connecting → open, connecting → open again after a kick (resuming), closed on close()', { timeout: 30_000, skip: noChromium }, async () => {
  tokenRequests = 0;
  tokenPlan = async () => token('state-user', 600);
  const page = await openPage('state', {});
  await waitLog(page, (l) => l.states.includes('open'), 'the stream to open');
  const first = await pub(herald, 'state-user', { data: 'before the kick' });
  await waitLog(page, (l) => l.events.length >= 1, 'the first event');

  const kicked = await request(herald.url, '/v1/users/state-user/connections', { method: 'DELETE', headers: bearer(KEY) });
  assert.equal(kicked.json.closed, 1);
  const missed = await pub(herald, 'state-user', { data: 'while away' });
  const log = await waitLog(page, (l) => l.events.length >= 2 && l.states.length >= 3, 'the reconnection and the missed event');
  assert.deepEqual(log.events.map((e) => e.id), [first, missed]);
  assert.deepEqual(log.states, ['open', 'connecting', 'open']);
  assert.equal(tokenRequests, 1, "EventSource's own reconnection keeps the token");

  await page.evaluate(() => window.client.close());
  const closed = await pageLog(page);
  assert.deepEqual(closed.states, ['open', 'connecting', 'open', 'closed']);
  await page.close();
});

test('herald.gap: resuming from an id that left retention calls onGap, then the retained events follow', { timeout: 30_000, skip: noChromium }, async () => {
  // Its own Herald, keeping only three events.
  const small = await startSecured([
    '--jwt-secret', SECRET, '--retention-events', '3', '--retry-ms', '500', '--api-key', `${KEY};publish=*`,
  ]);
  const smallSite = await startSite(small.url);
  try {
    tokenRequests = 0;
    tokenPlan = async () => token('gap-user', 600);
    const ids = [];
    for (let i = 1; i <= 6; i += 1) ids.push(await pub(small, 'gap-user', { data: `g${i}` }));
    const page = await chromium.browser.newPage();
    await page.goto(smallSite.url + '/');
    await page.evaluate((id) => window.start({ lastEventId: id }), ids[0]);
    const log = await waitLog(page, (l) => l.gaps.length >= 1 && l.events.length >= 3, 'the gap and the retained events');
    assert.equal(log.gaps.length, 1);
    assert.equal(log.gaps[0].last_event_id, ids[0]);
    assert.equal(log.gaps[0].oldest_available, ids[3]);
    assert.deepEqual(log.events.map((e) => e.data), ['g4', 'g5', 'g6']);
    assert.equal(await page.evaluate(() => window.client.lastEventId), ids[5], 'herald.gap (no id) does not move the last id');
    await screenshot(page, 'herald-js-gap');
    await page.evaluate(() => window.client.close());
    await page.close();
  } finally {
    smallSite.server.closeAllConnections();
    smallSite.server.close();
    await small.stop();
  }
});

test("the README's bare EventSource version: typed events, and a token refresh on herald.expired with nothing lost", { timeout: 60_000, skip: noChromium }, async () => {
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  const section = readme.slice(readme.indexOf('## Browser client'), readme.indexOf('## Examples'));
  const bare = /The same page with a bare `EventSource`:\n\n```js\n([\s\S]*?)```/.exec(section);
  assert.ok(bare, 'the README has the bare EventSource version');
  const script = bare[1]
    .replaceAll('https://herald.example.com', herald.url)
    .replaceAll('/my-app/herald-token', '/token');

  tokenRequests = 0;
  let release;
  const refreshHeld = new Promise((r) => { release = r; });
  const grant = { 'herald.subscribe': ['orders/42'] };
  tokenPlan = async (n) => {
    if (n === 1) return token('bare-user', 3, grant);
    await refreshHeld;
    return token('bare-user', 600, grant);
  };
  const page = await chromium.browser.newPage();
  await page.goto(site.url + '/');
  // What the README's snippet calls, recorded.
  await page.evaluate(() => {
    window.shown = [];
    window.show = (type, id, data) => window.shown.push({ type, id, data });
    window.badge = { textContent: '' };
    window.reloadFromMyDatabase = () => {};
  });
  await page.addScriptTag({ content: script });
  await page.waitForFunction(() => window.badge.textContent === 'open', null, { timeout: 15_000 });

  const topic = (body) => publish(herald.url, { topics: ['orders/42'], ...body }, { headers: bearer(KEY) })
    .then((r) => { assert.equal(r.status, 201, r.text); return r.json.id; });
  const sent = [];
  sent.push({ type: 'order.updated', id: await topic({ event: 'order.updated', data: 'packed', retry: 60000 }), data: 'packed' });
  sent.push({ type: 'message', id: await topic({ data: 'note 1' }), data: 'note 1' });
  await waitFor(() => tokenRequests >= 2, 10_000, 'the snippet to ask for a fresh token at expiry');
  sent.push({ type: 'order.updated', id: await topic({ event: 'order.updated', data: 'shipped' }), data: 'shipped' });
  sent.push({ type: 'message', id: await topic({ data: 'note 2' }), data: 'note 2' });
  release();
  sent.push({ type: 'order.updated', id: await topic({ event: 'order.updated', data: 'delivered' }), data: 'delivered' });
  await page.waitForFunction((n) => window.shown.length >= n, sent.length, { timeout: 20_000 }).catch(() => {});
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(await page.evaluate(() => window.shown), sent, 'every event once, in order, across the refresh');
  assert.equal(tokenRequests, 2);
  await page.evaluate(() => es.close());
  await page.close();
});
