"""Prefect flows of pinas: the pipeline, its stage tasks, caching, UI artifacts and the command line."""
import os

# Must be set before Prefect is imported: route the library's "pinas" log lines into the Prefect run logs, and
# keep an offline machine from trying to send analytics.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pinas")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
