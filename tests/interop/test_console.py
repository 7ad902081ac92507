"""The web console in a real browser: Debian's Chromium driven by chromedriver through the
pinned selenium, against the live `keyhole serve` of conftest.py (console on) and one of its own
with a short idle time-out. Writes docs/console-sign-in.png and docs/console-session.png.

Chromium runs headless with a fresh profile and the flags that keep it off the (closed)
network; the server's self-signed certificate is accepted with --ignore-certificate-errors.
When Chromium or chromedriver is missing the tests skip, unless KEYHOLE_REQUIRE_BROWSER=1
(tests/run.sh sets it as root, after installing both), where they fail.
"""
import http.server
import json
import os
import pathlib
import shutil
import signal
import tempfile
import threading
import time

import pytest
import requests

from conftest import ROOT, processes_matching, start_keyhole, stop_keyhole, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ACCESS_DENIED = ("Access denied. Check the user name, password, computer name and configuration "
                 "name, or ask your administrator whether you may sign in there.")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SHORT_IDLE = 8  # seconds: the warning comes at half-time
DOCS = ROOT / "docs"


def _browser_missing():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if not missing:
        return None
    why = "%s not installed (tests/run.sh installs Debian's chromium and chromium-driver as root)" % ", ".join(missing)
    if os.environ.get("KEYHOLE_REQUIRE_BROWSER") == "1":
        pytest.fail(why)
    return why


@pytest.fixture(scope="module")
def browser_factory():
    """Start Chromium sessions (each with its own fresh profile); all are closed at the end."""
    why = _browser_missing()
    if why:
        pytest.skip(why)
    # Selenium Manager must not try the network to find a driver: we name ours.
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    started = []

    def start():
        profile = tempfile.mkdtemp(prefix="keyhole-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--ignore-certificate-errors", "--window-size=1100,720",
                  "--user-data-dir=" + profile):
            opts.add_argument(a)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        d.set_page_load_timeout(30)
        started.append((d, profile))
        return d

    yield start
    for d, profile in started:
        try:
            d.quit()
        except Exception:
            pass
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(browser_factory):
    """One Chromium for the test; its console session (if any) is signed out afterwards, so
    that tests never hold each other's per-user session slots."""
    d = browser_factory()
    yield d
    sign_out_quietly(d)


def sign_out_quietly(d):
    try:
        d.execute_script(
            "const f = document.getElementById('sign-out-form'); if (f) { f.submit(); }")
        wait_until(lambda: d.execute_script("return !document.getElementById('sign-out-form')"), 10)
    except Exception:
        pass


# ------------------------------------------------------------------------------------------------
# Page helpers

def by_id(d, i):
    from selenium.webdriver.common.by import By
    return d.find_element(By.ID, i)


def sign_in(d, server, user, password=None, computer=None, configuration=None):
    """Fill the form with the keyboard only (Tab between fields, Enter to send)."""
    from selenium.webdriver.common.keys import Keys

    if password is None:
        password = server.password(user)
    d.get(server.console())
    assert wait_until(lambda: d.switch_to.active_element.get_attribute("id") == "user", 5), \
        "the user name field has the focus"
    for field, value in (("computer", computer), ("configuration", configuration)):
        if value is not None:
            el = by_id(d, field)
            el.clear()
            el.send_keys(value)
    by_id(d, "user").click()
    active = d.switch_to.active_element
    active.send_keys(user, Keys.TAB)
    d.switch_to.active_element.send_keys(password, Keys.ENTER)
    wait_until(lambda: d.execute_script("return document.readyState") == "complete"
               and (has_id(d, "command") or has_id(d, "message")), 15)


def has_id(d, i):
    from selenium.webdriver.common.by import By
    return len(d.find_elements(By.ID, i)) > 0


def message(d):
    return by_id(d, "message").text


def screen(d):
    return by_id(d, "screen").text


def run(d, line, wait_for=None, timeout=20):
    """Type a line and press Enter; wait until the command ended (and `wait_for` is on screen)."""
    from selenium.webdriver.common.keys import Keys

    cmd = by_id(d, "command")
    cmd.send_keys(line, Keys.ENTER)
    ok = wait_until(lambda: (wait_for is None or wait_for in screen(d))
                    and by_id(d, "run").is_enabled() and not by_id(d, "stop").is_enabled(), timeout)
    assert ok, "the line %r never ended; screen:\n%s" % (line, screen(d))


def transcripts_of(server, user):
    return [p for p in server.transcripts.rglob("*-%s-*.txt" % user)]


def audit(server):
    try:
        return [json.loads(l) for l in server.audit_log.read_text().splitlines() if l.strip()]
    except FileNotFoundError:
        return []


def session_cookie(d):
    for c in d.get_cookies():
        if c["name"] == "__Secure-keyhole-console":
            return c
    return None


def csp_violations(d):
    return [e for e in d.get_log("browser")
            if "Content Security Policy" in e.get("message", "") or "Refused to" in e.get("message", "")]


# ------------------------------------------------------------------------------------------------
# Tests

def test_sign_in_run_a_granted_command_and_screenshots(server, browser):
    d = browser
    d.get(server.console())
    assert d.title.startswith("Sign in")
    # Labels for every field, the defaults of [console] (computer_name, default_configuration).
    for field in ("user", "password", "computer", "configuration"):
        label = d.execute_script("return document.querySelector('label[for=%s]').textContent" % field)
        assert label.strip(), field
    assert by_id(d, "computer").get_attribute("value") == "localhost"
    assert by_id(d, "configuration").get_attribute("value") == "Helpdesk"
    DOCS.mkdir(exist_ok=True)
    d.set_window_size(1100, 900)
    d.get(server.console())
    assert d.save_screenshot(str(DOCS / "console-sign-in.png"))

    sign_in(d, server, "alice")
    assert has_id(d, "command"), d.page_source[:2000]
    assert by_id(d, "who").text == "Signed in as alice to endpoint Helpdesk on localhost"
    assert by_id(d, "prompt").text == "[localhost]: PS>"
    assert d.switch_to.active_element.get_attribute("id") == "command"
    run(d, "Get-Process -Id 1", wait_for="ProcessName")
    text = screen(d)
    assert "[localhost]: PS> Get-Process -Id 1" in text
    assert "Id ProcessName" in text and "-- -----------" in text, text
    run(d, "uptime", wait_for="load average")
    run(d, "Restart-Service -Name apache2", wait_for="does not belong to the set")
    by_id(d, "command").send_keys("Restart-Service -Name ")
    by_id(d, "command").send_keys(__import__("selenium.webdriver.common.keys", fromlist=["Keys"]).Keys.TAB)
    assert wait_until(lambda: by_id(d, "command").get_attribute("value").endswith("cron"), 5)
    assert d.save_screenshot(str(DOCS / "console-session.png"))
    assert csp_violations(d) == [], d.get_log("browser")
    # The transcript: the console's transport and the client's address.
    t = max(transcripts_of(server, "alice"), key=lambda p: p.stat().st_mtime).read_text()
    assert "Transport: console" in t and "Client Address: 127.0.0.1" in t, t
    assert "PS>Get-Process -Id 1" in t


def test_a_refused_command_shows_the_refusal_in_the_error_colour(server, browser):
    d = browser
    sign_in(d, server, "alice")
    run(d, "Restart-Service -Name apache2", wait_for="does not belong to the set")
    run(d, "Invoke-Expression 'id'", wait_for="is not recognized")
    errors = d.execute_script(
        "return Array.from(document.querySelectorAll('#screen .error')).map(e => e.textContent)")
    assert any("does not belong to the set \"cron,ssh,nginx\"" in e for e in errors), errors
    assert any("Invoke-Expression" in e and "not recognized" in e for e in errors), errors
    colours = d.execute_script(
        "const s = document.querySelector('#screen');"
        "const e = document.querySelector('#screen .error');"
        "return [getComputedStyle(s).color, getComputedStyle(e).color]")
    assert colours[0] != colours[1], colours


def test_every_refused_sign_in_shows_the_same_message(server, browser):
    d = browser
    before = len(audit(server))
    cases = [
        ("alice", "wrong-password", None, None),
        ("no-such-user", "whatever-pw", None, None),
        ("nobody-rule", None, None, None),
        ("alice", None, "elsewhere.example", None),
        ("alice", None, None, "NoSuchEndpoint"),
        ("victor", None, None, "Helpdesk"),
    ]
    shown = []
    for user, password, computer, configuration in cases:
        sign_in(d, server, user, password, computer, configuration)
        assert not has_id(d, "command"), "signed in as %s?" % user
        shown.append(message(d))
        assert session_cookie(d) is None
    assert shown == [ACCESS_DENIED] * len(cases), shown
    # The log says which gate refused, and why; the page never does.
    records = audit(server)[before:]
    denies = [(r.get("gate"), r.get("reason", "")) for r in records if r.get("decision") == "deny"]
    assert ("authentication", "wrong password") in denies, denies
    # (With PAM configured, a name the users file does not know is PAM's to refuse.)
    assert any(g == "authentication" and (r == "unknown user" or r.startswith("PAM:"))
               for g, r in denies if r != "wrong password"), denies
    assert any(g == "gateway" and "nobody-rule" in r for g, r in denies), denies
    assert any(g == "gateway" and "elsewhere.example" in r for g, r in denies), denies
    assert any(g == "gateway" and "NoSuchEndpoint" in r or g == "endpoint" and "NoSuchEndpoint" in r
               for g, r in denies), denies
    log = server.stderr_path.read_text(errors="replace")
    assert "neither computer_name nor an alias" in log


def test_tab_completion_offers_only_what_the_role_shows(server, browser):
    from selenium.webdriver.common.keys import Keys

    d = browser
    sign_in(d, server, "alice")
    cmd = by_id(d, "command")

    def tab(text=None, shift=False):
        if text is not None:
            cmd.send_keys(Keys.ESCAPE)
            cmd.send_keys(text)
        before = cmd.get_attribute("value")
        if shift:
            cmd.send_keys(Keys.SHIFT, Keys.TAB)
        else:
            cmd.send_keys(Keys.TAB)
        wait_until(lambda: cmd.get_attribute("value") != before or "No completions" in by_id(d, "status").text, 5)
        return cmd.get_attribute("value")

    assert tab("Get-Pro") == "Get-Process"
    assert tab("restart-service -Na") == "restart-service -Name"
    assert tab("Restart-Service -Name ") == "Restart-Service -Name cron"
    assert tab() == "Restart-Service -Name ssh", "Tab again: the next value"
    assert tab() == "Restart-Service -Name nginx"
    assert tab(shift=True) == "Restart-Service -Name ssh", "Shift+Tab: back"
    assert "(2 of 3)" in by_id(d, "status").text
    # Not granted: nothing offered, the line stays.
    assert tab("Invoke-Exp") == "Invoke-Exp"
    assert "No completions" in by_id(d, "status").text
    # On an empty line Tab leaves the field (no keyboard trap).
    cmd.send_keys(Keys.ESCAPE)
    cmd.send_keys(Keys.TAB)
    assert d.switch_to.active_element.get_attribute("id") == "run"


def test_history_with_up_and_down(server, browser):
    from selenium.webdriver.common.keys import Keys

    d = browser
    sign_in(d, server, "alice")
    run(d, "Get-Process -Id 1", wait_for="ProcessName")
    run(d, "Get-Uptime", wait_for="Days")
    cmd = by_id(d, "command")
    cmd.send_keys("draft")
    cmd.send_keys(Keys.ARROW_UP)
    assert cmd.get_attribute("value") == "Get-Uptime"
    cmd.send_keys(Keys.ARROW_UP)
    assert cmd.get_attribute("value") == "Get-Process -Id 1"
    cmd.send_keys(Keys.ARROW_DOWN)
    assert cmd.get_attribute("value") == "Get-Uptime"
    cmd.send_keys(Keys.ARROW_DOWN)
    assert cmd.get_attribute("value") == "draft", "Down past the newest: the line being typed"


def _wait_for_process(argv):
    assert wait_until(lambda: processes_matching(argv), 20), "%s never started" % argv


def test_ctrl_c_and_stop_end_a_long_program_and_leave_no_process(server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    d = browser
    sign_in(d, server, "alice")
    cmd = by_id(d, "command")
    cmd.send_keys("sleep 97", Keys.ENTER)
    _wait_for_process(["sleep", "97"])
    assert by_id(d, "stop").is_enabled() and not by_id(d, "run").is_enabled()
    ActionChains(d).key_down(Keys.CONTROL).send_keys("c").key_up(Keys.CONTROL).perform()
    assert wait_until(lambda: "The pipeline has been stopped." in screen(d), 15), screen(d)
    assert wait_until(lambda: not processes_matching(["sleep", "97"]), 15), "sleep 97 is still running"
    assert wait_until(lambda: by_id(d, "run").is_enabled(), 10)
    pgrep = __import__("subprocess").run(["pgrep", "-f", "^(/usr/bin/)?sleep 97$"], capture_output=True)
    assert pgrep.returncode == 1, pgrep.stdout

    # The Stop button does the same.
    cmd.send_keys("sleep 98", Keys.ENTER)
    _wait_for_process(["sleep", "98"])
    by_id(d, "stop").click()
    assert wait_until(lambda: screen(d).count("The pipeline has been stopped.") == 2, 15), screen(d)
    assert wait_until(lambda: not processes_matching(["sleep", "98"]), 15)
    # And the console goes on.
    run(d, "Get-Process -Id 1", wait_for="ProcessName")


def test_a_fourth_session_is_refused(server, browser_factory):
    browsers = [browser_factory() for _ in range(4)]
    try:
        for d in browsers[:3]:
            sign_in(d, server, "dora")
            assert has_id(d, "command"), message(d) if has_id(d, "message") else d.page_source[:500]
        before = len(audit(server))
        sign_in(browsers[3], server, "dora")
        assert message(browsers[3]) == ACCESS_DENIED
        reasons = [r.get("reason", "") for r in audit(server)[before:] if r.get("decision") == "deny"]
        assert any("max_sessions_per_user = 3" in r for r in reasons), reasons
        # Signing out one makes room.
        by_id(browsers[0], "sign-out").click()
        assert wait_until(lambda: has_id(browsers[0], "message") and "signed out" in message(browsers[0]), 10)
        assert wait_until(lambda: (sign_in(browsers[3], server, "dora") or has_id(browsers[3], "command")), 10)
    finally:
        for d in browsers:
            sign_out_quietly(d)


def test_reconnect_after_closing_the_tab_and_after_a_reload(server, browser):
    from selenium.webdriver.common.keys import Keys

    d = browser
    sign_in(d, server, "alice")
    run(d, "Get-Process -Id 1", wait_for="ProcessName")
    first = d.current_window_handle
    d.switch_to.new_window("tab")
    d.switch_to.window(first)
    d.close()
    d.switch_to.window(d.window_handles[0])
    d.get(server.console())
    assert has_id(d, "command"), "the session is still there"
    assert wait_until(lambda: "PS> Get-Process -Id 1" in screen(d), 10), screen(d)
    # Its history comes back with it.
    cmd = by_id(d, "command")
    cmd.send_keys(Keys.ARROW_UP)
    assert cmd.get_attribute("value") == "Get-Process -Id 1"
    d.refresh()
    assert wait_until(lambda: has_id(d, "screen") and "ProcessName" in screen(d), 10)


def test_sign_out_ends_the_session_and_its_programs(server, browser):
    from selenium.webdriver.common.keys import Keys

    d = browser
    sign_in(d, server, "alice")
    by_id(d, "command").send_keys("sleep 96", Keys.ENTER)
    _wait_for_process(["sleep", "96"])
    by_id(d, "sign-out").click()
    assert wait_until(lambda: has_id(d, "message") and message(d).startswith("You have signed out."), 10)
    assert wait_until(lambda: not processes_matching(["sleep", "96"]), 15), "sleep 96 survived sign-out"
    assert session_cookie(d) is None
    d.get(server.console())
    assert not has_id(d, "command"), "signed out means signed out"


def test_exit_ends_the_session(server, browser):
    from selenium.webdriver.common.keys import Keys

    d = browser
    sign_in(d, server, "alice")
    by_id(d, "command").send_keys("Exit-PSSession", Keys.ENTER)
    assert wait_until(lambda: has_id(d, "message") and "The session has ended" in message(d), 15)


def test_csp_and_cookie_flags(server, browser):
    d = browser
    sign_in(d, server, "alice")
    c = session_cookie(d)
    assert c is not None
    assert c["secure"] is True and c["httpOnly"] is True, c
    assert c["sameSite"] == "Strict" and c["path"] == "/console", c
    assert "expiry" not in c, "a session cookie: gone with the browser"
    assert d.execute_script("return document.cookie") == "", "the page's script cannot read it"
    jar = {c["name"]: c["value"]}
    for path in ("/console", "/console/console.js", "/console/console.css"):
        for cookies in ({}, jar):
            r = requests.get(server.console(path[len("/console"):]), cookies=cookies, verify=False, timeout=10)
            assert r.status_code == 200
            h = r.headers
            assert h["Content-Security-Policy"] == CSP, h
            assert h["X-Frame-Options"] == "DENY"
            assert h["X-Content-Type-Options"] == "nosniff"
            assert h["Referrer-Policy"] == "no-referrer"
            assert h["Cache-Control"] == "no-store"
    # Plain HTTP never serves the console.
    r = requests.get("http://%s/console" % server.http, timeout=10)
    assert r.status_code == 404
    # Output is text, never markup: a value that looks like HTML stays text.
    by_id(d, "sign-out").click()
    wait_until(lambda: has_id(d, "message"), 10)
    sign_in(d, server, "alice", configuration="Objects")
    run(d, "Write-Output '<img src=x id=pwned>'", wait_for="<img src=x id=pwned>")
    assert d.execute_script("return document.getElementById('pwned')") is None
    assert csp_violations(d) == [], d.get_log("browser")


class _Attacker(http.server.BaseHTTPRequestHandler):
    page = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args):
        pass


def test_a_cross_site_post_is_refused(server, browser):
    from selenium.webdriver.common.keys import Keys

    d = browser
    sign_in(d, server, "alice")
    by_id(d, "command")  # signed in
    c = session_cookie(d)
    csrf = d.execute_script("return document.querySelector('meta[name=keyhole-csrf]').content")
    api = server.console("/api/run")
    body = json.dumps({"line": "sleep 95"})
    jar = {c["name"]: c["value"]}
    base = {"Content-Type": "application/json"}
    # Without the token, with a wrong one, with the token but from another origin: refused.
    for headers in ({}, {"X-Keyhole-CSRF": "A" * 43},
                    {"X-Keyhole-CSRF": csrf, "Origin": "https://evil.example"},
                    {"X-Keyhole-CSRF": csrf, "Origin": "null", "Sec-Fetch-Site": "cross-site"}):
        r = requests.post(api, data=body, headers=dict(base, **headers), cookies=jar, verify=False, timeout=10)
        assert r.status_code == 403, (headers, r.status_code, r.text)
    # A form post (no JSON) is refused too.
    r = requests.post(api, data=body, headers={"Content-Type": "text/plain", "X-Keyhole-CSRF": csrf},
                      cookies=jar, verify=False, timeout=10)
    assert r.status_code == 415
    assert not processes_matching(["sleep", "95"])

    # A real cross-site page (another host name: another site) that posts to the console as
    # soon as it loads: the browser sends no cookie (SameSite=Strict) and no token.
    target = server.console()
    _Attacker.page = ("""<!DOCTYPE html><html><body>
<form id="f" method="post" action="%s/sign-out" enctype="text/plain">
<input type="hidden" name='{"line":"sleep 94","x":"' value='"}'></form>
<script>document.getElementById('f').submit();</script></body></html>""" % target).encode()
    # Threads: Chromium opens spare connections that a one-thread server would wait on.
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        d.get("http://localhost:%d/" % httpd.server_address[1])
        wait_until(lambda: d.current_url.startswith(target), 10)
        time.sleep(1)
    finally:
        httpd.shutdown()
    # It reached the server, which refused it (the browser sent the foreign origin).
    log = server.stderr_path.read_text(errors="replace")
    assert 'sign-out refused: Origin "http://localhost:%d" is not this server' % httpd.server_address[1] in log
    d.get(target)
    assert has_id(d, "command"), "the cross-site post signed nobody out"
    run(d, "Get-Process -Id 1", wait_for="ProcessName")
    assert not processes_matching(["sleep", "94"])


def test_keyboard_order_and_screen_reader_roles(server, browser):
    from selenium.webdriver.common.keys import Keys

    d = browser
    sign_in(d, server, "alice")
    roles = d.execute_script("""
        const s = document.getElementById('screen');
        return {screen: s.getAttribute('role'), live: s.getAttribute('aria-live'),
                status: document.getElementById('status').getAttribute('role'),
                dialog: document.getElementById('idle-warning').getAttribute('role'),
                label: document.querySelector('label[for=command]').textContent,
                lang: document.documentElement.lang};""")
    assert roles == {"screen": "log", "live": "polite", "status": "status", "dialog": "alertdialog",
                     "label": "[localhost]: PS>", "lang": "en"}, roles
    # Focus order: sign out, the output, the command line, Run (Stop is disabled while idle).
    d.execute_script("document.getElementById('sign-out').focus()")
    order = ["sign-out"]
    for _ in range(3):
        d.switch_to.active_element.send_keys(Keys.TAB)
        order.append(d.switch_to.active_element.get_attribute("id"))
    assert order == ["sign-out", "screen", "command", "run"], order


# ------------------------------------------------------------------------------------------------
# A server of its own: a short idle time-out, and a reload

@pytest.fixture(scope="module")
def short_idle_server():
    extra = '\n[console]\nenabled = true\nidle_timeout = "%ds"\n' % SHORT_IDLE
    srv, stderr_file = start_keyhole(None, extra, prefix="keyhole-console-")
    yield srv
    stop_keyhole(srv, stderr_file)


def test_idle_time_out_warns_then_signs_out(short_idle_server, browser):
    srv = short_idle_server
    d = browser
    sign_in(d, srv, "alice", configuration="Helpdesk")
    assert has_id(d, "command")
    dialog = by_id(d, "idle-warning")
    # The warning at half-time, with the focus on its one button.
    assert wait_until(lambda: dialog.is_displayed(), SHORT_IDLE), "no warning"
    assert d.switch_to.active_element.get_attribute("id") == "stay"
    assert "signed out" in by_id(d, "idle-text").text
    by_id(d, "stay").click()
    assert wait_until(lambda: not dialog.is_displayed(), 5)
    assert d.switch_to.active_element.get_attribute("id") == "command", "focus goes back"
    # Nothing more: warned again, then signed out.
    assert wait_until(lambda: dialog.is_displayed(), SHORT_IDLE), "no second warning"
    assert wait_until(lambda: has_id(d, "message") and "idle too long" in message(d), SHORT_IDLE + 5), \
        d.page_source[:1000]
    ends = [r for r in audit(srv) if r.get("kind") == "session_end" and r.get("transport") == "console"]
    assert ends, "the audit log records the end"
    assert "reason=\"timed-out\"" in srv.stderr_path.read_text(errors="replace")


def test_a_reload_never_drops_a_console_session(short_idle_server, browser):
    srv = short_idle_server
    d = browser
    sign_in(d, srv, "alice", configuration="Helpdesk")
    run(d, "Get-Process -Id 1", wait_for="ProcessName")
    srv.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "configuration reloaded" in srv.stderr_path.read_text(errors="replace"), 10)
    run(d, "Get-Uptime", wait_for="Days")
    assert has_id(d, "command")
