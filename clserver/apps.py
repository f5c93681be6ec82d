"""App config of the CL server."""
from django.apps import AppConfig


class ClserverConfig(AppConfig):
    name = "clserver"
    verbose_name = "CL server"
    default_auto_field = "django.db.models.BigAutoField"
