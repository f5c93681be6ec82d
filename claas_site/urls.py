"""URL map: the seed's base scenario, the REST resources, the API docs, the GUI."""
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from claas_site.auth_api import TokenRotateApi
from claas_site.health import healthz

# Unknown paths and unhandled failures under the API answer JSON in the error format.
handler404 = "claas_site.errors.not_found"
handler500 = "claas_site.errors.server_error"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("base-scenario/", include("clserver.urls_base")),
    path("api/auth/token/rotate", TokenRotateApi.as_view(), name="token-rotate"),
    path("api/", include("modelfactory.urls")),
    path("api/", include("clserver.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", include("frontend.urls")),
]
