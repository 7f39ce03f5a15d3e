"""Validate a MONAI bundle's ``configs/metadata.json`` offline, against a schema that ships with medood.

``python -m monai.bundle verify_metadata`` downloads the schema named in the file's ``schema`` URL; medood's
CI and many clinical machines are offline. ``medood/resources/meta_schema.json`` is our own JSON schema of
the fields the MONAI Bundle specification documents (mandatory keys, the tensor descriptions of
``network_data_format``), checked with ``jsonschema``, plus the rule a schema cannot express: ``version``
must have a ``changelog`` entry. :func:`verify_metadata_with_monai` runs MONAI's own ``verify_metadata`` with
the vendored file pre-placed at its target path, so it never downloads.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from medood.utils.errors import DataError
from medood.utils.io import read_json_object

__all__ = ["SCHEMA_NAME", "load_schema", "schema_path", "validate_metadata", "verify_metadata_with_monai"]

SCHEMA_NAME = "meta_schema.json"


def schema_path() -> Path:
    """The vendored schema file (inside the installed package)."""
    return Path(str(resources.files("medood") / "resources" / SCHEMA_NAME))


def load_schema() -> dict[str, Any]:
    """The vendored schema as a dict."""
    return json.loads(schema_path().read_text(encoding="utf-8"))


def _read(path: Path) -> dict[str, Any]:
    return read_json_object(path, hint="a bundle keeps its metadata in configs/metadata.json")


def validate_metadata(path: str | os.PathLike[str], max_errors: int = 5) -> dict[str, Any]:
    """Validate a bundle's ``metadata.json`` offline; returns the parsed metadata.

    Args:
        path: the ``configs/metadata.json`` file.
        max_errors: errors listed in the message. Defaults to 5.

    Raises:
        DataError: naming the file and listing every schema violation (JSON path: message).
    """
    from jsonschema import Draft7Validator

    p = Path(path)
    meta = _read(p)
    errors = sorted(Draft7Validator(load_schema()).iter_errors(meta), key=lambda e: list(e.absolute_path))
    problems = [f"{'/'.join(str(x) for x in e.absolute_path) or '<root>'}: {e.message}" for e in errors]
    if isinstance(meta.get("changelog"), dict) and meta.get("version") not in meta["changelog"]:
        problems.append(f"version: {meta.get('version')!r} has no entry in changelog")
    if problems:
        shown = "; ".join(problems[:max_errors]) + (
            f"; ... ({len(problems)} in all)" if len(problems) > max_errors else ""
        )
        raise DataError(p, f"does not follow the MONAI bundle metadata schema: {shown}", hint=str(schema_path()))
    return meta


def verify_metadata_with_monai(path: str | os.PathLike[str]) -> None:
    """Run MONAI's ``verify_metadata`` offline: the vendored schema is copied to the path it would download to.

    MONAI's ``download_url`` skips a file that already exists, so no network access happens.

    Raises:
        DataError: the metadata does not validate (MONAI's message attached).
    """
    from monai.bundle import verify_metadata

    p = Path(path)
    _read(p)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / SCHEMA_NAME
        shutil.copyfile(schema_path(), target)  # not-a-file-write (a scratch copy in a temporary folder)
        try:
            verify_metadata(meta_file=str(p), filepath=str(target))
        except Exception as e:  # jsonschema.ValidationError and MONAI's own errors
            raise DataError(p, f"MONAI's verify_metadata failed: {e}") from e
