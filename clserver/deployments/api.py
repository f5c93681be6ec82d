"""REST API of deployments: one thin class per action."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from claas_site.errors import PayloadTooLarge
from clserver.deployments.ingest import deployment_ingest
from clserver.deployments.outputs import (
    DeploymentDetailSerializer,
    DeploymentSummarySerializer,
    DeploymentUpdateSerializer,
)
from clserver.deployments.selectors import deployment_events, deployment_get, deployment_list
from clserver.deployments.services import (
    deployment_create,
    deployment_delete,
    deployment_predict,
    deployment_rollback,
    deployment_update_cancel,
    deployment_update_request,
)
from clserver.deployments.serializers import (
    DeploymentCreateInputSerializer,
    DetectorSerializer,
    IngestInputSerializer,
    IngestOutputSerializer,
    PredictInputSerializer,
    PredictOutputSerializer,
    RollbackInputSerializer,
    UpdateRequestInputSerializer,
)
from clserver.drift.detectors import detector_list
from clserver.experiments.serializers import BodyInputSerializer

ERRORS = {code: OpenApiResponse(description="{\"error\": \"...\", \"details\": {...}}")
          for code in (400, 401, 403, 404, 409, 413)}
# A JSON body is parsed in memory: refuse larger ones before reading them (the limits: settings.py).
MAX_BODY_BYTES = settings.MAX_DEPLOYMENT_BODY_BYTES


def _validated(request: Request, serializer_class: type[BodyInputSerializer]) -> dict[str, Any]:
    """The body as its input serializer validates it; a too-large body is a 413 with one sentence."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The request body has {length} bytes; at most {MAX_BODY_BYTES} are allowed, "
                              "so send fewer rows per request.")
    try:
        body = request.data
    except RequestDataTooBig:
        raise PayloadTooLarge("The request body is too large; send fewer rows per request.") from None
    serializer = serializer_class(data=body)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class DetectorListApi(APIView):
    @extend_schema(summary="Drift detectors with their parameters, defaults and preprocess choices.",
                   responses={200: DetectorSerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(DetectorSerializer(detector_list(), many=True).data)


class DeploymentListApi(APIView):
    @extend_schema(summary="Your deployments.", responses={200: DeploymentSummarySerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(DeploymentSummarySerializer(deployment_list(owner=request.user), many=True).data)

    @extend_schema(summary="Deploy the final model of a completed experiment, or a registered model version "
                   "(then `source.reference` names a dataset for the reference sample, validation set and memory).",
                   request=DeploymentCreateInputSerializer, responses={201: DeploymentDetailSerializer, **ERRORS})
    def post(self, request: Request) -> Response:
        deployment = deployment_create(owner=request.user, raw=_validated(request, DeploymentCreateInputSerializer))
        return Response(DeploymentDetailSerializer(deployment).data, status=status.HTTP_201_CREATED)


class DeploymentDetailApi(APIView):
    @extend_schema(summary="Champion version, versions, drift checks and updates of a deployment.",
                   responses={200: DeploymentDetailSerializer, **ERRORS})
    def get(self, request: Request, name: str) -> Response:
        deployment = deployment_get(owner=request.user, name=name)
        return Response(DeploymentDetailSerializer(deployment).data)

    @extend_schema(summary="Delete a deployment that is not updating (MLflow keeps its history).",
                   responses={204: None, **ERRORS})
    def delete(self, request: Request, name: str) -> Response:
        deployment_delete(deployment=deployment_get(owner=request.user, name=name))
        return Response(status=status.HTTP_204_NO_CONTENT)


class DeploymentPredictApi(APIView):
    @extend_schema(summary="Predictions of the champion, and which version made them.",
                   request=PredictInputSerializer, responses={200: PredictOutputSerializer, **ERRORS})
    def post(self, request: Request, name: str) -> Response:
        deployment = deployment_get(owner=request.user, name=name)
        body = _validated(request, PredictInputSerializer)
        return Response(PredictOutputSerializer(deployment_predict(deployment=deployment,
                                                                   inputs=body.get("inputs"))).data)


class DeploymentIngestApi(APIView):
    @extend_schema(summary="Send labelled data: it is checked for drift and buffered; an update starts when the "
                   "trigger fires and enough samples are buffered.",
                   request=IngestInputSerializer, responses={200: IngestOutputSerializer, **ERRORS})
    def post(self, request: Request, name: str) -> Response:
        deployment = deployment_get(owner=request.user, name=name)
        body = _validated(request, IngestInputSerializer)
        return Response(IngestOutputSerializer(deployment_ingest(deployment=deployment, inputs=body.get("inputs"),
                                                                 labels=body.get("labels"))).data)


class DeploymentUpdateApi(APIView):
    @extend_schema(summary="Start an update now on the buffered data (optionally with another strategy or "
                   "training options for this update).",
                   request=UpdateRequestInputSerializer, responses={202: DeploymentUpdateSerializer, **ERRORS})
    def post(self, request: Request, name: str) -> Response:
        deployment = deployment_get(owner=request.user, name=name)
        update = deployment_update_request(deployment=deployment,
                                           raw=dict(_validated(request, UpdateRequestInputSerializer)))
        return Response(DeploymentUpdateSerializer(update).data, status=status.HTTP_202_ACCEPTED)


class DeploymentUpdateCancelApi(APIView):
    @extend_schema(summary="Cancel a queued or running update, named by its `id` (its number within the "
                   "deployment); its data goes back to the buffer.", request=None,
                   responses={202: DeploymentUpdateSerializer, **ERRORS})
    def post(self, request: Request, name: str, update_id: int) -> Response:
        deployment = deployment_get(owner=request.user, name=name)
        update = deployment_update_cancel(deployment=deployment, update_id=update_id)
        return Response(DeploymentUpdateSerializer(update).data, status=status.HTTP_202_ACCEPTED)


class DeploymentRollbackApi(APIView):
    @extend_schema(summary="Serve an earlier version again (one that served before).",
                   request=RollbackInputSerializer, responses={200: DeploymentDetailSerializer, **ERRORS})
    def post(self, request: Request, name: str) -> Response:
        deployment = deployment_get(owner=request.user, name=name)
        body = _validated(request, RollbackInputSerializer)
        deployment = deployment_rollback(deployment=deployment, version=body.get("version"))
        return Response(DeploymentDetailSerializer(deployment).data)


class DeploymentEventsApi(APIView):
    @extend_schema(summary="Stored drift-check and update events (after=<id> for the ones after an event).",
                   responses={200: OpenApiResponse(description="[{id, type, time, ...}]"), **ERRORS})
    def get(self, request: Request, name: str) -> Response:
        from clserver.experiments.events import event_as_message

        deployment = deployment_get(owner=request.user, name=name)
        try:
            after = max(0, int(request.query_params.get("after", 0)))
        except ValueError:
            after = 0
        return Response([event_as_message(e) for e in deployment_events(deployment=deployment, after=after)])
