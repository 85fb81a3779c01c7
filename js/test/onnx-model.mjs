// ONNX models encoded by hand (protobuf wire format, onnx.proto's field numbers), so the
// Node tests need neither Python nor an ONNX library to make them.

export function varint(v) {
  let x = BigInt.asUintN(64, BigInt(v));
  const out = [];
  while (x >= 0x80n) {
    out.push(Number(x & 0x7fn) | 0x80);
    x >>= 7n;
  }
  out.push(Number(x));
  return Uint8Array.from(out);
}

const cat = (parts) => {
  const n = parts.reduce((s, p) => s + p.length, 0);
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};
const utf8 = (s) => new TextEncoder().encode(s);

/** Field `n` holding the varint `v`. */
export const int = (n, v) => cat([varint(n << 3), varint(v)]);
/** Field `n` holding `payload` (bytes or a string), length-delimited. */
export const bytes = (n, payload) => {
  const p = typeof payload === "string" ? utf8(payload) : payload;
  return cat([varint((n << 3) | 2), varint(p.length), p]);
};
export const message = (...fields) => cat(fields.flat());

export const FLOAT = 1, UINT8 = 2, INT8 = 3, INT64 = 7, BOOL = 9, FLOAT16 = 10, DOUBLE = 11;

/**
 * A `TensorProto`: dims, data_type, name, then its data, one of `{raw}` (raw_data),
 * `{floats: Float32Array}` (float_data packed), `{int64: [..]}` (int64_data packed varints),
 * `{doubles: Float64Array}` (double_data packed).
 */
export function tensor(name, dataType, dims, data) {
  const f = dims.map((d) => int(1, d));
  f.push(int(2, dataType), bytes(8, name));
  if (data.raw) f.push(bytes(9, data.raw));
  if (data.floats) f.push(bytes(4, new Uint8Array(data.floats.buffer, data.floats.byteOffset, data.floats.byteLength)));
  if (data.doubles) f.push(bytes(10, new Uint8Array(data.doubles.buffer, data.doubles.byteOffset, data.doubles.byteLength)));
  if (data.int64) f.push(bytes(7, cat(data.int64.map(varint))));
  return message(f);
}

/** A `ValueInfoProto` of a tensor: name, elem_type, dims (numbers, or strings for symbolic ones). */
export function valueInfo(name, elemType, dims) {
  const shape = message(dims.map((d) => bytes(1, typeof d === "string" ? bytes(2, d) : int(1, d))));
  const tensorType = message(int(1, elemType), bytes(2, shape));
  return message(bytes(1, name), bytes(2, bytes(1, tensorType)));
}

/** A `NodeProto`: op, inputs, outputs, name, attributes (already encoded `AttributeProto`s). */
export function node(op, inputs, outputs, name = "", attrs = []) {
  return message(
    inputs.map((i) => bytes(1, i)),
    outputs.map((o) => bytes(2, o)),
    name ? [bytes(3, name)] : [],
    [bytes(4, op)],
    attrs.map((a) => bytes(5, a)),
  );
}

/** An `AttributeProto` holding the graph `g` (type GRAPH = 5). */
export const graphAttr = (name, g) => message(bytes(1, name), bytes(6, g), int(20, 5));
/** An `AttributeProto` holding a tensor (a Constant's value; type TENSOR = 4). */
export const tensorAttr = (name, t) => message(bytes(1, name), bytes(5, t), int(20, 4));

/** A `GraphProto`. */
export function graph({ name = "g", nodes = [], inits = [], inputs = [], outputs = [] }) {
  return message(
    nodes.map((n) => bytes(1, n)),
    [bytes(2, name)],
    inits.map((t) => bytes(5, t)),
    inputs.map((v) => bytes(11, v)),
    outputs.map((v) => bytes(12, v)),
  );
}

/** A `ModelProto`: ir_version 8, producer, the graph, opset 17, then `extra` fields, then metadata. */
export function model(g, { extra = [], metadata = [] } = {}) {
  return message(
    int(1, 8),
    bytes(2, "deeplock-js-test"),
    bytes(7, g),
    bytes(8, int(2, 17)),
    extra,
    metadata.map(([k, v]) => bytes(14, message(bytes(1, k), bytes(2, v)))),
  );
}

/** Where `needle` occurs in `hay`: exactly once, or it throws. */
export function find(hay, needle) {
  const b = Buffer.from(hay.buffer, hay.byteOffset, hay.length);
  const at = b.indexOf(Buffer.from(needle));
  if (at < 0 || b.indexOf(Buffer.from(needle), at + 1) >= 0) throw new Error(`${Buffer.from(needle).toString("hex")} is not in the bytes exactly once`);
  return at;
}
