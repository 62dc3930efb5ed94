"""nexusd: a real-time session sync daemon.

One session, many channels: every change is journaled, then seen by every
channel attached to the session, in order.
"""

from ._config import Config as Config
from ._config import ConfigError as ConfigError
from ._config import load_config as load_config
from ._daemon import Daemon as Daemon
from ._version import __version__ as __version__
from .store import MemoryStore as MemoryStore
from .store import Store as Store
