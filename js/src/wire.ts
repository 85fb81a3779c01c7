/**
 * The protobuf wire format, read from bytes in memory with every length checked against
 * the message holding it, every field's byte offsets kept: what the ONNX reader needs to
 * find tensor bytes where they lie. The counterpart of `src/format/onnx/wire.rs`, with
 * its messages.
 */

/** Longest string (name, metadata key or value) read: 16 MiB. */
export const MAX_STRING = 16 << 20;

/** One field of a message. */
export interface Field {
  /** The field number. */
  number: number;
  /** Wire type: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32. */
  wire: 0 | 1 | 2 | 5;
  /** Where its tag starts. */
  start: number;
  /** Where it ends (the next field's start). */
  end: number;
  /** Wire type 0: its value. */
  varint: bigint;
  /** Wire type 2: its payload's bytes, `from..to`. */
  from: number;
  to: number;
}

const utf8Strict = new TextDecoder("utf-8", { fatal: true });

/** Reads protobuf fields from `bytes`; `bad` builds the error thrown for a malformed file. */
export class Reader {
  constructor(
    readonly bytes: Uint8Array,
    readonly bad: (reason: string) => Error,
  ) {}

  get length(): number {
    return this.bytes.length;
  }

  /** The varint at `at`, which must end by `end`: its value and where it ends. */
  varint(at: number, end: number): [bigint, number] {
    const b = this.bytes;
    const stop = Math.min(at + 10, b.length);
    // Up to 7 bytes (49 bits) in a number, the rest in a bigint.
    let low = 0;
    let high = 0n;
    for (let i = 0; at + i < stop; i++) {
      const x = b[at + i]!;
      if (i === 9 && x > 1) break;
      if (i < 7) low += (x & 0x7f) * 2 ** (7 * i);
      else high |= BigInt(x & 0x7f) << BigInt(7 * i);
      if ((x & 0x80) === 0) {
        const next = at + i + 1;
        if (next > end) break;
        return [BigInt(low) | high, next];
      }
    }
    throw this.bad(`a bad or cut varint at byte ${at}`);
  }

  /** The field at `at`, inside a message that ends at `end`. */
  field(at: number, end: number): Field {
    const [tag, pos] = this.varint(at, end);
    const n = tag >> 3n;
    if (n === 0n || n > (1n << 29n) - 1n) throw this.bad(`field number ${n} at byte ${at}`);
    const number = Number(n);
    const f: Field = { number, wire: 0, start: at, end: pos, varint: 0n, from: 0, to: 0 };
    const fixed = (k: number) => {
      if (pos + k > end) throw this.bad(`field ${number} at byte ${at} runs past its message`);
      return pos + k;
    };
    switch (Number(tag & 7n)) {
      case 0: {
        const [v, next] = this.varint(pos, end);
        f.varint = v;
        f.end = next;
        break;
      }
      case 1:
        f.wire = 1;
        f.end = fixed(8);
        break;
      case 2: {
        const [len, from] = this.varint(pos, end);
        if (len > BigInt(end - from)) {
          throw this.bad(`field ${number} at byte ${at} declares ${len} bytes, past the end of its message`);
        }
        f.wire = 2;
        f.from = from;
        f.to = from + Number(len);
        f.end = f.to;
        break;
      }
      case 5:
        f.wire = 5;
        f.end = fixed(4);
        break;
      default:
        throw this.bad(`field ${number} at byte ${at} has wire type ${tag & 7n}, which ONNX never uses`);
    }
    return f;
  }

  /** Every field of the message `start..end`, in order. */
  fields(start: number, end: number): Field[] {
    const out: Field[] = [];
    for (let at = start; at < end; ) {
      const f = this.field(at, end);
      at = f.end;
      out.push(f);
    }
    return out;
  }

  /** The UTF-8 string `start..end` (at most {@link MAX_STRING} bytes). */
  string(start: number, end: number): string {
    const n = end - start;
    if (n > MAX_STRING) {
      throw this.bad(`a ${n}-byte string at byte ${start}, over the ${MAX_STRING}-byte limit for names and metadata`);
    }
    try {
      return utf8Strict.decode(this.bytes.subarray(start, end));
    } catch {
      throw this.bad(`the string at byte ${start} is not UTF-8`);
    }
  }
}

/** A field's value in words, for messages: `ModelProto field 7 holds a varint, not its type`. */
export function describe(f: Field): string {
  return ["a varint", "a fixed64", "a length-delimited value", "", "", "a fixed32"][f.wire]!;
}
