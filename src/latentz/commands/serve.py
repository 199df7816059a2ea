"""`latentz serve`: the web app (codec, receiver, explorer pages and the JSON API) on uvicorn."""

from __future__ import annotations

import dataclasses
import json
import os

import typer

from latentz.commands import user_command


def default_jobs(workers: int) -> int:
    """Inference jobs per worker when not given: the machine's cores shared out (at least 2 in all)."""
    return max(1, max(2, os.cpu_count() or 2) // max(1, workers))


@user_command
def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    workers: int = typer.Option(
        1, "--workers", min=1, help="Server processes (each loads the models and has its own --jobs)."
    ),
    max_upload_mb: float = typer.Option(16.0, "--max-upload-mb", help="Largest upload accepted, in MiB."),
    max_pixels: int = typer.Option(
        24_000_000, "--max-pixels", help="Largest image (width x height) decoded; bigger is refused."
    ),
    max_spatial_side: int = typer.Option(
        1024,
        "--max-spatial-side",
        min=8,
        help="Photo models code at most this many pixels a side: bigger uploads are scaled down, "
        "bigger .latentz files refused (decode memory is about 220 MB per megapixel).",
    ),
    jobs: int = typer.Option(
        0,
        "--jobs",
        help="Inference jobs run at once per worker (0 = the CPU cores shared out between workers).",
    ),
    queue_timeout: float = typer.Option(
        30.0, "--queue-timeout", help="Seconds a request may wait for an inference slot before a 429."
    ),
    max_waiting_per_client: int = typer.Option(
        64, "--max-waiting-per-client", min=1, help="Requests one client IP may have waiting (more: 429)."
    ),
    body_timeout: float = typer.Option(
        300.0, "--body-timeout", help="Seconds a whole request body may take to arrive (408 after)."
    ),
    header_timeout: float = typer.Option(
        10.0,
        "--header-timeout",
        min=0.1,
        help="Seconds a connection may take to send a whole request head (then 408 and closed).",
    ),
    allowed_host: list[str] = typer.Option(
        [],
        "--allowed-host",
        help="A host name the server answers to, besides its IP addresses, localhost and --host "
        "(repeatable; * for any). Other Host headers get 421: DNS rebinding.",
    ),
    allow_origin: list[str] = typer.Option(
        [],
        "--allow-origin",
        help="Another site (scheme://host[:port]) whose pages may run the models (repeatable). "
        "Other sites' requests get 403.",
    ),
    timeout_keep_alive: int = typer.Option(
        5, "--timeout-keep-alive", help="Seconds an idle keep-alive connection is held open."
    ),
    forwarded_allow_ips: str = typer.Option(
        "127.0.0.1",
        "--forwarded-allow-ips",
        help="Proxies whose X-Forwarded-For is trusted as the client address (comma-separated, or *).",
    ),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve the installed models at http://HOST:PORT (pages, JSON API, OpenAPI docs at /docs)."""
    import uvicorn

    from latentz.server import Limits
    from latentz.server.app import LIMITS_ENVIRONMENT
    from latentz.server.assets import find_web_runtime
    from latentz.server.origins import OriginError, is_ip_address, normalise_host, normalise_origin

    try:
        origins = tuple(normalise_origin(origin) for origin in allow_origin)
    except OriginError as error:
        raise typer.BadParameter(str(error), param_hint="--allow-origin") from None
    try:
        hosts = tuple(normalise_host(name) for name in allowed_host)
    except OriginError as error:
        raise typer.BadParameter(str(error), param_hint="--allowed-host") from None
    listens_on_name = bool(host) and not is_ip_address(host.strip("[]"))
    if listens_on_name:
        hosts += (host,)  # the name it was told to listen on
    web_runtime = find_web_runtime()
    if web_runtime.error:
        message = f"warning: {web_runtime.detail}; the API works, the pages cannot run models"
        typer.secho(message, fg="yellow")
    limits = Limits(
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_pixels=max_pixels,
        max_spatial_side=max_spatial_side,
        max_concurrent_jobs=jobs if jobs > 0 else default_jobs(workers),
        queue_timeout_s=queue_timeout,
        max_waiting_per_client=max_waiting_per_client,
        body_timeout_s=body_timeout,
        header_timeout_s=header_timeout,
        allowed_hosts=hosts,
        allowed_origins=origins,
    )
    # Every worker process builds its own app from these (uvicorn imports the factory by name).
    os.environ[LIMITS_ENVIRONMENT] = json.dumps(dataclasses.asdict(limits))
    plural = "s" if workers > 1 else ""
    typer.echo(
        f"latentz: serving on http://{host}:{port} with {workers} worker{plural}, "
        f"{limits.max_concurrent_jobs} inference job(s) each  (API docs at http://{host}:{port}/docs)"
    )
    if host in ("0.0.0.0", "::", "[::]") and "*" not in hosts:  # reachable by names too: say which
        names = ", ".join(("localhost", *hosts))
        typer.echo(
            f"latentz: answering to IP addresses and {names}; other host names get 421 "
            "(add them with --allowed-host NAME)"
        )
    uvicorn.run(
        "latentz.server.app:create_app_from_environment",
        factory=True,
        http="latentz.server.protocol:GuardedH11Protocol",  # header timeout, close after a 413
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        timeout_keep_alive=timeout_keep_alive,
        forwarded_allow_ips=forwarded_allow_ips,
        proxy_headers=True,
    )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
