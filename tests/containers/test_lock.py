"""The images install containers/requirements.lock: every package pinned, with hashes, at the
versions pyproject.toml asks for (a dependency bumped without `make lock` fails here, naming it)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\[=<>~!; ]", requirement, maxsplit=1)[0]).lower()


def _locked() -> dict[str, tuple[str, list[str]]]:
    text = (ROOT / "containers" / "requirements.lock").read_text()
    entries = {}
    for block in re.split(r"\n(?=\S)", text):
        head = block.split("\\", 1)[0].strip()
        if head.startswith("#") or "==" not in head:
            continue
        name, version = head.split("==", 1)
        entries[_name(name)] = (
            version.split(";")[0].strip(),
            re.findall(r"--hash=sha256:([0-9a-f]{64})", block),
        )
    return entries


def test_every_locked_package_is_pinned_with_hashes():
    locked = _locked()
    assert len(locked) > 100  # the whole tree, not only the direct dependencies
    assert all(hashes for _, hashes in locked.values()), [n for n, (_, h) in locked.items() if not h]


def test_the_lock_has_pyprojects_versions():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    locked = _locked()
    stale = []
    for requirement in dependencies:
        name, version = _name(requirement), requirement.split("==", 1)[1].strip()
        if locked.get(name, (None,))[0] != version:
            stale.append(f"{name}: pyproject {version}, lock {locked.get(name, ('missing',))[0]}")
    assert not stale, f"run `make lock`: {stale}"


def test_the_image_installs_the_lock_with_hashes_required():
    dockerfile = (ROOT / "containers" / "Dockerfile").read_text()
    # the installer first, itself hash-checked, then the lock with every hash required
    assert "pip install --require-hashes --no-deps -r /src/build-tools.lock" in dockerfile
    install = re.search(r"uv pip install ([^&]*)-r /src/requirements.lock", dockerfile)
    assert install and "--require-hashes" in install.group(1) and "--no-deps" in install.group(1)
    assert "pip uninstall --yes uv" in dockerfile  # in the same RUN: no layer keeps it
    ignore = (ROOT / ".dockerignore").read_text()
    assert "!containers/requirements.lock" in ignore and "!containers/build-tools.lock" in ignore


def test_the_build_tools_lock_pins_the_uv_the_project_pins_with_hashes():
    text = (ROOT / "containers" / "build-tools.lock").read_text()
    (pin,) = re.findall(r"^uv==(\S+) \\$", text, flags=re.M)
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pinned = {_name(r): r.split("==", 1)[1] for extra in dev.values() for r in extra if "==" in r}
    assert pinned["uv"] == pin
    assert len(re.findall(r"--hash=sha256:[0-9a-f]{64}", text)) >= 5  # every platform's file


def test_a_release_can_pin_the_base_image_by_digest():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build", ROOT / "containers" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    pinned = "python:3.11-slim@sha256:" + "0" * 64
    assert build.parse_args(["--base-image", pinned]).base_image == pinned
    assert build.parse_args([]).base_image is None  # the Dockerfile's default: the local python:3.11-slim
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in (ROOT / "containers" / "Dockerfile").read_text()
