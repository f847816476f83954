"""The onboarding page of an implicit-feedback model in headless Chromium against a real ``metarec serve``:
items are marked "know / like" (no stars), and the top 10 comes from them. Skipped without Chromium."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from chromium_pipe import Browser, find_chromium
from implicit_tables import write_play_tables
from test_onboarding_browser import HOST, serving

from metarec.eval.implicit.train_run import train_implicit_run, write_implicit_run
from metarec.meta.run import DataConfig

CHROMIUM = find_chromium()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium)")]


@pytest.fixture()
def implicit_server(tmp_path: Path):
    """A 1-epoch implicit model served by ``metarec serve`` on a free loopback port (no key); killed afterwards."""
    write_play_tables(tmp_path / "data")
    data = DataConfig(dataset=str(tmp_path / "data" / "plays.csv"), items=str(tmp_path / "data" / "tracks.csv"),
                      feedback="implicit", columns={"user": "listener", "item": "track", "rating": "plays"})
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = write_implicit_run(train_implicit_run(data, overrides={"implicit": {"epochs": 1}}), tmp_path / "run")
    finally:
        torch.set_num_threads(previous)
    with serving(run, tmp_path, dict(os.environ)) as port:
        yield port


@pytest.mark.timeout(300)
def test_implicit_onboarding_page_in_chromium(implicit_server: int, tmp_path: Path):
    browser = Browser(CHROMIUM, tmp_path / "profile", width=900, height=900, timeout=30)
    try:
        browser.goto(f"http://{HOST}:{implicit_server}/onboarding")
        browser.wait_for("document.querySelectorAll('#items li.item').length === 10", "the first round")
        assert browser.js("document.querySelectorAll('#items button.star').length") == 0  # no ratings asked
        assert "know or like" in browser.js("document.getElementById('round').textContent")
        first = browser.js("[...document.querySelectorAll('#items li.item')].map(e => e.dataset.itemId)")
        for row in (1, 3):
            browser.click(f"#items li.item:nth-child({row}) input.known")
        assert "2 known or liked" in browser.js("document.getElementById('summary').textContent")
        browser.click("#recommend")
        browser.wait_for("document.querySelectorAll('#recs li').length === 10", "the recommendations")
        recommended = browser.js("[...document.querySelectorAll('#recs li')].map(e => e.dataset.itemId)")
        assert not set(recommended) & {first[0], first[2]}
        assert browser.js("document.getElementById('message').textContent") == ""
        assert "score" in browser.js("document.getElementById('results').innerText")
        problems = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"
                    or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] in ("error", "warning"))]
        assert not problems, problems
    finally:
        browser.close()
