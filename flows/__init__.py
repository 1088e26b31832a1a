"""Prefect flows of pinas: the pipeline, its stage tasks, caching, UI artifacts and the command line."""
import os

# Must be set before Prefect is imported: keep an offline machine from trying to send analytics. (The library's
# "pinas" log lines are routed into the run logs by flows.ui.route_library_logs when a run starts.)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Without PREFECT_API_URL Prefect starts a temporary API server per run; its default 20 s to come up is too short on
# a busy machine (the CLI turns a timeout into one line saying what to do instead).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
