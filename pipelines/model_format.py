"""The one format models are saved and loaded in: skops, trusting only the types named here.

Why this exists: ``mlflow.sklearn.load_model`` takes ``serialization_format`` and
``skops_trusted_types`` from the model's own ``MLmodel`` file. Whoever can write a version to the
registry could then ask for ``pickle`` (code runs while loading) or allow-list any type, and
every model server, the deploy worker and the batch scorer would run it. Here the artifact
decides nothing: only the sklearn flavour's skops file is read, and only the types in
``TRUSTED_TYPES`` (what the project's own pipelines are made of, beyond the scikit-learn and
NumPy types skops trusts by default) may appear in it. Anything else is refused with
:class:`UntrustedModel` before a byte of the model is turned into objects. MLflow's ``code``
paths and the pyfunc loader are never used, so no module shipped with a model is imported.

Training checks the same list when it saves (``save_options``): a new estimator whose types are
not here fails at ``train``, not later in production.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import UntrustedModel

# What a served model needs, pinned to what trained it; inferring it costs ~10 s per model.
MODEL_REQUIREMENTS = ("mlflow", "scikit-learn", "skops", "pandas", "numpy", "scipy", "pyarrow")

log = logging.getLogger(__name__)

SKOPS = "skops"
# Beyond skops' own defaults (scikit-learn estimators and transformers, NumPy arrays and scalars):
TRUSTED_TYPES = frozenset(
    {
        "functools.partial",  # HistGradientBoosting keeps partial(check_array, ...) for its input checks
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.utils.validation.check_array",
        "numpy.dtype",  # LogisticRegression's coefficient dtype
    }
)


# The scikit-learn estimators skops trusts by default, as ``sklearn.utils.all_estimators()`` lists
# them for one scikit-learn version. skops computes that list when imported, by importing every
# scikit-learn module: ~1.4 s of CPU in every process that loads or saves a model (each model
# server's start, infra validation's sandbox, the train step), a quarter of a server's start.
# Written by `make lock` (containers/lock.py) for the version installed; any other version
# computes the list as skops does. tests/unit/test_model_format.py checks both lists are equal.
KNOWN_ESTIMATORS = Path(__file__).with_name("sklearn_estimators.json")


def _versions() -> dict[str, str]:
    """The versions a recording is for: scikit-learn's estimators, read the way this skops reads them."""
    from importlib.metadata import version

    return {"scikit-learn": version("scikit-learn"), "skops": version("skops")}


def known_estimators() -> list[tuple[str, str, str]] | None:
    """``(name, module, class name)`` of every estimator, if recorded for this scikit-learn and skops;
    None (skops then walks scikit-learn itself) for other versions or a file that does not parse."""
    import json

    try:
        recorded = json.loads(KNOWN_ESTIMATORS.read_text())
        if recorded["versions"] != _versions():
            return None
        entries = [tuple(entry) for entry in recorded["estimators"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not entries or not all(
        len(e) == 3 and all(isinstance(part, str) for part in e) and e[1].startswith("sklearn.")
        for e in entries
    ):
        return None
    return entries


def write_known_estimators() -> Path:
    """Record :func:`known_estimators` for the installed scikit-learn and skops (``make lock`` runs it)."""
    import json

    from sklearn.utils import all_estimators

    estimators = [[name, cls.__module__, cls.__name__] for name, cls in all_estimators()]
    lines = ",\n".join(json.dumps(entry) for entry in estimators)
    KNOWN_ESTIMATORS.write_text(f'{{"versions": {json.dumps(_versions())}, "estimators": [\n{lines}\n]}}\n')
    return KNOWN_ESTIMATORS


_SKOPS_LOCK = threading.Lock()


def skops_io() -> Any:
    """``skops.io``, imported with the recorded estimator list instead of skops' walk over every
    scikit-learn module (the same names: only their module and class name are read).

    Under a lock: a model server loads several models on their own threads, and a second thread
    must neither see a half-imported ``skops.io`` nor take the stand-in list for the real one.
    """
    import sys

    with _SKOPS_LOCK:
        if "skops.io" not in sys.modules and (known := known_estimators()) is not None:
            import sklearn.utils
            from sklearn.utils.discovery import all_estimators

            stand_ins = [(name, type(cls, (), {"__module__": module})) for name, module, cls in known]
            sklearn.utils.all_estimators = lambda *args, **kwargs: stand_ins
            try:
                import skops.io
            finally:
                sklearn.utils.all_estimators = all_estimators
        import skops.io  # already imported, or (another version) with skops' own walk

    return skops.io


def check_types(types: Iterable[str], what: str) -> list[str]:
    """``types`` sorted, if every one is trusted; else :class:`UntrustedModel` naming the others."""
    types = sorted(set(types))
    refused = [t for t in types if t not in TRUSTED_TYPES]
    if refused:
        raise UntrustedModel(
            f"{what} holds types this project does not trust: {refused}. Only "
            f"pipelines.model_format.TRUSTED_TYPES may appear in a model; extend it in code, "
            "after review, if a new estimator needs more"
        )
    return types


# The most a model file may decompress to. skops reads every array into memory to list the types,
# so a 1.6 MB file of compressed zeros next to a refused type still took a server to 3.3 GB (and a
# pod over its limit, on every restart). The project's models are a few MB.
MAX_BYTES_ENV = "MLOPS_MODEL_MAX_BYTES"
DEFAULT_MAX_BYTES = 256 * 2**20
MAX_MEMBERS = 100_000


def check_size(path: Path) -> None:
    """Refuse a skops file whose members add up to more than ``MLOPS_MODEL_MAX_BYTES`` (256 MiB)
    uncompressed, before anything is decompressed. The sizes are the archive's own headers, and
    Python's zip reader never returns more bytes than a member's header says."""
    import os
    import zipfile

    limit = int(os.environ.get(MAX_BYTES_ENV) or DEFAULT_MAX_BYTES)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise UntrustedModel(f"{path} is not a readable skops file: {exc}") from exc
    total = sum(member.file_size for member in members)
    if total > limit or len(members) > MAX_MEMBERS:
        raise UntrustedModel(
            f"the model file {path} decompresses to {total / 2**20:.0f} MiB in {len(members)} parts; the "
            f"limit is {limit / 2**20:.0f} MiB ({MAX_BYTES_ENV}) and {MAX_MEMBERS} parts"
        )


# Model-version tag with the SHA-256 of the model's files, set by the pipeline at registration.
# The servers may hold credentials that write the artifact store (the chart's S3 keys, the shared
# volume): the registry, where only the pipeline writes, says which bytes are the model.
DIGEST_TAG = "mlops.model_sha256"
# Written by MLflow's client into a folder downloaded from ``models:/name/version`` (its name and
# version), not read from the store: not part of the digest, and nothing here reads it.
CLIENT_FILE = Path("registered_model_meta")


def folder_digest(model_dir: str | Path) -> str:
    """SHA-256 over every file of a model folder: each relative path and its own SHA-256, sorted."""
    import hashlib

    root = Path(model_dir)
    outer = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root) != CLIENT_FILE):
        inner = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                inner.update(block)
        outer.update(f"{path.relative_to(root).as_posix()}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


def check_digest(model_dir: str | Path, expected: str | None, what: str) -> None:
    """Refuse a model folder whose files are not the ones the pipeline registered.

    ``expected`` None is a version registered before digests were recorded: loaded, with a warning.
    """
    if expected is None:
        log.warning("%s has no %s tag: its files are not checked", what, DIGEST_TAG)
        return
    found = folder_digest(model_dir)
    if found != expected:
        raise UntrustedModel(
            f"the files of {what} are not the ones the pipeline registered (SHA-256 {found[:12]}…, "
            f"registered {expected[:12]}…): the artifact store was written after registration"
        )


@contextmanager
def _downloaded(settings: Any, model_uri: str) -> Iterator[str]:
    """The model at an MLflow URI in a temporary folder, gone on exit."""
    import mlflow.artifacts

    from pipelines import tracking

    tracking.client(settings)  # binds the tracking and registry URIs
    with tempfile.TemporaryDirectory(prefix="mlops-model-") as tmp:
        yield mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)


def uri_digest(settings: Any, model_uri: str) -> str:
    """:func:`folder_digest` of the model at an MLflow URI, as a loader downloads it."""
    with _downloaded(settings, model_uri) as path:
        return folder_digest(path)


def save_options(model: Any) -> dict[str, Any]:
    """``mlflow.sklearn.log_model`` arguments that save ``model`` as skops, its types checked."""
    skops = skops_io()

    types = check_types(skops.get_untrusted_types(data=skops.dumps(model)), "the trained model")
    return {"serialization_format": SKOPS, "skops_trusted_types": types}


def load_pipeline(model_dir: str | Path) -> Any:
    """The scikit-learn model in a downloaded MLflow model folder, loaded only from skops."""
    skops = skops_io()

    model_dir = Path(model_dir)
    try:
        flavor = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["sklearn"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise UntrustedModel(f"{model_dir} is not an MLflow scikit-learn model: {exc}") from exc
    fmt = flavor.get("serialization_format")
    if fmt != SKOPS:
        raise UntrustedModel(
            f"the model asks to be loaded as {fmt!r}; only {SKOPS!r} is loaded (a pickle runs code while"
            " loading)"
        )
    name = str(flavor.get("pickled_model") or "")
    path = model_dir / name
    if not name or Path(name).name != name or not path.is_file():
        raise UntrustedModel(f"the model's file {name!r} is not a file inside {model_dir}")
    check_size(path)
    try:
        types = skops.get_untrusted_types(file=path)
    except Exception as exc:  # not a skops archive at all
        raise UntrustedModel(f"{path} is not a readable skops file: {exc}") from exc
    return skops.load(path, trusted=check_types(types, f"the model file {path}"))


def load_uri(settings: Any, model_uri: str, digest: str | None = None) -> Any:
    """The model at an MLflow URI (``models:/name/3``, ``models:/m-...``), through :func:`load_pipeline`.

    A registered version (``models:/name/3``) is checked against its :data:`DIGEST_TAG`; any other
    URI against ``digest`` when given (the train step's result for the candidate it logged).
    """
    from pipelines import tracking

    name, _, version = model_uri.removeprefix("models:/").partition("/")
    registered = model_uri.startswith("models:/") and version.isdigit()
    if registered:
        tags = tracking.client(settings).get_model_version(name, version).tags or {}
        digest = tags.get(DIGEST_TAG)
    with _downloaded(settings, model_uri) as path:
        if registered or digest is not None:
            check_digest(path, digest, f"{name} v{version}" if registered else model_uri)
        return load_pipeline(path)


def _pinned_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in MODEL_REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def log_model(model: Any, example: Any) -> str:
    """Log a fitted Pipeline to the active run with skops, a predict_proba signature and an example.

    skops (not pickle) is the format, with only the types ``pipelines.model_format`` trusts: the
    loaders refuse anything else, whatever the model's MLmodel file asks for.
    """
    import mlflow.sklearn
    from mlflow.models import infer_signature

    info = mlflow.sklearn.log_model(
        model,
        name="model",
        signature=infer_signature(example, model.predict_proba(example)),
        input_example=example,
        pip_requirements=_pinned_requirements(),
        pyfunc_predict_fn="predict_proba",
        **save_options(model),
    )
    return info.model_uri
