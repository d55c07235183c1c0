"""Which model set scores a post: the one trained for its platform, or the fallback, never another platform's.

A post's platform is stripped and lower-cased, then ``ServingSettings.platform_aliases`` maps other spellings
to a model set's platform (``hn`` -> ``hackernews``). A platform with a servable set of its own gets that set;
one whose set is there but not servable gets the fallback; one without a set gets the set named by
``unknown_platform`` (an operator's explicit choice) or, by default, the fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Iterable, Mapping, TypeVar

FALLBACK = "fallback"  # ``unknown_platform`` value: platforms without a set of their own get the fallback
NO_MODEL, NOT_SERVABLE = "no_model", "not_servable"  # why a post gets the fallback
UNKNOWN_PLATFORM = "unknown"  # the platform of a post whose post event never came
OTHER_LABEL = "other"  # metric label of a platform the router has no other knowledge of

ModelSetT = TypeVar("ModelSetT")


def normalise_platform(platform: str | None) -> str:
    """Platform names compare case-insensitively, ignoring surrounding whitespace."""
    return (platform or "").strip().lower()


@dataclass(frozen=True)
class Route(Generic[ModelSetT]):
    platform: str  # the post's platform as the model sets see it (normalised, aliases applied)
    model_set: ModelSetT | None  # None: the fallback scores it
    fallback_reason: str | None  # NO_MODEL or NOT_SERVABLE when model_set is None
    label: str  # ``platform`` as a metric label: a platform the deployment knows, else OTHER_LABEL


class PlatformRouter(Generic[ModelSetT]):
    """Routes platform names to model sets; built again whenever the served sets change.

    ``served``: platform -> servable model set; ``not_servable``: platforms whose set is in the repository but
    cannot be served; ``known``: further platform names worth their own metric label (alias targets, platforms
    with score weights). Any other platform shares one label, so arbitrary input cannot grow the metrics."""

    MAX_CACHED = 10_000  # distinct raw platform names remembered; input decides how many there are

    def __init__(self, served: Mapping[str, ModelSetT], not_servable: Iterable[str] = (),
                 aliases: Mapping[str, str] | None = None, unknown_platform: str = FALLBACK,
                 known: Iterable[str] = ()) -> None:
        self.served = dict(served)
        self.not_servable = set(not_servable) - set(self.served)
        self.aliases = {normalise_platform(k): normalise_platform(v) for k, v in (aliases or {}).items()}
        self.unknown_platform = normalise_platform(unknown_platform)
        self.labels = {*self.served, *self.not_servable, *self.aliases.values(), *map(normalise_platform, known),
                       UNKNOWN_PLATFORM}
        self._cache: dict[str | None, Route[ModelSetT]] = {}

    def canonical(self, platform: str | None) -> str:
        name = normalise_platform(platform) or UNKNOWN_PLATFORM
        return self.aliases.get(name, name)

    def route(self, platform: str | None) -> Route[ModelSetT]:
        route = self._cache.get(platform)
        if route is None:
            if len(self._cache) >= self.MAX_CACHED:
                self._cache.clear()
            route = self._cache[platform] = self._route(self.canonical(platform))
        return route

    def _route(self, name: str) -> Route[ModelSetT]:
        label = name if name in self.labels else OTHER_LABEL
        if name in self.served:
            return Route(name, self.served[name], None, label)
        if name in self.not_servable:
            return Route(name, None, NOT_SERVABLE, label)
        stand_in = self.unknown_platform
        if stand_in != FALLBACK:
            if stand_in in self.served:
                return Route(name, self.served[stand_in], None, label)
            if stand_in in self.not_servable:
                return Route(name, None, NOT_SERVABLE, label)
        return Route(name, None, NO_MODEL, label)
