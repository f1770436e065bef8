// examples/ticker: Herald in token mode, the example's backend started with
// its README's command, the page in headless Chromium. What is checked is
// what a person sees: each chart's number of points and its last price,
// against what the backend published — after a burst, after the page's
// stream was cut while a burst was published, after the page was too busy
// to read during one, on a page opened late, and across token renewals.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startExampleHerald, startExample, screenshot, EXAMPLE_JWT_SECRET, EXAMPLE_API_KEY,
} from './lib/examples.mjs';
import { launchChromium, noChromium } from './lib/browser.mjs';
import { request, sleep, pollUntil, startHerald } from './lib/server.mjs';

let herald;
let example;
let chromium;

before(async () => {
  if (noChromium) return;
  herald = await startExampleHerald();
  example = await startExample('ticker', { env: { ...herald.env, TICK_MS: '0' } });
  chromium = await launchChromium();
});

after(async () => {
  await chromium?.close();
  await example?.stop();
  await herald?.stop();
});

/** What the page shows: per symbol, the chart's point count and the price label. */
function readCharts(page) {
  return page.$$eval('.symbol', (sections) => Object.fromEntries(sections.map((s) => [
    s.dataset.symbol,
    {
      points: s.querySelector('polyline').getAttribute('points').trim().split(/\s+/).filter(Boolean).length,
      price: s.querySelector('.price').textContent,
    },
  ])));
}

/** What the backend published, in the page's terms. */
async function published(from = example) {
  const r = await request(from.url, '/api/snapshot');
  assert.equal(r.status, 200, r.text);
  return Object.fromEntries(Object.entries(r.json.points).map(([symbol, points]) => [
    symbol,
    { points: points.length, price: points.length ? points.at(-1).price.toFixed(2) : '–' },
  ]));
}

/** Waits (bounded) until the page shows `expected`, then asserts it does. */
async function expectCharts(page, expected, what) {
  const deadline = Date.now() + 15_000;
  let shown = await readCharts(page);
  while (JSON.stringify(shown) !== JSON.stringify(expected) && Date.now() < deadline) {
    await sleep(100);
    shown = await readCharts(page);
  }
  assert.deepEqual(shown, expected, what);
}

const status = (page) => page.$eval('#status', (el) => el.dataset.state);

async function waitStatus(page, state) {
  await page.waitForFunction((s) => document.getElementById('status').dataset.state === s, state, { timeout: 15_000 });
}

test('the charts end with every point: after a burst, a cut connection, a busy page, on a late page', { skip: noChromium }, async () => {
  const page = await chromium.browser.newPage();
  await page.goto(example.url);
  await waitStatus(page, 'live');

  // A burst from the page's own button: 50 points per symbol.
  await page.click('#burst');
  const afterBurst = await pollUntil(published, (p) => Object.values(p).every((s) => s.points === 50), { timeoutMs: 10_000 });
  for (const { points } of Object.values(afterBurst)) assert.equal(points, 50);
  await expectCharts(page, afterBurst, 'the charts after a burst of 50 points each');

  // Cut the page's stream and publish a burst while it is away.
  await cutEveryone(herald);
  await waitStatus(page, 'reconnecting');
  const missed = await request(example.url, '/api/burst?rounds=100', { method: 'POST' });
  assert.equal(missed.status, 201, missed.text);
  assert.equal(missed.json.published, 300);
  assert.equal(await status(page), 'reconnecting', 'the burst was published while the page was away');
  await waitStatus(page, 'live');
  const afterCut = await published();
  for (const { points } of Object.values(afterCut)) assert.equal(points, 150);
  await expectCharts(page, afterCut, 'the charts after the reconnect: every point missed is there');
  await screenshot(page, 'example-ticker');

  // A page too busy to read (its main thread blocked for 2 s) while a burst
  // is published: once free, it draws every point of it.
  const busy = page.evaluate(() => { const end = Date.now() + 2_000; while (Date.now() < end); });
  const whileBusy = await request(example.url, '/api/burst?rounds=100', { method: 'POST' });
  assert.equal(whileBusy.status, 201, whileBusy.text);
  await busy;
  const afterBusy = await published();
  for (const { points } of Object.values(afterBusy)) assert.equal(points, 250);
  await expectCharts(page, afterBusy, 'the charts after the page was too busy to read');

  // A page opened now starts from the snapshot and shows the same.
  const late = await chromium.browser.newPage();
  await late.goto(example.url);
  await waitStatus(late, 'live');
  await expectCharts(late, afterBusy, 'a page opened after the bursts');
  // ...and both keep up with live points.
  const more = await request(example.url, '/api/burst?rounds=3', { method: 'POST' });
  assert.equal(more.status, 201, more.text);
  const end = await published();
  await expectCharts(page, end, 'the first page after 3 more rounds');
  await expectCharts(late, end, 'the late page after 3 more rounds');
  await late.close();
  await page.close();
});

test('a bad burst size is refused with a JSON error', { skip: noChromium }, async () => {
  for (const rounds of ['0', 'x', '1001', '2.5']) {
    const r = await request(example.url, `/api/burst?rounds=${rounds}`, { method: 'POST' });
    assert.equal(r.status, 400, `rounds=${rounds}: ${r.text}`);
    assert.equal(r.json.error.code, 'invalid_rounds');
  }
});

test('a page whose token runs out gets a new one on herald.expired and misses no point', { skip: noChromium }, async () => {
  // Tokens of 2 s, no leeway: the stream ends with herald.expired about
  // every 2 s while points are published every 100 ms.
  const shortHerald = await startExampleHerald(['--jwt-leeway-secs', '0']);
  let shortExample;
  const page = await chromium.browser.newPage();
  try {
    shortExample = await startExample('ticker', { env: { ...shortHerald.env, TICK_MS: '0', TOKEN_TTL_SECS: '2' } });
    let sessions = 0;
    page.on('request', (r) => { if (new URL(r.url()).pathname === '/api/session') sessions += 1; });
    await page.goto(shortExample.url);
    await waitStatus(page, 'live');
    const until = Date.now() + 5_000;
    let rounds = 0;
    while (Date.now() < until) {
      const r = await request(shortExample.url, '/api/burst?rounds=1', { method: 'POST' });
      assert.equal(r.status, 201, r.text);
      rounds += 1;
      await sleep(100);
    }
    const expected = await published(shortExample);
    for (const { points } of Object.values(expected)) assert.equal(points, rounds);
    await expectCharts(page, expected, 'every point, across the token renewals');
    assert.ok(sessions >= 3, `the page fetched a token ${sessions} times in 5 s of 2 s tokens`);
  } finally {
    await page.close();
    await shortExample?.stop();
    await shortHerald.stop();
  }
});

/** Ends every open stream of `on` (admin API), as a dropped network would. */
async function cutEveryone(on) {
  const adminKey = { authorization: `Bearer ${on.env?.HERALD_API_KEY ?? EXAMPLE_API_KEY}` };
  const users = await request(on.url, '/v1/users', { headers: adminKey });
  assert.equal(users.status, 200, users.text);
  assert.ok(users.json.users.length >= 1, 'the page is online');
  for (const { id } of users.json.users) {
    const r = await request(on.url, `/v1/users/${encodeURIComponent(id)}/connections`, { method: 'DELETE', headers: adminKey });
    assert.equal(r.status, 200, r.text);
  }
}

test('a page cut off before its first point still gets the points published while it was away', { skip: noChromium }, async () => {
  // A backend of its own, so its snapshot has no point and no id yet.
  // EventSource has no id to send when it reconnects (500 ms later), so
  // the page must ask its backend again instead.
  const fresh = await startExample('ticker', { env: { ...herald.env, TICK_MS: '0' } });
  const page = await chromium.browser.newPage();
  try {
    await page.goto(fresh.url);
    await waitStatus(page, 'live');
    await cutEveryone(herald);
    await waitStatus(page, 'reconnecting');
    const missed = await request(fresh.url, '/api/burst?rounds=20', { method: 'POST' });
    assert.equal(missed.status, 201, missed.text);
    await expectCharts(page, await published(fresh), 'the points published while a page with none was away');
  } finally {
    await page.close();
    await fresh.stop();
  }
});

test('a page refused on reconnect (its token ran out while it was away) gets a new token and misses no point', { skip: noChromium }, async () => {
  // Herald as startExampleHerald() starts it, but with a 4 s retry and no
  // leeway, so a page whose 2 s token was fine when its stream was cut is
  // refused (401) when EventSource comes back: EventSource then gives up
  // for good, and only the page can start again.
  const slowRetry = await startHerald([
    '--jwt-secret', EXAMPLE_JWT_SECRET, '--api-key', `${EXAMPLE_API_KEY};publish=*;admin`,
    '--retry-ms', '4000', '--jwt-leeway-secs', '0',
  ], { dev: false });
  let shortExample;
  const page = await chromium.browser.newPage();
  try {
    shortExample = await startExample('ticker', {
      env: { HERALD_URL: slowRetry.url, HERALD_JWT_SECRET: EXAMPLE_JWT_SECRET, HERALD_API_KEY: EXAMPLE_API_KEY, TICK_MS: '0', TOKEN_TTL_SECS: '2' },
    });
    const refusals = [];
    page.on('response', (r) => {
      if (new URL(r.url()).pathname === '/v1/events' && r.status() !== 200) refusals.push(r.status());
    });
    await page.goto(shortExample.url);
    await waitStatus(page, 'live');
    // A point first, so the page has an id to resume from.
    const first = await request(shortExample.url, '/api/burst?rounds=1', { method: 'POST' });
    assert.equal(first.status, 201, first.text);
    await expectCharts(page, await published(shortExample), 'the first point');
    await cutEveryone(slowRetry);
    await waitStatus(page, 'reconnecting');
    const missed = await request(shortExample.url, '/api/burst?rounds=20', { method: 'POST' });
    assert.equal(missed.status, 201, missed.text);
    await expectCharts(page, await published(shortExample), 'every point, after the refused reconnect');
    assert.ok(refusals.includes(401), `Herald refused the expired token's reconnect (answers seen: ${refusals.join(', ') || 'none'})`);
  } finally {
    await page.close();
    await shortExample?.stop();
    await slowRetry.stop();
  }
});
