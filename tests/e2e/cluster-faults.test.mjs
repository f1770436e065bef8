// The cluster under faults, with real processes: a node killed with SIGKILL
// while publishes go to every node (its clients come back through a
// balancer to the others), Redis stopped for 5 s and restarted with its
// append-only file, Redis restarted empty, and a Redis connection that stops
// answering without closing (a wedged tail).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  openES, waitOpen, waitFor, openRaw, publishOk, sleep, cmpId,
} from './lib/server.mjs';
import { startRedis, startBalancer, startRelay } from './lib/redis.mjs';
import { startNodes, keepPublishing, assertExactly, readyzUntil } from './lib/cluster.mjs';

const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
});

test('a node killed while every node takes publishes: its clients resume on the others with exactly the acknowledged events', { timeout: 120_000 }, async () => {
  const redis = await startRedis({ aof: 'always' });
  cleanup.push(() => redis.stop());
  const nodes = await startNodes(3, redis.url);
  cleanup.push(async () => { for (const n of nodes) await n.stop(); });
  const lb = await startBalancer(nodes.map((n) => n.url));
  cleanup.push(() => lb.stop());

  const clients = [];
  for (let i = 0; i < 12; i++) clients.push(openES(lb.url, 'topic=kill'));
  cleanup.push(() => clients.forEach((c) => c.close()));
  for (const c of clients) await waitOpen(c, 10_000);
  assert.ok(lb.connections().every((n) => n >= 3), `the balancer spread the clients: ${lb.connections()}`);

  // The publisher keeps going round all three: a publish to the dead node
  // gets no answer and is sent again, same idempotency key, to the next.
  const publisher = keepPublishing(() => nodes.map((n) => n.url), { topic: 'kill', intervalMs: 10, maxEvents: 400 });
  await sleep(1_500);
  nodes[1].proc.kill('SIGKILL');
  await sleep(1_500);
  publisher.stop();
  const { acked, attempts } = await publisher.done;
  assert.ok(acked.size >= 50, `publishing went on (${acked.size} acknowledged)`);
  assert.ok(attempts.some((a) => a.url === nodes[1].url && a.status === 0), 'some publishes went to the killed node and got no answer');

  for (const [i, c] of clients.entries()) {
    await waitFor(() => c.received.length >= acked.size, 20_000, `client ${i} to catch up (${c.received.length}/${acked.size})`);
  }
  await sleep(500);
  const reconnected = clients.filter((c) => c.opens >= 2).length;
  assert.ok(reconnected >= 1, 'the killed node\'s clients reconnected');
  for (const [i, c] of clients.entries()) assertExactly(c.received, acked, `client ${i}`);
});

test('Redis stopped for 5 s: publishes get 2xx or 503, every acknowledged event arrives once, /readyz fails and recovers', { timeout: 120_000 }, async () => {
  const redis = await startRedis({ aof: 'always' });
  cleanup.push(() => redis.stop());
  const nodes = await startNodes(2, redis.url);
  cleanup.push(async () => { for (const n of nodes) await n.stop(); });
  const subs = nodes.flatMap((n) => [openES(n.url, 'topic=outage'), openES(n.url, 'topic=outage')]);
  cleanup.push(() => subs.forEach((c) => c.close()));
  for (const s of subs) await waitOpen(s);

  const publisher = keepPublishing(() => nodes.map((n) => n.url), { topic: 'outage', intervalMs: 20, maxEvents: 600 });
  await sleep(1_000);
  await redis.kill('SIGKILL');
  const down = await readyzUntil(nodes[0].url, (s) => s === 503, 5_000);
  assert.equal(down, 503, '/readyz fails while Redis is away');
  await sleep(5_000 - 500);
  await redis.restart();
  const up = await readyzUntil(nodes[0].url, (s) => s === 200, 15_000);
  assert.equal(up, 200, '/readyz recovers when Redis is back');
  await sleep(1_500);
  publisher.stop();
  const { acked, attempts } = await publisher.done;

  const statuses = new Set(attempts.map((a) => a.status));
  for (const s of statuses) assert.ok([200, 201, 503].includes(s), `every publish got a 2xx or a 503 (saw ${[...statuses]})`);
  assert.ok(statuses.has(503), 'some publishes were refused during the outage');
  for (const n of nodes) assert.equal(n.exited(), null, 'no node crashed');
  for (const [i, s] of subs.entries()) {
    await waitFor(() => s.received.length >= acked.size, 20_000, `subscriber ${i} (${s.received.length}/${acked.size})`);
  }
  await sleep(500);
  for (const [i, s] of subs.entries()) assertExactly(s.received, acked, `subscriber ${i}`);
  // Streams stayed open through the outage: no reconnect was needed.
  assert.ok(subs.every((s) => s.opens === 1), `streams stayed open: ${subs.map((s) => s.opens)}`);
});

test('Redis restarted empty: an id from the lost history gets herald.gap, then the new events; no id is handed out twice', { timeout: 60_000 }, async () => {
  const redis = await startRedis({ aof: 'always' });
  cleanup.push(() => redis.stop());
  const [node] = await startNodes(1, redis.url);
  cleanup.push(() => node.stop());
  const before = [];
  for (let i = 0; i < 5; i++) before.push(await publishOk(node.url, { topics: ['lost'], data: `old-${i}` }));

  await redis.restart({ empty: true });
  assert.equal(await readyzUntil(node.url, (s) => s === 200, 15_000), 200);
  const fresh = [];
  for (let i = 0; i < 3; i++) {
    for (let attempt = 0; ; attempt++) {
      const r = await fetch(`${node.url}/v1/publish`, {
        method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ topics: ['lost'], data: `new-${i}`, idempotency_key: `new-${i}` }),
      });
      if (r.status === 201 || r.status === 200) { fresh.push((await r.json()).id); break; }
      await r.arrayBuffer();
      assert.ok(attempt < 50, `publish after the restart: ${r.status}`);
      await sleep(100);
    }
  }
  for (const id of fresh) {
    assert.equal(cmpId(id, before[4]), 1, `new id ${id} is above every id handed out before (${before[4]})`);
  }
  const resumed = await openRaw(node.url, '/v1/events?topic=lost', { headers: { 'last-event-id': before[2] } });
  const got = await resumed.waitEvents(4, 10_000);
  resumed.close();
  assert.equal(got[0].type, 'herald.gap', `a resume from the lost history starts with herald.gap: ${JSON.stringify(got[0])}`);
  assert.deepEqual(got.slice(1, 4).map((e) => e.data), ['new-0', 'new-1', 'new-2']);
  assert.deepEqual(got.slice(1, 4).map((e) => e.id), fresh);
});

test('a Redis connection that stops answering is detected, shown in /readyz and /metrics, and replaced', { timeout: 60_000 }, async () => {
  const redis = await startRedis();
  cleanup.push(() => redis.stop());
  const relay = await startRelay(redis.port);
  cleanup.push(() => relay.stop());
  const [node] = await startNodes(1, relay.url);
  cleanup.push(() => node.stop());
  const es = openES(node.url, 'topic=wedge');
  cleanup.push(() => es.close());
  await waitOpen(es);
  await publishOk(node.url, { topics: ['wedge'], data: 'before' });
  await waitFor(() => es.received.length === 1, 5_000, 'the first event');

  relay.freeze(); // every connection open now stops forwarding, none closes
  const frozenAt = Date.now();
  const down = await readyzUntil(node.url, (s) => s === 503, 10_000);
  assert.equal(down, 503, '/readyz shows the wedged tail');
  const up = await readyzUntil(node.url, (s) => s === 200, 15_000);
  assert.equal(up, 200, 'the node reconnected');
  assert.ok(Date.now() - frozenAt < 20_000);
  // The tail's own read is found wedged after its block time + 3 s, and
  // made again.
  const counted = async (name) => {
    const text = await (await fetch(`${node.url}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith(`${name} `));
    return Number(line?.split(' ').pop() ?? NaN);
  };
  let wedged = 0;
  let reconnects = 0;
  for (let i = 0; i < 100 && !(wedged >= 1 && reconnects >= 1); i++) {
    wedged = await counted('herald_redis_tail_wedged_total');
    reconnects = await counted('herald_redis_tail_reconnects_total');
    await sleep(100);
  }
  assert.ok(wedged >= 1, `the wedged tail read is counted (herald_redis_tail_wedged_total ${wedged})`);
  assert.ok(reconnects >= 1, `and its reconnect (herald_redis_tail_reconnects_total ${reconnects})`);

  await publishOk(node.url, { topics: ['wedge'], data: 'after' });
  await waitFor(() => es.received.length === 2, 10_000, 'an event after the reconnect');
  assert.deepEqual(es.received.map((e) => e.data), ['before', 'after']);
  assert.equal(es.opens, 1, 'the subscriber never noticed');
});
