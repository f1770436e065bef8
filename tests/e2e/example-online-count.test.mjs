// examples/online-count: Herald in token mode, the example's backend started
// with its README's command, pages in headless Chromium. What is checked is
// what a person sees: the counter on the page goes up when a second browser
// opens it, not when the same browser opens another tab, and down when the
// second browser closes.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startExampleHerald, startExample, screenshot } from './lib/examples.mjs';
import { launchChromium, noChromium } from './lib/browser.mjs';
import { sleep } from './lib/server.mjs';

let herald;
let example;
const browsers = [];

before(async () => {
  if (noChromium) return;
  herald = await startExampleHerald();
  example = await startExample('online-count', { env: { ...herald.env, POLL_MS: '200' } });
});

after(async () => {
  for (const b of browsers) await b.close().catch(() => {});
  await example?.stop();
  await herald?.stop();
});

/** A browser of its own: a fresh profile, so a visitor of its own. */
async function newVisitor() {
  const b = await launchChromium();
  browsers.push(b);
  return b;
}

async function openPage(visitor) {
  const page = await visitor.browser.newPage();
  await page.goto(example.url);
  await page.waitForFunction(() => document.getElementById('status').dataset.state === 'live', null, { timeout: 15_000 });
  return page;
}

/** What the page shows, e.g. "2 users online". */
const counter = (page) => page.evaluate(() => `${document.getElementById('count').textContent} ${document.getElementById('label').textContent}`);

async function expectCounter(page, text, what) {
  const deadline = Date.now() + 10_000;
  let shown = await counter(page);
  while (shown !== text && Date.now() < deadline) {
    await sleep(100);
    shown = await counter(page);
  }
  assert.equal(shown, text, what);
}

test('the counter goes up when a second visitor opens the page and down when it leaves', { skip: noChromium }, async () => {
  const alice = await newVisitor();
  const alicePage = await openPage(alice);
  await expectCounter(alicePage, '1 user online', 'alone on the page');

  const bob = await newVisitor();
  const bobPage = await openPage(bob);
  await expectCounter(alicePage, '2 users online', 'the first page after a second visitor came');
  await expectCounter(bobPage, '2 users online', 'the second visitor’s page');
  await screenshot(alicePage, 'example-online-count-two');

  // Bob's second tab is the same user: both pages go on showing 2, also
  // after several of the backend's polls (200 ms apart).
  const bobTab = await openPage(bob);
  await expectCounter(bobTab, '2 users online', 'a second tab shows the count at once');
  await sleep(1_000);
  assert.equal(await counter(alicePage), '2 users online', 'a second tab of one visitor is not a second user');

  // Bob closes his browser: the count goes down on Alice's page.
  await bob.close();
  await expectCounter(alicePage, '1 user online', 'after the second visitor closed the browser');
  await screenshot(alicePage, 'example-online-count-one');
});
