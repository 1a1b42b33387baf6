"""The comparison table from per-run summaries: normalisation by proportional of the same seed,
seed-to-seed spread and per-seed wins (no training: summaries are written by hand)."""

from __future__ import annotations

import pytest

from mixpretrain.eval.compare import build_table, format_table

DOMAINS = ["ct", "pet"]


def summary(ct: float, pet: float) -> dict:
    return {"domains": DOMAINS, "final_val": {"ct": ct, "pet": pet}, "consumed": {"ct": 60.0, "pet": 40.0}}


def test_spread_and_seed_wins() -> None:
    runs = [{"name": f"{s}-seed{k}", "sampler": s, "seed": k} for s in ("proportional", "transfer") for k in (0, 1, 2)]
    per_run = {
        "proportional-seed0": summary(1.0, 0.5), "proportional-seed1": summary(1.0, 0.5), "proportional-seed2": summary(1.0, 0.5),
        "transfer-seed0": summary(0.98, 0.49),  # 2% below on both domains
        "transfer-seed1": summary(1.01, 0.505),  # 1% above
        "transfer-seed2": summary(0.99, 0.5),  # 1% below on ct only: mean 0.995
    }
    result = build_table(runs, per_run)
    row = result["samplers"]["transfer"]
    assert row["mean_normalised_per_seed"] == pytest.approx([0.98, 1.01, 0.995])
    assert row["mean_normalised"] == pytest.approx(0.995)
    assert row["mean_normalised_sd"] == pytest.approx(0.015)
    assert row["seeds_below_reference"] == 2
    assert result["samplers"]["proportional"]["seeds_below_reference"] == 0
    assert result["samplers"]["proportional"]["vs_reference"] is None  # the reference itself: no spread
    vs = row["vs_reference"]
    # mean -0.005, sd 0.015, n 3: t = -0.577, two-sided p = 0.62; half-width t(0.975, 2) x se = 4.303 x 0.00866
    assert vs["p"] == pytest.approx(0.622, abs=1e-3)
    assert vs["ci"] == pytest.approx([0.995 - 0.03726, 0.995 + 0.03726], abs=1e-4)
    assert vs["verdict"] == "not distinguishable"
    table = format_table(result)
    assert "| transfer |" in table and "0.0150 (3)" in table and "2/3" in table
    assert "[0.9577, 1.0323] (0.62)" in table
    assert "transfer: mean normalised loss not distinguishable from proportional at 95% over 3 seeds (p = 0.62)" in table


def test_a_consistent_gain_is_called_lower() -> None:
    runs = [{"name": f"{s}-seed{k}", "sampler": s, "seed": k} for s in ("proportional", "temperature") for k in range(4)]
    per_run = {f"proportional-seed{k}": summary(1.0, 0.5) for k in range(4)}
    per_run |= {f"temperature-seed{k}": summary(0.97 + 0.002 * k, 0.49) for k in range(4)}
    vs = build_table(runs, per_run)["samplers"]["temperature"]["vs_reference"]
    assert vs["verdict"] == "lower" and vs["ci"][1] < 1.0 and vs["p"] < 0.01
    assert "temperature: mean normalised loss lower than proportional" in format_table(build_table(runs, per_run))


def test_one_seed_has_no_spread() -> None:
    runs = [{"name": "proportional-seed0", "sampler": "proportional", "seed": 0},
            {"name": "uniform-seed0", "sampler": "uniform", "seed": 0}]
    result = build_table(runs, {"proportional-seed0": summary(1.0, 0.5), "uniform-seed0": summary(1.02, 0.49)})
    assert result["samplers"]["uniform"]["mean_normalised_sd"] is None
    assert result["samplers"]["uniform"]["vs_reference"] is None
    assert "- (1)" in format_table(result)


def test_poor_company_pairs_are_counted_over_seeds() -> None:
    """``forgetting: company`` runs: the pairs with C > 0 at the end of each run, counted per sampler row."""
    runs = [{"name": f"{s}-seed{k}", "sampler": s, "seed": k} for s in ("proportional", "company") for k in (0, 1)]
    per_run = {f"proportional-seed{k}": summary(1.0, 0.5) for k in (0, 1)}
    per_run["company-seed0"] = {**summary(0.99, 0.5), "transfer": {"hubs": [], "islands": [], "interference": {"pet": {"ct": 0.05}}}}
    per_run["company-seed1"] = {**summary(1.0, 0.49), "transfer": {"hubs": [], "islands": [], "interference": {}}}
    result = build_table(runs, per_run)
    assert result["samplers"]["company"]["company_pairs"] == {"pet->ct": 1}
    assert "company: poor company at the end of the run (forgetting: company): pet->ct in 1/2 seeds" in format_table(result)


def test_a_seed_whose_proportional_run_failed_is_left_out_not_made_up() -> None:
    """Without proportional-seed2 there is nothing to pair transfer's seed 2 with: it is left out
    (it used to be divided by the mean over samplers of that seed: a ratio of exactly 1.0)."""
    runs = [{"name": f"{s}-seed{k}", "sampler": s, "seed": k} for s in ("proportional", "transfer") for k in (0, 1, 2)]
    per_run = {f"proportional-seed{k}": summary(1.0, 0.5) for k in (0, 1)}
    per_run |= {f"transfer-seed{k}": summary(0.98, 0.49) for k in (0, 1, 2)}
    result = build_table(runs, per_run)
    row = result["samplers"]["transfer"]
    assert row["seeds"] == 2 and row["mean_normalised_per_seed"] == pytest.approx([0.98, 0.98])
    assert row["unpaired_seeds"] == [2]
    assert "transfer: seed(s) [2] left out: the proportional run of the same seed did not finish" in format_table(result)


def test_summary_of_a_diverged_or_short_run(tmp_path, caplog) -> None:
    """A null (NaN/Inf) validation loss among the final evaluations: a clear error naming the run;
    fewer evaluations than final_evals: their mean, with a warning."""
    import json
    import logging

    from mixpretrain.eval.compare import summarise_run

    def write(run, vals):
        run.mkdir()
        recs = [{"step": 10 * (i + 1), "consumed": {"ct": 5, "pet": 5}, "val/ct": v, "val/pet": 0.5}
                for i, v in enumerate(vals)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        return run

    with pytest.raises(ValueError, match=r"diverged: non-finite validation loss \(val/ct at step 30"):
        summarise_run(write(tmp_path / "diverged", [1.0, 0.9, None]), final_evals=2)
    with caplog.at_level(logging.WARNING):
        s = summarise_run(write(tmp_path / "short", [1.0, 0.8]), final_evals=5)
    assert s["final_val"]["ct"] == pytest.approx(0.9) and "fewer than final_evals 5" in caplog.text
