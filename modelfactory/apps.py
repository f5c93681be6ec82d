"""App config of the model factory."""
from django.apps import AppConfig


class ModelfactoryConfig(AppConfig):
    name = "modelfactory"
    verbose_name = "Model factory"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Architectures of installed packages join the zoo before any form or schema lists it.
        from modelfactory.architectures import architectures_from_packages

        architectures_from_packages()
