"""The list of served models, in the OpenAI shape with this service's fields added."""

from __future__ import annotations

from fastapi import APIRouter

from app.registry import LoadedModel
from app.routes import StateDep
from app.schemas import ModelCard, ModelList

router = APIRouter(tags=["models"])

OWNER = "ssl-embed"


@router.get("/v1/models", response_model=ModelList)
async def list_models(state: StateDep) -> ModelList:
    """List the loaded models with modality, width, space, training method and metrics."""
    registry = state.registry
    cards = [model_card(model, registry.is_default(model)) for model in registry.models.values()]
    return ModelList(data=sorted(cards, key=lambda card: card.id))


def model_card(model: LoadedModel, is_default: bool) -> ModelCard:
    return ModelCard(
        id=model.id,
        created=model.created,
        owned_by=OWNER,
        modality=model.modality,
        dim=model.dim,
        space=model.space,
        method=model.meta.method,
        normalize=model.meta.normalize,
        default=is_default,
        metrics=model.meta.metrics,
    )
