"""What a benchmark report says with few seeds, and how it names methods: hand-made results, no training."""

from __future__ import annotations

import math
import re

import pandas as pd

from metarec.eval.benchmark import (BenchmarkConfig, BenchmarkResult, confidence_interval, method_label,
                                    plot_results, results_markdown, summarise)
from metarec.eval.benchmark.run import run_benchmark


def _result(seeds: tuple[int, ...], values: dict[str, list[float]]) -> BenchmarkResult:
    """Per method, one new-user MAE per seed at the whole support and at K = 1 and 5."""
    rows = [dict(seed=seed, scenario="new_users", method=m, metric="mae", value=v + 0.01 * k, k=k)
            for m, vs in values.items() for seed, v in zip(seeds, vs) for k in (0, 1, 5)]
    frame = pd.DataFrame(rows)
    cfg = BenchmarkConfig(seeds=seeds, methods=("mf", "maml"), support_sizes=(1, 5), support_draws=1)
    histories = {"maml": {s: [{"epoch": e, "val_mae": 0.9 - 0.01 * e + 0.001 * s} for e in range(3)] for s in seeds}}
    return BenchmarkResult(cfg, frame, summarise(frame), {"best_meta_learner": "maml"}, histories, 1.0)


def test_two_seeds_give_no_t_interval_but_the_range():
    """t(0.975, 1) = 12.7: two seeds 0.2 apart gave "± 1.27"; the report shows the range instead."""
    mean, half = confidence_interval([0.8, 1.0])
    assert mean == 0.9 and math.isnan(half)
    mean, half = confidence_interval([0.8, 0.9, 1.0])
    assert math.isfinite(half) and half > 0  # three seeds: an interval
    text = results_markdown(_result((0, 1), {"maml": [0.8, 1.0], "mf": [0.85, 0.95]}))
    assert not re.search(r"\d ± \d", text)  # no interval from two seeds
    assert "0.9000 (range 0.8000 to 1.0000)" in text
    assert "fewer than 3 seeds" in text
    three = results_markdown(_result((0, 1, 2), {"maml": [0.8, 0.9, 1.0], "mf": [0.85, 0.9, 0.95]}))
    assert "0.9000 ± " in three and "(range" not in three


def test_report_names_the_closed_form_meta_learner_for_what_it_is(tmp_path):
    """The recipe's ``maml`` takes no gradient step (the ridge fold-in): it is not called MAML; its key stays."""
    result = _result((0, 1), {"maml": [0.8, 1.0], "mf": [0.85, 0.95]})
    run = result.config.run
    assert run.meta.inner_steps == 0 and run.model.fold_in
    label = method_label("maml", run)
    assert "MAML" not in label and "fold-in" in label and "[maml]" in label
    assert method_label("fomaml", run) == "fomaml"
    gradient = run.override("meta", inner_steps=3).override("model", fold_in=False)
    assert method_label("maml", gradient) == "maml"
    text = results_markdown(result)
    assert f"| {label} |" in text and "| maml |" not in text
    written = plot_results(result, tmp_path)
    assert [p.name for p in written] == ["k_curve.png", "learning_curves.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


def test_benchmark_progress_reports_steps_done_and_total(monkeypatch):
    """Every call says how far the run is (N of M steps), so the command line can show a bar with an ETA."""
    from metarec.data.synthetic import SyntheticConfig, make_synthetic

    small = make_synthetic(SyntheticConfig(n_users=200, n_items=80)).dataset
    calls: list[tuple[str, int, int]] = []
    cfg = BenchmarkConfig(dataset=small.name, seeds=(0,), methods=("global-mean", "item-mean"), support_sizes=(1,),
                          support_draws=1, catalogue_support_sizes=(), bootstrap=20, search=False)
    run_benchmark(cfg, dataset=small, progress=lambda msg, done, total: calls.append((msg, done, total)))
    assert [(done, total) for _, done, total in calls] == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
