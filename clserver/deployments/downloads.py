"""Downloads of a deployment's versions, in the formats that load without CLaaS (modelfactory/exports.py)."""
from __future__ import annotations

from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.views import APIView

from claas_site.negotiation import FormatIsNotARenderer
from claas_site.errors import NotFound
from clserver.deployments.paths import data_path
from clserver.deployments.selectors import deployment_get
from modelfactory.exports import DOWNLOAD_FORMATS, export_file


class DeploymentVersionDownloadApi(APIView):
    content_negotiation_class = FormatIsNotARenderer

    @extend_schema(
        summary="Download a deployment version: its state_dict, a torch.export program or TorchScript.",
        parameters=[OpenApiParameter("format", OpenApiTypes.STR, enum=list(DOWNLOAD_FORMATS), default="state_dict",
                                     description="state_dict (torch.load(path, weights_only=True)), pt2 "
                                                 "(torch.export.load(path).module()) or torchscript (traced; not "
                                                 "for uploaded programs).")],
        responses={(200, "application/octet-stream"): OpenApiResponse(description="model file"),
                   **{code: OpenApiResponse(description="{\"error\": \"...\", \"details\": {...}}")
                      for code in (400, 404, 429)}},
    )
    def get(self, request: Request, name: str, version: int) -> FileResponse:
        deployment = deployment_get(owner=request.user, name=name)
        found = deployment.versions.filter(version=version).first()
        if found is None:
            raise NotFound(f"Deployment '{name}' has no version {version}.")
        format = request.query_params.get("format", "state_dict")
        path = export_file(weights=data_path(found.weights_file), architecture=deployment.architecture,
                           params=deployment.model_params, format=format, owner=deployment.owner,
                           what=f"deployment '{name}' version {version}")
        return FileResponse(open(path, "rb"), as_attachment=True, filename=f"{name}-v{version}{DOWNLOAD_FORMATS[format]}",
                            content_type="application/octet-stream")
