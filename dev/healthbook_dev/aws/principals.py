"""Facility principals: one IAM user per facility, tagged ``facility=<MACSKCB>``.

The inbox and receipts bucket policies grant by that tag (attribute-based access), so creating the user
with the tag and the stack's facility policy is all it takes to let a facility upload under its own prefix
and read only its own receipts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from healthbook.kernel import is_facility_code


@dataclass(frozen=True)
class FacilityPrincipal:
    facility: str
    user_name: str
    arn: str
    access_key_id: str | None = None
    secret_access_key: str | None = None  # shown once, never stored by us


def user_name_for(stage: str, facility: str) -> str:
    return f"healthbook-{stage}-facility-{facility}"


def create_facility_principal(facility: str, *, stage: str, policy_arn: str | None, iam: Any = None,
                              create_access_key: bool = True) -> FacilityPrincipal:
    """Create (or reuse) the facility's IAM user, tag it, attach the facility policy, issue an access key."""
    if not is_facility_code(facility):
        raise ValueError(f"a facility code is 5 digits, not {facility!r}")
    if iam is None:
        import boto3  # type: ignore[import-untyped]

        iam = boto3.client("iam")
    name = user_name_for(stage, facility)
    tags = [{"Key": "facility", "Value": facility}, {"Key": "app", "Value": "healthbook"},
            {"Key": "stage", "Value": stage}]
    try:
        user = iam.create_user(UserName=name, Path="/healthbook/", Tags=tags)["User"]
    except iam.exceptions.EntityAlreadyExistsException:
        user = iam.get_user(UserName=name)["User"]
        iam.tag_user(UserName=name, Tags=tags)  # the tag is what grants access: make sure it is right
    if policy_arn:
        iam.attach_user_policy(UserName=name, PolicyArn=policy_arn)
    key_id = secret = None
    if create_access_key:
        key = iam.create_access_key(UserName=name)["AccessKey"]
        key_id, secret = key["AccessKeyId"], key["SecretAccessKey"]
    return FacilityPrincipal(facility=facility, user_name=name, arn=user["Arn"], access_key_id=key_id,
                             secret_access_key=secret)
