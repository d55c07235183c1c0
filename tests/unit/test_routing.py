"""Routing posts to the model set of their platform (serving/routing.py) and finding the sets in a repository
(serving/model_sets.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from popscore import features as F
from popscore.serving.model_sets import discover, parse_model_name, repository_problem
from popscore.serving.routing import NO_MODEL, NOT_SERVABLE, OTHER_LABEL, PlatformRouter
from popscore.settings import ServingSettings, Settings

REPO = Path(__file__).resolve().parents[2] / "model_repo"
HN, REDDIT = object(), object()  # stand-ins for served model sets


def router(**kw) -> PlatformRouter:
    serving = ServingSettings(**kw)
    return PlatformRouter({"hackernews": HN, "reddit": REDDIT}, ["youtube"], serving.platform_aliases,
                          serving.unknown_platform, known=Settings().score.platform_weights)


def test_a_platform_with_its_own_set_gets_it_whatever_the_case_or_spacing():
    r = router()
    for name in ("hackernews", "HackerNews", "  hackernews\t", "HACKERNEWS"):
        route = r.route(name)
        assert (route.platform, route.model_set, route.fallback_reason) == ("hackernews", HN, None)
    assert r.route("reddit").model_set is REDDIT


def test_aliases_name_a_sets_platform():
    r = router()
    for name in ("hn", "HN", " ycombinator ", "hacker-news", "hacker_news"):
        assert (r.route(name).platform, r.route(name).model_set) == ("hackernews", HN), name
    custom = router(platform_aliases={" Old-Reddit ": "REDDIT"})
    assert custom.route("old-reddit").model_set is REDDIT and custom.route("hn").model_set is None  # replaced


def test_unknown_platforms_get_the_fallback_never_another_platforms_set():
    r = router()
    for name in ("mastodon", "x", "", "   ", None, "ünïcode", "unknown"):
        route = r.route(name)
        assert route.model_set is None and route.fallback_reason == NO_MODEL, name
    assert r.route(None).platform == r.route("").platform == "unknown"
    assert r.route("mastodon").label == OTHER_LABEL and r.route(None).label == "unknown"


def test_a_platform_whose_set_is_not_servable_gets_the_fallback_even_with_a_stand_in():
    for r in (router(), router(unknown_platform="hackernews")):
        route = r.route("YouTube")
        assert (route.platform, route.model_set, route.fallback_reason, route.label) == \
            ("youtube", None, NOT_SERVABLE, "youtube")
        assert r.route("yt").model_set is None  # an alias of it, too


def test_unknown_platform_may_name_a_set_for_platforms_without_one():
    r = router(unknown_platform=" HackerNews ")
    route = r.route("mastodon")
    assert (route.platform, route.model_set, route.fallback_reason) == ("mastodon", HN, None)
    assert r.route("reddit").model_set is REDDIT  # a platform with its own set keeps it
    stand_in_not_servable = router(unknown_platform="youtube").route("mastodon")
    assert (stand_in_not_servable.model_set, stand_in_not_servable.fallback_reason) == (None, NOT_SERVABLE)
    missing_stand_in = router(unknown_platform="tiktok").route("mastodon")
    assert (missing_stand_in.model_set, missing_stand_in.fallback_reason) == (None, NO_MODEL)


def test_metric_labels_stay_bounded_whatever_the_input():
    r = router()
    labels = {r.route(f"platform{i}").label for i in range(20_000)}
    assert labels == {OTHER_LABEL}
    assert len(r._cache) <= PlatformRouter.MAX_CACHED


def test_settings_refuse_aliases_to_no_set_and_a_bad_unknown_platform():
    with pytest.raises(ValidationError):
        ServingSettings(platform_aliases={"hn": "hacker news"})
    with pytest.raises(ValidationError):
        ServingSettings(platform_aliases={" ": "hackernews"})
    with pytest.raises(ValidationError):
        ServingSettings(unknown_platform="popscore_hackernews")
    assert ServingSettings(unknown_platform=" FALLBACK ").unknown_platform == "fallback"


def test_settings_read_aliases_from_the_environment(monkeypatch):
    monkeypatch.setenv("POPSCORE_SERVING__PLATFORM_ALIASES", json.dumps({"HN2": "hackernews"}))
    monkeypatch.setenv("POPSCORE_SERVING__UNKNOWN_PLATFORM", "reddit")
    serving = Settings().serving
    assert serving.platform_aliases == {"hn2": "hackernews"} and serving.unknown_platform == "reddit"


# --- model sets in a repository -----------------------------------------------------------------------------

def test_model_names_parse_back_to_kind_and_platform():
    for platform in ("hackernews", "reddit", "youtube", "x1"):
        for kind in F.MODEL_KINDS:
            assert parse_model_name(F.model_name(kind, platform)) == (kind, platform)
    for other in ("popscore_text_encoder", "popscore_static", "popscore_hacker_news_static", "persistence",
                  "popscore_Reddit_static"):
        assert parse_model_name(other) is None, other


def _copy_set(tmp_path: Path, platform: str = "hackernews") -> Path:
    repo = tmp_path / "repo"
    for kind in F.MODEL_KINDS:
        shutil.copytree(REPO / F.model_name(kind, platform), repo / F.model_name(kind, platform))
    return repo


def _edit(repo: Path, kind: str, change) -> None:
    model = repo / F.model_name(kind, "hackernews")
    version = max(int(p.name) for p in model.iterdir() if p.name.isdigit())
    path = model / str(version) / "metadata.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def test_the_committed_repository_has_a_servable_hackernews_set():
    found = discover(REPO)
    assert set(found["hackernews"]) == set(F.MODEL_KINDS)
    assert repository_problem("hackernews", found["hackernews"]) is None


@pytest.mark.parametrize("kind, change, says", [
    ("temporal", lambda m: m.pop("bounds"), "declares no \"bounds\""),
    ("static", lambda m: m["bounds"].pop("log_score"), "log_score"),
    ("temporal", lambda m: m["bounds"].update(age_h=[6, 0]), "age_h"),
    ("static", lambda m: m.update(platform="reddit"), "trained for platform 'reddit'"),
    ("temporal", lambda m: m["content_model"].update(version=99), "names content model"),
    ("temporal", lambda m: m["content_model"].update(name="popscore_reddit_temporal_content"), "names content model"),
])
def test_a_set_is_not_servable_without_bounds_platform_or_pairing(tmp_path, kind, change, says):
    repo = _copy_set(tmp_path)
    _edit(repo, kind, change)
    problem = repository_problem("hackernews", discover(repo)["hackernews"])
    assert problem is not None and says in problem and F.model_name(kind, "hackernews") in problem


def test_a_set_missing_a_model_is_not_servable(tmp_path):
    repo = _copy_set(tmp_path)
    shutil.rmtree(repo / F.model_name("content", "hackernews"))
    problem = repository_problem("hackernews", discover(repo)["hackernews"])
    assert "no popscore_hackernews_temporal_content" in problem


def test_every_setting_survives_the_environment_the_stack_gives_its_workers(monkeypatch):
    """The embedded stack starts workers with settings_reference as their environment (unset optional ones
    empty): the worker must read back the very same settings, the routing ones included."""
    from popscore.settings import settings_reference

    settings = Settings()
    settings.serving.platform_aliases = {"hn": "hackernews", "old-reddit": "reddit"}
    settings.serving.unknown_platform = "reddit"
    for name, value, _ in settings_reference(settings):
        monkeypatch.setenv(name, value)
    assert Settings().model_dump() == settings.model_dump()
