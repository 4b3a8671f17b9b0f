"""mkdocs hook: docstrings index arrays as `saes[label][seed]` or `decoder_cos[latent][feature]`,
which Markdown reads as a reference link, and mkdocs-autorefs then warns that no object is called
`seed`. Real cross-references name a dotted path (`broken_latents.api.Run`), so only a warning
about an undotted target is dropped; every other warning still fails `mkdocs build --strict`."""

import logging
import re

_UNDOTTED = re.compile(r"Could not find cross-reference target '[A-Za-z_][A-Za-z0-9_]*'$")


class _DropIndexWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _UNDOTTED.search(record.getMessage())


def on_startup(command, dirty):
    # Filters apply only on the logger a record is made on; autorefs logs on its module's logger.
    for name in (
        "mkdocs.plugins.mkdocs_autorefs._internal.plugin",
        "mkdocs.plugins.mkdocs_autorefs",
    ):
        logging.getLogger(name).addFilter(_DropIndexWarnings())
