// Length-delimited framing (docs/protocol.md §2): each frame is varint(length) || payload.
//
// FrameReader takes stream chunks of any size and hands out whole payloads. Chunks are joined
// only once the bytes of the next header or payload are all there, so a large frame arriving in
// many small chunks is copied a bounded number of times, not once per chunk.

export class FramingError extends Error {}

export class FrameReader {
  /** `limit`: the largest payload accepted; a longer declared length throws FramingError. */
  constructor(limit) {
    this.limit = limit;
    this.chunks = [];
    this.size = 0; // bytes held
    this.need = 1; // bytes needed before next() can make progress
  }

  push(chunk) {
    if (!chunk.length) return;
    this.chunks.push(chunk);
    this.size += chunk.length;
  }

  /** The next complete payload, or null until more bytes arrive. Throws FramingError. */
  next() {
    if (this.size < this.need) return null;
    const buf = this.chunks.length === 1 ? this.chunks[0] : this._joined();
    this.chunks = [buf];
    let length = 0;
    for (let i = 0; i < 5; i++) {
      if (i >= buf.length) {
        this.need = i + 1;
        return null;
      }
      length += (buf[i] & 0x7f) * 2 ** (7 * i);
      if (buf[i] < 0x80) {
        if (length > this.limit) throw new FramingError(`a frame of ${length} bytes (limit ${this.limit})`);
        const end = i + 1 + length;
        if (buf.length < end) {
          this.need = end;
          return null;
        }
        const rest = buf.subarray(end);
        this.chunks = rest.length ? [rest] : [];
        this.size = rest.length;
        this.need = 1;
        return buf.subarray(i + 1, end);
      }
    }
    throw new FramingError("a frame length prefix over 5 bytes");
  }

  _joined() {
    const out = new Uint8Array(this.size);
    let at = 0;
    for (const chunk of this.chunks) {
      out.set(chunk, at);
      at += chunk.length;
    }
    return out;
  }
}
