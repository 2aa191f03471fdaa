from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from inference import registry
from inference.selectors import job_get
from inference.serializers import JobOutputSerializer
from inference.services import job_cancel


class JobDetailApi(APIView):
    @extend_schema(responses=JobOutputSerializer)
    def get(self, request: Request, job_id: int) -> Response:
        job = job_get(owner=request.user, job_id=job_id)
        return Response(JobOutputSerializer(job).data)


class JobCancelApi(APIView):
    @extend_schema(request=None, responses=JobOutputSerializer)
    def post(self, request: Request, job_id: int) -> Response:
        """Stop the job: a queued one never starts, a running one stops within one engine
        step and keeps its partial answer. 409 if it already finished."""
        job = job_cancel(job=job_get(owner=request.user, job_id=job_id))
        return Response(JobOutputSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class ModelListApi(APIView):
    class OutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
        name = serializers.CharField()
        engine = serializers.CharField()
        description = serializers.CharField()
        queue = serializers.CharField()
        max_model_len = serializers.IntegerField()
        default_max_tokens = serializers.IntegerField()

    @extend_schema(responses=OutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        specs = sorted(registry.models().values(), key=lambda s: s.name)
        return Response(self.OutputSerializer(specs, many=True).data)
