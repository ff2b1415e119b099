import json
from pathlib import Path

import numpy as np
import pytest

from hmarl.studies.analysis import (PROFILE_TAUS, Estimate, action_modes, aggregate, align_curves, bootstrap_ci, estimate,
                            first_step_reaching, interquartile_mean, mode_stability, normalized_scores)
from hmarl.studies.report import (Claim, env_steps_per_s, final_return, load_claims, load_runs, main, marl_eval_data,
                          steps_to_threshold, verdict)

STEPS = [100, 200, 300]


def write_run(root: Path, name: str, *, algorithm: str = "ippo", env: str = "balance", seed: int = 0,
              variant: str | None = None, status: str = "COMPLETED", stop_time: str = "2025-01-01T00:00:00",
              returns: list[float] = (0.0, 1.0, 2.0), total_steps: int = STEPS[-1], **metrics: list[float]) -> Path:
    """A sacred FileStorageObserver run folder; metrics given as name=values are logged at STEPS
    (``eval_success`` -> ``eval/success``)."""
    folder = root / name
    folder.mkdir(parents=True)
    config = {"algorithm": algorithm, "env": env, "seed": seed, "total_steps": total_steps}
    if variant is not None:
        config["variant"] = variant
    logged = {"eval/return": list(returns), **{k.replace("_", "/", 1): v for k, v in metrics.items()}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.json").write_text(json.dumps(
        {k: {"steps": STEPS[:len(v)], "values": v, "timestamps": ["2025-01-01T00:00:00"] * len(v)}
         for k, v in logged.items()}))
    (folder / "run.json").write_text(json.dumps(
        {"status": status, "result": logged["eval/return"][-1], "start_time": "2024-12-31T00:00:00",
         "stop_time": stop_time}))
    return folder


def test_interquartile_mean_drops_a_quarter_of_the_values_rounded_down_at_each_end():
    assert interquartile_mean(np.arange(1, 9)) == 4.5
    assert interquartile_mean([7, 100, 3, 6, -50, 5, 2, 4]) == 4.5  # unsorted, outliers trimmed
    # 7 seeds 0, 1, 4, 9, 16, 25, 36: int(7/4) = 1 value dropped at each end, (1+4+9+16+25)/5 = 11.
    # The fractional IQM hmarl had before weighted the sorted values 0, .25, 1, 1, 1, .25, 0:
    # (.25*1 + 4 + 9 + 16 + .25*25) / 3.5 = 35.5 / 3.5 = 10.14.
    assert interquartile_mean(np.arange(7) ** 2) == 11.0
    assert interquartile_mean([1, 2, 4, 8, 16]) == pytest.approx((2 + 4 + 8) / 3)
    assert interquartile_mean([1, 2, 3, 4, 5, 100]) == pytest.approx((2 + 3 + 4 + 5) / 4)
    assert interquartile_mean([1, 2, 9]) == 4  # fewer than 4 values: the mean


@pytest.mark.parametrize("n", range(1, 10))
def test_interquartile_mean_is_rliables(n):
    metrics = pytest.importorskip("rliable.metrics")
    values = np.random.default_rng(n).normal(size=n)
    assert interquartile_mean(values) == metrics.aggregate_iqm(values[:, None])


def test_bootstrap_ci_of_identical_values_collapses_to_the_value():
    assert bootstrap_ci(np.full(5, 0.1)) == (0.1, 0.1)
    assert bootstrap_ci([7.5]) == (7.5, 7.5)


def test_bootstrap_ci_is_deterministic_within_the_range_and_around_the_mean():
    values = np.random.default_rng(1).normal(size=7)
    low, high = bootstrap_ci(values)
    assert (low, high) == bootstrap_ci(values)
    assert values.min() <= low <= values.mean() <= high <= values.max()
    # Resampled means 1, 2, 3 with weights 1/4, 1/2, 1/4: the percentile interval is [1, 3]
    # (BCa's bias correction would move it, as 2 is not the resamples' median).
    assert bootstrap_ci([1.0, 3.0]) == (1.0, 3.0)


def test_bootstrap_ci_per_step_of_curves():
    curves = np.array([[0.0, 1.0, 5.0], [0.0, 3.0, 5.0]])
    low, high = bootstrap_ci(curves)
    np.testing.assert_array_equal(low, [0.0, 1.0, 5.0])
    np.testing.assert_array_equal(high, [0.0, 3.0, 5.0])


def test_estimate():
    assert estimate([1.0, 3.0]) == Estimate(mean=2.0, low=1.0, high=3.0, iqm=2.0, n=2)


def test_normalized_scores_are_min_max_per_env_and_leave_out_constant_envs():
    normalized = normalized_scores({"a": {"x": np.array([2.0, 4.0]), "y": np.array([0.0])},
                                    "b": {"x": np.array([5.0, 5.0])}})
    assert list(normalized) == ["a"]
    np.testing.assert_array_equal(normalized["a"]["x"], [0.5, 1.0])
    np.testing.assert_array_equal(normalized["a"]["y"], [0.0])


def test_aggregate_point_estimates_are_rliables_and_its_cis_come_from_the_same_bootstrap():
    rliable = pytest.importorskip("rliable.library")
    from rliable import metrics
    rng = np.random.default_rng(3)
    scores = {"x": rng.uniform(size=(5, 3)), "y": rng.uniform(size=(4, 3))}
    result = aggregate(scores)
    for label, values in scores.items():
        assert result.iqm[label].value == pytest.approx(metrics.aggregate_iqm(values))
        assert result.mean[label].value == pytest.approx(metrics.aggregate_mean(values))
        np.testing.assert_allclose(result.profile[label][0], rliable.score_distributions(values, PROFILE_TAUS))
    (pair, improvement), = result.improvement.items()
    assert improvement.value == pytest.approx(metrics.probability_of_improvement(scores[pair[0]], scores[pair[1]]))
    # rliable's stratified bootstrap (seeded through numpy's global RNG, which is all it draws from)
    # gives the same interval up to resampling noise.
    state = np.random.get_state()
    np.random.seed(0)
    try:
        _, cis = rliable.get_interval_estimates({"x": scores["x"]}, metrics.aggregate_iqm, reps=2000)
    finally:
        np.random.set_state(state)
    np.testing.assert_allclose([result.iqm["x"].low, result.iqm["x"].high], cis["x"][:, 0], atol=0.03)


def test_aggregate_needs_two_runs():
    with pytest.raises(ValueError, match=r"x needs scores \[runs >= 2, tasks\], got shape \(1, 2\)"):
        aggregate({"x": np.zeros((1, 2))})


def test_first_step_reaching():
    steps = np.array(STEPS)
    assert first_step_reaching(steps, np.array([0.0, 5.0, 4.0]), 5.0) == 200
    assert first_step_reaching(steps, np.array([0.0, 4.9, 4.0]), 5.0) is None


def test_align_curves_stacks_equal_steps_and_interpolates_onto_the_shortest_run():
    steps, values = align_curves([(np.array([1, 2]), np.array([1.0, 2.0])), (np.array([1, 2]), np.array([3.0, 4.0]))])
    np.testing.assert_array_equal(steps, [1, 2])
    np.testing.assert_array_equal(values, [[1, 2], [3, 4]])
    steps, values = align_curves([(np.array([0, 10, 20]), np.array([0.0, 10.0, 20.0])),
                                  (np.array([5, 15]), np.array([1.0, 3.0]))])
    np.testing.assert_array_equal(steps, [5, 15])
    np.testing.assert_array_equal(values, [[5, 15], [1, 3]])


def test_action_modes_hand_case_with_ties_padding_and_absent_actions():
    bottom = np.array([[0, 0, 1, 1, 0, -1],
                       [2, 2, 2, 2, -1, -1]])
    upper = np.array([[1, 1, 3, 2, 1, -1],  # action 1: upper 3 and 2 once each -> 2
                      [3, 0, 3, 0, -1, -1]])  # action 2: upper 3 and 0 twice each -> 0
    np.testing.assert_array_equal(action_modes(bottom, upper, n_actions=3), [[1, 2, -1], [-1, -1, 0]])


def test_mode_stability_counts_cells_present_in_both_episodes():
    modes = np.array([[1, 2, -1], [1, 3, 0], [1, 3, -1]])
    assert mode_stability(modes) == 0.75  # (0,1): 1 of 2 same; (1,2): 2 of 2
    assert np.isnan(mode_stability(np.array([[0, -1], [-1, 1]])))


def test_load_runs_skips_unfinished_and_unreadable_runs_and_keeps_the_latest_duplicate(tmp_path, capsys):
    write_run(tmp_path, "1", seed=0, returns=[1.0])
    write_run(tmp_path, "2", seed=0, returns=[9.0], stop_time="2025-01-03T00:00:00")
    write_run(tmp_path, "3", seed=0, returns=[5.0], stop_time="2025-01-02T00:00:00")
    write_run(tmp_path, "sweep/4", seed=1, variant="comm")
    write_run(tmp_path, "sweep/5", seed=1, variant="")
    write_run(tmp_path, "6", status="FAILED")
    write_run(tmp_path, "7", status="RUNNING")
    truncated = write_run(tmp_path, "8", seed=2)
    (truncated / "metrics.json").write_text('{"eval/return": {"steps": [1')
    (write_run(tmp_path, "9", seed=3) / "config.json").write_text('{"algorithm": "ippo", "seed": 3}')
    (tmp_path / "_sources").mkdir()
    (tmp_path / "_sources" / "run.json").write_text("not a run")

    collection = load_runs(tmp_path)

    assert (collection.skipped, collection.superseded) == (4, 2)
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2 and "8" in warnings[0] and "9" in warnings[1]
    runs = {(run.label, run.seed): run for run in collection.runs}
    assert sorted(runs) == [("ippo", 0), ("ippo", 1), ("ippo[comm]", 1)]
    assert runs["ippo", 0].metrics["eval/return"][1].tolist() == [9.0]


def test_group_statistics(tmp_path):
    write_run(tmp_path, "a", seed=0, returns=[0.0, 5.0, 1.0], perf_env_steps_per_s=[100.0, 300.0])
    write_run(tmp_path, "b", seed=1, returns=[0.0, 2.0, 3.0], perf_env_steps_per_s=[1000.0])
    runs = load_runs(tmp_path).runs

    assert final_return(runs) == Estimate(mean=2.0, low=1.0, high=3.0, iqm=2.0, n=2)
    assert final_return(runs, "eval/success") is None
    reached = steps_to_threshold(runs, 5.0)
    assert (reached.mean_step, reached.reached, reached.seeds) == (200.0, 1, 2)
    assert steps_to_threshold(runs, 3.0).mean_step == 250.0
    assert env_steps_per_s(runs) == 600.0


def test_claim_verdicts():
    def group(mean: float, low: float, high: float) -> Estimate:
        return Estimate(mean, low, high, mean, 3)

    better = Claim("A beats B", "balance", "better", "a", "b")
    reaches = Claim("A matches B", "balance", "reaches", "a", "b")
    assert verdict(better, group(10, 9, 11), group(5, 4, 6)) == "holds"
    assert verdict(better, group(5, 4, 6), group(10, 9, 11)) == "does not hold"
    assert verdict(better, group(6, 4, 8), group(5, 3, 7)) == "within noise (A ahead)"
    assert verdict(better, group(5, 3, 7), group(6, 4, 8)) == "within noise (B ahead)"
    assert verdict(better, None, group(6, 4, 8)) == "not run"
    assert verdict(reaches, group(5, 4, 8), group(8, 7, 9)) == "holds"
    assert verdict(reaches, group(5, 4, 7.9), group(8, 7, 9)) == "does not hold"
    assert verdict(reaches, group(5, 4, 8), None) == "not run"
    two_seeds = Estimate(10, 9, 11, 10, 2)
    assert verdict(better, two_seeds, group(5, 4, 6)) == "too few seeds (< 3)"


def test_load_claims_reads_only_claims_and_thresholds(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("algorithms: [ippo]\nseeds: 3\nthresholds: {balance: 50}\nclaims:\n"
                     "  - {text: t1, env: balance, better: ippo, than: mappo}\n"
                     "  - {text: t2, env: balance, reaches: ippo, target: mappo}\n")
    claims, thresholds = load_claims([sweep])
    assert claims == [Claim("t1", "balance", "better", "ippo", "mappo"),
                      Claim("t2", "balance", "reaches", "ippo", "mappo")]
    assert thresholds == {"balance": 50.0}


@pytest.mark.parametrize("entry, message", [
    ("{text: t, env: e, better: a, than: b, beats: c}", "unknown key 'beats'"),
    ("{text: t, env: e, better: a, target: b}", "needs exactly"),
])
def test_bad_claims_name_the_file_and_the_problem(tmp_path, entry, message):
    path = tmp_path / "claims.yaml"
    path.write_text(f"claims:\n  - {entry}\n")
    with pytest.raises(ValueError, match=message) as error:
        load_claims([path])
    assert str(path) in str(error.value)


def write_level_actions(folder: Path) -> None:
    bottom = np.array([[0, 1, 0, -1], [0, 1, 1, 0], [1, 1, 0, 0]])
    connected = np.array([[2, 0, 2, -1], [2, 0, 0, 2], [0, 0, 2, 2]])
    unconnected = np.array([[1, 0, 1, -1], [0, 2, 2, 0], [0, 1, 1, 1]])
    np.savez(folder / "level_actions.npz", bottom=bottom, connected=connected, unconnected=unconnected,
             n_actions=2, n_upper_actions=3)


def test_main_writes_the_report(tmp_path, capsys):
    results, out = tmp_path / "results", tmp_path / "report"
    write_run(results, "1", algorithm="mappo", seed=0, returns=[0.0, 6.0, 10.0], eval_success=[0.0, 1.0])
    write_run(results, "2", algorithm="mappo", seed=1, returns=[0.0, 2.0, 12.0], eval_success=[0.0, 0.5])
    write_run(results, "3", algorithm="ippo", seed=0, returns=[0.0, 1.0, 2.0],
              perf_env_steps_per_s=[1000.0, 2000.0])
    write_level_actions(write_run(results, "4", algorithm="tag_3ppo", variant="comm", seed=0, returns=[1.5]))
    write_run(results, "5", algorithm="ippo", seed=1, status="FAILED")
    write_run(results, "6", algorithm="ippo", env="sampling", seed=0)
    claims = tmp_path / "claims.yaml"
    claims.write_text("thresholds: {balance: 11}\nclaims:\n"
                      "  - {text: MAPPO beats I-PPO, env: balance, better: mappo, than: ippo}\n"
                      "  - {text: HRL beats MAPPO, env: balance, better: hrl, than: mappo}\n"
                      "  - {text: MAPPO succeeds more, env: balance, better: mappo, than: ippo, metric: eval/success}\n")

    main([str(results), "--out", str(out), "--claims", str(claims), "--metric", "eval/success"])

    assert capsys.readouterr().out.strip() == str(out / "README.md")
    for image in ["curves_balance.png", "curves_sampling.png", "correlation_balance_tag_3ppo-comm_seed0.png"]:
        assert (out / image).read_bytes().startswith(b"\x89PNG")
    assert not list(out.glob(".*"))  # no temp files left behind
    readme = (out / "README.md").read_text()
    assert f"5 runs read from `{results}`; 1 skipped" in readme
    assert ("| label | seeds | env steps | final return mean | 95% CI | IQM | steps to eval/return ≥ 11 "
            "| env steps/s | eval/success |") in readme
    assert "| mappo | 2 | 300 | 11 | [10, 12] | 11 | 300 (1/2 seeds) | – | 0.75 [0.5, 1] |" in readme
    assert readme.startswith(f"# Results report\n\nGenerated by `python -m hmarl.studies.report {results} --out {out} ")
    assert readme.index("| mappo |") < readme.index("| ippo |") < readme.index("| tag_3ppo[comm] |")
    assert "| ippo | 1 | 300 | 2 | [2, 2] | 2 | – (0/1 seeds) | 1,500 | – |" in readme
    assert "![eval/return on balance](curves_balance.png)" in readme
    # connected modes per episode [[2, 0], [2, 0], [2, 0]]; unconnected [[1, 0], [0, 2], [1, 0]]
    assert "| [tag_3ppo[comm] seed 0](correlation_balance_tag_3ppo-comm_seed0.png) | 1 | 0 |" in readme
    assert ("| MAPPO beats I-PPO | balance | eval/return | mappo 11 [10, 12] vs ippo 2 [2, 2] (seeds 2 vs 1) "
            "| too few seeds (< 3) |") in readme
    assert "| HRL beats MAPPO | balance | eval/return | hrl – vs mappo 11 [10, 12] | not run |" in readme
    assert ("| MAPPO succeeds more | balance | eval/success | mappo 0.75 [0.5, 1] vs ippo – | not run |"
            in readme)  # ippo logged no eval/success
    assert readme.index("## Paper check") < readme.index("## balance") < readme.index("## sampling")


def test_cli_threshold_overrides_the_claims_files(tmp_path):
    write_run(tmp_path / "results", "1", returns=[0.0, 1.0, 2.0])
    main([str(tmp_path / "results"), "--out", str(tmp_path / "out"), "--threshold", "balance=2"])
    assert "| ippo | 1 | 300 | 2 | [2, 2] | 2 | 300 (1/1 seeds) |" in (tmp_path / "out" / "README.md").read_text()


def test_empty_and_missing_results_folders_exit_with_a_message(tmp_path, capsys):
    write_run(tmp_path, "failed", status="FAILED")
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "--out", str(tmp_path / "out")])
    assert "no COMPLETED sacred runs" in exit_.value.code  # a message: Python prints it and exits with 1
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_a_page_elsewhere_links_the_figures_relative_to_itself(tmp_path, capsys):
    results = tmp_path / "results"
    write_level_actions(write_run(results, "1", algorithm="tag_2ppo"))
    page = tmp_path / "docs" / "results.md"
    main([str(results), "--out", str(tmp_path / "docs" / "results"), "--page", str(page), "--title", "A pilot"])
    text = page.read_text()
    assert text.startswith("# A pilot\n")
    assert "![eval/return on balance](results/curves_balance.png)" in text
    assert "](results/correlation_balance_tag_2ppo_seed0.png)" in text
    assert not (tmp_path / "docs" / "results" / "README.md").exists()


def test_several_folders_are_read_but_budgets_never_mix(tmp_path, capsys):
    write_run(tmp_path / "tag_quick", "1", seed=0)
    write_run(tmp_path / "himpo_quick", "1", algorithm="himppo", seed=0)
    main([str(tmp_path / "tag_quick"), str(tmp_path / "himpo_quick"), "--out", str(tmp_path / "out")])
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "| ippo | 1 |" in readme and "| himppo | 1 |" in readme
    write_run(tmp_path / "tag_full", "1", seed=1, total_steps=2_000_000)
    with pytest.raises(SystemExit, match=r"runs of ippo on balance have different budgets \(300, 2,000,000 env steps\)"):
        main([str(tmp_path / "tag_quick"), str(tmp_path / "tag_full"), "--out", str(tmp_path / "out")])


def write_two_env_sweep(results: Path) -> None:
    """a and b on balance and sampling with 3 seeds; c on balance only."""
    for seed in range(3):
        write_run(results, f"balance/a/{seed}", algorithm="a", seed=seed, returns=[0.0, 2.0 + seed])
        write_run(results, f"balance/b/{seed}", algorithm="b", seed=seed, returns=[0.0, float(seed)])
        for label in "ab":
            write_run(results, f"sampling/{label}/{seed}", algorithm=label, env="sampling", seed=seed,
                      returns=[0.0, 10.0 * (seed + 1)])
    write_run(results, "balance/c/0", algorithm="c", seed=0, returns=[1.0])


def test_the_aggregate_across_envs_on_the_page(tmp_path, capsys):
    results, out = tmp_path / "results", tmp_path / "report"
    write_two_env_sweep(results)
    main([str(results), "--out", str(out)])
    readme = (out / "README.md").read_text()
    section = readme[readme.index("## Aggregate across envs"):readme.index("## balance")]
    assert "on balance, sampling" in section and "percentile bootstraps (10,000 resamples" in section
    assert "Not run on every env: c." in section
    # Normalised: balance over 0..4 (a .5, .75, 1; b 0, .25, .5), sampling over 10..30 (a and b 0, .5, 1).
    # IQM of a's 6 runs [0, .5, .5, .75, 1, 1] drops one at each end: .6875; b's: .3125.
    assert "| a | 3 | 0.688 | [" in section and "| b | 3 | 0.312 | [" in section
    assert section.index("| a | 3 |") < section.index("| b | 3 |")
    # P(a > b): balance 8.5 of 9 pairs (2 ties 2), sampling 1/2 (the same runs): (8.5/9 + 1/2) / 2.
    assert "| X | Y | P(X > Y) | 95% CI |\n|---|---|---:|---:|\n| a | b | 0.722 | [" in section
    assert "![performance profiles](aggregate_profiles.png)" in section
    assert (out / "aggregate_profiles.png").read_bytes().startswith(b"\x89PNG")
    assert "percentile bootstraps over seeds (`scipy.stats.bootstrap`, method='percentile'" in readme


def test_the_aggregate_says_what_it_left_out(tmp_path):
    results = tmp_path / "results"
    write_run(results, "1", env="balance", seed=0, returns=[1.0])
    write_run(results, "2", env="balance", seed=1, returns=[2.0])
    write_run(results, "3", env="sampling", seed=0, returns=[1.0])
    write_run(results, "4", env="sampling", seed=2, returns=[5.0])  # seed 0 alone is on both envs
    write_run(results, "5", env="flat", seed=0, returns=[3.0])
    main([str(results), "--out", str(tmp_path / "out")])
    readme = (tmp_path / "out" / "README.md").read_text()
    assert ("## Aggregate across envs\n\nNo aggregate: no label qualifies.\nflat: every final value is the same, "
            "so it cannot be normalised.\nFewer than 2 seeds run on every env: ippo.\n") in readme


def test_the_aggregate_needs_two_envs_and_is_absent_for_one(tmp_path):
    write_run(tmp_path / "one", "1", seed=0, returns=[1.0])
    main([str(tmp_path / "one"), "--out", str(tmp_path / "out")])
    assert "Aggregate" not in (tmp_path / "out" / "README.md").read_text()


def test_marl_eval_export(tmp_path, capsys):
    results, export = tmp_path / "results", tmp_path / "marl_eval.json"
    write_run(results, "1", algorithm="mappo", seed=3, returns=[0.0, 6.0, 10.0], eval_success=[0.0, 1.0])
    write_run(results, "2", algorithm="ippo", env="sampling", seed=0, returns=[1.5])
    no_return = write_run(results, "3", algorithm="ippo", seed=1, eval_success=[1.0]) / "metrics.json"
    no_return.write_text(json.dumps({k: v for k, v in json.loads(no_return.read_text()).items()
                                     if k != "eval/return"}))  # a run without eval/return is left out
    main([str(results), "--out", str(tmp_path / "out"), "--metric", "eval/success", "--export-marl-eval", str(export)])
    assert capsys.readouterr().out.split() == [str(tmp_path / "out" / "README.md"), str(export)]
    assert json.loads(export.read_text()) == {"hmarl": {
        "balance": {"mappo": {"run_3": {
            "step_1": {"step_count": 100, "return": [0.0], "success": [0.0]},
            "step_2": {"step_count": 200, "return": [6.0], "success": [1.0]},
            "step_3": {"step_count": 300, "return": [10.0]},
            "absolute_metrics": {"return": [10.0], "success": [1.0]}}}},
        "sampling": {"ippo": {"run_0": {"step_1": {"step_count": 100, "return": [1.5]},
                                        "absolute_metrics": {"return": [1.5]}}}}}}
    run = json.loads(export.read_text())["hmarl"]["balance"]["mappo"]["run_3"]
    assert list(run)[-1] == "absolute_metrics"  # marl-eval reads a run's last key as its absolute metrics
    assert marl_eval_data([], ["eval/return"]) == {"hmarl": {}}


def test_a_run_archive_reads_back_as_the_runs_it_holds_and_merges_with_new_folders(tmp_path, capsys):
    """A study over several sittings: the first sitting's runs survive as the committed archive,
    the next sitting's folders add to it, and the page is the same as from all folders at once."""
    first, second, archive = tmp_path / "first", tmp_path / "second", tmp_path / "docs" / "runs.json"
    write_run(first, "1", algorithm="mappo", seed=0, returns=[0.0, 6.0, 10.0], eval_success=[0.0, 1.0],
              perf_env_steps_per_s=[1000.0, 3000.0], train_return=[1.0, 2.0], train_loss=[5.0, 4.0, 3.0])
    write_level_actions(write_run(first, "2", algorithm="tag_3ppo", seed=0, returns=[1.5]))
    write_run(first, "3", algorithm="ippo", seed=0, returns=[1.0], stop_time="2025-01-01T00:00:00")
    (tmp_path / "docs").mkdir()
    main([str(first), "--out", str(tmp_path / "one"), "--metric", "eval/success", "--archive", str(archive)])
    assert capsys.readouterr().out.split() == [str(tmp_path / "one" / "README.md"), str(archive)]
    data = json.loads(archive.read_text())
    assert data["format"] == "hmarl-runs/1" and len(data["runs"]) == 3
    mappo = next(r for r in data["runs"] if r["label"] == "mappo")
    assert mappo["metrics"] == {"eval/return": {"steps": STEPS, "values": [0.0, 6.0, 10.0]},
                                "eval/success": {"steps": STEPS[:2], "values": [0.0, 1.0]},
                                "perf/env_steps_per_s": {"steps": STEPS[:2], "values": [1000.0, 3000.0]},
                                "train/return": {"steps": STEPS[:2], "values": [1.0, 2.0]}}
    assert (mappo["total_steps"], mappo["stop_time"]) == (300, "2025-01-01T00:00:00")  # train/loss left out
    tag = next(r for r in data["runs"] if r["label"] == "tag_3ppo")
    # the modes the figure draws (write_level_actions' hand case), not the raw actions
    assert tag["action_modes"] == {"n_upper_actions": 3, "modes": {"connected": [[2, 0], [2, 0], [2, 0]],
                                                                   "unconnected": [[1, 0], [0, 2], [1, 0]]}}

    write_run(second, "1", algorithm="mappo", seed=1, returns=[0.0, 2.0, 12.0], eval_success=[0.0, 0.5])
    write_run(second, "2", algorithm="ippo", seed=0, returns=[7.0], stop_time="2025-02-01T00:00:00")  # a rerun
    main([str(archive), str(second), "--out", str(tmp_path / "merged"), "--metric", "eval/success"])
    merged = (tmp_path / "merged" / "README.md").read_text()
    assert "| mappo | 2 | 300 | 11 | [10, 12] | 11 | 2,000 | 0.75 [0.5, 1] |" in merged
    assert "| ippo | 1 | 300 | 7 | [7, 7] | 7 |" in merged  # the later run of a seed wins, archived or not
    assert "4 runs read from" in merged and "1 superseded" in merged
    # the archived TAG action record still draws its figure
    assert "| [tag_3ppo seed 0](correlation_balance_tag_3ppo_seed0.png) | 1 | 0 |" in merged
    assert (tmp_path / "merged" / "correlation_balance_tag_3ppo_seed0.png").read_bytes().startswith(b"\x89PNG")

    # reading the archive alone gives the first sitting's page
    main([str(archive), "--out", str(tmp_path / "again"), "--metric", "eval/success"])
    strip = lambda text: text.split("\n", 4)[4].replace(str(archive), "R").replace(str(first), "R")  # noqa: E731
    assert strip((tmp_path / "again" / "README.md").read_text()) == strip((tmp_path / "one" / "README.md").read_text())


def test_an_archive_keeps_its_own_runs_and_not_those_of_other_archives_read_beside_it(tmp_path):
    """Two studies' pages: the paper check reads the comparison's archive beside its own runs; its
    archive takes the runs of its folders (and of itself, on the next sitting), never a copy of the
    comparison's."""
    comparison_runs, paper_runs = tmp_path / "families", tmp_path / "paper"
    comparison, paper = tmp_path / "comparison.json", tmp_path / "paper.json"
    write_run(comparison_runs, "1", algorithm="himppo", seed=0, returns=[3.0])
    main([str(comparison_runs), "--out", str(tmp_path / "a"), "--archive", str(comparison)])
    write_run(paper_runs, "1", algorithm="himppo_fl", seed=0, returns=[2.0])
    main([str(comparison), str(paper_runs), "--out", str(tmp_path / "b"), "--archive", str(paper)])
    labels = lambda path: [run["label"] for run in json.loads(path.read_text())["runs"]]  # noqa: E731
    assert labels(paper) == ["himppo_fl"]
    # the next sitting: the paper's archive, its new folder and the comparison's archive again
    write_run(tmp_path / "paper2", "1", algorithm="himppo_sg", seed=0, returns=[1.0])
    main([str(comparison), str(paper), str(tmp_path / "paper2"), "--out", str(tmp_path / "c"), "--archive", str(paper)])
    assert labels(paper) == ["himppo_fl", "himppo_sg"] and labels(comparison) == ["himppo"]
    assert "3 runs read from" in (tmp_path / "c" / "README.md").read_text()  # the page still shows them all


def test_a_file_that_is_no_run_archive_is_one_clear_error(tmp_path):
    other = tmp_path / "marl_eval.json"
    other.write_text(json.dumps({"hmarl": {}}))
    with pytest.raises(SystemExit, match=r"marl_eval.json is not a run archive .*--archive FILE writes one"):
        main([str(other), "--out", str(tmp_path / "out")])
