"""MTAF models (Ou et al.) as plain torch modules, read top to bottom: the configuration, the building
blocks, the per-post content encoder, then the two models that compose it.

MTAF-static: one vector per modality (content-agnostic features, text, visual, audio), each projected to
``d_model``; additive attention over the modalities that are present (``modality_mask``) fuses them; an MLP
head predicts log1p(score at horizon) and a [q10, q90] interval. The text vector is word attention over the
title's MiniLM token states (the encoder stays frozen; its token states are inputs).

MTAF-temporal: the same fusion plus a bi-directional GRU over the resampled early-popularity sequence
(right-aligned window, masked bins before creation, valid at any observation age), additive attention over
time steps, and the observation-time scalars. The head predicts the *growth* over the current score
(``log1p(score now)`` is a dynamic feature), so a prediction is never below what has been observed unless
the data says so.

Both return a dict keyed by the ONNX output names of popscore.features (log_score, log_interval,
modality_weights, word_attention[, time_attention]): the explanations are first-class outputs. How they
become served graphs is trainer/export.py's business.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from popscore import features

NEG = -1e4  # masked attention logit (finite: exports cleanly, softmax weight ~0)
LOG_NOW = features.DYNAMIC_FEATURE_NAMES.index("log1p_score_now")
LOG_AGE = features.DYNAMIC_FEATURE_NAMES.index("log1p_age_h")


@dataclass
class MTAFConfig:
    static_dim: int
    dynamic_dim: int = 0
    n_bins: int = 0
    n_channels: int = 0
    temporal: bool = False  # which model: build_mtaf reads it, the exported metadata records it
    text_dim: int = features.TEXT_DIM
    visual_dim: int = features.VISUAL_DIM
    audio_dim: int = features.AUDIO_DIM
    d_model: int = 64
    gru_hidden: int = 48
    dropout: float = 0.1
    modality_dropout: float = 0.2  # training only: randomly hide text/visual/audio so masking is learnt

    def to_dict(self) -> dict:
        return asdict(self)


def config_for(spec: features.FeatureSpec, temporal: bool, **kw) -> MTAFConfig:
    return MTAFConfig(
        static_dim=spec.static_dim,
        dynamic_dim=spec.dynamic_dim if temporal else 0,
        n_bins=spec.n_bins if temporal else 0,
        n_channels=spec.n_channels if temporal else 0,
        temporal=temporal,
        **kw,
    )


# ------------------------------------------------------------------------------------------ building blocks


class Standardize(nn.Module):
    """Fixed (train-set) affine normalisation stored as buffers, so it travels inside the ONNX file."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        x = x.reshape(-1, x.shape[-1])
        if mask is not None:
            x = x[mask.reshape(-1) > 0]
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(1e-3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class AdditiveAttention(nn.Module):
    """score_i = v^T tanh(W h_i); masked softmax over i."""

    def __init__(self, dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.v = nn.Linear(hidden, 1, bias=False)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.v(torch.tanh(self.proj(h))).squeeze(-1)  # [B, N]
        logits = torch.where(mask > 0, logits, torch.full_like(logits, NEG))
        w = torch.softmax(logits, dim=-1)
        return (w.unsqueeze(-1) * h).sum(1), w


def mlp(i: int, o: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, o), nn.GELU(), nn.Dropout(dropout), nn.Linear(o, o))


def prediction_head(i: int, d: int, dropout: float) -> nn.Sequential:
    """Three outputs: the point, then the raw widths below and above it (see interval_around)."""
    return nn.Sequential(nn.Linear(i, 2 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * d, d), nn.GELU(),
                         nn.Linear(d, 3))


def interval_around(point: torch.Tensor, head_out: torch.Tensor, margin: torch.Tensor,
                    head_weight: torch.Tensor | float = 1.0) -> torch.Tensor:
    """[q10, q90] from the head's two raw widths (times ``head_weight``), widened by the conformal margin.
    ``head_weight`` 0 serves ``point -+ margin``: where the served point is the baseline alone, the head's
    widths (learnt around MTAF's own point) say nothing about it."""
    lo = point - head_weight * F.softplus(head_out[:, 1:2]) - margin
    hi = point + head_weight * F.softplus(head_out[:, 2:3]) + margin
    # A negative conformal margin may cut into a narrow interval: the point always stays inside.
    return torch.cat([torch.minimum(lo, point), torch.maximum(hi, point)], dim=-1)


def piecewise_in_age(log1p_edges: torch.Tensor, values: torch.Tensor, log1p_age_h: torch.Tensor) -> torch.Tensor:
    """values[k] for ages in [edge[k-1], edge[k]): comparisons only (in log1p space, as the feature is), so it
    exports to any ONNX opset."""
    out = values[0] + torch.zeros_like(log1p_age_h)
    for k in range(log1p_edges.shape[0]):
        out = out + (log1p_age_h >= log1p_edges[k]).float() * (values[k + 1] - values[k])
    return out


class WordAttention(nn.Module):
    """The text modality: attention pooling over the title's token states instead of MiniLM's mean pooling,
    so the model learns which words matter for popularity and says which (the weights are an output).

    It starts as MiniLM's own sentence embedding (zero scores = mean pooling, then L2 normalisation) and
    learns to depart from it. Variants that did not start there overfitted on HN: every post is seen at
    ten ages, and a freer text branch learnt titles by heart (docs/training.md)."""

    def __init__(self, text_dim: int, d: int, dropout: float) -> None:
        super().__init__()
        self.attention = AdditiveAttention(text_dim)
        nn.init.zeros_(self.attention.v.weight)
        self.out = mlp(text_dim, d, dropout)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, weights = self.attention(tokens, mask)  # [B, text_dim], [B, L]
        pooled = F.normalize(pooled, dim=-1)
        return self.out(pooled), weights * mask  # no title: all-zero weights


# ------------------------------------------------------------------------------------------------- models


class ContentEncoder(nn.Module):
    """The per-post half of MTAF: one vector per modality, fused by attention over the present ones.
    Everything it reads is known at upload, so the stream runs it once per post and caches the result."""

    def __init__(self, cfg: MTAFConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.norm_static = Standardize(cfg.static_dim)
        self.content = mlp(cfg.static_dim, d, cfg.dropout)
        self.text = WordAttention(cfg.text_dim, d, cfg.dropout)
        self.visual = mlp(cfg.visual_dim, d, cfg.dropout)
        self.audio = mlp(cfg.audio_dim, d, cfg.dropout)
        self.fusion = AdditiveAttention(d)

    def forward(
        self,
        static_features: torch.Tensor,
        text_tokens: torch.Tensor,
        text_token_mask: torch.Tensor,
        visual_embedding: torch.Tensor,
        audio_embedding: torch.Tensor,
        modality_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = modality_mask
        if self.training and self.cfg.modality_dropout > 0:
            keep = (torch.rand_like(mask) > self.cfg.modality_dropout).float()
            keep[:, 0] = 1.0
            mask = mask * keep
        text, word_weights = self.text(text_tokens, text_token_mask)
        h = torch.stack(
            [self.content(self.norm_static(static_features)), text, self.visual(visual_embedding),
             self.audio(audio_embedding)],
            dim=1,
        )  # [B, 4, d]
        content_vector, modality_weights = self.fusion(h, mask)  # [B, d], [B, 4]
        return content_vector, modality_weights, word_weights


class MTAFStatic(nn.Module):
    """At upload: the content vector alone predicts the score and its interval."""

    def __init__(self, cfg: MTAFConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ContentEncoder(cfg)
        self.head = prediction_head(cfg.d_model, cfg.d_model, cfg.dropout)
        self.register_buffer("interval_margin", torch.zeros(1))  # set after training (calibrate_interval)

    def forward(
        self,
        static_features: torch.Tensor,
        text_tokens: torch.Tensor,
        text_token_mask: torch.Tensor,
        visual_embedding: torch.Tensor,
        audio_embedding: torch.Tensor,
        modality_mask: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        content_vector, modality_weights, word_attention = self.encoder(
            static_features, text_tokens, text_token_mask, visual_embedding, audio_embedding, modality_mask
        )
        head_out = self.head(content_vector)
        point = head_out[:, :1]
        return {"log_score": point, "log_interval": interval_around(point, head_out, self.interval_margin),
                "modality_weights": modality_weights, "word_attention": word_attention}

    def input_names(self) -> list[str]:
        return [t.name for t in features.STATIC_INPUTS]

    def output_names(self) -> list[str]:
        return [t.name for t in features.STATIC_OUTPUTS]

    def init_output_bias(self, value: float) -> None:
        """Start the head at the mean target: short runs converge."""
        with torch.no_grad():
            self.head[-1].bias[0] = value

    def fit_normalisers(self, inputs: dict[str, torch.Tensor]) -> None:
        self.encoder.norm_static.fit(inputs["static_features"])

    def set_interval_margin(self, margin: float) -> None:
        self.interval_margin = torch.tensor([margin], dtype=torch.float32)


class MTAFTemporal(nn.Module):
    """At any observation age: the content vector, the popularity sequence so far and the observation-time
    scalars predict the growth over the current score. The served point is a blend with Szabo-Huberman and
    the interval is calibrated per age; both are fitted after training and stored as buffers, so the
    graph serves them."""

    def __init__(self, cfg: MTAFConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, gru_out = cfg.d_model, 2 * cfg.gru_hidden
        self.encoder = ContentEncoder(cfg)
        self.norm_seq = Standardize(cfg.n_channels)
        self.norm_dyn = Standardize(cfg.dynamic_dim)
        self.gru = nn.GRU(cfg.n_channels + 1, cfg.gru_hidden, batch_first=True, bidirectional=True)
        self.time_attn = AdditiveAttention(gru_out)
        self.dyn = mlp(cfg.dynamic_dim, d, cfg.dropout)
        self.head = prediction_head(d + gru_out + gru_out + d, d, cfg.dropout)
        # Added to [q10, q90] after training (split-conformal, per observation age; calibrate_interval); per
        # age, whether the head's widths are used (1) or the interval is the point -+ the margin (0).
        self.register_buffer("interval_log1p_age_edges", torch.zeros(0))
        self.register_buffer("interval_margin", torch.zeros(1))
        self.register_buffer("interval_head_weight", torch.ones(1))
        # The served point is a blend with Szabo-Huberman, fitted per age on the validation window after
        # training (fit_blend): weight 1 serves MTAF alone, 0 the baseline alone.
        self.register_buffer("blend_log1p_age_edges", torch.zeros(0))
        self.register_buffer("blend_weight", torch.ones(1))
        self.register_buffer("sh_intercept", torch.zeros(1))
        self.register_buffer("sh_slope", torch.ones(1))
        self.register_buffer("sh_unobserved", torch.zeros(1))

    def forward(
        self,
        static_features: torch.Tensor,
        text_tokens: torch.Tensor,
        text_token_mask: torch.Tensor,
        visual_embedding: torch.Tensor,
        audio_embedding: torch.Tensor,
        modality_mask: torch.Tensor,
        sequence: torch.Tensor,
        sequence_mask: torch.Tensor,
        dynamic_features: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        content_vector, modality_weights, word_attention = self.encoder(
            static_features, text_tokens, text_token_mask, visual_embedding, audio_embedding, modality_mask
        )
        return {**self.predict(content_vector, sequence, sequence_mask, dynamic_features),
                "modality_weights": modality_weights, "word_attention": word_attention}

    def predict(
        self,
        content_vector: torch.Tensor,
        sequence: torch.Tensor,
        sequence_mask: torch.Tensor,
        dynamic_features: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The per-snapshot half, from the post's cached content vector: log_score, log_interval,
        time_attention."""
        m = sequence_mask.unsqueeze(-1)
        states, last = self.gru(torch.cat([self.norm_seq(sequence) * m, m], dim=-1))  # [B, T, 2H], [2, B, H]
        time_context, time_attention = self.time_attn(states, sequence_mask)
        last = torch.cat([last[0], last[1]], dim=-1)
        dynamic = self.dyn(self.norm_dyn(dynamic_features))
        head_out = self.head(torch.cat([content_vector, time_context, last, dynamic], dim=-1))
        log_now = dynamic_features[:, LOG_NOW : LOG_NOW + 1]
        log_age = dynamic_features[:, LOG_AGE : LOG_AGE + 1]
        point = self.blend_with_baseline(log_now + head_out[:, :1], log_now, log_age)
        margin = piecewise_in_age(self.interval_log1p_age_edges, self.interval_margin, log_age)
        head_weight = piecewise_in_age(self.interval_log1p_age_edges, self.interval_head_weight, log_age)
        return {"log_score": point, "log_interval": interval_around(point, head_out, margin, head_weight),
                "time_attention": time_attention}

    def blend_with_baseline(self, mtaf: torch.Tensor, log_now: torch.Tensor, log_age: torch.Tensor) -> torch.Tensor:
        """``w * MTAF + (1 - w) * SH`` with SH = ``a + b * log1p(score now)`` once the post has a count, ``u``
        before; (w, a, b, u) per age bin (set_blend)."""
        in_bin = lambda values: piecewise_in_age(self.blend_log1p_age_edges, values, log_age)  # noqa: E731
        line = in_bin(self.sh_intercept) + in_bin(self.sh_slope) * log_now
        baseline = torch.where(log_now > 0, line, in_bin(self.sh_unobserved))
        weight = in_bin(self.blend_weight)
        return weight * mtaf + (1 - weight) * baseline

    def input_names(self) -> list[str]:
        return [t.name for t in features.STATIC_INPUTS] + ["sequence", "sequence_mask", "dynamic_features"]

    def output_names(self) -> list[str]:
        return [t.name for t in features.STATIC_OUTPUTS] + ["time_attention"]

    def init_output_bias(self, value: float) -> None:
        """Start the head at the mean growth: short runs converge."""
        with torch.no_grad():
            self.head[-1].bias[0] = value

    def fit_normalisers(self, inputs: dict[str, torch.Tensor]) -> None:
        self.encoder.norm_static.fit(inputs["static_features"])
        self.norm_seq.fit(inputs["sequence"], inputs["sequence_mask"])
        self.norm_dyn.fit(inputs["dynamic_features"])

    def set_interval_margins(self, edges_h: list[float], margins: list[float],
                             head_weights: list[float] | None = None) -> None:
        assert len(margins) == len(edges_h) + 1
        head_weights = [1.0] * len(margins) if head_weights is None else head_weights
        assert len(head_weights) == len(margins)
        self.interval_log1p_age_edges = torch.log1p(torch.tensor(edges_h, dtype=torch.float32))
        self.interval_margin = torch.tensor(margins, dtype=torch.float32)
        self.interval_head_weight = torch.tensor(head_weights, dtype=torch.float32)

    def set_blend(self, edges_h: list[float], weights: list[float], intercepts: list[float],
                  slopes: list[float], unobserved: list[float]) -> None:
        """(w, a, b, u) per age bin of blend_with_baseline (baselines.SzaboHuberman's a, b and u)."""
        assert len(weights) == len(intercepts) == len(slopes) == len(unobserved) == len(edges_h) + 1
        as_tensor = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
        self.blend_log1p_age_edges = torch.log1p(as_tensor(edges_h))
        self.blend_weight, self.sh_intercept = as_tensor(weights), as_tensor(intercepts)
        self.sh_slope, self.sh_unobserved = as_tensor(slopes), as_tensor(unobserved)


MTAF = MTAFStatic | MTAFTemporal


def build_mtaf(cfg: MTAFConfig) -> MTAF:
    return MTAFTemporal(cfg) if cfg.temporal else MTAFStatic(cfg)
