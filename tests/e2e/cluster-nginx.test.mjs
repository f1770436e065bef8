// deploy/nginx/herald-cluster.conf in front of three Herald nodes on one
// real Redis: nginx accepts the file, streams go through it unbuffered, the
// streams spread over the nodes, and when a node is killed its clients come
// back through nginx to the others with exactly the acknowledged events.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { openES, waitOpen, waitFor, sleep, getJson, pollUntil } from './lib/server.mjs';
import { startRedis } from './lib/redis.mjs';
import { startNodes, keepPublishing, assertExactly } from './lib/cluster.mjs';
import {
  layOutNginx, nginxTest, startNginx, noNginx, timeEventsThroughProxy, median,
} from './lib/proxy.mjs';

const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
});

test('three nodes behind nginx: unbuffered streams, spread over the nodes, and a killed node\'s clients resume on the others', { timeout: 120_000, skip: noNginx }, async () => {
  const redis = await startRedis({ aof: 'always' });
  cleanup.push(() => redis.stop());
  const nodes = await startNodes(3, redis.url);
  cleanup.push(async () => { for (const n of nodes) await n.stop(); });
  const layout = await layOutNginx(nodes[0].url, { site: 'herald-cluster.conf', nodes: nodes.map((n) => n.url) });
  const check = nginxTest(layout);
  assert.equal(check.status, 0, `nginx -t accepts deploy/nginx/herald-cluster.conf:\n${check.output}`);
  const nginx = await startNginx(layout);
  cleanup.push(() => nginx.stop());

  const timing = await timeEventsThroughProxy(nginx.url, { user: 'through-nginx' });
  assert.equal(timing.status, 200);
  assert.ok(median(timing.latenciesMs) <= 100, `events through nginx and the cluster arrive at once: ${timing.latenciesMs}`);

  const clients = [];
  for (let i = 0; i < 12; i++) clients.push(openES(nginx.url, `user=c${i}&topic=lb`));
  cleanup.push(() => clients.forEach((c) => c.close()));
  for (const c of clients) await waitOpen(c, 10_000);
  // least_conn spread the streams: every node holds some.
  const spread = await pollUntil(
    () => getJson(nodes[0].url, '/v1/stats'),
    (st) => st.connections >= 12 && nodes.every((_, i) => st.node_stats.find((s) => s.id === `node-${i}`)?.connections >= 1),
    { timeoutMs: 5_000, intervalMs: 200 },
  );
  for (let i = 0; i < 3; i++) {
    assert.ok(spread.node_stats.find((s) => s.id === `node-${i}`)?.connections >= 1,
      `node ${i} holds streams: ${JSON.stringify(spread.node_stats)}`);
  }

  const publisher = keepPublishing(() => [nginx.url], { topic: 'lb', intervalMs: 10, maxEvents: 400 });
  await sleep(1_500);
  nodes[2].proc.kill('SIGKILL');
  await sleep(2_000);
  publisher.stop();
  const { acked } = await publisher.done;
  assert.ok(acked.size >= 50, `publishing through nginx went on (${acked.size} acknowledged)`);
  for (const [i, c] of clients.entries()) {
    await waitFor(() => c.received.length >= acked.size, 20_000, `client ${i} (${c.received.length}/${acked.size})`);
  }
  await sleep(500);
  assert.ok(clients.some((c) => c.opens >= 2), 'the killed node\'s clients reconnected through nginx');
  for (const [i, c] of clients.entries()) assertExactly(c.received, acked, `client ${i}`);
});
