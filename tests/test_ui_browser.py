"""lora-ft ui in a real browser: Debian's Chromium, headless, driven by Playwright, against `lora-ft ui` serving a
runs folder on 127.0.0.1. The runs are real: the embedded SmolLM2 trained a few steps on the legal example data.

The browser tier: `bash scripts/browser_check.sh` (which installs Chromium where missing and sets
LORA_FT_BROWSER=1). With LORA_FT_UI_SCREENSHOTS=docs/ui each page's screenshot is written there for docs/ui.md.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from lora_ft import cli
from tests.conftest import REPO

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

# as the machine's notes say Chromium must start here: no sandbox as root, and none of its calls home
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FINISHED_WITHIN = 420  # seconds for a run started from the form (3 steps of the embedded model, and its evals)
TRAIN_SETTINGS = ["--set", "train.max_steps=6", "--set", "train.batch_size=2", "--set",
                  "train.gradient_accumulation_steps=1", "--set", "data.max_seq_length=256", "--set",
                  "train.warmup_ratio=0", "--set", "train.logging_steps=1"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(runs: Path, here: Path, log_file: Path, env: dict | None = None):
    """`lora-ft ui RUNS` on a free port of 127.0.0.1, started from ``here``, once it answers: (process, url, log)."""
    port = _free_port()
    log = log_file.open("w")
    server = subprocess.Popen([sys.executable, "-m", "lora_ft", "ui", str(runs), "--port", str(port)], cwd=here,
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return server, url, log
        except urllib.error.HTTPError:  # it answers (a login page answers 401 to a bare request)
            return server, url, log
        except OSError:
            assert server.poll() is None and time.time() < deadline, log_file.read_text()
            time.sleep(0.5)


def _shots(tmp_path_factory) -> Path:
    folder = os.environ.get("LORA_FT_UI_SCREENSHOTS")
    return Path(folder) if folder else tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """`lora-ft ui` over a runs folder holding two finished runs (one evaluated), started from the data's folder."""
    root = tmp_path_factory.mktemp("ui-site")
    runs, data = root / "runs", root / "data"
    data.mkdir()
    shutil.copy(REPO / "examples" / "legal" / "train.jsonl", data / "train.jsonl")
    eval_rows = (REPO / "examples" / "legal" / "eval.jsonl").read_text(encoding="utf-8").splitlines()[:8]
    (data / "eval.jsonl").write_text("\n".join(eval_rows) + "\n", encoding="utf-8")
    config = data / "legal.yaml"
    config.write_text("model:\n  base: embedded\ndata:\n  train:\n    - path: train.jsonl\n  eval:\n"
                      "    - path: eval.jsonl\n", encoding="utf-8")
    for name, rate in (("legal-a", "2e-3"), ("legal-b", "5e-4")):
        assert cli.main(["train", str(config), *TRAIN_SETTINGS, "--set", f"train.learning_rate={rate}",
                         "--set", f"output_dir={runs / name}"]) == 0
    assert cli.main(["eval", str(runs / "legal-a"), "--no-general", "--max-answers", "4", "--max-new-tokens",
                     "48"]) == 0
    server, url, log = _serve(runs, data, root / "ui.log")
    yield SimpleNamespace(url=url, runs=runs, data=data, log=root / "ui.log", shots=_shots(tmp_path_factory))
    server.terminate()
    server.wait(30)
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = os.environ.get("LORA_FT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, site):
    opened = browser.new_page(viewport={"width": 1400, "height": 1000})
    opened.set_default_timeout(60_000)
    opened.goto(site.url)
    opened.wait_for_selector("#runs-table")
    yield opened
    opened.close()


def _choose(page, elem_id: str, value: str) -> None:
    """Pick ``value`` in a Gradio dropdown, as a person does: open it, type, click the option."""
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(value)
    page.get_by_role("option", name=value, exact=True).click()


def _form(page, site, name: str, **settings: str) -> None:
    """Fill the new-run form: a name, the data (a path relative to where the page was started) and settings."""
    page.get_by_role("tab", name="New run").click()
    page.get_by_label("run name (its folder in the runs folder)").fill(name)
    page.get_by_label("data.train[0].path").fill("train.jsonl")
    page.get_by_label("data.eval[0].path").fill("eval.jsonl")
    for label, value in {"train.max_steps": "3", "train.batch_size": "2", "train.gradient_accumulation_steps": "1",
                         "data.max_seq_length": "256", **settings}.items():
        page.get_by_label(label, exact=True).fill(value)


def test_the_runs_table_lists_a_finished_run(page, site):
    table = page.locator("#runs-table")
    row = table.locator(".virtual-row", has_text="legal-a").filter(visible=True)
    row.wait_for()
    assert "finished" in row.inner_text() and "sft" in row.inner_text() and "6/6" in row.inner_text()
    page.wait_for_timeout(500)  # the table drawn whole
    page.screenshot(path=str(site.shots / "runs.png"))


def test_a_runs_page_draws_its_curves_and_reports(page, site):
    page.locator("#runs-table span", has_text="legal-a").first.click()
    for key in ("loss", "eval_loss", "learning_rate"):  # each curve drawn: Vega's SVG with its line
        page.locator(f"#plot-{key} svg.marks path[aria-roledescription='line mark']").first.wait_for()
    assert "finished" in page.locator("#run-status").inner_text()
    page.locator("#eval-answers .virtual-row").filter(visible=True).first.wait_for()
    assert page.locator("#eval-answers .virtual-row").filter(visible=True).count() == 4  # base and tuned answers side by side
    assert "verdict" in page.locator("#eval-report").inner_text().lower()
    link = page.locator("#downloads a", has_text="adapter/adapter_model.safetensors")
    assert page.request.get(site.url.rstrip("/") + link.get_attribute("href")).status == 200
    page.screenshot(path=str(site.shots / "run.png"), full_page=True)


def test_compare_overlays_two_runs(page, site):
    page.get_by_role("tab", name="Compare").click()
    _choose(page, "compare-choice", "legal-a")
    _choose(page, "compare-choice", "legal-b")
    page.keyboard.press("Escape")
    page.locator("#compare-button").click()
    page.locator("#compare-table .virtual-row", has_text="legal-b").filter(visible=True).wait_for()
    for key in ("loss", "eval_loss", "learning_rate"):  # one line per run in each plot
        page.wait_for_function("(id) => document.querySelectorAll("
                               "`#${id} svg.marks path[aria-roledescription='line mark']`).length === 2",
                               arg=f"compare-{key}")
    assert page.locator("#compare-table .virtual-row", has_text="legal-a").filter(visible=True).count() == 1
    page.screenshot(path=str(site.shots / "compare.png"), full_page=True)


def test_chat_answers_from_both_models(page, site):
    page.get_by_role("tab", name="Chat").click()
    _choose(page, "chat-run", "legal-a")
    assert page.locator("#chat-run input").input_value() == "legal-a"
    page.locator("#max-new input[type=number]").fill("96")  # the answers' length cap (a slider's number box)
    page.locator("#max-new input[type=number]").press("Enter")
    page.locator("#message textarea").fill("What is a force majeure clause?")
    page.locator("#send").click()
    page.locator("#chat-note").get_by_text("answered in").wait_for(timeout=180_000)  # both answers are whole
    for side in ("chat-base", "chat-tuned"):
        assert len(page.locator(f"#{side} .bot").last.inner_text().strip()) > 20
    page.screenshot(path=str(site.shots / "chat.png"))
    page.locator("#max-new input[type=number]").fill("16")  # a second message continues both conversations
    page.locator("#max-new input[type=number]").press("Enter")
    page.locator("#message textarea").fill("Thank you.")
    page.locator("#send").click()
    # the question shows at the first update, which also clears the note; "answered in" then marks the end
    page.wait_for_function("() => document.querySelectorAll('#chat-tuned .user').length === 2", timeout=60_000)
    page.locator("#chat-note").get_by_text("answered in").wait_for(timeout=120_000)
    for side in ("chat-base", "chat-tuned"):
        assert page.locator(f"#{side} .user").count() == 2 and page.locator(f"#{side} .bot").count() >= 2


def test_a_config_error_shows_the_same_message_as_the_cli(page, site):
    _form(page, site, "bad-rate", **{"train.learning_rate": "5"})
    page.locator("#check").click()
    shown = page.locator("#new-output textarea")
    page.wait_for_function("() => document.querySelector('#new-output textarea').value.startsWith('error:')")
    config = site.runs / ".lora-ft-ui" / "configs" / "bad-rate.yaml"
    cli_run = subprocess.run([sys.executable, "-m", "lora_ft", "validate", str(config)], capture_output=True,
                             text=True, cwd=site.data)
    assert cli_run.returncode == 2 and shown.input_value() == cli_run.stderr.strip()
    assert "train.learning_rate" in shown.input_value() and "Traceback" not in shown.input_value()
    page.screenshot(path=str(site.shots / "new-run-error.png"), full_page=True)


def test_a_run_started_from_the_form_reaches_finished(page, site):
    _form(page, site, "from-form")
    page.locator("#new-more textarea").fill("train.logging_steps=1")  # any key, as --set takes it
    page.locator("#plan").click()
    page.wait_for_function("() => /peak|memory/i.test(document.querySelector('#new-output textarea').value)",
                           timeout=180_000)
    page.screenshot(path=str(site.shots / "new-run.png"), full_page=True)
    page.locator("#start").click()
    status = page.locator("#run-status")
    status.get_by_text("started here").wait_for(timeout=120_000)
    deadline = time.time() + FINISHED_WITHIN
    while "started here: finished" not in status.inner_text().replace("*", ""):
        assert time.time() < deadline, page.locator("#run-log textarea").input_value()
        assert "stopped:" not in status.inner_text() and "failed" not in status.inner_text()
        page.wait_for_timeout(1000)
    assert (site.runs / "from-form" / "adapter" / "adapter_model.safetensors").is_file()
    page.locator("#downloads a", has_text="adapter/adapter_model.safetensors").wait_for()  # the page filled in
    assert "logging_steps: 1" in (site.runs / "from-form" / "config.yaml").read_text()
    page.locator("#plot-eval_loss svg.marks path[aria-roledescription='line mark']").first.wait_for()
    page.screenshot(path=str(site.shots / "run-from-form.png"), full_page=True)


def test_a_file_outside_the_runs_folder_is_refused(page, site):
    base = site.url.rstrip("/") + "/gradio_api/file="
    inside = site.runs / "legal-a" / "adapter" / "adapter_config.json"
    assert page.request.get(base + str(inside)).status == 200
    for outside in (site.data / "train.jsonl", Path("/etc/passwd"), site.runs / ".." / "data" / "train.jsonl",
                    site.log):
        assert page.request.get(base + str(outside)).status == 403, outside


def test_with_a_password_nothing_is_shown_or_served_before_login(browser, site, tmp_path):
    server, url, log = _serve(site.runs, site.data, tmp_path / "ui-login.log",
                              env={"LORA_FT_UI_PASSWORD": "a long secret"})
    try:
        page = browser.new_page()
        inside = site.runs / "legal-a" / "adapter" / "adapter_config.json"
        assert page.request.get(url + "gradio_api/file=" + str(inside)).status in (401, 403)
        page.goto(url)
        page.locator("input[type=password]").wait_for()
        assert page.locator("#runs-table").count() == 0
        page.locator("input[type=password]").fill("a wrong one")
        page.locator("input").first.fill("lora-ft")
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect").wait_for()
        page.locator("input").first.fill("lora-ft")
        page.locator("input[type=password]").fill("a long secret")
        page.get_by_role("button", name="Login").click()
        page.locator("#runs-table .virtual-row", has_text="legal-a").filter(visible=True).wait_for()
        assert page.request.get(url + "gradio_api/file=" + str(inside)).status == 200  # logged in: its cookie
        page.close()
    finally:
        server.terminate()
        server.wait(30)
        log.close()
