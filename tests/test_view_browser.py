"""`synth view` in a real headless browser (the system's Chromium, driven by Selenium through the
system's chromedriver: both installed by the set-up) over a real run of the embedded model.

``SYNTH_VIEW_SCREENSHOT=PATH`` keeps the page's screenshot there (the README's is made this way)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from synth.store import Store

pytestmark = pytest.mark.slow

SEEDS = [
    "What is the capital of Italy?",
    "Name a fruit that is yellow.",
    "Write a Python function that adds two numbers.",
    "Say something kind.",
    "Give two tips for sleeping well.",
    "What is 3 + 4?",
]
ENV = {**os.environ, "SYNTH_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("view_run")
    seeds = root / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "prompt": t}) + "\n" for i, t in enumerate(SEEDS)))
    out = root / "run"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "run",
            "general",
            "--seeds",
            str(seeds),
            "--out",
            str(out),
            "--k",
            "3",
            "--max-tokens",
            "32",
            "--seed",
            "3",
            "--top-fraction",
            "0.5",
        ],
        check=True,
        env=ENV,
        capture_output=True,
        timeout=900,
    )
    return out


@contextmanager
def served(path: Path) -> Iterator[str]:
    """`synth view PATH --port 0` in a subprocess: its address while it runs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "view", str(path), "--port", "0"],
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert found, (
            f"synth view did not start: {line}{proc.stderr.read() if proc.poll() is not None else ''}"
        )
        yield found.group(0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def url(run):
    with served(run) as address:
        yield address


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM and CHROMEDRIVER, "no chromium / chromedriver: `make install` installs them (apt)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def wait(driver, css: str, timeout: float = 30):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))


def wait_for(driver, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def js_num(x: float) -> str:
    """A number as the page writes it (app.js ``num``)."""
    return str(int(x)) if float(x).is_integer() else f"{x:.3f}"


def store_rows(run: Path, sql: str, args: list) -> list[tuple]:
    store = Store(run, read_only=True)
    try:
        return store.query(sql, args)
    finally:
        store.close()


def test_clicking_a_rejection_reason_shows_exactly_its_rows(run, url, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(url)
    wait(browser, "a.reason")
    reasons = store_rows(
        run, "SELECT stage, reason, count(*) FROM records WHERE NOT kept GROUP BY ALL ORDER BY ALL", []
    )
    assert reasons, "the run rejected nothing: the test has no reason to click"
    chips = {
        (c.get_attribute("data-stage"), c.get_attribute("data-reason")): c.text
        for c in browser.find_elements(By.CSS_SELECTOR, "a.reason")
    }
    assert set(chips) == {(s, r) for s, r, _ in reasons}
    for stage, reason, n in reasons:
        assert chips[(stage, reason)] == f"{reason} {n}"
        browser.find_element(
            By.CSS_SELECTOR, f'a.reason[data-stage="{stage}"][data-reason="{reason}"]'
        ).click()
        wait_for(
            browser,
            lambda d, s=stage, r=reason: (
                f" of {s} (rejected, reason {r})" in d.find_element(By.ID, "rows-status").text
            ),
        )
        assert browser.find_element(By.ID, "rows-status").text.startswith(
            f"{n} row{'' if n == 1 else 's'} of"
        )
        shown = [
            tr.get_attribute("data-key") for tr in browser.find_elements(By.CSS_SELECTOR, "#rows tbody tr")
        ]
        expected = store_rows(
            run,
            "SELECT key FROM records WHERE stage = ? AND NOT kept AND reason = ? ORDER BY seq",
            [stage, reason],
        )
        assert shown == [k for (k,) in expected] and len(shown) == n
        cells = browser.find_elements(By.CSS_SELECTOR, "#rows tbody tr td:nth-child(2)")
        assert {c.text for c in cells} == {f"rejected: {reason}"}
    # a row opens whole: its messages, its verdicts stage by stage, its provenance
    stage, reason, _ = max(reasons, key=lambda r: r[2])
    browser.find_element(By.CSS_SELECTOR, f'a.reason[data-stage="{stage}"][data-reason="{reason}"]').click()
    wait_for(browser, lambda d: f"reason {reason}" in d.find_element(By.ID, "rows-status").text)
    first = browser.find_element(By.CSS_SELECTOR, "#rows tbody tr")
    key = first.get_attribute("data-key")
    first.click()
    wait_for(browser, lambda d: "Provenance" in d.find_element(By.ID, "detail-body").text)
    (data,) = store_rows(run, "SELECT data FROM records WHERE stage = ? AND key = ?", [stage, key])[0]
    record = json.loads(data)
    body = browser.find_element(By.ID, "detail-body")
    texts = [m.text for m in body.find_elements(By.CSS_SELECTOR, ".msg")]
    assert len(texts) == len(record["messages"])
    for text, message in zip(texts, record["messages"], strict=True):
        assert text.startswith(message["role"].upper())
        assert " ".join(message["content"].split()).replace("```", "")[:40].strip() in " ".join(text.split())
    trail = [
        li.text for li in body.find_elements(By.CSS_SELECTOR, "ol.trail")[0].find_elements(By.TAG_NAME, "li")
    ]
    assert trail[-1] == f"{stage}: rejected ({reason})"
    assert record["provenance"]["model"] in body.text
    shot = Path(os.environ.get("SYNTH_VIEW_SCREENSHOT") or tmp_path / "view.png")
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_a_preference_pair_shows_its_two_responses_side_by_side(run, url, browser):
    from selenium.webdriver.common.by import By

    pairs = store_rows(
        run, "SELECT key, data FROM records WHERE kind = 'preference' AND kept ORDER BY seq", []
    )
    assert pairs, "the run made no preference pair"
    browser.get(url)
    wait(browser, "a.reason")
    browser.find_element(By.CSS_SELECTOR, '#tabs button[data-tab="pairs"]').click()
    wait(browser, ".pair-row")
    shown = browser.find_elements(By.CSS_SELECTOR, ".pair-row")
    assert [p.get_attribute("data-key") for p in shown] == [k for k, _ in pairs][: len(shown)]
    record = json.loads(pairs[0][1])
    row = shown[0]
    for response in record["responses"]:
        card = row.find_element(By.CSS_SELECTOR, f'.pair-card[data-label="{response["label"]}"]')
        assert " ".join(response["content"].split()).replace("```", "")[:60].strip() in " ".join(
            card.text.split()
        )
        assert f"score {js_num(response['score'])}" in card.text
    chosen = row.find_element(By.CSS_SELECTOR, '.pair-card[data-label="chosen"]').location
    rejected = row.find_element(By.CSS_SELECTOR, '.pair-card[data-label="rejected"]').location
    assert chosen["y"] == rejected["y"] and chosen["x"] < rejected["x"]  # side by side
    gap = record["responses"][0]["score"] - record["responses"][-1]["score"]
    assert f"strength: {record['strength']} · score gap: {js_num(gap)}" in row.text


def test_the_page_follows_a_run_while_it_writes(tmp_path, browser):
    """A run holding its store (this process writes it): the page shows it running, its funnel grows
    with each committed batch, and its rows are readable (the run answers the page's queries)."""
    from selenium.webdriver.common.by import By

    from synth.records import Message, Provenance, SFTRecord

    def row(i: int) -> SFTRecord:
        rec = SFTRecord(
            id=f"r{i}",
            messages=[Message(role="user", content=f"q{i}"), Message(role="assistant", content=f"a{i}")],
            provenance=Provenance(capability="general"),
        )
        if i % 2:
            rec.reject("clean", "too_short")
        return rec

    run = tmp_path / "live"
    writer = Store(run)
    try:
        writer.begin_stage("clean", 8)
        writer.commit_batch("clean", "b0", [row(0), row(1)])
        with served(run) as url:
            browser.get(url)
            badge = wait(browser, "#live.live")
            assert badge.text == f"running (pid {os.getpid()})"

            def nums() -> str:
                return browser.find_element(By.CSS_SELECTOR, '.stage[data-stage="clean"] .stage-nums').text

            wait_for(browser, lambda d: "kept 1 · rejected 1" in nums())
            writer.commit_batch("clean", "b1", [row(2), row(3), row(4), row(5)])
            wait_for(browser, lambda d: "kept 3 · rejected 3" in nums(), timeout=20)
            browser.find_element(By.CSS_SELECTOR, 'a.reason[data-reason="too_short"]').click()
            wait_for(
                browser,
                lambda d: (
                    "3 rows of clean (rejected, reason too_short)"
                    in d.find_element(By.ID, "rows-status").text
                ),
            )
            shown = [
                tr.get_attribute("data-key")
                for tr in browser.find_elements(By.CSS_SELECTOR, "#rows tbody tr")
            ]
            assert shown == ["r1", "r3", "r5"]
    finally:
        writer.close()


def test_items_open_readably_tool_calls_step_labels_code_runs(tmp_path, browser):
    """A tool call's arguments, each step's label, a code candidate's failing run with its feedback,
    as the page renders them (the store of test_view.py: real record types)."""
    from selenium.webdriver.common.by import By
    from test_view import build_run

    run = tmp_path / "items"
    build_run(run)
    with served(run) as url:
        browser.get(url)
        wait(browser, ".stage-name")

        def open_first(stage: str):
            if browser.find_element(By.ID, "detail").is_displayed():
                browser.find_element(By.ID, "detail-close").click()
            browser.find_element(By.XPATH, f'//span[@class="stage-name" and text()="{stage}"]').click()
            wait_for(browser, lambda d: f" of {stage} (all)" in d.find_element(By.ID, "rows-status").text)
            browser.find_element(By.CSS_SELECTOR, "#rows tbody tr").click()
            wait_for(browser, lambda d: "Provenance" in d.find_element(By.ID, "detail-body").text)
            return browser.find_element(By.ID, "detail-body")

        body = open_first("tools")
        call = body.find_element(By.CSS_SELECTOR, ".call")
        assert "calculator" in call.text and '"expr": "2+2"' in call.find_element(By.TAG_NAME, "pre").text
        assert [m.text.split("\n")[0] for m in body.find_elements(By.CSS_SELECTOR, ".msg")] == [
            "USER",
            "ASSISTANT",
            "TOOL · CALCULATOR · ANSWERS C1",
            "ASSISTANT",
        ]
        body = open_first("steps")
        steps = body.find_elements(By.CSS_SELECTOR, ".step")
        assert [s.get_attribute("data-label") for s in steps] == ["true", "false"]
        assert [s.find_element(By.CSS_SELECTOR, ".lab").text for s in steps] == ["✓", "✗"]
        assert "3*4=12" in steps[0].text and "2+12=15" in steps[1].text
        body = open_first("execute")
        attempt = body.find_element(By.CSS_SELECTOR, ".attempt")
        assert "failed (test_failed)" in attempt.text and "AssertionError: add(1, 2) == -1" in attempt.text
        assert "return a - b" in body.text and "assert add(1, 2) == 3" in body.text


def test_a_round_directory_shows_its_runs_and_its_evaluations_by_round(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    from test_view import build_run

    for rnd, acc in ((1, 0.25), (2, 0.5)):
        build_run(tmp_path / f"round_{rnd}" / "gen" / "general")
        (tmp_path / f"round_{rnd}" / "eval_suite").mkdir(parents=True)
        (tmp_path / f"round_{rnd}" / "eval_suite" / "metrics.json").write_text(
            json.dumps({"math": {"accuracy": acc, "n": 4}})
        )
    with served(tmp_path) as url:
        browser.get(url)
        wait(browser, ".stage-name")
        runs = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "run")).options]
        assert runs == ["round_1/gen/general", "round_2/gen/general"]
        browser.find_element(By.ID, "rounds-tab").click()
        row = wait(browser, 'table.rounds tr[data-metric="suite/math/accuracy"]')
        assert row.text.split() == ["suite/math/accuracy", "0.2500", "0.5000"]
        assert len(browser.find_elements(By.CSS_SELECTOR, "#rounds svg polyline")) == 1
        # another run of the directory: its own funnel
        Select(browser.find_element(By.ID, "run")).select_by_value("round_2/gen/general")
        wait_for(browser, lambda d: "round_2" in d.current_url)
        chip = wait(browser, 'a.reason[data-stage="judge"][data-reason="low_score"]')
        assert chip.text == "low_score 12"
