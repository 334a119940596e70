"""MMEngine's logger, quieted for a block."""
import contextlib
import logging

from mmengine.logging import MMLogger

__all__ = ['quiet_logger']


@contextlib.contextmanager
def quiet_logger(level: int = logging.WARNING):
    """Lower MMEngine's current logger to ``level`` for a block (e.g. its long
    ``init_weights`` report), and restore it after."""
    logger = MMLogger.get_current_instance()
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
