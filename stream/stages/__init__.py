"""The stages a record goes through, one module each, composed by ``stream/worker.py``:
decode -> merge -> features -> infer -> publish (the concurrency between them is ``stream/pipeline.py``'s)."""
