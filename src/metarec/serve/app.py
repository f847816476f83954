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

No ``from __future__ import annotations`` here: FastAPI and pydantic must see the request models
(built per app, with this model's rating scale and the configured limits) as real objects.
"""

import contextlib
import hmac
import json
import logging
import os
import threading
from pathlib import Path
from typing import Annotated, Any, AsyncIterator

import torch
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.responses import JSONResponse as _StdJSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator

from metarec.errors import DataError, MetarecError, UnknownIdError
from metarec.serve.batching import MicroBatcher
from metarec.serve.body_limit import BodyLimit
from metarec.serve.recommender import ColdStartRecommender, RecommendQuery

try:  # ~10x faster than json for the answers' metadata (a dependency; the fallback keeps old installs working)
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
ENV_DIR = "METAREC_SERVE_DIR"
ENV_API_KEY = "METAREC_API_KEY"
ENV_OPTIONS = "METAREC_SERVE_OPTIONS"
MAX_USER_ATTRIBUTES = 64


def _id_to_str(value: Any) -> Any:
    """Ids are strings; a JSON integer id is accepted as its decimal string (not floats or booleans)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


ItemId = Annotated[str, BeforeValidator(_id_to_str), StringConstraints(min_length=1, max_length=256)]
UserValue = str | int | float | bool | list[str | int | float] | None


class JSONResponse(_StdJSONResponse):
    """Starlette's JSONResponse (compact, no NaN), rendered by orjson when it is installed."""

    def render(self, content: Any) -> bytes:
        if orjson is not None:
            try:
                return orjson.dumps(content)
            except TypeError:  # a type orjson does not know: the standard encoder says what is wrong
                pass
        return super().render(content)


class ScoredItem(BaseModel):
    """An item with its predicted rating; recommendation answers add the item's metadata (title, ...)."""

    model_config = ConfigDict(extra="allow")
    item_id: str
    score: float


class CatalogueItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    item_id: str


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    unknown_item_ids: list[str]
    model_version: str


class PredictResponse(BaseModel):
    predictions: list[ScoredItem]
    unknown_item_ids: list[str]
    model_version: str


class OnboardingResponse(BaseModel):
    items: list[CatalogueItem]
    model_version: str


class OnboardingNextResponse(BaseModel):
    items: list[CatalogueItem]
    unknown_item_ids: list[str]
    model_version: str


def _unprocessable(loc: list[str | int], message: str, kind: str = "value_error") -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, so clients parse one format."""
    return HTTPException(status_code=422, detail=[{"loc": loc, "msg": message, "type": kind}])


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with where and why, without echoing the input back.

    FastAPI's default echoes each bad value, and a NaN rating (Python's JSON parser accepts the
    literal) cannot be serialised back: that would turn a client error into a 500.
    """
    errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


def create_app(
    recommender: ColdStartRecommender,
    *,
    api_key: str | None = None,
    max_body_bytes: int = 64_000,
    max_ratings: int = 500,
    max_k: int = 500,
    max_item_ids: int = 1_000,
    torch_threads: int | None = 1,
    batching: bool = True,
    batch_size: int = 4,
    batch_wait_ms: float = 0.0,
) -> FastAPI:
    """The service for an already loaded recommender (load once, serve many).

    ``api_key``: when set, every ``/v1`` route needs header ``X-API-Key`` (``/healthz`` stays open).
    ``torch_threads``: torch intra-op threads of each request thread (and of the start-up thread, restored
    at shutdown); None leaves torch's setting alone.
    ``batching``: micro-batch ``/v1/recommend`` (one inference thread, up to ``batch_size`` users per
    vectorised call, waiting up to ``batch_wait_ms`` for more once a request is queued; 0 takes only
    what is already queued, so a lone request never waits); False: one request per thread-pool call.
    """
    if not recommender.is_fitted:
        raise MetarecError("create_app needs a fitted or loaded ColdStartRecommender")
    low, high = recommender.rating_scale
    version = recommender.model_version
    user_attributes = recommender.user_attributes

    class RatingIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        item_id: ItemId
        rating: float = Field(description=f"a finite number in [{low:g}, {high:g}] (checked by the recommender)")

    def _no_duplicates(ratings: list[RatingIn]) -> list[RatingIn]:
        seen: set[str] = set()
        for r in ratings:
            if r.item_id in seen:
                raise ValueError(f"item_id {r.item_id!r} is rated more than once")
            seen.add(r.item_id)
        return ratings

    user_doc = f"the new user's attributes; the model reads {sorted(user_attributes)}"

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ratings: list[RatingIn] = Field(min_length=1, max_length=max_ratings,
                                        description="the new user's ratings (support set)")
        user: dict[str, UserValue] | None = Field(None, max_length=MAX_USER_ATTRIBUTES, description=user_doc)
        k: int = Field(10, le=max_k, description=f"how many items, at least 1 and at most {max_k}")
        exclude_rated: bool = True

        @field_validator("ratings")
        @classmethod
        def _unique_items(cls, value: list[RatingIn]) -> list[RatingIn]:
            return _no_duplicates(value)

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ratings: list[RatingIn] = Field(min_length=1, max_length=max_ratings)
        user: dict[str, UserValue] | None = Field(None, max_length=MAX_USER_ATTRIBUTES, description=user_doc)
        item_ids: list[ItemId] = Field(min_length=1, max_length=max_item_ids)

        @field_validator("ratings")
        @classmethod
        def _unique_items(cls, value: list[RatingIn]) -> list[RatingIn]:
            return _no_duplicates(value)

    class OnboardingRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: int = Field(10, le=max_k, description=f"how many items to ask about next, at least 1 and at most {max_k}")
        shown: list[ItemId] = Field(default_factory=list, max_length=max_item_ids,
                                    description="the items already shown to the user")
        rated: list[ItemId] = Field(default_factory=list, max_length=max_item_ids,
                                    description="those of them the user rated (ratings themselves are not needed)")

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
    open_docs = {} if expected is None else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="metarec", version=version, lifespan=lifespan, **open_docs,
                  description="Cold-start recommendations: a new user's few ratings in, a personalised top-k out.")
    app.state.recommender = recommender
    app.state.batcher = batcher
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    async def require_key(given: str | None = Security(header)) -> None:  # async: no thread-pool hop per request
        if expected is None:
            return
        if given is None or not hmac.compare_digest(given.encode("utf-8"), expected):
            raise HTTPException(status_code=401, detail=f"missing or invalid API key (header {API_KEY_HEADER})",
                                headers={"WWW-Authenticate": "ApiKey"})

    v1 = APIRouter(prefix="/v1", dependencies=[Security(require_key)] if expected is not None else [])
    if expected is not None:  # with a key, the schema and its page need it too
        @app.get("/openapi.json", include_in_schema=False, dependencies=[Security(require_key)])
        async def openapi() -> JSONResponse:
            return JSONResponse(app.openapi())

        @app.get("/docs", include_in_schema=False, dependencies=[Security(require_key)])
        async def docs() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url="/openapi.json", title="metarec")

    def _adapt_errors(exc: MetarecError, source: str = "body") -> HTTPException:
        """The library's input errors (the recommender validates every request) as 422s that name the
        field: ``ratings.3.rating`` becomes ``["body", "ratings", 3, "rating"]``."""
        if isinstance(exc, UnknownIdError):
            return _unprocessable([source, "ratings"], str(exc), "unknown_item_id")
        field = getattr(exc, "field", None) or "ratings"
        return _unprocessable([source, *(int(p) if p.isdigit() else p for p in field.split("."))], str(exc))

    recommend_doc = "Adapt to the user's ratings; the ``k`` best items, with titles. Unknown rated ids are listed."

    if batcher is not None:
        @v1.post("/recommend", response_model=RecommendResponse, description=recommend_doc)
        async def recommend(request: RecommendRequest) -> JSONResponse:
            # async: validated on the event loop, answered by the batcher's thread (no thread-pool hop)
            query = RecommendQuery({r.item_id: r.rating for r in request.ratings}, request.user,
                                   request.k, request.exclude_rated)
            batcher.start()  # a no-op once running (the lifespan starts it; an app used without one too)
            try:
                result = await batcher.recommend(query)
            except MetarecError as exc:
                raise _adapt_errors(exc) from None
            return JSONResponse({"items": result.items, "unknown_item_ids": result.unknown_item_ids,
                                 "model_version": version})
    else:
        @v1.post("/recommend", response_model=RecommendResponse, description=recommend_doc)
        def recommend(request: RecommendRequest) -> JSONResponse:
            one_torch_thread()
            ratings = {r.item_id: r.rating for r in request.ratings}
            try:
                result = recommender.recommend_records(ratings, request.user, k=request.k,
                                                       exclude_rated=request.exclude_rated)
            except MetarecError as exc:
                raise _adapt_errors(exc) from None
            return JSONResponse({"items": result.items, "unknown_item_ids": result.unknown_item_ids,
                                 "model_version": version})

    @v1.post("/predict", response_model=PredictResponse)
    def predict(request: PredictRequest) -> JSONResponse:
        """Predicted ratings of ``item_ids`` after adapting to the user's ratings (unknown ids listed)."""
        one_torch_thread()
        ratings = {r.item_id: r.rating for r in request.ratings}
        try:
            result = recommender.predict_records(ratings, request.item_ids, request.user)
        except MetarecError as exc:
            raise _adapt_errors(exc) from None
        return JSONResponse({"predictions": result.items, "unknown_item_ids": result.unknown_item_ids,
                             "model_version": version})

    @v1.get("/onboarding", response_model=OnboardingResponse)
    def onboarding(n: int = Query(10, le=max_k, description="how many items to ask about")) -> JSONResponse:
        """The items to ask a new user to rate first."""
        try:
            return JSONResponse({"items": recommender.onboarding_records(n), "model_version": version})
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
                             "model_version": version})

    @v1.get("/items/{item_id}", response_model=CatalogueItem)
    def item(item_id: str) -> JSONResponse:
        """One catalogue item's metadata; 404 for an id the model does not know."""
        try:
            return JSONResponse(recommender.item(item_id))
        except UnknownIdError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None

    @v1.get("/model")
    def model() -> dict[str, Any]:
        """Model configuration, dataset, catalogue size, model_version, package versions and limits."""
        return {**recommender.info(), "limits": {"max_body_bytes": max_body_bytes, "max_ratings": max_ratings,
                                                 "max_k": max_k, "max_item_ids": max_item_ids}}

    app.include_router(v1)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness and the served model_version; never needs the API key."""
        return {"status": "ok", "model_version": version}

    return app


def create_app_from_dir(path: str | Path, **kwargs: Any) -> FastAPI:
    """Load a saved recommender (or a ``metarec train`` run folder) once, then build the app."""
    return create_app(ColdStartRecommender.load(path), **kwargs)


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` and multi-worker serving: folder, key and options (a JSON object
    of :func:`create_app` keyword arguments in ``METAREC_SERVE_OPTIONS``) from the environment."""
    path = os.environ.get(ENV_DIR)
    if not path:
        raise MetarecError(f"set {ENV_DIR} to a recommender or run folder")
    options = json.loads(os.environ.get(ENV_OPTIONS) or "{}")
    if not isinstance(options, dict):
        raise MetarecError(f"{ENV_OPTIONS} must be a JSON object of create_app keyword arguments")
    return create_app_from_dir(path, api_key=os.environ.get(ENV_API_KEY) or None, **options)


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
