"""Infer: scoring jobs -> model outputs, through Triton (or the local runtime the predictor falls back to); and
the two inferences features need of the served models: titles' token states (the text encoder) and posts'
content vectors (the per-post half of MTAF-temporal)."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from popscore.serving.model_sets import ModelSet
from popscore.stream.served_models import ServedModels
from popscore.stream.stages.features import ScoringJob

Inferred = tuple[list, float]  # a job's inference results, and the seconds they took


class Infer:
    def __init__(self, models: ServedModels) -> None:
        self.models = models
        self._tokenizer = None  # (encoder version, TitleTokenizer) of the served text encoder

    async def jobs(self, jobs: list[ScoringJob]) -> list[Inferred]:
        """Each job's inference, concurrently; nothing for the fallback's, which runs no model."""
        if len(jobs) == 1:
            return [await self._job(jobs[0])]
        return list(await asyncio.gather(*(self._job(job) for job in jobs)))

    async def _job(self, job: ScoringJob) -> Inferred:
        if job.model_set is None:
            return [], 0.0
        predictor = job.model_set.predictors[job.kind]
        started = time.perf_counter()
        results = await predictor.infer({t.name: job.inputs[t.name] for t in predictor.model.config.input})
        return results, time.perf_counter() - started

    async def content_vectors(self, model_set: ModelSet, inputs: dict[str, np.ndarray]
                              ) -> tuple[np.ndarray, np.ndarray]:
        """(content vectors, modality weights) of the set's content model."""
        predictor = model_set.predictors["content"]
        results = await predictor.infer({t.name: inputs[t.name] for t in predictor.model.config.input})
        return (np.concatenate([r.outputs["content_vector"] for r in results]),
                np.concatenate([r.outputs["modality_weights"] for r in results]))

    @property
    def encodes_pictures(self) -> bool:
        return self.models.image_encoder is not None

    @property
    def picture_batch(self) -> int:
        """Pictures per encoder request: the served encoder's ``max_batch_size``."""
        return self.models.image_encoder.max_batch_size

    async def embed_pictures(self, pictures: list[np.ndarray]) -> np.ndarray:
        """[N, 1280] embeddings of preprocessed pictures ([3, 224, 224] each) from the served image encoder: one
        batch for all the pictures and frames of a micro-batch's posts."""
        encoder = self.models.image_encoder
        results = await encoder.infer({"image": np.stack(pictures).astype(np.float32, copy=False)})
        return np.concatenate([r.outputs["image_embedding"] for r in results])

    @property
    def embeds_titles(self) -> bool:
        return self.models.text_encoder is not None

    async def embed_titles(self, titles: list[str]) -> tuple[dict[str, np.ndarray], list[list[str]]] | None:
        """The titles' token states and mask from the served text encoder (the ONNX file the trainer encodes
        with), and their wordpieces, which name the word-attention weights. None if the encoder is off."""
        text_encoder = self.models.text_encoder
        if text_encoder is None:
            return None
        from popscore.text_encoding import TOKEN_STATES_NAME, TitleTokenizer

        version = text_encoder.version
        if self._tokenizer is None or self._tokenizer[0] != version:
            meta = text_encoder.metadata
            path = text_encoder.model.path / str(version) / "tokenizer.json"
            self._tokenizer = (version, TitleTokenizer.from_file(path, max_length=meta["max_length"]))
        tokenizer = self._tokenizer[1]
        tokens = tokenizer.encode(titles)
        results = await text_encoder.infer(tokens)
        states = np.concatenate([r.outputs[TOKEN_STATES_NAME] for r in results])
        mask = tokens["attention_mask"] > 0
        return {"text_tokens": states, "text_token_mask": mask.astype(np.float32)}, tokenizer.wordpieces(tokens)
