# django-webhook declares its tasks on celery.current_app at import: our app must exist first.
from .celery import app as celery_app

__all__ = ["celery_app"]
