"""MTAF models (Ou et al.) as plain torch modules.

MTAF-static: one vector per modality (content-agnostic features, text, visual, audio), each projected to
``d_model``; additive attention over the modalities that are present (``modality_mask``) fuses them; an MLP
head predicts log1p(score at horizon) and a [q10, q90] interval. The text vector is word attention over the
title's MiniLM token states (the encoder stays frozen; its token states are inputs).

MTAF-temporal: the same fusion plus a bi-directional GRU over the resampled early-popularity sequence
(right-aligned window, masked bins before creation, valid at any observation age), additive attention over
time steps, and the observation-time scalars. The head predicts the *growth* over the current score
(``log1p(score now)`` is a dynamic feature), so a prediction is never below what has been observed unless
the data says so.

Both return a dict with the ONNX output names of popscore.features (log_score, log_interval,
modality_weights, word_attention[, time_attention]): the explanations are first-class outputs.

The fusion is its own module (:class:`ContentEncoder`) because it depends on the post only: MTAF-temporal
is served as two graphs (:func:`onnx_graphs`), so a snapshot carries a 64-d content vector to Triton
instead of ~2,200 embedding floats.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from popscore import features as F

NEG = -1e4  # masked attention logit (finite: exports cleanly, softmax weight ~0)


@dataclass
class MTAFConfig:
    static_dim: int
    dynamic_dim: int = 0
    n_bins: int = 0
    n_channels: int = 0
    temporal: bool = False
    text_dim: int = F.TEXT_DIM
    visual_dim: int = F.VISUAL_DIM
    audio_dim: int = F.AUDIO_DIM
    d_model: int = 64
    gru_hidden: int = 48
    dropout: float = 0.1
    modality_dropout: float = 0.2  # training only: randomly hide text/visual/audio so masking is learnt

    def to_dict(self) -> dict:
        return asdict(self)


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


def _mlp(i: int, o: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, o), nn.GELU(), nn.Dropout(dropout), nn.Linear(o, o))


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
        self.out = _mlp(text_dim, d, dropout)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, weights = self.attention(tokens, mask)  # [B, text_dim], [B, L]
        pooled = nn.functional.normalize(pooled, dim=-1)
        return self.out(pooled), weights * mask  # no title: all-zero weights


class ContentEncoder(nn.Module):
    """The per-post half of MTAF: one vector per modality, fused by attention over the present ones.
    Everything it reads is known at upload, so the stream runs it once per post and caches the result."""

    def __init__(self, cfg: MTAFConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.norm_static = Standardize(cfg.static_dim)
        self.content = _mlp(cfg.static_dim, d, cfg.dropout)
        self.text = WordAttention(cfg.text_dim, d, cfg.dropout)
        self.visual = _mlp(cfg.visual_dim, d, cfg.dropout)
        self.audio = _mlp(cfg.audio_dim, d, cfg.dropout)
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


class MTAF(nn.Module):
    def __init__(self, cfg: MTAFConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.encoder = ContentEncoder(cfg)
        head_in = d
        if cfg.temporal:
            self.norm_seq = Standardize(cfg.n_channels)
            self.norm_dyn = Standardize(cfg.dynamic_dim)
            self.gru = nn.GRU(cfg.n_channels + 1, cfg.gru_hidden, batch_first=True, bidirectional=True)
            self.time_attn = AdditiveAttention(2 * cfg.gru_hidden)
            self.dyn = _mlp(cfg.dynamic_dim, d, cfg.dropout)
            head_in = d + 2 * cfg.gru_hidden + 2 * cfg.gru_hidden + d
        self.head = nn.Sequential(
            nn.Linear(head_in, 2 * d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, 3)
        )
        # Added to [q10, q90] after training (split-conformal, per observation age; see calibrate_interval).
        self.register_buffer("interval_log1p_age_edges", torch.zeros(0))
        self.register_buffer("interval_margin", torch.zeros(1))
        # The served point is a blend with Szabo-Huberman, fitted per age on the validation window after
        # training (fit_blend): weight 1 serves MTAF alone, 0 the baseline alone.
        self.register_buffer("blend_log1p_age_edges", torch.zeros(0))
        self.register_buffer("blend_weight", torch.ones(1))
        self.register_buffer("sh_intercept", torch.zeros(1))
        self.register_buffer("sh_slope", torch.ones(1))
        self.register_buffer("sh_unobserved", torch.zeros(1))
        self.log_now_index = F.DYNAMIC_FEATURE_NAMES.index("log1p_score_now")
        self.log_age_index = F.DYNAMIC_FEATURE_NAMES.index("log1p_age_h")

    def forward(
        self,
        static_features: torch.Tensor,
        text_tokens: torch.Tensor,
        text_token_mask: torch.Tensor,
        visual_embedding: torch.Tensor,
        audio_embedding: torch.Tensor,
        modality_mask: torch.Tensor,
        sequence: torch.Tensor | None = None,
        sequence_mask: torch.Tensor | None = None,
        dynamic_features: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        content, modality_weights, word_attention = self.encoder(
            static_features, text_tokens, text_token_mask, visual_embedding, audio_embedding, modality_mask
        )
        return {**self.predict(content, sequence, sequence_mask, dynamic_features),
                "modality_weights": modality_weights, "word_attention": word_attention}

    def predict(
        self,
        content_vector: torch.Tensor,
        sequence: torch.Tensor | None = None,
        sequence_mask: torch.Tensor | None = None,
        dynamic_features: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The per-snapshot half (the whole head for MTAF-static): log_score, log_interval[, time_attention]."""
        out: dict[str, torch.Tensor] = {}
        fused, base = content_vector, torch.zeros_like(content_vector[:, :1])
        margin = self.interval_margin[:1].expand_as(base)  # static: one margin
        if self.cfg.temporal:
            assert sequence is not None and sequence_mask is not None and dynamic_features is not None
            m = sequence_mask.unsqueeze(-1)
            x = torch.cat([self.norm_seq(sequence) * m, m], dim=-1)
            states, last = self.gru(x)  # [B, T, 2H], [2, B, H]
            ctx, time_w = self.time_attn(states, sequence_mask)
            last = torch.cat([last[0], last[1]], dim=-1)
            dyn = self.dyn(self.norm_dyn(dynamic_features))
            fused = torch.cat([fused, ctx, last, dyn], dim=-1)
            base = dynamic_features[:, self.log_now_index : self.log_now_index + 1]
            log_age = dynamic_features[:, self.log_age_index : self.log_age_index + 1]
            margin = piecewise_in_age(self.interval_log1p_age_edges, self.interval_margin, log_age)
            out["time_attention"] = time_w
        raw = self.head(fused)
        mean = base + raw[:, :1]
        if self.cfg.temporal:
            weight = piecewise_in_age(self.blend_log1p_age_edges, self.blend_weight, log_age)
            line = (piecewise_in_age(self.blend_log1p_age_edges, self.sh_intercept, log_age)
                    + piecewise_in_age(self.blend_log1p_age_edges, self.sh_slope, log_age) * base)
            unobserved = piecewise_in_age(self.blend_log1p_age_edges, self.sh_unobserved, log_age)
            baseline = torch.where(base > 0, line, unobserved)
            mean = weight * mean + (1 - weight) * baseline
        lo = mean - nn.functional.softplus(raw[:, 1:2]) - margin
        hi = mean + nn.functional.softplus(raw[:, 2:3]) + margin
        # A negative conformal margin may cut into a narrow interval: the point always stays inside.
        lo, hi = torch.minimum(lo, mean), torch.maximum(hi, mean)
        return {"log_score": mean, "log_interval": torch.cat([lo, hi], dim=-1), **out}

    def set_interval_margin(self, edges_h: list[float], margins: list[float]) -> None:
        assert len(margins) == len(edges_h) + 1
        self.interval_log1p_age_edges = torch.log1p(torch.tensor(edges_h, dtype=torch.float32))
        self.interval_margin = torch.tensor(margins, dtype=torch.float32)

    def set_blend(self, edges_h: list[float], weights: list[float], intercepts: list[float],
                  slopes: list[float], unobserved: list[float]) -> None:
        """Serve ``w * MTAF + (1 - w) * SH`` with SH = ``a + b * log1p(score now)`` once the post has a count,
        ``u`` before; (w, a, b, u) per age bin (baselines.SzaboHuberman)."""
        assert len(weights) == len(intercepts) == len(slopes) == len(unobserved) == len(edges_h) + 1
        as_tensor = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
        self.blend_log1p_age_edges = torch.log1p(as_tensor(edges_h))
        self.blend_weight, self.sh_intercept = as_tensor(weights), as_tensor(intercepts)
        self.sh_slope, self.sh_unobserved = as_tensor(slopes), as_tensor(unobserved)

    def input_names(self) -> list[str]:
        """Every raw input of the whole model (training and the static export)."""
        names = [t.name for t in F.STATIC_INPUTS]
        return names + ["sequence", "sequence_mask", "dynamic_features"] if self.cfg.temporal else names

    def output_names(self) -> list[str]:
        return [t.name for t in F.STATIC_OUTPUTS] + (["time_attention"] if self.cfg.temporal else [])

    def init_output_bias(self, value: float) -> None:
        """Start the head at the mean target (growth for the temporal model): short runs converge."""
        with torch.no_grad():
            self.head[-1].bias[0] = value

    def fit_normalisers(self, inputs: dict[str, torch.Tensor]) -> None:
        self.encoder.norm_static.fit(inputs["static_features"])
        if self.cfg.temporal:
            self.norm_seq.fit(inputs["sequence"], inputs["sequence_mask"])
            self.norm_dyn.fit(inputs["dynamic_features"])


def piecewise_in_age(log1p_edges: torch.Tensor, values: torch.Tensor, log1p_age_h: torch.Tensor) -> torch.Tensor:
    """values[k] for ages in [edge[k-1], edge[k]): comparisons only (in log1p space, as the feature is), so it
    exports to any ONNX opset."""
    out = values[0] + torch.zeros_like(log1p_age_h)
    for k in range(log1p_edges.shape[0]):
        out = out + (log1p_age_h >= log1p_edges[k]).float() * (values[k + 1] - values[k])
    return out


def config_for(spec: F.FeatureSpec, temporal: bool, **kw) -> MTAFConfig:
    return MTAFConfig(
        static_dim=spec.static_dim,
        dynamic_dim=spec.dynamic_dim if temporal else 0,
        n_bins=spec.n_bins if temporal else 0,
        n_channels=spec.n_channels if temporal else 0,
        temporal=temporal,
        **kw,
    )


@dataclass(frozen=True)
class OnnxGraph:
    """One exported graph: which served model it becomes, the module to trace, its I/O names."""

    kind: str  # one of popscore.features.MODEL_KINDS
    module: nn.Module
    input_names: list[str]
    output_names: list[str]


class _PositionalOutputs(nn.Module):
    """Positional inputs in contract order, tuple outputs in contract order (what torch.onnx.export wants)."""

    def __init__(self, fn, input_names: list[str], output_names: list[str], owner: nn.Module) -> None:
        super().__init__()
        self.owner = owner
        self.fn, self.input_names, self.output_names = fn, input_names, output_names

    def forward(self, *args: torch.Tensor):
        out = self.fn(**dict(zip(self.input_names, args)))
        return tuple(out[n] for n in self.output_names)


def onnx_graphs(model: MTAF) -> list[OnnxGraph]:
    """MTAF-static is one graph. MTAF-temporal is two, served side by side with the same version: the
    content encoder (once per post) and the head (per snapshot, from the cached content vector)."""
    if not model.cfg.temporal:
        names, outs = model.input_names(), model.output_names()
        return [OnnxGraph("static", _PositionalOutputs(model, names, outs, model), names, outs)]

    def encode(**inputs):
        content_vector, modality_weights, word_attention = model.encoder(**inputs)
        return {"content_vector": content_vector, "modality_weights": modality_weights,
                "word_attention": word_attention}

    content_in = [t.name for t in F.STATIC_INPUTS]
    content_out = [t.name for t in F.content_outputs(model.cfg.d_model)]
    head_in = [t.name for t in F.temporal_inputs(F.DEFAULT_SPEC, model.cfg.d_model)]
    head_out = [t.name for t in F.TEMPORAL_OUTPUTS]
    return [
        OnnxGraph("content", _PositionalOutputs(encode, content_in, content_out, model), content_in, content_out),
        OnnxGraph("temporal", _PositionalOutputs(model.predict, head_in, head_out, model), head_in, head_out),
    ]
