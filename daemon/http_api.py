"""The analysis service over HTTP: the registry, and diffraction analyses of uploaded files.

A trained model is slow to load beside one pattern, so (as the PACBED-CNN seed did) the
models stay loaded in one server and are asked over HTTP. Every answer comes from
inference/analysis.py's `AnalysisService`, the same code `flakescan analyze` runs, so a file
gives the same JSON here and on the command line. The OpenAPI schema at /openapi.json is the
contract. Bad input is a 4xx whose detail names the field and the value, never a 500:
unknown model 404, oversized upload 413, unreadable file or out-of-range parameter 422.
At most `[http] workers` analyses run at once; more requests wait their turn.
"""

from __future__ import annotations

import base64
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ValidationError

from flakescan.inference.analysis import (
    AnalysisParams,
    AnalysisService,
    Upload,
    check_served_name,
    kind_of_task,
    upload_path,
)
from flakescan.inference.registry import ModelNotFound

from .config import HttpConfig, ServiceConfig, with_address
from .http_token import read_token, require_token
from .uvicorn_thread import UvicornThread

__all__ = ["HttpServerThread", "create_app", "run_server"]

_CHUNK = 1 << 20
_FORM_OVERHEAD = 1 << 16  # multipart boundaries, headers and the params field


class Health(BaseModel):
    status: str
    version: str
    models_loaded: list[str]
    workers: int


class ModelInfo(BaseModel):
    name: str
    task: str
    kind: str | None  # the analysis that serves it (None: a flake-scan model)
    parameters: int
    input: dict[str, Any]
    output: dict[str, Any]
    card: dict[str, Any]


class AnalysisAnswer(BaseModel):
    kind: str
    model: dict[str, Any]
    results: list[dict[str, Any]]


def _field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {
            "field": ".".join(str(p) for p in e["loc"]) or "params",
            "value": e.get("input"),
            "message": e["msg"],
        }
        for e in exc.errors(include_url=False)
    ]


def create_app(cfg: ServiceConfig, service: AnalysisService | None = None) -> FastAPI:
    """The FastAPI application (uvicorn serves it; tests start it on a free port)."""
    service = service or AnalysisService(cfg.models, cfg.preselection)
    __version__ = version("flakescan")
    limiter = anyio.CapacityLimiter(cfg.http.workers)
    max_bytes = int(cfg.http.max_upload_mb * 1024 * 1024)
    app = FastAPI(
        title="flakescan analysis service",
        version=__version__,
        description="Powder-XRD phases, PACBED thickness and mistilt, structure-factor "
        "phases, with the models of the registry.",
    )

    form = (Path(__file__).with_name("http_form.html")).read_text(encoding="utf-8")

    @app.middleware("http")
    async def _refuse_oversized(request: Request, call_next):
        """A body announced larger than the limit is refused before it is read at all."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_bytes + _FORM_OVERHEAD:
            detail = (
                f"files: the request's {int(length) / 2**20:.1f} MB pass max_upload_mb = "
                f"{max_bytes / 2**20:g}"
            )
            return JSONResponse({"detail": detail}, status_code=413)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def browser_form() -> str:
        """Choose a model, upload a file, see the result and the validation picture."""
        return form

    @app.get("/v1/health", response_model=Health)
    def health() -> Health:
        return Health(
            status="ok",
            version=__version__,
            models_loaded=sorted(service.loaded_names()),
            workers=cfg.http.workers,
        )

    @app.get("/v1/models", response_model=list[ModelInfo])
    def models() -> list[ModelInfo]:
        return [
            ModelInfo(
                name=e.name,
                task=e.card.task,
                kind=kind_of_task(e.card.task),
                parameters=e.card.parameters,
                input=e.card.input.model_dump(mode="json"),
                output=e.card.output.model_dump(mode="json"),
                card=e.card.model_dump(mode="json"),
            )
            for e in service.registry.entries()
        ]

    @app.post("/v1/analyze/{model}", response_model=AnalysisAnswer)
    async def analyze(
        model: str,
        files: Annotated[list[UploadFile], File(description="the data files")],
        params: Annotated[
            str, Form(description="AnalysisParams as JSON (#/components/schemas/AnalysisParams)")
        ] = "{}",
        picture: Annotated[bool, Form(description="answer the validation picture")] = False,
    ) -> AnalysisAnswer:
        try:
            parsed = AnalysisParams.model_validate_json(params or "{}")
        except ValidationError as exc:
            raise HTTPException(422, _field_errors(exc)) from exc
        try:
            service.kind_of_model(check_served_name(model))
        except ModelNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except ValueError as exc:  # not an analysis model, or a card that does not load
            raise HTTPException(422, str(exc)) from exc
        with tempfile.TemporaryDirectory(prefix="flakescan-upload-") as tmp:
            uploads = await _save_uploads(files, Path(tmp), max_bytes)

            def run() -> tuple[dict, list[bytes | None]]:
                return service.analyze_uploads(model, uploads, parsed, picture=picture)

            try:
                doc, pictures = await anyio.to_thread.run_sync(run, limiter=limiter)
            except ValidationError as exc:
                raise HTTPException(422, _field_errors(exc)) from exc
            except (ValueError, OSError) as exc:
                raise HTTPException(422, str(exc)) from exc
        for result, png in zip(doc["results"], pictures, strict=True):
            if png is not None:
                result["picture_png_base64"] = base64.b64encode(png).decode("ascii")
        return AnalysisAnswer(**doc)

    def openapi() -> dict[str, Any]:
        """FastAPI's schema plus AnalysisParams, which travels as JSON in a form field."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas["AnalysisParams"] = AnalysisParams.model_json_schema()
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(ValidationError)
    async def _validation(_: Request, exc: ValidationError) -> JSONResponse:
        return JSONResponse({"detail": _field_errors(exc)}, status_code=422)

    if cfg.http.token_file is not None:  # added last: checked first, before any upload
        require_token(app, read_token(cfg.http.token_file))
    return app


async def _save_uploads(files: list[UploadFile], folder: Path, max_bytes: int) -> list[Upload]:
    """Each upload to a file in `folder`, refusing (413) once the total passes the limit."""
    if not files:
        raise HTTPException(422, "files: at least one file is needed")
    total, paths = 0, []
    for i, upload in enumerate(files):
        path = upload_path(folder, upload.filename, i)
        with path.open("wb") as out:
            while chunk := await upload.read(_CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise HTTPException(
                        413,
                        f"files: the upload passes max_upload_mb = {max_bytes / 2**20:g} "
                        f"(at {upload.filename!r})",
                    )
                out.write(chunk)
        paths.append(Upload(str(upload.filename or path.name), path))
    return paths


def run_server(cfg: ServiceConfig, host: str | None = None, port: int | None = None) -> None:
    """Serve until interrupted (`flakescan serve`); a host off loopback needs
    `[http] allow_remote = true`, as in the config file."""
    import uvicorn

    http = with_address(cfg.http, host, port)
    assert isinstance(http, HttpConfig)
    cfg = cfg.model_copy(update={"http": http})
    uvicorn.run(create_app(cfg), host=http.host, port=http.port, log_level="info")


class HttpServerThread(UvicornThread):
    """The HTTP service inside the daemon: uvicorn in a thread, beside the ZMQ loop, on
    the daemon's own AnalysisService (models loaded once for both)."""

    def __init__(self, cfg: ServiceConfig, service: AnalysisService) -> None:
        super().__init__(create_app(cfg, service), cfg.http.host, cfg.http.port, name="http")
