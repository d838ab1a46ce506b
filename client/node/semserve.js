'use strict';
// Promise-based client for the semserve.v1 gRPC API. The .proto files are loaded at
// run time from the repository's protos/ folder, so this client never drifts from
// the contract the server was built against and needs no generated code.

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { formatName, decodeEmbedding } = require('./embeddings');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const PROTO_FILES = ['common', 'encoder', 'reranker', 'search', 'info']
  .map((name) => `semserve/v1/${name}.proto`);

const LOADER_OPTIONS = {
  // includeDirs makes `import "semserve/v1/common.proto"` resolve as protoc does.
  includeDirs: [PROTO_ROOT],
  keepCase: true,
  // uint64 counters (timing, stats) can exceed 2^53; strings keep them exact.
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

const DEFAULT_DEADLINE_MS = 60000;

let api = null;
function loadApi() {
  if (api === null) {
    const definition = protoLoader.loadSync(PROTO_FILES, LOADER_OPTIONS);
    api = grpc.loadPackageDefinition(definition).semserve.v1;
  }
  return api;
}

// grpc.status maps both ways (NOT_FOUND <-> 5); errors carry only the number.
function statusName(code) {
  return grpc.status[code] || `UNKNOWN_STATUS_${code}`;
}

// A deadline is a Date, or a number of milliseconds from now; Infinity means none.
function toDeadline(deadline) {
  if (deadline instanceof Date) return deadline;
  if (deadline === Infinity) return Infinity;
  const ms = Number(deadline);
  if (!Number.isFinite(ms) || ms <= 0) {
    throw new TypeError(`deadline must be a Date or a positive number of milliseconds, got ${deadline}`);
  }
  return new Date(Date.now() + ms);
}

function toMetadata(metadata) {
  if (!metadata) return new grpc.Metadata();
  if (metadata instanceof grpc.Metadata) return metadata;
  const md = new grpc.Metadata();
  for (const [key, value] of Object.entries(metadata)) md.set(key, String(value));
  return md;
}

// Proto3 `optional` fields must be left out, not sent as false/0, when the caller
// did not choose: the server's defaults (normalize=true, truncate=true) depend on presence.
function setIfDefined(target, key, value) {
  if (value !== undefined && value !== null) target[key] = value;
}

function toSearchQuery(query) {
  if (typeof query === 'string') return { text: query };
  if (query && (Array.isArray(query) || ArrayBuffer.isView(query))) {
    return { vector: { values: Array.from(query) } };
  }
  if (query && (query.text !== undefined || query.vector !== undefined)) return query;
  throw new TypeError('a search query is a string, an array of numbers or a SearchQuery object');
}

function toRerankStage(rerank) {
  if (!rerank) return null;
  if (rerank === true) return {};
  const stage = {};
  setIfDefined(stage, 'model', rerank.model);
  setIfDefined(stage, 'top_n', rerank.topN);
  return stage;
}

// RPCs safe to send again (reads; Upsert by id and Delete land the same way twice). Streams,
// Create/DropCollection and AdminService are never retried.
const IDEMPOTENT_METHODS = {
  'semserve.v1.EncoderService': ['Embed', 'Tokenize', 'Similarity'],
  'semserve.v1.RerankerService': ['Rerank'],
  'semserve.v1.SearchService': ['ListCollections', 'GetCollection', 'Upsert', 'Delete', 'GetDocuments', 'Search'],
  'semserve.v1.InfoService': ['GetInfo'],
};

const DEFAULT_RETRY = {
  maxAttempts: 4,
  initialBackoffMs: 100,
  maxBackoffMs: 2000,
  backoffMultiplier: 2,
  retryableStatusCodes: ['UNAVAILABLE', 'RESOURCE_EXHAUSTED'],
};

// grpc-js's own retries, as a service config: full-jitter exponential backoff, bounded attempts,
// each attempt within the call's deadline.
// loadBalancing: 'round_robin' spreads calls over every address the target resolves to (a
// Kubernetes headless Service through 'dns:///NAME:PORT'); grpc-js's default sends all to one.
function serviceConfigOptions(retry, loadBalancing) {
  const config = {};
  if (loadBalancing !== undefined && loadBalancing !== null) {
    if (!['pick_first', 'round_robin'].includes(loadBalancing)) {
      throw new TypeError(`loadBalancing must be 'pick_first' or 'round_robin', got ${loadBalancing}`);
    }
    config.loadBalancingConfig = [{ [loadBalancing]: {} }];
  }
  const options = { 'grpc.enable_retries': 0 };
  if (retry !== false && retry !== null) {
    config.methodConfig = [retryMethodConfig(retry)];
    options['grpc.enable_retries'] = 1;
  }
  if (Object.keys(config).length) options['grpc.service_config'] = JSON.stringify(config);
  return options;
}

function retryMethodConfig(retry) {
  const policy = { ...DEFAULT_RETRY, ...(retry || {}) };
  const name = [];
  for (const [service, methods] of Object.entries(IDEMPOTENT_METHODS)) {
    for (const method of methods) name.push({ service, method });
  }
  return {
    name,
    retryPolicy: {
      maxAttempts: policy.maxAttempts,
      initialBackoff: `${policy.initialBackoffMs / 1000}s`,
      maxBackoff: `${policy.maxBackoffMs / 1000}s`,
      backoffMultiplier: policy.backoffMultiplier,
      retryableStatusCodes: policy.retryableStatusCodes,
    },
  };
}

// PEM contents from a Buffer, or from a file path.
function readPem(source) {
  if (source === undefined || source === null) return null;
  return Buffer.isBuffer(source) ? source : fs.readFileSync(source);
}

// TLS when options.tls or any certificate is given (mTLS with clientCert + clientKey).
function channelCredentials(options) {
  if (options.credentials) return options.credentials;
  if (!options.tls && !options.caCert && !options.clientCert) return grpc.credentials.createInsecure();
  if (Boolean(options.clientCert) !== Boolean(options.clientKey)) {
    throw new TypeError('clientCert and clientKey go together');
  }
  return grpc.credentials.createSsl(readPem(options.caCert), readPem(options.clientKey), readPem(options.clientCert));
}

class SemserveClient {
  // options: retry (false turns retries off; an object overrides DEFAULT_RETRY's fields:
  // idempotent calls answered UNAVAILABLE or RESOURCE_EXHAUSTED are retried with backoff),
  // loadBalancing ('round_robin' spreads calls over every address of the target), apiKey (sent as 'authorization: Bearer KEY' on every call), tls, caCert,
  // clientCert, clientKey (paths or Buffers; any of them turns TLS on), credentials (grpc-js
  // credentials, overriding those), deadline (default for every call, ms or Date),
  // channelOptions (grpc-js channel arguments), metadata (sent with every call).
  constructor(target, options = {}) {
    const v1 = loadApi();
    const credentials = channelCredentials(options);
    this.apiKey = options.apiKey || null;
    const channelOptions = {
      // Big Embed replies (many texts x float lists) pass grpc-js's 4 MiB default;
      // the server bounds what it sends with --max-message-bytes.
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
      'grpc.max_send_message_length': 64 * 1024 * 1024,
      ...serviceConfigOptions(options.retry, options.loadBalancing),
      ...(options.channelOptions || {}),
    };
    this.target = target;
    this.defaultDeadline = options.deadline !== undefined ? options.deadline : DEFAULT_DEADLINE_MS;
    this.defaultMetadata = options.metadata || null;
    // One channel (one HTTP/2 connection) shared by all services of the server.
    this.channel = new grpc.Channel(target, credentials, channelOptions);
    const shared = { channelOverride: this.channel };
    this.encoder = new v1.EncoderService(target, credentials, shared);
    this.reranker = new v1.RerankerService(target, credentials, shared);
    this.searcher = new v1.SearchService(target, credentials, shared);
    this.infoService = new v1.InfoService(target, credentials, shared);
  }

  unary(stub, method, request, options = {}) {
    const deadline = toDeadline(options.deadline !== undefined ? options.deadline : this.defaultDeadline);
    const metadata = toMetadata(options.metadata || this.defaultMetadata);
    if (this.apiKey) metadata.set('authorization', `Bearer ${this.apiKey}`);
    return new Promise((resolve, reject) => {
      stub[method](request, metadata, { deadline }, (err, response) => {
        if (err) {
          err.statusName = statusName(err.code);
          reject(err);
        } else {
          resolve(response);
        }
      });
    });
  }

  // Resolves once the channel is connected; useful before timing-sensitive work.
  waitForReady(deadline = this.defaultDeadline) {
    return new Promise((resolve, reject) => {
      this.encoder.waitForReady(toDeadline(deadline), (err) => (err ? reject(err) : resolve()));
    });
  }

  // Returns the EmbedResponse with `embeddings` as Float32Array[] in input order.
  async embed(texts, options = {}) {
    const request = {
      model: options.model || '',
      texts: Array.isArray(texts) ? texts : [texts],
      format: formatName(options.format),
    };
    setIfDefined(request, 'normalize', options.normalize);
    setIfDefined(request, 'truncate', options.truncate);
    // options.dimensions: keep the first N; options.truncationDirection: 'right' or 'left';
    // options.promptName (one of the model's prompts) or options.prompt (literal text).
    setIfDefined(request, 'dimensions', options.dimensions);
    setIfDefined(request, 'prompt_name', options.promptName);
    setIfDefined(request, 'prompt', options.prompt);
    if (options.truncationDirection !== undefined) {
      const direction = String(options.truncationDirection).toUpperCase();
      if (direction !== 'LEFT' && direction !== 'RIGHT') {
        throw new TypeError(`truncationDirection must be 'left' or 'right', got ${options.truncationDirection}`);
      }
      request.truncation_direction = `TRUNCATION_DIRECTION_${direction}`;
    }
    const response = await this.unary(this.encoder, 'Embed', request, options);
    return {
      ...response,
      embeddings: response.embeddings.map((e) => decodeEmbedding(e, response.format, response.dimension)),
    };
  }

  // Returns the RerankResponse: results sorted best first, each {index, score, document}.
  rerank(query, documents, options = {}) {
    const request = {
      model: options.model || '',
      query,
      documents,
      return_documents: Boolean(options.returnDocuments),
      raw_scores: Boolean(options.rawScores),
    };
    setIfDefined(request, 'top_n', options.topN);
    setIfDefined(request, 'truncate', options.truncate);
    return this.unary(this.reranker, 'Rerank', request, options);
  }

  // queries: strings (encoded by the server) or number arrays (used as vectors).
  // options.rerank: true, or {model, topN}, to rerank the topK candidates.
  search(collection, queries, options = {}) {
    const request = {
      collection,
      queries: (Array.isArray(queries) ? queries : [queries]).map(toSearchQuery),
      top_k: options.topK || 10,
      filter: options.filter || {},
      include_text: Boolean(options.includeText),
      include_metadata: Boolean(options.includeMetadata),
    };
    setIfDefined(request, 'rerank', toRerankStage(options.rerank));
    return this.unary(this.searcher, 'Search', request, options);
  }

  // Returns GetInfoResponse: version, models (with stats) and limits.
  info(options = {}) {
    return this.unary(this.infoService, 'GetInfo', {}, options);
  }

  // The stubs share this one channel, so closing it ends them all.
  close() {
    this.channel.close();
  }
}

module.exports = { SemserveClient, loadApi, statusName, PROTO_ROOT };
