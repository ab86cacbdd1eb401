// console.test.mjs - vlmdb's web console in a real browser (make test-web).
//
// Builds a database of the repository's test images (tests/fixtures/images,
// 94 pictures in every format vlmdb reads, and one item without a picture,
// with captions and four declared fields), serves it with a password, and
// drives Debian's chromium headless through puppeteer-core: sign in (a
// wrong password first), search by text (the item without a picture shown
// as such, its thumbnail never asked for), move through the grid with the
// keyboard, filter (a quote in a string value), search by an uploaded
// image, provoke an API error, open an item,
// "more like this", ask "Why?" of a result (the server's heat map, and an
// item deleted meanwhile: its 404 shown), run eval and read its charts,
// then the same page at phone width.  Every answer the page shows is checked against the JSON
// API asked directly (the oracle), or against the catalog for filters.
// A screenshot of each state goes to the output directory.  The test fails
// on any console error, page error, failed request or HTTP status >= 400
// that it did not provoke itself.
//
// With --shots DIR --db DB it only takes the README's two screenshots of
// the console on an existing database (make console-shots).
//
// usage: node tests/web/console.test.mjs [--vlmdb build/vlmdb] [--out build/web]
//        node tests/web/console.test.mjs --shots docs --db data/demo.vlmdb
// environment: CHROMIUM (default /usr/bin/chromium)
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const args = parseArgs(process.argv.slice(2));
const VLMDB = path.resolve(ROOT, args.vlmdb || 'build/vlmdb');
const OUT = path.resolve(ROOT, args.out || 'build/web');
const MODEL = path.resolve(ROOT, args.model || 'models/default');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const IMAGES = path.join(ROOT, 'tests/fixtures/images');
const PASSWORD = 'console test secret';
const t0 = Date.now();

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z]+)$/.exec(argv[i]);
    if (!m || i + 1 >= argv.length)
      die(`bad argument ${argv[i]} (see the usage at the top of this file)`);
    out[m[1]] = argv[++i];
  }
  return out;
}

function die(msg) {
  console.error(`test-web: ${msg}`);
  process.exit(1);
}

function log(msg) {
  console.log(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(5)} s] ${msg}`);
}

function check(cond, msg) {
  if (!cond)
    throw new Error(`check failed: ${msg}`);
}

function sameList(got, want, what) {
  check(JSON.stringify(got) === JSON.stringify(want),
        `${what}\n  page: ${JSON.stringify(got)}\n  want: ${JSON.stringify(want)}`);
}

/* ---- the database ---- */

const AUTHORS = ['Tux', "O'Neil", 'Ada', 'Grace'];

/* One catalog row per test image: key, caption from the file name,
 * fields format (text), bytes (int), kib (real), author (text, one of them
 * with a quote). */
function makeCatalog(file) {
  const rows = [];
  const names = fs.readdirSync(IMAGES).filter((f) => !/\.(rgb|rgba|f32|json|md)$/.test(f)).sort();
  names.forEach((f, i) => {
    const ext = path.extname(f).slice(1);
    const bytes = fs.statSync(path.join(IMAGES, f)).size;
    rows.push({
      key: `fixtures/${f}`,
      image: path.join(IMAGES, f),
      text: `a ${ext} picture: ${path.basename(f, '.' + ext).replace(/_/g, ' ')}`,
      meta: { format: ext, bytes, kib: Math.round(bytes / 102.4) / 10, author: AUTHORS[i % AUTHORS.length] },
    });
  });
  // and one item without an image (no thumbnail to fetch)
  rows.push({ key: 'notes/no-image', text: 'a gif picture',
              meta: { format: 'none', bytes: 0, kib: 0, author: 'Ada' } });
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  return rows;
}

function makeDatabase(dir) {
  fs.rmSync(dir, { recursive: true, force: true });
  const catalog = makeCatalog(path.join(OUT, 'catalog.jsonl'));
  execFileSync(VLMDB, ['init', '--db', dir, '--model', MODEL, '--field', 'format:text',
                       '--field', 'bytes:int', '--field', 'kib:real', '--field', 'author:text'],
               { stdio: ['ignore', 'ignore', 'inherit'] });
  execFileSync(VLMDB, ['ingest', '--db', dir, '--strict', '--quiet', path.join(OUT, 'catalog.jsonl')],
               { stdio: ['ignore', 'ignore', 'inherit'] });
  return catalog;
}

/* ---- the server ---- */

function startServer(db, password) {
  const argv = ['serve', '--db', db, '--model', MODEL, '--port', '0', '--http', '0', '--quiet'];
  if (password)
    argv.push('--requirepass', password);
  const child = spawn(VLMDB, argv, { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error('vlmdb serve did not say where it listens in 60 s')), 60000);
    child.on('exit', (code) => reject(new Error(`vlmdb serve exited with ${code}`)));
    child.stdout.on('data', (d) => {
      text += d;
      const m = /http on ([\d.]+):(\d+)/.exec(text);
      if (m) {
        clearTimeout(timer);
        child.stdout.resume();
        resolve({ child, base: `http://${m[1]}:${m[2]}` });
      }
    });
  });
}

function stopServer(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null)
      return resolve(child.exitCode);
    child.removeAllListeners('exit');
    child.on('exit', (code, signal) => resolve(signal ? 128 : code));
    child.kill('SIGTERM');
  });
}

/* ---- the browser ---- */

async function launch() {
  const argv = ['--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', '--no-default-browser-check', '--disable-extensions',
                '--lang=en-US', '--font-render-hinting=none'];
  // chromium's sandbox cannot start as root (CI runs as root)
  if (process.getuid && process.getuid() === 0)
    argv.push('--no-sandbox');
  return puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: argv,
                            defaultViewport: { width: 1280, height: 900 } });
}

/* The page's problems: console errors, page errors, failed requests,
 * statuses >= 400, except those the test provokes (expect()), and any
 * request that leaves the server (the page uses no CDN, no network). */
function watch(page, base) {
  const w = { problems: [], expected: [], responses: [] };
  page.on('request', (r) => {
    const u = r.url();
    if (!u.startsWith(base + '/') && !/^(blob|data):/.test(u))
      w.problems.push(`request outside the server: ${r.method()} ${u}`);
    // only the k results asked for: the page never walks the keyspace
    if (u.startsWith(base + '/v1/scan'))
      w.problems.push(`a scan from the page: ${u}`);
  });
  const provoked = (url) => w.expected.some((e) => e.url.test(url));
  page.on('console', (m) => {
    if (m.type() !== 'error')
      return;
    const url = (m.location() && m.location().url) || '';
    if (/^Failed to load resource/.test(m.text()) && provoked(url))
      return;
    w.problems.push(`console error: ${m.text()} ${url}`);
  });
  page.on('pageerror', (e) => w.problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => w.problems.push(`request failed: ${r.method()} ${r.url()}: ${r.failure() && r.failure().errorText}`));
  page.on('response', (r) => {
    w.responses.push(r);
    if (r.status() < 400)
      return;
    const e = w.expected.find((x) => !x.seen && x.status === r.status() && x.method === r.request().method() && x.url.test(r.url()));
    if (e)
      e.seen = true;
    else
      w.problems.push(`HTTP ${r.status()} ${r.request().method()} ${r.url()}`);
  });
  return w;
}

function expect(w, status, method, url) {
  w.expected.push({ status, method, url, seen: false });
}

function assertClean(w, step) {
  const missing = w.expected.filter((e) => !e.seen);
  check(!w.problems.length, `${step}: ${w.problems.join('; ')}`);
  check(!missing.length, `${step}: provoked responses that never came: ${missing.map((e) => `${e.status} ${e.method} ${e.url}`).join(', ')}`);
}

let shotNo = 0;
async function shot(page, name) {
  const file = path.join(OUT, `${String(++shotNo).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file });
  return file;
}

/* The API asked directly (the oracle). */
function oracle(base, password) {
  const headers = password ? { Authorization: `Bearer ${password}` } : {};
  return async (method, p, body, form) => {
    const init = { method, headers: { ...headers } };
    if (form) {
      init.body = form;
    } else if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers['Content-Type'] = 'application/json';
    }
    const res = await fetch(base + p, init);
    const data = await res.json();
    check(res.ok, `oracle ${method} ${p}: ${res.status} ${JSON.stringify(data)}`);
    return data;
  };
}

/* Scroll every card into view (thumbnails load lazily), then wait until
 * each thumbnail has loaded; returns the cards' keys and scores. */
async function loadGrid(page) {
  await page.evaluate(async () => {
    for (const card of document.querySelectorAll('#grid .card')) {
      card.scrollIntoView({ block: 'nearest' });
      await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    }
    window.scrollTo(0, 0);
  });
  await page.waitForFunction(() => Array.from(document.querySelectorAll('#grid .thumb'))
    .every((t) => t.dataset.state === 'none' || (t.dataset.state === 'loaded' && t.querySelector('img').complete &&
                                                  t.querySelector('img').naturalWidth > 0)), { timeout: 30000 });
  return page.$$eval('#grid .card', (cards) => cards.map((c) => ({
    key: c.dataset.key, score: Number(c.querySelector('.score-value').textContent),
  })));
}

/* Submit the search form and wait for the grid to show its answer. */
async function searchAndWait(page, action) {
  const before = await page.$eval('#status', (s) => s.textContent);
  await page.$eval('#status', (s) => { s.textContent = ''; });
  await action();
  await page.waitForFunction(() => /result|No results/.test(document.querySelector('#status').textContent) ||
                                   !document.querySelector('#search-error').hidden, { timeout: 30000 });
  return before;
}

function keysOf(hits) {
  return hits.map((h) => h.key);
}

function itemPath(key) {
  return '/v1/items/' + encodeURIComponent(key);
}

function escapeRe(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function noHorizontalScroll(page) {
  return page.evaluate(() => ({ scroll: document.documentElement.scrollWidth, width: window.innerWidth }));
}

/* ==================================================================== */

async function runTest() {
  fs.mkdirSync(OUT, { recursive: true });
  for (const f of fs.readdirSync(OUT))
    if (/\.png$/.test(f))
      fs.rmSync(path.join(OUT, f));
  const db = path.join(OUT, 'db');
  const catalog = makeDatabase(db);
  log(`database: ${catalog.length} items in ${path.relative(ROOT, db)}`);
  const byKey = new Map(catalog.map((r) => [r.key, r]));
  const { child, base } = await startServer(db, PASSWORD);
  log(`server: ${base}`);
  const ask = oracle(base, PASSWORD);
  const browser = await launch();
  try {
    const page = await browser.newPage();
    const w = watch(page, base);

    // 1. Sign in: /v1/info answers 401, the page asks; dismissed, the
    //    error shows with a button to try again; a wrong password gets
    //    the server's message inline, the right one goes on.
    expect(w, 401, 'GET', /\/v1\/info$/);
    expect(w, 401, 'GET', /\/v1\/info$/);
    expect(w, 401, 'GET', /\/v1\/info$/);
    await page.goto(base + '/', { waitUntil: 'domcontentloaded' });
    await page.waitForSelector('#login[open]');
    // dismissed (Esc): the server's 401 message inline, and a way back
    await page.keyboard.press('Escape');
    await page.waitForFunction(() => !document.querySelector('#search-error').hidden);
    const dismissed = await page.$eval('#search-error', (e) => e.textContent);
    check(/^Error 401: this server needs 'Authorization: Bearer <password>'/.test(dismissed), `the dismissed sign-in: ${dismissed}`);
    await page.click('#search-error .retry');
    await page.waitForSelector('#login[open]');
    check(await page.$eval('#search-error', (e) => e.hidden), 'the error goes when trying again');
    await shot(page, 'login');
    await page.type('#login-password', 'not the password');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => !document.querySelector('#login-error').hidden);
    const loginError = await page.$eval('#login-error', (e) => e.textContent);
    check(/wrong bearer token/.test(loginError), `the wrong password's message: ${loginError}`);
    await page.type('#login-password', PASSWORD);
    await page.keyboard.press('Enter');
    await page.waitForSelector('body[data-ready="1"]');
    const info = await ask('GET', '/v1/info');
    const dbinfo = await page.$eval('#dbinfo', (e) => e.textContent);
    check(dbinfo.startsWith(`${info.items} items · ${info.dim}-d`), `the header: ${dbinfo}`);
    const filterInputs = await page.$$eval('#filter-inputs input', (l) => l.map((i) => i.getAttribute('aria-label')));
    sameList(filterInputs, ['format equals', 'bytes min', 'bytes max', 'kib min', 'kib max', 'author equals'],
             'filter inputs from /v1/info fields');
    assertClean(w, 'sign in');
    log('signed in (dismissed: the 401 inline with a way back; a wrong password refused inline)');

    // 2. A text search: k thumbnails, each a 200 image/jpeg; the same hits
    //    as the API's.
    const query = 'a gif picture';
    await page.type('#q', query);
    await searchAndWait(page, () => page.keyboard.press('Enter'));
    const hits = await loadGrid(page);
    const k = Number(await page.$eval('#k', (s) => s.value));
    const want = await ask('POST', '/v1/search', { text: query, k, target: 'any', fields: ['caption', 'source', 'meta'] });
    sameList(keysOf(hits), keysOf(want.hits), 'text search hits');
    check(hits.length === Math.min(k, catalog.length), `${hits.length} hits for k ${k}`);
    for (let i = 1; i < hits.length; i++)
      check(hits[i].score <= hits[i - 1].score, `scores in order at ${i}`);
    const thumbs = w.responses.filter((r) => /\/thumbnail$/.test(r.url()));
    const imageless = await page.$$eval('#grid .card', (cards) => cards.filter((c) => c.querySelector('.thumb').dataset.state === 'none')
      .map((c) => [c.dataset.key, c.querySelector('.thumb').textContent]));
    sameList(imageless, [['notes/no-image', 'no image']], 'the hit without an image (it is among the best for its own caption)');
    check(thumbs.length === hits.length - 1, `${thumbs.length} thumbnail requests for ${hits.length} hits, one without an image`);
    for (const r of thumbs)
      check(r.status() === 200 && r.headers()['content-type'] === 'image/jpeg', `thumbnail ${r.url()}: ${r.status()}`);
    await shot(page, 'search');
    log(`text search: ${hits.length} hits, ${thumbs.length} thumbnails loaded (all 200 image/jpeg) and one "no image", same hits as the API`);

    // Keyboard: / focuses the search box, arrows move in the grid.
    await page.$eval('#q', (q) => q.blur());
    await page.keyboard.press('/');
    check(await page.evaluate(() => document.activeElement.id === 'q'), '/ focuses the search box');
    await page.keyboard.press('ArrowDown');
    const focused = () => page.evaluate(() => document.activeElement.dataset.index);
    check(await focused() === '0', 'ArrowDown from the search box: the first result');
    await page.keyboard.press('ArrowRight');
    check(await focused() === '1', 'ArrowRight: the second result');
    const cols = await page.$$eval('#grid .card', (c) => c.filter((x) => x.offsetTop === c[0].offsetTop).length);
    await page.keyboard.press('ArrowDown');
    check(await focused() === String(1 + cols), `ArrowDown: one row (${cols} columns) down`);
    await page.keyboard.press('ArrowLeft');
    check(await focused() === String(cols), 'ArrowLeft');
    assertClean(w, 'text search');

    // 3. Filters: a string with a quote (O'Neil) and a format; then a
    //    number range.  Fewer or as many results, each one matching, and
    //    every matching item found (there are fewer than k).
    const type = async (label, text) => {
      const input = await page.$(`#filter-inputs input[aria-label="${label}"]`);
      await input.click({ clickCount: 3 });
      await input.type(text);
    };
    await type('format equals', 'tif');
    await type('author equals', "O'Neil");
    await searchAndWait(page, () => page.keyboard.press('Enter'));
    let filtered = await loadGrid(page);
    const filterText = await page.$eval('#filter-text', (e) => e.textContent);
    check(filterText === `"format" = 'tif' AND "author" = 'O''Neil'`, `the filter text: ${filterText}`);
    let match = catalog.filter((r) => r.meta.format === 'tif' && r.meta.author === "O'Neil").map((r) => r.key);
    check(match.length > 0 && match.length < k, `${match.length} catalog rows match`);
    check(filtered.length <= hits.length, 'a filter gives fewer or as many results');
    sameList(keysOf(filtered).sort(), match.sort(), "filtered hits: every tif by O'Neil");
    await shot(page, 'filter');
    await type('kib min', '3.5');
    await searchAndWait(page, () => page.keyboard.press('Enter'));
    filtered = await loadGrid(page);
    match = catalog.filter((r) => r.meta.format === 'tif' && r.meta.author === "O'Neil" && r.meta.kib >= 3.5).map((r) => r.key);
    sameList(keysOf(filtered).sort(), match.sort(), 'filtered hits with kib >= 3.5');
    // a number that is not one is refused on the page, not sent
    const searches = w.responses.filter((r) => /\/v1\/search$/.test(r.url())).length;
    await type('bytes max', '12abc');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => !document.querySelector('#search-error').hidden);
    const numError = await page.$eval('#search-error', (e) => e.textContent);
    check(/bytes max: "12abc" is not an integer/.test(numError), `the bad number's message: ${numError}`);
    check(w.responses.filter((r) => /\/v1\/search$/.test(r.url())).length === searches, 'a bad number sends nothing');
    // so is a collapse threshold that is not a cosine
    await searchAndWait(page, () => page.click('#filter-clear'));
    await searchAndWait(page, () => page.click('#collapse'));
    // collapse: the API's hits and near-duplicate counts (+N)
    const collapsed = await loadGrid(page);
    const wantCollapsed = await ask('POST', '/v1/search', { text: query, k, target: 'any', collapse: 0.98,
                                                            fields: ['caption', 'source', 'meta', 'similar'] });
    sameList(keysOf(collapsed), keysOf(wantCollapsed.hits), 'collapsed hits');
    const badges = await page.$$eval('#grid .card', (cards) => cards.map((c) => {
      const b = c.querySelector('.similar');
      return b ? Number(b.textContent.slice(1)) : 0;
    }));
    sameList(badges, wantCollapsed.hits.map((h) => h.fields.similar || 0), 'the +N near-duplicate badges');
    check(badges.some((n) => n > 0), 'some hit has near-duplicates folded into it');
    const searches2 = w.responses.filter((r) => /\/v1\/search$/.test(r.url())).length;
    await page.click('#collapse-t', { clickCount: 3 });
    await page.type('#collapse-t', '0');
    await page.click('#search-button');
    await page.waitForFunction(() => /^collapse: "0"/.test(document.querySelector('#search-error').textContent));
    check(w.responses.filter((r) => /\/v1\/search$/.test(r.url())).length === searches2, 'a bad threshold sends nothing');
    await page.click('#collapse-t', { clickCount: 3 });
    await page.type('#collapse-t', '0.98');
    await page.click('#collapse');
    await page.waitForFunction(() => document.querySelector('#filter-text').textContent === 'no filter' &&
                                     document.querySelector('#search-error').hidden);
    assertClean(w, 'filters');
    log(`filters: quoted string (${filtered.length} hits = the catalog's matches), number range, bad number refused inline; collapse (${badges.filter((n) => n > 0).length} hits with +N)`);

    // 4. Search by an uploaded image: the same hits as the API's for the
    //    same file; the image itself is among the best (cosine 1).
    const imageFile = path.join(IMAGES, 'gif_pal.gif');
    const file = await page.$('#file');
    await searchAndWait(page, () => file.uploadFile(imageFile));
    const byImage = await loadGrid(page);
    const form = new FormData();
    form.append('image', new Blob([fs.readFileSync(imageFile)]), 'gif_pal.gif');
    form.append('k', String(k));
    form.append('target', 'any');
    form.append('fields', 'caption,source,meta');
    const wantImage = await ask('POST', '/v1/search', undefined, form);
    sameList(keysOf(byImage), keysOf(wantImage.hits), 'image search hits');
    check(byImage.some((h) => h.key === 'fixtures/gif_pal.gif' && h.score >= 0.999), 'the uploaded image is found at cosine 1');
    const chip = await page.$eval('#query-label', (e) => e.textContent);
    check(/^image: gif_pal\.gif/.test(chip), `the query chip: ${chip}`);
    await shot(page, 'image');
    // dropped and pasted images: the same as a multipart search of the file
    const dropFile = async (kind, file, type) => {
      const b64 = fs.readFileSync(path.join(IMAGES, file)).toString('base64');
      await searchAndWait(page, () => page.evaluate((kind, b64, name, type) => {
        const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, { type }));
        if (kind === 'paste') {
          document.body.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
          return;
        }
        document.body.dispatchEvent(new DragEvent('dragenter', { dataTransfer: dt, bubbles: true }));
        if (document.querySelector('#drop-zone').hidden)
          throw new Error('dragging a file over the page does not show the drop zone');
        document.body.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
        if (!document.querySelector('#drop-zone').hidden)
          throw new Error('the drop zone stays after the drop');
      }, kind, b64, file, type));
      const got = await loadGrid(page);
      const f = new FormData();
      f.append('image', new Blob([fs.readFileSync(path.join(IMAGES, file))]), file);
      f.append('k', String(k));
      f.append('target', 'any');
      f.append('fields', 'caption,source,meta');
      sameList(keysOf(got), keysOf((await ask('POST', '/v1/search', undefined, f)).hits), `${kind}ped ${file}: hits`);
      const label = await page.$eval('#query-label', (e) => e.textContent);
      check(label.startsWith(`image: ${file}`), `${kind}: the query chip says ${label}`);
    };
    await dropFile('drop', 'webp_lossy.webp', 'image/webp');
    await dropFile('paste', 'rgb16.png', 'image/png');
    // a file that is not an image: the API's 400, shown inline
    expect(w, 400, 'POST', /\/v1\/search$/);
    await searchAndWait(page, () => file.uploadFile(path.join(ROOT, 'tests/web/package.json')));
    const apiError = await page.$eval('#search-error', (e) => e.textContent);
    check(/^Error 400: cannot read the image/.test(apiError), `the API error inline: ${apiError}`);
    await shot(page, 'error');
    assertClean(w, 'image search');
    log(`image search (file, drop, paste): same hits as the API; a non-image shown as "${apiError.slice(0, 60)}…"`);

    // 5. The item view (Enter on a card), Esc closes; "more like this".
    await page.click('#query-clear');
    await page.type('#q', query);
    await searchAndWait(page, () => page.keyboard.press('Enter'));
    await loadGrid(page);
    await page.focus('#grid .card[data-index="2"]');
    await page.keyboard.press('Enter');
    await page.waitForSelector('#item[open] #item-table tbody tr');
    await page.waitForFunction(() => document.querySelector('#item-img').naturalWidth > 0);
    const rows = await page.$$eval('#item-table tbody tr', (trs) => trs.map((tr) => [tr.querySelector('th').textContent, tr.querySelector('td').textContent]));
    const itemKey = await page.$eval('#item-key', (e) => e.textContent);
    check(itemKey === hits[2].key, `the item view shows ${itemKey}, the third hit is ${hits[2].key}`);
    const row = byKey.get(itemKey);
    const table = Object.fromEntries(rows);
    check(table.key === itemKey && table.source === row.image, `key and source rows: ${JSON.stringify(table)}`);
    for (const [name, value] of Object.entries(row.meta))
      check(table[name] === String(value), `meta ${name}: page ${table[name]}, catalog ${value}`);
    check(await page.$eval('#item-caption', (e) => e.textContent) === row.text, 'the caption');
    await shot(page, 'item');
    await page.keyboard.press('Escape');
    await page.waitForFunction(() => !document.querySelector('#item').open);
    check(await focused() === '2', 'Esc closes the item and focus returns to its card');
    await page.click('#grid .card[data-index="4"] .caption');
    await page.waitForSelector('#item[open] #item-table tbody tr');
    const moreKey = await page.$eval('#item-key', (e) => e.textContent);
    const moreHasImage = !!byKey.get(moreKey).image;
    if (moreHasImage)
      await page.waitForFunction(() => document.querySelector('#item-img').naturalWidth > 0);
    await searchAndWait(page, () => page.click('#item-more'));
    check(!(await page.$eval('#item', (d) => d.open)), 'more like this closes the item');
    const more = await loadGrid(page);
    const wantMore = await ask('POST', '/v1/search', { key: moreKey, k, target: 'any', fields: ['caption', 'source', 'meta'] });
    sameList(keysOf(more), keysOf(wantMore.hits), `more like ${moreKey}`);
    check(more.some((h) => h.key === moreKey && h.score >= 0.999), 'the item itself is among the best');
    check(await page.$eval('#query-label', (e) => e.textContent) === `more like: ${moreKey}`, 'the query chip says more like');
    // the chip keeps the item's picture through the new grid (its object
    // URL is the chip's now, not revoked with the old grid's)
    if (moreHasImage) {
      const chipOk = await page.waitForFunction(() => {
        const i = document.querySelector('#query-thumb');
        return i.getAttribute('src') && i.complete && i.naturalWidth > 0;
      }, { timeout: 5000 }).then(() => true, () => false);
      check(chipOk, `the query chip shows ${moreKey}'s thumbnail after the new results`);
      // (loaded again by a new image: the page's CSP lets img-src, not
      // connect-src, read blob: URLs)
      const live = await page.$eval('#query-thumb', (i) => new Promise((resolve) => {
        const probe = new Image();
        probe.onload = () => resolve(probe.naturalWidth > 0);
        probe.onerror = () => resolve(false);
        probe.src = i.src;
      }));
      check(live, 'the query chip\'s object URL is still live after the grid was rendered again');
    }
    await shot(page, 'more-like-this');
    // hybrid and target change the request and still render
    await page.click('#query-clear');
    await page.type('#q', query);
    await page.click('#hybrid');
    await page.select('#target', 'image');
    await searchAndWait(page, () => page.keyboard.press('Enter'));
    const hybrid = await loadGrid(page);
    const wantHybrid = await ask('POST', '/v1/search', { text: query, hybrid: query, k, target: 'image', fields: ['caption', 'source', 'meta'] });
    sameList(keysOf(hybrid), keysOf(wantHybrid.hits), 'hybrid image-target hits');
    await page.click('#hybrid');
    await page.select('#target', 'any');
    assertClean(w, 'item view');
    log(`item view: metadata as in the catalog, Esc, more like this (${more.length} hits), hybrid`);

    // 6. Why this match: "Why?" on a text search's card opens the item
    //    with the server's heat map for that key and the query text, and
    //    the method that ran; its bytes are the API's.  Another method
    //    from the item view; then an item deleted behind the page's back:
    //    the API's 404 shown, not swallowed.
    await page.$eval('#q', (q) => { q.value = ''; });
    await page.type('#q', query);
    await searchAndWait(page, () => page.keyboard.press('Enter'));
    const whyHits = await loadGrid(page);
    const whyKeys = await page.$$eval('#grid .card', (cards) => cards.filter((c) => c.querySelector('.why')).map((c) => c.dataset.key));
    const pictured = keysOf(whyHits).filter((key) => byKey.get(key).image);
    sameList(whyKeys, pictured, '"Why?" on every hit with a picture, none on the one without');
    const explainPath = (key, method) => `/v1/items/${encodeURIComponent(key)}/explain?` +
      new URLSearchParams({ text: query, method, side: '256' });
    const apiExplain = async (key, method) => {
      const res = await fetch(base + explainPath(key, method), { headers: { Authorization: `Bearer ${PASSWORD}` } });
      check(res.ok && res.headers.get('content-type') === 'image/png', `the API's explanation of ${key}: ${res.status}`);
      return { ran: res.headers.get('x-vlmdb-explain-method'), bytes: Buffer.from(await res.arrayBuffer()) };
    };
    const explained = async (method) => {
      await page.waitForFunction((m) => {
        const box = document.querySelector('#explain');
        const img = document.querySelector('#explain-img');
        return !box.hidden && box.dataset.state === 'loaded' && box.dataset.method === m && img.complete && img.naturalWidth > 0;
      }, { timeout: 60000 }, method);
      const size = await page.$eval('#explain-img', (i) => [i.naturalWidth, i.naturalHeight]);
      sameList(size, [256, 256], `the ${method} heat map's size`);
      return page.$eval('#explain-caption', (e) => e.textContent);
    };
    /* The pixels of the heat map shown, or of PNG bytes decoded by the
     * same page: width, height and a SHA-256 of the RGBA.  (The page's
     * own response body is not kept by the browser to compare bytes.) */
    const pixels = (png) => page.evaluate(async (b64) => {
      let img = document.querySelector('#explain-img');
      let url = null;
      if (b64) {
        url = URL.createObjectURL(new Blob([Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0))], { type: 'image/png' }));
        img = new Image();
        img.src = url;
        await img.decode();
      }
      const canvas = document.createElement('canvas');
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      const ctx = canvas.getContext('2d');
      ctx.drawImage(img, 0, 0);
      const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
      if (url)
        URL.revokeObjectURL(url);
      const hash = new Uint8Array(await crypto.subtle.digest('SHA-256', data));
      return [canvas.width, canvas.height, Array.from(hash, (b) => b.toString(16).padStart(2, '0')).join('')];
    }, png ? png.toString('base64') : null);
    /* the page's last explanation against the API's for the same key,
     * text and method: the request, its headers, and the picture shown */
    const sameAsApi = async (key, method) => {
      const r = w.responses.filter((x) => /\/explain\?/.test(x.url())).pop();
      check(r.url() === base + explainPath(key, method), `the page asked ${r.url()}`);
      check(r.status() === 200 && r.headers()['content-type'] === 'image/png', `${r.url()}: ${r.status()}`);
      const want = await apiExplain(key, method);
      check(r.headers()['content-length'] === String(want.bytes.length) &&
            r.headers()['x-vlmdb-explain-method'] === want.ran,
            `the page's response ${JSON.stringify(r.headers())}, the API's ${want.bytes.length} bytes by ${want.ran}`);
      sameList(await pixels(), await pixels(want.bytes), `the ${method} heat map of ${key}: the API's picture`);
      return want.ran;
    };
    const whyKey = pictured[0];
    const whyIndex = keysOf(whyHits).indexOf(whyKey);
    await page.click(`#grid .card[data-index="${whyIndex}"] .why`);
    await page.waitForSelector('#item[open]');
    let whyCaption = await explained('integrated');
    check(await page.$eval('#item-key', (e) => e.textContent) === whyKey, 'the item view of the card whose "Why?" was clicked');
    check(whyCaption.includes(`“${query}”`) && /Method: integrated \(auto\)/.test(whyCaption), `the explanation's caption: ${whyCaption}`);
    check((await sameAsApi(whyKey, 'auto')) === 'integrated', 'the API ran integrated gradients for auto');
    check(await page.$eval('#item-explain', (b) => b.hidden), '"Why this match?" is not offered again while the explanation shows');
    await shot(page, 'explain');
    await page.keyboard.press('Escape');
    await page.waitForFunction(() => !document.querySelector('#item').open);
    check(await page.$eval('#explain', (e) => e.hidden && !e.querySelector('img').getAttribute('src')), 'closing the item drops its explanation');
    // the item view opened from the card asks on "Why this match?"; the
    // method menu asks again
    await page.click(`#grid .card[data-index="${whyIndex}"] .caption`);
    await page.waitForSelector('#item[open] #item-table tbody tr');
    check(await page.$eval('#explain', (e) => e.hidden), 'no explanation before it is asked for');
    await page.click('#item-explain');
    await explained('integrated');
    await page.select('#explain-method', 'gradcam');
    whyCaption = await explained('gradcam');
    check(/Method: gradcam ·/.test(whyCaption), `the Grad-CAM caption: ${whyCaption}`);
    check((await sameAsApi(whyKey, 'gradcam')) === 'gradcam', 'the API ran gradcam');
    await page.keyboard.press('Escape');
    await page.waitForFunction(() => !document.querySelector('#item').open);
    // an item deleted by another client since the search
    const goneKey = pictured[1];
    const goneRow = byKey.get(goneKey);
    const goneRe = new RegExp(escapeRe(itemPath(goneKey)));
    await ask('DELETE', itemPath(goneKey));
    expect(w, 404, 'GET', new RegExp(goneRe.source + '/explain\\?'));
    expect(w, 404, 'GET', new RegExp(goneRe.source + '$'));
    await page.click(`#grid .card[data-index="${keysOf(whyHits).indexOf(goneKey)}"] .why`);
    await page.waitForFunction(() => document.querySelector('#explain').dataset.state === 'error', { timeout: 60000 });
    const whyError = await page.$eval('#explain-error', (e) => (e.hidden ? '' : e.textContent));
    check(whyError === `Error 404: no item '${goneKey}'`, `the explanation's error: ${whyError}`);
    check(!(await page.$eval('#explain-img', (i) => i.getAttribute('src'))), 'no heat map under the error');
    check(!(await page.$eval('#item-explain', (b) => b.hidden)), '"Why this match?" offered again after an error');
    await shot(page, 'explain-error');
    await page.keyboard.press('Escape');
    await page.waitForFunction(() => !document.querySelector('#item').open);
    // put it back as ingest made it (the later steps count the catalog)
    await ask('PUT', itemPath(goneKey), { text: goneRow.text, meta: goneRow.meta, source: goneRow.image,
                                          image: fs.readFileSync(goneRow.image).toString('base64') });
    assertClean(w, 'why this match');
    log(`why this match: the heat map of ${whyKey} (integrated gradients for auto, then gradcam) the API's, 256 px; a deleted item's 404 shown`);

    // 7. Eval: Recall@K and the rank histogram as SVG, each bar the API's.
    await page.click('#nav-eval');
    await page.waitForSelector('#page-eval:not([hidden])');
    await page.click('#eval-run');
    await page.waitForSelector('#chart-recall rect.bar');
    await page.waitForSelector('#chart-ranks rect.bar');
    const wantEval = await ask('POST', '/v1/eval', { k: [1, 5, 10], direction: 'both' });
    const bars = (id) => page.$$eval(`#${id} rect.bar`, (l) => l.map((r) => [r.dataset.series, r.dataset.group, Number(r.dataset.value)]));
    const recall = await bars('chart-recall');
    const wantRecall = [];
    for (const k2 of [1, 5, 10])
      for (const [dir, name] of [['text_to_image', 'text → image'], ['image_to_text', 'image → text']])
        wantRecall.push([name, `R@${k2}`, wantEval[dir][`recall@${k2}`]]);
    sameList(recall, wantRecall, 'Recall@K bars');
    const ranks = await bars('chart-ranks');
    const counts = ranks.map((b) => b[2]);
    const wantCounts = [];
    const nb = wantEval.text_to_image.rank_histogram.counts.length;
    for (let i = 0; i < nb; i++)
      wantCounts.push(wantEval.text_to_image.rank_histogram.counts[i], wantEval.image_to_text.rank_histogram.counts[i]);
    sameList(counts, wantCounts, 'rank histogram bars');
    check(counts.reduce((a, b) => a + b, 0) === 2 * wantEval.pairs, 'the histogram counts every query');
    await shot(page, 'eval');
    assertClean(w, 'eval');
    log(`eval: ${recall.length} Recall@K bars and ${ranks.length} histogram bars, each the API's`);

    // 8. Phone width (375 px): no horizontal scroll on search, item,
    //    an explanation and eval.
    await page.setViewport({ width: 375, height: 740, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
    await page.goto(base + '/#search', { waitUntil: 'domcontentloaded' });
    await page.waitForSelector('body[data-ready="1"]');
    await page.type('#q', query);
    await searchAndWait(page, () => page.keyboard.press('Enter'));
    const phoneHits = await loadGrid(page);
    check(phoneHits.length === k, `${phoneHits.length} hits at phone width`);
    const phoneCols = await page.$$eval('#grid .card', (c) => c.filter((x) => x.offsetTop === c[0].offsetTop).length);
    check(phoneCols >= 2 && phoneCols <= 3, `${phoneCols} columns at 375 px`);
    for (const [state, act] of [
      ['search', async () => {}],
      ['item', async () => {
        await page.click('#grid .card[data-index="0"] .caption');
        await page.waitForSelector('#item[open] #item-table tbody tr');
      }],
      ['explain', async () => {
        await page.keyboard.press('Escape');
        await page.waitForFunction(() => !document.querySelector('#item').open);
        await page.click('#grid .card .why');
        await page.waitForFunction(() => document.querySelector('#explain').dataset.state === 'loaded' &&
                                         document.querySelector('#explain-img').naturalWidth > 0, { timeout: 60000 });
      }],
      ['eval', async () => {
        await page.keyboard.press('Escape');
        await page.click('#nav-eval');
        await page.click('#eval-run');
        await page.waitForSelector('#chart-ranks rect.bar');
      }],
    ]) {
      await act();
      const m = await noHorizontalScroll(page);
      check(m.scroll <= m.width, `phone ${state}: page ${m.scroll} px wide in a ${m.width} px window`);
      await shot(page, `phone-${state}`);
    }
    assertClean(w, 'phone width');
    log(`phone width: ${phoneCols} columns, no horizontal scroll on search, item, explanation and eval`);
  } finally {
    await browser.close();
    const code = await stopServer(child);
    check(code === 0, `vlmdb serve exited with ${code} after SIGTERM`);
  }
  log(`passed; screenshots in ${path.relative(ROOT, OUT)}/`);
}

/* The README's screenshots of the console on an existing database. */
async function runShots() {
  const db = path.resolve(ROOT, args.db);
  const dir = path.resolve(ROOT, args.shots);
  if (!fs.existsSync(db))
    die(`no database ${args.db} (make demo builds it)`);
  fs.mkdirSync(dir, { recursive: true });
  const { child, base } = await startServer(db, null);
  const browser = await launch();
  try {
    const page = await browser.newPage();
    const w = watch(page, base);
    await page.setViewport({ width: 1100, height: 720 });
    await page.goto(base + '/', { waitUntil: 'domcontentloaded' });
    await page.waitForSelector('body[data-ready="1"]');
    await page.type('#q', args.query || 'a red jigsaw piece');
    await page.select('#k', '20');
    await page.select('#target', 'image');
    await page.click('#collapse');
    await searchAndWait(page, () => page.keyboard.press('Enter'));
    await loadGrid(page);
    await page.evaluate(() => document.activeElement.blur());
    await page.screenshot({ path: path.join(dir, 'console-search.png') });
    await page.click('#nav-eval');
    await page.$eval('#eval-sample', (e) => { e.value = '1000'; });
    await page.click('#eval-run');
    await page.waitForSelector('#chart-ranks rect.bar', { timeout: 120000 });
    await page.evaluate(() => document.activeElement.blur());
    await page.screenshot({ path: path.join(dir, 'console-eval.png') });
    assertClean(w, 'screenshots');
  } finally {
    await browser.close();
    await stopServer(child);
  }
  for (const f of ['console-search.png', 'console-eval.png']) {
    const size = fs.statSync(path.join(dir, f)).size;
    log(`${path.relative(ROOT, path.join(dir, f))}: ${(size / 1024).toFixed(0)} KB`);
    check(size < 300 * 1024, `${f} is over 300 KB`);
  }
}

try {
  await (args.shots ? runShots() : runTest());
} catch (e) {
  console.error(`test-web: FAILED after ${((Date.now() - t0) / 1000).toFixed(1)} s: ${e.stack || e}`);
  process.exit(1);
}
