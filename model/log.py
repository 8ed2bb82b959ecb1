"""The pack's one named logger."""
import logging

logger = logging.getLogger("DynamiCrafter")
