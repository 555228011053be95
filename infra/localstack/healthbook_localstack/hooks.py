"""Start-up hooks."""

from __future__ import annotations

import logging
import os
import tempfile

from localstack.runtime import hooks

LOG = logging.getLogger(__name__)


@hooks.on_infra_start(priority=100)
def s3_storage_under_tmpdir() -> None:
    """Keep S3 object data under this LocalStack's TMPDIR instead of the hard-coded /tmp/localstack-s3-storage.

    Two LocalStacks on one machine (two worktrees, two CI jobs) would otherwise share and wipe each other's
    objects. Runs before any service is loaded, so the S3 provider picks the patched value up when it is created.
    """
    if os.environ.get("HB_S3_STORAGE_UNDER_TMPDIR", "1") in ("0", "false", "no"):
        return
    from localstack.services.s3 import provider

    target = os.path.join(tempfile.gettempdir(), "localstack-s3-storage")
    if target != provider.DEFAULT_S3_TMP_DIR:
        provider.DEFAULT_S3_TMP_DIR = target
        LOG.debug("S3 object store moved to %s", target)


@hooks.on_infra_start(priority=100)
def moto_transactions_copy_tables_once() -> None:
    """DynamoDB here is moto (dynamodb.py), whose transactions copy a table once per item: see
    moto_transactions.py. HB_MOTO_COPY_TABLES_ONCE=0 keeps moto as it is."""
    if os.environ.get("HB_MOTO_COPY_TABLES_ONCE", "1") in ("0", "false", "no"):
        return
    from healthbook_localstack.moto_transactions import install

    install()
    LOG.debug("moto transactions copy each table once")


@hooks.on_infra_start(priority=100)
def moto_queries_by_partition() -> None:
    """DynamoDB here is moto, whose Query lists and sorts the whole table to answer for one partition: see
    moto_queries.py. HB_MOTO_QUERY_PARTITION=0 keeps moto as it is."""
    if os.environ.get("HB_MOTO_QUERY_PARTITION", "1") in ("0", "false", "no"):
        return
    from healthbook_localstack.moto_queries import install

    install()
    LOG.debug("moto queries read one partition")


@hooks.on_infra_start(priority=100)
def meter_requests() -> None:
    """Every request counted by service, operation and origin, served at /_healthbook/requests: the input of the
    whole bill (metering.py, docs/cost.md). HB_METERING=0 turns it off."""
    from healthbook_localstack.dynamodb import metering_on

    if not metering_on():
        return
    from healthbook_localstack.metering import install

    install()
    LOG.debug("requests metered at /_healthbook/requests")


@hooks.on_infra_start(priority=99)
def moto_transaction_conflicts() -> None:
    """DynamoDB's TransactionConflict, which moto never answers, modelled while the fault switchboard turns it on
    (``dynamodb.conflicts``; docs/faults.md). Off by default; HB_DYNAMODB_CONFLICTS=0 leaves moto unpatched."""
    if os.environ.get("HB_DYNAMODB_CONFLICTS", "1") in ("0", "false", "no"):
        return
    from healthbook_localstack.faults import DynamoConflicts, Switchboard
    from healthbook_localstack.moto_transactions import ConflictModel, install_conflicts

    source = DynamoConflicts(Switchboard())
    install_conflicts(ConflictModel(rule_source=source.rule, report=source.save))
    LOG.debug("DynamoDB transaction conflicts modelled when the switchboard says so")


@hooks.on_infra_start(priority=100)
def stepfunctions_parse_each_jsonpath_once() -> None:
    """LocalStack's Step Functions interpreter parses every JSONPath again on every evaluation, and jsonpath_ng
    builds its LALR parser tables each time: about 40 % of LocalStack's CPU in ``make demo`` (py-spy). A parsed
    path is immutable, so each distinct path is parsed once. HB_JSONPATH_CACHE=0 keeps LocalStack as it is."""
    if os.environ.get("HB_JSONPATH_CACHE", "1") in ("0", "false", "no"):
        return
    import functools
    import sys

    import jsonpath_ng
    import jsonpath_ng.ext

    plain = functools.lru_cache(maxsize=4096)(jsonpath_ng.parse)
    extended = functools.lru_cache(maxsize=4096)(jsonpath_ng.ext.parse)
    jsonpath_ng.parse = plain
    jsonpath_ng.ext.parse = extended
    # modules that imported the names already keep their own reference
    for name, cached in (("localstack.services.stepfunctions.asl.utils.json_path", extended),
                         ("localstack.services.stepfunctions.asl.component.common.path.result_path", plain)):
        module = sys.modules.get(name)
        if module is not None:
            module.parse = cached  # type: ignore[attr-defined]
    LOG.debug("JSONPath parses cached")



@hooks.on_infra_start(priority=100)
def stepfunctions_keep_task_clients() -> None:
    """LocalStack's Step Functions interpreter assumes the role and builds a boto3 client for every task state:
    about a quarter of its busy CPU under ``make bench-load``. One client is kept per service, region and role
    (stepfunctions_clients.py). HB_SFN_CLIENT_CACHE=0 keeps LocalStack as it is."""
    if os.environ.get("HB_SFN_CLIENT_CACHE", "1") in ("0", "false", "no"):
        return
    from healthbook_localstack.stepfunctions_clients import install

    install()
    LOG.debug("Step Functions task clients kept per service, region and role")


@hooks.on_infra_start(priority=100)
def stepfunctions_distributed_map() -> None:
    """A Distributed Map as the enrolment workflow uses it on AWS: ItemBatcher, EXPRESS children, tolerated
    failures and the ResultWriter's result files (distributed_map.py). HB_DISTRIBUTED_MAP=0 keeps LocalStack's."""
    if os.environ.get("HB_DISTRIBUTED_MAP", "1") in ("0", "false", "no"):
        return
    from healthbook_localstack.distributed_map import install

    install()
    LOG.debug("Distributed Map: ItemBatcher, EXPRESS children, tolerated failures, result files")


@hooks.on_infra_start(priority=100)
def lambda_service_metrics_off() -> None:
    """LocalStack publishes Lambda's own ``Invocations``/``Errors`` metrics with one CloudWatch ``PutMetricData``
    per invocation: under `make bench-load` one request in seven the emulator serves, on its one busy core, for
    metrics no benchmark reads (AWS publishes them for free; the bill leaves them out). Opt-in
    (``HB_LAMBDA_SERVICE_METRICS=0``, which ``make bench-load`` sets): the e2e suite keeps them."""
    if os.environ.get("HB_LAMBDA_SERVICE_METRICS", "1") not in ("0", "false", "no"):
        return
    from localstack.services.lambda_.invocation import version_manager

    def skipped(function_name: str, account_id: str, region_name: str) -> None:
        return None

    version_manager.record_cw_metric_invocation = skipped  # the names version_manager calls them by
    version_manager.record_cw_metric_error = skipped
    LOG.debug("Lambda service metrics not published")


@hooks.on_infra_start(priority=100)
def sqs_event_source_concurrency() -> None:
    """LocalStack polls each SQS event source mapping with one thread that invokes the function synchronously,
    batch after batch: the function never runs more than once at a time, whatever ``ScalingConfig`` says. AWS
    scales its pollers up to ``MaximumConcurrency``. This starts that many pollers (at most
    ``HB_SQS_ESM_MAX_POLLERS``, default 5; one without a ScalingConfig, as before) on the same queue; each runs
    LocalStack's own ``poll_events`` (receive, invoke, delete or report failures). Opt-in for now
    (``HB_SQS_ESM_CONCURRENCY=1``, which ``make bench-load`` sets): the e2e suite has not been run with it."""
    if os.environ.get("HB_SQS_ESM_CONCURRENCY", "0") not in ("1", "true", "yes"):
        return
    from localstack import config
    from localstack.services.lambda_.event_source_mapping.esm_worker import EsmWorker
    from localstack.services.lambda_.event_source_mapping.pollers.poller import EmptyPollResultsException
    from localstack.utils.threads import FuncThread

    limit = int(os.environ.get("HB_SQS_ESM_MAX_POLLERS", "5"))
    original_start = EsmWorker.start

    def extra_poller(worker: EsmWorker) -> None:
        while not worker._shutdown_event.is_set():
            wait = config.LAMBDA_EVENT_SOURCE_MAPPING_POLL_INTERVAL_SEC
            try:
                worker.poller.poll_events()
            except EmptyPollResultsException:
                wait = 1.0
            except Exception as exc:  # the main poller logs and counts errors; back off as it does
                LOG.debug("extra SQS poller of %s: %s", worker.uuid, exc)
                wait = 2.0
            worker._shutdown_event.wait(wait)

    def start(self: EsmWorker) -> None:
        original_start(self)
        if not str(self.esm_config.get("EventSourceArn", "")).startswith("arn:aws:sqs:"):
            return
        pollers = min(limit, int((self.esm_config.get("ScalingConfig") or {}).get("MaximumConcurrency") or 1))
        for number in range(1, pollers):
            FuncThread(extra_poller, self, name=f"event-source-mapping-poller-{self.uuid}-{number}").start()

    EsmWorker.start = start  # type: ignore[method-assign]
    LOG.debug("SQS event sources polled by up to %d pollers", limit)
