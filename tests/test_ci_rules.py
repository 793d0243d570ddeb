"""The suite's CI rules (tests/ci_rules.py): under CI a skip fails the run, except a CUDA-only test's;
hypothesis draws its examples from a fixed seed there."""
import textwrap

import pytest
from hypothesis import settings

import ci_rules

SUITE = '''
    import pytest

    def test_runs():
        assert True

    def test_extra_missing():
        pytest.skip('the optional face detector is not installed')

    @pytest.mark.skipif(True, reason='needs a CUDA GPU')
    def test_gpu_only():
        pass

    @pytest.fixture
    def browser():
        pytest.skip('headless Chromium is not installed')

    def test_in_a_browser(browser):
        pass
'''


def small_suite(pytester):
    pytester.makeconftest("pytest_plugins = ['ci_rules']")
    pytester.makepyfile(textwrap.dedent(SUITE))
    return pytester.runpytest_inprocess('-p', 'no:cacheprovider')


def test_without_ci_a_missing_extra_skips(pytester, monkeypatch):
    monkeypatch.delenv('CI', raising=False)
    small_suite(pytester).assert_outcomes(passed=1, skipped=3)


@pytest.mark.parametrize('value', ['1', 'true'])
def test_under_ci_every_skip_but_the_gpu_ones_fails_naming_its_reason(pytester, monkeypatch, value):
    monkeypatch.setenv('CI', value)
    result = small_suite(pytester)
    result.assert_outcomes(passed=1, skipped=1, failed=1, errors=1)     # a fixture's skip fails in setup
    out = result.stdout.str()
    assert 'skipped under CI (the optional face detector is not installed)' in out
    assert 'skipped under CI (headless Chromium is not installed)' in out


@pytest.mark.parametrize('value, ci', [('', False), ('0', False), ('false', False), ('1', True), ('true', True)])
def test_what_counts_as_ci(monkeypatch, value, ci):
    monkeypatch.setenv('CI', value)
    assert ci_rules.in_ci() is ci


def test_hypothesis_is_derandomised_exactly_under_ci():
    assert settings().derandomize is ci_rules.in_ci() and settings().database is None
