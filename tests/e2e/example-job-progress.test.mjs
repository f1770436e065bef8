// examples/job-progress: Herald in token mode, the example's backend started
// with its README's command, the page in headless Chromium. What is checked
// is what a person sees: the progress bar's value and the stage text while
// the job runs, as soon as the page is reopened mid-job, and after the job
// finished while the page was closed; another visitor sees none of it.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startExampleHerald, startExample, screenshot } from './lib/examples.mjs';
import { launchChromium, noChromium } from './lib/browser.mjs';
import { pollUntil } from './lib/server.mjs';

let herald;
let example;
let chromium;

before(async () => {
  if (noChromium) return;
  herald = await startExampleHerald();
  // 20 steps of 300 ms: long enough to close and reopen the page mid-job.
  example = await startExample('job-progress', { env: { ...herald.env, JOB_STEP_MS: '300' } });
  chromium = await launchChromium();
});

after(async () => {
  await chromium?.close();
  await example?.stop();
  await herald?.stop();
});

/** What the page shows: the bar's value, the percent and stage texts. */
const readBar = (page) => page.evaluate(() => ({
  value: document.getElementById('bar').value,
  percent: document.getElementById('percent').textContent,
  stage: document.getElementById('stage').textContent,
}));

const STAGES = [[0, 'queued'], [30, 'downloading'], [80, 'processing'], [95, 'uploading'], [100, 'done']];
const stageAt = (percent) => STAGES.find(([upTo]) => percent <= upTo)[1];

/** Opens the page in `context` and waits until it is subscribed. */
async function openPage(context) {
  const page = await context.newPage();
  await page.goto(example.url);
  await page.waitForFunction(() => document.getElementById('status').dataset.state === 'live', null, { timeout: 15_000 });
  return page;
}

/** Waits (bounded) until the bar shows at least `percent`; returns what it shows. */
async function waitBar(page, percent) {
  await page.waitForFunction((p) => document.getElementById('bar').value >= p, percent, { timeout: 20_000 });
  return readBar(page);
}

/** The job's state as the backend has it, asked with the visitor's cookie. */
async function backendState(context) {
  const r = await context.request.get(`${example.url}/api/jobs/current`);
  assert.equal(r.status(), 200);
  return r.json();
}

function assertConsistent(shown, what) {
  assert.equal(shown.percent, `${shown.value}%`, `${what}: the percent text matches the bar`);
  assert.equal(shown.stage, stageAt(shown.value), `${what}: the stage text matches the percent`);
}

test('the progress bar follows the job, also after a reopen, and only its owner sees it', { skip: noChromium }, async () => {
  // Each launch is a fresh profile: a visitor of its own (cookie and token).
  const ownerContext = chromium.browser;

  let page = await openPage(ownerContext);
  assert.deepEqual(await readBar(page), { value: 0, percent: '0%', stage: 'no job yet' });
  await page.click('#start');

  // Live: the bar moves, and what it shows is a state the job went through.
  let shown = await waitBar(page, 20);
  assertConsistent(shown, 'while running');
  await screenshot(page, 'example-job-progress-running');

  // Reopened mid-job: the state is there as soon as the page is subscribed,
  // at least as far as when it was closed, then the bar goes on to the end.
  const closedAt = shown.value;
  await page.close();
  page = await openPage(ownerContext);
  shown = await readBar(page);
  assert.ok(shown.value >= closedAt, `reopened: the bar shows ${shown.value}, it was at ${closedAt} when closed`);
  assertConsistent(shown, 'just reopened');
  shown = await waitBar(page, 100);
  assert.deepEqual(shown, { value: 100, percent: '100%', stage: 'done' });

  // Another visitor (its own cookie, its own token) sees no job, even
  // while the owner's second job runs.
  const stranger = await launchChromium();
  const strangerPage = await openPage(stranger.browser);
  await page.click('#start');
  await waitBar(page, 10);
  const strangerView = await readBar(strangerPage);
  assert.deepEqual(strangerView, { value: 0, percent: '0%', stage: 'no job yet' }, 'another visitor sees nothing');
  await stranger.close();

  // Closed while the job finishes: reopened, the page shows "done" at once
  // (no step is published any more, so only the state can show it).
  await page.close();
  const finished = await pollUntil(() => backendState(ownerContext), (s) => s.job && !s.job.running,
    { timeoutMs: 20_000, intervalMs: 200 });
  assert.equal(finished.job.stage, 'done');
  page = await openPage(ownerContext);
  assert.deepEqual(await readBar(page), { value: 100, percent: '100%', stage: 'done' }, 'reopened after the job finished');
  await screenshot(page, 'example-job-progress-reopened-done');
  await page.close();
});

test('a second job while one runs is refused with a JSON error', { skip: noChromium }, async () => {
  const visitor = await launchChromium();
  const context = visitor.browser;
  const page = await openPage(context);
  const first = await context.request.post(`${example.url}/api/jobs`);
  assert.equal(first.status(), 202);
  const second = await context.request.post(`${example.url}/api/jobs`);
  assert.equal(second.status(), 409);
  assert.equal((await second.json()).error.code, 'job_running');
  const anonymous = await fetch(`${example.url}/api/jobs`, { method: 'POST' });
  assert.equal(anonymous.status, 401);
  assert.equal((await anonymous.json()).error.code, 'no_visitor');
  await page.close();
  await visitor.close();
});
