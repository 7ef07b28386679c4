// fleetlearn dashboard pages: each FL.pages[name](root) fetches what it shows from the admin
// API and returns its elements. Numbers carry a data-k attribute so that a test (and a
// curious operator) can find them; buttons for changes are drawn only for the operator role,
// and the API refuses them to a viewer anyway.
'use strict';

(() => {
  const { el, table, api } = FL;

  const hashParam = (name) => new URLSearchParams((location.hash.split('?')[1] || '')).get(name);
  const card = (title, value, k) =>
    el('div', { class: 'card' }, el('div', { class: 'muted' }, title),
      el('div', { class: 'v', dataset: { k } }, value));
  const countBy = (items, key) => {
    const m = new Map();
    for (const it of items) m.set(key(it), (m.get(key(it)) || 0) + 1);
    return [...m.entries()].sort((a, b) => String(a[0]).localeCompare(String(b[0])));
  };
  const labelText = (l) => Object.entries(l || {}).map(([k, v]) => k + '=' + v).join(', ');
  const progress = (a, t) =>
    el('span', { class: 'bar' },
      el('span', { class: 'w' + Math.min(10, Math.round((10 * a) / Math.max(1, t))) }));

  // An action button: runs fn, then redraws the page; the API's refusal is shown.
  const action = (label, name, fn) =>
    el('button', {
      type: 'button',
      dataset: { action: name },
      on: {
        click: async (ev) => {
          ev.target.disabled = true;
          try {
            await fn();
            await FL.render();
          } catch (e) {
            ev.target.disabled = false;
            FL.showError(label + ' refused: ' + e.message);
          }
        },
      },
    }, label);

  // ----- fleet overview ------------------------------------------------------------------

  // Refused uploads by reason from /metrics (unauthenticated Prometheus text on the main port;
  // absent when --metrics-listen moved it away). Sampled while the page is open.
  const refusalSeries = { t: [], by: {} };
  async function refusals() {
    const res = await fetch(FL.url('metrics'), { cache: 'no-store' });
    if (!res.ok) return null;
    const out = {};
    for (const line of (await res.text()).split('\n')) {
      const m = /^fl_updates_refused_total\{reason="([a-z_]+)"\} (\d+)/.exec(line);
      if (m) out[m[1]] = Number(m[2]);
    }
    return out;
  }

  FL.pages.fleet = async () => {
    const [dev, rnd, models] = await Promise.all([api('devices'), api('rounds'), api('models')]);
    const devices = dev.devices, rounds = rnd.rounds;
    const names = Object.fromEntries(models.models.map((m) => [m.model_id, m.name]));
    const out = [el('h1', {}, 'Fleet')];
    const recent = devices.filter((d) => d.last_seen_at &&
      Date.now() - new Date(d.last_seen_at).getTime() < 300e3).length;
    out.push(el('div', { class: 'cards' },
      card('devices', devices.length, 'devices-total'),
      countBy(devices, (d) => d.state).map(([s, n]) => card(s, n, 'devices-' + s)),
      card('seen in the last 5 min', recent, 'devices-recent'),
      card('open rounds', rounds.filter((r) => r.state === 'open').length, 'rounds-open')));

    out.push(el('h2', {}, 'Devices by channel'));
    out.push(table('by-channel', ['channel', 'devices'],
      countBy(devices, (d) => (d.labels && d.labels.channel) || 'stable')
        .map(([c, n]) => [c, { v: n, cls: 'num', k: 'channel-' + c }])));
    out.push(el('h2', {}, 'Running version'));
    out.push(table('by-version', ['model', 'version', 'devices'],
      countBy(devices, (d) => (d.running_model_id || 0) + ':' + (d.running_version || 0))
        .map(([mv, n]) => {
          const [m, v] = mv.split(':').map(Number);
          return [m ? names[m] || 'model ' + m : 'none', v || '', { v: n, cls: 'num', k: 'running-' + mv }];
        })));

    out.push(el('h2', {}, 'Open rounds'));
    const open = rounds.filter((r) => r.state === 'open');
    out.push(open.length === 0 ? el('p', { class: 'muted' }, 'No open round.') :
      table('open-rounds', ['round', 'model', 'base', 'accepted / target', '', 'assigned', 'deadline in'],
        open.map((r) => [r.round_id, names[r.model_id] || r.model_id, r.base_version,
          { v: r.accepted + ' / ' + r.target, k: 'round-' + r.round_id + '-progress' },
          progress(r.accepted, r.target), r.assigned,
          Math.max(0, Math.round((new Date(r.deadline_at) - Date.now()) / 1000)) + ' s'])));

    out.push(el('h2', {}, 'Last seen'));
    const seen = [...devices].filter((d) => d.last_seen_at)
      .sort((a, b) => new Date(b.last_seen_at) - new Date(a.last_seen_at)).slice(0, 10);
    out.push(table('last-seen', ['device', 'state', 'last seen'],
      seen.map((d) => [d.device_id, d.state, FL.ago(d.last_seen_at)])));

    FL.autoRefresh(30);
    out.push(el('h2', {}, 'Refused uploads by reason'));
    const now = await refusals();
    if (now === null) {
      out.push(el('p', { class: 'muted' }, '/metrics is served on another listener (--metrics-listen).'));
      return out;
    }
    out.push(table('refusals', ['reason', 'total'],
      Object.entries(now).map(([k, v]) => [k, { v, cls: 'num', k: 'refused-' + k }])));
    // Over time: the counters sampled every 10 s while the page is open.
    const sample = (vals) => {
      refusalSeries.t.push(new Date().toISOString().slice(11, 19));
      for (const k of Object.keys(vals)) refusalSeries.by[k] = refusalSeries.by[k] || [];
      for (const k of Object.keys(refusalSeries.by)) refusalSeries.by[k].push(vals[k] || 0);
    };
    sample(now);
    const ds = () => Object.entries(refusalSeries.by).map(([k, v]) => ({ label: k, data: v }));
    out.push(FL.chart('refusals-chart', refusalSeries.t, ds()));
    FL.timers.push(setInterval(async () => {
      const v = await refusals().catch(() => null);
      const c = typeof Chart !== 'undefined' && Chart.getChart('refusals-chart');
      if (!v || !c) return;
      sample(v);
      c.data.labels = refusalSeries.t;
      c.data.datasets = ds();
      c.update();
    }, 10000));
    return out;
  };

  // ----- models and versions -------------------------------------------------------------

  FL.pages.models = async () => {
    const models = (await api('models')).models;
    const out = [el('h1', {}, 'Models and versions')];
    if (models.length === 0) return out.concat(el('p', { class: 'muted' }, 'No model yet.'));
    const id = Number(hashParam('id')) || models[models.length - 1].model_id;
    const m = models.find((x) => x.model_id === id) || models[0];
    out.push(el('label', { for: 'model-select' }, 'Model '),
      el('select', { id: 'model-select', on: { change: (e) => (location.hash = 'models?id=' + e.target.value) } },
        models.map((x) => el('option', { value: x.model_id, selected: x.model_id === m.model_id },
          x.model_id + ': ' + x.name))));
    const [vs, rs] = await Promise.all([api('models/' + m.model_id + '/versions'),
      api('rounds?model_id=' + m.model_id)]);
    const versions = vs.versions, rounds = rs.rounds;
    out.push(el('p', {}, m.n_params + ' parameters, seed ' + m.seed + ', latest version ',
      el('span', { dataset: { k: 'latest-version' } }, m.latest_version)));

    // Curves over rounds: one point per version a round produced.
    const trained = versions.filter((v) => v.round_id);
    const met = (v, k) => (v.metrics && typeof v.metrics[k] === 'number' ? v.metrics[k] : null);
    out.push(el('h2', {}, 'Round metrics'));
    const sets = [{ label: 'mean loss', data: trained.map((v) => met(v, 'mean_loss')), yAxisID: 'y' },
      { label: 'participants', data: trained.map((v) => met(v, 'participants')), yAxisID: 'y1' }];
    if (trained.some((v) => met(v, 'accuracy') !== null))
      sets.push({ label: 'accuracy', data: trained.map((v) => met(v, 'accuracy')), yAxisID: 'y1' });
    out.push(FL.chart('rounds-chart', trained.map((v) => 'v' + v.version), sets,
      { scales: { y: { position: 'left' }, y1: { position: 'right', grid: { drawOnChartArea: false } } } }));

    out.push(el('h2', {}, 'Versions'));
    out.push(table('versions', ['version', 'parent', 'round', 'participants', 'mean loss', 'accuracy',
      'samples', 'bytes', 'seconds', 'sha256', 'signature', 'created'],
      versions.map((v) => [{ v: v.version, k: 'version-' + v.version }, v.parent_version, v.round_id,
        { v: met(v, 'participants') ?? '', cls: 'num', k: 'participants-' + v.version },
        { v: FL.fmtNum(met(v, 'mean_loss')), cls: 'num', k: 'loss-' + v.version },
        FL.fmtNum(met(v, 'accuracy')), met(v, 'total_samples') ?? '',
        met(v, 'bytes_received') ?? '', FL.fmtNum(met(v, 'seconds'), 2),
        el('span', { class: 'mono', title: v.sha256 }, (v.sha256 || '').slice(0, 16)),
        v.signature && v.signature.length === 128 ? 'signed (Ed25519)' : 'unsigned',
        FL.fmtTime(v.created_at)])));

    out.push(el('h2', {}, 'Rounds'));
    out.push(table('rounds', ['round', 'state', 'base', 'result', 'accepted', 'target', 'reason', 'opened', 'closed'],
      rounds.map((r) => [r.round_id, { v: r.state, k: 'round-state-' + r.round_id }, r.base_version,
        r.result_version, r.accepted, r.target, r.reason || '', FL.fmtTime(r.opened_at),
        FL.fmtTime(r.closed_at)])));
    return out;
  };

  // ----- rollouts ------------------------------------------------------------------------

  const rolloutButtons = (r) => {
    if (!FL.can('operator')) return [];
    const post = (what, body) => () => api('rollouts/' + r.rollout_id + '/' + what, { method: 'POST', body });
    const live = r.state === 'active' || r.state === 'paused';
    const b = [];
    if (live) b.push(action('Promote', 'promote', post('promote')));
    if (r.state === 'active') b.push(action('Pause', 'pause', post('pause')));
    if (r.state === 'paused') b.push(action('Resume', 'resume', post('resume')));
    if (live || r.state === 'promoted') b.push(action('Roll back', 'rollback', post('rollback')));
    if (r.state === 'active' && r.percent < 100) {
      const inp = el('input', { type: 'number', min: r.percent, max: 100, step: 'any', value: Math.min(100, r.percent * 2 || 10), class: 'pct' });
      b.push(inp, action('Raise', 'raise', () => post('raise', { percent: Number(inp.value) })()));
    }
    return b;
  };

  FL.pages.rollouts = async () => {
    const [ro, ch] = await Promise.all([api('rollouts'), api('channels')]);
    const out = [el('h1', {}, 'Rollouts')];
    out.push(el('h2', {}, 'Channels'));
    out.push(table('channels', ['model', 'channel', 'version', 'previous', 'live rollout', 'updated'],
      ch.channels.map((c) => [c.model_id, c.name, { v: c.version, k: 'channel-version-' + c.channel_id },
        c.previous_version, c.rollout_id, FL.fmtTime(c.updated_at)])));
    out.push(el('h2', {}, 'Rollouts'));
    const rows = [...ro.rollouts].sort((a, b) => b.rollout_id - a.rollout_id);
    out.push(rows.length === 0 ? el('p', { class: 'muted' }, 'No rollout.') :
      table('rollouts', ['id', 'model', 'channel', 'version', 'from', 'percent', 'cohort', 'state',
        'gate', 'reports', 'result', 'actions'],
        rows.map((r) => [r.rollout_id, r.model_id, r.channel, r.version, r.from_version,
          { v: r.percent, cls: 'num', k: 'rollout-percent-' + r.rollout_id },
          labelText(r.cohort), { v: r.state, k: 'rollout-state-' + r.rollout_id },
          r.gate ? r.gate.metric + ' (' + (r.gate_state || '') + ')' : '',
          Object.entries(r.gate_reports || {}).map(([v, n]) => 'v' + v + ': ' + n).join(', '),
          r.gate_result && Object.keys(r.gate_result).length ? JSON.stringify(r.gate_result) : r.reason || '',
          el('span', { class: 'actions' }, rolloutButtons(r))])));
    if (!FL.can('operator')) out.push(el('p', { class: 'muted' }, 'Changes need the operator role.'));
    FL.autoRefresh(15);
    return out;
  };

  // ----- devices -------------------------------------------------------------------------

  const revokeButton = (d) => {
    // Two clicks: the first arms the button (no confirm(): a dialog would block the page).
    const b = el('button', { type: 'button', dataset: { action: 'revoke' } }, 'Revoke');
    b.addEventListener('click', async () => {
      if (b.dataset.armed !== '1') {
        b.dataset.armed = '1';
        b.textContent = 'Really revoke ' + d.device_id + '?';
        return;
      }
      b.disabled = true;
      try {
        await api('devices/' + d.device_id + '/revoke', { method: 'POST' });
        await FL.render();
      } catch (e) {
        FL.showError('Revoke refused: ' + e.message);
      }
    });
    return b;
  };

  FL.pages.devices = async () => {
    const devices = (await api('devices')).devices;
    const q = el('input', { type: 'search', id: 'device-search', placeholder: 'id, label, state, firmware' });
    const rows = devices.map((d) => {
      const text = [d.device_id, d.state, labelText(d.labels), d.firmware].join(' ').toLowerCase();
      const tr = el('tr', { dataset: { search: text } },
        [d.device_id, d.state, labelText(d.labels), d.firmware || '',
          d.running_model_id ? d.running_model_id + ':' + d.running_version : '',
          FL.ago(d.last_seen_at), FL.fmtTime(d.enrolled_at)].map((c) => el('td', {}, c)),
        el('td', {}, FL.can('operator') && d.state === 'active' ? revokeButton(d) : ''));
      return tr;
    });
    const count = el('span', { dataset: { k: 'devices-shown' } }, rows.length);
    q.addEventListener('input', () => {
      const s = q.value.trim().toLowerCase();
      let n = 0;
      for (const tr of rows) {
        tr.hidden = s !== '' && !tr.dataset.search.includes(s);
        if (!tr.hidden) n++;
      }
      count.textContent = n;
    });
    return [el('h1', {}, 'Devices'), el('div', { class: 'filters' }, q, count, ' shown'),
      el('table', { id: 'devices' },
        el('thead', {}, el('tr', {}, ['device', 'state', 'labels', 'firmware', 'running', 'last seen',
          'enrolled', ''].map((h) => el('th', {}, h)))),
        el('tbody', {}, rows))];
  };

  // ----- audit log -----------------------------------------------------------------------

  FL.pages.audit = async () => {
    const entries = (await api('audit')).entries;
    const actions = [...new Set(entries.map((e) => e.action))].sort();
    const sel = el('select', { id: 'audit-action' }, el('option', { value: '' }, 'every action'),
      actions.map((a) => el('option', { value: a }, a)));
    const who = el('input', { type: 'search', id: 'audit-text', placeholder: 'actor or target' });
    const rows = entries.map((e) => el('tr', { dataset: { action: e.action, text: (e.actor + ' ' + e.target).toLowerCase() } },
      [e.entry_id, FL.fmtTime(e.at), e.actor, e.action, e.target,
        e.detail ? JSON.stringify(e.detail) : ''].map((c) => el('td', {}, c))));
    const count = el('span', { dataset: { k: 'audit-shown' } }, rows.length);
    const filter = () => {
      const a = sel.value, t = who.value.trim().toLowerCase();
      let n = 0;
      for (const tr of rows) {
        tr.hidden = (a && tr.dataset.action !== a) || (t && !tr.dataset.text.includes(t));
        if (!tr.hidden) n++;
      }
      count.textContent = n;
    };
    sel.addEventListener('change', filter);
    who.addEventListener('input', filter);
    return [el('h1', {}, 'Audit log'), el('div', { class: 'filters' }, sel, who, count, ' shown'),
      el('table', { id: 'audit' },
        el('thead', {}, el('tr', {}, ['entry', 'at', 'actor', 'action', 'target', 'detail'].map((h) => el('th', {}, h)))),
        el('tbody', {}, rows))];
  };
})();
