// Causal delivery and the reconciled total order of one room, for the browser page.
//
// The rules of gateway/sdk/reconcile.py and docs/protocol.md §6-7, in a smaller form. A message
// (S, k) of epoch E is ready when E's shard map is known, delivered[S] == k - 1,
// delivered[T] >= deps[T] for every T in deps and, when it is S's first delivered, delivered[T] >=
// sealed(E)[T]. Live chatter may come as datagrams and be lost: a message is also ready with
// delivered[S] >= k - 1 - chatter_before when it is the lowest held of S; the chatter it passes
// over counts as skipped (§1.7, §6.4).
// Ready messages are delivered once each; the others wait in a bounded buffer. Delivered messages
// are kept sorted by key = [base_sum(E) + sum(deps) + seq, shard, seq]: a linear extension of
// causality on which every client holding the same messages agrees.
//
// Sans-IO: nothing here touches the network, the page or a clock (callers pass `now`, in ms).
// Seqs are JavaScript numbers: exact up to 2^53, far beyond what a shard log reaches.

/** A wire VectorClock ({shards, seqs}, or null) as a Map shard -> seq. */
export function clockOf(vc) {
  const out = new Map();
  const shards = (vc && vc.shards) || [];
  const seqs = (vc && vc.seqs) || [];
  for (let i = 0; i < shards.length && i < seqs.length; i++) out.set(Number(shards[i]), Number(seqs[i]));
  return out;
}

/** A Map shard -> seq as a wire VectorClock: sorted by shard, zero entries left out. */
export function toClock(map) {
  const entries = [...map].filter(([, seq]) => seq > 0).sort((a, b) => a[0] - b[0]);
  return { shards: entries.map((e) => e[0]), seqs: entries.map((e) => e[1]) };
}

/** Total order of two keys [lamport, shard, seq]. */
export function compareKeys(a, b) {
  return a[0] - b[0] || a[1] - b[1] || a[2] - b[2];
}

export class ProtocolViolation extends Error {}

export class Room {
  /**
   * maxBuffered bounds the messages waiting for their dependencies (the one furthest from delivery
   * is evicted and fetched again later); maxShown bounds `shown` (the lowest keys are trimmed).
   * A gap is fetched once it has lasted gapTimeoutMs, and not asked again within refetchAfterMs.
   */
  constructor(name, { maxBuffered = 10000, maxShown = 2000, gapTimeoutMs = 300, refetchAfterMs = 1000 } = {}) {
    Object.assign(this, { name, maxBuffered, maxShown, gapTimeoutMs, refetchAfterMs });
    this.epochs = new Map(); // epoch -> {shards, sealed: Map, baseSum}
    this.shardEpoch = new Map(); // shard -> its epoch
    this.latestEpoch = 0;
    this.delivered = new Map(); // shard -> highest seq delivered, skipped as lost or joined past
    this.buffer = new Map(); // shard -> Map(seq -> message) of messages not ready yet
    this.buffered = 0;
    this.knownLast = new Map(); // shard -> highest seq known to exist
    this.behindSince = new Map(); // shard -> when its next seq was first seen missing
    this.askedAt = new Map(); // shard -> when it was last fetched
    this.shown = []; // delivered {message, key}, sorted by key
    this.outbox = []; // delivered since the last take()
    this.trimmed = []; // dropped from `shown` since the last take()
    this.stats = { delivered: 0, duplicates: 0, skipped: 0, missed: 0, evicted: 0 };
  }

  /** Learn an epoch's map (a wire ShardMap); idempotent. Delivers what it makes ready. */
  applyMap(map) {
    const epoch = Number(map.epoch);
    if (this.epochs.has(epoch)) return;
    const sealed = clockOf(map.sealed);
    const shards = (map.shards || []).map(Number);
    this.epochs.set(epoch, { shards, sealed, baseSum: Number(map.base_sum || 0) });
    this.latestEpoch = Math.max(this.latestEpoch, epoch);
    for (const shard of shards) this.shardEpoch.set(shard, epoch);
    for (const [shard, seq] of sealed) this._learn(shard, seq);
    this._pump();
  }

  /** The current epoch's shards (empty before the first map). */
  currentShards() {
    const info = this.epochs.get(this.latestEpoch);
    return info ? info.shards : [];
  }

  /** Publish.deps: the delivered frontier restricted to the current epoch's shards. */
  deps() {
    return toClock(new Map(this.currentShards().map((s) => [s, this._done(s)])));
  }

  /** Join.cursor for a resume: the latest epoch and the whole delivered frontier. */
  cursor() {
    return { epoch: this.latestEpoch, delivered: toClock(this.delivered) };
  }

  /** A fresh join: everything up to `frontier` (a Map) counts as delivered, never shown. */
  skipTo(frontier) {
    for (const [shard, upto] of frontier) {
      if (upto <= this._done(shard)) continue;
      const held = this.buffer.get(shard);
      for (const seq of held ? [...held.keys()] : []) if (seq <= upto) this._unbuffer(shard, seq);
      this.delivered.set(shard, upto);
    }
    this._pump();
  }

  /** The gateway's log of `shard` starts at `firstAvailable`: skip what is gone. Returns the count. */
  lost(shard, firstAvailable) {
    const held = [...(this.buffer.get(shard) || new Map()).keys()];
    const stop = Math.min(firstAvailable - 1, ...held.map((s) => s - 1));
    const done = this._done(shard);
    if (stop <= done) return 0;
    this.stats.missed += stop - done;
    this.delivered.set(shard, stop);
    this._pump();
    return stop - done;
  }

  /** Take wire messages in any order; deliver what is ready. Throws ProtocolViolation on garbage. */
  accept(messages, now) {
    for (const m of messages) {
      if (!(Number(m.seq) >= 1) || clockOf(m.deps).has(Number(m.shard))) {
        throw new ProtocolViolation(`bad message ${m.shard}:${m.seq}`);
      }
    }
    for (const m of messages) this._accept(m);
    this._pump();
    this._track(now);
  }

  /** What was delivered and trimmed since the last call, for the view to apply in this order. */
  take() {
    const out = { delivered: this.outbox, trimmed: this.trimmed };
    this.outbox = [];
    this.trimmed = [];
    return out;
  }

  /** Position of a shown entry (by key), or -1. */
  indexOf(entry) {
    const i = this._insertionPoint(entry.key);
    return i < this.shown.length && this.shown[i] === entry ? i : -1;
  }

  /** Fetch ranges [{shard, from, to}] for gaps that lasted gapTimeoutMs and were not asked lately. */
  wanted(now) {
    this._track(now);
    const out = [];
    for (const [shard, since] of this.behindSince) {
      if (now - since < this.gapTimeoutMs || now - (this.askedAt.get(shard) ?? -Infinity) < this.refetchAfterMs) continue;
      this.askedAt.set(shard, now);
      const from = this._done(shard) + 1;
      out.push({ shard, from, to: Math.min(this.knownLast.get(shard), from + 999) });
    }
    return out;
  }

  // ---- internals -------------------------------------------------------------------------------

  _done(shard) {
    return this.delivered.get(shard) || 0;
  }

  _accept(m) {
    const shard = Number(m.shard);
    const seq = Number(m.seq);
    let held = this.buffer.get(shard);
    if (seq <= this._done(shard) || (held && held.has(seq))) {
      this.stats.duplicates++;
      return;
    }
    this._learn(shard, seq);
    for (const [s, q] of clockOf(m.deps)) this._learn(s, q);
    if (!held) this.buffer.set(shard, (held = new Map()));
    held.set(seq, m);
    if (++this.buffered > this.maxBuffered) this._evictOne();
  }

  _learn(shard, seq) {
    if (seq > (this.knownLast.get(shard) || 0)) this.knownLast.set(shard, seq);
  }

  _unbuffer(shard, seq) {
    const held = this.buffer.get(shard);
    held.delete(seq);
    this.buffered--;
    if (!held.size) this.buffer.delete(shard);
  }

  _evictOne() {
    // The message furthest ahead of its shard's frontier is the last one that could be delivered.
    let worst = null;
    for (const [shard, held] of this.buffer) {
      const ahead = Math.max(...held.keys()) - this._done(shard);
      if (!worst || ahead > worst.ahead) worst = { shard, seq: ahead + this._done(shard), ahead };
    }
    this._unbuffer(worst.shard, worst.seq);
    this.stats.evicted++;
  }

  _ready(shard, seq, m) {
    const epoch = this.shardEpoch.get(shard);
    if (epoch === undefined) return false;
    const done = this._done(shard);
    // The seqs between the frontier and this one must all be chatter it may pass over.
    if (done < seq - 1 - Number(m.chatter_before || 0)) return false;
    // A tombstone carries no deps: its successor carries them (per-shard clocks only grow).
    if (!m.shed) for (const [s, q] of clockOf(m.deps)) if (this._done(s) < q) return false;
    if (done === 0) for (const [s, q] of this.epochs.get(epoch).sealed) if (this._done(s) < q) return false;
    return true;
  }

  _pump() {
    // Only a shard's lowest held seq can be ready; each pass that delivers nothing ends the loop.
    for (let progress = true; progress; ) {
      progress = false;
      for (const [shard, held] of [...this.buffer]) {
        const seq = Math.min(...held.keys());
        const m = held.get(seq);
        if (this._ready(shard, seq, m)) {
          this._unbuffer(shard, seq);
          this._deliver(shard, seq, m);
          progress = true;
        }
      }
    }
  }

  _deliver(shard, seq, m) {
    this.stats.skipped += seq - 1 - this._done(shard); // chatter that never came
    this.delivered.set(shard, seq);
    if (m.shed) {
      this.stats.skipped++;
      return;
    }
    const info = this.epochs.get(this.shardEpoch.get(shard));
    let lamport = info.baseSum + seq;
    for (const q of clockOf(m.deps).values()) lamport += q;
    const entry = { message: m, key: [lamport, shard, seq] };
    this.shown.splice(this._insertionPoint(entry.key), 0, entry);
    this.outbox.push(entry);
    this.stats.delivered++;
    if (this.shown.length > this.maxShown) this.trimmed.push(this.shown.shift());
  }

  _insertionPoint(key) {
    let lo = 0;
    let hi = this.shown.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (compareKeys(this.shown[mid].key, key) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  _track(now) {
    // A shard is behind when its next seq is known to exist but not held: a gap to fetch.
    for (const [shard, last] of this.knownLast) {
      const next = this._done(shard) + 1;
      const held = this.buffer.get(shard);
      if (last < next || (held && held.has(next))) this.behindSince.delete(shard);
      else if (!this.behindSince.has(shard)) this.behindSince.set(shard, now);
    }
  }
}
