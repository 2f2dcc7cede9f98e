"""The suite's own schedule: under `pytest -n 2 --dist loadfile` its longest files start first."""

from tests.conftest import SCHEDULE


def test_the_longest_files_reach_the_workers_first(request, pytestconfig):
    """xdist re-sorts the files by their test count unless told not to (since 3.8): that started
    the claims file, a third of the suite in a few tests, last, with the other worker idle."""
    assert pytestconfig.getoption("loadscopereorder") is False
    files = list(dict.fromkeys(item.path.name for item in request.session.items))
    scheduled = [name for name in SCHEDULE if name in files]
    assert files[:len(scheduled)] == scheduled, files
