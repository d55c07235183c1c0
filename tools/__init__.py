"""popscore.tools: what runs, feeds and measures the system rather than being it.

The ``popscore`` command (cli, datacli, traincli), the embedded stack (stack/), the bench, the demo and its
sample (sample/), the naive per-record pipeline the bench compares with, the simulator and the Kafka replay.
Tools may import every other package; nothing else imports tools (tests/unit/test_layering.py).
"""
