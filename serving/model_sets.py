"""The model sets the worker serves: one per platform, found in the model repository by name.

A model set is the three models trained for one platform, named by ``features.model_name(kind, platform)``:
``popscore_<platform>_static`` (at upload), ``popscore_<platform>_temporal_content`` and
``popscore_<platform>_temporal`` (the two halves of MTAF-temporal, one version number). A set is servable only
when all three are there, their metadata says they were trained for that platform, the scoring models declare
the bounds of their training data (``output_bounds.REQUIRED_BOUNDS``) and the temporal head names the content
version served beside it. A set that is not servable is never replaced by another platform's set: its
platform gets the fallback.
"""

from __future__ import annotations

import re
from pathlib import Path

from popscore import features as F
from popscore.serving.model_repository import RepositoryModel, list_models, version_metadata
from popscore.serving.output_bounds import BoundsMissing, DeclaredBounds
from popscore.serving.predictor import ModelPredictor

SET_MODEL_NAME = re.compile(r"popscore_([a-z][a-z0-9]{0,31})_(static|temporal_content|temporal)")
KIND_OF_SUFFIX = {"static": "static", "temporal_content": "content", "temporal": "temporal"}
SCORING_KINDS = ("static", "temporal")  # the kinds whose outputs are predictions (the content half feeds the head)


def parse_model_name(name: str) -> tuple[str, str] | None:
    """(kind, platform) of a model set's model name, None for any other model (the text encoder)."""
    match = SET_MODEL_NAME.fullmatch(name)
    if match is None:
        return None
    kind, platform = KIND_OF_SUFFIX[match.group(2)], match.group(1)
    return (kind, platform) if F.model_name(kind, platform) == name else None


def discover(repository: Path) -> dict[str, dict[str, RepositoryModel]]:
    """platform -> kind -> repository model, for every set model with at least one version."""
    found: dict[str, dict[str, RepositoryModel]] = {}
    for model in list_models(repository):
        parsed = parse_model_name(model.name)
        if parsed is not None and model.versions:
            kind, platform = parsed
            found.setdefault(platform, {})[kind] = model
    return found


def version_problem(kind: str, platform: str, metadata: dict) -> str | None:
    """Why a version of ``kind`` in ``platform``'s set must not be served (None: it may)."""
    trained_for = metadata.get("platform")
    if trained_for != platform:
        return f"its metadata says it was trained for platform {trained_for!r}, not {platform!r}"
    if metadata.get("kind", kind) != kind:
        return f"its metadata says it is a {metadata['kind']!r} model, not {kind!r}"
    try:
        DeclaredBounds.from_metadata(metadata, kind)
    except BoundsMissing as exc:
        return str(exc)
    return None


def pairing_problem(head_metadata: dict, head_version: int, content_name: str) -> str | None:
    """The temporal head reads the vectors of the content model exported with it (same version)."""
    paired = head_metadata.get("content_model")
    expected = {"name": content_name, "version": head_version}
    if not isinstance(paired, dict) or {"name": paired.get("name", content_name),
                                         "version": paired.get("version")} != expected:
        return f"the temporal head version {head_version} names content model {paired}, not {expected}"
    return None


def repository_problem(platform: str, models: dict[str, RepositoryModel]) -> str | None:
    """Why the newest versions of ``platform``'s set in the repository cannot be served (None: they can), read
    from their metadata alone, before any predictor is started for them."""
    missing = [F.model_name(kind, platform) for kind in F.MODEL_KINDS if kind not in models]
    if missing:
        return f"no {', '.join(missing)} in the repository"
    check = {kind: ModelSet.version_check(kind, platform) for kind in F.MODEL_KINDS}
    for kind, model in models.items():
        version = model.versions[-1]
        problem = check[kind](version, version_metadata(model, version))
        if problem is not None:
            return f"{model.name} version {version}: {problem}"
    if models["temporal"].versions[-1] != models["content"].versions[-1]:
        return (f"the newest {models['temporal'].name} is version {models['temporal'].versions[-1]}, the newest "
                f"{models['content'].name} version {models['content'].versions[-1]}: re-export them together")
    return None


class ModelSet:
    """The predictors of one platform's set, with the feature spec and bounds of the versions they serve."""

    def __init__(self, platform: str, predictors: dict[str, ModelPredictor]) -> None:
        self.platform = platform
        self.predictors = predictors
        self._specs: dict[tuple[str, int], F.FeatureSpec] = {}
        self._bounds: dict[tuple[str, int], DeclaredBounds] = {}

    @classmethod
    def create(cls, platform: str, make_predictor) -> "ModelSet":
        """``make_predictor(name, check_version)`` -> an unstarted ModelPredictor."""
        predictors = {}
        for kind in F.MODEL_KINDS:
            predictors[kind] = make_predictor(F.model_name(kind, platform), cls.version_check(kind, platform))
        return cls(platform, predictors)

    @staticmethod
    def version_check(kind: str, platform: str):
        """(version, metadata) -> why that version of ``kind`` must not serve ``platform`` (None: it may)."""
        content_name = F.model_name("content", platform)

        def check(version: int, metadata: dict) -> str | None:
            problem = version_problem(kind, platform, metadata)
            if problem is None and kind == "temporal":
                problem = pairing_problem(metadata, version, content_name)
            return problem

        return check

    def name(self, kind: str) -> str:
        return self.predictors[kind].name

    def problem(self) -> str | None:
        """Why the versions now served must not be (None: the set is servable)."""
        for kind, predictor in self.predictors.items():
            problem = predictor.check_version(predictor.version, predictor.metadata)
            if problem is not None:
                return f"{predictor.name} version {predictor.version}: {problem}"
        content, head = self.predictors["content"], self.predictors["temporal"]
        if head.version != content.version:
            return (f"{head.name} serves version {head.version} but {content.name} version {content.version}: "
                    f"re-export them together")
        return None

    def spec(self, kind: str) -> F.FeatureSpec:
        """The spec stored with the served version, so serving computes what that model was trained on."""
        predictor = self.predictors[kind]
        key = (kind, predictor.version)
        spec = self._specs.get(key)
        if spec is None:
            meta = predictor.metadata
            spec = F.FeatureSpec.from_dict(meta["feature_spec"]) if "feature_spec" in meta else F.DEFAULT_SPEC
            self._specs[key] = spec
        return spec

    def bounds(self, kind: str, version: int | str | None = None) -> DeclaredBounds:
        """The bounds declared by ``version`` (an output names the version that made it, which a refresh may
        have replaced since), else by the version served now."""
        if version is not None:
            bounds = self._bounds.get((kind, int(version)))
            if bounds is not None:
                return bounds
        predictor = self.predictors[kind]
        key = (kind, predictor.version)
        bounds = self._bounds.get(key)
        if bounds is None:
            bounds = self._bounds[key] = DeclaredBounds.from_metadata(predictor.metadata, kind)
        return bounds

    async def start(self) -> None:
        for predictor in self.predictors.values():
            await predictor.start()

    async def load_in_triton(self) -> None:
        """For a set that became servable while the worker runs: Triton may not have loaded it at its start."""
        for predictor in self.predictors.values():
            await predictor.load_in_triton(predictor.version)

    async def close(self) -> None:
        for predictor in self.predictors.values():
            await predictor.close()

    async def refresh(self) -> dict[str, bool]:
        """Move to newer versions in the repository: the static model on its own, the two temporal halves
        together (both loaded in Triton first, then both switched, so the head never reads vectors of another
        content version). kind -> whether it switched; failures are counted in each predictor's stats."""
        switched = {kind: False for kind in self.predictors}
        switched["static"] = await self.predictors["static"].refresh()
        content, head = self.predictors["content"], self.predictors["temporal"]
        found = content.candidate()
        if found is None:
            return switched
        version = found[1]
        if head.candidate(version) is None:
            return switched  # the head of that version is not in the repository yet: the pair waits for it
        prepared_content = await content.prepare(version)
        prepared_head = await head.prepare(version) if prepared_content is not None else None
        if prepared_content is not None and prepared_head is not None:
            content.switch(prepared_content)
            head.switch(prepared_head)
            switched["content"] = switched["temporal"] = True
        return switched
