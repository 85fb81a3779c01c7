/**
 * A strict JSON parser that refuses duplicate keys at any depth (docs/SPEC.md, "Reading a
 * v2 header") and keeps numbers as their text, so no offset is silently rounded.
 */

/** A JSON number, as written. */
export class JsonNumber {
  constructor(readonly text: string) {}
}

/** A parsed JSON value; objects keep their key order. */
export type Json = null | boolean | string | JsonNumber | Json[] | Map<string, Json>;

/** Thrown for text that is not JSON (or holds a key twice); `message` says where. */
export class JsonError extends Error {}

const MAX_DEPTH = 128;

/** Parses `text`, which must hold exactly one JSON value (surrounding whitespace allowed). */
export function parseJson(text: string): Json {
  let i = 0;
  const fail = (what: string): never => {
    throw new JsonError(`invalid JSON at character ${i}: ${what}`);
  };
  const ws = () => {
    while (i < text.length) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) i++;
      else break;
    }
  };
  const hex4 = (): number => {
    const h = text.slice(i, i + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(h)) fail("bad \\u escape");
    i += 4;
    return parseInt(h, 16);
  };
  const str = (): string => {
    i++; // opening quote
    let out = "";
    let run = i;
    for (;;) {
      if (i >= text.length) fail("unterminated string");
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        out += text.slice(run, i);
        i++;
        return out;
      }
      if (c < 0x20) fail("control character in string");
      if (c === 0x5c) {
        out += text.slice(run, i);
        i++;
        const e = text[i++];
        switch (e) {
          case '"': out += '"'; break;
          case "\\": out += "\\"; break;
          case "/": out += "/"; break;
          case "b": out += "\b"; break;
          case "f": out += "\f"; break;
          case "n": out += "\n"; break;
          case "r": out += "\r"; break;
          case "t": out += "\t"; break;
          case "u": {
            const u = hex4();
            if (u >= 0xd800 && u < 0xdc00) {
              if (text.slice(i, i + 2) !== "\\u") fail("lone surrogate");
              i += 2;
              const l = hex4();
              if (l < 0xdc00 || l >= 0xe000) fail("lone surrogate");
              out += String.fromCharCode(u, l);
            } else if (u >= 0xdc00 && u < 0xe000) {
              fail("lone surrogate");
            } else {
              out += String.fromCharCode(u);
            }
            break;
          }
          default:
            fail("bad escape");
        }
        run = i;
      } else {
        i++;
      }
    }
  };
  const value = (depth: number): Json => {
    if (depth > MAX_DEPTH) fail("nested too deeply");
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const m = new Map<string, Json>();
      ws();
      if (text[i] === "}") {
        i++;
        return m;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail("expected a key");
        const k = str();
        if (m.has(k)) fail(`duplicate key ${JSON.stringify(k)}`);
        ws();
        if (text[i++] !== ":") fail("expected ':'");
        m.set(k, value(depth + 1));
        ws();
        const d = text[i++];
        if (d === "}") return m;
        if (d !== ",") fail("expected ',' or '}'");
      }
    }
    if (c === "[") {
      i++;
      const a: Json[] = [];
      ws();
      if (text[i] === "]") {
        i++;
        return a;
      }
      for (;;) {
        a.push(value(depth + 1));
        ws();
        const d = text[i++];
        if (d === "]") return a;
        if (d !== ",") fail("expected ',' or ']'");
      }
    }
    if (c === '"') return str();
    for (const [lit, v] of [["true", true], ["false", false], ["null", null]] as const) {
      if (text.startsWith(lit, i)) {
        i += lit.length;
        return v;
      }
    }
    const m = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/.exec(text.slice(i, i + 400));
    if (m === null) return fail("unexpected character");
    i += m[0].length;
    return new JsonNumber(m[0]);
  };
  const v = value(0);
  ws();
  if (i !== text.length) fail("trailing characters");
  return v;
}

/** A non-negative integer no larger than `Number.MAX_SAFE_INTEGER`, or `undefined`. */
export function asIndex(v: Json | undefined): number | undefined {
  if (!(v instanceof JsonNumber) || !/^(0|[1-9][0-9]*)$/.test(v.text)) return undefined;
  const n = Number(v.text);
  return Number.isSafeInteger(n) ? n : undefined;
}
