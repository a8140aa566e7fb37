"""archwatch: stream supervision of government-service case archiving."""

__version__ = "0.1.0"
