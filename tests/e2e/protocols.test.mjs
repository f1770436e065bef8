// Transport details: HTTP/2 without TLS (h2c, prior knowledge) streams events
// with no connection-specific headers; an HTTP/1.1 stream the server ends
// (kick) leaves the connection usable for the next request (keep-alive).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import { createParser } from 'eventsource-parser';
import { startHerald, publishOk, request, waitFor } from './lib/server.mjs';

let server;
before(async () => { server = await startHerald(['--heartbeat-secs', '300']); });
after(async () => { await server?.stop(); });

test('h2c: a stream over HTTP/2 receives events, without HTTP/1 connection headers', { timeout: 20_000 }, async () => {
  const client = http2.connect(server.url);
  try {
    const req = client.request({ ':path': '/v1/events?topic=h2', accept: 'text/event-stream' });
    const events = [];
    const parser = createParser({ onEvent: (e) => events.push(e) });
    const headers = await new Promise((resolve, reject) => {
      req.once('response', resolve);
      req.once('error', reject);
    });
    req.setEncoding('utf8');
    req.on('data', (c) => parser.feed(c));
    assert.equal(headers[':status'], 200);
    assert.equal(headers['content-type'], 'text/event-stream; charset=utf-8');
    assert.equal(headers.connection, undefined, 'HTTP/2 forbids a connection header');
    const id = await publishOk(server.url, { topics: ['h2'], data: 'over h2' });
    await waitFor(() => events.length >= 1, 10_000, 'the event over h2');
    assert.equal(events[0].id, id);
    assert.equal(events[0].data, 'over h2');
    req.close();
  } finally {
    client.close();
  }
});

test('HTTP/1.1: after the server ends a stream, the same connection serves the next request', { timeout: 20_000 }, async () => {
  const { port, hostname } = new URL(server.url);
  const socket = net.connect(Number(port), hostname);
  let received = '';
  socket.setEncoding('latin1');
  socket.on('data', (c) => { received += c; });
  await new Promise((resolve) => socket.once('connect', resolve));
  socket.write('GET /v1/events?user=ka HTTP/1.1\r\nHost: localhost\r\n\r\n');
  await waitFor(() => received.includes(':ok\n'), 10_000, 'the stream to open');
  const kicked = await request(server.url, '/v1/users/ka/connections', { method: 'DELETE' });
  assert.equal(kicked.json.closed, 1);
  await waitFor(() => received.includes('\r\n0\r\n\r\n'), 10_000, 'the terminating chunk');
  const before = received.length;
  socket.write('GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n');
  await waitFor(() => received.slice(before).includes('"status":"ok"'), 10_000, 'the second response on the same socket');
  assert.match(received.slice(before), /^HTTP\/1\.1 200 OK\r\n/);
  socket.destroy();
});
