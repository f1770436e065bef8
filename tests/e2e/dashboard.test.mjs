// The dashboard at `/` in a real browser (Debian chromium, driven by
// playwright-core), against the real binary: live figures from its stats
// stream, the users and topics lists, the disconnect button, the publish
// form, the charts under a bounded load, the "subscribe as" console (every
// event type, group events, resume after a kick) and token mode. Screenshots
// at desktop and phone widths go to tests/e2e/artifacts/.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { startHerald, publishOk, request, stats, pollUntil, openES, waitOpen, openRaw, sleep } from './lib/server.mjs';
import { startSecured, sign, claims, bearer } from './lib/auth.mjs';
import { launchChromium, noChromium } from './lib/browser.mjs';

const ARTIFACTS = fileURLToPath(new URL('./artifacts/', import.meta.url));
const SECRET = 'dashboard-test-secret-0123456789';

let server;
let chromium;
let browser;

before(async () => {
  server = await startHerald(['--retry-ms', '300']);
  if (noChromium) return;
  chromium = await launchChromium();
  browser = chromium.browser;
});

after(async () => {
  await chromium?.close();
  await server?.stop();
});

/**
 * A dashboard page at `path`, its stats stream open; closed when test `t`
 * ends (a browser holds at most six HTTP/1.1 connections to one origin, and
 * each page holds one or two streams).
 */
async function dashboard(t, path = '/', { width = 1280, height = 800 } = {}) {
  const page = await browser.newPage();
  t.after(() => page.close());
  // Script errors and refused loads (the page's Content-Security-Policy) land here.
  page.errors = [];
  page.on('pageerror', (err) => page.errors.push(err.message));
  page.on('console', (msg) => { if (msg.type() === 'error') page.errors.push(msg.text()); });
  await page.setViewportSize({ width, height });
  await page.goto(server.url + path);
  await page.waitForFunction(() => document.querySelector('#live').dataset.state === 'OPEN', null, { timeout: 10_000 });
  return page;
}

/** A page of the server's origin holding a plain browser EventSource. */
async function subscriberPage(t, query, types) {
  const page = await browser.newPage();
  t.after(() => page.close());
  await page.goto(server.url + '/healthz');
  await page.evaluate(({ query, types }) => {
    window.received = [];
    window.opens = 0;
    window.errors = 0;
    const es = new EventSource('/v1/events?' + query);
    for (const t of types) es.addEventListener(t, (e) => window.received.push({ type: e.type, id: e.lastEventId, data: e.data }));
    es.addEventListener('open', () => { window.opens += 1; });
    es.addEventListener('error', () => { window.errors += 1; });
  }, { query, types });
  await page.waitForFunction(() => window.opens >= 1, null, { timeout: 10_000 });
  return page;
}

const userRow = (page, id) => page.locator(`#users tr[data-user="${id}"]`);

test('the stats stream ends on the server when its client leaves', { timeout: 60_000 }, async () => {
  // Open descriptors of the server process (Linux).
  const fds = async () => readdirSync(`/proc/${server.pid}/fd`).length;
  // Before any page holds a connection (this test runs first), and once
  // the count has settled.
  let baseline = await fds();
  for (let i = 0; i < 20; i++) {
    await sleep(200);
    const now = await fds();
    if (now === baseline) break;
    baseline = now;
  }
  const streams = [];
  for (let i = 0; i < 20; i++) streams.push(await openRaw(server.url, '/v1/stats/stream'));
  await Promise.all(streams.map((s) => s.waitEvents(1, 5_000)));
  for (const s of streams) {
    assert.equal(s.events[0].type, 'stats');
    assert.ok(!s.events[0].id, 'a stats frame has no id: it is not in the event log');
  }
  const open = await fds();
  assert.ok(open >= baseline + 20, `20 more descriptors while the streams are open (${baseline} → ${open})`);
  for (const s of streams) s.close();
  // The server sees each client go and drops its connection.
  const after = await pollUntil(fds, (n) => n <= baseline + 2, { timeoutMs: 5_000, intervalMs: 200 });
  assert.ok(after <= baseline + 2, `descriptors back to about ${baseline} (have ${after})`);
});

test('a stats stream ends with the server: it holds no shutdown up', { timeout: 60_000 }, async () => {
  const own = await startHerald();
  try {
    const stream = await openRaw(own.url, '/v1/stats/stream');
    await stream.waitEvents(1, 5_000);
    const exit = await own.stop();
    assert.equal(exit.code, 0, 'SIGTERM: a clean exit');
    await stream.waitEnd(5_000);
    // Ended by the server (the chunked body's last chunk), not cut when the
    // shutdown grace ran out.
    assert.equal(stream.ended, true, 'the stream was ended, not dropped');
  } finally {
    await own.stop();
  }
});

test('a subscriber appears within 2 s of connecting and vanishes when it leaves', { timeout: 60_000, skip: noChromium }, async (t) => {
  const page = await dashboard(t);
  const before = Number((await page.textContent('#v-connections')).replace(/,/g, ''));
  const es = openES(server.url, 'user=alice&topic=group/sales');
  t.after(() => es.close());
  await waitOpen(es);
  // One frame a second: the next one after the subscriber is registered shows it.
  await userRow(page, 'alice').waitFor({ timeout: 2_000 });
  await page.waitForFunction((n) => Number(document.querySelector('#v-connections').textContent.replace(/,/g, '')) === n + 1,
    before, { timeout: 2_000 });
  assert.equal(await userRow(page, 'alice').locator('.count').textContent(), '1');
  await page.locator('#topics tr[data-topic="group/sales"]').waitFor({ timeout: 2_000 });

  es.close();
  await userRow(page, 'alice').waitFor({ state: 'detached', timeout: 4_000 });
  await page.waitForFunction((n) => Number(document.querySelector('#v-connections').textContent.replace(/,/g, '')) === n,
    before, { timeout: 4_000 });
});

test('a publish from the form reaches a subscriber page', { timeout: 60_000, skip: noChromium }, async (t) => {
  const subscriber = await subscriberPage(t, 'user=bob&topic=group/sales', ['greeting', 'message']);
  const page = await dashboard(t);

  await page.selectOption('#pub-target', 'user');
  await page.fill('#pub-to', 'bob');
  await page.fill('#pub-event', 'greeting');
  await page.fill('#pub-data', 'hello bob');
  await page.click('#pub-send');
  await page.waitForFunction(() => /stored as id \d+/.test(document.querySelector('#pub-result').textContent), null, { timeout: 5_000 });
  const id = (await page.textContent('#pub-result')).match(/\d+/)[0];
  await subscriber.waitForFunction((id) => window.received.some((e) => e.id === id), id, { timeout: 5_000 });
  assert.deepEqual(await subscriber.evaluate(() => window.received.at(-1)), { type: 'greeting', id, data: 'hello bob' });

  // To a topic, with no event type: the subscriber's `message` listener gets it.
  await page.selectOption('#pub-target', 'topic');
  await page.fill('#pub-to', 'group/sales');
  await page.fill('#pub-event', '');
  await page.fill('#pub-data', 'quarterly numbers are in');
  await page.click('#pub-send');
  await subscriber.waitForFunction(() => window.received.some((e) => e.data === 'quarterly numbers are in' && e.type === 'message'),
    null, { timeout: 5_000 });

  // A refused publish says why, in the server's words.
  await page.fill('#pub-event', 'herald.mine');
  await page.click('#pub-send');
  await page.waitForFunction(() => /herald\./.test(document.querySelector('#pub-result').textContent)
    && document.querySelector('#pub-result').classList.contains('bad'), null, { timeout: 5_000 });
});

test('the disconnect button ends that user\'s stream', { timeout: 60_000, skip: noChromium }, async (t) => {
  // A raw stream does not reconnect: its end is the kick, seen from outside.
  const carol = await openRaw(server.url, '/v1/events?user=carol');
  t.after(() => carol.close());
  const dave = await openRaw(server.url, '/v1/events?user=dave');
  t.after(() => dave.close());
  const page = await dashboard(t);
  await userRow(page, 'carol').waitFor({ timeout: 2_000 });
  await userRow(page, 'carol').locator('button', { hasText: 'Disconnect' }).click();
  await carol.waitEnd(5_000);
  await page.waitForFunction(() => /Closed 1 stream of carol/.test(document.querySelector('#toast').textContent), null, { timeout: 5_000 });
  await userRow(page, 'carol').waitFor({ state: 'detached', timeout: 4_000 });
  assert.equal(dave.closed, false, 'the other user keeps its stream');
  assert.equal((await request(server.url, '/v1/users/dave')).json.connections, 1);
});

test('the charts move while a load runs', { timeout: 90_000, skip: noChromium }, async (t) => {
  const listeners = [];
  for (let i = 0; i < 5; i++) {
    const es = openES(server.url, `user=load${i}&topic=load`);
    t.after(() => es.close());
    listeners.push(es);
  }
  await Promise.all(listeners.map((es) => waitOpen(es)));
  const page = await dashboard(t);
  // Quiet first: no publish for two frames, so the chart's newest points are 0.
  await sleep(2_500);
  const quiet = await page.evaluate(() => {
    const c = document.querySelector('#chart-rates');
    return { peak: Number(c.dataset.peak), image: c.toDataURL() };
  });

  // A bounded burst: 40 rounds of 10 publishes, for about 4 s.
  const deadline = Date.now() + 20_000;
  for (let round = 0; round < 40 && Date.now() < deadline; round++) {
    await Promise.all(Array.from({ length: 10 }, (_, i) => publishOk(server.url, { topics: ['load'], data: `${round}.${i}` })));
    await sleep(100);
  }
  await page.waitForFunction((peak) => Number(document.querySelector('#chart-rates').dataset.peak) > peak,
    quiet.peak, { timeout: 5_000 });
  const busy = await page.evaluate(() => {
    const c = document.querySelector('#chart-rates');
    return { peak: Number(c.dataset.peak), image: c.toDataURL() };
  });
  assert.ok(busy.peak >= 10, `the chart's peak rate is that of the burst (${busy.peak}/s)`);
  assert.notEqual(busy.image, quiet.image, 'the chart was redrawn with the load');
  await page.locator('#topics tr[data-topic="load"]').waitFor({ timeout: 2_000 });
  assert.equal(await page.locator('#topics tr[data-topic="load"] .num').textContent(), '5');

  // The console and lists filled in for the screenshots.
  await page.fill('#con-user', 'load0');
  await page.click('#con-connect');
  await page.waitForFunction(() => document.querySelector('#con-state').textContent === 'OPEN', null, { timeout: 5_000 });
  for (const [body, type] of [[{ users: ['load0'], event: 'notice', data: { unread: 3 } }, 'notice'],
    [{ topics: ['load'], data: 'quarterly numbers are in' }, 'message'],
    [{ broadcast: true, event: 'maintenance', data: 'at 18:00' }, 'maintenance']]) {
    const id = await publishOk(server.url, body);
    await page.locator(`#con-events .event[data-id="${id}"][data-type="${type}"]`).waitFor({ timeout: 5_000 });
  }
  // The console's own stream is in the next frame's figures.
  await page.waitForFunction(() => document.querySelector('#users tr[data-user="load0"] .count')?.textContent === '2',
    null, { timeout: 3_000 });
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: ARTIFACTS + 'dashboard-desktop.png', fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  await sleep(1_200); // the next frame redraws the charts at the new width
  await page.screenshot({ path: ARTIFACTS + 'dashboard-phone.png', fullPage: true });
  // Nothing sticks out sideways at phone width.
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone`);
  assert.deepEqual(page.errors, [], 'no script error, nothing refused by the page policy');
  for (const es of listeners) es.close();
});

test('the console shows every event type, group events included, and resumes after a kick', { timeout: 60_000, skip: noChromium }, async (t) => {
  // The demo page's address leads to the console, connected as that user.
  const page = await dashboard(t, '/demo?user=7777');
  assert.equal(new URL(page.url()).hash, '#console');
  assert.equal(await page.inputValue('#con-user'), '7777');
  await page.waitForFunction(() => document.querySelector('#con-state').textContent === 'OPEN', null, { timeout: 10_000 });

  // The README tour's events: none of them needs the console told its type or topic.
  const tour = [
    [{ users: ['7777'], event: 'notice', data: { unread: 3 } }, 'notice', '{"unread":3}'],
    [{ topics: ['group/sales'], data: 'quarterly numbers are in' }, 'message', 'quarterly numbers are in'],
    [{ broadcast: true, data: 'maintenance at 18:00' }, 'message', 'maintenance at 18:00'],
    [{ topics: ['orders/42'], event: 'order.created', data: 'line 1\nline 2' }, 'order.created', 'line 1\nline 2'],
  ];
  const ids = [];
  for (const [body, type, data] of tour) {
    const id = await publishOk(server.url, body);
    ids.push(id);
    const row = page.locator(`#con-events .event[data-id="${id}"]`);
    await row.waitFor({ timeout: 5_000 });
    assert.equal(await row.getAttribute('data-type'), type);
    assert.equal(await row.locator('.data').textContent(), data);
  }
  assert.equal(await page.textContent('#con-last-id'), ids.at(-1));

  // Kicked, it comes back by itself with Last-Event-ID and gets what it missed, once.
  const kicked = await request(server.url, '/v1/users/7777/connections', { method: 'DELETE' });
  assert.equal(kicked.json.closed, 1);
  const missed = await publishOk(server.url, { users: ['7777'], event: 'notice', data: 'sent while away' });
  await page.locator(`#con-events .event[data-id="${missed}"]`).waitFor({ timeout: 15_000 });
  assert.ok(Number(await page.textContent('#con-reconnects')) >= 1, 'the console counted a reconnect');
  const shown = await page.$$eval('#con-events .event', (rows) => rows.map((r) => r.dataset.id));
  for (const id of [...ids, missed]) assert.equal(shown.filter((s) => s === id).length, 1, `event ${id} shown once`);

  await page.click('#con-close');
  await page.waitForFunction(() => document.querySelector('#con-state').textContent === 'CLOSED', null, { timeout: 5_000 });
  const s = await pollUntil(() => request(server.url, '/v1/users/7777'), (r) => r.json.connections === 0, { timeoutMs: 4_000 });
  assert.equal(s.json.connections, 0, 'closing the console ends its stream');
});

test('token mode: the page asks for the admin token once and works with it', { timeout: 60_000, skip: noChromium }, async (t) => {
  const secured = await startSecured(['--jwt-secret', SECRET]);
  t.after(() => secured.stop());
  const admin = await sign(SECRET, 'HS256', claims('ops', { 'herald.admin': true }));
  const plain = await sign(SECRET, 'HS256', claims('7777'));
  const stream = await request(secured.url, '/v1/stats/stream');
  assert.equal(stream.status, 401, 'the stats stream is an admin route');
  const member = await openRaw(secured.url, '/v1/events', { headers: bearer(plain) });
  t.after(() => member.close());

  const page = await browser.newPage();
  t.after(() => page.close());
  await page.goto(secured.url + '/');
  const dialog = page.locator('#token-dialog');
  await dialog.waitFor({ state: 'visible', timeout: 5_000 });
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: ARTIFACTS + 'dashboard-token.png' });
  // A token without admin rights is refused, in the server's words.
  await page.fill('#token-input', plain);
  await page.click('#token-use');
  await page.waitForFunction(() => /admin/.test(document.querySelector('#token-error').textContent), null, { timeout: 5_000 });
  assert.ok(await dialog.isVisible());
  await page.fill('#token-input', admin);
  await page.click('#token-use');
  await page.waitForFunction(() => document.querySelector('#live').dataset.state === 'OPEN', null, { timeout: 10_000 });
  assert.equal(await dialog.isVisible(), false);
  await userRow(page, '7777').waitFor({ timeout: 3_000 });
  assert.equal(await page.evaluate(() => sessionStorage.getItem('herald.admin-token')), admin);

  // Kept for the tab: a reload does not ask again.
  await page.reload();
  await page.waitForFunction(() => document.querySelector('#live').dataset.state === 'OPEN', null, { timeout: 10_000 });
  assert.equal(await dialog.isVisible(), false);
  // And the token is used for actions too.
  await userRow(page, '7777').locator('button', { hasText: 'Disconnect' }).click();
  await member.waitEnd(5_000);

  // The console subscribes with the token: `*` is refused for a token that
  // does not cover it, with the server's reason and what to do.
  await page.fill('#con-user', 'ops');
  await page.click('#con-connect');
  await page.waitForFunction(() => /topic_not_allowed/.test(document.querySelector('#con-error').textContent), null, { timeout: 5_000 });
  assert.match(await page.textContent('#con-error'), /clear it/);
  await page.fill('#con-topics', '');
  await page.click('#con-connect');
  await page.waitForFunction(() => document.querySelector('#con-state').textContent === 'OPEN', null, { timeout: 5_000 });
  assert.equal(await page.isVisible('#con-error'), false);
  // A publish the admin token may not make says so.
  await page.selectOption('#pub-target', 'broadcast');
  await page.click('#pub-send');
  await page.waitForFunction(() => document.querySelector('#pub-result').classList.contains('bad'), null, { timeout: 5_000 });
  assert.match(await page.textContent('#pub-result'), /broadcast/);
});
