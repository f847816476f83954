"""The HTTP service's request and response models (pydantic) and its error shapes.

The request models are built per app (:func:`request_models`), with the served model's rating scale and
the configured limits, so that the OpenAPI schema states them. They only parse: the values themselves
(ranges, attribute names and kinds, ``k``) are checked by
:class:`~metarec.serve.recommender.ColdStartRecommender`, the one place a request is validated.

No ``from __future__ import annotations`` here: pydantic must see the field types as real objects.
"""

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse as _StdJSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator
from pydantic.json_schema import SkipJsonSchema

from metarec.serve.checks import WRONG_FEEDBACK

try:  # ~10x faster than json for the answers' metadata (a dependency; the fallback keeps old installs working)
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None

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
    """An item with its score (a predicted rating, or an implicit-feedback model's ranking score: only the order
    means something); recommendation answers add the item's metadata (title, ...)."""

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


class UserRecommendations(BaseModel):
    items: list[ScoredItem]
    unknown_item_ids: list[str]


class BatchRecommendResponse(BaseModel):
    results: list[UserRecommendations] = Field(description="one answer per user, in the order asked")
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


class SimilarItemsResponse(BaseModel):
    item_id: str
    items: list[ScoredItem] = Field(description="the most similar items, best first; score: cosine similarity")
    model_version: str


def unprocessable(loc: list[str | int], message: str, kind: str = "value_error") -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, so clients parse one format."""
    return HTTPException(status_code=422, detail=[{"loc": loc, "msg": message, "type": kind}])


async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with where and why, without echoing the input back.

    FastAPI's default echoes each bad value, and a NaN rating (Python's JSON parser accepts the
    literal) cannot be serialised back: that would turn a client error into a 500.
    """
    errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


@dataclass(frozen=True)
class RequestModels:
    """The request bodies of one app (classes built by :func:`request_models`)."""

    recommend: type[BaseModel]
    batch: type[BaseModel]
    predict: type[BaseModel]
    onboarding: type[BaseModel]
    new_item: type[BaseModel]
    item_ratings: type[BaseModel]


def _refused(value: Any, info: ValidationInfo) -> Any:
    """A field of the other kind of feedback: a 422 at that field saying what to send instead."""
    if value is not None:
        raise ValueError(WRONG_FEEDBACK[str(info.field_name)])
    return value


def request_models(rating_scale: tuple[float, float], user_attributes: dict[str, str], item_attributes: list[str],
                   *, max_ratings: int, max_k: int, max_item_ids: int, max_batch: int,
                   implicit: bool = False) -> RequestModels:
    """The request bodies, with this model's rating scale, attributes and the configured limits in their schema.
    ``implicit``: a user is the ids of the items they liked (``items``), not ratings."""
    low, high = rating_scale

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

    class UserRatings(BaseModel):
        """A user the model adapts to: their ratings (each item once) and attributes."""

        model_config = ConfigDict(extra="forbid")
        items: SkipJsonSchema[Any] = Field(None, exclude=True)  # implicit feedback's: refused, saying why
        ratings: list[RatingIn] = Field(min_length=1, max_length=max_ratings,
                                        description="the user's ratings (the support set the model adapts to)")
        user: dict[str, UserValue] | None = Field(None, max_length=MAX_USER_ATTRIBUTES, description=user_doc)

        @field_validator("items")
        @classmethod
        def _refuse_items(cls, value: Any, info: ValidationInfo) -> Any:
            return _refused(value, info)

        @field_validator("ratings")
        @classmethod
        def _unique_items(cls, value: list[RatingIn]) -> list[RatingIn]:
            return _no_duplicates(value)

        def support(self) -> dict[str, float]:
            """What the recommender adapts to: ``{item_id: rating}``."""
            return {r.item_id: r.rating for r in self.ratings}

    class UserItems(BaseModel):
        """A user of an implicit-feedback model: the items they interacted with or liked, and attributes."""

        model_config = ConfigDict(extra="forbid")
        ratings: SkipJsonSchema[Any] = Field(None, exclude=True)  # explicit feedback's: refused, saying why
        items: list[ItemId] = Field(min_length=1, max_length=max_ratings,
                                    description="ids of the items the user interacted with or liked, each once "
                                                "(the positives the model adapts to)")
        confidence: list[float] | None = Field(
            None, max_length=max_ratings, description=f"optional: one confidence per item, in (0, {high:g}] "
                                                      "(plays, ...; default 1 each)")
        user: dict[str, UserValue] | None = Field(None, max_length=MAX_USER_ATTRIBUTES, description=user_doc)

        @field_validator("ratings")
        @classmethod
        def _refuse_ratings(cls, value: Any, info: ValidationInfo) -> Any:
            return _refused(value, info)

        @field_validator("items")
        @classmethod
        def _unique_items(cls, value: list[str]) -> list[str]:
            seen: set[str] = set()
            for item_id in value:
                if item_id in seen:
                    raise ValueError(f"item_id {item_id!r} is given more than once")
                seen.add(item_id)
            return value

        @field_validator("confidence")
        @classmethod
        def _one_per_item(cls, value: list[float] | None, info: ValidationInfo) -> list[float] | None:
            items = info.data.get("items")
            if value is not None and items is not None and len(value) != len(items):
                raise ValueError(f"confidence has {len(value)} values for {len(items)} items (one per item)")
            return value

        def support(self) -> dict[str, float]:
            """What the recommender adapts to: ``{item_id: confidence}``."""
            return dict(zip(self.items, self.confidence or [1.0] * len(self.items)))

    User = UserItems if implicit else UserRatings

    class RecommendRequest(User):  # type: ignore[valid-type, misc]
        k: int = Field(10, le=max_k, description=f"how many items, at least 1 and at most {max_k}")
        exclude_rated: bool = True

    class BatchRecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        users: list[RecommendRequest] = Field(min_length=1, max_length=max_batch,
                                              description=f"up to {max_batch} users, each a /v1/recommend body")

    class PredictRequest(User):  # type: ignore[valid-type, misc]
        item_ids: list[ItemId] = Field(min_length=1, max_length=max_item_ids)

    class OnboardingRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: int = Field(10, le=max_k, description=f"how many items to ask about next, at least 1 and at most {max_k}")
        shown: list[ItemId] = Field(default_factory=list, max_length=max_item_ids,
                                    description="the items already shown to the user")
        rated: list[ItemId] = Field(default_factory=list, max_length=max_item_ids,
                                    description="those of them the user rated (ratings themselves are not needed)")

    class NewItemRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        item_id: ItemId = Field(description="the new item's id (not in the catalogue yet)")
        attributes: dict[str, UserValue] = Field(
            default_factory=dict, max_length=MAX_USER_ATTRIBUTES,
            description=f"the item's metadata (title, ...); the model reads {sorted(item_attributes)}")

    class RaterIn(UserRatings):  # ratings: the rater's ratings of other items
        rating: float = Field(description=f"their rating of this item, a finite number in [{low:g}, {high:g}]")

    class ItemRatingsRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        raters: list[RaterIn] = Field(min_length=1, max_length=max_batch,
                                      description=f"up to {max_batch} people who rated the item")

    return RequestModels(RecommendRequest, BatchRecommendRequest, PredictRequest, OnboardingRequest, NewItemRequest,
                         ItemRatingsRequest)
