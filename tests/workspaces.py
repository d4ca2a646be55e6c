"""Test workspaces: freeing the disk that the end-to-end modules fill."""

import glob
import os


def drop_checkpoints(root: str) -> None:
    """Deletes every ``.pth`` checkpoint under ``root``.

    The smoke trainers train the full-size networks, whose checkpoints take up to 1 GB each, so one
    module of end-to-end tests writes several GB. Logs, plans and summaries stay for a post-mortem.
    """
    for path in glob.glob(os.path.join(root, "**", "*.pth"), recursive=True):
        os.remove(path)
