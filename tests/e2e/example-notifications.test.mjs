// examples/notifications in two Chromium tabs of the same user, started with
// its README's command against Herald in token mode: the badge and the list
// show what arrives and what is read, in both tabs, and a reload shows the
// same state. With a tiny retention, a snapshot whose last event has left
// Herald's log is shown without a reload loop, and a gap in the middle of a
// session makes the page take a new snapshot.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { request } from './lib/server.mjs';
import { launchChromium, noChromium } from './lib/browser.mjs';
import { startExampleHerald, startExample, screenshot } from './lib/examples.mjs';

let herald;
let example;
let chromium;

before(async () => {
  herald = await startExampleHerald();
  example = await startExample('notifications', { env: herald.env });
  if (!noChromium) chromium = await launchChromium();
});

after(async () => {
  await chromium?.close();
  await example?.stop();
  await herald?.stop();
});

async function openTab(user) {
  const page = await chromium.browser.newPage();
  await page.goto(`${example.url}/?user=${user}`);
  await page.waitForFunction(() => document.querySelector('#state').dataset.state === 'open', null, { timeout: 15_000 });
  return page;
}

/** What a person sees: the badge's number and the list's rows. */
async function seen(page) {
  return page.evaluate(() => ({
    badge: document.querySelector('#badge').textContent,
    rows: [...document.querySelectorAll('#list li')].map((li) => ({ text: li.firstChild.textContent, read: li.classList.contains('read') })),
  }));
}

async function waitSeen(page, expected, what) {
  try {
    await page.waitForFunction((want) => {
      const rows = [...document.querySelectorAll('#list li')].map((li) => ({ text: li.firstChild.textContent, read: li.classList.contains('read') }));
      return document.querySelector('#badge').textContent === want.badge && JSON.stringify(rows) === JSON.stringify(want.rows);
    }, expected, { timeout: 15_000 });
  } catch {
    assert.deepEqual(await seen(page), expected, what);
  }
}

test('unread badge and list: new messages and mark-as-read reach both tabs of the user', { timeout: 90_000, skip: noChromium }, async () => {
  const a = await openTab('alice');
  const b = await openTab('alice');
  const other = await openTab('bob');
  await waitSeen(a, { badge: '0', rows: [] }, 'tab A starts empty');

  // One message from the page's form, two from the backend's API (another part of the app).
  await a.fill('#text', 'Welcome aboard');
  await a.click('#send button');
  for (const text of ['Your order has shipped', 'Invoice 2 is ready']) {
    const r = await request(example.url, '/api/messages', {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ user: 'alice', text }),
    });
    assert.equal(r.status, 201, r.text);
  }
  const three = {
    badge: '3',
    rows: [
      { text: 'Invoice 2 is ready', read: false },
      { text: 'Your order has shipped', read: false },
      { text: 'Welcome aboard', read: false },
    ],
  };
  await waitSeen(a, three, 'tab A after three messages');
  await waitSeen(b, three, 'tab B after three messages');
  await screenshot(a, 'example-notifications-tab-a-unread');

  // Read one in tab B: both tabs count 2, and show it read.
  await b.click('#list li:has-text("Your order has shipped")');
  const two = { badge: '2', rows: three.rows.map((r) => ({ ...r, read: r.text === 'Your order has shipped' })) };
  await waitSeen(b, two, 'tab B after reading one');
  await waitSeen(a, two, 'tab A after tab B read one');

  // Mark all as read in tab A.
  await a.click('#read-all');
  const none = { badge: '0', rows: three.rows.map((r) => ({ ...r, read: true })) };
  await waitSeen(a, none, 'tab A after mark all');
  await waitSeen(b, none, 'tab B after tab A marked all');
  await screenshot(b, 'example-notifications-tab-b-all-read');

  // Another user saw none of it.
  assert.deepEqual(await seen(other), { badge: '0', rows: [] });

  // A new message after a reload: the snapshot, then live again.
  await b.reload();
  await b.waitForFunction(() => document.querySelector('#state').dataset.state === 'open', null, { timeout: 15_000 });
  await waitSeen(b, none, 'tab B reloaded');
  await a.fill('#text', 'One more');
  await a.click('#send button');
  const more = { badge: '1', rows: [{ text: 'One more', read: false }, ...none.rows] };
  await waitSeen(a, more, 'tab A after one more');
  await waitSeen(b, more, 'reloaded tab B after one more');

  // A bad request gets a clear error, not a crash.
  const bad = await request(example.url, '/api/messages', {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"user":"no spaces allowed","text":"x"}',
  });
  assert.equal(bad.status, 400);
  assert.equal(bad.json.error.code, 'bad_request');
  for (const p of [a, b, other]) await p.close();
});

test('retention: a snapshot older than the log is shown once, a gap mid-session takes a new snapshot', { timeout: 90_000, skip: noChromium }, async () => {
  const small = await startExampleHerald(['--retention-events', '2']);
  const ex = await startExample('notifications', { env: small.env });
  try {
    const sendTo = async (user, text) => {
      const r = await request(ex.url, '/api/messages', {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ user, text }),
      });
      assert.equal(r.status, 201, r.text);
    };
    await sendTo('carol', 'Old news');
    for (let i = 1; i <= 3; i += 1) await sendTo('dave', `dave ${i}`); // carol's event leaves the log

    const page = await chromium.browser.newPage();
    let loads = 0;
    page.on('load', () => { loads += 1; });
    await page.goto(`${ex.url}/?user=carol`);
    await page.waitForFunction(() => document.querySelector('#state').dataset.state === 'open', null, { timeout: 15_000 });
    await waitSeen(page, { badge: '1', rows: [{ text: 'Old news', read: false }] }, 'the old snapshot');
    await new Promise((r) => setTimeout(r, 1_500));
    assert.equal(loads, 1, 'no reload loop');
    assert.equal(await page.evaluate(() => document.querySelector('#state').dataset.state), 'open');

    // Mid-session: the page is kicked, and while it is away more changes
    // than the log keeps are made; it comes back to a gap and re-reads its state.
    await sendTo('carol', 'Fresh 1');
    await waitSeen(page, { badge: '2', rows: [{ text: 'Fresh 1', read: false }, { text: 'Old news', read: false }] }, 'live again');
    await chromium.browser.setOffline(true); // so it cannot come back before the changes are made
    const kicked = await request(small.url, '/v1/users/carol/connections', {
      method: 'DELETE', headers: { authorization: `Bearer ${small.env.HERALD_API_KEY}` },
    });
    assert.equal(kicked.json.closed, 1);
    for (let i = 2; i <= 4; i += 1) await sendTo('carol', `Fresh ${i}`);
    for (let i = 4; i <= 6; i += 1) await sendTo('dave', `dave ${i}`);
    await page.waitForFunction(() => document.querySelector('#state').dataset.state === 'connecting', null, { timeout: 15_000 });
    await chromium.browser.setOffline(false);
    await waitSeen(page, {
      badge: '5',
      rows: ['Fresh 4', 'Fresh 3', 'Fresh 2', 'Fresh 1', 'Old news'].map((text) => ({ text, read: false })),
    }, 'a new snapshot after the gap');
    assert.equal(loads, 1, 'the page re-read its state without a reload');
    assert.equal(await page.evaluate(() => document.body.dataset.snapshots), '2', 'one snapshot at load, one after the gap');
    await screenshot(page, 'example-notifications-after-gap');
    await page.close();
  } finally {
    await ex.stop();
    await small.stop();
  }
});
