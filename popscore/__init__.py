"""popscore: a streaming real-time popularity scorer.

This package is the shared core: the v1 event contract and its on-disk form (contract, eventfile), settings,
the feature code shared by training and serving (features), the evaluation metrics (metrics), the title
encoding (text_encoding) and the public data-set adapters (datasets). The core imports nothing outside itself;
popscore.serving, popscore.stream, popscore.trainer and popscore.tools build on it
(tests/unit/test_layering.py holds the rules).
"""
