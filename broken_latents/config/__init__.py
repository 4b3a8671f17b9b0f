"""The config of an experiment: typed dataclasses (schema.py), read from TOML or the registry
and changed by `--set` overrides; every error names its field."""
