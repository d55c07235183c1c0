"""A real, tiny `popscore train` run (300 Reddit posts, one epoch, no trees, no text) exported into a temporary
model repository, then `popscore evaluate` on the same data set: it must find the run's chronological test
window in the metadata and print the very figures training reported for the exported models (the same ONNX
files on the same examples). About 15 s on 2 cores; skipped without ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("pandas")

from popscore.tools.cli import main  # noqa: E402

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data: Path):
    if not (shared_data / "reddit-rall-hourly-2023").is_dir():
        pytest.skip("../shared/data (Reddit) is absent")
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # candidates are written under ./.popscore/candidates
        assert main(["train", "--dataset", "reddit", "--data-dir", str(shared_data), "--limit", "300",
                     "--epochs", "1", "--threads", "1", "--no-gbt", "--no-text", "--no-progress", "--force",
                     "--model-repo", str(root / "repo"), "--report-dir", str(root / "reports")]) == 0
    return root, shared_data


def test_evaluate_prints_what_training_reported(trained, capsys):
    root, shared_data = trained
    capsys.readouterr()
    assert main(["evaluate", "--model-repo", str(root / "repo"), "--dataset", "reddit", "--data-dir",
                 str(shared_data), "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    (mset,) = result["model_sets"]
    assert mset["platform"] == "reddit" and mset["test_from"] is not None and mset["text"] is False
    rows = {(r["model"], r["age_h"]): r for r in result["results"]}
    for kind in ("static", "temporal"):
        meta = json.loads((root / "repo" / f"popscore_reddit_{kind}" / "1" / "metadata.json").read_text())
        assert mset["posts"] == meta["data_window"]["n_test_posts"]
        reported = [m for m in meta["metrics"] if m["model"] == f"mtaf_{kind}"]
        assert reported
        for m in reported:
            row = rows[(kind, m["age_h"])]
            assert row["n"] == m["n"]
            assert row["mae"] == pytest.approx(m["mae"], abs=1e-4)
            assert row["coverage_80"] == pytest.approx(m["coverage_80"], abs=1e-9)
    assert {a for (model, a) in rows if model == "szabo_huberman"} == {a for (model, a) in rows
                                                                      if model == "persistence"}

    (candidate,) = (root / ".popscore" / "candidates" / "popscore_reddit_temporal").iterdir()
    assert main(["evaluate", "--model-repo", str(candidate), "--dataset", "reddit", "--data-dir", str(shared_data),
                 "--threads", "1", "--json"]) == 0
    from_candidate = json.loads(capsys.readouterr().out)
    for r in from_candidate["results"]:
        if r["model"] == "temporal":
            assert r["version"] is None
            assert r["mae"] == pytest.approx(rows[("temporal", r["age_h"])]["mae"], abs=1e-9)
