"""`popscore evaluate` on a tiny model repository exported here from small MTAF models (trainer/models.py),
scoring synthetic Hacker News data written in the adapter's own format: the per-age rows it prints must
equal what the same examples give through the PyTorch models and through onnxruntime run by hand.

No real data needed (a few seconds on 2 cores)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("pandas")

from popscore import datasets  # noqa: E402
from popscore import features  # noqa: E402
from popscore.tools.cli import main  # noqa: E402
from popscore.trainer import data as D  # noqa: E402

SPEC = features.FeatureSpec(train_ages_h=(0.0, 0.5, 1.0, 2.0, 4.0, 8.0), eval_ages_h=(0.5, 1.0, 2.0, 4.0, 8.0))
AGES = (0.0,) + tuple(SPEC.eval_ages_h)
N_POSTS, TEST_FROM_POST = 150, 100
T0 = 1_600_000_000
SH = {"age_h": [0.5, 1.0, 2.0, 4.0], "intercept": [2.0, 1.5, 1.0, 0.5], "slope": [0.9, 0.95, 1.0, 1.05]}


def write_hn_source(folder: Path, seed: int = 0) -> None:
    """Stories first seen every 30 min, each observed every 30 min for 10 h, then at 2 and 6.9 days."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    items = ["item_id,title,url,author,first_seen_unix"]
    obs = ["snapshot_unix,commit,rank,item_id,upvotes,comments"]
    for i in range(N_POSTS):
        created = T0 + i * 1800
        items.append(f"{i + 1},Story {i} about thing {i % 7},https://ex{i % 5}.example/{i},au{i % 9},{created}")
        final, tau = rng.lognormal(4.0, 1.2), rng.uniform(1800, 6 * 3600)
        for dt in [*range(0, 10 * 3600 + 1, 1800), 2 * 86400, int(6.9 * 86400)]:
            up = int(round(final * (1 - np.exp(-dt / tau)))) + 1
            obs.append(f"{created + dt},c,1,{i + 1},{up},{up // 3}")
    (folder / "items.csv").write_text("\n".join(items) + "\n")
    (folder / "observations.csv").write_text("\n".join(obs) + "\n")


def tiny_model(temporal: bool, examples: D.Examples, seed: int):
    from popscore.trainer.models import build_mtaf, config_for

    torch.manual_seed(seed)
    model = build_mtaf(config_for(SPEC, temporal, d_model=16, gru_hidden=8))
    inputs = examples.inputs_at(None, temporal, tokens=False)
    model.fit_normalisers({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()})
    model.init_output_bias(float(np.mean(examples.target - (examples.log_now if temporal else 0.0))))
    if temporal:
        model.set_interval_margins([0.75, 3.0], [0.1, 0.2, 0.3])
    return model.eval()


def torch_predict(model, ex: D.Examples, rows: np.ndarray, temporal: bool) -> dict[str, np.ndarray]:
    model.eval()
    with torch.no_grad():
        inputs = ex.inputs_at(rows, temporal)
        out = model(**{k: torch.from_numpy(np.ascontiguousarray(inputs[k])) for k in model.input_names()})
    return {"log_score": out["log_score"][:, 0].numpy().astype(np.float64), "log_interval": out["log_interval"].numpy()}


def export_graph(graph, path: Path, example: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[n][:4])) for n in graph.input_names)
    axes = {n: {0: "batch"} for n in graph.input_names + graph.output_names}
    for n in ("text_tokens", "text_token_mask", "word_attention"):
        if n in axes:
            axes[n][1] = "tokens"
    torch.onnx.export(graph.module, args, str(path), input_names=graph.input_names,
                      output_names=graph.output_names, opset_version=17, dynamic_axes=axes, dynamo=False)
    graph.module.eval()  # the exporter restores the wrapper's (training) mode, which reaches the model


def write_version(repo: Path, name: str, version: int | None, graph, example, meta: dict) -> Path:
    folder = repo / name / str(version) if version is not None else repo / name
    export_graph(graph, folder / "model.onnx", example)
    meta = {"model": name, "kind": graph.kind, **meta, **({"version": version} if version is not None else {})}
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Synthetic HN source, its event file, a model repository (HN set v2 over an older static v1, plus a
    legacy-named static without ``platform`` for "reddit"), a candidate folder, and the models themselves."""
    from popscore.trainer.export import onnx_graphs

    root = tmp_path_factory.mktemp("evaluate")
    source = root / "hn"
    write_hn_source(source)
    events = root / "hn.jsonl"
    assert main(["import", "--dataset", "hackernews", "--source", str(source), "--out", str(events), "--quiet"]) == 0

    table = D.table_from_events(datasets.load_source("hackernews", source))
    train = D.make_examples(SPEC, table, SPEC.train_ages_h)
    static, old_static, temporal = tiny_model(False, train, 1), tiny_model(False, train, 2), tiny_model(True, train, 3)
    example = train.inputs_at(slice(0, 8), True)
    with torch.no_grad():
        example["content_vector"] = temporal.encoder(**{k: torch.from_numpy(example[k]) for k in
                                                        [t.name for t in features.STATIC_INPUTS]})[0].numpy()
    test_from = float(table.created_at[TEST_FROM_POST])
    meta = {"dataset": "hackernews", "platform": "hackernews", "feature_spec": SPEC.to_dict(),
            "train_config": {"text": False}, "data_window": {"test_from": test_from}}
    repo = root / "repo"
    (static_graph,) = onnx_graphs(static)
    (old_graph,) = onnx_graphs(old_static)
    content_graph, head_graph = onnx_graphs(temporal)
    write_version(repo, "popscore_hackernews_static", 1, old_graph, example, meta)
    write_version(repo, "popscore_hackernews_static", 2, static_graph, example, meta)
    write_version(repo, "popscore_hackernews_temporal_content", 2, content_graph, example, meta)
    head_meta = {**meta, "content_model": {"name": "popscore_hackernews_temporal_content", "version": 2},
                 "baseline": {"szabo_huberman": SH}}
    write_version(repo, "popscore_hackernews_temporal", 2, head_graph, example, head_meta)
    legacy = {k: v for k, v in meta.items() if k != "platform"} | {"dataset": "reddit"}
    write_version(repo, "popscore_static", 1, old_graph, example, legacy)

    candidate = root / "candidates" / "popscore_hackernews_temporal" / "20260101T000000"
    for name in ("popscore_hackernews_temporal_content", "popscore_hackernews_temporal"):
        candidate.joinpath(name).mkdir(parents=True)
        for f in ("model.onnx", "metadata.json"):
            shutil.copy(repo / name / "2" / f, candidate / name / f)
        m = json.loads((candidate / name / "metadata.json").read_text())
        m.pop("version")
        (candidate / name / "metadata.json").write_text(json.dumps(m))
    return {"source": source, "events": events, "repo": repo, "candidate": candidate, "table": table,
            "static": static, "temporal": temporal, "test_from": test_from}


def run_json(capsys, *args: str) -> dict:
    assert main(["evaluate", *args, "--json", "--threads", "1"]) == 0
    return json.loads(capsys.readouterr().out)


def rows_of(result: dict, platform: str = "hackernews") -> dict[tuple[str, float], dict]:
    return {(r["model"], r["age_h"]): r for r in result["results"] if r["platform"] == platform}


def ort_chain(repo: Path, ex: D.Examples) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """onnxruntime by hand: static v2 on the age-0 rows; content v2 on every row's upload-time inputs, then
    the head v2 on its content vector and the row's sequence."""
    def run(path: Path, values: dict) -> dict:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {i.name: np.ascontiguousarray(values[i.name], dtype=np.float32) for i in sess.get_inputs()}
        return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))

    rows0 = np.flatnonzero(ex.age_h == 0.0)
    static = run(repo / "popscore_hackernews_static" / "2" / "model.onnx", ex.inputs_at(rows0, False))
    values = ex.inputs_at(None, True)
    values.update(run(repo / "popscore_hackernews_temporal_content" / "2" / "model.onnx", values))
    head = run(repo / "popscore_hackernews_temporal" / "2" / "model.onnx", values)
    return static["log_score"][:, 0], static["log_interval"], head["log_score"][:, 0], head["log_interval"]


def test_event_file_rows_equal_torch_and_onnxruntime(world, capsys):
    result = run_json(capsys, "--model-repo", str(world["repo"]), "--events", str(world["events"]))
    assert result["data"]["posts"] == N_POSTS and result["data"]["platforms"] == {"hackernews": N_POSTS}
    sets = {s["platform"]: s for s in result["model_sets"]}
    assert set(sets) == {"hackernews", "reddit"}  # the legacy set: platform from its dataset
    assert sets["hackernews"]["static"] == {"name": "popscore_hackernews_static", "version": 2}  # the highest
    assert sets["hackernews"]["temporal"]["version"] == 2 and sets["hackernews"]["content"]["version"] == 2
    assert sets["hackernews"]["test_from"] is None  # an event file: all its posts
    assert sets["reddit"]["posts"] == 0 and "--all-posts" in sets["reddit"]["notes"][-1]

    rows = rows_of(result)
    expected = {("static", 0.0)} | {("temporal", a) for a in AGES}
    expected |= {(m, a) for m in ("persistence", "szabo_huberman") for a in SPEC.eval_ages_h}
    assert set(rows) == expected
    assert all(r["n"] == N_POSTS for r in rows.values())
    assert rows[("persistence", 0.5)]["coverage_80"] is None and rows[("persistence", 0.5)]["version"] is None

    ex = D.make_examples(SPEC, world["table"], AGES)
    rows0 = np.flatnonzero(ex.age_h == 0.0)
    ref_static = torch_predict(world["static"], ex, rows0, False)
    ref_temporal = torch_predict(world["temporal"], ex, np.arange(len(ex)), True)
    ort_static, ort_static_iv, ort_temporal, ort_temporal_iv = ort_chain(world["repo"], ex)
    np.testing.assert_allclose(ort_static, ref_static["log_score"], atol=1e-4)
    np.testing.assert_allclose(ort_temporal, ref_temporal["log_score"], atol=1e-4)

    y0 = ex.target[rows0]
    assert rows[("static", 0.0)]["mae"] == pytest.approx(np.abs(ort_static - y0).mean(), abs=1e-6)
    assert rows[("static", 0.0)]["mae"] == pytest.approx(np.abs(ref_static["log_score"] - y0).mean(), abs=1e-4)
    cover = np.mean((y0 >= ort_static_iv[:, 0]) & (y0 <= ort_static_iv[:, 1]))
    assert rows[("static", 0.0)]["coverage_80"] == pytest.approx(cover)
    for age in AGES:
        at = ex.age_h == age
        y = ex.target[at]
        row = rows[("temporal", age)]
        assert row["mae"] == pytest.approx(np.abs(ort_temporal[at] - y).mean(), abs=1e-6)
        assert row["mae"] == pytest.approx(np.abs(ref_temporal["log_score"][at] - y).mean(), abs=1e-4)
        iv = ort_temporal_iv[at]
        assert row["coverage_80"] == pytest.approx(np.mean((y >= iv[:, 0]) & (y <= iv[:, 1])))
        if age == 0.0:
            continue
        assert rows[("persistence", age)]["mae"] == pytest.approx(np.abs(ex.log_now[at] - y).mean())
        k = int(np.argmin(np.abs(np.array(SH["age_h"]) - age)))  # the nearest fitted age (8 h: 4 h's line)
        sh = SH["intercept"][k] + SH["slope"][k] * ex.log_now[at]
        assert rows[("szabo_huberman", age)]["mae"] == pytest.approx(np.abs(sh - y).mean())


def test_dataset_uses_the_models_test_window_and_all_posts_scores_other_sets(world, capsys):
    result = run_json(capsys, "--model-repo", str(world["repo"]), "--dataset", "hackernews",
                      "--source", str(world["source"]))
    (hn,) = [s for s in result["model_sets"] if s["platform"] == "hackernews"]
    assert hn["posts"] == N_POSTS - TEST_FROM_POST and hn["test_from"] is not None
    assert rows_of(result)[("temporal", 1.0)]["n"] == N_POSTS - TEST_FROM_POST

    result = run_json(capsys, "--model-repo", str(world["repo"]), "--events", str(world["events"]),
                      "--platform", "reddit", "--all-posts", "--limit", "40")
    assert [s["platform"] for s in result["model_sets"]] == ["reddit"]
    rows = rows_of(result, "reddit")
    assert set(rows) == {("static", 0.0)} and rows[("static", 0.0)]["n"] == 40
    assert rows[("static", 0.0)]["model_name"] == "popscore_static"


def test_candidate_folder_and_table_output(world, capsys):
    repo_rows = rows_of(run_json(capsys, "--model-repo", str(world["repo"]), "--events", str(world["events"])))
    result = run_json(capsys, "--model-repo", str(world["candidate"]), "--events", str(world["events"]))
    rows = rows_of(result)
    assert {m for m, _ in rows} == {"temporal", "persistence", "szabo_huberman"}  # a temporal candidate only
    for age in AGES:
        assert rows[("temporal", age)]["version"] is None
        assert rows[("temporal", age)]["mae"] == pytest.approx(repo_rows[("temporal", age)]["mae"], abs=1e-9)

    assert main(["evaluate", "--model-repo", str(world["repo"]), "--events", str(world["events"]),
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| platform | model | version | age h | n | MAE | SRCC | 80% coverage |" in out
    assert "| hackernews | temporal | 2 | 0.5 | 150 |" in out
