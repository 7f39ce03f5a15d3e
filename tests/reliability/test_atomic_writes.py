"""No partial outputs: every writer of medood, interrupted half-way, leaves neither a truncated file under the final
name nor a temporary file, and never replaces an existing good file; a static scan keeps new writers honest."""

from __future__ import annotations

import ast
import csv
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

import medood.utils.io as medood_io
from medood.data.image2d import write_map_nifti_2d, write_overlay_png, write_png
from medood.data.readers import save_split_4d
from medood.handlers.errors import write_errors_csv
from medood.handlers.writers import write_map_nifti, write_scores_csv, write_slice_scores_csv
from medood.utils.checkpoints import compact_checkpoint, save_checkpoint
from medood.utils.io import atomic_write_text
from tests.reliability.corpus.nifti import vol, write_nifti

MEDOOD = Path(__file__).resolve().parents[2] / "medood"


def _disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device (simulated)")


def _half_then_fail(real: Callable[..., Any], path_arg: int = 1) -> Callable[..., Any]:
    """Wrap a library writer: it writes its file, which is then cut to half its size, and the call fails."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        target = args[path_arg]
        size = os.path.getsize(target)
        with open(target, "r+b") as f:
            f.truncate(size // 2)
        raise _disk_full()

    return wrapper


class _HalfFile:
    """A text/binary file that writes the first half of what it is given, then fails like a full disk."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def write(self, data: Any) -> int:
        self._f.write(data[: max(1, len(data) // 2)])
        self._f.flush()
        raise _disk_full()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _HalfFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()


class _OsWithHalfFiles:
    """``os`` for :mod:`medood.utils.io` whose ``fdopen`` hands out :class:`_HalfFile` objects."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def fdopen(*args: Any, **kwargs: Any) -> _HalfFile:
        return _HalfFile(os.fdopen(*args, **kwargs))


def _patch_nibabel(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(nib, "save", _half_then_fail(nib.save))


def _patch_pil(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(Image.Image, "save", _half_then_fail(Image.Image.save))


def _patch_torch(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(torch, "save", _half_then_fail(torch.save))


def _patch_text(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(medood_io, "os", _OsWithHalfFiles())


def _ckpt(path: Path) -> None:
    save_checkpoint({"model": {"w": torch.arange(50.0)}}, path)


MAP = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
ROWS = [{"case": f"c{i}", "score": float(i)} for i in range(50)]
# name -> (target file name, patch of the underlying write, the write)
WRITERS: dict[str, tuple[str, Callable, Callable[[Path], Any]]] = {
    "map_nifti": ("a_anomaly_map.nii.gz", _patch_nibabel, lambda p: write_map_nifti(MAP, np.eye(4), p)),
    "map_nifti_2d": ("a_anomaly_map.nii.gz", _patch_nibabel, lambda p: write_map_nifti_2d(MAP[0], p)),
    "split_4d": ("src_T1.nii.gz", _patch_nibabel, lambda p: save_split_4d(_src4d(p), p.parent, ["T1", "T2"])),
    "png": ("a.png", _patch_pil, lambda p: write_png(MAP[0], p)),
    "overlay_png": ("a_overlay.png", _patch_pil, lambda p: write_overlay_png(MAP[0], MAP[1], None, p)),
    "checkpoint": ("model.pt", _patch_torch, _ckpt),
    "compact_checkpoint": ("model.pt", _patch_torch, lambda p: compact_checkpoint(p)),
    "scores_csv": ("scores.csv", _patch_text, lambda p: write_scores_csv(p, ROWS)),
    "slice_scores_csv": ("slice.csv", _patch_text, lambda p: write_slice_scores_csv(p, [("c", 2, 1, 0.5)] * 50)),
    "errors_csv": ("errors.csv", _patch_text, lambda p: write_errors_csv(p, [])),
    "json_text": ("metrics.json", _patch_text, lambda p: atomic_write_text(p, '{"auroc": 0.9}\n')),
}


def _src4d(target: Path) -> Path:
    return write_nifti(target.parent / "src.nii.gz", vol((6, 6, 6, 2)))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name)


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "over_a_good_file"])
@pytest.mark.parametrize("name", list(WRITERS))
def test_interrupted_writer_leaves_no_partial_file(
    name: str, existing: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    filename, patch, write = WRITERS[name]
    target = tmp_path / filename
    if name == "compact_checkpoint" or existing:
        _ckpt(target) if filename.endswith(".pt") else target.write_bytes(b"GOOD previous output\n" * 10)
    before = target.read_bytes() if target.exists() else None
    with monkeypatch.context() as mp:
        patch(mp)
        with pytest.raises(OSError, match="No space left"):
            write(target)
    if before is None:
        assert not target.exists(), "a truncated file was left under the final name"
    else:
        assert target.read_bytes() == before, "the previous good file was replaced"
    assert _leftovers(tmp_path) == [], "temporary files were left behind"
    write(target)  # unpatched, the same writer succeeds
    assert target.stat().st_size > 0 and _leftovers(tmp_path) == []


def test_the_interruptions_really_cut_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the atomic helpers the patched writers would leave truncated files (so the test above can fail)."""
    monkeypatch.setattr(nib, "save", _half_then_fail(nib.save))
    with pytest.raises(OSError):
        nib.save(nib.Nifti1Image(MAP, np.eye(4)), tmp_path / "direct.nii.gz")
    assert 0 < (tmp_path / "direct.nii.gz").stat().st_size
    with pytest.raises(OSError):
        with _OsWithHalfFiles().fdopen(os.open(tmp_path / "direct.csv", os.O_WRONLY | os.O_CREAT), "w") as f:
            csv.writer(f).writerows([["a", "b"]] * 20)
    assert 0 < (tmp_path / "direct.csv").stat().st_size < 20 * 5


# ------------------------------------------------------------------------------------------------- static scan
_WRITE_FUNCS = {"save", "savez", "savez_compressed", "imwrite", "savefig", "to_csv", "write_text", "write_bytes"}
# functions that write only when called on these modules (``json.dumps`` returns text, ``arr.copy()`` copies memory)
_MODULE_WRITES = {"dump": ("json", "yaml", "pickle"), "copy": ("shutil",), "copyfile": ("shutil",)}
_MODULE_WRITES |= {"copy2": ("shutil",), "copytree": ("shutil",), "move": ("shutil",)}
_ATOMIC = {"atomic_path", "atomic_write"}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _writes(call: ast.Call) -> bool:
    name = _name(call.func)
    if name == "save" and not call.args:  # a method of medood's own (``keeper.save()``), not a library writer
        return False
    if name == "open":
        modes = [a for a in call.args[1:2]] + [k.value for k in call.keywords if k.arg == "mode"]
        return any(isinstance(m, ast.Constant) and set(str(m.value)) & set("wax+") for m in modes)
    if name in _MODULE_WRITES:
        return isinstance(call.func, ast.Attribute) and _name(call.func.value) in _MODULE_WRITES[name]
    return name in _WRITE_FUNCS


def _atomic_ranges(tree: ast.AST) -> list[tuple[int, int]]:
    ranges = []
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and any(
            isinstance(it.context_expr, ast.Call) and _name(it.context_expr.func) in _ATOMIC for it in node.items
        ):
            ranges.append((node.lineno, node.end_lineno or node.lineno))
    return ranges


def test_every_write_in_medood_goes_through_the_atomic_helpers() -> None:
    """A write that is not to a file (e.g. a PNG into an ``io.BytesIO``) carries ``# not-a-file-write`` on its line."""
    offenders = []
    for path in sorted(MEDOOD.rglob("*.py")):
        if path.name in ("io.py",) and path.parent.name == "utils":
            continue  # the helpers themselves
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        tree = ast.parse(source)
        ranges = _atomic_ranges(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _writes(node) and "# not-a-file-write" not in lines[node.lineno - 1]:
                if not any(a <= node.lineno <= b for a, b in ranges):
                    offenders.append(f"{path.relative_to(MEDOOD.parent)}:{node.lineno}: {ast.unparse(node)[:80]}")
    assert offenders == [], "writes outside atomic_path / atomic_write:\n" + "\n".join(offenders)


def test_the_static_scan_finds_a_raw_write() -> None:
    tree = ast.parse("import numpy as np\nnp.save('x.npy', a)\nwith atomic_path(p) as t:\n    np.save(t, a)\n")
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _writes(n)]
    ranges = _atomic_ranges(tree)
    assert [any(a <= c.lineno <= b for a, b in ranges) for c in calls] == [False, True]


def test_every_torch_load_in_medood_is_weights_only() -> None:
    loads = []
    for path in sorted(MEDOOD.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and _name(node.func) == "load"
                and _name(getattr(node.func, "value", node)) == "torch"
            ):
                safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
                loads.append((f"{path.relative_to(MEDOOD.parent)}:{node.lineno}", safe))
    assert loads, "the scan found no torch.load at all"
    assert [where for where, safe in loads if not safe] == []
