"""Producer side and the domain: settings, SQL state, submission, sources, status, export and the CLI."""
