// Kicking a user's connections, and exact connection counts after kicks,
// closes and 1,000 connect/disconnect cycles.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import {
  startHerald, openRaw, stats, getJson, request, pollUntil, publishOk, sleep,
} from './lib/server.mjs';

let server;
const streams = [];

before(async () => {
  server = await startHerald(['--heartbeat-secs', '300']);
});
after(async () => {
  for (const h of streams) h.close();
  if (server) await server.stop();
});

async function open(path) {
  const h = await openRaw(server.url, path);
  streams.push(h);
  assert.equal(h.status, 200, `GET ${path}`);
  return h;
}

test('DELETE /v1/users/{id}/connections ends exactly that user\'s streams', { timeout: 30_000 }, async () => {
  const kicked = [
    await open('/v1/events?user=7777'),
    await open('/v1/events?user=7777&topic=group/sales'),
    await open('/v1/events?user=7777&topic=news&topic=orders/*'),
  ];
  const other = await open('/v1/events?user=7778');
  await Promise.all([...kicked, other].map((h) => h.firstData));

  let s = await pollUntil(() => stats(server.url), (v) => v.connections === 4 && v.users_online === 2);
  assert.equal(s.connections, 4, JSON.stringify(s));
  assert.equal(s.users_online, 2, JSON.stringify(s));

  const u = await getJson(server.url, '/v1/users/7777');
  assert.deepEqual({ id: u.id, online: u.online, connections: u.connections }, { id: '7777', online: true, connections: 3 });
  const list = await getJson(server.url, '/v1/users');
  const byId = Object.fromEntries(list.users.map((x) => [x.id, x.connections]));
  assert.equal(byId['7777'], 3, JSON.stringify(list));
  assert.equal(byId['7778'], 1, JSON.stringify(list));
  assert.ok('next' in list, 'GET /v1/users has a next field');

  const r = await request(server.url, '/v1/users/7777/connections', { method: 'DELETE' });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json, { closed: 3 });

  for (const h of kicked) {
    await h.waitEnd(5_000);
    // The stream must be closed at an event boundary (no half event): after
    // the last blank line there may only be notice lines (the `retry:` and
    // `:ok` preamble, `:` heartbeats), which end no event and start none.
    const tail = h.text.slice(h.text.lastIndexOf('\n\n') + 1);
    assert.ok(tail.split('\n').every((line) => line === '' || line.startsWith(':') || line.startsWith('retry:')),
      `kicked stream ends at an event boundary: ${JSON.stringify(h.text.slice(-40))}`);
  }
  assert.equal(other.closed, false, 'user 7778 must stay connected');

  // 7778 still receives events.
  const id = await publishOk(server.url, { users: ['7778'], data: 'still here' });
  const evs = await other.waitEvents(1, 10_000);
  assert.deepEqual(evs, [{ type: 'message', id, data: 'still here' }]);

  s = await pollUntil(() => stats(server.url), (v) => v.connections === 1 && v.users_online === 1);
  assert.equal(s.connections, 1, JSON.stringify(s));
  assert.equal(s.users_online, 1, JSON.stringify(s));
  const u2 = await getJson(server.url, '/v1/users/7777');
  assert.equal(u2.online, false, JSON.stringify(u2));
  assert.equal(u2.connections, 0, JSON.stringify(u2));

  // Kicking a user with no connection closes nothing.
  const r2 = await request(server.url, '/v1/users/7777/connections', { method: 'DELETE' });
  assert.equal(r2.status, 200, r2.text);
  assert.deepEqual(r2.json, { closed: 0 });

  // A client closing its own connection is gone from the counts within a second.
  other.close();
  s = await pollUntil(() => stats(server.url), (v) => v.connections === 0 && v.users_online === 0, { timeoutMs: 2_000 });
  assert.equal(s.connections, 0, JSON.stringify(s));
  assert.equal(s.users_online, 0, JSON.stringify(s));
});

/** One cycle: open a stream, wait for its first bytes, destroy the socket. */
function cycle(path, timeoutMs = 10_000) {
  return new Promise((resolve, reject) => {
    const req = http.get(server.url + path, { agent: false }, (res) => {
      if (res.statusCode !== 200) {
        req.destroy();
        reject(new Error(`GET ${path} -> ${res.statusCode}`));
        return;
      }
      res.once('data', () => {
        clearTimeout(timer);
        req.destroy();
        resolve();
      });
    });
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error(`no first bytes for GET ${path} within ${timeoutMs} ms`));
    }, timeoutMs);
    req.on('error', (err) => {
      clearTimeout(timer);
      // An error after we resolved (our own destroy) is expected.
      reject(err);
    });
  });
}

test('1,000 connect/disconnect cycles leave no connection, user or topic behind', { timeout: 120_000 }, async () => {
  const TOTAL = 1000;
  const CONCURRENCY = 20;
  let next = 0;
  const failures = [];
  async function worker() {
    while (next < TOTAL) {
      const i = next++;
      const path = i % 3 === 0
        ? `/v1/events?user=c${i % 50}`
        : i % 3 === 1
          ? `/v1/events?user=c${i % 50}&topic=churn/${i % 7}&topic=churn/*`
          : `/v1/events?topic=churn/${i % 11}`;
      try {
        await cycle(path);
      } catch (err) {
        failures.push(`${path}: ${err.message}`);
        if (failures.length > 20) return;
      }
    }
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  assert.deepEqual(failures, [], 'every cycle got its first bytes');

  const s = await pollUntil(() => stats(server.url),
    (v) => v.connections === 0 && v.users_online === 0 && v.topics === 0, { timeoutMs: 3_000, intervalMs: 100 });
  assert.equal(s.connections, 0, JSON.stringify(s));
  assert.equal(s.users_online, 0, JSON.stringify(s));
  assert.equal(s.topics, 0, JSON.stringify(s));
  const list = await getJson(server.url, '/v1/users');
  assert.deepEqual(list.users, [], JSON.stringify(list));

  // The server still works.
  const h = await open('/v1/events?user=after');
  const id = await publishOk(server.url, { users: ['after'], data: 'ok' });
  const evs = await h.waitEvents(1, 10_000);
  assert.deepEqual(evs, [{ type: 'message', id, data: 'ok' }]);
  h.close();
  await sleep(10);
});
