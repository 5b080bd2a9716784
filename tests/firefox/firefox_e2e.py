#!/usr/bin/env python3
"""Real-browser end-to-end test: headless Firefox ESR as a SimplePush and a WebPush client of our server.

Two scenarios, each with its own server, profile and Firefox:
  SimplePush  server with [webpush] enabled = false: Firefox stays in SimplePush mode (standard library only);
  WebPush     server with [webpush] enabled = true: VAPID-signed, encrypted pushes sent with PyPI's pywebpush.
See README.md beside this file.

The last line of output is exactly "N passed, M failed" (one count per scenario run; exit status 0 when
M == 0, else 1). A missing firefox-esr is a loud SKIP of everything (exit 0) unless CI is set, in which
case it is a failure. A missing pywebpush is a loud SKIP of the WebPush scenario unless CI is set (then
that scenario counts as failed).
"""

import argparse
import base64
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
USER_JS_TEMPLATE = os.path.join(HERE, "user.js.in")
FIREFOX = "firefox-esr"

BROADCAST_GRACE = 4.0   # seconds to stay connected after broadcast_subscribe

SCENARIOS = ("simplepush", "webpush")
VAPID_SUB = "mailto:test@example.com"

T0 = time.monotonic()


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')} +{time.monotonic() - T0:6.2f}s] {msg}", flush=True)


class Fail(Exception):
    pass


def truthy_env(name):
    v = os.environ.get(name, "")
    return v != "" and v.lower() not in ("0", "false", "no")


# --------------------------------------------------------------------------- pages

START_HTML = """<!doctype html>
<meta charset="utf-8"><title>simplepush e2e: waiting</title>
<p>Waiting for the push service...</p>
<script>
// Firefox creates its push service late; a pushManager call made before that never
// settles. Go to index.html only once the push server has seen our hello.
async function poll() {
  try {
    const r = await fetch('/ready', {cache: 'no-store'});
    if (r.ok) { location.href = '/index.html'; return; }
  } catch (e) {}
  setTimeout(poll, 200);
}
poll();
</script>
"""

INDEX_HTML = """<!doctype html>
<meta charset="utf-8"><title>simplepush e2e</title>
<p>push e2e test page</p>
<script>
const TIMEOUT_MS = 3000;
const MAX_RELOADS = 8;
// null: SimplePush mode (no applicationServerKey); else the VAPID public key, base64url
const APP_KEY = __APP_KEY__;

function report(obj) {
  return fetch('/report', {method: 'POST', headers: {'Content-Type': 'application/json'},
                           body: JSON.stringify(obj)});
}

function withTimeout(p, ms, what) {
  return Promise.race([p, new Promise((_, rej) =>
    setTimeout(() => { const e = new Error(what + ' timed out'); e.isTimeout = true; rej(e); }, ms))]);
}

async function main() {
  try {
    const reg = await navigator.serviceWorker.register('/sw.js', {scope: '/'});
    await navigator.serviceWorker.ready;   // resolves once a worker is active for this scope
    let sub, existing;
    try {
      sub = await withTimeout(reg.pushManager.getSubscription(), TIMEOUT_MS, 'getSubscription()');
      existing = !!sub;
      if (!sub) {
        const opts = {userVisibleOnly: false};
        if (APP_KEY) opts.applicationServerKey = APP_KEY;   // WebPush with VAPID
        sub = await withTimeout(reg.pushManager.subscribe(opts), TIMEOUT_MS, 'subscribe()');
      }
    } catch (e) {
      if (e && e.isTimeout) {
        const n = Number(sessionStorage.getItem('reloads') || '0') + 1;
        sessionStorage.setItem('reloads', String(n));
        if (n <= MAX_RELOADS) {
          await report({type: 'log', msg: e.message + '; reload #' + n});
          location.reload();
          return;
        }
        throw new Error(e.message + ' and still hanging after ' + MAX_RELOADS + ' reloads');
      }
      throw e;
    }
    await report({type: 'subscription', subscription: sub.toJSON(), existing: existing});
    if (APP_KEY) await commands(reg, sub);
  } catch (e) {
    await report({type: 'error', error: String(e)});
  }
}

// The harness asks for actions through GET /command.
async function commands(reg, sub) {
  for (;;) {
    let cmd = '';
    try {
      const r = await fetch('/command', {cache: 'no-store'});
      if (r.ok) cmd = await r.text();
    } catch (e) {}
    if (cmd === 'unsubscribe') {
      const result = await withTimeout(sub.unsubscribe(), 15000, 'unsubscribe()');
      const after = await withTimeout(reg.pushManager.getSubscription(), 10000,
                                      'getSubscription() after unsubscribe()');
      await report({type: 'unsubscribed', result: result, after: after ? after.toJSON() : null});
      return;
    }
    await new Promise((res) => setTimeout(res, 200));
  }
}
main();
</script>
"""

SW_JS = """// service worker for the push e2e test
self.addEventListener('install', (event) => { self.skipWaiting(); });
self.addEventListener('activate', (event) => { event.waitUntil(self.clients.claim()); });
self.addEventListener('push', (event) => {
  const data = event.data ? event.data.text() : null;
  // the decrypted bytes as hex, to compare byte for byte (text() would hide bad UTF-8)
  const hex = event.data ? Array.from(new Uint8Array(event.data.arrayBuffer()),
                                      (b) => b.toString(16).padStart(2, '0')).join('') : null;
  event.waitUntil(fetch('/report', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                    body: JSON.stringify({type: 'push', data: data, hex: hex})}));
});
"""


# --------------------------------------------------------------------------- helpers

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never use a proxy


def http(method, url, body=None, headers=None, timeout=5.0):
    """Returns (status, body_text). Never raises for HTTP error statuses."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _opener.open(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, n):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError as e:
        return [f"<cannot read {path}: {e}>"]
    return lines[-n:]


def read_from(path, offset=0):
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def file_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def b64url(b):
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


# Firefox (dom.push.loglevel=Debug) logs every WebSocket frame as
#   console.debug: PushServiceWebSocket: "wsSendMessage: Sending message" "{\"messageType\":...}"
#   console.debug: PushServiceWebSocket: "wsOnMessageAvailable()" "{\"messageType\":...}"
FRAME_RE = re.compile(r'PushServiceWebSocket: "(wsSendMessage: Sending message|wsOnMessageAvailable\(\))" (".*")\s*$')


def ff_frames(path):
    """The push frames in a Firefox log: [(direction 'out'|'in', dict), ...] in order."""
    frames = []
    for line in read_from(path).splitlines():
        m = FRAME_RE.search(line)
        if not m:
            continue
        try:
            obj = json.loads(json.loads(m.group(2)))
        except ValueError:
            obj = {"unparsed": m.group(2)[:300]}
        if not isinstance(obj, dict):
            obj = {"unparsed": m.group(2)[:300]}
        frames.append(("out" if m.group(1).startswith("wsSend") else "in", obj))
    return frames


def frame_str(direction, obj, limit=300):
    text = json.dumps(obj, ensure_ascii=False)
    if len(text) > limit:
        text = text[:limit] + "..."
    return ("FF->server " if direction == "out" else "server->FF ") + text


def utf8_text(tag, nbytes=None):
    """A non-trivial UTF-8 plaintext (umlauts, CJK, emoji, quotes, a backslash, a newline).
    With nbytes, exactly that many UTF-8 bytes."""
    base = f"{tag}: Grüße aus Zürich, ½ € — 日本語のテキスト ✓ 🚀 \"quoted\" back\\slash\nline 2 ¿ñ? "
    if nbytes is None:
        return base
    out, n = [], 0
    i = 0
    while True:
        ch = base[i % len(base)]
        w = len(ch.encode("utf-8"))
        if n + w > nbytes - 8:
            break
        out.append(ch)
        n += w
        i += 1
    out.append("#" * (nbytes - n))
    text = "".join(out)
    assert len(text.encode("utf-8")) == nbytes
    return text


class Reports:
    """Thread-safe list of JSON reports POSTed by the page and the service worker."""

    def __init__(self):
        self.items = []
        self.cond = threading.Condition()

    def add(self, obj):
        with self.cond:
            self.items.append(obj)
            self.cond.notify_all()

    def mark(self):
        with self.cond:
            return len(self.items)

    def find(self, pred, start=0):
        with self.cond:
            for obj in self.items[start:]:
                if pred(obj):
                    return obj
        return None

    def wait(self, timeout):
        with self.cond:
            self.cond.wait(timeout)

    def snapshot(self):
        with self.cond:
            return list(self.items)


# --------------------------------------------------------------------------- the harness

class Harness:
    def __init__(self, args, kind):
        assert kind in SCENARIOS
        self.args = args
        self.kind = kind
        self.webpush = kind == "webpush"
        self.tmp = tempfile.mkdtemp(prefix=f"simplepush-ff-e2e-{kind}-")
        self.server_log = os.path.join(self.tmp, "server.log")
        self.http_log = os.path.join(self.tmp, "http.log")
        self.profile = os.path.join(self.tmp, "profile")
        self.home = os.path.join(self.tmp, "home")
        self.server = None
        self.server_logf = None
        self.firefox = None
        self.firefox_logf = None
        self.firefox_log = None
        self.firefox_launches = 0
        self.httpd = None
        self.reports = Reports()
        self.push_port = None
        self.http_port = None
        self.status_path = "/status"
        self.http_log_lock = threading.Lock()
        self.app_key = None     # VAPID public key (base64url) handed to the page; None: SimplePush
        self.command = ""       # answer of GET /command (the page polls it in the WebPush scenario)
        self.vapid = None       # WebPush: the py_vapid key of the "application server"
        self.session = None     # WebPush: requests.Session for pywebpush (no proxies)

    # ---- push server

    def start_server(self):
        bin_ = self.args.server_bin
        if not (os.path.isfile(bin_) and os.access(bin_, os.X_OK)):
            raise Fail(f"server binary not found or not executable: {bin_} "
                       f"(build it with `cargo build`, or pass --server-bin)")
        self.push_port = free_port()
        cfg = os.path.join(self.tmp, "simplepush.toml")
        with open(cfg, "w") as f:
            f.write(f'[server]\nlisten = "127.0.0.1:{self.push_port}"\n\n'
                    # disabled: hello replies carry no use_webpush, so Firefox stays in SimplePush mode
                    f'[webpush]\nenabled = {"true" if self.webpush else "false"}\n\n'
                    # no admin listener: its default port may be held outside the network namespace
                    f'[admin]\nlisten = ""\n')
        env = dict(os.environ, RUST_LOG="debug", RUST_BACKTRACE="1")
        env.pop("SIMPLEPUSH_WEBPUSH_ENABLED", None)   # the config file decides
        self.server_logf = open(self.server_log, "wb")
        log(f"starting push server: {bin_} --config {cfg} (port {self.push_port})")
        self.server = subprocess.Popen([bin_, "--config", cfg], stdin=subprocess.DEVNULL,
                                       stdout=self.server_logf, stderr=subprocess.STDOUT,
                                       env=env, cwd=self.tmp, start_new_session=True)
        deadline = time.monotonic() + 10
        last = None
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise Fail(f"push server exited with status {self.server.returncode} during startup")
            for path in ("/status", "/status/"):
                try:
                    st, body = http("GET", f"http://127.0.0.1:{self.push_port}{path}", timeout=1)
                except OSError as e:
                    last = repr(e)
                    break
                if st == 200:
                    try:
                        json.loads(body)["clients"]
                    except (ValueError, KeyError, TypeError):
                        raise Fail(f"GET {path} answered 200 but not status JSON with 'clients': {body!r}")
                    self.status_path = path
                    log(f"push server is up: GET {path} -> {body.strip()}")
                    return
                last = f"GET {path} -> {st} {body!r}"
            time.sleep(0.1)
        raise Fail(f"push server did not answer GET /status within 10 s (last: {last})")

    def status(self, timeout=2):
        st, body = http("GET", f"http://127.0.0.1:{self.push_port}{self.status_path}", timeout=timeout)
        if st != 200:
            raise Fail(f"GET {self.status_path} -> {st} {body!r}")
        return json.loads(body)

    def clients(self):
        return int(self.status()["clients"])

    def stop_server(self):
        if self.server and self.server.poll() is None:
            try:
                os.killpg(self.server.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.server.wait(5)
            except subprocess.TimeoutExpired:
                log("push server ignored SIGTERM for 5 s; SIGKILL")
                try:
                    os.killpg(self.server.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.server.wait(5)
        if self.server_logf:
            self.server_logf.close()
            self.server_logf = None

    # ---- static http server + report collector

    def start_http(self):
        harness = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt, *a):
                with harness.http_log_lock, open(harness.http_log, "a") as f:
                    f.write(f"{time.strftime('%H:%M:%S')} {self.address_string()} {fmt % a}\n")

            def _send(self, code, body, ctype):
                b = body.encode() if isinstance(body, str) else body
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(b)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(b)

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                if path in ("/", "/start.html"):
                    self._send(200, START_HTML, "text/html; charset=utf-8")
                elif path == "/index.html":
                    page = INDEX_HTML.replace("__APP_KEY__", json.dumps(harness.app_key))
                    self._send(200, page, "text/html; charset=utf-8")
                elif path == "/command":
                    self._send(200, harness.command, "text/plain")
                elif path == "/sw.js":
                    self._send(200, SW_JS, "text/javascript; charset=utf-8")
                elif path == "/ready":
                    try:
                        ready = harness.clients() >= 1
                    except Exception:
                        ready = False
                    self._send(200 if ready else 503, "ready" if ready else "not ready", "text/plain")
                else:
                    self._send(404, "not found", "text/plain")

            def do_POST(self):
                if self.path.split("?", 1)[0] != "/report":
                    return self._send(404, "not found", "text/plain")
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                try:
                    obj = json.loads(raw)
                except ValueError:
                    obj = {"type": "bad-report", "raw": raw.decode("utf-8", "replace")}
                text = json.dumps(obj)
                log(f"report: {text if len(text) <= 600 else text[:600] + f'... ({len(text)} chars)'}")
                harness.reports.add(obj)
                self._send(204, b"", "text/plain")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.http_port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, name="httpd", daemon=True).start()
        log(f"static http server on 127.0.0.1:{self.http_port}")

    # ---- firefox

    def write_profile(self):
        os.makedirs(self.profile, exist_ok=True)
        os.makedirs(self.home, exist_ok=True)
        with open(USER_JS_TEMPLATE) as f:
            tpl = f.read()
        if "__PUSH_URL__" not in tpl:
            raise Fail(f"{USER_JS_TEMPLATE} has no __PUSH_URL__ placeholder")
        with open(os.path.join(self.profile, "user.js"), "w") as f:
            f.write(tpl.replace("__PUSH_URL__", f"ws://127.0.0.1:{self.push_port}/"))

    def start_firefox(self):
        self.firefox_launches += 1
        self.firefox_log = os.path.join(self.tmp, f"firefox-{self.firefox_launches}.log")
        self.firefox_logf = open(self.firefox_log, "wb")
        env = dict(os.environ, MOZ_HEADLESS="1", MOZ_CRASHREPORTER_DISABLE="1",
                   MOZ_REMOTE_SETTINGS_DEVTOOLS="1", HOME=self.home)
        for k in ("DISPLAY", "WAYLAND_DISPLAY"):
            env.pop(k, None)
        url = f"http://127.0.0.1:{self.http_port}/start.html"
        cmd = [FIREFOX, "--headless", "--no-remote", "--profile", self.profile, url]
        log(f"launching Firefox #{self.firefox_launches}: {' '.join(cmd)}")
        self.firefox = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.firefox_logf,
                                        stderr=subprocess.STDOUT, env=env, cwd=self.tmp,
                                        start_new_session=True)
        return time.monotonic()

    def stop_firefox(self):
        p = self.firefox
        if p is None:
            return
        t = time.monotonic()
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                log("Firefox ignored SIGTERM for 10 s; SIGKILL to its process group")
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
        # content processes share the group; make sure none survives (profile lock)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                os.killpg(p.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log(f"Firefox #{self.firefox_launches} stopped: exit status {p.returncode} after {time.monotonic() - t:.2f} s")
        self.firefox = None
        if self.firefox_logf:
            self.firefox_logf.close()
            self.firefox_logf = None

    # ---- waiting

    def check_alive(self, firefox=True):
        if self.server is not None and self.server.poll() is not None:
            raise Fail(f"push server exited unexpectedly with status {self.server.returncode}")
        if firefox and self.firefox is not None and self.firefox.poll() is not None:
            raise Fail(f"Firefox exited unexpectedly with status {self.firefox.returncode}")

    def wait_until(self, what, fn, timeout=None, firefox=True):
        """Poll fn() until it returns something truthy; fail after timeout seconds."""
        timeout = self.args.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive(firefox)
            v = fn()
            if v:
                return v
            if time.monotonic() >= deadline:
                raise Fail(f"timed out after {timeout:.0f} s waiting for {what}")
            self.reports.wait(0.1)

    def wait_report(self, what, pred, start):
        def fn():
            err = self.reports.find(lambda r: r.get("type") in ("error", "bad-report"), start)
            if err:
                raise Fail(f"the page reported an error while waiting for {what}: {json.dumps(err)}")
            return self.reports.find(pred, start)
        return self.wait_until(what, fn)

    def wait_ack(self, version, log_offset):
        # The server's text log: `[... simplepush::server::websocket] ack channel=… code=… conn=… uaid=…
        # version=…`, its fields in any order.
        line_re = re.compile(r"\]\s+ack\s+(.*)$", re.M)
        field_re = re.compile(r"(\w+)=(\S+)")

        def fn():
            for line in line_re.finditer(read_from(self.server_log, log_offset)):
                f = dict(field_re.findall(line.group(1)))
                if f.get("version") != str(version):
                    continue
                if f.get("code") == "100" and "uaid" in f and "channel" in f:
                    return f
                raise Fail(f"server logged an ack for version {version} with code={f.get('code')} "
                           f"(want 100): {line.group(0)!r}")
            return None
        f = self.wait_until(f"the server log line 'ack ... uaid=... channel=... version={version} code=100'", fn)
        return f["uaid"], f["channel"]

    def firefox_ws_summary(self, n=6):
        """The last few WebSocket frames/events from the Firefox log, for failure messages."""
        keys = ("Sending message", "wsOnMessageAvailable", "wsOnServerClose", "wsOnStop", "beginWSSetup: Connecting")
        lines = [l.strip() for l in read_from(self.firefox_log or "").splitlines() if any(k in l for k in keys)]
        return " | ".join(l[:300] for l in lines[-n:]) or "<no WebSocket activity in the Firefox log>"

    def saved_uaid(self):
        m = re.search(r'user_pref\("dom\.push\.userAgentID",\s*"([^"]*)"\)',
                      read_from(os.path.join(self.profile, "prefs.js")))
        return m.group(1) if m else None

    def put(self, endpoint, version):
        st, body = http("PUT", endpoint, body=f"version={version}".encode(),
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
        log(f"PUT {endpoint} version={version} -> {st} {body.strip()!r}")
        return st, body

    # ---- the tests

    def run(self):
        if self.webpush:
            self.run_webpush()
        else:
            self.run_simplepush()

    def run_simplepush(self):
        a = self.args
        N = 41
        self.start_server()
        self.start_http()
        self.write_profile()

        # --- first launch
        log("SimplePush scenario (server: [webpush] enabled = false)")
        log("step a: first launch; waiting for the page's subscription report")
        mark = self.reports.mark()
        self.start_firefox()
        try:
            self.wait_until("the push server's /status to count a client (clients >= 1)",
                            lambda: self.clients() >= 1)
        except Fail as e:
            raise Fail(f"{e}: Firefox's hello was never accepted. Firefox's hello has no channelIDs "
                       f"and may carry broadcasts and use_webpush; the server must accept it. Firefox's side: {self.firefox_ws_summary()}")
        log("step a: the push server counts 1 client (hello done); waiting for the subscription")
        sub = self.wait_report("a subscription report", lambda r: r.get("type") == "subscription", mark)
        endpoint = (sub.get("subscription") or {}).get("endpoint", "")
        prefix = f"http://127.0.0.1:{self.push_port}/update/"
        if "/wpush/" in endpoint:
            raise Fail(f"endpoint {endpoint!r} is a WebPush endpoint although the server runs with "
                       f"[webpush] enabled = false: its hello reply must not carry use_webpush. "
                       f"Firefox's side: {self.firefox_ws_summary()}")
        if not endpoint.startswith(prefix) or len(endpoint) == len(prefix):
            raise Fail(f"endpoint {endpoint!r} does not match {prefix}<token>")
        if sub.get("existing"):
            raise Fail("a fresh profile reported an existing subscription")
        log(f"step a: OK, endpoint {endpoint}")

        log(f"step b: PUT version={N} while Firefox is connected, expect 200")
        mark = self.reports.mark()
        off = file_size(self.server_log)
        st, body = self.put(endpoint, N)
        if st != 200:
            raise Fail(f"PUT version={N} -> {st} {body!r}, want 200 (delivered to the live socket)")
        log("step b: OK")

        log("step c: waiting for the service worker's push event")
        push = self.wait_report("a push report", lambda r: r.get("type") == "push", mark)
        if push.get("data") is not None:
            raise Fail(f"push event carried data {push.get('data')!r}, want null (SimplePush)")
        log("step c: OK, push event with data null")

        log(f"step d: waiting for the server to log the ack of version {N} with code=100")
        uaid1, chid1 = self.wait_ack(N, off)
        log(f"step d: OK, ack uaid={uaid1} channel={chid1}")

        # Firefox keeps the uaid in the pref dom.push.userAgentID and writes prefs.js lazily. SIGTERM
        # does not flush it: stopped too early, the relaunched Firefox sends a hello without uaid,
        # gets a new one and drops its subscription. So wait until prefs.js holds the uaid.
        t = time.monotonic()
        self.wait_until(f"Firefox to save dom.push.userAgentID={uaid1} to PROFILE/prefs.js",
                        lambda: self.saved_uaid() == uaid1)
        log(f"step e: prefs.js holds the uaid ({time.monotonic() - t:.2f} s after the ack); stopping Firefox")
        self.stop_firefox()
        self.wait_until("GET /status to show clients == 0 after Firefox stopped",
                        lambda: self.clients() == 0, firefox=False)
        st, body = self.put(endpoint, N + 1)
        if st != 202:
            raise Fail(f"PUT version={N + 1} with Firefox stopped -> {st} {body!r}, want 202 (stored)")
        log("step e: OK, clients == 0 and the update was stored (202)")

        # --- second launch, same profile
        log("step f: relaunching Firefox on the same profile")
        mark = self.reports.mark()
        off = file_size(self.server_log)
        launched = self.start_firefox()
        push = self.wait_report("the queued push report after the restart",
                                lambda r: r.get("type") == "push", mark)
        if push.get("data") is not None:
            raise Fail(f"queued push carried data {push.get('data')!r}, want null")
        log("step f: queued push reached the service worker")
        uaid2, chid2 = self.wait_ack(N + 1, off)
        if (uaid2, chid2) != (uaid1, chid1):
            raise Fail(f"ack after restart came from uaid={uaid2} channel={chid2}, "
                       f"want the old uaid={uaid1} channel={chid1}")
        log(f"step f: ack of version {N + 1} with code=100 from the same uaid/channel")
        sub2 = self.wait_report("the page's subscription report after the restart",
                                lambda r: r.get("type") == "subscription", mark)
        if not sub2.get("existing") or (sub2.get("subscription") or {}).get("endpoint") != endpoint:
            raise Fail(f"after the restart the page got {json.dumps(sub2)}, want the old "
                       f"subscription (existing: true, endpoint {endpoint})")
        log("step f: the page's getSubscription() returned the old subscription")
        hellos = re.findall(r"\bhello uaid=([0-9A-Fa-f-]{32,36})\b", read_from(self.server_log, off))
        if hellos:
            if hellos[0] != uaid1:
                raise Fail(f"second hello used uaid {hellos[0]}, want {uaid1}")
            log(f"step f: server log shows the second hello with the same uaid {uaid1}")
        else:
            log("step f: (no 'hello ... uaid=' line in the server log; hello-uaid sub-check skipped)")
        log("step f: OK")

        # --- broadcast_subscribe (~20 s after start) must not cost us the socket
        if a.broadcast_wait > 0:
            log(f"step g: staying connected until Firefox has sent broadcast_subscribe (~20 s after start) "
                f"and {BROADCAST_GRACE:.0f} s more (at least {a.broadcast_wait:.0f} s after the relaunch)")
            seen_at = None
            hard_end = launched + a.broadcast_wait + 10
            while True:
                self.check_alive()
                now = time.monotonic()
                if seen_at is None and "broadcast_subscribe" in read_from(self.firefox_log):
                    seen_at = now
                    log(f"step g: Firefox sent broadcast_subscribe {now - launched:.1f} s after the relaunch")
                if seen_at is not None and now >= seen_at + BROADCAST_GRACE and now >= launched + a.broadcast_wait:
                    break
                if now >= hard_end:
                    break
                time.sleep(0.25)
            if seen_at is None:
                log("step g: NOTE: Firefox did not send broadcast_subscribe in time; the check below is weaker")
            n = self.clients()
            if n != 1:
                raise Fail(f"GET {self.status_path} shows clients == {n} at the end of the second run, want 1. "
                           f"Firefox's side: {self.firefox_ws_summary()}")
            lines = read_from(self.firefox_log).replace("\\", "").splitlines()
            opens = sum("wsOnStart()" in l for l in lines)
            hello_sends = sum("Sending message" in l and '"messageType":"hello"' in l for l in lines)
            closes = [l for l in lines if "wsOnStop()" in l or "reconnect()" in l]
            if opens != 1 or hello_sends != 1 or closes:
                raise Fail(f"Firefox's socket did not stay up during the second run: wsOnStart x{opens}, "
                           f"hello sent x{hello_sends}, stop/reconnect lines {closes[:3]}; "
                           f"broadcast_subscribe seen: {seen_at is not None} (did the server close the socket "
                           f"on broadcast_subscribe? it should ignore it). Firefox's side: "
                           f"{self.firefox_ws_summary()}")
            if seen_at is not None:
                answers = [l for l in lines if "wsOnMessageAvailable()" in l and '"messageType":"broadcast"' in l]
                if not answers:
                    raise Fail(f"Firefox sent broadcast_subscribe but never got a broadcast message back "
                               f"(the server must answer it). Firefox's side: {self.firefox_ws_summary()}")
                log(f"step g: the server answered broadcast_subscribe: {answers[-1].strip()[-160:]}")
            log(f"step g: OK, still 1 client and Firefox opened its socket exactly once")
        else:
            log("step g: skipped (--broadcast-wait 0)")

    # ---- WebPush helpers

    def ff_frame_count(self):
        return len(ff_frames(self.firefox_log))

    def ff_last_frames(self, n=8):
        frames = ff_frames(self.firefox_log) if self.firefox_log else []
        return " | ".join(frame_str(d, o, 250) for d, o in frames[-n:]) or "<no push frames in the Firefox log>"

    def wp_send(self, sub, text, what, encoding="aes128gcm", ttl=60, key="good"):
        """POST an encrypted push with pywebpush. key: "good" (the subscription's VAPID key),
        None (no VAPID at all), or another py_vapid key. Returns the requests.Response."""
        from pywebpush import WebPushException, webpush
        kw = {}
        if key is not None:
            kw = dict(vapid_private_key=self.vapid if key == "good" else key,
                      vapid_claims={"sub": VAPID_SUB})   # pywebpush adds aud (the endpoint's origin) and exp (+12 h)
        info = {"endpoint": sub["endpoint"], "keys": dict(sub["keys"])}
        t = time.monotonic()
        try:
            r = webpush(info, data=text, ttl=ttl, content_encoding=encoding, timeout=10,
                        requests_session=self.session, **kw)
        except WebPushException as e:
            r = e.response
            if r is None:
                raise Fail(f"{what}: pywebpush failed without an HTTP response: {e}")
        vap = "no VAPID" if key is None else ("VAPID" if key == "good" else "VAPID of ANOTHER key")
        body = r.text
        log(f"POST {what} ({encoding}, {len(text.encode())} bytes plaintext, TTL {ttl}, {vap}) -> "
            f"{r.status_code} Location={r.headers.get('Location')!r} TTL={r.headers.get('TTL')!r} "
            f"body={body[:200]!r} ({(time.monotonic() - t) * 1000:.0f} ms)")
        return r

    def expect_created(self, r, what, ttl):
        if r.status_code != 201:
            raise Fail(f"{what}: POST -> {r.status_code} {r.text[:300]!r}, want 201 Created")
        loc = r.headers.get("Location") or ""
        prefix = f"http://127.0.0.1:{self.push_port}/m/"
        if not loc.startswith(prefix) or len(loc) == len(prefix):
            raise Fail(f"{what}: 201 with Location {loc!r}, want {prefix}<id>")
        ttl_h = (r.headers.get("TTL") or "").strip()
        if not ttl_h.isdigit() or int(ttl_h) > ttl:
            raise Fail(f"{what}: 201 with TTL header {r.headers.get('TTL')!r}, want an integer <= {ttl}")
        return loc

    def wait_push(self, what, text, mark):
        """Wait for the next SW push report after mark; it must carry exactly text."""
        try:
            push = self.wait_report(f"the service worker's push event for {what}",
                                    lambda r: r.get("type") == "push", mark)
        except Fail as e:
            raise Fail(f"{e}. Firefox's last frames: {self.ff_last_frames()}")
        want_hex = text.encode("utf-8").hex()
        if push.get("data") != text or push.get("hex") != want_hex:
            got = push.get("data")
            raise Fail(f"{what}: the service worker got {got if got is None else repr(got[:200])} "
                       f"({len(push.get('hex') or '') // 2} bytes), want {text[:200]!r} "
                       f"({len(want_hex) // 2} bytes)")
        return push

    def wait_ff_ack(self, chid, frame_mark, what, skip_versions=()):
        """Wait for Firefox's ack of a notification on chid (frames after frame_mark, versions in
        skip_versions ignored); it must be code 100. Returns (the ack's update entry, the
        notification frame it acks)."""
        def fn():
            for d, o in ff_frames(self.firefox_log)[frame_mark:]:
                if d == "out" and str(o.get("messageType", "")).lower() == "ack":
                    for u in o.get("updates") or []:
                        if (isinstance(u, dict) and u.get("channelID") == chid
                                and u.get("version") not in skip_versions):
                            return u
            return None
        u = self.wait_until(f"Firefox's ack of {what} (channel {chid})", fn)
        if u.get("code") != 100:
            raise Fail(f"Firefox acked {what} with {json.dumps(u)}, want code 100 "
                       f"(101: decryption error, 102: not delivered). Frames: {self.ff_last_frames()}")
        note = None
        for d, o in ff_frames(self.firefox_log)[frame_mark:]:
            if (d == "in" and str(o.get("messageType", "")).lower() == "notification"
                    and o.get("channelID") == chid and o.get("version") == u.get("version")):
                note = o
        if note is None:
            raise Fail(f"Firefox acked version {u.get('version')!r} but the log shows no notification "
                       f"frame with that version. Frames: {self.ff_last_frames()}")
        return u, note

    def notifications(self):
        return [o for d, o in ff_frames(self.firefox_log)
                if d == "in" and str(o.get("messageType", "")).lower() == "notification"]

    def push_and_check(self, sub, chid, what, text, encoding="aes128gcm", ttl=60):
        """A push to the live socket: 201 + Location, exact plaintext at the SW, ack 100."""
        fm = self.ff_frame_count()
        mark = self.reports.mark()
        r = self.wp_send(sub, text, what, encoding=encoding, ttl=ttl)
        loc = self.expect_created(r, what, ttl)
        self.wait_push(what, text, mark)
        u, note = self.wait_ff_ack(chid, fm, what)
        hdrs = note.get("headers") or {}
        if hdrs.get("encoding") != encoding:
            raise Fail(f"{what}: notification headers {hdrs}, want encoding {encoding}")
        if encoding == "aesgcm" and not (hdrs.get("crypto_key") and hdrs.get("encryption")):
            raise Fail(f"{what}: aesgcm notification without crypto_key/encryption headers: {hdrs}")
        extra = self.reports.find(lambda x: x.get("type") == "push" and x.get("data") != text, mark)
        if extra:
            raise Fail(f"{what}: an unexpected extra push event reached the service worker: {json.dumps(extra)[:300]}")
        log(f"  {what}: the SW got the exact plaintext; Firefox acked version {u.get('version')!r} with "
            f"code 100 (Location {loc}, notification ttl {note.get('ttl')!r})")
        return u.get("version"), loc

    # ---- the WebPush scenario

    def run_webpush(self):
        import requests
        from cryptography.hazmat.primitives import serialization
        from py_vapid import Vapid

        self.vapid = Vapid()
        self.vapid.generate_keys()
        self.app_key = b64url(self.vapid.public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))
        other_key = Vapid()
        other_key.generate_keys()
        self.session = requests.Session()
        self.session.trust_env = False     # never a proxy
        log("WebPush scenario (server: [webpush] enabled = true; pushes sent with pywebpush)")
        log(f"VAPID public key (applicationServerKey): {self.app_key}")
        self.start_server()
        self.start_http()
        self.write_profile()
        origin = f"http://127.0.0.1:{self.push_port}"

        # --- first launch
        log("step A: first launch; the page subscribes with applicationServerKey = the VAPID public key")
        mark = self.reports.mark()
        self.start_firefox()
        try:
            self.wait_until("the push server's /status to count a client (clients >= 1)",
                            lambda: self.clients() >= 1)
        except Fail as e:
            raise Fail(f"{e}: Firefox's hello was never accepted. Firefox's side: {self.firefox_ws_summary()}")
        sub_r = self.wait_report("a subscription report", lambda r: r.get("type") == "subscription", mark)
        sub = sub_r.get("subscription") or {}
        endpoint = sub.get("endpoint") or ""
        frames = ff_frames(self.firefox_log)
        hello_reply = next((o for d, o in frames
                            if d == "in" and str(o.get("messageType", "")).lower() == "hello"), None)
        if not hello_reply or hello_reply.get("use_webpush") is not True:
            raise Fail(f"the server's hello reply {json.dumps(hello_reply)} has no \"use_webpush\": true "
                       f"(Firefox stays in SimplePush mode)")
        uaid1 = hello_reply.get("uaid")
        reg = next((o for d, o in frames if d == "out" and o.get("messageType") == "register"), None)
        if not reg or not reg.get("key"):
            raise Fail(f"Firefox's register frame {json.dumps(reg)} has no key")
        chid = reg.get("channelID")
        prefix = f"{origin}/wpush/v2/"
        if not endpoint.startswith(prefix) or len(endpoint) == len(prefix):
            hint = ""
            if "/wpush/v1/" in endpoint:
                hint = " (a v1 endpoint: the server ignored the register's key)"
            elif "/update/" in endpoint:
                hint = " (a SimplePush endpoint)"
            raise Fail(f"endpoint {endpoint!r} does not match {prefix}<token>{hint}")
        keys = sub.get("keys") or {}
        try:
            p256dh, auth = b64url_decode(keys.get("p256dh", "")), b64url_decode(keys.get("auth", ""))
        except ValueError:
            p256dh = auth = b""
        if len(p256dh) != 65 or p256dh[0] != 4 or len(auth) != 16:
            raise Fail(f"subscription keys {keys} are not a P-256 point and a 16-byte auth secret")
        if sub_r.get("existing"):
            raise Fail("a fresh profile reported an existing subscription")
        log(f"step A: OK, uaid {uaid1}, channel {chid}, endpoint {endpoint}")

        log("step B: pushes without VAPID, and with VAPID of another key, are refused with 401/403")
        for label, key in (("without VAPID", None), ("signed by another VAPID key", other_key)):
            r = self.wp_send(sub, utf8_text("must not arrive"), f"a push {label}", key=key)
            if r.status_code not in (401, 403):
                raise Fail(f"a push {label} to a v2 endpoint -> {r.status_code} {r.text[:300]!r}, want 401 or 403")
        log("step B: OK")

        log("step C: aes128gcm push to the live socket")
        versions = []
        v, _ = self.push_and_check(sub, chid, "message 1 (aes128gcm)", utf8_text("message 1, aes128gcm"))
        versions.append(v)
        log("step C: OK")

        if self.args.aesgcm:
            log("step D: legacy aesgcm push to the live socket")
            v, _ = self.push_and_check(sub, chid, "message 2 (aesgcm)", utf8_text("message 2, aesgcm"),
                                       encoding="aesgcm")
            versions.append(v)
            log("step D: OK")
        else:
            log("step D: skipped (--no-aesgcm)")

        log("step E: the largest payload (4096-byte aes128gcm body) arrives; 4097 bytes are refused")
        v, _ = self.push_and_check(sub, chid, "message 3 (4096-byte body)", utf8_text("message 3, largest", 3993))
        versions.append(v)
        mark = self.reports.mark()
        r = self.wp_send(sub, utf8_text("too large", 3994), "a 4097-byte body")
        if not 400 <= r.status_code < 500:
            raise Fail(f"a 4097-byte body -> {r.status_code} {r.text[:300]!r}, want 413 (a 4xx at least)")
        log(f"step E: OK (4097 bytes -> {r.status_code}{'' if r.status_code == 413 else '; RFC 8030 says 413'})")

        # --- stop, queue, relaunch
        t = time.monotonic()
        self.wait_until(f"Firefox to save dom.push.userAgentID={uaid1} to PROFILE/prefs.js",
                        lambda: self.saved_uaid() == uaid1)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t)))   # let the server process the last ack
        log("step F: prefs.js holds the uaid; stopping Firefox")
        self.stop_firefox()
        self.wait_until("GET /status to show clients == 0 after Firefox stopped",
                        lambda: self.clients() == 0, firefox=False)
        msg4 = utf8_text("message 4, sent while Firefox was stopped")
        r = self.wp_send(sub, msg4, "message 4 with Firefox stopped", ttl=600)
        self.expect_created(r, "message 4 (Firefox stopped)", 600)
        log("step F: OK, the message was accepted while Firefox was away (201)")

        log("step G: relaunching Firefox on the same profile; the stored message must arrive")
        mark = self.reports.mark()
        self.start_firefox()
        self.wait_push("message 4 (stored while Firefox was stopped)", msg4, mark)
        u, _ = self.wait_ff_ack(chid, 0, "message 4", skip_versions=versions)
        log(f"step G: the SW got message 4; Firefox acked version {u.get('version')!r} with code 100")
        sub2 = self.wait_report("the page's subscription report after the restart",
                                lambda r: r.get("type") == "subscription", mark)
        if not sub2.get("existing") or (sub2.get("subscription") or {}).get("endpoint") != endpoint:
            raise Fail(f"after the restart the page got {json.dumps(sub2)}, want the old "
                       f"subscription (existing: true, endpoint {endpoint})")
        frames = ff_frames(self.firefox_log)
        hello = next((o for d, o in frames if d == "out" and o.get("messageType") == "hello"), {})
        hello_reply = next((o for d, o in frames
                            if d == "in" and str(o.get("messageType", "")).lower() == "hello"), {})
        if hello.get("uaid") != uaid1 or hello_reply.get("uaid") != uaid1:
            raise Fail(f"after the restart Firefox sent {json.dumps(hello)} and got {json.dumps(hello_reply)}, "
                       f"want uaid {uaid1} in both")
        old = [n for n in self.notifications() if n.get("version") in versions]
        if old:
            raise Fail(f"after the restart the server sent again messages that Firefox had acked "
                       f"(the server must delete a message on ack 100): {[frame_str('in', n) for n in old]}")
        log("step G: OK, same uaid and subscription; no acked message was sent again")

        log("step H: the page calls subscription.unsubscribe(); then the endpoint answers 410")
        mark = self.reports.mark()
        fm = self.ff_frame_count()
        self.command = "unsubscribe"
        un = self.wait_report("the page's unsubscribe report", lambda r: r.get("type") == "unsubscribed", mark)
        self.command = ""
        if un.get("result") is not True or un.get("after") is not None:
            raise Fail(f"unsubscribe(): {json.dumps(un)}, want result true and no subscription after it")

        def unreg_reply():
            out = inn = None
            for d, o in ff_frames(self.firefox_log)[fm:]:
                if str(o.get("messageType", "")).lower() == "unregister" and o.get("channelID") == chid:
                    if d == "out":
                        out = o
                    elif out is not None:
                        inn = o
            return (out, inn) if out and inn else None
        out, inn = self.wait_until("Firefox's unregister frame and the server's reply", unreg_reply)
        if inn.get("status") != 200:
            raise Fail(f"the server answered {json.dumps(out)} with {json.dumps(inn)}, want status 200")
        log(f"step H: unsubscribe() resolved true; {frame_str('out', out)}; {frame_str('in', inn)}")
        deadline = time.monotonic() + 15
        while True:
            r = self.wp_send(sub, utf8_text("after unsubscribe"), "a push to the old endpoint")
            if r.status_code == 410:
                break
            if r.status_code != 201 or time.monotonic() >= deadline:
                raise Fail(f"a push to the unsubscribed endpoint -> {r.status_code} {r.text[:300]!r}, "
                           f"want 410 (201 is allowed only briefly, while the unregister is processed)")
            time.sleep(0.5)
        try:
            body = r.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("code") != 410 or body.get("errno") != 103:
            raise Fail(f"410 body {r.text[:300]!r}, want JSON with code 410 and errno 103")
        leaked = self.reports.find(lambda x: x.get("type") == "push", mark)
        if leaked:
            raise Fail(f"a push reached the service worker after unsubscribe(): {json.dumps(leaked)[:300]}")
        log("step H: OK, 410 with errno 103")

    # ---- reporting and teardown

    def dump(self):
        print("=" * 30 + " diagnostics " + "=" * 30, flush=True)
        print(f"--- reports ({len(self.reports.snapshot())}):")
        for r in self.reports.snapshot():
            print("   ", json.dumps(r))
        if os.path.exists(self.server_log):
            print(f"--- server log tail ({self.server_log}):")
            for l in tail(self.server_log, 40):
                print("   ", l)
        if self.firefox_log:
            frames = ff_frames(self.firefox_log)
            print(f"--- Firefox #{self.firefox_launches}: last push frames ({len(frames)} in all):")
            for d, o in frames[-25:]:
                print("   ", frame_str(d, o, 400))
            lines = tail(self.firefox_log, 100000)
            push_lines = [l for l in lines if "Push" in l or "push" in l][-40:]
            print(f"--- Firefox log, push-related lines ({self.firefox_log}):")
            for l in push_lines:
                print("   ", l[:400])
            print("--- Firefox log tail:")
            for l in lines[-20:]:
                print("   ", l[:400])
        if os.path.exists(self.http_log):
            print("--- static http server log tail:")
            for l in tail(self.http_log, 15):
                print("   ", l)
        print("=" * 73, flush=True)

    def teardown(self):
        for what, fn in (("Firefox", self.stop_firefox), ("push server", self.stop_server)):
            try:
                fn()
            except Exception as e:
                log(f"teardown: stopping {what} failed: {e!r}")
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
        if self.args.keep:
            log(f"keeping {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def pywebpush_missing():
    """None if the WebPush scenario's Python packages import, else the error."""
    try:
        import cryptography  # noqa: F401
        import py_vapid  # noqa: F401
        import pywebpush  # noqa: F401
        import requests  # noqa: F401
    except ImportError as e:
        return f"{type(e).__name__}: {e}"
    return None


def run_scenario(args, kind):
    h = Harness(args, kind)
    ok = False
    try:
        h.run()
        ok = True
    except Fail as e:
        log(f"FAIL ({kind}): {e}")
        h.dump()
    except BaseException as e:  # noqa: BLE001 - includes KeyboardInterrupt
        log(f"FAIL ({kind}): unexpected {type(e).__name__}: {e}")
        traceback.print_exc()
        sys.stderr.flush()
        h.dump()
        if not isinstance(e, Exception):   # KeyboardInterrupt, SystemExit: stop everything
            h.teardown()
            raise
    h.teardown()
    return ok


def run_inside(args):
    kinds = SCENARIOS if args.scenario == "all" else (args.scenario,)
    results = []
    skipped = []
    for kind in kinds:
        if kind == "webpush":
            missing = pywebpush_missing()
            if missing:
                if truthy_env("CI"):
                    log(f"FAIL (webpush): pywebpush is not installed ({missing}) and CI is set; the WebPush "
                        f"scenario must not be skipped in CI (python3 -m pip install pywebpush)")
                    results.append((kind, False))
                else:
                    print("!" * 72, flush=True)
                    log(f"SKIP: pywebpush is not installed ({missing}); the WebPush scenario is NOT RUN "
                        f"(python3 -m pip install pywebpush; in CI (CI=true) this is a failure)")
                    print("!" * 72, flush=True)
                    skipped.append(kind)
                continue
        log(f"========== scenario: {kind} ==========")
        t = time.monotonic()
        ok = run_scenario(args, kind)
        log(f"scenario {kind}: {'PASS' if ok else 'FAIL'} ({time.monotonic() - t:.1f} s)")
        results.append((kind, ok))
    passed = sum(ok for _, ok in results)
    failed = len(results) - passed
    log(f"total {time.monotonic() - T0:.1f} s: " + ", ".join(
        [f"{k} {'PASS' if ok else 'FAIL'}" for k, ok in results] + [f"{k} SKIPPED" for k in skipped]))
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


def resolve_server_bin(value):
    if value is None:
        tdir = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO_ROOT, "target")
        return os.path.abspath(os.path.join(REPO_ROOT, tdir, "debug", "simplepush"))
    if os.path.isabs(value):
        return value
    if os.path.exists(value):
        return os.path.abspath(value)
    return os.path.abspath(os.path.join(REPO_ROOT, value))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server-bin", default=None,
                    help="push server binary (default: target/debug/simplepush under the repo root)")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds for each bounded wait (default 60)")
    ap.add_argument("--broadcast-wait", type=float, default=25.0,
                    help="stay connected this many seconds after the relaunch to check that Firefox's "
                         "broadcast_subscribe (~20 s) does not drop the socket; 0 disables (default 25)")
    ap.add_argument("--scenario", choices=("all",) + SCENARIOS, default="all",
                    help="run only this scenario (default: all, i.e. simplepush then webpush)")
    ap.add_argument("--no-aesgcm", dest="aesgcm", action="store_false",
                    help="WebPush scenario: skip the legacy aesgcm payload (step D)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (logs, profiles)")
    ap.add_argument("--no-netns", action="store_true", help="do not enter a loopback-only network namespace")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.server_bin = resolve_server_bin(args.server_bin)

    if args.inside:
        return run_inside(args)

    if shutil.which(FIREFOX) is None:
        if truthy_env("CI"):
            log(f"FAIL: {FIREFOX} is not on PATH and CI is set; the Firefox e2e test must not be skipped in CI "
                f"(apt-get install -y firefox-esr)")
            n = len(SCENARIOS) if args.scenario == "all" else 1
            print(f"0 passed, {n} failed", flush=True)
            return 1
        print("!" * 72, flush=True)
        log(f"SKIP: {FIREFOX} is not on PATH; Firefox end-to-end test NOT RUN "
            f"(apt-get install -y firefox-esr; in CI (CI=true) this is a failure)")
        return 0

    inner = [sys.executable, os.path.abspath(__file__), "--inside", "--server-bin", args.server_bin,
             "--timeout", str(args.timeout), "--broadcast-wait", str(args.broadcast_wait),
             "--scenario", args.scenario]
    if args.keep:
        inner.append("--keep")
    if not args.aesgcm:
        inner.append("--no-aesgcm")
    if not args.no_netns:
        if shutil.which("unshare") and shutil.which("ip"):
            probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if probe.returncode == 0:
                log("entering a loopback-only network namespace (unshare -n)")
                sh = "ip link set lo up && exec " + " ".join(shlex.quote(x) for x in inner)
                sys.stdout.flush()
                os.execvp("unshare", ["unshare", "-n", "sh", "-c", sh])
            log(f"WARNING: unshare -n failed ({probe.stderr.decode(errors='replace').strip()}); "
                f"running WITHOUT a private network namespace")
        else:
            log("WARNING: unshare or ip not found; running WITHOUT a private network namespace")
    else:
        log("WARNING: --no-netns given; running WITHOUT a private network namespace")
    return run_inside(args)


if __name__ == "__main__":
    sys.exit(main())
