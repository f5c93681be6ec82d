"""ASGI entry point, served by uvicorn (claas_site/web.py): HTTP through Django (token `predict` calls by a
fast path, hot reads on a thread pool) behind the body limits, websockets through Channels."""
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "claas_site.settings")
django.setup(set_prefix=False)  # as get_asgi_application() does

from clserver.serving.pooled_reads import PooledReadsHandler  # noqa: E402  (needs Django set up first)

django_asgi_app = PooledReadsHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from clserver.serving.body_limit import BodyLimit  # noqa: E402
from clserver.serving.long_lived import freeze_long_lived  # noqa: E402
from claas_site.routing import SameOriginValidator, websocket_urlpatterns  # noqa: E402
from clserver.serving.predict_fast import PredictFastPath  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Oversized bodies get 413, large anonymous ones 401, before a byte of the body is read.
        "http": BodyLimit(PredictFastPath(django_asgi_app)),
        # The Origin must be the site's own, port included (claas_site/routing.py).
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
freeze_long_lived()  # Django, DRF and Channels are loaded: their objects live as long as the process
