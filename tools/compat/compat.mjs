#!/usr/bin/env node
// Compatibility checks of the two most used Node.js Redis clients, node-redis
// (`redis`) and `ioredis`, against a running `vlmdb serve`.
//
//   node tools/compat/compat.mjs PORT [HOST] [--resp 2|3] [--verbose]
//
// Every check goes through the library's normal API (sendCommand / call for
// vlmdb's own commands). Prints a Markdown table (rows: checks; columns:
// libraries; cells "ok" or "FAIL: reason") and exits 1 if any check failed.
// Each library writes its own keys (prefix "nr:" / "io:"), so both run
// against the same fresh database. tools/compat/run.sh starts the server.
// Both libraries negotiate RESP3 (HELLO 3) by default; --resp 2 makes both
// speak RESP2 instead (node-redis `RESP: 2`, ioredis `protocol: 2`).
// --verbose prints what the server answered in the interesting places.

import { createRequire } from 'node:module';
import { createClient } from 'redis';
import Redis from 'ioredis';

const require = createRequire(import.meta.url);
const VERSIONS = {
	'node-redis': require('redis/package.json').version,
	ioredis: require('ioredis/package.json').version,
};

const argv = process.argv.slice(2);
let RESP = null, VERBOSE = false;
const pos = [];
for (let i = 0; i < argv.length; i++) {
	if (argv[i] === '--resp') RESP = Number(argv[++i]);
	else if (argv[i] === '--verbose') VERBOSE = true;
	else pos.push(argv[i]);
}
const PORT = Number(pos[0]);
const HOST = pos[1] || '127.0.0.1';
if (!Number.isInteger(PORT) || PORT <= 0 || PORT > 65535 || (RESP !== null && RESP !== 2 && RESP !== 3)) {
	console.error('usage: node compat.mjs PORT [HOST] [--resp 2|3] [--verbose]');
	process.exit(2);
}
const note = (lib, what, v) => { if (VERBOSE) console.error(`[${lib.name}] ${what}: ${typeof v === 'string' ? v : show(v, 400)}`); };
const CHECK_TIMEOUT_MS = 15000;

// ---- helpers -------------------------------------------------------------

class CheckError extends Error {}
function expect(cond, msg) {
	if (!cond) throw new CheckError(msg);
}
function show(v, max = 60) {
	if (Buffer.isBuffer(v)) return `<${v.length} bytes>`;
	if (v instanceof Map) v = Object.fromEntries(v);
	let s;
	try {
		s = JSON.stringify(v, (k, x) =>
			x && x.type === 'Buffer' && Array.isArray(x.data) ? `<${x.data.length} bytes>` : x);
	} catch {
		s = String(v);
	}
	if (s === undefined) s = String(v);
	return s.length > max ? s.slice(0, max - 3) + '...' : s;
}
const str = (v) => (Buffer.isBuffer(v) ? v.toString('utf8') : v == null ? v : String(v));

// A reply that is a map (RESP3 -> object or Map) or a flat [field, value, ...]
// array (RESP2) -> Map of field (string) -> value.
function fields(reply) {
	if (reply instanceof Map) return new Map([...reply].map(([k, v]) => [str(k), v]));
	if (Array.isArray(reply)) {
		expect(reply.length % 2 === 0, `odd-length field array ${show(reply)}`);
		const m = new Map();
		for (let i = 0; i < reply.length; i += 2) m.set(str(reply[i]), reply[i + 1]);
		return m;
	}
	if (reply && typeof reply === 'object') return new Map(Object.entries(reply));
	throw new CheckError(`expected a map, got ${show(reply)}`);
}

// SEARCH reply -> [[key, Map(score, field...)], ...] best first.
// RESP2: array of [key, score, field, value, ...] per hit; RESP3: map
// key -> map (node-redis: object or Map; ioredis's default "legacy" mapping
// of RESP3 maps: flat [key, [score, s, field, value ...], key, ...]).
function hits(reply) {
	if (Array.isArray(reply) && reply.length && !Array.isArray(reply[0])) {
		expect(reply.length % 2 === 0, `odd-length map reply ${show(reply)}`);
		const out = [];
		for (let i = 0; i < reply.length; i += 2) out.push([str(reply[i]), fields(reply[i + 1])]);
		return out;
	}
	if (Array.isArray(reply)) {
		return reply.map((h) => {
			expect(Array.isArray(h) && h.length >= 2, `bad hit ${show(h)}`);
			const m = fields(h.slice(2));
			m.set('score', h[1]);
			return [str(h[0]), m];
		});
	}
	if (reply instanceof Map) return [...reply].map(([k, v]) => [str(k), fields(v)]);
	if (reply && typeof reply === 'object')
		return Object.entries(reply).map(([k, v]) => [k, fields(v)]);
	throw new CheckError(`expected search hits, got ${show(reply)}`);
}

// INFO text -> { section: { field: value } } (section names lower case).
function parseInfo(text) {
	text = str(text);
	expect(typeof text === 'string', `INFO is not text: ${show(text)}`);
	const out = {};
	let sec = out.default = {};
	for (const raw of text.split(/\r?\n/)) {
		const line = raw.trim();
		if (!line) continue;
		if (line.startsWith('#')) {
			sec = out[line.slice(1).trim().toLowerCase()] = {};
			continue;
		}
		const i = line.indexOf(':');
		expect(i > 0, `INFO line without ':': ${show(line)}`);
		sec[line.slice(0, i)] = line.slice(i + 1);
	}
	return out;
}

// A deterministic vector of `dim` float32 (little-endian) bytes; different
// seeds give clearly different directions.
function vec(dim, seed) {
	const b = Buffer.alloc(dim * 4);
	for (let i = 0; i < dim; i++)
		b.writeFloatLE(Math.sin((i + 1) * (seed * 0.7131 + 0.3)) + (i % (seed + 2) === 0 ? 0.5 : 0), i * 4);
	return b;
}
const zeros = (dim) => Buffer.alloc(dim * 4);

function errText(e) {
	let m = e && (e.message || String(e));
	if (!m) m = String(e);
	if (e && e.name === 'AggregateError' && e.errors?.length) m = e.errors.map(errText).join('; ');
	return m.split('\n')[0];
}

function withTimeout(p, ms, what) {
	let t;
	return Promise.race([
		p.finally(() => clearTimeout(t)),
		new Promise((_, rej) => { t = setTimeout(() => rej(new CheckError(`${what}: no reply in ${ms / 1000} s`)), ms); }),
	]);
}

// ---- the two libraries behind one small interface -------------------------
// cmd(args): one command (sendCommand / call); multi(cmds): MULTI/EXEC of
// cmds through the library's transaction API -> array of replies (throws the
// library's error); pipeline(cmds): non-transactional pipeline -> replies;
// scan(match, count): keys through the library's iterator; info(); setName;
// getName.

function nodeRedis() {
	let client;
	const lib = {
		name: 'node-redis',
		prefix: 'nr:',
		async connect() {
			client = createClient({
				socket: { host: HOST, port: PORT, reconnectStrategy: false, connectTimeout: 5000 },
				...(RESP ? { RESP } : {}),
			});
			client.on('error', (e) => { lib.lastError = e; });
			await client.connect();
			return client.ping();
		},
		cmd: (args) => client.sendCommand(args),
		async multi(cmds) {
			let m = client.multi();
			for (const c of cmds) m = m.addCommand(c);
			return m.exec();
		},
		async pipeline(cmds) {
			let m = client.multi();
			for (const c of cmds) m = m.addCommand(c);
			return m.execAsPipeline();
		},
		async scan(match, count) {
			const keys = [];
			// v5+: yields arrays of keys (one per SCAN reply); v4: single keys.
			for await (const k of client.scanIterator({ MATCH: match, COUNT: count }))
				Array.isArray(k) ? keys.push(...k) : keys.push(k);
			return keys.map(str);
		},
		info: () => client.info(),
		setName: (n) => client.clientSetName(n),
		getName: () => client.clientGetName(),
		async close() {
			if (!client) return;
			try {
				if (client.isOpen) await (client.close ? client.close() : client.quit());
			} catch {
				try { client.destroy ? client.destroy() : client.disconnect(); } catch {}
			}
		},
	};
	return lib;
}

function ioRedis() {
	let redis;
	const lib = {
		name: 'ioredis',
		prefix: 'io:',
		async connect() {
			redis = new Redis({
				host: HOST, port: PORT, lazyConnect: true, connectTimeout: 5000,
				maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false,
				...(RESP ? { protocol: RESP } : {}),
			});
			redis.on('error', (e) => { lib.lastError = e; });
			await redis.connect();
			return redis.ping();
		},
		cmd: ([name, ...args]) => redis.call(name, ...args),
		async multi(cmds) {
			let m = redis.multi();
			for (const [name, ...args] of cmds) m = m.call(name, ...args);
			const res = await m.exec();
			expect(Array.isArray(res), `exec() gave ${show(res)}`);
			// ioredis: [[err, reply], ...]
			return res.map(([err, r]) => { if (err) throw err; return r; });
		},
		async pipeline(cmds) {
			let p = redis.pipeline();
			for (const [name, ...args] of cmds) p = p.call(name, ...args);
			const res = await p.exec();
			return res.map(([err, r]) => (err ? err : r));
		},
		scan(match, count) {
			return new Promise((resolve, reject) => {
				const keys = [];
				redis.scanStream({ match, count })
					.on('data', (batch) => keys.push(...batch.map(str)))
					.on('error', reject)
					.on('end', () => resolve(keys));
			});
		},
		info: () => redis.info(),
		setName: (n) => redis.client('SETNAME', n),
		getName: () => redis.client('GETNAME'),
		async close() {
			if (!redis) return;
			try {
				if (redis.status === 'ready') await redis.quit();
				else redis.disconnect();
			} catch {
				redis.disconnect();
			}
		},
	};
	return lib;
}

// ---- the checks ----------------------------------------------------------

async function dimOf(lib) {
	if (lib.dim) return lib.dim;
	const info = parseInfo(await lib.cmd(['INFO', 'db']));
	const all = Object.assign({}, ...Object.values(info));
	const dim = Number(all.dim);
	expect(Number.isInteger(dim) && dim > 0, `no dim: line in INFO db (${show(all)})`);
	return (lib.dim = dim);
}

const CHECKS = [
	['connect + PING', async (lib) => {
		const r = await lib.connect();
		expect(str(r) === 'PONG', `PING answered ${show(r)}`);
		// Which protocol the library negotiated by default (for the header).
		try {
			const m = /(?:^|\s)resp=(\d)/.exec(str(await lib.cmd(['CLIENT', 'INFO'])));
			if (m) lib.resp = 'RESP' + m[1];
		} catch {}
	}],

	['ADD (TEXTVEC bytes, TEXT, META)', async (lib) => {
		const dim = await dimOf(lib);
		const k = lib.prefix + 'item';
		const r = await lib.cmd(['ADD', k, 'TEXTVEC', vec(dim, 1), 'TEXT', 'a red car in the rain', 'META', '{"cat":"x"}']);
		expect(Number(r) === 1, `ADD answered ${show(r)}, expected 1`);
	}],

	['GET returns the fields', async (lib) => {
		const k = lib.prefix + 'item';
		const r = await lib.cmd(['GET', k]);
		expect(r != null, 'GET answered null');
		note(lib, 'GET', r);
		const f = fields(r);
		for (const name of ['key', 'caption', 'source', 'meta'])
			expect(f.has(name), `no '${name}' in ${show([...f.keys()])}`);
		expect(str(f.get('key')) === k, `key = ${show(f.get('key'))}`);
		expect(str(f.get('caption')) === 'a red car in the rain', `caption = ${show(f.get('caption'))}`);
		let meta;
		try { meta = JSON.parse(str(f.get('meta'))); } catch { throw new CheckError(`meta is not JSON: ${show(f.get('meta'))}`); }
		expect(meta && meta.cat === 'x', `meta = ${show(f.get('meta'))}`);
	}],

	['SEARCH VECTOR ... K 3 RETURN 1 caption', async (lib) => {
		const dim = await dimOf(lib);
		const k = lib.prefix + 'item';
		// Two other items so the order means something.
		for (const [key, seed] of [['decoy1', 2], ['decoy2', 3]]) {
			const r = await lib.cmd(['UPSERT', lib.prefix + key, 'TEXTVEC', vec(dim, seed), 'TEXT', key]);
			expect(Number(r) === 1, `UPSERT ${key} answered ${show(r)}`);
		}
		const sr = await lib.cmd(['SEARCH', 'VECTOR', vec(dim, 1), 'K', '3', 'RETURN', '1', 'caption']);
		note(lib, 'SEARCH', sr);
		const h = hits(sr);
		expect(h.length >= 1 && h.length <= 3, `${h.length} hits`);
		expect(h[0][0] === k, `first hit is ${show(h[0][0])} (hits: ${show(h.map((x) => x[0]))})`);
		expect(str(h[0][1].get('caption')) === 'a red car in the rain', `caption = ${show(h[0][1].get('caption'))}`);
		const score = Number(str(h[0][1].get('score')));
		expect(Math.abs(score - 1) < 1e-3, `score of the same vector = ${show(h[0][1].get('score'))}`);
	}],

	['EXISTS / DEL', async (lib) => {
		const k = lib.prefix + 'item';
		const missing = lib.prefix + 'missing';
		let r = await lib.cmd(['EXISTS', k, missing]);
		expect(Number(r) === 1, `EXISTS k missing answered ${show(r)}, expected 1`);
		r = await lib.cmd(['DEL', k, missing]);
		expect(Number(r) === 1, `DEL answered ${show(r)}, expected 1`);
		r = await lib.cmd(['EXISTS', k]);
		expect(Number(r) === 0, `EXISTS after DEL answered ${show(r)}`);
		r = await lib.cmd(['GET', k]);
		expect(r == null, `GET after DEL answered ${show(r)}`);
	}],

	['MULTI/EXEC: 2 UPSERT + DEL', async (lib) => {
		const dim = await dimOf(lib);
		const [a, b, c] = ['tx:a', 'tx:b', 'tx:c'].map((s) => lib.prefix + s);
		let r = await lib.cmd(['ADD', c, 'TEXTVEC', vec(dim, 4), 'TEXT', 'to be deleted']);
		expect(Number(r) === 1, `ADD ${c} answered ${show(r)}`);
		r = await lib.multi([
			['UPSERT', a, 'TEXTVEC', vec(dim, 5), 'TEXT', 'tx a'],
			['UPSERT', b, 'TEXTVEC', vec(dim, 6), 'TEXT', 'tx b', 'META', '{"cat":"y"}'],
			['DEL', c],
		]);
		expect(Array.isArray(r) && r.length === 3 && r.every((x) => Number(x) === 1),
			`EXEC replies ${show(r)}, expected [1,1,1]`);
		r = await lib.cmd(['EXISTS', a, b]);
		expect(Number(r) === 2, `EXISTS a b after EXEC answered ${show(r)}`);
		r = await lib.cmd(['EXISTS', c]);
		expect(Number(r) === 0, `EXISTS c (deleted in the transaction) answered ${show(r)}`);
		const f = fields(await lib.cmd(['GET', b]));
		expect(str(f.get('caption')) === 'tx b', `caption of b = ${show(f.get('caption'))}`);
	}],

	['MULTI/EXEC refused at EXEC -> EXECABORT', async (lib) => {
		const dim = await dimOf(lib);
		const [a, b] = ['abort:a', 'abort:b'].map((s) => lib.prefix + s);
		let err = null, res;
		try {
			res = await lib.multi([
				['UPSERT', a, 'TEXTVEC', vec(dim, 7), 'TEXT', 'fine'],
				['UPSERT', b, 'TEXTVEC', zeros(dim), 'TEXT', 'zero vector'],
			]);
		} catch (e) {
			err = e;
		}
		note(lib, 'aborted EXEC', err ? `${err.constructor?.name}: ${errText(err)}` : res);
		expect(err, `no error; EXEC replies ${show(res)}`);
		expect(/EXECABORT/.test(errText(err)), `error without EXECABORT: ${errText(err)}`);
		const r = await lib.cmd(['EXISTS', a, b]);
		expect(Number(r) === 0, `EXISTS a b after the abort answered ${show(r)} (partial write)`);
		// The connection is usable after the aborted transaction.
		const p = await lib.cmd(['PING']);
		expect(str(p) === 'PONG', `PING after the abort answered ${show(p)}`);
	}],

	['SCAN iterator finds the keys', async (lib) => {
		const dim = await dimOf(lib);
		const want = [];
		for (let i = 0; i < 7; i++) {
			const k = `${lib.prefix}scan:${i}`;
			const r = await lib.cmd(['ADD', k, 'TEXTVEC', vec(dim, 10 + i)]);
			expect(Number(r) === 1, `ADD ${k} answered ${show(r)}`);
			want.push(k);
		}
		// COUNT 3: several SCAN calls, so the cursor is followed.
		const got = await lib.scan(`${lib.prefix}scan:*`, 3);
		const dup = got.filter((k, i) => got.indexOf(k) !== i);
		expect(dup.length === 0, `keys returned twice: ${show(dup)}`);
		const missing = want.filter((k) => !got.includes(k));
		expect(missing.length === 0, `missing ${show(missing)} (got ${show(got)})`);
		const extra = got.filter((k) => !want.includes(k));
		expect(extra.length === 0, `MATCH let through ${show(extra)}`);
		// The transaction's keys, unfiltered scan.
		const all = await lib.scan('*', 10);
		for (const k of ['tx:a', 'tx:b'].map((s) => lib.prefix + s))
			expect(all.includes(k), `SCAN * misses ${k}`);
	}],

	['pipeline of 100 ADD, then DBSIZE', async (lib) => {
		const dim = await dimOf(lib);
		const before = Number(await lib.cmd(['DBSIZE']));
		expect(Number.isInteger(before), `DBSIZE answered ${show(before)}`);
		const cmds = [];
		for (let i = 0; i < 100; i++)
			cmds.push(['ADD', `${lib.prefix}pipe:${i}`, 'TEXTVEC', vec(dim, 100 + i), 'TEXT', `item ${i}`]);
		const r = await lib.pipeline(cmds);
		expect(Array.isArray(r) && r.length === 100, `pipeline gave ${show(r)}`);
		const bad = r.findIndex((x) => Number(x) !== 1);
		expect(bad < 0, `reply ${bad} = ${show(r[bad] instanceof Error ? errText(r[bad]) : r[bad])}`);
		const after = Number(await lib.cmd(['DBSIZE']));
		expect(after === before + 100, `DBSIZE ${before} -> ${after}, expected +100`);
		const count = Number(await lib.cmd(['COUNT']));
		expect(count === after, `COUNT ${count} != DBSIZE ${after}`);
	}],

	['INFO parses; CLIENT SETNAME/GETNAME', async (lib) => {
		const text = await lib.info();
		note(lib, 'info() sections', (str(text) || '').split(/\r?\n/).filter((l) => l.startsWith('#')).join(' '));
		const info = parseInfo(text);
		const all = Object.assign({}, ...Object.values(info));
		expect(info.server, `no # Server section (sections: ${show(Object.keys(info))})`);
		expect(Number(all.dim) === lib.dim, `dim in info() = ${show(all.dim)}`);
		const ks = all.db0;
		expect(ks && /keys=\d+/.test(ks), `db0 line = ${show(ks)}`);
		const name = `compat-${lib.name}`;
		const r = await lib.setName(name);
		expect(str(r) === 'OK' || r === true, `CLIENT SETNAME answered ${show(r)}`);
		const g = await lib.getName();
		expect(str(g) === name, `CLIENT GETNAME answered ${show(g)}`);
	}],
];

// ---- run -----------------------------------------------------------------

async function runLib(lib) {
	const results = [];
	let connected = false;
	for (const [name, fn] of CHECKS) {
		if (name !== CHECKS[0][0] && !connected) {
			results.push('FAIL: not connected');
			continue;
		}
		try {
			await withTimeout(Promise.resolve().then(() => fn(lib)), CHECK_TIMEOUT_MS, name);
			results.push('ok');
			if (name === CHECKS[0][0]) connected = true;
		} catch (e) {
			results.push('FAIL: ' + errText(e));
		}
	}
	await withTimeout(lib.close(), 5000, 'close').catch(() => {});
	return results;
}

const cell = (s) => s.replace(/\|/g, '\\|').replace(/\s+/g, ' ').slice(0, 160);

const libs = [nodeRedis(), ioRedis()];
const cols = [];
for (const lib of libs) cols.push(await runLib(lib));

const head = libs.map((l) => `${l.name} ${VERSIONS[l.name]}${l.resp ? ` (${l.resp})` : ''}`);
console.log(`| check | ${head.join(' | ')} |`);
console.log(`|---|${libs.map(() => '---').join('|')}|`);
CHECKS.forEach(([name], i) => {
	console.log(`| ${i + 1}. ${cell(name)} | ${cols.map((c) => cell(c[i])).join(' | ')} |`);
});
const failed = cols.flat().filter((c) => c !== 'ok').length;
if (failed) console.error(`compat: ${failed} check(s) failed`);
process.exit(failed ? 1 : 0);
