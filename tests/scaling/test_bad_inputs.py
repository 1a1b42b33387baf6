"""Bad input: clear errors naming what is wrong, or warnings naming what is unidentifiable plus a fallback."""

from __future__ import annotations

import numpy as np
import pytest

from mixpretrain.scaling import LawFit, fit_laws
from mixpretrain.scaling.results import parse_kv, read_results
from mixpretrain.scaling.synthetic import BUDGETS, make_world, observe, pilot_design


def _csv(tmp_path, text: str):
    p = tmp_path / "results.csv"
    p.write_text(text)
    return p


GOOD_HEADER = "run,D_ct,D_mri,L_ct,L_mri\n"


def test_csv_missing_columns(tmp_path):
    with pytest.raises(ValueError, match="missing column 'run'"):
        read_results(_csv(tmp_path, "name,D_ct,L_ct\na,1,2\n"))
    with pytest.raises(ValueError, match="D_mri has no matching L_mri"):
        read_results(_csv(tmp_path, "run,D_ct,D_mri,L_ct\na,1,2,3\n"))
    with pytest.raises(ValueError, match="L_pet has no matching D_pet"):
        read_results(_csv(tmp_path, "run,D_ct,L_ct,L_pet\na,1,2,3\n"))
    with pytest.raises(ValueError, match="no D_<domain> columns"):
        read_results(_csv(tmp_path, "run,loss\na,1\n"))
    with pytest.raises(ValueError, match="no runs"):
        read_results(_csv(tmp_path, GOOD_HEADER))


def test_csv_bad_values(tmp_path):
    with pytest.raises(ValueError, match=r"run b: D_mri = -5.0"):
        read_results(_csv(tmp_path, GOOD_HEADER + "a,1,2,0.5,0.5\nb,10,-5,0.5,0.5\n"))
    with pytest.raises(ValueError, match="run z consumed no samples"):
        read_results(_csv(tmp_path, GOOD_HEADER + "z,0,0,0.5,0.5\n"))
    with pytest.raises(ValueError, match="line 2, column D_ct: 'many' is not a number"):
        read_results(_csv(tmp_path, GOOD_HEADER + "a,many,2,0.5,0.5\n"))
    with pytest.raises(ValueError, match="line 2, column D_mri: empty value"):
        read_results(_csv(tmp_path, GOOD_HEADER + "a,1,,0.5,0.5\n"))
    with pytest.raises(ValueError, match="L_ct = 0.0: losses must be positive"):
        read_results(_csv(tmp_path, GOOD_HEADER + "a,1,2,0,0.5\n"))
    # NaN / empty losses are missing measurements: read as NaN, not an error.
    res = read_results(_csv(tmp_path, GOOD_HEADER + "a,1,2,nan,0.5\nb,3,4,,0.4\n"))
    assert np.isnan(res.L[:, 0]).all() and res.domains == ("ct", "mri")


def test_fit_array_errors():
    D = np.array([[100.0, 0.0], [200.0, 50.0]])
    with pytest.raises(ValueError, match="must both be"):
        fit_laws(D, np.ones((2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="distinct"):
        fit_laws(D, np.ones((2, 2)), ["a", "a"])
    with pytest.raises(ValueError, match="run 1, domain b has -1"):
        fit_laws(np.array([[1.0, 1.0], [1.0, -1.0]]), np.ones((2, 2)), ["a", "b"])
    with pytest.raises(ValueError, match=r"run\(s\) \[0\] consumed no samples"):
        fit_laws(np.array([[0.0, 0.0], [1.0, 1.0]]), np.ones((2, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="unknown law family"):
        fit_laws(D, np.ones((2, 2)), ["a", "b"], family="cubic")
    with pytest.raises(ValueError, match="needs unique data counts"):
        fit_laws(D, np.ones((2, 2)), ["a", "b"], family="repetition")
    with pytest.raises(ValueError, match="unknown domain"):
        fit_laws(D, np.ones((2, 2)), ["a", "b"], unique={"c": 5})


def test_nan_losses_are_skipped_and_counted(world3):
    world, D, L = world3
    L = L.copy()
    L[[2, 5, 9], 1] = np.nan
    fit = fit_laws(D, L, world.domains, family="transfer", log_warnings=False)
    assert any("skipped 3 missing (NaN) losses: d1: 3" in w for w in fit.warnings)
    assert fit.stats["n_losses"] == L.size - 3


def test_too_few_runs_is_an_error_naming_the_domain():
    world = make_world(3, seed=1, hub=0, island=2)
    D = np.concatenate([np.eye(3) * b for b in (1000.0, 2000.0)])
    L = observe(world, D, np.random.default_rng(0))
    with pytest.raises(ValueError, match="domain d0: 2 usable runs"):
        fit_laws(D, L, world.domains, family="transfer", log_warnings=False)


def test_fixed_ratio_mixtures_fall_back_to_power():
    """Only proportional mixtures: transfer cannot be told from own data; say so and fall back."""
    world = make_world(3, seed=1, hub=0, island=2)
    D = np.array([np.array([0.5, 0.3, 0.2]) * b for b in BUDGETS])
    L = observe(world, D, np.random.default_rng(0))
    fit = fit_laws(D, L, world.domains, family="transfer", log_warnings=False)
    assert fit.family == "power"
    assert any("d1 and d0 were always mixed in the same ratio" in w for w in fit.warnings)
    assert any("falling back from transfer to the power family" in w for w in fit.warnings)
    assert not fit.transfer_matrix.any()


def test_few_runs_drop_transfer_exponents():
    world = make_world(3, seed=1, hub=0, island=2)
    rng = np.random.default_rng(0)
    D = pilot_design(3, (1000.0, 2000.0, 4000.0), rng, n_random=0)[:7]  # 7 runs < 7 parameters + 2
    L = observe(world, D, rng)
    fit = fit_laws(D, L, world.domains, family="transfer", log_warnings=False)
    assert any("too few for" in w for w in fit.warnings)
    assert np.all(fit.params["gamma"] == 1.0)


def test_single_budget_warns_and_uses_aicc():
    world = make_world(3, seed=1, hub=0, island=2)
    rng = np.random.default_rng(0)
    D = np.array([rng.dirichlet(np.ones(3)) * 4000 for _ in range(30)])
    L = observe(world, D, rng)
    fit = fit_laws(D, L, world.domains, log_warnings=False)
    assert any("same total budget" in w for w in fit.warnings)
    assert fit.selection["method"].startswith("AICc")


def test_parse_kv_and_lawfit_errors():
    assert parse_kv("ct=10, mri=2.5", "--unique") == {"ct": 10.0, "mri": 2.5}
    with pytest.raises(ValueError, match="--unique: 'ct' is not of the form"):
        parse_kv("ct", "--unique")
    with pytest.raises(ValueError, match="unknown domain 'pet'"):
        parse_kv("pet=1", "--caps", ("ct", "mri"))
    with pytest.raises(ValueError, match="not a mixpretrain laws.json"):
        LawFit.from_dict({"family": "power"})
    world = make_world(2, seed=0, hub=None)
    with pytest.raises(ValueError, match="consumption has 3 domains"):
        world.predict(np.ones(3))


def test_csv_with_a_byte_order_mark(tmp_path):
    """A spreadsheet's UTF-8 BOM is not part of the first column's name ('run')."""
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (GOOD_HEADER + "a,1,2,0.5,0.6\n").encode())
    res = read_results(path)
    assert res.runs == ["a"] and res.domains == ("ct", "mri")
