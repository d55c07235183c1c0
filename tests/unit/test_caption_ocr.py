"""Caption OCR of the memes study (trainer/caption_ocr.py): which words count, Tesseract's TSV, the cache, and
(only where the ``tesseract`` command is installed) one rendered caption read back."""

from __future__ import annotations

import pytest

from popscore.trainer import caption_ocr as ocr


def test_caption_words_keep_confident_words_with_letters():
    words = [("When", 96.0), ("you're", 91.0), ("a", 95.0), ("|", 90.0), ("1234", 95.0), ("x7%#", 80.0),
             ("plan", 30.0), ("Sharks”", 88.0)]
    assert ocr.caption_words(words) == ["When", "you're", "Sharks”"]
    assert ocr.caption_words(words, min_confidence=20.0) == ["When", "you're", "plan", "Sharks”"]


def test_parse_tsv_reads_only_word_rows():
    header = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext"
    rows = [header, "1\t1\t0\t0\t0\t0\t0\t0\t300\t80\t-1\t", "5\t1\t1\t1\t1\t1\t10\t20\t90\t30\t96.2\tSHARKS",
            "5\t1\t1\t1\t1\t2\t110\t20\t90\t30\t40.5\tev3ry", "5\t1\t1\t1\t1\t3\t210\t20\t9\t30\t95.0\t "]
    assert ocr.parse_tsv("\n".join(rows)) == [("SHARKS", 96.2), ("ev3ry", 40.5)]
    assert ocr.parse_tsv("") == []


def test_cached_ocr_runs_once_per_picture_content(tmp_path, monkeypatch):
    a, b, same_as_a = tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "c.jpg"
    a.write_bytes(b"one"), b.write_bytes(b"two"), same_as_a.write_bytes(b"one")
    calls = []

    def fake_ocr(path):
        calls.append(path)
        return [(f"word{len(calls)}", 90.0)], 0.5

    monkeypatch.setattr(ocr, "ocr_picture", fake_ocr)
    first = ocr.cached_ocr([a, b], cache_dir=tmp_path / "cache")
    again = ocr.cached_ocr([same_as_a, b, a], cache_dir=tmp_path / "cache")
    assert len(calls) == 2  # the second pass and the copy of a come from the cache
    assert [r["words"] for r in again] == [first[0]["words"], first[1]["words"], first[0]["words"]]
    assert ocr.caption_texts(again) == ["word1", "word2", "word1"]


@pytest.mark.skipif(not ocr.tesseract_available(), reason="the tesseract command is not installed")
def test_tesseract_reads_a_rendered_caption(tmp_path):
    from PIL import Image, ImageDraw, ImageFont

    picture = Image.new("RGB", (300, 80), "white")
    ImageDraw.Draw(picture).text((10, 20), "SHARKS EVERYWHERE", fill="black", font=ImageFont.load_default(size=28))
    picture.save(tmp_path / "caption.png")
    words, seconds = ocr.ocr_picture(tmp_path / "caption.png")
    assert ocr.caption_words(words) == ["SHARKS", "EVERYWHERE"] and seconds > 0
