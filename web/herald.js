/*
 * herald.js: a small browser client for Herald, a thin layer over the
 * browser's own EventSource. Served by Herald at GET /herald.js; no build
 * step, no dependencies. Load it as a classic script; it defines
 * `window.HeraldClient`:
 *
 *   <script src="https://herald.example.com/herald.js"></script>
 *   const client = new HeraldClient({
 *     topics: ['orders/42'],                    // optional with a token: its user's own topic is always included
 *     types: ['message', 'order.updated'],      // every event type the page wants (see "Types" below)
 *     getToken: async () => (await fetch('/herald-token')).text(),
 *     onEvent: (e) => console.log(e.type, e.id, e.data),
 *     onGap: (gap) => reloadFromMyDatabase(gap),
 *     onStateChange: (state) => badge.textContent = state,
 *   });
 *   client.on('order.updated', (e) => ...);  // one type only
 *   client.state;        // 'connecting' | 'open' | 'closed'
 *   client.lastEventId;  // the id of the last event delivered
 *   client.close();
 *
 * What it adds to EventSource, and how (everything here can be done with a
 * bare EventSource too; the README's "Browser client" shows how):
 *
 * - Tokens. EventSource cannot send headers, so the token goes in the URL as
 *   `access_token`. `getToken()` is called before the first connection and
 *   whenever the token stops working: when the stream ends with Herald's
 *   `herald.expired` event, or when Herald refuses the connection with 401.
 *   A refusal is invisible to EventSource (it only fires `error` and stops
 *   for good, readyState CLOSED, whatever the status), so after such a stop
 *   the client asks once with fetch() to learn the status and Herald's error
 *   code: 401 gets a fresh token, any other refusal (400, 403) is reported to
 *   `onError` and the client stays closed, since retrying cannot help.
 * - Resume. A new EventSource sends no Last-Event-ID, so every connection
 *   this client opens carries `lastEventId=<id of the last event delivered>`
 *   in the URL; EventSource's own reconnects (after a kick, a restart, a
 *   network drop) send the header, which Herald prefers when both are given.
 *   Herald's own events (`herald.gap`, `herald.expired`) carry no id and never
 *   move it. Nothing is lost or repeated across a token refresh.
 * - Types. EventSource has no catch-all: an event named `x` reaches only
 *   listeners of `x`. The client registers one listener per type in `types`
 *   and sends the same list to Herald as its `types` filter, so Herald sends
 *   exactly the types the page listens to and `onEvent` sees all of them
 *   (an event published without a type is `message`). To receive every type
 *   a backend publishes, list them; `listen(type)` adds one later (the client
 *   reconnects with the new filter, resuming where it was).
 * - Gaps. `herald.gap` (the resume point has left Herald's retention, so
 *   some events cannot be replayed) goes to `onGap` with its parsed data
 *   `{last_event_id, oldest_available}`.
 * - State. `state` is 'connecting', 'open' or 'closed'; `onStateChange(state,
 *   previous)` is called on each change. A token refresh and EventSource's
 *   own reconnects are 'connecting'; 'closed' is final (close(), or a
 *   refusal reported to `onError`).
 *
 * Invariant: at most one EventSource is open at a time, and events of an
 * EventSource this client has replaced are ignored (each connection has a
 * generation number), so a page never sees an event twice from two streams.
 */
(function () {
  'use strict';

  // Where this script was loaded from: Herald's URL, unless told otherwise.
  const scriptOrigin = (() => {
    try {
      return new URL(document.currentScript.src).origin;
    } catch {
      return location.origin;
    }
  })();

  // Retries after a failed getToken() or probe: 0.5 s doubling to 15 s, with jitter.
  const backoffMs = (attempt) => Math.min(15000, 500 * 2 ** Math.min(attempt, 5)) * (0.75 + Math.random() / 2);

  class HeraldClient {
    /**
     * @param {object} options
     * @param {string} [options.url] Herald's base URL (default: where herald.js came from)
     * @param {string[]} [options.topics] topics or patterns (`topic=` parameters)
     * @param {string[]} [options.types] event types to receive (default ['message'])
     * @param {() => Promise<string>} [options.getToken] a fresh subscriber token; none: no token (public topics, dev mode)
     * @param {string} [options.user] dev mode only: the `user` parameter
     * @param {string} [options.lastEventId] resume after this id on the first connection
     * @param {boolean} [options.withCredentials] send cookies (the `herald_token` cookie) cross-origin
     * @param {(event: {type: string, id: string, data: string}) => void} [options.onEvent] every event of every listed type
     * @param {(gap: {last_event_id: string, oldest_available: string|null}) => void} [options.onGap]
     * @param {(state: string, previous: string) => void} [options.onStateChange]
     * @param {(error: {status: number|null, code: string, message: string}) => void} [options.onError]
     */
    constructor(options = {}) {
      this.url = String(options.url || scriptOrigin).replace(/\/+$/, '');
      this.topics = [...(options.topics || [])];
      this.types = [...(options.types || ['message'])];
      this.user = options.user;
      this.withCredentials = Boolean(options.withCredentials);
      this.lastEventId = options.lastEventId || '';
      this.state = 'connecting';
      this._getToken = options.getToken;
      this._onEvent = options.onEvent;
      this._onGap = options.onGap;
      this._onStateChange = options.onStateChange;
      this._onError = options.onError;
      this._listeners = new Map(); // type -> Set of functions
      this._token = null;
      this._source = null;
      this._generation = 0;
      this._failures = 0; // consecutive connections that did not open
      this._timer = null;
      this._connect({ freshToken: true });
    }

    /** Calls `fn(event)` for each event of `type` (added to `types` if missing). */
    on(type, fn) {
      if (!this._listeners.has(type)) this._listeners.set(type, new Set());
      this._listeners.get(type).add(fn);
      this.listen(type);
      return () => this._listeners.get(type).delete(fn);
    }

    /** Receives `type` too, from now on: reconnects with the wider `types` filter, resuming. */
    listen(type) {
      if (this.types.includes(type)) return;
      this.types.push(type);
      if (this.state !== 'closed') this._connect({ freshToken: false });
    }

    /** Ends the stream for good. */
    close() {
      this._generation += 1;
      clearTimeout(this._timer);
      if (this._source) this._source.close();
      this._source = null;
      this._setState('closed');
    }

    /** The stream URL a connection opens (also what a bare EventSource would open). */
    streamUrl(token = this._token) {
      const q = new URLSearchParams();
      for (const t of this.topics) q.append('topic', t);
      q.set('types', this.types.join(','));
      if (this.user) q.set('user', this.user);
      if (token) q.set('access_token', token);
      if (this.lastEventId) q.set('lastEventId', this.lastEventId);
      return `${this.url}/v1/events?${q}`;
    }

    _setState(state) {
      if (state === this.state) return;
      const previous = this.state;
      this.state = state;
      if (this._onStateChange) this._onStateChange(state, previous);
    }

    _fail(error) {
      this.close();
      if (this._onError) this._onError(error);
    }

    _retryLater(freshToken) {
      const generation = this._generation;
      clearTimeout(this._timer);
      this._timer = setTimeout(() => {
        if (generation === this._generation) this._connect({ freshToken });
      }, backoffMs(this._failures++));
    }

    // Opens a new EventSource (closing the current one), first getting a
    // token when `freshToken` or when there is none yet.
    async _connect({ freshToken }) {
      const generation = ++this._generation;
      clearTimeout(this._timer);
      if (this._source) this._source.close();
      this._source = null;
      this._setState('connecting');
      if (this._getToken && (freshToken || !this._token)) {
        try {
          this._token = await this._getToken();
        } catch (err) {
          if (generation !== this._generation) return;
          if (this._onError) this._onError({ status: null, code: 'get_token_failed', message: String(err && err.message || err) });
          this._retryLater(true);
          return;
        }
        if (generation !== this._generation) return; // closed or replaced meanwhile
      }
      const url = this.streamUrl();
      const source = new EventSource(url, { withCredentials: this.withCredentials });
      this._source = source;
      const current = () => generation === this._generation;
      source.onopen = () => {
        if (!current()) return;
        this._failures = 0;
        this._setState('open');
      };
      const deliver = (ev) => {
        if (!current()) return;
        if (ev.lastEventId) this.lastEventId = ev.lastEventId;
        const event = { type: ev.type, id: ev.lastEventId, data: ev.data };
        if (this._onEvent) this._onEvent(event);
        for (const fn of this._listeners.get(ev.type) || []) fn(event);
      };
      for (const type of this.types) source.addEventListener(type, deliver);
      source.addEventListener('herald.gap', (ev) => {
        if (!current() || !this._onGap) return;
        let gap;
        try { gap = JSON.parse(ev.data); } catch { gap = { raw: ev.data }; }
        this._onGap(gap);
      });
      source.addEventListener('herald.expired', () => {
        // The last frame of the stream: refresh now, before EventSource
        // would reconnect with the expired token.
        if (current()) this._connect({ freshToken: true });
      });
      source.onerror = () => {
        if (!current()) return;
        if (source.readyState === EventSource.CLOSED) {
          this._refused(generation, url);
        } else {
          this._setState('connecting'); // EventSource reconnects by itself, with Last-Event-ID
        }
      };
    }

    // EventSource stopped for good: Herald answered something other than a
    // stream. Ask again with fetch() to see the status and the error code.
    async _refused(generation, url) {
      this._setState('connecting');
      this._failures += 1;
      let status = null;
      let error = null;
      const abort = new AbortController();
      try {
        const res = await fetch(url, {
          headers: { Accept: 'text/event-stream' },
          credentials: this.withCredentials ? 'include' : 'same-origin',
          signal: abort.signal,
        });
        status = res.status;
        if (status !== 200) error = (await res.json().catch(() => null))?.error;
      } catch { /* unreachable or not allowed by CORS: try again later */ }
      abort.abort(); // a 200 is a stream: do not hold it open
      if (generation !== this._generation) return;
      if (status === 401 && this._getToken && this._failures <= 3) {
        this._connect({ freshToken: true });
      } else if (status !== null && status >= 400 && status < 500) {
        this._fail({ status, code: error?.code || `http_${status}`, message: error?.message || `Herald refused the stream (${status})` });
      } else {
        this._retryLater(Boolean(this._getToken));
      }
    }
  }

  window.HeraldClient = HeraldClient;
})();
