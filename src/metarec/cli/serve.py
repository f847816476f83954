"""``metarec serve``: the HTTP service (FastAPI + uvicorn) over a saved recommender or a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from metarec.cli.options import HNSW_OPTION, TOP_K_OPTION, err_console, errors, top_k_settings


def serve(
    run: Path = typer.Argument(..., help="A saved recommender folder or a run folder written by `metarec train`."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind; 0.0.0.0 exposes the service to the network."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="METAREC_API_KEY", show_default=False,
                                          help="Require this value in the X-API-Key header of /v1 routes "
                                               "(prefer the environment variable: arguments show in `ps`)."),
    workers: int = typer.Option(1, min=1, help="Worker processes; each loads the model and uses one torch thread."),
    batching: bool = typer.Option(True, "--batching/--no-batching",
                                  help="Adapt concurrent /v1/recommend requests together (one inference thread)."),
    batch_size: int = typer.Option(4, min=1, help="Most users per vectorised call when batching (4 is fastest "
                                                  "per user for MeLU's shapes on ML-1M)."),
    batch_wait_ms: float = typer.Option(0.0, min=0.0, help="Wait this long for more requests once one is queued "
                                                           "(0: batch only what is already waiting)."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="Log every request (uvicorn's access log)."),
    top_k: str = TOP_K_OPTION,
    hnsw: List[str] = HNSW_OPTION,
) -> None:
    """Serve recommendations over HTTP (FastAPI + uvicorn); OpenAPI docs at /docs."""
    with errors():
        import json
        import os
        from dataclasses import asdict

        from metarec.errors import require_extra

        for module in ("fastapi", "uvicorn", "h11"):  # the web stack is the [serve] extra
            require_extra(module, "serve", "metarec serve")
        top_k, hnsw_config = top_k_settings(top_k, hnsw)
        import uvicorn

        from metarec.serve.app import ENV_API_KEY, ENV_DIR, ENV_OPTIONS, create_app
        from metarec.serve.recommender import ColdStartRecommender

        options = {"batching": batching, "batch_size": batch_size, "batch_wait_ms": batch_wait_ms,
                   "item_writes": workers == 1}  # POST /v1/items: a new item would live in one worker only
        # a bad folder fails here, in one line, before binding (and an approximate index is built once)
        recommender = ColdStartRecommender.load(run, top_k=top_k, hnsw=hnsw_config)
        err_console.print(f"serving {run} (model {recommender.model_version}) on http://{host}:{port}, "
                          f"docs at /docs, {workers} worker(s), batching {'on' if batching else 'off'}, "
                          f"{recommender.info()['top_k']['mode']} top-k{'' if api_key else ', no API key'}",
                          highlight=False)
        if workers == 1:
            from metarec.serve.protocol import server_options

            uvicorn.run(create_app(recommender, api_key=api_key, **options), host=host, port=port,
                        access_log=access_log, **server_options())
            return
        del recommender  # each worker process loads its own copy
        os.environ[ENV_DIR] = str(run.resolve())
        os.environ[ENV_OPTIONS] = json.dumps({**options, "top_k": top_k,
                                              "hnsw": None if hnsw_config is None else asdict(hnsw_config)})
        if api_key:
            os.environ[ENV_API_KEY] = api_key
        # One SO_REUSEPORT socket per worker process (metarec.serve.workers explains why not uvicorn's
        # workers=N: its shared socket hands a burst of connections to one process).
        from metarec.serve.workers import serve_reuse_port

        serve_reuse_port(host, port, workers, access_log=access_log)

