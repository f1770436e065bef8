// The dashboard's event-stream reader (web/dashboard/sse.js, the console's
// catch-all for every event type) judged against eventsource-parser, the
// reference WHATWG parser, on bytes cut at awkward places: a CRLF split across
// chunks, lone CRs, fields without a space, comments, ids with NUL, bad
// `retry:`, an event with no data, a multi-byte character split in two. The
// bytes come from a local socket written chunk by chunk (Herald's own encoder
// never writes most of these; the browser suite runs the reader against
// Herald). Node's fetch is the same WHATWG fetch the browser has.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createParser } from 'eventsource-parser';
import { waitFor, sleep } from './lib/server.mjs';
import { openEventStream } from '../../web/dashboard/sse.js';

const CHUNKS = [
  'retry: 50\n:ok\n',
  'id: 1\nevent: notice\ndata: {"unread":3}\n\n',
  'data:no space\r',
  '\ndata: same event\r\n\r\n',            // a CRLF split after its CR: one line end
  'data: a\rdata: b\r\r',                   // lone CRs end lines
  'event: x\n\n',                           // no data: not dispatched
  'id: 7\0bad\ndata: nul id ignored\n\n',
  'retry: soon\ndata:  two spaces\n\n',
  ': a comment\ndata: caf',
  Buffer.from('é line\n\n', 'utf8').subarray(0, 1), // the first byte of é ...
  Buffer.from('é line\n\n', 'utf8').subarray(1),    // ... and the rest
  'id: 9\ndata: last\ndata\n\n',            // `data` with no colon: an empty line
];

/** A server that writes CHUNKS one by one, then ends the response. */
async function chunkServer() {
  const server = http.createServer(async (req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    for (const chunk of CHUNKS) {
      res.write(chunk);
      await sleep(5);
    }
    res.end();
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return server;
}

function reference() {
  const events = [];
  let lastId = '';
  const parser = createParser({
    onEvent: (e) => {
      if (e.id !== undefined) lastId = e.id;
      events.push({ type: e.event || 'message', data: e.data, lastEventId: lastId });
    },
  });
  const decoder = new TextDecoder();
  for (const chunk of CHUNKS) parser.feed(decoder.decode(typeof chunk === 'string' ? Buffer.from(chunk) : chunk, { stream: true }));
  return events;
}

test('the dashboard\'s reader parses as the reference parser does, at any cut', { timeout: 30_000 }, async (t) => {
  const server = await chunkServer();
  t.after(() => server.close());
  const { port } = server.address();
  const got = [];
  const stream = openEventStream(`http://127.0.0.1:${port}/`, { onEvent: (e) => got.push(e) });
  t.after(() => stream.close());
  const expected = reference();
  await waitFor(() => got.length >= expected.length, 10_000, `${expected.length} events`);
  assert.deepEqual(got.slice(0, expected.length), expected);
  assert.ok(expected.some((e) => e.data === 'café line'), 'the split character is whole');
  assert.ok(expected.some((e) => e.data === 'no space\nsame event'), 'the split CRLF is one line end');
});

test('the reader reconnects after the stream ends, with Last-Event-ID, after the server\'s retry', { timeout: 30_000 }, async (t) => {
  const seen = [];
  const server = http.createServer((req, res) => {
    seen.push(req.headers['last-event-id'] ?? null);
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.end(`retry: 20\nid: ${seen.length}\ndata: connection ${seen.length}\n\n`);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => server.close());
  const states = [];
  const stream = openEventStream(`http://127.0.0.1:${server.address().port}/`, { onState: (s) => states.push(s) });
  t.after(() => stream.close());
  await waitFor(() => seen.length >= 3, 10_000, 'three connections');
  stream.close();
  assert.deepEqual(seen.slice(0, 3), [null, '1', '2']);
  assert.ok(states.includes('OPEN') && states.at(-1) === 'CLOSED', states.join(' '));
});

test('the reader stops for good on an error answer and says why', { timeout: 30_000 }, async (t) => {
  let requests = 0;
  const server = http.createServer((req, res) => {
    requests += 1;
    res.writeHead(403, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: { code: 'topic_not_allowed', message: 'not yours' } }));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => server.close());
  let refusal = null;
  const stream = openEventStream(`http://127.0.0.1:${server.address().port}/`, { onRefused: (r) => { refusal = r; } });
  t.after(() => stream.close());
  await waitFor(() => refusal !== null, 5_000, 'the refusal');
  assert.deepEqual(refusal, { status: 403, code: 'topic_not_allowed', message: 'not yours' });
  await sleep(300);
  assert.equal(requests, 1, 'no retry after a refusal');
});
