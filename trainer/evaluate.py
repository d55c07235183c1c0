"""``popscore evaluate``: score the exported models of a model repository (or a trainer candidate) on any
data - a data set or an event file - per observation age, beside the baselines at the same ages.

Why a separate evaluation: the training report measures the PyTorch models on the split they were trained
with. What the worker serves are the ONNX files in ``model_repo/``; this module runs exactly those files with
onnxruntime, on examples cut by the trainer's own feature code (``trainer.data.make_examples`` with the
feature spec stored in each model's metadata), so the numbers are those of the served files on whatever
data the user points at: a new data set, a fresh import, a simulator file, another platform.

Model sets are found from each version's ``metadata.json`` (``platform``, ``kind``), never from folder
names, so the same code reads the per-platform layout (``popscore_<platform>_static`` ...) and the older
single set (``popscore_static`` ... without ``platform``: its training ``dataset`` stands in).
"""

from __future__ import annotations

import json
import math
import sys
from array import array
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from popscore import features
from popscore.metrics import regression_metrics
from popscore.settings import COUNTER_NAMES
from popscore.trainer import data as D
from popscore.trainer.runtime import default_threads

KINDS = ("static", "content", "temporal")
TEXT_ENCODER = "popscore_text_encoder"
ROWS_PER_RUN = 1024  # rows per onnxruntime call (token tensors: 1024 x 32 x 384 floats = 50 MB)
METRIC_KEYS = ("n", "mae", "mse", "r2", "srcc", "ndcg_at_10", "median_acc", "pairwise_acc", "coverage_80")


class EvaluationError(Exception):
    """Something the user asked for cannot be evaluated (no model set, a bad file, no posts): the CLI
    prints the message as one line and exits 2."""


def idle_cores() -> int:
    """Cores nobody else is using right now, at least 1 (as training decides its threads)."""
    return default_threads()


# ------------------------------------------------------------------------------------------- model sets


@dataclass
class Graph:
    """One exported ONNX graph: a version in a repository, or a not yet promoted candidate (version None)."""

    name: str
    version: int | None
    path: Path  # model.onnx
    meta: dict

    @property
    def kind(self) -> str | None:
        return self.meta.get("kind")

    @property
    def platform(self) -> str:
        return str(self.meta.get("platform") or self.meta.get("dataset") or "unknown")

    @property
    def spec(self) -> features.FeatureSpec:
        if "feature_spec" not in self.meta:
            return features.DEFAULT_SPEC
        return features.FeatureSpec.from_dict(self.meta["feature_spec"])

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}" if self.version is not None else f"{self.name} (candidate)"


@dataclass
class ModelSet:
    """The served models of one platform: static, and temporal as content graph + head (or one graph)."""

    platform: str
    static: Graph | None = None
    temporal: Graph | None = None
    content: Graph | None = None
    notes: list[str] = field(default_factory=list)

    def baseline_coefficients(self) -> tuple[Graph, dict] | None:
        """Szabo-Huberman per age as the trainer stored it with the model set, if it did."""
        for graph in (self.temporal, self.content, self.static):
            sh = (graph.meta.get("baseline") or {}).get("szabo_huberman") if graph is not None else None
            if sh and all(k in sh for k in ("age_h", "intercept", "slope")) and len(sh["age_h"]):
                return graph, sh
        return None


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _graphs(repo: Path) -> dict[tuple[str, int | None], Graph]:
    """Every graph under ``repo`` keyed by (name, version): all numbered versions of a Triton model folder
    (``<name>/<n>/model.onnx``), and candidate folders as the exporter writes them (``<name>/model.onnx``)."""
    found: dict[tuple[str, int | None], Graph] = {}
    for folder in sorted(p for p in repo.iterdir() if p.is_dir()):
        if (folder / "model.onnx").is_file():  # a candidate: no config, no version directory
            meta = _read_meta(folder / "metadata.json")
            name = meta.get("model") or folder.name
            found[(folder.name, None)] = Graph(name, meta.get("version"), folder / "model.onnx", meta)
            continue
        for vdir in folder.iterdir():
            if vdir.is_dir() and vdir.name.isdigit() and (vdir / "model.onnx").is_file():
                meta = _read_meta(vdir / "metadata.json")
                found[(folder.name, int(vdir.name))] = Graph(folder.name, int(vdir.name), vdir / "model.onnx", meta)
    return found


def discover_model_sets(repo: Path) -> dict[str, ModelSet]:
    """The model sets of a repository or candidate folder, by platform. The served version of a model is
    its highest one (the repository's version policy); a temporal head brings the content graph its
    metadata names (``content_model``: name and version), as the worker pairs them."""
    repo = Path(repo)
    if not repo.is_dir():
        raise EvaluationError(f"model repository {repo} does not exist or is not a folder")
    graphs = _graphs(repo)
    latest: dict[str, Graph] = {}
    for (folder, version), graph in graphs.items():
        if graph.kind not in ("static", "temporal"):
            continue  # content graphs come with their head; encoders and foreign models are not scored
        if graph.meta.get("variant"):
            continue  # e.g. popscore_reddit_image_static: the worker routes only image posts to it, not a model set's
        if folder not in latest or (version or 0) > (latest[folder].version or 0):
            latest[folder] = graph
    sets: dict[str, ModelSet] = {}
    for folder, graph in sorted(latest.items()):
        mset = sets.setdefault(graph.platform, ModelSet(graph.platform))
        have = getattr(mset, graph.kind)
        if have is not None:
            keep = max((have, graph), key=lambda g: (g.version or 0, g.meta.get("created_at", "")))
            mset.notes.append(f"two {graph.kind} models for {graph.platform}: {have.label} and {graph.label}; "
                              f"evaluating {keep.label}")
            graph = keep
        setattr(mset, graph.kind, graph)
        if graph.kind == "temporal":
            paired = graph.meta.get("content_model")
            if paired:
                content = graphs.get((paired["name"], paired.get("version"))) or graphs.get((paired["name"], None))
                if content is None:
                    mset.notes.append(f"{graph.label} names content model {paired['name']} v{paired.get('version')}, "
                                      "which is not in the repository: temporal model skipped")
                    mset.temporal = None
                mset.content = content
    if not sets:
        raise EvaluationError(f"no static or temporal model with a metadata.json (kind, platform or dataset) in {repo}")
    return sets


# ------------------------------------------------------------------------------------------------- data


@dataclass
class Data:
    """The posts to score: a trainer ``PostTable`` and where it came from."""

    table: D.PostTable
    description: str
    dataset: str | None  # the data set's name when it is one (its test window then applies to models trained on it)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        platforms = Counter(self.table.platform)
        return {"source": self.description, "dataset": self.dataset, "posts": len(self.table),
                "platforms": dict(sorted(platforms.items()))}


def load_dataset_data(name: str, data_dir: Path | None = None, source: Path | None = None) -> Data:
    """A data set through the shared adapters: from the shared layout (``data_dir``) or any ``source`` path."""
    from popscore import datasets

    try:
        if source is not None:
            events = datasets.load_source(name, source)
            where = str(source)
        else:
            folder = Path(data_dir) if data_dir is not None else D.shared_data_dir()
            events = datasets.load(name, folder)
            where = str(folder)
    except datasets.SourceError as exc:
        raise EvaluationError(str(exc)) from None
    return Data(D.table_from_events(events), f"dataset {name} ({where})", name)


def load_event_file(path: Path) -> Data:
    """An event file as ``popscore import`` / ``simulate`` write it (JSON Lines of post.v1 and snapshot.v1,
    every line validated by the worker's decoder). All its posts are scored; snapshots of posts the file
    does not hold are counted and left out (their creation time and platform are unknown)."""
    from popscore import eventfile
    from popscore.contract import Post

    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path}: no such event file")
    posts: dict[str, Any] = {}
    ids: list[str] = []
    values = array("d")
    repeated = 0
    try:
        for event in eventfile.read(path, check_order=False):
            if isinstance(event, Post):
                if event.post_id in posts:
                    repeated += 1
                else:
                    posts[event.post_id] = event
                continue
            counts = event.counts
            ids.append(event.post_id)
            values.append(event.observed_at.timestamp())
            values.extend(math.nan if getattr(counts, c) is None else float(getattr(counts, c)) for c in COUNTER_NAMES)
    except eventfile.EventFileError as exc:
        raise EvaluationError(str(exc)) from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"{path}: cannot be read as an event file ({type(exc).__name__}: {exc})") from None
    if not posts:
        raise EvaluationError(f"{path}: no post.v1 events in this file")
    width = 1 + len(COUNTER_NAMES)
    arr = np.frombuffer(values, dtype=np.float64).reshape(-1, width) if len(values) else np.zeros((0, width))
    order = sorted(posts.values(), key=lambda p: p.created_at)
    keep = {p.post_id: i for i, p in enumerate(order)}
    rows: list[list[int]] = [[] for _ in order]
    orphans = 0
    for j, post_id in enumerate(ids):
        i = keep.get(post_id)
        if i is None:
            orphans += post_id not in posts
        else:
            rows[i].append(j)
    seqs = []
    for r in rows:
        seq = arr[np.asarray(r, dtype=np.int64)]
        seqs.append(seq[np.argsort(seq[:, 0], kind="stable")])
    table = D.PostTable(
        post_id=np.array([p.post_id for p in order]), platform=[p.platform for p in order],
        created_at=np.array([p.created_at.timestamp() for p in order], dtype=np.float64), posts=order,
        seqs=seqs, source=str(path),
    )  # fmt: skip
    data = Data(table, f"events {path}", None)
    if orphans:
        data.notes.append(f"{orphans} snapshots of posts the file does not hold were left out")
    if repeated:
        data.notes.append(f"{repeated} repeated post events: the first of each was kept")
    return data


# ----------------------------------------------------------------------------------------------- scoring


class _Session:
    """One ONNX graph in onnxruntime, fed by name from a dict that may hold more than it reads."""

    def __init__(self, graph: Graph, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.label = graph.label
        try:
            self.session = ort.InferenceSession(str(graph.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for a corrupt or foreign file
            raise EvaluationError(f"{graph.path}: onnxruntime cannot load it: {exc}") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [k for k in self.inputs if k not in values]
        if missing:
            raise EvaluationError(f"{self.label} reads {', '.join(missing)}, which the feature code does not build")
        feed = {k: np.ascontiguousarray(values[k], dtype=np.float32) for k in self.inputs}
        try:
            return dict(zip(self.outputs, self.session.run(self.outputs, feed)))
        except Exception as exc:
            raise EvaluationError(f"{self.label} failed on the evaluation inputs: {exc}") from None


def _run_rows(session: _Session, ex: D.Examples, rows: np.ndarray, temporal: bool,
              extra: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """``session`` over example rows ``rows`` in chunks; ``extra`` holds per-row inputs the examples lack
    (the content vector for a temporal head)."""
    tokens = "text_tokens" in session.inputs
    outs: dict[str, list[np.ndarray]] = {}
    for lo in range(0, len(rows), ROWS_PER_RUN):
        part = rows[lo:lo + ROWS_PER_RUN]
        values = ex.inputs_at(part, temporal=temporal, tokens=tokens)
        for k, v in (extra or {}).items():
            values[k] = v[lo:lo + ROWS_PER_RUN]
        for k, v in session.run(values).items():
            if k in ("log_score", "log_interval"):
                outs.setdefault(k, []).append(v)
    if not outs:
        return {"log_score": np.zeros(0), "log_interval": np.zeros((0, 2))}
    res = {k: np.concatenate(v) for k, v in outs.items()}
    res["log_score"] = res["log_score"].reshape(len(rows), -1)[:, 0].astype(np.float64)
    return res


def predict_static(graph: Graph, ex: D.Examples, threads: int = 1) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The static model once per post (the rows at age 0: what the worker scores at upload).
    Returns (rows, outputs)."""
    rows = np.flatnonzero(ex.age_h == 0.0)
    return rows, _run_rows(_Session(graph, threads), ex, rows, temporal=False)


def predict_temporal(head: Graph, content: Graph | None, ex: D.Examples,
                     threads: int = 1) -> dict[str, np.ndarray]:
    """The temporal model on every row. With a content graph it runs once per post on the upload-time inputs
    and its ``content_vector`` feeds the head at every age, as the worker caches it; a single-graph
    temporal model reads everything itself."""
    rows = np.arange(len(ex))
    head_session = _Session(head, threads)
    extra = None
    if "content_vector" in head_session.inputs:
        if content is None:
            raise EvaluationError(f"{head.label} reads content_vector but no content model is paired with it")
        first = np.flatnonzero(ex.age_h == 0.0)
        session = _Session(content, threads)
        vectors: list[np.ndarray] = []
        for lo in range(0, len(first), ROWS_PER_RUN):
            part = first[lo:lo + ROWS_PER_RUN]
            vectors.append(session.run(ex.inputs_at(part, temporal=False, tokens=True))["content_vector"])
        by_post = np.zeros((int(ex.post_index.max()) + 1 if len(ex) else 0, vectors[0].shape[1] if vectors else 1),
                           np.float32)
        if vectors:
            by_post[ex.post_index[first]] = np.concatenate(vectors)
        extra = {"content_vector": by_post[ex.post_index]}
    return _run_rows(head_session, ex, rows, temporal=True, extra=extra)


def szabo_huberman(coefficients: dict, age_h: np.ndarray, log_now: np.ndarray) -> np.ndarray:
    """The baseline as the trainer fitted it (baselines.SzaboHuberman), from the coefficients in the metadata."""
    from popscore.trainer.baselines import SzaboHuberman

    sh = SzaboHuberman()
    # Older metadata has no unobserved mean: the intercept is the line's value at log1p(now) = 0.
    unobserved = coefficients.get("unobserved", coefficients["intercept"])
    sh.coef = {float(a): (float(c), float(b), float(u)) for a, c, b, u in zip(
        coefficients["age_h"], coefficients["intercept"], coefficients["slope"], unobserved)}
    return sh.predict(np.asarray(age_h, np.float64), np.asarray(log_now, np.float64))


def _row(platform: str, model: str, graph: Graph | None, age: float, metrics: dict, posts: int) -> dict:
    row = {"platform": platform, "model": model, "model_name": graph.name if graph else None,
           "version": graph.version if graph else None, "age_h": float(age), "posts": posts}
    row.update({k: metrics.get(k) for k in METRIC_KEYS})
    return row


@dataclass
class SetPlan:
    """Which posts a model set scores, and why."""

    posts: np.ndarray  # indices into the data's table
    test_from: float | None
    test_to: float | None
    scope: str


def plan(mset: ModelSet, data: Data, all_posts: bool, limit: int | None = None) -> SetPlan:
    """The posts of the model set's platform (all posts with ``all_posts``), inside the model's chronological
    test window (``data_window.test_from`` .. ``test_to`` of its metadata) when the data is the very data set
    it was trained on: the training posts must not be scored, and any other data is unseen by it anyway.
    ``limit`` keeps the earliest of them."""
    table = data.table
    idx = np.arange(len(table))
    scope = "posts of any platform" if all_posts else f"{mset.platform} posts"
    if not all_posts:
        idx = idx[np.array([p == mset.platform for p in table.platform], dtype=bool)]
    graph = mset.temporal or mset.static
    meta = graph.meta if graph is not None else {}
    window = meta.get("data_window") or {}
    trained_on, test_from, test_to = meta.get("dataset"), window.get("test_from"), window.get("test_to")
    windowed = data.dataset is not None and data.dataset == trained_on and test_from is not None
    if windowed:
        created = table.created_at[idx]
        keep = created >= float(test_from)
        if test_to is not None:  # a run on the first N posts (--limit) tested on its last ones, not on the rest
            keep &= created <= float(test_to)
        idx = idx[keep]
        scope += f" of its test window (created {_iso(float(test_from))} .. " \
                 f"{_iso(float(test_to)) if test_to is not None else 'the end'})"
    elif data.dataset is not None and data.dataset == trained_on:
        scope += ", all (no test window in its metadata)"
    elif data.dataset is not None and trained_on:
        scope += f", all (the model was trained on {trained_on})"
    if limit is not None and len(idx) > limit:
        idx = idx[np.argsort(table.created_at[idx], kind="stable")[:limit]]
        scope += f", the earliest {limit}"
    return SetPlan(idx, float(test_from) if windowed else None,
                   float(test_to) if windowed and test_to is not None else None, scope)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def title_encodings(titles: list[str], text_repo: Path | None) -> D.TitleEncodings | None:
    """The served text encoder's token states for ``titles`` (cached on disk like the trainer's, keyed by the
    encoder and the set of titles, so evaluating the same posts again costs nothing), or None when there is
    no text encoder (the title is then masked, as the worker masks it without one)."""
    if text_repo is None or not titles:
        return None
    from popscore.trainer.encoders import cached_title_encodings, text_encoder_available

    if not text_encoder_available(text_repo):
        return None
    return cached_title_encodings(titles, model_repo=text_repo)


def text_encoder_present(text_repo: Path) -> bool:
    from popscore.trainer.encoders import text_encoder_available

    return text_encoder_available(text_repo)


def evaluate(repo: Path, data: Data, platform: str | None = None, all_posts: bool = False,
             text_repo: Path | None = None, threads: int | None = None, limit: int | None = None,
             log=lambda message: None) -> dict[str, Any]:
    """Score every model set of ``repo`` (or only ``platform``'s) on ``data``; returns the JSON-ready result
    ``{"model_repo", "data", "model_sets", "results"}``, one result row per model and observation age:
    the static model at age 0, the temporal model at 0 and at every evaluation age of its feature spec,
    persistence and (when the model set carries its coefficients) Szabo-Huberman at those ages."""
    sets = discover_model_sets(repo)
    if platform is not None:
        if platform not in sets:
            raise EvaluationError(f"no model set for platform {platform!r} in {repo}; "
                                  f"it has: {', '.join(sorted(sets))}")
        sets = {platform: sets[platform]}
    threads = threads or idle_cores()
    text_repo = Path(repo) if text_repo is None else text_repo
    has_text = text_encoder_present(text_repo)
    results: list[dict] = []
    set_info: list[dict] = []
    for name, mset in sorted(sets.items()):
        for note in mset.notes:
            log(f"{name}: {note}")
        chosen = plan(mset, data, all_posts, limit)
        info: dict[str, Any] = {
            "platform": name, "posts": int(len(chosen.posts)), "scope": chosen.scope,
            "test_from": _iso(chosen.test_from) if chosen.test_from is not None else None,
            "test_to": _iso(chosen.test_to) if chosen.test_to is not None else None,
            "text": has_text, "notes": list(mset.notes),
            **{kind: ({"name": g.name, "version": g.version} if g is not None else None)
               for kind, g in (("static", mset.static), ("content", mset.content), ("temporal", mset.temporal))},
        }  # fmt: skip
        set_info.append(info)
        if _uses_text(mset) and not has_text:
            info["notes"].append(f"no {TEXT_ENCODER} in {text_repo}: titles masked (the model was trained with them)")
            log(f"{name}: {info['notes'][-1]}")
        if not len(chosen.posts):
            hint = "" if all_posts else "; --all-posts scores every post with this model set"
            info["notes"].append(f"nothing to score: 0 {chosen.scope}{hint}")
            log(f"{name}: {info['notes'][-1]}")
            continue
        log(f"{name}: scoring {len(chosen.posts)} {chosen.scope}")
        sub = data.table.take(chosen.posts)
        sub_titles = title_encodings(sub.title, text_repo) if has_text else None
        examples: dict[str, D.Examples] = {}

        def examples_for(graph: Graph) -> D.Examples:
            spec = graph.spec
            if spec.hash() not in examples:
                examples[spec.hash()] = D.make_examples(spec, sub, (0.0,) + tuple(spec.eval_ages_h), sub_titles)
            return examples[spec.hash()]

        if not len(examples_for(mset.temporal or mset.static)):
            info["notes"].append("none of these posts has an observation within the horizon (no target)")
            log(f"{name}: {info['notes'][-1]}")
            continue
        if mset.static is not None:
            ex = examples_for(mset.static)
            rows, out = predict_static(mset.static, ex, threads)
            m = regression_metrics(ex.target[rows], out["log_score"], out.get("log_interval"))
            results.append(_row(name, "static", mset.static, 0.0, m, len(chosen.posts)))
        if mset.temporal is not None:
            ex = examples_for(mset.temporal)
            out = predict_temporal(mset.temporal, mset.content, ex, threads)
            sh = mset.baseline_coefficients()
            for age in (0.0,) + tuple(mset.temporal.spec.eval_ages_h):
                at = ex.age_h == age
                m = regression_metrics(ex.target[at], out["log_score"][at], out["log_interval"][at])
                results.append(_row(name, "temporal", mset.temporal, age, m, len(chosen.posts)))
                if age == 0.0:
                    continue  # the baselines start with the first evaluation age, as in the training report
                m = regression_metrics(ex.target[at], ex.log_now[at])
                results.append(_row(name, "persistence", None, age, m, len(chosen.posts)))
                if sh is not None:
                    graph, coefficients = sh
                    m = regression_metrics(ex.target[at], szabo_huberman(coefficients, ex.age_h[at], ex.log_now[at]))
                    results.append(_row(name, "szabo_huberman", graph, age, m, len(chosen.posts)))
    return {"model_repo": str(repo), "data": data.as_dict(), "model_sets": set_info, "results": results}


def _uses_text(mset: ModelSet) -> bool:
    graphs = [g for g in (mset.static, mset.content, mset.temporal) if g is not None]
    return any((g.meta.get("train_config") or {}).get("text", True) for g in graphs)


# -------------------------------------------------------------------------------------------------- output


def clean(value: Any) -> Any:
    """NaN and infinities as null, recursively: the JSON output must be valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def render(result: dict) -> str:
    """The per-age table as Markdown, with the model sets and the data above it."""
    data = result["data"]
    lines = [f"model repository: {result['model_repo']}",
             f"data: {data['source']}, {data['posts']} posts "
             f"({', '.join(f'{k} {v}' for k, v in data['platforms'].items())})"]
    for s in result["model_sets"]:
        models = ", ".join(f"{kind} {s[kind]['name']} v{s[kind]['version']}" for kind in KINDS if s[kind])
        lines.append(f"model set {s['platform']}: {models}; {s['posts']} {s['scope']}"
                     + ("" if s["text"] else "; titles masked"))
        lines += [f"  note: {n}" for n in s["notes"]]
    lines += ["", "| platform | model | version | age h | n | MAE | SRCC | 80% coverage |",
              "|---|---|---|---|---|---|---|---|"]
    for r in result["results"]:
        version = "-" if r["model_name"] is None else ("candidate" if r["version"] is None else str(r["version"]))
        cells = [r["platform"], r["model"], version, f"{r['age_h']:g}", str(r["n"]),
                 _num(r["mae"]), _num(r["srcc"]), _num(r["coverage_80"])]
        lines.append("| " + " | ".join(cells) + " |")
    if not result["results"]:
        lines.append("| (nothing scored) | | | | | | | |")
    return "\n".join(lines)


def _num(value: Any) -> str:
    if value is None:
        return "-"
    return "nan" if isinstance(value, float) and not math.isfinite(value) else f"{value:.3f}"


def log_to_stderr(message: str) -> None:
    print(f"[evaluate] {message}", file=sys.stderr, flush=True)


__all__: Iterable[str] = (
    "Data", "EvaluationError", "Graph", "ModelSet", "clean", "discover_model_sets", "evaluate", "idle_cores",
    "load_dataset_data", "load_event_file", "predict_static", "predict_temporal", "render", "szabo_huberman",
)
