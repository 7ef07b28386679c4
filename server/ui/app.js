// fleetlearn dashboard: session, admin API calls, routing and DOM helpers. The pages are in
// pages.js. Everything goes through the admin JSON API with the token the operator typed,
// kept in sessionStorage (this tab only) and sent as an Authorization header: no cookies, so
// no cross-site request can act with the operator's rights. Text from the API is only ever
// set with textContent (never innerHTML), so device labels or audit details cannot inject
// markup.
'use strict';

const FL = (window.FL = { pages: {}, role: null, who: null, timers: [] });
const TOKEN_KEY = 'fl.admin_token';
const ROLES = { viewer: 0, operator: 1, admin: 2 };

// URLs relative to the page, so that a path prefix in front of /ui/ (a proxy's /fleet/ui/)
// carries over to the API: <prefix>/ui/ -> <prefix>/admin/v1/...
FL.url = (path) => new URL('../' + path, document.baseURI).toString();

FL.token = () => sessionStorage.getItem(TOKEN_KEY);

class ApiError extends Error {
  constructor(status, reason, message) {
    super(message || reason);
    this.status = status;
    this.reason = reason;
  }
}
FL.ApiError = ApiError;

// One admin API call: JSON in and out. A 401 ends the session (expired or revoked token).
FL.api = async (path, opts = {}) => {
  const headers = { Authorization: 'Bearer ' + FL.token() };
  const init = { method: opts.method || 'GET', headers, cache: 'no-store' };
  if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(opts.body);
  }
  const res = await fetch(FL.url('admin/v1/' + path), init);
  let data = null;
  try {
    data = await res.json();
  } catch (e) {
    data = null;
  }
  if (!res.ok) {
    const err = new ApiError(res.status, data && data.error, data && data.message);
    if (res.status === 401 && !opts.login) logout('Signed out: ' + err.message);
    throw err;
  }
  return data;
};

FL.can = (role) => FL.role !== null && ROLES[FL.role] >= ROLES[role];

// el('td', {class: 'num', dataset: {k: 'x'}}, 'text', child...) builds an element.
FL.el = (tag, attrs, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k === 'on') for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
    else if (k === 'class') e.className = v;
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of kids.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
};

// A table from column titles and rows of cells (a cell: a value, a Node, or {v, cls, k}).
FL.table = (id, heads, rows) => {
  const el = FL.el;
  const cell = (c) => {
    if (c !== null && typeof c === 'object' && !(c instanceof Node))
      return el('td', { class: c.cls, dataset: c.k ? { k: c.k } : undefined }, c.v);
    return el('td', typeof c === 'number' ? { class: 'num' } : {}, c === null ? '' : c);
  };
  return el('table', { id },
    el('thead', {}, el('tr', {}, heads.map((h) => el('th', {}, h)))),
    el('tbody', {}, rows.map((r) => el('tr', {}, r.map(cell)))));
};

FL.fmtTime = (t) => (t ? new Date(t).toISOString().replace('T', ' ').slice(0, 19) : '');
FL.fmtNum = (x, d = 4) => (typeof x === 'number' ? Number(x.toFixed(d)) : '');
FL.ago = (t) => {
  if (!t) return 'never';
  const s = Math.round((Date.now() - new Date(t).getTime()) / 1000);
  if (s < 120) return s + ' s ago';
  if (s < 7200) return Math.round(s / 60) + ' min ago';
  return Math.round(s / 3600) + ' h ago';
};

const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2'];

// A line chart (Chart.js from Debian's libjs-chart.js); a note instead when it is missing.
FL.chart = (id, labels, datasets, opts = {}) => {
  const box = FL.el('div', { class: 'chart' });
  if (typeof Chart === 'undefined') {
    box.append(FL.el('p', { class: 'muted' }, 'Chart.js is not installed (libjs-chart.js).'));
    return box;
  }
  const canvas = FL.el('canvas', { id });
  box.append(canvas);
  datasets.forEach((d, i) => {
    d.borderColor = d.backgroundColor = COLORS[i % COLORS.length];
  });
  // Created once the box is in the document (Chart.js measures its parent).
  requestAnimationFrame(() => {
    new Chart(canvas, {
      type: 'line',
      data: { labels, datasets },
      options: {
        animation: false,
        maintainAspectRatio: false,
        scales: opts.scales || {},
        plugins: { legend: { display: datasets.length > 1 } },
      },
    });
  });
  return box;
};

// Redraws the page every `seconds` while nobody is typing or has armed a button in it, so that
// round progress and a gate's reports fill in by themselves.
FL.autoRefresh = (seconds) => {
  FL.timers.push(setInterval(() => {
    const busy = document.activeElement && document.activeElement !== document.body;
    if (!busy && !document.querySelector('[data-armed="1"]') && !document.hidden) render();
  }, seconds * 1000));
};

FL.showError = (msg) => {
  const p = document.getElementById('page-error');
  p.textContent = msg || '';
  p.hidden = !msg;
};

function clearTimers() {
  FL.timers.forEach((t) => clearInterval(t));
  FL.timers = [];
}

async function render() {
  clearTimers();
  const name = (location.hash || '#fleet').slice(1).split('?')[0];
  const page = FL.pages[name] ? name : 'fleet';
  for (const a of document.querySelectorAll('#nav a'))
    a.classList.toggle('active', a.dataset.page === page);
  const root = document.getElementById('page');
  root.replaceChildren(FL.el('p', { class: 'muted' }, 'Loading...'));
  root.dataset.page = page;
  root.dataset.ready = '';
  FL.showError('');
  try {
    const content = await FL.pages[page](root);
    root.replaceChildren(...[].concat(content));
    root.dataset.ready = page;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return;
    root.replaceChildren();
    FL.showError('Could not load this page: ' + e.message);
  }
}
FL.render = render;

function showApp(on) {
  document.getElementById('login').hidden = on;
  for (const id of ['nav', 'who', 'logout', 'page']) document.getElementById(id).hidden = !on;
}

function logout(msg) {
  clearTimers();
  sessionStorage.removeItem(TOKEN_KEY);
  FL.role = null;
  FL.who = null;
  document.getElementById('page').replaceChildren();
  document.getElementById('login-error').textContent = msg || '';
  showApp(false);
}

// Checks the token with GET /admin/v1/whoami, which also names its role.
async function login(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    const who = await FL.api('whoami', { login: true });
    FL.who = who;
    FL.role = who.role;
    document.getElementById('who').textContent = who.name
      ? who.name + ' (' + who.role + ')'
      : 'token ' + who.token_id + ' (' + who.role + ')';
    document.getElementById('who').dataset.role = who.role;
    showApp(true);
    await render();
  } catch (e) {
    logout(e instanceof ApiError ? 'Refused: ' + e.message : 'Cannot reach the coordinator');
  }
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = document.getElementById('token');
    const t = input.value.trim();
    input.value = '';
    if (t) login(t);
  });
  document.getElementById('logout').addEventListener('click', () => logout(''));
  window.addEventListener('hashchange', () => {
    if (FL.role) render();
  });
  if (FL.token()) login(FL.token());
  else showApp(false);
});
