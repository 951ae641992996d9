"""medmesh shared runtime: settings, server bootstrap, telemetry, dependency clients, CLI."""
