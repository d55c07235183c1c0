"""Audio encoder: the aiSFX sound-effects embedding network (ISMIR 2022, "X-Sequential-CE") from the PyPI package
``aisfx``: a 512-d embedding per block of ~2.3 s (100 spectrogram frames, hop 50 frames ~1.16 s), and a clip
embedding = mean of its blocks.

The package itself is not usable as shipped: its wheel pins numpy==1.23 and librosa==0.9.2 (install it with
``pip install --no-deps aisfx``), its loader fails on torch >= 2.6 (``torch.load`` now defaults to
weights_only=True and the checkpoint pickles numpy scalars), and its librosa spectrogram comes out
[mel, frames] where the model blocks along frames. So this module reproduces the package's librosa path in numpy
alone (no librosa, numba or resampy needed), with the spectrogram transposed to [frames, mel]:

    decode -> mono float32 (mean of channels) -> 44.1 kHz (if the file is at another rate: resampy's kaiser_best
    sinc interpolation, which librosa 0.9.2's load used, here in numpy) -> divide by the peak |sample| -> |STFT|^2
    (n_fft = win = 2048, hop 1024, periodic Hann, centred with zero padding) -> 96 HTK-mel bands 0-22050 Hz,
    each filter L1-normalised (librosa.filters.mel(htk=True, norm=1.0)) -> log10(10000 * S + 1)
    -> transpose to [frames, 96] -> / 9.457798957824707 (the package's "original" min-max normalisation)
    -> blocks of 100 frames, hop 50, the last partial block dropped (at least one block, zero-padded).

:func:`mel_filterbank` equals librosa's filterbank and :func:`log_mel_spectrogram` librosa's melspectrogram
(tests/train/test_media_encoders.py checks both where librosa imports; docs/training.md has the numbers).
:class:`AisfxEmbeddingNet` is the package's ``EmbeddingNet('max', 3, 1, 64)`` as a plain module, loaded by name
from the ``embedding_net.*`` entries of the package's checkpoint.

``export_audio_encoder`` writes ``<repo>/popscore_audio_encoder/<n>/model.onnx``: input ``mel_blocks`` FP32
[batch, 100, 96] (what :func:`preprocess_audio` returns), output ``audio_embedding`` FP32 [batch, 512]; the
spectrogram and the pooling over a clip's blocks stay on the client, like the text encoder's tokenizer.
"""

from __future__ import annotations

import functools
import json
import tempfile
import wave
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from popscore.trainer.encoders import CACHE_DIR
from popscore.trainer.image_encoder import (
    MediaDecodeError,
    compare,
    config_pbtxt,
    export_onnx,
    onnx_run,
    sha256_file,
    write_triton_model,
    cached_file_embeddings,
)

MODEL_NAME = "popscore_audio_encoder"
SOURCE_PACKAGE = "aisfx"
EMBEDDING_DIM = 512
# aisfx.inference constants
SAMPLE_RATE = 44100
N_FFT = 2048  # SPEC_BLOCK_LENGTH (the package passes it as win_length; n_fft is librosa's default 2048)
HOP_LENGTH = 1024  # SPEC_HOP_LENGTH
N_MELS = 96
F_MIN, F_MAX = 0.0, 22050.0
BLOCK_FRAMES = 100  # EMB_BLOCK_LENGTH
BLOCK_HOP = 50  # round(EMB_BLOCK_LENGTH * emb_hop_size 0.5), the paper's 1 s hop
SPEC_MAX = 9.457798957824707  # aisfx.preprocessing.spectrogram_normalize 'original' (min 0)
PREPROCESS_VERSION = 1  # bump when the preprocessing changes: cached embeddings are keyed by it
INPUT_NAME = "mel_blocks"
OUTPUT_NAME = "audio_embedding"
ONNX_MAX_ABS_DIFF = 1e-4


# ---------------------------------------------------------------------------------------------------- the model


class ConvBlock(nn.Module):
    """Two 3x3 convolutions (no bias, padding 1) each followed by BatchNorm and ReLU, then max pooling."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.max_pool2d(x, pool) if pool > 1 else x  # the package's 1x1 max pool is the identity


class AisfxEmbeddingNet(nn.Module):
    """forward: normalised log-mel blocks [batch, frames, 96] -> [batch, 512]: four conv blocks (64, 128, 256,
    512 channels; 2x2 max pooling after the first three), mean over frequency, max over time."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.conv_block1 = ConvBlock(1, width)
        self.conv_block2 = ConvBlock(width, width * 2)
        self.conv_block3 = ConvBlock(width * 2, width * 4)
        self.conv_block4 = ConvBlock(width * 4, width * 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)
        x = self.conv_block1(x, 2)
        x = self.conv_block2(x, 2)
        x = self.conv_block3(x, 2)
        x = self.conv_block4(x, 1)
        return x.mean(dim=3).amax(dim=2)


def weights_path() -> Path:
    import aisfx.inference

    return Path(aisfx.inference.get_path_modelWeights())


def load_checkpoint() -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict of the package's CrossNet, its dataset -> (index, classes) table)."""
    path = weights_path()
    import aisfx

    if Path(aisfx.__file__).resolve().parent not in path.resolve().parents:
        raise RuntimeError(f"aisfx checkpoint outside the installed package: {path}")
    # weights_only=False: the checkpoint pickles numpy scalars (the class counts), which torch >= 2.6's default
    # weights-only unpickler refuses. This is the trusted file shipped INSIDE the installed aisfx package (checked
    # just above), never user-supplied data; do not reuse this call for any other path.
    weights, ds_dict = torch.load(path, map_location="cpu", weights_only=False)
    return weights, ds_dict


def load_model(threads: int | None = None) -> AisfxEmbeddingNet:
    if threads:
        torch.set_num_threads(threads)
    weights, _ = load_checkpoint()
    prefix = "embedding_net."
    state = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    model = AisfxEmbeddingNet()
    model.load_state_dict(state, strict=True)
    return model.eval()


def encoder_version() -> str:
    return f"aisfx-{sha256_file(weights_path())[:12]}-p{PREPROCESS_VERSION}"


# ---------------------------------------------------------------------------------------------- preprocessing


def _hz_to_mel_htk(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz_htk(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=4)
def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = F_MIN,
                   fmax: float = F_MAX) -> np.ndarray:
    """[n_mels, 1 + n_fft // 2] float32: librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=True, norm=1.0),
    the same arithmetic (float64 triangles on HTK-mel-spaced edges, stored float32, each row divided by its sum)."""
    fftfreqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = _mel_to_hz_htk(np.linspace(_hz_to_mel_htk(fmin), _hz_to_mel_htk(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    for i in range(n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    length = np.abs(weights).astype(np.float64).sum(axis=1, keepdims=True)
    length[length < np.finfo(np.float32).tiny] = 1.0
    weights = (weights / length).astype(np.float32)
    weights.setflags(write=False)
    return weights


def power_spectrogram(y: np.ndarray, n_fft: int = N_FFT, hop: int = HOP_LENGTH) -> np.ndarray:
    """|STFT|^2 [1 + n_fft // 2, frames] float64 as librosa.stft(center=True, pad_mode='constant', window='hann')."""
    y = np.pad(np.asarray(y, dtype=np.float32), n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(y, n_fft)[::hop]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann (scipy fftbins=True)
    spec = np.fft.rfft(frames * window, axis=1)
    return (spec.real ** 2 + spec.imag ** 2).T


def log_mel_spectrogram(y: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Peak-normalised waveform -> log10(10000 * mel power + 1), [96, frames] float32 as aisfx's librosa helper
    returns it (before the transpose)."""
    mel = mel_filterbank(sr).astype(np.float64) @ power_spectrogram(y)
    return np.log10(mel * 10000.0 + 1.0).astype(np.float32)


# resampy's "kaiser_best" filter (what librosa 0.9.2's load used, res_type='kaiser_best'), rebuilt rather than
# shipped: a Kaiser-windowed sinc, 50 zero crossings, 2^13 table points per crossing. These parameters reproduce
# resampy 0.4's data/kaiser_best.npz to 1.8e-12 (fitted once against the file; docs/training.md).
RESAMPLE_ZEROS = 50
RESAMPLE_PRECISION = 1 << 13
RESAMPLE_ROLLOFF = 0.9173473712608761
RESAMPLE_BETA = 12.984585250324939


@functools.lru_cache(maxsize=1)
def _kaiser_best_half_window() -> np.ndarray:
    from scipy.signal.windows import kaiser

    n = RESAMPLE_PRECISION * RESAMPLE_ZEROS
    sinc = RESAMPLE_ROLLOFF * np.sinc(RESAMPLE_ROLLOFF * np.linspace(0, RESAMPLE_ZEROS, num=n + 1, endpoint=True))
    return kaiser(2 * n + 1, beta=RESAMPLE_BETA)[n:] * sinc


def resample(y: np.ndarray, sr: int, target: int = SAMPLE_RATE, chunk: int = 4096) -> np.ndarray:
    """Band-limited sinc interpolation to ``target`` Hz: resampy.resample(filter='kaiser_best') (the loop of
    resampy.interpn, vectorised over output samples) followed by librosa's fix_length to ceil(n * ratio)."""
    if sr == target:
        return y
    ratio = float(target) / float(sr)
    x = np.asarray(y, dtype=np.float64)
    n_orig, n_out = len(x), int(len(x) * ratio)
    win = _kaiser_best_half_window() * (ratio if ratio < 1 else 1.0)
    delta = np.diff(win, append=win[-1])
    scale = min(1.0, ratio)
    step = int(scale * RESAMPLE_PRECISION)
    taps = (len(win) + step - 1) // step  # an upper bound on either wing's length
    out = np.zeros(n_out, dtype=np.float64)
    j = np.arange(taps)
    for lo in range(0, n_out, chunk):
        t = np.arange(lo, min(lo + chunk, n_out)) * (1.0 / ratio)
        n = t.astype(np.int64)
        frac = scale * (t - n)
        acc = np.zeros(len(t))
        for side, sign in ((frac, -1), (scale - frac, 1)):
            index = side * RESAMPLE_PRECISION
            offset = index.astype(np.int64)
            eta = index - offset
            limit = np.minimum(n + 1 if sign < 0 else n_orig - n - 1, (len(win) - offset) // step)
            pos = offset[:, None] + j[None, :] * step
            valid = j[None, :] < limit[:, None]
            pos = np.where(valid, pos, 0)
            weight = win[pos] + eta[:, None] * delta[pos]
            src = n[:, None] - j[None, :] if sign < 0 else n[:, None] + 1 + j[None, :]
            acc += np.where(valid, weight * x[np.clip(src, 0, n_orig - 1)], 0.0).sum(axis=1)
        out[lo:lo + len(t)] = acc
    n_fixed = int(np.ceil(n_orig * ratio))
    out = np.pad(out, (0, max(0, n_fixed - n_out)))[:n_fixed]
    return out.astype(np.float32)


def block_spectrogram(spec: np.ndarray, block: int = BLOCK_FRAMES, hop: int = BLOCK_HOP) -> np.ndarray:
    """[frames, 96] -> [blocks, block, 96] as aisfx.preprocessing.blocking(drop_partial_block=True): the last
    incomplete block is dropped unless it would be the only one (then it is zero-padded)."""
    n = spec.shape[0]
    num = int(np.ceil((n - block) / hop + 1))
    if (n - block) % hop != 0:
        num -= 1
    num = max(num, 1)
    padded = np.vstack((spec, np.zeros((block, spec.shape[1]), spec.dtype)))
    return np.stack([padded[i * hop:i * hop + block] for i in range(num)]).astype(np.float32)


def preprocess_audio(y: np.ndarray, sr: int) -> np.ndarray:
    """Mono waveform at ``sr`` Hz -> model input [blocks, 100, 96] float32."""
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"expected a non-empty mono waveform, got shape {y.shape}")
    y = resample(y, sr)
    peak = float(np.max(np.abs(y)))
    y = y / (peak if peak > 0 else 1.0)
    spec = log_mel_spectrogram(y).T / np.float32(SPEC_MAX)  # [frames, mel]: the transpose the package missed
    return block_spectrogram(spec)


def read_wav(path: Path | str) -> tuple[np.ndarray, int]:
    """PCM WAV (8/16/24/32-bit integer, any channel count) -> (mono float32 in [-1, 1), sample rate), scaled
    as soundfile does and mixed to mono as librosa does (mean of channels). :class:`MediaDecodeError` otherwise."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, sr, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError, OSError, RuntimeError, ValueError) as exc:  # wave raises all of these
        raise MediaDecodeError(f"cannot decode audio {path}: {exc} (PCM WAV only; convert other formats, "
                               "e.g. `ffmpeg -i in.mp3 -ac 1 -ar 44100 out.wav`)") from exc
    if n == 0 or len(raw) < width * channels:
        raise MediaDecodeError(f"cannot decode audio {path}: no samples")
    if len(raw) % (width * channels):
        raise MediaDecodeError(f"cannot decode audio {path}: truncated data ({len(raw)} bytes)")
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)).astype(np.float32)
    elif width == 4:
        x = (np.frombuffer(raw, "<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
    else:
        raise MediaDecodeError(f"cannot decode audio {path}: unsupported sample width {width}")
    return x.reshape(-1, channels).mean(axis=1).astype(np.float32), sr


def write_wav(path: Path | str, y: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """Mono float waveform in [-1, 1] -> 16-bit PCM WAV (tests, examples)."""
    pcm = np.clip(np.round(np.asarray(y, dtype=np.float64) * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sr))
        w.writeframes(pcm.tobytes())


def read_audio(path: Path | str) -> np.ndarray:
    """Decode and preprocess one WAV file -> [blocks, 100, 96]."""
    y, sr = read_wav(path)
    try:
        return preprocess_audio(y, sr)
    except ValueError as exc:
        raise MediaDecodeError(f"cannot decode audio {path}: {exc}") from exc


# ------------------------------------------------------------------------------------------------- embeddings


@dataclass(frozen=True)
class AudioEmbedding:
    blocks: np.ndarray  # [n_blocks, 512]
    clip: np.ndarray  # [512], mean of the blocks


def embed_blocks(model: AisfxEmbeddingNet, blocks: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """[n, 100, 96] -> [n, 512] float32."""
    out = [np.zeros((0, EMBEDDING_DIM), np.float32)]
    with torch.inference_mode():
        for lo in range(0, len(blocks), batch_size):
            out.append(model(torch.from_numpy(np.ascontiguousarray(blocks[lo:lo + batch_size]))).numpy())
    return np.concatenate(out)


def embed_waveform(y: np.ndarray, sr: int, model: AisfxEmbeddingNet | None = None) -> AudioEmbedding:
    blocks = embed_blocks(model or load_model(), preprocess_audio(y, sr))
    return AudioEmbedding(blocks, blocks.mean(axis=0))


def embed_files(paths: Sequence[Path | str], cache_dir: Path = CACHE_DIR, model: AisfxEmbeddingNet | None = None,
                batch_size: int = 32) -> list[AudioEmbedding]:
    """WAV files -> one AudioEmbedding each (per-block [n, 512] and the pooled clip [512]); the per-block arrays
    are cached on disk per file content and encoder version. The model is loaded only when something is not
    cached. Raises MediaDecodeError naming the first unreadable file."""
    holder: list[AisfxEmbeddingNet] = [model] if model is not None else []

    def compute(batch: list[Path]) -> list[np.ndarray]:
        inputs = [read_audio(p) for p in batch]
        if not holder:
            holder.append(load_model())
        return [embed_blocks(holder[0], x, batch_size) for x in inputs]

    arrays = cached_file_embeddings(paths, cache_dir, "audio", encoder_version(), compute, batch_size=8)
    return [AudioEmbedding(a, a.mean(axis=0)) for a in arrays]


def clip_embeddings(paths: Sequence[Path | str], cache_dir: Path = CACHE_DIR) -> np.ndarray:
    """WAV files -> [N, 512] pooled clip embeddings (cached as in :func:`embed_files`)."""
    found = embed_files(paths, cache_dir)
    return np.stack([e.clip for e in found]) if found else np.zeros((0, EMBEDDING_DIM), np.float32)


# ---------------------------------------------------------------------------------------------- ONNX / Triton


def synthetic_waveforms(seed: int = 0, seconds: float = 3.0, sr: int = SAMPLE_RATE) -> list[np.ndarray]:
    """Deterministic test sounds: a 440 Hz tone, a chirp, white noise, decaying clicks, a chord with noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    clicks = np.zeros_like(t)
    clicks[:: sr // 4] = 1.0
    clicks = np.convolve(clicks, np.exp(-np.arange(2000) / 200.0))[: len(t)]
    return [
        0.5 * np.sin(2 * np.pi * 440 * t),
        0.5 * np.sin(2 * np.pi * (200 + 2000 * t / seconds) * t),
        0.3 * rng.standard_normal(len(t)),
        clicks,
        0.2 * sum(np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0)) + 0.05 * rng.standard_normal(len(t)),
    ]


def export_audio_encoder(repo: Path = Path("model_repo"), *, max_batch_size: int = 64, threads: int = 2,
                         log=print) -> dict[str, Any]:
    """Export the aiSFX embedding network to ONNX, check it against the PyTorch module on synthetic sounds (max
    abs diff <= 1e-4, any batch size) and add it as a new version of repo/popscore_audio_encoder. Raises
    RuntimeError (writing nothing into ``repo``) if the check fails."""
    torch.set_num_threads(threads)
    model = load_model()
    blocks = np.concatenate([preprocess_audio(y, SAMPLE_RATE) for y in synthetic_waveforms(seconds=6.0)])
    reference = embed_blocks(model, blocks)
    with tempfile.TemporaryDirectory(prefix="audio-export-") as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        log(f"exporting fp32 ONNX (input [batch, {BLOCK_FRAMES}, {N_MELS}])")
        export_onnx(model, torch.from_numpy(blocks[:2]), onnx_file, INPUT_NAME, OUTPUT_NAME)
        parity = compare(reference, onnx_run(onnx_file, blocks, INPUT_NAME, OUTPUT_NAME, batch=3, threads=threads))
        log(f"ONNX vs PyTorch on {len(blocks)} blocks of synthetic sounds: {parity}")
        if not parity["max_abs_diff"] <= ONNX_MAX_ABS_DIFF:
            raise RuntimeError(f"ONNX export differs from PyTorch: {parity}")
        meta = {
            "source_package": SOURCE_PACKAGE,
            "source_package_version": importlib_metadata.version(SOURCE_PACKAGE),
            "source_model": "aiSFX X-Sequential-CE EmbeddingNet('max', 3, 1, 64) (ISMIR 2022)",
            "weights_sha256": sha256_file(weights_path()),
            "encoder_version": encoder_version(),
            "embedding_dim": EMBEDDING_DIM,
            "inputs": [INPUT_NAME], "outputs": [OUTPUT_NAME],
            "input_shape": [BLOCK_FRAMES, N_MELS],
            "preprocessing": (f"mono, {SAMPLE_RATE} Hz, peak-normalised; |STFT|^2 n_fft {N_FFT} hop {HOP_LENGTH} "
                              f"hann centred; {N_MELS} HTK mel bands {F_MIN:g}-{F_MAX:g} Hz L1-normalised; "
                              f"log10(1e4 x + 1) / {SPEC_MAX}; [frames, mel] blocks of {BLOCK_FRAMES} hop "
                              f"{BLOCK_HOP} (popscore.trainer.audio_encoder.preprocess_audio); clip = mean of blocks"),
            "opset": 17,
            "parity_reference": f"PyTorch module popscore.trainer.audio_encoder.AisfxEmbeddingNet (torch {torch.__version__})",
            "parity": parity,
        }
        vdir = write_triton_model(repo, MODEL_NAME, onnx_file,
                                  config_pbtxt(MODEL_NAME, INPUT_NAME, [BLOCK_FRAMES, N_MELS], OUTPUT_NAME,
                                               EMBEDDING_DIM, max_batch_size), meta)
    log(f"wrote {vdir}")
    return json.loads((vdir / "metadata.json").read_text())
