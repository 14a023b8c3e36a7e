"""Producer side and the domain: settings, SQL models, state machine, submission, sources, status, export, CLI."""
