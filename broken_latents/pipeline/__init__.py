"""The one path from a target (a registered name, a TOML file or a config) to a run directory."""
