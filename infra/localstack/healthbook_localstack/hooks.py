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
