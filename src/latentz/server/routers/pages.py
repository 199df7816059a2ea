"""The pages, their static files, the vendored npm files (onnxruntime-web, Swagger UI) and the API docs."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from latentz.server import assets
from latentz.server.answers import render_json
from latentz.server.dependencies import Server, ServerState
from latentz.server.errors import ApiError

OPENAPI_URL = "/openapi.json"
GET = ["GET", "HEAD"]

router = APIRouter(include_in_schema=False)


def _page(request: Request, state: ServerState, page: str) -> Response:
    return assets.serve_payload(
        request, assets.render_page(assets.web_file(assets.PAGES[page]), state.web_runtime)
    )


@router.api_route("/", methods=GET)
def index_page(request: Request, state: Server) -> Response:
    return _page(request, state, "")


@router.api_route("/codec", methods=GET)
def codec_page(request: Request, state: Server) -> Response:
    return _page(request, state, "codec")


@router.api_route("/receiver", methods=GET)
def receiver_page(request: Request, state: Server) -> Response:
    return _page(request, state, "receiver")


@router.api_route("/explorer", methods=GET)
def explorer_page(request: Request, state: Server) -> Response:
    return _page(request, state, "explorer")


@router.api_route("/favicon.ico", methods=GET)
def favicon() -> Response:
    return RedirectResponse("/static/favicon.svg")


@router.api_route("/static/{relative:path}", methods=GET)
def static_file(relative: str, request: Request) -> Response:
    return assets.serve_file(request, assets.web_file(relative))


def vendor_package(state: ServerState, package: str) -> assets.WebRuntime:
    """The vendored package of that name (onnxruntime-web or swagger-ui-dist), or a 404."""
    vendored = {runtime.package.name: runtime for runtime in (state.web_runtime, state.swagger_ui)}
    if package not in vendored:
        raise ApiError(404, f"/vendor/{package[:80]} is not served (only {', '.join(vendored)})", "not_found")
    return vendored[package]


@router.api_route("/vendor/{package}/{name}", methods=GET)
def vendor(package: str, name: str, request: Request, state: Server) -> Response:
    """An npm file at its unversioned URL (revalidated each visit)."""
    return assets.serve_file(request, assets.vendor_file(vendor_package(state, package), name))


@router.api_route("/vendor/{package}/{version}/{name}", methods=GET)
def versioned_vendor(package: str, version: str, name: str, request: Request, state: Server) -> Response:
    """An npm file at the URL that names its version: cached for good."""
    runtime = vendor_package(state, package)
    path = assets.vendor_file(runtime, name)
    assets.check_vendor_version(runtime, version)
    return assets.serve_file(request, path, immutable=True)


@router.api_route(OPENAPI_URL, methods=GET)
def openapi_document(request: Request, state: Server) -> Response:
    """The OpenAPI schema (fixed once the app runs): gzipped, with an ETag for a 304."""
    if not state.openapi_payload:
        schema = render_json(request.app.openapi())
        state.openapi_payload.append(assets.Payload.of(schema, "application/json"))
    return assets.serve_payload(request, state.openapi_payload[0])


@router.api_route("/docs", methods=GET)
def api_docs(request: Request, state: Server) -> Response:
    """Swagger UI on this API's schema, from node_modules (it works offline)."""
    title = f"{request.app.title} API"
    return assets.serve_payload(request, assets.api_docs_page(state.swagger_ui, OPENAPI_URL, title))


@router.api_route("/redoc", methods=GET)
def redoc() -> Response:
    return RedirectResponse("/docs")
