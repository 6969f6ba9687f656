"""Where a model to load lives: an exported folder, or a registered version downloaded once into a cache.

``models:/<name>@<alias>`` and ``models:/<name>/<version>`` are resolved in the project's tracking store
and fetched into ``~/.cache/seqlm/models/`` (``$XDG_CACHE_HOME``). A version number is not an identity:
a recreated store numbers new weights 1 again. So the cache is keyed by the version's weights sha256
(tag ``seqlm.weights_sha256``) and the cached weights are checked against it before use
(docs/architecture.md, decision 15); aliases are resolved anew each time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from seqlm.core.errors import SeqlmError
from seqlm.core.hashing import file_sha256
from seqlm.core.paths import Paths
from seqlm.tracking.store import check_reachable, connect, tracking_uri

REGISTRY_SCHEME = "models:/"
WEIGHTS_TAG = "seqlm.weights_sha256"  # every version register creates carries it


def resolve_model_dir(spec: str | Path) -> Path:
    """An exported model folder, or ``models:/<name>@<alias>`` / ``models:/<name>/<version>`` downloaded.

    A relative folder is looked up from the current directory, then from the project root (SEQLM_ROOT).
    """
    spec = str(spec)
    if spec.startswith(REGISTRY_SCHEME):
        return _download(spec)
    path = Path(spec).expanduser()
    if not path.is_absolute() and not path.exists():
        path = Paths.from_env().root / path
    if not path.is_dir():
        raise SeqlmError(f"{spec}: no model folder there; run the train stage first or pass --model")
    return path


def find_model_dir(root: Path) -> Path:
    """The folder under ``root`` holding an exported model (the registry's pyfunc: artifacts/model_dir/)."""
    from seqlm.models import export

    found = sorted(p.parent for p in Path(root).rglob(export.CONFIG) if (p.parent / export.WEIGHTS).is_file())
    if not found:
        raise SeqlmError(
            f"{root}: the downloaded model holds no {export.CONFIG} + {export.WEIGHTS}; "
            "was it registered by seqlm?"
        )
    return min(found, key=lambda p: len(p.parts))


def _registry_version(client, uri: str) -> tuple[str, str, str | None]:
    """(name, version, weights sha256 or None for a version not registered by seqlm)."""
    rest = uri.removeprefix(REGISTRY_SCHEME).strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
    else:
        name, _, version = rest.rpartition("/")
        if not name or not version.isdigit():
            raise SeqlmError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
        mv = client.get_model_version(name, version)  # fails here, with the registry's message, if unknown
    return name, str(mv.version), mv.tags.get(WEIGHTS_TAG) or None


def _download(uri: str) -> Path:
    """Fetch a registered version once into ~/.cache/seqlm/models/, keyed by its weights sha256."""
    store = tracking_uri(Paths.from_env())
    if store.startswith("sqlite:///") and not Path(store.removeprefix("sqlite:///")).is_file():
        raise SeqlmError(
            f"{uri}: no MLflow store at {store.removeprefix('sqlite:///')}; run the register stage first, "
            "set MLFLOW_TRACKING_URI or pass a model folder"
        )
    check_reachable(store)
    import mlflow

    try:
        client = connect(store)  # seqlm's HTTP timeouts: a lost server is one line in seconds, not minutes
        name, version, weights = _registry_version(client, uri)
        key = version if weights is None else f"{version}-{weights[:16]}"
        cache = _cache_root() / hashlib.sha256(store.encode()).hexdigest()[:12] / name / key
        if cache.is_dir() and not _holds(cache, weights):
            shutil.rmtree(cache, ignore_errors=True)  # damaged or not these weights: fetch again
        if not cache.is_dir():
            _fetch(name, version, store, cache)
    except mlflow.exceptions.MlflowException as exc:
        message = (str(exc.message).strip().splitlines() or ["unknown error"])[0]
        raise SeqlmError(f"{uri}: {message}") from None
    if not _holds(cache, weights):
        raise SeqlmError(
            f"{uri}: the downloaded weights do not match the version's {WEIGHTS_TAG} tag; "
            "the registry's artifacts were changed, register the model again"
        )
    return find_model_dir(cache)


def _holds(cache: Path, weights_sha256: str | None) -> bool:
    """Whether the cached copy has a model, and, when the version names them, exactly those weights."""
    from seqlm.models import export

    try:
        model_dir = find_model_dir(cache)
    except SeqlmError:
        return False
    return weights_sha256 is None or file_sha256(model_dir / export.WEIGHTS) == weights_sha256


def _fetch(name: str, version: str, store: str, cache: Path) -> None:
    import mlflow

    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=".download-"))
    try:
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"{REGISTRY_SCHEME}{name}/{version}",
            dst_path=str(tmp),
            tracking_uri=store,
            registry_uri=store,
        )
        try:
            tmp.rename(cache)
        except OSError:  # another process got there first
            if not cache.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seqlm" / "models"
