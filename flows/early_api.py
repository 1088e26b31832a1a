"""Prefect's temporary API server, started while the CLI is still loading instead of after.

Without ``PREFECT_API_URL`` (environment or Prefect profile), the first Prefect client call of a run starts a
temporary API server and waits for it: about 2 s importing the server code, then about 3 s until the subprocess
answers, all of it before the first task, and the largest part of a cached re-run. :func:`start`, called by
``pinas-pipeline run`` / ``study`` once their input is checked (bad input never waits for a server), imports the
server code and starts the server from a thread, so its subprocess comes up on the other core while this process
imports the pipeline;
:func:`wait` joins the thread before the flow is called. Prefect keeps one such server per process
(``SubprocessASGIServer()`` is a singleton) and stops it at exit, so the flow's client finds it running and nothing
else changes. A failed start is left to the flow's own call, which raises the error
:func:`flows.cli.with_prefect_api` explains.
"""
from __future__ import annotations

import logging
import threading

log = logging.getLogger("pinas")
_thread: threading.Thread | None = None


def start() -> None:
    """Import the server code here (two threads importing at once only take turns), then start it in a thread."""
    global _thread
    if _thread is not None:
        return
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return  # a configured server, or none allowed: Prefect's own call decides
    from prefect.server.api.server import SubprocessASGIServer

    def run() -> None:
        server = SubprocessASGIServer()
        try:
            server.start()
        except Exception as exc:  # the flow's call starts a new one and reports the failure
            log.debug("early start of the temporary Prefect API failed: %s", exc)
            server.stop()  # Prefect stops at exit only the last server it started: this one would outlive us

    _thread = threading.Thread(target=run, name="prefect-temporary-api", daemon=True)
    _thread.start()


def wait() -> None:
    """Until the early start has finished (the server answers, or it failed); at once when none was begun."""
    if _thread is not None:
        _thread.join()
