"""The data commands end to end through the real ``popscore`` parser, on hand-made source files."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

from popscore.tools.cli import main


def write_hn(root: Path) -> None:
    folder = root / "hackernews-frontpage-30min-2020-2022"
    folder.mkdir(parents=True)
    with lzma.open(folder / "items.csv.xz", "wt") as handle:
        handle.write("item_id,title,url,author,first_seen_unix\n1,A,https://a.example,al,1600000000\n"
                     "2,B,https://b.example,bo,1600000500\n")
    with lzma.open(folder / "observations.csv.xz", "wt") as handle:
        handle.write("snapshot_unix,commit,rank,item_id,upvotes,comments\n1600000000,c,1,1,3,\n"
                     "1600000500,c,1,2,1,0\n1600000500,c,2,1,-4,1\n1600001800,c,1,1,8,2\n")


def test_import_then_inspect(tmp_path: Path, capsys):
    write_hn(tmp_path / "data")
    out, report = tmp_path / "hn.jsonl.gz", tmp_path / "report.json"
    assert main(["import", "--dataset", "hackernews", "--data-dir", str(tmp_path / "data"), "--out", str(out),
                 "--report", str(report), "--quiet"]) == 0
    assert "wrote 5 events (2 posts, 3 snapshots)" in capsys.readouterr().out
    assert json.loads(report.read_text())["skipped"] == {"negative_upvotes": 1}
    assert main(["inspect", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["posts"] == 2 and summary["snapshots"] == 3
    assert summary["counters"] == {"comments": [0, 2], "likes": [1, 8]}


def test_inspect_fails_on_a_bad_file(tmp_path: Path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"schema":"snapshot.v1","post_id":"x","observed_at":"2024-01-01T00:00:00Z","counts":{}}\n')
    assert main(["inspect", str(bad)]) == 1
    assert "1 rejected" in capsys.readouterr().out


def test_simulate_command(tmp_path: Path, capsys):
    out = tmp_path / "sim.jsonl"
    assert main(["simulate", "--posts", "20", "--out", str(out), "--quiet"]) == 0
    assert "for 20 posts" in capsys.readouterr().out
    assert main(["inspect", str(out)]) == 0
