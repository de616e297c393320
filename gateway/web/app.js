// The Skein chat page: one WebTransport session to the gateway, one room, docs/protocol.md §10.
//
// The page comes from the gateway's admin port (plain HTTP on loopback is a secure context) and
// asks it for the QUIC port and the certificate's SHA-256, which it pins with
// serverCertificateHashes. Frames are the protobuf messages of schemas/skein/v1/frames.proto,
// parsed at load time by the vendored protobuf.js, length-delimited on the first (and only)
// bidirectional stream. Causal buffering and the display order are reconcile.js's.
import { FrameReader, FramingError } from "./framing.js";
import { ProtocolViolation, Room, clockOf, compareKeys } from "./reconcile.js";

const MAX_SERVER_FRAME_BYTES = 16 * 1024 * 1024; // what a client should accept (protocol §2)
const PING_EVERY_MS = 10000; // well within the gateway's 30 s idle timeout
const FETCH_EVERY_MS = 250;
const ROOM_NAME = /^[A-Za-z0-9_.:@-]{1,128}$/;
const $ = (id) => document.getElementById(id);
const text = new TextDecoder();

let schema = null; // {ClientFrame, ServerFrame, errorName}
let session = null; // the live Session, or null
let room = null; // the joined Room (kept across sessions, for resuming)
let incarnation = null; // the room's incarnation, from Joined (compared only: it is rounded)
let myName = ""; // our client_name: the sender of what we publish
let welcome = null;
const items = new Map(); // "shard:seq" -> <li> of a shown message
const pending = new Map(); // client_msg_id -> {li, body} of a message sent, not yet delivered
const requests = new Map(); // request_id -> {kind, ...} of requests waiting for an answer
let msgCounter = 0;
const msgPrefix = Math.random().toString(36).slice(2, 8);

async function loadSchema() {
  const source = await (await fetch("skein/v1/frames.proto")).text();
  const root = protobuf.parse(source, { keepCase: true }).root;
  const codes = root.lookupEnum("skein.v1.ErrorCode").valuesById;
  return {
    ClientFrame: root.lookupType("skein.v1.ClientFrame"),
    ServerFrame: root.lookupType("skein.v1.ServerFrame"),
    errorName: (code) => (codes[code] || `ERROR_CODE_${code}`).replace("ERROR_CODE_", ""),
  };
}

/** One WebTransport session to the gateway and its frame stream. */
class Session {
  constructor(onFrame, onClosed) {
    Object.assign(this, { onFrame, onClosed, nextRequestId: 1, closed: false, timers: [] });
  }

  async open(name) {
    if (typeof WebTransport === "undefined") {
      throw new Error("no WebTransport here: it needs a recent browser and a secure context (127.0.0.1, localhost or HTTPS)");
    }
    const info = await (await fetch("v1/cert-hash")).json();
    const hash = Uint8Array.from(info.sha256.match(/../g), (h) => parseInt(h, 16));
    // The gateway names the address its QUIC socket is bound to; "" means any (use ours).
    const host = !info.host ? location.hostname : info.host.includes(":") ? `[${info.host}]` : info.host;
    this.transport = new WebTransport(`https://${host}:${info.port}${info.path}`, {
      serverCertificateHashes: [{ algorithm: "sha-256", value: hash.buffer }],
    });
    this.transport.closed.then(
      (info) => this.close(info.reason ? `closed by the gateway: ${info.reason}` : "closed by the gateway"),
      (err) => this.close(`connection lost: ${err.message}`),
    );
    await this.transport.ready;
    const stream = await this.transport.createBidirectionalStream();
    this.writer = stream.writable.getWriter();
    this.read(stream.readable.getReader());
    this.readDatagrams(this.transport.datagrams.readable.getReader());
    this.send({ hello: { protocol_version: 1, capabilities: ["datagrams"], client_name: name } });
    this.every(PING_EVERY_MS, () => this.send({ ping: { nonce: Date.now() } }));
  }

  every(ms, fn) {
    this.timers.push(setInterval(fn, ms));
  }

  send(frame) {
    if (this.closed) return;
    this.writer.write(schema.ClientFrame.encodeDelimited(frame).finish()).catch((err) => this.close(`write failed: ${err.message}`));
  }

  /** Send a request frame of `kind` with a fresh request_id; remember `note` until its answer. */
  request(kind, body, note = {}) {
    const id = this.nextRequestId++;
    if (requests.size >= 4096) requests.delete(requests.keys().next().value); // bounded, like the SDK
    requests.set(id, { kind, ...note });
    this.send({ [kind]: { request_id: id, ...body } });
    return id;
  }

  async read(reader) {
    const frames = new FrameReader(MAX_SERVER_FRAME_BYTES);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.closed) break;
        frames.push(value);
        for (let p = frames.next(); p && !this.closed; p = frames.next()) this.onFrame(decode(p));
      }
      this.close("the gateway ended the session");
    } catch (err) {
      if (err instanceof ProtocolViolation || err instanceof FramingError) this.close(`protocol error: ${err.message}`);
      else if (err.name === "WebTransportError") this.close(`connection lost: ${err.message}`);
      else {
        console.error(err);
        this.close(`page error: ${err}`);
      }
    }
  }

  /** Live chatter as datagrams (§1.7): each is one whole ServerFrame, a Deliver; any may be lost. */
  async readDatagrams(reader) {
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.closed) break;
        const frame = decode(value);
        if (frame.kind !== "deliver") throw new ProtocolViolation(`a datagram carried ${frame.kind}`);
        this.onFrame(frame);
      }
    } catch (err) {
      if (err instanceof ProtocolViolation) this.close(`protocol error: ${err.message}`);
      // else: the transport closed; read() reports why
    }
  }

  /** End the session (idempotent): FIN the frame stream, close the transport, report why. */
  close(reason) {
    if (this.closed) return;
    this.closed = true;
    this.timers.forEach(clearInterval);
    if (this.writer) this.writer.close().catch(() => {});
    // A moment for the FIN to go first; close() on a transport that already failed may throw.
    if (this.transport) setTimeout(() => { try { this.transport.close(); } catch {} }, 100);
    this.onClosed(reason);
  }
}

// ---- frames from the gateway -----------------------------------------------------------------------

const handlers = {
  welcome(w) {
    welcome = w;
    setState("open", `connected, session ${w.session_id}`);
  },
  joined(j) {
    requests.delete(Number(j.request_id));
    if (!room || j.room !== room.name) return;
    const resumed = incarnation !== null && incarnation === Number(j.incarnation);
    if (incarnation !== null && !resumed) resetRoom("the room was reset on the gateway: starting afresh");
    incarnation = Number(j.incarnation);
    (j.shard_maps || []).forEach((m) => room.applyMap(m));
    if (!resumed) {
      // A fresh join starts live: the frontier, and every earlier epoch, count as delivered.
      const start = clockOf(j.frontier);
      for (const m of j.shard_maps || []) for (const [s, q] of clockOf(m.sealed)) start.set(s, Math.max(q, start.get(s) || 0));
      room.skipTo(start);
    } else if (Number(j.missed)) {
      notice(`${j.missed} messages missed while away`);
    }
    setState("joined", `in #${room.name}`);
    render();
    // Unacknowledged sends of an earlier session go again with the same client_msg_id, so the
    // gateway acks a message it already sequenced instead of sequencing it twice.
    for (const [msgId, p] of pending) if (!p.li.classList.contains("failed")) publish(msgId, p.body);
  },
  deliver(d) {
    if (room && d.room === room.name) room.accept(d.messages || [], performance.now());
    render();
  },
  shard_map(m) {
    if (room && m.room === room.name) room.applyMap(m);
    render();
  },
  fetched(f) {
    requests.delete(Number(f.request_id));
    if (!room || f.room !== room.name) return;
    if (Number(f.first_available_seq)) lostNotice(room.lost(Number(f.shard), Number(f.first_available_seq)));
    room.accept(f.messages || [], performance.now());
    render();
  },
  ack(a) {
    requests.delete(Number(a.request_id));
    pending.get(a.client_msg_id)?.li.classList.add("acked");
  },
  error(e) {
    const req = requests.get(Number(e.request_id));
    requests.delete(Number(e.request_id));
    const what = `${schema.errorName(e.code)}: ${e.message}`;
    const failed = req && req.kind === "publish" && pending.get(req.msgId);
    if (failed) Object.assign(failed.li, { title: what }).classList.add("failed");
    if (req && req.kind === "fetch" && schema.errorName(e.code) === "OUT_OF_RANGE") lostNotice(room.lost(req.shard, req.to + 1));
    $("error").textContent = (e.fatal ? "fatal " : "") + what;
    render();
  },
  left() {},
  pong() {},
  deliver_lz4() {
    throw new ProtocolViolation("lz4 frame, but lz4 was never offered");
  },
};

function decode(payload) {
  try {
    return schema.ServerFrame.decode(payload);
  } catch (err) {
    throw new ProtocolViolation(`undecodable frame: ${err.message}`);
  }
}

function onFrame(frame) {
  const handler = handlers[frame.kind];
  if (!handler) throw new ProtocolViolation(`unknown server frame ${frame.kind}`);
  handler(frame[frame.kind]);
}

// ---- the view ----------------------------------------------------------------------------------

function setState(state, label) {
  const el = $("state");
  el.dataset.state = state;
  el.textContent = label;
  const live = state === "connecting" || state === "open" || state === "joined";
  $("connect-button").textContent = live ? "Disconnect" : "Connect";
  $("name").disabled = $("room").disabled = live;
  $("body").disabled = $("send").disabled = state !== "joined";
}

function notice(message) {
  $("pending").before(Object.assign(document.createElement("p"), { className: "notice", textContent: message }));
}

function lostNotice(count) {
  if (count) notice(`${count} messages are no longer on the gateway`);
}

function resetRoom(why) {
  room = new Room(room.name);
  items.forEach((li) => li.remove());
  items.clear();
  if (why) notice(why);
}

/** Apply what the room delivered and trimmed since the last call to the message list. */
function render() {
  if (!room) return;
  const log = $("log");
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  const { delivered, trimmed } = room.take();
  for (const e of trimmed) items.get(`${e.key[1]}:${e.key[2]}`)?.remove();
  // Highest key first: then the entry after each one in `shown` is already on the page.
  delivered.sort((a, b) => compareKeys(b.key, a.key));
  for (const e of delivered) {
    const i = room.indexOf(e);
    if (i < 0) continue; // already trimmed
    const m = e.message;
    const li = document.createElement("li");
    li.dataset.key = e.key.join(",");
    li.dataset.sender = m.sender;
    li.append(span("sender", m.sender), span("body", text.decode(m.body)), span("meta", `${m.shard}:${m.seq}`));
    li.title = `order key ${e.key.join(", ")}`;
    const next = room.shown[i + 1];
    $("messages").insertBefore(li, next ? items.get(`${next.key[1]}:${next.key[2]}`) || null : null);
    items.set(`${e.key[1]}:${e.key[2]}`, li);
    if (m.sender === myName && pending.has(m.client_msg_id)) {
      pending.get(m.client_msg_id).li.remove();
      pending.delete(m.client_msg_id);
    }
  }
  const s = room.stats;
  $("stats").textContent = `${room.shown.length} shown · epoch ${room.latestEpoch} · shards ${room.currentShards().join(",")} · buffered ${room.buffered} · duplicates ${s.duplicates}`;
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function span(cls, content) {
  return Object.assign(document.createElement("span"), { className: cls, textContent: content });
}

// ---- user actions ------------------------------------------------------------------------------

async function connect() {
  const name = $("name").value.trim();
  const roomName = $("room").value.trim();
  if (!name || name.length > 128 || !ROOM_NAME.test(roomName)) {
    $("error").textContent = "a name of 1-128 characters and a room of 1-128 of A-Z a-z 0-9 _ . : @ - please";
    return;
  }
  if (!room || room.name !== roomName) {
    if (room) resetRoom();
    pending.forEach((p) => p.li.remove()); // sends to the room we no longer join
    pending.clear();
    room = new Room(roomName);
    incarnation = null;
  }
  myName = name;
  $("error").textContent = "";
  setState("connecting", "connecting…");
  requests.clear();
  const s = (session = new Session(onFrame, (reason) => {
    if (session === s) session = null;
    setState("closed", `closed: ${reason}`);
  }));
  try {
    await s.open(name);
  } catch (err) {
    s.close(err.message || String(err));
    return;
  }
  // Pipelined after Hello; a re-join after a disconnect resumes from the room's cursor.
  s.request("join", { room: roomName, cursor: incarnation === null ? null : room.cursor() });
  s.every(FETCH_EVERY_MS, () => {
    for (const r of room.wanted(performance.now())) s.request("fetch", { room: room.name, shard: r.shard, from_seq: r.from, to_seq: r.to }, r);
  });
}

function send() {
  const body = new TextEncoder().encode($("body").value);
  if (!session || !body.length) return;
  if (welcome && body.length > welcome.max_body_bytes) {
    $("error").textContent = `message too long: ${body.length} bytes, the gateway takes ${welcome.max_body_bytes}`;
    return;
  }
  const msgId = `${msgPrefix}-${++msgCounter}`;
  const li = document.createElement("li");
  li.append(span("sender", $("name").value.trim()), span("body", $("body").value), span("meta", "sending"));
  $("pending").append(li);
  pending.set(msgId, { li, body });
  publish(msgId, body);
  $("body").value = "";
  $("log").scrollTop = $("log").scrollHeight;
}

function publish(msgId, body) {
  // deps: what we have delivered on the current epoch's shards (protocol §6.2).
  session.request("publish", { room: room.name, client_msg_id: msgId, body, priority: 2, deps: room.deps() }, { msgId });
}

async function main() {
  const params = new URLSearchParams(location.search);
  $("name").value = params.get("name") || `web-${msgPrefix.slice(0, 4)}`;
  $("room").value = params.get("room") || "lobby";
  $("connect").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (session) session.close("disconnected");
    else connect();
  });
  $("compose").addEventListener("submit", (ev) => {
    ev.preventDefault();
    send();
  });
  setState("idle", "loading…");
  try {
    schema = await loadSchema();
  } catch (err) {
    setState("closed", `could not load the schema: ${err.message}`);
    return;
  }
  setState("idle", "not connected");
  $("connect-button").disabled = false;
}

main();
