"""The pieces of resumable, sharded batch inference: the progress journal a kill can tear, datalist case names,
datalist order and the loader over the pending cases (medood.io.run_folder, medood.data.shard)."""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.data import DataLoader, Dataset

from medood.data import SkippingDataLoader
from medood.data.shard import BatchShardSampler, case_order, datalist_cases, sort_by_order, subset_loader
from medood.io import run_folder as rf


def test_journal_survives_a_torn_line_and_is_cleared_by_overwrite(tmp_path: Path) -> None:
    run = rf.RunFolder(tmp_path, {"a": 1}, mode="new").start()
    run.record("c0", {"case": "c0", "score": 0.5, "flagged": True}, [[2, 0, 0.25]], ["c0_anomaly_map.nii.gz"])
    journal = tmp_path / rf.PROGRESS_JOURNAL.format(rank=0)
    with journal.open("ab") as f:
        f.write(b'{"case": "c1", "row": {"ca')  # a kill in the middle of the next record
    run.record("c2", {"case": "c2", "score": 1.5, "flagged": False}, rank=0)
    run.record("c0", {"case": "c0", "score": 0.75, "flagged": False}, rank=1)  # redone by another rank: it wins
    found = run.progress()
    assert sorted(found) == ["c0", "c2"], "the torn record is ignored, the one after it is read"
    assert found["c0"]["row"]["score"] == 0.75 and found["c2"]["files"] == []
    with pytest.raises(rf.RunFolderError):  # a folder holding a killed run's journal is another run's
        rf.RunFolder(tmp_path, {"a": 1}, mode="new").start()
    rf.RunFolder(tmp_path, {"a": 2}, mode="overwrite").start()
    assert not list(tmp_path.glob(".progress.*")), "overwrite clears the journals"


def test_datalist_names_order_and_pending_loader() -> None:
    items = [{"image": f"/d/{cls}/img_{i}.png"} for cls in ("a", "b") for i in range(2)] + [{"image": "/d/c/x.png"}]
    names = datalist_cases(items)
    assert names == ["img_0", "img_1", "b_img_0", "b_img_1", "x"], "clashes resolved in datalist order"
    assert datalist_cases([{"image": "/d/a.nii", "case": "s/1"}], case_key="case") == ["s_1"]
    order = case_order(items)
    rows = [{"case": n} for n in ["x", "b_img_0", "unknown", "img_0"]]
    assert [r["case"] for r in sort_by_order(rows, order, lambda r: r["case"])] == ["img_0", "b_img_0", "x", "unknown"]

    loader = SkippingDataLoader(Dataset(list(range(10))), batch_size=3)
    pending = subset_loader(loader, [1, 4, 5, 8])
    assert isinstance(pending, SkippingDataLoader)
    assert [b.tolist() for b in pending] == [[1, 4, 5], [8]]
    plain = subset_loader(DataLoader(Dataset(list(range(5))), batch_size=2), [])
    assert list(plain) == [] and getattr(pending.dataset, "data", None) == [1, 4, 5, 8]


def test_batch_shards_keep_the_one_process_batches() -> None:
    data = Dataset(list(range(10)))
    ranks = [list(BatchShardSampler(data, 3, num_replicas=2, rank=r)) for r in range(2)]
    assert ranks == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9]], "whole batches of 3, alternating, no padding"
    loader = DataLoader(data, batch_size=3, sampler=BatchShardSampler(data, 3, num_replicas=2, rank=1))
    assert [b.tolist() for b in loader] == [[3, 4, 5], [9]], "the batches one process makes"
    assert list(BatchShardSampler(Dataset([0, 1]), 4, num_replicas=2, rank=1)) == [], "more ranks than batches"
