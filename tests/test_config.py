import copy
import re
from pathlib import Path

import pytest
import yaml

from memgen import MemgenError
from memgen.config import ConfigError, load, validate

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


def _base():
    with open(CONFIG_DIR / "test.yaml") as fh:
        return yaml.safe_load(fh)


@pytest.mark.parametrize("name", ["config.yaml", "test.yaml", "paper.yaml"])
def test_shipped_configs_are_valid(name):
    cfg = load(CONFIG_DIR / name)
    ts = cfg["time_scale"]
    assert ts["model"]["L"] >= 1 and ts["flow"]["max_dout"] > 0  # defaults filled in
    assert all(isinstance(a, float) and a > 0 for a in ts["alphas"])
    assert ts["figures"]["formats"]


def _set(cfg, path, value):
    *parents, last = path
    for key in parents:
        cfg = cfg[key]
    if value is DELETE:
        del cfg[last]
    else:
        cfg[last] = value


DELETE = object()
TS = "time_scale"
CASES = [
    (("colour",), "red", "colour"),
    ((TS, "model", "depth"), 3, "time_scale.model"),
    ((TS, "widths"), ["a"], "time_scale.widths[0]"),
    ((TS, "widths"), [16, -4], "time_scale.widths[1]"),
    ((TS, "dataset"), {"k": 7, "d": 6, "n_train": 10, "n_test": 10}, "time_scale.dataset.k"),
    ((TS, "alphas"), [], "time_scale.alphas"),
    ((TS, "model", "activation"), "gelu", "time_scale.model.activation"),
    ((TS, "loss", "name"), "logistic", "time_scale.loss.name"),
    ((TS, "alphas"), [1.0, 0.0], "time_scale.alphas[1]"),
    ((TS, "alphas"), [-1.0], "time_scale.alphas[0]"),
    ((TS, "alphas"), [1.0, 1e-200], "time_scale.alphas[1]"),  # 1/alpha^2 overflows: used to crash the train step
    ((TS, "alphas"), [1e200], "time_scale.alphas[0]"),  # 1/alpha^2 underflows to 0: the flow would not move
    ((TS, "dataset"), {"k": 2, "d": 6, "n_train": 24, "n_test": 41}, "time_scale.dataset.n_train"),
    ((TS, "alphas"), [1.0, 2.0, 1.0], "time_scale.alphas"),
    (("device",), "tpu", "device"),
    ((TS, "dataset", "k"), DELETE, "time_scale.dataset"),
    ((TS, "flow", "max_dgrad"), 0, "time_scale.flow.max_dgrad"),
    ((TS, "flow", "method"), "rk4", "time_scale.flow.method"),
    ((TS, "flow", "rtol"), 1.0, "time_scale.flow.rtol"),
    ((TS, "flow", "checkpoints_per_decade"), 0, "time_scale.flow.checkpoints_per_decade"),
    ((TS, "flow", "gradient_dtype"), "float16", "time_scale.flow.gradient_dtype"),
    ((TS, "figures"), {"h": 99}, "time_scale.figures.h"),
    (("families",), ["vision"], "families: unknown family 'vision'"),
    (("resources",), {"gpu": -1}, "resources.gpu"),
    (("double_descent", "two_layer", "lr"), -0.1, "double_descent.two_layer.lr"),
    (("double_descent", "epochwise", "n_logged"), 5000, "double_descent.epochwise.n_logged"),
    (("kernels", "digits", "classes"), [3, 3], "kernels.digits.classes"),
    (("kernels", "digits", "classes"), [[1, 2], [2, 3]], "kernels.digits.classes"),
    (("kernels", "digits", "classes"), [[1, 2], 10], "kernels.digits.classes[1]"),
    (("double_descent", "vector_field", "examples"), [{"kappa": 1.0}], "double_descent.vector_field.examples[0]"),
    (("kernels", "convergence", "widths"), [64], "kernels.convergence.widths"),
    (("kernels", "accuracy", "n_train"), [1790], "kernels.accuracy.n_train"),
    (("kernels", "cifar", "enabled"), "yes", "kernels.cifar.enabled"),
    (("kernels", "cifar"), {"enabled": True, "root": "no/such/cifar-10-batches-py"}, "kernels.cifar.root"),
    (("curvature", "influence", "n_top"), 100, "curvature.influence.n_top"),
    (("curvature", "solvers", "batch_size"), 500, "curvature.solvers.batch_size"),
    (("curvature", "mlp", "fit", "method"), "adam", "curvature.mlp.fit.method"),
    (("curvature", "logreg", "l2"), 0, "curvature.logreg.l2"),
]


@pytest.mark.parametrize("path,value,key", CASES, ids=[".".join(c[0]) + f"={c[1]!r}"[:20] for c in CASES])
def test_invalid_config_names_key(path, value, key):
    cfg = _base()
    _set(cfg, path, value)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert key in str(err.value)
    assert isinstance(err.value, MemgenError)


def test_all_problems_reported_at_once():
    cfg = _base()
    cfg["device"] = "tpu"
    cfg[TS]["loss"]["name"] = "logistic"
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert "device" in str(err.value) and "time_scale.loss.name" in str(err.value)


def test_exponent_strings_are_numbers(tmp_path):
    base = _base()
    base[TS]["alphas"], base[TS]["flow"]["max_dgrad"] = "ALPHAS", "MAXDG"
    text = yaml.safe_dump(base).replace("ALPHAS", "[1e-3, 1E2, 2.5e+1]").replace("MAXDG", "1e-3")
    raw = yaml.safe_load(text)
    assert raw[TS]["alphas"][0] == "1e-3"  # YAML 1.1 reads it as a string
    path = tmp_path / "c.yaml"
    path.write_text(text)
    cfg = load(path)
    assert cfg[TS]["alphas"] == [1e-3, 100.0, 25.0] and cfg[TS]["flow"]["max_dgrad"] == 1e-3
    bad = copy.deepcopy(raw)
    bad[TS]["alphas"] = ["1e-3", "fast"]
    with pytest.raises(ConfigError, match=r"time_scale\.alphas\[1\]"):
        validate(bad)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load(CONFIG_DIR / "no_such.yaml")


# (path, value, what the one message line must say: key, offending value, what is allowed)
MESSAGES = [
    ((TS, "widths"), [16, -4], r"^time_scale\.widths\[1\]: -4 is out of range; must be >= 1$"),
    ((TS, "alphas"), [1.0, 0.0], r"^time_scale\.alphas\[1\]: 0\.0 is out of range; must be >= 1e-100$"),
    ((TS, "alphas"), [1e200], r"^time_scale\.alphas\[0\]: 1e\+200 is out of range; must be <= 1e\+100$"),
    ((TS, "model", "activation"), "gelu",
     r"^time_scale\.model\.activation: 'gelu' is not allowed; allowed: 'relu', 'tanh', 'softplus'$"),
    ((TS, "dataset"), {"k": 7, "d": 6, "n_train": 10, "n_test": 10},
     r"^time_scale\.dataset\.k: 7 must be <= dataset\.d = 6$"),
    ((TS, "dataset"), {"k": 2, "d": 6, "n_train": 24, "n_test": 41},
     r"^time_scale\.dataset\.n_train \+ n_test: 65 exceeds the 64 distinct binary strings of length d = 6$"),
    (("kernels", "cifar", "enabled"), "yes",
     r"^kernels\.cifar\.enabled: 'yes' is not allowed; allowed: 'auto', True, False$"),
    (("curvature", "influence", "n_top"), 100,
     r"^curvature\.influence\.n_top \+ n_random: 108 exceeds digits\.n_train = 80$"),
    (("double_descent", "two_layer", "lr"), -0.1,
     r"^double_descent\.two_layer\.lr: -0\.1 is out of range; must be > 0$"),
]


@pytest.mark.parametrize("path,value,line", MESSAGES, ids=[".".join(c[0]) for c in MESSAGES])
def test_invalid_config_message_names_value_and_what_is_allowed(path, value, line):
    cfg = _base()
    _set(cfg, path, value)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    lines = str(err.value).splitlines()
    assert lines[0] == "invalid config:"
    assert len(lines) == 2, lines  # exactly one problem, on its own line
    assert re.match(line, lines[1].strip()), lines[1]


def _fake_cifar_files(root: Path, names) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).write_bytes(b"stand-in: only existence is checked at validation")


def test_cifar_enabled_true_needs_the_batches(tmp_path):
    from memgen.data import CIFAR_FILES
    from memgen.families.kernels import params as KN

    root = tmp_path / "cifar-10-batches-py"
    cfg = _base()
    cfg["kernels"]["cifar"] = {"enabled": True, "root": str(root)}
    with pytest.raises(ConfigError) as err:  # the root does not exist at all
        validate(copy.deepcopy(cfg))
    msg = str(err.value)
    assert f"kernels.cifar.root: {str(root)!r}" in msg and "does not exist" in msg
    assert "data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch" in msg
    assert "enabled: auto" in msg  # and how to skip CIFAR instead
    _fake_cifar_files(root, CIFAR_FILES[:3])  # data_batch_4, data_batch_5, test_batch missing
    with pytest.raises(ConfigError, match=r"lacks data_batch_4, data_batch_5, test_batch;"):
        validate(copy.deepcopy(cfg))
    _fake_cifar_files(root, CIFAR_FILES)
    valid = validate(copy.deepcopy(cfg))
    assert KN.datasets(valid["kernels"]) == ["digits", "cifar2"]
    # auto: missing batches silently skip CIFAR (the default, unchanged)
    cfg["kernels"]["cifar"] = {"enabled": "auto", "root": str(tmp_path / "elsewhere")}
    assert KN.datasets(validate(copy.deepcopy(cfg))["kernels"]) == ["digits"]
    cfg["kernels"]["cifar"]["enabled"] = False
    assert KN.datasets(validate(cfg)["kernels"]) == ["digits"]


def test_flow_params_hold_only_the_chosen_methods_keys():
    """euler runs keep the params they had before flow.method existed (their outputs stay
    valid); rkc runs carry method, rtol and checkpoints_per_decade instead of euler's keys,
    and FlowConfig gets back what the params say."""
    from memgen.families.time_scale import params as P
    from memgen.families.time_scale.steps import _flow_config

    wc = {"alpha": "1", "h": "16", "seed": "0"}
    raw = _base()
    raw[TS]["flow"].update(method="euler")
    euler = P.train(validate(raw)[TS], wc)["flow"]
    assert {"max_dgrad", "max_dout", "checkpoint_step"} <= euler.keys()
    assert not {"method", "rtol", "checkpoints_per_decade", "gradient_dtype"} & euler.keys()
    raw[TS]["flow"].update(method="rkc", rtol=3e-4, gradient_dtype="float32")
    rkc = P.train(validate(raw)[TS], wc)["flow"]
    assert rkc["method"] == "rkc" and rkc["rtol"] == 3e-4 and rkc["checkpoints_per_decade"] == 20
    assert rkc["gradient_dtype"] == "float32"
    assert not {"max_dgrad", "max_dout", "checkpoint_step"} & rkc.keys()
    for flow in (euler, rkc):
        fc = _flow_config({"alpha": 1.0, "loss": {"name": "soft_hinge", "beta": 20.0}, "flow": flow})
        assert fc.method == flow.get("method", "euler") and fc.tau == flow["tau"]
        assert (fc.max_dgrad, fc.rtol) == (flow.get("max_dgrad", 1e-4), flow.get("rtol", 1e-3))
        assert fc.gradient_dtype == flow.get("gradient_dtype", "same")
