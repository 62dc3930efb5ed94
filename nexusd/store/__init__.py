"""The store family: the `Store` interface and its engines.

- `_interface`: the `Store` protocol, the data it exchanges, and the optional
  `KeyManagement` capability.
- `_memory`: `MemoryStore`, everything in this process.
- `_sqlite`: `SqliteStore`, durable and encrypted at rest, over `_schema`
  (tables, migrations, rows) and `_writer` (group commit).
- `_redis`: `RedisStore`, sessions shared by several daemons on one Redis,
  fenced by the owner's epoch, over the Lua scripts of `_redis_scripts`.
- `_crypto`: per-session data keys under a ring of master keys.
- `_open`: `open_store`, the one place a durability setting picks an engine.
"""

from ._crypto import CryptoError as CryptoError
from ._crypto import IntegrityError as IntegrityError
from ._crypto import KeyRing as KeyRing
from ._crypto import KeyRingError as KeyRingError
from ._interface import IDLE_LAG as IDLE_LAG
from ._interface import Fenced as Fenced
from ._interface import KeyManagement as KeyManagement
from ._interface import LoadedSession as LoadedSession
from ._interface import SessionMeta as SessionMeta
from ._interface import Store as Store
from ._interface import StoredEvent as StoredEvent
from ._interface import StoreError as StoreError
from ._interface import check_snapshot_seq as check_snapshot_seq
from ._memory import MemoryStore as MemoryStore
from ._open import DURABILITIES as DURABILITIES
from ._open import open_store as open_store
from ._redis import REDIS_DURABILITIES as REDIS_DURABILITIES
from ._redis import RedisStore as RedisStore
from ._redis import open_redis_store as open_redis_store
from ._sqlite import SqliteStore as SqliteStore
from ._sqlite import StoreStatistics as StoreStatistics
from ._sqlite import open_sqlite_store as open_sqlite_store
