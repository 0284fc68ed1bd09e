"""Build the project's images through the Docker API: ``python containers/build.py`` (``make images``).

The same command builds locally (against ``DOCKER_HOST``: Docker, or podman's Docker-compatible
service), in CI and in the release workflow. Both images come from ``containers/Dockerfile``
(targets ``step`` and ``serving``) with the repository root as the build context; the base image
is used as it is on the machine (``pull=False``) unless ``--pull`` is given. Progress goes to
stderr; a JSON summary (tags, sizes, build seconds) to stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = "containers/Dockerfile"
IMAGES = {"step": "mlops-step", "serving": "mlops-serving"}


def project_version() -> str:
    """The version in pyproject.toml: the images' default tag."""
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]["version"]


def _revision() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""
    except OSError:
        return ""


def build_image(
    client: Any, target: str, tag: str, *, pull: bool = False, source: str = "", base: str | None = None
) -> dict[str, Any]:
    """Build one target of the Dockerfile as ``tag``, streaming the build log; the image's facts.

    ``base``: the base image, e.g. pinned by digest (``python:3.11-slim@sha256:...``) for a release."""
    started = time.monotonic()
    image_id = None
    buildargs = {"VERSION": tag.rsplit(":", 1)[-1], "SOURCE": source, "REVISION": _revision()}
    if base:
        buildargs["PYTHON_IMAGE"] = base
    for chunk in client.api.build(
        path=str(ROOT), dockerfile=DOCKERFILE, target=target, tag=tag, pull=pull,
        rm=True, forcerm=True, decode=True, buildargs=buildargs,
    ):  # fmt: skip
        if "error" in chunk:
            raise RuntimeError(f"building {tag} (target {target}) failed: {chunk['error'].strip()}")
        if chunk.get("stream"):
            sys.stderr.write(chunk["stream"])
        if chunk.get("aux", {}).get("ID"):
            image_id = chunk["aux"]["ID"]
    image = client.images.get(image_id or tag)
    return {
        "target": target,
        "tag": tag,
        "id": image.id,
        "size_mb": round(image.attrs["Size"] / 1e6, 1),
        "build_seconds": round(time.monotonic() - started, 1),
        "user": image.attrs["Config"].get("User"),
        "entrypoint": image.attrs["Config"].get("Entrypoint"),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; no target means both images."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # No ``choices=``: Python 3.11's argparse checks an omitted ``nargs="*"`` positional against
    # them and refuses it (``invalid choice: []``), which broke a plain ``make images``.
    parser.add_argument(
        "targets", nargs="*", metavar="TARGET", help=f"{' and/or '.join(IMAGES)} (default: both)"
    )
    parser.add_argument("--repository", default="", help="prefix, e.g. ghcr.io/acme/ (default: local names)")
    parser.add_argument("--tag", default=None, help="default: the project version from pyproject.toml")
    parser.add_argument("--pull", action="store_true", help="pull a newer base image (needs a registry)")
    parser.add_argument("--source", default="", help="the source URL recorded as an image label")
    parser.add_argument(
        "--base-image",
        default=None,
        help="base image, pinned by digest for a release: python:3.11-slim@sha256:...",
    )
    args = parser.parse_args(argv)
    unknown = [t for t in args.targets if t not in IMAGES]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; choose from {list(IMAGES)}")
    args.targets = args.targets or list(IMAGES)
    return args


def main(argv: list[str] | None = None) -> int:
    """Build the images named on the command line (default: both) and print a JSON summary."""
    import docker

    args = parse_args(argv)
    tag = args.tag or project_version()
    client = docker.from_env(timeout=1800)
    results = []
    for target in args.targets:
        name = f"{args.repository}{IMAGES[target]}:{tag}"
        print(f"building {name} ...", file=sys.stderr)
        results.append(
            build_image(client, target, name, pull=args.pull, source=args.source, base=args.base_image)
        )
        print(
            f"built {name}: {results[-1]['size_mb']} MB in {results[-1]['build_seconds']} s", file=sys.stderr
        )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
