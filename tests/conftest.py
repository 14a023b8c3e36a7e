pytest_plugins = ["tests.plugins.s3"]
