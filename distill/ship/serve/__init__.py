"""distill serve: request protocol, service (batched model calls), app (FastAPI routes)."""
