'use strict';
// Turns the wire forms of semserve.v1.Embedding into typed arrays: Float32Array for the float
// formats (a list or packed little-endian bytes), Int8Array/Uint8Array for int8/uint8 and for
// the packed bits of binary/ubinary (ceil(dimension / 8) bytes, first dimension in the high bit).

// Short names accepted wherever an EmbeddingFormat is expected.
const FORMAT_ALIASES = {
  list: 'EMBEDDING_FORMAT_FLOAT_LIST',
  float: 'EMBEDDING_FORMAT_FLOAT_LIST',
  float32: 'EMBEDDING_FORMAT_FLOAT32_BYTES',
  float16: 'EMBEDDING_FORMAT_FLOAT16_BYTES',
  int8: 'EMBEDDING_FORMAT_INT8_BYTES',
  uint8: 'EMBEDDING_FORMAT_UINT8_BYTES',
  binary: 'EMBEDDING_FORMAT_BINARY_BYTES',
  ubinary: 'EMBEDDING_FORMAT_UBINARY_BYTES',
};

const FORMATS = new Set([
  'EMBEDDING_FORMAT_UNSPECIFIED',
  'EMBEDDING_FORMAT_FLOAT_LIST',
  'EMBEDDING_FORMAT_FLOAT32_BYTES',
  'EMBEDDING_FORMAT_FLOAT16_BYTES',
  'EMBEDDING_FORMAT_INT8_BYTES',
  'EMBEDDING_FORMAT_UINT8_BYTES',
  'EMBEDDING_FORMAT_BINARY_BYTES',
  'EMBEDDING_FORMAT_UBINARY_BYTES',
]);

function formatName(format) {
  if (format === undefined || format === null || format === '') {
    return 'EMBEDDING_FORMAT_UNSPECIFIED';
  }
  const key = String(format);
  const name = FORMAT_ALIASES[key.toLowerCase()] || key.toUpperCase();
  if (!FORMATS.has(name)) {
    throw new TypeError(`unknown embedding format ${JSON.stringify(format)}; ` +
      `use list, float32, float16, int8, uint8, binary, ubinary or an EMBEDDING_FORMAT_* name`);
  }
  return name;
}

// IEEE 754 binary16 -> number. Node 18 has no Float16Array, so this is done by hand;
// subnormals, infinities and NaN are kept because normalize=false can produce them.
function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

// Buffer.read*LE rather than a typed-array view over the bytes: protobuf hands back
// slices of the receive buffer at arbitrary offsets, which need not be 4-byte aligned.
function decodeBytes(data, bytesPerValue, readAt, dimension) {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data);
  if (buf.length % bytesPerValue !== 0) {
    throw new Error(`embedding data of ${buf.length} bytes is not a multiple of ${bytesPerValue}`);
  }
  const n = buf.length / bytesPerValue;
  if (dimension && n !== dimension) {
    throw new Error(`embedding data holds ${n} values, expected dimension ${dimension}`);
  }
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = readAt(buf, i * bytesPerValue);
  return out;
}

// int8/uint8 (one byte a dimension) and binary/ubinary (packed bits) as signed or unsigned bytes.
function decodeIntegers(data, format, dimension) {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data);
  const packed = format === 'EMBEDDING_FORMAT_BINARY_BYTES' || format === 'EMBEDDING_FORMAT_UBINARY_BYTES';
  const expected = packed ? Math.ceil(dimension / 8) : dimension;
  if (dimension && buf.length !== expected) {
    throw new Error(`embedding data of ${buf.length} bytes, expected ${expected} for dimension ${dimension}`);
  }
  const signed = format === 'EMBEDDING_FORMAT_INT8_BYTES' || format === 'EMBEDDING_FORMAT_BINARY_BYTES';
  const copy = Uint8Array.from(buf);
  return signed ? new Int8Array(copy.buffer) : copy;
}

// One Embedding message (as decoded by proto-loader) -> a typed array.
function decodeEmbedding(embedding, format, dimension) {
  switch (format) {
    case 'EMBEDDING_FORMAT_FLOAT32_BYTES':
      return decodeBytes(embedding.data, 4, (b, o) => b.readFloatLE(o), dimension);
    case 'EMBEDDING_FORMAT_FLOAT16_BYTES':
      return decodeBytes(embedding.data, 2, (b, o) => halfToFloat(b.readUInt16LE(o)), dimension);
    case 'EMBEDDING_FORMAT_INT8_BYTES':
    case 'EMBEDDING_FORMAT_UINT8_BYTES':
    case 'EMBEDDING_FORMAT_BINARY_BYTES':
    case 'EMBEDDING_FORMAT_UBINARY_BYTES':
      return decodeIntegers(embedding.data, format, dimension);
    case 'EMBEDDING_FORMAT_UNSPECIFIED':
    case 'EMBEDDING_FORMAT_FLOAT_LIST':
      return Float32Array.from(embedding.values || []);
    default:
      throw new Error(`server answered with unknown embedding format ${format}`);
  }
}

module.exports = { formatName, halfToFloat, decodeEmbedding };
