import copy
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
    ((TS, "dataset"), {"k": 2, "d": 6, "n_train": 24, "n_test": 41}, "time_scale.dataset.n_train"),
    ((TS, "alphas"), [1.0, 2.0, 1.0], "time_scale.alphas"),
    (("device",), "tpu", "device"),
    ((TS, "dataset", "k"), DELETE, "time_scale.dataset"),
    ((TS, "flow", "max_dgrad"), 0, "time_scale.flow.max_dgrad"),
    ((TS, "figures"), {"h": 99}, "time_scale.figures.h"),
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
