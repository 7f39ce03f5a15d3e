"""Reading bundle configs (JSON / YAML) as plain data, for validation, without running anything.

MONAI configs are code: ``$`` expressions and ``_target_`` objects run when a bundle is run, which is why MONAI
1.6 warns on every ``config_file`` it parses (medood never silences that warning). :func:`read_config` only
parses: ``yaml.SafeLoader`` (a ``!!python/...`` tag is refused, never constructed) or ``json``, and it refuses
what MONAI would silently accept: a duplicate key (the later value would win), a top-level value other than a
mapping, an empty file. A config that lies outside its bundle's ``configs/`` folder is flagged in the log.

:func:`as_flag` reads a boolean option the way the command line gives it: ``monai.bundle run`` parses overrides
with python-fire, so ``--amp false`` arrives as the string ``'false'`` (truthy), and only ``--amp False`` as a bool.
"""

from __future__ import annotations

import json
import logging
import os
import re
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medood.utils.errors import DataError

__all__ = ["CONFIG_SUFFIXES", "as_flag", "find_bundle_root", "read_config"]

logger = logging.getLogger(__name__)

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")

_FLAG_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def as_flag(value: Any, name: str) -> bool:
    """A boolean option as a bool, whether it came from a config file or from the command line as text.

    Args:
        value: a bool (numpy's too), the integer 0 or 1, or one of the strings true / false / yes / no / on / off /
            1 / 0 in any case, with surrounding spaces ignored.
        name: the option's name, for the error message.

    Returns:
        ``value`` as a bool.

    Raises:
        ValueError: anything else (e.g. ``'flase'``, ``2``, ``None``), naming the option.
    """
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, Integral) and value in (0, 1)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _FLAG_WORDS:
        return _FLAG_WORDS[value.strip().lower()]
    raise ValueError(f"{name} must be true or false (or yes/no, on/off, 1/0), got {value!r}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses a key given twice in one mapping."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (the later value would silently win)", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _json_unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r} (the later value would silently win)")
        out[k] = v
    return out


def find_bundle_root(path: str | os.PathLike[str]) -> Path | None:
    """The bundle folder of a config file: the parent of the ``configs/`` folder holding it and a metadata.json."""
    parent = Path(path).resolve().parent
    if parent.name == "configs" and (parent / "metadata.json").is_file():
        return parent.parent
    return None


def _parse(p: Path, text: str) -> Any:
    if p.suffix.lower() == ".json":
        try:
            return json.loads(text, object_pairs_hook=_json_unique)
        except json.JSONDecodeError as e:
            raise DataError(p, f"is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from e
        except ValueError as e:
            raise DataError(p, f"is not a valid config: {e}") from e
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.constructor.ConstructorError as e:
        where = f" at line {e.problem_mark.line + 1}" if e.problem_mark else ""
        problem = str(e.problem or e)
        tag = re.search(r"tag '(?:tag:yaml\.org,2002:)?([^']+)'", problem)
        if "could not determine a constructor" in problem and tag:
            raise DataError(
                p,
                f"refused: it holds a Python object tag (!!{tag.group(1)}: code){where} — configs may hold plain "
                "data only",
                "nothing was run; remove the tag",
            ) from e
        raise DataError(p, f"is not a valid config: {problem}{where}") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise DataError(p, f"is not valid YAML: {getattr(e, 'problem', None) or e}{where}") from e


def read_config(path: str | os.PathLike[str], bundle_root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Parse a ``.json`` / ``.yaml`` / ``.yml`` config into plain data (nothing is evaluated or instantiated).

    Args:
        path: the config file.
        bundle_root: the bundle the config is meant for. A config outside ``<bundle_root>`` is flagged with a
            warning (it runs code when the bundle is run). Defaults to ``None``: a config that is not in a
            bundle's ``configs/`` folder (next to a ``metadata.json``) is flagged.

    Returns:
        The top-level mapping.

    Raises:
        DataError: missing, empty or non-UTF-8 file, unknown suffix, a syntax error (with its line), a duplicate
            key, a Python-object YAML tag, or a top level that is not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "does not exist" if not p.exists() else "is not a file")
    if p.suffix.lower() not in CONFIG_SUFFIXES:
        raise DataError(p, f"unsupported config extension {p.suffix!r}, expected one of {list(CONFIG_SUFFIXES)}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(p, f"is not UTF-8 text: {e}") from e
    if not text.strip():
        raise DataError(p, "is empty")
    content = _parse(p, text)
    if not isinstance(content, dict):
        raise DataError(p, f"holds a {type(content).__name__} at the top level, expected a mapping of config keys")
    _flag_outside(p, bundle_root)
    return content


def _flag_outside(p: Path, bundle_root: str | os.PathLike[str] | None) -> None:
    root = Path(bundle_root).resolve() if bundle_root is not None else find_bundle_root(p)
    real = p.resolve()
    if root is not None and real.is_relative_to(root):
        return
    where = f"outside the bundle folder {root}" if root is not None else "not in a bundle's configs/ folder"
    logger.warning(
        "%s: config from %s; its $-expressions and _target_ entries run as Python code when a bundle is run, so "
        "use it only if you trust its source",
        p,
        where,
    )
