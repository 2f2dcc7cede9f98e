"""The first stage's check of every input the params name (dbdpo.preflight), as `dbdpo check`
runs it: its own module, so that DreamBooth's code dependencies are this check's, not the
`dbdpo check` command's."""

import dataclasses
import logging

from dbdpo.config import Config
from stages.common import fail, user_errors


def require_inputs(cfg: Config) -> None:
    """The first stage's check (`setup(before=...)`): warnings logged, a missing input stops the
    run before DreamBooth. It reads every params group beside the stage's declared ones: it
    checks inputs, it makes nothing."""
    from dbdpo.preflight import check, report_text

    with user_errors():
        report = check(cfg)
    for warning in report.warnings:
        logging.getLogger("dbdpo").warning(warning)
    if not report.ok:
        fail("the params name inputs that are not here (`dbdpo check` lists them):\n"
             + report_text(dataclasses.replace(report, warnings=[])))
