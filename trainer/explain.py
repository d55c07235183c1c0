"""Summaries of the models' explanation outputs for the training report (pure functions)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

SPECIAL_TOKENS = ("[CLS]", "[SEP]")


def word_attention_summary(words: list[list[str]], weights: np.ndarray, top: int = 12, min_count: int = 30,
                           examples: int = 3) -> dict:
    """What word attention reads, over titles (``words`` per title, ``weights`` [n, L] aligned with them).

    ``lift`` of a wordpiece = its weight x the title's token count, averaged over its occurrences: 1 is what
    mean pooling gives every token, 3 means three times its even share. Returns the share of attention on
    [CLS]/[SEP], the wordpieces of highest and lowest lift seen at least ``min_count`` times, and a few
    titles with their weights."""
    lifts: dict[str, list[float]] = defaultdict(list)
    special, titled = 0.0, 0
    for row, title in enumerate(words):
        if not title:
            continue
        titled += 1
        w = weights[row, : len(title)]
        for word, a in zip(title, w):
            if word in SPECIAL_TOKENS:
                special += float(a)
            else:
                lifts[word].append(float(a) * len(title))
    ranked = sorted(((w, float(np.mean(v)), len(v)) for w, v in lifts.items() if len(v) >= min_count),
                    key=lambda r: r[1], reverse=True)
    shown = [row for row in range(len(words)) if 6 <= len(words[row]) <= 14][:examples]
    return {
        "titles": titled,
        "special_token_share": special / max(titled, 1),
        "highest_lift": [[w, round(l, 3), n] for w, l, n in ranked[:top]],
        "lowest_lift": [[w, round(l, 3), n] for w, l, n in ranked[-top:][::-1]],
        "examples": [[[w, round(float(a), 3)] for w, a in zip(words[row], weights[row])] for row in shown],
    }
