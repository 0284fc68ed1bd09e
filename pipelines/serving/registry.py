"""What the server serves: champion, challenger and policy, read from the MLflow registry.

One ``get_registered_model`` call returns the aliases and the policy tag
together, so every poll sees one consistent picture. New models are downloaded
and loaded off the request path; the swap is one reference assignment, so a
request in flight finishes on the models it started with and none fails.
When the registry cannot be reached, the server keeps what it has.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines import model_format, privacy, storage, tracking
from pipelines.errors import UntrustedModel
from pipelines.serving.model import LoadedModel, load_model_dir
from pipelines.serving.policy import CHALLENGER_ROUTE, CHAMPION_ROUTE, POLICY_TAG, Policy
from pipelines.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deployment:
    """An immutable snapshot of what answers requests."""

    champion: LoadedModel | None = None
    challenger: LoadedModel | None = None
    policy: Policy = field(default_factory=Policy)
    known_categories: dict[str, set[str]] = field(default_factory=dict)
    # numeric feature -> (low, high): the champion's training mean +- CLIP_STDS std (drift metrics)
    numeric_bounds: dict[str, tuple[float, float]] = field(default_factory=dict)

    def routes(self) -> list[tuple[LoadedModel, str]]:
        """The loaded models with the route each answers on (champion first)."""
        pairs = [(self.champion, CHAMPION_ROUTE), (self.challenger, CHALLENGER_ROUTE)]
        return [(model, name) for model, name in pairs if model is not None]

    def key(self) -> tuple:
        return (
            self.champion.version if self.champion else None,
            self.challenger.version if self.challenger else None,
            self.policy.to_json(),
        )


def download_version(settings: Settings, name: str, version: str, cache: Path) -> Path:
    """The model's files in a local cache folder (downloaded once, moved into place atomically)."""
    import mlflow.artifacts

    target = cache / storage.safe_segment(name) / str(version)
    if (target / "MLmodel").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
    try:
        tracking.client(settings)  # binds the tracking and registry URIs
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp))
        os.replace(tmp, target) if not target.exists() else shutil.rmtree(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_version(settings: Settings, name: str, version: str, cache: Path) -> LoadedModel:
    """Download and load one registered version with its threshold and training profile."""
    meta = tracking.client(settings).get_model_version(name, str(version))
    threshold = meta.tags.get("threshold")
    model_dir = download_version(settings, name, str(version), cache)
    model_format.check_digest(model_dir, meta.tags.get(model_format.DIGEST_TAG), f"{name} v{version}")
    model = load_model_dir(
        model_dir,
        name=name,
        version=str(meta.version),
        threshold=float(threshold) if threshold else None,
    )
    profile_uri = meta.tags.get("reference_profile_uri")
    if profile_uri:
        try:
            model.reference = storage.read_json(profile_uri)
        except Exception as exc:  # monitoring gauges only; serving does not depend on it
            log.warning("no reference profile for %s v%s: %s", name, version, exc)
    return model


def _known_categories(model: LoadedModel | None) -> dict[str, set[str]]:
    if model is None:
        return {}
    cats = model.reference.get("categorical") or {}
    return {name: set((stats.get("frequencies") or {}).keys()) for name, stats in cats.items()}


# How far from the training mean one value may pull the drift metrics' sums, in training standard
# deviations: one client's 9.9e11 once moved a 30-minute mean by 1.6e8 std, and a retrain followed.
CLIP_STDS = 10.0


def _numeric_bounds(model: LoadedModel | None) -> dict[str, tuple[float, float]]:
    if model is None:
        return {}
    bounds = {}
    for name, stats in (model.reference.get("numeric") or {}).items():
        mean, std = stats.get("mean"), stats.get("std")
        if mean is not None and std:
            bounds[name] = (float(mean) - CLIP_STDS * float(std), float(mean) + CLIP_STDS * float(std))
    return bounds


class RegistryWatcher:
    """Polls the registry and swaps in new deployments; or serves one pinned version."""

    def __init__(
        self,
        settings: Settings,
        model_name: str,
        *,
        cache: Path,
        poll_seconds: float = 5.0,
        pinned_version: str | None = None,
        model_dir: Path | None = None,
        threshold: float | None = None,
        on_change: Any = None,
        pii_fingerprint: str | None = None,
    ):
        self.settings, self.model_name, self.cache = settings, model_name, cache
        self.poll_seconds, self.pinned_version = poll_seconds, pinned_version
        self.model_dir, self.threshold = model_dir, threshold  # a local folder: no registry at all
        self.on_change = on_change
        self.pii_fingerprint = pii_fingerprint
        self.deployment = Deployment()
        self.last_error: str | None = None
        self.last_success: float | None = None
        self._models: dict[str, LoadedModel] = {}
        self._refused: dict[str, str] = {}  # version -> why its artifact is not loaded
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _model(self, version: str) -> LoadedModel:
        if version in self._refused:  # artifacts do not change: a refused version stays refused
            raise UntrustedModel(self._refused[version])
        if version not in self._models:
            try:
                self._models[version] = self._load(version)
            except UntrustedModel as exc:
                self._refused[version] = str(exc)
                raise
        return self._models[version]

    def _load(self, version: str) -> LoadedModel:
        if self.model_dir:
            return load_model_dir(
                self.model_dir, name=self.model_name, version=version, threshold=self.threshold
            )
        if self.pii_fingerprint:
            self._check_pii_key(version)
        return load_version(self.settings, self.model_name, version, self.cache)

    def _check_pii_key(self, version: str) -> None:
        """Refuse a version whose training pseudonyms came from another key than this server's."""
        tags = tracking.client(self.settings).get_model_version(self.model_name, version).tags or {}
        recorded = tags.get(privacy.FINGERPRINT_TAG)
        if recorded is not None and recorded != self.pii_fingerprint:
            raise UntrustedModel(
                f"v{version} was trained on pseudonyms of another MLOPS_PII_KEY (fingerprint {recorded},"
                f" this server's {self.pii_fingerprint}): its answers to this server's pseudonyms would"
                " be noise; give the server the pipeline's key"
            )

    def desired(self) -> tuple[str | None, Policy, str | None]:
        """(champion version, policy, what is wrong with the policy) as the registry states them now."""
        if self.pinned_version:
            return self.pinned_version, Policy(), None
        registered = tracking.client(self.settings).get_registered_model(self.model_name)
        champion = (registered.aliases or {}).get(tracking.CHAMPION)
        try:
            policy, problem = Policy.from_json((registered.tags or {}).get(POLICY_TAG)), None
        except (ValueError, TypeError) as exc:
            problem = f"malformed deployment policy tag {POLICY_TAG!r} ({exc}): serving the champion only"
            log.error("%s", problem)
            policy = Policy()
        return (str(champion) if champion is not None else None), policy, problem

    def refresh(self) -> bool:
        """One poll: load what changed and swap; True when the deployment changed.

        What cannot be served is named in ``last_error`` (``/ready`` shows it) while the rest
        keeps serving: a champion that fails to load leaves the previous one answering, a
        challenger that fails ends the rollout's traffic split, a malformed policy is ignored.
        """
        try:
            champion_version, policy, problem = self.desired()
        except Exception as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc):  # reachable; nothing registered under the name yet
                self.last_error = f"registered model {self.model_name!r} does not exist yet"
            elif "403" in str(exc):  # behind MLflow's auth app, also what a model not created yet gives
                self.last_error = (
                    f"registered model {self.model_name!r} does not exist yet, or this server's MLflow"
                    " user may not read it"
                )
            else:
                self.last_error = f"registry unreachable: {exc}"
            log.warning("%s; still serving what is loaded", self.last_error)
            raise
        problems = [problem] if problem else []
        champion = self.deployment.champion
        if champion_version is None:
            problems.append(f"registered model {self.model_name!r} has no champion alias yet")
        elif champion is None or champion.version != champion_version:
            try:
                champion = self._model(champion_version)
            except Exception as exc:
                still = f"still serving v{champion.version}" if champion else "nothing is served"
                problems.append(f"champion v{champion_version} cannot be served ({exc}); {still}")
                log.error("%s", problems[-1])
        challenger = None
        if policy.in_rollout and policy.challenger_version:
            try:
                challenger = self._model(policy.challenger_version)
            except Exception as exc:  # the rollout cannot run, the champion still can
                problems.append(
                    f"challenger v{policy.challenger_version} failed to load ({exc}): champion only"
                )
                log.error("%s", problems[-1])
                policy = Policy()
        new = Deployment(champion, challenger, policy, _known_categories(champion), _numeric_bounds(champion))
        self.last_success = time.time()
        self.last_error = "; ".join(problems) or None
        if new.key() == self.deployment.key():
            return False
        self.deployment = new  # the swap: one reference assignment
        keep = {v for v in (new.champion and new.champion.version, challenger and challenger.version) if v}
        self._models = {v: m for v, m in self._models.items() if v in keep}
        log.info(
            "serving champion v%s, challenger %s, strategy %s",
            champion.version if champion else None,
            f"v{challenger.version}" if challenger else "none",
            policy.strategy,
        )
        if self.on_change:
            self.on_change(new)
        return True

    def start(self, on_error: Any = None) -> None:
        def loop() -> None:
            while True:
                try:
                    self.refresh()
                except Exception as exc:
                    if self.last_error is None:
                        self.last_error = str(exc)
                    if on_error:
                        on_error(exc)
                if self.pinned_version and self.deployment.champion:
                    return  # pinned: nothing to poll for
                if self._stop.wait(self.poll_seconds):
                    return

        self._thread = threading.Thread(target=loop, name="registry-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
