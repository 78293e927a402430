// A browser device of an account: JsSIP in headless Chromium (the system browser,
// driven by playwright-core) registers over SIP-over-WebSocket, answers the first
// incoming call, and reports what happens, one line per event on stdout:
//
//   registered | registration-failed <cause> <status>
//   incoming <from-user> | confirmed | ended <originator> <cause> | failed <originator> <cause>
//   message <body>
//   done | timeout
//
// It exits 0 after a call has ended and a MESSAGE has arrived (or after registering
// when EXPECT=register), 1 on a failure or after TIMEOUT_MS.
//
// Environment: WS_URL (ws://host:port), SIP_URI (sip:login@domain), SIP_PASSWORD,
// INSTANCE_ID (a UUID; JsSIP sends it as +sip.instance="<urn:uuid:...>"),
// CHROMIUM (default /usr/bin/chromium), TIMEOUT_MS (default 40000), EXPECT.
'use strict';

const { chromium } = require('playwright-core');
const esbuild = require('esbuild');
const http = require('http');

// JsSIP ships as CommonJS modules only: bundled here into one script for the page,
// exposing the global `JsSIP` as its former browser build did.
function jssipBundle() {
  const out = esbuild.buildSync({
    entryPoints: [require.resolve('jssip')],
    bundle: true,
    format: 'iife',
    globalName: 'JsSIP',
    platform: 'browser',
    write: false,
    logLevel: 'silent',
  });
  return out.outputFiles[0].text;
}

const cfg = {
  ws: process.env.WS_URL,
  uri: process.env.SIP_URI,
  password: process.env.SIP_PASSWORD,
  instance: process.env.INSTANCE_ID,
};
const timeoutMs = Number(process.env.TIMEOUT_MS || 40000);
const expect = process.env.EXPECT || 'call,message';

function report(line) {
  process.stdout.write(`${line}\n`);
}

async function main() {
  for (const k of Object.keys(cfg)) {
    if (!cfg[k]) throw new Error(`missing setting ${k}`);
  }
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream'],
  });
  const seen = new Set();
  let finish;
  const finished = new Promise((resolve) => { finish = resolve; });
  const wanted = expect.split(',');
  const page = await browser.newPage();
  page.on('pageerror', (e) => report(`page-error ${e.message}`));
  // DEBUG_PAGE=1: the page's console (JsSIP's own log) on stderr.
  const debug = Boolean(process.env.DEBUG_PAGE);
  if (debug) page.on('console', (m) => process.stderr.write(`page: ${m.text()}\n`));
  await page.exposeFunction('report', (line) => {
    report(line);
    const kind = line.split(' ')[0];
    if (kind === 'registered') seen.add('register');
    if (kind === 'ended') seen.add('call');
    if (kind === 'message') seen.add('message');
    if (kind === 'failed' || kind === 'registration-failed') finish(false);
    if (wanted.every((w) => seen.has(w))) finish(true);
  });
  // getUserMedia needs a secure context, and Chromium lets a page open a WebSocket
  // to a loopback address only from a loopback page (local network access checks):
  // the page comes from a one-page HTTP server on 127.0.0.1, as a web app would
  // come from its own site.
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>device</title>');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  await page.goto(`http://127.0.0.1:${server.address().port}/`);
  await page.addScriptTag({ content: jssipBundle() });
  await page.evaluate((c) => {
    if (c.debug) JsSIP.debug.enable('JsSIP:*');
    const socket = new JsSIP.WebSocketInterface(c.ws);
    const ua = new JsSIP.UA({
      sockets: [socket],
      uri: c.uri,
      password: c.password,
      instance_id: c.instance,
      register: true,
      register_expires: 600,
      session_timers: false,
      user_agent: 'JsSIP (tandem browser test)',
    });
    window.ua = ua;
    ua.on('registered', () => report('registered'));
    ua.on('registrationFailed', (e) =>
      report(`registration-failed ${e.cause} ${e.response ? e.response.status_code : ''}`));
    ua.on('newRTCSession', (e) => {
      if (e.originator !== 'remote') return;
      const s = e.session;
      report(`incoming ${s.remote_identity.uri.user}`);
      s.on('confirmed', () => report('confirmed'));
      s.on('ended', (ev) => report(`ended ${ev.originator} ${ev.cause}`));
      s.on('failed', (ev) => report(`failed ${ev.originator} ${ev.cause}`));
      s.answer({
        mediaConstraints: { audio: true, video: false },
        pcConfig: { iceServers: [] },
      });
    });
    ua.on('newMessage', (e) => {
      if (e.originator === 'remote') report(`message ${String(e.request.body).trim()}`);
    });
    ua.start();
  }, { ...cfg, debug });
  const timer = setTimeout(() => { report('timeout'); finish(false); }, timeoutMs);
  const ok = await finished;
  clearTimeout(timer);
  if (ok) report('done');
  await page.evaluate(() => window.ua.stop()).catch(() => {});
  await browser.close();
  server.close();
  process.exit(ok ? 0 : 1);
}

main().catch((e) => {
  report(`error ${e && e.stack ? e.stack.split('\n')[0] : e}`);
  process.exit(1);
});
