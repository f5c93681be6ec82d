"""A job worker for one queue: `manage.py run_worker --queue train|default` (run_huey's options)."""
from __future__ import annotations

import logging

from django.conf import settings
from django.core.management.base import CommandError
from django.utils.module_loading import autodiscover_modules
from huey.consumer_options import ConsumerConfig
from huey.contrib.djhuey.management.commands.run_huey import Command as RunHueyCommand


class Command(RunHueyCommand):
    help = ("Run a job worker. In the scaled mode each worker serves one queue: `train` "
            "(training, model updates; GPU machines) or `default` (drift checks, light jobs). "
            "In the embedded mode one worker serves both and --queue may be left out.")

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--queue", choices=["train", "default"], default=None,
                            help="the queue this worker serves")

    def handle(self, *args, **options) -> None:
        # Imported here: the queues need the app registry, which is ready only now.
        from clserver.jobs.queues import queue_huey, queues_separate, worker_device

        queue = options.pop("queue")
        if queue is None:
            if queues_separate():
                raise CommandError("In the scaled mode each worker serves one queue: pass --queue train "
                                   "(training, GPU machines) or --queue default (drift checks, light jobs).")
            queue = "default"
        huey = queue_huey(queue=queue)

        consumer_options = dict(settings.HUEY.get("consumer", {}))
        consumer_options.update({key: value for key, value in options.items()
                                 if value is not None and key in ConsumerConfig._fields})
        if not options.get("disable_autoload"):
            autodiscover_modules("tasks")
        config = ConsumerConfig(**consumer_options)
        config.validate()
        logger = logging.getLogger("huey")
        if not logger.handlers:
            config.setup_logger(logger)
        served = f"queue '{queue}'" if queues_separate() else "every queue"
        logger.info("CLaaS worker for %s on device %s", served, worker_device())
        huey.create_consumer(**config.values).run()
