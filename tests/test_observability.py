"""The functions' log lines: what each line leaves out because its log group already says it (docs/cost.md, rows 23
and 26)."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from healthbook.aws.observability import IMPLIED_CONTEXT_KEYS, lean_lines


class _Context(LambdaContext):
    _function_name = "healthbook-test-deliver"
    _function_version = "$LATEST"
    _invoked_function_arn = "arn:aws:lambda:ap-southeast-1:123456789012:function:healthbook-test-deliver"
    _memory_limit_in_mb = 256
    _aws_request_id = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def _lines(decorate: bool) -> list[dict[str, Any]]:
    out = io.StringIO()
    # a service name each: Powertools configures a logger of a name once
    logger = Logger(service=f"lean-lines-{decorate}", location=None, logger_handler=logging.StreamHandler(out))

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        logger.info("visit delivered", extra={"visit_id": "01001#LK1"})

    inner = lean_lines(logger)(handler) if decorate else handler
    logger.inject_lambda_context(clear_state=True)(inner)({}, _Context())
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_line_keeps_the_request_id_and_cold_start_and_leaves_out_what_the_log_group_names() -> None:
    (line,) = _lines(decorate=True)
    assert line["function_request_id"] == "req-1" and "cold_start" in line and line["visit_id"] == "01001#LK1"
    assert not set(IMPLIED_CONTEXT_KEYS) & set(line) and "location" not in line
    (plain,) = _lines(decorate=False)  # without it, Powertools writes every one of them
    assert set(IMPLIED_CONTEXT_KEYS) <= set(plain)
