"""Title tokenisation for the served text encoder (``model_repo/popscore_text_encoder``), shared by the
trainer and the stream worker so both feed the ONNX encoder identical tensors.

Needs only ``tokenizers`` and numpy (no torch, no transformers). ``tokenizer.json`` is the one shipped
with all-MiniLM-L6-v2 (BERT WordPiece, lowercasing, ``[CLS] ... [SEP]``); it is copied next to each
exported ``model.onnx``. Outputs are padded to a FIXED ``max_length`` (Triton's dynamic batcher only
concatenates requests whose shapes agree) and truncated beyond it, like sentence-transformers does at
its ``max_seq_length``. Padding does not change the embedding: the encoder masks padded positions in
attention and in the mean pooling. From version 2 the encoder also outputs ``token_states``
[batch, max_length, 384], MiniLM's per-token hidden states with padded positions zeroed, for word attention.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "text_embedding"
TOKEN_STATES_NAME = "token_states"
OUTPUT_NAMES = (OUTPUT_NAME, TOKEN_STATES_NAME)
EMBEDDING_DIM = 384


class TitleTokenizer:
    def __init__(self, tokenizer, max_length: int) -> None:
        if max_length < 2:
            raise ValueError("max_length must leave room for [CLS] and [SEP]")
        self.max_length = int(max_length)
        self.tokenizer = tokenizer
        pad_id = tokenizer.token_to_id("[PAD]")
        tokenizer.enable_truncation(max_length=self.max_length)
        tokenizer.enable_padding(length=self.max_length, pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")

    @classmethod
    def from_file(cls, tokenizer_json_path: str | Path, max_length: int) -> "TitleTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(tokenizer_json_path)), max_length)

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """``input_ids`` and ``attention_mask``, int64 arrays of shape [len(texts), max_length].
        A missing title (None or not a string) is encoded as the empty string."""
        texts = [t if isinstance(t, str) else "" for t in texts]
        if not texts:
            empty = np.zeros((0, self.max_length), dtype=np.int64)
            return {"input_ids": empty, "attention_mask": empty.copy()}
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }

    def wordpieces(self, encoded: dict[str, np.ndarray]) -> list[list[str]]:
        """Per title of ``encode``'s output, its unpadded wordpieces ([CLS] ... [SEP]): what word-attention
        weights are over."""
        vocab = self.tokenizer.id_to_token
        return [[vocab(int(i)) for i in ids[m > 0]] for ids, m in zip(encoded["input_ids"], encoded["attention_mask"])]
