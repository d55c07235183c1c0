"""A streaming synthetic event generator calibrated on the real data sets, for load and scale tests.

Per platform profile (Hacker News, Reddit, YouTube) the fit stores empirical quantile functions, which
the generator samples by inverse CDF, so each marginal matches the real data by construction:

- final popularity: ``log1p`` of the primary counter at the last observation (likes, or views on YouTube),
  and the secondary counters as log-ratios to it (comments, likes, dislikes);
- growth curves: the fraction of the final value reached at fixed ages after the first observation,
  one quantile function per age; a post draws one "speed" percentile and follows that curve (made
  monotone), so fast and slow growers both exist in the real proportions;
- snapshot cadence: observations per post and gaps between observations, with the Spearman correlation
  between final popularity and number of observations kept through a Gaussian copula (popular HN stories
  stay on the front page longer);
- text lengths (title, description, tag count) and title words from the platform's frequent words;
- author activity: Pareto-distributed author weights whose tail exponent is fitted to posts per author;
- categories: the platform's category frequencies (top 40, the rest as ``other``);
- arrivals: Poisson, with the fitted hour-of-day profile.

Memory is bounded by the posts still being observed (a heap of their pending snapshots), never by the
number of posts, so millions of posts stream straight to disk. The fitted parameters are a small JSON
file in ``tools/sample/`` so ``popscore simulate`` works without ``../shared/data``.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from popscore.contract import MAX_TAGS, MAX_TITLE_CHARS, Post, Snapshot

PARAMS_PATH = Path(__file__).parent / "sample" / "simulator_params.json"
QUANTILE_LEVELS = np.unique(np.concatenate([np.linspace(0.0, 1.0, 101), [0.995, 0.999]]))  # finer in the tail
START = datetime(2024, 1, 1, tzinfo=timezone.utc)
SOURCES = {"hackernews": "hackernews", "reddit": "reddit", "youtube": "youtube-v2-us"}
PRIMARY = {"hackernews": "likes", "reddit": "likes", "youtube": "views"}
SECONDARY = {"hackernews": ["comments"], "reddit": ["comments"], "youtube": ["likes", "comments", "dislikes"]}
GROWTH_AGES_H = {
    "hackernews": [0.5, 1, 2, 4, 8, 16, 32],
    "reddit": [1, 2, 4, 8, 16],
    "youtube": [24, 48, 96, 192],
}
SHAPE_POINTS = [0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.85, 1.0]
"""Where in a post's observed lifetime (0 = first, 1 = last observation) the growth shape is fitted."""
TOP_CATEGORIES = 40
AUTHOR_BLOCK = 100_000
DEFAULT_MAX_RATE_PER_HOUR = 1_000.0
TOP_WORDS = 400


@dataclass
class PlatformProfile:
    """Everything the generator needs for one platform; quantile arrays are at ``QUANTILE_LEVELS``."""

    primary: str
    secondary: list[str]
    final_log: list[float]
    secondary_log_ratio: dict[str, list[float]]
    growth_ages_h: list[float]  # where the plot compares growth (hours after the first observation)
    growth_shape: list[list[float]]  # per SHAPE_POINTS, quantiles of the fraction of final (posts with 2+ obs)
    observations: list[float]
    gap_s: list[float]
    rho_final_observations: float
    title_chars: list[float]
    description_chars: list[float] | None
    tag_count: list[float] | None
    words: dict[str, int]
    categories: dict[str, int]
    posts_per_author: list[float] | None
    hour_of_day: list[float]
    posts_per_hour: float


@dataclass
class SimulatorParams:
    platforms: dict[str, PlatformProfile]
    mix: dict[str, float] = field(default_factory=lambda: {"hackernews": 0.6, "reddit": 0.2, "youtube": 0.2})
    sources: dict[str, str] = field(default_factory=lambda: dict(SOURCES))

    def save(self, path: Path | str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), separators=(",", ":"), allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: Path | str | None = None) -> "SimulatorParams":
        raw = json.loads(Path(path or PARAMS_PATH).read_text())
        platforms = {name: PlatformProfile(**profile) for name, profile in raw.pop("platforms").items()}
        return cls(platforms=platforms, **raw)


# --- fitting ------------------------------------------------------------------------------------------

def q(values, levels=QUANTILE_LEVELS) -> list[float]:
    """Quantile function at ``levels``, rounded to keep the JSON small."""
    return [round(float(v), 4) for v in np.quantile(np.asarray(values, dtype=float), levels)]


def post_statistics(posts: list[Post], table, primary: str, secondary: list[str], ages_h: list[float]) -> dict:
    """Per-post statistics of a set of posts and their snapshot table (real or simulated alike).

    Returned arrays: ``final_log``, ``observations``, ``gap_s`` (all gaps), ``growth_start``, ``growth``
    (posts × ages, the last value carried forward past the last observation), ``secondary_log_ratio``,
    text lengths, posts per author, category and hour-of-day counts.
    """
    import pandas as pd

    ordered = table.sort_values(["post_id", "observed_ns"], kind="stable")
    value = ordered[primary].astype("float64")
    grouped = ordered.assign(v=value).groupby("post_id", sort=False)
    last = grouped["v"].last()
    first_ns = grouped["observed_ns"].first()
    keep = last.index[last.notna() & (last > 0)]
    stats: dict = {
        "final_log": np.log1p(last.loc[keep].to_numpy()),
        "observations": grouped.size().loc[keep].to_numpy(),
    }
    gaps = ordered.groupby("post_id", sort=False)["observed_ns"].diff().dropna() / 1e9
    stats["gap_s"] = gaps[gaps > 0].to_numpy()
    start = (grouped["v"].first().loc[keep] / last.loc[keep]).to_numpy()
    stats["growth_start"] = np.clip(start, 0, 1)
    # fraction of final at each age after the first observation: last value at or before that age
    frame = ordered.assign(v=value, age_h=(ordered["observed_ns"] - ordered["post_id"].map(first_ns)) / 3.6e12)
    frame = frame[frame["post_id"].isin(keep)]
    growth = np.empty((len(keep), len(ages_h)))
    index = pd.Index(keep)
    for j, age in enumerate(ages_h):
        reached = frame[frame["age_h"] <= age].groupby("post_id", sort=False)["v"].last()
        growth[:, j] = (reached.reindex(index).to_numpy() / last.loc[keep].to_numpy())
    stats["growth"] = np.clip(np.nan_to_num(growth, nan=0.0), 0, 1)
    stats["shape"] = growth_shape(frame, last.loc[keep])
    stats["secondary_log_ratio"] = {}
    for name in secondary:
        if name in ordered:
            final_other = grouped[name].last().loc[keep].astype("float64")
            ok = final_other.notna().to_numpy()
            stats["secondary_log_ratio"][name] = (np.log1p(final_other.to_numpy()[ok])
                                                  - stats["final_log"][ok])
    by_id = {p.post_id: p for p in posts}
    kept_posts = [by_id[k] for k in keep if k in by_id]
    stats["title_chars"] = np.array([len(p.text.title) for p in kept_posts])
    stats["description_chars"] = np.array([len(p.text.description) for p in kept_posts])
    stats["tag_count"] = np.array([len(p.text.tags) for p in kept_posts])
    authors = Counter(p.author.id for p in kept_posts if p.author is not None)
    stats["posts_per_author"] = np.array(sorted(authors.values()))
    stats["categories"] = Counter(str(p.attributes["category"]) for p in kept_posts if "category" in p.attributes)
    stats["hours"] = np.bincount([p.created_at.hour for p in kept_posts], minlength=24)
    stats["words"] = Counter(w for p in kept_posts for w in title_words(p.text.title))
    if kept_posts:
        span_h = (max(p.created_at for p in kept_posts) - min(p.created_at for p in kept_posts)).total_seconds() / 3600
        stats["posts_per_hour"] = len(kept_posts) / max(span_h, 1.0)
    else:
        stats["posts_per_hour"] = 0.0
    return stats


def growth_shape(frame, last) -> np.ndarray:
    """Fraction of final at SHAPE_POINTS of each post's observed lifetime (posts with 2+ observations),
    linearly interpolated between observations."""
    shapes = []
    for post_id, group in frame.groupby("post_id", sort=False):
        if len(group) < 2:
            continue
        ages = group["age_h"].to_numpy(dtype=float)
        if ages[-1] <= 0:
            continue
        values = group["v"].to_numpy(dtype=float) / float(last.loc[post_id])
        shapes.append(np.interp(np.array(SHAPE_POINTS) * ages[-1], ages, values))
    return np.clip(np.array(shapes).reshape(-1, len(SHAPE_POINTS)), 0, 1)


def title_words(title: str) -> list[str]:
    return [w for w in title.lower().split() if w.isalpha() and len(w) <= 20]


def fit_profile(platform: str, loaded) -> PlatformProfile:
    stats = post_statistics(loaded.posts, loaded.snapshot_table, PRIMARY[platform], SECONDARY[platform],
                            GROWTH_AGES_H[platform])
    rho = spearman(stats["final_log"], stats["observations"])
    has_text = platform == "youtube"
    hours = stats["hours"] / max(stats["hours"].sum(), 1)
    return PlatformProfile(
        primary=PRIMARY[platform],
        secondary=SECONDARY[platform],
        final_log=q(stats["final_log"]),
        secondary_log_ratio={k: q(v) for k, v in stats["secondary_log_ratio"].items() if len(v)},
        growth_ages_h=GROWTH_AGES_H[platform],
        growth_shape=[q(stats["shape"][:, j]) for j in range(len(SHAPE_POINTS))],
        observations=q(stats["observations"]),
        gap_s=q(stats["gap_s"]),
        rho_final_observations=round(rho, 4),
        title_chars=q(stats["title_chars"]),
        description_chars=q(stats["description_chars"]) if has_text else None,
        tag_count=q(stats["tag_count"]) if has_text else None,
        words=dict(stats["words"].most_common(TOP_WORDS)),
        categories=dict(stats["categories"].most_common(TOP_CATEGORIES)),
        posts_per_author=q(stats["posts_per_author"]) if len(stats["posts_per_author"]) else None,
        hour_of_day=[round(float(h), 5) for h in hours],
        posts_per_hour=round(float(stats["posts_per_hour"]), 4),
    )


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    value = spearmanr(a, b).statistic
    return 0.0 if value is None or math.isnan(value) else float(value)


def fit_params(data_dir: Path | str | None = None) -> SimulatorParams:
    """Fit every platform profile from the real data sets (``SOURCES``)."""
    from popscore.datasets import load

    return SimulatorParams(platforms={p: fit_profile(p, load(name, data_dir)) for p, name in SOURCES.items()})


def gaussian_rho(spearman_rho: float) -> float:
    """The normal-copula correlation that yields a given Spearman correlation (Pearson's relation)."""
    return max(-0.999, min(0.999, 2.0 * math.sin(math.pi * spearman_rho / 6.0)))


# --- generating ---------------------------------------------------------------------------------------

def sample_quantile(levels_values: list[float], u: np.ndarray | float) -> np.ndarray:
    """Inverse CDF by linear interpolation of a stored quantile function."""
    return np.interp(u, QUANTILE_LEVELS, levels_values)


class _PlatformSampler:
    def __init__(self, name: str, profile: PlatformProfile, rng: np.random.Generator, expected_posts: int) -> None:
        self.name, self.p, self.rng = name, profile, rng
        words = sorted(profile.words.items(), key=lambda kv: -kv[1]) or [("post", 1)]
        self.words = [w for w, _ in words]
        word_p = np.array([c for _, c in words], dtype=float)
        self.word_cdf = np.cumsum(word_p / word_p.sum())
        self.mean_word = float(np.dot([len(w) + 1 for w in self.words], word_p / word_p.sum()))
        cats = sorted(profile.categories.items(), key=lambda kv: -kv[1])
        self.categories = [c for c, _ in cats]
        self.category_p = np.array([n for _, n in cats], dtype=float)
        self.category_p = self.category_p / self.category_p.sum() if len(cats) else self.category_p
        self.ticket_block = max(1, min(expected_posts, AUTHOR_BLOCK))
        self.tickets: list[int] = []
        self.next_author = 0
        self.rho = gaussian_rho(profile.rho_final_observations)

    def post(self, index: int, created_at: datetime) -> tuple[Post, list[tuple[datetime, dict[str, int]]]]:
        rng, p = self.rng, self.p
        z1, z2 = rng.standard_normal(2)
        z2 = self.rho * z1 + math.sqrt(1.0 - self.rho**2) * z2  # Gaussian copula with correlation rho
        u_final, u_obs = (0.5 * (1.0 + math.erf(z / math.sqrt(2.0))) for z in (z1, z2))
        final = max(1, int(round(math.expm1(float(sample_quantile(p.final_log, u_final))))))
        n_obs = max(1, int(round(float(sample_quantile(p.observations, u_obs)))))
        gaps = sample_quantile(p.gap_s, rng.random(n_obs - 1)) if n_obs > 1 else np.empty(0)
        ages_s = np.concatenate([[0.0], np.cumsum(np.maximum(gaps, 1.0))])
        fractions = self._growth(ages_s / 3600.0, rng.random())
        others = {name: float(sample_quantile(ratio, rng.random())) for name, ratio in p.secondary_log_ratio.items()}
        snapshots = []
        for age, fraction in zip(ages_s, fractions):
            value = int(round(final * fraction))
            counts = {p.primary: value}
            for name, log_ratio in others.items():
                counts[name] = max(0, int(round(math.expm1(math.log1p(value) + log_ratio))))
            snapshots.append((created_at + timedelta(seconds=float(age)), counts))
        return self._post_event(index, created_at), snapshots

    def _growth(self, ages_h: np.ndarray, u: float) -> np.ndarray:
        """Fraction of final at each observation: the fitted shape over the post's lifetime at speed
        percentile ``u`` (comonotone across points, made non-decreasing), ending at exactly 1."""
        if len(ages_h) == 1:
            return np.ones(1)
        grid = np.array([float(sample_quantile(g, u)) for g in self.p.growth_shape])
        grid = np.maximum.accumulate(np.clip(grid, 1e-6, 1.0))
        grid[-1] = 1.0
        return np.interp(ages_h / ages_h[-1], SHAPE_POINTS, grid)

    def _post_event(self, index: int, created_at: datetime) -> Post:
        rng, p = self.rng, self.p
        text: dict[str, object] = {"title": self._text(sample_quantile(p.title_chars, rng.random()), MAX_TITLE_CHARS)}
        if p.description_chars is not None:
            text["description"] = self._text(sample_quantile(p.description_chars, rng.random()), 5000)
        if p.tag_count is not None:
            n_tags = min(MAX_TAGS, int(round(float(sample_quantile(p.tag_count, rng.random())))))
            text["tags"] = list(dict.fromkeys(self._words(n_tags)))
        attributes: dict[str, object] = {"simulated": True}
        if self.categories:
            attributes["category"] = self.categories[int(rng.choice(len(self.categories), p=self.category_p))]
        post: dict[str, object] = {
            "post_id": f"sim-{self.name}-{index}",
            "platform": self.name,
            "created_at": created_at,
            "text": text,
            "media": {},
            "attributes": attributes,
        }
        if p.posts_per_author:
            post["author"] = {"id": f"sim-{self.name}-u{self._author()}"}
        return Post.model_validate(post)

    def _author(self) -> int:
        """Authors come in blocks: each new author draws a post count from the real posts-per-author
        distribution, the block's posts are shuffled, so the counts match the data exactly while memory
        stays bounded by the block (an author's posts are spread over one block of time)."""
        if not self.tickets:
            counts: list[int] = []
            while sum(counts) < self.ticket_block:
                counts.append(max(1, int(round(float(sample_quantile(self.p.posts_per_author, self.rng.random()))))))
            ids = np.repeat(np.arange(self.next_author, self.next_author + len(counts)), counts)
            self.next_author += len(counts)
            self.rng.shuffle(ids)
            self.tickets = ids.tolist()[::-1]
        return self.tickets.pop()

    def _words(self, n: int) -> list[str]:
        """``n`` words drawn by frequency (inverse CDF: one vectorised draw, no per-call setup)."""
        picks = np.minimum(np.searchsorted(self.word_cdf, self.rng.random(n)), len(self.words) - 1)
        return [self.words[i] for i in picks]

    def _text(self, chars: float, cap: int) -> str:
        """Frequent words of the platform up to a sampled length in characters."""
        target = min(cap, int(round(float(chars))))
        text = ""
        while len(text) < target:
            more = " ".join(self._words(int(target / self.mean_word) + 2))
            text = f"{text} {more}" if text else more
        return text[:target].rstrip()


def simulate(
    params: SimulatorParams,
    posts: int,
    seed: int = 0,
    rate_per_hour: float | None = None,
    start: datetime = START,
    mix: dict[str, float] | None = None,
) -> Iterator[Post | Snapshot]:
    """Yield ``posts`` simulated posts and their snapshots in event-time order (posts first at ties).

    Without ``rate_per_hour`` the posts spread over about a week, at most ``DEFAULT_MAX_RATE_PER_HOUR``
    (and at least the platforms' fitted rate). Memory is set by the rate (posts still being observed),
    not by ``posts``: a million posts at the default rate run in well under 200 MB.
    """
    rng = np.random.default_rng(seed)
    mix = mix or params.mix
    names = [n for n in mix if n in params.platforms and mix[n] > 0]
    shares = np.array([mix[n] for n in names], dtype=float)
    shares /= shares.sum()
    samplers = {n: _PlatformSampler(n, params.platforms[n], rng, int(posts * s) + 1) for n, s in zip(names, shares)}
    fitted_rate = sum(params.platforms[n].posts_per_hour * s for n, s in zip(names, shares))
    rate = rate_per_hour or max(fitted_rate, min(posts / (7 * 24), DEFAULT_MAX_RATE_PER_HOUR))
    hour_profile = np.mean([params.platforms[n].hour_of_day for n in names], axis=0)
    hour_weight = hour_profile * 24 / hour_profile.sum() if hour_profile.sum() > 0 else np.ones(24)

    # pending snapshots of posts still being observed, kept as plain tuples (a few hundred bytes each):
    # memory is rate × observation lifetime, independent of the number of posts
    pending: list[tuple[datetime, int, str, dict[str, int]]] = []
    sequence = 0
    now = start
    for index in range(posts):
        # thinning a Poisson process by the hour-of-day profile: exact for a piecewise-constant rate
        while True:
            now += timedelta(hours=float(rng.exponential(1.0 / (rate * hour_weight.max()))))
            if rng.random() < hour_weight[now.hour] / hour_weight.max():
                break
        while pending and pending[0][0] < now:
            yield _snapshot(heapq.heappop(pending))
        platform = names[int(rng.choice(len(names), p=shares))]
        post, snapshots = samplers[platform].post(index, now)
        yield post
        for observed_at, counts in snapshots:
            sequence += 1
            heapq.heappush(pending, (observed_at, sequence, post.post_id, counts))
    while pending:
        yield _snapshot(heapq.heappop(pending))


def _snapshot(entry: tuple[datetime, int, str, dict[str, int]]) -> Snapshot:
    observed_at, _, post_id, counts = entry
    return Snapshot.model_validate({"post_id": post_id, "observed_at": observed_at, "counts": counts})


# --- comparing with the real data ---------------------------------------------------------------------

COMPARE_LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
TABLE_START, TABLE_END = "<!-- simulator-fit-table:start -->", "<!-- simulator-fit-table:end -->"


def simulated_dataset(params: SimulatorParams, platform: str, posts: int, seed: int = 0):
    """Simulate one platform and return (posts, snapshot table) shaped like a loaded real data set."""
    import pandas as pd

    post_list: list[Post] = []
    rows: dict[str, list] = {"post_id": [], "observed_ns": []}
    counters = [params.platforms[platform].primary, *params.platforms[platform].secondary]
    for name in counters:
        rows[name] = []
    for event in simulate(params, posts=posts, seed=seed, mix={platform: 1.0}):
        if isinstance(event, Post):
            post_list.append(event)
            continue
        rows["post_id"].append(event.post_id)
        rows["observed_ns"].append(int(event.observed_at.timestamp() * 1e9))
        counts = event.counts.as_dict()
        for name in counters:
            rows[name].append(counts.get(name))
    table = pd.DataFrame(rows)
    for name in counters:
        table[name] = table[name].astype("Int64")
    return post_list, table


def comparison_rows(real: dict, sim: dict) -> list[tuple[str, str, list[float], list[float]]]:
    """(metric, unit, real quantiles, simulated quantiles) for the table and the plot."""
    metrics = [
        ("final popularity log1p", "final_log"),
        ("observations per post", "observations"),
        ("gap between observations (s)", "gap_s"),
        ("fraction of final at first observation", "growth_start"),
        ("title length (chars)", "title_chars"),
        ("posts per author", "posts_per_author"),
    ]
    out = []
    for label, key in metrics:
        a, b = np.asarray(real[key], dtype=float), np.asarray(sim[key], dtype=float)
        if len(a) and len(b):
            out.append((label, key, np.quantile(a, COMPARE_LEVELS).tolist(), np.quantile(b, COMPARE_LEVELS).tolist()))
    return out


def compare_report(params: SimulatorParams, docs: Path, posts: int = 20000, data_dir: Path | str | None = None,
                   seed: int = 0) -> str:
    """Write ``simulator_fit.png`` (real vs simulated distributions) and the quantile table into ``docs``;
    if ``docs/data.md`` has the table markers, the table between them is replaced. Returns the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from popscore.datasets import load

    docs.mkdir(parents=True, exist_ok=True)
    platforms = list(params.platforms)
    fig, axes = plt.subplots(len(platforms), 5, figsize=(22, 4.2 * len(platforms)))
    lines = ["| platform | metric | source | p10 | p25 | p50 | p75 | p90 | p99 |", "|---|---|---|---|---|---|---|---|---|"]
    for row, platform in enumerate(platforms):
        profile = params.platforms[platform]
        real_events = load(params.sources[platform], data_dir)
        real = post_statistics(real_events.posts, real_events.snapshot_table, profile.primary, profile.secondary,
                               profile.growth_ages_h)
        sim_posts, sim_table = simulated_dataset(params, platform, posts, seed)
        sim = post_statistics(sim_posts, sim_table, profile.primary, profile.secondary, profile.growth_ages_h)
        for label, _, a, b in comparison_rows(real, sim):
            lines.append(f"| {platform} | {label} | real | " + " | ".join(f"{v:.3g}" for v in a) + " |")
            lines.append(f"| {platform} | {label} | simulated | " + " | ".join(f"{v:.3g}" for v in b) + " |")
        _plot_row(axes[row], platform, profile, real, sim, len(real_events.posts), len(sim_posts))
    fig.suptitle("popscore simulate: real (solid) vs simulated (dashed) distributions", fontsize=14)
    fig.tight_layout()
    fig.savefig(docs / "simulator_fit.png", dpi=80)
    plt.close(fig)
    table = "\n".join(lines)
    (docs / "simulator_fit.md").write_text(table + "\n")
    data_md = docs / "data.md"
    if data_md.exists():
        text = data_md.read_text()
        if TABLE_START in text and TABLE_END in text:
            head, rest = text.split(TABLE_START, 1)
            _, tail = rest.split(TABLE_END, 1)
            data_md.write_text(f"{head}{TABLE_START}\n{table}\n{TABLE_END}{tail}")
    return table


def _ecdf(ax, values, label, style, log=False):
    values = np.sort(np.asarray(values, dtype=float))
    if not len(values):
        return
    ax.plot(values, np.arange(1, len(values) + 1) / len(values), style, label=label)
    if log:
        ax.set_xscale("log")


def _plot_row(axes, platform, profile, real, sim, n_real, n_sim) -> None:
    _ecdf(axes[0], real["final_log"], f"real ({n_real} posts)", "-")
    _ecdf(axes[0], sim["final_log"], f"simulated ({n_sim})", "--")
    axes[0].set_title(f"{platform}: final {profile.primary}, log1p (CDF)")
    axes[0].legend(fontsize=8)
    ages = profile.growth_ages_h
    for stats, style, label in ((real, "-", "real"), (sim, "--", "simulated")):
        growth = stats["growth"]
        axes[1].plot(ages, np.median(growth, axis=0), style + "o", label=f"{label} median")
        axes[1].fill_between(ages, np.quantile(growth, 0.25, axis=0), np.quantile(growth, 0.75, axis=0), alpha=0.15)
    axes[1].set_xscale("log")
    axes[1].set_title("growth: fraction of final vs hours since first obs.")
    axes[1].legend(fontsize=8)
    _ecdf(axes[2], real["observations"], "real", "-")
    _ecdf(axes[2], sim["observations"], "simulated", "--")
    axes[2].set_title("observations per post (CDF)")
    _ecdf(axes[3], real["gap_s"], "real", "-", log=True)
    _ecdf(axes[3], sim["gap_s"], "simulated", "--", log=True)
    axes[3].set_title("gap between snapshots, s (CDF)")
    if len(real["posts_per_author"]):
        _ecdf(axes[4], real["posts_per_author"], "real", "-", log=True)
        _ecdf(axes[4], sim["posts_per_author"], "simulated", "--", log=True)
        axes[4].set_title("posts per author (CDF)")
    else:
        _ecdf(axes[4], real["title_chars"], "real", "-")
        _ecdf(axes[4], sim["title_chars"], "simulated", "--")
        axes[4].set_title("title length, chars (CDF; no authors in source)")
