from django.db import models


class Item(models.Model):
    """Listed in DJANGO_WEBHOOK["MODELS"]: every save fires django-webhook's post_save listener."""

    name = models.CharField(max_length=100)
    status = models.CharField(max_length=20, default="success")
    tokens = models.IntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)


class Plain(models.Model):
    """The same fields, no webhooks: the baseline for save() overhead."""

    name = models.CharField(max_length=100)
    status = models.CharField(max_length=20, default="success")
    tokens = models.IntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
