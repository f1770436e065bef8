// Per-identity limits in token mode: --max-connections-per-user (a stream
// over the limit is a 200 event stream holding only a `retry:` line and a
// comment, then ended, so EventSource comes back later; the streams already
// open are untouched) and --publish-rate-per-sec (429 rate_limited with
// Retry-After for the one identity over it, not for the others).

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { publish, request, openRaw, sleep } from './lib/server.mjs';
import {
  startSecured, assertAuthError, sign, claims, bearer, headerOf, retryUntil,
} from './lib/auth.mjs';

const SECRET = 'limits-secret-of-the-auth-tests-0123456789';
const ADMIN_KEY = 'limits-admin-key-1f2e3d4c5b6a';
const RATE_KEY_1 = 'limits-rate-key-one-a1b2c3d4';
const RATE_KEY_2 = 'limits-rate-key-two-e5f6a7b8';
const servers = [];
const streams = [];

after(async () => {
  for (const h of streams) h.close();
  for (const s of servers) await s.stop();
});

/** A distinct token (its own jti) for `sub`. */
const token = (sub, extra = {}) => sign(SECRET, 'HS256', claims(sub, { jti: randomUUID(), ...extra }));

async function open(url, query, tok) {
  const h = await openRaw(url, `/v1/events${query ? `?${query}` : ''}`, { headers: bearer(tok) });
  streams.push(h);
  await Promise.race([h.firstData, sleep(5_000)]);
  return h;
}

function assertOpen(h, what) {
  assert.equal(h.status, 200, `${what}: ${h.status} ${h.text}`);
  assert.match(h.headers['content-type'] ?? '', /^text\/event-stream/, what);
  assert.ok(h.text.startsWith('retry:'), `${what}: preamble ${JSON.stringify(h.text.slice(0, 80))}`);
  assert.equal(h.closed, false, `${what}: the stream is open`);
}

describe('--max-connections-per-user 2', () => {
  let s;
  before(async () => {
    s = await startSecured([
      '--jwt-secret', SECRET, '--max-connections-per-user', '2', '--heartbeat-secs', '300',
      '--api-key', `${ADMIN_KEY};publish=*;admin`,
    ]);
    servers.push(s);
  });

  async function adminPublish(body) {
    const r = await publish(s.url, body, { headers: bearer(ADMIN_KEY) });
    assert.equal(r.status, 201, `publish: ${r.status} ${r.text}`);
    return r.json.id;
  }

  test('a third stream of the same user gets retry: and is ended; the first two keep working', { timeout: 30_000 }, async () => {
    const h1 = await open(s.url, '', await token('7777'));
    const h2 = await open(s.url, '', await token('7777'));
    assertOpen(h1, 'first stream of 7777');
    assertOpen(h2, 'second stream of 7777');

    const h3 = await open(s.url, '', await token('7777'));
    assert.equal(h3.status, 200, `third stream of 7777 is not refused with a 4xx (EventSource would stop): ${h3.status} ${h3.text}`);
    assert.match(h3.headers['content-type'] ?? '', /^text\/event-stream/, 'third stream: content-type');
    await h3.waitEnd(5_000).catch(() => assert.fail('the server did not end the third stream of 7777 within 5 s (the limit of 2 per user was not applied)'));
    assert.ok(h3.ended, 'the server ends the third stream cleanly');
    assert.equal(h3.retries.length, 1, `one retry: line: ${JSON.stringify(h3.text)}`);
    assert.ok(h3.retries[0] >= 1000, `retry: ${h3.retries[0]} must be at least 1000 ms`);
    assert.ok(h3.comments.length >= 1, `a comment says why: ${JSON.stringify(h3.text)}`);
    assert.equal(h3.events.length, 0, `no event on the refused stream: ${JSON.stringify(h3.text)}`);

    // The refused connection did not disturb the two others, nor count.
    const id = await adminPublish({ users: ['7777'], data: 'still here' });
    for (const [h, name] of [[h1, 'first'], [h2, 'second']]) {
      await h.waitEvents(1, 5_000);
      assert.deepEqual(h.events, [{ type: 'message', id, data: 'still here' }], `${name} stream of 7777`);
      assert.equal(h.closed, false, `${name} stream of 7777 still open`);
    }
    const user = await request(s.url, '/v1/users/7777', { headers: bearer(ADMIN_KEY) });
    assert.equal(user.json?.connections, 2, `GET /v1/users/7777: ${user.text}`);

    // Another user is not limited by 7777's streams.
    const other = await open(s.url, '', await token('8888'));
    assertOpen(other, 'stream of 8888');
    const id2 = await adminPublish({ users: ['8888'], data: 'hi 8888' });
    await other.waitEvents(1, 5_000);
    assert.deepEqual(other.events, [{ type: 'message', id: id2, data: 'hi 8888' }]);

    // Once one of the two is closed, 7777 may open a stream again.
    h1.close();
    const gone = await retryUntil(() => request(s.url, '/v1/users/7777', { headers: bearer(ADMIN_KEY) }),
      (r) => r.json?.connections === 1, { timeoutMs: 3_000, intervalMs: 50 });
    assert.equal(gone.json?.connections, 1, `the closed stream is no longer counted: ${gone.text}`);
    const h4 = await open(s.url, '', await token('7777'));
    assertOpen(h4, 'stream of 7777 after one of its two closed');
    await sleep(300);
    assert.equal(h4.closed, false, 'that stream stays open');
    const id3 = await adminPublish({ users: ['7777'], data: 'welcome back' });
    await h4.waitEvents(1, 5_000);
    assert.deepEqual(h4.events, [{ type: 'message', id: id3, data: 'welcome back' }]);
  });
});

describe('--publish-rate-per-sec 5', () => {
  let s;
  before(async () => {
    s = await startSecured([
      '--jwt-secret', SECRET, '--publish-rate-per-sec', '5', '--heartbeat-secs', '300',
      '--api-key', `${RATE_KEY_1};publish=*`, '--api-key', `${RATE_KEY_2};publish=*`,
    ]);
    servers.push(s);
  });

  const burst = (n, headers, topic) => Promise.all(Array.from({ length: n }, (_, i) => (
    publish(s.url, { topics: [topic], data: `${topic}-${i}` }, { headers })
  )));

  function checkBurst(results, what) {
    const ok = results.filter((r) => r.status === 201);
    const limited = results.filter((r) => r.status !== 201);
    assert.ok(ok.length >= 1, `${what}: some publishes go through (${results.map((r) => r.status)})`);
    assert.ok(limited.length >= 1, `${what}: a burst of ${results.length} at 5/s is limited (${results.map((r) => r.status)})`);
    assert.ok(ok.length <= 10, `${what}: at most about one second's worth (5, or a burst allowance up to 10) passes; ${ok.length} did`);
    for (const r of limited) assertAuthError(r, 'rate_limited', what);
    return { ok: ok.length, retryAfter: Number(headerOf(limited[0], 'retry-after')) };
  }

  test('a burst of 20 from one token is limited; other identities publishing at the same time are not', { timeout: 20_000 }, async () => {
    const watcher = await open(s.url, 'topic=rate/token', await token('watcher', { 'herald.subscribe': ['rate/*'] }));
    assertOpen(watcher, 'watcher of rate/token');
    const busy = bearer(await token('busy', { 'herald.publish': ['*'] }));
    const calm = bearer(await token('calm', { 'herald.publish': ['*'] }));
    const [busyResults, calmResults, keyResults] = await Promise.all([
      burst(20, busy, 'rate/token'),
      burst(3, calm, 'rate/calm'),
      burst(3, bearer(RATE_KEY_2), 'rate/key2'),
    ]);
    const { ok, retryAfter } = checkBurst(busyResults, 'token of busy');
    for (const r of [...calmResults, ...keyResults]) {
      assert.equal(r.status, 201, `another identity at the same time is not limited: ${r.status} ${r.text}`);
    }
    // Refused publishes stored nothing.
    await watcher.waitEvents(ok, 5_000);
    await sleep(300);
    assert.equal(watcher.events.length, ok, `the watcher got exactly the ${ok} accepted events`);

    // After Retry-After the token may publish again.
    assert.ok(retryAfter >= 1 && retryAfter <= 5, `Retry-After ${retryAfter} s`);
    await sleep(retryAfter * 1000);
    const again = await retryUntil(() => publish(s.url, { topics: ['rate/token'], data: 'later' }, { headers: busy }),
      (r) => r.status === 201, { timeoutMs: 2_000, intervalMs: 250 });
    assert.equal(again.status, 201, `publish after Retry-After: ${again.status} ${again.text}`);
  });

  test('the limit also applies per API key', { timeout: 20_000 }, async () => {
    const [keyResults, otherResults] = await Promise.all([
      burst(20, bearer(RATE_KEY_1), 'rate/key1'),
      burst(3, bearer(await token('bystander', { 'herald.publish': ['*'] })), 'rate/bystander'),
    ]);
    checkBurst(keyResults, 'API key one');
    for (const r of otherResults) assert.equal(r.status, 201, `a token at the same time: ${r.status} ${r.text}`);
  });
});
