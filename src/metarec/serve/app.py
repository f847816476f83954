"""HTTP service over a loaded :class:`ColdStartRecommender` (FastAPI).

The model is loaded once, before the app is built. ``/v1/recommend`` is micro-batched (see
:mod:`metarec.serve.batching`): the event loop queues each request and one inference thread adapts
whatever is queued together, so concurrent requests share vectorised calls instead of competing in a
thread pool. With ``batching=False`` (and for ``/v1/predict``) every request adapts its own copy of
the parameters on one of the recommender's module replicas, in FastAPI's thread pool. Each thread
that runs the model uses one torch thread: many small concurrent requests beat one request on many
cores, and OpenMP threads spinning on a busy machine slow small requests tenfold.
``torch.set_num_threads`` is per thread except from the main thread, so it is set at start-up and
again in every thread that runs the model.

Also: ``/v1/recommend/batch`` (many users, one vectorised call), item vectors' similar items, new
items added while serving (:meth:`ColdStartRecommender.add_item`), Prometheus ``/metrics``
(:mod:`metarec.serve.metrics`), an API reference at ``/docs`` that loads nothing from another host
(:mod:`metarec.serve.docs_page`) and the onboarding questionnaire as a web page at ``/onboarding``
(:mod:`metarec.serve.onboarding_page`; ``/`` redirects there).

No ``from __future__ import annotations`` here: FastAPI and pydantic must see the request models
(built per app, with this model's rating scale and the configured limits, :mod:`metarec.serve.schemas`)
as real objects.
"""

import contextlib
import hmac
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, AsyncIterator

import torch
from fastapi import APIRouter, FastAPI, HTTPException, Query, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse
from fastapi.security import APIKeyHeader

from metarec.errors import DataError, MetarecError, UnknownIdError
from metarec.serve.batching import MicroBatcher
from metarec.serve.body_limit import BodyLimit
from metarec.serve.docs_page import render_docs
from metarec.serve.item_ratings import Rater
from metarec.serve.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from metarec.serve.onboarding_page import render_onboarding
from metarec.serve.recommender import ColdStartRecommender, RecommendQuery
from metarec.serve.schemas import (BatchRecommendResponse, CatalogueItem, JSONResponse, OnboardingNextResponse,
                                   OnboardingResponse, PredictResponse, RecommendResponse, SimilarItemsResponse,
                                   request_models, unprocessable, validation_error)
from metarec.serve.topk import HNSWConfig

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
ENV_DIR = "METAREC_SERVE_DIR"
ENV_API_KEY = "METAREC_API_KEY"
ENV_OPTIONS = "METAREC_SERVE_OPTIONS"


def create_app(
    recommender: ColdStartRecommender,
    *,
    api_key: str | None = None,
    max_body_bytes: int = 64_000,
    max_ratings: int = 500,
    max_k: int = 500,
    max_item_ids: int = 1_000,
    max_batch_users: int = 100,
    torch_threads: int | None = 1,
    batching: bool = True,
    batch_size: int = 4,
    batch_wait_ms: float = 0.0,
    item_writes: bool = True,
) -> FastAPI:
    """The service for an already loaded recommender (load once, serve many).

    ``api_key``: when set, every ``/v1`` route, ``/metrics``, ``/docs`` and ``/openapi.json`` need header
    ``X-API-Key`` (``/healthz`` and the ``/onboarding`` page, static, stay open).
    ``torch_threads``: torch intra-op threads of each request thread (and of the start-up thread, restored
    at shutdown); None leaves torch's setting alone.
    ``batching``: micro-batch ``/v1/recommend`` (one inference thread, up to ``batch_size`` users per
    vectorised call, waiting up to ``batch_wait_ms`` for more once a request is queued; 0 takes only
    what is already queued, so a lone request never waits); False: one request per thread-pool call.
    ``item_writes``: allow ``POST /v1/items`` and ``POST /v1/items/{id}/ratings`` (new items live in this process only: a multi-worker
    service turns it off, or each worker would serve a different catalogue).
    """
    if not recommender.is_fitted:
        raise MetarecError("create_app needs a fitted or loaded ColdStartRecommender")
    implicit = recommender.feedback == "implicit"  # a user is then items (positives), not ratings
    support_field = "items" if implicit else "ratings"
    models = request_models(recommender.rating_scale, recommender.user_attributes,
                            [str(c) for c in recommender.items.columns], max_ratings=max_ratings, max_k=max_k,
                            max_item_ids=max_item_ids, max_batch=max_batch_users, implicit=implicit)
    RecommendRequest, BatchRequest, PredictRequest = models.recommend, models.batch, models.predict  # noqa: N806
    OnboardingRequest, NewItemRequest = models.onboarding, models.new_item  # noqa: N806
    ItemRatingsRequest = models.item_ratings  # noqa: N806

    local = threading.local()
    batcher = MicroBatcher(recommender, batch_size=batch_size, max_wait=batch_wait_ms / 1000,
                           on_thread_start=lambda: one_torch_thread()) if batching else None

    def one_torch_thread() -> None:
        """Set torch threads once per request thread (cheap check afterwards)."""
        if torch_threads and not getattr(local, "set", False):
            torch.set_num_threads(torch_threads)
            local.set = True

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        previous = torch.get_num_threads()
        if torch_threads:
            torch.set_num_threads(torch_threads)
        _warm_up(recommender, batching)
        if batcher is not None:
            batcher.start()
        try:
            yield
        finally:
            if batcher is not None:
                batcher.stop()
            if torch_threads:
                torch.set_num_threads(previous)

    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)
    expected = None if api_key is None else api_key.encode("utf-8")
    # FastAPI's own /docs and /redoc load their scripts from a CDN: off; /docs is metarec.serve.docs_page
    app = FastAPI(title="metarec", version=recommender.model_version, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None,
                  description="Cold-start recommendations: a new user's few ratings in, a personalised top-k out.")
    app.state.recommender = recommender
    app.state.batcher = batcher
    metrics = app.state.metrics = Metrics()
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: times everything, 413s included

    async def require_key(given: str | None = Security(header)) -> None:  # async: no thread-pool hop per request
        if expected is None:
            return
        if given is None or not hmac.compare_digest(given.encode("utf-8"), expected):
            raise HTTPException(status_code=401, detail=f"missing or invalid API key (header {API_KEY_HEADER})",
                                headers={"WWW-Authenticate": "ApiKey"})

    keyed = [Security(require_key)] if expected is not None else []
    v1 = APIRouter(prefix="/v1", dependencies=keyed)

    @app.get("/openapi.json", include_in_schema=False, dependencies=keyed)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=keyed)
    async def docs() -> HTMLResponse:
        """The API reference, self-contained: no script, nothing loaded from another host."""
        return HTMLResponse(render_docs(app.openapi()))

    page = render_onboarding(API_KEY_HEADER, implicit)

    @app.get("/onboarding", include_in_schema=False)
    async def onboarding_page() -> HTMLResponse:
        """The questionnaire for people, self-contained; public: it is static and holds no data (its
        script sends the key with every call; :mod:`metarec.serve.onboarding_page` says why)."""
        return HTMLResponse(page.html, headers=page.headers)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("onboarding")  # relative: right behind a proxy that adds a path prefix

    @app.get("/metrics", include_in_schema=False, dependencies=keyed)
    async def prometheus() -> PlainTextResponse:
        info = {"model_version": recommender.model_version, "dataset": recommender.dataset_name}
        return PlainTextResponse(metrics.render(info), media_type=CONTENT_TYPE)

    def _adapt_errors(exc: MetarecError, source: str | list[str | int] = "body") -> HTTPException:
        """The library's input errors (the recommender validates every request) as 422s that name the
        field: ``ratings.3.rating`` becomes ``["body", "ratings", 3, "rating"]``."""
        return unprocessable(*_error_loc(exc, [source] if isinstance(source, str) else source, support_field))

    recommend_doc = ("Adapt to the user's items (their positives: this model learned from implicit feedback); the "
                     "``k`` best items by score, with titles. Unknown ids are listed." if implicit else
                     "Adapt to the user's ratings; the ``k`` best items, with titles. Unknown rated ids are listed.")

    if batcher is not None:
        @v1.post("/recommend", response_model=RecommendResponse, description=recommend_doc)
        async def recommend(request: RecommendRequest) -> JSONResponse:
            # async: validated on the event loop, answered by the batcher's thread (no thread-pool hop)
            query = RecommendQuery(request.support(), request.user, request.k, request.exclude_rated)
            batcher.start()  # a no-op once running (the lifespan starts it; an app used without one too)
            try:
                result = await batcher.recommend(query)
            except MetarecError as exc:
                raise _adapt_errors(exc) from None
            return JSONResponse({"items": result.items, "unknown_item_ids": result.unknown_item_ids,
                                 "model_version": recommender.model_version})
    else:
        @v1.post("/recommend", response_model=RecommendResponse, description=recommend_doc)
        def recommend(request: RecommendRequest) -> JSONResponse:
            one_torch_thread()
            try:
                result = recommender.recommend_records(request.support(), request.user, k=request.k,
                                                       exclude_rated=request.exclude_rated)
            except MetarecError as exc:
                raise _adapt_errors(exc) from None
            return JSONResponse({"items": result.items, "unknown_item_ids": result.unknown_item_ids,
                                 "model_version": recommender.model_version})

    @v1.post("/recommend/batch", response_model=BatchRecommendResponse)
    def recommend_batch(request: BatchRequest) -> JSONResponse:
        """Many users at once (each a ``/v1/recommend`` body), adapted together in vectorised groups; the
        answers in the order asked. Any invalid user makes the whole request a 422 naming ``users.<i>``."""
        one_torch_thread()
        queries = [RecommendQuery(u.support(), u.user, u.k, u.exclude_rated) for u in request.users]
        results = recommender.recommend_many(queries, batch_size=batch_size)
        errors = [_error_loc(r, ["body", "users", i], support_field) for i, r in enumerate(results) if isinstance(r, MetarecError)]
        if errors:
            raise HTTPException(status_code=422, detail=[{"loc": loc, "msg": msg, "type": kind}
                                                         for loc, msg, kind in errors])
        return JSONResponse({"results": [{"items": r.items, "unknown_item_ids": r.unknown_item_ids} for r in results],
                             "model_version": recommender.model_version})

    @v1.post("/predict", response_model=PredictResponse)
    def predict(request: PredictRequest) -> JSONResponse:
        """Predicted ratings of ``item_ids`` after adapting to the user's ratings (unknown ids listed)."""
        one_torch_thread()
        try:
            result = recommender.predict_records(request.support(), request.item_ids, request.user)
        except MetarecError as exc:
            raise _adapt_errors(exc) from None
        return JSONResponse({"predictions": result.items, "unknown_item_ids": result.unknown_item_ids,
                             "model_version": recommender.model_version})

    @v1.get("/onboarding", response_model=OnboardingResponse)
    def onboarding(n: int = Query(10, le=max_k, description="how many items to ask about")) -> JSONResponse:
        """The items to ask a new user to rate first."""
        try:
            return JSONResponse({"items": recommender.onboarding_records(n), "model_version": recommender.model_version})
        except MetarecError as exc:
            raise _adapt_errors(exc, "query") from None

    @v1.post("/onboarding", response_model=OnboardingNextResponse)
    def onboarding_next(request: OnboardingRequest) -> JSONResponse:
        """The next items to ask, given what was shown and what the user rated (adaptive questionnaire):
        ask in rounds of about 10, sending back every item shown so far. Unknown ids are listed."""
        try:
            result = recommender.onboarding_next(request.n, request.shown, request.rated)
        except MetarecError as exc:
            raise _adapt_errors(exc) from None
        return JSONResponse({"items": result.items, "unknown_item_ids": result.unknown_item_ids,
                             "model_version": recommender.model_version})

    @v1.get("/items/{item_id}", response_model=CatalogueItem)
    def item(item_id: str) -> JSONResponse:
        """One catalogue item's metadata; 404 for an id the model does not know."""
        try:
            return JSONResponse(recommender.item(item_id))
        except UnknownIdError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None

    @v1.get("/items/{item_id}/similar", response_model=SimilarItemsResponse)
    def similar(item_id: str, k: int = Query(10, le=max_k, description="how many items")) -> JSONResponse:
        """The ``k`` items closest to this one by cosine similarity of the model's item vectors (models
        with item vectors: neural-cf; otherwise a 409). 404 for an id the model does not know."""
        one_torch_thread()
        try:
            items = recommender.similar_items(item_id, k)
        except UnknownIdError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        except DataError as exc:
            raise _adapt_errors(exc, "query") from None
        except MetarecError as exc:  # a model without item vectors: the request is fine, the model cannot
            raise HTTPException(status_code=409, detail=str(exc)) from None
        return JSONResponse({"item_id": item_id, "items": items, "model_version": recommender.model_version})

    @v1.post("/items", response_model=CatalogueItem, status_code=201)
    def add_item(request: NewItemRequest) -> JSONResponse:
        """Add a new item from its attributes (and metadata such as its title): the model scores it from
        them, as every item it never saw in training, and it is recommendable at once. In memory only."""
        if not item_writes:
            raise HTTPException(status_code=409, detail="new items are off in a multi-worker service "
                                                        "(each worker would hold its own catalogue)")
        one_torch_thread()
        try:
            record = recommender.add_item(request.item_id, request.attributes)
        except MetarecError as exc:
            raise _adapt_errors(exc) from None
        log.info("added item %r; model_version %s", request.item_id, recommender.model_version)
        return JSONResponse(record, status_code=201)

    @v1.post("/items/{item_id}/ratings", response_model=CatalogueItem)
    def rate_item(item_id: str, request: ItemRatingsRequest) -> JSONResponse:
        """Fold people's ratings of an item training never saw into its vector (models linear in the item
        vector: neural-cf; otherwise a 409): each rater is adapted to their own ratings of other items, as a
        new user is. Calls add up. 404 for an id the model does not know. In memory only."""
        if not item_writes:
            raise HTTPException(status_code=409, detail="item ratings are off in a multi-worker service "
                                                        "(each worker would hold its own catalogue)")
        one_torch_thread()
        raters = [Rater({r.item_id: r.rating for r in x.ratings}, x.rating, x.user) for x in request.raters]
        try:
            record = recommender.add_item_ratings(item_id, raters, batch_size=batch_size)
        except UnknownIdError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        except DataError as exc:
            raise _adapt_errors(exc) from None
        except MetarecError as exc:  # the model cannot (no item vector) or the item's vector is trained
            raise HTTPException(status_code=409, detail=str(exc)) from None
        log.info("folded %d ratings into item %r; model_version %s", len(raters), item_id, recommender.model_version)
        return JSONResponse({**record, "model_version": recommender.model_version})

    @v1.get("/model")
    def model() -> dict[str, Any]:
        """Model configuration, dataset, catalogue size, model_version, package versions and limits."""
        return {**recommender.info(), "limits": {"max_body_bytes": max_body_bytes, "max_ratings": max_ratings,
                                                 "max_k": max_k, "max_item_ids": max_item_ids,
                                                 "max_batch_users": max_batch_users}}

    app.include_router(v1)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness and the served model_version; never needs the API key."""
        return {"status": "ok", "model_version": recommender.model_version}

    return app


def _error_loc(exc: MetarecError, prefix: list[str | int], support: str = "ratings") -> tuple[list[str | int], str, str]:
    """(loc, message, type) of a library input error under ``prefix``: an unknown-ids error is the
    ``support`` field's (ratings, or an implicit model's items); a :class:`DataError` names its field
    (``ratings.3.rating``)."""
    if isinstance(exc, UnknownIdError):
        return [*prefix, support], str(exc), "unknown_item_id"
    field = getattr(exc, "field", None) or support
    return [*prefix, *(int(p) if p.isdigit() else p for p in field.split("."))], str(exc), "value_error"


def create_app_from_dir(path: str | Path, *, top_k: str = "exact", hnsw: HNSWConfig | None = None, **kwargs: Any
                        ) -> FastAPI:
    """Load a saved recommender (or a ``metarec train`` run folder) once, with its catalogue top-k, then
    build the app."""
    return create_app(ColdStartRecommender.load(path, top_k=top_k, hnsw=hnsw), **kwargs)


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` and multi-worker serving: folder, key and options (a JSON object
    of :func:`create_app` keyword arguments in ``METAREC_SERVE_OPTIONS``) from the environment."""
    path = os.environ.get(ENV_DIR)
    if not path:
        raise MetarecError(f"set {ENV_DIR} to a recommender or run folder")
    options = json.loads(os.environ.get(ENV_OPTIONS) or "{}")
    if not isinstance(options, dict):
        raise MetarecError(f"{ENV_OPTIONS} must be a JSON object of create_app keyword arguments")
    hnsw = options.pop("hnsw", None)  # the load's options, beside create_app's
    return create_app_from_dir(path, api_key=os.environ.get(ENV_API_KEY) or None, top_k=options.pop("top_k", "exact"),
                               hnsw=None if hnsw is None else HNSWConfig.from_mapping(hnsw), **options)


def _warm_up(recommender: ColdStartRecommender, batching: bool = False) -> None:
    """One throw-away request at start-up, so the first client does not pay for lazy initialisation."""
    try:
        first = recommender.onboarding_records(1)[0]["item_id"]
        low, high = recommender.rating_scale
        recommender.recommend_records({first: (low + high) / 2}, k=1)
        if batching:
            recommender.recommend_many([RecommendQuery({first: (low + high) / 2}, k=1)] * 2)
    except (MetarecError, IndexError, DataError) as exc:  # pragma: no cover - best effort
        log.warning("warm-up request failed: %s", exc)
