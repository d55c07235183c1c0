"""Word attention (trainer/models.py): masked, a distribution over the title's tokens, and at the start of
training exactly MiniLM's own sentence embedding (mean pooling + L2 normalisation) fed to the text MLP."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from popscore.trainer.models import WordAttention  # noqa: E402


def _tokens(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(3, 6, 384, generator=g) * 3
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    return tokens * mask.unsqueeze(-1), mask


def test_at_initialisation_it_is_minilm_mean_pooling():
    torch.manual_seed(0)
    words = WordAttention(384, 64, dropout=0.0).eval()
    tokens, mask = _tokens()
    out, weights = words(tokens, mask)
    mean = (tokens * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    expected = words.out(torch.nn.functional.normalize(mean, dim=-1))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weights[0], torch.tensor([0.25, 0.25, 0.25, 0.25, 0, 0]))


def test_learnt_scores_move_weight_between_tokens_but_never_onto_padding():
    torch.manual_seed(0)
    words = WordAttention(384, 64, dropout=0.0).eval()
    with torch.no_grad():
        words.attention.v.weight.normal_()
    tokens, mask = _tokens()
    _, weights = words(tokens, mask)
    torch.testing.assert_close(weights.sum(1), torch.tensor([1.0, 1.0, 0.0]))
    assert (weights[mask == 0] == 0).all()
    assert weights[0, :4].std() > 1e-3  # no longer uniform
