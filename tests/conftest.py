pytest_plugins = ["tests.plugins.services", "tests.plugins.s3", "tests.plugins.workers"]
