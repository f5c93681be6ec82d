"""URL map: the seed's base scenario, the REST resources, the API docs, the GUI."""
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from claas_site.auth_api import TokenRotateApi
from claas_site.health import healthz
from claas_site.login_limit import AdminLoginLimitedForm, LoginLimitedForm, answers_429_when_locked

# Malformed requests, unknown paths and unhandled failures under the API answer JSON in the error format.
handler400 = "claas_site.errors.bad_request"
handler404 = "claas_site.errors.not_found"
handler500 = "claas_site.errors.server_error"

admin.site.login_form = AdminLoginLimitedForm

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("base-scenario/", include("clserver.urls_base")),
    path("api/auth/token/rotate", TokenRotateApi.as_view(), name="token-rotate"),
    path("api/", include("modelfactory.urls")),
    path("api/", include("clserver.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    # Both sign-in pages count attempts (claas_site/login_limit.py) and answer 429 while locked.
    path("accounts/login/", answers_429_when_locked(
        auth_views.LoginView.as_view(authentication_form=LoginLimitedForm)), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/login/", answers_429_when_locked(admin.site.login)),
    path("admin/", admin.site.urls),
    path("", include("frontend.urls")),
]
