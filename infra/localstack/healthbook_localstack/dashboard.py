"""AWS::CloudWatch::Dashboard for LocalStack's CloudFormation, which has no provider for it and skips the resource.

LocalStack's CloudWatch serves PutDashboard/GetDashboard/DeleteDashboard; this provider calls them, so the stack's
ops dashboard exists on LocalStack as it does on AWS (docs/operations.md) and its body is checked by CloudWatch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import localstack.services.cloudformation.provider_utils as util
from localstack.services.cloudformation.resource_provider import (
    CloudFormationResourceProviderPlugin,
    OperationStatus,
    ProgressEvent,
    ResourceProvider,
    ResourceRequest,
)


class DashboardProperties(TypedDict, total=False):
    DashboardName: str
    DashboardBody: str


class DashboardProvider(ResourceProvider[DashboardProperties]):
    TYPE = "AWS::CloudWatch::Dashboard"
    SCHEMA = util.get_schema_path(Path(__file__))

    def _put(self, request: ResourceRequest[DashboardProperties]) -> ProgressEvent[DashboardProperties]:
        model = request.desired_state
        if not model.get("DashboardName"):
            model["DashboardName"] = util.generate_default_name(
                stack_name=request.stack_name, logical_resource_id=request.logical_resource_id)
        request.aws_client_factory.cloudwatch.put_dashboard(DashboardName=model["DashboardName"],
                                                            DashboardBody=model["DashboardBody"])
        return ProgressEvent(status=OperationStatus.SUCCESS, resource_model=model,
                             custom_context=request.custom_context)

    def create(self, request: ResourceRequest[DashboardProperties]) -> ProgressEvent[DashboardProperties]:
        return self._put(request)

    def update(self, request: ResourceRequest[DashboardProperties]) -> ProgressEvent[DashboardProperties]:
        return self._put(request)

    def read(self, request: ResourceRequest[DashboardProperties]) -> ProgressEvent[DashboardProperties]:
        raise NotImplementedError

    def delete(self, request: ResourceRequest[DashboardProperties]) -> ProgressEvent[DashboardProperties]:
        model = request.desired_state
        request.aws_client_factory.cloudwatch.delete_dashboards(DashboardNames=[model["DashboardName"]])
        return ProgressEvent(status=OperationStatus.SUCCESS, resource_model=model,
                             custom_context=request.custom_context)


class DashboardProviderPlugin(CloudFormationResourceProviderPlugin):
    name = "AWS::CloudWatch::Dashboard"

    def __init__(self) -> None:
        self.factory: type[ResourceProvider] | None = None

    def load(self) -> None:
        self.factory = DashboardProvider
