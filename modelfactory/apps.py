"""App config of the model factory."""
from django.apps import AppConfig


class ModelfactoryConfig(AppConfig):
    name = "modelfactory"
    verbose_name = "Model factory"
    default_auto_field = "django.db.models.BigAutoField"
