/* vlmdb console: the script of the page `vlmdb serve` answers at GET /.
 *
 * Plain JavaScript, no framework, nothing fetched but this server's JSON
 * API (/v1/..., documented at /openapi.json).  The page renders only the
 * k hits a search returns and loads each thumbnail when it scrolls into
 * view, so it costs the same on 100 items as on 100,000.  With a server
 * password, every request carries `Authorization: Bearer ...`: a 401
 * asks for the password, kept in sessionStorage (this tab only).
 */
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = 'vlmdb.token';

  /* ==================================================================
   * The API
   * ================================================================ */

  class ApiError extends Error {
    constructor(status, code, message, field) {
      super(message);
      this.status = status;
      this.code = code;
      this.field = field;
    }
  }

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (e) {
      return null;
    }
  }

  /* The login dialog: one pending prompt at a time; resolves true once a
   * password is entered, false when the user dismisses it. */
  let loginPending = null;
  function askPassword(message) {
    const err = $('login-error');
    if (message) {
      err.textContent = message;
      err.hidden = false;
    } else {
      err.hidden = true;
    }
    if (loginPending)
      return loginPending;
    loginPending = new Promise((resolve) => {
      const dlg = $('login');
      const form = $('login-form');
      const input = $('login-password');
      const done = (ok) => {
        form.removeEventListener('submit', onSubmit);
        dlg.removeEventListener('cancel', onCancel);
        if (dlg.open)
          dlg.close();
        loginPending = null;
        resolve(ok);
      };
      const onSubmit = (e) => {
        e.preventDefault();
        if (!input.value)
          return;
        try {
          sessionStorage.setItem(TOKEN_KEY, input.value);
        } catch (x) {
          /* storage refused: the password lives until the page closes */
          memoryToken = input.value;
        }
        input.value = '';
        done(true);
      };
      const onCancel = () => done(false);
      form.addEventListener('submit', onSubmit);
      dlg.addEventListener('cancel', onCancel);
      if (!dlg.open)
        dlg.showModal();
      input.focus();
    });
    return loginPending;
  }
  let memoryToken = null;

  function authHeaders() {
    const t = token() || memoryToken;
    return t ? { Authorization: 'Bearer ' + t } : {};
  }

  async function errorOf(res) {
    const text = await res.text();
    try {
      const e = JSON.parse(text).error;
      if (e && e.message)
        return new ApiError(res.status, e.code || String(res.status), e.message, e.field);
    } catch (x) {
      /* not JSON: the status line says it */
    }
    return new ApiError(res.status, String(res.status),
                        `${res.status} ${res.statusText || 'error'}`, undefined);
  }

  /* A request (401: ask for the password and try again); the Response. */
  async function request(method, path, body, contentType) {
    for (;;) {
      const headers = authHeaders();
      if (contentType)
        headers['Content-Type'] = contentType;
      let res;
      try {
        res = await fetch(path, { method, headers, body, cache: 'no-store' });
      } catch (e) {
        throw new ApiError(0, 'network', `cannot reach the server (${e.message})`);
      }
      if (res.status !== 401)
        return res;
      const err = await errorOf(res);
      const hadToken = !!authHeaders().Authorization;
      if (!(await askPassword(hadToken ? err.message : '')))
        throw err;
    }
  }

  /* A JSON request: the parsed answer, or an ApiError with the server's
   * message. */
  async function api(method, path, json) {
    const res = await request(method, path, json === undefined ? undefined : JSON.stringify(json),
                              json === undefined ? undefined : 'application/json');
    if (!res.ok)
      throw await errorOf(res);
    try {
      return await res.json();
    } catch (e) {
      throw new ApiError(res.status, 'bad_response', 'the server answered with something that is not JSON');
    }
  }

  async function apiForm(method, path, form) {
    const res = await request(method, path, form, undefined);
    if (!res.ok)
      throw await errorOf(res);
    return res.json();
  }

  function showError(el, err) {
    let msg = err && err.message ? err.message : String(err);
    if (err instanceof ApiError && err.status)
      msg = `Error ${err.status}: ${msg}` + (err.field ? ` (${err.field})` : '');
    el.textContent = msg;
    el.hidden = false;
  }

  function clearError(el) {
    el.hidden = true;
    el.textContent = '';
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {}))
      node.setAttribute(k, v);
    if (text !== undefined)
      node.textContent = text;
    return node;
  }

  function itemPath(key) {
    return '/v1/items/' + encodeURIComponent(key);
  }

  /* ==================================================================
   * Filters: inputs from /v1/info's declared fields, composed into the
   * database's SQL filter.  Names are quoted identifiers and strings
   * quoted literals (quotes doubled), so no input can end a literal
   * early or add to the expression; numbers must read as numbers.
   * ================================================================ */

  function quoteIdent(name) {
    return '"' + name.replace(/"/g, '""') + '"';
  }

  function quoteString(s) {
    return "'" + s.replace(/'/g, "''") + "'";
  }

  const INTEGER = /^[-+]?\d+$/;
  const NUMBER = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;

  function buildFilters(fields) {
    const box = $('filter-inputs');
    box.replaceChildren();
    for (const f of fields) {
      const wrap = el('div', { class: 'filter-field' });
      wrap.append(el('span', { class: 'name' }, f.name));
      if (f.type === 'integer' || f.type === 'number') {
        for (const [op, hint] of [['>=', 'min'], ['<=', 'max']]) {
          const input = el('input', {
            type: 'text', inputmode: f.type === 'integer' ? 'numeric' : 'decimal',
            placeholder: hint, 'aria-label': `${f.name} ${hint}`,
          });
          input.dataset.field = f.name;
          input.dataset.type = f.type;
          input.dataset.op = op;
          wrap.append(input);
        }
      } else {
        const input = el('input', {
          type: 'text', class: 'text', placeholder: 'equals',
          'aria-label': `${f.name} equals`,
        });
        input.dataset.field = f.name;
        input.dataset.type = 'string';
        input.dataset.op = '=';
        wrap.append(input);
      }
      box.append(wrap);
    }
    $('filters').hidden = fields.length === 0;
  }

  /* {text} (empty: no filter) or {error}. */
  function composeFilter() {
    const clauses = [];
    for (const input of $('filter-inputs').querySelectorAll('input')) {
      const { field, type, op } = input.dataset;
      const raw = input.value;
      if (type === 'string') {
        if (raw === '')
          continue;
        if (raw.includes('\0'))
          return { error: `${field}: a text filter cannot hold a NUL character` };
        clauses.push(`${quoteIdent(field)} ${op} ${quoteString(raw)}`);
      } else {
        const v = raw.trim();
        if (v === '')
          continue;
        const ok = type === 'integer' ? INTEGER.test(v) : NUMBER.test(v) && Number.isFinite(Number(v));
        if (!ok)
          return { error: `${field} ${op === '>=' ? 'min' : 'max'}: "${v}" is not ${type === 'integer' ? 'an integer' : 'a number'}` };
        clauses.push(`${quoteIdent(field)} ${op} ${v}`);
      }
    }
    return { text: clauses.join(' AND ') };
  }

  function showFilterText() {
    const f = composeFilter();
    $('filter-text').textContent = f.error ? '' : f.text || 'no filter';
    return f;
  }

  /* ==================================================================
   * Search
   * ================================================================ */

  const state = {
    info: null,
    query: null,        /* {kind: 'text'|'image'|'key', text, blob, name, key} */
    seq: 0,             /* the latest search; older answers are dropped */
    hits: [],
    hitsQuery: null,    /* the query the hits answer (its text explains them) */
    canExplain: false,  /* the server has GET /v1/items/{key}/explain and a model */
    urls: [],           /* object URLs of the rendered thumbnails */
    chipURL: null,
  };

  function setChip(label, thumbURL) {
    const chip = $('query-chip');
    const img = $('query-thumb');
    if (state.chipURL) {
      URL.revokeObjectURL(state.chipURL);
      state.chipURL = null;
    }
    if (label === null) {
      chip.hidden = true;
      img.removeAttribute('src');
      return;
    }
    $('query-label').textContent = label;
    if (thumbURL)
      img.src = thumbURL;
    else
      img.removeAttribute('src');
    chip.hidden = false;
  }

  function setImageQuery(blob, name) {
    state.query = { kind: 'image', blob, name: name || 'image' };
    $('q').value = '';
    const url = URL.createObjectURL(blob);
    setChip(`image: ${name || 'pasted'} (${Math.max(1, Math.round(blob.size / 1024))} KB)`, url);
    state.chipURL = url;
    showPage('search');
    runSearch();
  }

  /* thumbURL: the item's thumbnail already loaded (a blob URL of the
   * grid's): the chip takes it over, so the next render does not revoke
   * it under the chip. */
  function setKeyQuery(key, thumbURL) {
    state.query = { kind: 'key', key };
    $('q').value = '';
    const i = thumbURL ? state.urls.indexOf(thumbURL) : -1;
    if (i >= 0)
      state.urls.splice(i, 1);
    setChip(`more like: ${key}`, i >= 0 ? thumbURL : null);
    state.chipURL = i >= 0 ? thumbURL : null;
    showPage('search');
    runSearch();
  }

  function clearQuery() {
    state.query = null;
    setChip(null);
    $('q').focus();
  }

  async function runSearch() {
    const errBox = $('search-error');
    const text = $('q').value.trim();
    if (text)
      state.query = { kind: 'text', text };
    const q = state.query;
    if (!q) {
      $('status').textContent = 'Type a query, or drop, paste or choose an image.';
      return;
    }
    if (q.kind === 'text')
      setChip(null);
    const filter = showFilterText();
    if (filter.error) {
      showError(errBox, filter.error);
      return;
    }
    clearError(errBox);
    const k = Number($('k').value);
    const target = $('target').value;
    const collapse = !$('collapse-wrap').hidden && $('collapse').checked ? Number($('collapse-t').value) : 0;
    if (!(collapse >= 0 && collapse <= 1) || ($('collapse').checked && !collapse)) {
      showError(errBox, `collapse: "${$('collapse-t').value}" is not a cosine above 0 and at most 1`);
      return;
    }
    const hybrid = !$('hybrid-wrap').hidden && $('hybrid').checked && q.kind === 'text';
    const fields = ['caption', 'source', 'meta'];
    if (collapse)
      fields.push('similar');
    const seq = ++state.seq;
    $('status').textContent = 'Searching…';
    try {
      let data;
      if (q.kind === 'image') {
        const form = new FormData();
        form.append('image', q.blob, q.name);
        form.append('k', String(k));
        form.append('target', target);
        form.append('fields', fields.join(','));
        if (filter.text)
          form.append('filter', filter.text);
        if (collapse)
          form.append('collapse', String(collapse));
        data = await apiForm('POST', '/v1/search', form);
      } else {
        const body = { k, target, fields };
        if (q.kind === 'text')
          body.text = q.text;
        else
          body.key = q.key;
        if (filter.text)
          body.filter = filter.text;
        if (collapse)
          body.collapse = collapse;
        if (hybrid)
          body.hybrid = q.text;
        data = await api('POST', '/v1/search', body);
      }
      if (seq !== state.seq)
        return;
      renderHits(data, filter.text, q);
    } catch (e) {
      if (seq !== state.seq)
        return;
      /* no results of an earlier query under this one's error */
      clearGrid();
      $('status').textContent = '';
      showError(errBox, e);
    }
  }

  /* Thumbnails load as their cards come into view (fetch, so that the
   * bearer token goes with them; <img src> could not send it). */
  const observer = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting)
        continue;
      observer.unobserve(entry.target);
      loadThumb(entry.target, state.seq);
    }
  }, { rootMargin: '200px' });

  async function loadThumb(img, seq) {
    const box = img.parentElement;
    try {
      const res = await request('GET', img.dataset.src);
      if (!res.ok) {
        box.dataset.state = 'missing';
        box.replaceChildren(res.status === 404 ? 'no image' : `thumbnail: ${res.status}`);
        return;
      }
      const blob = await res.blob();
      if (seq !== state.seq)
        return;
      const url = URL.createObjectURL(blob);
      state.urls.push(url);
      img.src = url;
      box.dataset.state = 'loaded';
    } catch (e) {
      if (box.isConnected) {
        box.dataset.state = 'error';
        box.replaceChildren('thumbnail: error');
      }
    }
  }

  function clearGrid() {
    observer.disconnect();
    for (const url of state.urls)
      URL.revokeObjectURL(url);
    state.urls = [];
    state.hits = [];
    state.hitsQuery = null;
    $('grid').replaceChildren();
  }

  /* Whether a hit can be explained: a text query and a stored picture. */
  function explainable(hit) {
    const q = state.hitsQuery;
    return state.canExplain && !!hit && !!hit.thumbnail && !!q && q.kind === 'text';
  }

  function renderHits(data, filterText, query) {
    clearGrid();
    const hits = Array.isArray(data.hits) ? data.hits : [];
    state.hits = hits;
    state.hitsQuery = query;
    const grid = $('grid');
    const frag = document.createDocumentFragment();
    hits.forEach((hit, i) => {
      const fields = hit.fields || {};
      const caption = typeof fields.caption === 'string' ? fields.caption : '';
      const card = el('article', { class: 'card', tabindex: '0', role: 'listitem',
                                   'aria-label': `${i + 1}. ${caption || hit.key}` });
      card.dataset.index = String(i);
      card.dataset.key = hit.key;
      const thumb = el('div', { class: 'thumb' });
      if (hit.thumbnail) {
        const img = el('img', { alt: caption || hit.key, decoding: 'async' });
        img.dataset.src = hit.thumbnail;
        thumb.append(img);
      } else {
        /* an item stored without an image: nothing to fetch */
        thumb.dataset.state = 'none';
        thumb.textContent = 'no image';
      }
      const body = el('div', { class: 'body' });
      const score = el('div', { class: 'score' });
      score.append(el('span', { class: 'score-value', title: 'score' },
                      typeof hit.score === 'number' ? hit.score.toFixed(4) : String(hit.score)));
      if (fields.similar > 0)
        score.append(el('span', { class: 'similar', title: `${fields.similar} near-duplicates folded into this hit` },
                        `+${fields.similar}`));
      body.append(score, el('div', { class: 'caption', title: caption }, caption || hit.key));
      const actions = el('div', { class: 'actions' });
      actions.append(el('button', { type: 'button', class: 'more', title: 'Search with this item' }, 'More like this'));
      if (explainable(hit))
        actions.append(el('button', {
          type: 'button', class: 'why', title: `Show which parts of the picture match “${query.text}”`,
          'aria-label': `Why does ${caption || hit.key} match “${query.text}”?`,
        }, 'Why?'));
      body.append(actions);
      card.append(thumb, body);
      frag.append(card);
    });
    grid.replaceChildren(frag);
    for (const img of grid.querySelectorAll('.thumb img'))
      observer.observe(img);
    const took = typeof data.took_ms === 'number' ? ` in ${data.took_ms.toFixed(1)} ms` : '';
    $('status').textContent = hits.length
      ? `${hits.length} result${hits.length === 1 ? '' : 's'}${took}${filterText ? ' (filtered)' : ''}`
      : `No results${took}${filterText ? ' for this filter' : ''}.`;
  }

  /* ==================================================================
   * The item view
   * ================================================================ */

  let itemIndex = -1;

  async function openItem(index, explain) {
    const hit = state.hits[index];
    if (!hit)
      return;
    itemIndex = index;
    resetExplain();
    $('item-explain').hidden = !explainable(hit);
    const dlg = $('item');
    const tbody = $('item-table').tBodies[0];
    $('item-key').textContent = hit.key;
    $('item-caption').textContent = (hit.fields && hit.fields.caption) || '';
    tbody.replaceChildren();
    clearError($('item-error'));
    const img = $('item-img');
    img.parentElement.hidden = !hit.thumbnail; /* an item without an image */
    const cardImg = document.querySelector(`.card[data-index="${index}"] .thumb img`);
    if (cardImg && cardImg.src)
      img.src = cardImg.src;
    else
      img.removeAttribute('src');
    img.alt = hit.key;
    if (!dlg.open)
      dlg.showModal();
    if (explain)
      runExplain();
    try {
      const item = await api('GET', itemPath(hit.key));
      if (itemIndex !== index)
        return;
      const rows = [['key', item.key], ['score', typeof hit.score === 'number' ? hit.score.toFixed(4) : ''],
                    ['source', item.source]];
      const meta = item.meta && typeof item.meta === 'object' ? item.meta : {};
      for (const [name, value] of Object.entries(meta))
        rows.push([name, value]);
      for (const [name, value] of rows) {
        const tr = el('tr');
        tr.append(el('th', { scope: 'row' }, name),
                  el('td', {}, value === null || value === undefined ? '—'
                               : typeof value === 'object' ? JSON.stringify(value) : String(value)));
        tbody.append(tr);
      }
      $('item-caption').textContent = item.caption || '';
      if (!img.getAttribute('src') && hit.thumbnail) {
        const res = await request('GET', hit.thumbnail);
        if (res.ok && itemIndex === index) {
          const url = URL.createObjectURL(await res.blob());
          state.urls.push(url);
          img.src = url;
        }
      }
    } catch (e) {
      showError($('item-error'), e);
    }
  }

  /* ==================================================================
   * Why this match: the server's heat map of the picture regions that
   * drive its cosine with the query text (GET /v1/items/{key}/explain),
   * with the method that ran
   * ================================================================ */

  let explainSeq = 0;     /* the latest explanation; older answers are dropped */
  let explainURL = null;  /* the object URL of the heat map shown */

  function setExplainURL(url) {
    if (explainURL)
      URL.revokeObjectURL(explainURL);
    explainURL = url;
    const img = $('explain-img');
    if (url)
      img.src = url;
    else
      img.removeAttribute('src');
  }

  function resetExplain() {
    explainSeq++;
    setExplainURL(null);
    const box = $('explain');
    box.hidden = true;
    delete box.dataset.state;
    delete box.dataset.method;
    $('explain-img').alt = '';
    $('explain-caption').textContent = '';
    clearError($('explain-error'));
  }

  async function runExplain() {
    const index = itemIndex;
    const hit = state.hits[index];
    const q = state.hitsQuery;
    if (!explainable(hit))
      return;
    const seq = ++explainSeq;
    const box = $('explain');
    const caption = $('explain-caption');
    const errBox = $('explain-error');
    const method = $('explain-method').value;
    box.hidden = false;
    box.dataset.state = 'loading';
    /* the method menu asks again; keep the focus in the view */
    if (document.activeElement === $('item-explain'))
      $('explain-method').focus();
    $('item-explain').hidden = true;
    clearError(errBox);
    caption.textContent = `Explaining “${q.text}” (${method})…`;
    const current = () => seq === explainSeq && itemIndex === index && $('item').open;
    /* 256 px: the size of the item view's picture */
    const params = new URLSearchParams({ text: q.text, method, side: '256' });
    try {
      const res = await request('GET', `${itemPath(hit.key)}/explain?${params}`);
      if (!res.ok)
        throw await errorOf(res);
      const blob = await res.blob();
      if (!current())
        return;
      const ran = res.headers.get('X-Vlmdb-Explain-Method') || method;
      const score = Number(res.headers.get('X-Vlmdb-Explain-Score'));
      setExplainURL(URL.createObjectURL(blob));
      $('explain-img').alt = `Heat map over ${hit.key}: where it matches “${q.text}” (${ran})`;
      caption.textContent = `Where the picture matches “${q.text}”: red drives the score, blue does not. ` +
        `Method: ${ran}${method === 'auto' ? ' (auto)' : ''}` +
        (Number.isFinite(score) ? ` · picture–text cosine ${score.toFixed(4)}` : '') + '.';
      box.dataset.state = 'loaded';
      box.dataset.method = ran;
    } catch (e) {
      if (!current())
        return;
      setExplainURL(null);
      caption.textContent = '';
      box.dataset.state = 'error';
      $('item-explain').hidden = false; /* to try again */
      showError(errBox, e);
    }
  }

  $('item-explain').addEventListener('click', runExplain);
  $('explain-method').addEventListener('change', () => {
    if (!$('explain').hidden)
      runExplain();
  });

  function closeItem() {
    const dlg = $('item');
    if (dlg.open)
      dlg.close();
  }

  $('item').addEventListener('close', () => {
    resetExplain();
    const card = document.querySelector(`.card[data-index="${itemIndex}"]`);
    if (card && $('page-eval').hidden)
      card.focus();
  });
  $('item-close').addEventListener('click', closeItem);
  $('item-more').addEventListener('click', () => {
    const hit = state.hits[itemIndex];
    closeItem();
    if (hit)
      setKeyQuery(hit.key, $('item-img').getAttribute('src'));
  });

  /* ==================================================================
   * The grid: click, keyboard
   * ================================================================ */

  function cards() {
    return Array.from($('grid').children);
  }

  function columns() {
    const list = cards();
    if (!list.length)
      return 1;
    const top = list[0].offsetTop;
    let n = 0;
    while (n < list.length && list[n].offsetTop === top)
      n++;
    return Math.max(1, n);
  }

  $('grid').addEventListener('click', (e) => {
    const card = e.target.closest('.card');
    if (!card)
      return;
    const index = Number(card.dataset.index);
    if (e.target.closest('.more')) {
      const img = card.querySelector('.thumb img');
      setKeyQuery(state.hits[index].key, img && img.getAttribute('src'));
      return;
    }
    openItem(index, !!e.target.closest('.why'));
  });

  $('grid').addEventListener('keydown', (e) => {
    const card = e.target.closest('.card');
    if (!card || e.target !== card || e.altKey || e.ctrlKey || e.metaKey)
      return;
    const list = cards();
    const i = Number(card.dataset.index);
    let next = -1;
    switch (e.key) {
      case 'ArrowRight': next = i + 1; break;
      case 'ArrowLeft': next = i - 1; break;
      case 'ArrowDown': next = i + columns(); break;
      case 'ArrowUp':
        next = i - columns();
        if (next < 0) {
          e.preventDefault();
          $('q').focus();
          return;
        }
        break;
      case 'Home': next = 0; break;
      case 'End': next = list.length - 1; break;
      case 'Enter':
      case ' ':
        e.preventDefault();
        openItem(i);
        return;
      default:
        return;
    }
    e.preventDefault();
    if (next >= 0 && next < list.length)
      list[next].focus();
  });

  $('q').addEventListener('keydown', (e) => {
    if (e.key === 'ArrowDown' && cards().length) {
      e.preventDefault();
      cards()[0].focus();
    }
  });

  function typingIn(node) {
    return node && (node.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(node.tagName));
  }

  document.addEventListener('keydown', (e) => {
    if (e.key === '/' && !typingIn(e.target) && !e.ctrlKey && !e.metaKey && !e.altKey &&
        !$('item').open && !$('login').open) {
      e.preventDefault();
      showPage('search');
      $('q').focus();
      $('q').select();
    }
  });

  /* ==================================================================
   * The query: text, image file, drop, paste
   * ================================================================ */

  $('search-form').addEventListener('submit', (e) => {
    e.preventDefault();
    runSearch();
  });
  $('q').addEventListener('input', () => {
    if ($('q').value.trim() && state.query && state.query.kind !== 'text') {
      state.query = null;
      setChip(null);
    }
  });
  $('query-clear').addEventListener('click', clearQuery);
  /* a file that is no image the browser shows: no broken-image icon */
  $('query-thumb').addEventListener('error', () => $('query-thumb').removeAttribute('src'));
  $('file').addEventListener('change', () => {
    const file = $('file').files[0];
    if (file)
      setImageQuery(file, file.name);
    $('file').value = '';
  });

  function rerun() {
    showFilterText();
    if (state.query || $('q').value.trim())
      runSearch();
  }
  for (const id of ['target', 'k', 'hybrid', 'collapse', 'collapse-t'])
    $(id).addEventListener('change', rerun);
  $('filter-inputs').addEventListener('change', rerun);
  $('filter-inputs').addEventListener('input', showFilterText);
  $('filter-clear').addEventListener('click', () => {
    for (const input of $('filter-inputs').querySelectorAll('input'))
      input.value = '';
    rerun();
  });

  function hasFiles(e) {
    return e.dataTransfer && Array.from(e.dataTransfer.types || []).includes('Files');
  }
  let dragDepth = 0;
  document.addEventListener('dragenter', (e) => {
    if (!hasFiles(e))
      return;
    dragDepth++;
    $('drop-zone').hidden = false;
  });
  document.addEventListener('dragleave', (e) => {
    if (!hasFiles(e))
      return;
    if (--dragDepth <= 0) {
      dragDepth = 0;
      $('drop-zone').hidden = true;
    }
  });
  document.addEventListener('dragover', (e) => {
    if (hasFiles(e))
      e.preventDefault();
  });
  document.addEventListener('drop', (e) => {
    if (!hasFiles(e))
      return;
    e.preventDefault();
    dragDepth = 0;
    $('drop-zone').hidden = true;
    const file = e.dataTransfer.files[0];
    if (file)
      setImageQuery(file, file.name);
  });
  document.addEventListener('paste', (e) => {
    const items = e.clipboardData ? Array.from(e.clipboardData.items) : [];
    const item = items.find((it) => it.kind === 'file' && it.type.startsWith('image/'));
    if (!item)
      return;
    const file = item.getAsFile();
    if (!file)
      return;
    e.preventDefault();
    setImageQuery(file, file.name && file.name !== 'image.png' ? file.name : 'pasted image');
  });

  /* ==================================================================
   * Eval: Recall@K per direction and the rank histogram, drawn as SVG
   * ================================================================ */

  const SVG_NS = 'http://www.w3.org/2000/svg';
  const DIRECTIONS = [['text_to_image', 'text → image'], ['image_to_text', 'image → text']];

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {}))
      node.setAttribute(k, String(v));
    if (text !== undefined)
      node.textContent = text;
    return node;
  }

  /* A tick step of 1, 2 or 5 times a power of ten, at least v. */
  function niceStep(v) {
    if (!(v > 0))
      return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10])
      if (m * p >= v)
        return m * p;
    return 10 * p;
  }

  /* A grouped bar chart: groups along x, one bar per series in each.
   * series: [{name, values: [...]}], values[g] for group g. */
  function barChart({ id, width, groups, series, yStep, yMax, format, label, valueLabels }) {
    const slanted = groups.length > 8; /* long bucket names: slant them */
    /* drawn at the width it will have, so that text keeps its size */
    const W = Math.round(Math.min(640, Math.max(300, width || 640)));
    const H = slanted ? 280 : 260, left = 46, right = 8, top = 14, bottom = slanted ? 62 : 42;
    const plotW = W - left - right, plotH = H - top - bottom;
    const root = svg('svg', { id, viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label });
    root.append(svg('title', {}, label));
    for (let v = 0; v <= yMax + yStep / 2; v += yStep) {
      const y = top + plotH - (plotH * v) / yMax;
      root.append(svg('line', { class: v ? 'gridline' : 'axis', x1: left, x2: W - right, y1: y, y2: y }));
      root.append(svg('text', { x: left - 6, y: y + 4, 'text-anchor': 'end' }, format(v)));
    }
    const groupW = plotW / groups.length;
    const barW = Math.min(48, (groupW * 0.8) / series.length);
    groups.forEach((g, gi) => {
      const x0 = left + gi * groupW + (groupW - barW * series.length) / 2;
      series.forEach((s, si) => {
        const v = s.values[gi] || 0;
        const h = yMax > 0 ? (plotH * Math.min(v, yMax)) / yMax : 0;
        const x = x0 + si * barW;
        const rect = svg('rect', { class: `bar series${si}`, x: x + 1, y: top + plotH - h,
                                   width: Math.max(1, barW - 2), height: h });
        rect.dataset.series = s.name;
        rect.dataset.group = g;
        rect.dataset.value = String(v);
        rect.append(svg('title', {}, `${s.name}, ${g}: ${format(v, true)}`));
        root.append(rect);
        if (valueLabels)
          root.append(svg('text', { class: 'value', x: x + barW / 2, y: top + plotH - h - 3,
                                    'text-anchor': 'middle' }, format(v, true)));
      });
      const lx = left + gi * groupW + groupW / 2, ly = H - bottom + 16;
      root.append(svg('text', slanted
        ? { x: lx + 4, y: ly - 2, 'text-anchor': 'end', transform: `rotate(-40 ${lx + 4} ${ly - 2})` }
        : { x: lx, y: ly, 'text-anchor': 'middle' }, g));
    });
    return root;
  }

  function chartBox(title, chart, series) {
    const box = el('figure', { class: 'chart' });
    box.append(el('h3', {}, title), chart);
    const legend = el('div', { class: 'legend' });
    series.forEach((s, i) => {
      const item = el('span');
      item.append(el('i', { class: `series${i}` }), s.name);
      legend.append(item);
    });
    box.append(legend);
    return box;
  }

  /* Bucket labels from the upper bounds: 1, 2, 3, 4–5, ..., >1000. */
  function bucketLabels(le) {
    const labels = [];
    let prev = 0;
    for (const b of le) {
      labels.push(b === prev + 1 ? String(b) : `${prev + 1}–${b}`);
      prev = b;
    }
    labels.push(`>${prev}`);
    return labels;
  }

  function renderEval(data, ks) {
    const out = $('eval-out');
    out.replaceChildren();
    const dirs = DIRECTIONS.filter(([key]) => data[key]);
    if (!dirs.length) {
      out.append(el('p', { class: 'muted' }, 'No pairs to evaluate (items need both an image and a text).'));
      return;
    }
    const charts = el('div', { class: 'charts' });
    /* a chart's width: half the page, or all of it on a narrow screen */
    const full = out.clientWidth || 640;
    const width = (full >= 860 ? (full - 20) / 2 : full) - 22;
    const recallSeries = dirs.map(([key, name]) => ({
      name, values: ks.map((k) => Number(data[key][`recall@${k}`]) || 0),
    }));
    const pct = (v, exact) => exact ? v.toFixed(3) : `${Math.round(v * 100)}%`;
    charts.append(chartBox('Recall@K', barChart({
      id: 'chart-recall', width, groups: ks.map((k) => `R@${k}`), series: recallSeries, yStep: 0.25, yMax: 1,
      format: pct, label: 'Recall@K per direction', valueLabels: true,
    }), recallSeries));
    const hist = data[dirs[0][0]].rank_histogram;
    if (hist && Array.isArray(hist.le)) {
      const labels = bucketLabels(hist.le);
      const histSeries = dirs.map(([key, name]) => ({
        name, values: labels.map((_, i) => ((data[key].rank_histogram || {}).counts || [])[i] || 0),
      }));
      const maxCount = Math.max(1, ...histSeries.flatMap((s) => s.values));
      const step = niceStep(maxCount / 4);
      charts.append(chartBox('Rank of the true pair', barChart({
        id: 'chart-ranks', width, groups: labels, series: histSeries, yStep: step, yMax: step * Math.ceil(maxCount / step),
        format: (v) => String(Math.round(v)), label: 'Rank histogram per direction', valueLabels: false,
      }), histSeries));
    }
    out.append(charts);

    const table = el('table');
    const head = el('tr');
    head.append(el('th', {}, ''));
    for (const [, name] of dirs)
      head.append(el('th', { class: 'num' }, name));
    table.append(head);
    const num = (v, digits) => typeof v === 'number' ? v.toFixed(digits) : '—';
    const rows = [['queries', (d) => String(d.queries)], ['candidates', (d) => String(d.candidates)]];
    for (const k of ks) {
      rows.push([`recall@${k} (exact)`, (d) => num(d[`recall@${k}`], 4)]);
      rows.push([`recall@${k} (index)`, (d) => num(d[`recall_index@${k}`], 4)]);
    }
    rows.push(['median rank', (d) => num(d.median_rank, 1)], ['mean rank', (d) => num(d.mean_rank, 1)],
              ['ms per query (index)', (d) => num(d.index_ms_per_query, 3)],
              ['ms per query (exact)', (d) => num(d.exact_ms_per_query, 3)]);
    for (const [name, get] of rows) {
      const tr = el('tr');
      tr.append(el('th', { scope: 'row' }, name));
      for (const [key] of dirs)
        tr.append(el('td', { class: 'num' }, get(data[key])));
      table.append(tr);
    }
    const wrap = el('div', { class: 'eval-table' });
    wrap.append(table);
    out.append(wrap);
  }

  $('eval-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const errBox = $('eval-error');
    clearError(errBox);
    const parts = $('eval-k').value.split(/[\s,]+/).filter(Boolean);
    const ks = [];
    for (const p of parts) {
      if (!INTEGER.test(p) || Number(p) < 1 || Number(p) > 10000) {
        showError(errBox, `K: "${p}" is not an integer from 1 to 10000`);
        return;
      }
      if (!ks.includes(Number(p)))
        ks.push(Number(p));
    }
    if (!ks.length) {
      showError(errBox, 'K: give one or more integers, e.g. 1,5,10');
      return;
    }
    ks.sort((a, b) => a - b);
    const body = { k: ks, direction: $('eval-dir').value };
    const sample = $('eval-sample').value.trim();
    if (sample) {
      if (!INTEGER.test(sample) || Number(sample) < 1) {
        showError(errBox, `sample: "${sample}" is not a positive integer`);
        return;
      }
      body.sample = Number(sample);
    }
    $('eval-status').textContent = 'Evaluating…';
    $('eval-run').disabled = true;
    const t0 = performance.now();
    try {
      const data = await api('POST', '/v1/eval', body);
      renderEval(data, ks);
      const first = data.text_to_image || data.image_to_text || {};
      const queries = first.queries !== undefined && first.queries !== data.pairs ? `${first.queries} queries per direction, ` : '';
      $('eval-status').textContent = `${queries}${data.pairs} pairs, evaluated in ${((performance.now() - t0) / 1000).toFixed(1)} s`;
    } catch (x) {
      $('eval-status').textContent = '';
      showError(errBox, x);
    } finally {
      $('eval-run').disabled = false;
    }
  });

  /* ==================================================================
   * Pages and start
   * ================================================================ */

  function showPage(name) {
    const evalPage = name === 'eval';
    $('page-eval').hidden = !evalPage;
    $('page-search').hidden = evalPage;
    $('nav-eval').classList.toggle('active', evalPage);
    $('nav-search').classList.toggle('active', !evalPage);
    const hash = evalPage ? '#eval' : '#search';
    if (location.hash !== hash && (location.hash || evalPage))
      history.replaceState(null, '', hash);
  }
  window.addEventListener('hashchange', () => showPage(location.hash === '#eval' ? 'eval' : 'search'));

  async function start() {
    showPage(location.hash === '#eval' ? 'eval' : 'search');
    const errBox = $('search-error');
    try {
      const info = await api('GET', '/v1/info');
      state.info = info;
      const model = info.model || {};
      const index = info.index || {};
      const pending = index.pending_vectors ? ` · ${index.pending_vectors} not yet indexed` : '';
      $('dbinfo').textContent = `${info.items} items · ${info.dim}-d ${model.family || ''} · ${index.kind || ''}${pending}`;
      buildFilters(Array.isArray(info.fields) ? info.fields : []);
      showFilterText();
    } catch (e) {
      showError(errBox, e);
      const retry = el('button', { type: 'button', class: 'retry' }, 'Try again');
      retry.addEventListener('click', () => {
        clearError(errBox);
        start();
      });
      errBox.append(' ', retry);
      return;
    }
    /* Offer collapse, hybrid and explanations when the server's API has
     * them (explanations also need the model). */
    const modelLoaded = (state.info.model || {}).loaded;
    try {
      const doc = await api('GET', '/openapi.json');
      const props = doc.components.schemas.SearchRequest.properties;
      $('collapse-wrap').hidden = !props.collapse;
      $('hybrid-wrap').hidden = !props.hybrid;
      state.canExplain = !!(doc.paths && doc.paths['/v1/items/{key}/explain']) && modelLoaded !== 0 && modelLoaded !== false;
    } catch (e) {
      $('collapse-wrap').hidden = false;
    }
    document.body.dataset.ready = '1';
  }

  start();
})();
