"""The models this worker serves: one model set per platform, the text encoder, and the router between them.

Every post is routed by its platform to the model set trained for it (``serving/routing.py``; one set per
platform, ``serving/model_sets.py``), or to the fallback (``fallback.py``), never to another platform's set. The
repository is looked at again at every refresh, so a platform's first set (or a fixed version of a set that was
not servable) is served without a restart; ``/readyz`` and ``popscore_model_set_servable`` say which sets are
not servable, and why. Every model it uses, the text encoder too, is checked in Triton at start and at every
refresh and loaded if Triton does not have it (compose and the embedded stack load the whole repository at
Triton's start, but a model exported later, or unloaded since, would otherwise fail every call into the local
fallback); ``/readyz`` and ``popscore_triton_up`` show each one.
"""

from __future__ import annotations

import asyncio
import logging

from popscore import features as F
from popscore.serving.model_repository import list_models
from popscore.serving.model_sets import ModelSet, discover, repository_problem, version_problem
from popscore.serving.predictor import ModelPredictor
from popscore.serving.routing import PlatformRouter, Route
from popscore.settings import Settings
from popscore.stream.metrics import WorkerMetrics

log = logging.getLogger(__name__)

TEXT_ENCODER = "popscore_text_encoder"
SHARED_PLATFORM = "all"  # the platform label of a model every platform uses (the encoders)
IMAGE_ENCODER = "popscore_image_encoder"


def image_static_name(platform: str) -> str:
    """A static model trained on pictures for ``platform``: it scores that platform's posts whose picture was
    used, beside the platform's set (which scores the others and keeps the temporal halves)."""
    return f"popscore_{platform}_image_static"


def image_static_problem(platform: str, metadata: dict) -> str | None:
    """Why a version of ``popscore_<platform>_image_static`` must not be served (None: it may)."""
    problem = version_problem("static", platform, metadata)
    if problem is None and "visual" not in metadata.get("modalities", ()):
        problem = "its metadata does not declare the visual modality (modalities)"
    return problem


class ServedModels:
    def __init__(self, settings: Settings, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model_sets: dict[str, ModelSet] = {}  # platform -> the servable set trained for it
        self.unservable: dict[str, str] = {}  # platform -> why its set in the repository cannot be served
        self._unservable_versions: dict[str, tuple] = {}  # the repository versions that problem was found in
        self.router: PlatformRouter[ModelSet] = self._router()
        # The fallback's horizon is the one the sequences are kept for.
        self.fallback_spec = F.FeatureSpec(horizon_s=float(settings.score.horizon_s))
        self.text_encoder: ModelPredictor | None = None
        self.triton_ready: dict[str, bool] = {}  # model name -> its served version was ready in Triton at the last check
        self.image_encoder: ModelPredictor | None = None  # None: pictures are not encoded, visual masked
        # platform -> a set holding only "static": its image_static model, for posts whose picture was used
        self.image_sets: dict[str, ModelSet] = {}
        self._image_problems: dict[str, tuple[int, str]] = {}  # model name -> (newest version, why not servable)

    def temporal_spec(self, route: Route) -> F.FeatureSpec:
        """The sequence features a route's posts are scored with: its model set's, or the fallback's."""
        return route.model_set.spec("temporal") if route.model_set is not None else self.fallback_spec

    def lookback_s(self, platform: str | None = None) -> float:
        """How far before a post's latest observation the temporal features of its platform's model set (or the
        fallback) read its sequence: what a merge returns of it. Of a post whose platform is not known yet
        (None), the longest of any served set's and the fallback's."""
        if platform is not None:
            return F.lookback_s(self.temporal_spec(self.router.route(platform)))
        specs = [self.fallback_spec] + [model_set.spec("temporal") for model_set in self.model_sets.values()
                                        if "temporal" in model_set.predictors]
        return max(F.lookback_s(spec) for spec in specs)

    async def start(self) -> None:
        settings = self.settings
        await self.sync_model_sets(load_in_triton=False)  # loaded below, only where Triton does not have them
        served = any(m.name == TEXT_ENCODER and m.versions for m in list_models(settings.stack.model_repo))
        if served and settings.serving.text_encoder:
            self.text_encoder = ModelPredictor(TEXT_ENCODER, settings.serving, settings.triton.grpc_url,
                                               settings.stack.model_repo, settings.serving.python_backend_mirror,
                                               timeout_s=settings.serving.text_timeout_s)
            await self.text_encoder.start()
        else:
            log.warning("text encoder off or not in %s: titles are not embedded, the text modality is masked",
                        settings.stack.model_repo)
        if any(m.name == IMAGE_ENCODER and m.versions for m in list_models(settings.stack.model_repo)):
            self.image_encoder = ModelPredictor(IMAGE_ENCODER, settings.serving, settings.triton.grpc_url,
                                                settings.stack.model_repo, settings.serving.python_backend_mirror,
                                                timeout_s=settings.serving.text_timeout_s)
            await self.image_encoder.start()
        else:
            log.warning("no %s in %s: pictures are not encoded, the visual modality is masked", IMAGE_ENCODER,
                        settings.stack.model_repo)
        await self.ensure_loaded_in_triton()

    def served(self) -> list[tuple[str, str, ModelPredictor]]:
        """(kind, platform, predictor) of every model this worker calls Triton for, the encoders included."""
        models = [(kind, platform, predictor) for platform, model_set in self.model_sets.items()
                  for kind, predictor in model_set.predictors.items()]
        models += [("image_static", platform, image_set.predictors["static"])
                   for platform, image_set in self.image_sets.items()]
        for kind, encoder in (("text_encoder", self.text_encoder), ("image_encoder", self.image_encoder)):
            if encoder is not None:
                models.append((kind, SHARED_PLATFORM, encoder))
        return models

    async def ensure_loaded_in_triton(self) -> None:
        """Ask Triton to load each served model version it does not have (explicit model control). Concurrently:
        with Triton hung, each check waits out its deadline."""
        predictors = [predictor for _, _, predictor in self.served()]
        ready = await asyncio.gather(*(predictor.ensure_loaded() for predictor in predictors))
        self.triton_ready = {predictor.name: ok for predictor, ok in zip(predictors, ready)}

    async def close(self) -> None:
        for model_set in [*self.model_sets.values(), *self.image_sets.values()]:
            await model_set.close()
        for encoder in (self.text_encoder, self.image_encoder):
            if encoder is not None:
                await encoder.close()

    def _router(self) -> PlatformRouter[ModelSet]:
        serving = self.settings.serving
        return PlatformRouter(self.model_sets, self.unservable, serving.platform_aliases, serving.unknown_platform,
                              known=self.settings.score.platform_weights)

    def _predictor(self, name: str, check_version) -> ModelPredictor:
        settings = self.settings
        return ModelPredictor(name, settings.serving, settings.triton.grpc_url, settings.stack.model_repo,
                              settings.serving.python_backend_mirror, check_version=check_version)

    async def sync_model_sets(self, load_in_triton: bool = True) -> None:
        """Serve every servable model set of the repository not served yet. A set that cannot be served is logged
        (once per repository state) with the reason, and its platform gets the fallback."""
        found = discover(self.settings.stack.model_repo)
        changed = False
        for platform, models in found.items():
            if platform in self.model_sets:
                continue
            versions = tuple(sorted((kind, model.versions[-1]) for kind, model in models.items()))
            if self._unservable_versions.get(platform) == versions:
                continue  # nothing new since it was found not servable
            problem, lasting = repository_problem(platform, models), True
            model_set = None
            if problem is None:
                model_set = ModelSet.create(platform, self._predictor)
                try:
                    await model_set.start()
                    problem = model_set.problem()
                    if problem is None and load_in_triton:
                        await model_set.load_in_triton()
                except Exception as exc:  # Triton away, say: tried again at the next refresh
                    problem, lasting = f"could not start it: {exc!r}", False
            if problem is not None:
                if model_set is not None:
                    await model_set.close()
                if self.unservable.get(platform) != problem:
                    log.error("model set %r is not servable, its posts get the fallback: %s", platform, problem)
                self.unservable[platform] = problem
                if lasting:  # a problem of the files themselves: looked at again once they change
                    self._unservable_versions[platform] = versions
            else:
                log.info("serving model set %r: %s", platform,
                         ", ".join(f"{p.name} v{p.version}" for p in model_set.predictors.values()))
                self.model_sets[platform] = model_set
                self.unservable.pop(platform, None)
                self._unservable_versions.pop(platform, None)
            changed = True
        for platform in [p for p in self.unservable if p not in found]:  # removed from the repository
            del self.unservable[platform]
            self._unservable_versions.pop(platform, None)
            self.metrics.model_set_servable.remove(platform)
            changed = True
        if changed:
            self.router = self._router()
        await self._sync_image_sets(load_in_triton)
        for platform in self.model_sets:
            self.metrics.model_set_servable.labels(platform).set(1)
        for platform in self.unservable:
            self.metrics.model_set_servable.labels(platform).set(0)

    async def _sync_image_sets(self, load_in_triton: bool) -> None:
        """Serve the image static model of every served platform that has a servable one and none yet."""
        newest = {m.name: m.versions[-1] for m in list_models(self.settings.stack.model_repo) if m.versions}
        for platform in self.model_sets:
            name = image_static_name(platform)
            if platform in self.image_sets or name not in newest:
                continue
            if self._image_problems.get(name, (None,))[0] == newest[name]:
                continue  # that version was found not servable: looked at again once a newer one comes
            check = lambda version, meta, platform=platform: image_static_problem(platform, meta)  # noqa: E731
            predictor = self._predictor(name, check)
            try:
                await predictor.start()
                problem = check(predictor.version, predictor.metadata)
                if problem is None and load_in_triton:
                    await predictor.load_in_triton(predictor.version)
            except Exception as exc:  # noqa: BLE001  Triton away, say: tried again at the next refresh
                problem = f"could not start it: {exc!r}"
            if problem is not None:
                await predictor.close()
                log.error("%s is not servable, image posts of %r get the platform's static model: %s", name,
                          platform, problem)
                if not problem.startswith("could not start"):
                    self._image_problems[name] = (newest[name], problem)
                continue
            log.info("serving %s v%s for %r posts with a picture", name, predictor.version, platform)
            self.image_sets[platform] = ModelSet(platform, {"static": predictor})

    async def refresh(self) -> None:
        """Newer versions of the served sets (each set's temporal halves switch together), then sets not served
        yet."""
        for encoder in (self.text_encoder, self.image_encoder):
            if encoder is not None:
                await encoder.refresh()
        for image_set in self.image_sets.values():
            await image_set.predictors["static"].refresh()
        for platform, model_set in list(self.model_sets.items()):
            before = {kind: (p.version, p.stats["reload_failures"]) for kind, p in model_set.predictors.items()}
            switched = await model_set.refresh()
            for kind, predictor in model_set.predictors.items():
                old_version, old_failures = before[kind]
                if switched[kind]:
                    self.metrics.model_info.remove(kind, platform, str(old_version))
                    self.metrics.model_reloads.labels(kind, platform, "loaded").inc()
                elif predictor.stats["reload_failures"] > old_failures:
                    self.metrics.model_reloads.labels(kind, platform, "failed").inc()
        await self.sync_model_sets()
        await self.ensure_loaded_in_triton()

    def report(self) -> dict:
        """What ``/readyz`` shows of the models: every served model (the text encoder too) with whether Triton
        had it ready at the last check, and every model set with whether it is served and, if not, why."""
        models = {}
        for kind, platform, p in self.served():
            models[p.name] = {"kind": kind, "platform": platform, "version": p.version,
                              "triton_ready": self.triton_ready.get(p.name), "breaker": p.breaker.state.value,
                              **p.stats}
        sets = {platform: {"servable": True, "problem": None} for platform in self.model_sets}
        sets.update({platform: {"servable": False, "problem": problem} for platform, problem in self.unservable.items()})
        serving = self.settings.serving
        return {"models": models, "model_sets": sets,
                "routing": {"platform_aliases": serving.platform_aliases,
                            "unknown_platform": serving.unknown_platform}}

    def export_gauges(self) -> None:
        """Models served (the text encoder too), whether Triton serves each, and the trainer's validation MAE per
        age (what the online MAE is compared with)."""
        for kind, platform, predictor in self.served():
            self.metrics.model_info.labels(kind, platform, str(predictor.version)).set(1)
            up = self.triton_ready.get(predictor.name, False) and predictor.breaker.state.value == "closed"
            self.metrics.triton_up.labels(kind, platform).set(up)
            for row in predictor.metadata.get("metrics", []) if kind in ("static", "temporal") else []:
                self.metrics.offline_mae.labels(kind, platform, str(predictor.version),
                                                f"{row['age_h']:g}").set(row["mae"])
