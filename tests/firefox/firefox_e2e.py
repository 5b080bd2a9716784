#!/usr/bin/env python3
"""Real-browser end-to-end test: headless Firefox ESR as a SimplePush client of our server.

Standard library only (Python >= 3.11). See README.md beside this file.

The last line of output is exactly "1 passed, 0 failed" or "0 passed, 1 failed"
(exit status 0 / 1). A missing firefox-esr is a loud SKIP (exit 0) unless CI is set,
in which case it is a failure.
"""

import argparse
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

PASS_LINE = "1 passed, 0 failed"
FAIL_LINE = "0 passed, 1 failed"

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
<p>SimplePush e2e test page</p>
<script>
const TIMEOUT_MS = 3000;
const MAX_RELOADS = 8;

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
        // SimplePush mode: no applicationServerKey
        sub = await withTimeout(reg.pushManager.subscribe({userVisibleOnly: false}),
                                TIMEOUT_MS, 'subscribe()');
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
  } catch (e) {
    await report({type: 'error', error: String(e)});
  }
}
main();
</script>
"""

SW_JS = """// service worker for the simplepush e2e test
self.addEventListener('install', (event) => { self.skipWaiting(); });
self.addEventListener('activate', (event) => { event.waitUntil(self.clients.claim()); });
self.addEventListener('push', (event) => {
  const data = event.data ? event.data.text() : null;
  event.waitUntil(fetch('/report', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                    body: JSON.stringify({type: 'push', data: data})}));
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
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="simplepush-ff-e2e-")
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

    # ---- push server

    def start_server(self):
        bin_ = self.args.server_bin
        if not (os.path.isfile(bin_) and os.access(bin_, os.X_OK)):
            raise Fail(f"server binary not found or not executable: {bin_} "
                       f"(build it with `cargo build`, or pass --server-bin)")
        self.push_port = free_port()
        cfg = os.path.join(self.tmp, "simplepush.toml")
        with open(cfg, "w") as f:
            f.write(f'[server]\nlisten = "127.0.0.1:{self.push_port}"\n')
        env = dict(os.environ, RUST_LOG="debug", RUST_BACKTRACE="1")
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
                    self._send(200, INDEX_HTML, "text/html; charset=utf-8")
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
                log(f"report: {json.dumps(obj)}")
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
        pat = re.compile(r"ack uaid=(\S+) channel=(\S+) version=" + re.escape(str(version)) + r" code=(\S+)")

        def fn():
            for m in pat.finditer(read_from(self.server_log, log_offset)):
                if m.group(3) == "100":
                    return m
                raise Fail(f"server logged an ack for version {version} with code={m.group(3)} "
                           f"(want 100): {m.group(0)!r}")
            return None
        m = self.wait_until(f"the server log line 'ack uaid=... channel=... version={version} code=100'", fn)
        return m.group(1), m.group(2)

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

    # ---- the test

    def run(self):
        a = self.args
        N = 41
        self.start_server()
        self.start_http()
        self.write_profile()

        # --- first launch
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
            log(f"step g: OK, still 1 client and Firefox opened its socket exactly once")
        else:
            log("step g: skipped (--broadcast-wait 0)")

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


def run_inside(args):
    h = Harness(args)
    ok = False
    try:
        h.run()
        ok = True
    except Fail as e:
        log(f"FAIL: {e}")
        h.dump()
    except BaseException as e:  # noqa: BLE001 - includes KeyboardInterrupt
        log(f"FAIL: unexpected {type(e).__name__}: {e}")
        traceback.print_exc()
        sys.stderr.flush()
        h.dump()
    finally:
        h.teardown()
    log(f"total {time.monotonic() - T0:.1f} s")
    print(PASS_LINE if ok else FAIL_LINE, flush=True)
    return 0 if ok else 1


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
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, profile)")
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
            print(FAIL_LINE, flush=True)
            return 1
        print("!" * 72, flush=True)
        log(f"SKIP: {FIREFOX} is not on PATH; Firefox end-to-end test NOT RUN "
            f"(apt-get install -y firefox-esr; in CI (CI=true) this is a failure)")
        return 0

    inner = [sys.executable, os.path.abspath(__file__), "--inside", "--server-bin", args.server_bin,
             "--timeout", str(args.timeout), "--broadcast-wait", str(args.broadcast_wait)]
    if args.keep:
        inner.append("--keep")
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
