"""python -m broken_latents.language CONFIG.toml OUT_DIR: build a language world into OUT_DIR."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..config.schema import ConfigError
from . import build_language, load_language


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m broken_latents.language CONFIG.toml OUT_DIR", file=sys.stderr)
        return 2
    try:
        config = load_language(Path(argv[0]))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    outcome = build_language(config, Path(argv[1]), progress=True)
    s = outcome.summary
    print(
        json.dumps(
            {k: s[k] for k in ("tokens", "dim", "concepts", "kept", "dropped", "wall_seconds")}
        )
    )
    print(
        f"transformer: test loss {s['transformer']['test_loss']} nats (floor {s['transformer']['entropy_given_state']}), "
        f"{s['transformer']['train_seconds']} s; written to {outcome.directory}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
