"""`latentz serve`: the web app (codec, receiver, explorer pages and the JSON API) on uvicorn."""

from __future__ import annotations

import os

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_command(
        host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 for all)."),
        port: int = typer.Option(8000, "--port", help="TCP port."),
        max_upload_mb: float = typer.Option(16.0, "--max-upload-mb", help="Largest upload accepted, in MiB."),
        max_pixels: int = typer.Option(
            24_000_000, "--max-pixels", help="Largest image (width x height) decoded; bigger is refused."
        ),
        jobs: int = typer.Option(
            0, "--jobs", help="Inference jobs run at once (0 = one per CPU core, at least 2)."
        ),
        log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    ) -> None:
        """Serve the installed models at http://HOST:PORT (pages, JSON API, OpenAPI docs at /docs)."""
        import uvicorn

        from latentz.server import Limits, create_app
        from latentz.server.assets import find_web_runtime

        web_runtime = find_web_runtime()
        if web_runtime.error:
            message = f"warning: {web_runtime.error}; the API works, the pages cannot run models"
            typer.secho(message, fg="yellow")
        limits = Limits(
            max_upload_bytes=int(max_upload_mb * 1024 * 1024),
            max_pixels=max_pixels,
            max_concurrent_jobs=jobs if jobs > 0 else max(2, os.cpu_count() or 2),
        )
        typer.echo(f"latentz: serving on http://{host}:{port}  (API docs at http://{host}:{port}/docs)")
        uvicorn.run(create_app(limits), host=host, port=port, log_level=log_level)
