"""REST API of the CL server: one thin class per action."""
from __future__ import annotations

from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from claas_site.errors import NotFound
from claas_site.negotiation import FormatIsNotARenderer
from clserver.experiments import selectors
from clserver.experiments import services
from clserver.experiments.options import overwrite_pop
from modelfactory.exports import DOWNLOAD_FORMATS, export_file
from clserver.experiments.serializers import (
    EventSerializer,
    ExperimentOutputSerializer,
    ExperimentResultsSerializer,
    ExperimentSetupInputSerializer,
    ExperimentStatusSerializer,
)

ERRORS = {code: OpenApiResponse(description="{\"error\": \"...\", \"details\": {...}}")
          for code in (400, 401, 403, 404, 409)}


# --- the base scenario -------------------------------------------------------------------------
class ExperimentSetupApi(APIView):
    @extend_schema(summary="Set up an experiment with its options.", request=ExperimentSetupInputSerializer,
                   responses={201: ExperimentOutputSerializer, **ERRORS})
    def post(self, request: Request) -> Response:
        serializer = ExperimentSetupInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        raw, overwrite = overwrite_pop(raw=serializer.validated_data)
        experiment = services.experiment_setup(owner=request.user, raw=raw, overwrite=overwrite)
        return Response(ExperimentOutputSerializer(experiment).data, status=status.HTTP_201_CREATED)


class ExperimentExecApi(APIView):
    @extend_schema(summary="Train the model continually (queues the experiment).", request=None,
                   responses={202: ExperimentStatusSerializer, **ERRORS})
    def post(self, request: Request, username: str, exp_name: str) -> Response:
        selectors.path_user_check(user=request.user, username=username)
        experiment = services.experiment_execute(owner=request.user, name=exp_name)
        return Response(ExperimentStatusSerializer(experiment).data, status=status.HTTP_202_ACCEPTED)


class ExperimentResultsApi(APIView):
    @extend_schema(summary="Final results and model (partial while running).",
                   responses={200: ExperimentResultsSerializer, **ERRORS})
    def get(self, request: Request, username: str, exp_name: str) -> Response:
        selectors.path_user_check(user=request.user, username=username)
        experiment = selectors.experiment_get(owner=request.user, name=exp_name)
        return Response(ExperimentResultsSerializer(selectors.experiment_results(experiment=experiment)).data)


class ExperimentStatusApi(APIView):
    @extend_schema(summary="Progress of an experiment.", responses={200: ExperimentStatusSerializer, **ERRORS})
    def get(self, request: Request, username: str, exp_name: str) -> Response:
        selectors.path_user_check(user=request.user, username=username)
        experiment = selectors.experiment_get(owner=request.user, name=exp_name)
        return Response(ExperimentStatusSerializer(experiment).data)


# --- experiments as a resource -------------------------------------------------------------
class ExperimentListApi(APIView):
    @extend_schema(summary="Your experiments, newest first.", responses={200: ExperimentOutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        experiments = selectors.experiment_list(owner=request.user).select_related("owner")
        return Response(ExperimentOutputSerializer(experiments, many=True).data)


class ExperimentDetailApi(APIView):
    @extend_schema(summary="One experiment.", responses={200: ExperimentOutputSerializer, **ERRORS})
    def get(self, request: Request, exp_name: str) -> Response:
        experiment = selectors.experiment_get(owner=request.user, name=exp_name)
        return Response(ExperimentOutputSerializer(experiment).data)

    @extend_schema(summary="Delete an experiment that is not queued or running.", responses={204: None, **ERRORS})
    def delete(self, request: Request, exp_name: str) -> Response:
        services.experiment_delete(owner=request.user, name=exp_name)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ExperimentCancelApi(APIView):
    @extend_schema(summary="Cancel a queued or running experiment (it stops at the next iteration).",
                   request=None, responses={202: ExperimentStatusSerializer, **ERRORS})
    def post(self, request: Request, exp_name: str) -> Response:
        experiment = services.experiment_cancel(owner=request.user, name=exp_name)
        return Response(ExperimentStatusSerializer(experiment).data, status=status.HTTP_202_ACCEPTED)


class ExperimentEventsApi(APIView):
    @extend_schema(summary="Stored progress events (after=<id> for the ones after an event).",
                   responses={200: EventSerializer(many=True), **ERRORS})
    def get(self, request: Request, exp_name: str) -> Response:
        from clserver.experiments.events import event_as_message

        experiment = selectors.experiment_get(owner=request.user, name=exp_name)
        try:
            after = max(0, int(request.query_params.get("after", 0)))
        except ValueError:
            after = 0
        events = selectors.experiment_events(experiment=experiment, after=after)
        return Response([event_as_message(e) for e in events])


class ExperimentModelDownloadApi(APIView):
    content_negotiation_class = FormatIsNotARenderer

    @extend_schema(summary="Download the final model: its state_dict (torch.load(..., weights_only=True)), a "
                           "torch.export program (torch.export.load(path).module()) or TorchScript.",
                   parameters=[OpenApiParameter("format", OpenApiTypes.STR, enum=list(DOWNLOAD_FORMATS),
                                                default="state_dict",
                                                description="state_dict, pt2 or torchscript (not for uploaded "
                                                            "programs).")],
                   responses={(200, "application/octet-stream"): OpenApiResponse(description="model file"),
                              **ERRORS})
    def get(self, request: Request, exp_name: str) -> FileResponse:
        experiment = selectors.experiment_get(owner=request.user, name=exp_name)
        path = services.experiment_model_path(experiment=experiment)
        if path is None:
            raise NotFound(f"Experiment '{exp_name}' has no final model yet.")
        format = request.query_params.get("format", "state_dict")
        model = experiment.options["model"]
        path = export_file(weights=path, architecture=model["architecture"], params=model["params"], format=format,
                           owner=experiment.owner, what=f"experiment '{exp_name}'")
        return FileResponse(open(path, "rb"), as_attachment=True, filename=f"{exp_name}{DOWNLOAD_FORMATS[format]}",
                            content_type="application/octet-stream")
