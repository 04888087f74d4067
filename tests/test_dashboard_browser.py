"""The dashboard in a real headless Chromium, against a real `tollway serve` process.

An operator signs in, makes a key (shown once), tops it up and revokes it;
the overview's numbers equal the ledger's; a customer sees only their own
key's data, whatever URL or id they try; a change without the CSRF token is
refused; bad admin keys are refused and then rate-limited. Each main page is
photographed, light and dark, into ``screenshots/`` (kept out of git).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
import yaml
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "screenshots"
ADMIN = "admin-browser-secret-1"
DEMO = "sk-browser-demo-000001"


# -- Debian's Chromium, one per test run -----------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium driven by Playwright. It fails loudly (never skips)
    when the browser cannot start: install it with `apt-get install -y chromium`.

    Module scope, and every browser test lives in this module, so it is one
    browser per test run; it must stop before other modules run, because the
    sync Playwright API keeps an event loop running in this thread while it
    lives, and pytest-asyncio cannot start a test's loop beside it."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(f"the browser tests need playwright (pip install -e '.[test]'): {exc}")
    manager = sync_playwright().start()
    try:
        browser = manager.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    except Exception as exc:
        manager.stop()
        pytest.fail(f"cannot start {CHROMIUM} (apt-get install -y chromium; .ci/run does it): {exc}")
    yield browser
    browser.close()
    manager.stop()


class Answer:
    def __init__(self, status: int, body: bytes) -> None:
        self.status_code, self.text = status, body.decode()

    def json(self):
        return json.loads(self.text)


def http(method: str, url: str, headers: dict | None = None, json_body=None) -> Answer:
    data = None if json_body is None else json.dumps(json_body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={**(headers or {}), **({"Content-Type": "application/json"} if data else {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return Answer(r.status, r.read())
    except urllib.error.HTTPError as err:
        return Answer(err.code, err.read())


class Gateway:
    """`tollway serve` in its own process on a free port, with the dashboard on."""

    def __init__(self, folder: Path, dashboard: dict | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.db = folder / "tollway.db"
        config = {
            "server": {"host": "127.0.0.1", "admin_key": ADMIN, "access_log": "off"},
            "storage": {"url": "sqlite:///tollway.db"},
            "providers": {"local": {"kind": "mock"}},
            "models": {"echo": {"provider": "local", "price": {"input": 1.0, "output": 2.0}},
                       "other": {"provider": "local", "price": {"input": 3.0, "output": 1.0}}},
            "keys": [{"name": "demo", "key": DEMO, "credits": 5.0, "limits": {"rpm": 1000}}],
            "plugins": {"enabled": ["auth", "ratelimit", "quotas", "pricing", "ledger", "dashboard"],
                        "ledger": {"flush_ms": 20}, "auth": {"poll_ms": 50},
                        "dashboard": {"poll_seconds": 1, **(dashboard or {})}},
        }
        (folder / "tollway.yaml").write_text(yaml.safe_dump(config))
        # Port 0: the kernel picks a free port and the banner says which (a port picked
        # here and passed on could be taken by another process in between).
        self.log_path = folder / "server.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config",
                                      str(folder / "tollway.yaml"), "--port", "0"],
                                     cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log_path.read_text())
            if found:
                self.port = int(found.group(1))
                self.url = f"http://127.0.0.1:{self.port}"
                if http("GET", self.url + "/health/ready").status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError("the gateway did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()

    def admin(self, method: str, path: str, json=None) -> Answer:
        return http(method, self.url + path, {"Authorization": f"Bearer {ADMIN}"}, json)

    def new_key(self, name: str, credits: float = 5.0) -> tuple[str, str]:
        r = self.admin("POST", "/admin/keys", json={"name": name, "credits": credits})
        assert r.status_code == 201, r.text
        return r.json()["id"], r.json()["key"]

    def ledger(self, sql: str, params: tuple = ()) -> list[tuple]:
        db = sqlite3.connect(self.db)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def wait_ledger(self, rows: int) -> None:
        deadline = time.monotonic() + 10
        while self.ledger("select count(*) from tollway_ledger")[0][0] < rows:
            assert time.monotonic() < deadline, "the ledger did not catch up"
            time.sleep(0.05)


def traffic(gw: Gateway, key: str, n: int, model: str = "echo") -> int:
    """``n`` chat requests (and one refused one); the number of ledger rows they make."""
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0) as client:
        for i in range(n):
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "word " * (i + 1)}])
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    return n + 1


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    gw = Gateway(tmp_path_factory.mktemp("dash"))
    yield gw
    gw.stop()


@pytest.fixture
def context(chromium):
    ctx = chromium.new_context(viewport={"width": 1280, "height": 860})
    yield ctx
    ctx.close()


def sign_in(page, gw: Gateway, key: str, expect: str) -> None:
    page.goto(gw.url + "/dashboard/login")
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(expect))


def value(page, selector: str) -> int:
    return int(float(page.get_attribute(selector, "data-value")))


def shoot(page, name: str) -> None:
    """Photograph the page in light and dark."""
    SHOTS.mkdir(exist_ok=True)
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        page.wait_for_timeout(150)  # charts redraw on load only; colours come from CSS variables
        page.reload()
        page.wait_for_load_state("load")
        page.wait_for_timeout(150)
        page.screenshot(path=str(SHOTS / f"{name}-{scheme}.png"), full_page=True)
    page.emulate_media(color_scheme="light")


def test_operator_makes_tops_up_and_revokes_a_key(gateway, context, request):
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    sign_in(page, gateway, ADMIN, r"/dashboard$")
    cookie = next(c for c in context.cookies() if c["name"] == "tollway_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
    assert ADMIN not in cookie["value"] and page.evaluate("JSON.stringify(localStorage)").find(ADMIN) < 0

    page.click("text=Keys")
    page.click("#new-key")
    page.fill("#create-key [name=name]", "browser-made")
    page.fill("#create-key [name=credits]", "2")
    page.fill("#create-key [name='limits.rpm']", "120")
    page.click("#create-key button[type=submit]")
    page.wait_for_selector("#key-once[open]")
    plain = page.inner_text("#new-key-value")
    assert plain.startswith("sk-")
    page.click("#copy-key")
    page.wait_for_selector("#copied:not([hidden])")
    assert page.evaluate("navigator.clipboard.readText()") == plain
    page.click("[data-done]")
    page.wait_for_load_state("load")
    assert plain not in page.content()  # shown once
    row = page.locator("#keys tr", has_text="browser-made")
    assert "active" in row.inner_text() and "rpm 120" in row.inner_text()

    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=plain, max_retries=0)
    request.addfinalizer(client.close)  # (not close_at_end: an async fixture's loop and Playwright's collide)
    assert client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}]).choices

    row.locator("a").first.click()
    page.wait_for_selector("#topup")
    kid = page.url.rsplit("/", 1)[1]
    before = value(page, "#balance")
    page.fill("#topup [name=amount]", "3")
    page.click("#topup button[type=submit]")
    expect(page.locator("#balance")).not_to_have_attribute("data-value", str(before))
    after = value(page, "#balance")
    assert after == before + 3_000_000
    assert gateway.admin("GET", f"/admin/keys/{kid}").json()["account"]["balance_micro_usd"] == after
    shoot(page, "key")

    page.on("dialog", lambda d: d.accept())
    page.click("#revoke-key")
    expect(page.locator("#key-status")).to_have_text("revoked")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    page.goto(gateway.url + "/dashboard/keys")
    shoot(page, "keys")


def test_the_key_list_and_page_show_and_change_a_keys_default_model(gateway, context):
    r = gateway.admin("POST", "/admin/keys", json={"name": "with-default", "credits": 1.0, "default_model": "other"})
    assert r.status_code == 201, r.text
    kid, plain = r.json()["id"], r.json()["key"]
    page = context.new_page()
    sign_in(page, gateway, ADMIN, r"/dashboard$")
    page.goto(gateway.url + "/dashboard/keys")
    row = page.locator("#keys tr", has_text="with-default")
    expect(row.locator(".default-model")).to_have_text("default other")
    assert page.locator("#keys tr", has_text="demo").locator(".default-model").count() == 0  # none set
    row.locator("a").first.click()
    expect(page.locator("#default-model")).to_have_text("other")
    expect(page.locator("#edit-key [name=default_model]")).to_have_value("other")
    page.select_option("#edit-key [name=default_model]", "echo")
    page.click("#edit-key button[type=submit]")
    expect(page.locator("#default-model")).to_have_text("echo")
    assert gateway.admin("GET", f"/admin/keys/{kid}").json()["default_model"] == "echo"
    answer = http("POST", gateway.url + "/v1/chat/completions", {"Authorization": f"Bearer {plain}"},
                  {"messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200 and answer.json()["model"] == "echo", answer.text
    page.select_option("#edit-key [name=default_model]", "")
    page.click("#edit-key button[type=submit]")
    expect(page.locator("#default-model")).to_have_text("none")
    assert gateway.admin("GET", f"/admin/keys/{kid}").json()["default_model"] is None
    page.goto(gateway.url + "/dashboard/keys")
    expect(page.locator("#keys tr", has_text="with-default").locator(".default-model")).to_have_count(0)


def test_overview_shows_what_the_ledger_holds(gateway, context):
    rows = traffic(gateway, DEMO, 7)
    rows += traffic(gateway, DEMO, 2, model="other")
    total = gateway.ledger("select count(*) from tollway_ledger")[0][0]
    gateway.wait_ledger(total)
    time.sleep(0.1)
    cost, requests, prompt, completion, errors = gateway.ledger(
        "select sum(cost_micro_usd), count(*), sum(prompt_tokens), sum(completion_tokens), "
        "sum(case when status >= 400 then 1 else 0 end) from tollway_ledger")[0]
    assert requests >= rows and cost > 0
    page = context.new_page()
    sign_in(page, gateway, ADMIN, r"/dashboard$")
    page.goto(gateway.url + "/dashboard?range=24h")
    assert value(page, "#kpi-cost .kpi-value") == cost
    assert value(page, "#kpi-requests .kpi-value") == requests
    assert value(page, "#kpi-tokens .kpi-value") == prompt + completion
    assert value(page, "#kpi-error_rate .kpi-value") == errors
    assert page.locator("#kpi-cost .spark canvas").count() == 1  # the trend chart drew
    shoot(page, "overview")

    page.goto(gateway.url + "/dashboard/spend?range=24h&by=model")
    shown = {r.locator("td").first.inner_text(): int(r.locator("td[data-value]").get_attribute("data-value"))
             for r in page.locator("#breakdown tbody tr").all()}
    in_ledger = dict(gateway.ledger("select model, sum(cost_micro_usd) from tollway_ledger group by model"))
    assert shown == in_ledger
    shoot(page, "spend")
    for name in ("errors", "latency", "log", "accounts"):
        page.goto(gateway.url + f"/dashboard/{name}?range=24h")
        assert page.locator("main h1").count() == 1
        shoot(page, name)
    page.goto(gateway.url + "/dashboard/log?status=404")
    assert page.locator("#requests tbody tr").count() == errors


def test_polling_keeps_one_request_in_flight_and_stops_when_hidden(gateway, context):
    page = context.new_page()
    sign_in(page, gateway, ADMIN, r"/dashboard$")
    polls: list[float] = []
    page.on("request", lambda r: polls.append(time.monotonic()) if r.headers.get("x-fragment") else None)
    page.wait_for_timeout(2600)
    assert 1 <= len(polls) <= 3  # every second (poll_seconds: 1), never bunched
    page.evaluate("Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
                  "document.dispatchEvent(new Event('visibilitychange'))")
    page.wait_for_timeout(300)
    seen = len(polls)
    page.wait_for_timeout(2200)
    assert len(polls) == seen  # hidden: no polling
    page.evaluate("Object.defineProperty(document, 'hidden', {value: false, configurable: true});"
                  "document.dispatchEvent(new Event('visibilitychange'))")
    page.wait_for_timeout(500)
    assert len(polls) == seen + 1  # visible again: at once


def test_a_customer_sees_only_their_own_key(gateway, context, chromium):
    a_id, a_key = gateway.new_key("customer-a")
    b_id, b_key = gateway.new_key("customer-b")
    n = traffic(gateway, a_key, 3) + traffic(gateway, b_key, 4)
    total = gateway.ledger("select count(*) from tollway_ledger")[0][0]
    gateway.wait_ledger(total)
    time.sleep(0.1)
    assert n == 9
    page = context.new_page()
    sign_in(page, gateway, a_key, r"/dashboard/usage$")
    cost_a = gateway.ledger("select sum(cost_micro_usd) from tollway_ledger where key_id = ?", (a_id,))[0][0]
    assert value(page, "#kpi-cost .kpi-value") == cost_a
    assert value(page, "#balance") == gateway.admin("GET", f"/admin/keys/{a_id}").json()["account"][
        "balance_micro_usd"]
    assert page.locator("#requests tbody tr").count() == 4  # A's 3 + its 404
    assert "customer-b" not in page.content() and b_id not in page.content()
    shoot(page, "usage")

    # Direct URLs to the operator's pages, with B's id forged in: refused.
    for path in ("/dashboard", "/dashboard/keys", f"/dashboard/keys/{b_id}", f"/dashboard/log?key={b_id}",
                 "/dashboard/spend?by=key", "/dashboard/accounts"):
        response = page.goto(gateway.url + path)
        assert response.status == 403, path
        assert b_id not in page.content()
    # The data calls, from inside the signed-in page (its cookie, its CSRF token).
    page.goto(gateway.url + "/dashboard/usage")
    csrf = page.evaluate("document.body.dataset.csrf")
    api = page.request
    for method, path in (("GET", "/dashboard/api/overview"), ("GET", "/dashboard/api/keys"),
                         ("POST", f"/dashboard/api/keys/{b_id}/credits"), ("DELETE", f"/dashboard/api/keys/{b_id}")):
        r = api.fetch(gateway.url + path, method=method, headers={"X-CSRF-Token": csrf}, data={"amount": 1})
        assert r.status == 403, (method, path, r.text())
    mine = api.get(gateway.url + f"/dashboard/api/usage?key={b_id}&key_id={b_id}").json()
    assert mine["key"]["id"] == a_id and mine["totals"]["cost_micro_usd"] == cost_a
    assert all(row["key_id"] == a_id for row in mine["recent"])
    assert gateway.admin("GET", f"/admin/keys/{b_id}").json()["status"] == "active"

    phone = chromium.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    p2 = phone.new_page()
    sign_in(p2, gateway, a_key, r"/dashboard/usage$")
    shoot(p2, "usage-phone")
    phone.clear_cookies()
    sign_in(p2, gateway, ADMIN, r"/dashboard$")
    p2.goto(gateway.url + "/dashboard?range=24h")
    shoot(p2, "overview-phone")
    phone.close()


def test_a_change_without_the_csrf_token_is_refused(gateway, context):
    page = context.new_page()
    sign_in(page, gateway, ADMIN, r"/dashboard$")
    csrf = page.evaluate("document.body.dataset.csrf")
    api = page.request
    body = {"name": "csrf-probe", "credits": 1}
    for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": csrf, "Origin": "http://evil.example"}):
        r = api.post(gateway.url + "/dashboard/api/keys", data=body, headers=headers)
        assert r.status == 403 and r.json()["error"]["code"] == "csrf_failed", headers
    names = [k["name"] for k in gateway.admin("GET", "/admin/keys").json()["data"]]
    assert "csrf-probe" not in names
    r = api.post(gateway.url + "/dashboard/api/keys", data=body, headers={"X-CSRF-Token": csrf})
    assert r.status == 201 and r.json()["key"].startswith("sk-")
    # Sign-out is a change too: without the token the session survives.
    assert api.post(gateway.url + "/dashboard/logout").status == 403
    assert page.goto(gateway.url + "/dashboard").url.endswith("/dashboard")


def test_bad_admin_keys_are_refused_then_rate_limited(chromium, tmp_path):
    gw = Gateway(tmp_path / "limited", dashboard={"sign_in_attempts": 3, "sign_in_window": 3})
    ctx = chromium.new_context()
    try:
        page = ctx.new_page()
        page.goto(gw.url + "/dashboard/login")
        shoot(page, "login")
        for _ in range(3):
            page.fill("#key", "not-the-admin-key")
            response = None
            with page.expect_response(lambda r: r.request.method == "POST") as info:
                page.click("button[type=submit]")
            response = info.value
            assert response.status == 401 and "not recognised" in page.inner_text("#login-error")
        with page.expect_response(lambda r: r.request.method == "POST") as info:
            page.fill("#key", ADMIN)  # even the right key, while limited
            page.click("button[type=submit]")
        assert info.value.status == 429 and int(info.value.headers["retry-after"]) >= 1
        assert "Too many failed sign-ins" in page.inner_text("#login-error")
        assert not [c for c in ctx.cookies() if c["name"] == "tollway_session"]
        page.wait_for_timeout(3200)
        sign_in(page, gw, ADMIN, r"/dashboard$")
    finally:
        ctx.close()
        gw.stop()
