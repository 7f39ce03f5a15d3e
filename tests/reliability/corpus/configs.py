"""Bundle configs (``read_config``): syntax, duplicate keys, code-running tags, shape, encoding."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from medood.utils.config import read_config
from tests.reliability.corpus.registry import bad

config = partial(bad, "config", read=read_config)


@config("malformed_yaml", "not valid YAML.*line 3, column 2")
def _(tmp: Path) -> Path:
    (tmp / "inference.yaml").write_text("a: 1\nb: [1, 2\nc: 3\n")
    return tmp / "inference.yaml"


@config("malformed_json", "not valid JSON.*line 1")
def _(tmp: Path) -> Path:
    (tmp / "inference.json").write_text('{"a": 1,, "b": 2}')
    return tmp / "inference.json"


@config("duplicate_key_yaml", "duplicate key 'pixdim'.*line 3")
def _(tmp: Path) -> Path:
    (tmp / "inference.yaml").write_text("pixdim: [2, 2, 2]\nfov: [80, 96, 80]\npixdim: [1, 1, 1]\n")
    return tmp / "inference.yaml"


@config("duplicate_key_json", "duplicate key 'pixdim'")
def _(tmp: Path) -> Path:
    (tmp / "inference.json").write_text('{"pixdim": [2, 2, 2], "pixdim": [1, 1, 1]}')
    return tmp / "inference.json"


@config("python_object_tag", "refused.*python/object/apply:os.system.*plain data only")
def _(tmp: Path) -> Path:
    (tmp / "evil.yaml").write_text(f"x: !!python/object/apply:os.system ['touch {tmp / 'pwned'}']\n")
    return tmp / "evil.yaml"


@config("top_level_not_a_mapping", "holds a list at the top level")
def _(tmp: Path) -> Path:
    (tmp / "list.yaml").write_text("- a\n- b\n")
    return tmp / "list.yaml"


@config("empty_file", "is empty")
def _(tmp: Path) -> Path:
    (tmp / "empty.yaml").write_text("\n\n")
    return tmp / "empty.yaml"


@config("not_utf8", "not UTF-8")
def _(tmp: Path) -> Path:
    (tmp / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    return tmp / "latin1.yaml"
