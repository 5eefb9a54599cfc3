"""The fleet dashboard in a real browser (Debian's headless Chromium, driven by Playwright),
over a database that a real `fleet collect` fills from a real Mosquitto, with simulated
devices publishing. Screenshots go to build/artifacts/dashboard/."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from fleet_sim import Publisher, SimDevice, digits

from edgekit.cli import main
from edgekit.core.bundle import read_manifest
from edgekit.fleet import init_fleet, load_collector_key, open_engine
from edgekit.fleet.database import record_event
from edgekit.testing.mosquitto import LocalBroker, find_mosquitto

ARTIFACTS = Path(__file__).resolve().parents[1] / "build" / "artifacts" / "dashboard"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    find_mosquitto() is None, reason="mosquitto is not installed (.ci/run installs it)"
)


def _rows(db: str) -> int:
    import sqlalchemy as sa

    engine = open_engine(db)
    with engine.connect() as connection:
        count = connection.execute(sa.text("SELECT COUNT(*) FROM reports")).scalar()
    engine.dispose()
    return int(count or 0)


def _until(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


class Site:
    """A fleet of simulated devices, a collector into SQLite, and a dashboard over it."""

    def __init__(self, folder: Path, bundle: Path) -> None:
        self.processes: list[subprocess.Popen[str]] = []
        self.bundle = bundle
        try:
            self._start(folder, bundle)
        except BaseException:
            self.close()
            raise

    def _start(self, folder: Path, bundle: Path) -> None:
        self.home = folder / "home"
        self.fleet_dir = init_fleet("f7", self.home / "fleets" / "f7")
        self.key = load_collector_key("f7", self.fleet_dir)
        self.db = str(folder / "fleet.sqlite")
        self.broker = LocalBroker(folder / "broker").start()
        self.publisher: Publisher | None = None
        env = {**os.environ, "EDGEKIT_HOME": str(self.home)}
        self.collector = subprocess.Popen(
            [sys.executable, "-m", "edgekit", "fleet", "collect", "--broker", self.broker.url, "--fleet", "f7",
             "--db", self.db, "--group", "none", "--json"], env=env, stdout=subprocess.PIPE, text=True,
        )
        self.processes.append(self.collector)
        time.sleep(2)
        self.publisher = Publisher(self.broker.port, "f7")
        self.x, _ = digits()
        reference = read_manifest(bundle).reference
        real = {
            "reference": reference,
            "inputs": self.x,
        }  # binned against the bundle's reference, as on a device
        self.devices = [SimDevice("line1-cam1", version=2, **real), SimDevice("line1-cam2", version=2, **real),
                        SimDevice("line2-cam1", version=1, latency_ms=8.0, dp_epsilon=0.5),
                        SimDevice("line3-cam1", version=2, error_rate=0.02, shift=0.3, **real)]  # fmt: skip
        start = time.time() - 20 * 60
        for window in range(20):
            for device in self.devices:
                self.publisher.send(device, "report", device.report(start + window * 60))
        for index, device in enumerate(self.devices[2:]):
            rows = self.x[index * 6 : index * 6 + 6]
            sample = device.sample(rows, np.arange(6) % 10, np.linspace(0.3, 0.6, 6), self.key.public_key())
            self.publisher.send(device, "sample", sample)
        for device in self.devices[:3]:
            self.publisher.status(device, "online")
        self.publisher.status(self.devices[3], "offline")
        self.publisher.wait()
        _until(lambda: _rows(self.db) == 80)
        decided = time.time() - 5 * 60
        for event in ({"event": "started", "rollout": "digits-v2", "model": "digits", "version": 2, "previous": 1,
                       "devices": 4, "canaries": 1, "time": start},
                      {"event": "decision", "rollout": "digits-v2", "decision": "promoted", "by_hand": False,
                       "reason": "every rule holds", "time": decided,
                       "numbers": {"canary": {"error_rate": 0.0, "p95_ms": 5.0, "drift": 0.02},
                                   "control": {"error_rate": 0.01, "p95_ms": 10.0, "drift": 0.3},
                                   "limits": {"max_error_rate": 0.01, "max_p95_ms": 10.0, "max_drift": 0.25}}}):
            record_event(self.db, "f7", event)
        self.url = ""
        self.dashboard = self.serve("--bundle", str(bundle))

    def serve(self, *extra: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgekit", "fleet", "dashboard", "--db", self.db, "--port", "0",
             "--json", *extra], env={**os.environ, "EDGEKIT_HOME": str(self.home)}, stdout=subprocess.PIPE, text=True,
        )
        self.processes.append(process)
        started = json.loads(process.stdout.readline())  # type: ignore[union-attr]
        port = int(started["url"].rsplit(":", 1)[1].rstrip("/"))  # --port 0: the one the kernel gave
        assert started["fleet"] == "f7" and started["url"] == f"http://127.0.0.1:{port}/" and port > 0
        self.url = started["url"].rstrip("/")
        _until(lambda: _answers(self.url))
        return process

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=20)
        if getattr(self, "publisher", None) is not None:
            self.publisher.close()  # type: ignore[union-attr]
        if getattr(self, "broker", None) is not None:
            self.broker.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/static/dashboard.css", timeout=1).status_code in (200, 401)
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, converted: Any) -> Iterator[Site]:
    running = Site(tmp_path_factory.mktemp("dashboard"), converted("int8").output)
    yield running
    running.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def _tab(browser: Any, errors: list[str]) -> Any:
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    tab.on("pageerror", lambda error: errors.append(str(error)))
    return tab


def _shot(tab: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_the_fleet_page_shows_every_device_colours_drift_and_updates_live(site: Site, browser: Any) -> None:
    errors: list[str] = []
    tab = _tab(browser, errors)
    tab.goto(site.url + "/")
    rows = tab.locator("#fleet tbody tr")
    assert rows.count() == 4
    table = {row.get_attribute("data-node"): row.inner_text() for row in rows.all()}
    for device in site.devices:
        assert f"digits v{device.version}" in table[device.node]
    drifting = tab.locator(f'tr[data-node="{site.devices[3].node}"] td.level-drift')
    assert drifting.count() == 1 and "drift" in drifting.inner_text()
    assert drifting.evaluate("cell => getComputedStyle(cell).backgroundColor") == "rgb(254, 226, 226)"
    assert "offline" in table[site.devices[3].node] and "online" in table[site.devices[0].node]
    tab.click('th[data-key="p95_ms"]')
    tab.click('th[data-key="p95_ms"]')  # descending: the slow device first
    assert tab.locator("#fleet tbody tr").first.get_attribute("data-node") == site.devices[2].node
    _shot(tab, "fleet")
    tab.fill("#filter", "drift")
    assert tab.locator("#fleet tbody tr:not([hidden])").count() == 1
    tab.fill("#filter", "")
    newcomer = SimDevice("line4-cam1", version=2)
    site.publisher.send(newcomer, "report", newcomer.report(time.time()))
    site.publisher.wait()
    tab.wait_for_selector(f'tr[data-node="{newcomer.node}"]', timeout=15000)  # no reload
    assert tab.locator("#fleet tbody tr").count() == 5
    assert errors == []


def test_device_drift_and_rollout_pages_draw_their_charts(site: Site, browser: Any) -> None:
    errors: list[str] = []
    tab = _tab(browser, errors)
    tab.goto(f"{site.url}/device/{site.devices[3].node}")
    assert tab.locator("#charts svg").count() == 5  # latency, throughput, errors, drift, classes
    assert "bundle's reference" in tab.inner_text("#charts")  # the classes against the manifest's
    assert tab.locator("#charts polyline").count() >= 5
    _shot(tab, "device")
    tab.goto(site.url + "/drift")
    first = tab.locator("#drift tbody tr").first
    assert first.get_attribute("data-node") == site.devices[3].node and "ago" in first.inner_text()
    assert first.locator("span.level-drift").count() >= 1  # its features, each PSI against the reference
    steady = tab.locator(f'#drift tr[data-node="{site.devices[0].node}"]')
    assert steady.locator("span.level-drift").count() == 0 and "channel 0 mean" in steady.inner_text()
    _shot(tab, "drift")
    tab.goto(site.url + "/rollouts")
    assert (
        "digits-v2" in tab.inner_text("#rollouts") and tab.locator("#rollouts svg").count() == 4
    )  # 3 rules, p95
    assert "promoted" in tab.inner_text("#rollouts")
    _shot(tab, "rollouts")
    tab.goto(site.url + "/privacy")
    assert tab.locator("#privacy tbody tr").count() >= len(site.devices)  # and a newcomer, when it came
    noised = tab.locator("#privacy tbody tr", has=tab.locator("meter"))
    assert noised.count() == 1 and "a window of ≤200" in noised.inner_text() and "random" in noised.inner_text()
    _shot(tab, "privacy")
    assert errors == []


def test_a_sample_labelled_in_the_page_reaches_the_export(site: Site, browser: Any, tmp_path: Path) -> None:
    errors: list[str] = []
    tab = _tab(browser, errors)
    tab.goto(site.url + "/samples")
    cards = tab.locator("#samples figure.sample")
    assert cards.count() == 12
    assert tab.locator("#samples img").evaluate_all("all => all.every(i => i.complete && i.naturalWidth > 0)")
    _shot(tab, "samples")
    card = cards.first
    node, epoch, seq, idx = card.get_attribute("data-key").split("/")
    card.locator("select").select_option("7")  # the bundle gave the dashboard its 10 classes
    card.locator("button").click()
    tab.wait_for_selector("figure.sample.labelled")
    assert card.locator("button").inner_text() == "Saved"
    result = CliRunner().invoke(main, ["fleet", "export", "--db", site.db, "--fleet", "f7", "--out", str(tmp_path),
                                       "--fleet-dir", str(site.fleet_dir), "--labelled"])
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "samples.npz") as exported:
        assert exported["y"].tolist() == [7] and exported["node"].tolist() == [node]
        assert exported["seq"].tolist() == [int(seq)]
        sent = next(d for d in site.devices if d.node == node)
        offset = site.devices[2:].index(sent) * 6 + int(idx)  # the digit that device sent there
        assert exported["x"][0].tobytes() == site.x[offset].tobytes()
    tab.goto(site.url + "/samples?show=labelled")
    assert tab.locator("#samples figure.sample").count() == 1
    assert errors == []


def _a_sample(site: Site) -> dict[str, Any]:
    from edgekit.fleet.dashboard.data import sample_queue

    engine = open_engine(site.db)
    try:
        return sample_queue(engine, "f7", "all")[0]
    finally:
        engine.dispose()


def _label_of(site: Site, sample: dict[str, Any]) -> Any:
    from edgekit.fleet.dashboard.data import sample_queue

    engine = open_engine(site.db)
    try:
        found = [r for r in sample_queue(engine, "f7", "all") if all(r[k] == sample[k] for k in ("node", "epoch", "seq", "idx"))]
        return found[0]["label"]
    finally:
        engine.dispose()


def test_a_page_on_another_origin_cannot_write_a_label(site: Site, browser: Any, tmp_path: Path) -> None:
    import http.server
    import threading

    sample = _a_sample(site)
    before = _label_of(site, sample)
    target = f"{site.url}/label/{sample['node']}/{sample['epoch']}/{sample['seq']}/{sample['idx']}"
    attack = (f'<form id="f" method="post" action="{target}"><input name="label" value="7"></form>'
              '<script>document.getElementById("f").submit()</script>').encode()  # fmt: skip

    class Attacker(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # the stdlib's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(attack)

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        tab = browser.new_page()
        with tab.expect_response(lambda r: r.url.startswith(site.url + "/label/")) as posted:
            tab.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        assert posted.value.status == 403
        tab.close()
    finally:
        evil.shutdown()
    assert _label_of(site, sample) == before


def test_a_node_in_the_url_is_text_not_markup(site: Site, browser: Any) -> None:
    hostile = '<meta http-equiv="refresh" content="0;url=about:blank">'  # followed, if it were markup
    tab = browser.new_page()
    answer = tab.goto(site.url + "/device/" + quote(hostile))
    assert answer is not None and answer.status == 404
    tab.wait_for_timeout(500)
    assert tab.url.startswith(site.url) and tab.locator('meta[http-equiv="refresh"]').count() == 0
    assert hostile in tab.inner_text("body")
    for path in ("/static/dashboard.css", "/static/nope.css", "/nope", "/device/" + quote(hostile)):
        policy = httpx.get(site.url + path).headers.get("content-security-policy", "")
        assert "base-uri 'none'" in policy and "default-src 'self'" in policy, path
    tab.close()


def test_other_hosts_odd_numbers_big_bodies_and_foreign_referers_are_refused(site: Site) -> None:
    for path in ("/", "/export/samples.npz", "/samples"):
        assert httpx.get(site.url + path, headers={"Host": "evil.example"}).status_code == 421, path
    sample = _a_sample(site)
    key = f"{sample['node']}/{sample['epoch']}/{sample['seq']}/{sample['idx']}"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert httpx.post(f"{site.url}/label/{key}", content="label=²".encode(), headers=form).status_code == 400
    beyond = httpx.post(f"{site.url}/label/{key}", content="label=10", headers=form)  # the digits model has 10
    assert beyond.status_code == 400 and beyond.text.startswith("this model has 10 classes: a label is one of 0, 1,")
    huge = httpx.post(f"{site.url}/label/{key}", content=b"label=1&" + b"x" * (150 << 20), headers=form)
    assert huge.status_code == 413
    for path in (f"/label/{sample['node']}/{10**30}/1/0", f"/label/{'0' * 32}/1/1/0", "/label/x/1/1/0"):
        assert httpx.post(site.url + path, content="label=1", headers=form).status_code == 404, path
    assert httpx.get(f"{site.url}/sample/{sample['node']}/{10**30}/1/0.png").status_code == 404
    moved = httpx.post(f"{site.url}/label/{key}", content="label=", headers={**form, "Referer": "https://evil.example/phish"})
    assert moved.status_code == 303 and moved.headers["location"] == "/samples"
    own = httpx.post(f"{site.url}/label/{key}", content="label=", headers={**form, "Referer": site.url + "/samples?show=all"})
    assert own.headers["location"] == "/samples?show=all"


def test_a_token_guards_every_page_off_loopback(site: Site, tmp_path: Path) -> None:
    refused = subprocess.run([sys.executable, "-m", "edgekit", "fleet", "dashboard", "--db", site.db, "--host",
                              "0.0.0.0"], capture_output=True, text=True, env={**os.environ, "EDGEKIT_HOME": str(site.home)})
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "give --token-file FILE" in refused.stderr
    token = tmp_path / "ops.token"
    token.write_text("s3cret-token\n")
    site.dashboard.send_signal(signal.SIGTERM)
    site.dashboard.wait(timeout=20)
    site.dashboard = site.serve("--token-file", str(token), "--bundle", str(site.bundle))
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        assert httpx.get(site.url + "/", headers=headers).status_code == 401
        assert httpx.get(site.url + "/export/samples.npz", headers=headers).status_code == 401
    assert httpx.get(site.url + "/", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    opened = httpx.get(site.url + "/samples?token=s3cret-token")
    assert opened.status_code == 303
    cookie = opened.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    with httpx.Client(base_url=site.url, cookies=opened.cookies) as client:
        assert client.get("/samples").status_code == 200
        forged = client.post("/label/x/1/1/0", content="label=1", headers={"Origin": "http://evil.example"})
        assert forged.status_code == 403


def test_samples_are_shown_as_what_they_are() -> None:
    from PIL import Image

    from edgekit.fleet.dashboard.app import _preview, image_like, thumbnail

    x, _ = digits()
    row = {"node": "ab" * 16, "epoch": 1, "seq": 4, "idx": 1}
    image = _preview(row, lambda *key: {"x": x[:2]})
    assert image.startswith('<img src="/sample/' + "ab" * 16 + '/1/4/1.png"')
    with Image.open(io.BytesIO(thumbnail(x[1]) or b"")) as png:
        assert png.size == (96, 96) and png.mode == "L"
    tabular = _preview(row, lambda *key: {"x": np.array([[0.5, 4000.0, 0.0005], [1.0, 2.0, 3.0]])})
    assert tabular == '<code class="values">1, 2, 3</code>'
    text = _preview(
        row, lambda *key: {"x": np.zeros((2, 8)), "text": np.array(["hi", "turn on the <b>light</b>"])}
    )
    assert text == "<blockquote>turn on the &lt;b&gt;light&lt;/b&gt;</blockquote>"  # escaped
    assert (
        not image_like(np.zeros(12))
        and not image_like(np.zeros((2, 2)))
        and image_like(np.zeros((32, 32, 3)))
    )
    assert _preview(row, lambda *key: None) == '<p class="muted">gone</p>'


def test_the_host_names_a_dashboard_answers_for() -> None:
    from edgekit.fleet.dashboard import allowed_hosts

    assert allowed_hosts("127.0.0.1") == {"127.0.0.1", "localhost", "::1"}
    assert allowed_hosts("10.0.0.5", ("Dash.Example",)) == {"10.0.0.5", "dash.example"}
    assert allowed_hosts("0.0.0.0") is None  # every address: a token is required there
