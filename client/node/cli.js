#!/usr/bin/env node
'use strict';
// Command line over SemserveClient: prints each reply as one JSON document on stdout.
// On a gRPC error it prints "STATUS_NAME: message" on stderr and exits 1, so scripts
// can branch on the status; usage errors exit 2.

const { SemserveClient } = require('./semserve');

const USAGE = `usage: node cli.js [--target HOST:PORT] [--deadline-ms N] [--api-key KEY]
                   [--tls] [--ca-cert PEM] [--client-cert PEM --client-key PEM]
                   COMMAND [options] ARGS...

commands:
  embed TEXT...             [--model NAME] [--no-normalize] [--no-truncate]
                            [--format list|float32|float16|int8|uint8|binary|ubinary]
                            [--dimensions N] [--truncation-direction left|right]
                            [--prompt-name NAME | --prompt TEXT]
  rerank QUERY DOC...       [--model NAME] [--top-n N] [--return-documents]
                            [--raw-scores] [--no-truncate]
  search COLLECTION QUERY...  [--top-k N] [--rerank] [--rerank-model NAME]
                            [--rerank-top-n N] [--include-text] [--include-metadata]
  info

--target defaults to $SEMSERVE_TARGET, else 127.0.0.1:50051; --api-key to
$SEMSERVE_API_KEY; --ca-cert, --client-cert, --client-key to $SEMSERVE_CA_CERT,
$SEMSERVE_CLIENT_CERT, $SEMSERVE_CLIENT_KEY (any certificate turns TLS on). Use --
before arguments that start with a dash.`;

// Flags that take a value; every other --flag is a switch.
const VALUE_FLAGS = new Set([
  'target', 'deadline-ms', 'model', 'format', 'top-n', 'top-k', 'rerank-model', 'rerank-top-n',
  'api-key', 'ca-cert', 'client-cert', 'client-key', 'dimensions', 'truncation-direction', 'prompt-name', 'prompt',
]);
const SWITCHES = new Set([
  'no-normalize', 'no-truncate', 'return-documents', 'raw-scores', 'rerank',
  'include-text', 'include-metadata', 'help', 'tls',
]);

class UsageError extends Error {}

function parseArgs(argv) {
  const flags = {};
  const positional = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (arg === '-h') {
      flags.help = true;
    } else if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      const name = eq === -1 ? arg.slice(2) : arg.slice(2, eq);
      if (VALUE_FLAGS.has(name)) {
        const value = eq === -1 ? argv[++i] : arg.slice(eq + 1);
        if (value === undefined) throw new UsageError(`--${name} needs a value`);
        flags[name] = value;
      } else if (SWITCHES.has(name) && eq === -1) {
        flags[name] = true;
      } else {
        throw new UsageError(`unknown option ${arg}`);
      }
    } else {
      positional.push(arg);
    }
  }
  return { flags, positional };
}

function positiveInt(flags, name) {
  if (flags[name] === undefined) return undefined;
  const n = Number(flags[name]);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`--${name} must be a positive integer`);
  return n;
}

// Options common to every call; `false` only when the switch asks for it, so that
// unset stays unset and the server's default applies.
function callOptions(flags) {
  return {
    model: flags.model,
    deadline: positiveInt(flags, 'deadline-ms'),
    truncate: flags['no-truncate'] ? false : undefined,
  };
}

const COMMANDS = {
  async embed(client, args, flags) {
    if (args.length === 0) throw new UsageError('embed needs at least one TEXT');
    const reply = await client.embed(args, {
      ...callOptions(flags),
      format: flags.format,
      normalize: flags['no-normalize'] ? false : undefined,
      dimensions: flags.dimensions !== undefined ? positiveInt(flags, 'dimensions') : undefined,
      truncationDirection: flags['truncation-direction'],
      promptName: flags['prompt-name'],
      prompt: flags.prompt,
    });
    return {
      model: reply.model,
      dimension: reply.dimension,
      format: reply.format,
      embeddings: reply.embeddings.map((e) => Array.from(e)),
      token_counts: reply.token_counts,
      truncated_indexes: reply.truncated_indexes,
    };
  },

  async rerank(client, args, flags) {
    if (args.length < 2) throw new UsageError('rerank needs a QUERY and at least one DOC');
    const [query, ...documents] = args;
    const reply = await client.rerank(query, documents, {
      ...callOptions(flags),
      topN: positiveInt(flags, 'top-n'),
      returnDocuments: Boolean(flags['return-documents']),
      rawScores: Boolean(flags['raw-scores']),
    });
    return { model: reply.model, results: reply.results };
  },

  async search(client, args, flags) {
    if (args.length < 2) throw new UsageError('search needs a COLLECTION and at least one QUERY');
    const [collection, ...queries] = args;
    const wantsRerank = flags.rerank || flags['rerank-model'] || flags['rerank-top-n'];
    const reply = await client.search(collection, queries, {
      deadline: positiveInt(flags, 'deadline-ms'),
      topK: positiveInt(flags, 'top-k'),
      includeText: Boolean(flags['include-text']),
      includeMetadata: Boolean(flags['include-metadata']),
      rerank: wantsRerank ? { model: flags['rerank-model'], topN: positiveInt(flags, 'rerank-top-n') } : null,
    });
    return { results: reply.results };
  },

  async info(client, args, flags) {
    if (args.length !== 0) throw new UsageError('info takes no arguments');
    return client.info({ deadline: positiveInt(flags, 'deadline-ms') });
  },
};

async function main(argv) {
  let client = null;
  try {
    const { flags, positional } = parseArgs(argv);
    if (flags.help) {
      process.stdout.write(`${USAGE}\n`);
      return 0;
    }
    const [command, ...args] = positional;
    if (!command) throw new UsageError('missing COMMAND');
    if (!Object.prototype.hasOwnProperty.call(COMMANDS, command)) {
      throw new UsageError(`unknown command ${command}`);
    }
    client = new SemserveClient(flags.target || process.env.SEMSERVE_TARGET || '127.0.0.1:50051', {
      apiKey: flags['api-key'] || process.env.SEMSERVE_API_KEY,
      tls: Boolean(flags.tls),
      caCert: flags['ca-cert'] || process.env.SEMSERVE_CA_CERT,
      clientCert: flags['client-cert'] || process.env.SEMSERVE_CLIENT_CERT,
      clientKey: flags['client-key'] || process.env.SEMSERVE_CLIENT_KEY,
    });
    const result = await COMMANDS[command](client, args, flags);
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return 0;
  } catch (err) {
    // TypeError: the library refused an argument (e.g. an unknown --format).
    if (err instanceof UsageError || err instanceof TypeError) {
      process.stderr.write(`error: ${err.message}\n\n${USAGE}\n`);
      return 2;
    }
    if (err && err.statusName) {
      // err.details is the server's message without grpc-js's "5 NOT_FOUND:" prefix.
      process.stderr.write(`${err.statusName}: ${err.details || err.message}\n`);
      return 1;
    }
    process.stderr.write(`error: ${err && err.stack ? err.stack : err}\n`);
    return 1;
  } finally {
    if (client) client.close();
  }
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
