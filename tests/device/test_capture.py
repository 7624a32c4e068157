"""The review folders stay within their caps over a long run — count and bytes, across restarts — and
export in the layout edge-convert reads (sensor windows as one .npz)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np

from edge_infer.review import CaptureStore, export
from tests.conftest import DIGITS_TEST


def _usage(root: Path) -> tuple[int, int]:
    files = [p for p in root.glob("*/*") if p.is_file()]
    return sum(p.suffix != ".json" for p in files), sum(p.stat().st_size for p in files)


def test_caps_hold_over_a_long_run_and_across_restarts(tmp_path: Path) -> None:
    digits = sorted(DIGITS_TEST.glob("*/*.png"))
    rng = random.Random(4)
    max_files, max_bytes = 40, 30_000
    store = CaptureStore(tmp_path, max_files, max_bytes)
    for i in range(3000):
        if i % 700 == 0:  # the daemon restarts now and then: the store rescans what is on disk
            store = CaptureStore(tmp_path, max_files, max_bytes)
        path = rng.choice(digits)
        data = path.read_bytes() if i % 10 else os.urandom(rng.randint(1000, 5000))  # some bigger inputs
        store.save(path.parent.name, f"{i}-{path.name}", data, {"i": i})
        if i % 100 == 0:
            count, size = _usage(tmp_path)
            assert count <= max_files and size <= max_bytes, (i, count, size)
            assert (count, size) == (store.count, store.bytes)
    kept = sorted(p for p in tmp_path.glob("*/*") if p.suffix != ".json")
    newest = max(json.loads(p.with_name(p.name + ".json").read_text())["i"] for p in kept)
    assert newest == 2999, "the oldest are evicted, the newest kept"


def test_export_copies_images_by_group_and_windows_into_one_npz(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "kept", 100, 10**7)
    image = next(DIGITS_TEST.glob("3/*.png"))
    store.save("3", "a.png", image.read_bytes(), {})
    window = np.arange(12, dtype=float).reshape(4, 3)
    csv = "t,ax,ay,az\n" + "".join(f"{t},{r[0]},{r[1]},{r[2]}\n" for t, r in enumerate(window))
    store.save("flatline", "pump.csv@17", csv.encode(), {})
    counts = export(tmp_path / "kept", tmp_path / "out")
    assert counts == {"3": 1, "flatline": 1}
    assert [p.parent.name for p in (tmp_path / "out").glob("*/*.png")] == ["3"]
    npz = np.load(tmp_path / "out" / "windows.npz")
    assert npz["x"].shape == (1, 4, 3) and np.array_equal(npz["x"][0], window) and list(npz["y"]) == ["flatline"]
