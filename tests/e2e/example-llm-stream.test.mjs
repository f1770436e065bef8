// examples/llm-stream in Chromium, started with its README's command against
// Herald in token mode: an answer streamed token by token is shown whole and
// exactly once after the server ends the stream mid-answer (the browser's
// EventSource resumes with Last-Event-ID), after the page drops it itself
// (herald.js resumes with lastEventId), and across a token expiry
// mid-answer (herald.js refreshes the token on herald.expired).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { request } from './lib/server.mjs';
import { launchChromium, noChromium } from './lib/browser.mjs';
import { startExampleHerald, startExample, screenshot, EXAMPLE_API_KEY } from './lib/examples.mjs';

let herald;
let chromium;
const examples = [];

before(async () => {
  herald = await startExampleHerald(['--jwt-leeway-secs', '0']);
  if (!noChromium) chromium = await launchChromium();
});

after(async () => {
  await chromium?.close();
  for (const e of examples) await e.stop();
  await herald?.stop();
});

async function start(env = {}) {
  const example = await startExample('llm-stream', { env: { ...herald.env, ...env } });
  examples.push(example);
  return example;
}

async function openPage(example, user) {
  const page = await chromium.browser.newPage();
  await page.goto(`${example.url}/?user=${user}`);
  await page.waitForFunction(() => document.querySelector('#state').dataset.state === 'open', null, { timeout: 15_000 });
  return page;
}

const count = (page) => page.evaluate(() => Number(document.querySelector('#count').textContent));
const waitCount = (page, n) => page.waitForFunction((min) => Number(document.querySelector('#count').textContent) >= min, n, { timeout: 30_000 });
const typing = (page) => page.evaluate(() => document.querySelector('#answer').dataset.state === 'typing');

async function waitDoneAndCompare(page, example, what) {
  await page.waitForFunction(() => document.querySelector('#answer').dataset.state === 'done', null, { timeout: 60_000 });
  const expected = (await request(example.url, '/api/answer-text')).text;
  const shown = await page.evaluate(() => ({
    text: document.querySelector('#answer').textContent,
    warning: document.querySelector('#warning').textContent,
    reconnects: Number(document.querySelector('#reconnects').textContent),
  }));
  assert.equal(shown.warning, '', `${what}: no token missing or doubled`);
  assert.equal(shown.text, expected, `${what}: the text shown is the text sent, exactly`);
  assert.ok(expected.length > 500, 'a real answer');
  return shown;
}

test('the answer is whole after the server ends the stream mid-answer and after the page drops it', { timeout: 120_000, skip: noChromium }, async () => {
  const example = await start();
  const page = await openPage(example, 'ann');
  await page.click('#ask-button');

  await waitCount(page, 15);
  assert.ok(await typing(page), 'still typing when the server ends the stream');
  const kicked = await request(herald.url, '/v1/users/ann/connections', {
    method: 'DELETE', headers: { authorization: `Bearer ${EXAMPLE_API_KEY}` },
  });
  assert.equal(kicked.status, 200, kicked.text);
  assert.equal(kicked.json.closed, 1);
  await page.waitForFunction(() => Number(document.querySelector('#reconnects').textContent) >= 1, null, { timeout: 15_000 });

  await waitCount(page, (await count(page)) + 20);
  assert.ok(await typing(page), 'still typing when the page drops the stream');
  await screenshot(page, 'example-llm-stream-mid-answer');
  await page.click('#drop');
  await page.waitForFunction(() => Number(document.querySelector('#reconnects').textContent) >= 2, null, { timeout: 15_000 });

  const shown = await waitDoneAndCompare(page, example, 'kick and drop');
  assert.equal(shown.reconnects, 2);
  await screenshot(page, 'example-llm-stream-done');
  await page.close();
});

test('the answer is whole across a token that expires mid-answer', { timeout: 120_000, skip: noChromium }, async () => {
  const example = await start({ TOKEN_TTL_SECS: '2', TOKEN_DELAY_MS: '30' });
  const page = await openPage(example, 'ben');
  await page.click('#ask-button');
  await waitCount(page, 5);
  const shown = await waitDoneAndCompare(page, example, 'token expiry');
  assert.ok(shown.reconnects >= 2, `the 2 s token expired during the answer (${shown.reconnects} reconnections)`);
  await page.close();
});
