// Three Herald nodes on one real Redis: one event order and the same ids on
// every node, idempotent retries through another node, cluster-wide presence
// that forgets a killed node, and a kick through one node that ends the
// user's stream on another.

import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import {
  openES, waitOpen, collect, openRaw, getJson, publish, publishOk, request, sleep, pollUntil,
} from './lib/server.mjs';
import { startRedis } from './lib/redis.mjs';
import { startNodes } from './lib/cluster.mjs';

const EXPIRY_MS = 3_000;

let redis;
let nodes = [];
const streams = [];
before(async () => {
  redis = await startRedis();
  nodes = await startNodes(3, redis.url, ['--presence-expiry-ms', String(EXPIRY_MS)]);
});
after(async () => {
  for (const es of streams) es.close();
  for (const n of nodes) await n.stop();
  await redis?.stop();
});

test('a publish on any node reaches subscribers on every node exactly once, in one order, with the same ids', { timeout: 60_000 }, async () => {
  const subs = nodes.map((n) => openES(n.url, 'topic=order'));
  streams.push(...subs);
  for (const es of subs) await waitOpen(es);
  const ids = [];
  // Publishers on every node at once, so the order is decided by Redis.
  await Promise.all(nodes.map(async (n, i) => {
    for (let k = 0; k < 30; k++) {
      ids.push(await publishOk(n.url, { topics: ['order'], data: `${i}-${k}` }));
    }
  }));
  const got = await Promise.all(subs.map((es) => collect(es, 90, 20_000)));
  await sleep(300); // nothing more arrives
  for (const [i, es] of subs.entries()) {
    assert.equal(es.received.length, 90, `node ${i} delivered each event once`);
  }
  const order = got[0].map((e) => `${e.id}:${e.data}`);
  assert.deepEqual(got[1].map((e) => `${e.id}:${e.data}`), order, 'node 1 delivered the same ids in the same order as node 0');
  assert.deepEqual(got[2].map((e) => `${e.id}:${e.data}`), order, 'node 2 too');
  assert.deepEqual(new Set(got[0].map((e) => e.id)), new Set(ids), 'the ids delivered are the ids the publishes were answered with');
  for (let i = 1; i < got[0].length; i++) {
    assert.ok(BigInt(got[0][i - 1].id) < BigInt(got[0][i].id), 'ids increase');
  }
  // A reconnect on another node resumes exactly after the id it names.
  const mid = got[0][44];
  const resumed = await openRaw(nodes[2].url, '/v1/events?topic=order', { headers: { 'last-event-id': mid.id } });
  const rest = await resumed.waitEvents(45, 10_000);
  resumed.close();
  assert.deepEqual(rest.slice(0, 45).map((e) => e.id), got[0].slice(45).map((e) => e.id));
});

test('an idempotent retry through another node returns the original id and stores nothing', { timeout: 30_000 }, async () => {
  const es = openES(nodes[1].url, 'topic=idem');
  streams.push(es);
  await waitOpen(es);
  const body = { topics: ['idem'], data: 'once', idempotency_key: 'order-42' };
  const first = await publish(nodes[0].url, body);
  assert.equal(first.status, 201);
  const again = await publish(nodes[2].url, body);
  assert.equal(again.status, 200, `a retry on another node is a duplicate: ${again.text}`);
  assert.equal(again.json.id, first.json.id);
  await publishOk(nodes[0].url, { topics: ['idem'], data: 'after' });
  const got = await collect(es, 2, 10_000);
  await sleep(300);
  assert.deepEqual(es.received.map((e) => e.data), ['once', 'after'], 'the retry stored nothing');
  assert.equal(got[0].id, first.json.id);
});

test('presence is cluster-wide, a kick through one node ends the stream on another, and a killed node vanishes', { timeout: 60_000 }, async () => {
  const a = openES(nodes[0].url, 'user=alice');
  const b = await openRaw(nodes[2].url, '/v1/events?user=bob');
  const b2 = openES(nodes[1].url, 'user=bob');
  const c = openES(nodes[2].url, 'user=carol');
  streams.push(a, b2, c);
  await Promise.all([waitOpen(a), waitOpen(b2), waitOpen(c)]);

  const users = await pollUntil(
    () => getJson(nodes[1].url, '/v1/users?limit=1000'),
    (r) => ['alice', 'bob', 'carol'].every((u) => r.users.some((x) => x.id === u)),
    { timeoutMs: 5_000 },
  );
  const count = (r, id) => r.users.find((x) => x.id === id)?.connections;
  assert.equal(count(users, 'alice'), 1);
  assert.equal(count(users, 'bob'), 2, 'bob has a stream on node 1 and one on node 2');
  assert.equal(count(users, 'carol'), 1);
  const bob = await getJson(nodes[0].url, '/v1/users/bob');
  assert.deepEqual({ online: bob.online, connections: bob.connections }, { online: true, connections: 2 });
  const st = await getJson(nodes[0].url, '/v1/stats');
  assert.deepEqual([...st.nodes].sort(), ['node-0', 'node-1', 'node-2'], `stats counts every node: ${JSON.stringify(st.nodes)}`);
  assert.ok(st.connections >= 4, `cluster-wide connections: ${st.connections}`);

  // Kick bob through node 0: his raw stream on node 2 ends.
  const kick = await request(nodes[0].url, '/v1/users/bob/connections', { method: 'DELETE' });
  assert.equal(kick.status, 200, kick.text);
  await b.waitEnd(5_000);
  assert.ok(b.ended || b.closed, 'the stream on node 2 was ended by a kick through node 0');
  assert.ok(kick.json.closed >= 1, `closed counts the streams ended: ${kick.text}`);

  // Kill node 2 with SIGKILL: carol (only there) disappears within the expiry.
  nodes[2].proc.kill('SIGKILL');
  const killedAt = Date.now();
  const gone = await pollUntil(
    () => getJson(nodes[0].url, '/v1/users?limit=1000'),
    (r) => !r.users.some((x) => x.id === 'carol'),
    { timeoutMs: EXPIRY_MS + 5_000, intervalMs: 200 },
  );
  assert.ok(!gone.users.some((x) => x.id === 'carol'), `carol vanished from /v1/users after node 2 died: ${JSON.stringify(gone.users)}`);
  assert.ok(Date.now() - killedAt <= EXPIRY_MS + 5_000);
  assert.ok(gone.users.some((x) => x.id === 'alice'), 'alice on a live node is still listed');
  const after = await getJson(nodes[0].url, '/v1/stats');
  assert.ok(!after.nodes.includes('node-2'), `a dead node is no longer counted: ${JSON.stringify(after.nodes)}`);
});
