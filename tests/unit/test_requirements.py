"""The pinned dependency files (requirements/*.txt) against pyproject.toml and each other.

install.sh installs exactly these pins with `pip install --no-deps`, so nothing but these
tests checks that they are complete and consistent: every declared dependency pinned inside
its range, every pinned package's own requirements pinned too, the daemon's pins the ones
the tests run on, and this virtualenv holding exactly the dev pins.
"""

from __future__ import annotations

import importlib.util
import tomllib
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

CHECKOUT = Path(__file__).resolve().parents[2]
DAEMON_PINS = CHECKOUT / "requirements" / "daemon.txt"
DEV_PINS = CHECKOUT / "requirements" / "dev.txt"
# Installed by `python -m venv` and by the editable install, not from the pins.
NOT_PINNED = {"pip", "setuptools", "wheel", "talkbox"}


def lock_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock", CHECKOUT / "requirements" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_pins(path: Path) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, separator, version = line.partition("==")
        assert separator and version, f"{path.name}: {line!r} is not pinned with =="
        assert canonicalize_name(name) == name, f"{path.name}: {name!r} is not a canonical name"
        assert name not in pins, f"{path.name}: {name} pinned twice"
        pins[name] = Version(version)
    return pins


def declared(extra: str | None) -> list[Requirement]:
    project = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    requirements = [Requirement(line) for line in lines]
    return [r for r in requirements if r.marker is None or r.marker.evaluate()]


def unmet(requirements: list[Requirement], pins: dict[str, Version]) -> list[str]:
    return [
        f"{r} (pinned: {pins.get(canonicalize_name(r.name), 'nothing')})"
        for r in requirements
        if canonicalize_name(r.name) not in pins
        or pins[canonicalize_name(r.name)] not in r.specifier
    ]


def test_every_declared_dependency_is_pinned_inside_its_range() -> None:
    assert unmet(declared(None), read_pins(DAEMON_PINS)) == []
    assert unmet(declared(None) + declared("dev"), read_pins(DEV_PINS)) == []


def test_the_daemon_runs_on_the_pins_the_tests_run_on() -> None:
    daemon, dev = read_pins(DAEMON_PINS), read_pins(DEV_PINS)
    assert {name: dev.get(name) for name in daemon} == daemon


def test_the_daemon_leaves_out_only_what_talkbox_never_imports() -> None:
    left_out = {dependency for _, dependency in lock_script().LEFT_OUT_OF_THE_DAEMON}
    assert left_out == {"onnxruntime", "scipy", "scikit-learn",  # test_wake_footprint.py
                        # the SDK's server side: test_mcp_footprint.py
                        "starlette", "sse-starlette", "uvicorn", "python-multipart", "pyjwt"}
    assert not left_out & set(read_pins(DAEMON_PINS))


@pytest.mark.parametrize("pins_file", [DAEMON_PINS, DEV_PINS], ids=["daemon", "dev"])
def test_every_pinned_package_finds_its_own_requirements_pinned(pins_file: Path) -> None:
    pins = read_pins(pins_file)
    left_out = lock_script().LEFT_OUT_OF_THE_DAEMON if pins_file == DAEMON_PINS else set()
    problems = []
    for name in pins:
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue  # an extra nobody asks for, or another platform
            if (name, canonicalize_name(requirement.name)) in left_out:
                continue
            problems += [f"{name} needs {problem}" for problem in unmet([requirement], pins)]
    assert problems == []


def test_this_virtualenv_holds_exactly_the_dev_pins() -> None:
    installed = {
        canonicalize_name(dist.metadata["Name"]): Version(dist.version)
        for dist in metadata.distributions()
    }
    for name in NOT_PINNED:
        installed.pop(name, None)
    assert installed == read_pins(DEV_PINS), "run ./install.sh --dev to install the pins"
