// A rolling restart behind a balancer: two nodes on one real Redis are
// stopped with SIGTERM (the graceful drain: streams told to come back
// later, in-flight publishes finished, exit 0) and started again on the same
// port, one after the other, while clients stream and a publisher publishes
// through the balancer. Nothing acknowledged is lost or delivered twice.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  openES, waitOpen, waitFor, sleep, freePort, startHerald,
} from './lib/server.mjs';
import { startRedis, startBalancer } from './lib/redis.mjs';
import { keepPublishing, assertExactly, readyzUntil } from './lib/cluster.mjs';

const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
});

test('a rolling restart of the cluster behind its balancer loses nothing and repeats nothing', { timeout: 120_000 }, async () => {
  const redis = await startRedis({ aof: 'always' });
  cleanup.push(() => redis.stop());
  const ports = [await freePort(), await freePort()];
  const start = (i) => startHerald([
    '--redis', redis.url, '--node-id', `node-${i}`, '--listen', `127.0.0.1:${ports[i]}`,
    '--shutdown-timeout-ms', '5000',
  ]);
  const nodes = [await start(0), await start(1)];
  cleanup.push(async () => { for (const n of nodes) await n.stop(); });
  const lb = await startBalancer(nodes.map((n) => n.url));
  cleanup.push(() => lb.stop());

  const clients = [];
  for (let i = 0; i < 10; i++) clients.push(openES(lb.url, `user=r${i}&topic=rolling`));
  cleanup.push(() => clients.forEach((c) => c.close()));
  for (const c of clients) await waitOpen(c, 10_000);

  const publisher = keepPublishing(() => [lb.url], { topic: 'rolling', intervalMs: 10, maxEvents: 2_000 });
  await sleep(1_000);
  for (const i of [0, 1]) {
    const exit = await nodes[i].stop();
    assert.deepEqual(exit, { code: 0, signal: null }, `node ${i} drained and exited 0`);
    nodes[i] = await start(i);
    assert.equal(await readyzUntil(nodes[i].url, (s) => s === 200, 10_000), 200, `node ${i} is back`);
    await sleep(1_000);
  }
  publisher.stop();
  const { acked } = await publisher.done;
  assert.ok(acked.size >= 100, `publishing went on through the restarts (${acked.size} acknowledged)`);

  for (const [i, c] of clients.entries()) {
    await waitFor(() => c.received.length >= acked.size, 30_000, `client ${i} (${c.received.length}/${acked.size})`);
  }
  await sleep(500);
  assert.ok(clients.every((c) => c.opens >= 2), `every client came back at least once: ${clients.map((c) => c.opens)}`);
  for (const [i, c] of clients.entries()) assertExactly(c.received, acked, `client ${i}`);
});
