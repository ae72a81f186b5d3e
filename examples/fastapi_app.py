"""Serve an embedml model from FastAPI: predict, outcomes, readiness and Prometheus metrics.

    .venv/bin/pip install fastapi uvicorn prometheus-client
    .venv/bin/python examples/fastapi_app.py          # serves http://127.0.0.1:8000

Endpoints:

* ``POST /predict`` with one record as JSON -> ``{"output", "request_id", "model",
  "version"}`` (``embedml.to_jsonable`` of the :class:`~embedml.Prediction`); a record
  that does not match the schema gets HTTP 422 naming the field.
* ``POST /outcome`` with ``{"request_id", "y_true"}`` -> joins late ground truth.
* ``GET /health`` -> 200 when the handle is ready, else 503 (for readiness probes).
* ``GET /metrics`` -> Prometheus text format.

``create_app(handle)`` is what a real service would use; ``demo_handle()`` trains a small
iris classifier into a temporary store so that the example runs anywhere.
"""

from __future__ import annotations

import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, FastAPI, HTTPException
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

import embedml


class Iris(BaseModel):
    sepal_length: float = Field(gt=0, le=20)
    sepal_width: float = Field(gt=0, le=20)
    petal_length: float = Field(gt=0, le=20)
    petal_width: float = Field(gt=0, le=20)


def demo_handle(root: str | Path | None = None, hooks: list[Any] | None = None) -> embedml.ModelHandle:
    """Train an iris classifier into a store (a temporary one by default) and load it."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    store = embedml.ModelStore(root or tempfile.mkdtemp(prefix="embedml-fastapi-"))
    if "iris" not in store.models():
        model = LogisticRegression(max_iter=500).fit(X, y)
        store.save("iris", model, input_schema=Iris, reference_data=X)
    options: dict[str, Any] = {"hooks": hooks or []}
    if hasattr(embedml, "Batching"):  # micro-batching, when this embedml has it
        options["batching"] = embedml.Batching()
    return store.load("iris", **options)


def create_app(handle: embedml.ModelHandle) -> FastAPI:
    """A FastAPI app serving ``handle``; the app closes the handle on shutdown."""
    from embedml.metrics import prometheus
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    prometheus.register(handle, registry=registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        handle.warmup(3)  # readiness only after the model has run once
        yield
        handle.close()  # writes out every logged prediction

    app = FastAPI(title=f"{handle.name} model", lifespan=lifespan)

    @app.post("/predict")
    async def predict(record: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        try:
            p = await handle.apredict(record, details=True)
        except embedml.SchemaError as exc:
            raise HTTPException(
                status_code=422,
                detail={"field": exc.field, "index": exc.index, "message": str(exc)},
            ) from None
        return embedml.to_jsonable(p)  # numpy values, pydantic outputs, NaN -> null

    @app.post("/outcome")
    async def outcome(
        request_id: Annotated[str, Body()], y_true: Annotated[Any, Body()]
    ) -> dict[str, Any]:
        try:
            return handle.log_outcome(request_id, y_true)
        except embedml.RequestNotFoundError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        except embedml.SchemaError as exc:
            raise HTTPException(status_code=422, detail={"field": exc.field, "message": str(exc)}) from None

    @app.get("/health")
    async def health() -> JSONResponse:
        state = handle.health()
        return JSONResponse(state, status_code=200 if state["ready"] else 503)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_app(demo_handle(hooks=[embedml.JsonlSink("predictions.jsonl")])))
