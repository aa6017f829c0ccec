#!/usr/bin/env node
// A Node `ws` server for twspy's client to talk to (interop/run.py starts it).
//
//   node node_echo.js --port 0 --deflate off|default|tuned [--max-payload BYTES]
//
// Prints one JSON line {"port": N, "ws": "<version>", "node": "<version>"} on stdout once
// listening on 127.0.0.1, then serves until stdin closes or SIGTERM. What a connection
// gets depends on its path (query parameters in brackets):
//
//   /echo              every message back as it came (text stays text, binary stays binary)
//   /close[code,reason] closes at once with that code and reason (no code: an empty close frame)
//   /ping[payload]     sends a ping (payload in hex), then a text "pong:<hex>" once the pong
//                      arrives; echoes afterwards
//   /fragments         sends fragmented messages (fin: false), then the text "done"
//   /send[size,type]   sends one message of `size` bytes (type text or binary), then echoes
//   /badutf8           sends a text frame that is not UTF-8
//   /report[of]        sends a JSON text: what the server saw on the connection opened with
//                      ?id=<of> (close code and reason received, pongs, pings, extensions), then
//                      closes with 1000 (add ?id=NAME to any other path to be reported on)
'use strict';

const crypto = require('crypto');
const { WebSocketServer } = require('ws');

function arg(name, fallback) {
  const i = process.argv.indexOf('--' + name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const DEFLATE = {
  off: false,
  default: true,
  // every message compressed, no context takeover either way, small windows
  tuned: {
    threshold: 0,
    serverNoContextTakeover: true,
    clientNoContextTakeover: true,
    serverMaxWindowBits: 9,
    clientMaxWindowBits: 9,
  },
};

const deflateName = arg('deflate', 'default');
if (!(deflateName in DEFLATE)) {
  console.error('unknown --deflate ' + deflateName);
  process.exit(2);
}
const maxPayload = parseInt(arg('max-payload', String(64 << 20)), 10);

const seen = new Map(); // id -> {close: [code, reason], pongs: [hex...], extensions}

// Text of exactly `size` UTF-8 bytes mixing 1-, 2-, 3- and 4-byte characters.
function makeText(size) {
  const unit = 'aé€😀'; // 1 + 2 + 3 + 4 = 10 bytes
  const text = unit.repeat(Math.floor(size / 10));
  return text + 'x'.repeat(size - Buffer.byteLength(text));
}

// Send `parts` (Buffers) as the fragments of one message, with an optional ping between them.
function sendFragments(ws, parts, binary, pingBetween) {
  parts.forEach((part, i) => {
    const fin = i === parts.length - 1;
    ws.send(part, { binary, fin });
    if (pingBetween && !fin) ws.ping(Buffer.from('between ' + i));
  });
}

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port: parseInt(arg('port', '0'), 10),
  perMessageDeflate: DEFLATE[deflateName],
  maxPayload,
});

wss.on('connection', (ws, req) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  const id = url.searchParams.get('id');
  const record = { close: null, pongs: [], pings: 0, extensions: req.headers['sec-websocket-extensions'] || '',
    negotiated: Object.keys(ws._extensions || {}) };
  if (id) seen.set(id, record);
  ws.on('error', (err) => { record.error = String(err && err.message); });
  ws.on('close', (code, reason) => { record.close = [code, reason.toString()]; });
  ws.on('pong', (data) => { record.pongs.push(data.toString('hex')); });
  ws.on('ping', () => { record.pings += 1; });
  const echo = () => ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));

  switch (url.pathname) {
    case '/echo':
    case '/':
      echo();
      break;
    case '/close':
      if (url.searchParams.has('code')) {
        ws.close(parseInt(url.searchParams.get('code'), 10), url.searchParams.get('reason') || '');
      } else {
        ws.close(); // a close frame without a body
      }
      break;
    case '/ping': {
      const payload = Buffer.from(url.searchParams.get('payload') || '', 'hex');
      ws.once('pong', (data) => ws.send('pong:' + data.toString('hex')));
      ws.ping(payload);
      echo();
      break;
    }
    case '/fragments': {
      // 1. text split inside multi-byte characters, with an empty fragment in the middle
      const text = Buffer.from('κόσμε € 😀 fragmented text');
      sendFragments(ws, [text.subarray(0, 1), text.subarray(1, 4), Buffer.alloc(0), text.subarray(4, 17),
        text.subarray(17)], false, false);
      // 2. 1 MiB of random binary in 16 fragments of 64 KiB, a ping between each
      const big = crypto.randomBytes(1 << 20);
      const parts = [];
      for (let i = 0; i < big.length; i += 65536) parts.push(big.subarray(i, i + 65536));
      sendFragments(ws, parts, true, true);
      // 3. 1000 fragments of one byte
      const small = Buffer.from(makeText(1000));
      sendFragments(ws, Array.from(small, (b) => Buffer.from([b])), false, false);
      ws.send('sha256:' + crypto.createHash('sha256').update(big).digest('hex'));
      ws.send('done');
      echo();
      break;
    }
    case '/send': {
      const size = parseInt(url.searchParams.get('size') || '0', 10);
      if (url.searchParams.get('type') === 'text') ws.send(makeText(size));
      else ws.send(Buffer.alloc(size, 0x61), { binary: true });
      echo();
      break;
    }
    case '/badutf8':
      ws.send(Buffer.from([0x68, 0x69, 0xff, 0xfe]), { binary: false });
      break;
    case '/report': {
      const other = seen.get(url.searchParams.get('of')) || null;
      ws.send(JSON.stringify(other), () => ws.close(1000));
      break;
    }
    default:
      ws.close(4404, 'no such path');
  }
});

wss.on('listening', () => {
  const version = require('ws/package.json').version;
  process.stdout.write(JSON.stringify({ port: wss.address().port, ws: version, node: process.version,
    deflate: deflateName }) + '\n');
});

function stop() {
  for (const ws of wss.clients) ws.terminate();
  wss.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.resume();
