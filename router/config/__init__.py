"""Engine and channel configuration: YAML files validated with pydantic.

Every error names the file, the key path inside it and what is wrong, so an
integration engineer can fix a channel without reading a traceback.
"""

from router.conditions import Condition
from router.config.channel import (
    DEFAULT_ON_ACK,
    FILE_NAME_FIELDS,
    SOURCES,
    TRANSPORTS,
    ChannelConfig,
    ChannelTarget,
    DestinationConfig,
    DirectoryLookup,
    FilePoll,
    FileTarget,
    HoldPolicy,
    IdempotentReceiver,
    MllpListen,
    MllpTarget,
    RetentionPolicy,
    RetryPolicy,
    SourceConfig,
    UnmatchedFlag,
)
from router.config.engine import (
    BlobOptions,
    DispatchOptions,
    EngineConfig,
    HttpConfig,
    ProcessingOptions,
    RetentionOptions,
    SqliteOptions,
    safe_store_url,
)
from router.config.loading import (
    ConfigError,
    ConfigProblem,
    cross_check,
    load_channel,
    load_channels,
    load_engine,
    resolve_store_url,
)

__all__ = [
    "DEFAULT_ON_ACK",
    "FILE_NAME_FIELDS",
    "SOURCES",
    "TRANSPORTS",
    "BlobOptions",
    "ChannelConfig",
    "ChannelTarget",
    "Condition",
    "ConfigError",
    "ConfigProblem",
    "DestinationConfig",
    "DirectoryLookup",
    "DispatchOptions",
    "EngineConfig",
    "FilePoll",
    "FileTarget",
    "HoldPolicy",
    "HttpConfig",
    "IdempotentReceiver",
    "MllpListen",
    "MllpTarget",
    "ProcessingOptions",
    "RetentionOptions",
    "RetentionPolicy",
    "RetryPolicy",
    "SourceConfig",
    "SqliteOptions",
    "UnmatchedFlag",
    "cross_check",
    "load_channel",
    "load_channels",
    "load_engine",
    "resolve_store_url",
    "safe_store_url",
]
