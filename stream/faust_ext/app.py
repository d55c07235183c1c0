"""Faust's app without its ``Monitor`` sensor."""

from __future__ import annotations

import faust


class App(faust.App):
    """The worker's metrics are its own (stream/metrics.py, on Prometheus); Faust's monitor would keep
    statistics nothing reads, with bookkeeping on every record in and out."""

    def on_init_dependencies(self):
        dependencies = super().on_init_dependencies()
        self.sensors.remove(self.monitor)
        return dependencies
