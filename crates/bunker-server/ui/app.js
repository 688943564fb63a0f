// bunker status page: reads the JSON API with the token typed in, and
// draws what that token may see. The token lives in sessionStorage and
// travels only in the Authorization header, never in a URL or a cookie.
// Every value from the server reaches the page through textContent or
// setAttribute on elements built here: nothing is parsed as HTML.
'use strict';

(function () {
  const KEY = 'bunker-token';
  const REFRESH_MS = 30000;
  const SVG = 'http://www.w3.org/2000/svg';
  const DAY_MS = 86400000;

  const byId = (id) => document.getElementById(id);

  // An element with attributes and children (strings become text nodes).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const c of children) e.append(typeof c === 'string' ? document.createTextNode(c) : c);
    return e;
  }

  function svgEl(tag, attrs, ...children) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    for (const c of children) e.append(typeof c === 'string' ? document.createTextNode(c) : c);
    return e;
  }

  function bytes(n) {
    if (n === null || n === undefined) return '–';
    const units = ['B', 'kB', 'MB', 'GB', 'TB', 'PB'];
    let i = 0;
    let v = n;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
    return (i === 0 ? String(v) : v.toFixed(v < 10 ? 2 : 1)) + ' ' + units[i];
  }

  function ratio(r) {
    return r > 0 ? r.toFixed(2) + '×' : '–';
  }

  function age(ms) {
    const s = Math.max(0, ms / 1000);
    if (s < 90) return Math.round(s) + ' s';
    if (s < 5400) return Math.round(s / 60) + ' min';
    if (s < 172800) return Math.round(s / 3600) + ' h';
    return Math.round(s / 86400) + ' d';
  }

  function day(ms) {
    return new Date(ms).toISOString().slice(0, 10);
  }

  function say(text, isError) {
    const m = byId('message');
    m.textContent = text;
    m.className = isError ? 'error' : '';
  }

  // GET path with the token: the parsed JSON, or null for 403 (not for
  // this token). A refused token (401) is forgotten.
  async function get(path, token) {
    const r = await fetch(path, {
      headers: { Authorization: 'Bearer ' + token },
      cache: 'no-store',
      credentials: 'omit',
      referrerPolicy: 'no-referrer',
    });
    if (r.status === 403) return null;
    if (r.status === 401) {
      sessionStorage.removeItem(KEY);
      throw new Error('the server refused this token');
    }
    if (!r.ok) {
      let why = r.status + ' ' + r.statusText;
      try { why = (await r.json()).error.message; } catch (e) { /* not JSON */ }
      throw new Error(path + ': ' + why);
    }
    return r.json();
  }

  // The verify or drill cell: red when missing, failed, or older than the
  // drill interval.
  function checkCell(check, now, intervalMs) {
    if (!check) return el('td', { class: 'check bad', 'data-check': 'never' }, 'never');
    const old = now - check.at_unix_ms > intervalMs;
    const state = !check.ok ? 'failed' : old ? 'overdue' : 'passed';
    const td = el('td', { class: 'check ' + (state === 'passed' ? 'ok' : 'bad'), 'data-check': state },
      (check.ok ? 'passed ' : 'FAILED ') + age(now - check.at_unix_ms) + ' ago');
    td.setAttribute('title', check.detail + ' (' + check.verified_by + ')');
    return td;
  }

  // A small bar plot of one name's stored bytes per day.
  function sparkline(perDay, firstDay) {
    const w = 150, h = 32, n = perDay.length;
    const max = Math.max(1, ...perDay);
    const s = svgEl('svg', { width: w, height: h, viewBox: '0 0 ' + w + ' ' + h, role: 'img' });
    s.append(svgEl('title', {}, 'stored bytes per day, last ' + n + ' days'));
    s.append(svgEl('line', { class: 'axis', x1: 0, y1: h - 0.5, x2: w, y2: h - 0.5 }));
    const bw = w / n;
    perDay.forEach((v, i) => {
      if (v === 0) return;
      const bh = Math.max(1, (v / max) * (h - 2));
      s.append(svgEl('rect', { class: 'bar', x: (i * bw + 0.5).toFixed(1), y: (h - 1 - bh).toFixed(1),
        width: Math.max(1, bw - 1).toFixed(1), height: bh.toFixed(1) },
        svgEl('title', {}, day(firstDay + i * DAY_MS) + ': ' + bytes(v))));
    });
    return s;
  }

  // The larger plot: every shown name's stored bytes per day, summed.
  function growthChart(totals, firstDay) {
    const w = 900, h = 220, left = 70, bottom = 24, n = totals.length;
    const max = Math.max(1, ...totals);
    const s = svgEl('svg', { viewBox: '0 0 ' + w + ' ' + h, role: 'img' });
    s.append(svgEl('title', {}, 'stored bytes per day, all names shown'));
    const ph = h - bottom - 8;
    for (const f of [0, 0.5, 1]) {
      const y = 8 + ph * (1 - f);
      s.append(svgEl('line', { class: 'axis', x1: left, y1: y, x2: w, y2: y }));
      s.append(svgEl('text', { x: left - 6, y: y + 4, 'text-anchor': 'end' }, bytes(Math.round(max * f))));
    }
    const bw = (w - left) / n;
    totals.forEach((v, i) => {
      const d = day(firstDay + i * DAY_MS);
      if ((n - 1 - i) % 7 === 0) {
        const last = i === n - 1;
        s.append(svgEl('text', { x: last ? w : left + i * bw + bw / 2, y: h - 6,
          'text-anchor': last ? 'end' : 'middle' }, d.slice(5)));
      }
      if (v === 0) return;
      const bh = Math.max(1, (v / max) * ph);
      s.append(svgEl('rect', { class: 'bar', x: (left + i * bw + 1).toFixed(1), y: (8 + ph - bh).toFixed(1),
        width: Math.max(1, bw - 2).toFixed(1), height: bh.toFixed(1) },
        svgEl('title', {}, d + ': ' + bytes(v))));
    });
    return s;
  }

  function card(label, value, cls) {
    return el('div', cls ? { class: cls } : {}, el('dt', {}, label), el('dd', {}, value));
  }

  function render(info, stats, status, sync) {
    const now = status.now_unix_ms;
    const intervalMs = status.drill_interval_seconds * 1000;
    const sp = status.space;
    let forecast = 'no growth';
    if (sp.full_in_days !== null) {
      forecast = sp.full_in_days > 3650 ? '> 10 years' : Math.round(sp.full_in_days) + ' days';
    } else if (sp.free_bytes === null) {
      forecast = 'bucket';
    }
    byId('totals').replaceChildren(
      card('snapshots', String(stats.snapshots)),
      card('logical', bytes(stats.logical_bytes)),
      card('stored (packs)', bytes(stats.stored_bytes)),
      card('dedup', ratio(stats.dedup_ratio)),
      card('compression', ratio(stats.compression_ratio)),
      card('free space', sp.free_bytes === null ? 'bucket' : bytes(sp.free_bytes)),
      card('growth per day', bytes(Math.round(sp.growth_bytes_per_day))),
      card('full in', forecast, sp.full_in_days !== null && sp.full_in_days < 30 ? 'bad' : ''),
      card('storage', info ? info.storage : 'not shown to this token'),
      card('encryption', !info ? 'not shown to this token'
        : info.encrypted ? 'AES-256-GCM, key ' + info.key_id : 'off (clear)'),
    );

    const rows = status.names.map((n) => el('tr', { 'data-name': n.name },
      el('td', { class: 'name' }, n.name),
      el('td', {}, '#' + n.latest.id + ', ' + age(now - n.latest.created_unix_ms) + ' ago'),
      el('td', { class: 'num' }, bytes(n.latest.size_bytes)),
      el('td', { class: 'source' }, n.latest.source),
      el('td', {}, sparkline(n.stored_bytes_per_day, status.first_day_unix_ms)),
      el('td', { class: 'num' }, ratio(n.dedup_ratio)),
      el('td', { class: 'num' }, ratio(n.compression_ratio)),
      checkCell(n.last_verify, now, intervalMs),
      checkCell(n.last_drill, now, intervalMs),
    ));
    byId('names').tBodies[0].replaceChildren(...rows);
    byId('no-names').hidden = rows.length > 0;

    const days = status.names.length ? status.names[0].stored_bytes_per_day.length : 30;
    const totals = new Array(days).fill(0);
    for (const n of status.names) n.stored_bytes_per_day.forEach((v, i) => { totals[i] += v; });
    byId('growth').replaceChildren(growthChart(totals, status.first_day_unix_ms));
    byId('days').tHead.replaceChildren(el('tr', {}, el('th', {}, 'day'),
      ...status.names.map((n) => el('th', {}, n.name)), el('th', {}, 'total')));
    const dayRows = [];
    for (let i = days - 1; i >= 0; i -= 1) {
      dayRows.push(el('tr', {}, el('td', {}, day(status.first_day_unix_ms + i * DAY_MS)),
        ...status.names.map((n) => el('td', { class: 'num' }, bytes(n.stored_bytes_per_day[i]))),
        el('td', { class: 'num' }, bytes(totals[i]))));
    }
    byId('days').tBodies[0].replaceChildren(...dayRows);

    const jobs = sync ? sync.jobs : [];
    byId('sync').tBodies[0].replaceChildren(...jobs.map((j) => {
      const run = j.last_run;
      const lagBad = j.lag_seconds === null || j.lag_seconds > 2 * j.interval_seconds || (run && !run.ok);
      return el('tr', { 'data-job': j.name },
        el('td', { class: 'name' }, j.name),
        el('td', {}, j.from),
        el('td', {}, j.names.length ? j.names.join(', ') : 'all'),
        run ? el('td', { class: 'check ' + (run.ok ? 'ok' : 'bad') },
          (run.ok ? 'ok ' : 'failed ') + age(now - run.ended_unix_ms) + ' ago' + (run.error ? ': ' + run.error : ''))
          : el('td', {}, j.running ? 'running' : 'not yet'),
        el('td', { class: 'check ' + (lagBad ? 'bad' : 'ok') }, j.lag_seconds === null ? 'unknown' : age(j.lag_seconds * 1000)),
        el('td', {}, j.next_run_unix_ms ? 'in ' + age(j.next_run_unix_ms - now) : '–'));
    }));
    byId('sync-note').textContent = sync === null ? 'This token may not see sync jobs.'
      : jobs.length === 0 ? 'No scheduled pull jobs on this server.' : '';
    byId('updated').textContent = 'Updated ' + new Date(now).toISOString().replace('T', ' ').slice(0, 19)
      + ' UTC; refreshes every ' + REFRESH_MS / 1000 + ' s. Verify and drill cells turn red when failed, missing, or older than '
      + age(intervalMs) + '.';
  }

  async function refresh() {
    const token = sessionStorage.getItem(KEY);
    if (!token) {
      document.body.dataset.state = 'login';
      byId('main').hidden = true;
      return;
    }
    try {
      const [info, stats, status, sync] = await Promise.all([get('/v1/info', token),
        get('/v1/stats', token), get('/v1/status', token), get('/v1/sync', token)]);
      render(info, stats, status, sync);
      byId('main').hidden = false;
      say('', false);
      document.body.dataset.state = 'loaded';
    } catch (e) {
      say(e.message, true);
      document.body.dataset.state = 'error';
      if (!sessionStorage.getItem(KEY)) byId('main').hidden = true;
    }
  }

  function start() {
    byId('token-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const input = byId('token');
      sessionStorage.setItem(KEY, input.value.trim());
      input.value = '';
      refresh();
    });
    byId('forget').addEventListener('click', () => {
      sessionStorage.removeItem(KEY);
      byId('main').hidden = true;
      say('Token forgotten.', false);
      document.body.dataset.state = 'login';
    });
    refresh();
    setInterval(refresh, REFRESH_MS);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
