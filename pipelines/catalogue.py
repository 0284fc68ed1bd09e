"""The model catalogue: a folder of pipeline configs, one model each.

``MLOPS_CONFIG_DIR`` names the folder; every ``*.yaml``/``*.yml`` file in it (not the
``*.expectations.yaml`` suites the configs refer to) is one model, named by its
``registry.model_name``. The Airflow side builds one set of DAGs per model from it, with ids
``<dag>__<key>`` (``training__flights_delay``). Without a folder the catalogue is the one
config of ``MLOPS_CONFIG`` (else the bundled flights), and the DAG ids stay plain (``training``):
a single-model deployment keeps the names its users know.

A config that does not load is kept as an entry with its error instead of its config, so that one
model's bad file never stops the others from being built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import PipelineConfig, load_config
from pipelines.errors import ConfigError
from pipelines.settings import Settings

SUITE_SUFFIXES = (".expectations.yaml", ".expectations.yml")


@dataclass(frozen=True)
class Model:
    """One entry of the catalogue: a config file and what loading it gave."""

    path: Path
    config: PipelineConfig | None = None
    error: str | None = None
    # False for the single config of MLOPS_CONFIG: its DAGs keep their plain ids
    in_catalogue: bool = True

    @property
    def name(self) -> str:
        """The registered model's name (``registry.model_name``), or the file's stem if it did not load."""
        return self.config.registry.model_name if self.config else self.path.stem

    @property
    def key(self) -> str:
        """The name as it appears in DAG ids: lower case, ``_`` for anything else than letters and digits."""
        return model_key(self.name)

    def dag_id(self, dag: str) -> str:
        """The id of this model's ``dag`` (``training`` -> ``training__flights_delay`` in a catalogue)."""
        return f"{dag}__{self.key}" if self.in_catalogue else dag


def model_key(name: str) -> str:
    """``flights-delay`` -> ``flights_delay``: the form a DAG id and an Airflow pool accept."""
    return re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")


def config_files(directory: Path) -> list[Path]:
    """The pipeline configs of a catalogue folder, sorted by name (suites left out)."""
    if not directory.is_dir():
        raise ConfigError(f"MLOPS_CONFIG_DIR {directory} is not a folder")
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and p.suffix in {".yaml", ".yml"} and not p.name.endswith(SUITE_SUFFIXES)
    )


def load_catalogue(settings: Settings | None = None) -> list[Model]:
    """Every model of the catalogue, in file-name order; bad configs carry their error.

    Two files that name the same ``registry.model_name`` would share a registry entry, assets and
    DAG ids: the second is an error that names the first.
    """
    settings = settings or Settings.from_env()
    if not settings.config_dir:
        path = Path(settings.config_path)
        try:
            return [Model(path, load_config(path), in_catalogue=False)]
        except ConfigError as exc:
            return [Model(path, error=str(exc), in_catalogue=False)]
    models: list[Model] = []
    seen: dict[str, Path] = {}
    for path in config_files(Path(settings.config_dir)):
        try:
            config = load_config(path)
        except ConfigError as exc:
            models.append(Model(path, error=str(exc)))
            continue
        key = model_key(config.registry.model_name)
        if key in seen:
            models.append(Model(path, error=(
                f"{path.name}: registry.model_name {config.registry.model_name!r} is already the model of "
                f"{seen[key].name}; each model of the catalogue needs its own name"
            )))  # fmt: skip
            continue
        seen[key] = path
        models.append(Model(path, config))
    if not models:
        raise ConfigError(f"MLOPS_CONFIG_DIR {settings.config_dir} holds no pipeline config (*.yaml)")
    return models


def find_model(name: str, settings: Settings | None = None) -> Model | None:
    """The loaded catalogue entry of the registered model ``name`` (or its key), if there is one."""
    return next((m for m in load_catalogue(settings) if m.config and model_key(name) == m.key), None)
