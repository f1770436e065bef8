// An event-stream reader on fetch(), for the two things EventSource cannot do:
// receive every event type (EventSource dispatches only the types a listener
// was added for, and has no catch-all), and send a token in a header rather
// than in the URL, where logs keep it.
//
// It behaves as EventSource does (WHATWG HTML §9.2): the same parsing, the
// same reconnection after the stream ends or the network fails — after the
// server's `retry:` time, with `Last-Event-ID` — and the same final stop on
// any answer other than 200 with text/event-stream.

const CONNECTING = 'CONNECTING';
const OPEN = 'OPEN';
const CLOSED = 'CLOSED';

/**
 * Opens `url` and keeps it open until `close()`.
 *
 * handlers: onEvent({type, data, lastEventId}) for every dispatched event,
 * onState(state) on CONNECTING / OPEN / CLOSED, onRefused({status, code,
 * message}) when the server answers with an error (the reader then stops for
 * good, as EventSource does), onComment(text) for comment lines.
 * headers: extra request headers (e.g. Authorization).
 */
export function openEventStream(url, { headers = {}, onEvent, onState, onRefused, onComment } = {}) {
  let lastEventId = '';
  let retryMs = 3000;
  let closed = false;
  let controller = null;
  let timer = null;
  let opens = 0;

  const setState = (s) => onState && onState(s, { opens });

  async function connect() {
    if (closed) return;
    setState(CONNECTING);
    controller = new AbortController();
    const sent = { ...headers, accept: 'text/event-stream' };
    if (lastEventId) sent['last-event-id'] = lastEventId;
    let response;
    try {
      response = await fetch(url, { headers: sent, cache: 'no-store', signal: controller.signal });
    } catch (err) {
      return reconnect();
    }
    const type = response.headers.get('content-type') || '';
    if (response.status !== 200 || !type.startsWith('text/event-stream')) {
      const body = await response.json().catch(() => null);
      const error = (body && body.error) || {};
      closed = true;
      setState(CLOSED);
      if (onRefused) onRefused({ status: response.status, code: error.code || '', message: error.message || response.statusText });
      return;
    }
    opens += 1;
    setState(OPEN);
    try {
      await read(response.body);
    } catch (err) {
      // A network failure or close(): handled below like the end of the stream.
    }
    reconnect();
  }

  function reconnect() {
    if (closed) return;
    setState(CONNECTING);
    timer = setTimeout(connect, retryMs);
  }

  // The parser's state for one connection: the field buffers of the event
  // being read, and a line cut by the end of a chunk.
  async function read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let pending = '';
    let data = [];
    let eventType = '';
    let sawData = false;
    let lastCharWasCR = false;

    const dispatch = () => {
      if (!sawData) { eventType = ''; return; }
      const event = { type: eventType || 'message', data: data.join('\n'), lastEventId };
      data = []; eventType = ''; sawData = false;
      if (onEvent) onEvent(event);
    };

    const line = (text) => {
      if (text === '') return dispatch();
      if (text[0] === ':') { if (onComment) onComment(text.slice(1)); return; }
      const colon = text.indexOf(':');
      const name = colon < 0 ? text : text.slice(0, colon);
      let value = colon < 0 ? '' : text.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
      if (name === 'data') { data.push(value); sawData = true; }
      else if (name === 'event') eventType = value;
      else if (name === 'id') { if (!value.includes('\0')) lastEventId = value; }
      else if (name === 'retry') { if (/^[0-9]+$/.test(value)) retryMs = Number(value); }
    };

    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      let chunk = value;
      // A CR at the end of the last chunk ended a line; an LF right after it
      // belongs to that same line ending.
      if (lastCharWasCR && chunk[0] === '\n') chunk = chunk.slice(1);
      lastCharWasCR = chunk.endsWith('\r');
      pending += chunk;
      const parts = pending.split(/\r\n|\r|\n/);
      pending = parts.pop();
      for (const p of parts) line(p);
    }
  }

  connect();
  return {
    close() {
      closed = true;
      clearTimeout(timer);
      if (controller) controller.abort();
      setState(CLOSED);
    },
  };
}
