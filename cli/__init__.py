"""The `scalesocket` command: flags → `Settings` → `app.server.run`."""
