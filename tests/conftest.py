import pytest

# Assertions in shared helpers explain their failures as those in the tests do.
pytest.register_assert_rewrite("tests.helpers")

pytest_plugins = [
    "tests.plugins.isolation",
    "tests.plugins.cuda",
    "tests.plugins.services",
    "tests.plugins.s3",
    "tests.plugins.workers",
]
