// The dev-mode demo page in a real browser (Debian chromium, driven by
// playwright-core): connect as a user, receive a publish, survive a kick by
// reconnecting with Last-Event-ID, and close.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startHerald, publishOk, request, stats, pollUntil } from './lib/server.mjs';
import { launchChromium, noChromium } from './lib/browser.mjs';

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

test('demo page: connect, receive, reconnect after a kick without loss, close', { timeout: 60_000, skip: noChromium }, async () => {
  const page = await browser.newPage();
  await page.goto(`${server.url}/demo?user=7777`);
  assert.equal(await page.inputValue('#user'), '7777');
  await page.click('#connect');
  await page.waitForFunction(() => document.querySelector('#state').textContent === 'OPEN', null, { timeout: 10_000 });

  const first = await publishOk(server.url, { users: ['7777'], data: 'hello browser' });
  const row = page.locator(`#events .event[data-id="${first}"]`);
  await row.waitFor({ timeout: 10_000 });
  assert.equal(await row.locator('.data').textContent(), 'hello browser');
  assert.equal(await page.textContent('#last-id'), first);

  // Kick the user; publish while the browser is away; it must come back by
  // itself, send Last-Event-ID, and get the missed event.
  const kicked = await request(server.url, '/v1/users/7777/connections', { method: 'DELETE' });
  assert.equal(kicked.json.closed, 1);
  const missed = await publishOk(server.url, { users: ['7777'], data: 'sent while away' });
  await page.locator(`#events .event[data-id="${missed}"]`).waitFor({ timeout: 15_000 });
  assert.ok(Number(await page.textContent('#reconnects')) >= 1, 'the page counted a reconnect');
  const ids = await page.$$eval('#events .event', (rows) => rows.map((r) => r.dataset.id));
  assert.deepEqual(ids.filter((id) => id === first || id === missed).sort(), [first, missed].sort(),
    'each event shown exactly once');

  await page.click('#close');
  await page.waitForFunction(() => document.querySelector('#state').textContent === 'CLOSED', null, { timeout: 5_000 });
  const s = await pollUntil(() => stats(server.url), (v) => v.connections === 0, { timeoutMs: 3_000 });
  assert.equal(s.connections, 0, 'closing the page stream is seen by the server');
  await page.close();
});
