pytest_plugins = [
    "tests.plugins.isolation",
    "tests.plugins.cuda",
    "tests.plugins.services",
    "tests.plugins.s3",
    "tests.plugins.workers",
]
