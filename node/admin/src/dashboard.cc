// The dashboard's assets (GET /ui, /ui/app.js, /ui/app.css), built into the binary: no CDN, no
// build step. The page asks for the admin token in a login form, keeps it in sessionStorage only
// (gone when the tab closes), and reads the admin API with it: the cluster (regions, members,
// RTTs, config version and convergence), routes and upstreams, target health and breakers,
// rate-limit decisions and the busiest keys, traffic (requests, errors, p99 latency over the
// last hour, per minute, from the nodes' analytics summed over the cluster), usage per consumer,
// API key, route and version (GET /analytics) and the audit trail; it refreshes every 2 s.
#include "dashboard.h"

namespace meridian::node {

std::string_view dashboard_html() {
  return R"HTML(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>meridian</title>
<link rel="stylesheet" href="/ui/app.css">
</head>
<body>
<header>
  <h1>meridian</h1>
  <span id="node-name"></span>
  <nav id="nav" hidden>
    <a href="#cluster" data-view="cluster">Cluster</a>
    <a href="#traffic" data-view="traffic">Traffic</a>
    <a href="#usage" data-view="usage">Usage</a>
    <a href="#config" data-view="config">Routes &amp; upstreams</a>
    <a href="#health" data-view="health">Health &amp; breakers</a>
    <a href="#limits" data-view="limits">Rate limits</a>
    <a href="#audit" data-view="audit">Audit</a>
    <button id="logout" type="button">Sign out</button>
  </nav>
</header>
<main>
  <section id="login">
    <h2>Sign in</h2>
    <form id="login-form">
      <label for="token">Admin token</label>
      <input id="token" type="password" autocomplete="off" required>
      <button type="submit">Sign in</button>
      <p id="login-error" class="error" role="alert"></p>
      <p class="hint">The token stays in this tab's session storage.</p>
    </form>
  </section>
  <section id="view-cluster" class="view" hidden>
    <div class="cards" id="cluster-cards"></div>
    <h2>Regions</h2>
    <div id="regions"></div>
    <h2>Members</h2>
    <table id="members"></table>
    <h2>Config on each node</h2>
    <table id="nodes"></table>
  </section>
  <section id="view-traffic" class="view" hidden>
    <p class="hint" id="traffic-source">The last hour, per minute, summed over the cluster.</p>
    <h2>Requests per second</h2><canvas id="chart-rps" width="900" height="160"></canvas>
    <h2>Error ratio (5xx)</h2><canvas id="chart-errors" width="900" height="160"></canvas>
    <h2>p99 latency (ms)</h2><canvas id="chart-p99" width="900" height="160"></canvas>
    <h2>Routes, the last hour</h2>
    <table id="traffic-routes"></table>
  </section>
  <section id="view-usage" class="view" hidden>
    <form id="usage-form">
      <label>By <select id="usage-by">
        <option value="consumer">consumer</option><option value="key">API key</option>
        <option value="route">route</option><option value="version">API version</option>
      </select></label>
      <label>Over <select id="usage-since">
        <option value="1h">the last hour</option><option value="24h">the last day</option>
        <option value="7d">the last 7 days</option><option value="90d">the last 90 days</option>
      </select></label>
    </form>
    <p class="hint" id="usage-source"></p>
    <table id="usage"></table>
  </section>
  <section id="view-config" class="view" hidden>
    <h2>Routes</h2><table id="routes"></table>
    <h2>Upstreams</h2><table id="upstreams"></table>
    <h2>Consumers</h2><table id="consumers"></table>
  </section>
  <section id="view-health" class="view" hidden>
    <h2>Targets</h2><table id="targets"></table>
    <h2>Breakers</h2><table id="breakers"></table>
  </section>
  <section id="view-limits" class="view" hidden>
    <h2>Decisions by route (this node)</h2><table id="limit-routes"></table>
    <h2>Busiest keys, this window, cluster-wide</h2><table id="limit-top"></table>
    <h2>Look up a key</h2>
    <form id="limit-form">
      <input id="limit-route" placeholder="route" required>
      <input id="limit-key" placeholder="key (client address, consumer, header value)">
      <button type="submit">Look up</button>
    </form>
    <pre id="limit-result"></pre>
  </section>
  <section id="view-audit" class="view" hidden>
    <table id="audit"></table>
  </section>
  <p id="status" class="hint"></p>
</main>
<script src="/ui/app.js"></script>
</body>
</html>
)HTML";
}

std::string_view dashboard_css() {
  return R"CSS(
body { font-family: system-ui, sans-serif; margin: 0; color: #1d2430; background: #f5f6f8; }
header { display: flex; align-items: center; gap: 1em; padding: .6em 1.2em; background: #1d2430; color: #fff; }
header h1 { font-size: 1.2em; margin: 0; }
nav { display: flex; gap: .8em; margin-left: auto; align-items: center; }
nav a { color: #cfd6e4; text-decoration: none; }
nav a.active { color: #fff; border-bottom: 2px solid #5aa0ff; }
nav button { background: none; border: 1px solid #cfd6e4; color: #cfd6e4; border-radius: 4px; }
main { padding: 1em 1.5em; }
h2 { font-size: 1em; margin: 1.2em 0 .4em; }
table { border-collapse: collapse; background: #fff; min-width: 40%; }
th, td { text-align: left; padding: .3em .8em; border-bottom: 1px solid #e3e6eb; font-size: .9em; }
th { background: #eef1f5; }
.cards { display: flex; gap: 1em; flex-wrap: wrap; }
.card { background: #fff; border-radius: 6px; padding: .6em 1em; min-width: 9em; box-shadow: 0 1px 2px #0002; }
.card b { display: block; font-size: 1.4em; }
.state-alive, .state-closed, .ok { color: #13803b; font-weight: 600; }
.state-suspect, .state-half_open { color: #b26a00; font-weight: 600; }
.state-dead, .state-open, .bad { color: #c62828; font-weight: 600; }
.state-left { color: #777; }
.regions { display: flex; gap: 1em; flex-wrap: wrap; }
.region { background: #fff; border-radius: 6px; padding: .6em 1em; box-shadow: 0 1px 2px #0002; }
.error { color: #c62828; }
.hint { color: #667; font-size: .85em; }
canvas { background: #fff; border-radius: 6px; display: block; max-width: 100%; }
input, select { padding: .3em; margin-right: .4em; }
label { margin-right: 1em; }
)CSS";
}

std::string_view dashboard_js() {
  return R"JS('use strict';
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem('meridian-token') || '';
let view = (location.hash || '#cluster').slice(1);
let lastSample = null;  // this node's /metrics, for the rate-limit decisions
const HOUR = 3600 * 1000;

async function api(path) {
  const r = await fetch(path, {headers: {'Authorization': 'Bearer ' + token}});
  if (r.status === 401) { signOut('The token was refused.'); throw new Error('401'); }
  if (!r.ok) throw new Error(path + ': ' + r.status);
  return path === '/metrics' ? r.text() : r.json();
}

function esc(v) {
  return String(v ?? '').replace(/[&<>"']/g, (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
}

function table(el, head, rows) {
  el.innerHTML = '<tr>' + head.map((h) => '<th>' + esc(h) + '</th>').join('') + '</tr>' +
    rows.map((r) => '<tr>' + r.map((c) => '<td' + (c && c.cls ? ' class="' + c.cls + '"' : '') + '>' +
      esc(c && c.text !== undefined ? c.text : c) + '</td>').join('') + '</tr>').join('');
}

function state(s) { return {text: s, cls: 'state-' + s}; }

function show() {
  const signedIn = !!token;
  $('login').hidden = signedIn;
  $('nav').hidden = !signedIn;
  for (const s of document.querySelectorAll('.view')) s.hidden = !signedIn || s.id !== 'view-' + view;
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.view === view);
}

function signOut(why) {
  token = '';
  sessionStorage.removeItem('meridian-token');
  $('login-error').textContent = why || '';
  show();
}

$('login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  token = $('token').value.trim();
  const r = await fetch('/cluster/health', {headers: {'Authorization': 'Bearer ' + token}});
  if (r.status === 401 || r.status === 403) { signOut('The token was refused.'); return; }
  sessionStorage.setItem('meridian-token', token);
  $('token').value = '';
  $('login-error').textContent = '';
  show();
  refresh();
});
$('logout').addEventListener('click', () => signOut(''));
window.addEventListener('hashchange', () => { view = (location.hash || '#cluster').slice(1); show(); refresh(); });

async function renderCluster() {
  const [h, m] = await Promise.all([api('/cluster/health'), api('/cluster/members')]);
  $('node-name').textContent = 'node ' + (h.self || '');
  const counts = h.members || {};
  const cards = [
    ['Cluster', h.status, h.status === 'healthy' ? 'ok' : 'bad'],
    ['Config version', h.config_version, ''],
    ['Converged', h.converged ? 'yes' : 'no', h.converged ? 'ok' : 'bad'],
    ['Alive', counts.alive ?? 0, 'ok'], ['Suspect', counts.suspect ?? 0, counts.suspect ? 'bad' : ''],
    ['Dead', counts.dead ?? 0, counts.dead ? 'bad' : '']];
  $('cluster-cards').innerHTML = cards.map(([k, v, c]) =>
    '<div class="card" data-card="' + esc(k) + '">' + esc(k) + '<b class="' + c + '">' + esc(v) + '</b></div>').join('');
  const rtt = h.region_rtt_ms || {};
  const members = (m.members || []).slice().sort((a, b) => (a.region + a.id).localeCompare(b.region + b.id));
  const regions = {};
  for (const x of members) (regions[x.region] = regions[x.region] || []).push(x);
  $('regions').innerHTML = '<div class="regions">' + Object.keys(regions).sort().map((r) =>
    '<div class="region" data-region="' + esc(r) + '"><b>' + esc(r) + '</b>' +
    (r in rtt ? ' <span class="hint">' + esc(rtt[r]) + ' ms</span>' : ' <span class="hint">here</span>') +
    '<br>' + regions[r].map((x) => '<span class="state-' + esc(x.state) + '">' + esc(x.id) + ' ' + esc(x.state) + '</span>').join('<br>') +
    '</div>').join('') + '</div>';
  table($('members'), ['ID', 'Region', 'Zone', 'Address', 'State', 'Incarnation', 'RTT'],
    members.map((x) => [x.id, x.region, x.zone, x.address, state(x.state), x.incarnation,
      x.region in rtt ? rtt[x.region] + ' ms' : '-']));
  // What each node says of itself: its config version and digest, and whether it converged.
  const n = await api('/cluster/nodes');
  const mine = h.config_digest;
  table($('nodes'), ['Node', 'Region', 'State', 'Config version', 'Digest', 'Converged'],
    (n.nodes || []).slice().sort((a, b) => a.id.localeCompare(b.id)).map((x) => x.answered
      ? [x.id, x.region, state(x.state), x.config_version,
         {text: x.config_digest + (x.config_digest === mine ? '' : ' (differs)'), cls: x.config_digest === mine ? 'ok' : 'bad'},
         {text: x.converged ? 'yes' : 'no', cls: x.converged ? 'ok' : 'bad'}]
      : [x.id, x.region, state(x.state), {text: 'not answering', cls: x.state === 'left' ? '' : 'bad'}, '', '']));
}

function parseMetrics(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const m = line.match(/^([a-z_:0-9]+)(\{([^}]*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) for (const p of m[3].matchAll(/([a-z_]+)="((?:[^"\\]|\\.)*)"/g)) labels[p[1]] = p[2];
    out.push({name: m[1], labels, value: Number(m[4])});
  }
  return out;
}

async function sample() {
  if (!token) return;
  const limits = {};
  for (const x of parseMetrics(await api('/metrics'))) {
    if (x.name !== 'meridian_ratelimit_decisions_total') continue;
    const r = (limits[x.labels.route] = limits[x.labels.route] || {});
    r[x.labels.result] = (r[x.labels.result] || 0) + x.value;
  }
  lastSample = {t: Date.now(), limits};
}

function nodesNote(a) {
  const n = a.nodes || {answered: [], missing: []};
  return 'Summed over ' + n.answered.length + ' node(s)' +
    (n.missing.length ? '; not answering: ' + n.missing.join(', ') : '') + '.';
}

function chart(canvas, pts, key, fmt) {
  const c = canvas.getContext('2d');
  const W = canvas.width, H = canvas.height;
  c.clearRect(0, 0, W, H);
  c.fillStyle = '#667'; c.font = '11px sans-serif';
  const vals = pts.map((p) => p[key]).filter((v) => isFinite(v));
  const max = Math.max(1e-9, ...vals);
  c.fillText(fmt(max), 4, 12);
  c.fillText(pts.length ? fmt(vals[vals.length - 1] ?? 0) + ' now' : 'no requests yet', W - 110, 12);
  // One bar per minute over the last hour (a single minute shows too).
  const t0 = Date.now() - HOUR, bw = Math.max(2, (W - 8) / 60 - 2);
  c.fillStyle = '#2f6fdf';
  for (const p of pts) {
    const v = isFinite(p[key]) ? p[key] : 0;
    const x = (p.t - t0) / HOUR * (W - 8) + 4 - bw, h = v / max * (H - 20);
    c.fillRect(x, H - 4 - h, bw, h);
  }
}

async function renderTraffic() {
  const a = await api('/analytics?by=route&since=1h&step=1m');
  const now = Date.now();
  // Per minute; the current minute so far counts over the seconds it has had.
  const pts = (a.total || []).map((p) => {
    const secs = Math.max(1, Math.min(60, (now - p.t) / 1000));
    return {t: p.t + secs * 1000, rps: p.requests / secs, err: p.requests ? p.errors / p.requests : 0, p99: p.p99_ms};
  });
  $('traffic-source').textContent = 'The last hour, per minute. ' + nodesNote(a);
  chart($('chart-rps'), pts, 'rps', (v) => v.toFixed(1) + '/s');
  chart($('chart-errors'), pts, 'err', (v) => (v * 100).toFixed(1) + ' %');
  chart($('chart-p99'), pts, 'p99', (v) => v.toFixed(1) + ' ms');
  table($('traffic-routes'), ['Route', 'Requests', '5xx', 'p50 ms', 'p99 ms'],
    (a.series || []).map((x) => [x.key, x.summary.requests,
      {text: x.summary.errors, cls: x.summary.errors ? 'bad' : ''}, x.summary.p50_ms, x.summary.p99_ms]));
}

function bytes(n) {
  return n >= 1 << 30 ? (n / (1 << 30)).toFixed(1) + ' GiB' : n >= 1 << 20 ? (n / (1 << 20)).toFixed(1) + ' MiB'
    : n >= 1024 ? (n / 1024).toFixed(1) + ' KiB' : n + ' B';
}

async function renderUsage() {
  const by = $('usage-by').value, since = $('usage-since').value;
  const a = await api('/analytics?by=' + by + '&since=' + since + '&limit=100');
  $('usage-source').textContent = ({60000: 'Per minute. ', 3600000: 'Per hour. '}[a.step_ms] || 'Per day. ') + nodesNote(a);
  table($('usage'), [by === 'key' ? 'API key' : by[0].toUpperCase() + by.slice(1), 'Requests', '5xx', 'Bytes', 'p50 ms', 'p99 ms'],
    (a.series || []).map((x) => [x.key, x.summary.requests, {text: x.summary.errors, cls: x.summary.errors ? 'bad' : ''},
      bytes(x.summary.bytes), x.summary.p50_ms, x.summary.p99_ms]));
}
$('usage-by').addEventListener('change', () => { refresh.forced = true; refresh(); });
$('usage-since').addEventListener('change', () => { refresh.forced = true; refresh(); });

async function renderConfig() {
  const c = await api('/config');
  table($('routes'), ['Route', 'Match', 'Upstream', 'Policies'], (c.routes || []).map((r) => [r.name,
    Object.entries(r.match || {}).map(([k, v]) => k + '=' + (Array.isArray(v) ? v.join(',') : typeof v === 'object' ? JSON.stringify(v) : v)).join(' ') || '*',
    r.upstream, ['auth', 'rate_limit', 'grpc_transcode', 'websocket', 'fallback'].filter((k) => r[k]).join(' ')]));
  table($('upstreams'), ['Upstream', 'Protocol', 'Balance', 'Targets'], (c.upstreams || []).map((u) => [u.name,
    u.protocol || 'http1', u.balance, (u.targets || []).map((t) => t.address || t).join(', ')]));
  table($('consumers'), ['Consumer', 'Groups'], (c.consumers || []).map((x) => [x.id, (x.groups || []).join(', ')]));
}

async function renderHealth() {
  const [b, text, cfg] = await Promise.all([api('/breakers'), api('/metrics'), api('/config')]);
  const checked = new Set((cfg.upstreams || []).filter((u) => u.health_check).map((u) => u.name));
  const health = parseMetrics(text).filter((x) => x.name === 'meridian_upstream_healthy');
  table($('targets'), ['Upstream', 'Target', 'Health check'], health.map((x) => [x.labels.upstream, x.labels.target,
    !checked.has(x.labels.upstream) ? {text: 'not checked', cls: ''}
      : x.value ? {text: 'healthy', cls: 'ok'} : {text: 'unhealthy', cls: 'bad'}]));
  table($('breakers'), ['Upstream', 'Target', 'State', 'Since', 'Set by'], (b.breakers || []).map((x) => [x.upstream,
    x.target, state(x.state), x.since ? new Date(x.since).toISOString() : '', x.origin]));
}

async function renderLimits() {
  await sample();
  table($('limit-routes'), ['Route', 'Allowed', 'Rejected'], Object.entries(lastSample.limits).sort().map(([r, v]) =>
    [r, v.allowed || 0, {text: v.rejected || 0, cls: v.rejected ? 'bad' : ''}]));
  // Every route with a limit counted per key (consumer, address, header value).
  const cfg = await api('/config');
  const keyed = [];
  for (const r of cfg.routes || []) {
    const limits = Array.isArray(r.rate_limit) ? r.rate_limit : r.rate_limit ? [r.rate_limit] : [];
    limits.forEach((l, i) => { if (l.key && l.key !== 'global' && l.key !== 'route') keyed.push([r.name, i, limits.length]); });
  }
  const rows = [];
  for (const [name, i, n] of keyed) {
    const v = await api('/ratelimits/' + encodeURIComponent(name) + '?top=10&limit=' + i);
    const label = n > 1 ? name + ' #' + i : name;
    for (const k of v.top || []) rows.push([label, k.key, k.count + ' / ' + v.limit,
      {text: k.remaining, cls: k.remaining ? '' : 'bad'}, {text: k.rejected, cls: k.rejected ? 'bad' : ''},
      Object.entries(k.by_node || {}).map(([n, c]) => n + ': ' + c).join(', ')]);
  }
  table($('limit-top'), ['Route', 'Key', 'Count / limit', 'Remaining', 'Refused', 'By node'], rows);
}
$('limit-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const q = $('limit-key').value ? '?key=' + encodeURIComponent($('limit-key').value) : '';
  try {
    $('limit-result').textContent = JSON.stringify(await api('/ratelimits/' + encodeURIComponent($('limit-route').value) + q), null, 2);
  } catch (err) { $('limit-result').textContent = String(err); }
});

async function renderAudit() {
  const a = await api('/audit?limit=100');
  table($('audit'), ['When', 'Node', 'Method', 'Path', 'From', 'Status'], (a.entries || []).map((x) => [
    new Date(x.at).toISOString(), x.node, x.method, x.path, x.client_cert || x.from, x.status]));
}

let refreshing = false, lastUsage = 0;
async function refresh() {
  if (!token || refreshing) return;  // one at a time: a slow cluster-wide answer is not stacked
  // The usage over a day or more changes slowly and costs every node a scan: every 30 s.
  if (view === 'usage' && $('usage-since').value !== '1h' && Date.now() - lastUsage < 30000 &&
      !refresh.forced) return;
  refresh.forced = false;
  refreshing = true;
  try {
    await refreshView();
  } finally {
    refreshing = false;
  }
}

async function refreshView() {
  if (!token) return;
  try {
    if (view === 'cluster') await renderCluster();
    else if (view === 'traffic') await renderTraffic();
    else if (view === 'usage') { await renderUsage(); lastUsage = Date.now(); }
    else if (view === 'config') await renderConfig();
    else if (view === 'health') await renderHealth();
    else if (view === 'limits') await renderLimits();
    else if (view === 'audit') await renderAudit();
    $('status').textContent = 'updated ' + new Date().toLocaleTimeString();
    document.body.dataset.updated = String(Date.now());
  } catch (err) {
    if (String(err) !== 'Error: 401') $('status').textContent = 'cannot reach the node: ' + err.message;
  }
}

show();
if (token) refresh();
setInterval(refresh, 2000);
)JS";
}

}  // namespace meridian::node
