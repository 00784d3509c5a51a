"""The curvature family's pipeline (memgen.families.curvature: its steps through the CLI,
summary and figures) on tiny settings in a temporary folder."""

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_family, run_step, step_params
from memgen import MemgenError, config, h5io
from memgen.families.curvature import params as CV
from memgen.figures import draw, specs

TOY_X = np.array([1.25, -1.0 / 12.0])  # H^{-1} (1, 1) of the seed's toy
TOY_H = np.array([[8.0 / 9.0, 4.0 / 3.0], [4.0 / 3.0, 8.0]])

SMALL = {
    "toy": {"depth": 60, "lissa_depth": 400},
    "digits": {"classes": [1, 7], "n_train": 60, "n_test": 30, "seed": 0},
    "logreg": {"l2": 0.01},
    "mlp": {"hidden": 3, "l2": 0.01, "damping": 0.01, "fit": {"tol": 1.0e-7, "max_iter": 2000}},
    "influence": {"n_top": 6, "n_random": 6},
    "solvers": {"depth": 100, "record_every": 10, "batch_size": 20},
    "figures": {"n_images": 3, "formats": ["png"]},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _block(**over):
    cfg = config.validate({"curvature": {**copy.deepcopy(SMALL), **over}})
    return cfg["curvature"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Every step of the family on SMALL, then the summary CSVs."""
    d = tmp_path_factory.mktemp("curvature")
    cv = _block()
    out = run_family("curvature", cv, d)
    files = {"toy": out["cv_toy"][()], "dataset": out["cv_digits"][()]}
    groups = {k: [out[f"cv_{k}"][(("cv_model", m),)] for m in CV.MODELS] for k in ("train", "influence", "loo", "solvers")}
    return {"dir": d, "cfg": cv, "files": files, "groups": groups, "summaries": out["cv_summary"][()]}


# ---------------------------------------------------------------- the seed's toy


def test_toy_values_through_the_step(pipeline):
    r = h5io.read(pipeline["files"]["toy"], {"H": (2, 2), "solutions/x": ("nd", 3, 2), "dampings": ("nd",),
                                             "solutions/exact": ("nd", 2)}, step="cv_toy",
                  expect_params=step_params("cv_toy", pipeline["cfg"]))
    assert np.allclose(r["H"], TOY_H, atol=1e-14)
    assert json.loads(r.attrs["methods"]) == ["exact", "cg", "lissa"]
    dampings = list(r["dampings"])
    assert dampings == [0.0, 0.1, 0.5, 1.0]
    for j in range(3):  # exact, CG, LiSSA all give (1.25, -1/12)
        assert np.allclose(r["solutions/x"][0, j], TOY_X, atol=1e-8)
    for i, lam in enumerate(dampings):  # and (H + lambda I)^{-1} v with damping (scale-independent LiSSA)
        want = np.linalg.solve(TOY_H + lam * np.eye(2), np.ones(2))
        assert np.allclose(r["solutions/exact"][i], want, atol=1e-12)
        assert np.allclose(r["solutions/x"][i], want[None], atol=1e-8)
    toy = pd.read_csv(pipeline["summaries"]["toy"])
    solve = toy[(toy["kind"] == "solve") & (toy["damping"] == 0)]
    assert np.allclose(solve[["x1", "x2"]].to_numpy(), TOY_X[None], atol=1e-8)
    assert toy["lambda_max"].iloc[0] == pytest.approx(float(np.linalg.eigvalsh(TOY_H)[-1]), rel=1e-9)


def test_divergent_scale_is_recorded_not_a_crash(pipeline):
    r = h5io.read(pipeline["files"]["toy"], {"scale_study/scale": ("ns",), "scale_study/diverged": ("ns",),
                                             "scale_study/steps": ("ns",), "scale_study/path": ("ns", None, 2)})
    scales = list(r["scale_study/scale"])
    assert scales == [1.0, 5.0, 10.0, 20.0]
    assert list(r["scale_study/diverged"]) == [True, False, False, False]  # only s <= lambda_max / 2 = 4.12
    msgs = json.loads(r.attrs["scale_messages"])
    assert "diverges" in msgs[0] and "4.121" in msgs[0] and msgs[1:] == ["", "", ""]
    n = int(r["scale_study/steps"][0])
    path = r["scale_study/path"][0]
    assert 1 <= n < path.shape[0] and np.all(np.isnan(path[n:]))  # drawn until it leaves |x| <= bound
    assert np.abs(path[n - 1]).max() > 10.0 and np.all(np.abs(path[:n - 1]) <= 10.0)
    # s = 5 > 4.12 oscillates but converges
    k = scales.index(5.0)
    assert np.allclose(r["scale_study/path"][k, -1], TOY_X, atol=1e-3)
    # every scale below the bound is diverged, none crashes
    out = pipeline["dir"] / "toy_small_scales.h5"
    cv = _block(toy={"scales": [0.5, 4.0, 4.2], "depth": 30, "lissa_depth": 50})
    assert run_step("cv_toy", {}, out, step_params("cv_toy", cv)) == 0
    r = h5io.read(out, {"scale_study/diverged": (3,)})
    assert list(r["scale_study/diverged"]) == [True, True, False]


# ---------------------------------------------------------------- influence vs retraining


def test_logreg_influence_matches_leave_one_out(pipeline):
    lo = h5io.read(pipeline["groups"]["loo"][0], {"actual": ("k",), "predicted": ("k",), "selected": ("k",),
                                                  "grad_norm": ("k",)}, step="cv_loo")
    assert lo.params["influence"]["train"]["model"]["kind"] == "logreg"
    assert len(lo["selected"]) == 12 and len(set(lo["selected"])) == 12
    assert lo["grad_norm"].max() <= 1e-9
    r = np.corrcoef(lo["predicted"], lo["actual"])[0, 1]
    assert r >= 0.9
    # the prediction is first order in 1/n: same sign on the clearly influential points
    big = np.abs(lo["actual"]) > 0.2 * np.abs(lo["actual"]).max()
    assert np.all(np.sign(lo["predicted"][big]) == np.sign(lo["actual"][big]))
    models = pd.read_csv(pipeline["summaries"]["models"])
    row = models[models["model"] == "logreg"].iloc[0]
    assert row["pearson_r"] == pytest.approx(r) and row["cg_residual"] < 1e-9 and row["n_checked"] == 12


def test_influence_selection_and_test_point(pipeline):
    tr = h5io.read(pipeline["groups"]["train"][0], {"test_losses": ("m",)})
    inf = h5io.read(pipeline["groups"]["influence"][0], {"predicted": ("n",), "selected": ("k",),
                                                         "selected_top": ("k",)})
    assert int(inf.attrs["test_index"]) == int(np.argmax(tr["test_losses"]))  # test_index null: highest loss
    top = inf["selected"][inf["selected_top"]]
    assert set(top) == set(np.argsort(-np.abs(inf["predicted"]))[:6])


def test_solver_accuracy_table(pipeline):
    s = pd.read_csv(pipeline["summaries"]["solvers"])
    assert set(s["model"]) == set(CV.MODELS)
    for model in CV.MODELS:
        cg = s[(s["model"] == model) & (s["method"] == "cg")]
        assert cg["rel_error"].iloc[0] == 1.0 and cg["rel_error"].iloc[-1] < 1e-8
        assert {"lissa_full_x1.1", "lissa_full_x4", "lissa_batch20_x1.1"} <= set(s[s["model"] == model]["method"])


# ---------------------------------------------------------------- figures and config


@pytest.mark.parametrize("name", list(specs("curvature")))
def test_every_figure_draws_from_the_summaries(pipeline, name, tmp_path):
    out = tmp_path / f"{name}.png"
    draw("curvature", name, pipeline["summaries"], [str(out)], pipeline["cfg"]["figures"])
    assert out.stat().st_size > 5000


def test_figure_reports_missing_columns(pipeline, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("model,x\nlogreg,1\n")
    with pytest.raises(MemgenError, match="lacks column"):
        draw("curvature", "influence_vs_loo", {**pipeline["summaries"], "influence": bad}, [str(tmp_path / "f.png")], {})


def test_config_checks():
    with pytest.raises(MemgenError, match="n_top"):
        _block(influence={"n_top": 50, "n_random": 20})
    with pytest.raises(MemgenError, match="classes"):
        _block(digits={"classes": [3, 3], "n_train": 60, "n_test": 30})
    with pytest.raises(MemgenError, match="scales"):
        _block(toy={"scales": [1.0, 1.0]})
    for path in ("config/config.yaml", "config/test.yaml", "config/paper.yaml"):
        cfg = config.load(path)
        assert "curvature" in cfg


# ---------------------------------------------------------------- library additions used by the steps


def test_fit_methods_agree_and_leave_one_out_restores_parameters():
    from memgen import curvature as cvl

    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = (torch.rand(40, generator=g, dtype=torch.float64) < torch.sigmoid(x[:, 0] - x[:, 1])).double()
    ws = []
    for method in ("newton", "lbfgs"):
        model = cvl.classifier("logreg", 5, seed=0)
        info = cvl.fit(model, cvl.logistic_loss, x, y, l2=0.1, method=method, tol=1e-10)
        assert info["grad_norm"] <= 1e-10
        ws.append(cvl.flat_params(model))
    assert torch.allclose(ws[0], ws[1], atol=1e-9)
    before = cvl.flat_params(model).clone()
    change, infos = cvl.leave_one_out(model, cvl.logistic_loss, x, y, x[:1], y[:1], [0, 5], l2=0.1, method="newton")
    assert torch.equal(cvl.flat_params(model), before) and change.shape == (2,) and change[0] > 0  # own point
    with pytest.raises(MemgenError, match="method is .sgd.; expected one of"):
        cvl.fit(model, cvl.logistic_loss, x, y, method="sgd")


def test_unguarded_lissa_path_stops_at_the_bound():
    from memgen import curvature as cvl

    H = torch.tensor(TOY_H)
    path = cvl.lissa_unguarded_path(lambda u: H @ u, torch.ones(2, dtype=torch.float64), scale=1.0, depth=50, bound=10.0)
    assert path.shape[0] < 50 and path[-1].abs().max() > 10 and (path[:-1].abs() <= 10).all()
    ok = cvl.lissa_unguarded_path(lambda u: H @ u, torch.ones(2, dtype=torch.float64), scale=10.0, depth=3000)
    assert ok.shape == (3000, 2) and np.allclose(ok[-1].numpy(), TOY_X, atol=1e-10)
