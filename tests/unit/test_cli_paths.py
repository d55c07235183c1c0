"""`popscore import --source`, `train --data-dir` and `evaluate` on paths a user gets wrong: every bad path,
unreadable file or file of the wrong format is one error line on stderr and exit code 2, never a traceback;
good paths in any of the accepted shapes (file, folder, data root; plain, .xz, .gz) give the same events."""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

import pytest

from popscore.tools.cli import main

pytest.importorskip("pandas")

HN_ITEMS = ("item_id,title,url,author,first_seen_unix\n1,A,https://a.example,al,1600000000\n"
            "2,B,https://b.example,bo,1600000500\n")
HN_OBS = ("snapshot_unix,commit,rank,item_id,upvotes,comments\n1600000000,c,1,1,3,\n"
          "1600000500,c,1,2,1,0\n1600001800,c,1,1,8,2\n")
REDDIT = ("date,id,position,score,subreddit_display_name,subreddit_id,title,is_self,url,upvote_ratio,num_comments,"
          "created,created_date\n"
          "2023-12-30T07,abc1,1,100,pics,t5_1,A title,0,https://i.redd.it/x.jpg,0.9,10,1703915000,x\n"
          "2023-12-30T08,abc1,1,150,pics,t5_1,A title,0,https://i.redd.it/x.jpg,0.9,12,1703915000,x\n"
          "2023-12-30T08,abc2,2,50,news,t5_2,Other,1,https://example.com/a,0.8,3,1703917000,x\n")


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"popscore {command}: error: ") and "Traceback" not in err
    return lines[0]


def events_of(path: Path) -> str:
    return path.read_text()


# ------------------------------------------------------------------------------------------- import --source


def test_import_source_file_folder_and_root_give_the_same_events(tmp_path: Path, capsys):
    root = tmp_path / "root"
    (root / "reddit-rall-hourly-2023").mkdir(parents=True)
    with lzma.open(root / "reddit-rall-hourly-2023" / "core_data_2023.csv.xz", "wt") as handle:
        handle.write(REDDIT)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "export.csv").write_text(REDDIT)
    with gzip.open(tmp_path / "export.csv.gz", "wt") as handle:
        handle.write(REDDIT)
    outs = []
    for i, args in enumerate((["--data-dir", str(root)], ["--source", str(root)], ["--source", str(mine)],
                              ["--source", str(mine / "export.csv")], ["--source", str(tmp_path / "export.csv.gz")])):
        out = tmp_path / f"out{i}.jsonl"
        assert main(["import", "--dataset", "reddit", *args, "--out", str(out), "--quiet"]) == 0
        assert "wrote 5 events (2 posts, 3 snapshots)" in capsys.readouterr().out
        outs.append(events_of(out))
    assert all(o == outs[0] for o in outs)


def test_import_hackernews_from_one_of_its_two_files(tmp_path: Path, capsys):
    folder = tmp_path / "hn"
    folder.mkdir()
    (folder / "items.csv").write_text(HN_ITEMS)
    with lzma.open(folder / "observations.csv.xz", "wt") as handle:
        handle.write(HN_OBS)
    for source in (folder, folder / "items.csv", folder / "observations.csv.xz"):
        out = tmp_path / "hn.jsonl"
        assert main(["import", "--dataset", "hackernews", "--source", str(source), "--out", str(out), "--quiet"]) == 0
        assert "wrote 5 events (2 posts, 3 snapshots)" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "wrong_format", "not_csv", "bad_xz", "empty", "hn_lonely_file",
                                  "folder_without_files", "missing_data_dir", "out_folder_missing"])
def test_import_bad_sources_are_one_line_and_exit_2(tmp_path: Path, capsys, case: str):
    (tmp_path / "items.csv").write_text(HN_ITEMS)
    (tmp_path / "README.md").write_text("# notes\n\nsome, text, with\ncommas, and, more, fields, here\n")
    (tmp_path / "broken.csv.xz").write_bytes(b"\xfd7zXZ\x00 not really xz")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "lonely").mkdir()
    (tmp_path / "lonely" / "stories.csv").write_text(HN_ITEMS)
    (tmp_path / "empty_folder").mkdir()
    dataset, where, out = "reddit", ["--source"], str(tmp_path / "out.jsonl")
    path = {
        "missing": tmp_path / "nope.csv",
        "wrong_format": tmp_path / "items.csv",  # a Hacker News table given as Reddit
        "not_csv": tmp_path / "README.md",
        "bad_xz": tmp_path / "broken.csv.xz",
        "empty": tmp_path / "empty.csv",
        "hn_lonely_file": tmp_path / "lonely" / "stories.csv",
        "folder_without_files": tmp_path / "empty_folder",
        "missing_data_dir": tmp_path / "no_such_root",
        "out_folder_missing": tmp_path / "items.csv",
    }[case]
    if case in ("hn_lonely_file", "folder_without_files", "out_folder_missing"):
        dataset = "hackernews"
    if case == "missing_data_dir":
        where = ["--data-dir"]
    if case == "out_folder_missing":
        out = str(tmp_path / "no_such_folder" / "out.jsonl")
    assert main(["import", "--dataset", dataset, *where, str(path), "--out", out, "--quiet"]) == 2
    line = one_error_line(capsys, "import")
    assert (str(path) in line) or case == "out_folder_missing"
    if case == "wrong_format":
        assert "not a reddit file: missing column(s)" in line
    assert not Path(out).exists()


def test_import_source_and_data_dir_exclude_each_other(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["import", "--dataset", "reddit", "--source", "a", "--data-dir", "b", "--out", "c"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_import_limit_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["import", "--dataset", "reddit", "--out", "x.jsonl", "--limit", "0"])
    assert exc.value.code == 2 and "must be at least 1" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- train --data-dir


def test_train_defaults_and_missing_data_dir(tmp_path: Path, capsys):
    from popscore.tools.cli import build_parser

    args = build_parser().parse_args(["train"])
    assert args.epochs is None and args.threads is None and args.data_dir is None
    args = build_parser().parse_args(["train", "--epochs", "1", "--threads", "1", "--data-dir", str(tmp_path)])
    assert args.epochs == 1 and args.threads == 1 and args.data_dir == tmp_path
    assert main(["train", "--data-dir", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert str(tmp_path / "nope") in one_error_line(capsys, "train")


# ------------------------------------------------------------------------------------------------- evaluate


def test_evaluate_bad_inputs_are_one_line_and_exit_2(tmp_path: Path, capsys):
    pytest.importorskip("onnxruntime")
    empty_repo = tmp_path / "repo"
    empty_repo.mkdir()
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("this is not json\n")
    snapshots_only = tmp_path / "snaps.jsonl"
    snapshots_only.write_text('{"schema":"snapshot.v1","post_id":"x","observed_at":"2024-01-01T00:00:00Z",'
                              '"counts":{"likes":1}}\n')
    repo = Path(__file__).resolve().parents[2] / "model_repo"
    cases = [
        (["--model-repo", str(tmp_path / "nope"), "--events", str(garbage)], str(tmp_path / "nope")),
        (["--model-repo", str(empty_repo), "--events", str(garbage)], str(empty_repo)),
        (["--model-repo", str(repo), "--events", str(tmp_path / "missing.jsonl")], "missing.jsonl"),
        (["--model-repo", str(repo), "--events", str(garbage)], "garbage.jsonl:1"),
        (["--model-repo", str(repo), "--events", str(snapshots_only)], "no post.v1 events"),
        (["--model-repo", str(repo), "--events", str(garbage), "--platform", "myspace"], "myspace"),
        (["--model-repo", str(repo), "--dataset", "reddit", "--source", str(tmp_path / "nope.csv")], "nope.csv"),
        (["--model-repo", str(repo), "--dataset", "reddit", "--data-dir", str(tmp_path / "nope")], "nope"),
        (["--model-repo", str(repo), "--events", str(garbage), "--data-dir", str(tmp_path)], "--dataset"),
    ]
    if not any(repo.glob("*/*/metadata.json")):
        cases = cases[:2]  # no models committed here: the cases past the repository check cannot be reached
    for args, expected in cases:
        assert main(["evaluate", *args]) == 2, args
        assert expected in one_error_line(capsys, "evaluate"), args


def test_evaluate_needs_a_dataset_or_an_event_file(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate"])
    assert exc.value.code == 2
    assert "one of the arguments --dataset --events is required" in capsys.readouterr().err


def test_import_youtube_file_with_category_names_beside(tmp_path: Path, capsys):
    (tmp_path / "trending.csv").write_text(
        "video_id,trending_date,title,category_id,views,likes,dislikes,comment_count\n"
        "abcdefghijk,17.14.11,A video,22,100,10,1,5\nabcdefghijk,17.15.11,A video,22,150,12,1,6\n")
    (tmp_path / "US_category_id.json").write_text('{"items": [{"id": "22", "snippet": {"title": "People & Blogs"}}]}')
    out = tmp_path / "yt.jsonl"
    assert main(["import", "--dataset", "youtube-excel-us", "--source", str(tmp_path / "trending.csv"),
                 "--out", str(out), "--quiet"]) == 0
    assert "wrote 3 events (1 posts, 2 snapshots)" in capsys.readouterr().out
    assert '"category":"People & Blogs"' in out.read_text()
