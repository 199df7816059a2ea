"""The latentz web app: a torch-free FastAPI server for the codec, receiver and explorer pages.

``create_app()`` builds it; ``latentz serve`` runs it on uvicorn. The JSON API, its limits and
error statuses are documented at ``/docs`` (OpenAPI) and in `latentz.server.errors`.
"""

from latentz.server.app import create_app
from latentz.server.limits import Limits

__all__ = ["Limits", "create_app"]
