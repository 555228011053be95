"""LocalStack plugins that let the healthbook stack run in LocalStack's host mode, with no Docker engine.

* ``dynamodb:moto`` / ``dynamodbstreams:moto`` — DynamoDB served by moto instead of DynamoDB Local (which needs
  Java and a download). Enable with ``PROVIDER_OVERRIDE_DYNAMODB=moto PROVIDER_OVERRIDE_DYNAMODBSTREAMS=moto``.
* ``healthbook-process`` — a Lambda runtime executor that runs Python functions in warm worker subprocesses
  instead of containers. Enable with ``LAMBDA_RUNTIME_EXECUTOR=healthbook-process``.
* an ``on_infra_start`` hook that moves S3's object store under ``TMPDIR`` so that parallel LocalStacks do not
  share ``/tmp/localstack-s3-storage``.

``docs/localstack.md`` explains how they fit together.
"""
