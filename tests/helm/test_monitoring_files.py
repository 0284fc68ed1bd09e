"""The shipped Prometheus and Alertmanager files, checked by the tools of those projects.

``promtool`` and ``amtool`` are Debian's (``make install`` installs them with Prometheus and
Alertmanager). Debian builds Prometheus 2.42 without Kubernetes service discovery, so its
``promtool check config`` cannot parse ``kubernetes_sd_configs``: the scrape config is checked with
that one block swapped for a static target, everything else as shipped (and the admin-token file,
which Kubernetes mounts, present).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

MONITORING = Path(__file__).resolve().parents[2] / "helm" / "mlops" / "files" / "monitoring"


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: `make install` installs Debian's prometheus and alertmanager"
    return found


def check(*args: str, cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_the_rules_pass_promtool() -> None:
    out = check(tool("promtool"), "check", "rules", "prometheus-rules.yaml", cwd=MONITORING)
    assert "SUCCESS: 2 rules found" in out


def test_the_alertmanager_config_passes_amtool() -> None:
    out = check(tool("amtool"), "check-config", "alertmanager.yaml", cwd=MONITORING)
    assert "SUCCESS" in out


def test_the_scrape_config_passes_promtool(tmp_path: Path) -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yaml").read_text())
    (job,) = config["scrape_configs"]
    discovery = [{"role": "pod", "namespaces": {"names": ["RELEASE_NAMESPACE"]}}]
    assert job.pop("kubernetes_sd_configs") == discovery
    job["static_configs"] = [{"targets": ["model-server:8000"]}]
    token = Path(job["authorization"]["credentials_file"])
    job["authorization"]["credentials_file"] = str(tmp_path / token.name)
    (tmp_path / token.name).write_text("admin-token\n")
    (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(MONITORING / "prometheus-rules.yaml", tmp_path)
    out = check(tool("promtool"), "check", "config", "prometheus.yaml", cwd=tmp_path)
    assert "SUCCESS: 2 rules found" in out


def test_promtool_would_catch_a_broken_scrape_config(tmp_path: Path) -> None:
    """The check above can fail: without the mounted token file promtool refuses the config."""
    config = yaml.safe_load((MONITORING / "prometheus.yaml").read_text())
    (job,) = config["scrape_configs"]
    job.pop("kubernetes_sd_configs")
    job["static_configs"] = [{"targets": ["model-server:8000"]}]
    job["authorization"]["credentials_file"] = str(tmp_path / "absent")
    (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(MONITORING / "prometheus-rules.yaml", tmp_path)
    done = subprocess.run(
        [tool("promtool"), "check", "config", "prometheus.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode != 0
