"""Markdown report + PNG plots (predicted vs realised, MAE by age, calibration) of a training run."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from popscore.metrics import __doc__ as METRICS_DOC


def load_results(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / "results.json").read_text())


def _ts(x) -> str:
    return "-" if x is None else datetime.fromtimestamp(x, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def _plots(out_dir: Path, results: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    rows = results["metrics"]
    models = sorted({r["model"] for r in rows})
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for m in models:
        rs = sorted((r for r in rows if r["model"] == m and r["age_h"] > 0), key=lambda r: r["age_h"])
        if rs:
            ax[0].plot([r["age_h"] for r in rs], [r["mae"] for r in rs], marker="o", label=m)
            ax[1].plot([r["age_h"] for r in rs], [r["srcc"] for r in rs], marker="o", label=m)
    for a, t in zip(ax, ("MAE of log1p(final score)", "Spearman rank correlation")):
        a.set_xscale("log", base=2)
        a.set_xlabel("observation age (h)")
        a.set_title(t)
        a.grid(alpha=0.3)
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "error_by_age.png", dpi=90)
    plt.close(fig)
    made.append("error_by_age.png")

    pred_file = out_dir / "predictions.npz"
    if pred_file.exists():
        z = np.load(pred_file)
        y, age = z["target"], z["age_h"]
        ages = [a for a in np.unique(age) if a > 0]
        for key, label in (("pred_mtaf_temporal", "MTAF-temporal"), ("pred_szabo_huberman", "Szabo-Huberman")):
            if key not in z:
                continue
            p = z[key]
            fig, axes = plt.subplots(1, len(ages), figsize=(3.2 * len(ages), 3.2), squeeze=False)
            for a, ax_ in zip(ages, axes[0]):
                m = age == a
                ax_.hexbin(y[m], p[m], gridsize=40, bins="log", mincnt=1)
                lo, hi = float(y[m].min()), float(y[m].max())
                ax_.plot([lo, hi], [lo, hi], "r--", lw=1)
                ax_.set_title(f"{label} at {a:g} h", fontsize=9)
                ax_.set_xlabel("realised log1p(final)")
                ax_.set_ylabel("predicted")
            fig.tight_layout()
            name = f"pred_vs_real_{key[5:]}.png"
            fig.savefig(out_dir / name, dpi=80)
            plt.close(fig)
            made.append(name)
        # calibration: mean realised per decile of prediction
        fig, ax_ = plt.subplots(figsize=(5, 4))
        for key in ("pred_mtaf_temporal", "pred_szabo_huberman", "pred_gbt_temporal"):
            if key not in z:
                continue
            m = age > 0
            p, yy = z[key][m], y[m]
            edges = np.quantile(p, np.linspace(0, 1, 11))
            idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, 9)
            used = [i for i in range(10) if np.any(idx == i)]
            ax_.plot([p[idx == i].mean() for i in used], [yy[idx == i].mean() for i in used], marker="o", label=key[5:])
        lims = ax_.get_xlim()
        ax_.plot(lims, lims, "k--", lw=1)
        ax_.set_xlabel("mean predicted (decile)")
        ax_.set_ylabel("mean realised")
        ax_.set_title("calibration, all ages")
        ax_.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "calibration.png", dpi=90)
        plt.close(fig)
        made.append("calibration.png")
    return made


def markdown(results: dict, command: str, wall_s: float | None, plots: list[str]) -> str:
    rows = results["metrics"]
    w = results["window"]
    lines = [
        f"# popscore training report: {results['dataset']}",
        "",
        f"- command: `{command}`",
        f"- run time: {wall_s:.0f} s (wall, 2 CPU threads)" if wall_s else "- run time: -",
        f"- data: `{results.get('source', '')}`, {results['n_posts']} posts",
        f"- split: chronological by first appearance; train {_ts(w['train_from'])} .. {_ts(w['train_to'])} "
        f"({w['n_train_posts']} posts, the last 10% of them the validation window: early stopping, interval "
        f"calibration, promotion gate), embargo {w['embargo_s'] / 3600:g} h, "
        f"test {_ts(w['test_from'])} .. {_ts(w['test_to'])} ({w['n_test_posts']} posts)",
        f"- target: log1p(score at horizon {results['feature_spec']['horizon_s'] / 86400:g} d), the last observation "
        "within the horizon (score weights from ScoreSettings); observation age measured from the post's created_at "
        "(HN: its first front-page appearance)",
        f"- feature spec hash: `{results['feature_spec_hash']}`; text embeddings: {'MiniLM titles' if results['text'] else 'none'}",
        "",
        "## Metrics per model and observation age (test window)",
        "",
        "| model | age h | n | MAE | MSE | R² | SRCC | NDCG@10 | median acc | pairwise acc | 80% coverage |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["age_h"], r["model"])):
        cov = f"{r['coverage_80']:.3f}" if "coverage_80" in r else "-"
        lines.append(
            f"| {r['model']} | {r['age_h']:g} | {r['n']} | {r['mae']:.3f} | {r['mse']:.3f} | {r['r2']:.3f} | {r['srcc']:.3f} "
            f"| {r['ndcg_at_10']:.3f} | {r['median_acc']:.3f} | {r['pairwise_acc']:.3f} | {cov} |"
        )
    by = {(r["model"], r["age_h"]): r for r in rows}
    lines += ["", "## MTAF-temporal vs Szabo–Huberman (MAE)", "", "| age h | SH MAE | temporal MAE | change | SH SRCC | temporal SRCC |", "|---|---|---|---|---|---|"]
    for a in results["feature_spec"]["eval_ages_h"]:
        s, t = by.get(("szabo_huberman", a)), by.get(("mtaf_temporal", a))
        if s and t:
            lines.append(f"| {a:g} | {s['mae']:.3f} | {t['mae']:.3f} | {100 * (t['mae'] / s['mae'] - 1):+.1f}% | {s['srcc']:.3f} | {t['srcc']:.3f} |")
    lines += fold_table(results)
    st, gs = by.get(("mtaf_static", 0.0)), by.get(("gbt_static", 0.0))
    if st and gs:
        better = "better" if st["mae"] < gs["mae"] else "worse"
        lines += ["", f"Static model at upload time: MTAF-static MAE {st['mae']:.3f} / SRCC {st['srcc']:.3f} vs gradient-boosted "
                  f"trees on the same features MAE {gs['mae']:.3f} / SRCC {gs['srcc']:.3f}: MTAF-static is {better}."]
    pp = results.get("pairwise_protocol")
    if pp:
        tr = pp.get("train", {})
        lines += ["", "## Pairwise intrinsic-popularity protocol (upload time)", "",
                  f"Popularity-discriminable pairs: same author, created within {tr.get('window_s', 0) / 3600:g} h, "
                  f"|Δ log1p(final)| ≥ {tr.get('min_gap', 0):g}; {tr.get('n_pairs', 0)} training pairs. "
                  "Accuracy = share of the test window's own such pairs ordered correctly.", "",
                  "| model | test pairs | pair accuracy |", "|---|---|---|"]
        for name, r in pp.items():
            if name != "train":
                lines.append(f"| {name} | {r['n_pairs']} | {r['pair_acc']:.3f} |")
    ex = results.get("explain") or {}
    if ex:
        mw = ", ".join(f"{n} {v:.2f}" for n, v in zip(("content", "text", "visual", "audio"), ex.get("modality_weights_mean", [])))
        ta = ex.get("time_attention_mean", [])
        lines += ["", "## Explanations (test-window means, MTAF-temporal)", "", f"- modality weights: {mw}",
                  f"- time-step attention, oldest → newest bin: {', '.join(f'{v:.2f}' for v in ta)}"]
        for name, wa in (ex.get("word_attention") or {}).items():
            fmt = lambda rows: ", ".join(f"`{w}` {lift:.2f} ({n})" for w, lift, n in rows)  # noqa: E731
            lines += ["", f"### Word attention, {name} (test posts at upload, {wa['titles']} titles)", "",
                      "Lift = a wordpiece's weight × its title's token count, averaged over its occurrences "
                      "(1 = the even share mean pooling gives; count in brackets).", "",
                      f"- share of attention on [CLS]/[SEP]: {wa['special_token_share']:.2f}",
                      f"- highest lift: {fmt(wa['highest_lift'])}",
                      f"- lowest lift: {fmt(wa['lowest_lift'])}"]
            for example in wa["examples"]:
                lines.append("- example: " + " ".join(f"{w}<sub>{a:.2f}</sub>" for w, a in example))
    if results.get("interval_calibration"):
        lines += ["", "## Interval calibration (split-conformal margins; per age, CQR on the validation window, or "
                  "the served baseline's residuals on the latest training posts)", ""]
        for kind, c in results["interval_calibration"].items():
            edges = ", ".join(f"{e:g}" for e in c["age_edges_h"]) or "-"
            margins = ", ".join(f"{m:+.4f}" for m in c["margins"])
            lines.append(f"- {kind}: margins {margins} (log1p units) between age edges {edges} h; n {c['n']}")
            if c.get("method"):
                lines.append("  - per age: " + ", ".join(f"{a:g} h {m} (n {n})" for a, m, n in
                                                       zip(c["ages_h"], c["method"], c["n_by_age"])))
    if results.get("export"):
        lines += ["", "## Export", ""]
        for kind, info in results["export"].items():
            lines.append(f"- {kind}: {json.dumps(info)}")
    lines += ["", "## Definitions", "", METRICS_DOC.strip(), ""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def fold_table(results: dict) -> list[str]:
    """Markdown: MAE per rolling-origin fold and age of the served temporal model (MTAF blended with
    Szabo-Huberman), MTAF alone, the baselines and the static model, and the 80 % interval coverage."""
    summary = results.get("fold_summary")
    if not summary:
        return []
    by = {(e["model"], e["age_h"]): e for e in summary}
    folds = results["folds"]
    lines = ["", "## Rolling-origin folds (MAE of log1p(final score) on each fold's test window)", "",
             "Each fold trains on every post before its test window (minus the embargo); the served model is the "
             "latest fold's. `served` = MTAF-temporal blended with Szabo–Huberman per age (weights fitted on the "
             "validation window), `alone` = MTAF-temporal without the blend.", ""]
    for f in folds:
        w = f["window"]
        lines.append(f"- fold {f['fold'] + 1}: train {_ts(w['train_from'])} .. {_ts(w['train_to'])} "
                     f"({w['n_train_posts']} posts), test {_ts(w['test_from'])} .. {_ts(w['test_to'])} "
                     f"({w['n_test_posts']} posts"
                     + (f", {w['n_test_posts_label_complete']} with a final label" if "n_test_posts_label_complete" in w
                        else "") + "); MTAF weight by age: "
                     + ", ".join(f"{a:g} h {v:.2f}" for a, v in zip(f["blend"]["ages_h"], f["blend"]["mtaf_weight"])))
    models = ("persistence", "szabo_huberman", "gbt_temporal", "mtaf_temporal_alone", "mtaf_temporal")
    header = ("| age h | " + " | ".join(models) + " | served ≤ SH every fold | 80 % coverage (pooled) "
              "| 80 % coverage, final labels (pooled; n) |")
    lines += ["", header, "|" + "---|" * (len(models) + 4)]
    fmt = lambda e: "-" if e is None else " / ".join(f"{v:.3f}" for v in e["mae"])  # noqa: E731
    ages = sorted({a for (_, a) in by if a > 0})
    for age in ages:
        served = by.get(("mtaf_temporal", age))
        cov = served.get("coverage_80") if served else None
        cov_text = "-" if not cov else " / ".join(f"{c:.3f}" for c in cov) + f" ({served['coverage_80_pooled']:.3f})"
        ok = "-" if not served or "beats_or_ties_sh_every_fold" not in served else (
            "yes" if served["beats_or_ties_sh_every_fold"] else "**no**")
        lines.append(f"| {age:g} | " + " | ".join(fmt(by.get((m, age))) for m in models)
                     + f" | {ok} | {cov_text} | {coverage_complete_text(served)} |")
    for name in ("mtaf_static", "gbt_static", "mtaf_temporal"):
        e = by.get((name, 0.0))
        if e:
            cov = e.get("coverage_80")
            lines.append(f"\nAt upload (age 0), {name}: MAE {fmt(e)}" + (
                f"; 80 % coverage {' / '.join(f'{c:.3f}' for c in cov)}" if cov else "") + (
                f"; on final labels {coverage_complete_text(e)}" if "coverage_80_complete" in e else ""))
    return lines


def coverage_complete_text(entry: dict | None) -> str:
    """Coverage per fold on the outcomes whose label is final (data.label_complete), pooled, with the counts."""
    if not entry or "coverage_80_complete" not in entry:
        return "-"
    per = " / ".join("-" if c is None else f"{c:.3f}" for c in entry["coverage_80_complete"])
    pooled = entry.get("coverage_80_complete_pooled")
    counts = " / ".join(str(n) for n in entry["n_complete"])
    return f"{per} ({'-' if pooled is None else f'{pooled:.3f}'}; n {counts})"


def write_report(results: dict, out_dir: Path, command: str, wall_s: float | None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results["command"] = command
    if wall_s is not None:
        results["wall_seconds"] = wall_s
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    plots = _plots(out_dir, results)
    path = out_dir / "REPORT.md"
    path.write_text(markdown(results, command, wall_s, plots))
    return path
