// The dashboard (/ui) in headless Chromium against a real three-node cluster.
//
// Starts three `meridian run` processes (three regions, one cluster) in front of a small
// upstream, sends some traffic, opens node 1's /ui with Debian's Chromium driven by
// playwright-core, and checks each view shows the cluster's live data: the login refuses a wrong
// token and takes the right one (kept in sessionStorage only), the three regions and members
// alive, routes and upstreams, a target's health and a breaker, rate-limit decisions, traffic
// charts, the audit trail; then kills node 3 and sees it shown as suspect or dead within the
// detection time. Screenshots of every view go to the directory given as the second argument.
// usage: node dashboard_test.js MERIDIAN_BINARY SCREENSHOT_DIR
'use strict';
const {spawn, execFileSync} = require('child_process');
const fs = require('fs');
const http = require('http');
const net = require('net');
const os = require('os');
const path = require('path');

const playwrightDir = process.env.MERIDIAN_PLAYWRIGHT || '/opt/meridian-tools/playwright/node_modules/playwright-core';
const {chromium} = require(playwrightDir);

const TOKEN = 'test-token-0123456789abcdef';
const failures = [];
function check(ok, what) {
  console.log((ok ? 'ok   ' : 'FAIL ') + what);
  if (!ok) failures.push(what);
}

// A loopback port (TCP and UDP) nothing uses now and no other test is handed before the sequence
// wraps: free_port() of tests/pylib/harness.py, the allocator every test process shares.
function freePort() {
  const pylib = path.join(__dirname, '..', 'pylib');
  return Number(execFileSync('python3', ['-c', 'import sys; sys.path.insert(0, sys.argv[1]); ' +
    'import harness; print(harness.free_port())', pylib]).toString().trim());
}

function get(port, p, token, extra) {
  return new Promise((resolve) => {
    const headers = Object.assign(token ? {Authorization: 'Bearer ' + token} : {}, extra || {});
    const req = http.get({host: '127.0.0.1', port, path: p, headers}, (res) => {
      let body = '';
      res.on('data', (c) => body += c);
      res.on('end', () => resolve({status: res.statusCode, body}));
    });
    req.on('error', () => resolve({status: 0, body: ''}));
    req.setTimeout(3000, () => req.destroy());
  });
}

function put(port, p, body) {
  return new Promise((resolve) => {
    const req = http.request({host: '127.0.0.1', port, path: p, method: 'PUT',
      headers: {Authorization: 'Bearer ' + TOKEN, 'content-type': 'application/json'}}, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', () => resolve(0));
    req.end(body);
  });
}

async function until(fn, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    try { if (await fn()) return true; } catch (e) { /* not yet */ }
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function main() {
  const binary = path.resolve(process.argv[2]);
  const shots = path.resolve(process.argv[3] || 'ui-screenshots');
  fs.mkdirSync(shots, {recursive: true});
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'meridian-ui-'));
  fs.writeFileSync(path.join(tmp, 'admin.token'), TOKEN + '\n', {mode: 0o600});
  fs.writeFileSync(path.join(tmp, 'cluster.keys'), execFileSync(binary, ['keygen']), {mode: 0o600});
  const upstream = http.createServer((req, res) => {
    if (req.url.startsWith('/fail')) { res.writeHead(503); res.end('down'); return; }
    res.writeHead(200, {'content-type': 'text/plain'}); res.end('ok');
  });
  await new Promise((r) => upstream.listen(0, '127.0.0.1', r));
  const up = upstream.address().port;
  const regions = ['eu-west', 'us-east', 'ap-south'];
  const ports = [];
  for (let i = 0; i < 3; i++) ports.push({proxy: freePort(), admin: freePort(), gossip: freePort()});
  const seeds = ports.map((p) => '127.0.0.1:' + p.gossip).join(', ');
  const nodes = [];
  for (let i = 0; i < 3; i++) {
    const cfg = `node: {id: n${i + 1}, region: ${regions[i]}, data_dir: ${tmp}/d${i}}
listen: {proxy: 127.0.0.1:${ports[i].proxy}, admin: 127.0.0.1:${ports[i].admin}}
admin: {token_file: ${tmp}/admin.token}
cluster: {bind: 127.0.0.1:${ports[i].gossip}, seeds: [${seeds}], keyring_file: ${tmp}/cluster.keys}
upstreams:
  - name: app
    targets: [127.0.0.1:${up}]
    health_check: {path: /healthz, interval: 500ms}
  - name: flaky
    targets: [127.0.0.1:${up}]
    circuit_breaker: {min_requests: 3, failure_rate: 0.5, window: 30s, open_for: 60s}
    outlier: {consecutive_failures: 0}
routes:
  - name: app
    match: {path_prefix: /app}
    upstream: app
    rate_limit: {limit: 5, window: 1m, key: global, scope: global}
  - name: flaky
    match: {path_prefix: /fail}
    upstream: flaky
  - name: per-user
    match: {path_prefix: /user}
    upstream: app
    rate_limit: {limit: 3, window: 1h, key: "header:x-user", scope: global}
`;
    fs.writeFileSync(path.join(tmp, `n${i}.yaml`), cfg);
    const log = fs.openSync(path.join(tmp, `n${i}.log`), 'w');
    nodes.push(spawn(binary, ['run', '--config', path.join(tmp, `n${i}.yaml`)], {stdio: ['ignore', log, log]}));
    fs.closeSync(log);
  }
  let browser;
  try {
    check(await until(async () => {
      const r = await get(ports[0].admin, '/cluster/members', TOKEN);
      return r.status === 200 && (r.body.match(/"alive"/g) || []).length === 3;
    }, 30000), 'three nodes form a cluster');
    for (let i = 0; i < 8; i++) await get(ports[i % 3].proxy, '/app/x');
    for (let i = 0; i < 4; i++) await get(ports[0].proxy, '/fail');
    for (let i = 0; i < 6; i++) await get(ports[i % 3].proxy, '/user/a', null, {'X-User': 'mallory'});
    await get(ports[1].proxy, '/user/a', null, {'X-User': 'trent'});

    browser = await chromium.launch({executablePath: '/usr/bin/chromium', headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
             '--disable-background-networking', '--disable-component-update', '--disable-sync']});
    const page = await browser.newPage({viewport: {width: 1280, height: 900}});
    const rows = (sel) => page.$$eval(sel + ' tr', (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent)));
    const base = `http://127.0.0.1:${ports[0].admin}/ui`;
    await page.goto(base);
    check(await page.isVisible('#login-form'), 'the page asks for the token');
    await page.fill('#token', 'wrong-token-0123456789');
    await page.click('button[type=submit]');
    await page.waitForSelector('#login-error:has-text("refused")', {timeout: 5000}).catch(() => {});
    check((await page.textContent('#login-error')).includes('refused'), 'a wrong token is refused');
    await page.fill('#token', TOKEN);
    await page.click('button[type=submit]');
    await page.waitForSelector('#members tr:nth-child(4)', {timeout: 10000}).catch(() => {});
    const members = await page.textContent('#members');
    check(['n1', 'n2', 'n3', 'eu-west', 'us-east', 'ap-south'].every((s) => members.includes(s)) &&
          (members.match(/alive/g) || []).length === 3, 'the cluster view lists three regions, all alive');
    check(await page.evaluate(() => sessionStorage.getItem('meridian-token') !== null &&
                                    localStorage.length === 0), 'the token is in sessionStorage only');
    const cards = await page.textContent('#cluster-cards');
    check(cards.includes('healthy') && cards.includes('Config version'), 'status and config version shown');
    check(await until(async () => {
      const r = await rows('#nodes');
      return r.length === 4 && r.slice(1).every((x) => /^\d+$/.test(x[3]) && x[4] && !x[4].includes('differs') && x[5] === 'yes');
    }, 10000, ''), 'every node\'s config version, the same digest, converged');
    await page.screenshot({path: path.join(shots, 'cluster.png'), fullPage: true});

    await page.click('a[data-view=config]');
    await page.waitForSelector('#routes tr:nth-child(2)', {timeout: 5000}).catch(() => {});
    const routes = await page.textContent('#routes'), ups = await page.textContent('#upstreams');
    check(routes.includes('app') && routes.includes('rate_limit') && ups.includes('flaky') &&
          ups.includes(`127.0.0.1:${up}`), 'routes and upstreams shown');
    await page.screenshot({path: path.join(shots, 'config.png'), fullPage: true});

    await page.click('a[data-view=health]');
    check(await until(async () => (await page.textContent('#breakers')).includes('open'), 10000, ''),
          'the flaky upstream\'s breaker shows open');
    check(await until(async () => {
      const t = await page.textContent('#targets');
      return /app127\.0\.0\.1:\d+healthy/.test(t) && /flaky127\.0\.0\.1:\d+not checked/.test(t);
    }, 10000, ''), 'target health shown (checked, and not checked)');
    await page.screenshot({path: path.join(shots, 'health.png'), fullPage: true});

    await page.click('a[data-view=limits]');
    check(await until(async () => (await page.textContent('#limit-routes')).includes('app'), 12000, ''),
          'rate-limit decisions by route shown');
    await page.fill('#limit-route', 'app');
    await page.click('#limit-form button');
    check(await until(async () => (await page.textContent('#limit-result')).includes('"limit": 5'), 5000, ''),
          'a key looked up shows the cluster-wide count');
    check(await until(async () => {
      const t = await page.textContent('#limit-top');
      return /per-usermallory\d+ \/ 30/.test(t) && /per-usertrent1 \/ 32/.test(t) &&
             t.indexOf('mallory') < t.indexOf('trent');
    }, 12000, ''), 'the busiest keys: mallory (at the limit) before trent, counted across nodes');
    await page.screenshot({path: path.join(shots, 'limits.png'), fullPage: true});

    await page.click('a[data-view=traffic]');
    for (let i = 0; i < 6; i++) await get(ports[0].proxy, '/app/y');
    // 8 + 6 requests to /app through three nodes: node 1 alone served 9 of them.
    check(await until(async () => (await rows('#traffic-routes')).some((r) => r[0] === 'app' && Number(r[1]) === 14),
                      12000, ''), 'traffic by route: all 14 requests to app, summed over the cluster');
    check((await page.textContent('#traffic-source')).includes('3 node(s)'), 'from three nodes');
    await page.screenshot({path: path.join(shots, 'traffic.png'), fullPage: true});

    await page.click('a[data-view=usage]');
    await page.selectOption('#usage-by', 'route');
    check(await until(async () => {
      const r = await rows('#usage');
      return r.some((x) => x[0] === 'per-user' && x[1] === '7') && r.some((x) => x[0] === 'flaky' && x[2] === '4') &&
             r.some((x) => x[0] === 'app' && x[1] === '14');
    }, 12000, ''), 'usage by route shown');
    await page.selectOption('#usage-by', 'consumer');
    await page.selectOption('#usage-since', '7d');
    check(await until(async () => (await page.textContent('#usage')).includes('(none)') &&
                                  (await page.textContent('#usage-source')).includes('Per hour'), 12000, ''),
          'usage by consumer over 7 days, per hour');
    await page.screenshot({path: path.join(shots, 'usage.png'), fullPage: true});

    await page.click('a[data-view=audit]');
    await put(ports[1].admin, '/config/consumers/acme', '{"id":"acme","groups":["partners"]}');
    check(await until(async () => {
      const t = await page.textContent('#audit');
      return t.includes('PUT') && t.includes('/config/consumers/acme') && t.includes('n2');
    }, 10000, ''), 'the audit trail shows a change made on another node');
    await page.screenshot({path: path.join(shots, 'audit.png'), fullPage: true});

    // A node dies: the cluster view shows it suspect, then dead, within detection time.
    await page.click('a[data-view=cluster]');
    nodes[2].kill('SIGKILL');
    const seen = await until(async () => {
      const t = await page.textContent('#members');
      const row = t.split('n3')[1] || '';
      return /suspect|dead/.test(row.slice(0, 60));
    }, 20000, '');
    check(seen, 'a killed node shows as suspect or dead');
    await until(async () => /n3ap-south[^]*?dead/.test(await page.textContent('#members')), 20000, '');
    check(await until(async () => (await rows('#nodes')).some((x) => x[0] === 'n3' && x[3] === 'not answering'), 10000, ''),
          'the dead node\'s config is not answering');
    await page.screenshot({path: path.join(shots, 'cluster-node-down.png'), fullPage: true});
    check(fs.readdirSync(shots).filter((f) => f.endsWith('.png')).length >= 8, 'screenshots of every view saved');
  } catch (e) {
    check(false, 'the story runs to its end: ' + e);
  } finally {
    if (browser) await browser.close();
    for (const n of nodes) { try { n.kill('SIGTERM'); } catch (e) { /* gone */ } }
    upstream.close();
    await new Promise((r) => setTimeout(r, 1500));
    if (failures.length) {
      // What each node said, for the failure's cause (the last 40 lines).
      for (let i = 0; i < nodes.length; i++) {
        const lines = fs.readFileSync(path.join(tmp, `n${i}.log`), 'utf8').trimEnd().split('\n');
        console.log(`--- node n${i + 1} (exit ${nodes[i].exitCode}, signal ${nodes[i].signalCode}), last lines of its log:`);
        console.log(lines.slice(-40).join('\n'));
      }
    }
    fs.rmSync(tmp, {recursive: true, force: true});
  }
  console.log(`${failures.length} failure(s)`);
  process.exit(failures.length ? 1 : 0);
}

main();
