#!/usr/bin/env node
// A Node `ws` client checking a twspy echo server (interop/run.py starts both).
//
//   node node_client.js ws://127.0.0.1:PORT/ --deflate off|default|tuned|window8 --max-size BYTES
//                       [--ca CERT.pem] [--keepalive SECONDS] [--only SUBSTRING]
//
// The server must be `python -m twspy echo --max-size BYTES --subprotocol chat`, with
// --no-compression for `--deflate off`; for wss:// URLs, --ca names the certificate to trust
// (the test one in test/certs). Every check runs on a connection of its own and prints one JSON line
// {"name", "ok", "detail", "ms"}; the last line is {"summary": {"passed", "failed"}}.
// Exit status: 0 all passed, 1 a check failed, 2 bad usage.
'use strict';

const crypto = require('crypto');
const WebSocket = require('ws');

function arg(name, fallback) {
  const i = process.argv.indexOf('--' + name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const url = process.argv[2];
if (!url || !url.startsWith('ws')) {
  console.error('usage: node node_client.js ws://127.0.0.1:PORT/ --deflate off|default|tuned|window8 --max-size N [--ca F]');
  process.exit(2);
}
const deflateName = arg('deflate', 'default');
const MAX = parseInt(arg('max-size', String(16 << 20)), 10);
const only = arg('only', '');
const ca = arg('ca', '');
const tlsOptions = ca ? { ca: require('fs').readFileSync(ca) } : {};
const DEFLATE = {
  off: false,
  default: true, // ws's offer: permessage-deflate; client_max_window_bits
  tuned: {
    threshold: 0,
    serverNoContextTakeover: true,
    clientNoContextTakeover: true,
    serverMaxWindowBits: 9,
    clientMaxWindowBits: 9,
  },
  // the smallest windows RFC 7692 allows (raw deflate with 8 is really 9 in zlib >= 1.2.9;
  // twspy says so and compresses with 9), with context takeover
  window8: { threshold: 0, serverMaxWindowBits: 8, clientMaxWindowBits: 8 },
};
if (!(deflateName in DEFLATE)) {
  console.error('unknown --deflate ' + deflateName);
  process.exit(2);
}
const MiB = 1 << 20;
const SIZES = [0, 1, 125, 126, 127, 65535, 65536, 65537, MiB, 4 * MiB, 16 * MiB].filter((n) => n <= MAX);

// Text of exactly `size` UTF-8 bytes mixing 1-, 2-, 3- and 4-byte characters.
function makeText(size) {
  const unit = 'aé€😀'; // 1 + 2 + 3 + 4 = 10 bytes
  const text = unit.repeat(Math.floor(size / 10));
  return text + 'x'.repeat(size - Buffer.byteLength(text));
}

// A connection with a message queue: `next()` resolves with the next message, `closed` with
// {code, reason} once the connection is closed.
function open(path = '', options = {}, protocols = []) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url + path, protocols, { perMessageDeflate: DEFLATE[deflateName], maxPayload: 256 * MiB,
      ...tlsOptions, ...options });
    const queue = [];
    const waiting = [];
    let closeInfo = null;
    const peer = { ws, pongs: [], errors: [], response: null };
    ws.on('upgrade', (res) => { peer.response = res.headers['sec-websocket-extensions'] || ''; });
    peer.closed = new Promise((done) => {
      ws.on('close', (code, reason) => {
        closeInfo = { code, reason: reason.toString() };
        for (const w of waiting.splice(0)) w.reject(new Error('closed ' + code + ' ' + closeInfo.reason));
        done(closeInfo);
      });
    });
    peer.next = (timeout = 30000) => new Promise((res, rej) => {
      if (queue.length) return res(queue.shift());
      if (closeInfo) return rej(new Error('closed ' + closeInfo.code + ' ' + closeInfo.reason));
      const timer = setTimeout(() => rej(new Error('no message within ' + timeout + ' ms')), timeout);
      waiting.push({ resolve: (m) => { clearTimeout(timer); res(m); }, reject: (e) => { clearTimeout(timer); rej(e); } });
    });
    ws.on('message', (data, isBinary) => {
      const m = { data, isBinary };
      if (waiting.length) waiting.shift().resolve(m); else queue.push(m);
    });
    ws.on('pong', (data) => peer.pongs.push(data));
    ws.on('error', (err) => { peer.errors.push(err.message); reject(err); });
    ws.on('open', () => resolve(peer));
  });
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([promise, new Promise((_, rej) => {
    timer = setTimeout(() => rej(new Error(what + ' within ' + ms + ' ms')), ms);
  })]).finally(() => clearTimeout(timer));
}

function check(cond, message) {
  if (!cond) throw new Error(message);
}

async function closeNormally(peer) {
  peer.ws.close(1000);
  const info = await withTimeout(peer.closed, 10000, 'no close');
  check(info.code === 1000, 'closing handshake: got ' + info.code);
}

async function roundTrip(peer, data, binary, options = {}) {
  peer.ws.send(data, { binary, ...options });
  const m = await peer.next(60000);
  check(m.isBinary === binary, 'type: sent ' + (binary ? 'binary' : 'text') + ', got ' + (m.isBinary ? 'binary' : 'text'));
  const sent = typeof data === 'string' ? Buffer.from(data) : data;
  check(Buffer.compare(m.data, sent) === 0, 'payload differs: sent ' + sent.length + ' B, got ' + m.data.length + ' B');
}

const checks = [];
const test = (name, fn) => checks.push({ name, fn });

test('handshake: extensions', async () => {
  const peer = await open();
  const ext = peer.response;
  if (deflateName === 'off') {
    check(ext === '' && peer.ws.extensions === '', 'expected no extension, got ' + JSON.stringify(ext));
  } else {
    check(ext.startsWith('permessage-deflate') && peer.ws.extensions === 'permessage-deflate',
      'expected permessage-deflate, got ' + JSON.stringify(ext));
  }
  if (deflateName === 'window8') check(ext.includes('server_max_window_bits=8'), 'response: ' + ext);
  if (deflateName === 'tuned') {
    // client_max_window_bits=9 may be left out of the response: we offered to keep to 9 anyway
    for (const p of ['server_no_context_takeover', 'client_no_context_takeover', 'server_max_window_bits=9']) {
      check(ext.includes(p), 'response lacks ' + p + ': ' + ext);
    }
  }
  await closeNormally(peer);
  return 'Sec-WebSocket-Extensions: ' + JSON.stringify(ext);
});

test('subprotocol: offers other and chat, twspy echo --subprotocol chat picks chat', async () => {
  const peer = await open('', {}, ['other', 'chat']);
  check(peer.ws.protocol === 'chat', 'protocol ' + JSON.stringify(peer.ws.protocol));
  await roundTrip(peer, 'hello', false);
  await closeNormally(peer);
  return 'protocol ' + JSON.stringify(peer.ws.protocol);
});

for (const size of SIZES) {
  test('text ' + size + ' B', async () => {
    const peer = await open();
    await roundTrip(peer, makeText(size), false);
    await closeNormally(peer);
  });
  // Compressed random data is larger than the data (up to ~2.5 % with small windows): at
  // max-size the frame on the wire exceeds the limit, which twspy documents as 1009 (checked
  // below). Stay 1 MiB below.
  const rsize = size === MAX && deflateName !== 'off' ? size - MiB : size;
  test('binary ' + rsize + ' B (random)', async () => {
    const peer = await open();
    await roundTrip(peer, crypto.randomBytes(rsize), true);
    await closeNormally(peer);
  });
}

if (deflateName !== 'off') {
  // The message is max-size B, its compressed frame a little more. twspy's sans-I/O core
  // (twspy.protocol: the asyncio layer, and the threaded one once it runs on it) buffers a
  // compressed frame up to max-size + 1/256 + 64 B and judges the message on its inflated
  // size: echoed. The threaded layer before it refused the frame itself (1009 "frame of ...").
  test('binary max-size B random, compressed frame > max-size: echoed (or 1009 "frame of")', async () => {
    const peer = await open();
    const data = crypto.randomBytes(MAX);
    peer.ws.send(data, { binary: true });
    let m;
    try {
      m = await peer.next(60000);
    } catch (err) {
      const info = await withTimeout(peer.closed, 30000, 'no close');
      check(info.code === 1009 && info.reason.startsWith('frame of '), 'expected the echo or 1009 "frame of ...", got ' +
        info.code + ' ' + JSON.stringify(info.reason));
      return 'closed ' + info.code + ' ' + JSON.stringify(info.reason);
    }
    check(m.isBinary && Buffer.compare(m.data, data) === 0, 'echo differs: got ' + m.data.length + ' B');
    await closeNormally(peer);
    return 'echoed';
  });
}

test('binary 1 MiB compressible, then 16 MiB of zeros', async () => {
  const peer = await open();
  await roundTrip(peer, Buffer.alloc(MiB, 0x41), true);
  if (MAX >= 16 * MiB) await roundTrip(peer, Buffer.alloc(16 * MiB), true);
  await closeNormally(peer);
});

test('100 messages back to back, sizes 0-2000 B, compressed and not', async () => {
  const peer = await open();
  const sent = [];
  for (let i = 0; i < 100; i++) {
    const binary = i % 3 === 0;
    const data = binary ? crypto.randomBytes((i * 37) % 2001) : makeText((i * 53) % 2001);
    sent.push(data);
    peer.ws.send(data, { binary, compress: i % 2 === 0 });
  }
  for (const data of sent) {
    const m = await peer.next();
    check(Buffer.compare(m.data, Buffer.from(data)) === 0, 'message ' + sent.indexOf(data) + ' differs');
  }
  await closeNormally(peer);
});

test('fragmented text, split inside UTF-8 characters, empty fragment', async () => {
  const peer = await open();
  const text = Buffer.from('κόσμε € 😀 fragmented');
  const parts = [text.subarray(0, 1), text.subarray(1, 4), Buffer.alloc(0), text.subarray(4, 17), text.subarray(17)];
  parts.forEach((p, i) => peer.ws.send(p, { binary: false, fin: i === parts.length - 1 }));
  const m = await peer.next();
  check(!m.isBinary && m.data.toString() === text.toString(), 'got ' + JSON.stringify(m.data.toString()));
  await closeNormally(peer);
});

test('fragmented binary 4 MiB in 64 KiB fragments, pings in between', async () => {
  const peer = await open();
  const data = crypto.randomBytes(4 * MiB);
  for (let i = 0; i < data.length; i += 65536) {
    const fin = i + 65536 >= data.length;
    peer.ws.send(data.subarray(i, i + 65536), { binary: true, fin });
    if (!fin) peer.ws.ping(Buffer.from('p' + i));
  }
  const m = await peer.next(60000);
  check(m.isBinary && Buffer.compare(m.data, data) === 0, 'payload differs (' + m.data.length + ' B)');
  check(peer.pongs.length === 63, 'expected 63 pongs, got ' + peer.pongs.length);
  check(peer.pongs.every((p, k) => p.toString() === 'p' + k * 65536), 'pong payloads out of order');
  await closeNormally(peer);
  return '63 pongs, in order';
});

test('fragmented text of 1000 one-byte fragments', async () => {
  const peer = await open();
  const text = Buffer.from(makeText(1000));
  for (let i = 0; i < text.length; i++) peer.ws.send(text.subarray(i, i + 1), { binary: false, fin: i === text.length - 1 });
  const m = await peer.next();
  check(!m.isBinary && Buffer.compare(m.data, text) === 0, 'payload differs');
  await closeNormally(peer);
});

test('ping 0 B and 125 B, unsolicited pong', async () => {
  const peer = await open();
  peer.ws.pong(Buffer.from('unsolicited'));
  peer.ws.ping();
  peer.ws.ping(Buffer.alloc(125, 0x7a));
  await roundTrip(peer, 'after pings', false); // the echo comes after both pongs
  check(peer.pongs.length === 2, 'expected 2 pongs, got ' + peer.pongs.length);
  check(peer.pongs[0].length === 0, 'first pong not empty');
  check(peer.pongs[1].equals(Buffer.alloc(125, 0x7a)), 'second pong payload differs');
  await closeNormally(peer);
});

const CLOSES = [
  [undefined, undefined, 1005, ''], // empty close frame: twspy echoes an empty one
  [1000, undefined, 1000, ''],
  [1001, 'going away', 1001, ''],
  [4000, 'bye', 4000, ''],
  [3000, 'é'.repeat(61) + 'x', 3000, ''], // 123-byte reason, the maximum
  [4999, '', 4999, ''],
];
for (const [code, reason, expected] of CLOSES) {
  test('client closes with ' + (code === undefined ? 'no code' : code) + (reason ? ' + reason' : ''), async () => {
    const peer = await open();
    peer.ws.close(code, reason);
    const info = await withTimeout(peer.closed, 10000, 'no close');
    check(info.code === expected, 'expected ' + expected + ', got ' + info.code + ' ' + JSON.stringify(info.reason));
    return 'server answered ' + info.code + ' ' + JSON.stringify(info.reason);
  });
}

test('close(4000) right after sending 4 MiB: echo then close arrive', async () => {
  const peer = await open();
  const data = crypto.randomBytes(4 * MiB);
  peer.ws.send(data);
  peer.ws.close(4000, 'after data');
  const info = await withTimeout(peer.closed, 30000, 'no close');
  check(info.code === 4000, 'close code ' + info.code);
  const m = await peer.next(1000).catch(() => null);
  check(m && Buffer.compare(m.data, data) === 0, 'the echo did not arrive before the close');
  return 'echo received while closing, then close ' + info.code;
});

test('oversized message (max-size + 1 B) -> 1009', async () => {
  const peer = await open();
  peer.ws.send(Buffer.alloc(MAX + 1, 0x42), { binary: true, compress: false });
  const info = await withTimeout(peer.closed, 30000, 'no close');
  check(info.code === 1009, 'expected 1009, got ' + info.code);
  return 'closed ' + info.code + ' ' + JSON.stringify(info.reason);
});

if (deflateName !== 'off') {
  test('compressed message inflating past max-size -> 1009', async () => {
    const peer = await open();
    peer.ws.send(Buffer.alloc(MAX + 1), { binary: true, compress: true });
    const info = await withTimeout(peer.closed, 30000, 'no close');
    check(info.code === 1009, 'expected 1009, got ' + info.code);
    return 'closed ' + info.code + ' ' + JSON.stringify(info.reason);
  });
}

test('fragmented message over max-size -> 1009', async () => {
  const peer = await open();
  const chunk = Buffer.alloc(MiB, 0x43);
  const n = Math.floor(MAX / MiB) + 1;
  for (let i = 0; i < n; i++) peer.ws.send(chunk, { binary: true, fin: i === n - 1, compress: false });
  const info = await withTimeout(peer.closed, 30000, 'no close');
  check(info.code === 1009, 'expected 1009, got ' + info.code);
  return 'closed ' + info.code;
});

test('invalid UTF-8 in a text message -> 1007', async () => {
  const peer = await open();
  peer.ws.send(Buffer.from([0x68, 0x69, 0xc3, 0x28]), { binary: false });
  const info = await withTimeout(peer.closed, 10000, 'no close');
  check(info.code === 1007, 'expected 1007, got ' + info.code);
  return 'closed ' + info.code + ' ' + JSON.stringify(info.reason);
});

// --keepalive SECONDS: meanwhile, one connection stays idle that long; twspy echo pings every
// 20 s (its keepalive), ws answers, and the connection must still echo afterwards.
const keepalive = parseFloat(arg('keepalive', '0'));
async function idleCheck() {
  const peer = await open();
  const pings = [];
  peer.ws.on('ping', (data) => pings.push(data));
  await new Promise((done) => setTimeout(done, keepalive * 1000));
  check(pings.length >= 1, 'no ping from twspy in ' + keepalive + ' s');
  await roundTrip(peer, 'still there?', false);
  await closeNormally(peer);
  return pings.length + ' keepalive ping(s) from twspy answered; the connection still echoes';
}

async function main() {
  let passed = 0;
  let failed = 0;
  if (keepalive > 0) {
    const start = Date.now();
    const idle = idleCheck().then((detail) => ({ ok: true, detail }), (err) => ({ ok: false, detail: String(err.message) }));
    checks.push({ name: 'keepalive: idle ' + keepalive + ' s', fn: async () => {
      const r = await idle;
      if (!r.ok) throw new Error(r.detail);
      return r.detail + ' (' + Math.round((Date.now() - start) / 1000) + ' s)';
    } });
  }
  for (const { name, fn } of checks) {
    if (only && !name.includes(only)) continue;
    const start = Date.now();
    let ok = true;
    let detail = '';
    try {
      detail = (await withTimeout(fn(), 120000, 'check did not finish')) || '';
    } catch (err) {
      ok = false;
      detail = String(err && err.message ? err.message : err);
    }
    if (ok) passed++; else failed++;
    process.stdout.write(JSON.stringify({ name, ok, detail, ms: Date.now() - start }) + '\n');
  }
  process.stdout.write(JSON.stringify({ summary: { passed, failed, ws: require('ws/package.json').version,
    node: process.version } }) + '\n');
  process.exit(failed ? 1 : 0);
}

main();
