pytest_plugins = ["tests.plugins.s3", "tests.plugins.services", "tests.plugins.workers"]
