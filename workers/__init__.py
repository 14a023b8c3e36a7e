"""Consumer side: the Celery app, chunk tasks, the per-GPU worker launcher and the chunk pipeline."""
