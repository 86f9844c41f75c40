"""Classification of batches: the batch function, and the Celery app and tasks around it."""
