"""What model calls cost: a built-in price table for common OpenAI models (US dollars per million tokens), or a
`--model-prices` file for others. A model neither knows is counted in tokens only."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError
from threadline.models.thread import Usage


class Price(BaseModel):
    input: float = Field(ge=0, description="dollars per million prompt tokens")
    output: float = Field(ge=0, description="dollars per million completion tokens")


PRICES = {
    "gpt-5": Price(input=1.25, output=10.0),
    "gpt-5-mini": Price(input=0.25, output=2.0),
    "gpt-5-nano": Price(input=0.05, output=0.40),
    "gpt-4.1": Price(input=2.0, output=8.0),
    "gpt-4.1-mini": Price(input=0.40, output=1.60),
    "gpt-4.1-nano": Price(input=0.10, output=0.40),
    "gpt-4o": Price(input=2.50, output=10.0),
    "gpt-4o-mini": Price(input=0.15, output=0.60),
    "o3": Price(input=2.0, output=8.0),
    "o4-mini": Price(input=1.10, output=4.40),
    "o1": Price(input=15.0, output=60.0),
    "gpt-3.5-turbo": Price(input=0.50, output=1.50),
}


class PricesError(ValueError):
    """A --model-prices file that cannot be read as prices."""


def load_prices(path: str | None) -> dict[str, Price]:
    """The built-in table, with the file's entries (`MODEL: {input: DOLLARS, output: DOLLARS}` per million tokens,
    YAML or JSON) over it."""
    prices = dict(PRICES)
    if not path:
        return prices
    try:
        text = Path(path).expanduser().read_text()
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
        if not isinstance(data, dict):
            raise PricesError(f"--model-prices {path}: expected MODEL: {{input: ..., output: ...}} entries")
        prices |= {str(model): Price.model_validate(value) for model, value in data.items()}
    except OSError as e:
        raise PricesError(f"--model-prices {path}: {e.strerror or e}") from e
    except (ValidationError, ValueError, yaml.YAMLError) as e:
        raise PricesError(f"--model-prices {path}: {e}") from e
    return prices


def price_of(model: str, prices: dict[str, Price]) -> Price | None:
    """The model's price: an exact name, else the longest known prefix (`gpt-4o-mini-2024-07-18`), else None."""
    name = model.rpartition("/")[2]
    if name in prices:
        return prices[name]
    prefix = max((p for p in prices if name.startswith(p + "-")), key=len, default=None)
    return prices[prefix] if prefix else None


def priced(usage: Usage, model: str, prices: dict[str, Price]) -> Usage:
    """`usage` with its cost (0 for a model without a price), counted in the cost metric too."""
    from threadline import telemetry

    dollars = cost(usage, model, prices)
    if dollars is None:
        return usage
    telemetry.in_activity(telemetry.MODEL_COST, "what priced model calls cost, in millionths of a dollar",
                          round(dollars * 1_000_000), model=model)
    return usage.model_copy(update={"cost_usd": dollars})


def cost(usage: Usage, model: str, prices: dict[str, Price]) -> float | None:
    price = price_of(model, prices)
    if price is None:
        return None
    return (usage.prompt_tokens * price.input + usage.completion_tokens * price.output) / 1_000_000
