"""The worker's web views listen where the settings say: Faust binds ``web_bind`` (its default is every
interface), ``web_host`` only names the worker in its URL."""

from __future__ import annotations

import pytest

from popscore.settings import Settings
from popscore.stream.app import create_app


@pytest.mark.parametrize("bind_host", ["127.0.0.1", "0.0.0.0"])
def test_faust_binds_the_configured_address(tmp_path, bind_host):
    settings = Settings()
    settings.stack.run_dir = tmp_path
    settings.worker.bind_host = bind_host
    app = create_app(settings)
    assert app.conf.web_bind == bind_host
    assert app.conf.web_host == bind_host


def test_the_default_is_loopback():
    assert Settings().worker.bind_host == "127.0.0.1"
