"""The lock files (requirements/BUILD.txt) that `make venv` installs from.

Both pin the Makefile's TORCH_VERSION (the CPU lock its +cpu build, the CUDA lock PyPI's
CUDA 13.0 build), every package exactly, the same version of every package they share,
and versions that satisfy pyproject.toml's dependencies; the CPU lock holds no CUDA
package. A venv made by `make` holds exactly its lock's versions.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import ROOT

LOCKS = {"cpu": ROOT / "requirements" / "cpu.txt", "cu130": ROOT / "requirements" / "cu130.txt"}
CUDA_ONLY = re.compile(r"^(nvidia-|cuda-|triton$)")


def pins(path: Path) -> dict[str, str]:
    """name -> exact version of every requirement line of a lock; anything else fails."""
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        assert m, f"{path.name}:{n}: not an exact pin 'name==version': {line!r}"
        out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def torch_version() -> str:
    m = re.search(r"^TORCH_VERSION\s*:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert m, "Makefile: no TORCH_VERSION"
    return m.group(1)


@pytest.fixture(scope="module")
def locks():
    return {build: pins(path) for build, path in LOCKS.items()}


def test_both_locks_pin_the_makefiles_torch(locks):
    v = torch_version()
    assert locks["cpu"]["torch"] == f"{v}+cpu"
    assert locks["cu130"]["torch"] == v  # PyPI's Linux wheel of torch is the CUDA 13.0 build
    assert locks["cu130"]["nvidia-cuda-runtime"].startswith("13.0.")


def test_cpu_lock_has_no_cuda_packages(locks):
    assert not [name for name in locks["cpu"] if CUDA_ONLY.match(name)]
    assert [name for name in locks["cu130"] if CUDA_ONLY.match(name)]


def test_shared_packages_have_one_version(locks):
    shared = (set(locks["cpu"]) & set(locks["cu130"])) - {"torch"}
    assert len(shared) > 50
    assert {n: (locks["cpu"][n], locks["cu130"][n]) for n in shared if locks["cpu"][n] != locks["cu130"][n]} == {}
    assert set(locks["cpu"]) - {"torch"} <= set(locks["cu130"])


@pytest.mark.parametrize("build", LOCKS)
def test_lock_satisfies_pyproject(locks, build):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    reqs = [*pyproject["project"]["dependencies"], *extras["dev"], *extras["slurm"],
            *pyproject["build-system"]["requires"]]  # setuptools: `make` builds memgen without isolation
    env = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.0",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
    for spec in reqs:
        req = Requirement(spec)
        if req.marker and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        assert name in locks[build], f"{LOCKS[build].name}: {req.name} (pyproject: {spec}) is not locked"
        assert req.specifier.contains(Version(locks[build][name]), prereleases=True), \
            f"{LOCKS[build].name}: {name}=={locks[build][name]} does not satisfy pyproject's {spec}"


def test_python_floor_is_311():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"


@pytest.mark.skipif(not (Path(sys.prefix) / ".memgen-build").is_file(),
                    reason="not a venv made by `make venv` (no .memgen-build)")
def test_make_venv_holds_exactly_its_lock(locks):
    build = (Path(sys.prefix) / ".memgen-build").read_text().strip()
    if build not in locks:
        pytest.skip(f"venv of build {build}: no committed lock to compare")
    wrong = {}
    for name, version in locks[build].items():
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have != version:
            wrong[name] = (version, have)
    assert wrong == {}, f"installed vs {LOCKS[build].name} (locked, installed): {wrong}"
