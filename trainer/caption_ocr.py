"""Caption text read off meme pictures with Tesseract (issue 20's study: memes carry their joke as text in the
picture, which the frozen ImageNet encoder does not read).

The ``tesseract`` command line (Debian ``tesseract-ocr`` 5.3) is called once per picture through a subprocess;
it is a study dependency, not a served one, so everything here works without it installed:
:func:`tesseract_available` says whether it is, and the recipe skips the OCR models when it is not.

The data set's pictures are small (shorter side 256 px), so caption letters are 8-15 px high, below what
Tesseract reads well; each picture is upscaled 3x (Lanczos) and turned grey before OCR, which turned most
captions from nothing into the right words in a hand check. Tesseract's word list (TSV) is cached per picture
content under ``.popscore/cache/ocr/<OCR_VERSION>/<sha256>.json`` with its confidences and the seconds it took;
which words count as caption text (:func:`caption_words`) is decided when reading, so it can change without
running OCR again.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterable, Sequence

from popscore.trainer.encoders import CACHE_DIR
from popscore.trainer.text_export import sha256_file

UPSCALE = 3
PAGE_SEGMENTATION = 3  # Tesseract's default: automatic layout, no orientation detection
OCR_VERSION = f"tesseract-x{UPSCALE}-grey-psm{PAGE_SEGMENTATION}-v1"
MIN_CONFIDENCE = 60.0  # Tesseract's per-word confidence, 0-100; below it a "word" is mostly picture texture
MIN_LETTERS = 2
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)


def tesseract_available() -> bool:
    return shutil.which("tesseract") is not None


def caption_words(words: Iterable[tuple[str, float]], min_confidence: float = MIN_CONFIDENCE,
                  min_letters: int = MIN_LETTERS) -> list[str]:
    """The words of an OCR result that look like caption text: confident enough, at least ``min_letters``
    letters, and at least half letters (edges and textures come out as short runs of punctuation and digits)."""
    kept = []
    for text, confidence in words:
        text = text.strip()
        letters = len(_LETTER.findall(text))
        if confidence >= min_confidence and letters >= min_letters and letters * 2 >= len(text):
            kept.append(text)
    return kept


def parse_tsv(tsv: str) -> list[tuple[str, float]]:
    """Tesseract's TSV output -> (word, confidence) for every recognised word (level 5 rows with text)."""
    rows = tsv.splitlines()
    if not rows:
        return []
    header = rows[0].split("\t")
    level, conf, text = header.index("level"), header.index("conf"), header.index("text")
    out = []
    for row in rows[1:]:
        cells = row.split("\t")
        if len(cells) == len(header) and cells[level] == "5" and cells[text].strip():
            out.append((cells[text], float(cells[conf])))
    return out


def ocr_picture(path: Path | str) -> tuple[list[tuple[str, float]], float]:
    """One picture -> Tesseract's (word, confidence) list and the seconds it took (upscaling included).
    One thread per call (OMP_THREAD_LIMIT=1): the machine is shared and the pictures are small."""
    from PIL import Image

    started = time.perf_counter()
    with Image.open(path) as im:
        grey = im.convert("L")
    grey = grey.resize((grey.width * UPSCALE, grey.height * UPSCALE), Image.LANCZOS)
    buf = io.BytesIO()
    grey.save(buf, format="PNG")
    done = subprocess.run(["tesseract", "stdin", "stdout", "--psm", str(PAGE_SEGMENTATION), "tsv"],
                          input=buf.getvalue(), capture_output=True, check=True,
                          env={**os.environ, "OMP_THREAD_LIMIT": "1"})
    return parse_tsv(done.stdout.decode("utf-8", "replace")), time.perf_counter() - started


def cached_ocr(paths: Sequence[Path | str], cache_dir: Path = CACHE_DIR, progress: bool = False) -> list[dict]:
    """Per picture ``{"words": [[word, confidence], ...], "seconds": s}``, from the cache when there (keyed by
    the file's sha256 and ``OCR_VERSION``), else by running Tesseract and saving the entry."""
    folder = Path(cache_dir) / "ocr" / OCR_VERSION
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, path in enumerate(paths):
        entry = folder / f"{sha256_file(Path(path))}.json"
        if entry.exists():
            out.append(json.loads(entry.read_text()))
            continue
        words, seconds = ocr_picture(path)
        record = {"words": [[w, c] for w, c in words], "seconds": seconds}
        tmp = entry.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(entry)  # an entry appears complete or not at all
        out.append(record)
        if progress and (k + 1) % 100 == 0:
            print(f"ocr {k + 1}/{len(paths)}", flush=True)
    return out


def caption_texts(records: Sequence[dict]) -> list[str]:
    """The cached OCR records -> the caption text of each picture ('' when no word passes)."""
    return [" ".join(caption_words((w, c) for w, c in r["words"])) for r in records]
